//! What `neuromfa status` shows, assembled from the schedule (counts, workers, failures,
//! progress), the integrity ledger (duplicated steps) and the live aggregates, which go
//! through the same point selection as the exports.

use std::collections::{BTreeMap, HashMap, VecDeque};

use neuromfa_common::budget::BucketStatus;
use neuromfa_common::stats::{SeedPoint, StepAggregate};
use serde::{Deserialize, Serialize};

use crate::aggregate::Selection;
use crate::integrity::{DuplicatePolicy, Ledger};
use crate::record::{CheckpointName, TaskState, TripCause};
use crate::schedule::Schedule;
use crate::spec::SweepSpec;

/// Live view of a worker, for status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub host: String,
    pub cores: u32,
    pub version: String,
    pub seconds_since_seen: f64,
    pub leased: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureStatus {
    pub model: String,
    pub step: u64,
    pub seed: u32,
    pub attempts: u32,
    pub error: String,
}

/// Fetch costs summed over a model's finished tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTotals {
    pub bytes_fetched: u64,
    pub requests: u64,
    pub fetch_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelProgress {
    pub model: String,
    pub done: usize,
    pub total: usize,
    /// Latest step with results and its `E` (from means), once the first step is in.
    pub latest_step: Option<u64>,
    #[serde(rename = "latest_E")]
    pub latest_e: Option<f64>,
    /// What fetching this model's finished tasks cost.
    #[serde(default)]
    pub fetch: FetchTotals,
    /// Which weight formats its steps serve: format → steps (resolved steps only).
    #[serde(default)]
    pub weights_formats: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DuplicateStatus {
    pub model: String,
    pub step: u64,
    /// The step whose weights this one serves too.
    pub duplicate_of: u64,
    pub weights_sha256: String,
}

/// Why leasing stopped, while the breaker is tripped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// The rule, the checkpoints and the last error, in one line.
    pub reason: String,
    pub cause: TripCause,
    pub seconds_stopped: f64,
    /// Checkpoints whose failures tripped it or came while it was tripped.
    pub implicated: Vec<CheckpointName>,
    pub failed_probes: u32,
    /// When the next probe goes out (none while one is out).
    pub next_probe_in_s: Option<f64>,
}

/// How a sweep ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepEnd {
    /// Every task done (or skipped as a duplicate).
    Done,
    /// Nothing left to run, and this many tasks failed.
    Failed(usize),
    /// The breaker stopped leasing (the reason); tasks are left pending.
    Stopped(String),
}

/// Everything `neuromfa status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub sweep: String,
    pub total: usize,
    pub pending: usize,
    pub leased: usize,
    pub done: usize,
    pub failed: usize,
    #[serde(default)]
    pub skipped: usize,
    pub duplicates_ignored: u64,
    /// Completions per second over the last minute.
    pub throughput_per_s: f64,
    pub eta_seconds: Option<f64>,
    pub draining: bool,
    pub workers: Vec<WorkerStatus>,
    pub failures: Vec<FailureStatus>,
    pub models: Vec<ModelProgress>,
    /// Steps serving the same weights as a later step of their model.
    #[serde(default)]
    pub duplicate_steps: Vec<DuplicateStatus>,
    /// Pending tasks waiting out a transient failure before they are leased again.
    #[serde(default)]
    pub retrying: usize,
    /// Checkpoints whose weights could not be resolved yet.
    #[serde(default)]
    pub unresolved: usize,
    /// Set while the breaker has stopped leasing.
    #[serde(default)]
    pub stopped: Option<BreakerStatus>,
    /// Per Hub bucket, what the cluster's budget granted and the waits it imposed (filled in
    /// by the service that holds the budget).
    #[serde(default)]
    pub budget: Vec<BucketStatus>,
}

impl StatusReport {
    /// How the sweep ended (see [`Progress::end`]).
    pub fn end(&self) -> Option<SweepEnd> {
        self.progress().end()
    }

    pub fn progress(&self) -> Progress {
        Progress {
            total: self.total,
            pending: self.pending,
            leased: self.leased,
            done: self.done,
            failed: self.failed,
            stopped: self.stopped.as_ref().map(|b| b.reason.clone()),
        }
    }
}

