//! Scheduling, in memory and pure: the grid's tasks, the pending queues in scheduling
//! rank, leases and their deadlines, which worker holds which checkpoint, and the
//! workers. Every decision returns an [`Outcome`]: its answer and the [`Change`]s the
//! store must make durable before the answer may be given. Nothing here does I/O, so
//! tests drive it directly and the store never decides anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use neuromfa_common::SeedResult;
use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::record::{Change, StoredTask, StoredWorker, TaskMetrics, TaskProgress, TaskState};
use crate::spec::{CheckpointKey, SweepSpec};

type Result<T> = std::result::Result<T, StateError>;

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
#[derive(Debug)]
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
    leased: HashSet<usize>,
    /// The worker that last leased each checkpoint: its seeds go there first.
    owner: HashMap<usize, String>,
    workers: BTreeMap<String, Worker>,
    /// Results received for tasks already done.
    duplicates: u64,
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
            leased: HashSet::new(),
            owner: HashMap::new(),
            workers: BTreeMap::new(),
            duplicates,
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

    fn place_tasks(&mut self, stored: impl IntoIterator<Item = StoredTask>, seeds: &[u32]) {
        let in_grid: HashSet<u32> = seeds.iter().copied().collect();
        let slot_of_checkpoint: HashMap<(&str, u64), usize> = self
            .checkpoints
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.model.as_str(), k.step), i))
            .collect();
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

    /// Keeps what `old` knew of its workers' liveness and caches, which is not stored
    /// (after a rebuild from the store).
    pub fn keep_liveness(&mut self, old: Schedule) {
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

    /// True when no task is pending or leased.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.leased.is_empty()
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
        let free = |rank: &usize| {
            let slot = self.checkpoint_at_rank[*rank];
            match self.owner.get(&slot) {
                None => true,
                Some(owner) => owner == worker || !self.worker_active(owner, now_ms),
            }
        };
        let mine = self.pending.keys().find(|rank| {
            let slot = self.checkpoint_at_rank[**rank];
            self.owner.get(&slot).is_some_and(|o| o == worker)
        });
        let cached = self.workers.get(worker).and_then(|w| {
            self.pending
                .keys()
                .find(|rank| w.cached.contains(&self.checkpoint_at_rank[**rank]) && free(rank))
        });
        mine.or(cached)
            .or_else(|| self.pending.keys().find(|rank| free(rank)))
            // Nothing unclaimed: help with a checkpoint another worker holds rather than idle.
            .or_else(|| self.pending.keys().next())
            .copied()
    }

    /// Leases up to `max_tasks` seeds of one checkpoint to `worker`.
    pub fn lease(
        &mut self,
        worker: &str,
        max_tasks: usize,
        now_ms: u64,
    ) -> Result<Outcome<Vec<Lease>>> {
        self.touch_worker(worker, now_ms)?;
        let Some(rank) = self.choose_checkpoint(worker, now_ms) else {
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
        Ok(Outcome {
            value: Completion::Accepted,
            changes: vec![stored, self.task_row(slot)],
        })
    }

    /// Records a failed attempt. Returns whether the task will be tried again.
    pub fn fail(
        &mut self,
        worker: &str,
        task_id: i64,
        error: &str,
        permanent: bool,
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
        let (exhausted, change) = self.record_failed_attempt(slot, error.to_string(), permanent);
        let task = &self.tasks[slot];
        let key = &self.checkpoints[task.checkpoint];
        tracing::warn!(
            model = %key.model, step = key.step, seed = task.seed,
            attempt = task.progress.attempts, worker, error, will_retry = !exhausted,
            "task failed"
        );
        Ok(Outcome {
            value: !exhausted,
            changes: vec![change],
        })
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
                let progress = &mut self.tasks[slot].progress;
                progress.attempts = progress.attempts.saturating_sub(1);
                self.tally.releases += 1;
                self.set_state(slot, TaskState::Pending);
                changes.push(self.task_row(slot));
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
