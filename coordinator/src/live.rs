//! What the dashboard shows: one snapshot of the sweep, derived from the same schedule and
//! ledger `status` reads (the [`StatusReport`] itself is part of it), plus what a page
//! needs beyond it: every task's state on the step × seed grid, who holds which lease,
//! the live aggregates, and the spectra of the steps whose tasks are all finished. One
//! snapshot serves every viewer and every scrape, so its cost does not grow with them.
//!
//! The state thread only copies what a snapshot is derived from (a [`LiveSource`]: a few
//! milliseconds for 100,000 tasks); the derivation, tens of milliseconds at that size,
//! runs elsewhere, so leases and results never wait for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use neuromfa_common::stats::{aggregate, SeedPoint, StepAggregate};
use serde::Serialize;

use crate::aggregate::Selection;
use crate::integrity::Ledger;
use crate::record::TaskState;
use crate::schedule::{Schedule, Tally};
use crate::spec::SweepSpec;
use crate::status::{self, StatusReport};

/// Failures listed in a snapshot at most (a whole model failing would list thousands).
pub const MAX_FAILURES: usize = 200;

/// One snapshot of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    /// When it was taken (ms since the Unix epoch).
    pub generated_ms: u64,
    /// What `status` shows at the same moment; `failures` holds the first
    /// [`MAX_FAILURES`] of `failures_total`.
    pub status: StatusReport,
    pub failures_total: usize,
    /// What the decisions did since the coordinator started.
    pub tally: Tally,
    pub models: Vec<ModelLive>,
    /// Per worker holding leases: what it holds.
    pub leases: Vec<WorkerLeases>,
    /// Changes whenever the plotted values may have (results in, steps finished).
    pub figures_version: String,
}

/// One model's grid and curves.
#[derive(Debug, Clone, Serialize)]
pub struct ModelLive {
    pub model: String,
    pub steps: Vec<u64>,
    pub seeds: Vec<u32>,
    /// One letter per task, row by row (a row per step, a column per seed): `p`ending,
    /// `l`eased, `d`one, `f`ailed, `s`kipped; `-` where the grid has no task.
    pub cells: String,
    /// Per step: the later step whose weights it serves too.
    pub duplicate_of: Vec<Option<u64>>,
    /// Tasks by state, every state present.
    pub counts: BTreeMap<&'static str, usize>,
    /// Steps whose tasks are all finished and whose spectrum is in `spectra`.
    pub finished_steps: usize,
    /// Per step with results, the live aggregates (no per-`q` moments), steps ascending.
    #[serde(skip)]
    pub aggregates: Vec<StepAggregate>,
    /// Per finished step, the aggregate of its seeds' spectra (per-`q` moments).
    #[serde(skip)]
    pub spectra: Vec<(u64, Arc<StepAggregate>)>,
}

/// The leases one worker holds.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerLeases {
    pub worker: String,
    pub checkpoints: Vec<LeasedCheckpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeasedCheckpoint {
    pub model: String,
    pub step: u64,
    pub seeds: Vec<u32>,
    /// The earliest deadline among them (ms since the Unix epoch).
    pub deadline_ms: u64,
}

/// The spectra results carry, kept per checkpoint only until its tasks are all finished,
/// then reduced to their aggregate: memory stays small however large the sweep. A new
/// cache holds nothing and asks for every stored result (see [`SpectraCache::complete`]).
#[derive(Debug, Default)]
pub struct SpectraCache {
    /// Per checkpoint still running: its results' points by seed.
    pending: HashMap<usize, BTreeMap<u32, SeedPoint>>,
    /// Per finished checkpoint: the aggregate over its seeds.
    finished: HashMap<usize, Arc<StepAggregate>>,
    /// Holds every stored result: filled from all of them, and no result came since for
    /// a checkpoint already reduced (a late result for a task that had failed).
    complete: bool,
}

