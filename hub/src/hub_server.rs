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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

use crate::hashing::{hex, is_commit_hex, sha256_file};

const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
const X_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-error-message");

/// Read size when streaming file bodies.
const STREAM_CHUNK: usize = 256 * 1024;
/// Read size when throttled: small enough that pacing is smooth at a few MB/s.
const THROTTLED_CHUNK: usize = 64 * 1024;
/// Bodies up to this size are read in one blocking call instead of streamed.
const SMALL_BODY: u64 = 1 << 20;
/// Ranged reads of pinned files up to this size are read on the async thread (from page
/// cache, microseconds); larger ones go through the blocking pool.
const PINNED_READ_MAX: u64 = 256 * 1024;
/// Deepest directory nesting followed inside a revision (guards against symlink loops).
const MAX_DEPTH: usize = 16;

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
struct Counters {
    requests: AtomicU64,
    head_requests: AtomicU64,
    get_requests: AtomicU64,
    file_bodies: AtomicU64,
    file_body_bytes: AtomicU64,
}

struct HashEntry {
    len: u64,
    mtime: Option<SystemTime>,
    sha256: String,
}

struct Shared {
    root: PathBuf,
    token: Option<String>,
    /// sha256 per file path, valid while length and mtime are unchanged.
    hashes: Mutex<HashMap<PathBuf, HashEntry>>,
    /// Per-file gates so that a file is hashed by one thread at a time.
    hashing: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// `"<org>/<name>@<commit>"` → revision directory name, for commit-addressed requests.
    commits: Mutex<HashMap<String, String>>,
    /// Open files of commit-addressed revisions already served: a ranged read naming a commit (every ranged fetch does) is then one `fstat`
    /// and one `pread` on the async thread, instead of a directory walk, an `open` and a
    /// trip to the blocking pool. On loopback those costs, not bytes, bound ranged fetches.
    pinned: Mutex<HashMap<PinnedKey, Arc<PinnedFile>>>,
    stats: Counters,
    throttle: Option<Arc<Throttle>>,
}

/// One bandwidth budget shared by every response body.
///
/// A virtual clock: each chunk reserves `len / rate` seconds from where the previous
/// reservation ended, and is sent when its reservation ends. A sender that wakes a little
/// late (timers tick in milliseconds, a 64 KiB chunk at 100 MB/s is 0.65 ms) continues from
/// the clock, not from its late wake-up, so lateness does not add up to a lower rate; a link
/// idle for longer than [`Throttle::SLACK`] restarts from now, so it earns no burst.
struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have left.
    busy_until: Mutex<Instant>,
}

impl Throttle {
    /// Idle time after which the clock restarts from now.
    const SLACK: Duration = Duration::from_millis(20);

    fn new(bytes_per_sec: u64) -> Self {
        let now = Instant::now();
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            // Idle from the start: the first body earns no credit.
            busy_until: Mutex::new(now.checked_sub(Self::SLACK * 2).unwrap_or(now)),
        }
    }

    /// Reserves the link for `len` bytes; returns when they may be sent.
    fn reserve(&self, len: usize) -> Instant {
        let needed = Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut busy = lock(&self.busy_until);
        if now > *busy + Self::SLACK {
            *busy = now;
        }
        *busy += needed;
        *busy
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
            .route("/api/models/{org}/{name}", get(model_info))
            .route(
                "/api/models/{org}/{name}/revision/{rev}",
                get(model_info_at_revision),
            )
            .route("/api/models/{org}/{name}/tree/{rev}", get(tree_root))
            .route(
                "/api/models/{org}/{name}/tree/{rev}/{*path}",
                get(tree_path),
            )
            .route(
                "/api/models/{org}/{name}/paths-info/{rev}",
                post(paths_info),
            )
            // `get` also answers HEAD; the handler skips opening the file for HEAD.
            .route("/{org}/{name}/resolve/{rev}/{*path}", get(resolve))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(state.clone(), require_token))
            .layer(middleware::from_fn_with_state(state.clone(), log_request))
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

// ---------------------------------------------------------------------------------------------
// Errors, in the Hub's shape.

