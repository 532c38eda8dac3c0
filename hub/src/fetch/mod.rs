//! Fetching one checkpoint into the standard HF cache, and the start every fetch shares.
//!
//! A fetch reads one way: the start ([`Fetcher::begin`]: `config.json`, the revision
//! pinned to its commit), the listing ([`crate::listing`]: which weight files, the shard
//! index, each file resolved once), then either the whole files ([`Session::download_whole`],
//! here) or the layout, plan and ranges ([`crate::ranges`]). Every request goes through
//! the one [`Transport`](crate::transport): paced by the budget, retried, and sent to the
//! CDN a resolve points at.
//!
//! Whole files land in the HF cache layout ([`crate::hfcache`]), each checked against the
//! size and sha256 its resolve answer announced while it is written; a bad download is
//! deleted and downloaded again, up to [`MAX_ATTEMPTS`] times. Files found in the cache
//! were verified when they were downloaded: only their size is compared. After
//! `config.json` every file is requested at the commit the revision resolved to, so a
//! checkpoint is never assembled from two commits of a moving branch; a lease that carries
//! the coordinator's resolution ([`RevisionWeights`]) starts at that commit.
//!
//! `hf-hub` still decides where the cache is (`HF_HUB_CACHE`, `HF_HOME`, …), and its
//! layout is the one written here, so HF tools and this crate share downloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use neuromfa_common::checkpoint::{RevisionWeights, WeightFiles, CONFIG_FILE};
use neuromfa_common::ModelShape;

use crate::budget::{Budget, LocalBudget};
use crate::client::{hub_base_url, parse_repo_id, HubSettings};
use crate::error::{error_chain, FetchError, Names};
use crate::hashing::{is_commit_hex, is_sha256_hex, sha256_bytes};
use crate::hfcache::RepoCache;
use crate::transport::{Cost, RemoteFile, Scope, Transport};

/// Downloads of one file before a size or hash mismatch is final.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a download may go without any progress before it is abandoned.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest `config.json` or shard index accepted.
const MAX_SMALL_FILE: u64 = 64 << 20;

/// A checkpoint in the HF cache, ready to be opened by the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedCheckpoint {
    /// The snapshot directory: `config.json` and the weights (a single file, or an index and
    /// its shards).
    pub dir: PathBuf,
    /// The commit the revision resolved to.
    pub commit: String,
    /// Which weight files the revision offered first, and were downloaded.
    pub weights: WeightFiles,
    /// Every file of the checkpoint, in download order.
    pub files: Vec<FetchedFile>,
    /// Bytes received in bodies by this call, what deciding on the way cost included (0 when
    /// everything was cached).
    pub bytes_downloaded: u64,
    /// HTTP requests this call sent, retries included: resolves, GETs, API calls.
    pub requests: u32,
    /// Of those, what the Hub counts against its rate limits.
    pub hub_requests: HubRequests,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// Requests the Hub counts in each of its rate-limit buckets (those to the CDN it
/// redirects to are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubRequests {
    /// Requests with `/resolve/` in their path.
    pub resolvers: u32,
    /// Requests to `/api/`.
    pub api: u32,
}

