//! Ranged fetching over real sockets: the loopback Hub (sometimes behind a misbehaving layer)
//! compared with the memory-mapped full checkpoint.

mod common;
mod ranged;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use common::*;
use neuromfa_common::synth::{write_checkpoint, Preset};
use neuromfa_common::{analyze_seed, AnalysisParams, Checkpoint, Error};
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::ranges::{
    fetch_for_seeds, fetch_for_seeds_with, plan_for_seeds, FetchMode, FetchedWeights, Link,
    RangeOptions, MAX_CONCURRENCY,
};
use neuromfa_hub::FetchError;
use neuromfa_hub_server::RunningHub;
use ranged::*;
use tokio::sync::{Notify, Semaphore};

const REPO: &str = "EleutherAI/tiny";
const REV: &str = "step1000";

fn golden_step1000() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden/tiny-neox/step1000")
}

#[tokio::test]
async fn ranges_give_bit_identical_results_to_the_full_checkpoint() {
    let served = serve_golden().await;
    let f = &served.fetcher;
    let mapped = Checkpoint::open(&golden_step1000()).unwrap();
    let seeds = [0, 1, 2, 3, 7];

    for (layer_sample, gap) in [(32, 4096), (32, 0), (16, 0), (16, 1 << 20)] {
        let weights = fetch_for_seeds(
            f,
            REPO,
            REV,
            &params(layer_sample),
            &seeds,
            FetchMode::Ranges,
            gap,
        )
        .await
        .unwrap();
        let r = ranged(weights);
        assert_eq!(r.seeds(), seeds);
        assert_identical(&r, &mapped, &params(layer_sample), &seeds);

        let plan = r.plan();
        let file_size = std::fs::metadata(golden_step1000().join("model.safetensors"))
            .unwrap()
            .len();
        assert_eq!(plan.file_bytes, file_size);
        assert!(plan.requests as u64 > 0);
        assert!((plan.requests as u64) < plan.elements, "{plan:?}");
        assert!(plan.needed_bytes <= plan.planned_bytes, "{plan:?}");
        assert!(plan.planned_bytes <= file_size, "{plan:?}");
        if gap == 0 {
            assert_eq!(plan.planned_bytes, plan.needed_bytes);
        }
        // Only the needed elements are held, not whole requests.
        assert_eq!(r.held_bytes(), plan.needed_bytes);
        let m = r.metrics();
        assert_eq!(m.mode, FetchMode::Ranges);
        assert!(m.bytes_downloaded >= plan.planned_bytes);
        assert_eq!(m.file_bytes, file_size);
    }

    // The full download through the Hub agrees too.
    let full = fetch_for_seeds(f, REPO, REV, &params(32), &seeds, FetchMode::Full, 0)
        .await
        .unwrap();
    assert!(matches!(full, FetchedWeights::Full(_)));
    assert_eq!(full.metrics().mode, FetchMode::Full);
    let full = full.open().unwrap();
    let r = ranged(
        fetch_for_seeds(f, REPO, REV, &params(32), &seeds, FetchMode::Ranges, 4096)
            .await
            .unwrap(),
    );
    assert_identical(&r, &*full, &params(32), &seeds);
}

#[tokio::test]
async fn metrics_count_what_the_server_saw() {
    let served = serve_golden().await;
    let (hub, f) = (&served.hub, &served.fetcher);
    let r = ranged(
        fetch_for_seeds(f, REPO, REV, &params(8), &[0, 1], FetchMode::Ranges, 256)
            .await
            .unwrap(),
    );
    let stats = hub.stats();
    let m = r.metrics();
    assert_eq!(u64::from(m.requests), stats.requests, "{m:?} {stats:?}");
    assert_eq!(m.bytes_downloaded, stats.file_body_bytes, "{m:?} {stats:?}");
    // One plain GET per planned request, plus config.json's and the header's; one HEAD,
    // the weight file's resolve.
    assert_eq!(
        stats.file_bodies as usize,
        r.plan().requests + 2,
        "{stats:?}"
    );
    assert_eq!(stats.head_requests, 1, "{stats:?}");
    assert_eq!(r.commit().len(), 40);
}

