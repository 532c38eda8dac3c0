//! The coordinator's gRPC server. One thread owns the sweep state and applies requests
//! in batches: every request that arrived while the previous batch was being committed
//! goes into the next transaction, so many workers share one fsync (group commit), and
//! no reply leaves before its transaction is durable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use neuromfa_common::SeedResult;
use neuromfa_coordinator::state::StateError;
use neuromfa_coordinator::{StatusReport, SweepState, TaskMetrics};
use tokio::sync::oneshot;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::proto;
use crate::proto::coordinator_server::{Coordinator, CoordinatorServer};

/// Milliseconds since the Unix epoch: lease deadlines survive restarts.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Reply = Box<dyn FnOnce(Result<(), Status>) + Send>;
/// A request applied to the state inside the current transaction. It returns the reply
/// to send once the transaction commits, and whether it hit a storage error (which
/// rolls the whole batch back).
type Job = Box<dyn FnOnce(&mut SweepState, &Context) -> (Reply, bool) + Send>;

/// What every job may read besides the state.
pub struct Context {
    pub now_ms: u64,
    pub draining: bool,
    pub hub_endpoint: String,
    pub heartbeat_ms: u64,
}

/// A handle to the state thread; cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    jobs: mpsc::Sender<Job>,
    draining: Arc<AtomicBool>,
    /// Why the state thread stopped by itself, once it has: its disk is full.
    halted: Arc<OnceLock<String>>,
    /// Workers a lease reply has told that the sweep is finished.
    told_finished: Arc<Mutex<HashSet<String>>>,
}

/// Records that the state cannot be written for lack of space; the state thread then
/// stops, since every later batch would fail too (and roll back lease renewals, so
/// leases would seem to expire over and over).
fn halt_if_disk_full(halted: &OnceLock<String>, error: &StateError, db: &std::path::Path) {
    if error.is_disk_full() {
        let dir = db.parent().unwrap_or(db);
        let _ = halted.set(format!(
            "the sweep's state directory {} is out of space ({error}); the coordinator stopped \
             rather than acknowledge what it cannot store, and everything it acknowledged is on \
             disk. Free space there and start it again to resume: workers wait for it (up to \
             their --give-up-after) and deliver what they hold",
            dir.display()
        ));
    }
}

fn to_status(error: StateError) -> Status {
    match error {
        StateError::UnknownWorker(_) => Status::not_found(error.to_string()),
        StateError::UnknownTask(_) | StateError::MismatchedResult { .. } => {
            Status::invalid_argument(error.to_string())
        }
        _ => Status::unavailable(error.to_string()),
    }
}