#[derive(Debug)]
enum HubError {
    Unauthorized,
    RepoNotFound(String),
    RevisionNotFound(String),
    EntryNotFound {
        message: String,
        commit: Option<String>,
    },
    RangeNotSatisfiable {
        len: u64,
    },
    Internal(String),
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let (status, code, message, commit) = match self {
            HubError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                None,
                "Invalid credentials in Authorization header".to_string(),
                None,
            ),
            HubError::RepoNotFound(m) => (StatusCode::NOT_FOUND, Some("RepoNotFound"), m, None),
            HubError::RevisionNotFound(m) => {
                (StatusCode::NOT_FOUND, Some("RevisionNotFound"), m, None)
            }
            HubError::EntryNotFound { message, commit } => (
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                message,
                commit,
            ),
            HubError::RangeNotSatisfiable { len } => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
            HubError::Internal(m) => {
                tracing::error!(error = %m, "hub server internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, None, m, None)
            }
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        let headers = resp.headers_mut();
        if let Some(code) = code {
            headers.insert(X_ERROR_CODE, HeaderValue::from_static(code));
        }
        // Header values cannot hold every character a message may contain.
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert(X_ERROR_MESSAGE, v);
        }
        // The Hub names the commit on a missing file so clients can cache the absence.
        if let Some(v) = commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(X_REPO_COMMIT, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> HubError {
    HubError::Internal(format!("{context}: {e}"))
}

/// Runs blocking filesystem work (directory walks, hashing) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("hub worker task failed", e))?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain caches; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The repository view on disk.

/// `(org/name, commit, path)` of a pinned file.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PinnedKey(String, String, String);

/// A file of a commit-addressed revision, held open with what it was when it was described.
struct PinnedFile {
    entry: FileEntry,
    file: std::fs::File,
    mtime: Option<std::time::SystemTime>,
}

impl PinnedFile {
    /// `count` bytes from `start`, if the open file is still what was described (same length
    /// and mtime) and the read is small; `None` sends the request the long way.
    fn read_small(&self, start: u64, count: u64) -> Option<axum::body::Bytes> {
        use std::os::unix::fs::FileExt;
        if count > PINNED_READ_MAX {
            return None;
        }
        let meta = self.file.metadata().ok()?;
        if meta.len() != self.entry.size || meta.modified().ok() != self.mtime {
            return None;
        }
        let mut buf = vec![0u8; count as usize];
        self.file.read_exact_at(&mut buf, start).ok()?;
        Some(buf.into())
    }
}

#[derive(Clone)]
struct FileEntry {
    /// Path inside the revision, `/`-separated.
    path: String,
    abs: PathBuf,
    size: u64,
    sha256: String,
}

struct RevisionView {
    repo_id: String,
    revision: String,
    commit: String,
    /// Sorted by path.
    files: Vec<FileEntry>,
}

impl RevisionView {
    fn file(&self, path: &str) -> Result<&FileEntry, HubError> {
        let not_found = || HubError::EntryNotFound {
            message: format!(
                "Entry not found: {path} in {} at revision {}",
                self.repo_id, self.revision
            ),
            commit: Some(self.commit.clone()),
        };
        if !valid_path(path) {
            return Err(not_found());
        }
        self.files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(not_found)
    }

    fn is_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.files.iter().any(|f| f.path.starts_with(&prefix))
    }
}

/// One path component that cannot climb out of its parent.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

fn valid_path(p: &str) -> bool {
    p.split('/').all(valid_segment)
}

impl Shared {
    fn repo_dir(&self, org: &str, name: &str) -> Result<PathBuf, HubError> {
        let not_found = || HubError::RepoNotFound(format!("Repository not found: {org}/{name}"));
        if !valid_segment(org) || !valid_segment(name) {
            return Err(not_found());
        }
        let dir = self.root.join(org).join(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(not_found())
        }
    }

