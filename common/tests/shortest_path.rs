//! Shortest-path distances (docs/method.md §6): the min-plus engine against a plain Dijkstra
//! over the full layered graph, on small networks, every distance compared bit for bit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use neuromfa_common::network::{Snin, WeightReader};
use neuromfa_common::pipeline::{analyze_seeds_with, PathEngine};
use neuromfa_common::sampler::{draw_snin, SninDraw};
use neuromfa_common::shortest_path::{
    dijkstra_distances, distances, reads, PathPenalty, SeedDistances,
};
use neuromfa_common::spectrum::{spectrum_of_distances, NeighbourRule};
use neuromfa_common::{
    analyze_seed, analyze_seeds, AnalysisParams, BlockTensor, Checkpoint, DistanceMode, Error,
    ModelShape,
};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Weights held in memory, in torch `[out, in]` layout.
struct MemoryWeights {
    shape: ModelShape,
    tensors: HashMap<(usize, BlockTensor), Vec<f64>>,
}

impl MemoryWeights {
    /// Random weights whose distances `1/|w|` spread log-uniformly over `[1, 1/low]`, with about one
    /// weight in eight exactly zero (no edge) and repeated values (ties between paths).
    fn random(shape: ModelShape, seed: u64, low: f64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for block in 0..shape.num_blocks {
            for tensor in BlockTensor::ALL {
                let [rows, cols] = tensor.expected_shape(&shape);
                let values = (0..rows * cols)
                    .map(|_| {
                        let pick: f64 = rng.random();
                        if pick < 0.125 {
                            0.0
                        } else if pick < 0.2 {
                            -0.25
                        } else {
                            let magnitude = low.powf(rng.random::<f64>());
                            if rng.random::<bool>() {
                                magnitude
                            } else {
                                -magnitude
                            }
                        }
                    })
                    .collect();
                tensors.insert((block, tensor), values);
            }
        }
        MemoryWeights { shape, tensors }
    }
}

impl WeightReader for MemoryWeights {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        let width = tensor.expected_shape(&self.shape)[1];
        let values = &self.tensors[&(block, tensor)];
        Ok(rows
            .iter()
            .flat_map(|&r| cols.iter().map(move |&c| values[r * width + c]))
            .collect())
    }
}

/// Counts every element a reader hands out.
struct Recording<'a> {
    inner: &'a dyn WeightReader,
    seen: Mutex<HashMap<(usize, BlockTensor, usize, usize), usize>>,
}

impl WeightReader for Recording<'_> {
    fn shape(&self) -> &ModelShape {
        self.inner.shape()
    }

    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        let mut seen = self.seen.lock().unwrap();
        for &r in rows {
            for &c in cols {
                *seen.entry((block, tensor, r, c)).or_insert(0) += 1;
            }
        }
        self.inner.gather(block, tensor, rows, cols)
    }
}

fn small_shape() -> ModelShape {
    // m is not 4d on purpose: nothing may assume it.
    ModelShape {
        hidden_size: 6,
        num_blocks: 2,
        intermediate_size: 10,
    }
}

fn draws(shape: &ModelShape, seeds: &[u32], layer_sample: usize) -> Vec<SninDraw> {
    seeds
        .iter()
        .map(|&s| draw_snin(s, shape, layer_sample).unwrap())
        .collect()
}

/// Equal as bits, block by block, naming the first difference.
fn assert_identical(ours: &[SeedDistances], reference: &[SeedDistances], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: seeds");
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.blocks.len(), b.blocks.len(), "{what}: blocks");
        for (x, y) in a.blocks.iter().zip(&b.blocks) {
            assert_eq!(
                (x.source_layer, x.gap, x.sources, x.targets),
                (y.source_layer, y.gap, y.sources, y.targets),
                "{what}"
            );
            for (i, (p, q)) in x.values.iter().zip(&y.values).enumerate() {
                assert_eq!(
                    p.to_bits(),
                    q.to_bits(),
                    "{what}: seed {}, layer {} gap {} entry {i}: {p} vs {q}",
                    a.seed,
                    x.source_layer,
                    x.gap
                );
            }
        }
    }
}

