//! The coordinator's metrics in Prometheus' text format. What the state holds (tasks by
//! state, workers, what the decisions did) is read from a [`LiveView`], the snapshot the
//! dashboard shows, so a scrape agrees with `status`; what only passes by (batch sizes,
//! commit and fsync times, compute times) is observed into histograms as it happens.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use neuromfa_common::budget::BucketStatus;

use crate::live::LiveView;

/// `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Histograms of what happens as the state thread works. Cheap to clone: clones share
/// their values.
#[derive(Debug, Clone)]
pub struct StateMetrics {
    /// Requests per group-commit batch.
    pub batch_requests: Histogram,
    /// From a batch's start to its commit's end: how long its requests waited for their
    /// replies once taken.
    pub batch_seconds: Histogram,
    /// SQLite's COMMIT alone: the WAL write and its fsync (`synchronous = FULL`).
    pub fsync_seconds: Histogram,
    /// Compute time of each accepted result, as its worker measured it.
    pub compute_seconds: Histogram,
}

impl Default for StateMetrics {
    fn default() -> Self {
        StateMetrics {
            batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            compute_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
        }
    }
}

impl StateMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "neuromfa_commit_batch_requests",
            "Requests applied per group-commit batch (one transaction, one fsync)",
            self.batch_requests.clone(),
        );
        registry.register_with_unit(
            "neuromfa_commit_batch",
            "Time from a batch's start to its commit, replies leaving after it",
            Unit::Seconds,
            self.batch_seconds.clone(),
        );
        registry.register_with_unit(
            "neuromfa_store_fsync",
            "Time of the state store's COMMIT: the SQLite WAL append and its fsync",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        registry.register_with_unit(
            "neuromfa_task_compute",
            "Compute time per accepted result, as the worker measured it",
            Unit::Seconds,
            self.compute_seconds.clone(),
        );
    }
}

/// A counter holding `value`.
fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge_f64(value: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    g
}

/// Every metric of the coordinator, for `view` and the histograms in `metrics`.
pub fn encode(view: &LiveView, metrics: &StateMetrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let status = &view.status;

    let tasks = Family::<Labels, Gauge>::default();
    for model in &view.models {
        for (state, count) in &model.counts {
            tasks
                .get_or_create(&vec![
                    ("model", model.model.clone()),
                    ("state", state.to_string()),
                ])
                .set(*count as i64);
        }
    }
    registry.register(
        "neuromfa_tasks",
        "Tasks of the sweep's grid by model and state (pending, leased, done, failed, skipped)",
        tasks,
    );
    let workers: Gauge = Gauge::default();
    workers.set(status.workers.len() as i64);
    registry.register(
        "neuromfa_workers_connected",
        "Workers seen within a lease period or holding leases",
        workers,
    );
    registry.register(
        "neuromfa_throughput_tasks_per_second",
        "Completions per second over the last minute",
        gauge_f64(status.throughput_per_s),
    );

    let tally = &view.tally;
    for (name, help, value) in [
        (
            "neuromfa_completions",
            "Results accepted since the coordinator started",
            tally.completions,
        ),
        (
            "neuromfa_leases",
            "Tasks leased to workers since the coordinator started",
            tally.leases,
        ),
        (
            "neuromfa_lease_expiries",
            "Leases that lapsed without a heartbeat since the coordinator started",
            tally.expiries,
        ),
        (
            "neuromfa_retries",
            "Failed attempts (reported or lapsed) queued again since the coordinator started",
            tally.retries,
        ),
        (
            "neuromfa_task_failures",
            "Tasks marked failed since the coordinator started",
            tally.failures,
        ),
        (
            "neuromfa_lease_releases",
            "Leases given back by stopping workers since the coordinator started",
            tally.releases,
        ),
        (
            "neuromfa_repeated_results",
            "Results received for tasks already done: counted, not stored (over the sweep's life)",
            status.duplicates_ignored,
        ),
    ] {
        registry.register(name, help, counter(value));
    }

    let bytes = Family::<Labels, Counter>::default();
    let requests = Family::<Labels, Counter>::default();
    for (mode, fetched) in &tally.fetched {
        let labels = vec![("mode", mode_label(mode).to_string())];
        bytes.get_or_create(&labels).inc_by(fetched.bytes);
        requests.get_or_create(&labels).inc_by(fetched.requests);
    }
    registry.register_with_unit(
        "neuromfa_fetch",
        "Bytes workers fetched for the results accepted since the coordinator started, by fetch mode",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "neuromfa_fetch_requests",
        "HTTP requests workers made for the results accepted since the coordinator started, by fetch mode",
        requests,
    );
    register_budget(&mut registry, &status.budget);
    metrics.register(&mut registry);

    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The cluster's Hub budget per bucket (`resolvers`, `api`): what it allows, what it
/// granted, the waits it imposed and the `429`s workers met.
fn register_budget(registry: &mut Registry, budget: &[BucketStatus]) {
    let quota = Family::<Labels, Gauge>::default();
    let in_window = Family::<Labels, Gauge>::default();
    let granted = Family::<Labels, Counter>::default();
    let waited = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let throttled = Family::<Labels, Counter>::default();
    for b in budget {
        let Some(bucket) = b.bucket else { continue };
        let labels = vec![("bucket", bucket.as_str().to_string())];
        quota.get_or_create(&labels).set(i64::from(b.quota));
        in_window
            .get_or_create(&labels)
            .set(i64::try_from(b.granted_in_window).unwrap_or(i64::MAX));
        granted.get_or_create(&labels).inc_by(b.granted);
        waited.get_or_create(&labels).inc_by(b.waited_seconds);
        throttled
            .get_or_create(&labels)
            .inc_by(u64::from(b.throttled));
    }
    registry.register(
        "neuromfa_hub_budget_quota",
        "Hub requests the cluster may send per window, by bucket",
        quota,
    );
    registry.register(
        "neuromfa_hub_budget_granted_in_window",
        "Hub requests granted within the last window, by bucket",
        in_window,
    );
    registry.register(
        "neuromfa_hub_budget_granted",
        "Hub requests granted since the coordinator started, by bucket",
        granted,
    );
    registry.register_with_unit(
        "neuromfa_hub_budget_waited",
        "Time requests were told to wait for the budget, summed, by bucket",
        Unit::Seconds,
        waited,
    );
    registry.register(
        "neuromfa_hub_throttled",
        "429 answers from the Hub reported by workers or met by the coordinator, by bucket",
        throttled,
    );
}

/// The `mode` label of a fetch mode as results carry it (empty: not said).
pub fn mode_label(mode: &str) -> &str {
    if mode.is_empty() {
        "unknown"
    } else {
        mode
    }
}
