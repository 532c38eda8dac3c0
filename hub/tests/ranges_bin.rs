//! PyTorch `.bin` checkpoints from the loopback Hub, the `.bin` twins of the golden tiny
//! GPT-NeoX (`tests/data/bin`): read by ranges with the request pattern the stages promise,
//! bit-identical to the mapped files and to the safetensors twins; the format chosen from the
//! revision's listing; bad archives refused with the mapped reader's reason.

mod common;
mod ranged;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use common::*;
use neuromfa_common::checkpoint::{TORCH_INDEX_FILE, TORCH_SINGLE_FILE};
use neuromfa_common::torch::zip::{self, Tail};
use neuromfa_common::torch::Archive;
use neuromfa_common::{BlockTensor, Checkpoint, WeightFormat};
use neuromfa_hub::ranges::{fetch_for_seeds, FetchMode, FetchedWeights};
use neuromfa_hub::resolve::Resolver;
use neuromfa_hub::{FetchError, HubSettings};
use ranged::*;

const REPO: &str = "EleutherAI/tiny";

/// The `.bin` fixture `variant` (e.g. `single/step1000`) of `tests/data/bin`.
fn bin_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/bin")
        .join(variant)
}

/// The golden safetensors checkpoint at `step`, every `.bin` fixture's twin.
fn golden(step: u64) -> PathBuf {
    golden_step0().with_file_name(format!("step{step}"))
}

/// Each `.bin` fixture, its revision, and its safetensors twin.
fn twins() -> [(PathBuf, &'static str, PathBuf); 3] {
    [
        (bin_dir("single/step1000"), "step1000", golden(1000)),
        (bin_dir("sharded/step0"), "step0", golden(0)),
        (bin_dir("torch-save/step2000"), "step2000", golden(2000)),
    ]
}

/// Ranged GETs the Hub answered: (file, first byte, one past the last).
type Seen = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// Serves `root`, recording every ranged GET in the returned list.
async fn serve_recording(root: &Path) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let layer = move |req: Request, next: Next| {
        let record = record.clone();
        async move {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()? + 1)));
            if let Some((start, end)) = range {
                let file = req
                    .uri()
                    .path()
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                record.lock().unwrap().push((file, start, end));
            }
            next.run(req).await
        }
    };
    (start_with_layer(root, layer).await, seen)
}

/// The archive of a local `.bin` file.
fn archive(path: &Path) -> Archive {
    let bytes = std::fs::read(path).unwrap();
    let Ok(Tail::Directory(directory)) = zip::parse_tail(&bytes, 0, bytes.len() as u64) else {
        panic!("{} holds its directory", path.display())
    };
    Archive::new(directory).unwrap()
}

/// Distinct storages of the needed tensors in each file of the checkpoint at `dir`.
fn needed_storages(dir: &Path) -> Vec<(String, usize)> {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let mut per_file: Vec<(String, Vec<u64>)> = Vec::new();
    for block in 0..checkpoint.shape().num_blocks {
        for tensor in BlockTensor::ALL {
            let layout = checkpoint.layout(block, tensor).unwrap();
            // A storage's data starts 64-byte aligned after its own header: tensors sharing
            // one lie in the same 64-byte-aligned span, so the entry is told by the offset
            // of the entry holding it.
            let entry_at = archive(&dir.join(&layout.file))
                .directory
                .entries
                .iter()
                .filter(|e| e.local_header_offset < layout.offset)
                .map(|e| e.local_header_offset)
                .max()
                .unwrap();
            match per_file.iter_mut().find(|(f, _)| *f == layout.file) {
                Some((_, entries)) if !entries.contains(&entry_at) => entries.push(entry_at),
                Some(_) => {}
                None => per_file.push((layout.file.clone(), vec![entry_at])),
            }
        }
    }
    per_file.into_iter().map(|(f, e)| (f, e.len())).collect()
}