    /// Resolves `rev` (a revision directory name or a commit id) and describes it.
    /// Holds `file` of `commit` open for later ranged reads naming that commit.
    fn pin(&self, key: PinnedKey, file: &FileEntry) {
        let Ok(handle) = std::fs::File::open(&file.abs) else {
            return;
        };
        let Ok(meta) = handle.metadata() else {
            return;
        };
        if meta.len() != file.size {
            return;
        }
        let pinned = PinnedFile {
            entry: file.clone(),
            file: handle,
            mtime: meta.modified().ok(),
        };
        lock(&self.pinned).insert(key, Arc::new(pinned));
    }

    fn describe(&self, org: &str, name: &str, rev: &str) -> Result<RevisionView, HubError> {
        let repo_dir = self.repo_dir(org, name)?;
        if valid_segment(rev) && repo_dir.join(rev).is_dir() {
            return self.describe_dir(org, name, rev, &repo_dir.join(rev));
        }
        if is_commit_hex(rev) {
            let commit = rev.to_ascii_lowercase();
            let key = format!("{org}/{name}@{commit}");
            // Fast path: a commit this server handed out before, if its content is unchanged.
            let known = lock(&self.commits).get(&key).cloned();
            if let Some(known) = known {
                let dir = repo_dir.join(&known);
                if dir.is_dir() {
                    let view = self.describe_dir(org, name, &known, &dir)?;
                    if view.commit == commit {
                        return Ok(view);
                    }
                }
            }
            for rev_name in list_subdirs(&repo_dir)? {
                let view = self.describe_dir(org, name, &rev_name, &repo_dir.join(&rev_name))?;
                if view.commit == commit {
                    return Ok(view);
                }
            }
        }
        Err(HubError::RevisionNotFound(format!(
            "Revision Not Found for {org}/{name}: {rev}"
        )))
    }

    fn describe_dir(
        &self,
        org: &str,
        name: &str,
        rev: &str,
        dir: &Path,
    ) -> Result<RevisionView, HubError> {
        let mut found = Vec::new();
        walk(dir, "", 0, &mut found)
            .map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut files = Vec::with_capacity(found.len());
        for (path, abs, meta) in found {
            let sha256 = self
                .sha256_of(&abs, &meta)
                .map_err(|e| internal(&format!("cannot hash {}", abs.display()), e))?;
            files.push(FileEntry {
                path,
                abs,
                size: meta.len(),
                sha256,
            });
        }
        let commit = commit_id(org, name, rev, &files);
        lock(&self.commits).insert(format!("{org}/{name}@{commit}"), rev.to_string());
        Ok(RevisionView {
            repo_id: format!("{org}/{name}"),
            revision: rev.to_string(),
            commit,
            files,
        })
    }

    fn sha256_of(&self, abs: &Path, meta: &std::fs::Metadata) -> io::Result<String> {
        let mtime = meta.modified().ok();
        let cached = || {
            lock(&self.hashes)
                .get(abs)
                .filter(|e| e.len == meta.len() && e.mtime == mtime)
                .map(|e| e.sha256.clone())
        };
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        // One hashing per file at a time: concurrent first requests for a multi-GB file wait
        // for the first hash instead of each reading the whole file again.
        let gate = lock(&self.hashing)
            .entry(abs.to_path_buf())
            .or_default()
            .clone();
        let _hashing = lock(&gate);
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        let sha256 = sha256_file(abs)?;
        lock(&self.hashes).insert(
            abs.to_path_buf(),
            HashEntry {
                len: meta.len(),
                mtime,
                sha256: sha256.clone(),
            },
        );
        Ok(sha256)
    }
}

/// Subdirectory names of `dir`, sorted.
fn list_subdirs(dir: &Path) -> Result<Vec<String>, HubError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str() {
            if valid_segment(name) && entry.path().is_dir() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Regular files below `dir` (following symlinks, so a tree of links into an HF cache works).
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Names that are not UTF-8 cannot appear in a URL path we would match.
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_segment(&name) {
            continue;
        }
        let abs = entry.path();
        let Ok(meta) = std::fs::metadata(&abs) else {
            continue; // dangling symlink
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if meta.is_dir() {
            walk(&abs, &rel, depth + 1, out)?;
        } else if meta.is_file() {
            out.push((rel, abs, meta));
        }
    }
    Ok(())
}

/// A 40-hex id for `(repo, revision, content)`.
fn commit_id(org: &str, name: &str, rev: &str, files: &[FileEntry]) -> String {
    if is_commit_hex(rev) {
        return rev.to_ascii_lowercase();
    }
    let mut h = Sha256::new();
    h.update(b"neuromfa-hub commit v1\0");
    for part in [org, name, rev] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for f in files {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    let mut id = hex(&h.finalize());
    id.truncate(40);
    id
}

// ---------------------------------------------------------------------------------------------
// Middleware.

async fn log_request(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let started = Instant::now();
    st.stats.requests.fetch_add(1, Ordering::Relaxed);
    if method == Method::HEAD {
        st.stats.head_requests.fetch_add(1, Ordering::Relaxed);
    } else if method == Method::GET {
        st.stats.get_requests.fetch_add(1, Ordering::Relaxed);
    }
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %uri,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "hub request"
    );
    resp
}

async fn require_token(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(expected) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            return HubError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "Not Found" }))).into_response()
}

