//! Live status and `aggregates.csv` count the same points for every step and take `E`
//! relative to the same step, under each duplicate policy: one rule serves both.

mod support;

use std::path::Path;

use neuromfa_common::WeightFormat;
use neuromfa_coordinator::{export, OpenMode, SweepSpec, SweepState, TaskMetrics};
use support::{decide, resolved, result};

/// `org/a` at steps 0, 10, 20 with 3 seeds; step 0 will serve step 20's weights.
fn spec(dir: &Path, policy: &str) -> SweepSpec {
    let body = format!("duplicates = \"{policy}\"\nseeds = 3\nsteps = [0, 10, 20]\n");
    support::spec(dir, &(body + "[[models]]\nrepo = \"org/a\"\n"))
}

/// `(step, seeds, α0 mean, w mean, E from means, E per seed)` of one aggregate row.
type Row = (u64, usize, f64, f64, Option<f64>, Option<f64>);
/// What `status` shows last: the latest step and its `E`.
type Latest = (Option<u64>, Option<f64>);

/// A sweep under `policy` run to the end; its live rows, its status's latest step and
/// `E`, and the rows of its `aggregates.csv`.
fn run(policy: &str) -> (Vec<Row>, Latest, Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), policy), OpenMode::Resume).unwrap();
    state
        .transaction(|s| {
            s.record_resolution(
                "org/a",
                0,
                "late",
                &resolved("c0", WeightFormat::Safetensors),
            )?;
            s.record_resolution(
                "org/a",
                10,
                "mid",
                &resolved("c10", WeightFormat::Safetensors),
            )?;
            s.record_resolution(
                "org/a",
                20,
                "late",
                &resolved("c20", WeightFormat::Safetensors),
            )?;
            s.apply_duplicate_policy()
        })
        .unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    loop {
        let leases = decide(&mut state, |d| d.lease(&w, 8, 1));
        if leases.is_empty() {
            break;
        }
        for l in leases {
            let r = result(l.step, l.seed);
            decide(&mut state, |d| {
                d.complete(&w, l.task_id, r, TaskMetrics::default(), 2)
            });
        }
    }
    let live: Vec<Row> = state.live_aggregates()["org/a"]
        .iter()
        .map(|a| {
            let (e, e_seed) = (a.e_from_means, a.e_per_seed_mean);
            (a.step, a.seeds, a.alpha0_mean, a.width_mean, e, e_seed)
        })
        .collect();
    let status = state.status(3, false);
    let latest = (status.models[0].latest_step, status.models[0].latest_e);

    export::export(dir.path(), None).unwrap();
    let mut reader = csv::Reader::from_path(dir.path().join("exports/aggregates.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let number = |text: &str| (!text.is_empty()).then(|| text.parse::<f64>().unwrap());
    let exported = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[column("step")].parse().unwrap(),
                r[column("seeds")].parse().unwrap(),
                r[column("alpha0_mean")].parse().unwrap(),
                r[column("width_mean")].parse().unwrap(),
                number(&r[column("E_from_means")]),
                number(&r[column("E_per_seed_mean")]),
            )
        })
        .collect();
    (live, latest, exported)
}

#[test]
fn status_and_aggregates_csv_agree_under_every_policy() {
    for (policy, steps) in [
        ("warn", vec![0, 10, 20]),
        ("skip", vec![10, 20]),
        ("reuse", vec![0, 10, 20]),
    ] {
        let (live, latest, exported) = run(policy);
        assert_eq!(live, exported, "duplicates = {policy}");
        let exported_steps: Vec<u64> = exported.iter().map(|r| r.0).collect();
        assert_eq!(exported_steps, steps, "duplicates = {policy}");
        assert!(exported.iter().all(|r| r.1 == 3), "{policy}: {exported:?}");
        // E is 0 at the reference step: the first step kept.
        assert_eq!(exported[0].4, Some(0.0), "duplicates = {policy}");
        let last = exported.last().unwrap();
        assert_eq!(latest, (Some(last.0), last.4), "duplicates = {policy}");
        if policy == "reuse" {
            // Step 0 takes step 20's results.
            assert_eq!(exported[0].2, exported[2].2);
            assert_eq!(exported[0].3, exported[2].3);
        }
    }
}
