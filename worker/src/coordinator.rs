//! The coordinator as a worker sees it: a gRPC client carrying the sweep token (over TLS for
//! an `https://` URL), whose calls are retried with backoff while the coordinator is
//! unreachable, and given up at once on a refusal.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use neuromfa_proto::auth::AddToken;
use neuromfa_proto::coordinator_client::CoordinatorClient;
use neuromfa_proto::{self as proto, tls};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub type Client = CoordinatorClient<InterceptedService<Channel, AddToken>>;

/// How often an idle connection is checked before the coordinator has said how often
/// workers beat (its registration answer).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// Connects lazily: the channel reconnects by itself once the coordinator is back. An
/// `https://` URL is dialled over TLS, trusting `tls_ca` (PEM) or else the system's roots.
pub fn connect(url: &str, token: &str, tls_ca: Option<&Path>) -> Result<Client> {
    connect_checking_every(url, token, tls_ca, DEFAULT_KEEPALIVE)
}

/// [`connect`], with the connection checked by an HTTP/2 ping `every` so long, and given
/// up when a ping goes unanswered for twice that: a connection the network silently lost
/// (a partition, a peer gone behind a NAT) holds calls forever otherwise, as its bytes
/// leave and nothing comes back, and the TCP stack may never notice.
fn connect_checking_every(
    url: &str,
    token: &str,
    tls_ca: Option<&Path>,
    every: Duration,
) -> Result<Client> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("`{url}` is not a coordinator URL (e.g. http://host:50051)"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(every)
        .keep_alive_timeout(every * 2)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(tls::client_config(tls_ca)?)
            .with_context(|| format!("setting up TLS for {url}"))?;
    } else if let Some(ca) = tls_ca {
        bail!(
            "a TLS CA ({}) is given but `{url}` is not an https:// URL; dial https:// to use TLS",
            ca.display()
        );
    }
    let channel = endpoint.connect_lazy();
    let token = AddToken::new(token).map_err(|e| anyhow!(e))?;
    Ok(CoordinatorClient::with_interceptor(channel, token))
}

/// The least time one attempt of a call is given, however little of `give_up_after` is left.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Whether a call that failed so may succeed if tried again. A connection cut in the middle
/// of a call fails it as `Cancelled` ("operation was canceled"), though nobody cancelled it:
/// the coordinator never answers a call so.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Cancelled
    )
}

/// A registered worker's line to its coordinator.
#[derive(Clone)]
pub(crate) struct Coordinator {
    client: Client,
    url: String,
    /// Give up after this long of continuous failure.
    give_up_after: Duration,
    shutdown: watch::Receiver<bool>,
    /// The id the coordinator gave this worker.
    worker_id: String,
}

