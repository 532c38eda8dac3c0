//! Loopback fetches and proxy environment variables. This binary holds a single test
//! because it changes the process environment.

mod common;

use common::*;
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::HubSettings;
use neuromfa_hub_server::{spawn, HubServerConfig};

#[test]
fn loopback_fetches_never_go_through_a_proxy() {
    // Set before any runtime thread exists. Port 9 (discard) on loopback: a request sent to
    // this "proxy" fails, so a successful fetch below proves the proxy was bypassed.
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(var, "http://127.0.0.1:9");
    }
    for var in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(var);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        install_golden(root.path(), "EleutherAI/tiny", "step0");
        let hub = spawn(
            HubServerConfig {
                root: root.path().to_path_buf(),
                token: None,
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let settings = HubSettings {
            endpoint: Some(hub.endpoint()),
            token: None,
            cache_dir: Some(cache.path().to_path_buf()),
        };

        // Every request goes through the fetcher's own client, which never sends loopback
        // traffic through a proxy: no NO_PROXY needed.
        let got = Fetcher::new(settings)
            .unwrap()
            .fetch_checkpoint("EleutherAI/tiny", "step0")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(got.dir.join("model.safetensors")).unwrap(),
            std::fs::read(golden_step0().join("model.safetensors")).unwrap()
        );
        hub.shutdown().await.unwrap();
    });
}
