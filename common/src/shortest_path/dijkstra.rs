//! The reference: a plain Dijkstra over the full layered graph (every neuron, every nonzero
//! weight, the attention edges), which the engine is tested against and measured against.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use rayon::prelude::*;

use super::omega::omega_of;
use super::{
    layer_width, start, transition, within, PathPenalty, SeedDistances, Start, Transition,
};
use crate::error::Error;
use crate::network::WeightReader;
use crate::sampler::SninDraw;

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
                        edges[x].push((y as u32, omega_of(w)));
                    }
                }
            }
            Ok(edges)
        }
    }
}

/// The same distances as [`distances`](super::distances), by a plain Dijkstra from every sampled source over
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
                        block.values[i * targets.len() + j] =
                            within(sums[gap][t] + gap_penalty, cutoff);
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