/// Shortest paths read most of every matrix: whatever the mode, the whole checkpoint comes,
/// with exactly the requests a plain full download makes.
#[tokio::test]
async fn shortest_path_analyses_fetch_whole_files() {
    let shortest = AnalysisParams {
        layer_sample: 8,
        distance: neuromfa_common::DistanceMode::shortest_path(),
        ..AnalysisParams::default()
    };
    let plain = serve_golden().await;
    let full = plain.fetcher.fetch_checkpoint(REPO, REV).await.unwrap();
    for mode in [FetchMode::Ranges, FetchMode::Auto] {
        let served = serve_golden().await;
        let fetched = fetch_for_seeds(&served.fetcher, REPO, REV, &shortest, &[0, 1], mode, 4096)
            .await
            .unwrap();
        let FetchedWeights::Full(whole) = &fetched else {
            panic!("{mode}: expected the whole checkpoint, got {fetched:?}");
        };
        assert_eq!(whole.files, full.files, "{mode}");
        assert_eq!(whole.requests, full.requests, "{mode}");
        assert_eq!(
            u64::from(whole.requests),
            served.hub.stats().requests,
            "{mode}"
        );
    }
}

/// The golden checkpoint split into two shards with an index.
fn write_sharded(dir: &Path) {
    let bytes = std::fs::read(golden_step1000().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.to_string(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        golden_step1000().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
}

#[tokio::test]
async fn sharded_checkpoints_are_read_across_shards() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(REPO).join(REV);
    std::fs::create_dir_all(&dir).unwrap();
    write_sharded(&dir);
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());
    let seeds = [0, 4, 5];

    let r = ranged(
        fetch_for_seeds(f, REPO, REV, &params(32), &seeds, FetchMode::Ranges, 512)
            .await
            .unwrap(),
    );
    let shards: Vec<(String, u64)> = r.files().map(|(n, s)| (n.to_string(), s)).collect();
    assert_eq!(shards.len(), 2, "{shards:?}");
    let shard_bytes: u64 = shards.iter().map(|(_, s)| s).sum();
    assert_eq!(r.plan().file_bytes, shard_bytes);
    assert!(r.plan().planned_bytes <= shard_bytes);
    // Same numbers as the original single file, and as the shards opened from disk.
    let single = Checkpoint::open(&golden_step1000()).unwrap();
    assert_identical(&r, &single, &params(32), &seeds);
    let on_disk = Checkpoint::open(&dir).unwrap();
    assert_identical(&r, &on_disk, &params(32), &seeds);
}

#[tokio::test]
async fn elements_outside_the_plan_are_errors_not_zeros() {
    let served = serve_golden().await;
    let f = &served.fetcher;
    let r = ranged(
        fetch_for_seeds(f, REPO, REV, &params(8), &[0], FetchMode::Ranges, 0)
            .await
            .unwrap(),
    );
    assert!(analyze_seed(&r, &params(8), 1000, 0).is_ok());
    let err = analyze_seed(&r, &params(8), 1000, 1).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("was not fetched"), "{text}");
    assert!(
        text.contains("EleutherAI/tiny@step1000/model.safetensors"),
        "{text}"
    );
}

#[tokio::test]
async fn non_finite_weights_give_the_same_error_as_the_mapped_file() {
    // The golden checkpoint with block 0's QKV weights all NaN.
    let bytes = std::fs::read(golden_step1000().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let qkv = "gpt_neox.layers.0.attention.query_key_value.weight";
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for (n, dtype, _, data) in &mut owned {
        if n == qkv {
            assert_eq!(*dtype, safetensors::Dtype::F16);
            for pair in data.chunks_mut(2) {
                pair.copy_from_slice(&half_nan());
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data).unwrap(),
            )
        })
        .collect();
    let local = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(views, None, &local.path().join("model.safetensors")).unwrap();
    std::fs::copy(
        golden_step1000().join("config.json"),
        local.path().join("config.json"),
    )
    .unwrap();

    let root = tempfile::tempdir().unwrap();
    install(root.path(), REPO, REV, local.path());
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());
    let r = ranged(
        fetch_for_seeds(f, REPO, REV, &params(32), &[3], FetchMode::Ranges, 4096)
            .await
            .unwrap(),
    );
    let mapped = Checkpoint::open(local.path()).unwrap();
    let from_ranges = analyze_seed(&r, &params(32), 1000, 3).err().unwrap();
    let from_map = analyze_seed(&mapped, &params(32), 1000, 3).err().unwrap();
    match (from_ranges, from_map) {
        (
            Error::NonFiniteWeight {
                path,
                tensor,
                row,
                col,
                value,
            },
            Error::NonFiniteWeight {
                tensor: t2,
                row: r2,
                col: c2,
                value: v2,
                ..
            },
        ) => {
            assert_eq!((tensor.as_str(), row, col), (t2.as_str(), r2, c2));
            assert_eq!(tensor, qkv);
            assert!(value.is_nan() && v2.is_nan());
            assert_eq!(
                path,
                PathBuf::from("EleutherAI/tiny@step1000/model.safetensors")
            );
        }
        other => panic!("{other:?}"),
    }
}

