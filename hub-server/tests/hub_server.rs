//! The loopback Hub server over real sockets: headers, ranges, errors, tokens, API routes,
//! and hf-hub's own client reading from it.

#[path = "../../hub/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use neuromfa_hub_server::{spawn, HubServerConfig, RunningHub};
use reqwest::StatusCode;

const REPO: &str = "EleutherAI/tiny";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `root/EleutherAI/tiny/{step0,step1}` with identical content; returns the model bytes.
fn fake_tree(root: &Path) -> (Vec<u8>, Vec<u8>) {
    let config = br#"{"model_type": "gpt_neox"}"#.to_vec();
    let model = pseudo_random(5000, 7);
    for rev in ["step0", "step1"] {
        write(root, &format!("{REPO}/{rev}/config.json"), &config);
        write(root, &format!("{REPO}/{rev}/model.safetensors"), &model);
    }
    (config, model)
}

fn url(hub: &RunningHub, path: &str) -> String {
    format!("{}/{path}", hub.endpoint())
}

/// The JSON answer to a GET of `url`.
async fn get_json<T: serde::de::DeserializeOwned>(c: &reqwest::Client, url: String) -> T {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

async fn head_commit(hub: &RunningHub, path: &str) -> String {
    let r = direct_client().head(url(hub, path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    header(&r, "x-repo-commit").unwrap().to_string()
}

#[tokio::test]
async fn head_reports_etag_commit_and_length() {
    let root = tempfile::tempdir().unwrap();
    let (_, model) = fake_tree(root.path());
    let hub = start(root.path(), None).await;
    let c = direct_client();

    let r = c
        .head(url(&hub, "EleutherAI/tiny/resolve/step0/model.safetensors"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "etag").unwrap(),
        format!("\"{}\"", sha256_hex(&model))
    );
    assert_eq!(header(&r, "content-length").unwrap(), "5000");
    assert_eq!(header(&r, "accept-ranges").unwrap(), "bytes");
    let commit = header(&r, "x-repo-commit").unwrap().to_string();
    assert_eq!(commit.len(), 40);
    assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()));
    // Anything that would send hf-hub down another path must be absent.
    for absent in [
        "x-xet-hash",
        "location",
        "content-encoding",
        "x-linked-size",
    ] {
        assert!(
            r.headers().get(absent).is_none(),
            "{absent} must not be sent"
        );
    }

    // One commit per revision, shared by its files, distinct between revisions with the
    // same content, and stable across restarts.
    assert_eq!(
        head_commit(&hub, "EleutherAI/tiny/resolve/step0/config.json").await,
        commit
    );
    let step1 = head_commit(&hub, "EleutherAI/tiny/resolve/step1/config.json").await;
    assert_ne!(step1, commit);
    hub.shutdown().await.unwrap();
    let hub = start(root.path(), None).await;
    assert_eq!(
        head_commit(&hub, "EleutherAI/tiny/resolve/step0/model.safetensors").await,
        commit
    );

    // A revision can be addressed by its commit id.
    let r = c
        .get(url(
            &hub,
            &format!("EleutherAI/tiny/resolve/{commit}/model.safetensors"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-repo-commit").unwrap(), commit);
    assert_eq!(r.bytes().await.unwrap().as_ref(), model.as_slice());
}

#[tokio::test]
async fn get_serves_whole_files_and_byte_ranges() {
    let root = tempfile::tempdir().unwrap();
    let (_, model) = fake_tree(root.path());
    // Bigger than one streaming chunk, to cover multi-chunk bodies and seeks.
    let big = pseudo_random(3 * 1024 * 1024 + 123, 11);
    write(root.path(), &format!("{REPO}/step0/big.bin"), &big);
    let hub = start(root.path(), None).await;
    let c = direct_client();
    let model_url = url(&hub, "EleutherAI/tiny/resolve/step0/model.safetensors");
    let len = model.len();

    let r = c.get(&model_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length").unwrap(), len.to_string());
    assert_eq!(r.bytes().await.unwrap().as_ref(), model.as_slice());

    let big_body = c
        .get(url(&hub, "EleutherAI/tiny/resolve/step0/big.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(big_body.as_ref() == big.as_slice(), "3 MiB body differs");

    // (Range header, first byte, last byte inclusive)
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=10-99", 10, 99),
        ("bytes=4000-", 4000, len - 1),
        ("bytes=-16", len - 16, len - 1),
        ("bytes=0-999999", 0, len - 1),
        ("bytes=4999-4999", 4999, 4999),
    ];
    for (range, first, last) in cases {
        let r = c
            .get(&model_url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, "content-range").unwrap(),
            format!("bytes {first}-{last}/{len}"),
            "{range}"
        );
        assert_eq!(
            header(&r, "content-length").unwrap(),
            (last - first + 1).to_string()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &model[first..=last],
            "{range}"
        );
    }
    let r = c
        .get(url(&hub, "EleutherAI/tiny/resolve/step0/big.bin"))
        .header("range", "bytes=2097100-2097200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[2097100..=2097200]);

    for bad in [format!("bytes={len}-"), "bytes=-0".to_string()] {
        let r = c
            .get(&model_url)
            .header("range", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(
            header(&r, "content-range").unwrap(),
            format!("bytes */{len}")
        );
    }
    // A malformed Range is ignored, as RFC 9110 asks.
    let r = c
        .get(&model_url)
        .header("range", "bytes=50-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), len);

    let stats = hub.stats();
    // Two whole files, six ranges, one ignored range; the 416s send no file content.
    assert_eq!(stats.file_bodies, 9);
    assert!(stats.file_body_bytes >= (len + big.len()) as u64);
}

#[tokio::test]
async fn missing_things_are_404_with_hub_error_codes() {
    let root = tempfile::tempdir().unwrap();
    fake_tree(root.path());
    write(root.path(), "secret.txt", b"top secret");
    write(root.path(), "EleutherAI/secret.txt", b"top secret");
    let hub = start(root.path(), None).await;
    let c = direct_client();
    let commit = head_commit(&hub, "EleutherAI/tiny/resolve/step0/config.json").await;

    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let r = c
            .request(
                method.clone(),
                url(&hub, "EleutherAI/tiny/resolve/step0/nope.bin"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method}");
        assert_eq!(header(&r, "x-error-code"), Some("EntryNotFound"));
        // Like the Hub, so that clients can cache the absence at this commit.
        assert_eq!(header(&r, "x-repo-commit"), Some(commit.as_str()));
    }
    let cases = [
        (
            "EleutherAI/tiny/resolve/step9/config.json",
            "RevisionNotFound",
        ),
        ("EleutherAI/nope/resolve/step0/config.json", "RepoNotFound"),
        ("Nobody/tiny/resolve/step0/config.json", "RepoNotFound"),
        (
            "EleutherAI/tiny/resolve/0123456789abcdef0123456789abcdef01234567/config.json",
            "RevisionNotFound",
        ),
    ];
    for (path, code) in cases {
        let r = c.get(url(&hub, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&r, "x-error-code"), Some(code), "{path}");
    }

    // Nothing outside a revision directory can be reached, encoded or not.
    for path in [
        "EleutherAI/tiny/resolve/step0/..%2F..%2F..%2Fsecret.txt",
        "EleutherAI/tiny/resolve/..%2F..%2F/secret.txt",
        "EleutherAI/tiny/resolve/step0/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "EleutherAI/..%2F/resolve/step0/secret.txt",
    ] {
        let r = c.get(url(&hub, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("top secret"), "{path} leaked a file");
    }
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let root = tempfile::tempdir().unwrap();
    fake_tree(root.path());
    let hub = start(root.path(), Some("s3cret")).await;
    let c = direct_client();
    let file = url(&hub, "EleutherAI/tiny/resolve/step0/config.json");
    let api = url(&hub, "api/models/EleutherAI/tiny/revision/step0");

    for target in [&file, &api] {
        let r = c.get(target).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no token: {target}");
        let r = c.get(target).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "wrong token: {target}"
        );
        let r = c.get(target).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "right token: {target}");
    }
    let r = c.head(&file).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.head(&file).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_routes_describe_revisions() {
    let root = tempfile::tempdir().unwrap();
    let (config, model) = fake_tree(root.path());
    write(root.path(), &format!("{REPO}/step0/sub/extra.bin"), b"xyz");
    let hub = start(root.path(), None).await;
    let c = direct_client();
    let commit = head_commit(&hub, "EleutherAI/tiny/resolve/step0/config.json").await;

    let info: serde_json::Value =
        get_json(&c, url(&hub, "api/models/EleutherAI/tiny/revision/step0")).await;
    assert_eq!(info["id"], REPO);
    assert_eq!(info["sha"], commit.as_str());
    let names: Vec<&str> = info["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rfilename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors", "sub/extra.bin"]);

    // Without a `main` branch the repository still exists.
    let r = c
        .get(url(&hub, "api/models/EleutherAI/tiny"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], REPO);

    let tree: Vec<serde_json::Value> =
        get_json(&c, url(&hub, "api/models/EleutherAI/tiny/tree/step0")).await;
    let find = |p: &str| tree.iter().find(|e| e["path"] == p).cloned();
    let m = find("model.safetensors").unwrap();
    assert_eq!(m["type"], "file");
    assert_eq!(m["size"], model.len());
    assert_eq!(m["lfs"]["oid"], sha256_hex(&model));
    assert_eq!(m["lfs"]["size"], model.len());
    assert_eq!(find("config.json").unwrap()["size"], config.len());
    assert_eq!(find("sub").unwrap()["type"], "directory");
    assert!(find("sub/extra.bin").is_none(), "not recursive by default");

    let tree: Vec<serde_json::Value> = c
        .get(url(
            &hub,
            "api/models/EleutherAI/tiny/tree/step0?recursive=true",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tree.iter().any(|e| e["path"] == "sub/extra.bin"));

    for (path, code) in [
        ("api/models/EleutherAI/nope/revision/step0", "RepoNotFound"),
        (
            "api/models/EleutherAI/tiny/revision/step9",
            "RevisionNotFound",
        ),
        ("api/models/EleutherAI/tiny/tree/step9", "RevisionNotFound"),
        (
            "api/models/EleutherAI/tiny/tree/step0/nope",
            "EntryNotFound",
        ),
    ] {
        let r = c.get(url(&hub, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&r, "x-error-code"), Some(code), "{path}");
    }
}

/// hf-hub 1.0's own calls against the server: the protocol is what the client expects.
#[tokio::test]
async fn hf_hub_client_understands_the_server() {
    let root = tempfile::tempdir().unwrap();
    let (_, model) = fake_tree(root.path());
    let hub = start(root.path(), None).await;
    let cache = tempfile::tempdir().unwrap();
    let client = hf_hub::HFClient::builder()
        .endpoint(hub.endpoint())
        .cache_dir(cache.path())
        .retry_max_attempts(0)
        .build()
        .unwrap();
    let repo = client.model("EleutherAI", "tiny");
    let commit = head_commit(&hub, "EleutherAI/tiny/resolve/step0/config.json").await;

    let bytes = repo
        .download_file_to_bytes()
        .filename("model.safetensors")
        .revision("step0")
        .range(100..200)
        .send()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), &model[100..200]);

    let meta = repo
        .get_file_metadata()
        .filepath("model.safetensors")
        .revision("step0")
        .send()
        .await
        .unwrap();
    assert_eq!(meta.etag, sha256_hex(&model));
    assert_eq!(meta.commit_hash, commit);
    assert_eq!(meta.file_size, model.len() as u64);
    assert!(meta.xet_hash.is_none());

    let info = repo.info().revision("step0").send().await.unwrap();
    let info = serde_json::to_value(&info).unwrap();
    assert_eq!(info["sha"], commit.as_str());

    assert!(repo
        .revision_exists()
        .revision("step1")
        .send()
        .await
        .unwrap());
    assert!(!repo
        .revision_exists()
        .revision("step9")
        .send()
        .await
        .unwrap());

    let path = repo
        .download_file()
        .filename("model.safetensors")
        .revision("step0")
        .send()
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), model);
    assert!(path.ends_with(format!("snapshots/{commit}/model.safetensors")));
}

#[tokio::test]
async fn ranged_reads_by_commit_never_serve_bytes_the_commit_did_not_have() {
    let root = tempfile::tempdir().unwrap();
    let (_, model) = fake_tree(root.path());
    let hub = start(root.path(), None).await;
    let c = direct_client();
    let commit = head_commit(&hub, &format!("{REPO}/resolve/step0/config.json")).await;
    let at_commit = url(&hub, &format!("{REPO}/resolve/{commit}/model.safetensors"));
    let get = |range: &'static str| c.get(&at_commit).header("range", range).send();

    // Served twice: the second read takes the pinned-file path.
    for _ in 0..2 {
        let r = get("bytes=100-199").await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &model[100..200]);
    }

    // The file changes in place (same length): its commit is gone, and its new bytes are
    // not passed off as the old commit's.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut changed = model.clone();
    changed[150] ^= 0xff;
    write(
        root.path(),
        &format!("{REPO}/step0/model.safetensors"),
        &changed,
    );
    let r = get("bytes=100-199").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{:?}", r.headers());

    // Under its new commit the new bytes are served.
    let new_commit = head_commit(&hub, &format!("{REPO}/resolve/step0/config.json")).await;
    assert_ne!(new_commit, commit);
    let r = c
        .get(url(
            &hub,
            &format!("{REPO}/resolve/{new_commit}/model.safetensors"),
        ))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &changed[100..200]);
}

/// The body of a GET of `url` (of `range`, when given).
async fn body(client: &reqwest::Client, url: &str, range: Option<&str>) -> Vec<u8> {
    let mut request = client.get(url);
    if let Some(range) = range {
        request = request.header(reqwest::header::RANGE, range);
    }
    request
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn throttled_bodies_take_at_least_size_over_rate() {
    let root = tempfile::tempdir().unwrap();
    let size = 1_000_000usize;
    write(
        root.path(),
        "org/big/main/blob.bin",
        &pseudo_random(size, 3),
    );
    let rate = 4_000_000u64; // 4 MB/s: 1 MB takes at least 0.25 s.
    let hub = spawn(
        HubServerConfig {
            root: root.path().to_path_buf(),
            throttle_bytes_per_sec: Some(rate),
            ..Default::default()
        },
        any_port(),
    )
    .await
    .unwrap();
    let client = direct_client();
    let url = format!("{}/org/big/resolve/main/blob.bin", hub.endpoint());
    // Warm the server's hash cache so only the transfer is timed.
    client.head(&url).send().await.unwrap();

    let started = Instant::now();
    let one_body = body(&client, &url, None).await;
    let one = started.elapsed();
    assert_eq!(one_body.len(), size);
    // What `n` bytes take at least: an idle link may start up to the throttle's slack
    // (2 ms, a timer tick) behind now.
    let floor_of =
        |n: usize| Duration::from_secs_f64(n as f64 / rate as f64) - Duration::from_millis(2);
    let floor = floor_of(size);
    // Lower bounds only: a loaded machine makes anything slower, never faster. That each
    // body is charged exactly its own length is the throttle's unit test.
    assert!(one >= floor, "{one:?} < {floor:?}");

    // The budget is shared: two bodies at once take twice as long. (After a pause, so the
    // link is idle and the measurement starts from an empty budget.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(body(&client, &url, None), body(&client, &url, None));
    let two = started.elapsed();
    assert_eq!(a.len() + b.len(), 2 * size);
    assert!(
        two >= floor_of(2 * size),
        "{two:?} < {:?}",
        floor_of(2 * size)
    );

    // Ranges are throttled by their own length.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let part = body(&client, &url, Some("bytes=0-199999")).await;
    assert_eq!(part.len(), 200_000);
    assert!(started.elapsed() >= floor_of(200_000));
}
