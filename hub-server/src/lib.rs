//! A loopback Hugging Face Hub serving checkpoints from disk.
//!
//! Checkpoints are laid out as `ROOT/<org>/<name>/<revision>/<file>` and served over the part
//! of the Hub protocol that `hf-hub` 1.0 uses to download files and byte ranges:
//!
//! - `HEAD`/`GET /<org>/<name>/resolve/<revision>/<path>`: `ETag` (quoted sha256 of the
//!   content, as the Hub reports for LFS files), `X-Repo-Commit`, `Content-Length`,
//!   `Accept-Ranges: bytes`; single `Range` requests give `206` + `Content-Range`, or `416`.
//! - `GET /api/models/<org>/<name>[/revision/<revision>]`: `id`, `sha`, `siblings`.
//! - `GET /api/models/<org>/<name>/tree/<revision>[/<path>][?recursive=true]` and
//!   `POST /api/models/<org>/<name>/paths-info/<revision>`: file entries with `lfs.oid`.
//!
//! A revision may also be addressed by its commit id. Commit ids are derived from the repo,
//! the revision name and the sha256 of every file in the revision, so they are stable across
//! restarts and machines and differ between revisions even when their content is identical.
//! A revision directory whose name is itself 40 hex characters (as in an HF cache's
//! `snapshots/`) uses that name as its commit id.
//!
//! Missing things answer `404` with `X-Error-Code` `RepoNotFound`, `RevisionNotFound` or
//! `EntryNotFound`, like the real Hub. The server never redirects, never compresses and never
//! sends `X-Xet-Hash` (which would switch `hf-hub` to the Xet protocol). File bodies are
//! streamed from disk; bodies up to 1 MiB (ranged reads of a sample) are read in one go.
//! Hashes are computed once per file and cached by path, length and mtime; the first request
//! touching a revision hashes all of its files, which for a multi-GB checkpoint takes seconds.
//! Sockets are `TCP_NODELAY`, so small answers are not held back by Nagle's algorithm.
//!
//! With [`HubServerConfig::throttle_bytes_per_sec`] set, file bodies (all responses together)
//! leave at no more than that rate, so a benchmark on one machine can stand in for a network.
//!
//! # The real-Hub profile
//!
//! With [`HubServerConfig::like_hf`] set the server behaves like huggingface.co instead of
//! an ideal mirror, with a second listener standing for the CDN and the Xet bridge:
//! `/resolve/` of an LFS file answers `302` to a signed CDN URL with the metadata on the
//! redirect (`X-Repo-Commit`, `X-Linked-Size`, `X-Linked-Etag`, and for Xet-backed files
//! `X-Xet-Hash` and `Link`); files kept in git answer `200` with their git blob id as
//! ETag; requests are metered in the Resolver and API buckets with `RateLimit` headers and
//! `429` when a window is spent; latency, per-connection bandwidth and faults are added on
//! demand ([`HfProfile`], [`FaultPlan`]). The stand-in's own routes, outside the Hub's
//! protocol, are under `/_stand-in/`: `GET stats` (the [`HubStats`] as JSON),
//! `PUT faults/{hub,cdn}` (a [`FaultPlan`] as JSON) and `POST clock?advance_secs=N`.

mod api;
mod budget;
mod cdn;
mod clock;
mod content;
mod control;
mod error;
mod faults;
mod files;
mod hf;
mod middleware;
mod profile;
mod range;
mod repo;
mod signing;
mod throttle;
mod virtual_hub;
mod xet;

pub use faults::FaultPlan;
pub use profile::{HfProfile, Plan, Quota, XetFiles};
pub use virtual_hub::{
    Description, DuplicateGroup, Format, Formats, ModelDescription, Precomputed, StepList,
    VirtualHub,
};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::http::HeaderName;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use axum::serve::ListenerExt as _;
use axum::Router;
use futures_util::FutureExt as _;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use clock::Clock;
use content::Pacing;
use hf::HfState;
use repo::{PinnedFile, PinnedKey};
use throttle::Throttle;

pub(crate) const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
pub(crate) const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
pub(crate) const X_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-error-message");

/// Read size when streaming file bodies.
pub(crate) const STREAM_CHUNK: usize = 256 * 1024;
/// Read size when throttled: small enough that pacing is smooth at a few MB/s.
pub(crate) const THROTTLED_CHUNK: usize = 64 * 1024;
/// Bodies up to this size are read in one blocking call instead of streamed.
pub(crate) const SMALL_BODY: u64 = 1 << 20;
/// Ranged reads of pinned files up to this size are read on the async thread (from page
/// cache, microseconds); larger ones go through the blocking pool.
pub(crate) const PINNED_READ_MAX: u64 = 256 * 1024;
/// Deepest directory nesting followed inside a revision (guards against symlink loops).
pub(crate) const MAX_DEPTH: usize = 16;

