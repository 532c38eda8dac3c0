//! What an analysis will read from a checkpoint, so that fetchers download only that: the
//! one place that knows it, the science's own answer rather than a fetcher's guess.

use rayon::prelude::*;

use crate::error::Error;
use crate::layout::ModelShape;
use crate::network::{gathers, Gather};
use crate::pipeline::{AnalysisParams, DistanceMode};
use crate::sampler::{check_layer_sample, draw_snin};

/// What an analysis of some seeds reads from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Exactly these elements: every read each seed's sample makes, seed after seed, in the
    /// order the analysis makes them (one-hop). An element two seeds read is listed twice.
    Elements(Vec<Gather>),
    /// Whole files. Shortest paths read the full columns of every sampled source and the
    /// full rows of every sampled target of every matrix, and from gap 3 on whole matrices
    /// ([`crate::shortest_path::reads`]): most of the checkpoint, for which whole downloads
    /// beat a multitude of ranged requests.
    WholeFiles,
}

/// What analysing `seeds` with `params` reads from a checkpoint of shape `shape`. Refuses a
/// `layer_sample` the model's layers cannot supply, as the analysis would.
pub fn read_plan(
    params: &AnalysisParams,
    shape: &ModelShape,
    seeds: &[u32],
) -> Result<ReadPlan, Error> {
    match params.distance {
        DistanceMode::ShortestPath { .. } => Ok(ReadPlan::WholeFiles),
        DistanceMode::OneHop => {
            check_layer_sample(shape, params.layer_sample)?;
            // Drawing is most of the work, and seeds draw independently.
            let per_seed = seeds
                .par_iter()
                .map(|&seed| {
                    let draw = draw_snin(seed, shape, params.layer_sample)?;
                    Ok(gathers(&draw, shape.hidden_size))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(ReadPlan::Elements(per_seed.into_iter().flatten().collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape {
            hidden_size: 64,
            num_blocks: 2,
            intermediate_size: 256,
        }
    }

    fn params(layer_sample: usize, distance: DistanceMode) -> AnalysisParams {
        AnalysisParams {
            layer_sample,
            distance,
            ..AnalysisParams::default()
        }
    }

    #[test]
    fn one_hop_reads_each_seeds_sample_in_order() {
        let shape = shape();
        let plan = read_plan(&params(4, DistanceMode::OneHop), &shape, &[3, 1]).unwrap();
        let mut expected = Vec::new();
        for seed in [3, 1] {
            expected.extend(gathers(&draw_snin(seed, &shape, 4).unwrap(), 64));
        }
        assert_eq!(plan, ReadPlan::Elements(expected));
        let none = read_plan(&params(4, DistanceMode::OneHop), &shape, &[]).unwrap();
        assert_eq!(none, ReadPlan::Elements(Vec::new()));
    }

    #[test]
    fn shortest_paths_read_whole_files() {
        let plan = read_plan(&params(4, DistanceMode::shortest_path()), &shape(), &[0]);
        assert_eq!(plan.unwrap(), ReadPlan::WholeFiles);
    }

    #[test]
    fn a_sample_larger_than_a_layer_is_refused_even_without_seeds() {
        let refused = read_plan(&params(65, DistanceMode::OneHop), &shape(), &[]).unwrap_err();
        assert!(
            refused.to_string().contains("larger than a layer"),
            "{refused}"
        );
    }
}
