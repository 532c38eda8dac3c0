//! The coordinator's gRPC server: decodes requests, runs them on the sweep state through
//! the coordinator's group commit (one state thread, one transaction and one fsync per
//! batch; no reply before its batch is durable), and maps the outcome to gRPC.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use neuromfa_common::budget::{Bucket, BucketStatus, Budgets, HubWindow};
use neuromfa_common::SeedResult;
use neuromfa_coordinator::budget::{grant, lease_needs, Grant, Needs};
use neuromfa_coordinator::commit::{CallError, Context, GroupCommit};
use neuromfa_coordinator::state::StateError;
use neuromfa_coordinator::status::Progress;
use neuromfa_coordinator::{Failure, FailureClass, StatusReport, SweepState, TaskMetrics};
use tokio::sync::oneshot;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::proto;
use crate::proto::coordinator_server::{Coordinator, CoordinatorServer};

pub use neuromfa_coordinator::commit::now_ms;

/// A handle to the state thread; cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    commit: GroupCommit,
    /// Workers a lease reply has told that the sweep is over (finished, or stopped).
    told_finished: Arc<Mutex<HashSet<String>>>,
    /// Why the coordinator is about to exit though tasks are pending (its breaker stopped
    /// the sweep), once it is: lease replies tell the workers.
    stopping: Arc<OnceLock<String>>,
    /// The cluster's budget of Hub requests, which `status` and the dashboard report.
    pub budget: ClusterBudget,
}

fn to_status(error: CallError) -> Status {
    match error {
        CallError::Unavailable(why) => Status::unavailable(why),
        CallError::Refused(error @ StateError::UnknownWorker(_)) => {
            Status::not_found(error.to_string())
        }
        CallError::Refused(
            error @ (StateError::UnknownTask(_) | StateError::MismatchedResult { .. }),
        ) => Status::invalid_argument(error.to_string()),
        CallError::Refused(error) => Status::unavailable(error.to_string()),
    }
}

