//! Fetching one checkpoint from the Hugging Face Hub into the standard HF cache.
//!
//! [`Fetcher::fetch_checkpoint`] downloads `config.json`, then `model.safetensors.index.json`
//! and every shard it names, or `model.safetensors` when there is no index, through `hf-hub`
//! 1.0. The result is the snapshot directory of the HF cache
//! (`<cache>/models--<org>--<name>/snapshots/<commit>`), which the analysis reads directly.
//!
//! `hf-hub` writes whatever the file GET returns, without checking its status, length or
//! hash. So every file downloaded here is checked against the size the Hub announced in its
//! HEAD response and, when the ETag is a sha256 (LFS files), against the content's sha256; a
//! bad blob is deleted from the cache and downloaded again, up to [`MAX_ATTEMPTS`] times.
//! Files found in the cache were verified when they were downloaded; they are not hashed
//! again, only their size is compared when the Hub reported one.
//!
//! After `config.json`, every file is requested at the commit the revision resolved to, so a
//! checkpoint is never assembled from two commits of a moving branch, and files already in
//! the cache cost no request at all.
//!
//! Proxies: `hf-hub` builds its HEAD client itself, with proxies from `HTTP(S)_PROXY` /
//! `ALL_PROXY`. For a loopback endpoint the fetcher's own GET client never uses a proxy, and
//! [`Fetcher::new`] refuses to start if the environment would send the HEAD requests to a
//! proxy; set `NO_PROXY=127.0.0.1,localhost` (before any thread starts) in that case.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent, FileStatus, ProgressEvent, ProgressHandler};
use hf_hub::{HFClient, HFError, HFRepository, RepoTypeModel};
use serde::Deserialize;

use crate::hashing::{is_commit_hex, is_sha256_hex, sha256_file};

/// The Hub used when neither the settings nor `HF_ENDPOINT` name one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Downloads of one file before a size or hash mismatch is final.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a download may go without any progress before it is abandoned.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

const CONFIG_FILE: &str = "config.json";
const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// Where and as whom to fetch. `Default` means: `HF_ENDPOINT` or the real Hub, the token
/// `hf-hub` finds (`HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`), the standard cache
/// (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
#[derive(Clone, Default)]
pub struct HubSettings {
    /// Hub base URL; `None` = `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Bearer token; `None` = whatever `hf-hub` finds in the environment.
    pub token: Option<String>,
    /// HF cache directory; `None` = the standard one.
    pub cache_dir: Option<PathBuf>,
}

