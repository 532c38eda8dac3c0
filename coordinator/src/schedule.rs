//! Scheduling, in memory and pure: the grid's tasks, the pending queues in scheduling
//! rank, tasks waiting out a transient failure, leases and their deadlines, which worker
//! holds which checkpoint, the workers, and the [`Breaker`]'s say on failures and
//! leasing. Every decision returns an [`Outcome`]: its answer and the [`Change`]s the
//! store must make durable before the answer may be given. Nothing here does I/O, so
//! tests drive it directly and the store never decides anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use neuromfa_common::SeedResult;
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, Leasing, Strike, Verdict};
use crate::error::StateError;
use crate::record::{
    Change, Failure, FailureClass, StoredBreaker, StoredTask, StoredWorker, TaskMetrics,
    TaskProgress, TaskState,
};
use crate::spec::{CheckpointKey, SweepSpec};

type Result<T> = std::result::Result<T, StateError>;

/// Wait after a task's first transient failure when the Hub named none; doubled after
/// each further one in a row.
const TRANSIENT_FIRST_WAIT_MS: u64 = 1_000;
/// Longest wait after transient failures when the Hub named none.
const TRANSIENT_MAX_WAIT_MS: u64 = 300_000;
/// Longest wait a Hub's `Retry-After` is honoured for.
const RETRY_AFTER_MAX_MS: u64 = 3_600_000;

/// One leased task as handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub task_id: i64,
    pub model: String,
    pub revision: String,
    pub step: u64,
    pub seed: u32,
    pub attempt: u32,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Accepted,
    /// The task was already done: counted, not stored again.
    Duplicate,
}

/// A decision's answer and what it changed. The changes must be stored, in the
/// transaction that acknowledges the answer, before the answer is given.
#[derive(Debug)]
#[must_use = "its changes must be stored before its value is acknowledged"]
pub struct Outcome<T> {
    pub value: T,
    pub changes: Vec<Change>,
}

impl<T> Outcome<T> {
    fn unchanged(value: T) -> Self {
        Outcome {
            value,
            changes: Vec::new(),
        }
    }
}

/// What the schedule keeps of a task's result: enough for live aggregates and costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResultSummary {
    pub alpha0: f64,
    pub width: f64,
    pub bytes_fetched: u64,
    pub requests: u32,
    pub fetch_ms: u64,
}

impl ResultSummary {
    fn new(alpha0: f64, width: f64, metrics: &TaskMetrics) -> Self {
        ResultSummary {
            alpha0,
            width,
            bytes_fetched: metrics.bytes_fetched,
            requests: metrics.requests,
            fetch_ms: metrics.fetch_ms,
        }
    }
}

/// What the schedule's decisions did since it was built (not stored: a restarted
/// coordinator counts afresh, as a Prometheus counter may). Fetch costs are keyed by fetch
/// mode (`full`, `ranges`; empty when the worker did not say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Tasks leased (a lease of several seeds counts each).
    pub leases: u64,
    /// Results accepted.
    pub completions: u64,
    /// Leases that lapsed without a heartbeat.
    pub expiries: u64,
    /// Failed attempts (reported or lapsed) queued again.
    pub retries: u64,
    /// Tasks marked failed.
    pub failures: u64,
    /// Leases given back by stopping workers.
    pub releases: u64,
    /// Per fetch mode: bytes and requests of the accepted results.
    pub fetched: BTreeMap<String, FetchCount>,
}

/// Bytes and requests fetched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchCount {
    pub bytes: u64,
    pub requests: u64,
}

/// One task of the grid.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    /// Index into [`Schedule::checkpoints`].
    pub checkpoint: usize,
    pub seed: u32,
    pub progress: TaskProgress,
    pub result: Option<ResultSummary>,
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Worker {
    pub host: String,
    pub cores: u32,
    pub version: String,
    pub last_seen_ms: u64,
    /// Checkpoints whose weights the worker holds.
    cached: HashSet<usize>,
}