impl SpectraCache {
    /// Takes a stored result of `checkpoint`.
    fn add(&mut self, checkpoint: usize, point: SeedPoint) {
        if self.finished.contains_key(&checkpoint) {
            // The reduced spectrum lacks it: only every result read again can add it.
            self.complete = false;
            return;
        }
        self.pending
            .entry(checkpoint)
            .or_default()
            .insert(point.seed, point);
    }

    /// Takes the new results `points` carries, or starts again from them when they are
    /// every stored result.
    pub fn take(&mut self, points: NewPoints) {
        if points.all {
            *self = SpectraCache {
                complete: true,
                ..SpectraCache::default()
            };
        }
        for (checkpoint, point) in points.points {
            self.add(checkpoint, point);
        }
    }

    /// Whether it holds every stored result; if not, the next [`NewPoints`] must be all
    /// of them.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Reduces the points of `checkpoint` (at `step`), once its tasks are all finished.
    fn finish(&mut self, checkpoint: usize, step: u64) {
        if let Some(points) = self.pending.remove(&checkpoint) {
            let points: Vec<SeedPoint> = points.into_values().collect();
            if let Some(a) = aggregate(&points, step).into_iter().next() {
                self.finished.insert(checkpoint, Arc::new(a));
            }
        }
    }
}

/// Spectra of stored results, per checkpoint: those stored since the last snapshot, or
/// (`all`) every stored one.
#[derive(Debug, Default)]
pub struct NewPoints {
    pub all: bool,
    pub points: Vec<(usize, SeedPoint)>,
}

/// What a snapshot is derived from, copied on the state thread.
pub struct LiveSource {
    pub spec: SweepSpec,
    pub schedule: Schedule,
    pub ledger: Ledger,
    /// Completions per second over the last minute.
    pub throughput: f64,
    pub now_ms: u64,
    pub draining: bool,
    pub points: NewPoints,
}

impl LiveSource {
    /// The snapshot, given the spectra of earlier snapshots once they have taken
    /// [`LiveSource::points`] (it reduces those of checkpoints just finished).
    pub fn view(&self, spectra: &mut SpectraCache) -> LiveView {
        // Once for both: the costliest part of a snapshot.
        let aggregates =
            status::live_aggregates(&self.schedule, &self.ledger, self.spec.duplicates);
        let status = status::report(
            &self.spec,
            &self.schedule,
            &self.ledger,
            &aggregates,
            self.throughput,
            self.now_ms,
            self.draining,
        );
        build(
            &self.spec,
            &self.schedule,
            &self.ledger,
            status,
            aggregates,
            spectra,
            self.now_ms,
        )
    }
}

/// Where each checkpoint sits in its model's grid.
struct GridLayout {
    /// Per checkpoint: (model index, row).
    place: Vec<(usize, usize)>,
    /// Per model: its steps, in row order.
    steps: Vec<Vec<u64>>,
    seed_column: HashMap<u32, usize>,
}

impl GridLayout {
    fn of(spec: &SweepSpec, schedule: &Schedule) -> Self {
        let model_index: HashMap<&str, usize> = spec
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.repo.as_str(), i))
            .collect();
        let mut steps = vec![Vec::new(); spec.models.len()];
        let place = schedule
            .checkpoints()
            .iter()
            .map(|key| {
                let model = model_index.get(key.model.as_str()).copied().unwrap_or(0);
                steps[model].push(key.step);
                (model, steps[model].len() - 1)
            })
            .collect();
        let seed_column = spec
            .seed_list()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i))
            .collect();
        GridLayout {
            place,
            steps,
            seed_column,
        }
    }
}

fn state_letter(state: TaskState) -> u8 {
    match state {
        TaskState::Pending => b'p',
        TaskState::Leased => b'l',
        TaskState::Done => b'd',
        TaskState::Failed => b'f',
        TaskState::Skipped => b's',
    }
}