impl HubSettings {
    /// The endpoint in use: the one set here, else `HF_ENDPOINT`, else the real Hub.
    pub fn resolved_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
    }

    /// The token in use: the one set here, else what `hf-hub` would find (`HF_TOKEN`, the
    /// file at `HF_TOKEN_PATH`, `$HF_HOME/token`), unless `HF_HUB_DISABLE_IMPLICIT_TOKEN`.
    /// Resolved once here so every request we send ourselves carries the same token as
    /// `hf-hub`'s.
    pub fn resolved_token(&self) -> Option<String> {
        if let Some(token) = &self.token {
            return Some(token.clone());
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if env("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some() {
            return None;
        }
        if let Some(token) = env("HF_TOKEN") {
            return Some(token);
        }
        let from_file = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        };
        if let Some(token) = env("HF_TOKEN_PATH").and_then(|p| from_file(PathBuf::from(p))) {
            return Some(token);
        }
        let hf_home = env("HF_HOME").map(PathBuf::from).or_else(|| {
            env("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        })?;
        from_file(hf_home.join("token"))
    }
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// A checkpoint in the HF cache, ready to be opened by the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedCheckpoint {
    /// The snapshot directory: `config.json` and `model.safetensors` (or the index and shards).
    pub dir: PathBuf,
    /// The commit the revision resolved to.
    pub commit: String,
    /// Every file of the checkpoint, in download order.
    pub files: Vec<FetchedFile>,
    /// Bytes received in file bodies by this call (0 when everything was cached).
    pub bytes_downloaded: u64,
    /// HTTP requests this call made, as seen from here: HEADs, file GETs and API calls,
    /// not counting `hf-hub`'s internal retries.
    pub requests: u32,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// One file of a fetched checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// Path in the repository, e.g. `model.safetensors`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Content sha256 (lower-case hex) when the Hub's ETag is one: checked now if the file was
    /// downloaded by this call, when it was downloaded otherwise. `None` for files whose ETag
    /// is not a sha256 (small non-LFS files on the real Hub carry a git blob id).
    pub sha256: Option<String>,
}

/// The file of a checkpoint an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `org/name`.
    pub repo: String,
    /// The revision as asked for (branch or commit).
    pub revision: String,
    /// Path in the repository.
    pub file: String,
}

/// Why a fetch failed. Messages name the repository, the revision and the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The repository does not exist (or is invisible with these credentials).
    #[error(
        "repository {} not found at {endpoint} (fetching {} at revision {})",
        .at.repo, .at.file, .at.revision
    )]
    RepoNotFound { at: Box<FileRef>, endpoint: String },
    /// The repository exists but not the revision.
    #[error(
        "revision {} of {} not found at {endpoint} (fetching {})",
        .at.revision, .at.repo, .at.file
    )]
    RevisionNotFound { at: Box<FileRef>, endpoint: String },
    /// The revision exists but not the file.
    #[error("{} not found in {} at revision {}", .at.file, .at.repo, .at.revision)]
    FileNotFound { at: Box<FileRef> },
    /// 401 or 403: a token is missing, wrong, or lacks access (gated or private repository).
    #[error(
        "access to {} in {} at revision {} denied (HTTP {status}): {detail}; check the Hub token",
        .at.file, .at.repo, .at.revision
    )]
    AccessDenied {
        at: Box<FileRef>,
        status: u16,
        detail: String,
    },
    /// The downloaded bytes never matched what the Hub announced, in [`MAX_ATTEMPTS`]
    /// downloads.
    #[error(
        "{} in {} at revision {} failed verification after {MAX_ATTEMPTS} download attempts: \
         {check} expected {expected}, got {actual}",
        .at.file, .at.repo, .at.revision
    )]
    Integrity {
        at: Box<FileRef>,
        /// `"size"` or `"sha256"`.
        check: &'static str,
        expected: String,
        actual: String,
    },
    /// Connection refused, timeout, stalled transfer, 408/429/5xx: worth retrying later.
    #[error(
        "temporary failure fetching {} from {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Transient { at: Box<FileRef>, detail: String },
    /// The local cache could not be read or written (disk full, permissions).
    #[error(
        "local cache error for {} of {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Cache { at: Box<FileRef>, detail: String },
    /// The files are there but do not form a checkpoint (e.g. an unreadable shard index).
    #[error(
        "invalid checkpoint {} at revision {}: {}: {detail}",
        .at.repo, .at.revision, .at.file
    )]
    InvalidCheckpoint { at: Box<FileRef>, detail: String },
    /// The request itself is malformed (e.g. a repository id that is not `org/name`).
    #[error(
        "cannot fetch {} of {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    InvalidRequest { at: Box<FileRef>, detail: String },
    /// Any other answer from the Hub that retrying will not change.
    #[error(
        "fetching {} from {} at revision {} failed: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Hub { at: Box<FileRef>, detail: String },
    /// The server answered a byte-range request with something other than that range (it
    /// ignores `Range`): fetch the whole checkpoint instead ([`crate::ranges`]).
    #[error(
        "the Hub serving {} at revision {} does not honour byte ranges ({}): {detail}",
        .at.repo, .at.revision, .at.file
    )]
    RangesUnsupported { at: Box<FileRef>, detail: String },
    /// The client could not be configured ([`Fetcher::new`] only).
    #[error("cannot set up the Hub client: {detail}")]
    Setup { detail: String },
}

impl FetchError {
    /// True when the same fetch may succeed later (network or server trouble, local cache
    /// trouble); false when it never will as asked (missing repo, revision or file, access
    /// denied, corrupt content after retries, invalid checkpoint).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Transient { .. } | FetchError::Cache { .. }
        )
    }

    /// The repository, revision and file concerned (`None` for [`FetchError::Setup`]).
    pub fn file_ref(&self) -> Option<&FileRef> {
        match self {
            FetchError::RepoNotFound { at, .. }
            | FetchError::RevisionNotFound { at, .. }
            | FetchError::FileNotFound { at }
            | FetchError::AccessDenied { at, .. }
            | FetchError::Integrity { at, .. }
            | FetchError::Transient { at, .. }
            | FetchError::Cache { at, .. }
            | FetchError::InvalidCheckpoint { at, .. }
            | FetchError::InvalidRequest { at, .. }
            | FetchError::RangesUnsupported { at, .. }
            | FetchError::Hub { at, .. } => Some(at),
            FetchError::Setup { .. } => None,
        }
    }
}

