//! The science against outputs of the published reference code (tests/data/golden and
//! the demo's real training history in examples/demo): draws and counts exactly, floats
//! within 1e-9.

use std::path::PathBuf;

use neuromfa_common::sampler::draw_snin;
use neuromfa_common::spectrum::{
    q_grid, spectrum_of_distances, Alpha0Method, NeighbourRule, SpectrumError,
};
use neuromfa_common::stats::{aggregate, SeedPoint};
use neuromfa_common::{analyze_seed, AnalysisParams, Checkpoint, ModelShape};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

fn load(path: &str) -> Value {
    load_file(&data_dir().join(path))
}

fn load_file(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ints(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn assert_close(what: &str, ours: f64, reference: f64) {
    assert!(
        (ours - reference).abs() <= TOLERANCE,
        "{what}: ours {ours} vs reference {reference} (diff {:e})",
        (ours - reference).abs()
    );
}

fn assert_all_close(what: &str, ours: &[f64], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths differ");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert_close(&format!("{what}[{i}]"), *a, *b);
    }
}

/// The draws of one seed, keyed as the golden files key them.
fn draws_by_key(seed: u32, shape: &ModelShape, layer_sample: usize) -> Vec<(String, Vec<usize>)> {
    let draw = draw_snin(seed, shape, layer_sample).unwrap();
    let mut keyed = Vec::new();
    for (b, block) in draw.blocks.iter().enumerate() {
        keyed.push((format!("block{b}_nums1"), block.input.clone()));
        keyed.push((format!("block{b}_nums2"), block.qkv_rows(shape.hidden_size)));
        keyed.push((format!("block{b}_nums3"), block.heads.clone()));
        keyed.push((format!("block{b}_nums4"), block.dense.clone()));
        keyed.push((format!("block{b}_nums5"), block.mlp.clone()));
    }
    keyed.push((
        format!("block{}_nums6", draw.blocks.len() - 1),
        draw.output.clone(),
    ));
    keyed
}

fn assert_draws_match(seed: u32, shape: &ModelShape, layer_sample: usize, samples: &Value) {
    let keyed = draws_by_key(seed, shape, layer_sample);
    assert_eq!(keyed.len(), samples.as_object().unwrap().len());
    for (key, ours) in keyed {
        assert_eq!(ours, ints(&samples[&key]), "seed {seed} {key}");
    }
}

#[test]
fn sampler_reproduces_numpy_legacy_draws() {
    let cases = load("golden/sampler_numpy_legacy.json");
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let d = case["feature_num"].as_u64().unwrap() as usize;
        let shape = ModelShape {
            hidden_size: d,
            num_blocks: case["blocks"].as_u64().unwrap() as usize,
            intermediate_size: 4 * d,
        };
        let seed = case["seed"].as_u64().unwrap() as u32;
        let s = case["layer_sample"].as_u64().unwrap() as usize;
        assert_draws_match(seed, &shape, s, &case["samples"]);
    }
}

#[test]
fn spectrum_matches_reference_cases() {
    let cases = load("golden/mfa_cases.json");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let threshold = case["threshold"].as_f64().unwrap();
        let q = floats(&case["q"]);
        let nodes: Vec<Vec<f64>> = case["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let expected = &case["expected"];
        let outcome = spectrum_of_distances(
            &nodes,
            NeighbourRule::one_hop(threshold),
            &q,
            Alpha0Method::Peak,
        );
        if expected.get("error").is_some() {
            assert!(
                matches!(outcome, Err(SpectrumError::NoNodeKept { .. })),
                "{name}: expected no node kept, got {outcome:?}"
            );
            continue;
        }
        let s = outcome.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_all_close(&format!("{name} tau"), &s.tau, &floats(&expected["tau"]));
        assert_all_close(
            &format!("{name} alpha"),
            &s.alpha,
            &floats(&expected["alpha"]),
        );
        assert_all_close(
            &format!("{name} f_alpha"),
            &s.f_alpha,
            &floats(&expected["f_alpha"]),
        );
        assert_close(
            &format!("{name} alpha0"),
            s.alpha0,
            expected["alpha0"].as_f64().unwrap(),
        );
        assert_close(
            &format!("{name} width"),
            s.width,
            expected["width"].as_f64().unwrap(),
        );
        assert_close(
            &format!("{name} r of last q"),
            *s.r_value.last().unwrap(),
            expected["r_value_last_q"].as_f64().unwrap(),
        );
        assert_eq!(
            s.kept_nodes,
            expected["selected_nodes"].as_u64().unwrap() as usize,
            "{name}"
        );
        let radii: Vec<f64> = s.radii.iter().map(|&r| f64::from(r)).collect();
        assert_eq!(radii, floats(&expected["radii"]), "{name} radii");
    }
}

#[test]
fn grid_from_bounds_equals_the_reference_grids() {
    let cases = load("golden/mfa_cases.json");
    for case in cases.as_array().unwrap() {
        let q = floats(&case["q"]);
        let step = q[1] - q[0];
        // The step as a user types it: two decimals.
        let step = (step * 100.0).round() / 100.0;
        assert_eq!(q_grid(q[0], *q.last().unwrap(), step).unwrap(), q);
    }
}

