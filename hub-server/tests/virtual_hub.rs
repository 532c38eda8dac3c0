//! The virtual Pythia hub through the real-Hub profile: revisions listed and resolved as
//! the Hub does, whole downloads verified against their hashes, duplicates detectable by
//! hash, and weights that move over training the way `synth`'s trajectory moves them.

#[path = "../../hub/tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::*;
use neuromfa_common::{analyze_seed, AnalysisParams, Checkpoint};
use neuromfa_hub_server::{spawn, Description, HfProfile, HubServerConfig, RunningHub, VirtualHub};
use reqwest::StatusCode;
use serde_json::Value;

const REPO: &str = "EleutherAI/pythia-14m";

/// The built-in suite restricted to pythia-14m at `steps`, served like huggingface.co.
async fn start(steps: &[u64]) -> RunningHub {
    let mut description = Description::pythia();
    description.restrict(&["pythia-14m".into()], steps).unwrap();
    let hub = VirtualHub::new(&description, None).unwrap();
    spawn(
        HubServerConfig {
            like_hf: Some(HfProfile::default()),
            virtual_hub: Some(hub),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// The revision's files as paths-info lists them (asked with form fields).
async fn listing(hub: &RunningHub, rev: &str) -> Vec<Value> {
    let names = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ];
    let form: Vec<(&str, &str)> = names.iter().map(|n| ("paths", *n)).collect();
    let r = direct_client()
        .post(format!(
            "{}/api/models/{REPO}/paths-info/{rev}",
            hub.endpoint()
        ))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Downloads `rev`'s checkpoint into `dir` through the redirects, checking each LFS file
/// against the sha256 its redirect names; returns the weights' hashes.
async fn download(hub: &RunningHub, rev: &str, dir: &Path) -> Vec<String> {
    let c = no_redirect_client();
    let mut files: Vec<String> = listing(hub, rev)
        .await
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    // Shards named by an index.
    for index in [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ] {
        if files.iter().any(|f| f == index) {
            let url = format!("{}/{REPO}/resolve/{rev}/{index}", hub.endpoint());
            let text = direct_client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let index: Value = serde_json::from_str(&text).unwrap();
            let mut shards: Vec<String> = index["weight_map"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            shards.sort();
            shards.dedup();
            files.extend(shards);
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut hashes = Vec::new();
    for file in files {
        let url = format!("{}/{REPO}/resolve/{rev}/{file}", hub.endpoint());
        let r = c.get(&url).send().await.unwrap();
        let bytes = if r.status() == StatusCode::FOUND {
            let sha = header(&r, "x-linked-etag")
                .unwrap()
                .trim_matches('"')
                .to_string();
            let location = header(&r, "location").unwrap().to_string();
            let bytes = c.get(location).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(
                sha256_hex(&bytes),
                sha,
                "{rev}/{file} verifies against its hash"
            );
            hashes.push(sha);
            bytes
        } else {
            assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT, "{file}");
            let pinned = header(&r, "location").unwrap().to_string();
            c.get(format!("{}{pinned}", hub.endpoint()))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        };
        std::fs::write(dir.join(&file), &bytes).unwrap();
    }
    hashes
}

#[tokio::test]
async fn revisions_resolve_and_download_as_from_the_hub() {
    let hub = start(&[0, 1000]).await;
    let c = no_redirect_client();
    let info: Value = direct_client()
        .get(format!("{}/api/models/{REPO}", hub.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["id"], REPO);
    assert_eq!(info["sha"].as_str().unwrap().len(), 40);

    let listed = listing(&hub, "step1000").await;
    assert_eq!(listed[0]["path"], "config.json");
    assert!(listed[0].get("lfs").is_none());
    let weights = listed.iter().find(|e| e.get("lfs").is_some()).unwrap();
    assert_eq!(weights["lfs"]["oid"].as_str().unwrap().len(), 64);

    // A range of the weights through the CDN, pinned to the commit.
    let path = weights["path"].as_str().unwrap();
    let r = c
        .head(format!("{}/{REPO}/resolve/step1000/{path}", hub.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        header(&r, "x-linked-etag").unwrap(),
        format!("\"{}\"", weights["lfs"]["oid"].as_str().unwrap())
    );
    let commit = header(&r, "x-repo-commit").unwrap().to_string();
    let r = c
        .get(format!("{}/{REPO}/resolve/{commit}/{path}", hub.endpoint()))
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").unwrap().to_string();
    let r = c
        .get(&location)
        .header("range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().len(), 8);

    // Whole downloads verify against their hashes, and open with our reader.
    let dir = tempfile::tempdir().unwrap();
    download(&hub, "step1000", dir.path()).await;
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.shape().hidden_size, 128);
    let stats = hub.stats();
    assert!(
        stats.redirects >= 2 && stats.cdn_body_bytes > 10_000_000,
        "{stats:?}"
    );
    assert_eq!(stats.rate_limited, 0);
}

#[tokio::test]
async fn weights_move_over_training_as_synths_trajectory_moves_them() {
    // Steps at the start, the middle and the end of the trajectory (t = 0, ½, 1).
    let hub = start(&[0, 512, 143_000]).await;
    let params = AnalysisParams::default();
    let mut points = Vec::new();
    for step in [0, 512, 143_000] {
        let dir = tempfile::tempdir().unwrap();
        download(&hub, &format!("step{step}"), dir.path()).await;
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let (mut alpha0, mut width) = (0.0, 0.0);
        for seed in 0..4 {
            let r = analyze_seed(&checkpoint, &params, 0, seed).unwrap().result;
            alpha0 += r.alpha0 / 4.0;
            width += r.width / 4.0;
        }
        points.push((alpha0, width));
    }
    assert!(
        points.windows(2).all(|w| w[1].0 < w[0].0),
        "α0 falls along it: {points:?}"
    );
    assert!(points[2].1 > points[0].1, "w widens: {points:?}");
}