/// Downloads checkpoints through one `hf-hub` client. Cheap to share behind an `Arc`;
/// fetches of the same repository are serialised, others run concurrently.
pub struct Fetcher {
    client: HFClient,
    /// The HTTP client inside `client`, for the ranged GETs we send ourselves.
    http: reqwest::Client,
    token: Option<String>,
    /// The endpoint, parsed once.
    base_url: reqwest::Url,
    stall_timeout: Duration,
    /// One lock per repository: concurrent fetches of one repo would race on its blobs
    /// (hf-hub does not re-check a blob after taking its lock, and we delete bad ones).
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("endpoint", &self.client.endpoint())
            .field("cache_dir", &self.client.cache_dir())
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the client. Fails on an unparsable endpoint, or on a loopback endpoint that the
    /// environment's proxy settings would route through a proxy.
    pub fn new(settings: HubSettings) -> Result<Self, FetchError> {
        let setup = |detail: String| FetchError::Setup { detail };
        let endpoint = settings.resolved_endpoint();
        let base_url = hub_base_url(&endpoint).map_err(setup)?;
        if is_loopback(&base_url) {
            check_no_proxy_for(&endpoint)?;
        }

        let http = http_client(&base_url).map_err(setup)?;

        let token = settings.resolved_token();
        let mut builder = HFClient::builder().endpoint(endpoint).client(http.clone());
        if let Some(token) = &token {
            builder = builder.token(token.clone());
        }
        if let Some(dir) = settings.cache_dir {
            builder = builder.cache_dir(dir);
        }
        let client = builder.build().map_err(|e| setup(error_chain(&e)))?;
        Ok(Fetcher {
            client,
            http,
            token,
            base_url,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            repo_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Abandons a download (as a transient error) after `timeout` without progress.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// The Hub base URL in use.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// The HF cache directory in use.
    pub fn cache_dir(&self) -> &Path {
        self.client.cache_dir()
    }

    /// Downloads (or finds in the cache) the checkpoint `repo` (`org/name`) at `revision`
    /// (a branch such as `step1000`, or a commit id) and verifies it.
    pub async fn fetch_checkpoint(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<FetchedCheckpoint, FetchError> {
        let started = Instant::now();
        let Begun {
            mut run,
            commit,
            pinned,
            dir,
            config,
            guard: _guard,
            ..
        } = self.begin(repo, revision).await?;

        let mut files = vec![config];
        match run.fetch_index(&pinned).await? {
            Some((index_path, index)) => {
                files.push(index);
                for shard in run.shards_of(&index_path).await? {
                    let (_, f) = run.fetch_file(&shard, &pinned).await?;
                    files.push(f);
                }
            }
            None => {
                let (_, f) = run.fetch_file(SINGLE_FILE, &pinned).await?;
                files.push(f);
            }
        }

        let fetched = FetchedCheckpoint {
            dir,
            commit,
            files,
            bytes_downloaded: run.bytes,
            requests: run.requests,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            repo,
            revision,
            commit = %fetched.commit,
            files = fetched.files.len(),
            bytes_downloaded = fetched.bytes_downloaded,
            requests = fetched.requests,
            elapsed_ms = fetched.elapsed.as_millis() as u64,
            "checkpoint fetched"
        );
        Ok(fetched)
    }

    /// The start every fetch shares: checks the request, takes the repository's lock,
    /// fetches `config.json` (verified, into the cache) and pins the revision to its commit.
    pub(crate) async fn begin(&self, repo: &str, revision: &str) -> Result<Begun, FetchError> {
        let ctx = Ctx {
            repo: repo.to_string(),
            revision: revision.to_string(),
            endpoint: self.endpoint().to_string(),
        };
        let (owner, name) = parse_repo_id(repo).map_err(|detail| FetchError::InvalidRequest {
            at: ctx.at(CONFIG_FILE),
            detail,
        })?;
        if revision.is_empty() || revision.contains(['\0', '\n']) {
            return Err(FetchError::InvalidRequest {
                at: ctx.at(CONFIG_FILE),
                detail: "the revision is empty or not printable".to_string(),
            });
        }

        let guard = self.repo_lock(repo).lock_owned().await;

        let mut run = Run {
            ctx,
            handle: self.client.model(owner, name),
            http: self.http.clone(),
            token: self.token.clone(),
            base_url: self.base_url.clone(),
            folder: self.cache_dir().join(format!("models--{owner}--{name}")),
            stall_timeout: self.stall_timeout,
            requests: 0,
            bytes: 0,
        };

        let (config_path, config) = match run.fetch_file(CONFIG_FILE, revision).await {
            Err(FetchError::FileNotFound { .. }) => return Err(run.explain_missing().await),
            other => other?,
        };
        let commit = config_path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        // Pin the rest of the checkpoint to that commit (see the module docs). A Hub that
        // answers with something other than a commit id gets the revision as given.
        let pinned = if is_commit_hex(&commit) {
            commit.clone()
        } else {
            revision.to_string()
        };
        let dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| run.folder.join("snapshots").join(&commit));
        Ok(Begun {
            run,
            commit,
            pinned,
            dir,
            config_path,
            config,
            guard,
        })
    }

    fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .repo_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(repo.to_string()).or_default().clone()
    }
}

/// The Hub endpoint as a URL that file paths can be appended to.
pub(crate) fn hub_base_url(endpoint: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(endpoint.trim_end_matches('/'))
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if url.cannot_be_a_base() {
        return Err(format!("endpoint {endpoint:?} cannot carry a path"));
    }
    Ok(url)
}

/// `{base}/{repo}/resolve/{revision}/{file}`, the revision escaped as one path segment and
/// the file by its own segments, as `hf-hub` builds it.
pub(crate) fn resolve_url(
    base: &reqwest::Url,
    repo: &str,
    revision: &str,
    file: &str,
) -> reqwest::Url {
    let mut url = base.clone();
    // `hub_base_url` made sure the base can carry a path.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(repo.split('/'))
            .push("resolve")
            .push(revision)
            .extend(file.split('/').filter(|s| !s.is_empty()));
    }
    url
}

/// `org/name` → `("org", "name")`.
fn parse_repo_id(repo: &str) -> Result<(&str, &str), String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid(owner) && valid(name) => Ok((owner, name)),
        _ => Err(format!(
            "repository id {repo:?} is not of the form org/name"
        )),
    }
}