impl Coordinator {
    /// Registers `host` (with `cores`) at the coordinator `client` dials at `url` (with
    /// `token`, trusting `tls_ca`), then checks the connection as often as the coordinator
    /// asks workers to beat.
    pub(crate) async fn register(
        client: Client,
        (url, token, tls_ca): (&str, &str, Option<&Path>),
        give_up_after: Duration,
        shutdown: watch::Receiver<bool>,
        host: &str,
    ) -> Result<(Self, proto::RegisterReply)> {
        let mut coordinator = Coordinator {
            client,
            url: url.to_string(),
            give_up_after,
            shutdown,
            worker_id: String::new(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let request = proto::RegisterRequest {
            host: host.to_string(),
            cores,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let reply = coordinator
            .call("register", |mut c| {
                let request = request.clone();
                async move { c.register(request).await }
            })
            .await?;
        coordinator.worker_id = reply.worker_id.clone();
        let beat = Duration::from_millis(reply.heartbeat_ms.max(50));
        coordinator.client = connect_checking_every(url, token, tls_ca, beat)?;
        Ok((coordinator, reply))
    }

    pub(crate) fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Whether the worker is asked to stop.
    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Up to `max_tasks` seeds of one checkpoint.
    pub(crate) async fn lease(&self, max_tasks: u32) -> Result<proto::LeaseReply> {
        let request = proto::LeaseRequest {
            worker_id: self.worker_id.clone(),
            max_tasks,
        };
        self.call("lease", |mut c| {
            let request = request.clone();
            async move { c.lease(request).await }
        })
        .await
    }

    pub(crate) async fn complete(
        &self,
        request: proto::CompleteRequest,
    ) -> Result<proto::CompleteReply> {
        self.call("complete", |mut c| {
            let request = request.clone();
            async move { c.complete(request).await }
        })
        .await
    }

    /// Reports that task `task_id`'s attempt `attempt` failed, why (`class`), and for a
    /// transient failure how long the Hub asked to wait.
    pub(crate) async fn fail(
        &self,
        task_id: i64,
        attempt: u32,
        error: &str,
        class: proto::FailureClass,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        let request = proto::FailRequest {
            worker_id: self.worker_id.clone(),
            task_id,
            attempt,
            error: error.to_string(),
            // What an older coordinator reads instead of the class.
            permanent: class != proto::FailureClass::Transient,
            class: class.into(),
            retry_after_ms: retry_after.map_or(0, |d| d.as_millis() as u64),
        };
        self.call("fail", |mut c| {
            let request = request.clone();
            async move { c.fail(request).await }
        })
        .await?;
        Ok(())
    }

    /// Hub requests to send, and what the Hub's answers said of its windows.
    pub(crate) async fn budget(&self, request: proto::BudgetRequest) -> Result<proto::BudgetReply> {
        self.call("budget", |mut c| {
            let request = request.clone();
            async move { c.budget(request).await }
        })
        .await
    }

    /// Keeps `task_ids` leased; once, without retrying (the next beat is the retry).
    pub(crate) async fn heartbeat(
        &self,
        task_ids: Vec<i64>,
    ) -> Result<proto::HeartbeatReply, Status> {
        let request = proto::HeartbeatRequest {
            worker_id: self.worker_id.clone(),
            task_ids,
        };
        let mut client = self.client.clone();
        client
            .heartbeat(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Gives `task_ids` back, waiting at most 5 s: how many the coordinator took back, or
    /// `None` when it could not be told (the leases then lapse).
    pub(crate) async fn release(&self, task_ids: Vec<i64>) -> Option<u32> {
        let request = proto::ReleaseRequest {
            worker_id: self.worker_id.clone(),
            task_ids,
        };
        let mut client = self.client.clone();
        match tokio::time::timeout(Duration::from_secs(5), client.release(request)).await {
            Ok(Ok(reply)) => Some(reply.into_inner().released),
            _ => None,
        }
    }

    /// Retries `call` while the coordinator is unreachable, with capped exponential backoff;
    /// gives up after `give_up_after` of continuous failure, or at once on a refusal. No
    /// attempt outlasts what is left of `give_up_after`: one that gets no answer (its
    /// request or the reply lost) fails as unreachable.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let left = self.give_up_after.saturating_sub(started.elapsed());
            let attempt = tokio::time::timeout(left.max(MIN_ATTEMPT), call(self.client.clone()));
            let status = match attempt.await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer"),
            };
            if status.code() == Code::Unauthenticated {
                bail!("coordinator {} refused us: {}", self.url, status.message());
            }
            if let Some(why) = tls::tls_failure(&self.url, &status).await {
                bail!("coordinator {}: {why}", self.url);
            }
            if !transient(&status) {
                bail!("{what}: {}", status.message());
            }
            if started.elapsed() >= self.give_up_after {
                bail!(
                    "coordinator {} unreachable for {:.0} s ({what}): {}",
                    self.url,
                    started.elapsed().as_secs_f64(),
                    status.message()
                );
            }
            if self.stopping() {
                bail!("stopping");
            }
            tracing::warn!(coordinator = %self.url, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "{what}: coordinator unavailable");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_with_its_connection_is_tried_again_and_a_refusal_is_not() {
        // What tonic reports for a call whose connection closed under it.
        assert!(transient(&Status::cancelled("operation was canceled")));
        assert!(transient(&Status::unavailable("transport error")));
        assert!(transient(&Status::deadline_exceeded("no answer")));
        assert!(!transient(&Status::invalid_argument("no such task")));
        assert!(!transient(&Status::unauthenticated("wrong token")));
    }
}