fn finite_count(distances: &[SeedDistances]) -> (usize, usize) {
    let all = distances
        .iter()
        .flat_map(|d| &d.blocks)
        .flat_map(|b| &b.values);
    all.fold((0, 0), |(finite, total), v| {
        (finite + usize::from(v.is_finite()), total + 1)
    })
}

#[test]
fn every_distance_equals_dijkstra_at_every_gap() {
    let shape = small_shape();
    let weights = MemoryWeights::random(shape, 1, 0.05);
    let draws = draws(&shape, &[0, 1, 2], 2);
    let penalty = PathPenalty {
        lambda: 1.0,
        gamma: 2.0,
    };
    // Up to the whole depth: paths through every kind of layer, across blocks, into `out`.
    for max_gap in 1..=10 {
        let ours = distances(&weights, &draws, penalty, max_gap, f64::INFINITY).unwrap();
        let reference =
            dijkstra_distances(&weights, &draws, penalty, max_gap, f64::INFINITY).unwrap();
        assert_identical(&ours, &reference, &format!("max gap {max_gap}"));
        let (finite, total) = finite_count(&ours);
        assert!(finite > total / 2 && finite < total, "{finite} of {total}");
    }
}

#[test]
fn distances_within_the_threshold_survive_pruning_exactly() {
    let shape = small_shape();
    let weights = MemoryWeights::random(shape, 2, 0.002);
    let draws = draws(&shape, &[3, 4], 2);
    for (lambda, gamma, threshold) in [(1.0, 5.0, 150.0), (1.0, 5.0, 300.0), (0.0, 1.0, 60.0)] {
        let penalty = PathPenalty { lambda, gamma };
        let max_gap = penalty.max_gap(threshold, 10);
        let pruned = distances(&weights, &draws, penalty, max_gap, threshold).unwrap();
        let reference = dijkstra_distances(&weights, &draws, penalty, max_gap, threshold).unwrap();
        let what = format!("λ {lambda} γ {gamma} T {threshold}");
        assert_identical(&pruned, &reference, &what);
        // The same as computing everything and dropping what lies above the threshold.
        let mut everything = distances(&weights, &draws, penalty, max_gap, f64::INFINITY).unwrap();
        let mut dropped = 0;
        for v in everything
            .iter_mut()
            .flat_map(|d| &mut d.blocks)
            .flat_map(|b| &mut b.values)
        {
            if *v > threshold && v.is_finite() {
                *v = f64::INFINITY;
                dropped += 1;
            }
        }
        assert!(dropped > 0, "{what}: the threshold should matter");
        assert_identical(&pruned, &everything, &what);
    }
}

#[test]
fn max_gap_follows_the_penalty() {
    let paper = PathPenalty {
        lambda: 1.0,
        gamma: 5.0,
    };
    assert_eq!(paper.max_gap(150.0, 160), 2); // 32 < 150 ≤ 243
    assert_eq!(paper.max_gap(300.0, 160), 3); // 243 < 300 ≤ 1024
    assert_eq!(paper.max_gap(1.0, 160), 0);
    let free = PathPenalty {
        lambda: 0.0,
        gamma: 5.0,
    };
    assert_eq!(free.max_gap(150.0, 11), 11);
}

/// Per node with a downstream layer, `ω + λ` of each of its sampled edges, in node order.
fn one_hop_plus(snin: &Snin, lambda: f64) -> Vec<Vec<f64>> {
    let last_layer_start = snin.node_count() - snin.layers.last().unwrap().neurons.len();
    let mut lists = vec![Vec::new(); last_layer_start];
    for (source, _, w) in snin.edges() {
        lists[source].push(1.0 / w.abs() + lambda);
    }
    lists
}

