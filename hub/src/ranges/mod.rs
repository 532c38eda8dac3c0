//! Fetching only the bytes an analysis reads, with HTTP byte ranges.
//!
//! A sample (one seed) reads a few thousand scattered elements of each weight matrix, so the
//! seeds queued for a checkpoint touch a few percent of its files. [`fetch_for_seeds`] reads
//! one way, each stage in its module:
//!
//! 1. **listing** ([`crate::listing`]): the weight files the revision offers first, the
//!    shard index, each file resolved once (size, hash, its location on the CDN);
//! 2. **layout** ([`header`], [`torch`]): where every tensor lies, from each safetensors
//!    file's header or each `.bin` archive's records, read by ranges;
//! 3. **plan** ([`plan`], priced by [`link`]): what the science says the analysis reads
//!    ([`neuromfa_common::read_plan`]: exact elements, or whole files, which are then
//!    downloaded whole), as byte runs from each [`TensorLayout`] (strides honoured), merged
//!    into requests where a gap is cheaper to read through than another request on this
//!    link, at most [`MAX_REQUESTS`];
//! 4. **transport** ([`crate::transport`]): the requests, many in flight ([`reads`]), to
//!    each file's location at the commit the revision resolved to;
//! 5. **reader** ([`reader`]): a [`RangedCheckpoint`], a [`WeightReader`] that gives exactly
//!    the values the memory-mapped full checkpoint would, in either format.
//!
//! [`TensorLayout`]: neuromfa_common::TensorLayout
//!
//! Only a `206` whose `Content-Range` is exactly the range asked for is accepted, and its
//! body must be exactly that long: a server that ignores `Range` (announcing the whole file,
//! or sending more than was asked) gives [`FetchError::RangesUnsupported`], on which
//! [`FetchMode::Auto`] downloads the files whole instead; a short answer is retried and then
//! an integrity error. Ranged bytes cannot be checked against the file's sha256 (the ETag
//! covers the whole file); the header's own consistency with the file size is checked
//! instead. Files stored in Xet are read the same way, by ranges through the Xet bridge
//! their resolve points at: no Xet token, no reconstruction call per range.

mod header;
pub mod link;
mod plan;
mod reader;
mod reads;
mod torch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use neuromfa_common::checkpoint::FetchMode;
use neuromfa_common::checkpoint::{RevisionWeights, CONFIG_FILE};
use neuromfa_common::network::{Gather, WeightReader};
use neuromfa_common::{read_plan, AnalysisParams, Checkpoint, Error, ModelShape, ReadPlan};

use crate::error::{FetchError, Names};
use crate::fetch::{FetchedCheckpoint, Fetcher, HubRequests, Session};
use crate::transport::{RemoteFile, Scope, Transport};
use header::{read_layout, tensor_files, Layout};
pub use link::{FetchEstimate, Link, MAX_CONCURRENCY, MAX_REQUESTS, MIN_CONCURRENCY};
use link::{PROBE_BYTES, PROBE_MIN_FILE};
pub use plan::PlanSummary;
use plan::{make_plan, Plan, Sites, MAX_RUNS};
use reader::HeldFile;
pub use reader::RangedCheckpoint;

/// What errors about the weights as a whole name as their file.
const WEIGHTS: &str = "the weights";

/// [`FetchMode::Auto`] fetches ranges when they are estimated to take less than this share
/// of a full download's time: twice as fast leaves room for the estimate's error (3–35 %
/// of the measured fetch on the virtual Pythia suite), and ranges read a fraction of the
/// bytes, which on a link a cluster's workers share counts for more than one worker's
/// estimate shows. (At a quarter, pythia-160m and -410m took whole files, five times the
/// bytes, for fetches 3.5 times slower.)
pub const DEFAULT_AUTO_MAX_SHARE: f64 = 0.5;

/// Settings of a ranged fetch ([`fetch_for_seeds_with`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeOptions {
    pub mode: FetchMode,
    /// Ranges separated by at most this many bytes are merged into one request; `None`:
    /// the gap the link's round trip and bandwidth price ([`Link::merge_gap`]).
    pub merge_gap: Option<u64>,
    /// Ranged requests in flight at once; `None`: as the link's round trip asks
    /// ([`Link::concurrency`]).
    pub concurrency: Option<usize>,
    /// `Auto` picks ranges when they are estimated to take less than this share of a full
    /// download's time.
    pub auto_max_share: f64,
    /// The link to price requests by; `None`: measured on the fetch's own first reads.
    pub link: Option<Link>,
    /// Requests a checkpoint's ranges may take at most.
    pub max_requests: usize,
    /// What the coordinator resolved of the revision (a lease carries it): the fetch starts
    /// at its commit and skips the listing.
    pub known: Option<RevisionWeights>,
}

