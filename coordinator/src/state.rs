//! A sweep's state: the schedule and the integrity ledger in memory, the store on disk.
//! Every decision's changes are written in the caller's transaction (`begin` …
//! `commit`), and callers acknowledge nothing before `commit` has returned, so an
//! acknowledged lease or result survives a crash of the process or the machine
//! ([`crate::commit`] does this for the gRPC server, batching many requests per commit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use neuromfa_common::stats::StepAggregate;
use neuromfa_common::{AnalysisParams, RevisionWeights};

pub use crate::error::StateError;
use crate::integrity::{DuplicatePolicy, Ledger};
use crate::live::{LiveSource, NewPoints};
use crate::metrics::StateMetrics;
use crate::record::{Change, TaskState};
use crate::schedule::{Outcome, Schedule, Tally};
use crate::spec::{CheckpointKey, SweepSpec};
use crate::status::{self, DuplicateStatus, StatusReport, Throughput};
use crate::store::Store;
pub use crate::store::{OpenMode, DB_FILE};

type Result<T> = std::result::Result<T, StateError>;

/// The sweep's state, in memory and on disk.
pub struct SweepState {
    store: Store,
    schedule: Schedule,
    ledger: Ledger,
    throughput: Throughput,
    spec: SweepSpec,
    params: AnalysisParams,
    metrics: StateMetrics,
    /// The tally as the open transaction found it, put back if it is rolled back.
    tally_at_begin: Tally,
    /// Compute seconds of the results in the open transaction, observed once it commits.
    uncommitted_compute: Vec<f64>,
    /// Whether the open transaction wrote anything (an empty commit has no fsync to time).
    wrote: bool,
    /// The spectra of results stored since the last live source was taken (only once the
    /// live view is enabled); `all` once they must be read from the store again.
    live_points: Option<NewPoints>,
    /// Checkpoints whose resolution is awaited (see [`SweepState::await_resolution`]).
    awaiting: HashSet<usize>,
}

/// The schedule and the ledger as the store holds them.
fn load(store: &Store, spec: &SweepSpec) -> Result<(Schedule, Ledger)> {
    let (workers, duplicates) = (store.workers()?, store.duplicates_counted()?);
    let breaker = store.breaker()?;
    let schedule = store
        .read_tasks(false, |tasks| {
            Schedule::restore(spec, tasks, workers, duplicates)
        })?
        .with_breaker(breaker);
    let ledger = Ledger::new(schedule.checkpoints().to_vec(), store.revisions()?);
    Ok((schedule, ledger))
}

impl SweepState {
    /// Opens (or creates) the sweep of `spec` in its state directory.
    pub fn open(spec: SweepSpec, mode: OpenMode) -> Result<Self> {
        let store = Store::open(&spec, mode)?;
        let (schedule, ledger) = load(&store, &spec)?;
        Ok(SweepState {
            store,
            schedule,
            ledger,
            throughput: Throughput::default(),
            params: spec.analysis_params(),
            spec,
            metrics: StateMetrics::default(),
            tally_at_begin: Tally::default(),
            uncommitted_compute: Vec::new(),
            wrote: false,
            live_points: None,
            awaiting: HashSet::new(),
        })
    }