/// What to serve and who may read it.
#[derive(Clone, Default)]
pub struct HubServerConfig {
    /// Directory holding `<org>/<name>/<revision>/<file>`.
    pub root: PathBuf,
    /// If set, every request must carry `Authorization: Bearer <token>`, else `401`.
    pub token: Option<String>,
    /// If set, the total rate at which file bodies are sent, over all responses together
    /// (a token bucket without burst). Headers and API answers are not counted.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Behave like the real Hub (a CDN listener, redirects, rate limits, Xet, faults);
    /// `None` for an ideal mirror.
    pub like_hf: Option<HfProfile>,
    /// Serve these generated repositories instead of `root` (which is then not read).
    pub virtual_hub: Option<VirtualHub>,
}

impl std::fmt::Debug for HubServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubServerConfig")
            .field("root", &self.root)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("throttle_bytes_per_sec", &self.throttle_bytes_per_sec)
            .field("like_hf", &self.like_hf)
            .field("virtual_hub", &self.virtual_hub)
            .finish()
    }
}

/// Request counters, for tests, benchmarks and monitoring (also served as JSON at
/// `/_stand-in/stats`). The ones after `file_body_bytes` count only in the real-Hub profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Every request received, including rejected ones.
    pub requests: u64,
    /// `HEAD` requests.
    pub head_requests: u64,
    /// `GET` requests (API and file).
    pub get_requests: u64,
    /// `GET` responses that carried file content (`200` or `206` on a resolve URL).
    pub file_bodies: u64,
    /// File-content bytes those responses were set up to send.
    pub file_body_bytes: u64,
    /// Requests counted against the Resolver bucket (paths holding `/resolve/`).
    pub resolver_requests: u64,
    /// Requests counted against the API bucket.
    pub api_requests: u64,
    /// Requests refused with `429` because their bucket's window was spent.
    pub rate_limited: u64,
    /// `302` answers to the CDN or the Xet bridge.
    pub redirects: u64,
    /// Requests the CDN's listener received.
    pub cdn_requests: u64,
    /// File bytes the CDN's answers were set up to send.
    pub cdn_body_bytes: u64,
    /// CDN requests refused because their signature had expired.
    pub cdn_expired: u64,
    /// CDN requests refused because their signature was missing or wrong.
    pub cdn_bad_signature: u64,
    /// CDN requests that carried an `Authorization` header (a Xet token on the
    /// reconstruction API excepted): a client leaking its Hub token.
    pub cdn_authorization: u64,
    /// Xet read tokens handed out.
    pub xet_tokens: u64,
    /// Xet reconstruction queries.
    pub reconstructions: u64,
    /// Xorb range requests.
    pub xorb_requests: u64,
    /// paths-info requests whose paths came as form fields (as huggingface_hub sends them).
    pub paths_info_form: u64,
    /// paths-info requests whose paths came as a JSON body.
    pub paths_info_json: u64,
    /// Injected server errors, cut bodies and delayed answers (both listeners).
    pub injected_errors: u64,
    pub injected_resets: u64,
    pub injected_delays: u64,
}

/// Defines the live counters and their snapshot from one list of names.
macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            fn snapshot(&self) -> HubStats {
                HubStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    requests,
    head_requests,
    get_requests,
    file_bodies,
    file_body_bytes,
    resolver_requests,
    api_requests,
    rate_limited,
    redirects,
    cdn_requests,
    cdn_body_bytes,
    cdn_expired,
    cdn_bad_signature,
    cdn_authorization,
    xet_tokens,
    reconstructions,
    xorb_requests,
    paths_info_form,
    paths_info_json,
    injected_errors,
    injected_resets,
    injected_delays,
);

/// The two listeners of the real-Hub profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The Hub itself: API routes and `/resolve/`.
    Hub,
    /// The CDN and Xet bridge the Hub redirects to.
    Cdn,
}

pub(crate) struct HashEntry {
    pub(crate) len: u64,
    pub(crate) mtime: Option<SystemTime>,
    pub(crate) sha256: String,
}

pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) token: Option<String>,
    /// sha256 per file path, valid while length and mtime are unchanged.
    pub(crate) hashes: Mutex<HashMap<PathBuf, HashEntry>>,
    /// Per-file gates so that a file is hashed by one thread at a time.
    pub(crate) hashing: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// `"<org>/<name>@<commit>"` → revision directory name, for commit-addressed requests.
    pub(crate) commits: Mutex<HashMap<String, String>>,
    /// Open files of commit-addressed revisions already served: a ranged read naming a
    /// commit (every ranged fetch does) is then one `fstat` and one `pread` on the async thread, instead of a directory walk, an `open` and a
    /// trip to the blocking pool. On loopback those costs, not bytes, bound ranged fetches.
    pub(crate) pinned: Mutex<HashMap<PinnedKey, Arc<PinnedFile>>>,
    pub(crate) stats: Counters,
    pub(crate) throttle: Option<Arc<Throttle>>,
    pub(crate) clock: Clock,
    /// The real-Hub profile's state, when it is on.
    pub(crate) hf: Option<HfState>,
    /// Generated repositories served instead of `root`.
    pub(crate) virtual_hub: Option<VirtualHub>,
}

impl Shared {
    /// The bandwidth limits of a body sent to `peer`.
    pub(crate) fn pacing(&self, peer: Option<SocketAddr>) -> Pacing {
        let mut limits: Vec<Arc<Throttle>> = self.throttle.iter().cloned().collect();
        let connections = self.hf.as_ref().and_then(|hf| hf.connections.as_ref());
        if let (Some(connections), Some(peer)) = (connections, peer) {
            limits.push(connections.of(peer));
        }
        Pacing(limits)
    }
}

/// A Hub server over a directory; cheap to clone (the state is shared).
#[derive(Clone)]
pub struct HubServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubServer")
            .field("root", &self.shared.root)
            .field("token", &self.shared.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HubServer {
    /// Checks that `config.root` is a directory (unless repositories are virtual).
    pub fn new(config: HubServerConfig) -> anyhow::Result<Self> {
        if config.virtual_hub.is_none() {
            let meta = std::fs::metadata(&config.root)
                .with_context(|| format!("hub root {} is not readable", config.root.display()))?;
            anyhow::ensure!(
                meta.is_dir(),
                "hub root {} is not a directory",
                config.root.display()
            );
        }
        Ok(HubServer {
            shared: Arc::new(Shared {
                root: config.root,
                token: config.token,
                hashes: Mutex::new(HashMap::new()),
                hashing: Mutex::new(HashMap::new()),
                commits: Mutex::new(HashMap::new()),
                pinned: Mutex::new(HashMap::new()),
                stats: Counters::default(),
                throttle: config
                    .throttle_bytes_per_sec
                    .map(|rate| Arc::new(Throttle::new(rate))),
                clock: Clock::new(),
                hf: config.like_hf.map(HfState::new).transpose()?,
                virtual_hub: config.virtual_hub,
            }),
        })
    }

    /// Counters since the server was created.
    pub fn stats(&self) -> HubStats {
        self.shared.stats.snapshot()
    }

    /// Replaces the faults injected on `listener` (real-Hub profile only).
    pub fn set_faults(&self, listener: Listener, plan: FaultPlan) -> anyhow::Result<()> {
        let hf = self
            .shared
            .hf
            .as_ref()
            .context("faults need the real-Hub profile")?;
        plan.validate().map_err(anyhow::Error::msg)?;
        match listener {
            Listener::Hub => hf.hub_faults.set(plan),
            Listener::Cdn => hf.cdn_faults.set(plan),
        }
        Ok(())
    }

    /// The faults still to be injected on `listener` (counts spent so far are gone).
    pub fn faults(&self, listener: Listener) -> Option<FaultPlan> {
        let hf = self.shared.hf.as_ref()?;
        Some(match listener {
            Listener::Hub => hf.hub_faults.get(),
            Listener::Cdn => hf.cdn_faults.get(),
        })
    }

    /// Moves the server's clock forward: rate windows roll over and signed URLs expire as
    /// if `by` had passed.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// The Hub's router, with authentication, request logging and (real-Hub profile) the
    /// rate limits, latency and faults. Public so that callers can add layers (tests use
    /// this to corrupt responses).
    pub fn router(&self) -> Router {
        let state = self.shared.clone();
        Router::new()
            .route("/api/models/{org}/{name}", get(api::model_info))
            .route(
                "/api/models/{org}/{name}/revision/{rev}",
                get(api::model_info_at_revision),
            )
            .route("/api/models/{org}/{name}/tree/{rev}", get(api::tree_root))
            .route(
                "/api/models/{org}/{name}/tree/{rev}/{*path}",
                get(api::tree_path),
            )
            .route(
                "/api/models/{org}/{name}/paths-info/{rev}",
                post(api::paths_info),
            )
            .route(
                "/api/models/{org}/{name}/xet-read-token/{rev}",
                get(api::xet_read_token),
            )
            // `get` also answers HEAD; the handler skips opening the file for HEAD.
            .route("/{org}/{name}/resolve/{rev}/{*path}", get(files::resolve))
            .route(
                "/api/resolve-cache/models/{org}/{name}/{rev}/{*path}",
                get(files::resolve),
            )
            .route("/_stand-in/stats", get(control::stats))
            .route("/_stand-in/faults/{listener}", put(control::set_faults))
            .route("/_stand-in/clock", post(control::advance_clock))
            .fallback(middleware::not_found)
            .layer(from_fn_with_state(state.clone(), middleware::require_token))
            .layer(from_fn_with_state(state.clone(), middleware::pace))
            .layer(from_fn_with_state(state.clone(), hf::hub_layer))
            .layer(from_fn_with_state(state.clone(), middleware::log_request))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes, then finishes in-flight requests.
    /// In the real-Hub profile the CDN listens on the same address, on a port of its own.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        if self.shared.hf.is_none() {
            return serve_listener(listener, self.router(), shutdown, "hub").await;
        }
        let ip = listener
            .local_addr()
            .context("hub socket has no address")?
            .ip();
        let cdn = TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("cannot bind the CDN listener on {ip}"))?;
        self.serve_with_cdn(listener, cdn, shutdown).await
    }

    /// Serves the Hub on `hub` and the CDN on `cdn` (real-Hub profile) until `shutdown`.
    pub async fn serve_with_cdn(
        self,
        hub: TcpListener,
        cdn: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let hf = self
            .shared
            .hf
            .as_ref()
            .context("a CDN needs the real-Hub profile")?;
        let cdn_addr = cdn.local_addr().context("CDN socket has no address")?;
        if hf.cdn_port.set(cdn_addr.port()).is_err() && hf.cdn_port.get() != Some(&cdn_addr.port())
        {
            anyhow::bail!("this server already serves a CDN on another port");
        }
        let shutdown = shutdown.boxed().shared();
        let cdn_router = cdn::router(self.shared.clone());
        let (hub_done, cdn_done) = tokio::join!(
            serve_listener(hub, self.router(), shutdown.clone(), "hub"),
            serve_listener(cdn, cdn_router, shutdown, "CDN"),
        );
        hub_done.and(cdn_done)
    }
}