// ---------------------------------------------------------------------------------------------
// File downloads.

async fn resolve(
    State(st): State<Arc<Shared>>,
    method: Method,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    req_headers: HeaderMap,
) -> Result<Response, HubError> {
    let range_header = req_headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_head = method == Method::HEAD;
    // A request naming a commit (every ranged fetch does) may use a file pinned to it.
    let pinned_key = is_commit_hex(&rev).then(|| {
        PinnedKey(
            format!("{org}/{name}"),
            rev.to_ascii_lowercase(),
            path.clone(),
        )
    });
    let pinned = pinned_key
        .as_ref()
        .filter(|_| !is_head)
        .and_then(|key| lock(&st.pinned).get(key).cloned());
    let fast = pinned.and_then(|pinned| {
        let range = parse_range(range_header.as_deref()?, pinned.entry.size);
        let RangeSpec::Partial { start, end } = range else {
            return None;
        };
        let bytes = pinned.read_small(start, end - start + 1)?;
        Some((
            pinned_key.as_ref()?.1.clone(),
            pinned.entry.clone(),
            range,
            Some(bytes),
        ))
    });
    let (commit, file, range, small) = match fast {
        Some(done) => done,
        None => {
            let st2 = st.clone();
            // One trip to the blocking pool per request: resolving the revision and, for a
            // small body, reading it too. Separate async file operations would each be
            // another trip, and on loopback those hops are the cost.
            blocking(move || {
                let view = st2.describe(&org, &name, &rev)?;
                let file = view.file(&path)?.clone();
                let range = range_header
                    .as_deref()
                    .map(|v| parse_range(v, file.size))
                    .unwrap_or(RangeSpec::Full);
                let (start, count) = match range {
                    RangeSpec::Full => (0, file.size),
                    RangeSpec::Partial { start, end } => (start, end - start + 1),
                    RangeSpec::Unsatisfiable => (0, 0),
                };
                let small = if !is_head && range != RangeSpec::Unsatisfiable && count <= SMALL_BODY
                {
                    Some(read_part(&file, start, count, &view.commit)?)
                } else {
                    None
                };
                if let Some(key) = pinned_key.filter(|key| key.1 == view.commit) {
                    st2.pin(key, &file);
                }
                Ok((view.commit, file, range, small))
            })
            .await?
        }
    };

    let mut headers = HeaderMap::new();
    let etag = HeaderValue::from_str(&format!("\"{}\"", file.sha256))
        .map_err(|e| internal("bad ETag", e))?;
    headers.insert(header::ETAG, etag);
    headers.insert(
        X_REPO_COMMIT,
        HeaderValue::from_str(&commit).map_err(|e| internal("bad commit id", e))?,
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // If-None-Match is deliberately ignored: on a 304 hf-hub reuses the commit it cached for a
    // branch, whereas a 200 carries the current X-Repo-Commit and costs no body either.

    let len = file.size;
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return Ok((StatusCode::OK, headers).into_response());
    }

    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial { start, end } => {
            let content_range = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                .map_err(|e| internal("bad Content-Range", e))?;
            headers.insert(header::CONTENT_RANGE, content_range);
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeSpec::Unsatisfiable => return Err(HubError::RangeNotSatisfiable { len }),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));

    let body = match small {
        Some(bytes) => {
            st.stats.file_bodies.fetch_add(1, Ordering::Relaxed);
            st.stats.file_body_bytes.fetch_add(count, Ordering::Relaxed);
            match &st.throttle {
                None => Body::from(bytes),
                Some(throttle) => {
                    let chunks: Vec<io::Result<axum::body::Bytes>> = (0..bytes.len())
                        .step_by(THROTTLED_CHUNK)
                        .map(|at| Ok(bytes.slice(at..(at + THROTTLED_CHUNK).min(bytes.len()))))
                        .collect();
                    throttled(futures_util::stream::iter(chunks), throttle.clone())
                }
            }
        }
        None => {
            let mut f = tokio::fs::File::open(&file.abs).await.map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    HubError::EntryNotFound {
                        message: format!("Entry not found: {}", file.path),
                        commit: Some(commit.clone()),
                    }
                } else {
                    internal(&format!("cannot open {}", file.abs.display()), e)
                }
            })?;
            if start > 0 {
                f.seek(io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| internal(&format!("cannot seek {}", file.abs.display()), e))?;
            }
            st.stats.file_bodies.fetch_add(1, Ordering::Relaxed);
            st.stats.file_body_bytes.fetch_add(count, Ordering::Relaxed);
            match &st.throttle {
                None => Body::from_stream(ReaderStream::with_capacity(f.take(count), STREAM_CHUNK)),
                Some(throttle) => throttled(
                    ReaderStream::with_capacity(f.take(count), THROTTLED_CHUNK),
                    throttle.clone(),
                ),
            }
        }
    };
    Ok((status, headers, body).into_response())
}

