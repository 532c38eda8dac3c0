//! The min-plus engine: every sampled source's frontier walked down the network a
//! transition at a time, each transition's weights read once for all seeds.

use super::min_plus::min_plus_distinct;
use super::omega::Omega;
use super::plan::{plan, TransitionPlan};
use super::{start, transition, within, PathPenalty, SeedDistances, Start, Transition};
use crate::error::Error;
use crate::layout::BlockTensor;
use crate::network::{Layer, WeightReader};
use crate::sampler::SninDraw;

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

/// Drops frontier values that cannot lead to a distance within `cutoff` ([`super`]):
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
        results,
        last_layer,
    } = start(reader, draws, max_gap);
    if max_gap == 0 {
        return Ok(results);
    }
    let mut walk = Walk {
        penalty,
        max_gap,
        cutoff,
        hidden: shape.hidden_size,
        per_seed,
        results,
        groups: Vec::new(),
    };
    for plan in plan(draws, &shape, max_gap) {
        let omega = match plan.transition {
            Transition::Matrix { .. } => Some(Omega::read(reader, &plan)?),
            Transition::Attention => None,
        };
        let hop = Hop {
            plan: &plan,
            omega: omega.as_ref(),
            continues: plan.from_layer + 1 < last_layer,
        };
        walk.arrive(&hop);
        walk.cross(&hop);
        walk.depart(&hop);
        walk.groups.retain(|g| !is_unreached(&g.frontier));
    }
    Ok(walk.results)
}

/// The walk down the network: the distances found so far and the groups still on their way.
struct Walk {
    penalty: PathPenalty,
    max_gap: usize,
    cutoff: f64,
    hidden: usize,
    per_seed: Vec<Vec<Layer>>,
    results: Vec<SeedDistances>,
    groups: Vec<Group>,
}

/// One transition, out of layer `plan.from_layer`, with its weights as read.
struct Hop<'a> {
    plan: &'a TransitionPlan,
    /// `None` across attention, whose edges are never read.
    omega: Option<&'a Omega>,
    /// Whether a layer follows the one this transition reaches.
    continues: bool,
}

impl Walk {
    /// Paths that started further up: their last hop into the sampled targets of the layer
    /// this transition reaches, which settles their distances at gap `hops + 1`.
    fn arrive(&mut self, hop: &Hop) {
        let k = hop.plan.from_layer;
        for (seed, layers) in self.per_seed.iter().enumerate() {
            let arriving: Vec<&Group> = self.groups.iter().filter(|g| g.seed == seed).collect();
            if arriving.is_empty() {
                continue;
            }
            let targets = &layers[k + 1].neurons;
            let reached = match hop.omega {
                Some(omega) => last_hop_matrix(omega, &arriving, targets),
                None => arriving
                    .iter()
                    .map(|g| attention_hop(&g.frontier, g.sources, Some(targets.as_slice())))
                    .collect(),
            };
            for (group, mut values) in arriving.iter().zip(reached) {
                let gap = group.hops + 1;
                let gap_penalty = self.penalty.of_gap(gap);
                for v in &mut values {
                    *v = within(*v + gap_penalty, self.cutoff);
                }
                self.results[seed]
                    .block_mut(group.source_layer, gap)
                    .values
                    .copy_from_slice(&values);
            }
        }
    }

    /// Paths that go on past the layer this transition reaches (for a further gap): one hop
    /// into the whole of it, all samples together.
    fn cross(&mut self, hop: &Hop) {
        let max_gap = self.max_gap;
        self.groups
            .retain(|g| g.hops + 1 < max_gap && hop.continues);
        // What crosses this layer serves gaps from `hops + 2` on, and first adds at least
        // the least ω of the transition: a stricter cut than the last hop's.
        let least_step = match hop.omega {
            _ if self.groups.is_empty() => 0.0,
            Some(omega) => omega.least(),
            None => 1.0,
        };
        let crossing: Vec<Frontier> = self
            .groups
            .iter()
            .map(|g| {
                let mut frontier = g.frontier.clone();
                prune_frontier(
                    &mut frontier,
                    least_step,
                    self.penalty.of_gap(g.hops + 2),
                    self.cutoff,
                );
                frontier
            })
            .collect();
        let advanced: Vec<Frontier> = match hop.omega {
            Some(omega) => full_hop_matrix(omega, &self.groups, &crossing, hop.plan, self.hidden),
            None => self
                .groups
                .iter()
                .zip(&crossing)
                .map(|(g, frontier)| Frontier::Dense {
                    width: self.hidden,
                    values: attention_hop(frontier, g.sources, None),
                })
                .collect(),
        };
        for (group, frontier) in self.groups.iter_mut().zip(advanced) {
            group.hops += 1;
            group.frontier = frontier;
            let next_penalty = self.penalty.of_gap(group.hops + 1);
            prune_frontier(&mut group.frontier, 0.0, next_penalty, self.cutoff);
        }
    }

    /// Paths that start at this transition's layer: their one-hop distances, and the
    /// frontier on the next layer from which longer paths go on.
    fn depart(&mut self, hop: &Hop) {
        let k = hop.plan.from_layer;
        let gap_penalty = self.penalty.of_gap(1);
        for (seed, layers) in self.per_seed.iter().enumerate() {
            let sources = &layers[k].neurons;
            let targets = &layers[k + 1].neurons;
            let block = self.results[seed].block_mut(k, 1);
            for (i, &x) in sources.iter().enumerate() {
                for (j, &t) in targets.iter().enumerate() {
                    let step = match hop.omega {
                        Some(omega) => omega.get(t, x),
                        None => attention_omega(x, t, self.hidden),
                    };
                    block.values[i * targets.len() + j] = within(step + gap_penalty, self.cutoff);
                }
            }
            if self.max_gap >= 2 && hop.continues {
                let mut frontier = first_frontier(hop.omega, sources, self.hidden, k);
                prune_frontier(&mut frontier, 0.0, self.penalty.of_gap(2), self.cutoff);
                if !is_unreached(&frontier) {
                    self.groups.push(Group {
                        seed,
                        source_layer: k,
                        hops: 1,
                        sources: sources.len(),
                        frontier,
                    });
                }
            }
        }
    }
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
fn first_frontier(omega: Option<&Omega>, sources: &[usize], hidden: usize, k: usize) -> Frontier {
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
        // Onto QKV only the Q part and the least over K/V are kept (the `shortest_path` docs).
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
