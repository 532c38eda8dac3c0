//! What each transition reads, for every queued seed at once: the one definition of what
//! shortest-path distances read, which the engine follows and fetchers plan from.

use super::{layer_count, transition, Transition};
use crate::layout::ModelShape;
use crate::network::{layers_of, Gather};
use crate::sampler::SninDraw;

/// How a transition's weights are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadKind {
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
pub(super) struct TransitionPlan {
    pub(super) from_layer: usize,
    pub(super) transition: Transition,
    pub(super) kind: ReadKind,
    /// What `kind` reads, as gathers: `Sampled` one, `Lines` the columns then (when needed)
    /// the rows, `Full` one.
    pub(super) reads: Vec<Gather>,
}

fn union_of(lists: impl Iterator<Item = Vec<usize>>) -> Vec<usize> {
    let mut all: Vec<usize> = lists.flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

pub(super) fn plan(draws: &[SninDraw], shape: &ModelShape, max_gap: usize) -> Vec<TransitionPlan> {
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
/// `max_gap` (see [`PathPenalty::max_gap`](super::PathPenalty::max_gap)): the one definition of what this mode reads,
/// for fetchers to plan from. Each element is read once for all the draws together.
pub fn reads(draws: &[SninDraw], shape: &ModelShape, max_gap: usize) -> Vec<Gather> {
    plan(draws, shape, max_gap)
        .into_iter()
        .flat_map(|p| p.reads)
        .collect()
}
