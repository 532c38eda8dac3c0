//! One (checkpoint, seed) task end to end: draw, build the SNIN, grow boxes, spectrum.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::network::{Snin, WeightReader};
use crate::sampler::{draw_snin, SninDraw};
use crate::spectrum::{self, Alpha0Method, NeighbourRule, Spectrum};
use crate::stats::SeedPoint;

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
}

impl Default for AnalysisParams {
    fn default() -> Self {
        Self {
            layer_sample: 32,
            threshold: 150.0,
            q: (-30..=30).map(|k| f64::from(k * 10) / 100.0).collect(),
            alpha0_method: Alpha0Method::Peak,
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
        Ok(())
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
    pub edges: usize,
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

/// Runs seed `seed` on one checkpoint at `step`.
pub fn analyze_seed(
    reader: &dyn WeightReader,
    params: &AnalysisParams,
    step: u64,
    seed: u32,
) -> Result<SeedAnalysis, Error> {
    params.validate()?;
    let draw = draw_snin(seed, reader.shape(), params.layer_sample)?;
    let snin = Snin::build(reader, &draw)?;
    let spectrum = spectrum::spectrum_of_distances(
        &snin.source_distances(),
        NeighbourRule::one_hop(params.threshold),
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
        edges: snin.edge_count(),
        source_nodes: snin.source_node_count(),
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
