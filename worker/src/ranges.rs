//! Fetching only the bytes an analysis reads, with HTTP byte ranges.
//!
//! A sample (one seed) reads a few thousand scattered elements of each weight matrix, so the
//! seeds queued for a checkpoint touch a few percent of its files. [`fetch_for_seeds`] reads
//! each safetensors file's header with ranged downloads, works out the absolute byte range of
//! every element the seeds' samples read ([`neuromfa_common::network::gathers`]), merges ranges
//! closer than a gap into requests, and downloads those concurrently through `hf-hub`'s ranged
//! download at the commit the revision resolved to. The result, a [`RangedCheckpoint`], is a
//! [`WeightReader`] that gives exactly the values the memory-mapped full checkpoint would.
//!
//! `hf-hub` accepts any 2xx answer to a ranged request and does not expose the status or
//! `Content-Range`, so every answer's length is checked here: a server that ignores `Range`
//! (announcing the whole file, or sending more than was asked) gives
//! [`FetchError::RangesUnsupported`], on which [`FetchMode::Auto`] falls back to the full
//! download; a short answer is retried and then an integrity error. Ranged bytes cannot be
//! checked against the file's sha256 (the ETag covers the whole file); the header's own
//! consistency with the file size is checked instead.
//!
//! A ranged read is one GET through the HTTP client and token `hf-hub` uses; files stored in
//! Xet are read through `hf-hub`'s ranged download, which reconstructs them (two requests).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hf_hub::repository::{HFRepository, RepoTreeEntry, RepoTypeModel};
pub use neuromfa_common::checkpoint::FetchMode;
use neuromfa_common::checkpoint::{ElementType, CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use neuromfa_common::network::{gathers, WeightReader};
use neuromfa_common::sampler::{check_layer_sample, draw_snin};
use neuromfa_common::{BlockTensor, Checkpoint, Error, ModelShape};
use rayon::prelude::*;
use safetensors::tensor::Metadata;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::fetch::{
    error_chain, http_client, resolve_url, Begun, Ctx, FetchError, FetchedCheckpoint, Fetcher, Run,
    MAX_ATTEMPTS,
};

/// Ranges closer than this many bytes are fetched as one request. A sample reads a few dozen
/// scattered elements of each drawn row, so at 4 KiB a drawn row is one request and rows
/// farther apart than that are not joined. pythia-1b, 10 seeds (`scripts/bench-fetch.sh`):
/// 29.5 k requests for 9.3 % of the file; 1 KiB: 34.5 k for 9.0 %; 256 B: 241 k for 4.8 %;
/// 64 KiB: 7 k for 36 %. A gap is worth joining when its bytes take less time than a request
/// costs: 4 KiB is 41 µs at 100 MB/s, about what a request costs the client in CPU. On the
/// loopback benchmark 1 KiB is slightly faster, but a distant Hub makes requests dearer.
pub const DEFAULT_MERGE_GAP: u64 = 4096;
/// Ranged reads in flight at once. They hide the Hub's latency (Little's law: 64 in flight at
/// 20 ms each are 3,200 requests a second, 16 only 800); over HTTP/2, which the Hub speaks
/// over https, they share one connection. The loopback Hub at 100 MB/s with 20 ms added to
/// every request: ten pythia-1b seeds in 10.9 s at 64, 43.0 s at 16 (one seed: 1.4 s, 5.2 s).
/// Without added latency 16 and 64 take the same time.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// [`FetchMode::Auto`] fetches ranges when they are estimated to take less than this share
/// of a full download's time.
pub const DEFAULT_AUTO_MAX_SHARE: f64 = 0.25;
/// The link speed [`FetchMode::Auto`] assumes when it weighs bytes against requests: a
/// cluster's typical share of a path to the Hub.
pub const DEFAULT_ASSUMED_BYTES_PER_SEC: f64 = 100e6;
/// The first read of a file: its header length and, usually, the whole header.
const HEADER_PROBE: u64 = 64 * 1024;
/// The largest header accepted (the safetensors crate's own limit).
const MAX_HEADER_LEN: u64 = 100_000_000;
/// Separate byte runs a plan may hold (16 bytes each while planning). A sample that dense
/// reads most of the files anyway: `Auto` fetches them whole, `Ranges` refuses.
const MAX_RUNS: usize = 16 << 20;
/// First retry delay of a ranged read; doubled on each further attempt.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(250);

/// Settings of [`fetch_for_seeds_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RangeOptions {
    pub mode: FetchMode,
    /// Ranges separated by at most this many bytes are merged into one request.
    pub merge_gap: u64,
    /// Ranged requests in flight at once (at least 1).
    pub concurrency: usize,
    /// `Auto` picks ranges when they are estimated to take less than this share of a full
    /// download's time.
    pub auto_max_share: f64,
    /// The bandwidth `Auto`'s estimate assumes.
    pub assumed_bytes_per_sec: f64,
}

/// What `Auto` expects each way of fetching to take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchEstimate {
    pub ranges: Duration,
    pub full: Duration,
}

impl FetchEstimate {
    pub fn favours_ranges(&self, max_share: f64) -> bool {
        self.ranges.as_secs_f64() < max_share * self.full.as_secs_f64()
    }
}

impl RangeOptions {
    /// Ranges cost their bytes plus, per request, one small request's time (measured on
    /// the header reads) spread over the requests in flight; a full download costs its
    /// bytes. On a loopback or LAN mirror requests are nearly free; across the internet a
    /// plan of many thousand requests can take longer than the whole file.
    pub fn estimate(&self, plan: &PlanSummary, request_time: Duration) -> FetchEstimate {
        let rate = self.assumed_bytes_per_sec.max(1.0);
        let per_request = request_time.as_secs_f64() / self.concurrency.max(1) as f64;
        FetchEstimate {
            ranges: Duration::from_secs_f64(
                plan.planned_bytes as f64 / rate + plan.requests as f64 * per_request,
            ),
            full: Duration::from_secs_f64(plan.file_bytes as f64 / rate),
        }
    }
}

impl Default for RangeOptions {
    fn default() -> Self {
        RangeOptions {
            mode: FetchMode::Auto,
            merge_gap: DEFAULT_MERGE_GAP,
            concurrency: DEFAULT_CONCURRENCY,
            auto_max_share: DEFAULT_AUTO_MAX_SHARE,
            assumed_bytes_per_sec: DEFAULT_ASSUMED_BYTES_PER_SEC,
        }
    }
}

/// What a set of seeds reads from a checkpoint, and what fetching it by ranges costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    /// Seeds planned for.
    pub seeds: usize,
    /// Element reads the samples make (an element read by two seeds counts twice).
    pub elements: u64,
    /// Distinct bytes those elements occupy.
    pub needed_bytes: u64,
    /// Bytes the merged requests cover: what a ranged fetch downloads.
    pub planned_bytes: u64,
    /// Ranged requests after merging.
    pub requests: usize,
    /// Total size of the checkpoint's weight files.
    pub file_bytes: u64,
    /// The merge gap used.
    pub merge_gap: u64,
}