#[test]
fn with_only_gap_one_every_distance_is_the_one_hop_omega_plus_lambda() {
    let shape = small_shape();
    let weights = MemoryWeights::random(shape, 3, 0.05);
    let draws = draws(&shape, &[0, 5], 2);
    let lambda = 1.5;
    let penalty = PathPenalty { lambda, gamma: 5.0 };
    let ours = distances(&weights, &draws, penalty, 1, f64::INFINITY).unwrap();
    for (draw, seed_distances) in draws.iter().zip(&ours) {
        let snin = Snin::build(&weights, draw).unwrap();
        let expected = one_hop_plus(&snin, lambda);
        let got = seed_distances.node_distances();
        assert_eq!(got.len(), expected.len());
        for (node, (g, e)) in got.iter().zip(&expected).enumerate() {
            let bits = |v: &Vec<f64>| v.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(e), "seed {} node {node}", draw.seed);
        }
    }
}

fn golden_step0() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/golden/tiny-neox/step0")
}

#[test]
fn a_real_checkpoint_gives_dijkstras_distances_and_reads_what_reads_says() {
    let checkpoint = Checkpoint::open(&golden_step0()).unwrap();
    let shape = *checkpoint.shape();
    let draws = draws(&shape, &[0, 1], 8);
    for threshold in [150.0, 300.0] {
        let penalty = PathPenalty {
            lambda: 1.0,
            gamma: 5.0,
        };
        let max_gap = penalty.max_gap(threshold, 5 * shape.num_blocks);
        let recording = Recording {
            inner: &checkpoint,
            seen: Mutex::new(HashMap::new()),
        };
        let ours = distances(&recording, &draws, penalty, max_gap, threshold).unwrap();
        let reference =
            dijkstra_distances(&checkpoint, &draws, penalty, max_gap, threshold).unwrap();
        assert_identical(&ours, &reference, &format!("T {threshold}"));
        let (finite, _) = finite_count(&ours);
        assert!(finite > 0);
        // Beyond gap 1 when gap 2 is allowed: some neighbours come from two-hop paths.
        let beyond_one_hop = ours
            .iter()
            .flat_map(|d| &d.blocks)
            .filter(|b| b.gap >= 2)
            .flat_map(|b| &b.values)
            .filter(|v| v.is_finite())
            .count();
        assert!(beyond_one_hop > 0, "T {threshold}");

        // Exactly the elements `reads` lists, as often as it lists them.
        let mut planned: HashMap<(usize, BlockTensor, usize, usize), usize> = HashMap::new();
        for read in reads(&draws, &shape, max_gap) {
            for &r in &read.rows {
                for &c in &read.cols {
                    *planned.entry((read.block, read.tensor, r, c)).or_insert(0) += 1;
                }
            }
        }
        assert_eq!(*recording.seen.lock().unwrap(), planned, "T {threshold}");
        // A full row or column is never read twice: only where a sampled row crosses a
        // sampled column (both lists hold it) may an element come twice.
        assert!(planned.values().all(|&n| n <= 2));
    }
}

#[test]
fn whole_matrices_are_read_only_from_gap_three() {
    let shape = small_shape();
    let draws = draws(&shape, &[0], 2);
    let whole = |max_gap| {
        reads(&draws, &shape, max_gap)
            .iter()
            .filter(|r| {
                let [rows, cols] = r.tensor.expected_shape(&shape);
                r.rows.len() == rows && r.cols.len() == cols
            })
            .count()
    };
    assert_eq!(whole(2), 0);
    assert!(whole(3) > 0);
}

fn shortest_path_params(threshold: f64) -> AnalysisParams {
    AnalysisParams {
        layer_sample: 8,
        threshold,
        distance: DistanceMode::shortest_path(),
        ..AnalysisParams::default()
    }
}

