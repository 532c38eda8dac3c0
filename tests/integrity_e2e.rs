//! Steps that serve identical weights, found before computing, over the loopback Hub:
//! flagged in status and exports, computed once under `reuse`, left out of E under
//! `skip`, and reported by `neuromfa audit` with its exit code.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::cluster::*;
use support::demo_step;

const MODELS: &str = r#"
[[models]]
repo = "test-org/h64"
steps = [0, 64, 512]
"#;

/// step0 serves step512's weights, as an early branch of a published suite might.
fn publish_with_duplicate(hub: &Path) {
    publish(hub, "test-org/h64", "step0", &demo_step("h64", 512));
    publish(hub, "test-org/h64", "step64", &demo_step("h64", 64));
    publish(hub, "test-org/h64", "step512", &demo_step("h64", 512));
}

fn cluster_with_policy(policy: Option<&str>) -> Cluster {
    let cluster = Cluster::new(publish_with_duplicate, MODELS, 2, "");
    if let Some(policy) = policy {
        let spec = std::fs::read_to_string(&cluster.spec).unwrap();
        std::fs::write(&cluster.spec, format!("duplicates = \"{policy}\"\n{spec}")).unwrap();
    }
    cluster
}

#[test]
fn duplicates_are_flagged_in_status_and_exports_and_still_computed_under_warn() {
    let mut cluster = cluster_with_policy(None);
    cluster.start_coordinator_with(&[]);
    cluster.start_worker(TOKEN);
    let status = cluster.wait_status(Duration::from_secs(120), |s| s["done"] == 6);
    let flagged = status["duplicate_steps"].as_array().unwrap();
    assert_eq!(flagged.len(), 1, "{status}");
    assert_eq!(flagged[0]["step"], 0);
    assert_eq!(flagged[0]["duplicate_of"], 512);

    let out = Command::new(binary())
        .args(["status", &cluster.coordinator_url()])
        .env("NEUROMFA_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("test-org/h64 step 0 = step 512"), "{text}");

    cluster.coordinator.as_mut().unwrap().terminate();
    cluster
        .coordinator
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(30));
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    let hash = |step: &str| {
        tasks
            .iter()
            .find(|t| t["step"] == step)
            .map(|t| t["weights_sha256"].clone())
            .unwrap()
    };
    assert_eq!(hash("0"), hash("512"));
    assert_ne!(hash("0"), hash("64"));
    assert_eq!(hash("0").len(), 64);
    assert!(tasks
        .iter()
        .all(|t| t["state"] == "done" && (t["duplicate_of"] == "512") == (t["step"] == "0")));
    let aggregates = csv_rows(&cluster.export_file("aggregates.csv"));
    assert_eq!(aggregates.len(), 3);
    assert_eq!(aggregates[0]["duplicate_of"], "512");
    assert!(cluster
        .export_file("summary.md")
        .contains("Duplicated checkpoints"));
}

#[test]
fn reuse_computes_each_distinct_checkpoint_once() {
    let cluster = cluster_with_policy(Some("reuse"));
    let stdout = cluster.sweep_run(1);
    assert!(stdout.contains("2 skipped"), "{stdout}");
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    let states: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| (t["step"].as_str(), t["state"].as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("0", "skipped"),
            ("0", "skipped"),
            ("64", "done"),
            ("64", "done"),
            ("512", "done"),
            ("512", "done")
        ]
    );
    // The duplicate step takes its original's results.
    let aggregates = csv_rows(&cluster.export_file("aggregates.csv"));
    assert_eq!(aggregates.len(), 3);
    assert_eq!(aggregates[0]["step"], "0");
    assert_eq!(aggregates[0]["alpha0_mean"], aggregates[2]["alpha0_mean"]);
    assert_eq!(aggregates[0]["duplicate_of"], "512");
    let html = std::fs::read_to_string(cluster.state_dir.join("report/report.html")).unwrap();
    assert!(
        html.contains("step 0 serves the same weights as step 512"),
        "the report flags the duplicate"
    );
}

#[test]
fn skip_leaves_duplicates_out_of_the_aggregates_and_e() {
    let cluster = cluster_with_policy(Some("skip"));
    cluster.sweep_run(1);
    let aggregates = csv_rows(&cluster.export_file("aggregates.csv"));
    let steps: Vec<&str> = aggregates.iter().map(|a| a["step"].as_str()).collect();
    assert_eq!(steps, ["64", "512"]);
    // E is relative to the first step kept.
    assert_eq!(aggregates[0]["E_from_means"], "0.0");
    assert!(aggregates[1]["E_from_means"].parse::<f64>().unwrap() > 0.0);
}

fn audit(cluster: &Cluster, extra: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(["audit", "test-org/h64", "--hub-endpoint", &cluster.hub_url])
        .args(extra)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap()
}

#[test]
fn audit_prints_the_groups_and_its_exit_code_follows_the_rule() {
    let cluster = cluster_with_policy(None);
    let out = audit(&cluster, &["--steps", "0,64,512"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("DUPLICATE of step 512"), "{stdout}");
    assert!(stdout.contains("2 step(s): 0, 512"), "{stdout}");

    let out = audit(
        &cluster,
        &["--steps", "0,64,512", "--allow-duplicates", "--json"],
    );
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["steps"], serde_json::json!([0, 512]));

    let out = audit(&cluster, &["--steps", "64,512"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn audit_exits_1_when_steps_cannot_be_checked() {
    let cluster = cluster_with_policy(None);
    let audit_of = |repo: &str, steps: &str| {
        Command::new(binary())
            .args(["audit", repo, "--steps", steps])
            .args(["--hub-endpoint", &cluster.hub_url])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap()
    };
    // A repo that does not exist, and a step that does not exist in one that does.
    for (repo, steps, checked, unchecked) in [
        ("test-org/no-such-model", "0", "0 of 1", "1 of 1 step(s)"),
        ("test-org/h64", "64,999", "1 of 2", "1 of 2 step(s)"),
    ] {
        let out = audit_of(repo, steps);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{repo} {steps}: {stdout}\n{stderr}"
        );
        assert!(stderr.contains(unchecked), "{stderr}");
        assert!(
            stdout.contains(&format!("{checked} step(s) checked")),
            "{stdout}"
        );
    }
}