impl Default for RangeOptions {
    fn default() -> Self {
        RangeOptions {
            mode: FetchMode::Auto,
            merge_gap: None,
            concurrency: None,
            auto_max_share: DEFAULT_AUTO_MAX_SHARE,
            link: None,
            max_requests: MAX_REQUESTS,
            known: None,
        }
    }
}

/// What getting a checkpoint's weights cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchMetrics {
    /// How the weights were fetched: `Full` or `Ranges` (never `Auto`).
    pub mode: FetchMode,
    /// Bytes received in bodies (0 when everything was cached).
    pub bytes_downloaded: u64,
    /// Requests made, retries included: resolves, GETs (ranged or not), API calls.
    pub requests: u32,
    /// Of those, what the Hub counts against its rate limits.
    pub hub_requests: HubRequests,
    /// Wall time of the fetch.
    pub elapsed: Duration,
    /// Total size of the weight files, the denominator of [`Self::share`].
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
// One per fetch, moved a few times: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
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
            FetchedWeights::Ranged(r) => r.commit(),
        }
    }

    pub fn metrics(&self) -> FetchMetrics {
        match self {
            FetchedWeights::Full(c) => FetchMetrics {
                mode: FetchMode::Full,
                bytes_downloaded: c.bytes_downloaded,
                requests: c.requests,
                hub_requests: c.hub_requests,
                elapsed: c.elapsed,
                file_bytes: c.weight_bytes(),
            },
            FetchedWeights::Ranged(r) => r.metrics,
        }
    }

    /// A reader over the weights. For `Full` this maps the files ([`Checkpoint::open`]:
    /// blocking file I/O, so call it off the async threads).
    pub fn open(self) -> Result<Box<dyn WeightReader + Send>, Error> {
        Ok(match self {
            FetchedWeights::Full(c) => Box::new(Checkpoint::open(&c.dir)?),
            FetchedWeights::Ranged(r) => Box::new(r),
        })
    }
}

/// Fetches what an analysis with `params` of `seeds` reads from `repo` at `revision` in
/// `mode` (see [`FetchMode`]), merging ranges closer than `merge_gap` bytes. A seed not in
/// `seeds` cannot be analysed from a ranged result.
pub async fn fetch_for_seeds(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    params: &AnalysisParams,
    seeds: &[u32],
    mode: FetchMode,
    merge_gap: u64,
) -> Result<FetchedWeights, FetchError> {
    let options = RangeOptions {
        mode,
        merge_gap: Some(merge_gap),
        ..RangeOptions::default()
    };
    fetch_for_seeds_with(fetcher, repo, revision, params, seeds, &options).await
}

/// [`fetch_for_seeds`] with every setting.
pub async fn fetch_for_seeds_with(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    params: &AnalysisParams,
    seeds: &[u32],
    options: &RangeOptions,
) -> Result<FetchedWeights, FetchError> {
    let mut session = fetcher
        .begin(repo, revision, options.known.as_ref())
        .await?;
    if options.mode == FetchMode::Full {
        return session.download_whole().await.map(FetchedWeights::Full);
    }
    let auto = options.mode == FetchMode::Auto;
    let why = match try_ranges(&mut session, params, seeds, options).await {
        Ok(Tried::Ranged(ranged)) => {
            let m = ranged.metrics;
            tracing::info!(
                repo,
                revision,
                commit = %ranged.commit(),
                bytes_downloaded = m.bytes_downloaded,
                file_bytes = m.file_bytes,
                requests = m.requests,
                elapsed_ms = m.elapsed.as_millis() as u64,
                "ranges fetched"
            );
            return Ok(FetchedWeights::Ranged(*ranged));
        }
        Ok(Tried::Whole(why)) => why.to_string(),
        Err(e @ FetchError::RangesUnsupported { .. }) if auto => e.to_string(),
        Err(e) => return Err(e),
    };
    tracing::info!(repo, revision, reason = %why, "fetching the whole checkpoint");
    // What deciding cost is part of the fetch: the session counted it.
    session.download_whole().await.map(FetchedWeights::Full)
}

/// Reads the headers and plans, without downloading any weights: what a ranged fetch of
/// `seeds` would cost with `merge_gap` (the link's price when `None`). Costs the same few
/// requests as the start of a ranged fetch.
pub async fn plan_for_seeds(
    fetcher: &Fetcher,
    repo: &str,
    revision: &str,
    params: &AnalysisParams,
    seeds: &[u32],
    merge_gap: Option<u64>,
) -> Result<PlanSummary, FetchError> {
    let mut session = fetcher.begin(repo, revision, None).await?;
    let options = RangeOptions {
        merge_gap,
        ..RangeOptions::default()
    };
    match prepare(&mut session, params, seeds, &options, false).await? {
        Prepared::Planned(planned) => Ok(planned.summary),
        Prepared::Whole(why) => Err(session
            .names()
            .invalid_request(WEIGHTS, format!("there are no ranges to plan: {why}"))),
    }
}

