//! Drawing the neurons of a sampled sub-network (SNIN), bit-compatible with the
//! reference code's `np.random.seed(k); np.random.choice(np.arange(n), k, replace=False)`
//! on numpy's legacy global generator (docs/method.md §2).

use rand_mt::Mt;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::layout::ModelShape;

/// numpy's legacy `RandomState` as far as `choice(n, k, replace=False)` needs it.
pub struct LegacyRandomState {
    mt: Mt,
}

impl LegacyRandomState {
    /// `np.random.seed(seed)` for an integer seed: MT19937's `init_genrand`.
    pub fn new(seed: u32) -> Self {
        Self { mt: Mt::new(seed) }
    }

    fn next_u64(&mut self) -> u64 {
        // numpy's mt19937_next64: high word first.
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        (hi << 32) | lo
    }

    /// numpy's `random_interval`: uniform on `[0, max]` by rejection on the
    /// smallest covering bit mask.
    fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= u64::from(u32::MAX) {
            loop {
                let value = u64::from(self.mt.next_u32()) & mask;
                if value <= max {
                    return value;
                }
            }
        } else {
            loop {
                let value = self.next_u64() & mask;
                if value <= max {
                    return value;
                }
            }
        }
    }

    /// `choice(np.arange(n), k, replace=False)`: the first `k` entries of
    /// `permutation(n)`, itself a Fisher–Yates shuffle from the top down.
    pub fn choice_without_replacement(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut values: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.random_interval(i as u64) as usize;
            values.swap(i, j);
        }
        values.truncate(k);
        values
    }
}

/// The neurons drawn for one block (docs/method.md §1 table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDraw {
    /// `nums1`: block-input neurons, from `[0, d)`.
    pub input: Vec<usize>,
    /// `nums2_tmp` / `nums3`: the `j` of the QKV triples and of the attention output.
    pub heads: Vec<usize>,
    /// `nums4`: attention dense output neurons, from `[0, d)`.
    pub dense: Vec<usize>,
    /// `nums5`: MLP hidden neurons, from `[0, m)`.
    pub mlp: Vec<usize>,
}

impl BlockDraw {
    /// `nums2` as the reference expands it: all `j`, then all `j+d`, then all `j+2d`.
    pub fn qkv_rows(&self, hidden: usize) -> Vec<usize> {
        (0..3)
            .flat_map(|part| self.heads.iter().map(move |&j| j + part * hidden))
            .collect()
    }
}

/// All neurons of one sample: per block, and the output layer after the last block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SninDraw {
    pub seed: u32,
    pub layer_sample: usize,
    pub blocks: Vec<BlockDraw>,
    /// `nums6`: the last block's output neurons.
    pub output: Vec<usize>,
}

/// Refuses a `layer_sample` that the model's layers cannot supply.
pub fn check_layer_sample(shape: &ModelShape, layer_sample: usize) -> Result<(), Error> {
    let d = shape.hidden_size;
    let m = shape.intermediate_size;
    if layer_sample == 0 {
        return Err(Error::InvalidParameter(
            "layer_sample must be at least 1".to_string(),
        ));
    }
    if layer_sample > d {
        return Err(Error::InvalidParameter(format!(
            "layer_sample {layer_sample} is larger than a layer: hidden_size is {d}"
        )));
    }
    if 2 * layer_sample > m {
        return Err(Error::InvalidParameter(format!(
            "layer_sample {layer_sample} needs {} MLP neurons but intermediate_size is {m}",
            2 * layer_sample
        )));
    }
    Ok(())
}

/// Draws seed `seed`'s neurons for a model of shape `shape`, `layer_sample` per layer.
pub fn draw_snin(seed: u32, shape: &ModelShape, layer_sample: usize) -> Result<SninDraw, Error> {
    check_layer_sample(shape, layer_sample)?;
    let d = shape.hidden_size;
    let m = shape.intermediate_size;
    let mut rng = LegacyRandomState::new(seed);
    let mut blocks = Vec::with_capacity(shape.num_blocks);
    for _ in 0..shape.num_blocks {
        let input = rng.choice_without_replacement(d, layer_sample);
        let heads = rng.choice_without_replacement(d, layer_sample);
        let dense = rng.choice_without_replacement(d, layer_sample);
        let mlp = rng.choice_without_replacement(m, 2 * layer_sample);
        blocks.push(BlockDraw {
            input,
            heads,
            dense,
            mlp,
        });
    }
    let output = rng.choice_without_replacement(d, layer_sample);
    Ok(SninDraw {
        seed,
        layer_sample,
        blocks,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_first_output() {
        // First genrand_int32 output for init_genrand(5489), from the MT19937 reference.
        let mut rng = LegacyRandomState::new(5489);
        assert_eq!(rng.mt.next_u32(), 3_499_211_612);
    }

    #[test]
    fn choice_is_a_prefix_of_a_permutation() {
        let mut rng = LegacyRandomState::new(7);
        let drawn = rng.choice_without_replacement(100, 100);
        let mut sorted = drawn.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn layer_sample_larger_than_layer_is_refused() {
        let shape = ModelShape {
            hidden_size: 16,
            num_blocks: 2,
            intermediate_size: 64,
        };
        let err = draw_snin(0, &shape, 17).unwrap_err();
        assert!(err.to_string().contains("hidden_size is 16"), "{err}");
    }
}
