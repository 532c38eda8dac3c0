//! Fetching one checkpoint from the Hugging Face Hub into the standard HF cache.
//!
//! [`Fetcher::fetch_checkpoint`] downloads `config.json`, then the weights in the format the
//! revision's listing offers first ([`choose_weight_files`]: `model.safetensors`, its index and
//! shards, `pytorch_model.bin`, its index and shards), through `hf-hub` 1.0: the index and
//! every shard it names, or the single file. Only the chosen format's files are downloaded.
//! The result is the snapshot directory of the HF cache
//! (`<cache>/models--<org>--<name>/snapshots/<commit>`), which the analysis reads directly.
//!
//! The listing is one paths-info call for the four names the choice looks at, at the pinned
//! commit. Names it lacks are recorded as absent at that commit (`.no_exist` markers, as
//! `hf-hub` records a 404), so a checkpoint already in the cache is chosen again without a
//! request.
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
//! Every fetch starts as a [`Session`] ([`Fetcher::begin`]), which ranged fetches
//! ([`crate::ranges`]) continue through its methods: the shape, the shard index, the files'
//! sizes, a [`Remote`] for ranged reads, or the rest of the checkpoint whole.
//!
//! Proxies: `hf-hub` builds its HEAD client itself, with proxies from `HTTP(S)_PROXY` /
//! `ALL_PROXY`. For a loopback endpoint the fetcher's own GET client never uses a proxy, and
//! [`Fetcher::new`] refuses to start if the environment would send the HEAD requests to a
//! proxy; set `NO_PROXY=127.0.0.1,localhost` (before any thread starts) in that case.

mod download;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hf_hub::repository::download::HFByteStream;
use hf_hub::repository::RepoTreeEntry;
use hf_hub::{HFClient, HFError, HFRepository, RepoTypeModel};
use neuromfa_common::checkpoint::{
    choose_weight_files, parse_shard_index, weight_file_names, WeightFiles, CONFIG_FILE,
};
use neuromfa_common::ModelShape;

use crate::client::{
    check_no_proxy_for, http_client, hub_base_url, is_loopback, parse_repo_id, resolve_url,
    HubSettings,
};
use crate::error::{error_chain, FetchError, Names};
use crate::hashing::is_commit_hex;
use download::Downloader;

/// Downloads of one file before a size or hash mismatch is final.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a download may go without any progress before it is abandoned.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// Bytes received in file bodies by this call (0 when everything was cached).
    pub bytes_downloaded: u64,
    /// HTTP requests this call made, as seen from here: HEADs, file GETs and API calls,
    /// not counting `hf-hub`'s internal retries.
    pub requests: u32,
    /// Wall time of the call.
    pub elapsed: Duration,
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

