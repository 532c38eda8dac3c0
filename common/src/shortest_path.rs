//! Shortest-path distances between the nodes of each sample, as the paper defines them
//! (Eq. 1, SPEC §6), computed exactly.
//!
//! The full network is layered: per block `A` (d) → `QKV` (3d) → `ATT` (d) → `D` (d) → `M`
//! (m) → the next block's `A`, the last block's `M` feeding `out` (d). Every edge joins
//! consecutive layers, so every path from layer `ℓ` to layer `ℓ+g` has exactly `g` edges and
//! the penalty `λ·g^γ` depends on the layer gap alone: `d_ij = (least sum of ω over paths
//! through every neuron of the intermediate layers) + λ·g^γ`, needed only for gaps with
//! `λ·g^γ < T`.
//!
//! The least sums are a min-plus (tropical) product over layers, computed source-first: a
//! sampled source's *frontier* holds its least sum to every neuron of the layer it has
//! reached; one hop further, `F'[y] = min_x fl(F[x] + ω(x, y))`. Rounding is monotone, so
//! `min` commutes with adding a term: this recurrence gives, bit for bit, the least of the
//! left-to-right sums `((ω₁ + ω₂) + ω₃) …` over all paths, which is also exactly what
//! Dijkstra settles on (it adds edges to settled distances in path order). The tests check
//! every distance against a plain Dijkstra over the full graph ([`dijkstra_distances`]).
//!
//! Attention edges (weight 1) are never materialised: `Q` node `a` reaches `ATT` node `a`
//! only and every `K`/`V` node reaches every `ATT` node, so a frontier on `QKV` is kept as its
//! `Q` part and the least over its `K`/`V` part, and `ATT[a] = fl(min(Q[a], min KV) + 1)`.
//! From a full `A` frontier that least is `min_x fl(F[x] + min_{t∈KV} ω(x, t))`.
//!
//! Only distances up to the threshold matter. A frontier value `F` after `h` hops can only
//! lead to distances of at least `fl(F + λ·(h+1)^γ)`, so values above the threshold by that
//! measure are dropped (made infinite) before the next hop; this never changes a distance at
//! or below the threshold, and every distance above it is reported as infinite.
//!
//! What is read ([`reads`]): for gaps up to 2, the full columns `W[:, x]` of every sampled
//! source and the full rows `W[t, :]` of every sampled target, once per checkpoint for the
//! union of all seeds; from gap 3 on, whole matrices that paths cross in the middle.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;

use rayon::prelude::*;

use crate::error::Error;
use crate::layout::{BlockTensor, ModelShape};
use crate::network::{layers_of, Gather, WeightReader};
use crate::sampler::SninDraw;

/// The path-length penalty `λ·|P|^γ` of paper Eq. 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathPenalty {
    pub lambda: f64,
    pub gamma: f64,
}

impl PathPenalty {
    /// `λ·gap^γ`, the same for every path across `gap` layers.
    pub fn of_gap(&self, gap: usize) -> f64 {
        self.lambda * (gap as f64).powf(self.gamma)
    }

    /// The largest gap (at most `transitions`, the network's depth) whose penalty is below
    /// `threshold`; no larger gap can hold a neighbour. 0 when even one hop cannot.
    pub fn max_gap(&self, threshold: f64, transitions: usize) -> usize {
        (1..=transitions)
            .take_while(|&gap| self.of_gap(gap) < threshold)
            .last()
            .unwrap_or(0)
    }
}

/// What joins full layer `k` to layer `k + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A weight matrix `W[out, in]`: `ω(x, y) = 1/|W[y, x]|`, a zero weight is no edge.
    Matrix { block: usize, tensor: BlockTensor },
    /// `QKV → ATT`, the structural weight-1 edges.
    Attention,
}

/// The transition out of layer `k` (block `k / 5`).
pub fn transition(k: usize) -> Transition {
    let block = k / 5;
    let tensor = match k % 5 {
        0 => BlockTensor::Qkv,
        1 => return Transition::Attention,
        2 => BlockTensor::AttentionDense,
        3 => BlockTensor::MlpUp,
        _ => BlockTensor::MlpDown,
    };
    Transition::Matrix { block, tensor }
}

/// Neurons in full layer `k` (`out`, layer `5·blocks`, is as wide as `A`).
pub fn layer_width(shape: &ModelShape, k: usize) -> usize {
    match k % 5 {
        1 => 3 * shape.hidden_size,
        4 => shape.intermediate_size,
        _ => shape.hidden_size,
    }
}