impl PlanSummary {
    /// Planned bytes as a share of the weight files.
    pub fn share(&self) -> f64 {
        self.planned_bytes as f64 / self.file_bytes.max(1) as f64
    }
}

/// What getting a checkpoint's weights cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchMetrics {
    /// How the weights were fetched: `Full` or `Ranges` (never `Auto`).
    pub mode: FetchMode,
    /// Bytes received in bodies (0 when everything was cached).
    pub bytes_downloaded: u64,
    /// Requests made, as seen from here: HEADs, GETs (ranged or not), API calls; not counting
    /// `hf-hub`'s internal retries.
    pub requests: u32,
    /// Wall time of the fetch.
    pub elapsed: Duration,
    /// Total size of the weight files (safetensors), the denominator of [`Self::share`].
    pub file_bytes: u64,
}

impl FetchMetrics {
    /// Bytes downloaded as a share of the weight files.
    pub fn share(&self) -> f64 {
        self.bytes_downloaded as f64 / self.file_bytes.max(1) as f64
    }
}

/// A checkpoint's weights as fetched by [`fetch_for_seeds`].
#[derive(Debug)]
pub enum FetchedWeights {
    /// Every file is in the HF cache, at `dir`: open it with [`Checkpoint::open`] (or
    /// [`FetchedWeights::open`]).
    Full(FetchedCheckpoint),
    /// Only the ranges the planned seeds read, in memory.
    Ranged(RangedCheckpoint),
}

impl FetchedWeights {
    /// The commit the revision resolved to.
    pub fn commit(&self) -> &str {
        match self {
            FetchedWeights::Full(c) => &c.commit,
            FetchedWeights::Ranged(r) => &r.commit,
        }
    }

    pub fn metrics(&self) -> FetchMetrics {
        match self {
            FetchedWeights::Full(c) => FetchMetrics {
                mode: FetchMode::Full,
                bytes_downloaded: c.bytes_downloaded,
                requests: c.requests,
                elapsed: c.elapsed,
                file_bytes: c
                    .files
                    .iter()
                    .filter(|f| f.name != CONFIG_FILE && f.name != INDEX_FILE)
                    .map(|f| f.size)
                    .sum(),
            },
            FetchedWeights::Ranged(r) => r.metrics,
        }
    }

    /// A reader over the weights. For `Full` this maps the files ([`Checkpoint::open`]:
    /// blocking file I/O, so call it off the async threads).
    pub fn open(self) -> Result<OpenWeights, Error> {
        match self {
            FetchedWeights::Full(c) => Checkpoint::open(&c.dir).map(OpenWeights::Mapped),
            FetchedWeights::Ranged(r) => Ok(OpenWeights::Ranged(r)),
        }
    }
}

/// Either kind of fetched weights, ready for the analysis.
pub enum OpenWeights {
    Mapped(Checkpoint),
    Ranged(RangedCheckpoint),
}

impl WeightReader for OpenWeights {
    fn shape(&self) -> &ModelShape {
        match self {
            OpenWeights::Mapped(c) => c.shape(),
            OpenWeights::Ranged(r) => r.shape(),
        }
    }

    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        match self {
            OpenWeights::Mapped(c) => c.gather(block, tensor, rows, cols),
            OpenWeights::Ranged(r) => WeightReader::gather(r, block, tensor, rows, cols),
        }
    }
}

/// Fetches what `seeds` read from `repo` at `revision` in `mode` (see [`FetchMode`]), merging
/// ranges closer than `merge_gap` bytes. `layer_sample` is the analysis's; a seed not in
/// `seeds` cannot be analysed from a ranged result.
pub async fn fetch_for_seeds(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    layer_sample: usize,
    seeds: &[u32],
    mode: FetchMode,
    merge_gap: u64,
) -> Result<FetchedWeights, FetchError> {
    let options = RangeOptions {
        mode,
        merge_gap,
        ..RangeOptions::default()
    };
    fetch_for_seeds_with(fetcher, repo, revision, layer_sample, seeds, &options).await
}

/// [`fetch_for_seeds`] with every setting.
pub async fn fetch_for_seeds_with(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    layer_sample: usize,
    seeds: &[u32],
    options: &RangeOptions,
) -> Result<FetchedWeights, FetchError> {
    let started = Instant::now();
    if options.mode == FetchMode::Full {
        return fetcher
            .fetch_checkpoint(repo, revision)
            .await
            .map(FetchedWeights::Full);
    }
    let auto = options.mode == FetchMode::Auto;
    let mut spent = Cost::default();
    let attempt = try_ranges(
        fetcher,
        repo,
        revision,
        layer_sample,
        seeds,
        options,
        &mut spent,
    )
    .await;
    let why = match attempt {
        Ok(Attempt::Ranged(mut ranged)) => {
            ranged.metrics.elapsed = started.elapsed();
            let m = ranged.metrics;
            tracing::info!(
                repo,
                revision,
                commit = %ranged.commit,
                bytes_downloaded = m.bytes_downloaded,
                file_bytes = m.file_bytes,
                requests = m.requests,
                elapsed_ms = m.elapsed.as_millis() as u64,
                "ranges fetched"
            );
            return Ok(FetchedWeights::Ranged(*ranged));
        }
        Ok(Attempt::Full(why)) => why.to_string(),
        Err(e @ FetchError::RangesUnsupported { .. }) if auto => e.to_string(),
        Err(e) => return Err(e),
    };
    tracing::info!(repo, revision, reason = %why, "fetching the whole checkpoint");
    let mut full = fetcher.fetch_checkpoint(repo, revision).await?;
    // What deciding cost is part of the fetch.
    full.requests += spent.requests;
    full.bytes_downloaded += spent.bytes;
    full.elapsed = started.elapsed();
    Ok(FetchedWeights::Full(full))
}

/// Reads the headers and plans, without downloading any weights: what a ranged fetch of
/// `seeds` would cost. (Costs the same few requests as the start of a ranged fetch.)
pub async fn plan_for_seeds(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    layer_sample: usize,
    seeds: &[u32],
    merge_gap: u64,
) -> Result<PlanSummary, FetchError> {
    let Begun {
        mut run,
        pinned,
        config_path,
        dir,
        guard,
        ..
    } = fetcher.begin(repo, revision).await?;
    let layout = prepare(
        &mut run,
        &pinned,
        &config_path,
        &dir,
        guard,
        layer_sample,
        seeds,
        false,
    )
    .await?
    .ok_or_else(|| run.ctx.invalid(SINGLE_FILE, "no layout".to_string()))?;
    match plan_off_thread(&run, layout.clone(), layer_sample, seeds, merge_gap).await? {
        Some(plan) => Ok(plan.summary),
        None => Err(too_fragmented(&run, seeds)),
    }
}