/// The snapshot at `now_ms`, given the status report and the live aggregates of the same
/// moment. Reduces the spectra of checkpoints that have just finished.
fn build(
    spec: &SweepSpec,
    schedule: &Schedule,
    ledger: &Ledger,
    mut status: StatusReport,
    mut aggregates: BTreeMap<&str, Vec<StepAggregate>>,
    spectra: &mut SpectraCache,
    now_ms: u64,
) -> LiveView {
    let layout = GridLayout::of(spec, schedule);
    let seeds = spec.seed_list();
    let mut cells: Vec<Vec<u8>> = layout
        .steps
        .iter()
        .map(|steps| vec![b'-'; steps.len() * seeds.len()])
        .collect();
    let mut counts: Vec<BTreeMap<&'static str, usize>> =
        vec![
            ["pending", "leased", "done", "failed", "skipped"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
            spec.models.len()
        ];
    let checkpoints = schedule.checkpoints();
    let mut unfinished = vec![0usize; checkpoints.len()];
    let mut leases: BTreeMap<&str, BTreeMap<usize, LeasedCheckpoint>> = BTreeMap::new();
    for task in schedule.tasks() {
        let state = task.progress.state;
        let (model, row) = layout.place[task.checkpoint];
        if let Some(&column) = layout.seed_column.get(&task.seed) {
            cells[model][row * seeds.len() + column] = state_letter(state);
        }
        *counts[model].entry(state.as_str()).or_default() += 1;
        match state {
            TaskState::Pending => unfinished[task.checkpoint] += 1,
            TaskState::Leased => {
                unfinished[task.checkpoint] += 1;
                let worker = task.progress.worker.as_deref().unwrap_or_default();
                let key = &checkpoints[task.checkpoint];
                let held = leases
                    .entry(worker)
                    .or_default()
                    .entry(task.checkpoint)
                    .or_insert_with(|| LeasedCheckpoint {
                        model: key.model.clone(),
                        step: key.step,
                        seeds: Vec::new(),
                        deadline_ms: task.progress.deadline_ms,
                    });
                held.seeds.push(task.seed);
                held.deadline_ms = held.deadline_ms.min(task.progress.deadline_ms);
            }
            TaskState::Done | TaskState::Failed | TaskState::Skipped => {}
        }
    }
    for (slot, key) in checkpoints.iter().enumerate() {
        if unfinished[slot] == 0 {
            spectra.finish(slot, key.step);
        }
    }

    let selection = Selection::new(ledger, spec.duplicates);
    let mut models: Vec<ModelLive> = spec
        .models
        .iter()
        .zip(cells)
        .zip(counts)
        .enumerate()
        .map(|(i, ((m, cells), counts))| ModelLive {
            model: m.repo.clone(),
            steps: layout.steps[i].clone(),
            seeds: seeds.clone(),
            cells: String::from_utf8(cells).unwrap_or_default(),
            duplicate_of: Vec::with_capacity(layout.steps[i].len()),
            counts,
            finished_steps: 0,
            aggregates: aggregates.remove(m.repo.as_str()).unwrap_or_default(),
            spectra: Vec::new(),
        })
        .collect();
    for (slot, key) in checkpoints.iter().enumerate() {
        let model = &mut models[layout.place[slot].0];
        model
            .duplicate_of
            .push(ledger.original_of(slot).map(|o| checkpoints[o].step));
        let counted = selection
            .source(slot)
            .filter(|&source| unfinished[source] == 0);
        if let Some(spectrum) = counted.and_then(|source| spectra.finished.get(&source)) {
            model.spectra.push((key.step, spectrum.clone()));
        }
    }
    let mut finished_total = 0;
    for model in &mut models {
        model.finished_steps = model.spectra.len();
        finished_total += model.spectra.len();
    }

    let failures_total = status.failures.len();
    status.failures.truncate(MAX_FAILURES);
    let leases = leases
        .into_iter()
        .map(|(worker, held)| WorkerLeases {
            worker: worker.to_string(),
            checkpoints: held.into_values().collect(),
        })
        .collect();
    LiveView {
        generated_ms: now_ms,
        figures_version: format!("{}-{finished_total}", status.done),
        failures_total,
        tally: schedule.tally().clone(),
        status,
        models,
        leases,
    }
}