/// `count` bytes of `file` from `start`, read in one go (blocking).
fn read_part(
    file: &FileEntry,
    start: u64,
    count: u64,
    commit: &str,
) -> Result<axum::body::Bytes, HubError> {
    use std::io::{Read, Seek};
    let context = |what: &str, e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            HubError::EntryNotFound {
                message: format!("Entry not found: {}", file.path),
                commit: Some(commit.to_string()),
            }
        } else {
            internal(&format!("cannot {what} {}", file.abs.display()), e)
        }
    };
    let mut f = std::fs::File::open(&file.abs).map_err(|e| context("open", e))?;
    f.seek(io::SeekFrom::Start(start))
        .map_err(|e| context("seek", e))?;
    let mut buf = vec![0u8; count as usize];
    f.read_exact(&mut buf).map_err(|e| context("read", e))?;
    Ok(buf.into())
}

/// A body whose chunks leave no faster than `throttle` allows.
fn throttled<S>(chunks: S, throttle: Arc<Throttle>) -> Body
where
    S: futures_util::Stream<Item = io::Result<axum::body::Bytes>> + Send + 'static,
{
    Body::from_stream(chunks.then(move |chunk| {
        let throttle = throttle.clone();
        async move {
            if let Ok(bytes) = &chunk {
                tokio::time::sleep_until(throttle.reserve(bytes.len()).into()).await;
            }
            chunk
        }
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// No usable Range: serve everything (RFC 9110 says to ignore malformed ones).
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `len` bytes. Multiple ranges are not
/// supported and fall back to the whole file, which RFC 9110 permits.
fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial {
        start,
        end: end.min(len - 1),
    }
}

// ---------------------------------------------------------------------------------------------
// API routes.

async fn model_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, HubError> {
    blocking(move || {
        let repo_dir = st.repo_dir(&org, &name)?;
        // The Hub reports the default branch; a tree without `main` has no sha to give.
        let view = if repo_dir.join("main").is_dir() {
            Some(st.describe(&org, &name, "main")?)
        } else {
            None
        };
        Ok(Json(info_json(&org, &name, view.as_ref())))
    })
    .await
}

async fn model_info_at_revision(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
) -> Result<Json<Value>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        Ok(Json(info_json(&org, &name, Some(&view))))
    })
    .await
}