/// Layers of the full network (`5·blocks + 1`); transitions are one fewer.
fn layer_count(shape: &ModelShape) -> usize {
    5 * shape.num_blocks + 1
}

/// How a transition's weights are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// Attention: nothing to read.
    None,
    /// Only one-hop distances are needed: sampled targets × sampled sources.
    Sampled,
    /// Full columns of the sampled sources, and full rows of the sampled targets when
    /// paths arrive at the layer from further up.
    Lines,
    /// The whole matrix: paths cross it in the middle.
    Full,
}

/// One transition's reads, for every queued seed at once.
#[derive(Debug, Clone)]
struct TransitionPlan {
    from_layer: usize,
    transition: Transition,
    kind: ReadKind,
    /// What `kind` reads, as gathers: `Sampled` one, `Lines` the columns then (when needed)
    /// the rows, `Full` one.
    reads: Vec<Gather>,
}

fn union_of(lists: impl Iterator<Item = Vec<usize>>) -> Vec<usize> {
    let mut all: Vec<usize> = lists.flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn plan(draws: &[SninDraw], shape: &ModelShape, max_gap: usize) -> Vec<TransitionPlan> {
    let hidden = shape.hidden_size;
    let per_seed: Vec<_> = draws.iter().map(|d| layers_of(d, hidden)).collect();
    let last_layer = layer_count(shape) - 1;
    (0..last_layer)
        .map(|k| {
            // Drawn neurons of layers k and k + 1, union over seeds.
            let sources = union_of(per_seed.iter().map(|l| l[k].neurons.clone()));
            let targets = union_of(per_seed.iter().map(|l| l[k + 1].neurons.clone()));
            let transition = transition(k);
            // Paths from layer k-1 and above reach k: their last hop needs targets' rows.
            let arriving = k >= 1 && max_gap >= 2;
            // A path from layer k-1 that goes on past k+1 crosses this matrix in the middle.
            let crossing = k >= 1 && max_gap >= 3 && k + 1 < last_layer;
            let (kind, reads) = match transition {
                Transition::Attention => (ReadKind::None, Vec::new()),
                Transition::Matrix { block, tensor } => {
                    let [rows, cols] = tensor.expected_shape(shape);
                    let all_rows: Vec<usize> = (0..rows).collect();
                    let all_cols: Vec<usize> = (0..cols).collect();
                    if crossing {
                        let full = Gather::new(block, tensor, all_rows, all_cols);
                        (ReadKind::Full, vec![full])
                    } else if max_gap >= 2 {
                        let mut reads = vec![Gather::new(block, tensor, all_rows, sources.clone())];
                        if arriving {
                            reads.push(Gather::new(block, tensor, targets.clone(), all_cols));
                        }
                        (ReadKind::Lines, reads)
                    } else {
                        let sampled = Gather::new(block, tensor, targets.clone(), sources.clone());
                        (ReadKind::Sampled, vec![sampled])
                    }
                }
            };
            TransitionPlan {
                from_layer: k,
                transition,
                kind,
                reads,
            }
        })
        .collect()
}

/// Every weight read the shortest-path distances of `draws` make, for gaps up to
/// `max_gap` (see [`PathPenalty::max_gap`]): the one definition of what this mode reads,
/// for fetchers to plan from. Each element is read once for all the draws together.
pub fn reads(draws: &[SninDraw], shape: &ModelShape, max_gap: usize) -> Vec<Gather> {
    plan(draws, shape, max_gap)
        .into_iter()
        .flat_map(|p| p.reads)
        .collect()
}

/// One sample's distances from the nodes of one layer to those `gap` layers further on.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceBlock {
    pub source_layer: usize,
    pub gap: usize,
    pub sources: usize,
    pub targets: usize,
    /// `d_ij` row-major `[sources × targets]`, in the sample's node order; infinite when
    /// above the cutoff or unreachable.
    pub values: Vec<f64>,
}

/// One sample's distances, a block per (source layer, gap), ordered by both.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedDistances {
    pub seed: u32,
    pub blocks: Vec<DistanceBlock>,
}