/// What requests cost, as seen from here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(crate) requests: u32,
    /// Bytes received in bodies.
    pub(crate) bytes: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.requests += other.requests;
        self.bytes += other.bytes;
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
        self.begin(repo, revision).await?.download_whole().await
    }

    /// The start every fetch shares: checks the request, takes the repository's lock,
    /// fetches `config.json` (verified, into the cache) and pins the revision to its commit.
    pub(crate) async fn begin(&self, repo: &str, revision: &str) -> Result<Session, FetchError> {
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

        let mut downloads = Downloader {
            names,
            handle: self.client.model(owner, name),
            folder: self.cache_dir().join(format!("models--{owner}--{name}")),
            stall_timeout: self.stall_timeout,
            spent: Cost::default(),
        };

        let (config_path, config) = match downloads.fetch_file(CONFIG_FILE, revision).await {
            Err(FetchError::FileNotFound { .. }) => return Err(downloads.explain_missing().await),
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
            .unwrap_or_else(|| downloads.folder.join("snapshots").join(&commit));
        Ok(Session {
            remote: Remote {
                names: downloads.names.clone(),
                handle: downloads.handle.clone(),
                http: self.http.clone(),
                token: self.token.clone(),
                base_url: self.base_url.clone(),
                pinned,
            },
            downloads,
            started,
            commit,
            dir,
            config_path,
            config,
            cache_lock: Some(cache_lock),
            weights: None,
            listed: Vec::new(),
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

/// A fetch of one checkpoint under way ([`Fetcher::begin`]): `config.json` verified in the
/// cache, the revision pinned to a commit, the repository's cache lock held until
/// [`Session::release_cache`]. Everything it requests is counted ([`Session::spent`]).
pub(crate) struct Session {
    downloads: Downloader,
    remote: Remote,
    started: Instant,
    /// The commit the revision resolved to (the snapshot directory's name).
    commit: String,
    /// The snapshot directory.
    dir: PathBuf,
    config_path: PathBuf,
    config: FetchedFile,
    /// Held while this fetch may write to the repository's cache folder.
    cache_lock: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The weight files chosen, once [`Session::weight_files`] has chosen.
    weights: Option<WeightFiles>,
    /// What the listing found of the names it asked for: sizes and storage, so that a
    /// single file needs no second call.
    listed: Vec<RemoteFile>,
}

/// A sharded checkpoint's index, in the cache.
pub(crate) struct ShardIndex {
    file: FetchedFile,
    /// Tensor name → shard file name.
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// The shard holding `tensor`.
    pub(crate) fn shard_of(&self, tensor: &str) -> Option<&str> {
        self.weight_map.get(tensor).map(String::as_str)
    }

    /// Shard file names, sorted and deduplicated.
    fn shards(&self) -> Vec<String> {
        let shards: BTreeSet<&String> = self.weight_map.values().collect();
        shards.into_iter().cloned().collect()
    }
}

impl Session {
    pub(crate) fn names(&self) -> &Names {
        &self.downloads.names
    }

    /// The commit the revision resolved to.
    pub(crate) fn commit(&self) -> &str {
        &self.commit
    }

    /// What the session's requests cost so far.
    pub(crate) fn spent(&self) -> Cost {
        self.downloads.spent
    }

    /// Counts requests made through [`Session::remote`].
    pub(crate) fn add_spent(&mut self, cost: Cost) {
        self.downloads.spent += cost;
    }

    /// The model's shape, from `config.json`.
    pub(crate) async fn model_shape(&self) -> Result<ModelShape, FetchError> {
        let text = tokio::fs::read_to_string(&self.config_path)
            .await
            .map_err(|e| self.names().cache(CONFIG_FILE, &self.config_path, &e))?;
        ModelShape::from_config_json(&text).map_err(|m| self.names().invalid(CONFIG_FILE, m))
    }

    /// Which weight files to read: the choice [`choose_weight_files`] makes from the
    /// revision's listing, made once per session. Answered from the cache when the chosen
    /// entry file is there and every name preferred to it is known absent at this commit;
    /// otherwise one paths-info call lists the candidates.
    pub(crate) async fn weight_files(&mut self) -> Result<WeightFiles, FetchError> {
        if let Some(files) = self.weights {
            return Ok(files);
        }
        let files = match self.weights_from_cache() {
            Some(files) => files,
            None => self.list_weight_files().await?,
        };
        self.weights = Some(files);
        Ok(files)
    }

    /// The choice the cache answers without a request, if it does.
    fn weights_from_cache(&self) -> Option<WeightFiles> {
        let pinned = &self.remote.pinned;
        if !is_commit_hex(pinned) {
            return None;
        }
        let absent = self.downloads.folder.join(".no_exist").join(pinned);
        for files in WeightFiles::ALL {
            let name = files.entry_file();
            if self.dir.join(name).is_file() {
                return Some(files);
            }
            if !absent.join(name).exists() {
                return None;
            }
        }
        None
    }

    /// Lists the candidates at the pinned revision and chooses; records the absent ones.
    async fn list_weight_files(&mut self) -> Result<WeightFiles, FetchError> {
        let candidates = WeightFiles::candidates().map(str::to_string).to_vec();
        self.listed = self.paths_info(candidates.clone()).await?;
        let names: Vec<&str> = self.listed.iter().map(|f| f.name.as_str()).collect();
        let files = choose_weight_files(&names).ok_or_else(|| FetchError::FileNotFound {
            at: self.names().at(&weight_file_names()),
        })?;
        if is_commit_hex(&self.remote.pinned) {
            let absent = self
                .downloads
                .folder
                .join(".no_exist")
                .join(&self.remote.pinned);
            for name in candidates.iter().filter(|c| !names.contains(&c.as_str())) {
                // Only saves a request next time: a marker that cannot be written is no error.
                let _ = std::fs::create_dir_all(&absent)
                    .and_then(|()| std::fs::write(absent.join(name), b""));
            }
        }
        tracing::debug!(
            repo = self.names().repo(),
            revision = self.names().revision(),
            format = %files.format,
            sharded = files.sharded,
            "weight files chosen"
        );
        Ok(files)
    }

    /// The shard index (into the cache) if the chosen weights are sharded, `None` if they
    /// are a single file. Shard names are checked: none may climb out of the snapshot.
    pub(crate) async fn shard_index(&mut self) -> Result<Option<ShardIndex>, FetchError> {
        let files = self.weight_files().await?;
        if !files.sharded {
            return Ok(None);
        }
        let pinned = self.remote.pinned.clone();
        let index_name = files.entry_file();
        let (path, file) = self.downloads.fetch_file(index_name, &pinned).await?;
        let names = self.names();
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| names.cache(index_name, &path, &e))?;
        let weight_map =
            parse_shard_index(&text).map_err(|detail| names.invalid(index_name, detail))?;
        Ok(Some(ShardIndex { file, weight_map }))
    }

    /// Lets other fetches of the repository go on: this one writes nothing more to the
    /// cache.
    pub(crate) fn release_cache(&mut self) {
        self.cache_lock = None;
    }

    /// Whether `file` of this commit is in the cache already.
    pub(crate) fn is_cached(&self, file: &str) -> bool {
        self.dir.join(file).is_file()
    }

    /// Size and storage of each of `files` at the pinned revision: from the listing when it
    /// has them all, else from one paths-info call. A file that is not there is an error.
    pub(crate) async fn remote_files(
        &mut self,
        files: Vec<String>,
    ) -> Result<Vec<RemoteFile>, FetchError> {
        let listed = |name: &String| self.listed.iter().find(|f| &f.name == name).cloned();
        let found: Vec<RemoteFile> = match files.iter().map(listed).collect::<Option<Vec<_>>>() {
            Some(all) => all,
            None => self.paths_info(files.clone()).await?,
        };
        files
            .into_iter()
            .map(|name| {
                found
                    .iter()
                    .find(|f| f.name == name)
                    .cloned()
                    .ok_or_else(|| FetchError::FileNotFound {
                        at: self.names().at(&name),
                    })
            })
            .collect()
    }

    /// Those of `files` that exist at the pinned revision, with size and storage, from one
    /// paths-info call. (`hf-hub`'s metadata HEAD follows redirects and then insists on
    /// `X-Repo-Commit`, which a CDN's final answer lacks.)
    async fn paths_info(&mut self, files: Vec<String>) -> Result<Vec<RemoteFile>, FetchError> {
        let first = files.first().cloned().unwrap_or_default();
        self.downloads.spent.requests += 1;
        let entries = self
            .downloads
            .handle
            .get_paths_info()
            .paths(files)
            .revision(&self.remote.pinned)
            .send()
            .await
            .map_err(|e| self.names().classify(&first, e))?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| match entry {
                RepoTreeEntry::File {
                    path,
                    size,
                    xet_hash,
                    ..
                } => Some(RemoteFile {
                    url: self.remote.url(&path),
                    name: path,
                    size,
                    xet: xet_hash.is_some(),
                }),
                RepoTreeEntry::Directory { .. } => None,
            })
            .collect())
    }

    /// The repository at the pinned revision, for ranged reads.
    pub(crate) fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// The rest of the checkpoint, whole, into the cache: the chosen format's index and
    /// every shard it names, or its single file.
    pub(crate) async fn download_whole(mut self) -> Result<FetchedCheckpoint, FetchError> {
        let pinned = self.remote.pinned.clone();
        let weights = self.weight_files().await?;
        let mut files = vec![self.config.clone()];
        match self.shard_index().await? {
            Some(index) => {
                let shards = index.shards();
                files.push(index.file);
                for shard in shards {
                    let (_, f) = self.downloads.fetch_file(&shard, &pinned).await?;
                    files.push(f);
                }
            }
            None => {
                let single = weights.format.single_file();
                let (_, f) = self.downloads.fetch_file(single, &pinned).await?;
                files.push(f);
            }
        }
        let spent = self.spent();
        let fetched = FetchedCheckpoint {
            dir: self.dir,
            commit: self.commit,
            weights,
            files,
            bytes_downloaded: spent.bytes,
            requests: spent.requests,
            elapsed: self.started.elapsed(),
        };
        tracing::info!(
            repo = self.downloads.names.repo(),
            revision = self.downloads.names.revision(),
            commit = %fetched.commit,
            files = fetched.files.len(),
            bytes_downloaded = fetched.bytes_downloaded,
            requests = fetched.requests,
            elapsed_ms = fetched.elapsed.as_millis() as u64,
            "checkpoint fetched"
        );
        Ok(fetched)
    }
}

/// One weight file at the pinned revision, as the Hub describes it.
#[derive(Debug, Clone)]
pub(crate) struct RemoteFile {
    pub(crate) name: String,
    /// Its resolve URL at the pinned revision, built once for all its ranged reads.
    pub(crate) url: reqwest::Url,
    pub(crate) size: u64,
    /// Stored in Xet: ranges are read through `hf-hub`'s Xet reconstruction, not plain GETs.
    pub(crate) xet: bool,
}

/// The repository at the pinned revision, for reads sent outside `hf-hub`'s downloader.
/// Owned and cheap to clone, so that a fetch's reads can run on a thread of their own.
#[derive(Clone)]
pub(crate) struct Remote {
    names: Names,
    handle: HFRepository<RepoTypeModel>,
    /// The HTTP client and token `hf-hub` is given.
    http: reqwest::Client,
    token: Option<String>,
    base_url: reqwest::Url,
    /// What files are requested at: the commit, or the revision if the Hub gave none.
    pinned: String,
}

impl Remote {
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// `file`'s resolve URL at the pinned revision.
    fn url(&self, file: &str) -> reqwest::Url {
        resolve_url(&self.base_url, self.names.repo(), &self.pinned, file)
    }

    /// A GET of `url` carrying the token `hf-hub` sends.
    pub(crate) fn get(&self, url: &reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.http.get(url.clone());
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `range` of `file` through `hf-hub`, which reconstructs files stored in Xet: the
    /// length the answer announces, and its body.
    pub(crate) async fn xet_range(
        &self,
        file: &str,
        range: Range<u64>,
    ) -> Result<(Option<u64>, HFByteStream), HFError> {
        self.handle
            .download_file_stream()
            .filename(file)
            .revision(&self.pinned)
            .range(range)
            .send()
            .await
    }

    /// The same repository with HTTP connections of its own, for a runtime of its own
    /// (connections belong to the runtime that opened them).
    pub(crate) fn with_own_connections(mut self) -> Result<Self, String> {
        self.http = http_client(&self.base_url)?;
        Ok(self)
    }
}