/// The outcome of trying ranges.
enum Attempt {
    Ranged(Box<RangedCheckpoint>),
    /// `Auto` decided on the whole checkpoint, for this reason.
    Full(&'static str),
}

/// Everything of a ranged fetch that may end in "fetch it whole instead". Adds what it spent
/// to `spent` whatever the outcome, so a fallback can report the total.
async fn try_ranges(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    layer_sample: usize,
    seeds: &[u32],
    options: &RangeOptions,
    spent: &mut Cost,
) -> Result<Attempt, FetchError> {
    let auto = options.mode == FetchMode::Auto;
    let Begun {
        mut run,
        commit,
        pinned,
        dir,
        config_path,
        guard,
        ..
    } = fetcher.begin(repo, revision).await?;
    let result = async {
        let prepared = prepare(
            &mut run,
            &pinned,
            &config_path,
            &dir,
            guard,
            layer_sample,
            seeds,
            auto,
        )
        .await?;
        let Some(layout) = prepared else {
            return Ok(Err("the weight files are already in the cache"));
        };
        let Some(plan) =
            plan_off_thread(&run, layout.clone(), layer_sample, seeds, options.merge_gap).await?
        else {
            if auto {
                return Ok(Err("the samples are too fragmented to fetch by ranges"));
            }
            return Err(too_fragmented(&run, seeds));
        };
        let summary = plan.summary;
        tracing::info!(
            repo,
            revision,
            seeds = summary.seeds,
            elements = summary.elements,
            needed_bytes = summary.needed_bytes,
            planned_bytes = summary.planned_bytes,
            requests = summary.requests,
            file_bytes = summary.file_bytes,
            share = summary.share(),
            "ranged fetch planned"
        );
        if auto {
            let estimate = options.estimate(&summary, layout.request_time);
            tracing::info!(
                ranges_s = estimate.ranges.as_secs_f64(),
                full_s = estimate.full.as_secs_f64(),
                request_ms = layout.request_time.as_secs_f64() * 1e3,
                "ranged fetch estimated"
            );
            if !estimate.favours_ranges(options.auto_max_share) {
                return Ok(Err("ranges would cost too much of a full download's time"));
            }
        }
        let mut cost = Cost::default();
        let fetched = fetch_plan_apart(
            &run,
            &pinned,
            &layout,
            plan,
            options.concurrency.max(1),
            &mut cost,
        )
        .await;
        run.requests += cost.requests;
        run.bytes += cost.bytes;
        Ok(Ok((layout, summary, fetched?)))
    }
    .await;
    spent.requests += run.requests;
    spent.bytes += run.bytes;
    match result? {
        Err(why) => Ok(Attempt::Full(why)),
        Ok((layout, summary, files)) => Ok(Attempt::Ranged(Box::new(RangedCheckpoint {
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit,
            shape: layout.shape,
            sites: layout.sites,
            files,
            seeds: seeds.to_vec(),
            layer_sample,
            plan: summary,
            metrics: FetchMetrics {
                mode: FetchMode::Ranges,
                bytes_downloaded: run.bytes,
                requests: run.requests,
                // Set by the caller, who started the clock.
                elapsed: Duration::ZERO,
                file_bytes: summary.file_bytes,
            },
        }))),
    }
}

fn too_fragmented(run: &Run, seeds: &[u32]) -> FetchError {
    FetchError::InvalidRequest {
        at: run.ctx.at(SINGLE_FILE),
        detail: format!(
            "the samples of {} seeds read more than {MAX_RUNS} separate byte runs; \
             fetch this checkpoint in full",
            seeds.len()
        ),
    }
}

/// Plans on a blocking thread: ten seeds of a large model are a million runs to sort.
async fn plan_off_thread(
    run: &Run,
    layout: Layout,
    layer_sample: usize,
    seeds: &[u32],
    merge_gap: u64,
) -> Result<Option<Plan>, FetchError> {
    let seeds = seeds.to_vec();
    tokio::task::spawn_blocking(move || {
        make_plan(&layout, layer_sample, &seeds, merge_gap, MAX_RUNS)
    })
    .await
    .map_err(|e| {
        run.ctx
            .invalid(SINGLE_FILE, format!("planning failed: {e}"))
    })?
    .map_err(|e| FetchError::InvalidRequest {
        at: run.ctx.at(CONFIG_FILE),
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The checkpoint's layout, from its headers.

/// One safetensors file as its header describes it.
#[derive(Debug, Clone)]
struct RemoteFile {
    name: String,
    /// Its resolve URL at the pinned revision, built once for all its ranged reads.
    url: reqwest::Url,
    size: u64,
    /// Stored in Xet: ranges are read through `hf-hub`'s Xet reconstruction, not plain GETs.
    xet: bool,
}

/// Where one needed weight matrix lives.
#[derive(Debug, Clone)]
struct Site {
    name: String,
    file: usize,
    /// Absolute byte offset of element `[0, 0]` in the file.
    start: u64,
    element: ElementType,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Clone)]
struct Layout {
    shape: ModelShape,
    files: Vec<RemoteFile>,
    sites: HashMap<(usize, BlockTensor), Site>,
    /// The quickest header read: what one small ranged request costs on this link.
    request_time: Duration,
}

/// Reads `config.json` (already in the cache) and the shard index (into the cache, as full
/// fetches do), then every needed file's size and header, and checks every needed tensor.
/// Releases the repository lock (`guard`) once nothing more is written to the cache.
/// `None` when `stop_if_cached` and the weight files are already in the cache.
#[allow(clippy::too_many_arguments)]
async fn prepare(
    run: &mut Run,
    pinned: &str,
    config_path: &std::path::Path,
    dir: &std::path::Path,
    guard: tokio::sync::OwnedMutexGuard<()>,
    layer_sample: usize,
    seeds: &[u32],
    stop_if_cached: bool,
) -> Result<Option<Layout>, FetchError> {
    let text = tokio::fs::read_to_string(config_path)
        .await
        .map_err(|e| cache_error(&run.ctx, CONFIG_FILE, config_path, &e))?;
    let shape = ModelShape::from_config_json(&text).map_err(|m| run.ctx.invalid(CONFIG_FILE, m))?;
    check_layer_sample(&shape, layer_sample).map_err(|e| FetchError::InvalidRequest {
        at: run.ctx.at(CONFIG_FILE),
        detail: e.to_string(),
    })?;
    if seeds.is_empty() {
        return Err(FetchError::InvalidRequest {
            at: run.ctx.at(SINGLE_FILE),
            detail: "no seeds to fetch ranges for".to_string(),
        });
    }

    // Which file holds each needed tensor.
    let index = run.fetch_index(pinned).await?;
    let file_of: HashMap<String, String> = match &index {
        Some((index_path, _)) => {
            // Checks the shard names (they must not climb out of the snapshot).
            run.shards_of(index_path).await?;
            #[derive(Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let text = tokio::fs::read_to_string(index_path)
                .await
                .map_err(|e| cache_error(&run.ctx, INDEX_FILE, index_path, &e))?;
            serde_json::from_str::<Index>(&text)
                .map_err(|e| {
                    run.ctx
                        .invalid(INDEX_FILE, format!("not a safetensors index: {e}"))
                })?
                .weight_map
        }
        None => HashMap::new(),
    };
    let mut files: Vec<RemoteFile> = Vec::new();
    let mut needed: Vec<(usize, BlockTensor, String, usize)> = Vec::new();
    for block in 0..shape.num_blocks {
        for tensor in BlockTensor::ALL {
            let name = tensor.name(block);
            let file_name = match &index {
                None => SINGLE_FILE.to_string(),
                Some(_) => file_of.get(&name).cloned().ok_or_else(|| {
                    run.ctx
                        .invalid(INDEX_FILE, format!("the weight_map has no tensor `{name}`"))
                })?,
            };
            let file = match files.iter().position(|f| f.name == file_name) {
                Some(i) => i,
                None => {
                    files.push(RemoteFile {
                        url: resolve_url(&run.base_url, &run.ctx.repo, pinned, &file_name),
                        name: file_name,
                        size: 0,
                        xet: false,
                    });
                    files.len() - 1
                }
            };
            needed.push((block, tensor, name, file));
        }
    }
    // Nothing below writes to the cache: other fetches of this repository may go on.
    drop(guard);
    if stop_if_cached && files.iter().all(|f| dir.join(&f.name).is_file()) {
        return Ok(None);
    }

    file_sizes(run, pinned, &mut files).await?;
    let mut headers = Vec::with_capacity(files.len());
    let mut request_time = Duration::MAX;
    for file in &files {
        let started = Instant::now();
        headers.push(read_header(run, pinned, file).await?);
        request_time = request_time.min(started.elapsed());
    }
    let mut sites = HashMap::new();
    for (block, tensor, name, file) in needed {
        let (data_start, metadata) = &headers[file];
        let at_file = &files[file].name;
        let info = metadata.info(&name).ok_or_else(|| {
            run.ctx
                .invalid(at_file, format!("the header has no tensor `{name}`"))
        })?;
        let element = ElementType::from_dtype(info.dtype).ok_or_else(|| {
            run.ctx.invalid(
                at_file,
                format!(
                    "tensor `{name}` has dtype {:?}; supported are F32, F16 and BF16",
                    info.dtype
                ),
            )
        })?;
        let expected = tensor.expected_shape(&shape);
        if info.shape != expected {
            return Err(run.ctx.invalid(
                at_file,
                format!(
                    "tensor `{name}` has shape {:?}, expected {expected:?}",
                    info.shape
                ),
            ));
        }
        sites.insert(
            (block, tensor),
            Site {
                name,
                file,
                start: data_start + info.data_offsets.0 as u64,
                element,
                rows: expected[0],
                cols: expected[1],
            },
        );
    }
    Ok(Some(Layout {
        shape,
        files,
        sites,
        request_time,
    }))
}

fn cache_error(ctx: &Ctx, file: &str, path: &std::path::Path, e: &io::Error) -> FetchError {
    FetchError::Cache {
        at: ctx.at(file),
        detail: format!("{}: {e}", path.display()),
    }
}

/// Sizes of the weight files, from one paths-info call. (`hf-hub`'s metadata HEAD follows
/// redirects and then insists on `X-Repo-Commit`, which a CDN's final answer lacks.)
async fn file_sizes(
    run: &mut Run,
    pinned: &str,
    files: &mut [RemoteFile],
) -> Result<(), FetchError> {
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    let first = names
        .first()
        .cloned()
        .unwrap_or_else(|| SINGLE_FILE.to_string());
    run.requests += 1;
    let entries = run
        .handle
        .get_paths_info()
        .paths(names)
        .revision(pinned)
        .send()
        .await
        .map_err(|e| run.ctx.classify(&first, e))?;
    for file in files.iter_mut() {
        let found = entries.iter().find_map(|e| match e {
            RepoTreeEntry::File {
                path,
                size,
                xet_hash,
                ..
            } if *path == file.name => Some((*size, xet_hash.is_some())),
            _ => None,
        });
        (file.size, file.xet) = found.ok_or_else(|| FetchError::FileNotFound {
            at: run.ctx.at(&file.name),
        })?;
    }
    Ok(())
}

/// Reads and validates one file's header: returns where its data starts and the metadata.
async fn read_header(
    run: &mut Run,
    pinned: &str,
    file: &RemoteFile,
) -> Result<(u64, Metadata), FetchError> {
    let mut cost = Cost::default();
    let result = read_header_with(run, pinned, file, &mut cost).await;
    run.requests += cost.requests;
    run.bytes += cost.bytes;
    result
}

async fn read_header_with(
    run: &Run,
    pinned: &str,
    file: &RemoteFile,
    cost: &mut Cost,
) -> Result<(u64, Metadata), FetchError> {
    let name = file.name.as_str();
    let invalid = |detail: String| run.ctx.invalid(name, detail);
    if file.size < 8 {
        return Err(invalid(format!(
            "the file is {} bytes, too short for a safetensors header",
            file.size
        )));
    }
    let remote = Remote::new(run, pinned);
    let probe_end = file.size.min(HEADER_PROBE);
    let first = read_to_vec(&remote, file, 0..probe_end, cost).await?;
    let n = u64::from_le_bytes([
        first[0], first[1], first[2], first[3], first[4], first[5], first[6], first[7],
    ]);
    if n > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "not a valid safetensors file: header length {n} exceeds {MAX_HEADER_LEN} bytes"
        )));
    }
    let data_start = 8 + n;
    if data_start > file.size {
        return Err(invalid(format!(
            "not a valid safetensors file: header length {n} runs past the end of the {}-byte file",
            file.size
        )));
    }
    let header = if data_start <= probe_end {
        first[8..data_start as usize].to_vec()
    } else {
        let rest = read_to_vec(&remote, file, probe_end..data_start, cost).await?;
        let mut header = first[8..].to_vec();
        header.extend_from_slice(&rest);
        header
    };
    // Validates dtypes, shapes against offsets, and that the offsets are contiguous.
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("not a valid safetensors header: {e}")))?;
    let expected = data_start + metadata.data_len() as u64;
    if expected != file.size {
        return Err(invalid(format!(
            "not a valid safetensors file: the header describes {} bytes of tensor data after \
             {data_start} bytes of header, but the file is {} bytes",
            metadata.data_len(),
            file.size
        )));
    }
    Ok((data_start, metadata))
}

