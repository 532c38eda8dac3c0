//! The transport against a small Hub of its own that behaves as the real one does where it
//! matters here: resolve answers `302` to a second listener (the CDN) with the metadata on
//! the redirect, signed locations the CDN refuses once they are stale, `429`s, `5xx`s and
//! bodies cut mid-way on demand, paths-info taken as form fields only.

mod common;
mod ranged;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::*;
use neuromfa_common::Checkpoint;
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::ranges::{fetch_for_seeds, FetchMode};
use neuromfa_hub::resolve::Resolver;
use neuromfa_hub::HubSettings;
use ranged::*;

const REPO: &str = "EleutherAI/tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_secret_token";

fn golden_step1000() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden/tiny-neox/step1000")
}

/// One request either listener saw.
#[derive(Debug, Clone)]
struct Seen {
    cdn: bool,
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The fake Hub's files and knobs.
#[derive(Default)]
struct Fake {
    files: HashMap<String, Vec<u8>>,
    cdn: Mutex<String>,
    seen: Mutex<Vec<Seen>>,
    /// Signatures issued before this generation are refused.
    generation: AtomicU64,
    /// After this many CDN GETs, every signature issued so far goes stale (0: never).
    stale_after: AtomicU64,
    cdn_gets: AtomicU64,
    /// Resolve answers to turn into `429`s.
    throttle: AtomicU32,
    /// Until then, resolve answers are `429`s that name the API bucket's window.
    throttle_as_api_until: Mutex<Option<std::time::Instant>>,
    /// `429`s answered.
    refused: AtomicU32,
    /// CDN answers to turn into `503`s.
    fail: AtomicU32,
    /// CDN bodies to cut half way.
    cut: AtomicU32,
    /// Refuse paths-info as form fields (an older mirror).
    json_only: AtomicBool,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn resolves_of(&self, file: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.cdn && s.method == Method::HEAD && s.path.ends_with(file))
            .count()
    }
}

fn sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

async fn hub(State(fake): State<Arc<Fake>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    fake.seen.lock().unwrap().push(Seen {
        cdn: false,
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
    });
    if parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let limit = |r: u32| {
        [(
            "ratelimit",
            HeaderValue::from_str(&format!("\"resolvers\";r={r};t=0")).unwrap(),
        )]
    };
    if path.starts_with(&format!("/api/models/{REPO}/paths-info/")) {
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            == Some("application/x-www-form-urlencoded");
        let paths: Vec<String> = if form && !fake.json_only.load(Ordering::SeqCst) {
            let query = String::from_utf8(body.to_vec()).unwrap();
            reqwest::Url::parse(&format!("http://form/?{query}"))
                .unwrap()
                .query_pairs()
                .filter(|(k, _)| k == "paths")
                .map(|(_, v)| v.into_owned())
                .collect()
        } else if !form && fake.json_only.load(Ordering::SeqCst) {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            serde_json::from_value(json["paths"].clone()).unwrap()
        } else {
            return StatusCode::UNPROCESSABLE_ENTITY.into_response();
        };
        let entries: Vec<serde_json::Value> = paths
            .iter()
            .filter(|p| fake.files.contains_key(*p))
            .map(|p| serde_json::json!({"type": "file", "path": p, "size": fake.files[p].len()}))
            .collect();
        return axum::Json(entries).into_response();
    }
    let Some(rest) = path.strip_prefix(&format!("/{REPO}/resolve/")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (_, file) = rest.split_once('/').unwrap();
    let taken = fake
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if taken.is_ok() {
        fake.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::TOO_MANY_REQUESTS, limit(0)).into_response();
    }
    let until = *fake.throttle_as_api_until.lock().unwrap();
    if let Some(left) = until.and_then(|u| u.checked_duration_since(std::time::Instant::now())) {
        fake.refused.fetch_add(1, Ordering::SeqCst);
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let named = format!("\"api\";r=0;t={seconds}");
        let headers = [("ratelimit", HeaderValue::from_str(&named).unwrap())];
        return (StatusCode::TOO_MANY_REQUESTS, headers).into_response();
    }
    let Some(bytes) = fake.files.get(file) else {
        return (StatusCode::NOT_FOUND, [("x-error-code", "EntryNotFound")]).into_response();
    };
    let etag = sha256(bytes);
    let common = [
        ("x-repo-commit", HeaderValue::from_static(COMMIT)),
        (
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{etag}\"")).unwrap(),
        ),
        ("x-linked-size", HeaderValue::from(bytes.len())),
    ];
    if file == "config.json" {
        let body = if parts.method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(bytes.clone())
        };
        return (StatusCode::OK, common, limit(99), body).into_response();
    }
    let cdn = fake.cdn.lock().unwrap().clone();
    let location = format!(
        "{cdn}/blobs/{file}?gen={}&Expires=4102444800",
        fake.generation.load(Ordering::SeqCst)
    );
    (
        StatusCode::FOUND,
        common,
        limit(99),
        [(header::LOCATION, HeaderValue::from_str(&location).unwrap())],
    )
        .into_response()
}