/// The counts and breaker state that say whether a sweep has ended: what a loop polling a
/// running sweep needs, without the rest of a [`StatusReport`] (workers, failures,
/// per-model progress, live aggregates), which takes tens of milliseconds of the state
/// thread at 100,000 tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub pending: usize,
    pub leased: usize,
    pub done: usize,
    pub failed: usize,
    /// Why the breaker stopped leasing, while it does.
    pub stopped: Option<String>,
}

impl Progress {
    /// How the sweep ended: when nothing is pending or leased, done or with failures;
    /// else stopped, while the breaker holds the pending tasks; else not yet.
    pub fn end(&self) -> Option<SweepEnd> {
        if self.pending + self.leased == 0 {
            return Some(match self.failed {
                0 => SweepEnd::Done,
                failed => SweepEnd::Failed(failed),
            });
        }
        self.stopped.clone().map(SweepEnd::Stopped)
    }
}

/// The sweep's [`Progress`].
pub fn progress(schedule: &Schedule) -> Progress {
    let counts = schedule.counts();
    Progress {
        total: schedule.tasks().len(),
        pending: counts["pending"],
        leased: counts["leased"],
        done: counts["done"],
        failed: counts["failed"],
        stopped: schedule
            .breaker()
            .tripped()
            .map(|trip| trip.reason(schedule.checkpoints())),
    }
}

/// Completion times of the last minute, for throughput (not stored: a restarted
/// coordinator starts counting afresh).
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    recent: VecDeque<u64>,
}

impl Throughput {
    pub fn record(&mut self, now_ms: u64) {
        self.recent.push_back(now_ms);
    }

    /// Completions per second over the last minute.
    pub fn per_second(&mut self, now_ms: u64) -> f64 {
        while self
            .recent
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) > 60_000)
        {
            self.recent.pop_front();
        }
        let window_ms = self
            .recent
            .front()
            .map(|&t| now_ms.saturating_sub(t).max(1000))
            .unwrap_or(60_000);
        self.recent.len() as f64 / (window_ms as f64 / 1000.0)
    }
}

/// Per model, the aggregates of the `(α0, w)` results in so far (no spectra: those are
/// in the exports), counted as the spec's duplicate policy says.
pub fn live_aggregates<'a>(
    schedule: &Schedule,
    ledger: &'a Ledger,
    policy: DuplicatePolicy,
) -> BTreeMap<&'a str, Vec<StepAggregate>> {
    let results = schedule.tasks().iter().filter_map(|t| {
        t.result.map(|r| {
            let point = SeedPoint {
                step: 0, // the selection sets the step each point counts for
                seed: t.seed,
                alpha0: r.alpha0,
                width: r.width,
                alpha: Vec::new(),
                f_alpha: Vec::new(),
            };
            (t.checkpoint, point)
        })
    });
    Selection::new(ledger, policy).aggregates(results)
}

/// The status report at `now_ms`, with `throughput` completions per second (see
/// [`Throughput::per_second`]) and the [`live_aggregates`] of the same moment.
pub fn report(
    spec: &SweepSpec,
    schedule: &Schedule,
    ledger: &Ledger,
    aggregates: &BTreeMap<&str, Vec<StepAggregate>>,
    throughput: f64,
    now_ms: u64,
    draining: bool,
) -> StatusReport {
    let counts = schedule.counts();
    let remaining = counts["pending"] + counts["leased"];
    let eta = (throughput > 0.0).then(|| remaining as f64 / throughput);
    StatusReport {
        sweep: spec.name.clone(),
        total: schedule.tasks().len(),
        pending: counts["pending"],
        leased: counts["leased"],
        done: counts["done"],
        failed: counts["failed"],
        skipped: counts["skipped"],
        duplicates_ignored: schedule.duplicates(),
        throughput_per_s: throughput,
        eta_seconds: eta,
        draining,
        workers: workers(schedule, now_ms),
        failures: failures(schedule),
        models: models(spec, schedule, ledger, aggregates),
        duplicate_steps: duplicate_steps(ledger),
        retrying: schedule.waiting(),
        unresolved: ledger.unresolved().len(),
        stopped: breaker(schedule, now_ms),
        budget: Vec::new(),
    }
}