// ---------------------------------------------------------------------------------------------
// Planning.

/// A contiguous run of needed bytes, and where its copy lives in the file's arena.
#[derive(Debug, Clone, Copy)]
struct ByteRun {
    start: u64,
    end: u64,
    at: usize,
}

/// One ranged request: bytes `[start, end)` of a file, covering `runs` of its run list.
#[derive(Debug, Clone)]
struct Request {
    file: usize,
    start: u64,
    end: u64,
    runs: std::ops::Range<usize>,
}

struct Plan {
    /// Per file, sorted and disjoint.
    runs: Vec<Vec<ByteRun>>,
    /// Per file, the arena size (needed bytes).
    arena_len: Vec<usize>,
    requests: Vec<Request>,
    summary: PlanSummary,
}

/// Every byte range `seeds` read, merged into requests. `None` when the samples are too
/// fragmented to plan (more than `max_runs` runs).
fn make_plan(
    layout: &Layout,
    layer_sample: usize,
    seeds: &[u32],
    merge_gap: u64,
    max_runs: usize,
) -> Result<Option<Plan>, Error> {
    let shape = &layout.shape;
    // Per read: its columns as consecutive stretches (the same in every row it reads).
    let mut col_runs: Vec<Vec<(u64, u64)>> = Vec::new();
    // Per needed row: (file, byte offset of the row, element size, index into `col_runs`).
    let mut rows: Vec<(usize, u64, u64, usize)> = Vec::new();
    let mut count = 0usize;
    let mut elements = 0u64;
    // Drawing is most of the planning's own work; seeds draw independently.
    let reads = seeds
        .par_iter()
        .map(|&seed| {
            Ok(gathers(
                &draw_snin(seed, shape, layer_sample)?,
                shape.hidden_size,
            ))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    for read in reads.into_iter().flatten() {
        let site = layout
            .sites
            .get(&(read.block, read.tensor))
            .ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "no tensor {} in the layout",
                    read.tensor.name(read.block)
                ))
            })?;
        let size = site.element.size() as u64;
        let mut cols = read.cols.clone();
        cols.sort_unstable();
        cols.dedup();
        let mut stretches: Vec<(u64, u64)> = Vec::new();
        for &c in &cols {
            let c = c as u64;
            match stretches.last_mut() {
                Some(last) if last.1 == c => last.1 = c + 1,
                _ => stretches.push((c, c + 1)),
            }
        }
        count = count.saturating_add(read.rows.len().saturating_mul(stretches.len()));
        if count > max_runs {
            return Ok(None);
        }
        elements += (read.rows.len() * read.cols.len()) as u64;
        let at = col_runs.len();
        col_runs.push(stretches);
        rows.extend(read.rows.iter().map(|&row| {
            let offset = site.start + (row as u64) * (site.cols as u64) * size;
            (site.file, offset, size, at)
        }));
    }

    // Rows never overlap one another, so rows in file order give pieces in file order: only
    // the rows are sorted (tens of thousands), not the pieces (a million for ten seeds).
    rows.sort_unstable();
    let files = layout.files.len();
    let mut runs: Vec<Vec<ByteRun>> = vec![Vec::new(); files];
    // Per file, the needed bytes so far: where the next run goes in the file's arena.
    let mut arena_len = vec![0usize; files];
    let mut shared_row: Vec<(u64, u64)> = Vec::new();
    for group in rows.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (file, offset, size, _) = group[0];
        let bytes = |&(c0, c1): &(u64, u64)| (offset + c0 * size, offset + c1 * size);
        let (file_runs, at) = (&mut runs[file], &mut arena_len[file]);
        if let [(.., only)] = group {
            col_runs[*only]
                .iter()
                .for_each(|piece| add_piece(file_runs, at, bytes(piece)));
        } else {
            // A row several reads need (seeds drawing the same neuron): their stretches
            // interleave.
            shared_row.clear();
            shared_row.extend(
                group
                    .iter()
                    .flat_map(|&(.., i)| col_runs[i].iter().map(bytes)),
            );
            shared_row.sort_unstable();
            shared_row
                .iter()
                .for_each(|&piece| add_piece(file_runs, at, piece));
        }
    }

    let mut requests = Vec::new();
    let needed_bytes = arena_len.iter().map(|&n| n as u64).sum();
    let mut planned_bytes = 0u64;
    for (file, file_runs) in runs.iter().enumerate() {
        // Runs closer than the gap share a request.
        let mut first = 0;
        for i in 0..file_runs.len() {
            let last_of_request =
                i + 1 == file_runs.len() || file_runs[i + 1].start - file_runs[i].end > merge_gap;
            if last_of_request {
                let (start, end) = (file_runs[first].start, file_runs[i].end);
                planned_bytes += end - start;
                requests.push(Request {
                    file,
                    start,
                    end,
                    runs: first..i + 1,
                });
                first = i + 1;
            }
        }
    }
    let summary = PlanSummary {
        seeds: seeds.len(),
        elements,
        needed_bytes,
        planned_bytes,
        requests: requests.len(),
        file_bytes: layout.files.iter().map(|f| f.size).sum(),
        merge_gap,
    };
    Ok(Some(Plan {
        runs,
        arena_len,
        requests,
        summary,
    }))
}

