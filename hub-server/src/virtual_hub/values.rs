//! The weights of a virtual checkpoint, generated at any offset.
//!
//! Element `i` of a weight matrix with `cols` columns at training step `s` is
//!
//! ```text
//! w(i, s) = table_s[q(i)] · f_s[i mod cols]
//! q(i)    = 12 bits of h32(k, ⌊i/2⌋)                 (the low half for even i, the high for odd)
//! table_s[q] = move_s(σ · Φ⁻¹((q + ½) / 4096))        (a normal quantile moved along the trajectory)
//! f_s[c]  = exp(diversity_s · Φ⁻¹((h32(k', c) mod 4096 + ½) / 4096))
//! ```
//!
//! where `k`, `k'` are the tensor's value and column keys (from the model's seed and the
//! tensor's name), `h32` is a 32-bit integer hash, `σ` the tensor's initial scale, and
//! `move_s` and `diversity_s` are `synth`'s trajectory at the step's point
//! ([`TrajectoryPoint::apply`]: preferential-attachment rounds that scale magnitudes above
//! the median up and those below down; per-input-neuron scale factors whose spread grows).
//! Every element is a pure function of those, so any byte range is computed without its
//! neighbours, and the base weights are the same at every step.

use std::sync::OnceLock;

use half::f16;
use half::slice::HalfFloatSliceExt as _;
use neuromfa_common::synth::{median_magnitude, TrajectoryPoint};
use statrs::distribution::{ContinuousCDF as _, Normal};

/// Levels of the quantised normal distribution.
const LEVELS: usize = 4096;
const LEVEL_MASK: u32 = LEVELS as u32 - 1;

/// Φ⁻¹ at the middle of each of [`LEVELS`] equally likely bins.
fn quantiles() -> &'static [f64] {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // N(0, 1) is always a valid distribution.
        let normal = Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!());
        (0..LEVELS)
            .map(|q| normal.inverse_cdf((q as f64 + 0.5) / LEVELS as f64))
            .collect()
    })
}

/// A 32-bit integer hash (murmur3's finaliser over a keyed, spread input).
#[inline(always)]
fn h32(key: u32, x: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ key;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// The values of one normal-filled tensor's elements at one training step.
pub(crate) struct StepTable {
    table: Vec<f32>,
    diversity: f64,
}

impl StepTable {
    /// The quantised N(0, `std`) moved to `point`.
    pub(crate) fn new(std: f64, point: TrajectoryPoint) -> Self {
        let median = median_magnitude(std);
        let table = quantiles()
            .iter()
            .map(|z| point.apply(z * std, median, 1.0) as f32)
            .collect();
        StepTable {
            table,
            diversity: point.diversity,
        }
    }
}

/// A normal-filled weight matrix: its keys and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NormalTensor {
    pub(crate) key: u32,
    pub(crate) column_key: u32,
    pub(crate) cols: u64,
}

/// Elements generated at a time.
const BLOCK: usize = 4096;

impl NormalTensor {
    /// A tensor of `cols` columns whose stream is `stream` (a hash of the model's seed
    /// and the tensor's name).
    pub(crate) fn new(stream: u64, cols: u64) -> Self {
        NormalTensor {
            key: stream as u32,
            column_key: (stream >> 32) as u32,
            cols: cols.max(1),
        }
    }

    /// The scale factor of column `col` at `step`.
    fn column_factor(&self, step: &StepTable, col: u64) -> f32 {
        let q = (h32(self.column_key, col as u32) & LEVEL_MASK) as usize;
        (step.diversity * quantiles()[q]).exp() as f32
    }

    /// Little-endian f16 bytes of elements `first …`, as many as fill `out` (an even
    /// number of bytes).
    pub(crate) fn fill(&self, step: &StepTable, first: u64, out: &mut [u8]) {
        let count = out.len() / 2;
        if count == 0 {
            return;
        }
        // The factors of the columns this range touches: all of them, or the few a short
        // range crosses; `factors[k]` is column `(first_col + k) mod cols`.
        let first_col = first % self.cols;
        let span = (count as u64).min(self.cols);
        let factors: Vec<f32> = (0..span)
            .map(|k| self.column_factor(step, (first_col + k) % self.cols))
            .collect();
        let mut values = [0f32; BLOCK];
        let mut halves = [f16::ZERO; BLOCK];
        let table = &step.table[..LEVELS];
        let mut col = 0usize;
        let mut done = 0usize;
        while done < count {
            let n = BLOCK.min(count - done);
            let block_first = first + done as u64;
            // The quantised normals: one hash gives a pair of elements.
            let mut j = 0;
            if !block_first.is_multiple_of(2) {
                let h = h32(self.key, (block_first >> 1) as u32);
                values[0] = table[((h >> 16) & LEVEL_MASK) as usize];
                j = 1;
            }
            let mut pair = ((block_first + j as u64) >> 1) as u32;
            while j + 1 < n {
                let h = h32(self.key, pair);
                values[j] = table[(h & LEVEL_MASK) as usize];
                values[j + 1] = table[((h >> 16) & LEVEL_MASK) as usize];
                pair = pair.wrapping_add(1);
                j += 2;
            }
            if j < n {
                let h = h32(self.key, pair);
                values[j] = table[(h & LEVEL_MASK) as usize];
            }
            // Times their columns' factors, a run of columns at a time.
            let mut k = 0;
            while k < n {
                let run = (n - k).min(factors.len() - col);
                for (v, f) in values[k..k + run].iter_mut().zip(&factors[col..col + run]) {
                    *v *= f;
                }
                k += run;
                col += run;
                if col == factors.len() {
                    col = 0;
                }
            }
            halves[..n].convert_from_f32_slice(&values[..n]);
            let bytes = &mut out[2 * done..2 * (done + n)];
            for (two, h) in bytes.chunks_exact_mut(2).zip(&halves[..n]) {
                two.copy_from_slice(&h.to_bits().to_le_bytes());
            }
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor() -> NormalTensor {
        NormalTensor::new(0x1234_5678_9abc_def0, 7)
    }

    fn values(point: TrajectoryPoint, first: u64, count: usize) -> Vec<f32> {
        let mut out = vec![0u8; count * 2];
        tensor().fill(&StepTable::new(0.02, point), first, &mut out);
        out.chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }

    #[test]
    fn any_range_is_the_same_as_within_the_whole() {
        let point = TrajectoryPoint::at(0.7);
        let whole = values(point, 0, 10_000);
        for (first, count) in [(0, 1), (1, 1), (5, 3), (6, 14), (4095, 4), (9_000, 1_000)] {
            assert_eq!(
                values(point, first as u64, count),
                &whole[first..first + count],
                "{first}+{count}"
            );
        }
    }

    #[test]
    fn values_look_like_synths_weights() {
        let start = values(TrajectoryPoint::at(0.0), 0, 100_000);
        let mean = start.iter().map(|v| f64::from(*v)).sum::<f64>() / start.len() as f64;
        let var = start
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / start.len() as f64;
        assert!(mean.abs() < 5e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "sd {}", var.sqrt());
        // Along the trajectory the same base weights move: strong ones grow.
        let end = values(TrajectoryPoint::at(1.0), 0, 1000);
        let grew = start[..1000]
            .iter()
            .zip(&end)
            .filter(|(a, b)| a.abs() > 0.03 && b.abs() > a.abs())
            .count();
        let strong = start[..1000].iter().filter(|a| a.abs() > 0.03).count();
        assert!(
            grew * 10 > strong * 6,
            "{grew} of {strong} strong weights grew"
        );
    }
}
