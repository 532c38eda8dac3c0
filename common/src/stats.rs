//! Statistics across seeds and the degree of emergence across steps (docs/method.md §5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Mean and both variances of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub mean: f64,
    /// Population variance (ddof 0).
    pub var: f64,
    /// Sample variance (ddof 1); NaN-free: 0 for a single value.
    pub var_ddof1: f64,
}

impl Moments {
    /// None for an empty set.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        Some(Moments {
            mean,
            var: squares / n,
            var_ddof1: if values.len() > 1 {
                squares / (n - 1.0)
            } else {
                0.0
            },
        })
    }
}

/// Degree of emergence of a state `(α0, w)` relative to the first step's:
/// `E = (w / w0) · ln(α0_0 / α0)`.
pub fn emergence(alpha0_first: f64, width_first: f64, alpha0: f64, width: f64) -> f64 {
    (width / width_first) * (alpha0_first / alpha0).ln()
}

/// What the aggregates need of one (step, seed) result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedPoint {
    pub step: u64,
    pub seed: u32,
    pub alpha0: f64,
    pub width: f64,
    pub alpha: Vec<f64>,
    pub f_alpha: Vec<f64>,
}

/// Per-step summary over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepAggregate {
    pub step: u64,
    pub seeds: usize,
    pub alpha0_mean: f64,
    pub alpha0_var: f64,
    pub alpha0_var_ddof1: f64,
    pub width_mean: f64,
    pub width_var: f64,
    pub width_var_ddof1: f64,
    /// Reference form, from the per-step means. None until the first step is in.
    #[serde(rename = "E_from_means")]
    pub e_from_means: Option<f64>,
    /// Per-seed form: mean and population variance over seeds present at both steps.
    #[serde(rename = "E_per_seed_mean")]
    pub e_per_seed_mean: Option<f64>,
    #[serde(rename = "E_per_seed_var")]
    pub e_per_seed_var: Option<f64>,
    #[serde(rename = "E_per_seed_var_ddof1")]
    pub e_per_seed_var_ddof1: Option<f64>,
    /// Per `q` index: moments of `α_k` and `f(α_k)` over seeds.
    pub alpha: Vec<Moments>,
    pub f_alpha: Vec<Moments>,
}

/// Aggregates one model's results: steps ascending, `E` relative to `first_step`
/// (normally the smallest step of the model's grid, whether or not it is in yet).
pub fn aggregate(points: &[SeedPoint], first_step: u64) -> Vec<StepAggregate> {
    let mut by_step: BTreeMap<u64, BTreeMap<u32, &SeedPoint>> = BTreeMap::new();
    for p in points {
        by_step.entry(p.step).or_default().insert(p.seed, p);
    }
    let first = by_step.get(&first_step);
    let first_means = first.map(|seeds| {
        let alpha0: Vec<f64> = seeds.values().map(|p| p.alpha0).collect();
        let width: Vec<f64> = seeds.values().map(|p| p.width).collect();
        (mean(&alpha0), mean(&width))
    });

    by_step
        .iter()
        .map(|(&step, seeds)| {
            let alpha0: Vec<f64> = seeds.values().map(|p| p.alpha0).collect();
            let width: Vec<f64> = seeds.values().map(|p| p.width).collect();
            let a = Moments::of(&alpha0).unwrap_or(ZERO);
            let w = Moments::of(&width).unwrap_or(ZERO);
            let e_from_means = first_means.map(|(a0, w0)| emergence(a0, w0, a.mean, w.mean));
            let per_seed: Vec<f64> = first
                .map(|first| {
                    seeds
                        .iter()
                        .filter_map(|(seed, p)| {
                            first
                                .get(seed)
                                .map(|f| emergence(f.alpha0, f.width, p.alpha0, p.width))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let e_seed = Moments::of(&per_seed);
            StepAggregate {
                step,
                seeds: seeds.len(),
                alpha0_mean: a.mean,
                alpha0_var: a.var,
                alpha0_var_ddof1: a.var_ddof1,
                width_mean: w.mean,
                width_var: w.var,
                width_var_ddof1: w.var_ddof1,
                e_from_means,
                e_per_seed_mean: e_seed.map(|m| m.mean),
                e_per_seed_var: e_seed.map(|m| m.var),
                e_per_seed_var_ddof1: e_seed.map(|m| m.var_ddof1),
                alpha: per_index_moments(seeds.values().map(|p| p.alpha.as_slice())),
                f_alpha: per_index_moments(seeds.values().map(|p| p.f_alpha.as_slice())),
            }
        })
        .collect()
}

const ZERO: Moments = Moments {
    mean: 0.0,
    var: 0.0,
    var_ddof1: 0.0,
};

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn per_index_moments<'a>(series: impl Iterator<Item = &'a [f64]> + Clone) -> Vec<Moments> {
    let len = series.clone().map(<[f64]>::len).min().unwrap_or(0);
    (0..len)
        .map(|k| {
            let column: Vec<f64> = series.clone().map(|s| s[k]).collect();
            Moments::of(&column).unwrap_or(ZERO)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64, seed: u32, alpha0: f64, width: f64) -> SeedPoint {
        SeedPoint {
            step,
            seed,
            alpha0,
            width,
            alpha: vec![alpha0, alpha0 + width],
            f_alpha: vec![0.0, 1.0],
        }
    }

    #[test]
    fn moments_give_both_variances() {
        let m = Moments::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.mean, 2.5);
        assert_eq!(m.var, 1.25);
        assert!((m.var_ddof1 - 5.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn emergence_is_zero_at_first_step_and_grows_as_alpha0_falls() {
        let points = [
            point(0, 0, 1.4, 0.6),
            point(0, 1, 1.5, 0.7),
            point(10, 0, 1.0, 0.6),
            point(10, 1, 1.2, 0.5),
        ];
        let agg = aggregate(&points, 0);
        assert_eq!(agg[0].e_from_means, Some(0.0));
        assert_eq!(agg[0].e_per_seed_mean, Some(0.0));
        let expected = (0.55 / 0.65) * (1.45f64 / 1.1).ln();
        assert!((agg[1].e_from_means.unwrap() - expected).abs() < 1e-15);
        let e0 = (0.6 / 0.6) * (1.4f64 / 1.0).ln();
        let e1 = (0.5 / 0.7) * (1.5f64 / 1.2).ln();
        assert!((agg[1].e_per_seed_mean.unwrap() - (e0 + e1) / 2.0).abs() < 1e-15);
        assert_eq!(agg[1].alpha.len(), 2);
    }

    #[test]
    fn no_emergence_before_first_step_is_in() {
        let agg = aggregate(&[point(10, 0, 1.0, 0.6)], 0);
        assert_eq!(agg[0].e_from_means, None);
        assert_eq!(agg[0].e_per_seed_mean, None);
    }
}