/// Appends the byte range `(start, end)`, which starts no earlier than the last run, to
/// `runs`: touching or overlapping ranges (an element two seeds read) extend the last run.
/// `at` is the arena position of the next new byte.
fn add_piece(runs: &mut Vec<ByteRun>, at: &mut usize, (start, end): (u64, u64)) {
    match runs.last_mut() {
        Some(last) if start <= last.end => {
            if end > last.end {
                *at += (end - last.end) as usize;
                last.end = end;
            }
        }
        _ => {
            runs.push(ByteRun {
                start,
                end,
                at: *at,
            });
            *at += (end - start) as usize;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ranged reads.

/// What ranged reads cost.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    requests: u32,
    bytes: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.requests += other.requests;
        self.bytes += other.bytes;
    }
}

/// A repository at a pinned revision, for ranged reads. Owned, so that a fetch's reads can
/// run on a thread of their own ([`fetch_plan_apart`]).
#[derive(Clone)]
struct Remote {
    ctx: Ctx,
    handle: HFRepository<RepoTypeModel>,
    http: reqwest::Client,
    token: Option<String>,
    pinned: String,
}

impl Remote {
    fn new(run: &Run, pinned: &str) -> Self {
        Remote {
            ctx: run.ctx.clone(),
            handle: run.handle.clone(),
            http: run.http.clone(),
            token: run.token.clone(),
            pinned: pinned.to_string(),
        }
    }
}

/// Why one attempt at a ranged read failed.
enum Failure {
    /// Worth another attempt (transport trouble, 5xx, a short answer).
    Retry(FetchError),
    Final(FetchError),
}

/// Reads `range` of `file` into a vector of exactly its length.
async fn read_to_vec(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
) -> Result<Vec<u8>, FetchError> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    read_range(remote, file, range, cost, |offset, chunk| {
        buf[offset..offset + chunk.len()].copy_from_slice(chunk);
    })
    .await?;
    Ok(buf)
}