impl SeedDistances {
    /// Every block the sample has for gaps up to `max_gap`, all infinite.
    fn unreached(draw: &SninDraw, shape: &ModelShape, max_gap: usize) -> Self {
        let layers = layers_of(draw, shape.hidden_size);
        let last_layer = layers.len() - 1;
        let mut blocks = Vec::new();
        for source_layer in 0..last_layer {
            for gap in 1..=max_gap.min(last_layer - source_layer) {
                let sources = layers[source_layer].neurons.len();
                let targets = layers[source_layer + gap].neurons.len();
                blocks.push(DistanceBlock {
                    source_layer,
                    gap,
                    sources,
                    targets,
                    values: vec![f64::INFINITY; sources * targets],
                });
            }
        }
        SeedDistances {
            seed: draw.seed,
            blocks,
        }
    }

    fn block_mut(&mut self, source_layer: usize, gap: usize) -> &mut DistanceBlock {
        let at = self
            .blocks
            .partition_point(|b| (b.source_layer, b.gap) < (source_layer, gap));
        &mut self.blocks[at]
    }

    /// Per node that has a downstream layer, in node order, its finite distances.
    pub fn node_distances(&self) -> Vec<Vec<f64>> {
        let mut nodes = Vec::new();
        let mut at = 0;
        while at < self.blocks.len() {
            let source_layer = self.blocks[at].source_layer;
            let end = at
                + self.blocks[at..]
                    .iter()
                    .take_while(|b| b.source_layer == source_layer)
                    .count();
            let layer_blocks = &self.blocks[at..end];
            for source in 0..layer_blocks[0].sources {
                nodes.push(
                    layer_blocks
                        .iter()
                        .flat_map(|b| &b.values[source * b.targets..(source + 1) * b.targets])
                        .copied()
                        .filter(|d| d.is_finite())
                        .collect(),
                );
            }
            at = end;
        }
        nodes
    }
}

// ---------------------------------------------------------------------------------------------
// The min-plus engine.

/// `ω` of one transition's matrix `W[n_out, n_in]`, as far as the plan read it.
struct Omega {
    n_in: usize,
    n_out: usize,
    /// Per input neuron read as a line, its position in `lines` (`ABSENT` otherwise).
    input_pos: Vec<u32>,
    /// `[lines × line_len]`: ω from the input neuron to every output neuron (or, when
    /// `line_rows` is set, to those output neurons only).
    lines: Vec<f64>,
    line_len: usize,
    /// Position of an output neuron within a line, when lines cover sampled rows only.
    line_rows: Option<Vec<u32>>,
    /// Per output neuron read as a row, its position in `rows` (`ABSENT` otherwise).
    output_pos: Vec<u32>,
    /// `[rows × n_in]`: ω from every input neuron to the output neuron.
    rows: Vec<f64>,
}

const ABSENT: u32 = u32::MAX;

fn positions(len: usize, present: &[usize]) -> Vec<u32> {
    let mut pos = vec![ABSENT; len];
    for (i, &p) in present.iter().enumerate() {
        pos[p] = i as u32;
    }
    pos
}

#[inline]
fn omega_of(weight: f64) -> f64 {
    // A zero weight is no edge: 1/0 is +∞, which no min-plus step ever picks.
    1.0 / weight.abs()
}

/// Lines per gather when a read is split for parallelism: a few per thread, since every
/// gather of columns walks all the matrix's rows (and so all its pages) once.
fn read_chunk(lines: usize) -> usize {
    lines
        .div_ceil(2 * rayon::current_num_threads())
        .clamp(1, 256)
}

impl Omega {
    /// Reads what `plan` asks for. `Lines` columns and `Full` matrices arrive transposed
    /// (input-major), so a frontier hop streams contiguous memory.
    fn read(reader: &dyn WeightReader, plan: &TransitionPlan) -> Result<Self, Error> {
        let Transition::Matrix { tensor, .. } = plan.transition else {
            return Err(Error::InvalidParameter(
                "attention has no weights to read".into(),
            ));
        };
        let [n_out, n_in] = tensor.expected_shape(reader.shape());
        let mut omega = Omega {
            n_in,
            n_out,
            input_pos: vec![ABSENT; n_in],
            lines: Vec::new(),
            line_len: n_out,
            line_rows: None,
            output_pos: vec![ABSENT; n_out],
            rows: Vec::new(),
        };
        match plan.kind {
            ReadKind::None => {}
            ReadKind::Sampled => {
                let read = &plan.reads[0];
                omega.input_pos = positions(n_in, &read.cols);
                omega.line_len = read.rows.len();
                omega.line_rows = Some(positions(n_out, &read.rows));
                omega.lines = read_lines(reader, read)?;
            }
            ReadKind::Lines | ReadKind::Full => {
                let columns = &plan.reads[0];
                omega.input_pos = positions(n_in, &columns.cols);
                omega.lines = read_lines(reader, columns)?;
                if let Some(rows) = plan.reads.get(1) {
                    omega.output_pos = positions(n_out, &rows.rows);
                    omega.rows = read_rows(reader, rows)?;
                }
            }
        }
        Ok(omega)
    }

