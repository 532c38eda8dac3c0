//! A sweep's state: the schedule and the integrity ledger in memory, the store on disk.
//! Every decision's changes are written in the caller's transaction (`begin` …
//! `commit`), and callers acknowledge nothing before `commit` has returned, so an
//! acknowledged lease or result survives a crash of the process or the machine
//! ([`crate::commit`] does this for the gRPC server, batching many requests per commit).

use std::collections::BTreeMap;
use std::path::Path;

use neuromfa_common::stats::StepAggregate;
use neuromfa_common::{AnalysisParams, SeedResult};

pub use crate::error::StateError;
use crate::integrity::{DuplicatePolicy, Ledger};
use crate::record::{Change, TaskMetrics};
use crate::schedule::{Completion, Lease, Outcome, Schedule};
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
}

/// The schedule and the ledger as the store holds them.
fn load(store: &Store, spec: &SweepSpec) -> Result<(Schedule, Ledger)> {
    let schedule = Schedule::restore(
        spec,
        store.tasks(false)?,
        store.workers()?,
        store.duplicates_counted()?,
    );
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

    pub fn lease_ms(&self) -> u64 {
        self.schedule.lease_ms()
    }

    pub fn db_path(&self) -> &Path {
        self.store.path()
    }

    /// Starts a transaction that the next `commit` makes durable.
    pub fn begin(&mut self) -> Result<()> {
        self.store.begin()
    }

    /// Makes everything since `begin` durable. Only then may callers acknowledge.
    pub fn commit(&mut self) -> Result<()> {
        if let Err(e) = self.store.commit() {
            self.reload()?;
            return Err(e);
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
        // Liveness is not durable; keep what we knew.
        self.schedule.keep_liveness(old);
        self.ledger = ledger;
        Ok(())
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

    /// Writes a decision's changes and returns its answer.
    fn store<T>(&mut self, outcome: Outcome<T>) -> Result<T> {
        self.store.apply(&outcome.changes)?;
        for change in &outcome.changes {
            if let Change::ResultStored { finished_ms, .. } = change {
                self.throughput.record(*finished_ms);
            }
        }
        Ok(outcome.value)
    }

    pub fn register_worker(
        &mut self,
        host: &str,
        cores: u32,
        version: &str,
        now_ms: u64,
    ) -> Result<String> {
        let outcome = self.schedule.register_worker(host, cores, version, now_ms);
        self.store(outcome)
    }

    /// Leases up to `max_tasks` seeds of one checkpoint to `worker`.
    pub fn lease(&mut self, worker: &str, max_tasks: usize, now_ms: u64) -> Result<Vec<Lease>> {
        let outcome = self.schedule.lease(worker, max_tasks, now_ms)?;
        self.store(outcome)
    }

    /// Extends `worker`'s leases on `task_ids`; returns the ids it no longer holds.
    pub fn heartbeat(&mut self, worker: &str, task_ids: &[i64], now_ms: u64) -> Result<Vec<i64>> {
        let outcome = self.schedule.heartbeat(worker, task_ids, now_ms)?;
        self.store(outcome)
    }

    /// Stores a task's result, once (see [`Schedule::complete`]).
    pub fn complete(
        &mut self,
        worker: &str,
        task_id: i64,
        result: &SeedResult,
        metrics: TaskMetrics,
        now_ms: u64,
    ) -> Result<Completion> {
        let outcome = self
            .schedule
            .complete(worker, task_id, result, metrics, now_ms)?;
        self.store(outcome)
    }

    /// Records a failed attempt. Returns whether the task will be tried again.
    pub fn fail(
        &mut self,
        worker: &str,
        task_id: i64,
        error: &str,
        permanent: bool,
        now_ms: u64,
    ) -> Result<bool> {
        let outcome = self
            .schedule
            .fail(worker, task_id, error, permanent, now_ms)?;
        self.store(outcome)
    }

    /// Gives leases back without counting the attempt (a worker shutting down).
    pub fn release(&mut self, worker: &str, task_ids: &[i64]) -> Result<usize> {
        let outcome = self.schedule.release(worker, task_ids);
        self.store(outcome)
    }

    /// Returns lapsed leases to the queue, or fails tasks out of attempts.
    pub fn expire_leases(&mut self, now_ms: u64) -> Result<usize> {
        let outcome = self.schedule.expire(now_ms);
        self.store(outcome)
    }

    /// Re-queues every failed task with a fresh attempt budget.
    pub fn retry_failed(&mut self) -> Result<usize> {
        let outcome = self.schedule.retry_failed();
        self.store(outcome)
    }

    /// True when every task is done, failed or skipped.
    pub fn finished(&self) -> bool {
        self.schedule.finished()
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.schedule.counts()
    }

    /// Per-model aggregates from `(α0, w)` of done tasks (no spectra: see `export`).
    pub fn live_aggregates(&self) -> BTreeMap<&str, Vec<StepAggregate>> {
        status::live_aggregates(&self.schedule, &self.ledger, self.spec.duplicates)
    }

    pub fn status(&mut self, now_ms: u64, draining: bool) -> StatusReport {
        status::report(
            &self.spec,
            &self.schedule,
            &self.ledger,
            &mut self.throughput,
            now_ms,
            draining,
        )
    }

    /// Checkpoints whose weights have not been resolved yet.
    pub fn unresolved(&self) -> Vec<CheckpointKey> {
        self.ledger.unresolved()
    }

    /// Records what a checkpoint's revision serves.
    pub fn record_resolution(
        &mut self,
        model: &str,
        step: u64,
        commit: &str,
        weights_sha256: &str,
    ) -> Result<()> {
        match self.ledger.record(model, step, commit, weights_sha256) {
            Some(change) => self.store.apply(&[change]),
            None => Ok(()),
        }
    }

    /// Regroups identical weights and applies the spec's policy: under `skip` and
    /// `reuse` the pending tasks of duplicated checkpoints are not computed; under
    /// `warn` (or once a step is no longer a duplicate) they are queued again.
    pub fn apply_duplicate_policy(&mut self) -> Result<usize> {
        self.ledger.regroup();
        let hold = self.spec.duplicates != DuplicatePolicy::Warn;
        let ledger = &self.ledger;
        let outcome = self
            .schedule
            .skip_checkpoints(|checkpoint| hold && ledger.original_of(checkpoint).is_some());
        self.store(outcome)
    }

    pub fn duplicate_steps(&self) -> Vec<DuplicateStatus> {
        status::duplicate_steps(&self.ledger)
    }
}

/// The spec recorded in a state directory.
pub fn recorded_spec(state_dir: &Path) -> Result<SweepSpec> {
    Store::open_read(state_dir)?.recorded_spec()
}