impl StateHandle {
    /// Starts the state thread. It stops when every handle is dropped.
    pub fn spawn(
        mut state: SweepState,
        hub_endpoint: String,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let draining = Arc::new(AtomicBool::new(false));
        let flag = draining.clone();
        let halted = Arc::new(OnceLock::new());
        let halt = halted.clone();
        let db = state.db_path().to_path_buf();
        let heartbeat_ms = (state.lease_ms() / 4).clamp(50, 30_000);
        let thread = std::thread::Builder::new()
            .name("sweep-state".into())
            .spawn(move || {
                loop {
                    // Wake regularly even when idle, to expire lapsed leases.
                    let first = match inbox.recv_timeout(Duration::from_millis(200)) {
                        Ok(job) => Some(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    let mut batch: Vec<Job> = first.into_iter().collect();
                    while batch.len() < 8192 {
                        match inbox.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let context = Context {
                        now_ms: now_ms(),
                        draining: flag.load(Ordering::SeqCst),
                        hub_endpoint: hub_endpoint.clone(),
                        heartbeat_ms,
                    };
                    if let Err(e) = state.begin() {
                        tracing::error!(error = %e, "cannot start a transaction");
                        for job in batch {
                            let (reply, _) = job(&mut state, &context);
                            reply(Err(Status::unavailable(e.to_string())));
                        }
                        continue;
                    }
                    let mut storage_error = false;
                    if let Err(e) = state.expire_leases(context.now_ms) {
                        tracing::error!(error = %e, "expiring leases");
                        halt_if_disk_full(&halt, &e, &db);
                        storage_error = true;
                    }
                    let mut replies = Vec::with_capacity(batch.len());
                    for job in batch {
                        let (reply, failed) = job(&mut state, &context);
                        storage_error |= failed;
                        replies.push(reply);
                    }
                    let outcome = if storage_error {
                        let _ = state.rollback_and_reload();
                        Err(Status::unavailable("coordinator storage error; retry"))
                    } else {
                        state.commit().map_err(|e| {
                            tracing::error!(error = %e, "commit failed");
                            halt_if_disk_full(&halt, &e, &db);
                            Status::unavailable(format!("coordinator storage error: {e}"))
                        })
                    };
                    for reply in replies {
                        reply(outcome.clone());
                    }
                    if halt.get().is_some() {
                        // Jobs still queued are dropped: their callers hear "shutting down".
                        tracing::error!(
                            "the state directory is out of space: state thread stopped"
                        );
                        break;
                    }
                }
                // Leave the database checkpointed and closed.
                drop(state);
            })
            .unwrap_or_else(|e| panic!("cannot start the state thread: {e}"));
        (
            Self {
                jobs,
                draining,
                halted,
                told_finished: Arc::default(),
            },
            thread,
        )
    }

    /// Runs `f` on the state in the next batch; resolves after the batch commits.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SweepState, &Context) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let halted = self.halted.clone();
        let job: Job = Box::new(move |state, context| {
            let outcome = f(state, context);
            let storage_error = matches!(outcome, Err(StateError::Db { .. }));
            if let Err(e) = &outcome {
                halt_if_disk_full(&halted, e, state.db_path());
            }
            let reply: Reply = Box::new(move |committed| {
                let _ = tx.send(committed.and_then(|()| outcome.map_err(to_status)));
            });
            (reply, storage_error)
        });
        self.jobs
            .send(job)
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the state thread stopped by itself (its disk is full), once it has.
    pub fn halted(&self) -> Option<String> {
        self.halted.get().cloned()
    }

    pub async fn status(&self) -> Result<StatusReport, Status> {
        self.call(|s, c| Ok(s.status(c.now_ms, c.draining))).await
    }
}

/// The tonic service over the state handle.
pub struct CoordinatorService {
    state: StateHandle,
}

impl CoordinatorService {
    pub fn new(state: StateHandle) -> Self {
        Self { state }
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
        let reply = self
            .state
            .call(move |s, c| {
                let id = s.register_worker(&r.host, r.cores, &r.version, c.now_ms)?;
                Ok(proto::RegisterReply {
                    worker_id: id,
                    sweep: s.spec().name.clone(),
                    hub_endpoint: c.hub_endpoint.clone(),
                    heartbeat_ms: c.heartbeat_ms,
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
        let reply = self
            .state
            .call(move |s, c| {
                let params_json = serde_json::to_string(s.params()).unwrap_or_default();
                // Draining for a stop or restart: no new work, but workers stay, so they
                // carry on with the next coordinator on the same state.
                if c.draining {
                    return Ok(proto::LeaseReply {
                        tasks: Vec::new(),
                        params_json,
                        retry_after_ms: 1000,
                        sweep_finished: false,
                    });
                }
                let leases = s.lease(&r.worker_id, r.max_tasks.max(1) as usize, c.now_ms)?;
                let finished = leases.is_empty() && s.finished();
                Ok(proto::LeaseReply {
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
                        c.heartbeat_ms.min(1000)
                    },
                    sweep_finished: finished,
                })
            })
            .await?;
        if reply.sweep_finished {
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
                let lost = s.heartbeat(&r.worker_id, &r.task_ids, c.now_ms)?;
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
            .call(move |s, c| s.complete(&r.worker_id, r.task_id, &result, metrics, c.now_ms))
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
        let will_retry = self
            .state
            .call(move |s, c| s.fail(&r.worker_id, r.task_id, &r.error, r.permanent, c.now_ms))
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
            .call(move |s, _| s.release(&r.worker_id, &r.task_ids))
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
    /// Serves `state` on `listener` (over TLS when `tls` is given) until `stop` is called.
    pub fn start(
        state: SweepState,
        listener: tokio::net::TcpListener,
        token: String,
        hub_endpoint: String,
        tls: Option<ServerTlsConfig>,
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
        let (handle, state_thread) = StateHandle::spawn(state, hub_endpoint);
        let service = CoordinatorService::new(handle.clone()).into_server(token);
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
        let status = self.state.status().await;
        match self.state.halted() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(status?),
        }
    }

    /// Waits, up to `grace`, until every worker still around has been told by a lease reply
    /// that the sweep is finished: workers learn it only so, and one that asks after the
    /// coordinator is gone retries until it gives up, and fails.
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