fn half_nan() -> [u8; 2] {
    0x7e00u16.to_le_bytes()
}

#[tokio::test]
async fn corrupt_headers_are_clear_permanent_errors() {
    let config = std::fs::read(golden_step1000().join("config.json")).unwrap();
    let golden = std::fs::read(golden_step1000().join("model.safetensors")).unwrap();
    let mut huge_header = golden.clone();
    huge_header[..8].copy_from_slice(&(golden.len() as u64).to_le_bytes());
    let mut bad_json = golden.clone();
    bad_json[8] = b'[';
    let truncated = golden[..golden.len() - 2].to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", pseudo_random(4096, 7), "not a valid safetensors"),
        ("huge-header", huge_header, "runs past the end"),
        ("bad-json", bad_json, "not a valid safetensors header"),
        ("truncated", truncated, "but the file is"),
    ];
    let root = tempfile::tempdir().unwrap();
    for (rev, bytes, _) in &cases {
        write(root.path(), &format!("{REPO}/{rev}/config.json"), &config);
        write(
            root.path(),
            &format!("{REPO}/{rev}/model.safetensors"),
            bytes,
        );
    }
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());
    for (rev, _, expected) in cases {
        let err = fetch_for_seeds(f, REPO, rev, &params(8), &[0], FetchMode::Ranges, 4096)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, FetchError::InvalidCheckpoint { .. }),
            "{rev}: {err:?}"
        );
        assert!(!err.is_transient(), "{rev}");
        let text = err.to_string();
        for part in [REPO, rev, "model.safetensors", expected] {
            assert!(text.contains(part), "{rev}: {text:?} lacks {part:?}");
        }
    }
}

/// A Hub serving the golden checkpoint, and a fetcher for it.
struct GoldenHub {
    _root: tempfile::TempDir,
    _cache: tempfile::TempDir,
    hub: RunningHub,
    fetcher: Fetcher,
}

async fn serve_golden() -> GoldenHub {
    let root = tempfile::tempdir().unwrap();
    install(root.path(), REPO, REV, &golden_step1000());
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&hub.endpoint(), cache.path());
    GoldenHub {
        _root: root,
        _cache: cache,
        hub,
        fetcher,
    }
}

/// A Hub serving the golden checkpoint behind `layer`, and a fetcher for it.
struct Served {
    _root: tempfile::TempDir,
    _cache: tempfile::TempDir,
    fetcher: Fetcher,
}

/// Fetches seed 0's ranges in `ranges` mode through a Hub behind `layer`, expecting failure.
async fn ranged_fetch_through<F, Fut>(layer: F) -> (FetchError, Served)
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let root = tempfile::tempdir().unwrap();
    install(root.path(), REPO, REV, &golden_step1000());
    let endpoint = start_with_layer(root.path(), layer).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&endpoint, cache.path());
    let err = fetch_for_seeds(
        &fetcher,
        REPO,
        REV,
        &params(8),
        &[0],
        FetchMode::Ranges,
        4096,
    )
    .await
    .err()
    .unwrap();
    let served = Served {
        _root: root,
        _cache: cache,
        fetcher,
    };
    (err, served)
}

/// Drops the `Range` header: the server answers 200 with the whole file.
async fn ignore_range(mut req: Request, next: Next) -> Response {
    req.headers_mut().remove(header::RANGE);
    next.run(req).await
}

