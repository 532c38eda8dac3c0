//! `neuromfa analyze` end to end: output forms, dtypes, sharding, SNIN export, and one
//! clear error (no panic, non-zero exit) for each kind of bad input.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use assert_cmd::Command;
use safetensors::tensor::Dtype;
use serde_json::Value;
use support::*;

fn neuromfa() -> Command {
    Command::cargo_bin("neuromfa").unwrap()
}

fn analyze_json(dirs: &[&Path], extra: &[&str]) -> Value {
    serde_json::from_slice(&analyze_stdout(dirs, extra)).unwrap()
}

/// `analyze --json` stdout, byte for byte.
fn analyze_stdout(dirs: &[&Path], extra: &[&str]) -> Vec<u8> {
    let out = neuromfa()
        .arg("analyze")
        .arg("--json")
        .args(extra)
        .args(dirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "analyze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs analyze expecting failure; returns stderr.
fn analyze_error(args: &[&str]) -> String {
    let out = neuromfa().arg("analyze").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn per_seed(report: &Value) -> Vec<(f64, f64)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["alpha0"].as_f64().unwrap(), r["width"].as_f64().unwrap()))
        .collect()
}

#[test]
fn json_has_the_documented_fields_and_reference_numbers() {
    let (a, b) = (golden_step(0), golden_step(1000));
    let report = analyze_json(&[&a, &b], &["--seeds", "0..3"]);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for field in [
        "step", "seed", "alpha0", "width", "tau", "alpha", "f_alpha", "r2",
    ] {
        assert!(results[0].get(field).is_some(), "results[] lacks {field}");
    }
    let aggregates = report["aggregates"].as_array().unwrap();
    assert_eq!(aggregates.len(), 2);
    for field in std::iter::once("step").chain(AGGREGATE_FIELDS) {
        assert!(
            aggregates[1].get(field).is_some(),
            "aggregates[] lacks {field}"
        );
    }
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("golden/tiny-neox/expected.json")).unwrap(),
    )
    .unwrap();
    let e = expected["aggregate"][1]["E_from_means"].as_f64().unwrap();
    let ours = aggregates[1]["E_from_means"].as_f64().unwrap();
    assert!((ours - e).abs() < 1e-9, "E {ours} vs {e}");
    let r2 = results[0]["r2"].as_array().unwrap();
    assert_eq!(r2.len(), 61);
    assert!(r2
        .iter()
        .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
}

#[test]
fn table_names_steps_seeds_and_emergence() {
    let out = neuromfa()
        .args(["analyze", "--seed", "0", "--seed", "2"])
        .arg(golden_step(0))
        .arg(format!("{}@7", golden_step(2000).display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("Per seed") && table.contains("Per step"),
        "{table}"
    );
    assert!(table.contains("E relative to step 0"), "{table}");
    // Seeds 0 and 2 at steps 0 and 7 (the explicit step), nothing else.
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| {
            l.split_whitespace().count() == 7 && l.trim_start().starts_with(char::is_numeric)
        })
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.split_whitespace().take(2).eq(["7", "2"])),
        "{table}"
    );
}

#[test]
fn f32_and_sharded_checkpoints_give_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = read_tensors(&golden_step(1000));
    let f32_dir = tmp.path().join("f32/step1000");
    write_tensors(&f32_dir, "model.safetensors", &as_f32(&tensors));

    // Two shards and an index, as transformers writes large models.
    let sharded = tmp.path().join("sharded/step1000");
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = BTreeMap::new();
    for (i, (name, tensor)) in tensors.iter().enumerate() {
        let (shard, file) = if i % 2 == 0 {
            (&mut first, "model-00001-of-00002.safetensors")
        } else {
            (&mut second, "model-00002-of-00002.safetensors")
        };
        shard.insert(name.clone(), tensor.clone());
        weight_map.insert(name.clone(), file.to_string());
    }
    write_tensors(&sharded, "model-00001-of-00002.safetensors", &first);
    write_tensors(&sharded, "model-00002-of-00002.safetensors", &second);
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let seeds = ["--seeds", "0..2"];
    let reference = per_seed(&analyze_json(&[&golden_step(1000)], &seeds));
    assert_eq!(per_seed(&analyze_json(&[&f32_dir], &seeds)), reference);
    assert_eq!(per_seed(&analyze_json(&[&sharded], &seeds)), reference);
}