/// The HTTP client for GETs and API calls, ours rather than `hf-hub`'s default: that one sets
/// no timeouts at all, so a dead connection would hang a worker forever. Traffic to an
/// `endpoint` on this machine never goes through a proxy.
pub(crate) fn http_client(endpoint: &reqwest::Url) -> Result<reqwest::Client, String> {
    let mut http = reqwest::Client::builder()
        .user_agent(concat!(
            "hf-hub/1.0.0; neuromfa-worker/",
            env!("CARGO_PKG_VERSION")
        ))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120));
    if is_loopback(endpoint) {
        http = http.no_proxy();
    }
    http.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Refuses a loopback endpoint that hf-hub's internal client would send to a proxy. It uses
/// the same matcher as reqwest, so the answer is the one reqwest will act on.
fn check_no_proxy_for(endpoint: &str) -> Result<(), FetchError> {
    let uri: axum::http::Uri = endpoint.parse().map_err(|e| FetchError::Setup {
        detail: format!("endpoint {endpoint:?} is not a URI: {e}"),
    })?;
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_system();
    match matcher.intercept(&uri) {
        None => Ok(()),
        Some(_) => Err(FetchError::Setup {
            detail: format!(
                "the endpoint {endpoint} is on this machine, but the proxy settings in the \
                 environment (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY) would route hf-hub's requests \
                 to it through a proxy; set NO_PROXY=127.0.0.1,localhost"
            ),
        }),
    }
}

/// `e` and its sources, joined, so transport errors show their root cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Names for error messages.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) repo: String,
    pub(crate) revision: String,
    pub(crate) endpoint: String,
}

impl Ctx {
    pub(crate) fn at(&self, file: &str) -> Box<FileRef> {
        Box::new(FileRef {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: file.to_string(),
        })
    }

    pub(crate) fn transient(&self, file: &str, detail: String) -> FetchError {
        FetchError::Transient {
            at: self.at(file),
            detail,
        }
    }

    fn cache(&self, file: &str, path: &Path, e: &std::io::Error) -> FetchError {
        FetchError::Cache {
            at: self.at(file),
            detail: format!("{}: {e}", path.display()),
        }
    }

