//! Shared helpers for the Hub client's and the Hub server's integration tests: checkpoint
//! trees on disk, hashing, a served tree.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use neuromfa_hub_server::{spawn, HubServerConfig, RunningHub};

use sha2::{Digest, Sha256};

/// The golden tiny GPT-NeoX checkpoint shipped with the project.
pub fn golden_step0() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden/tiny-neox/step0")
}

pub fn write(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic arbitrary bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Copies the golden checkpoint to `root/<repo>/<revision>/`.
pub fn install_golden(root: &Path, repo: &str, revision: &str) {
    let src = golden_step0();
    for f in ["config.json", "model.safetensors"] {
        let bytes = std::fs::read(src.join(f)).unwrap();
        write(root, &format!("{repo}/{revision}/{f}"), &bytes);
    }
}

/// An HTTP client that never uses a proxy, for talking to the loopback server directly.
pub fn direct_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client that shows redirects instead of following them (the real-Hub profile's).
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Serves `root` on a loopback port, requiring `token` when given.
pub async fn start(root: &Path, token: Option<&str>) -> RunningHub {
    spawn(
        HubServerConfig {
            root: root.to_path_buf(),
            token: token.map(str::to_string),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}