/// The sweep's tasks, queues, leases and workers.
// Clone: the dashboard derives its snapshot from a copy, away from the state thread.
#[derive(Debug, Clone)]
pub struct Schedule {
    checkpoints: Vec<CheckpointKey>,
    /// Scheduling rank of each checkpoint (step-major), and its inverse.
    rank_of_checkpoint: Vec<usize>,
    checkpoint_at_rank: Vec<usize>,
    lease_ms: u64,
    max_attempts: u32,
    tasks: Vec<Task>,
    slot_of_task: HashMap<i64, usize>,
    /// Pending task slots per checkpoint, keyed by scheduling rank.
    pending: BTreeMap<usize, BTreeSet<usize>>,
    /// Pending tasks waiting out a transient failure, by when they may go out again (not
    /// stored: a restarted coordinator tries them at once).
    waiting: BTreeSet<(u64, usize)>,
    wait_of: HashMap<usize, u64>,
    /// Transient failures in a row per task, for the wait after the next.
    transient_failures: HashMap<usize, u32>,
    leased: HashSet<usize>,
    /// Checkpoints whose tasks are not leased yet: what they serve is still being resolved
    /// (not stored: a restarted coordinator resolves again and says again what to hold).
    held: HashSet<usize>,
    /// The worker that last leased each checkpoint: its seeds go there first.
    owner: HashMap<usize, String>,
    workers: BTreeMap<String, Worker>,
    /// Results received for tasks already done.
    duplicates: u64,
    breaker: Breaker,
    tally: Tally,
}

