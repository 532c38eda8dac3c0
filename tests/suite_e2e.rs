//! The suite's simulation in small: `scripts/simulate-suite.sh` runs two models × 10 steps
//! end to end through the virtual Hub under the real-Hub profile (redirects to a CDN, a free
//! account's rate limits), with a coordinator and two workers as separate processes; every
//! task is done, the exports are complete and the duplicate branches are not computed.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use neuromfa_coordinator::export::EXPORT_FILES;

#[test]
fn two_models_run_end_to_end_on_the_virtual_hub_under_reuse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/simulate-suite.sh"))
        .args(["2", "pythia-14m", "pythia-31m"])
        .env("NEUROMFA_BIN", support::cluster::binary())
        .env("NEUROMFA_SIM_DIR", work.path())
        .env(
            "NEUROMFA_SIM_VIRTUAL",
            root.join("tests/data/suite/two-small-models.toml"),
        )
        .env("NEUROMFA_SIM_FACTS", work.path().join("facts.jsonl"))
        .env(
            "NEUROMFA_SIM_STEPS",
            "[0, 1, 2, 4, 8, 16, 32, 64, 128, 256]",
        )
        .env("NEUROMFA_SIM_SEEDS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\ncoordinator: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(work.path().join("coordinator.log")).unwrap_or_default()
    );

    let exports = work.path().join("state/exports");
    for file in EXPORT_FILES {
        assert!(exports.join(file).is_file(), "exports/{file} is written");
    }
    assert!(work.path().join("state/report/report.html").is_file());

    // Per model and state, the tasks and what they duplicate.
    let mut states: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut reused = Vec::new();
    let mut tasks = csv::Reader::from_path(exports.join("tasks.csv")).unwrap();
    for row in tasks.deserialize::<BTreeMap<String, String>>() {
        let row = row.unwrap();
        *states
            .entry((row["model"].clone(), row["state"].clone()))
            .or_default() += 1;
        if !row["duplicate_of"].is_empty() {
            reused.push((row["step"].clone(), row["duplicate_of"].clone()));
        }
        assert!(
            !row["weights_sha256"].is_empty(),
            "every checkpoint resolved"
        );
    }
    let count = |model: &str, state: &str| {
        states
            .get(&(format!("EleutherAI/{model}"), state.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("pythia-14m", "done"), 20, "{states:?}");
    assert_eq!(count("pythia-31m", "done"), 16, "{states:?}");
    assert_eq!(count("pythia-31m", "skipped"), 4, "{states:?}");
    reused.sort();
    let step4 = |s: &str| (s.to_string(), "4".to_string());
    assert_eq!(reused, vec![step4("1"), step4("1"), step4("2"), step4("2")]);

    // Under reuse a duplicate is never fetched: no fetch of 31m's steps 1 and 2.
    let fetch = std::fs::read_to_string(exports.join("fetch.csv")).unwrap();
    assert_eq!(fetch.lines().count(), 1 + 36, "one row per computed task");
    assert!(!fetch
        .lines()
        .any(|l| l.starts_with("EleutherAI/pythia-31m,1,")
            || l.starts_with("EleutherAI/pythia-31m,2,")));

    // The summary names both models and a bound.
    assert!(stdout.contains("EleutherAI/pythia-14m"), "{stdout}");
    assert!(stdout.contains("EleutherAI/pythia-31m"), "{stdout}");
    assert!(stdout.contains("bounds it"), "{stdout}");
}
