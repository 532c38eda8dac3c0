//! Sweeps over a loopback Hub serving PyTorch `.bin` checkpoints (the twins of the golden
//! tiny GPT-NeoX in `tests/data/bin`, laid out in Hub layout at test time): whole and by
//! ranges they export what the same sweep over the safetensors twins exports, `status`,
//! the exports and `audit` name the format, and corrupt archives fail their tasks at once
//! with the reason while the rest of the sweep completes.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cluster::*;
use support::data_dir;

const FINISH: Duration = Duration::from_secs(240);
const SEEDS: u32 = 3;

const TINY: &str = r#"
[[models]]
repo = "test-org/tiny"
steps = [0, 1000, 2000]
"#;

/// Each step of `TINY` as a `.bin` fixture (sharded, single, written by torch) and as its
/// safetensors twin.
fn twins() -> [(u64, PathBuf, PathBuf); 3] {
    let bin = |variant: &str| data_dir().join("bin").join(variant);
    let golden = |step: u64| data_dir().join(format!("golden/tiny-neox/step{step}"));
    [
        (0, bin("sharded/step0"), golden(0)),
        (1000, bin("single/step1000"), golden(1000)),
        (2000, bin("torch-save/step2000"), golden(2000)),
    ]
}

/// A sweep of `TINY` over a Hub serving the `.bin` fixtures (`bin`) or their twins, in
/// fetch `mode`, run to the end by `sweep run`.
fn swept(bin: bool, mode: &str) -> Cluster {
    let cluster = Cluster::new(
        |hub| {
            for (step, bin_dir, twin) in twins() {
                let source = if bin { bin_dir } else { twin };
                publish_all(hub, "test-org/tiny", &format!("step{step}"), &source);
            }
        },
        TINY,
        SEEDS,
        "",
    );
    cluster.set_fetch_mode(mode);
    let stdout = cluster.sweep_run(1);
    assert!(stdout.contains("9/9 done"), "{stdout}");
    cluster
}

/// An export's rows without the columns that describe the files rather than the weights.
fn without_file_columns(text: &str) -> Vec<BTreeMap<String, String>> {
    csv_rows(text)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .filter(|(k, _)| k != "weights_sha256" && k != "weights_format")
                .collect()
        })
        .collect()
}

/// The distinct values of `column` in an export.
fn column(text: &str, column: &str) -> Vec<String> {
    let mut values: Vec<String> = csv_rows(text)
        .into_iter()
        .map(|r| r[column].clone())
        .collect();
    values.sort();
    values.dedup();
    values
}

#[test]
fn bin_sweeps_whole_and_by_ranges_export_what_the_safetensors_twins_do() {
    let reference = swept(false, "full");
    let mut bin = Vec::new();
    for mode in ["full", "ranges"] {
        let cluster = swept(true, mode);
        assert_eq!(
            cluster.export_file("spectra.csv"),
            reference.export_file("spectra.csv"),
            "{mode}"
        );
        for file in ["aggregates.csv", "tasks.csv"] {
            assert_eq!(
                without_file_columns(&cluster.export_file(file)),
                without_file_columns(&reference.export_file(file)),
                "{mode} {file}"
            );
            assert_eq!(
                column(&cluster.export_file(file), "weights_format"),
                ["pytorch-bin"]
            );
            assert_eq!(
                column(&reference.export_file(file), "weights_format"),
                ["safetensors"]
            );
        }
        assert_eq!(
            column(&cluster.export_file("fetch.csv"), "fetch_mode"),
            [mode]
        );
        let json: serde_json::Value =
            serde_json::from_str(&cluster.export_file("aggregates.json")).unwrap();
        assert!(json
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["weights_format"] == "pytorch-bin"));
        assert!(cluster
            .export_file("summary.md")
            .contains("| pytorch-bin |"));
        bin.push(cluster);
    }

    // audit names each step's format.
    for (cluster, format) in [(&reference, "safetensors"), (&bin[0], "pytorch-bin")] {
        let out = std::process::Command::new(binary())
            .args(["audit", "test-org/tiny", "--steps", "0,1000,2000"])
            .args(["--hub-endpoint", &cluster.hub_url])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert_eq!(stdout.matches(format).count(), 3, "{stdout}");
    }
}