#[tokio::test]
async fn bin_checkpoints_by_ranges_equal_the_mapped_files_and_read_only_what_is_planned() {
    let root = tempfile::tempdir().unwrap();
    for (dir, rev, _) in twins() {
        install(root.path(), REPO, rev, &dir);
    }
    let (endpoint, seen) = serve_recording(root.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&endpoint, cache.path());
    let seeds = [0, 1, 2];
    for (dir, rev, twin) in twins() {
        seen.lock().unwrap().clear();
        // No merge gap: on a model this small, 4 KiB would join most rows.
        let weights = fetch_for_seeds(f, REPO, rev, &params(8), &seeds, FetchMode::Ranges, 0)
            .await
            .unwrap();
        let FetchedWeights::Ranged(r) = weights else {
            panic!("{rev}: expected a ranged fetch")
        };
        assert_identical(&r, &Checkpoint::open(&dir).unwrap(), &params(8), &seeds);
        assert_identical(&r, &Checkpoint::open(&twin).unwrap(), &params(8), &seeds);

        // Per file: one suffix range for the tail, one range for data.pkl and the byte
        // order, one small range per needed storage; then only the planned requests.
        let seen = seen.lock().unwrap().clone();
        let mut layout_reads = 0;
        for (file, storages) in needed_storages(&dir) {
            let size = std::fs::metadata(dir.join(&file)).unwrap().len();
            let reads: Vec<(u64, u64)> = seen
                .iter()
                .filter(|(f, ..)| *f == file)
                .map(|&(_, s, e)| (s, e))
                .collect();
            let tail = (size.saturating_sub(zip::TAIL_GUESS), size);
            assert_eq!(reads.iter().filter(|&&r| r == tail).count(), 1, "{file}");
            let pickle = archive(&dir.join(&file)).pickle_span().unwrap();
            let pickle_reads = reads.iter().filter(|r| r.0 == pickle.start).count();
            assert_eq!(pickle_reads, 1, "{rev} {file}: {reads:?}");
            layout_reads += 2 + storages;
        }
        let plan = r.plan();
        assert_eq!(plan.layout_requests, layout_reads, "{rev}: {plan:?}");
        assert_eq!(seen.len(), layout_reads + plan.requests, "{rev}: {seen:?}");
        let ranged_bytes: u64 = seen.iter().map(|(_, s, e)| e - s).sum();
        assert_eq!(
            ranged_bytes,
            plan.layout_bytes + plan.planned_bytes,
            "{rev}: {plan:?}"
        );
        assert_eq!(plan.planned_bytes, plan.needed_bytes, "{rev}: {plan:?}");
        assert!(plan.share() < 0.05, "{rev}: {plan:?}");
    }
}

#[tokio::test]
async fn full_fetches_download_only_the_bin_files_and_read_them_like_the_twin() {
    let root = tempfile::tempdir().unwrap();
    for (dir, rev, _) in twins() {
        install(root.path(), REPO, rev, &dir);
    }
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());
    for (dir, rev, twin) in twins() {
        let whole = f.fetch_checkpoint(REPO, rev).await.unwrap();
        assert_eq!(whole.weights.format, WeightFormat::PytorchBin, "{rev}");
        let mut names: Vec<&str> = whole.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        let mut expected: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n == "config.json" || n.ends_with(".bin") || n == TORCH_INDEX_FILE)
            .collect();
        expected.sort_unstable();
        assert_eq!(names, expected, "{rev}");
        let weights = FetchedWeights::Full(whole.clone());
        assert_eq!(
            weights.metrics().file_bytes,
            whole.weight_bytes(),
            "{rev}: the index is not a weight file"
        );
        let opened = weights.open().unwrap();
        assert_identical(
            &*opened,
            &Checkpoint::open(&twin).unwrap(),
            &params(16),
            &[0, 1],
        );
    }
}

