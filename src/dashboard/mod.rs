//! The coordinator's dashboard: one self-contained page (HTML, script and style compiled
//! into the binary; no build step, nothing fetched from elsewhere) that polls a JSON
//! snapshot of the sweep, the report's figures drawn from the live results, and
//! `/metrics` for Prometheus. Read-only: every route reads a snapshot derived from a copy
//! of the state `status` reads (`SweepState::live_source`, the only part that runs on the
//! state thread), and one snapshot serves every viewer, so twenty browsers cost what one
//! does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use neuromfa_coordinator::export::spectrum_rows;
use neuromfa_coordinator::live::{LiveSource, LiveView, SpectraCache};
use neuromfa_coordinator::metrics::{self, StateMetrics};
use tokio::sync::Mutex;

use crate::report::{live_figure_stems, live_figure_svg, LiveModel};
use crate::server::StateHandle;
use crate::web::WebServer;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// How old a snapshot the page may be shown (its poll interval): polls within it share one.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(2000);
/// A snapshot serves the page for at least this many times what taking it took: on a
/// large sweep (or a busy machine) the page's snapshots then cost at most about 1 % of a
/// core, renewed every few seconds instead of every poll.
const SNAPSHOT_AGE_PER_COST: u32 = 100;
/// How often a figure is redrawn at most while results keep arriving.
const FIGURE_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Spectra drawn per model at most: past that, steps evenly spread by rank (first and last
/// kept). A thousand curves cost seconds to draw and megabytes to send, and read as one.
const MAX_SPECTRA: usize = 40;

/// A snapshot and its JSON.
struct Snapshot {
    view: LiveView,
    json: Bytes,
    etag: String,
    taken: Instant,
    /// How long deriving and serialising it took.
    cost: Duration,
}

impl Snapshot {
    /// Whether it may serve a request that accepts snapshots `max_age` old (none: zero).
    fn fresh(&self, max_age: Duration) -> bool {
        let age = self.taken.elapsed();
        age <= max_age || (!max_age.is_zero() && age <= self.cost * SNAPSHOT_AGE_PER_COST)
    }
}

/// A figure as last drawn.
struct Drawn {
    version: String,
    drawn: Instant,
    svg: Option<Bytes>,
}

/// The latest snapshot, and the spectra the next one is derived from.
#[derive(Default)]
struct Snapshots {
    latest: Option<Arc<Snapshot>>,
    spectra: SpectraCache,
}

/// The snapshots and figures every request shares.
struct Feed {
    state: StateHandle,
    metrics: StateMetrics,
    /// The sweep's `q` grid: the spectra's rows.
    q: Vec<f64>,
    /// (stem, title) of the figures, fixed for the sweep.
    figures: Bytes,
    snapshots: Mutex<Snapshots>,
    drawn: Mutex<HashMap<String, Arc<Drawn>>>,
}

impl Feed {
    /// The latest snapshot if it is fresh enough (see [`Snapshot::fresh`]), else a new
    /// one. Concurrent callers wait for the one being taken instead of each asking the
    /// state thread.
    async fn snapshot(&self, max_age: Duration) -> Result<Arc<Snapshot>, Response> {
        let mut snapshots = self.snapshots.lock().await;
        if let Some(snapshot) = snapshots.latest.as_ref().filter(|s| s.fresh(max_age)) {
            return Ok(snapshot.clone());
        }
        let mut spectra = std::mem::take(&mut snapshots.spectra);
        let mut source = self.source(!spectra.complete()).await?;
        spectra.take(std::mem::take(&mut source.points));
        if !spectra.complete() {
            // A late result for a step already reduced: start again from every result.
            source = self.source(true).await?;
            spectra.take(std::mem::take(&mut source.points));
        }
        // The cluster's Hub budget is kept beside the state, not in it.
        let budget = self.state.budget_status();
        // Deriving and serialising take tens of milliseconds on a large sweep: not on the
        // state thread, nor on a thread serving requests.
        let (snapshot, spectra) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut view = source.view(&mut spectra);
            view.status.budget = budget;
            drop(source);
            let snapshot = serde_json::to_vec(&view).map(|json| Snapshot {
                etag: format!("\"{}\"", view.generated_ms),
                json: json.into(),
                view,
                taken: Instant::now(),
                cost: started.elapsed(),
            });
            (snapshot, spectra)
        })
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
        snapshots.spectra = spectra;
        let snapshot = Arc::new(snapshot.map_err(|e| unavailable(&e.to_string()))?);
        snapshots.latest = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// A copy of what a snapshot is derived from, with every stored result if `all`.
    async fn source(&self, all: bool) -> Result<LiveSource, Response> {
        self.state
            .call(move |s, c| s.live_source(c.now_ms, c.draining, all))
            .await
            .map_err(|status| unavailable(status.message()))
    }

    /// The figure `stem` for the current results, redrawn at most every
    /// [`FIGURE_MIN_INTERVAL`]: the version drawn may lag the latest by that much.
    async fn figure(&self, stem: &str) -> Result<Arc<Drawn>, Response> {
        let snapshot = self.snapshot(SNAPSHOT_MAX_AGE).await?;
        let mut drawn = self.drawn.lock().await;
        if let Some(d) = drawn.get(stem) {
            if d.version == snapshot.view.figures_version || d.drawn.elapsed() < FIGURE_MIN_INTERVAL
            {
                return Ok(d.clone());
            }
        }
        let q = self.q.clone();
        let name = stem.to_string();
        let version = snapshot.view.figures_version.clone();
        let svg = tokio::task::spawn_blocking(move || draw(&snapshot.view, &q, &name))
            .await
            .map_err(|e| unavailable(&e.to_string()))?
            .map_err(|e| unavailable(&format!("{e:#}")))?;
        let d = Arc::new(Drawn {
            version,
            drawn: Instant::now(),
            svg: svg.map(Bytes::from),
        });
        drawn.insert(stem.to_string(), d.clone());
        Ok(d)
    }
}