/// The outcome of trying ranges.
enum Tried {
    Ranged(Box<RangedCheckpoint>),
    /// Fetch the whole checkpoint instead, for this reason.
    Whole(&'static str),
}

/// Everything of a ranged fetch that may end in "fetch it whole instead".
async fn try_ranges(
    session: &mut Session,
    params: &AnalysisParams,
    seeds: &[u32],
    options: &RangeOptions,
) -> Result<Tried, FetchError> {
    let auto = options.mode == FetchMode::Auto;
    let planned = match prepare(session, params, seeds, options, auto).await? {
        Prepared::Whole(why) => return Ok(Tried::Whole(why)),
        Prepared::Planned(planned) => planned,
    };
    let Planned {
        shape,
        layout,
        plan,
        summary,
        link,
        concurrency,
    } = *planned;
    tracing::info!(
        repo = session.names().repo(),
        revision = session.names().revision(),
        seeds = summary.seeds,
        elements = summary.elements,
        needed_bytes = summary.needed_bytes,
        planned_bytes = summary.planned_bytes,
        requests = summary.requests,
        merge_gap = summary.merge_gap,
        concurrency,
        xet_files = layout.files.iter().filter(|f| f.xet_hash.is_some()).count(),
        round_trip_ms = link.round_trip.as_secs_f64() * 1e3,
        mb_per_s = link.bytes_per_sec / 1e6,
        layout_requests = summary.layout_requests,
        layout_bytes = summary.layout_bytes,
        file_bytes = summary.file_bytes,
        share = summary.share(),
        "ranged fetch planned"
    );
    if auto {
        let estimate = link.estimate(&summary, concurrency);
        tracing::info!(
            ranges_s = estimate.ranges.as_secs_f64(),
            full_s = estimate.full.as_secs_f64(),
            "ranged fetch estimated"
        );
        if !estimate.favours_ranges(options.auto_max_share) {
            return Ok(Tried::Whole(
                "ranges would cost too much of a full download's time",
            ));
        }
    }
    let held = reads::fetch_plan_apart(
        &session.transport,
        &session.scope,
        layout.files.clone(),
        plan,
        concurrency,
    )
    .await?;
    let names = session.names();
    let spent = session.spent();
    Ok(Tried::Ranged(Box::new(RangedCheckpoint {
        repo: names.repo().to_string(),
        revision: names.revision().to_string(),
        commit: session.commit().to_string(),
        shape,
        sites: layout.sites.by_tensor,
        files: layout
            .files
            .iter()
            .zip(held)
            .map(|(file, held)| HeldFile {
                path: PathBuf::from(format!(
                    "{}@{}/{}",
                    names.repo(),
                    names.revision(),
                    file.name
                )),
                name: file.name.clone(),
                size: file.size,
                held,
            })
            .collect(),
        seeds: seeds.to_vec(),
        layer_sample: params.layer_sample,
        plan: summary,
        metrics: FetchMetrics {
            mode: FetchMode::Ranges,
            bytes_downloaded: spent.bytes,
            requests: spent.requests,
            hub_requests: spent.hub,
            elapsed: session.elapsed(),
            file_bytes: summary.file_bytes,
        },
    })))
}

/// What a fetch knows once it has planned.
enum Prepared {
    /// Fetch the whole checkpoint instead, for this reason.
    Whole(&'static str),
    Planned(Box<Planned>),
}

/// A plan and what it was made from.
struct Planned {
    shape: ModelShape,
    layout: Layout,
    plan: Plan,
    /// The plan's summary, with what reading the layout cost.
    summary: PlanSummary,
    link: Link,
    concurrency: usize,
}

/// The model's shape, what the analysis reads (the science's answer), the listing, the
/// layout of the weight files, the link and the plan; with `stop_if_cached`,
/// [`Prepared::Whole`] as soon as the weight files turn out to be in the cache already.
async fn prepare(
    session: &mut Session,
    params: &AnalysisParams,
    seeds: &[u32],
    options: &RangeOptions,
    stop_if_cached: bool,
) -> Result<Prepared, FetchError> {
    let shape = session.model_shape().await?;
    let reads = match reads_off_thread(session.names(), params, shape, seeds).await? {
        ReadPlan::WholeFiles => return Ok(Prepared::Whole("the analysis reads whole files")),
        ReadPlan::Elements(reads) => reads,
    };
    if seeds.is_empty() {
        return Err(session
            .names()
            .invalid_request(WEIGHTS, "no seeds to fetch ranges for".to_string()));
    }
    let weights = session.weight_files().await?;
    let (names, needed) = tensor_files(session, &shape, weights).await?;
    if stop_if_cached && names.iter().all(|f| session.is_cached(f)) {
        return Ok(Prepared::Whole("the weight files are already in the cache"));
    }
    let files = session.remote_files(&names).await?;
    let before = session.spent();
    let ranged = Reads {
        transport: session.transport.clone(),
        scope: session.scope.clone(),
    };
    let layout = read_layout(&ranged, weights.format, files, needed).await?;
    let layout_cost = session.spent() - before;
    let link = match options.link {
        Some(link) => link,
        None => ranged.measure_link(&layout.files).await?,
    };
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| link.concurrency())
        .max(1);
    let merge_gap = options
        .merge_gap
        .unwrap_or_else(|| link.merge_gap(concurrency));
    let sites = layout.sites.clone();
    let planned = plan_off_thread(
        session.names(),
        sites,
        reads,
        seeds.len(),
        merge_gap,
        options.max_requests,
    )
    .await?;
    let Some(plan) = planned else {
        if options.mode == FetchMode::Auto {
            return Ok(Prepared::Whole(
                "the samples are too fragmented to fetch by ranges",
            ));
        }
        return Err(too_fragmented(session.names(), seeds));
    };
    let summary = PlanSummary {
        layout_requests: layout_cost.requests as usize,
        layout_bytes: layout_cost.bytes,
        ..plan.summary
    };
    Ok(Prepared::Planned(Box::new(Planned {
        shape,
        layout,
        plan,
        summary,
        link,
        concurrency,
    })))
}

/// What layout reads go through: the fetch's transport and scope.
pub(crate) struct Reads {
    transport: Arc<Transport>,
    scope: Scope,
}

impl Reads {
    pub(crate) fn names(&self) -> &Names {
        &self.scope.names
    }