fn info_json(org: &str, name: &str, view: Option<&RevisionView>) -> Value {
    let id = format!("{org}/{name}");
    let mut info = json!({
        "id": id,
        "modelId": id,
        "private": false,
        "gated": false,
        "disabled": false,
        "tags": [],
        "siblings": [],
    });
    if let Some(view) = view {
        info["sha"] = json!(view.commit);
        info["siblings"] = view
            .files
            .iter()
            .map(|f| json!({ "rfilename": f.path, "size": f.size }))
            .collect();
    }
    info
}

#[derive(Debug, Default, Deserialize)]
struct TreeQuery {
    recursive: Option<String>,
}

impl TreeQuery {
    fn recursive(&self) -> bool {
        matches!(self.recursive.as_deref(), Some("true" | "1" | "True"))
    }
}

async fn tree_root(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    Query(q): Query<TreeQuery>,
) -> Result<Json<Vec<Value>>, HubError> {
    tree(st, org, name, rev, String::new(), q.recursive()).await
}

async fn tree_path(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    Query(q): Query<TreeQuery>,
) -> Result<Json<Vec<Value>>, HubError> {
    tree(st, org, name, rev, path, q.recursive()).await
}

async fn tree(
    st: Arc<Shared>,
    org: String,
    name: String,
    rev: String,
    path: String,
    recursive: bool,
) -> Result<Json<Vec<Value>>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        let path = path.trim_matches('/').to_string();
        let is_dir = path.is_empty() || (valid_path(&path) && view.is_dir(&path));
        if !is_dir {
            return Err(HubError::EntryNotFound {
                message: format!("Entry not found: {path} is not a directory of {org}/{name}"),
                commit: Some(view.commit.clone()),
            });
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        // Keyed by path so directories are listed once and everything comes out sorted.
        let mut entries: BTreeMap<String, Value> = BTreeMap::new();
        for f in &view.files {
            let Some(rest) = f.path.strip_prefix(&prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let dirs = if recursive { parts.len() - 1 } else { 1 };
            for depth in 1..=dirs.min(parts.len() - 1) {
                let dir = format!("{prefix}{}", parts[..depth].join("/"));
                entries
                    .entry(dir.clone())
                    .or_insert_with(|| dir_entry(&view.commit, &dir));
            }
            if recursive || parts.len() == 1 {
                entries.insert(f.path.clone(), file_entry(f));
            }
        }
        Ok(Json(entries.into_values().collect()))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct PathsInfoBody {
    paths: Vec<String>,
}

async fn paths_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    Json(body): Json<PathsInfoBody>,
) -> Result<Json<Vec<Value>>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        let mut out = Vec::new();
        for p in &body.paths {
            let p = p.trim_matches('/');
            if let Some(f) = view.files.iter().find(|f| f.path == p) {
                out.push(file_entry(f));
            } else if valid_path(p) && view.is_dir(p) {
                out.push(dir_entry(&view.commit, p));
            }
        }
        Ok(Json(out))
    })
    .await
}

fn file_entry(f: &FileEntry) -> Value {
    // The Git LFS pointer the Hub would store for this file; its size is reported too.
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        f.sha256, f.size
    );
    json!({
        "type": "file",
        "oid": f.sha256,
        "size": f.size,
        "path": f.path,
        "lfs": {
            "oid": f.sha256,
            // hf-hub 1.0 reads `sha256` (the Hub's JSON says `oid`); both are given.
            "sha256": f.sha256,
            "size": f.size,
            "pointerSize": pointer.len(),
        },
    })
}

fn dir_entry(commit: &str, path: &str) -> Value {
    let mut h = Sha256::new();
    h.update(commit.as_bytes());
    h.update(b"\0");
    h.update(path.as_bytes());
    let mut oid = hex(&h.finalize());
    oid.truncate(40);
    json!({ "type": "directory", "oid": oid, "path": path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-1", 100), Full);
    }

    #[test]
    fn path_segments_cannot_escape() {
        assert!(valid_path("model.safetensors"));
        assert!(valid_path("sub/dir/file.bin"));
        for bad in ["", "..", "../x", "a/../b", "a//b", "/abs", "a\\b", "."] {
            assert!(!valid_path(bad), "{bad:?} should be rejected");
        }
    }
}