impl FetchedCheckpoint {
    /// Total size of the weight files: every file but `config.json` and the shard index.
    pub fn weight_bytes(&self) -> u64 {
        let index = self.weights.format.index_file();
        self.files
            .iter()
            .filter(|f| f.name != CONFIG_FILE && f.name != index)
            .map(|f| f.size)
            .sum()
    }
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

/// Downloads checkpoints through one transport. Cheap to share behind an `Arc`; fetches of
/// the same repository are serialised, others run concurrently.
pub struct Fetcher {
    transport: Arc<Transport>,
    endpoint: String,
    cache_dir: PathBuf,
    token: Option<String>,
    budget: Arc<dyn Budget>,
    stall_timeout: Duration,
    /// One lock per repository: concurrent fetches of one repo would race on its blobs.
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the client, paced by a budget of its own at a free account's quotas (see
    /// [`Fetcher::with_budget`]). Fails on an unparsable endpoint.
    pub fn new(settings: HubSettings) -> Result<Self, FetchError> {
        let setup = |detail: String| FetchError::Setup { detail };
        let endpoint = settings.resolved_endpoint();
        let base_url = hub_base_url(&endpoint).map_err(setup)?;
        let token = settings.resolved_token();
        let cache_dir = match settings.cache_dir {
            Some(dir) => dir,
            // Where every HF tool looks: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub.
            None => hf_hub::HFClient::builder()
                .build()
                .map_err(|e| setup(format!("cannot find the HF cache: {}", error_chain(&e))))?
                .cache_dir()
                .to_path_buf(),
        };
        let budget: Arc<dyn Budget> = Arc::new(LocalBudget::default());
        let transport = Transport::new(
            base_url,
            token.clone(),
            budget.clone(),
            DEFAULT_STALL_TIMEOUT,
        )
        .map_err(setup)?;
        Ok(Fetcher {
            transport: Arc::new(transport),
            endpoint,
            cache_dir,
            token,
            budget,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            repo_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Paces the requests that count against the Hub's buckets through `budget` (a
    /// worker's: the coordinator's grants).
    pub fn with_budget(mut self, budget: Arc<dyn Budget>) -> Result<Self, FetchError> {
        self.budget = budget;
        self.rebuild()
    }

    /// Abandons a request (as a transient error) after `timeout` without progress.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Result<Self, FetchError> {
        self.stall_timeout = timeout;
        self.rebuild()
    }

    fn rebuild(mut self) -> Result<Self, FetchError> {
        let transport = Transport::new(
            self.transport.base_url().clone(),
            self.token.clone(),
            self.budget.clone(),
            self.stall_timeout,
        )
        .map_err(|detail| FetchError::Setup { detail })?;
        self.transport = Arc::new(transport);
        Ok(self)
    }

    /// The Hub base URL in use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The HF cache directory in use.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Downloads (or finds in the cache) the checkpoint `repo` (`org/name`) at `revision`
    /// (a branch such as `step1000`, or a commit id) and verifies it.
    pub async fn fetch_checkpoint(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<FetchedCheckpoint, FetchError> {
        self.begin(repo, revision, None)
            .await?
            .download_whole()
            .await
    }

    /// The start every fetch shares: checks the request, takes the repository's lock,
    /// fetches `config.json` (verified, into the cache) and pins the revision to its commit:
    /// `known`'s, when the coordinator resolved the revision already.
    pub(crate) async fn begin(
        &self,
        repo: &str,
        revision: &str,
        known: Option<&RevisionWeights>,
    ) -> Result<Session, FetchError> {
        let started = Instant::now();
        let names = Names::new(repo, revision, self.endpoint());
        let (owner, name) =
            parse_repo_id(repo).map_err(|detail| names.invalid_request(CONFIG_FILE, detail))?;
        if revision.is_empty() || revision.contains(['\0', '\n']) {
            return Err(names.invalid_request(
                CONFIG_FILE,
                "the revision is empty or not printable".to_string(),
            ));
        }
        let cache_lock = self.repo_lock(repo).lock_owned().await;
        let known = known.filter(|k| is_commit_hex(&k.commit)).cloned();
        let mut session = Session {
            scope: Scope::new(names),
            transport: self.transport.clone(),
            cache: RepoCache::new(&self.cache_dir, owner, name),
            started,
            commit: String::new(),
            config: None,
            _cache_lock: cache_lock,
            known,
            weights: None,
            resolved: HashMap::new(),
        };
        session.fetch_config().await?;
        Ok(session)
    }

    fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .repo_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(repo.to_string()).or_default().clone()
    }
}

/// A fetch of one checkpoint under way ([`Fetcher::begin`]): `config.json` verified in the
/// cache, the revision pinned to a commit, the repository's cache lock held throughout (a
/// ranged fetch may end in a whole download). Everything it requests is counted in its
/// scope.
pub(crate) struct Session {
    pub(crate) scope: Scope,
    pub(crate) transport: Arc<Transport>,
    pub(crate) cache: RepoCache,
    started: Instant,
    /// The commit the revision resolved to (the snapshot directory's name): what every
    /// file after `config.json` is requested at.
    commit: String,
    config: Option<(PathBuf, FetchedFile)>,
    /// Held while this fetch may write to the repository's cache folder.
    _cache_lock: tokio::sync::OwnedMutexGuard<()>,
    /// What the coordinator resolved of the revision, if it did.
    pub(crate) known: Option<RevisionWeights>,
    /// The weight files chosen, once chosen.
    pub(crate) weights: Option<WeightFiles>,
    /// Every file resolved so far, by name: resolved once per fetch.
    pub(crate) resolved: HashMap<String, Arc<RemoteFile>>,
}

impl Session {
    pub(crate) fn names(&self) -> &Names {
        &self.scope.names
    }

    /// The commit the revision resolved to.
    pub(crate) fn commit(&self) -> &str {
        &self.commit
    }

    /// What the session's requests cost so far.
    pub(crate) fn spent(&self) -> Cost {
        self.scope.meter.cost()
    }

    /// Wall time since the fetch began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The snapshot directory.
    pub(crate) fn dir(&self) -> PathBuf {
        self.cache.snapshot(&self.commit)
    }

    /// `config.json` at the commit the coordinator resolved (from the cache when there), or
    /// at the revision as asked: one GET, whose answer names the commit.
    async fn fetch_config(&mut self) -> Result<(), FetchError> {
        let at = match &self.known {
            Some(known) => known.commit.clone(),
            None => self.names().revision().to_string(),
        };
        if is_commit_hex(&at) {
            self.commit = at.clone();
            if let Some(cached) = self.cached_file(CONFIG_FILE) {
                self.config = Some((self.dir().join(CONFIG_FILE), cached));
                return Ok(());
            }
        }
        let (commit, fetched) = match self.fetch_small(CONFIG_FILE, &at).await {
            // The commit is gone from the Hub (its history squashed, or the branch
            // rewritten): the revision as it is now is what there is to read.
            Err(FetchError::RevisionNotFound { .. }) if self.known.is_some() => {
                let revision = self.names().revision().to_string();
                tracing::warn!(commit = %at, %revision, "the commit the revision resolved to is no longer on the Hub; reading the revision as it is now");
                self.known = None;
                self.commit.clear();
                self.fetch_small(CONFIG_FILE, &revision).await?
            }
            other => other?,
        };
        self.commit = commit;
        self.config = Some((self.dir().join(CONFIG_FILE), fetched));
        Ok(())
    }

    /// A small file (`config.json`, a shard index) at `at`, verified, into the cache: the
    /// commit its answer named, and the file.
    pub(crate) async fn fetch_small(
        &mut self,
        file: &str,
        at: &str,
    ) -> Result<(String, FetchedFile), FetchError> {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let small = self
                .transport
                .get_small(&self.scope, at, file, MAX_SMALL_FILE)
                .await?;
            let commit = match (small.commit, is_commit_hex(at)) {
                (Some(commit), _) => commit,
                (None, true) => at.to_string(),
                (None, false) => {
                    return Err(FetchError::Hub {
                        at: self.names().at(file),
                        status: None,
                        detail: "the answer names no commit (X-Repo-Commit)".to_string(),
                    })
                }
            };
            if !is_commit_hex(&commit) {
                return Err(FetchError::Hub {
                    at: self.names().at(file),
                    status: None,
                    detail: format!("the answer names {commit:?} as the commit"),
                });
            }
            let actual = sha256_bytes(&small.bytes);
            let etag = small.etag.unwrap_or_else(|| actual.clone());
            if is_sha256_hex(&etag) && !etag.eq_ignore_ascii_case(&actual) {
                tracing::warn!(file, expected = %etag, %actual, "a small file does not match its ETag; reading it again");
                last = Some((etag, actual));
                continue;
            }
            if commit != self.commit && !self.commit.is_empty() {
                return Err(FetchError::Hub {
                    at: self.names().at(file),
                    status: None,
                    detail: format!("read at commit {commit}, not at {}", self.commit),
                });
            }
            self.commit = commit.clone();
            let fetched = self.store_small(file, &small.bytes, &etag)?;
            return Ok((commit, fetched));
        }
        let (expected, actual) = last.unwrap_or_default();
        Err(FetchError::Integrity {
            at: self.names().at(file),
            check: "sha256",
            expected,
            actual,
        })
    }

    /// Writes a small file's bytes as blob `etag`, links it into the snapshot and records
    /// the branch.
    fn store_small(&self, file: &str, bytes: &[u8], etag: &str) -> Result<FetchedFile, FetchError> {
        let blob = self.cache.blob(etag);
        let cache_error = |path: &Path, e: std::io::Error| self.names().cache(file, path, &e);
        let incomplete = self.cache.incomplete(etag);
        if let Some(parent) = blob.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cache_error(parent, e))?;
        }
        std::fs::write(&incomplete, bytes).map_err(|e| cache_error(&incomplete, e))?;
        std::fs::rename(&incomplete, &blob).map_err(|e| cache_error(&blob, e))?;
        self.link(file, etag)?;
        Ok(FetchedFile {
            name: file.to_string(),
            size: bytes.len() as u64,
            sha256: is_sha256_hex(etag).then(|| etag.to_ascii_lowercase()),
        })
    }

