//! Fetching whole checkpoints from the loopback Hub into a temporary HF cache.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use common::*;
use neuromfa_common::{BlockTensor, Checkpoint};
use neuromfa_hub::fetch::{Fetcher, MAX_ATTEMPTS};
use neuromfa_hub::{FetchError, HubSettings};
use neuromfa_hub_server::{HubServer, HubServerConfig, RunningHub};

const REPO: &str = "EleutherAI/tiny";

fn fetcher(endpoint: &str, cache: &Path, token: Option<&str>) -> Fetcher {
    Fetcher::new(HubSettings {
        endpoint: Some(endpoint.to_string()),
        token: token.map(str::to_string),
        cache_dir: Some(cache.to_path_buf()),
    })
    .unwrap()
}

fn golden(file: &str) -> Vec<u8> {
    std::fs::read(golden_step0().join(file)).unwrap()
}

/// The server's commit for a revision, read from a HEAD.
async fn server_commit(hub: &RunningHub, repo: &str, rev: &str) -> String {
    let r = direct_client()
        .head(format!(
            "{}/{repo}/resolve/{rev}/config.json",
            hub.endpoint()
        ))
        .send()
        .await
        .unwrap();
    header(&r, "x-repo-commit").unwrap().to_string()
}

#[tokio::test]
async fn fetches_a_single_file_checkpoint_into_the_hf_cache() {
    let root = tempfile::tempdir().unwrap();
    install_golden(root.path(), REPO, "step0");
    install_golden(root.path(), REPO, "step1");
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&hub.endpoint(), cache.path(), None);

    let got = f.fetch_checkpoint(REPO, "step0").await.unwrap();
    let commit = server_commit(&hub, REPO, "step0").await;
    assert_eq!(got.commit, commit);
    assert_eq!(
        got.dir,
        cache
            .path()
            .join("models--EleutherAI--tiny/snapshots")
            .join(&commit)
    );
    for file in ["config.json", "model.safetensors"] {
        assert!(
            std::fs::read(got.dir.join(file)).unwrap() == golden(file),
            "{file} differs from the source"
        );
    }
    let names: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    for f in &got.files {
        let bytes = golden(&f.name);
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    }
    let total: u64 = got.files.iter().map(|f| f.size).sum();
    assert_eq!(got.bytes_downloaded, total);
    // GET config.json, the listing of the weight files, the resolve (HEAD) and GET of
    // model.safetensors.
    assert_eq!(got.requests, 4);
    assert_eq!((got.hub_requests.resolvers, got.hub_requests.api), (3, 1));
    let stats = hub.stats();
    assert_eq!(stats.requests, 4 + 1, "the fetch plus server_commit's HEAD");
    assert_eq!(stats.file_bodies, 2);
    assert_eq!(stats.file_body_bytes, total);

    // The analysis opens the snapshot directory as it is.
    let checkpoint = Checkpoint::open(&got.dir).unwrap();
    assert_eq!(
        checkpoint.mapped_bytes(),
        golden("model.safetensors").len() as u64
    );

    // Another revision with the same content: its own commit, the same blobs, no body of
    // the weights.
    let step1 = f.fetch_checkpoint(REPO, "step1").await.unwrap();
    assert_ne!(step1.commit, got.commit);
    let config_len = golden("config.json").len() as u64;
    assert_eq!(step1.bytes_downloaded, config_len);
    assert_eq!(
        step1.requests, 3,
        "config.json (naming the commit), the listing, the weights' HEAD"
    );
    assert_eq!(hub.stats().file_bodies, 3);
    assert_eq!(
        std::fs::read(step1.dir.join("model.safetensors")).unwrap(),
        golden("model.safetensors")
    );
}

#[tokio::test]
async fn a_cached_checkpoint_is_not_downloaded_again() {
    let root = tempfile::tempdir().unwrap();
    install_golden(root.path(), REPO, "step0");
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();

    let first = fetcher(&hub.endpoint(), cache.path(), None)
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap();
    assert!(first.bytes_downloaded > 0);
    let before = hub.stats();

    // A new Fetcher, as after a worker restart: only the cache carries over.
    let again = fetcher(&hub.endpoint(), cache.path(), None)
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap();
    let config_len = golden("config.json").len() as u64;
    assert_eq!(again.bytes_downloaded, config_len);
    assert_eq!(again.dir, first.dir);
    assert_eq!(again.commit, first.commit);
    assert_eq!(again.files, first.files);
    // Only the branch has to be resolved: one GET of config.json, whose answer names the
    // commit. The choice of weight files and the model at that commit are answered from
    // the cache.
    assert_eq!(again.requests, 1);
    let after = hub.stats();
    assert_eq!(after.requests - before.requests, 1);
    assert_eq!(after.file_bodies, before.file_bodies + 1);
    assert_eq!(after.file_body_bytes, before.file_body_bytes + config_len);
}