/// Answers every ranged request one byte short (with a consistent `Content-Length`).
async fn one_byte_short(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let short = bytes.slice(..bytes.len() - 1);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(short.len()));
    Response::from_parts(parts, Body::from(short))
}

/// Answers ranged requests with the right length but a Content-Range one byte later
/// (a proxy that mangles ranges).
async fn shifted_content_range(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let shifted = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
            let (a, b) = range.split_once('-')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            Some(format!("bytes {}-{}/{total}", a + 1, b + 1))
        });
    if let Some(shifted) = shifted {
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&shifted).unwrap(),
        );
    }
    resp
}

#[tokio::test]
async fn an_answer_for_other_bytes_is_refused_not_used() {
    let (err, _) = ranged_fetch_through(shifted_content_range).await;
    assert!(
        matches!(err, FetchError::RangesUnsupported { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Content-Range"), "{err}");
}

#[tokio::test]
async fn a_server_that_ignores_range_is_detected_and_auto_falls_back() {
    let (err, served) = ranged_fetch_through(ignore_range).await;
    let f = &served.fetcher;
    assert!(
        matches!(err, FetchError::RangesUnsupported { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // Auto uses the whole file instead, and the numbers are still right.
    let options = RangeOptions {
        mode: FetchMode::Auto,
        merge_gap: Some(0),
        auto_max_share: 1.0,
        ..RangeOptions::default()
    };
    let auto = fetch_for_seeds_with(f, REPO, REV, &params(8), &[0], &options)
        .await
        .unwrap();
    assert!(matches!(auto, FetchedWeights::Full(_)), "{auto:?}");
    let full = auto.open().unwrap();
    let mapped = Checkpoint::open(&golden_step1000()).unwrap();
    assert_identical(&*full, &mapped, &params(8), &[0]);
}

#[tokio::test]
async fn a_short_answer_is_an_error() {
    let (err, _) = ranged_fetch_through(one_byte_short).await;
    match &err {
        FetchError::Integrity { check, .. } => assert_eq!(*check, "range length"),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(REPO) && text.contains(REV) && text.contains("model.safetensors"));
}

#[tokio::test]
async fn auto_picks_ranges_for_sparse_samples_and_full_for_dense_ones() {
    let root = tempfile::tempdir().unwrap();
    // A model big enough that a small sample is a small share of it (about 3 MB).
    let wide = Preset {
        name: "wide",
        hidden_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 1024,
        vocab_size: 128,
    };
    write_checkpoint(&wide, &root.path().join("EleutherAI/wide/step0"), 5).unwrap();
    install(root.path(), REPO, REV, &golden_step1000());
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());

    // A slow link, where bytes decide: fixed, so that the choice does not depend on how
    // fast this machine answers.
    let auto = RangeOptions {
        mode: FetchMode::Auto,
        merge_gap: Some(4096),
        link: Some(Link {
            round_trip: Duration::ZERO,
            bytes_per_sec: 10e6,
        }),
        ..RangeOptions::default()
    };
    let sparse = fetch_for_seeds_with(f, "EleutherAI/wide", "step0", &params(4), &[0, 1], &auto)
        .await
        .unwrap();
    let m = sparse.metrics();
    assert_eq!(m.mode, FetchMode::Ranges, "{m:?}");
    assert!(m.share() < 0.25, "{m:?}");
    let plan = plan_for_seeds(
        f,
        "EleutherAI/wide",
        "step0",
        &params(4),
        &[0, 1],
        Some(4096),
    )
    .await
    .unwrap();
    assert!(plan.share() < 0.25, "{plan:?}");
    let mapped = Checkpoint::open(&root.path().join("EleutherAI/wide/step0")).unwrap();
    let sparse = sparse.open().unwrap();
    assert_identical(&*sparse, &mapped, &params(4), &[0, 1]);

    // Half of every layer of the tiny model, merged by 4 KB gaps: most of the file.
    let plan = plan_for_seeds(f, REPO, REV, &params(32), &[0, 1, 2], Some(4096))
        .await
        .unwrap();
    assert!(plan.share() >= 0.25, "{plan:?}");
    let dense = fetch_for_seeds_with(f, REPO, REV, &params(32), &[0, 1, 2], &auto)
        .await
        .unwrap();
    let m = dense.metrics();
    assert_eq!(m.mode, FetchMode::Full, "{m:?}");
    // The full download, plus what reading the header cost.
    assert!(m.bytes_downloaded > m.file_bytes, "{m:?}");
    assert!(matches!(dense, FetchedWeights::Full(_)));

    // Once the files are cached, Auto reads them from disk without downloading weights.
    let again = fetch_for_seeds_with(f, "EleutherAI/wide", "step0", &params(4), &[0], &auto)
        .await
        .unwrap();
    assert_eq!(again.metrics().mode, FetchMode::Ranges);
    let cached = fetch_for_seeds_with(f, REPO, REV, &params(4), &[0], &auto)
        .await
        .unwrap();
    let m = cached.metrics();
    assert_eq!(m.mode, FetchMode::Full, "{m:?}");
    // Only config.json, whose answer names the commit the branch is at.
    let config = std::fs::metadata(golden_step1000().join("config.json")).unwrap();
    assert_eq!(m.bytes_downloaded, config.len(), "{m:?}");
    assert_eq!(m.requests, 1, "{m:?}");
}

/// Ranged GETs that reached [`gate_ranges`], and a wake-up for each.
static RANGED_GETS: AtomicUsize = AtomicUsize::new(0);
static RANGED_GET_ARRIVED: Notify = Notify::const_new();
/// Ranged GETs beyond this many wait for [`GATE`] to open.
const LET_THROUGH: usize = 32;
static GATE: Semaphore = Semaphore::const_new(0);

/// Counts ranged GETs; holds every one after the first [`LET_THROUGH`] until the gate opens.
async fn gate_ranges(req: Request, next: Next) -> Response {
    if req.headers().contains_key(header::RANGE) {
        let arrived = RANGED_GETS.fetch_add(1, Ordering::SeqCst) + 1;
        RANGED_GET_ARRIVED.notify_waiters();
        if arrived > LET_THROUGH {
            // Never closed: an error only if the gate were, and then the request just goes.
            let _ = GATE.acquire().await.map(|permit| permit.forget());
        }
    }
    next.run(req).await
}

#[tokio::test]
async fn an_abandoned_ranged_fetch_stops_reading() {
    let root = tempfile::tempdir().unwrap();
    install(root.path(), REPO, REV, &golden_step1000());
    let (endpoint, connections) = start_counting_connections(root.path(), gate_ranges).await;
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&endpoint, cache.path());
    // Merge gap 0: thousands of requests, MAX_CONCURRENCY at a time. Past the first
    // LET_THROUGH they wait at the gate, so the fetch cannot finish before it is dropped.
    let seeds = [0, 1, 2, 3];
    let p = params(8);
    let fetch = fetch_for_seeds(&f, REPO, REV, &p, &seeds, FetchMode::Ranges, 0);
    let held = async {
        loop {
            let arrived = RANGED_GET_ARRIVED.notified();
            if RANGED_GETS.load(Ordering::SeqCst) > LET_THROUGH {
                return;
            }
            arrived.await;
        }
    };
    tokio::select! {
        _ = fetch => panic!("the fetch finished past a closed gate"),
        () = held => {}
    }
    // The fetch is dropped, and the fetcher with the connections it read the layout on.
    // Open the gate for good: a reading thread still running would
    // now get its answers and go on through the thousands of requests left.
    drop(f);
    let at_drop = RANGED_GETS.load(Ordering::SeqCst);
    GATE.add_permits(Semaphore::MAX_PERMITS);
    // A stopped thread closes its connections; only then is the count final. (The bound
    // turns a hang into a failure; the test does not wait for it.)
    tokio::time::timeout(Duration::from_secs(60), connections.all_closed())
        .await
        .expect("the ranged reads kept their connections open after the fetch was dropped");
    let total = RANGED_GETS.load(Ordering::SeqCst);
    // At the drop at most MAX_CONCURRENCY requests were out; some may arrive later.
    assert!(
        total <= at_drop + MAX_CONCURRENCY,
        "ranged reads went on after the fetch was dropped: {at_drop} at the drop, {total} in all"
    );
}
