//! Fetching only the bytes an analysis reads, with HTTP byte ranges.
//!
//! A sample (one seed) reads a few thousand scattered elements of each weight matrix, so the
//! seeds queued for a checkpoint touch a few percent of its files. [`fetch_for_seeds`] asks
//! the science what the analysis reads ([`neuromfa_common::read_plan`]): exact elements, or
//! whole files, which it then downloads whole. For elements it reads the layout of the
//! weight files the revision offers first ([`header`]: each safetensors file's header; for
//! `.bin` files, [`torch`]: each zip's tail, `data.pkl` and the needed storages' local
//! headers) with ranged downloads, works out the absolute byte range of every element from
//! its [`TensorLayout`] (strides honoured), merges ranges closer than a gap into requests
//! ([`plan`]), and downloads those concurrently at the commit the revision resolved to
//! ([`http`]). The result, a [`RangedCheckpoint`] ([`reader`]), is a [`WeightReader`] that
//! gives exactly the values the memory-mapped full checkpoint would, in either format.
//!
//! [`TensorLayout`]: neuromfa_common::TensorLayout
//!
//! Only a `206` whose `Content-Range` is exactly the range asked for is accepted, and its
//! body must be exactly that long: a server that ignores `Range` (announcing the whole file,
//! or sending more than was asked) gives [`FetchError::RangesUnsupported`], on which
//! [`FetchMode::Auto`] falls back to the full download; a short answer is retried and then an
//! integrity error. Ranged bytes cannot be checked against the file's sha256 (the ETag covers
//! the whole file); the header's own consistency with the file size is checked instead.
//!
//! A ranged read is one GET through the HTTP client and token `hf-hub` uses; files stored in
//! Xet are read through `hf-hub`'s ranged download, which reconstructs them (two requests).

mod header;
mod http;
mod plan;
mod reader;
mod torch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use neuromfa_common::checkpoint::FetchMode;
use neuromfa_common::checkpoint::CONFIG_FILE;
use neuromfa_common::network::{Gather, WeightReader};
use neuromfa_common::{read_plan, AnalysisParams, Checkpoint, Error, ModelShape, ReadPlan};

use crate::error::{FetchError, Names};
use crate::fetch::{Cost, FetchedCheckpoint, Fetcher, Session};
use header::{read_layout, Layout};
use plan::{make_plan, Plan, Sites, MAX_RUNS};
pub use plan::{
    FetchEstimate, PlanSummary, RangeOptions, DEFAULT_ASSUMED_BYTES_PER_SEC,
    DEFAULT_AUTO_MAX_SHARE, DEFAULT_CONCURRENCY, DEFAULT_MERGE_GAP,
};
use reader::HeldFile;
pub use reader::RangedCheckpoint;

