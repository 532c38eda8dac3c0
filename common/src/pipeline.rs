//! One (checkpoint, seed) task end to end: draw, build the SNIN, grow boxes, spectrum.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::network::{Snin, WeightReader};
use crate::sampler::{draw_snin, SninDraw};
use crate::shortest_path::{self, PathPenalty};
use crate::spectrum::{self, Alpha0Method, NeighbourRule, Spectrum};
use crate::stats::SeedPoint;

/// Paper Eq. 1's defaults: `λ = 1`, `γ = 5`.
pub const DEFAULT_LAMBDA: f64 = 1.0;
pub const DEFAULT_GAMMA: f64 = 5.0;

/// How the distance between two nodes of a sample is measured.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum DistanceMode {
    /// `ω = 1/|w|` of the edge joining them, neighbours at `1 < ω ≤ T`: the reference
    /// code's distance (docs/method.md §3).
    #[default]
    OneHop,
    /// Paper Eq. 1: the least `Σω + λ·|P|^γ` over paths through every neuron of the
    /// intermediate layers, neighbours at `d ≤ T` (docs/method.md §6).
    ShortestPath { lambda: f64, gamma: f64 },
}

impl DistanceMode {
    /// Shortest paths with the paper's `λ` and `γ`.
    pub fn shortest_path() -> Self {
        DistanceMode::ShortestPath {
            lambda: DEFAULT_LAMBDA,
            gamma: DEFAULT_GAMMA,
        }
    }
}

/// Which algorithm computes shortest-path distances. Both give the same distances, bit for
/// bit; Dijkstra is the plain reference, kept as the baseline for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathEngine {
    /// The blocked min-plus product over layer gaps ([`shortest_path::distances`]).
    #[default]
    MinPlus,
    /// Dijkstra over the full layered graph ([`shortest_path::dijkstra_distances`]).
    Dijkstra,
}

/// Analysis settings; the defaults are the paper's and the reference code's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisParams {
    /// Nodes drawn per layer (`s`).
    pub layer_sample: usize,
    /// Distance threshold `T`.
    pub threshold: f64,
    /// The `q` grid, ascending.
    pub q: Vec<f64>,
    pub alpha0_method: Alpha0Method,
    /// Absent in settings recorded before distance modes existed: those were one-hop.
    #[serde(default)]
    pub distance: DistanceMode,
}

impl Default for AnalysisParams {
    fn default() -> Self {
        Self {
            layer_sample: 32,
            threshold: 150.0,
            q: (-30..=30).map(|k| f64::from(k * 10) / 100.0).collect(),
            alpha0_method: Alpha0Method::Peak,
            distance: DistanceMode::OneHop,
        }
    }
}

impl AnalysisParams {
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.threshold.is_finite() && self.threshold > 1.0) {
            return Err(Error::InvalidParameter(format!(
                "threshold must be a finite number above 1 (got {})",
                self.threshold
            )));
        }
        if self.layer_sample == 0 {
            return Err(Error::InvalidParameter(
                "layer_sample must be at least 1".into(),
            ));
        }
        if let DistanceMode::ShortestPath { lambda, gamma } = self.distance {
            if !(lambda.is_finite() && lambda >= 0.0) {
                return Err(Error::InvalidParameter(format!(
                    "lambda must be a finite number of at least 0 (got {lambda})"
                )));
            }
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(Error::InvalidParameter(format!(
                    "gamma must be a finite number above 0 (got {gamma})"
                )));
            }
            if lambda >= self.threshold {
                return Err(Error::InvalidParameter(format!(
                    "lambda {lambda} is not below the threshold {}: every path's penalty alone \
                     exceeds it, so no node can have a neighbour",
                    self.threshold
                )));
            }
        }
        Ok(())
    }

    /// The neighbour rule of the distance mode: one-hop drops `ω ≤ 1` (docs/method.md §3),
    /// shortest paths keep every distance up to `T` (docs/method.md §6).
    pub fn neighbour_rule(&self) -> NeighbourRule {
        match self.distance {
            DistanceMode::OneHop => NeighbourRule::one_hop(self.threshold),
            DistanceMode::ShortestPath { .. } => NeighbourRule::shortest_path(self.threshold),
        }
    }
}