#[test]
fn pytorch_bin_checkpoints_give_the_safetensors_numbers_bit_for_bit() {
    let bin = data_dir().join("bin");
    // A single file with shared and transposed storages, three shards (one ZIP64), and
    // a file torch.save wrote, each beside the safetensors checkpoint it was made from.
    let ours = [
        bin.join("sharded/step0"),
        bin.join("single/step1000"),
        bin.join("torch-save/step2000"),
    ];
    let twins = [golden_step(0), golden_step(1000), golden_step(2000)];
    let seeds = ["--seeds", "0..10"];
    let ours = analyze_stdout(&ours.each_ref().map(|p| p.as_path()), &seeds);
    let twins = analyze_stdout(&twins.each_ref().map(|p| p.as_path()), &seeds);
    assert!(ours == twins, "the .bin checkpoints' analysis differs");
    // Shortest paths read whole rows and columns, across the transposed view too.
    let shortest = ["--seeds", "0..2", "--distance", "shortest-path"];
    let ours = analyze_stdout(&[&bin.join("single/step1000")], &shortest);
    assert!(ours == analyze_stdout(&[&golden_step(1000)], &shortest));
}

#[test]
fn bad_pytorch_bin_checkpoints_are_named_and_exit_1() {
    let bad = data_dir().join("bin/bad");
    let cases = [
        ("deflated", "is compressed"),
        ("encrypted", "is encrypted"),
        ("unknown-global", "__builtin__.eval"),
        ("wrong-dtype", "LongStorage"),
        ("missing-storage", "pytorch_model/data/7"),
        ("outside-storage", "needs 24704 bytes"),
        ("big-endian", "big-endian"),
        ("legacy", "legacy (pre-1.6)"),
    ];
    for (case, says) in cases {
        let dir = bad.join(case).join("step0");
        let err = analyze_error(&[dir.to_str().unwrap()]);
        let file = dir.join("pytorch_model.bin");
        assert!(err.contains(file.to_str().unwrap()), "{case}: {err}");
        assert!(err.contains(says), "{case}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
    }

    // Cut short, the archive loses its end records.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step1000");
    std::fs::create_dir(&dir).unwrap();
    let single = data_dir().join("bin/single/step1000");
    std::fs::copy(single.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(single.join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    let err = analyze_error(&[dir.to_str().unwrap()]);
    assert!(
        err.contains("pytorch_model.bin") && err.contains("no end-of-central-directory record"),
        "{err}"
    );
}

#[test]
fn bf16_weights_are_widened_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = read_tensors(&golden_step(0));
    let bf16 = tmp.path().join("bf16/step0");
    let widened = tmp.path().join("f32/step0");
    write_tensors(&bf16, "model.safetensors", &as_bf16(&tensors));
    write_tensors(&widened, "model.safetensors", &as_bf16_in_f32(&tensors));
    let seeds = ["--seeds", "0..2"];
    let from_bf16 = per_seed(&analyze_json(&[&bf16], &seeds));
    assert_eq!(from_bf16, per_seed(&analyze_json(&[&widened], &seeds)));
    // Rounding to bf16 moves the weights, so the numbers differ from the f16 original.
    assert_ne!(
        from_bf16,
        per_seed(&analyze_json(&[&golden_step(0)], &seeds))
    );
}

#[test]
fn export_snin_writes_draws_and_every_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("snin");
    let report = analyze_json(
        &[&golden_step(0)],
        &["--seed", "1", "--export-snin", out.to_str().unwrap()],
    );
    let nodes: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("step0/seed1.nodes.json")).unwrap())
            .unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("golden/tiny-neox/expected.json")).unwrap(),
    )
    .unwrap();
    let layers = nodes["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4 * 5 + 1);
    assert_eq!(layers[0]["name"], "b0.A");
    assert_eq!(
        layers[0]["neurons"],
        expected["samples"]["1"]["block0_nums1"]
    );
    assert_eq!(
        layers[1]["neurons"],
        expected["samples"]["1"]["block0_nums2"]
    );
    assert_eq!(
        layers[20]["neurons"],
        expected["samples"]["1"]["block3_nums6"]
    );

    let edges = std::fs::read_to_string(out.join("step0/seed1.edges.csv")).unwrap();
    let mut lines = edges.lines();
    assert_eq!(
        lines.next(),
        Some("source_layer,source_neuron,target_layer,target_neuron,weight,distance")
    );
    let rows: Vec<&str> = lines.collect();
    let expected_edges = report["results"][0]["edges"].as_u64().unwrap() as usize;
    assert_eq!(rows.len(), expected_edges);
    assert_eq!(rows.len(), 41088);
    let attention_edges = rows
        .iter()
        .filter(|r| r.starts_with("b0.QKV,") && r.contains(",b0.ATT,"))
        .count();
    assert_eq!(attention_edges, 32 + 2 * 32 * 32);
}