    /// `range` of `file`.
    pub(crate) async fn read(
        &self,
        file: &RemoteFile,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, FetchError> {
        self.transport.read_to_vec(&self.scope, file, range).await
    }

    /// The link as the layout reads showed it; when none was long enough to measure a
    /// connection's bandwidth and a file is large enough for it not to matter, one more
    /// read of [`PROBE_BYTES`] from the middle of the largest file.
    async fn measure_link(&self, files: &[Arc<RemoteFile>]) -> Result<Link, FetchError> {
        let largest = files.iter().max_by_key(|f| f.size);
        if let Some(file) = largest.filter(|f| f.size >= PROBE_MIN_FILE) {
            if !Link::measured_bandwidth(&self.scope.timings()) {
                let start = file.size / 2;
                self.read(file, start..start + PROBE_BYTES).await?;
            }
        }
        Link::from_timings(&self.scope.timings()).ok_or_else(|| {
            self.names().invalid(
                WEIGHTS,
                "no read of the weight files to measure the link by".to_string(),
            )
        })
    }
}

fn too_fragmented(names: &Names, seeds: &[u32]) -> FetchError {
    names.invalid_request(
        WEIGHTS,
        format!(
            "the samples of {} seeds read more than {MAX_RUNS} separate byte runs; \
             fetch this checkpoint in full",
            seeds.len()
        ),
    )
}

/// What the analysis reads, worked out on a blocking thread: drawing ten seeds' samples of a
/// large model is the planning's main work.
async fn reads_off_thread(
    names: &Names,
    params: &AnalysisParams,
    shape: ModelShape,
    seeds: &[u32],
) -> Result<ReadPlan, FetchError> {
    let (params, seeds) = (params.clone(), seeds.to_vec());
    off_thread(names, move || read_plan(&params, &shape, &seeds)).await
}

/// Plans on a blocking thread: ten seeds of a large model are a million runs to sort.
async fn plan_off_thread(
    names: &Names,
    sites: Sites,
    reads: Vec<Gather>,
    seeds: usize,
    merge_gap: u64,
    max_requests: usize,
) -> Result<Option<Plan>, FetchError> {
    off_thread(names, move || {
        make_plan(&sites, &reads, seeds, merge_gap, MAX_RUNS, max_requests)
    })
    .await
}

/// Runs planning work on the blocking pool; what it refuses is a request this checkpoint
/// cannot serve (e.g. a sample larger than a layer).
async fn off_thread<T: Send + 'static>(
    names: &Names,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| names.invalid(WEIGHTS, format!("planning failed: {e}")))?
        .map_err(|e| names.invalid_request(CONFIG_FILE, e.to_string()))
}
