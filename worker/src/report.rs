//! The report stage: each seed's result sent to the coordinator with its share of what
//! fetching the checkpoint cost, each failure with whether retrying can help.

use anyhow::Result;
use neuromfa_hub::ranges::FetchMetrics;
use neuromfa_hub::FetchError;
use neuromfa_proto as proto;
use tracing::Instrument as _;

use crate::compute::Outcome;
use crate::coordinator::Coordinator;
use crate::lease::Lease;
use crate::metrics::WorkerMetrics;

/// Reports one lease's outcomes.
pub(crate) struct Reporter<'a> {
    coordinator: &'a Coordinator,
    fetch: FetchMetrics,
    /// Tasks of the lease, between which the fetch's cost is shared.
    tasks: u64,
    /// Results reported so far.
    completed: u64,
    metrics: &'a WorkerMetrics,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(
        coordinator: &'a Coordinator,
        fetch: FetchMetrics,
        lease: &Lease,
        metrics: &'a WorkerMetrics,
    ) -> Self {
        Reporter {
            coordinator,
            fetch,
            tasks: lease.tasks.len() as u64,
            completed: 0,
            metrics,
        }
    }

    /// The next result's share of `total`.
    fn share(&self, total: u64) -> u64 {
        share(total, self.completed, self.tasks)
    }

    /// Sends a seed's result (`true`), or reports its failure (`false`): the checkpoint
    /// itself is bad (corrupt, missing tensor), so retrying the same bytes cannot help.
    pub(crate) async fn report(&mut self, outcome: Outcome) -> Result<bool> {
        let Outcome {
            task,
            result,
            compute_ms,
        } = outcome;
        let task_span = tracing::info_span!("task", seed = task.seed, attempt = task.attempt);
        let result = match result {
            Ok(result) => result,
            Err(message) => {
                task_span.in_scope(|| tracing::warn!(error = %message, "task failed"));
                self.coordinator
                    .fail(task.task_id, task.attempt, &message, true)
                    .await?;
                self.metrics.failed(1);
                return Ok(false);
            }
        };
        let fetch = self.fetch;
        let request = proto::CompleteRequest {
            worker_id: self.coordinator.worker_id().to_string(),
            task_id: task.task_id,
            attempt: task.attempt,
            result_json: serde_json::to_string(&result).unwrap_or_default(),
            bytes_fetched: self.share(fetch.bytes_downloaded),
            requests: self.share(u64::from(fetch.requests)) as u32,
            fetch_ms: self.share(fetch.elapsed.as_millis() as u64),
            compute_ms,
            fetch_mode: fetch.mode.to_string(),
        };
        self.completed += 1;
        let (bytes, requests) = (request.bytes_fetched, u64::from(request.requests));
        let reply = self
            .coordinator
            .complete(request)
            .instrument(task_span.clone())
            .await?;
        self.metrics
            .completed(&fetch.mode.to_string(), bytes, requests, compute_ms);
        task_span.in_scope(|| {
            tracing::info!(
                alpha0 = result.alpha0,
                width = result.width,
                compute_ms,
                accepted = reply.accepted,
                "task done"
            );
        });
        Ok(true)
    }
}

/// Fails every task of `lease` whose weights could not be fetched; permanently when the
/// fetch never will succeed as asked. Returns how many.
pub(crate) async fn fetch_failed(
    coordinator: &Coordinator,
    lease: &Lease,
    error: &FetchError,
) -> Result<usize> {
    let permanent = !error.is_transient();
    tracing::warn!(error = %error, permanent, "fetch failed");
    let message = format!("fetch: {error}");
    for task in &lease.tasks {
        coordinator
            .fail(task.task_id, task.attempt, &message, permanent)
            .await?;
    }
    Ok(lease.tasks.len())
}

/// The `i`th of `n` shares of `total`: they sum to it exactly.
fn share(total: u64, i: u64, n: u64) -> u64 {
    let n = n.max(1);
    total / n + u64::from(i < total % n)
}

#[cfg(test)]
mod tests {
    fn shares(total: u64, n: u64) -> Vec<u64> {
        (0..n).map(|i| super::share(total, i, n)).collect()
    }

    #[test]
    fn shares_sum_to_the_total() {
        assert_eq!(shares(10, 3), [4, 3, 3]);
        assert_eq!(shares(2, 4), [1, 1, 0, 0]);
        assert_eq!(shares(7, 1).iter().sum::<u64>(), 7);
    }
}
