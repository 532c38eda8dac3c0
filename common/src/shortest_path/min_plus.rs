//! The min-plus (tropical) product every hop runs: blocked so a task's accumulators stay in
//! L2, vectorised (AVX2 when the CPU has it), parallel, each distinct frontier once.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;

/// Sources per task of a min-plus product, and output columns per task: a task's
/// accumulators (`SOURCE_CHUNK × COLUMN_TILE` f64, 128 KiB) stay in L2 while the matrix
/// streams past once per task.
const SOURCE_CHUNK: usize = 16;
const COLUMN_TILE: usize = 1024;

/// `out[s][y] = min_x fl(frontier[s][x] + matrix[x·stride + y])` for `y < n_out`: one hop
/// of every source's frontier (`[sources × n_in]`). Infinite frontier values are skipped, so
/// pruned sources cost nothing. `min` is exact, so the result does not depend on how the
/// work is split.
fn min_plus(
    frontier: &[f64],
    n_in: usize,
    matrix: &[f64],
    stride: usize,
    n_out: usize,
) -> Vec<f64> {
    let sources = frontier.len().checked_div(n_in).unwrap_or(0);
    let mut out = vec![f64::INFINITY; sources * n_out];
    if sources == 0 || n_out == 0 {
        return out;
    }
    let product = Product {
        frontier,
        n_in,
        matrix,
        stride,
    };
    let tiles = n_out.div_ceil(COLUMN_TILE);
    let chunks = sources.div_ceil(SOURCE_CHUNK);
    let results: Vec<(usize, usize, Vec<f64>)> = (0..chunks * tiles)
        .into_par_iter()
        .map(|task| {
            let (chunk, tile) = (task / tiles, task % tiles);
            let s = chunk * SOURCE_CHUNK..((chunk + 1) * SOURCE_CHUNK).min(sources);
            let y = tile * COLUMN_TILE..((tile + 1) * COLUMN_TILE).min(n_out);
            (chunk, tile, product.tile(s, y))
        })
        .collect();
    for (chunk, tile, acc) in results {
        let s0 = chunk * SOURCE_CHUNK;
        let (y0, y1) = (tile * COLUMN_TILE, ((tile + 1) * COLUMN_TILE).min(n_out));
        for (i, acc) in acc.chunks_exact(y1 - y0).enumerate() {
            out[(s0 + i) * n_out + y0..(s0 + i) * n_out + y1].copy_from_slice(acc);
        }
    }
    out
}

/// The operands of [`min_plus`].
struct Product<'a> {
    frontier: &'a [f64],
    n_in: usize,
    matrix: &'a [f64],
    stride: usize,
}

impl Product<'_> {
    /// Sources `s` × output columns `y`, `[s × y]`; the instruction set is picked once per
    /// tile.
    fn tile(&self, s: Range<usize>, y: Range<usize>) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { self.tile_avx2(s, y) };
            }
        }
        self.tile_portable(s, y)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2(&self, s: Range<usize>, y: Range<usize>) -> Vec<f64> {
        self.tile_portable(s, y)
    }

    #[inline(always)]
    fn tile_portable(&self, s: Range<usize>, y: Range<usize>) -> Vec<f64> {
        let width = y.len();
        let mut acc = vec![f64::INFINITY; s.len() * width];
        for x in 0..self.n_in {
            let row = &self.matrix[x * self.stride + y.start..x * self.stride + y.end];
            for (source, acc) in s.clone().zip(acc.chunks_exact_mut(width)) {
                let f = self.frontier[source * self.n_in + x];
                if f == f64::INFINITY {
                    continue;
                }
                // `min` of non-negative terms or +∞ (never NaN) is exact in any order. A
                // select (`if v < a`) would compile to masked stores, slow on many CPUs.
                for (a, &w) in acc.iter_mut().zip(row) {
                    *a = a.min(f + w);
                }
            }
        }
        acc
    }
}

/// Rows of `values` (`[rows × width]`) with identical bits share one computation: many
/// frontiers are equal (every `K`/`V` node of every seed reaches all of `ATT` at 1).
/// Returns the distinct rows and, per row, which distinct row it is.
fn distinct_rows(values: &[f64], width: usize) -> (Vec<f64>, Vec<usize>) {
    // Rows are bucketed by a cheap hash of their bits and compared in full within a bucket.
    let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut distinct: Vec<f64> = Vec::new();
    let mut index = Vec::new();
    if width == 0 {
        return (distinct, index);
    }
    for row in values.chunks_exact(width) {
        let hash = row.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, v| {
            (h ^ v.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let bucket = buckets.entry(hash).or_default();
        let same = bucket.iter().copied().find(|&d| {
            distinct[d * width..(d + 1) * width]
                .iter()
                .zip(row)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        });
        let at = same.unwrap_or_else(|| {
            let next = distinct.len() / width;
            distinct.extend_from_slice(row);
            bucket.push(next);
            next
        });
        index.push(at);
    }
    (distinct, index)
}

/// [`min_plus`] computing each distinct frontier once.
pub(super) fn min_plus_distinct(
    frontier: &[f64],
    n_in: usize,
    matrix: &[f64],
    stride: usize,
    n_out: usize,
) -> Vec<f64> {
    let (distinct, index) = distinct_rows(frontier, n_in);
    if index.len() == distinct.len() / n_in.max(1) {
        return min_plus(frontier, n_in, matrix, stride, n_out);
    }
    let computed = min_plus(&distinct, n_in, matrix, stride, n_out);
    let mut out = Vec::with_capacity(index.len() * n_out);
    for i in index {
        out.extend_from_slice(&computed[i * n_out..(i + 1) * n_out]);
    }
    out
}