fn breaker(schedule: &Schedule, now_ms: u64) -> Option<BreakerStatus> {
    let breaker = schedule.breaker();
    let trip = breaker.tripped()?;
    let checkpoints = schedule.checkpoints();
    Some(BreakerStatus {
        reason: trip.reason(checkpoints),
        cause: trip.cause,
        seconds_stopped: now_ms.saturating_sub(trip.since_ms) as f64 / 1000.0,
        implicated: trip
            .implicated
            .iter()
            .map(|&c| CheckpointName {
                model: checkpoints[c].model.clone(),
                step: checkpoints[c].step,
            })
            .collect(),
        failed_probes: trip.failed_probes,
        next_probe_in_s: breaker
            .next_probe_ms()
            .map(|at| at.saturating_sub(now_ms) as f64 / 1000.0),
    })
}

/// Workers seen within a lease period or holding leases.
fn workers(schedule: &Schedule, now_ms: u64) -> Vec<WorkerStatus> {
    let leased_by = schedule.leased_by();
    schedule
        .workers()
        .iter()
        .filter(|(id, _)| schedule.worker_active(id, now_ms) || leased_by.contains_key(id.as_str()))
        .map(|(id, w)| WorkerStatus {
            id: id.clone(),
            host: w.host.clone(),
            cores: w.cores,
            version: w.version.clone(),
            seconds_since_seen: now_ms.saturating_sub(w.last_seen_ms) as f64 / 1000.0,
            leased: leased_by.get(id.as_str()).copied().unwrap_or(0),
        })
        .collect()
}

fn failures(schedule: &Schedule) -> Vec<FailureStatus> {
    schedule
        .tasks()
        .iter()
        .filter(|t| t.progress.state == TaskState::Failed)
        .map(|t| {
            let key = &schedule.checkpoints()[t.checkpoint];
            FailureStatus {
                model: key.model.clone(),
                step: key.step,
                seed: t.seed,
                attempts: t.progress.attempts,
                error: t.progress.last_error.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// Per model in spec order: tasks done, fetch costs, and the latest step's `E`.
fn models(
    spec: &SweepSpec,
    schedule: &Schedule,
    ledger: &Ledger,
    aggregates: &BTreeMap<&str, Vec<StepAggregate>>,
) -> Vec<ModelProgress> {
    let mut progress: HashMap<&str, (usize, usize, FetchTotals)> = HashMap::new();
    for t in schedule.tasks() {
        let model = schedule.checkpoints()[t.checkpoint].model.as_str();
        let (done, total, fetch) = progress.entry(model).or_default();
        *total += 1;
        *done += usize::from(t.progress.state == TaskState::Done);
        if let Some(r) = t.result {
            fetch.bytes_fetched += r.bytes_fetched;
            fetch.requests += u64::from(r.requests);
            fetch.fetch_ms += r.fetch_ms;
        }
    }
    let mut formats: HashMap<&str, BTreeMap<String, usize>> = HashMap::new();
    for (slot, key) in ledger.checkpoints().iter().enumerate() {
        if let Some(format) = ledger.format_of(slot) {
            let counts = formats.entry(key.model.as_str()).or_default();
            *counts.entry(format.to_string()).or_default() += 1;
        }
    }
    spec.models
        .iter()
        .map(|m| {
            let (done, total, fetch) = progress.get(m.repo.as_str()).copied().unwrap_or_default();
            let latest = aggregates.get(m.repo.as_str()).and_then(|a| a.last());
            ModelProgress {
                model: m.repo.clone(),
                done,
                total,
                latest_step: latest.map(|a| a.step),
                latest_e: latest.and_then(|a| a.e_from_means),
                fetch,
                weights_formats: formats.remove(m.repo.as_str()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Steps serving the same weights as a later step of their model.
pub fn duplicate_steps(ledger: &Ledger) -> Vec<DuplicateStatus> {
    ledger
        .duplicates()
        .into_iter()
        .map(|(slot, original)| {
            let key = &ledger.checkpoints()[slot];
            DuplicateStatus {
                model: key.model.clone(),
                step: key.step,
                duplicate_of: ledger.checkpoints()[original].step,
                weights_sha256: ledger.weights_of(slot).unwrap_or_default().to_string(),
            }
        })
        .collect()
}