/// Reads `range` of `file`, handing each chunk of the body to `sink` with its offset in the
/// range (never past the range's end). Retries transient failures with backoff; a retry
/// hands the bytes again from offset 0, so `sink` must only place bytes by offset.
async fn read_range(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
    mut sink: impl FnMut(usize, &[u8]),
) -> Result<(), FetchError> {
    let mut attempt = 1;
    loop {
        match read_range_once(remote, file, range.clone(), cost, &mut sink).await {
            Ok(()) => return Ok(()),
            Err(Failure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(
                    repo = %remote.ctx.repo,
                    revision = %remote.ctx.revision,
                    file = %file.name,
                    start = range.start,
                    end = range.end,
                    attempt,
                    error = %e,
                    "ranged read failed; retrying"
                );
                tokio::time::sleep(RETRY_BASE_DELAY * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            Err(Failure::Retry(e) | Failure::Final(e)) => return Err(e),
        }
    }
}

async fn read_range_once(
    remote: &Remote,
    file: &RemoteFile,
    range: std::ops::Range<u64>,
    cost: &mut Cost,
    sink: &mut impl FnMut(usize, &[u8]),
) -> Result<(), Failure> {
    let name = file.name.as_str();
    let ctx = &remote.ctx;
    let want = range.end - range.start;
    let unsupported = |what: String| {
        Failure::Final(FetchError::RangesUnsupported {
            at: ctx.at(name),
            detail: format!(
                "asked for bytes {}..{} ({want} bytes) of a {}-byte file, {what}",
                range.start, range.end, file.size
            ),
        })
    };
    let short = |got: u64| {
        Failure::Retry(FetchError::Integrity {
            at: ctx.at(name),
            check: "range length",
            expected: format!("{want} bytes ({}..{})", range.start, range.end),
            actual: format!("{got} bytes"),
        })
    };

    let got = if file.xet {
        // hf-hub reconstructs Xet ranges itself (after a paths-info call of its own).
        cost.requests += 2;
        let classify = |e| {
            let e = ctx.classify(name, e);
            if e.is_transient() {
                Failure::Retry(e)
            } else {
                Failure::Final(e)
            }
        };
        let (announced, body) = remote
            .handle
            .download_file_stream()
            .filename(name)
            .revision(&remote.pinned)
            .range(range.clone())
            .send()
            .await
            .map_err(classify)?;
        check_announced(announced, want, file.size, &unsupported, &short)?;
        consume(
            body.map(|chunk| chunk.map_err(classify)),
            want,
            cost,
            sink,
            &unsupported,
        )
        .await?
    } else {
        cost.requests += 1;
        let response = ranged_get(remote, file, &range).await?;
        let announced = response.content_length();
        check_announced(announced, want, file.size, &unsupported, &short)?;
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| Failure::Retry(ctx.transient(name, error_chain(&e)))));
        consume(body, want, cost, sink, &unsupported).await?
    };
    if got != want {
        return Err(short(got));
    }
    Ok(())
}

/// Refuses an answer whose announced length is not the range's before reading its body.
fn check_announced(
    announced: Option<u64>,
    want: u64,
    file_size: u64,
    unsupported: &impl Fn(String) -> Failure,
    short: &impl Fn(u64) -> Failure,
) -> Result<(), Failure> {
    match announced {
        None => Ok(()),
        Some(len) if len == want => Ok(()),
        // The whole file for part of it: the server ignored `Range`. Not read any further.
        Some(len) if len == file_size => Err(unsupported(format!(
            "and the answer is the whole file ({len} bytes)"
        ))),
        Some(len) if len > want => {
            Err(unsupported(format!("and the answer announces {len} bytes")))
        }
        Some(len) => Err(short(len)),
    }
}

/// Hands a body to `sink` chunk by chunk; returns how many bytes came, refusing more than
/// `want`.
async fn consume<B: AsRef<[u8]>>(
    body: impl futures_util::Stream<Item = Result<B, Failure>>,
    want: u64,
    cost: &mut Cost,
    sink: &mut impl FnMut(usize, &[u8]),
    unsupported: &impl Fn(String) -> Failure,
) -> Result<u64, Failure> {
    let mut body = std::pin::pin!(body);
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let chunk = chunk.as_ref();
        cost.bytes += chunk.len() as u64;
        let end = got + chunk.len() as u64;
        if end > want {
            return Err(unsupported(format!(
                "and the answer runs past {want} bytes"
            )));
        }
        sink(got as usize, chunk);
        got = end;
    }
    Ok(got)
}

/// One plain ranged GET of the file at the pinned revision, through the client `hf-hub`
/// uses, with its token. (`hf-hub`'s own ranged download asks the paths-info API before
/// every GET whether the file is in Xet; we know that from the one call per file.) Only a
/// `206` whose `Content-Range` is exactly the range asked for is accepted.
async fn ranged_get(
    remote: &Remote,
    file: &RemoteFile,
    range: &std::ops::Range<u64>,
) -> Result<reqwest::Response, Failure> {
    let ctx = &remote.ctx;
    let name = file.name.as_str();
    let mut request = remote.http.get(file.url.clone()).header(
        reqwest::header::RANGE,
        format!("bytes={}-{}", range.start, range.end - 1),
    );
    if let Some(token) = &remote.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure::Retry(ctx.transient(name, error_chain(&e))))?;
    let status = response.status();
    let detail = || format!("HTTP {status} for bytes {}..{}", range.start, range.end);
    match status.as_u16() {
        206 => {}
        200 => {
            return Err(Failure::Final(FetchError::RangesUnsupported {
                at: ctx.at(name),
                detail: format!(
                    "asked for bytes {}..{} and the answer is 200 OK (the whole file)",
                    range.start, range.end
                ),
            }))
        }
        404 => {
            return Err(Failure::Final(FetchError::FileNotFound {
                at: ctx.at(name),
            }))
        }
        code @ (401 | 403) => {
            return Err(Failure::Final(FetchError::AccessDenied {
                at: ctx.at(name),
                status: code,
                detail: detail(),
            }))
        }
        416 => {
            return Err(Failure::Final(ctx.invalid(
                name,
                format!(
                    "the Hub refused bytes {}..{} as out of range, though the file is {} bytes",
                    range.start, range.end, file.size
                ),
            )))
        }
        408 | 429 | 500..=599 => return Err(Failure::Retry(ctx.transient(name, detail()))),
        _ => {
            return Err(Failure::Final(FetchError::Hub {
                at: ctx.at(name),
                detail: detail(),
            }))
        }
    }
    let content_range = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = format!("bytes {}-{}/", range.start, range.end - 1);
    let total_ok = content_range
        .strip_prefix(&expected)
        .is_some_and(|total| total == "*" || total.parse::<u64>() == Ok(file.size));
    if !total_ok {
        return Err(Failure::Final(FetchError::RangesUnsupported {
            at: ctx.at(name),
            detail: format!(
                "asked for bytes {}..{} of a {}-byte file and the answer's Content-Range is {content_range:?}",
                range.start, range.end, file.size
            ),
        }));
    }
    Ok(response)
}