    /// Opens an existing state directory with the spec recorded in it.
    pub fn open_existing(state_dir: &Path) -> Result<Self> {
        let spec = SweepSpec {
            state_dir: state_dir.to_path_buf(),
            ..recorded_spec(state_dir)?
        };
        Self::open(spec, OpenMode::Resume)
    }

    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }

    pub fn params(&self) -> &AnalysisParams {
        &self.params
    }

    pub fn db_path(&self) -> &Path {
        self.store.path()
    }

    /// Starts a transaction that the next `commit` makes durable.
    pub fn begin(&mut self) -> Result<()> {
        self.tally_at_begin = self.schedule.tally().clone();
        self.uncommitted_compute.clear();
        self.wrote = false;
        self.store.begin()
    }

    /// Makes everything since `begin` durable. Only then may callers acknowledge.
    pub fn commit(&mut self) -> Result<()> {
        let started = Instant::now();
        if let Err(e) = self.store.commit() {
            self.reload()?;
            return Err(e);
        }
        if std::mem::take(&mut self.wrote) {
            self.metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for seconds in self.uncommitted_compute.drain(..) {
            self.metrics.compute_seconds.observe(seconds);
        }
        Ok(())
    }

    /// Abandons the open transaction and rebuilds memory from disk.
    pub fn rollback_and_reload(&mut self) -> Result<()> {
        self.store.rollback();
        self.reload()
    }

    fn reload(&mut self) -> Result<()> {
        let (schedule, ledger) = load(&self.store, &self.spec)?;
        let old = std::mem::replace(&mut self.schedule, schedule);
        // Liveness is not durable; keep what we knew. Counts of what was rolled back go.
        self.schedule.keep_liveness(old);
        self.schedule.set_tally(self.tally_at_begin.clone());
        self.uncommitted_compute.clear();
        self.ledger = ledger;
        if let Some(points) = &mut self.live_points {
            // Those of what was rolled back are among them.
            *points = NewPoints {
                all: true,
                points: Vec::new(),
            };
        }
        Ok(())
    }

    /// The histograms of what the state thread does (shared with whoever encodes them).
    pub fn metrics(&self) -> &StateMetrics {
        &self.metrics
    }

    /// Runs `f` in its own transaction (for callers without group commit).
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(value) => {
                self.commit()?;
                Ok(value)
            }
            Err(e) => {
                self.rollback_and_reload()?;
                Err(e)
            }
        }
    }

    /// Makes a scheduling decision and writes its changes in the open transaction (see
    /// `begin`); returns its answer, which callers give only after `commit`.
    ///
    /// `state.decide(|schedule| schedule.lease(worker, 8, now_ms))`
    pub fn decide<T>(
        &mut self,
        decision: impl FnOnce(&mut Schedule) -> Result<Outcome<T>>,
    ) -> Result<T> {
        let outcome = decision(&mut self.schedule)?;
        self.store(outcome)
    }

    /// Writes a decision's changes and returns its answer.
    fn store<T>(&mut self, outcome: Outcome<T>) -> Result<T> {
        self.store.apply(&outcome.changes)?;
        self.wrote |= !outcome.changes.is_empty();
        for change in &outcome.changes {
            if let Change::ResultStored {
                finished_ms,
                task_id,
                result,
                metrics,
                ..
            } = change
            {
                self.throughput.record(*finished_ms);
                self.uncommitted_compute
                    .push(metrics.compute_ms as f64 / 1000.0);
                let checkpoint = self.schedule.task(*task_id).map(|t| t.checkpoint);
                if let (Some(live), Some(checkpoint)) = (&mut self.live_points, checkpoint) {
                    if !live.all {
                        live.points.push((checkpoint, result.point()));
                    }
                }
            }
        }
        Ok(outcome.value)
    }

    /// The tasks, queues, leases and workers (decisions go through `decide`).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Per-model aggregates from `(α0, w)` of done tasks (no spectra: see `export`).
    pub fn live_aggregates(&self) -> BTreeMap<&str, Vec<StepAggregate>> {
        status::live_aggregates(&self.schedule, &self.ledger, self.spec.duplicates)
    }

    /// What says whether the sweep has ended, cheaply (see [`status::Progress`]).
    pub fn progress(&self) -> status::Progress {
        status::progress(&self.schedule)
    }

    pub fn status(&mut self, now_ms: u64, draining: bool) -> StatusReport {
        let throughput = self.throughput.per_second(now_ms);
        status::report(
            &self.spec,
            &self.schedule,
            &self.ledger,
            &self.live_aggregates(),
            throughput,
            now_ms,
            draining,
        )
    }

    /// Keeps the spectra of results as they arrive, from now on, for
    /// [`SweepState::live_source`]; the first source holds every stored one.
    pub fn enable_live_view(&mut self) {
        self.live_points = Some(NewPoints {
            all: true,
            points: Vec::new(),
        });
    }

    /// What the dashboard's snapshot at `now_ms` is derived from: a copy of the schedule
    /// and the ledger, and the spectra of the results stored since the last call (of
    /// every stored result with `all`, or when they must be read again). Cheap next to
    /// the derivation, which the caller runs away from the state thread.
    pub fn live_source(&mut self, now_ms: u64, draining: bool, all: bool) -> Result<LiveSource> {
        let wanted_all = all || self.live_points.as_ref().is_none_or(|p| p.all);
        let points = if wanted_all {
            NewPoints {
                all: true,
                points: self.stored_points()?,
            }
        } else {
            self.live_points.take().unwrap_or_default()
        };
        self.live_points = Some(NewPoints::default());
        Ok(LiveSource {
            spec: self.spec.clone(),
            schedule: self.schedule.clone(),
            ledger: self.ledger.clone(),
            throughput: self.throughput.per_second(now_ms),
            now_ms,
            draining,
            points,
        })
    }

    /// The spectrum of every stored result of a task in the grid, by checkpoint.
    /// Read one task at a time, as the exports are: all the results' JSON at once is about
    /// 2 KB a task.
    fn stored_points(&self) -> Result<Vec<(usize, neuromfa_common::stats::SeedPoint)>> {
        self.store.read_tasks(true, |stored_tasks| {
            let mut points = Vec::new();
            for stored in stored_tasks {
                let Some(task) = self.schedule.task(stored.id) else {
                    continue; // outside the grid
                };
                let json = stored.result.as_ref().and_then(|r| r.json.as_deref());
                if let (TaskState::Done, Some(json)) = (task.progress.state, json) {
                    match serde_json::from_str::<neuromfa_common::SeedResult>(json) {
                        Ok(result) => points.push((task.checkpoint, result.point())),
                        Err(e) => {
                            tracing::warn!(task = stored.id, error = %e, "stored result is unreadable; left out of the live spectra")
                        }
                    }
                }
            }
            points
        })
    }

    /// Checkpoints whose weights have not been resolved yet.
    pub fn unresolved(&self) -> Vec<CheckpointKey> {
        self.ledger.unresolved()
    }

    /// Records what a checkpoint's revision serves: the hash of its weights, its commit and
    /// weight files.
    pub fn record_resolution(
        &mut self,
        model: &str,
        step: u64,
        weights_sha256: &str,
        resolved: &RevisionWeights,
    ) -> Result<()> {
        match self.ledger.record(model, step, weights_sha256, resolved) {
            Some(change) => self.store.apply(&[change]),
            None => Ok(()),
        }
    }

    /// What the coordinator resolved of a checkpoint, for its leases.
    pub fn resolved(&self, model: &str, step: u64) -> Option<&RevisionWeights> {
        self.ledger.resolved(self.ledger.slot(model, step)?)
    }

    /// Regroups identical weights and applies the spec's policy: under `skip` and
    /// `reuse` the pending tasks of duplicated checkpoints are not computed; under
    /// `warn` (or once a step is no longer a duplicate) they are queued again. Checkpoints
    /// whose resolution is awaited stay held back.
    pub fn apply_duplicate_policy(&mut self) -> Result<usize> {
        self.ledger.regroup();
        let hold = self.spec.duplicates != DuplicatePolicy::Warn;
        let ledger = &self.ledger;
        let outcome = self
            .schedule
            .skip_checkpoints(|checkpoint| hold && ledger.original_of(checkpoint).is_some());
        let skipped = self.store(outcome)?;
        self.hold_unsettled();
        Ok(skipped)
    }

    /// Holds back the tasks of every checkpoint not resolved yet until its resolution
    /// ends ([`SweepState::resolution_ended`]), so that leasing may start while the rest
    /// of the grid is resolved; returns those checkpoints in the order to resolve them.
    ///
    /// Under `skip` and `reuse` a checkpoint is a duplicate (and not computed) when a
    /// later step of its model serves the same weights, so it is held until every later
    /// step of its model is resolved too. Hence the order: model by model as the spec
    /// lists them, each model's last step first, so that each checkpoint is free to go as
    /// soon as it is resolved.
    pub fn await_resolution(&mut self) -> Vec<CheckpointKey> {
        let mut keys = self.ledger.unresolved();
        let model_rank: HashMap<&str, usize> = self
            .spec
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.repo.as_str(), i))
            .collect();
        keys.sort_by_key(|k| {
            (
                model_rank.get(k.model.as_str()).copied(),
                std::cmp::Reverse(k.step),
            )
        });
        self.awaiting = keys
            .iter()
            .filter_map(|k| self.ledger.slot(&k.model, k.step))
            .collect();
        self.hold_unsettled();
        keys
    }

    /// The resolution of `(model, step)` is over, resolved or not (one that failed counts
    /// as unique, as before). Takes effect at the next [`SweepState::apply_duplicate_policy`].
    pub fn resolution_ended(&mut self, model: &str, step: u64) {
        if let Some(slot) = self.ledger.slot(model, step) {
            self.awaiting.remove(&slot);
        }
    }

    /// No resolution is awaited any more (resolving stopped): nothing is held back.
    pub fn stop_awaiting_resolution(&mut self) {
        self.awaiting.clear();
        self.hold_unsettled();
    }

    /// Holds back the checkpoints whose resolution, or (under `skip` and `reuse`) that
    /// of a later step of their model, is awaited.
    fn hold_unsettled(&mut self) {
        let later_too = self.spec.duplicates != DuplicatePolicy::Warn;
        let checkpoints = self.ledger.checkpoints();
        // Per model, the latest step still awaited: every step before it waits too.
        let mut latest_awaited: HashMap<&str, u64> = HashMap::new();
        for &slot in &self.awaiting {
            let key = &checkpoints[slot];
            let latest = latest_awaited.entry(key.model.as_str()).or_insert(key.step);
            *latest = (*latest).max(key.step);
        }
        let awaiting = &self.awaiting;
        self.schedule.hold_checkpoints(|slot| {
            let key = &checkpoints[slot];
            awaiting.contains(&slot)
                || (later_too
                    && latest_awaited
                        .get(key.model.as_str())
                        .is_some_and(|&latest| key.step < latest))
        });
    }

    pub fn duplicate_steps(&self) -> Vec<DuplicateStatus> {
        status::duplicate_steps(&self.ledger)
    }
}

/// The spec recorded in a state directory.
pub fn recorded_spec(state_dir: &Path) -> Result<SweepSpec> {
    Store::open_read(state_dir)?.recorded_spec()
}
