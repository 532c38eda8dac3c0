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

mod api;
mod error;
mod files;
mod middleware;
mod repo;
mod throttle;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use axum::http::HeaderName;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
}

impl std::fmt::Debug for HubServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubServerConfig")
            .field("root", &self.root)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("throttle_bytes_per_sec", &self.throttle_bytes_per_sec)
            .finish()
    }
}

/// Request counters, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) head_requests: AtomicU64,
    pub(crate) get_requests: AtomicU64,
    pub(crate) file_bodies: AtomicU64,
    pub(crate) file_body_bytes: AtomicU64,
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
    /// Checks that `config.root` is a directory.
    pub fn new(config: HubServerConfig) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(&config.root)
            .with_context(|| format!("hub root {} is not readable", config.root.display()))?;
        anyhow::ensure!(
            meta.is_dir(),
            "hub root {} is not a directory",
            config.root.display()
        );
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
            }),
        })
    }

    /// Counters since the server was created.
    pub fn stats(&self) -> HubStats {
        let c = &self.shared.stats;
        HubStats {
            requests: c.requests.load(Ordering::Relaxed),
            head_requests: c.head_requests.load(Ordering::Relaxed),
            get_requests: c.get_requests.load(Ordering::Relaxed),
            file_bodies: c.file_bodies.load(Ordering::Relaxed),
            file_body_bytes: c.file_body_bytes.load(Ordering::Relaxed),
        }
    }

    /// The axum router, with authentication and request logging. Public so that callers can
    /// add layers (tests use this to corrupt responses).
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
            // `get` also answers HEAD; the handler skips opening the file for HEAD.
            .route("/{org}/{name}/resolve/{rev}/{*path}", get(files::resolve))
            .fallback(middleware::not_found)
            .layer(from_fn_with_state(state.clone(), middleware::require_token))
            .layer(from_fn_with_state(state.clone(), middleware::log_request))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes, then finishes in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, root = %self.shared.root.display(), "hub server listening");
        // Headers and a small streamed body go out as separate writes; with Nagle's algorithm
        // the body then waits for the client's delayed ACK (tens of ms per ranged read).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .context("hub server failed")
    }
}

/// Serves `config.root` on `listener` until `shutdown` completes.
pub async fn serve(
    config: HubServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    HubServer::new(config)?.serve(listener, shutdown).await
}

/// Binds `addr` (e.g. `127.0.0.1:0`) and serves in a background task.
pub async fn spawn(config: HubServerConfig, addr: SocketAddr) -> anyhow::Result<RunningHub> {
    let server = HubServer::new(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind hub server to {addr}"))?;
    let addr = listener
        .local_addr()
        .context("hub server socket has no local address")?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.clone().serve(listener, async move {
        // A dropped sender also means shut down.
        let _ = rx.await;
    }));
    Ok(RunningHub {
        addr,
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