async fn cdn(State(fake): State<Arc<Fake>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    fake.seen.lock().unwrap().push(Seen {
        cdn: true,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        headers: parts.headers.clone(),
    });
    let gets = fake.cdn_gets.fetch_add(1, Ordering::SeqCst) + 1;
    if gets == fake.stale_after.load(Ordering::SeqCst) {
        fake.generation.fetch_add(1, Ordering::SeqCst);
    }
    let query = parts.uri.query().unwrap_or_default();
    let issued: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("gen="))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    if issued < fake.generation.load(Ordering::SeqCst) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if fake
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let file = parts.uri.path().trim_start_matches("/blobs/");
    let bytes = &fake.files[file];
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap();
            let end = if b.is_empty() {
                bytes.len() - 1
            } else {
                b.parse::<usize>().unwrap()
            };
            (start, end)
        });
    let cut = fake
        .cut
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let (status, part, content_range) = match range {
        Some((start, end)) => (
            StatusCode::PARTIAL_CONTENT,
            bytes[start..=end].to_vec(),
            Some(format!("bytes {start}-{end}/{}", bytes.len())),
        ),
        None => (StatusCode::OK, bytes.clone(), None),
    };
    let len = part.len();
    let body = if cut {
        // Half the body, then the connection breaks. The pause in between makes the server
        // flush the half before it aborts.
        let half = Bytes::from(part[..len / 2].to_vec());
        let head = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]);
        let broken = futures_util::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Err::<Bytes, _>(std::io::Error::other("connection reset"))
        });
        Body::from_stream(futures_util::StreamExt::chain(head, broken))
    } else {
        Body::from(part)
    };
    let mut response = (
        status,
        [(header::CONTENT_LENGTH, HeaderValue::from(len))],
        body,
    )
        .into_response();
    if let Some(range) = content_range {
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).unwrap(),
        );
    }
    response
}

/// The fake Hub serving the golden checkpoint: its state and endpoint.
async fn start_fake() -> (Arc<Fake>, String) {
    let mut fake = Fake::default();
    for file in ["config.json", "model.safetensors"] {
        let bytes = std::fs::read(golden_step1000().join(file)).unwrap();
        fake.files.insert(file.to_string(), bytes);
    }
    let fake = Arc::new(fake);
    let serve = |router: Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    };
    let cdn_url = serve(Router::new().fallback(cdn).with_state(fake.clone())).await;
    *fake.cdn.lock().unwrap() = cdn_url;
    let hub_url = serve(Router::new().fallback(hub).with_state(fake.clone())).await;
    (fake, hub_url)
}

fn fetcher_with_token(endpoint: &str, cache: &Path) -> Fetcher {
    Fetcher::new(HubSettings {
        endpoint: Some(endpoint.to_string()),
        token: Some(TOKEN.to_string()),
        cache_dir: Some(cache.to_path_buf()),
    })
    .unwrap()
}

