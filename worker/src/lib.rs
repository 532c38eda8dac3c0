//! The neuromfa worker: registers with a coordinator, then takes leases — the seeds of one
//! checkpoint at a time — through three stages: fetch the weights from the Hub ([`fetch`]:
//! whole, or only the byte ranges the seeds read), compute each seed's spectrum
//! ([`compute`]), and report each result as soon as it is ready ([`report`]). Heartbeats
//! keep a lease alive through long downloads ([`lease`]); a coordinator that goes away is
//! retried with backoff ([`coordinator`]); shutdown gives unfinished leases back.

mod budget;
mod compute;
mod coordinator;
mod fetch;
mod lease;
mod metrics;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use neuromfa_common::checkpoint::FetchMode;
use neuromfa_proto as proto;
use tokio::sync::watch;
use tracing::Instrument as _;

use coordinator::Coordinator;
pub use coordinator::{connect, Client};
use fetch::FetchStage;
pub use lease::{CheckpointRef, Lease, LeasedTask};
use lease::{Heartbeat, HeldTasks};
pub use metrics::WorkerMetrics;
use report::Reporter;

/// How a worker connects and what it may use.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub coordinator: String,
    pub token: String,
    /// CA certificate (PEM) to trust for an https:// coordinator (else the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// Overrides the Hub endpoint the coordinator announces.
    pub hub_endpoint: Option<String>,
    pub hub_token: Option<String>,
    /// HF cache directory (default: the standard one).
    pub cache_dir: Option<PathBuf>,
    /// Evict finished checkpoints to keep the cache under this many bytes.
    pub cache_max_bytes: Option<u64>,
    /// Seeds leased at a time (all from one checkpoint).
    pub max_tasks: u32,
    /// Give up when the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// Name reported to the coordinator.
    pub host: String,
    /// Overrides the fetch mode the coordinator announces.
    pub fetch_mode: Option<FetchMode>,
    /// Overrides the merge gap the coordinator announces.
    pub merge_gap: Option<u64>,
    /// Where the worker counts what it does (shared by clones).
    pub metrics: WorkerMetrics,
}

impl WorkerOptions {
    pub fn new(coordinator: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            token: token.into(),
            tls_ca: None,
            hub_endpoint: None,
            hub_token: None,
            cache_dir: None,
            cache_max_bytes: None,
            max_tasks: 64,
            give_up_after: Duration::from_secs(600),
            host: worker_name(),
            fetch_mode: None,
            merge_gap: None,
            metrics: WorkerMetrics::default(),
        }
    }
}

/// The name a worker reports: its host, and under Slurm first its job (array task), so
/// `status` tells apart the many workers of one node and names what to `scancel` (first,
/// because the coordinator keeps only the first 40 characters).
pub fn worker_name() -> String {
    let slurm = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        slurm("SLURM_ARRAY_JOB_ID"),
        slurm("SLURM_ARRAY_TASK_ID"),
        slurm("SLURM_JOB_ID"),
    ) {
        (Some(job), Some(task), _) => format!("slurm-{job}_{task}@{}", hostname()),
        (_, _, Some(job)) => format!("slurm-{job}@{}", hostname()),
        _ => hostname(),
    }
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

/// The coordinator stopped the sweep and is about to exit (its breaker tripped, see
/// `docs/failures.md`): no task will come from it. Holds its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepStopped(pub String);

impl std::fmt::Display for SweepStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the coordinator stopped the sweep: {}", self.0)
    }
}

impl std::error::Error for SweepStopped {}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerSummary {
    pub completed: usize,
    pub failed: usize,
    pub released: usize,
}

/// Runs until the sweep is finished, `shutdown` turns true, or the coordinator is lost.
pub async fn run(options: WorkerOptions, shutdown: watch::Receiver<bool>) -> Result<WorkerSummary> {
    let client = connect(
        &options.coordinator,
        &options.token,
        options.tls_ca.as_deref(),
    )?;
    let (coordinator, registration) = Coordinator::register(
        client,
        (
            &options.coordinator,
            &options.token,
            options.tls_ca.as_deref(),
        ),
        options.give_up_after,
        shutdown.clone(),
        &options.host,
    )
    .await?;
    tracing::info!(worker = %coordinator.worker_id(), sweep = %registration.sweep, "registered");
    let mut worker = Worker {
        fetch: FetchStage::new(&options, &registration, &coordinator)?,
        coordinator,
        heartbeat_every: Duration::from_millis(registration.heartbeat_ms.max(50)),
        max_tasks: options.max_tasks,
        shutdown,
        transient_in_a_row: 0,
        pause: None,
        metrics: options.metrics.clone(),
    };
    worker.run().await
}