/// Runs [`fetch_plan`] on a thread of its own. Plain GETs run there on a single-threaded
/// runtime with connections of its own: a ranged fetch is tens of thousands of small
/// requests, and on the worker's multi-threaded runtime every answer wakes a task across
/// threads. Files in Xet are read through `hf-hub`'s Xet client, on the caller's runtime.
/// Dropping the returned future stops the reads.
async fn fetch_plan_apart(
    run: &Run,
    pinned: &str,
    layout: &Layout,
    plan: Plan,
    concurrency: usize,
    cost: &mut Cost,
) -> Result<Vec<HeldFile>, FetchError> {
    let apart = |detail: String| FetchError::Setup {
        detail: format!("ranged reads of {}: {detail}", run.ctx.repo),
    };
    let mut remote = Remote::new(run, pinned);
    let callers_runtime = layout
        .files
        .iter()
        .any(|f| f.xet)
        .then(tokio::runtime::Handle::current);
    if callers_runtime.is_none() {
        remote.http = http_client(&run.base_url).map_err(apart)?;
    }
    let files = layout.files.clone();
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ranged-reads".to_string())
        .spawn(move || {
            let reads = async {
                let mut cost = Cost::default();
                let fetched = {
                    let fetch = fetch_plan(&remote, &files, plan, concurrency, &mut cost);
                    tokio::select! {
                        fetched = fetch => Some(fetched),
                        () = stop.cancelled() => None,
                    }
                };
                fetched.map(|fetched| (fetched, cost))
            };
            let outcome = match callers_runtime {
                Some(handle) => handle.block_on(reads),
                None => match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(reads),
                    Err(e) => Some((
                        Err(FetchError::Setup {
                            detail: format!("cannot start a runtime for ranged reads: {e}"),
                        }),
                        Cost::default(),
                    )),
                },
            };
            // Nobody to tell when the fetch was abandoned.
            let _ = done.send(outcome);
        })
        .map_err(|e| apart(format!("cannot start a thread: {e}")))?;
    match outcome.await {
        Ok(Some((fetched, spent))) => {
            *cost += spent;
            fetched
        }
        // Only this future stops the reads, and it is still here: the thread died.
        Ok(None) | Err(_) => Err(apart("the reading thread stopped unexpectedly".to_string())),
    }
}

/// Downloads every request of `plan`, `concurrency` at a time, keeping only the needed runs.
async fn fetch_plan(
    remote: &Remote,
    files: &[RemoteFile],
    plan: Plan,
    concurrency: usize,
    cost: &mut Cost,
) -> Result<Vec<HeldFile>, FetchError> {
    let Plan {
        runs,
        arena_len,
        requests,
        ..
    } = plan;
    let mut arenas: Vec<Vec<u8>> = arena_len.iter().map(|&n| vec![0u8; n]).collect();
    {
        // The requests of a file cover its runs in order, so each request fills the next
        // stretch of the file's arena: hand every request its own stretch.
        let mut unfilled: Vec<&mut [u8]> = arenas.iter_mut().map(Vec::as_mut_slice).collect();
        let mut work = Vec::with_capacity(requests.len());
        for request in &requests {
            let file_runs = &runs[request.file][request.runs.clone()];
            let len = match (file_runs.first(), file_runs.last()) {
                (Some(first), Some(last)) => last.at + (last.end - last.start) as usize - first.at,
                _ => 0,
            };
            let (segment, rest) = std::mem::take(&mut unfilled[request.file]).split_at_mut(len);
            unfilled[request.file] = rest;
            work.push((request, file_runs, segment));
        }
        let mut fetches = futures_util::stream::iter(work)
            .map(|(request, file_runs, segment)| async move {
                let Some(first) = file_runs.first() else {
                    return (Ok(()), Cost::default());
                };
                let mut cost = Cost::default();
                let result = read_range(
                    remote,
                    &files[request.file],
                    request.start..request.end,
                    &mut cost,
                    |offset, chunk| {
                        let (lo, hi) = (
                            request.start + offset as u64,
                            request.start + (offset + chunk.len()) as u64,
                        );
                        let from = file_runs.partition_point(|r| r.end <= lo);
                        for r in &file_runs[from..] {
                            if r.start >= hi {
                                break;
                            }
                            let (s, e) = (r.start.max(lo), r.end.min(hi));
                            let dst = r.at - first.at + (s - r.start) as usize;
                            let src = (s - lo) as usize;
                            let len = (e - s) as usize;
                            segment[dst..dst + len].copy_from_slice(&chunk[src..src + len]);
                        }
                    },
                )
                .await;
                (result, cost)
            })
            .buffer_unordered(concurrency);
        while let Some((result, spent)) = fetches.next().await {
            *cost += spent;
            result?;
        }
    }
    let held = files
        .iter()
        .zip(runs)
        .zip(arenas)
        .map(|((file, runs), arena)| HeldFile {
            path: PathBuf::from(format!(
                "{}@{}/{}",
                remote.ctx.repo, remote.ctx.revision, file.name
            )),
            name: file.name.clone(),
            size: file.size,
            runs,
            arena,
        })
        .collect();
    Ok(held)
}

// ---------------------------------------------------------------------------------------------
// The result.

/// The needed bytes of one file.
struct HeldFile {
    /// `org/name@revision/file`, for error messages.
    path: PathBuf,
    name: String,
    size: u64,
    /// Sorted, disjoint.
    runs: Vec<ByteRun>,
    arena: Vec<u8>,
}

impl HeldFile {
    /// The `len` bytes at absolute offset `offset`, if they were fetched.
    fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let i = self
            .runs
            .partition_point(|r| r.start <= offset)
            .checked_sub(1)?;
        let run = self.runs[i];
        if offset + len as u64 > run.end {
            return None;
        }
        let at = run.at + (offset - run.start) as usize;
        self.arena.get(at..at + len)
    }
}

/// The elements some seeds read from a checkpoint, fetched by ranges. A [`WeightReader`]
/// for exactly those seeds (at the `layer_sample` they were planned with); reading any other
/// element is an error.
pub struct RangedCheckpoint {
    repo: String,
    revision: String,
    commit: String,
    shape: ModelShape,
    sites: HashMap<(usize, BlockTensor), Site>,
    files: Vec<HeldFile>,
    seeds: Vec<u32>,
    layer_sample: usize,
    plan: PlanSummary,
    metrics: FetchMetrics,
}