/// Runs every (step, seed) of a reference run on its checkpoints and compares per-task
/// results, draws and aggregates.
fn check_reference_run(expected: &std::path::Path, checkpoint_dir: impl Fn(u64) -> PathBuf) {
    let root = expected.display().to_string();
    let expected = load_file(expected);
    let params = AnalysisParams {
        layer_sample: expected["layer_sample"].as_u64().unwrap() as usize,
        threshold: expected["threshold"].as_f64().unwrap(),
        ..AnalysisParams::default()
    };
    if let Some(q) = expected.get("q") {
        assert_eq!(params.q, floats(q), "default q grid");
    }
    let steps: Vec<u64> = ints(&expected["steps"])
        .into_iter()
        .map(|s| s as u64)
        .collect();
    let mut points = Vec::new();
    for task in expected["per_task"].as_array().unwrap() {
        let step = task["step"].as_u64().unwrap();
        let seed = task["seed"].as_u64().unwrap() as u32;
        let what = format!("{root} step {step} seed {seed}");
        let checkpoint = Checkpoint::open(&checkpoint_dir(step)).unwrap();
        let analysis = analyze_seed(&checkpoint, &params, step, seed).unwrap();
        let r = &analysis.result;
        assert_eq!(
            r.edges,
            task["edges"].as_u64().unwrap() as usize,
            "{what} edges"
        );
        assert_eq!(
            r.source_nodes,
            task["source_nodes"].as_u64().unwrap() as usize,
            "{what} source nodes"
        );
        assert_all_close(&format!("{what} tau"), &r.tau, &floats(&task["tau"]));
        assert_all_close(&format!("{what} alpha"), &r.alpha, &floats(&task["alpha"]));
        assert_all_close(&format!("{what} f"), &r.f_alpha, &floats(&task["f_alpha"]));
        assert_close(
            &format!("{what} alpha0"),
            r.alpha0,
            task["alpha0"].as_f64().unwrap(),
        );
        assert_close(
            &format!("{what} width"),
            r.width,
            task["width"].as_f64().unwrap(),
        );
        if let Some(samples) = expected.get("samples") {
            assert_draws_match(
                seed,
                checkpoint.shape(),
                params.layer_sample,
                &samples[seed.to_string()],
            );
        }
        points.push(r.point());
    }
    let aggregates = aggregate(&points, steps[0]);
    let reference = expected["aggregate"].as_array().unwrap();
    assert_eq!(aggregates.len(), reference.len());
    for (ours, theirs) in aggregates.iter().zip(reference) {
        let what = format!("{root} aggregate step {}", ours.step);
        assert_eq!(ours.step, theirs["step"].as_u64().unwrap());
        for (name, value) in [
            ("alpha0_mean", Some(ours.alpha0_mean)),
            ("alpha0_var", Some(ours.alpha0_var)),
            ("alpha0_var_ddof1", Some(ours.alpha0_var_ddof1)),
            ("width_mean", Some(ours.width_mean)),
            ("width_var", Some(ours.width_var)),
            ("width_var_ddof1", Some(ours.width_var_ddof1)),
            ("E_from_means", ours.e_from_means),
            ("E_per_seed_mean", ours.e_per_seed_mean),
            ("E_per_seed_var", ours.e_per_seed_var),
        ] {
            if let Some(reference) = theirs.get(name) {
                let value = value.unwrap_or_else(|| panic!("{what}: no {name}"));
                assert_close(
                    &format!("{what} {name}"),
                    value,
                    reference.as_f64().unwrap(),
                );
            }
        }
    }
}

#[test]
fn tiny_neox_matches_reference_run() {
    check_reference_run(&data_dir().join("golden/tiny-neox/expected.json"), |step| {
        data_dir().join(format!("golden/tiny-neox/step{step}"))
    });
}

#[test]
fn trained_h64_history_matches_reference_run() {
    check_reference_run(&demo_dir().join("expected/gpt-neox-h64.json"), |step| {
        demo_dir().join(format!("hub/neuromfa-demo/gpt-neox-h64/step{step}"))
    });
}

#[test]
fn trained_h128_history_matches_reference_run() {
    check_reference_run(&demo_dir().join("expected/gpt-neox-h128.json"), |step| {
        demo_dir().join(format!("hub/neuromfa-demo/gpt-neox-h128/step{step}"))
    });
}

#[test]
fn points_keep_seed_identity() {
    // A per-seed E needs the same seed at both steps: a seed missing at the first step
    // is left out rather than paired with another.
    let p = |step, seed, alpha0| SeedPoint {
        step,
        seed,
        alpha0,
        width: 0.5,
        alpha: vec![],
        f_alpha: vec![],
    };
    let agg = aggregate(&[p(0, 0, 1.4), p(5, 0, 1.2), p(5, 1, 1.0)], 0);
    let only_seed0 = (1.4f64 / 1.2).ln();
    assert_close("per-seed E", agg[1].e_per_seed_mean.unwrap(), only_seed0);
}