/// The result of one (step, seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    pub step: u64,
    pub seed: u32,
    pub alpha0: f64,
    pub width: f64,
    pub tau: Vec<f64>,
    pub alpha: Vec<f64>,
    pub f_alpha: Vec<f64>,
    /// `R²` of each `τ(q)` fit.
    pub r2: Vec<f64>,
    pub alpha0_peak: f64,
    pub alpha0_central: Option<f64>,
    /// One-hop: every edge of the sample. Shortest-path: the (source, target) pairs within
    /// the threshold.
    pub edges: usize,
    /// Nodes with at least one such edge.
    pub source_nodes: usize,
    pub kept_nodes: usize,
    pub radii: usize,
    /// Mean local fractal dimension over kept nodes that have one.
    pub node_dimension_mean: Option<f64>,
    /// Non-embedding weight-matrix parameters of the model (its size for comparisons).
    #[serde(default)]
    pub parameters: u64,
}

impl SeedResult {
    pub fn point(&self) -> SeedPoint {
        SeedPoint {
            step: self.step,
            seed: self.seed,
            alpha0: self.alpha0,
            width: self.width,
            alpha: self.alpha.clone(),
            f_alpha: self.f_alpha.clone(),
        }
    }
}

/// Everything one seed's analysis produced, for callers that export the network.
pub struct SeedAnalysis {
    pub draw: SninDraw,
    pub snin: Snin,
    pub spectrum: Spectrum,
    pub result: SeedResult,
}

/// Runs seed `seed` on one checkpoint at `step`. To analyse several seeds of a checkpoint in
/// shortest-path mode, [`analyze_seeds`] reads the weights once for all of them.
pub fn analyze_seed(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    seed: u32,
) -> Result<SeedAnalysis, Error> {
    params.validate()?;
    match params.distance {
        DistanceMode::OneHop => {
            let draw = draw_snin(seed, reader.shape(), params.layer_sample)?;
            let snin = Snin::build(reader, &draw)?;
            let distances = snin.source_distances();
            let (edges, source_nodes) = (snin.edge_count(), snin.source_node_count());
            finish_seed(
                reader,
                params,
                step,
                draw,
                snin,
                &distances,
                edges,
                source_nodes,
            )
        }
        DistanceMode::ShortestPath { .. } => {
            let mut analyses = analyze_seeds(reader, params, step, &[seed])?;
            analyses.pop().unwrap_or_else(|| {
                Err(Error::InvalidParameter(format!(
                    "seed {seed} gave no result"
                )))
            })
        }
    }
}

/// Runs `seeds` on one checkpoint at `step`, in parallel, results in the order of `seeds`.
/// In shortest-path mode the distances of all seeds are computed together, each weight read
/// once; a failure there (an unreadable weight) is the outer error. A seed's own failure
/// (no node with enough neighbours) is its inner error.
pub fn analyze_seeds(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    seeds: &[u32],
) -> Result<Vec<Result<SeedAnalysis, Error>>, Error> {
    analyze_seeds_with(reader, params, step, seeds, PathEngine::MinPlus)
}