/// Splits the golden checkpoint's tensors over two safetensors shards plus an index.
fn install_sharded(root: &Path, repo: &str, revision: &str) -> Vec<(String, Vec<u8>)> {
    let model = golden("model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&model).unwrap();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let half = tensors.len() / 2;
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    let mut shards = Vec::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let bytes = safetensors::serialize(part.iter().map(|(n, v)| (n.clone(), v)), None).unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), names[i].into());
        }
        write(root, &format!("{repo}/{revision}/{}", names[i]), &bytes);
        shards.push((names[i].to_string(), bytes));
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": model.len() }, "weight_map": weight_map });
    write(
        root,
        &format!("{repo}/{revision}/model.safetensors.index.json"),
        index.to_string().as_bytes(),
    );
    write(
        root,
        &format!("{repo}/{revision}/config.json"),
        &golden("config.json"),
    );
    shards
}

#[tokio::test]
async fn a_sharded_checkpoint_fetches_every_shard() {
    let root = tempfile::tempdir().unwrap();
    let shards = install_sharded(root.path(), "EleutherAI/tiny-sharded", "step0");
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();

    let got = fetcher(&hub.endpoint(), cache.path(), None)
        .fetch_checkpoint("EleutherAI/tiny-sharded", "step0")
        .await
        .unwrap();
    let names: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
    );
    for (name, bytes) in &shards {
        assert!(
            std::fs::read(got.dir.join(name)).unwrap() == *bytes,
            "{name} differs"
        );
    }
    assert!(!got.dir.join("model.safetensors").exists());

    // The analysis reads the same weights from the shards as from the single file.
    let sharded = Checkpoint::open(&got.dir).unwrap();
    let single = Checkpoint::open(&golden_step0()).unwrap();
    for tensor in BlockTensor::ALL {
        assert_eq!(
            sharded.gather(0, tensor, &[0, 1, 2], &[0, 3]).unwrap(),
            single.gather(0, tensor, &[0, 1, 2], &[0, 3]).unwrap()
        );
    }
}