    /// Links `file` of the snapshot to blob `etag`, and records the branch's commit.
    fn link(&self, file: &str, etag: &str) -> Result<PathBuf, FetchError> {
        let revision = self.names().revision();
        let snapshot = self.dir();
        self.cache
            .write_ref(revision, &self.commit)
            .and_then(|()| self.cache.link(&self.commit, file, etag))
            .map_err(|e| self.names().cache(file, &snapshot, &e))
    }

    /// `file` of this commit as the cache has it, if it does: size from the blob, sha256
    /// from its name when it is one.
    pub(crate) fn cached_file(&self, file: &str) -> Option<FetchedFile> {
        let path = self.dir().join(file);
        let size = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
        let sha256 = std::fs::read_link(&path)
            .ok()
            .and_then(|target| target.file_name()?.to_str().map(str::to_string))
            .filter(|name| is_sha256_hex(name))
            .map(|name| name.to_ascii_lowercase());
        Some(FetchedFile {
            name: file.to_string(),
            size,
            sha256,
        })
    }

    /// Whether `file` of this commit is in the cache already.
    pub(crate) fn is_cached(&self, file: &str) -> bool {
        self.dir().join(file).is_file()
    }

    /// The model's shape, from `config.json`.
    pub(crate) async fn model_shape(&self) -> Result<ModelShape, FetchError> {
        let path = self.dir().join(CONFIG_FILE);
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| self.names().cache(CONFIG_FILE, &path, &e))?;
        ModelShape::from_config_json(&text).map_err(|m| self.names().invalid(CONFIG_FILE, m))
    }

    /// The rest of the checkpoint, whole, into the cache: the chosen format's index and
    /// every shard it names, or its single file. Files already resolved by this session
    /// (a ranged attempt that fell back) are not resolved again.
    pub(crate) async fn download_whole(mut self) -> Result<FetchedCheckpoint, FetchError> {
        let weights = self.weight_files().await?;
        let config = self.config.clone().map(|(_, file)| file);
        let mut files: Vec<FetchedFile> = config.into_iter().collect();
        let names = match self.shard_index().await? {
            Some(index) => {
                files.push(index.file.clone());
                index.shards()
            }
            None => vec![weights.format.single_file().to_string()],
        };
        for name in names {
            let file = self.download_file(&name).await?;
            files.push(file);
        }
        let spent = self.spent();
        let fetched = FetchedCheckpoint {
            dir: self.dir(),
            commit: self.commit.clone(),
            weights,
            files,
            bytes_downloaded: spent.bytes,
            requests: spent.requests,
            hub_requests: spent.hub,
            elapsed: self.elapsed(),
        };
        tracing::info!(
            repo = self.names().repo(),
            revision = self.names().revision(),
            commit = %fetched.commit,
            files = fetched.files.len(),
            bytes_downloaded = fetched.bytes_downloaded,
            requests = fetched.requests,
            elapsed_ms = fetched.elapsed.as_millis() as u64,
            "checkpoint fetched"
        );
        Ok(fetched)
    }

    /// One weight file into the cache: linked from a blob already there (known by the
    /// coordinator's hash or this session's resolve), else downloaded from its location and
    /// verified, up to [`MAX_ATTEMPTS`] times.
    async fn download_file(&mut self, name: &str) -> Result<FetchedFile, FetchError> {
        if let Some(cached) = self.cached_file(name) {
            return Ok(cached);
        }
        if let Some(known) = self.known_blob(name) {
            return Ok(known);
        }
        let remote = self.remote_file(name).await?;
        let blob = self.cache.blob(&remote.etag);
        let _blob_lock = self
            .cache
            .lock(&remote.etag)
            .await
            .map_err(|e| self.names().cache(name, &blob, &e))?;
        let complete = std::fs::metadata(&blob).is_ok_and(|m| m.len() == remote.size);
        if !complete {
            self.download_blob(&remote).await?;
        }
        self.link(name, &remote.etag)?;
        Ok(FetchedFile {
            name: name.to_string(),
            size: remote.size,
            sha256: remote.sha256().map(str::to_string),
        })
    }

    /// A file the coordinator resolved whose blob the cache holds whole: linked, no request.
    fn known_blob(&self, name: &str) -> Option<FetchedFile> {
        let known = self.known.as_ref()?.files.iter().find(|f| f.name == name)?;
        let blob = self.cache.blob(&known.sha256);
        if std::fs::metadata(&blob).ok()?.len() != known.size {
            return None;
        }
        self.link(name, &known.sha256).ok()?;
        Some(FetchedFile {
            name: name.to_string(),
            size: known.size,
            sha256: Some(known.sha256.clone()),
        })
    }

    /// Downloads `remote` into its blob, checked against its size and sha256.
    async fn download_blob(&self, remote: &RemoteFile) -> Result<(), FetchError> {
        let name = remote.name.as_str();
        let incomplete = self.cache.incomplete(&remote.etag);
        let blob = self.cache.blob(&remote.etag);
        if let Some(parent) = blob.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.names().cache(name, parent, &e))?;
        }
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let got = self
                .transport
                .download(&self.scope, remote, &incomplete)
                .await?;
            let mismatch = if got.len != remote.size {
                Some(("size", remote.size.to_string(), got.len.to_string()))
            } else {
                remote
                    .sha256()
                    .filter(|expected| !expected.eq_ignore_ascii_case(&got.sha256))
                    .map(|expected| ("sha256", expected.to_ascii_lowercase(), got.sha256.clone()))
            };
            let Some((check, expected, actual)) = mismatch else {
                return std::fs::rename(&incomplete, &blob)
                    .map_err(|e| self.names().cache(name, &blob, &e));
            };
            tracing::warn!(
                repo = %self.names().repo(),
                revision = %self.names().revision(),
                file = name,
                attempt,
                check,
                %expected,
                %actual,
                "downloaded file does not match the Hub's metadata; discarding it"
            );
            match std::fs::remove_file(&incomplete) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.names().cache(name, &incomplete, &e))
                }
                _ => {}
            }
            last = Some((check, expected, actual));
        }
        let (check, expected, actual) = last.unwrap_or(("size", String::new(), String::new()));
        Err(FetchError::Integrity {
            at: self.names().at(name),
            check,
            expected,
            actual,
        })
    }
}
