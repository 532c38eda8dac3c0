//! Checkpoint fixtures for integration tests: copies of the golden tiny GPT-NeoX with
//! one thing changed (dtype, sharding, a missing or damaged tensor).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// The statistics of a step that `analyze --json`'s `aggregates[]` and a sweep's
/// `aggregates.csv` both hold, as the README documents them.
pub const AGGREGATE_FIELDS: [&str; 9] = [
    "alpha0_mean",
    "alpha0_var",
    "alpha0_var_ddof1",
    "width_mean",
    "width_var",
    "width_var_ddof1",
    "E_from_means",
    "E_per_seed_mean",
    "E_per_seed_var",
];

/// A test that cannot run on this machine (`why`): a failure when `required` (CI sets the
/// variable that says so), else a message on the real stderr (the harness would hide a
/// captured one) and a skip.
pub fn skip_or_fail(required: Option<&str>, test: &str, why: &str) {
    if let Some(variable) = required {
        panic!("{variable}=1 but {test} cannot run: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// `Some(variable)` when the environment sets it to 1: what a test needs must be there.
pub fn required(variable: &str) -> Option<&str> {
    std::env::var(variable)
        .is_ok_and(|v| v == "1")
        .then_some(variable)
}

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A checkpoint of the demo's real training history (`size` is `h64` or `h128`).
pub fn demo_step(size: &str, step: u64) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "examples/demo/hub/neuromfa-demo/gpt-neox-{size}/step{step}"
    ))
}

pub fn golden_step(step: u64) -> PathBuf {
    data_dir().join(format!("golden/tiny-neox/step{step}"))
}

/// One tensor as (dtype, shape, little-endian bytes).
pub type Tensor = (Dtype, Vec<usize>, Vec<u8>);

/// Every tensor of a single-file checkpoint.
pub fn read_tensors(dir: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect()
}

/// Writes `tensors` as safetensors `file` in `dir`, with the golden config beside it.
pub fn write_tensors(dir: &Path, file: &str, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(golden_step(0).join("config.json"), dir.join("config.json")).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join(file)).unwrap();
}

fn f16_values(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// The same values in f32: widening is exact, so results must not change.
pub fn as_f32(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    convert(tensors, Dtype::F32, |v| v.to_le_bytes().to_vec())
}

/// The values rounded to bf16.
pub fn as_bf16(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    convert(tensors, Dtype::BF16, |v| {
        half::bf16::from_f32(v).to_le_bytes().to_vec()
    })
}

/// bf16-rounded values stored as f32: must analyse exactly like the bf16 file.
pub fn as_bf16_in_f32(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    convert(tensors, Dtype::F32, |v| {
        half::bf16::from_f32(v).to_f32().to_le_bytes().to_vec()
    })
}

fn convert(
    tensors: &HashMap<String, Tensor>,
    dtype: Dtype,
    encode: impl Fn(f32) -> Vec<u8>,
) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .map(|(name, (_, shape, data))| {
            let bytes = f16_values(data).into_iter().flat_map(&encode).collect();
            (name.clone(), (dtype, shape.clone(), bytes))
        })
        .collect()
}
pub mod chaos;
pub mod chaos_checks;
pub mod cluster;
pub mod faulty_hub;
pub mod partition;
pub mod procfs;
pub mod proxy;
pub mod stand_in;
pub mod tmpfs;