/// Serves `router` on `listener` with each peer's address known to the handlers.
async fn serve_listener(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    what: &str,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "{what} server listening");
    // Headers and a small streamed body go out as separate writes; with Nagle's algorithm
    // the body then waits for the client's delayed ACK (tens of ms per ranged read).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .with_context(|| format!("{what} server failed"))
}

/// Serves `config.root` on `listener` until `shutdown` completes.
pub async fn serve(
    config: HubServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    HubServer::new(config)?.serve(listener, shutdown).await
}

/// Binds `addr` (e.g. `127.0.0.1:0`) and serves in a background task; in the real-Hub
/// profile the CDN listens on the same IP address, on a port of its own.
pub async fn spawn(config: HubServerConfig, addr: SocketAddr) -> anyhow::Result<RunningHub> {
    let server = HubServer::new(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind hub server to {addr}"))?;
    let addr = listener
        .local_addr()
        .context("hub server socket has no local address")?;
    let cdn = match server.shared.hf {
        Some(_) => Some(
            TcpListener::bind((addr.ip(), 0))
                .await
                .context("cannot bind the CDN listener")?,
        ),
        None => None,
    };
    let cdn_addr = match &cdn {
        Some(cdn) => Some(
            cdn.local_addr()
                .context("CDN socket has no local address")?,
        ),
        None => None,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped sender also means shut down.
        let _ = rx.await;
    };
    let task = match cdn {
        Some(cdn) => tokio::spawn(server.clone().serve_with_cdn(listener, cdn, shutdown)),
        None => tokio::spawn(server.clone().serve(listener, shutdown)),
    };
    Ok(RunningHub {
        addr,
        cdn_addr,
        server,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A server started by [`spawn`]. Dropping it asks the server to shut down.
#[derive(Debug)]
pub struct RunningHub {
    /// The bound address (with the real port when `:0` was asked for).
    pub addr: SocketAddr,
    /// The CDN's address (real-Hub profile).
    pub cdn_addr: Option<SocketAddr>,
    server: HubServer,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningHub {
    /// `http://<addr>`, the value for an endpoint setting.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters since the server started.
    pub fn stats(&self) -> HubStats {
        self.server.stats()
    }

    /// The server, for the controls of the real-Hub profile ([`HubServer::set_faults`],
    /// [`HubServer::advance_clock`]).
    pub fn server(&self) -> &HubServer {
        &self.server
    }

    /// Stops accepting connections, waits for in-flight requests, and returns the server's
    /// result.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("hub server task panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
