//! The report stage: each seed's result sent to the coordinator with its share of what
//! fetching the checkpoint cost, each failure with its class: transient, the checkpoint's
//! own, or one that says something about the Hub or the protocol (the coordinator's
//! breaker weighs those across checkpoints).

use std::time::Duration;

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
    /// (A bug of this worker would fail every checkpoint alike, which the breaker sees.)
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
                let class = proto::FailureClass::Checkpoint;
                self.coordinator
                    .fail(task.task_id, task.attempt, &message, class, None)
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

/// Fails every task of `lease` whose weights could not be fetched, with the failure's class
/// and the wait the Hub named. Returns how many.
pub(crate) async fn fetch_failed(
    coordinator: &Coordinator,
    lease: &Lease,
    error: &FetchError,
) -> Result<usize> {
    let class = failure_class(error);
    let retry_after = error.retry_after();
    tracing::warn!(error = %error, class = class.as_str_name(), ?retry_after, "fetch failed");
    let message = format!("fetch: {error}");
    for task in &lease.tasks {
        coordinator
            .fail(task.task_id, task.attempt, &message, class, retry_after)
            .await?;
    }
    Ok(lease.tasks.len())
}

/// What a fetch failure says: worth trying later, about the Hub or the protocol (the same
/// answer for every checkpoint), or about this checkpoint alone.
pub(crate) fn failure_class(error: &FetchError) -> proto::FailureClass {
    use proto::FailureClass as Class;
    match error {
        FetchError::Transient { .. } | FetchError::Cache { .. } => Class::Transient,
        FetchError::AccessDenied { .. } => Class::HubAuth,
        FetchError::RepoNotFound { .. } => Class::HubRepoMissing,
        FetchError::Hub {
            status: Some(422), ..
        } => Class::HubUnprocessable,
        FetchError::Hub { .. }
        | FetchError::RangesUnsupported { .. }
        | FetchError::Setup { .. } => Class::Protocol,
        // A revision or file missing, bytes that never matched, files that are no
        // checkpoint, a read this checkpoint cannot serve.
        _ => Class::Checkpoint,
    }
}

/// How long to wait before leasing again after a transient failure, the `in_a_row`th:
/// what the Hub asked for, else 1 s doubling up to a minute.
pub(crate) fn pause_after_transient(retry_after: Option<Duration>, in_a_row: u32) -> Duration {
    retry_after.unwrap_or_else(|| {
        Duration::from_secs(1 << in_a_row.saturating_sub(1).min(6)).min(Duration::from_secs(60))
    })
}

/// The `i`th of `n` shares of `total`: they sum to it exactly.
fn share(total: u64, i: u64, n: u64) -> u64 {
    let n = n.max(1);
    total / n + u64::from(i < total % n)
}

#[cfg(test)]
mod tests {
    use neuromfa_hub::{FetchError, FileRef};
    use neuromfa_proto::FailureClass;

    fn at() -> Box<FileRef> {
        Box::new(FileRef {
            repo: "org/m".into(),
            revision: "step8".into(),
            file: "model.safetensors".into(),
        })
    }

    fn hub(status: Option<u16>) -> FetchError {
        FetchError::Hub {
            at: at(),
            detail: "refused".into(),
            status,
        }
    }

    #[test]
    fn fetch_failures_are_classed_by_what_they_say_about_the_sweep() {
        let class = super::failure_class;
        assert_eq!(class(&hub(Some(422))), FailureClass::HubUnprocessable);
        assert_eq!(class(&hub(Some(405))), FailureClass::Protocol);
        assert_eq!(class(&hub(None)), FailureClass::Protocol);
        let denied = FetchError::AccessDenied {
            at: at(),
            status: 403,
            detail: String::new(),
        };
        assert_eq!(class(&denied), FailureClass::HubAuth);
        let limited = FetchError::Transient {
            at: at(),
            status: Some(429),
            detail: "HTTP 429".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        };
        assert_eq!(class(&limited), FailureClass::Transient);
        let corrupt = FetchError::InvalidCheckpoint {
            at: at(),
            detail: "not a valid safetensors file".into(),
        };
        assert_eq!(class(&corrupt), FailureClass::Checkpoint);
    }

    #[test]
    fn the_pause_after_a_transient_failure_is_the_hubs_else_doubles_to_a_minute() {
        use std::time::Duration;
        let pause = super::pause_after_transient;
        assert_eq!(
            pause(Some(Duration::from_secs(7)), 3),
            Duration::from_secs(7)
        );
        assert_eq!(pause(None, 1), Duration::from_secs(1));
        assert_eq!(pause(None, 3), Duration::from_secs(4));
        assert_eq!(pause(None, 30), Duration::from_secs(60));
    }

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
