//! `neuromfa hub serve --like-hf` as a process: its flags reach the server (a CDN on the
//! port asked for, the quota, the control routes).

mod support;

use support::cluster::{port_of, Proc};
use support::stand_in;

/// One request without headers or body.
fn request(port: u16, method: &str, path: &str) -> (String, String) {
    stand_in::request(port, method, path, &[], "")
}

#[test]
fn like_hf_flags_reach_the_server() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("hub/org/model/main");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![7u8; 1000]).unwrap();
    let hub_dir = root.path().join("hub");
    let (mut hub, hub_url) = Proc::spawn_listening(
        &[
            "hub",
            "serve",
            hub_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--like-hf",
            "--cdn-listen",
            "127.0.0.1:0",
            "--resolvers-quota",
            "1",
            "--window-secs",
            "600",
            "--cdn-faults",
            "error_next=1,error_status=500",
        ],
        &[],
        root.path().join("hub.log"),
    )
    .unwrap();
    let hub_port = port_of(&hub_url);
    let cdn_line = hub.next_stdout_line().unwrap();
    let cdn_port = port_of(cdn_line.strip_prefix("cdn ").unwrap());
    let resolve = "/org/model/resolve/main/model.safetensors";
    let (head, _) = request(hub_port, "HEAD", resolve);
    assert!(head.starts_with("http/1.1 302"), "{head}");
    assert!(
        head.contains(&format!(
            "location: http://127.0.0.1:{cdn_port}/repos/org/model/"
        )),
        "{head}"
    );
    assert!(head.contains("ratelimit-policy: \"fixed window\";\"resolvers\";q=1;w=600"));
    let (head, _) = request(hub_port, "HEAD", resolve);
    assert!(head.starts_with("http/1.1 429"), "{head}");
    let (head, _) = request(cdn_port, "GET", "/repos/org/model/x?Expires=1&Signature=00");
    assert!(
        head.starts_with("http/1.1 500"),
        "the CDN's first answer fails: {head}"
    );
    let (_, stats) = request(hub_port, "GET", "/_stand-in/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["rate_limited"], 1);
    assert_eq!(stats["injected_errors"], 1);
}

#[test]
fn a_virtual_hub_is_precomputed_then_served() {
    let root = tempfile::tempdir().unwrap();
    let facts = root.path().join("facts.jsonl");
    let virtual_args = [
        "--virtual",
        "pythia",
        "--models",
        "pythia-14m",
        "--steps",
        "0,143000",
        "--facts",
        facts.to_str().unwrap(),
    ];
    let out = assert_cmd::Command::cargo_bin("neuromfa")
        .unwrap()
        .args(["hub", "precompute"])
        .args(virtual_args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("distinct files"), "{stderr}");
    let kept = std::fs::read_to_string(&facts).unwrap().lines().count();
    assert!(kept >= 3, "config.json and each step's weights: {kept}");

    let mut args = vec!["hub", "serve", "--listen", "127.0.0.1:0"];
    args.extend(virtual_args);
    let (_hub, url) = Proc::spawn_listening(&args, &[], root.path().join("hub.log")).unwrap();
    let port = port_of(&url);
    let (head, body) = request(
        port,
        "GET",
        "/api/models/EleutherAI/pythia-14m/revision/step0",
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(info["siblings"].as_array().unwrap().len() >= 2, "{info}");
    let (head, _) = request(
        port,
        "HEAD",
        "/EleutherAI/pythia-14m/resolve/step1000/config.json",
    );
    assert!(
        head.starts_with("http/1.1 404"),
        "step1000 is not served: {head}"
    );
    // Serving hashed nothing more.
    assert_eq!(
        std::fs::read_to_string(&facts).unwrap().lines().count(),
        kept
    );
}