impl StateHandle {
    /// Starts the state thread. It stops when every handle is dropped.
    pub fn spawn(
        state: SweepState,
        budget: ClusterBudget,
    ) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        let (commit, thread) =
            GroupCommit::spawn(state).context("cannot start the state thread")?;
        Ok((
            Self {
                commit,
                told_finished: Arc::default(),
                stopping: Arc::default(),
                budget,
            },
            thread,
        ))
    }

    /// Runs `f` on the state in the next batch; resolves after the batch commits.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SweepState, &Context) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.commit
            .submit(f, move |outcome| {
                let _ = tx.send(outcome);
            })
            .map_err(to_status)?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?
            .map_err(to_status)
    }

    pub fn start_draining(&self) {
        self.commit.start_draining();
    }

    /// The coordinator will exit with the sweep stopped for `reason`: no more leases, and
    /// every lease reply says so, so that workers stop instead of waiting for it.
    pub fn announce_stop(&self, reason: String) {
        self.commit.start_draining();
        let _ = self.stopping.set(reason);
    }

    /// Why the state thread stopped by itself (its disk is full), once it has.
    pub fn halted(&self) -> Option<String> {
        self.commit.halted()
    }

    pub async fn status(&self) -> Result<StatusReport, Status> {
        let mut report = self.call(|s, c| Ok(s.status(c.now_ms, c.draining))).await?;
        report.budget = self.budget_status();
        Ok(report)
    }

    pub async fn progress(&self) -> Result<Progress, Status> {
        self.call(|s, _| Ok(s.progress())).await
    }

    /// What the cluster's budget granted, per bucket, as of now.
    pub fn budget_status(&self) -> Vec<BucketStatus> {
        self.budgets().status(Instant::now())
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cluster's budget of Hub requests: what the coordinator's own resolution spends
/// from, and what it grants workers (`neuromfa_coordinator::budget`).
pub type ClusterBudget = Arc<Mutex<Budgets>>;

/// The tonic service over the state handle.
pub struct CoordinatorService {
    state: StateHandle,
    announced: Arc<Announced>,
}

/// What the coordinator tells every worker, fixed for its run.
struct Announced {
    /// The Hub endpoint workers should use (empty: theirs).
    hub_endpoint: String,
    /// How often workers should heartbeat: four times a lease.
    heartbeat_ms: u64,
    /// The analysis parameters, as every lease reply carries them.
    params_json: String,
}

impl Announced {
    fn of(sweep: &SweepState, hub_endpoint: String) -> Self {
        Announced {
            hub_endpoint,
            heartbeat_ms: (sweep.schedule().lease_ms() / 4).clamp(50, 30_000),
            params_json: serde_json::to_string(sweep.params()).unwrap_or_default(),
        }
    }
}

impl CoordinatorService {
    fn new(state: StateHandle, announced: Announced) -> Self {
        Self {
            state,
            announced: Arc::new(announced),
        }
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.state.budgets()
    }

    /// Books `needs` and says when they may be spent.
    fn grant(&self, needs: Needs) -> proto::BudgetGrant {
        let now = Instant::now();
        let Grant { needs, at } = grant(&mut self.budgets(), needs, now);
        proto::BudgetGrant {
            resolvers: needs.resolvers,
            api: needs.api,
            wait_ms: at.saturating_duration_since(now).as_millis() as u64,
        }
    }

    /// The service wrapped in the token check every RPC must pass.
    pub fn into_server(
        self,
        token: String,
    ) -> tonic::service::interceptor::InterceptedService<CoordinatorServer<Self>, auth::RequireToken>
    {
        CoordinatorServer::with_interceptor(self, auth::RequireToken::new(token))
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterReply>, Status> {
        let r = request.into_inner();
        let announced = self.announced.clone();
        let reply = self
            .state
            .call(move |s, c| {
                let id =
                    s.decide(|d| Ok(d.register_worker(&r.host, r.cores, &r.version, c.now_ms)))?;
                Ok(proto::RegisterReply {
                    worker_id: id,
                    sweep: s.spec().name.clone(),
                    hub_endpoint: announced.hub_endpoint.clone(),
                    heartbeat_ms: announced.heartbeat_ms,
                    fetch_mode: s.spec().hub.fetch_mode.to_string(),
                    merge_gap: s.spec().hub.merge_gap.unwrap_or(0),
                })
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn lease(
        &self,
        request: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        let r = request.into_inner();
        let worker_id = r.worker_id.clone();
        let announced = self.announced.clone();
        let stopping = self.state.stopping.get().cloned();
        let (reply, needs) = self
            .state
            .call(move |s, c| {
                let params_json = announced.params_json.clone();
                // Draining for a stop or restart: no new work, but workers stay, so they
                // carry on with the next coordinator on the same state; unless it stops
                // for good, with the sweep stopped.
                if c.draining {
                    let reply = proto::LeaseReply {
                        tasks: Vec::new(),
                        params_json,
                        retry_after_ms: 1000,
                        sweep_stopped: stopping.unwrap_or_default(),
                        ..proto::LeaseReply::default()
                    };
                    return Ok((reply, None));
                }
                let leases =
                    s.decide(|d| d.lease(&r.worker_id, r.max_tasks.max(1) as usize, c.now_ms))?;
                let finished = leases.is_empty() && s.schedule().finished();
                // What fetching the leased checkpoint takes, and what the coordinator
                // resolved of it.
                let resolved = leases
                    .first()
                    .and_then(|l| s.resolved(&l.model, l.step))
                    .cloned();
                let needs = (!leases.is_empty()).then(|| lease_needs(resolved.as_ref()));
                let reply = proto::LeaseReply {
                    tasks: leases
                        .into_iter()
                        .map(|l| proto::TaskLease {
                            task_id: l.task_id,
                            model: l.model,
                            revision: l.revision,
                            step: l.step,
                            seed: l.seed,
                            attempt: l.attempt,
                            deadline_unix_ms: l.deadline_ms,
                        })
                        .collect(),
                    params_json,
                    retry_after_ms: if finished {
                        0
                    } else {
                        announced.heartbeat_ms.min(1000)
                    },
                    sweep_finished: finished,
                    sweep_stopped: String::new(),
                    resolved_json: resolved
                        .and_then(|r| serde_json::to_string(&r).ok())
                        .unwrap_or_default(),
                    grant: None,
                };
                Ok((reply, needs))
            })
            .await?;
        let mut reply = reply;
        reply.grant = needs.map(|needs| self.grant(needs));
        if reply.sweep_finished || !reply.sweep_stopped.is_empty() {
            if let Ok(mut told) = self.state.told_finished.lock() {
                told.insert(worker_id);
            }
        }
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatReply>, Status> {
        let r = request.into_inner();
        let reply = self
            .state
            .call(move |s, c| {
                let lost = s.decide(|d| d.heartbeat(&r.worker_id, &r.task_ids, c.now_ms))?;
                Ok(proto::HeartbeatReply {
                    lost_task_ids: lost,
                    draining: c.draining,
                })
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn complete(
        &self,
        request: Request<proto::CompleteRequest>,
    ) -> Result<Response<proto::CompleteReply>, Status> {
        let r = request.into_inner();
        let result: SeedResult = serde_json::from_str(&r.result_json)
            .map_err(|e| invalid(format!("task {}: result is not valid: {e}", r.task_id)))?;
        let metrics = TaskMetrics {
            bytes_fetched: r.bytes_fetched,
            requests: r.requests,
            fetch_ms: r.fetch_ms,
            compute_ms: r.compute_ms,
            fetch_mode: r.fetch_mode.clone(),
        };
        let completion = self
            .state
            .call(move |s, c| {
                s.decide(|d| d.complete(&r.worker_id, r.task_id, result, metrics, c.now_ms))
            })
            .await?;
        Ok(Response::new(proto::CompleteReply {
            accepted: completion == neuromfa_coordinator::Completion::Accepted,
        }))
    }

    async fn fail(
        &self,
        request: Request<proto::FailRequest>,
    ) -> Result<Response<proto::FailReply>, Status> {
        let r = request.into_inner();
        let failure = failure_of(&r);
        let will_retry = self
            .state
            .call(move |s, c| s.decide(|d| d.fail(&r.worker_id, r.task_id, failure, c.now_ms)))
            .await?;
        Ok(Response::new(proto::FailReply { will_retry }))
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseReply>, Status> {
        let r = request.into_inner();
        let released = self
            .state
            .call(move |s, _| s.decide(|d| Ok(d.release(&r.worker_id, &r.task_ids))))
            .await?;
        Ok(Response::new(proto::ReleaseReply {
            released: released as u32,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let report = self.state.status().await?;
        Ok(Response::new(proto::StatusReply {
            status_json: serde_json::to_string(&report).unwrap_or_default(),
        }))
    }

    async fn budget(
        &self,
        request: Request<proto::BudgetRequest>,
    ) -> Result<Response<proto::BudgetReply>, Status> {
        let r = request.into_inner();
        let now = Instant::now();
        {
            let mut budgets = self.budgets();
            for seen in &r.seen {
                let Ok(bucket) = seen.bucket.parse::<Bucket>() else {
                    continue;
                };
                let resets_in = Duration::from_millis(seen.resets_in_ms);
                let pacer = budgets.pacer(bucket);
                if seen.exhausted {
                    tracing::warn!(worker = %r.worker_id, %bucket, resets_in_s = resets_in.as_secs_f64(), "the Hub answered 429: every worker waits for its window");
                    pacer.exhausted(resets_in, now);
                } else {
                    let window = HubWindow {
                        remaining: seen.remaining,
                        resets_in,
                    };
                    pacer.observe(window, now);
                }
            }
        }
        let needs = Needs {
            resolvers: r.resolvers,
            api: r.api,
        };
        let grant = (needs != Needs::default()).then(|| self.grant(needs));
        Ok(Response::new(proto::BudgetReply { grant }))
    }

    async fn retry_failed(
        &self,
        _request: Request<proto::RetryFailedRequest>,
    ) -> Result<Response<proto::RetryFailedReply>, Status> {
        let requeued = self
            .state
            .call(|s, _| s.decide(|d| Ok(d.retry_failed())))
            .await?;
        tracing::info!(requeued, "failed tasks re-queued (retry-failed)");
        Ok(Response::new(proto::RetryFailedReply {
            requeued: requeued as u32,
        }))
    }

    async fn resume(
        &self,
        _request: Request<proto::ResumeRequest>,
    ) -> Result<Response<proto::ResumeReply>, Status> {
        let stopped_because = self.state.call(|s, _| s.decide(|d| Ok(d.resume()))).await?;
        Ok(Response::new(proto::ResumeReply {
            stopped_because: stopped_because.unwrap_or_default(),
        }))
    }
}

/// A failure as the worker classified it; from an older worker, which only says whether
/// it is permanent, a checkpoint's own failure or a transient one.
fn failure_of(r: &proto::FailRequest) -> Failure {
    use proto::FailureClass as Sent;
    let class = match Sent::try_from(r.class).unwrap_or(Sent::Unspecified) {
        Sent::Unspecified if r.permanent => FailureClass::Checkpoint,
        Sent::Unspecified | Sent::Transient => FailureClass::Transient,
        Sent::Checkpoint => FailureClass::Checkpoint,
        Sent::HubAuth => FailureClass::HubAuth,
        Sent::HubRepoMissing => FailureClass::HubRepoMissing,
        Sent::HubUnprocessable => FailureClass::HubUnprocessable,
        Sent::Protocol => FailureClass::Protocol,
    };
    Failure::new(class, r.error.clone())
        .retry_after((r.retry_after_ms > 0).then_some(r.retry_after_ms))
}

/// A running coordinator: its address and a way to stop it.
pub struct RunningCoordinator {
    pub addr: SocketAddr,
    pub state: StateHandle,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    state_thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningCoordinator {
    /// Serves `state` on `listener` (over TLS when `tls` is given), granting workers Hub
    /// requests from `budget`, until `stop` is called.
    pub fn start(
        state: SweepState,
        listener: tokio::net::TcpListener,
        token: String,
        hub_endpoint: String,
        tls: Option<ServerTlsConfig>,
        budget: ClusterBudget,
    ) -> anyhow::Result<Self> {
        let addr = listener
            .local_addr()
            .context("the listening socket has no address")?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .context("the TLS certificate and key cannot be used (are both PEM, and the key the certificate's?)")?;
        }
        let announced = Announced::of(&state, hub_endpoint);
        let (handle, state_thread) = StateHandle::spawn(state, budget)?;
        let service = CoordinatorService::new(handle.clone(), announced).into_server(token);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
            incoming,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            addr,
            state: handle,
            shutdown: Some(shutdown),
            server,
            state_thread: Some(state_thread),
        })
    }

    /// The sweep's status; once the state thread has stopped by itself, the reason why.
    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        self.unless_halted(self.state.status().await)
    }

    /// [`RunningCoordinator::status`]'s [`Progress`] alone: cheap enough to poll.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        self.unless_halted(self.state.progress().await)
    }

    /// What a call to the state thread answered; once that thread has stopped by itself,
    /// the reason why instead.
    fn unless_halted<T>(&self, answer: Result<T, Status>) -> anyhow::Result<T> {
        match self.state.halted() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(answer?),
        }
    }

    /// Waits, up to `grace`, until every worker still around has been told by a lease reply
    /// that the sweep is over (finished, or stopped: see `StateHandle::announce_stop`):
    /// workers learn it only so, and one that asks after the coordinator is gone retries
    /// until it gives up, and fails.
    pub async fn tell_workers_finished(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let Ok(status) = self.state.status().await else {
                return;
            };
            let waiting: Vec<String> = match self.state.told_finished.lock() {
                Ok(told) => status
                    .workers
                    .into_iter()
                    .map(|w| w.id)
                    .filter(|id| !told.contains(id))
                    .collect(),
                Err(_) => return,
            };
            if waiting.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(?waiting, "workers not told the sweep is finished");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops leasing, waits up to `grace` for leased work to finish or lapse, then
    /// stops serving and closes the state.
    pub async fn drain_and_stop(self, grace: Duration) {
        self.state.start_draining();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            match self.state.status().await {
                Ok(s) if s.leased == 0 => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => break,
            }
        }
        self.stop().await;
    }

    /// Stops serving now; committed state is already on disk.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        let state_thread = self.state_thread.take();
        drop(self);
        if let Some(thread) = state_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