    fn missing(&self, what: Missing, file: &str) -> FetchError {
        let at = self.at(file);
        let endpoint = self.endpoint.clone();
        match what {
            Missing::Repo => FetchError::RepoNotFound { at, endpoint },
            Missing::Revision => FetchError::RevisionNotFound { at, endpoint },
            Missing::File => FetchError::FileNotFound { at },
        }
    }

    pub(crate) fn invalid(&self, file: &str, detail: String) -> FetchError {
        FetchError::InvalidCheckpoint {
            at: self.at(file),
            detail,
        }
    }

    /// Sorts an hf-hub error into transient and permanent kinds.
    pub(crate) fn classify(&self, file: &str, e: HFError) -> FetchError {
        let detail = error_chain(&e);
        let at = self.at(file);
        match e {
            HFError::RepoNotFound { .. } => self.missing(Missing::Repo, file),
            HFError::RevisionNotFound { .. } => self.missing(Missing::Revision, file),
            HFError::EntryNotFound { .. } => self.missing(Missing::File, file),
            // The real Hub answers 401 + RepoNotFound for repositories it will not show.
            HFError::AuthRequired { context }
                if context.error_code.as_deref() == Some("RepoNotFound") =>
            {
                self.missing(Missing::Repo, file)
            }
            HFError::AuthRequired { .. } => FetchError::AccessDenied {
                at,
                status: 401,
                detail,
            },
            HFError::Forbidden { .. } => FetchError::AccessDenied {
                at,
                status: 403,
                detail,
            },
            HFError::RateLimited { .. } => FetchError::Transient { at, detail },
            HFError::Http { context } => {
                let status = context.status.as_u16();
                if status == 408 || status == 429 || status >= 500 {
                    FetchError::Transient { at, detail }
                } else {
                    FetchError::Hub { at, detail }
                }
            }
            // Transport failures: refused, reset, timed out, cut mid-body. Only a request that
            // could not even be built is our fault.
            HFError::Request { source, .. } if !source.is_builder() => {
                FetchError::Transient { at, detail }
            }
            HFError::Xet { .. } => FetchError::Transient { at, detail },
            HFError::Io(_) | HFError::CacheLockTimeout { .. } => FetchError::Cache { at, detail },
            _ => FetchError::Hub { at, detail },
        }
    }
}

/// State of one fetch: names, the repository handle, and what it has cost so far.
pub(crate) struct Run {
    pub(crate) ctx: Ctx,
    pub(crate) handle: HFRepository<RepoTypeModel>,
    /// `handle`'s HTTP client and token, for requests sent without `hf-hub`.
    pub(crate) http: reqwest::Client,
    pub(crate) token: Option<String>,
    pub(crate) base_url: reqwest::Url,
    /// `<cache>/models--<org>--<name>`.
    folder: PathBuf,
    stall_timeout: Duration,
    pub(crate) requests: u32,
    pub(crate) bytes: u64,
}

/// A fetch under way ([`Fetcher::begin`]): the repository's lock held, `config.json` in the
/// cache, the revision pinned to a commit.
pub(crate) struct Begun {
    pub(crate) run: Run,
    /// The commit the revision resolved to (the snapshot directory's name).
    pub(crate) commit: String,
    /// What later files are requested at: the commit, or the revision if the Hub gave none.
    pub(crate) pinned: String,
    /// The snapshot directory.
    pub(crate) dir: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) config: FetchedFile,
    /// Held while this fetch writes to the repository's cache folder.
    pub(crate) guard: tokio::sync::OwnedMutexGuard<()>,
}

enum Check {
    Ok(FetchedFile),
    Mismatch {
        check: &'static str,
        expected: String,
        actual: String,
    },
}