    /// `ω(x, y)`; the plan guarantees it was read.
    fn get(&self, y: usize, x: usize) -> f64 {
        let line = self.input_pos[x];
        if line != ABSENT {
            let within = match &self.line_rows {
                Some(pos) => pos[y] as usize,
                None => y,
            };
            return self.lines[line as usize * self.line_len + within];
        }
        self.rows[self.output_pos[y] as usize * self.n_in + x]
    }

    /// The least ω read: no hop across this transition adds less.
    fn least(&self) -> f64 {
        self.lines
            .iter()
            .chain(&self.rows)
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    /// ω from input neuron `x` to every output neuron (`Lines` and `Full` reads).
    fn line(&self, x: usize) -> &[f64] {
        let at = self.input_pos[x] as usize * self.line_len;
        &self.lines[at..at + self.line_len]
    }

    /// `[n_in × targets]`, input-major: ω from every input neuron to each of `targets`
    /// (whose rows were read, or all of whose matrix was).
    fn towards(&self, targets: &[usize]) -> Vec<f64> {
        let n_t = targets.len();
        let mut out = vec![0.0; self.n_in * n_t];
        for (j, &t) in targets.iter().enumerate() {
            let row = self.output_pos[t];
            if row != ABSENT {
                let row = &self.rows[row as usize * self.n_in..(row as usize + 1) * self.n_in];
                for (slot, &w) in out.iter_mut().skip(j).step_by(n_t).zip(row) {
                    *slot = w;
                }
            } else {
                for (x, slot) in out.iter_mut().skip(j).step_by(n_t).enumerate() {
                    *slot = self.get(t, x);
                }
            }
        }
        out
    }
}

/// The gather's columns as lines `[cols × rows]` of ω (the transpose of what it reads).
fn read_lines(reader: &dyn WeightReader, read: &Gather) -> Result<Vec<f64>, Error> {
    let n_rows = read.rows.len();
    let mut lines = vec![0.0; read.cols.len() * n_rows];
    let chunk = read_chunk(read.cols.len());
    lines
        .par_chunks_mut(chunk * n_rows.max(1))
        .zip(read.cols.par_chunks(chunk))
        .try_for_each(|(out, cols)| {
            let weights = reader.gather(read.block, read.tensor, &read.rows, cols)?;
            for (r, row) in weights.chunks_exact(cols.len()).enumerate() {
                for (c, &w) in row.iter().enumerate() {
                    out[c * n_rows + r] = omega_of(w);
                }
            }
            Ok::<(), Error>(())
        })?;
    Ok(lines)
}

/// The gather's rows `[rows × cols]` of ω, as read.
fn read_rows(reader: &dyn WeightReader, read: &Gather) -> Result<Vec<f64>, Error> {
    let n_cols = read.cols.len();
    let mut rows = vec![0.0; read.rows.len() * n_cols];
    let chunk = read_chunk(read.rows.len());
    rows.par_chunks_mut(chunk * n_cols.max(1))
        .zip(read.rows.par_chunks(chunk))
        .try_for_each(|(out, rows)| {
            let weights = reader.gather(read.block, read.tensor, rows, &read.cols)?;
            for (slot, w) in out.iter_mut().zip(weights) {
                *slot = omega_of(w);
            }
            Ok::<(), Error>(())
        })?;
    Ok(rows)
}

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
fn min_plus_distinct(
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

/// Where a group of sources' least path sums stand: on a full layer, one row per source.
#[derive(Debug, Clone)]
enum Frontier {
    /// `[sources × width]`.
    Dense { width: usize, values: Vec<f64> },
    /// On `QKV`: the `Q` part `[sources × d]` and, per source, the least over `K`/`V`.
    Qkv {
        hidden: usize,
        q: Vec<f64>,
        kv: Vec<f64>,
    },
}

/// Sources of one sample and one layer, on their way down the network.
struct Group {
    seed: usize,
    source_layer: usize,
    /// Edges walked so far: the frontier lies on layer `source_layer + hops`.
    hops: usize,
    sources: usize,
    frontier: Frontier,
}

/// Drops frontier values that cannot lead to a distance within `cutoff` (module docs):
/// those with `fl(fl(v + least_step) + next_penalty) > cutoff`, where every path on from the
/// value adds at least `least_step` and then pays at least `next_penalty`. Rounding is
/// monotone, so every distance through a dropped value is above the cutoff.
fn prune(values: &mut [f64], least_step: f64, next_penalty: f64, cutoff: f64) {
    if cutoff == f64::INFINITY {
        return;
    }
    for v in values {
        if (*v + least_step) + next_penalty > cutoff {
            *v = f64::INFINITY;
        }
    }
}

fn is_unreached(frontier: &Frontier) -> bool {
    match frontier {
        Frontier::Dense { values, .. } => values.iter().all(|v| *v == f64::INFINITY),
        Frontier::Qkv { q, kv, .. } => q.iter().chain(kv).all(|v| *v == f64::INFINITY),
    }
}

/// What both ways of computing distances start from: every seed unreached.
struct Start {
    shape: ModelShape,
    per_seed: Vec<Vec<crate::network::Layer>>,
    results: Vec<SeedDistances>,
    last_layer: usize,
}

fn start(reader: &dyn WeightReader, draws: &[SninDraw], max_gap: usize) -> Start {
    let shape = *reader.shape();
    Start {
        per_seed: draws
            .iter()
            .map(|d| layers_of(d, shape.hidden_size))
            .collect(),
        results: draws
            .iter()
            .map(|d| SeedDistances::unreached(d, &shape, max_gap))
            .collect(),
        last_layer: layer_count(&shape) - 1,
        shape,
    }
}

/// The shortest-path distances of every sample in `draws` on one checkpoint, for gaps up
/// to `max_gap`; distances above `cutoff` (pass the threshold `T`, or +∞ for all) are
/// reported as infinite. Each weight is read once for all the draws, a transition at a
/// time, so memory stays at a few layers' worth.
pub fn distances(
    reader: &dyn WeightReader,
    draws: &[SninDraw],
    penalty: PathPenalty,
    max_gap: usize,
    cutoff: f64,
) -> Result<Vec<SeedDistances>, Error> {
    let Start {
        shape,
        per_seed,
        mut results,
        last_layer,
    } = start(reader, draws, max_gap);
    if max_gap == 0 {
        return Ok(results);
    }
    let hidden = shape.hidden_size;
    let mut groups: Vec<Group> = Vec::new();
    for plan in plan(draws, &shape, max_gap) {
        let k = plan.from_layer;
        let omega = match plan.transition {
            Transition::Matrix { .. } => Some(Omega::read(reader, &plan)?),
            Transition::Attention => None,
        };
        let continues = k + 1 < last_layer;

        // Paths that started further up: their last hop into this layer's targets, and
        // (when a further gap needs them) one hop into the whole next layer.
        for seed in 0..draws.len() {
            let arriving: Vec<&Group> = groups.iter().filter(|g| g.seed == seed).collect();
            if arriving.is_empty() {
                continue;
            }
            let targets = &per_seed[seed][k + 1].neurons;
            let reached = match &omega {
                Some(omega) => last_hop_matrix(omega, &arriving, targets),
                None => arriving
                    .iter()
                    .map(|g| attention_hop(&g.frontier, g.sources, Some(targets.as_slice())))
                    .collect(),
            };
            for (group, mut values) in arriving.iter().zip(reached) {
                let gap = group.hops + 1;
                let gap_penalty = penalty.of_gap(gap);
                for v in &mut values {
                    *v += gap_penalty;
                    if *v > cutoff {
                        *v = f64::INFINITY;
                    }
                }
                results[seed]
                    .block_mut(group.source_layer, gap)
                    .values
                    .copy_from_slice(&values);
            }
        }
        groups.retain(|g| g.hops + 1 < max_gap && continues);
        // What crosses this layer serves gaps from `hops + 2` on, and first adds at least
        // the least ω of the transition: a stricter cut than the last hop's.
        let least_step = match &omega {
            _ if groups.is_empty() => 0.0,
            Some(omega) => omega.least(),
            None => 1.0,
        };
        let crossing: Vec<Frontier> = groups
            .iter()
            .map(|g| {
                let mut frontier = g.frontier.clone();
                prune_frontier(
                    &mut frontier,
                    least_step,
                    penalty.of_gap(g.hops + 2),
                    cutoff,
                );
                frontier
            })
            .collect();
        let advanced: Vec<Frontier> = match &omega {
            Some(omega) => full_hop_matrix(omega, &groups, &crossing, &plan, hidden),
            None => groups
                .iter()
                .zip(&crossing)
                .map(|(g, frontier)| Frontier::Dense {
                    width: hidden,
                    values: attention_hop(frontier, g.sources, None),
                })
                .collect(),
        };
        for (group, frontier) in groups.iter_mut().zip(advanced) {
            group.hops += 1;
            group.frontier = frontier;
            let next_penalty = penalty.of_gap(group.hops + 1);
            prune_frontier(&mut group.frontier, 0.0, next_penalty, cutoff);
        }

        // Paths that start here: one-hop distances, and the first frontier.
        for (seed, layers) in per_seed.iter().enumerate() {
            let sources = &layers[k].neurons;
            let targets = &layers[k + 1].neurons;
            let gap_penalty = penalty.of_gap(1);
            let block = results[seed].block_mut(k, 1);
            for (i, &x) in sources.iter().enumerate() {
                for (j, &t) in targets.iter().enumerate() {
                    let step = match &omega {
                        Some(omega) => omega.get(t, x),
                        None => attention_omega(x, t, hidden),
                    };
                    let d = step + gap_penalty;
                    block.values[i * targets.len() + j] =
                        if d > cutoff { f64::INFINITY } else { d };
                }
            }
            if max_gap >= 2 && continues {
                let mut frontier = first_frontier(omega.as_ref(), sources, &shape, k);
                prune_frontier(&mut frontier, 0.0, penalty.of_gap(2), cutoff);
                if !is_unreached(&frontier) {
                    groups.push(Group {
                        seed,
                        source_layer: k,
                        hops: 1,
                        sources: sources.len(),
                        frontier,
                    });
                }
            }
        }
        groups.retain(|g| !is_unreached(&g.frontier));
    }
    Ok(results)
}

fn prune_frontier(frontier: &mut Frontier, least_step: f64, next_penalty: f64, cutoff: f64) {
    match frontier {
        Frontier::Dense { values, .. } => prune(values, least_step, next_penalty, cutoff),
        Frontier::Qkv { q, kv, .. } => {
            prune(q, least_step, next_penalty, cutoff);
            prune(kv, least_step, next_penalty, cutoff);
        }
    }
}

/// `ω` of the attention edge from `QKV` neuron `t` to `ATT` neuron `a`.
fn attention_omega(t: usize, a: usize, hidden: usize) -> f64 {
    if t >= hidden || t == a {
        1.0
    } else {
        f64::INFINITY
    }
}

/// The frontier of `sources` (neurons of layer `k`) one hop down, on all of layer `k+1`.
fn first_frontier(
    omega: Option<&Omega>,
    sources: &[usize],
    shape: &ModelShape,
    k: usize,
) -> Frontier {
    let hidden = shape.hidden_size;
    match omega {
        None => {
            let mut values = Vec::with_capacity(sources.len() * hidden);
            for &t in sources {
                values.extend((0..hidden).map(|a| attention_omega(t, a, hidden)));
            }
            Frontier::Dense {
                width: hidden,
                values,
            }
        }
        Some(omega)
            if matches!(
                transition(k),
                Transition::Matrix {
                    tensor: BlockTensor::Qkv,
                    ..
                }
            ) =>
        {
            let mut q = Vec::with_capacity(sources.len() * hidden);
            let mut kv = Vec::with_capacity(sources.len());
            for &x in sources {
                let line = omega.line(x);
                q.extend_from_slice(&line[..hidden]);
                kv.push(line[hidden..].iter().copied().fold(f64::INFINITY, f64::min));
            }
            Frontier::Qkv { hidden, q, kv }
        }
        Some(omega) => {
            let mut values = Vec::with_capacity(sources.len() * omega.n_out);
            for &x in sources {
                values.extend_from_slice(omega.line(x));
            }
            Frontier::Dense {
                width: omega.n_out,
                values,
            }
        }
    }
}

/// Through attention from a `QKV` frontier: `fl(min(Q[a], min KV) + 1)` for `ATT` neurons
/// `a` (the given targets, or all of them).
fn attention_hop(frontier: &Frontier, sources: usize, targets: Option<&[usize]>) -> Vec<f64> {
    let Frontier::Qkv { hidden, q, kv } = frontier else {
        // A frontier reaches QKV only through the Qkv matrix, which always yields this form.
        unreachable!("attention follows a QKV frontier");
    };
    let hidden = *hidden;
    let mut out = Vec::new();
    for s in 0..sources {
        let q = &q[s * hidden..(s + 1) * hidden];
        let kv = kv[s];
        match targets {
            Some(targets) => out.extend(targets.iter().map(|&a| q[a].min(kv) + 1.0)),
            None => out.extend(q.iter().map(|&qa| qa.min(kv) + 1.0)),
        }
    }
    out
}

/// The last hop of one sample's arriving groups into its sampled `targets` (rows of the
/// matrix), one result `[sources × targets]` per group.
fn last_hop_matrix(omega: &Omega, arriving: &[&Group], targets: &[usize]) -> Vec<Vec<f64>> {
    let towards = omega.towards(targets);
    arriving
        .iter()
        .map(|g| match &g.frontier {
            Frontier::Dense { width, values } => {
                min_plus_distinct(values, *width, &towards, targets.len(), targets.len())
            }
            Frontier::Qkv { .. } => unreachable!("a QKV frontier leaves through attention"),
        })
        .collect()
}

/// One hop of every group (all samples together) into the whole next layer.
fn full_hop_matrix(
    omega: &Omega,
    groups: &[Group],
    frontiers: &[Frontier],
    plan: &TransitionPlan,
    hidden: usize,
) -> Vec<Frontier> {
    if groups.is_empty() {
        return Vec::new();
    }
    let n_in = omega.n_in;
    let mut all = Vec::new();
    for frontier in frontiers {
        match frontier {
            Frontier::Dense { values, .. } => all.extend_from_slice(values),
            Frontier::Qkv { .. } => unreachable!("a QKV frontier leaves through attention"),
        }
    }
    let is_qkv = matches!(
        plan.transition,
        Transition::Matrix {
            tensor: BlockTensor::Qkv,
            ..
        }
    );
    let split = |values: Vec<f64>, width: usize| -> Vec<Vec<f64>> {
        let mut at = 0;
        groups
            .iter()
            .map(|g| {
                let part = values[at..at + g.sources * width].to_vec();
                at += g.sources * width;
                part
            })
            .collect()
    };
    if is_qkv {
        // Onto QKV only the Q part and the least over K/V are kept (module docs).
        let q = split(
            min_plus_distinct(&all, n_in, &omega.lines, omega.line_len, hidden),
            hidden,
        );
        let kv_min: Vec<f64> = (0..n_in)
            .map(|x| {
                omega.line(x)[hidden..]
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let kv = split(min_plus_distinct(&all, n_in, &kv_min, 1, 1), 1);
        q.into_iter()
            .zip(kv)
            .map(|(q, kv)| Frontier::Qkv { hidden, q, kv })
            .collect()
    } else {
        let width = omega.n_out;
        split(
            min_plus_distinct(&all, n_in, &omega.lines, omega.line_len, width),
            width,
        )
        .into_iter()
        .map(|values| Frontier::Dense { width, values })
        .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The reference: a plain Dijkstra over the full layered graph.

#[derive(PartialEq)]
struct Queued {
    distance: f64,
    hops: usize,
    node: usize,
}

impl Eq for Queued {}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Least distance first (BinaryHeap is a max-heap).
        other
            .distance
            .total_cmp(&self.distance)
            .then_with(|| (other.hops, other.node).cmp(&(self.hops, self.node)))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Out-edges of every neuron of one full layer: `(target neuron, ω)`, zero weights left
/// out, the weight-1 attention edges included.
type Adjacency = Vec<Vec<(u32, f64)>>;

fn adjacency(reader: &dyn WeightReader, k: usize) -> Result<Adjacency, Error> {
    let shape = reader.shape();
    let hidden = shape.hidden_size;
    match transition(k) {
        Transition::Attention => Ok((0..3 * hidden)
            .map(|t| {
                if t < hidden {
                    vec![(t as u32, 1.0)]
                } else {
                    (0..hidden).map(|a| (a as u32, 1.0)).collect()
                }
            })
            .collect()),
        Transition::Matrix { block, tensor } => {
            let [n_out, n_in] = tensor.expected_shape(shape);
            let rows: Vec<usize> = (0..n_out).collect();
            let cols: Vec<usize> = (0..n_in).collect();
            let weights = reader.gather(block, tensor, &rows, &cols)?;
            let mut edges: Adjacency = vec![Vec::new(); n_in];
            for (y, row) in weights.chunks_exact(n_in.max(1)).enumerate() {
                for (x, &w) in row.iter().enumerate() {
                    if w != 0.0 {
                        edges[x].push((y as u32, 1.0 / w.abs()));
                    }
                }
            }
            Ok(edges)
        }
    }
}

/// The same distances as [`distances`], by a plain Dijkstra from every sampled source over
/// the full layered graph (every neuron, every nonzero weight, the attention edges): the
/// reference the engine is tested against, and the baseline its speed is measured against.
/// Searches stop past `max_gap` layers and, like the engine, where nothing within `cutoff`
/// can follow.
pub fn dijkstra_distances(
    reader: &dyn WeightReader,
    draws: &[SninDraw],
    penalty: PathPenalty,
    max_gap: usize,
    cutoff: f64,
) -> Result<Vec<SeedDistances>, Error> {
    let Start {
        shape,
        per_seed,
        mut results,
        last_layer,
    } = start(reader, draws, max_gap);
    if max_gap == 0 {
        return Ok(results);
    }
    let mut window: HashMap<usize, Adjacency> = HashMap::new();
    for source_layer in 0..last_layer {
        let depth = max_gap.min(last_layer - source_layer);
        window.retain(|&k, _| k >= source_layer);
        for k in source_layer..source_layer + depth {
            if let std::collections::hash_map::Entry::Vacant(slot) = window.entry(k) {
                slot.insert(adjacency(reader, k)?);
            }
        }
        let graph: Vec<&Adjacency> = (source_layer..source_layer + depth)
            .map(|k| &window[&k])
            .collect();
        let widths: Vec<usize> = (0..=depth)
            .map(|h| layer_width(&shape, source_layer + h))
            .collect();
        for (seed, layers) in per_seed.iter().enumerate() {
            let sources = &layers[source_layer].neurons;
            let searched: Vec<Vec<Vec<f64>>> = sources
                .par_iter()
                .map(|&x| dijkstra(&graph, &widths, x, penalty, cutoff))
                .collect();
            for gap in 1..=depth {
                let targets = &layers[source_layer + gap].neurons;
                let gap_penalty = penalty.of_gap(gap);
                let block = results[seed].block_mut(source_layer, gap);
                for (i, sums) in searched.iter().enumerate() {
                    for (j, &t) in targets.iter().enumerate() {
                        let d = sums[gap][t] + gap_penalty;
                        block.values[i * targets.len() + j] =
                            if d > cutoff { f64::INFINITY } else { d };
                    }
                }
            }
        }
    }
    Ok(results)
}

/// Least path sums from neuron `source` of the first layer to every neuron of the next
/// `graph.len()` layers, `[hops][neuron]`.
fn dijkstra(
    graph: &[&Adjacency],
    widths: &[usize],
    source: usize,
    penalty: PathPenalty,
    cutoff: f64,
) -> Vec<Vec<f64>> {
    let depth = graph.len();
    let mut settled: Vec<Vec<f64>> = widths.iter().map(|&w| vec![f64::INFINITY; w]).collect();
    let mut done: Vec<Vec<bool>> = widths.iter().map(|&w| vec![false; w]).collect();
    let mut heap = BinaryHeap::new();
    settled[0][source] = 0.0;
    heap.push(Queued {
        distance: 0.0,
        hops: 0,
        node: source,
    });
    while let Some(Queued {
        distance,
        hops,
        node,
    }) = heap.pop()
    {
        if done[hops][node] {
            continue;
        }
        done[hops][node] = true;
        if hops == depth {
            continue;
        }
        // Nothing past here can end within the cutoff (the engine prunes the same way).
        if hops > 0 && distance + penalty.of_gap(hops + 1) > cutoff {
            continue;
        }
        for &(target, omega) in &graph[hops][node] {
            let target = target as usize;
            let candidate = distance + omega;
            if candidate < settled[hops + 1][target] {
                settled[hops + 1][target] = candidate;
                heap.push(Queued {
                    distance: candidate,
                    hops: hops + 1,
                    node: target,
                });
            }
        }
    }
    settled
}