impl fmt::Debug for RangedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangedCheckpoint")
            .field("repo", &self.repo)
            .field("revision", &self.revision)
            .field("commit", &self.commit)
            .field("shape", &self.shape)
            .field("seeds", &self.seeds)
            .field("layer_sample", &self.layer_sample)
            .field("plan", &self.plan)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl RangedCheckpoint {
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The revision as asked for.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The commit it resolved to; every range was read at this commit.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The seeds whose samples were fetched.
    pub fn seeds(&self) -> &[u32] {
        &self.seeds
    }

    pub fn layer_sample(&self) -> usize {
        self.layer_sample
    }

    pub fn plan(&self) -> &PlanSummary {
        &self.plan
    }

    pub fn metrics(&self) -> &FetchMetrics {
        &self.metrics
    }

    /// The weight files: name and size.
    pub fn files(&self) -> impl Iterator<Item = (&str, u64)> {
        self.files.iter().map(|f| (f.name.as_str(), f.size))
    }

    /// Bytes held in memory (the needed elements only, not whole requests).
    pub fn held_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.arena.len() as u64).sum()
    }
}

impl WeightReader for RangedCheckpoint {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// As [`Checkpoint::gather`], element by element in the same order, with the same
    /// decoding and the same error for a non-finite weight.
    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        let site = self
            .sites
            .get(&(block, tensor))
            .ok_or_else(|| Error::MissingTensor {
                dir: PathBuf::from(format!("{}@{}", self.repo, self.revision)),
                tensor: tensor.name(block),
            })?;
        let file = &self.files[site.file];
        let size = site.element.size();
        let mut values = Vec::with_capacity(rows.len() * cols.len());
        for &row in rows {
            for &col in cols {
                if row >= site.rows || col >= site.cols {
                    return Err(Error::InvalidParameter(format!(
                        "[{row}, {col}] is outside tensor `{}` of shape [{}, {}]",
                        site.name, site.rows, site.cols
                    )));
                }
                let offset = site.start + ((row * site.cols + col) * size) as u64;
                let bytes = file.bytes(offset, size).ok_or_else(|| {
                    Error::io(
                        file.path.clone(),
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "element [{row}, {col}] of tensor `{}` (byte {offset}) was not \
                                 fetched: the ranges were planned for seeds {:?} at layer_sample {}",
                                site.name, self.seeds, self.layer_sample
                            ),
                        ),
                    )
                })?;
                let value = site.element.decode(bytes);
                if !value.is_finite() {
                    return Err(Error::NonFiniteWeight {
                        path: file.path.clone(),
                        tensor: site.name.clone(),
                        row,
                        col,
                        value,
                    });
                }
                values.push(value);
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_mode_parses_and_prints_lowercase() {
        for mode in [FetchMode::Full, FetchMode::Ranges, FetchMode::Auto] {
            assert_eq!(mode.to_string().parse::<FetchMode>(), Ok(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<FetchMode>(&json).unwrap(), mode);
        }
        assert!("Ranges".parse::<FetchMode>().is_err());
    }

    fn layout(hidden: usize, blocks: usize) -> Layout {
        let shape = ModelShape {
            hidden_size: hidden,
            num_blocks: blocks,
            intermediate_size: 4 * hidden,
        };
        let mut sites = HashMap::new();
        let mut start = 1000u64;
        for block in 0..blocks {
            for tensor in BlockTensor::ALL {
                let [rows, cols] = tensor.expected_shape(&shape);
                sites.insert(
                    (block, tensor),
                    Site {
                        name: tensor.name(block),
                        file: 0,
                        start,
                        element: ElementType::F16,
                        rows,
                        cols,
                    },
                );
                start += (rows * cols * 2) as u64;
            }
        }
        Layout {
            shape,
            files: vec![RemoteFile {
                url: reqwest::Url::parse(
                    "http://127.0.0.1/org/name/resolve/main/model.safetensors",
                )
                .unwrap(),
                name: SINGLE_FILE.into(),
                size: start,
                xet: false,
            }],
            sites,
            request_time: Duration::ZERO,
        }
    }

    #[test]
    fn plan_covers_every_element_and_merges_by_gap() {
        let layout = layout(64, 2);
        let exact = make_plan(&layout, 4, &[0, 1], 0, MAX_RUNS)
            .unwrap()
            .unwrap();
        let merged = make_plan(&layout, 4, &[0, 1], 4096, MAX_RUNS)
            .unwrap()
            .unwrap();
        assert_eq!(exact.summary.needed_bytes, merged.summary.needed_bytes);
        assert!(merged.summary.requests < exact.summary.requests);
        assert!(merged.summary.planned_bytes >= exact.summary.planned_bytes);
        assert!(exact.summary.planned_bytes == exact.summary.needed_bytes);
        // Every element of every read lies inside a run and a request.
        for seed in [0, 1] {
            let draw = draw_snin(seed, &layout.shape, 4).unwrap();
            for read in gathers(&draw, 64) {
                let site = &layout.sites[&(read.block, read.tensor)];
                for &r in &read.rows {
                    for &c in &read.cols {
                        let o = site.start + ((r * site.cols + c) * 2) as u64;
                        for plan in [&exact, &merged] {
                            assert!(plan.runs[0]
                                .iter()
                                .any(|run| run.start <= o && o + 2 <= run.end));
                            assert!(plan.requests.iter().any(|q| q.start <= o && o + 2 <= q.end));
                        }
                    }
                }
            }
        }
        // Runs and requests are sorted and disjoint.
        for w in merged.runs[0].windows(2) {
            assert!(w[0].end < w[1].start);
        }
        for w in merged.requests.windows(2) {
            assert!(w[0].end + 4096 < w[1].start);
        }
    }

    #[test]
    fn too_fragmented_samples_are_not_planned() {
        let layout = layout(64, 2);
        let runs = |plan: Option<Plan>| plan.unwrap().runs[0].len();
        let needed = runs(make_plan(&layout, 4, &[0], 0, MAX_RUNS).unwrap());
        assert!(make_plan(&layout, 4, &[0], 0, needed / 2)
            .unwrap()
            .is_none());
        // Consecutive columns and rows coalesce: a dense sample has far fewer runs than reads.
        let dense = make_plan(&layout, 64, &[0], 0, MAX_RUNS).unwrap().unwrap();
        assert!((dense.runs[0].len() as u64) < dense.summary.elements / 4);
    }

    #[test]
    fn auto_weighs_requests_by_their_measured_time() {
        // pythia-1b, 10 seeds, gap 4096 (scripts/bench-fetch.sh).
        let plan = PlanSummary {
            seeds: 10,
            elements: 0,
            needed_bytes: 2_619_466,
            planned_bytes: 189_069_500,
            requests: 29_544,
            file_bytes: 2_023_586_192,
            merge_gap: 4096,
        };
        let options = RangeOptions::default();
        // A loopback mirror: requests are nearly free and the bytes decide.
        let near = options.estimate(&plan, Duration::from_micros(300));
        assert!(near.favours_ranges(options.auto_max_share), "{near:?}");
        assert!((near.full.as_secs_f64() - 20.2).abs() < 0.1, "{near:?}");
        // 60 ms per request: 29.5 k requests at 64 in flight take longer than the file.
        let far = options.estimate(&plan, Duration::from_millis(60));
        assert!(!far.favours_ranges(options.auto_max_share), "{far:?}");
        assert!(far.ranges > far.full, "{far:?}");
    }
}