impl Run {
    /// Downloads one file (or finds it cached) and verifies it, retrying bad content.
    /// Returns the snapshot path and the file's description.
    async fn fetch_file(
        &mut self,
        file: &str,
        rev: &str,
    ) -> Result<(PathBuf, FetchedFile), FetchError> {
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            // hf-hub answers a commit-addressed file from the snapshot without any request.
            let local =
                is_commit_hex(rev) && self.folder.join("snapshots").join(rev).join(file).exists();
            let probe = Arc::new(Probe::new());
            let download = self
                .handle
                .download_file()
                .filename(file)
                .revision(rev)
                .progress(probe.clone())
                .send();
            let outcome = watch(download, &probe, self.stall_timeout).await;
            let seen = probe.state();
            self.requests += u32::from(!local) + u32::from(seen.body_started);
            self.bytes += seen.bytes;
            let path = match outcome {
                None => {
                    return Err(self.ctx.transient(
                        file,
                        format!(
                            "no progress for {}s, the server stalled",
                            self.stall_timeout.as_secs_f64()
                        ),
                    ))
                }
                Some(Err(e)) => return Err(self.ctx.classify(file, e)),
                Some(Ok(path)) => path,
            };
            match self.verify(file, &path, &seen).await? {
                Check::Ok(f) => return Ok((path, f)),
                Check::Mismatch {
                    check,
                    expected,
                    actual,
                } => {
                    tracing::warn!(
                        repo = %self.ctx.repo,
                        revision = %self.ctx.revision,
                        file,
                        attempt,
                        check,
                        %expected,
                        %actual,
                        "downloaded file does not match the Hub's metadata; discarding it"
                    );
                    self.discard(file, &path)?;
                    last = Some((check, expected, actual));
                }
            }
        }
        let (check, expected, actual) = last.unwrap_or(("size", String::new(), String::new()));
        Err(FetchError::Integrity {
            at: self.ctx.at(file),
            check,
            expected,
            actual,
        })
    }

    /// Compares the blob behind `path` with the HEAD metadata of this download.
    async fn verify(
        &self,
        file: &str,
        path: &Path,
        seen: &ProbeState,
    ) -> Result<Check, FetchError> {
        // The snapshot entry links to `blobs/<etag>`; the blob's name is the ETag.
        let (blob, etag) = match std::fs::read_link(path) {
            Ok(target) => {
                let blob = path.parent().map(|p| p.join(&target)).unwrap_or(target);
                let etag = blob
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string);
                (blob, etag)
            }
            Err(_) => (path.to_path_buf(), None),
        };
        let size = std::fs::metadata(&blob)
            .map_err(|e| self.ctx.cache(file, &blob, &e))?
            .len();
        if let Some(expected) = seen.head_size {
            if size != expected {
                return Ok(Check::Mismatch {
                    check: "size",
                    expected: expected.to_string(),
                    actual: size.to_string(),
                });
            }
        }
        let sha256 = etag
            .filter(|e| is_sha256_hex(e))
            .map(|e| e.to_ascii_lowercase());
        if let (Some(expected), true) = (&sha256, seen.body_started) {
            let hashed = blob.clone();
            let actual = tokio::task::spawn_blocking(move || sha256_file(&hashed))
                .await
                .map_err(|e| self.ctx.cache(file, &blob, &std::io::Error::other(e)))?
                .map_err(|e| self.ctx.cache(file, &blob, &e))?;
            if &actual != expected {
                return Ok(Check::Mismatch {
                    check: "sha256",
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(Check::Ok(FetchedFile {
            name: file.to_string(),
            size,
            sha256,
        }))
    }

    /// Removes a bad download: the blob and the snapshot entry pointing at it.
    fn discard(&self, file: &str, path: &Path) -> Result<(), FetchError> {
        if let Ok(target) = std::fs::read_link(path) {
            let blob = path.parent().map(|p| p.join(&target)).unwrap_or(target);
            remove_if_present(&blob).map_err(|e| self.ctx.cache(file, &blob, &e))?;
        }
        remove_if_present(path).map_err(|e| self.ctx.cache(file, path, &e))
    }

    /// The shard index if the checkpoint is sharded, `None` if it is a single file.
    pub(crate) async fn fetch_index(
        &mut self,
        rev: &str,
    ) -> Result<Option<(PathBuf, FetchedFile)>, FetchError> {
        // hf-hub records a 404 that named a commit; at a commit the absence is final, so a
        // cached single-file checkpoint needs no request for the index.
        if is_commit_hex(rev)
            && self
                .folder
                .join(".no_exist")
                .join(rev)
                .join(INDEX_FILE)
                .exists()
        {
            return Ok(None);
        }
        match self.fetch_file(INDEX_FILE, rev).await {
            Ok(found) => Ok(Some(found)),
            Err(FetchError::FileNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Shard file names from the index's `weight_map`, sorted and deduplicated.
    pub(crate) async fn shards_of(&self, index_path: &Path) -> Result<Vec<String>, FetchError> {
        #[derive(Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text = tokio::fs::read_to_string(index_path)
            .await
            .map_err(|e| self.ctx.cache(INDEX_FILE, index_path, &e))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| {
            self.ctx
                .invalid(INDEX_FILE, format!("not a safetensors index: {e}"))
        })?;
        let shards: BTreeSet<String> = index.weight_map.into_values().collect();
        if shards.is_empty() {
            return Err(self
                .ctx
                .invalid(INDEX_FILE, "the weight_map is empty".to_string()));
        }
        for shard in &shards {
            // Shard names become cache paths; none may climb out of the snapshot.
            let safe = shard
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']));
            if !safe {
                return Err(self.ctx.invalid(
                    INDEX_FILE,
                    format!("the weight_map names an unsafe shard path {shard:?}"),
                ));
            }
        }
        Ok(shards.into_iter().collect())
    }

    /// Turns a 404 on `config.json` into the most precise error: no repository, no revision,
    /// or no config file (hf-hub reports all three as a missing entry).
    async fn explain_missing(&mut self) -> FetchError {
        self.requests += 1;
        let revision_exists = self
            .handle
            .revision_exists()
            .revision(&self.ctx.revision)
            .send()
            .await;
        let missing = match revision_exists {
            Ok(true) => Missing::File,
            Ok(false) => {
                self.requests += 1;
                match self.handle.exists().send().await {
                    Ok(false) => Missing::Repo,
                    Ok(true) => Missing::Revision,
                    Err(e) => return self.ctx.classify(CONFIG_FILE, e),
                }
            }
            Err(e) => return self.ctx.classify(CONFIG_FILE, e),
        };
        self.ctx.missing(missing, CONFIG_FILE)
    }
}

enum Missing {
    Repo,
    Revision,
    File,
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What hf-hub's progress events revealed about one `download_file` call.
#[derive(Debug, Clone, Copy)]
struct ProbeState {
    last_activity: Instant,
    /// File size from the HEAD response (`Start` is emitted right after it).
    head_size: Option<u64>,
    /// A body download began: the file was not in the cache.
    body_started: bool,
    /// Body bytes received.
    bytes: u64,
}

/// Progress handler that records sizes and activity, for verification and the stall watch.
struct Probe {
    state: Mutex<ProbeState>,
}

impl Probe {
    fn new() -> Self {
        Probe {
            state: Mutex::new(ProbeState {
                last_activity: Instant::now(),
                head_size: None,
                body_started: false,
                bytes: 0,
            }),
        }
    }

    fn state(&self) -> ProbeState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ProgressHandler for Probe {
    fn on_progress(&self, event: &ProgressEvent) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last_activity = Instant::now();
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => s.head_size = Some(*total_bytes),
            DownloadEvent::Progress { files } => {
                for f in files {
                    // A cache hit reports only `Complete`; a download starts with `Started`.
                    if f.status == FileStatus::Started || f.status == FileStatus::InProgress {
                        s.body_started = true;
                    }
                    if f.status == FileStatus::InProgress {
                        s.bytes = s.bytes.max(f.bytes_completed);
                    }
                }
            }
            // Xet transfers report aggregate bytes only.
            DownloadEvent::AggregateProgress {
                bytes_completed, ..
            } => {
                s.body_started = true;
                s.bytes = s.bytes.max(*bytes_completed);
            }
            DownloadEvent::Complete => {}
        }
    }
}

/// Runs `fut` until it completes, or returns `None` once `stall` passes without progress.
/// hf-hub's HEAD client has no timeout, so this is the only guard against a silent server.
async fn watch<F: Future>(fut: F, probe: &Probe, stall: Duration) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = probe.state().last_activity + stall;
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(deadline.into()) => {
                if probe.state().last_activity + stall <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(
            parse_repo_id("EleutherAI/pythia-160m"),
            Ok(("EleutherAI", "pythia-160m"))
        );
        for bad in ["pythia", "a/b/c", "/b", "a/", "../b", "a/..", "a b/c"] {
            assert!(parse_repo_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for (u, want) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.1.2.3", true),
            ("http://localhost:1", true),
            ("http://[::1]:9", true),
            ("https://huggingface.co", false),
            ("http://10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(&reqwest::Url::parse(u).unwrap()), want, "{u}");
        }
    }

    #[test]
    fn settings_debug_hides_the_token() {
        let s = HubSettings {
            token: Some("hf_secret".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hf_secret"));
    }
}