impl Schedule {
    /// The schedule of `spec`'s grid holding `tasks` (those outside the grid's
    /// checkpoints or seeds are left out: kept on disk, not scheduled).
    pub fn restore(
        spec: &SweepSpec,
        tasks: impl IntoIterator<Item = StoredTask>,
        workers: Vec<StoredWorker>,
        duplicates: u64,
    ) -> Self {
        let checkpoints = spec.checkpoints();
        // Step-major order: every model's early steps first, so E appears early for all.
        let model_rank: HashMap<&str, usize> = spec
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.repo.as_str(), i))
            .collect();
        let mut checkpoint_at_rank: Vec<usize> = (0..checkpoints.len()).collect();
        checkpoint_at_rank.sort_by_key(|&i| {
            let key = &checkpoints[i];
            (key.step, model_rank.get(key.model.as_str()).copied())
        });
        let mut rank_of_checkpoint = vec![0; checkpoints.len()];
        for (rank, &slot) in checkpoint_at_rank.iter().enumerate() {
            rank_of_checkpoint[slot] = rank;
        }
        let mut schedule = Schedule {
            checkpoints,
            rank_of_checkpoint,
            checkpoint_at_rank,
            lease_ms: spec.lease_ms(),
            max_attempts: spec.coordinator.max_attempts,
            tasks: Vec::new(),
            slot_of_task: HashMap::new(),
            pending: BTreeMap::new(),
            waiting: BTreeSet::new(),
            wait_of: HashMap::new(),
            transient_failures: HashMap::new(),
            leased: HashSet::new(),
            held: HashSet::new(),
            owner: HashMap::new(),
            workers: BTreeMap::new(),
            duplicates,
            breaker: Breaker::new(spec.probe_ms()),
            tally: Tally::default(),
        };
        schedule.place_tasks(tasks, &spec.seed_list());
        for w in workers {
            schedule.workers.insert(
                w.id,
                Worker {
                    host: w.host,
                    cores: w.cores,
                    version: w.version,
                    last_seen_ms: w.registered_ms,
                    cached: HashSet::new(),
                },
            );
        }
        schedule
    }

    /// Each checkpoint's index, by (model, step).
    fn slot_of_checkpoint(&self) -> HashMap<(&str, u64), usize> {
        self.checkpoints
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.model.as_str(), k.step), i))
            .collect()
    }

    fn place_tasks(&mut self, stored: impl IntoIterator<Item = StoredTask>, seeds: &[u32]) {
        let in_grid: HashSet<u32> = seeds.iter().copied().collect();
        let slot_of_checkpoint = self.slot_of_checkpoint();
        let mut tasks = Vec::new();
        for t in stored {
            let Some(&checkpoint) = slot_of_checkpoint.get(&(t.model.as_str(), t.step)) else {
                continue;
            };
            if !in_grid.contains(&t.seed) {
                continue;
            }
            tasks.push(Task {
                id: t.id,
                checkpoint,
                seed: t.seed,
                progress: t.progress,
                result: t
                    .result
                    .map(|r| ResultSummary::new(r.alpha0, r.width, &r.metrics)),
            });
        }
        self.slot_of_task = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        self.tasks = tasks;
        for (slot, task) in self.tasks.iter().enumerate() {
            match task.progress.state {
                TaskState::Pending => {
                    self.pending
                        .entry(self.rank_of_checkpoint[task.checkpoint])
                        .or_default()
                        .insert(slot);
                }
                TaskState::Leased => {
                    self.leased.insert(slot);
                    if let Some(worker) = &task.progress.worker {
                        self.owner.insert(task.checkpoint, worker.clone());
                    }
                }
                TaskState::Done | TaskState::Failed | TaskState::Skipped => {}
            }
        }
    }

    /// The same schedule with the breaker as `stored` left it.
    pub fn with_breaker(mut self, stored: Option<StoredBreaker>) -> Self {
        if let Some(stored) = stored {
            let slot_of = self.slot_of_checkpoint();
            self.breaker = Breaker::restore(self.breaker.probe_ms(), stored, |name| {
                slot_of.get(&(name.model.as_str(), name.step)).copied()
            });
        }
        self
    }

    /// Keeps what `old` knew of its workers' liveness and caches and which checkpoints it
    /// held back, none of which is stored (after a rebuild from the store).
    pub fn keep_liveness(&mut self, old: Schedule) {
        self.held = old.held;
        for (id, old) in old.workers {
            if let Some(w) = self.workers.get_mut(&id) {
                w.last_seen_ms = old.last_seen_ms;
                w.cached = old.cached;
            }
        }
    }

    /// The grid's checkpoints; tasks refer to them by index.
    pub fn checkpoints(&self) -> &[CheckpointKey] {
        &self.checkpoints
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    pub fn workers(&self) -> &BTreeMap<String, Worker> {
        &self.workers
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Results received for tasks already done.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// What the decisions did since the schedule was built.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Puts back a tally taken earlier (the state rolls a failed batch back).
    pub fn set_tally(&mut self, tally: Tally) {
        self.tally = tally;
    }

    /// The task with this id.
    pub fn task(&self, task_id: i64) -> Option<&Task> {
        self.slot_of_task
            .get(&task_id)
            .map(|&slot| &self.tasks[slot])
    }

    /// True when no task is pending (waiting or not) or leased.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.waiting.is_empty() && self.leased.is_empty()
    }

    /// Pending tasks waiting out a transient failure.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The breaker, tripped or not.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Why leasing stopped, while the breaker is tripped.
    pub fn stopped(&self) -> Option<String> {
        self.breaker.tripped().map(|t| t.reason(&self.checkpoints))
    }

    /// Tasks per state, every state present.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::from([
            ("pending", 0),
            ("leased", 0),
            ("done", 0),
            ("failed", 0),
            ("skipped", 0),
        ]);
        for t in &self.tasks {
            *counts.entry(t.progress.state.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Leased tasks per worker.
    pub fn leased_by(&self) -> HashMap<&str, usize> {
        let mut leased_by: HashMap<&str, usize> = HashMap::new();
        for &slot in &self.leased {
            if let Some(w) = &self.tasks[slot].progress.worker {
                *leased_by.entry(w.as_str()).or_insert(0) += 1;
            }
        }
        leased_by
    }

    /// Seen within a lease period.
    pub fn worker_active(&self, worker: &str, now_ms: u64) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| now_ms.saturating_sub(w.last_seen_ms) <= self.lease_ms)
    }

    pub fn register_worker(
        &mut self,
        host: &str,
        cores: u32,
        version: &str,
        now_ms: u64,
    ) -> Outcome<String> {
        let id = format!("{}-{:08x}", sanitize(host), rand::random::<u32>());
        self.workers.insert(
            id.clone(),
            Worker {
                host: host.to_string(),
                cores,
                version: version.to_string(),
                last_seen_ms: now_ms,
                cached: HashSet::new(),
            },
        );
        tracing::info!(worker = %id, host, cores, version, "worker registered");
        Outcome {
            value: id.clone(),
            changes: vec![Change::WorkerRegistered(StoredWorker {
                id,
                host: host.to_string(),
                cores,
                version: version.to_string(),
                registered_ms: now_ms,
            })],
        }
    }

    fn touch_worker(&mut self, worker: &str, now_ms: u64) -> Result<()> {
        let record = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| StateError::UnknownWorker(worker.to_string()))?;
        record.last_seen_ms = now_ms;
        Ok(())
    }

    /// Picks the checkpoint whose pending seeds this worker should take next: its own,
    /// then one whose weights it holds, then one nobody active holds, then any.
    fn choose_checkpoint(&self, worker: &str, now_ms: u64) -> Option<usize> {
        let mut leasable = self.leasable_ranks();
        let free = |rank: &usize| {
            let slot = self.checkpoint_at_rank[*rank];
            match self.owner.get(&slot) {
                None => true,
                Some(owner) => owner == worker || !self.worker_active(owner, now_ms),
            }
        };
        let mine = leasable.clone().find(|rank| {
            let slot = self.checkpoint_at_rank[*rank];
            self.owner.get(&slot).is_some_and(|o| o == worker)
        });
        let cached = self.workers.get(worker).and_then(|w| {
            leasable
                .clone()
                .find(|rank| w.cached.contains(&self.checkpoint_at_rank[*rank]) && free(rank))
        });
        mine.or(cached)
            .or_else(|| leasable.clone().find(|rank| free(rank)))
            // Nothing unclaimed: help with a checkpoint another worker holds rather than idle.
            .or_else(|| leasable.next())
    }

    /// Ranks with pending tasks whose checkpoint is not held back, in scheduling order.
    fn leasable_ranks(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        self.pending
            .keys()
            .copied()
            .filter(|&rank| !self.held.contains(&self.checkpoint_at_rank[rank]))
    }

    /// The checkpoint to probe a tripped breaker with: the first pending one the trip did
    /// not implicate, else the first.
    fn choose_probe(&self) -> Option<usize> {
        let implicated = |rank: &usize| self.breaker.implicates(self.checkpoint_at_rank[*rank]);
        let mut ranks = self.leasable_ranks();
        ranks
            .clone()
            .find(|rank| !implicated(rank))
            .or_else(|| ranks.next())
    }

    /// Queues again the tasks whose wait is over.
    fn wake(&mut self, now_ms: u64) {
        while let Some(&(at, slot)) = self.waiting.first() {
            if at > now_ms {
                break;
            }
            self.waiting.pop_first();
            self.wait_of.remove(&slot);
            let rank = self.rank_of_checkpoint[self.tasks[slot].checkpoint];
            self.pending.entry(rank).or_default().insert(slot);
        }
    }

    /// Leases up to `max_tasks` seeds of one checkpoint to `worker`; while the breaker is
    /// tripped, nothing, or one task when a probe is due.
    pub fn lease(
        &mut self,
        worker: &str,
        max_tasks: usize,
        now_ms: u64,
    ) -> Result<Outcome<Vec<Lease>>> {
        self.touch_worker(worker, now_ms)?;
        self.wake(now_ms);
        let (rank, max_tasks) = match self.breaker.leasing(now_ms) {
            Leasing::Open => (self.choose_checkpoint(worker, now_ms), max_tasks),
            Leasing::Probe => (self.choose_probe(), 1),
            Leasing::Held => (None, 0),
        };
        let Some(rank) = rank else {
            return Ok(Outcome::unchanged(Vec::new()));
        };
        let slots: Vec<usize> = match self.pending.get_mut(&rank) {
            Some(set) => {
                let take: Vec<usize> = set.iter().take(max_tasks.max(1)).copied().collect();
                for slot in &take {
                    set.remove(slot);
                }
                if set.is_empty() {
                    self.pending.remove(&rank);
                }
                take
            }
            None => Vec::new(),
        };
        let deadline = now_ms + self.lease_ms;
        let mut leases = Vec::with_capacity(slots.len());
        let mut changes = Vec::with_capacity(slots.len());
        for slot in slots {
            let task = &mut self.tasks[slot];
            task.progress.state = TaskState::Leased;
            task.progress.attempts += 1;
            task.progress.worker = Some(worker.to_string());
            task.progress.deadline_ms = deadline;
            self.leased.insert(slot);
            self.tally.leases += 1;
            changes.push(self.task_row(slot));
            let task = &self.tasks[slot];
            let key = &self.checkpoints[task.checkpoint];
            leases.push(Lease {
                task_id: task.id,
                model: key.model.clone(),
                revision: key.revision.clone(),
                step: key.step,
                seed: task.seed,
                attempt: task.progress.attempts,
                deadline_ms: deadline,
            });
        }
        let checkpoint = self.checkpoint_at_rank[rank];
        if !leases.is_empty() {
            self.owner.insert(checkpoint, worker.to_string());
            if let Some(w) = self.workers.get_mut(worker) {
                w.cached.insert(checkpoint);
            }
        }
        if let (Some(probe), Some(_)) = (leases.first(), self.breaker.tripped()) {
            self.breaker.probe_sent(probe.task_id);
            tracing::info!(
                model = %probe.model, step = probe.step, seed = probe.seed, worker,
                "leasing is stopped: probing with one task"
            );
        }
        Ok(Outcome {
            value: leases,
            changes,
        })
    }

    /// Extends `worker`'s leases on `task_ids`; returns the ids it no longer holds.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        task_ids: &[i64],
        now_ms: u64,
    ) -> Result<Outcome<Vec<i64>>> {
        self.touch_worker(worker, now_ms)?;
        let deadline = now_ms + self.lease_ms;
        let mut lost = Vec::new();
        let mut changes = Vec::new();
        for &id in task_ids {
            match self.held_by(id, worker) {
                Some(slot) => {
                    self.tasks[slot].progress.deadline_ms = deadline;
                    changes.push(Change::LeaseExtended {
                        id,
                        deadline_ms: deadline,
                    });
                }
                None => lost.push(id),
            }
        }
        Ok(Outcome {
            value: lost,
            changes,
        })
    }

    /// The task's slot when `worker` holds its lease.
    fn held_by(&self, task_id: i64, worker: &str) -> Option<usize> {
        self.slot_of_task.get(&task_id).copied().filter(|&slot| {
            let t = &self.tasks[slot];
            t.progress.state == TaskState::Leased && t.progress.worker.as_deref() == Some(worker)
        })
    }

    fn slot(&self, task_id: i64) -> Result<usize> {
        self.slot_of_task
            .get(&task_id)
            .copied()
            .ok_or(StateError::UnknownTask(task_id))
    }

    fn set_state(&mut self, slot: usize, state: TaskState) {
        let task = &mut self.tasks[slot];
        let rank = self.rank_of_checkpoint[task.checkpoint];
        if task.progress.state == TaskState::Pending {
            if let Some(set) = self.pending.get_mut(&rank) {
                set.remove(&slot);
                if set.is_empty() {
                    self.pending.remove(&rank);
                }
            }
            if let Some(at) = self.wait_of.remove(&slot) {
                self.waiting.remove(&(at, slot));
            }
        }
        if task.progress.state == TaskState::Leased {
            self.leased.remove(&slot);
        }
        task.progress.state = state;
        match state {
            TaskState::Pending => {
                self.pending.entry(rank).or_default().insert(slot);
            }
            TaskState::Leased => {
                self.leased.insert(slot);
            }
            TaskState::Done | TaskState::Failed | TaskState::Skipped => {}
        }
        if state != TaskState::Leased {
            self.tasks[slot].progress.worker = None;
        }
    }

    /// The task's whole row, to store.
    fn task_row(&self, slot: usize) -> Change {
        let t = &self.tasks[slot];
        Change::TaskUpdated {
            id: t.id,
            progress: t.progress.clone(),
        }
    }

    /// Takes a task's result, once. A result for a task already done is counted and
    /// ignored; a late result for a task whose lease lapsed is still accepted.
    pub fn complete(
        &mut self,
        worker: &str,
        task_id: i64,
        result: SeedResult,
        metrics: TaskMetrics,
        now_ms: u64,
    ) -> Result<Outcome<Completion>> {
        let slot = self.slot(task_id)?;
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now_ms;
        }
        let (step, seed) = (
            self.checkpoints[self.tasks[slot].checkpoint].step,
            self.tasks[slot].seed,
        );
        if result.step != step || result.seed != seed {
            return Err(StateError::MismatchedResult {
                task: task_id,
                step,
                seed,
                got_step: result.step,
                got_seed: result.seed,
            });
        }
        if self.tasks[slot].progress.state == TaskState::Done {
            self.duplicates += 1;
            return Ok(Outcome {
                value: Completion::Duplicate,
                changes: vec![Change::DuplicateCounted],
            });
        }
        self.set_state(slot, TaskState::Done);
        self.transient_failures.remove(&slot);
        let task = &mut self.tasks[slot];
        task.progress.last_error = None;
        task.result = Some(ResultSummary::new(result.alpha0, result.width, &metrics));
        self.tally.completions += 1;
        let fetched = self
            .tally
            .fetched
            .entry(metrics.fetch_mode.clone())
            .or_default();
        fetched.bytes += metrics.bytes_fetched;
        fetched.requests += u64::from(metrics.requests);
        let stored = Change::ResultStored {
            task_id,
            worker: worker.to_string(),
            result: Box::new(result),
            metrics,
            finished_ms: now_ms,
        };
        let mut changes = vec![stored, self.task_row(slot)];
        let (changed, closed) = self.breaker.succeeded();
        if let Some(trip) = closed {
            tracing::info!(
                reason = %trip.reason(&self.checkpoints), task = task_id,
                "a task succeeded: leasing resumes"
            );
        }
        if changed {
            changes.push(self.breaker_row());
        }
        Ok(Outcome {
            value: Completion::Accepted,
            changes,
        })
    }

    /// The breaker's whole record, to store.
    fn breaker_row(&self) -> Change {
        Change::BreakerUpdated(self.breaker.record(&self.checkpoints))
    }

    /// Records a failed attempt. A transient failure queues the task again after a wait
    /// and costs nothing; any other goes by the breaker: it fails the task, or gives the
    /// attempt back (tripping the breaker, or while it is tripped). Returns whether the
    /// task will be tried again.
    pub fn fail(
        &mut self,
        worker: &str,
        task_id: i64,
        failure: Failure,
        now_ms: u64,
    ) -> Result<Outcome<bool>> {
        let slot = self.slot(task_id)?;
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now_ms;
        }
        // Only the current lease holder speaks for the task.
        if self.held_by(task_id, worker).is_none() {
            return Ok(Outcome::unchanged(false));
        }
        let task = &self.tasks[slot];
        let checkpoint = task.checkpoint;
        let key = &self.checkpoints[checkpoint];
        tracing::warn!(
            model = %key.model, step = key.step, seed = task.seed,
            attempt = task.progress.attempts, worker, error = %failure.error,
            class = %failure.class, "task failed"
        );
        if failure.class == FailureClass::Transient {
            let change = self.retry_later(slot, failure, now_ms);
            return Ok(Outcome {
                value: true,
                changes: vec![change],
            });
        }
        let strike = Strike {
            task_id,
            checkpoint,
            class: failure.class,
        };
        let verdict = self.breaker.failed(strike, &failure.error, now_ms);
        let mut changes = Vec::new();
        let will_retry = match verdict {
            Verdict::Charge => {
                let (exhausted, change) = self.record_failed_attempt(slot, failure.error, true);
                changes.push(change);
                !exhausted
            }
            Verdict::Hold => {
                changes.push(self.give_back(slot, Some(failure.error)));
                true
            }
            Verdict::Trip(tasks) => {
                self.tasks[slot].progress.last_error = Some(failure.error);
                for id in tasks {
                    if let Some(&given) = self.slot_of_task.get(&id) {
                        changes.push(self.give_back(given, None));
                    }
                }
                if let Some(trip) = self.breaker.tripped() {
                    tracing::error!(
                        reason = %trip.reason(&self.checkpoints), held = changes.len(),
                        "systemic failure: leasing stopped, the failed tasks are pending again \
                         with their attempts (`neuromfa sweep resume` to resume now)"
                    );
                }
                true
            }
        };
        changes.push(self.breaker_row());
        Ok(Outcome {
            value: will_retry,
            changes,
        })
    }

    /// Queues a task that failed transiently again once the wait the Hub asked for (or
    /// its own, growing with the failures in a row) is over; the attempt is given back.
    fn retry_later(&mut self, slot: usize, failure: Failure, now_ms: u64) -> Change {
        let in_a_row = self.transient_failures.entry(slot).or_insert(0);
        *in_a_row += 1;
        let wait = match failure.retry_after_ms {
            Some(ms) => ms.min(RETRY_AFTER_MAX_MS),
            None => TRANSIENT_FIRST_WAIT_MS
                .saturating_mul(1 << (*in_a_row - 1).min(16))
                .min(TRANSIENT_MAX_WAIT_MS),
        };
        let change = self.give_back(slot, Some(failure.error));
        let rank = self.rank_of_checkpoint[self.tasks[slot].checkpoint];
        if let Some(set) = self.pending.get_mut(&rank) {
            set.remove(&slot);
            if set.is_empty() {
                self.pending.remove(&rank);
            }
        }
        let at = now_ms.saturating_add(wait);
        self.waiting.insert((at, slot));
        self.wait_of.insert(slot, at);
        change
    }

    /// Gives a leased or failed task its last attempt back and queues it again (`error`
    /// as its last, when given); a task in any other state is left as it is.
    fn give_back(&mut self, slot: usize, error: Option<String>) -> Change {
        if matches!(
            self.tasks[slot].progress.state,
            TaskState::Leased | TaskState::Failed
        ) {
            let task_id = self.tasks[slot].id;
            self.breaker.lease_ended(task_id);
            let progress = &mut self.tasks[slot].progress;
            progress.attempts = progress.attempts.saturating_sub(1);
            if let Some(error) = error {
                progress.last_error = Some(error);
            }
            self.set_state(slot, TaskState::Pending);
        }
        self.task_row(slot)
    }

    /// Resumes leasing if the breaker is tripped (told to, by someone who fixed the
    /// cause); returns why it had stopped.
    pub fn resume(&mut self) -> Outcome<Option<String>> {
        let Some(trip) = self.breaker.resume() else {
            return Outcome::unchanged(None);
        };
        let reason = trip.reason(&self.checkpoints);
        tracing::info!(%reason, "told to resume: leasing resumes");
        Outcome {
            value: Some(reason),
            changes: vec![self.breaker_row()],
        }
    }

    /// Records why an attempt failed and requeues the task, or marks it failed when it is
    /// out of attempts or the failure is permanent. Returns whether it is out.
    fn record_failed_attempt(
        &mut self,
        slot: usize,
        error: String,
        permanent: bool,
    ) -> (bool, Change) {
        let exhausted = permanent || self.tasks[slot].progress.attempts >= self.max_attempts;
        if exhausted {
            self.tally.failures += 1;
        } else {
            self.tally.retries += 1;
        }
        self.tasks[slot].progress.last_error = Some(error);
        let next = if exhausted {
            TaskState::Failed
        } else {
            TaskState::Pending
        };
        self.set_state(slot, next);
        (exhausted, self.task_row(slot))
    }

    /// Gives leases back without counting the attempt (a worker shutting down).
    pub fn release(&mut self, worker: &str, task_ids: &[i64]) -> Outcome<usize> {
        let mut changes = Vec::new();
        for &id in task_ids {
            if let Some(slot) = self.held_by(id, worker) {
                self.tally.releases += 1;
                changes.push(self.give_back(slot, None));
            }
        }
        Outcome {
            value: changes.len(),
            changes,
        }
    }

    /// Returns lapsed leases to the queue, or fails tasks out of attempts.
    pub fn expire(&mut self, now_ms: u64) -> Outcome<usize> {
        let mut lapsed: Vec<usize> = self
            .leased
            .iter()
            .copied()
            .filter(|&slot| self.tasks[slot].progress.deadline_ms < now_ms)
            .collect();
        lapsed.sort_unstable();
        let mut changes = Vec::with_capacity(lapsed.len());
        for &slot in &lapsed {
            let task = &self.tasks[slot];
            let worker = task.progress.worker.clone().unwrap_or_default();
            let key = &self.checkpoints[task.checkpoint];
            tracing::warn!(
                model = %key.model, step = key.step, seed = task.seed, attempt = task.progress.attempts,
                worker = %worker, "lease expired"
            );
            let error = format!(
                "lease expired: worker {worker} stopped heartbeating (attempt {})",
                task.progress.attempts
            );
            let task_id = task.id;
            self.breaker.lease_ended(task_id);
            changes.push(self.record_failed_attempt(slot, error, false).1);
        }
        self.tally.expiries += lapsed.len() as u64;
        Outcome {
            value: lapsed.len(),
            changes,
        }
    }

    /// Re-queues every failed task with a fresh attempt budget.
    pub fn retry_failed(&mut self) -> Outcome<usize> {
        let failed: Vec<usize> = (0..self.tasks.len())
            .filter(|&s| self.tasks[s].progress.state == TaskState::Failed)
            .collect();
        let mut changes = Vec::with_capacity(failed.len());
        for &slot in &failed {
            self.tasks[slot].progress.attempts = 0;
            self.set_state(slot, TaskState::Pending);
            changes.push(self.task_row(slot));
        }
        Outcome {
            value: failed.len(),
            changes,
        }
    }

    /// Leaves out the pending tasks of the checkpoints `skip` names (marks them
    /// skipped) and queues again the skipped tasks of those it no longer names.
    pub fn skip_checkpoints(&mut self, skip: impl Fn(usize) -> bool) -> Outcome<usize> {
        let mut changes = Vec::new();
        for slot in 0..self.tasks.len() {
            let skipped = skip(self.tasks[slot].checkpoint);
            let next = match self.tasks[slot].progress.state {
                TaskState::Pending if skipped => TaskState::Skipped,
                TaskState::Skipped if !skipped => TaskState::Pending,
                _ => continue,
            };
            self.set_state(slot, next);
            changes.push(self.task_row(slot));
        }
        Outcome {
            value: changes.len(),
            changes,
        }
    }

    /// Holds back the tasks of the checkpoints `hold` names (they stay pending, and are
    /// not leased) and lets the others go. Not stored: whoever holds checkpoints back says
    /// so again after a restart.
    pub fn hold_checkpoints(&mut self, hold: impl Fn(usize) -> bool) {
        self.held = (0..self.checkpoints.len()).filter(|&c| hold(c)).collect();
    }

    /// Checkpoints held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// A worker id's prefix from its host name: letters, digits and `-` only.
fn sanitize(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if cleaned.is_empty() {
        "worker".into()
    } else {
        cleaned
    }
}