#[tokio::test]
async fn files_are_resolved_once_and_read_from_the_cdn_without_the_token() {
    let (fake, endpoint) = start_fake().await;
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());

    let whole = f.fetch_checkpoint(REPO, "step1000").await.unwrap();
    assert_eq!(whole.commit, COMMIT);
    assert_eq!(
        std::fs::read(whole.dir.join("model.safetensors")).unwrap(),
        fake.files["model.safetensors"]
    );
    // config.json, the listing, the weights' resolve: the Hub's buckets; the GET of the
    // weights went to the CDN.
    assert_eq!(
        (whole.hub_requests.resolvers, whole.hub_requests.api),
        (2, 1),
        "{whole:?}"
    );
    assert_eq!(whole.requests, 4);
    assert_eq!(fake.resolves_of("model.safetensors"), 1);

    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());
    let seeds = [0, 1];
    let r = ranged(
        fetch_for_seeds(
            f_ref(&f),
            REPO,
            "step1000",
            &params(8),
            &seeds,
            FetchMode::Ranges,
            0,
        )
        .await
        .unwrap(),
    );
    let mapped = Checkpoint::open(&golden_step1000()).unwrap();
    assert_identical(&r, &mapped, &params(8), &seeds);
    let m = r.metrics();
    assert_eq!(
        (m.hub_requests.resolvers, m.hub_requests.api),
        (2, 1),
        "{m:?}"
    );
    assert!(m.requests as usize > r.plan().requests + 3, "{m:?}");
    assert_eq!(fake.resolves_of("model.safetensors"), 2, "once per fetch");

    let seen = fake.seen();
    let at_cdn: Vec<&Seen> = seen.iter().filter(|s| s.cdn).collect();
    assert!(at_cdn.len() > r.plan().requests, "{}", at_cdn.len());
    for s in &at_cdn {
        assert_eq!(s.header("authorization"), None, "the token reached the CDN");
        assert_eq!(s.header("accept-encoding"), Some("identity"));
    }
    let listing = seen
        .iter()
        .find(|s| s.path.contains("/paths-info/"))
        .unwrap();
    assert_eq!(
        listing.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

/// `fetch_for_seeds` takes the fetcher by reference.
fn f_ref(f: &Fetcher) -> &Fetcher {
    f
}

#[tokio::test]
async fn signatures_refused_mid_fetch_are_renewed_once_for_every_reader() {
    let (fake, endpoint) = start_fake().await;
    // After the header read and a few planned ranges, every issued signature goes stale.
    fake.stale_after.store(5, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());
    let seeds = [0, 1, 2];
    let r = ranged(
        fetch_for_seeds(
            &f,
            REPO,
            "step1000",
            &params(8),
            &seeds,
            FetchMode::Ranges,
            0,
        )
        .await
        .unwrap(),
    );
    assert_identical(
        &r,
        &Checkpoint::open(&golden_step1000()).unwrap(),
        &params(8),
        &seeds,
    );
    assert_eq!(fake.generation.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.resolves_of("model.safetensors"),
        2,
        "the readers refused together renew once"
    );
    let refused = fake
        .seen()
        .iter()
        .filter(|s| s.cdn && s.path.ends_with("model.safetensors"))
        .count();
    assert!(refused > r.plan().requests + 1);
}

#[tokio::test]
async fn a_429_waits_out_its_window_and_costs_no_attempt() {
    let (fake, endpoint) = start_fake().await;
    // More 429s in a row than a request has attempts.
    fake.throttle.store(5, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());
    let whole = f.fetch_checkpoint(REPO, "step1000").await.unwrap();
    assert_eq!(
        std::fs::read(whole.dir.join("config.json")).unwrap(),
        fake.files["config.json"]
    );
    assert_eq!(fake.throttle.load(Ordering::SeqCst), 0);
    assert_eq!(whole.requests, 4 + 5, "{whole:?}");
}

#[tokio::test]
async fn a_429_naming_another_bucket_still_waits_out_the_window_it_names() {
    let (fake, endpoint) = start_fake().await;
    // Every resolve refused for a second, each answer naming the API bucket's window: the
    // resolves themselves are paced in the Resolvers bucket, which no answer names.
    *fake.throttle_as_api_until.lock().unwrap() =
        Some(std::time::Instant::now() + std::time::Duration::from_secs(1));
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());
    let whole = f.fetch_checkpoint(REPO, "step1000").await.unwrap();
    assert_eq!(
        std::fs::read(whole.dir.join("model.safetensors")).unwrap(),
        fake.files["model.safetensors"]
    );
    // Each request waited out the second once: one refusal each, not a loop of them.
    let refused = fake.refused.load(Ordering::SeqCst);
    assert!((1..=4).contains(&refused), "{refused} requests refused");
}

#[tokio::test]
async fn a_5xx_and_a_reset_mid_body_are_retried_and_the_download_resumes() {
    let (fake, endpoint) = start_fake().await;
    fake.fail.store(1, Ordering::SeqCst);
    fake.cut.store(1, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher_with_token(&endpoint, cache.path());
    let whole = f.fetch_checkpoint(REPO, "step1000").await.unwrap();
    let model = &fake.files["model.safetensors"];
    assert_eq!(
        std::fs::read(whole.dir.join("model.safetensors")).unwrap(),
        *model
    );
    let gets: Vec<Seen> = fake.seen().into_iter().filter(|s| s.cdn).collect();
    // The 503, the cut body, then the rest of the file from where the cut left it.
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[1].header("range"), None);
    assert_eq!(
        gets[2].header("range"),
        Some(format!("bytes={}-", model.len() / 2).as_str())
    );
    assert_eq!(
        whole.bytes_downloaded,
        (model.len() + fake.files["config.json"].len()) as u64
    );
}

#[tokio::test]
async fn a_mirror_that_refuses_form_fields_is_asked_with_json_from_then_on() {
    let (fake, endpoint) = start_fake().await;
    fake.json_only.store(true, Ordering::SeqCst);
    let resolver = Resolver::new(&HubSettings {
        endpoint: Some(endpoint),
        token: Some(TOKEN.to_string()),
        cache_dir: None,
    })
    .unwrap();
    for _ in 0..2 {
        let resolved = resolver.resolve(REPO, "step1000").await.unwrap();
        assert_eq!(resolved.commit, COMMIT);
        assert_eq!(
            resolved.weights_sha256,
            sha256(&fake.files["model.safetensors"])
        );
    }
    let listings: Vec<Option<String>> = fake
        .seen()
        .iter()
        .filter(|s| s.path.contains("/paths-info/"))
        .map(|s| s.header("content-type").map(str::to_string))
        .collect();
    let form = Some("application/x-www-form-urlencoded".to_string());
    let json = Some("application/json".to_string());
    assert_eq!(listings, [form, json.clone(), json]);
}