/// Steps of `test-org/bad`: a good sharded `.bin` at step 0, then one bad archive per step,
/// each with the reason its tasks must fail with.
fn bad_steps() -> Vec<(u64, &'static str, &'static str)> {
    vec![
        (1, "deflated", "is compressed (method 8)"),
        (2, "unknown-global", "`__builtin__.eval`"),
        (3, "wrong-dtype", "has dtype LongStorage"),
        (4, "truncated", "no end-of-central-directory record"),
    ]
}

/// A `.bin` cut to two thirds of its length, as an interrupted upload leaves it.
fn truncated_checkpoint(dir: &Path) -> PathBuf {
    let good = data_dir().join("bin/single/step1000");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(good.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(good.join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    dir.to_path_buf()
}

fn bad_cluster(mode: &str) -> Cluster {
    let cluster = Cluster::new(
        |hub| {
            let good = data_dir().join("bin/sharded/step0");
            publish_all(hub, "test-org/bad", "step0", &good);
            for (step, case, _) in bad_steps() {
                let source = match case {
                    "truncated" => truncated_checkpoint(&hub.join("../truncated")),
                    case => data_dir().join(format!("bin/bad/{case}/step0")),
                };
                publish_all(hub, "test-org/bad", &format!("step{step}"), &source);
            }
        },
        "[[models]]\nrepo = \"test-org/bad\"\nsteps = [0, 1, 2, 3, 4]\n",
        2,
        "",
    );
    cluster.set_fetch_mode(mode);
    cluster
}

#[test]
fn corrupt_bin_checkpoints_fail_their_tasks_at_once_with_the_reason_and_the_rest_completes() {
    for mode in ["full", "ranges"] {
        let mut cluster = bad_cluster(mode);
        // Kept running after the grid is done, so its last status can be read.
        cluster.start_coordinator_with(&[]);
        cluster.start_worker(TOKEN);
        let status = cluster.wait_status(FINISH, |s| {
            s["pending"].as_u64() == Some(0) && s["leased"].as_u64() == Some(0)
        });
        assert_eq!(status["done"], 2, "{mode}: {status}");
        let failures = status["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 8, "{mode}: {status}");
        for f in failures {
            let step = f["step"].as_u64().unwrap();
            let (_, case, reason) = bad_steps()
                .into_iter()
                .find(|(s, ..)| *s == step)
                .unwrap_or_else(|| panic!("{mode}: step {step} failed: {f}"));
            assert_eq!(f["attempts"], 1, "{mode} {case}: failed at once: {f}");
            let error = f["error"].as_str().unwrap();
            assert!(error.contains(reason), "{mode} {case}: {error}");
        }
        let model = &status["models"][0];
        assert_eq!(model["weights_formats"]["pytorch-bin"], 5, "{status}");
        let out = std::process::Command::new(binary())
            .args(["status", &cluster.coordinator_url()])
            .env("NEUROMFA_TOKEN", TOKEN)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("weights: pytorch-bin (5 steps)"), "{text}");

        cluster.coordinator.as_ref().unwrap().terminate();
        cluster.wait_finished(FINISH);
        // Nothing stored for a failed task.
        let tasks = csv_rows(&cluster.export_file("tasks.csv"));
        assert_eq!(tasks.len(), 10);
        for t in &tasks {
            let failed = t["step"] != "0";
            assert_eq!(t["state"] == "failed", failed, "{mode}: {t:?}");
            assert_eq!(t["alpha0"].is_empty(), failed, "{mode}: {t:?}");
        }
        let aggregates = csv_rows(&cluster.export_file("aggregates.csv"));
        let steps: Vec<&str> = aggregates.iter().map(|a| a["step"].as_str()).collect();
        assert_eq!(steps, ["0"], "{mode}");
        assert_eq!(
            csv_rows(&cluster.export_file("fetch.csv")).len(),
            2,
            "{mode}"
        );
    }
}