/// sha256 of a local file.
fn sha256_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[tokio::test]
async fn the_listing_chooses_safetensors_first_and_the_resolver_hashes_bin_shards_alike() {
    let root = tempfile::tempdir().unwrap();
    // Both formats on one branch: the safetensors file is read, and only it downloaded.
    install(root.path(), REPO, "both", &golden(1000));
    let bin = std::fs::read(bin_dir("single/step1000").join(TORCH_SINGLE_FILE)).unwrap();
    write(
        root.path(),
        &format!("{REPO}/both/{TORCH_SINGLE_FILE}"),
        &bin,
    );
    install(root.path(), REPO, "sharded", &bin_dir("sharded/step0"));
    install(root.path(), REPO, "single", &bin_dir("single/step1000"));
    write(root.path(), &format!("{REPO}/none/config.json"), b"{}");
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());

    let whole = f.fetch_checkpoint(REPO, "both").await.unwrap();
    let names: Vec<&str> = whole.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    let FetchedWeights::Ranged(r) =
        fetch_for_seeds(f, REPO, "both", &params(8), &[0], FetchMode::Ranges, 4096)
            .await
            .unwrap()
    else {
        panic!("expected a ranged fetch")
    };
    let files: Vec<&str> = r.files().map(|(n, _)| n).collect();
    assert_eq!(files, ["model.safetensors"]);

    let resolver = Resolver::new(&HubSettings {
        endpoint: Some(hub.endpoint()),
        ..HubSettings::default()
    })
    .unwrap();
    let both = resolver.resolve(REPO, "both").await.unwrap();
    assert_eq!(both.format, WeightFormat::Safetensors);
    assert_eq!(
        both.weights_sha256,
        sha256_of(&golden(1000).join("model.safetensors"))
    );
    let single = resolver.resolve(REPO, "single").await.unwrap();
    assert_eq!(single.format, WeightFormat::PytorchBin);
    assert_eq!(
        single.weights_sha256,
        sha256_of(&bin_dir("single/step1000").join(TORCH_SINGLE_FILE))
    );
    // Sharded: sha256 of the sorted `name:sha256` lines, as for safetensors shards.
    let sharded = resolver.resolve(REPO, "sharded").await.unwrap();
    assert_eq!(sharded.format, WeightFormat::PytorchBin);
    let lines: String = (1..=3)
        .map(|i| {
            let name = format!("pytorch_model-{i:05}-of-00003.bin");
            let sha = sha256_of(&bin_dir("sharded/step0").join(&name));
            format!("{name}:{sha}\n")
        })
        .collect();
    assert_eq!(sharded.weights_sha256, sha256_hex(lines.as_bytes()));
    assert_eq!(sharded.weights.files.len(), 3);

    // Neither format: resolution and fetching both say what was looked for.
    let err = resolver.resolve(REPO, "none").await.unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    for part in [
        "none",
        "not found",
        "model.safetensors",
        "pytorch_model.bin.index.json",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    let err = f.fetch_checkpoint(REPO, "none").await.unwrap_err();
    assert!(matches!(err, FetchError::FileNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(TORCH_SINGLE_FILE), "{err}");
}

/// Every bad archive, and a `.bin` cut short as an interrupted upload would leave it.
fn bad_checkpoints(root: &Path) -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(bin_dir("bad"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.path().join("step0"))
        })
        .collect();
    let truncated = root.join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    let good = bin_dir("single/step1000");
    std::fs::copy(good.join("config.json"), truncated.join("config.json")).unwrap();
    let bytes = std::fs::read(good.join(TORCH_SINGLE_FILE)).unwrap();
    std::fs::write(
        truncated.join(TORCH_SINGLE_FILE),
        &bytes[..bytes.len() * 2 / 3],
    )
    .unwrap();
    cases.push(("truncated".to_string(), truncated));
    cases.sort();
    cases
}

#[tokio::test]
async fn bad_archives_fail_ranged_fetches_with_the_mapped_readers_reason() {
    let local = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let cases = bad_checkpoints(local.path());
    for (case, dir) in &cases {
        install(root.path(), REPO, case, dir);
    }
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = &fetcher(&hub.endpoint(), cache.path());
    assert_eq!(cases.len(), 9);
    for (case, dir) in &cases {
        let Err(mapped) = Checkpoint::open(dir) else {
            panic!("{case}: the mapped reader opened it")
        };
        // The mapped reader's message after its path: the reason itself.
        let mapped = mapped.to_string();
        let reason = mapped
            .split_once(&format!("{TORCH_SINGLE_FILE}: "))
            .map_or(mapped.as_str(), |(_, reason)| reason);
        let err = fetch_for_seeds(f, REPO, case, &params(8), &[0], FetchMode::Ranges, 4096)
            .await
            .err()
            .unwrap_or_else(|| panic!("{case}: fetched"));
        assert!(
            matches!(err, FetchError::InvalidCheckpoint { .. }),
            "{case}: {err:?}"
        );
        assert!(!err.is_transient(), "{case}");
        let text = err.to_string();
        assert!(
            text.contains(reason) && text.contains(case) && text.contains(TORCH_SINGLE_FILE),
            "{case}: {text:?} lacks {reason:?}"
        );
    }
}