/// What errors about the weights as a whole name as their file.
const WEIGHTS: &str = "the weights";

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
        merge_gap,
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
    let started = Instant::now();
    if options.mode == FetchMode::Full {
        return fetcher
            .fetch_checkpoint(repo, revision)
            .await
            .map(FetchedWeights::Full);
    }
    let auto = options.mode == FetchMode::Auto;
    let mut spent = Cost::default();
    let session = fetcher.begin(repo, revision).await?;
    let attempt = try_ranges(session, params, seeds, options, &mut spent).await;
    let why = match attempt {
        Ok(Attempt::Ranged(mut ranged)) => {
            ranged.metrics.elapsed = started.elapsed();
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
        Ok(Attempt::Whole(session)) => {
            tracing::info!(repo, revision, "the analysis reads whole files");
            return session.download_whole().await.map(FetchedWeights::Full);
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
    params: &AnalysisParams,
    seeds: &[u32],
    merge_gap: u64,
) -> Result<PlanSummary, FetchError> {
    let mut session = fetcher.begin(repo, revision).await?;
    let (reads, layout) = match prepare(&mut session, params, seeds, false).await? {
        Prepared::Ready(Ready { reads, layout, .. }) => (reads, layout),
        Prepared::WholeFiles | Prepared::Cached => {
            return Err(session.names().invalid_request(
                WEIGHTS,
                "the analysis reads whole files: there are no ranges to plan".to_string(),
            ))
        }
    };
    let cost = layout.cost;
    match plan_off_thread(session.names(), layout.sites, reads, seeds.len(), merge_gap).await? {
        Some(plan) => Ok(with_layout_cost(plan.summary, cost)),
        None => Err(too_fragmented(session.names(), seeds)),
    }
}

/// The outcome of trying ranges.
enum Attempt {
    Ranged(Box<RangedCheckpoint>),
    /// The analysis reads whole files: the session goes on to download them.
    Whole(Box<Session>),
    /// `Auto` decided on the whole checkpoint, for this reason.
    Full(&'static str),
}

/// Everything of a ranged fetch that may end in "fetch it whole instead". Adds what it spent
/// to `spent` whatever the outcome, so a fallback can report the total.
async fn try_ranges(
    mut session: Session,
    params: &AnalysisParams,
    seeds: &[u32],
    options: &RangeOptions,
    spent: &mut Cost,
) -> Result<Attempt, FetchError> {
    let auto = options.mode == FetchMode::Auto;
    let prepared = prepare(&mut session, params, seeds, auto).await;
    let attempt = match prepared {
        Ok(Prepared::WholeFiles) => return Ok(Attempt::Whole(Box::new(session))),
        Ok(Prepared::Cached) => Ok(Attempt::Full("the weight files are already in the cache")),
        Ok(Prepared::Ready(ready)) => {
            fetch_ranges(&mut session, ready, params, seeds, options).await
        }
        Err(e) => Err(e),
    };
    *spent += session.spent();
    attempt
}

/// What a fetch needs before it can plan ranges.
enum Prepared {
    /// The analysis reads whole files.
    WholeFiles,
    /// `Auto` found the weight files in the cache already.
    Cached,
    Ready(Ready),
}

/// The elements an analysis reads, and where they lie.
struct Ready {
    shape: ModelShape,
    reads: Vec<Gather>,
    layout: Layout,
}

/// The model's shape, what the analysis reads (the science's answer), and the layout of the
/// weight files (their headers); with `stop_if_cached`, [`Prepared::Cached`] when the weight
/// files are in the cache already.
async fn prepare(
    session: &mut Session,
    params: &AnalysisParams,
    seeds: &[u32],
    stop_if_cached: bool,
) -> Result<Prepared, FetchError> {
    let shape = session.model_shape().await?;
    let reads = match reads_off_thread(session.names(), params, shape, seeds).await? {
        ReadPlan::WholeFiles => return Ok(Prepared::WholeFiles),
        ReadPlan::Elements(reads) => reads,
    };
    if seeds.is_empty() {
        return Err(session
            .names()
            .invalid_request(WEIGHTS, "no seeds to fetch ranges for".to_string()));
    }
    match read_layout(session, &shape, stop_if_cached).await? {
        None => Ok(Prepared::Cached),
        Some(layout) => Ok(Prepared::Ready(Ready {
            shape,
            reads,
            layout,
        })),
    }
}

/// Plans `reads`, weighs the plan (`Auto`) and downloads it.
async fn fetch_ranges(
    session: &mut Session,
    Ready {
        shape,
        reads,
        layout,
    }: Ready,
    params: &AnalysisParams,
    seeds: &[u32],
    options: &RangeOptions,
) -> Result<Attempt, FetchError> {
    let auto = options.mode == FetchMode::Auto;
    let sites = layout.sites.clone();
    let planned = plan_off_thread(
        session.names(),
        sites,
        reads,
        seeds.len(),
        options.merge_gap,
    )
    .await?;
    let Some(plan) = planned else {
        if auto {
            return Ok(Attempt::Full(
                "the samples are too fragmented to fetch by ranges",
            ));
        }
        return Err(too_fragmented(session.names(), seeds));
    };
    let summary = with_layout_cost(plan.summary, layout.cost);
    tracing::info!(
        repo = session.names().repo(),
        revision = session.names().revision(),
        seeds = summary.seeds,
        elements = summary.elements,
        needed_bytes = summary.needed_bytes,
        planned_bytes = summary.planned_bytes,
        requests = summary.requests,
        layout_requests = summary.layout_requests,
        layout_bytes = summary.layout_bytes,
        file_bytes = summary.file_bytes,
        share = summary.share(),
        "ranged fetch planned"
    );
    if auto && !worth_ranges(options, &summary, layout.request_time) {
        return Ok(Attempt::Full(
            "ranges would cost too much of a full download's time",
        ));
    }
    let mut cost = Cost::default();
    let remote = session.remote();
    let files = layout.files.clone();
    let held =
        http::fetch_plan_apart(remote, files, plan, options.concurrency.max(1), &mut cost).await;
    session.add_spent(cost);
    let held = held?;
    let names = session.names();
    let spent = session.spent();
    Ok(Attempt::Ranged(Box::new(RangedCheckpoint {
        repo: names.repo().to_string(),
        revision: names.revision().to_string(),
        commit: session.commit().to_string(),
        shape,
        sites: layout.sites.by_tensor,
        files: layout
            .files
            .into_iter()
            .zip(held)
            .map(|(file, held)| HeldFile {
                path: PathBuf::from(format!(
                    "{}@{}/{}",
                    names.repo(),
                    names.revision(),
                    file.name
                )),
                name: file.name,
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
            // Set by the caller, who started the clock.
            elapsed: Duration::ZERO,
            file_bytes: summary.file_bytes,
        },
    })))
}

/// `summary` with what reading the layout cost.
fn with_layout_cost(summary: PlanSummary, cost: Cost) -> PlanSummary {
    PlanSummary {
        layout_requests: cost.requests as usize,
        layout_bytes: cost.bytes,
        ..summary
    }
}

/// `Auto`'s choice: whether ranges are estimated to take less than the allowed share of a
/// full download's time, with one small request taking `request_time`.
fn worth_ranges(options: &RangeOptions, summary: &PlanSummary, request_time: Duration) -> bool {
    let estimate = options.estimate(summary, request_time);
    tracing::info!(
        ranges_s = estimate.ranges.as_secs_f64(),
        full_s = estimate.full.as_secs_f64(),
        request_ms = request_time.as_secs_f64() * 1e3,
        "ranged fetch estimated"
    );
    estimate.favours_ranges(options.auto_max_share)
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
) -> Result<Option<Plan>, FetchError> {
    off_thread(names, move || {
        make_plan(&sites, &reads, seeds, merge_gap, MAX_RUNS)
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