/// [`analyze_seeds`] with a choice of shortest-path algorithm (for the benchmark).
pub fn analyze_seeds_with(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    seeds: &[u32],
    engine: PathEngine,
) -> Result<Vec<Result<SeedAnalysis, Error>>, Error> {
    params.validate()?;
    let DistanceMode::ShortestPath { lambda, gamma } = params.distance else {
        return Ok(seeds
            .par_iter()
            .map(|&seed| analyze_seed(reader, params, step, seed))
            .collect());
    };
    let shape = *reader.shape();
    let draws = seeds
        .iter()
        .map(|&seed| draw_snin(seed, &shape, params.layer_sample))
        .collect::<Result<Vec<_>, _>>()?;
    let penalty = PathPenalty { lambda, gamma };
    let max_gap = penalty.max_gap(params.threshold, 5 * shape.num_blocks);
    let compute = match engine {
        PathEngine::MinPlus => shortest_path::distances,
        PathEngine::Dijkstra => shortest_path::dijkstra_distances,
    };
    let distances = compute(reader, &draws, penalty, max_gap, params.threshold)?;
    Ok(draws
        .into_par_iter()
        .zip(distances)
        .map(|(draw, distances)| {
            // The sampled network itself, for exports; its reads are a subset of the above.
            let snin = Snin::build(reader, &draw)?;
            let node_distances = distances.node_distances();
            let edges = node_distances.iter().map(Vec::len).sum();
            let source_nodes = node_distances.iter().filter(|d| !d.is_empty()).count();
            finish_seed(
                reader,
                params,
                step,
                draw,
                snin,
                &node_distances,
                edges,
                source_nodes,
            )
        })
        .collect())
}

/// Runs `seeds` on one checkpoint at `step` and hands each seed's outcome to `done` as soon
/// as it is ready, with its index in `seeds` and the compute time it took: one-hop seeds one
/// by one in parallel; shortest-path seeds together, since they share every weight read, so
/// their outcomes come at once and the compute time is split evenly between them. An error
/// of the shared work (an unreadable weight) is every seed's outcome.
pub fn analyze_seeds_as_ready(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    seeds: &[u32],
    done: impl Fn(usize, Result<SeedResult, &Error>, Duration) + Sync,
) {
    if params.distance == DistanceMode::OneHop {
        seeds.par_iter().enumerate().for_each(|(i, &seed)| {
            let started = Instant::now();
            match analyze_seed(reader, params, step, seed) {
                Ok(analysis) => done(i, Ok(analysis.result), started.elapsed()),
                Err(e) => done(i, Err(&e), started.elapsed()),
            }
        });
        return;
    }
    let started = Instant::now();
    let analyses = analyze_seeds(reader, params, step, seeds);
    let share = started.elapsed() / seeds.len().max(1) as u32;
    match analyses {
        Ok(analyses) => {
            for (i, analysis) in analyses.into_iter().enumerate() {
                match analysis {
                    Ok(analysis) => done(i, Ok(analysis.result), share),
                    Err(e) => done(i, Err(&e), share),
                }
            }
        }
        Err(e) => (0..seeds.len()).for_each(|i| done(i, Err(&e), share)),
    }
}

/// Boxes, spectrum and the result of one seed from its nodes' distances.
#[allow(clippy::too_many_arguments)]
fn finish_seed(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    draw: SninDraw,
    snin: Snin,
    node_distances: &[Vec<f64>],
    edges: usize,
    source_nodes: usize,
) -> Result<SeedAnalysis, Error> {
    let seed = draw.seed;
    let spectrum = spectrum::spectrum_of_distances(
        node_distances,
        params.neighbour_rule(),
        &params.q,
        params.alpha0_method,
    )
    .map_err(|e| Error::Spectrum {
        seed,
        message: e.to_string(),
    })?;
    let dimensions: Vec<f64> = spectrum.node_dimensions.iter().flatten().copied().collect();
    let result = SeedResult {
        step,
        seed,
        alpha0: spectrum.alpha0,
        width: spectrum.width,
        tau: spectrum.tau.clone(),
        alpha: spectrum.alpha.clone(),
        f_alpha: spectrum.f_alpha.clone(),
        r2: spectrum.r2(),
        alpha0_peak: spectrum.alpha0_peak,
        alpha0_central: spectrum.alpha0_central,
        edges,
        source_nodes,
        kept_nodes: spectrum.kept_nodes,
        radii: spectrum.radii.len(),
        node_dimension_mean: (!dimensions.is_empty())
            .then(|| dimensions.iter().sum::<f64>() / dimensions.len() as f64),
        parameters: reader.shape().matrix_parameters(),
    };
    Ok(SeedAnalysis {
        draw,
        snin,
        spectrum,
        result,
    })
}