/// Draws the report's figure `stem` from the snapshot's results.
fn draw(view: &LiveView, q: &[f64], stem: &str) -> anyhow::Result<Option<String>> {
    let models: Vec<LiveModel> = view
        .models
        .iter()
        .map(|m| LiveModel {
            repo: &m.model,
            aggregates: &m.aggregates,
            spectra: spread(&m.spectra, MAX_SPECTRA)
                .map(|(step, a)| (*step, spectrum_rows(&m.model, a, q)))
                .collect::<BTreeMap<_, _>>(),
        })
        .collect();
    live_figure_svg(&models, stem)
}

/// At most `n` of `items`, evenly spread by rank, the first and the last among them.
fn spread<T>(items: &[T], n: usize) -> impl Iterator<Item = &T> {
    crate::report::evenly_by_rank(items.len(), n)
        .into_iter()
        .map(move |i| &items[i])
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the sweep's state cannot be read: {why}\n"),
    )
        .into_response()
}

/// `body` with `content_type`, or 304 when the browser holds `etag` already.
fn tagged(headers: &HeaderMap, etag: &str, content_type: &'static str, body: Bytes) -> Response {
    let held = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let etag = HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"\""));
    if held {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

type Shared = State<Arc<Feed>>;

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn live(State(feed): Shared, headers: HeaderMap) -> Response {
    match feed.snapshot(SNAPSHOT_MAX_AGE).await {
        Ok(s) => tagged(&headers, &s.etag, "application/json", s.json.clone()),
        Err(response) => response,
    }
}

async fn figures(State(feed): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        feed.figures.clone(),
    )
        .into_response()
}

async fn figure(State(feed): Shared, Path(stem): Path<String>, headers: HeaderMap) -> Response {
    let stem = stem.strip_suffix(".svg").unwrap_or(&stem);
    match feed.figure(stem).await {
        Ok(d) => match &d.svg {
            Some(svg) => tagged(
                &headers,
                &format!("\"{}\"", d.version),
                "image/svg+xml",
                svg.clone(),
            ),
            None => (StatusCode::NOT_FOUND, "no results to draw yet\n").into_response(),
        },
        Err(response) => response,
    }
}

/// Scrapes see the state as it is now, not a snapshot a page took a second ago.
async fn prometheus(State(feed): Shared) -> Response {
    let snapshot = match feed.snapshot(Duration::ZERO).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    match metrics::encode(&snapshot.view, &feed.metrics) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => unavailable("the metrics could not be encoded"),
    }
}

/// The dashboard's routes over the sweep `state` holds.
async fn router(state: StateHandle) -> anyhow::Result<Router> {
    let (metrics, q, repos) = state
        .call(|s, _| {
            s.enable_live_view();
            let repos: Vec<String> = s.spec().models.iter().map(|m| m.repo.clone()).collect();
            Ok((s.metrics().clone(), s.params().q.clone(), repos))
        })
        .await
        .map_err(|status| anyhow::anyhow!("the sweep's state: {}", status.message()))?;
    let repos: Vec<&str> = repos.iter().map(String::as_str).collect();
    let stems: Vec<serde_json::Value> = live_figure_stems(&repos)
        .into_iter()
        .map(|(stem, title)| serde_json::json!({ "stem": stem, "title": title }))
        .collect();
    let feed = Arc::new(Feed {
        state,
        metrics,
        q,
        figures: serde_json::to_vec(&stems)?.into(),
        snapshots: Mutex::default(),
        drawn: Mutex::new(HashMap::new()),
    });
    Ok(Router::new()
        .route("/", get(page))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/api/live", get(live))
        .route("/api/figures", get(figures))
        .route("/figure/{stem}", get(figure))
        .route("/metrics", get(prometheus))
        .with_state(feed))
}

/// Serves the dashboard of the sweep `state` holds on `listener`, behind `token`.
pub async fn start(
    listener: tokio::net::TcpListener,
    state: StateHandle,
    token: &str,
) -> anyhow::Result<WebServer> {
    let router = router(state).await?;
    WebServer::start(listener, router, token, "dashboard")
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn many_spectra_are_thinned_evenly_keeping_the_ends() {
        let steps: Vec<u32> = (0..1000).collect();
        let picked: Vec<u32> = spread(&steps, 40).copied().collect();
        assert_eq!(picked.len(), 40);
        assert_eq!((picked[0], picked[39]), (0, 999));
        let few: Vec<u32> = spread(&steps[..7], 40).copied().collect();
        assert_eq!(few, (0..7).collect::<Vec<_>>());
    }
}
