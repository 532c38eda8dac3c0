//! Synthetic checkpoints with a real model's exact tensor names and shapes, for
//! benchmarks and tests at scale without downloading anything.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, View};
use serde_json::json;

use crate::checkpoint::{CONFIG_FILE, SINGLE_FILE};
use crate::error::Error;

/// The published shape of one GPT-NeoX model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
}

const fn preset(
    name: &'static str,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    vocab_size: usize,
) -> Preset {
    Preset {
        name,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        intermediate_size: 4 * hidden_size,
        vocab_size,
    }
}

/// The Pythia suite's configurations (`config.json` on the Hub).
pub const PRESETS: &[Preset] = &[
    preset("pythia-14m", 128, 6, 4, 50304),
    preset("pythia-31m", 256, 6, 8, 50304),
    preset("pythia-70m", 512, 6, 8, 50304),
    preset("pythia-160m", 768, 12, 12, 50304),
    preset("pythia-410m", 1024, 24, 16, 50304),
    preset("pythia-1b", 2048, 16, 8, 50304),
    preset("pythia-1.4b", 2048, 24, 16, 50304),
    preset("pythia-2.8b", 2560, 32, 32, 50304),
    preset("pythia-6.9b", 4096, 32, 32, 50432),
    preset("pythia-12b", 5120, 36, 40, 50688),
];

/// The 154 published Pythia checkpoints: 0, 1, 2, 4 … 512, then every 1000 to 143000.
pub fn pythia_steps() -> Vec<u64> {
    let mut steps = vec![0];
    steps.extend((0..10).map(|k| 1u64 << k));
    steps.extend((1..=143).map(|k| k * 1000));
    steps
}

/// Finds a preset by name; `-deduped` and an `EleutherAI/` prefix are accepted.
pub fn find_preset(name: &str) -> Option<Preset> {
    let base = name.trim_start_matches("EleutherAI/");
    let base = base.strip_suffix("-deduped").unwrap_or(base);
    PRESETS.iter().copied().find(|p| p.name == base)
}

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Drawn from N(0, std), then moved along the trajectory.
    Normal {
        std: f64,
    },
    Constant(f32),
}

/// One tensor of a synthetic checkpoint: its name, shape and fill.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Where along a synthetic training trajectory a checkpoint sits (not part of the method: a
/// model of the paper's toy experiments, Appendix A.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TrajectoryPoint {
    /// Rounds of the weight preferential-attachment adjustment (paper Algorithm 1): each
    /// round scales weights above the median magnitude up by `1 + delta` and those below
    /// it down by `1 - delta`, so strong connections grow stronger.
    pub rounds: u32,
    pub delta: f64,
    /// Spread (sd of the log) of per-neuron scale factors: diversity between neurons.
    pub diversity: f64,
}

/// Median of |w| for w ~ N(0, std): std · Φ⁻¹(3/4).
pub fn median_magnitude(std: f64) -> f64 {
    std * 0.674_489_750_196_081_7
}

impl TrajectoryPoint {
    /// Point `t ∈ [0, 1]` of the default trajectory: up to 6 adjustment rounds of 8 %,
    /// and neuron scale spread growing to 1.
    pub fn at(t: f64) -> Self {
        let t = t.clamp(0.0, 1.0);
        TrajectoryPoint {
            rounds: (6.0 * t).round() as u32,
            delta: 0.08,
            diversity: t,
        }
    }

    /// Moves `value` (a weight whose magnitudes have median `median`) to this point, on
    /// an input neuron whose scale factor is `neuron_factor`.
    #[inline]
    pub fn apply(&self, value: f64, median: f64, neuron_factor: f64) -> f64 {
        let gain = if value.abs() >= median {
            1.0 + self.delta
        } else {
            1.0 - self.delta
        };
        value * gain.powi(self.rounds as i32) * neuron_factor
    }
}

