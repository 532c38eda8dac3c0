//! What a worker did, for its `/metrics` (`neuromfa worker --metrics-listen`): counted
//! where it happens, encoded by whoever serves them. Clones share their values, so the
//! workers `sweep run` starts in one process add up.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

type ModeLabel = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    leases: Counter,
    held: Gauge,
    completed: Counter,
    failed: Counter,
    fetch_bytes: Family<ModeLabel, Counter>,
    fetch_requests: Family<ModeLabel, Counter>,
    compute_seconds: Histogram,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            leases: Counter::default(),
            held: Gauge::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            fetch_bytes: Family::default(),
            fetch_requests: Family::default(),
            compute_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
        }
    }
}

impl WorkerMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "neuromfa_worker_leases",
            "Leases taken (one checkpoint's seeds each)",
            self.leases.clone(),
        );
        registry.register(
            "neuromfa_worker_tasks_held",
            "Tasks leased and not finished yet",
            self.held.clone(),
        );
        registry.register(
            "neuromfa_worker_tasks_completed",
            "Results sent to the coordinator",
            self.completed.clone(),
        );
        registry.register(
            "neuromfa_worker_tasks_failed",
            "Tasks reported failed (fetch or analysis)",
            self.failed.clone(),
        );
        registry.register_with_unit(
            "neuromfa_worker_fetch",
            "Bytes fetched for the results sent, by fetch mode",
            Unit::Bytes,
            self.fetch_bytes.clone(),
        );
        registry.register(
            "neuromfa_worker_fetch_requests",
            "HTTP requests made for the results sent, by fetch mode",
            self.fetch_requests.clone(),
        );
        registry.register_with_unit(
            "neuromfa_worker_task_compute",
            "Compute time per result sent",
            Unit::Seconds,
            self.compute_seconds.clone(),
        );
    }

    pub(crate) fn leased(&self, tasks: usize) {
        self.leases.inc();
        self.held.inc_by(tasks as i64);
    }

    /// A task of a lease is over (sent, failed or given back).
    pub(crate) fn let_go(&self, tasks: usize) {
        self.held.dec_by(tasks as i64);
    }

    pub(crate) fn completed(&self, mode: &str, bytes: u64, requests: u64, compute_ms: u64) {
        self.completed.inc();
        let label = vec![("mode", mode.to_string())];
        self.fetch_bytes.get_or_create(&label).inc_by(bytes);
        self.fetch_requests.get_or_create(&label).inc_by(requests);
        self.compute_seconds.observe(compute_ms as f64 / 1000.0);
    }

    pub(crate) fn failed(&self, tasks: usize) {
        self.failed.inc_by(tasks as u64);
    }
}