#[test]
fn seeds_together_equal_seeds_alone_and_dijkstra() {
    let checkpoint = Checkpoint::open(&golden_step0()).unwrap();
    let params = shortest_path_params(150.0);
    let seeds = [0, 1, 2];
    let together = analyze_seeds(&checkpoint, &params, 0, &seeds).unwrap();
    let by_dijkstra =
        analyze_seeds_with(&checkpoint, &params, 0, &seeds, PathEngine::Dijkstra).unwrap();
    for ((seed, a), b) in seeds.iter().zip(together).zip(by_dijkstra) {
        let (a, b) = (a.unwrap().result, b.unwrap().result);
        let alone = analyze_seed(&checkpoint, &params, 0, *seed).unwrap().result;
        for other in [&b, &alone] {
            assert_eq!(a.alpha0.to_bits(), other.alpha0.to_bits(), "seed {seed}");
            assert_eq!(a.width.to_bits(), other.width.to_bits(), "seed {seed}");
            assert_eq!(a.edges, other.edges);
        }
        assert!(a.kept_nodes > 0 && a.alpha0.is_finite() && a.width > 0.0);
    }
}

#[test]
fn shortest_paths_differ_from_one_hop_and_reach_further() {
    let checkpoint = Checkpoint::open(&golden_step0()).unwrap();
    let one_hop = AnalysisParams {
        layer_sample: 8,
        ..AnalysisParams::default()
    };
    let a = analyze_seed(&checkpoint, &one_hop, 0, 0).unwrap().result;
    let b = analyze_seed(&checkpoint, &shortest_path_params(150.0), 0, 0)
        .unwrap()
        .result;
    assert_ne!(a.alpha0, b.alpha0);
    assert!(b.edges > 0);
}

#[test]
fn gap_one_only_gives_the_spectrum_of_one_hop_omega_plus_lambda() {
    let checkpoint = Checkpoint::open(&golden_step0()).unwrap();
    // 2^10 = 1024 ≥ T: only one-hop paths count.
    let params = AnalysisParams {
        layer_sample: 8,
        distance: DistanceMode::ShortestPath {
            lambda: 1.0,
            gamma: 10.0,
        },
        ..AnalysisParams::default()
    };
    let analysis = analyze_seed(&checkpoint, &params, 0, 4).unwrap();
    let expected = spectrum_of_distances(
        &one_hop_plus(&analysis.snin, 1.0),
        NeighbourRule::shortest_path(params.threshold),
        &params.q,
        params.alpha0_method,
    )
    .unwrap();
    assert_eq!(analysis.spectrum.tau, expected.tau);
    assert_eq!(analysis.result.alpha0, expected.alpha0);
}

#[test]
fn impossible_lambda_and_gamma_are_named() {
    for (lambda, gamma, key) in [
        (-1.0, 5.0, "lambda"),
        (f64::NAN, 5.0, "lambda"),
        (1.0, 0.0, "gamma"),
        (1.0, f64::INFINITY, "gamma"),
        (150.0, 5.0, "lambda"),
    ] {
        let params = AnalysisParams {
            distance: DistanceMode::ShortestPath { lambda, gamma },
            ..AnalysisParams::default()
        };
        let err = params.validate().unwrap_err().to_string();
        assert!(err.contains(key), "λ {lambda} γ {gamma}: {err}");
    }
}

#[test]
fn settings_recorded_before_distance_modes_read_as_one_hop() {
    let mut json = serde_json::to_value(AnalysisParams::default()).unwrap();
    json.as_object_mut().unwrap().remove("distance");
    let params: AnalysisParams = serde_json::from_value(json).unwrap();
    assert_eq!(params, AnalysisParams::default());
    let text = serde_json::to_string(&DistanceMode::shortest_path()).unwrap();
    assert_eq!(text, r#"{"mode":"shortest-path","lambda":1.0,"gamma":5.0}"#);
}