/// A tensor generated when the writer asks for its bytes, so only one is ever in memory.
struct SynthTensor {
    shape: Vec<usize>,
    fill: Fill,
    stream: u64,
    trajectory: TrajectoryPoint,
}

/// Values per independently seeded chunk: fixed, so output does not depend on threads.
const CHUNK: usize = 1 << 16;

impl SynthTensor {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &SynthTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F16
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut bytes = vec![0u8; self.len() * 2];
        match self.fill {
            Fill::Constant(value) => {
                let word = half::f16::from_f32(value).to_le_bytes();
                bytes
                    .chunks_exact_mut(2)
                    .for_each(|b| b.copy_from_slice(&word));
            }
            Fill::Normal { std } => {
                let cols = self.shape.last().copied().unwrap_or(1).max(1);
                // Per-neuron factors on each input neuron's outgoing weights (a column in
                // torch's [out, in] layout): a neuron's one-hop distances all shift
                // together, so neurons come to differ in how their neighbourhoods grow.
                // Their own stream keeps the base weights the same along a trajectory.
                let mut factor_rng = Xoshiro256PlusPlus::seed_from_u64(!self.stream);
                let factors: Vec<f64> = (0..cols)
                    .map(|_| {
                        let z: f64 = rand_distr::StandardNormal.sample(&mut factor_rng);
                        (self.trajectory.diversity * z).exp()
                    })
                    .collect();
                let median = median_magnitude(std);
                bytes
                    .par_chunks_mut(CHUNK * 2)
                    .enumerate()
                    .for_each(|(chunk, out)| {
                        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
                            self.stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chunk as u64,
                        );
                        // A positive finite std always makes a valid distribution.
                        let normal = Normal::new(0.0, std).unwrap_or_else(|_| unreachable!());
                        for (i, b) in out.chunks_exact_mut(2).enumerate() {
                            let v: f64 = normal.sample(&mut rng);
                            let col = (chunk * CHUNK + i) % cols;
                            let v = self.trajectory.apply(v, median, factors[col]);
                            b.copy_from_slice(&half::f16::from_f64(v).to_le_bytes());
                        }
                    });
            }
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.len() * 2
    }
}

/// Every weight of a transformers `GPTNeoXForCausalLM` state dict, in name order.
pub fn tensor_specs(p: &Preset) -> Vec<TensorSpec> {
    let (d, m, v) = (p.hidden_size, p.intermediate_size, p.vocab_size);
    // Pythia's initialisation scale; small enough that most one-hop distances lie
    // within the default threshold, as in real checkpoints.
    let normal = Fill::Normal { std: 0.02 };
    let mut specs: Vec<(String, Vec<usize>, Fill)> = vec![
        ("gpt_neox.embed_in.weight".into(), vec![v, d], normal),
        (
            "gpt_neox.final_layer_norm.weight".into(),
            vec![d],
            Fill::Constant(1.0),
        ),
        (
            "gpt_neox.final_layer_norm.bias".into(),
            vec![d],
            Fill::Constant(0.0),
        ),
        ("embed_out.weight".into(), vec![v, d], normal),
    ];
    for b in 0..p.num_hidden_layers {
        let l = |s: &str| format!("gpt_neox.layers.{b}.{s}");
        specs.extend([
            (l("input_layernorm.weight"), vec![d], Fill::Constant(1.0)),
            (l("input_layernorm.bias"), vec![d], Fill::Constant(0.0)),
            (
                l("post_attention_layernorm.weight"),
                vec![d],
                Fill::Constant(1.0),
            ),
            (
                l("post_attention_layernorm.bias"),
                vec![d],
                Fill::Constant(0.0),
            ),
            (
                l("attention.query_key_value.weight"),
                vec![3 * d, d],
                normal,
            ),
            (
                l("attention.query_key_value.bias"),
                vec![3 * d],
                Fill::Constant(0.0),
            ),
            (l("attention.dense.weight"), vec![d, d], normal),
            (l("attention.dense.bias"), vec![d], Fill::Constant(0.0)),
            (l("mlp.dense_h_to_4h.weight"), vec![m, d], normal),
            (l("mlp.dense_h_to_4h.bias"), vec![m], Fill::Constant(0.0)),
            (l("mlp.dense_4h_to_h.weight"), vec![d, m], normal),
            (l("mlp.dense_4h_to_h.bias"), vec![d], Fill::Constant(0.0)),
        ]);
    }
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    specs
        .into_iter()
        .map(|(name, shape, fill)| TensorSpec { name, shape, fill })
        .collect()
}

