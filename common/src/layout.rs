//! The GPT-NeoX (Pythia) neuron layout: shape from `config.json`, the four weight tensors
//! per block that the interaction network is made of (docs/method.md §1).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The dimensions that fix the network layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// `d`: hidden size.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub num_blocks: usize,
    /// `m`: MLP hidden size (4d in Pythia).
    pub intermediate_size: usize,
}

/// The weight matrices of one block that carry edges, in torch `[out, in]` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockTensor {
    /// `attention.query_key_value.weight` `[3d, d]`.
    Qkv,
    /// `attention.dense.weight` `[d, d]`.
    AttentionDense,
    /// `mlp.dense_h_to_4h.weight` `[m, d]`.
    MlpUp,
    /// `mlp.dense_4h_to_h.weight` `[d, m]`.
    MlpDown,
}

impl BlockTensor {
    pub const ALL: [BlockTensor; 4] = [
        BlockTensor::Qkv,
        BlockTensor::AttentionDense,
        BlockTensor::MlpUp,
        BlockTensor::MlpDown,
    ];

    /// The tensor's name in a transformers GPT-NeoX checkpoint.
    pub fn name(self, block: usize) -> String {
        let suffix = match self {
            BlockTensor::Qkv => "attention.query_key_value.weight",
            BlockTensor::AttentionDense => "attention.dense.weight",
            BlockTensor::MlpUp => "mlp.dense_h_to_4h.weight",
            BlockTensor::MlpDown => "mlp.dense_4h_to_h.weight",
        };
        format!("gpt_neox.layers.{block}.{suffix}")
    }

    /// The `[rows, cols]` this tensor must have.
    pub fn expected_shape(self, shape: &ModelShape) -> [usize; 2] {
        let d = shape.hidden_size;
        let m = shape.intermediate_size;
        match self {
            BlockTensor::Qkv => [3 * d, d],
            BlockTensor::AttentionDense => [d, d],
            BlockTensor::MlpUp => [m, d],
            BlockTensor::MlpDown => [d, m],
        }
    }
}

/// Bounds on a config's dimensions, far above any GPT-NeoX's (pythia-12b: 5120, 36 blocks,
/// 20480): whatever a `config.json` says, the shapes computed from it (`3 × hidden_size`,
/// weight counts) cannot overflow, and a network sized from it stays addressable.
pub const MAX_HIDDEN_SIZE: usize = 1 << 20;
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 22;
pub const MAX_BLOCKS: usize = 1 << 12;

/// Refuses a dimension that is 0 or above `max`.
fn check_dimension(key: &str, value: usize, max: usize) -> Result<(), String> {
    match value {
        0 => Err(format!("degenerate shape: `{key}` is 0")),
        v if v > max => Err(format!(
            "`{key}` is {v}, above the largest supported ({max})"
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    intermediate_size: Option<usize>,
    model_type: Option<String>,
}

impl ModelShape {
    /// Weights of the matrices the network is made of (QKV, attention dense, both MLP
    /// matrices, every block): the non-embedding size used to compare models.
    pub fn matrix_parameters(&self) -> u64 {
        let (d, m) = (self.hidden_size as u64, self.intermediate_size as u64);
        self.num_blocks as u64 * (4 * d * d + 2 * d * m)
    }

    /// Reads the shape from a transformers `config.json`.
    pub fn from_config_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_config_json(&text).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_config_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("not a valid config.json: {e}"))?;
        if let Some(kind) = raw.model_type.as_deref() {
            if kind != "gpt_neox" {
                return Err(format!(
                    "model_type is `{kind}`; only GPT-NeoX (`gpt_neox`) checkpoints are supported"
                ));
            }
        }
        let hidden_size = raw
            .hidden_size
            .ok_or_else(|| "config.json has no `hidden_size`".to_string())?;
        let num_blocks = raw
            .num_hidden_layers
            .ok_or_else(|| "config.json has no `num_hidden_layers`".to_string())?;
        // Checked before anything is computed from it (the default below, the shapes).
        check_dimension("hidden_size", hidden_size, MAX_HIDDEN_SIZE)?;
        check_dimension("num_hidden_layers", num_blocks, MAX_BLOCKS)?;
        let intermediate_size = raw.intermediate_size.unwrap_or(4 * hidden_size);
        check_dimension(
            "intermediate_size",
            intermediate_size,
            MAX_INTERMEDIATE_SIZE,
        )?;
        Ok(ModelShape {
            hidden_size,
            num_blocks,
            intermediate_size,
        })
    }
}