#[tokio::test]
async fn missing_repo_revision_or_file_is_a_permanent_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    install_golden(root.path(), REPO, "step0");
    write(
        root.path(),
        &format!("{REPO}/config-only/config.json"),
        b"{}",
    );
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&hub.endpoint(), cache.path(), None);

    let e = f.fetch_checkpoint(REPO, "step999").await.unwrap_err();
    assert!(matches!(e, FetchError::RevisionNotFound { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    for part in ["step999", REPO, "config.json"] {
        assert!(msg.contains(part), "{msg:?} should name {part}");
    }

    let e = f
        .fetch_checkpoint("EleutherAI/nope", "step0")
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::RepoNotFound { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("EleutherAI/nope"));

    let e = f.fetch_checkpoint(REPO, "config-only").await.unwrap_err();
    assert!(matches!(e, FetchError::FileNotFound { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    for part in ["model.safetensors", REPO, "config-only"] {
        assert!(msg.contains(part), "{msg:?} should name {part}");
    }

    let e = f.fetch_checkpoint("no-slash", "step0").await.unwrap_err();
    assert!(matches!(e, FetchError::InvalidRequest { .. }), "{e:?}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_server_that_is_down_is_a_transient_error() {
    // A port held without listening: connections to it are refused, and no other process
    // can start listening there meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = held.local_addr().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let e = fetcher(&format!("http://{addr}"), cache.path(), None)
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Transient { .. }), "{e:?}");
    assert!(e.is_transient());
    let msg = e.to_string();
    for part in [REPO, "step0", "config.json"] {
        assert!(msg.contains(part), "{msg:?} should name {part}");
    }
}

#[tokio::test]
async fn a_stalled_server_is_a_transient_error() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let e = fetcher(&format!("http://{addr}"), cache.path(), None)
        .with_stall_timeout(Duration::from_millis(500))
        .unwrap()
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("stalled"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    server.abort();
}

#[tokio::test]
async fn the_token_is_sent_and_a_missing_one_is_permanent() {
    let root = tempfile::tempdir().unwrap();
    install_golden(root.path(), REPO, "step0");
    let hub = start(root.path(), Some("hf_test_token")).await;

    let cache = tempfile::tempdir().unwrap();
    let got = fetcher(&hub.endpoint(), cache.path(), Some("hf_test_token"))
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(got.dir.join("model.safetensors")).unwrap(),
        golden("model.safetensors")
    );

    let cache = tempfile::tempdir().unwrap();
    let e = fetcher(&hub.endpoint(), cache.path(), Some("wrong"))
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap_err();
    assert!(
        matches!(e, FetchError::AccessDenied { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert!(e.to_string().contains("config.json"));
}

/// How the corrupting server damages `model.safetensors` bodies.
#[derive(Clone, Copy)]
enum Damage {
    /// Same length, different bytes: only the sha256 can tell.
    FlipBytes,
    /// Half the body.
    Truncate,
}

/// The real server, with a layer that damages every GET body of `model.safetensors` while
/// the HEAD keeps advertising the true size and ETag. Returns the endpoint and a GET counter.
async fn start_corrupting(root: &Path, damage: Damage) -> (String, Arc<AtomicUsize>) {
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    let corrupt = move |req: Request, next: Next| {
        let counter = counter.clone();
        async move {
            let target = req.method() == "GET" && req.uri().path().ends_with("/model.safetensors");
            let resp = next.run(req).await;
            if !target {
                return resp;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let (mut parts, body) = resp.into_parts();
            let mut bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap()
                .to_vec();
            match damage {
                Damage::FlipBytes => bytes.iter_mut().step_by(97).for_each(|b| *b ^= 0xff),
                Damage::Truncate => bytes.truncate(bytes.len() / 2),
            }
            parts.headers.remove("content-length");
            Response::from_parts(parts, Body::from(bytes))
        }
    };
    let server = HubServer::new(HubServerConfig {
        root: root.to_path_buf(),
        token: None,
        ..Default::default()
    })
    .unwrap();
    let app = server.router().layer(axum::middleware::from_fn(corrupt));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), gets)
}

async fn assert_corruption_rejected(damage: Damage, check: &str) {
    let root = tempfile::tempdir().unwrap();
    install_golden(root.path(), REPO, "step0");
    let (endpoint, gets) = start_corrupting(root.path(), damage).await;
    let cache = tempfile::tempdir().unwrap();

    let e = fetcher(&endpoint, cache.path(), None)
        .fetch_checkpoint(REPO, "step0")
        .await
        .unwrap_err();
    let FetchError::Integrity {
        check: got_check,
        expected,
        actual,
        ..
    } = &e
    else {
        panic!("expected an integrity error, got {e:?}");
    };
    assert_eq!(*got_check, check);
    assert_ne!(expected, actual);
    assert!(!e.is_transient());
    let model = golden("model.safetensors");
    if check == "sha256" {
        assert_eq!(*expected, sha256_hex(&model));
    } else {
        assert_eq!(*expected, model.len().to_string());
    }
    let msg = e.to_string();
    for part in [
        REPO,
        "step0",
        "model.safetensors",
        expected.as_str(),
        actual.as_str(),
    ] {
        assert!(msg.contains(part), "{msg:?} should name {part}");
    }
    assert_eq!(gets.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);

    // Nothing bad is left behind for a later fetch to pick up.
    let repo_dir = cache.path().join("models--EleutherAI--tiny");
    assert!(!repo_dir.join("blobs").join(sha256_hex(&model)).exists());
    let snapshots = std::fs::read_dir(repo_dir.join("snapshots")).unwrap();
    for snapshot in snapshots {
        let link = snapshot.unwrap().path().join("model.safetensors");
        assert!(
            link.symlink_metadata().is_err(),
            "{} left behind",
            link.display()
        );
    }
}

#[tokio::test]
async fn content_that_does_not_match_the_etag_is_rejected() {
    assert_corruption_rejected(Damage::FlipBytes, "sha256").await;
}

#[tokio::test]
async fn a_truncated_body_is_rejected() {
    assert_corruption_rejected(Damage::Truncate, "size").await;
}