/// Every tensor of the checkpoint of `seed` at `trajectory`, in name order.
fn tensors(p: &Preset, seed: u64, trajectory: TrajectoryPoint) -> Vec<(String, SynthTensor)> {
    tensor_specs(p)
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let stream = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            (
                spec.name,
                SynthTensor {
                    shape: spec.shape,
                    fill: spec.fill,
                    stream,
                    trajectory,
                },
            )
        })
        .collect()
}

/// The `config.json` transformers writes for this model.
pub fn config_json(p: &Preset) -> serde_json::Value {
    json!({
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "intermediate_size": p.intermediate_size,
        "vocab_size": p.vocab_size,
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": true,
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float16"
    })
}

/// Total bytes the checkpoint's tensors take.
pub fn tensor_bytes(p: &Preset) -> u64 {
    tensors(p, 0, TrajectoryPoint::default())
        .iter()
        .map(|(_, t)| t.len() as u64 * 2)
        .sum()
}

/// Writes `config.json` and an f16 `model.safetensors` for preset `p` into `out`.
/// The same seed writes the same bytes.
pub fn write_checkpoint(p: &Preset, out: &Path, seed: u64) -> Result<(), Error> {
    write_trajectory_checkpoint(p, out, seed, TrajectoryPoint::default())
}

/// Writes the checkpoint of seed `seed` moved to `point` of a synthetic trajectory. The
/// base weights are the same at every point, as in a real training history.
pub fn write_trajectory_checkpoint(
    p: &Preset,
    out: &Path,
    seed: u64,
    point: TrajectoryPoint,
) -> Result<(), Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config_path = out.join(CONFIG_FILE);
    let config = serde_json::to_string_pretty(&config_json(p))
        .map_err(|e| Error::InvalidParameter(format!("cannot encode config: {e}")))?;
    std::fs::write(&config_path, config).map_err(|e| Error::io(&config_path, e))?;
    let tensors = tensors(p, seed, point);
    let model_path = out.join(SINGLE_FILE);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(
        tensors.iter().map(|(name, t)| (name.as_str(), t)),
        Some(metadata),
        &model_path,
    )
    .map_err(|e| Error::io(&model_path, std::io::Error::other(format!("{e:?}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::layout::BlockTensor;

    #[test]
    fn presets_are_found_by_hub_name() {
        assert_eq!(
            find_preset("EleutherAI/pythia-160m-deduped").map(|p| p.hidden_size),
            Some(768)
        );
        assert!(find_preset("gpt2").is_none());
    }

    #[test]
    fn written_checkpoint_opens_and_is_deterministic() {
        let tiny = Preset {
            name: "tiny",
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            vocab_size: 50,
        };
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(&tiny, &dir.path().join("a"), 7).unwrap();
        write_checkpoint(&tiny, &dir.path().join("b"), 7).unwrap();
        let a = std::fs::read(dir.path().join("a").join(SINGLE_FILE)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(SINGLE_FILE)).unwrap();
        assert_eq!(a, b);
        assert!(a.len() as u64 > tensor_bytes(&tiny));
        let checkpoint = Checkpoint::open(&dir.path().join("a")).unwrap();
        let values = checkpoint
            .gather(1, BlockTensor::MlpDown, &[0, 31], &[0, 127])
            .unwrap();
        assert!(
            values.iter().all(|v| v.abs() < 0.2 && *v != 0.0),
            "{values:?}"
        );
    }
}
