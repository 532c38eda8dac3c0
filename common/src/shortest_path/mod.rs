//! Shortest-path distances between the nodes of each sample, as the paper defines them
//! (Eq. 1, docs/method.md §6), computed exactly.
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
//!
//! The parts: what each transition reads (`plan`), the weights as `ω` (`omega`), the min-plus
//! product, the kernel every hop runs (`min_plus`), the frontiers walked down the network
//! (`engine`), and the plain Dijkstra the engine is checked against (`dijkstra`).

mod dijkstra;
mod engine;
mod min_plus;
mod omega;
mod plan;

pub use dijkstra::dijkstra_distances;
pub use engine::distances;
pub use plan::reads;

use crate::layout::{BlockTensor, ModelShape};
use crate::network::{layers_of, Layer, WeightReader};
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

/// `d`, or +∞ when it is above `cutoff`: distances past the threshold are reported as
/// infinite.
fn within(d: f64, cutoff: f64) -> f64 {
    if d > cutoff {
        f64::INFINITY
    } else {
        d
    }
}

/// What both ways of computing distances start from: every seed unreached.
struct Start {
    shape: ModelShape,
    /// Per seed, its drawn nodes layer by layer.
    per_seed: Vec<Vec<Layer>>,
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