/// A registered worker and its stages.
struct Worker {
    coordinator: Coordinator,
    fetch: FetchStage,
    heartbeat_every: Duration,
    /// Seeds leased at a time.
    max_tasks: u32,
    shutdown: watch::Receiver<bool>,
    /// Leases in a row whose fetch failed transiently.
    transient_in_a_row: u32,
    /// How long to wait before the next lease (after a transient failure), so that a
    /// rate-limited or failing Hub is not met with lease after lease.
    pause: Option<Duration>,
    metrics: WorkerMetrics,
}

impl Worker {
    /// Leases until the sweep is finished or the worker is stopped.
    async fn run(&mut self) -> Result<WorkerSummary> {
        let mut summary = WorkerSummary::default();
        while !self.coordinator.stopping() {
            let reply = match self.coordinator.lease(self.max_tasks).await {
                Ok(reply) => reply,
                Err(_) if self.coordinator.stopping() => break,
                Err(e) => return Err(e),
            };
            if reply.tasks.is_empty() {
                if reply.sweep_finished {
                    tracing::info!(worker = %self.coordinator.worker_id(), "sweep finished");
                    break;
                }
                if !reply.sweep_stopped.is_empty() {
                    return Err(SweepStopped(reply.sweep_stopped).into());
                }
                self.wait(Duration::from_millis(reply.retry_after_ms.max(50)))
                    .await;
                continue;
            }
            let lease = Lease::from_reply(reply)?;
            let tasks = lease.tasks.len();
            self.metrics.leased(tasks);
            let done = self.run_lease(lease).await;
            self.metrics.let_go(tasks);
            let done = done?;
            summary.completed += done.completed;
            summary.failed += done.failed;
            summary.released += done.released;
            if let Some(pause) = self.pause.take() {
                tracing::info!(
                    pause_ms = pause.as_millis() as u64,
                    "waiting before the next lease after a temporary failure"
                );
                self.wait(pause).await;
            }
        }
        Ok(summary)
    }

    /// Sleeps for `duration`, or until asked to stop.
    async fn wait(&mut self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.shutdown.changed() => {}
        }
    }

    /// One lease, with heartbeats beside it; on shutdown its unfinished tasks are given back
    /// so that others take them at once.
    async fn run_lease(&mut self, lease: Lease) -> Result<WorkerSummary> {
        let checkpoint = &lease.checkpoint;
        let span = tracing::info_span!("checkpoint", model = %checkpoint.model, step = checkpoint.step, revision = %checkpoint.revision);
        let held = HeldTasks::of(&lease);
        let heartbeat = Heartbeat::start(&self.coordinator, &held, self.heartbeat_every);
        let mut summary = WorkerSummary::default();
        let finished = self
            .work_on(&lease, &held, &mut summary)
            .instrument(span.clone())
            .await;
        heartbeat.stop().await;
        if !finished? {
            let ids = held.ids();
            if !ids.is_empty() {
                match self.coordinator.release(ids).await {
                    Some(released) => summary.released += released as usize,
                    None => span
                        .in_scope(|| tracing::warn!("could not release leases; they will lapse")),
                }
            }
        }
        self.fetch.evict_if_needed();
        Ok(summary)
    }

    /// Fetch, compute, report. `false` when stopped before every task was done.
    async fn work_on(
        &mut self,
        lease: &Lease,
        held: &HeldTasks,
        summary: &mut WorkerSummary,
    ) -> Result<bool> {
        let mut shutdown = self.shutdown.clone();
        let fetched = tokio::select! {
            fetched = self.fetch.fetch(lease) => fetched,
            _ = shutdown.changed() => return Ok(false),
        };
        let weights = match fetched {
            Ok(weights) => weights,
            Err(e) => {
                let failed = report::fetch_failed(&self.coordinator, lease, &e).await?;
                self.metrics.failed(failed);
                summary.failed += failed;
                if report::failure_class(&e) == proto::FailureClass::Transient {
                    self.transient_in_a_row += 1;
                    let pause =
                        report::pause_after_transient(e.retry_after(), self.transient_in_a_row);
                    self.pause = Some(pause);
                }
                return Ok(true);
            }
        };
        let mut reporter =
            Reporter::new(&self.coordinator, weights.metrics(), lease, &self.metrics);
        let (mut outcomes, compute) = compute::start(weights, lease);
        loop {
            let next = tokio::select! {
                next = outcomes.recv() => next,
                _ = shutdown.changed() => return Ok(false),
            };
            let Some(outcome) = next else {
                break;
            };
            let task_id = outcome.task.task_id;
            if reporter.report(outcome).await? {
                summary.completed += 1;
                self.transient_in_a_row = 0;
            } else {
                summary.failed += 1;
            }
            held.finished(task_id);
        }
        let _ = compute.await;
        self.fetch.finished();
        Ok(true)
    }
}
