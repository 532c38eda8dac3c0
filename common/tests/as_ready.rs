//! `analyze_seeds_as_ready` hands every seed the result `analyze_seeds` gives it, one-hop
//! and shortest-path alike, and the shared error to every seed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use neuromfa_common::{
    analyze_seeds, analyze_seeds_as_ready, AnalysisParams, Checkpoint, DistanceMode,
};

fn golden_step1000() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden/tiny-neox/step1000")
}

/// Per seed index, its outcome as JSON (or the error message).
fn as_ready(checkpoint: &Checkpoint, params: &AnalysisParams, seeds: &[u32]) -> Vec<String> {
    let outcomes = Mutex::new(vec![String::new(); seeds.len()]);
    analyze_seeds_as_ready(checkpoint, params, 1000, seeds, |i, result, _| {
        let text = match result {
            Ok(result) => serde_json::to_string(&result).unwrap(),
            Err(e) => e.to_string(),
        };
        outcomes.lock().unwrap()[i] = text;
    });
    outcomes.into_inner().unwrap()
}

#[test]
fn every_seed_gets_what_analyze_seeds_gives_it() {
    let checkpoint = Checkpoint::open(&golden_step1000()).unwrap();
    let seeds = [4, 0, 7];
    for distance in [DistanceMode::OneHop, DistanceMode::shortest_path()] {
        let params = AnalysisParams {
            layer_sample: 8,
            distance,
            ..AnalysisParams::default()
        };
        let expected: Vec<String> = analyze_seeds(&checkpoint, &params, 1000, &seeds)
            .unwrap()
            .into_iter()
            .map(|a| serde_json::to_string(&a.unwrap().result).unwrap())
            .collect();
        assert_eq!(
            as_ready(&checkpoint, &params, &seeds),
            expected,
            "{distance:?}"
        );
    }
}

#[test]
fn a_failure_of_the_shared_work_is_every_seeds() {
    let checkpoint = Checkpoint::open(&golden_step1000()).unwrap();
    let params = AnalysisParams {
        layer_sample: 10_000,
        distance: DistanceMode::shortest_path(),
        ..AnalysisParams::default()
    };
    let outcomes = as_ready(&checkpoint, &params, &[0, 1]);
    assert!(outcomes[0].contains("layer_sample"), "{outcomes:?}");
    assert_eq!(outcomes[0], outcomes[1]);
}