#[test]
fn missing_directory_names_the_file() {
    let err = analyze_error(&["/nonexistent/step5"]);
    assert!(err.contains("/nonexistent/step5/config.json"), "{err}");
}

#[test]
fn directory_without_weights_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(golden_step(0).join("config.json"), dir.join("config.json")).unwrap();
    let err = analyze_error(&[dir.to_str().unwrap()]);
    assert!(
        err.contains("no model.safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn unknown_step_is_explained() {
    let err = analyze_error(&[golden_step(0).parent().unwrap().to_str().unwrap()]);
    assert!(err.contains("cannot tell the training step"), "{err}");
}

#[test]
fn corrupt_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(golden_step(0).join("config.json"), dir.join("config.json")).unwrap();
    let mut bytes = std::fs::read(golden_step(0).join("model.safetensors")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let err = analyze_error(&[dir.to_str().unwrap()]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");

    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json at all",
    )
    .unwrap();
    let err = analyze_error(&[dir.to_str().unwrap()]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn bad_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step0");
    write_tensors(&dir, "model.safetensors", &read_tensors(&golden_step(0)));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    let err = analyze_error(&[dir.to_str().unwrap()]);
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

fn damaged(change: impl FnOnce(&mut HashMap<String, Tensor>)) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step0");
    let mut tensors = read_tensors(&golden_step(0));
    change(&mut tensors);
    write_tensors(&dir, "model.safetensors", &tensors);
    let path = dir.to_str().unwrap().to_string();
    (tmp, path)
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = damaged(|t| {
        t.remove("gpt_neox.layers.2.mlp.dense_4h_to_h.weight");
    });
    let err = analyze_error(&[&dir]);
    assert!(
        err.contains("gpt_neox.layers.2.mlp.dense_4h_to_h.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let (_tmp, dir) = damaged(|t| {
        let (dtype, _, data) = t["gpt_neox.layers.1.attention.dense.weight"].clone();
        t.insert(
            "gpt_neox.layers.1.attention.dense.weight".into(),
            (dtype, vec![32, 128], data),
        );
    });
    let err = analyze_error(&[&dir]);
    assert!(
        err.contains("gpt_neox.layers.1.attention.dense.weight"),
        "{err}"
    );
    assert!(
        err.contains("[32, 128]") && err.contains("[64, 64]"),
        "{err}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let (_tmp, dir) = damaged(|t| {
        let (_, shape, data) = t["gpt_neox.layers.0.attention.query_key_value.weight"].clone();
        t.insert(
            "gpt_neox.layers.0.attention.query_key_value.weight".into(),
            (Dtype::I16, shape, data),
        );
    });
    let err = analyze_error(&[&dir]);
    assert!(
        err.contains("query_key_value") && err.contains("I16"),
        "{err}"
    );
}

#[test]
fn non_finite_weight_is_named() {
    let (_tmp, dir) = damaged(|t| {
        let tensor = t
            .get_mut("gpt_neox.layers.3.mlp.dense_h_to_4h.weight")
            .unwrap();
        let nan = half::f16::NAN.to_le_bytes();
        tensor
            .2
            .chunks_exact_mut(2)
            .for_each(|b| b.copy_from_slice(&nan));
    });
    let err = analyze_error(&[&dir, "--seed", "0"]);
    assert!(
        err.contains("gpt_neox.layers.3.mlp.dense_h_to_4h.weight"),
        "{err}"
    );
    assert!(err.contains("non-finite"), "{err}");
}

#[test]
fn layer_sample_larger_than_layer_is_refused() {
    let err = analyze_error(&[golden_step(0).to_str().unwrap(), "--layer-sample", "65"]);
    assert!(
        err.contains("layer_sample 65") && err.contains("hidden_size is 64"),
        "{err}"
    );
}

#[test]
fn sample_without_kept_nodes_names_the_seed() {
    let err = analyze_error(&[
        golden_step(0).to_str().unwrap(),
        "--seed",
        "4",
        "--threshold",
        "1.5",
    ]);
    assert!(
        err.contains("seed 4") && err.contains("no node kept"),
        "{err}"
    );
}

#[test]
fn bad_q_grid_and_seeds_are_refused() {
    let dir = golden_step(0);
    let dir = dir.to_str().unwrap();
    let err = analyze_error(&[dir, "--q-min", "2", "--q-max", "-2"]);
    assert!(err.contains("q-min < q-max"), "{err}");
    let err = analyze_error(&[dir, "--seeds", "5..5"]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn central_difference_alpha0_is_offered() {
    let dir = golden_step(0);
    let peak = analyze_json(&[&dir], &["--seed", "0"]);
    let central = analyze_json(&[&dir], &["--seed", "0", "--alpha0", "central-difference"]);
    let (p, c) = (
        peak["results"][0]["alpha0"].as_f64().unwrap(),
        central["results"][0]["alpha0"].as_f64().unwrap(),
    );
    assert_eq!(central["results"][0]["alpha0_central"].as_f64(), Some(c));
    // Both estimate τ'(0); they agree to about a percent.
    assert!(p != c && (p - c).abs() / p < 0.03, "peak {p} central {c}");
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let run = |threads: &str| {
        let out = neuromfa()
            .env("RAYON_NUM_THREADS", threads)
            .args(["analyze", "--json", "--seeds", "0..4"])
            .arg(golden_step(0))
            .arg(golden_step(2000))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let one = run("1");
    assert!(!one.is_empty());
    assert_eq!(one, run("3"));
}

#[test]
fn shortest_path_mode_is_recorded_and_dijkstra_agrees() {
    let a = golden_step(0);
    let args = [
        "--seeds",
        "0..2",
        "--distance",
        "shortest-path",
        "--gamma",
        "4",
    ];
    let ours = analyze_json(&[&a], &args);
    let distance = &ours["params"]["distance"];
    assert_eq!(distance["mode"], "shortest-path");
    assert_eq!(distance["lambda"].as_f64(), Some(1.0));
    assert_eq!(distance["gamma"].as_f64(), Some(4.0));
    let reference = analyze_json(&[&a], &[&args[..], &["--dijkstra"]].concat());
    assert_eq!(ours["results"], reference["results"]);
    let one_hop = analyze_json(&[&a], &["--seeds", "0..2"]);
    assert_eq!(one_hop["params"]["distance"]["mode"], "one-hop");
    assert_ne!(per_seed(&ours), per_seed(&one_hop));
}

#[test]
fn impossible_shortest_path_settings_are_named() {
    let a = golden_step(0);
    let a = a.to_str().unwrap();
    let err = analyze_error(&[a, "--distance", "shortest-path", "--lambda", "-1"]);
    assert!(err.contains("lambda"), "{err}");
    let err = analyze_error(&[a, "--distance", "shortest-path", "--gamma", "0"]);
    assert!(err.contains("gamma"), "{err}");
    let err = analyze_error(&[a, "--gamma", "3"]);
    assert!(err.contains("shortest-path"), "{err}");
}
