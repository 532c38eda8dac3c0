//! Box growing around each node and the multifractal spectrum (docs/method.md §3–4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node is kept when it has more than this many neighbours within the threshold.
pub const MIN_NEIGHBOURS_EXCLUSIVE: usize = 10;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpectrumError {
    #[error("no node kept: none of the {source_nodes} source nodes has more than {MIN_NEIGHBOURS_EXCLUSIVE} neighbours within distance {threshold}")]
    NoNodeKept { source_nodes: usize, threshold: f64 },
    #[error("only {radii} distinct box radius among the kept nodes; a spectrum needs at least 2")]
    TooFewRadii { radii: usize },
    #[error("invalid q grid: {0}")]
    InvalidQ(String),
}

/// How `α0`, the spectrum's peak, is read off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alpha0Method {
    /// The `α` at the maximum of `f(α)`, ties broken towards the first (the reference).
    #[default]
    Peak,
    /// `(τ(Δq) − τ(−Δq)) / 2Δq` at `q = 0`: the better estimate of `τ'(0)`.
    CentralDifference,
}

/// Which distances count as neighbours of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourRule {
    /// Upper bound `T` (inclusive).
    pub threshold: f64,
    /// One-hop mode also drops distances `≤ 1` (the weight-1 structural edges).
    pub exclude_unit_and_below: bool,
}

impl NeighbourRule {
    pub fn one_hop(threshold: f64) -> Self {
        Self {
            threshold,
            exclude_unit_and_below: true,
        }
    }

    /// Shortest-path mode: every distance up to `T` (docs/method.md §6).
    pub fn shortest_path(threshold: f64) -> Self {
        Self {
            threshold,
            exclude_unit_and_below: false,
        }
    }

    #[inline]
    fn admits(&self, distance: f64) -> bool {
        distance <= self.threshold && (!self.exclude_unit_and_below || distance > 1.0)
    }
}

/// The most values a q grid may have (the paper's has 61): each is a fit per seed.
pub const MAX_Q_VALUES: usize = 10_001;

/// `q` values `min, min+step, …, max`, each computed as an exact decimal quotient so that
/// the default grid is exactly `k/100` for `k = -300, -290, …, 300`.
pub fn q_grid(min: f64, max: f64, step: f64) -> Result<Vec<f64>, SpectrumError> {
    if !(min.is_finite() && max.is_finite() && step.is_finite()) {
        return Err(SpectrumError::InvalidQ(
            "q-min, q-max and q-step must be finite".into(),
        ));
    }
    if step <= 0.0 || max <= min {
        return Err(SpectrumError::InvalidQ(format!(
            "need q-min < q-max and q-step > 0 (got {min}, {max}, {step})"
        )));
    }
    // Work in millionths: integers are exact, and one correctly rounded division per
    // value gives the same double as the decimal the user meant.
    const SCALE: f64 = 1e6;
    let (lo, hi, by) = (
        (min * SCALE).round(),
        (max * SCALE).round(),
        (step * SCALE).round(),
    );
    if by < 1.0 {
        return Err(SpectrumError::InvalidQ(format!(
            "q-step {step} is below 1e-6"
        )));
    }
    // Compared as a float first: a grid of 1e300 values must not reach the cast.
    let steps = ((hi - lo) / by).floor();
    if steps >= MAX_Q_VALUES as f64 {
        return Err(SpectrumError::InvalidQ(format!(
            "the grid from {min} to {max} by {step} has more than {MAX_Q_VALUES} values"
        )));
    }
    let count = steps as usize + 1;
    if count < 3 {
        return Err(SpectrumError::InvalidQ(format!(
            "the grid has {count} values; at least 3 are needed"
        )));
    }
    Ok((0..count).map(|i| (lo + i as f64 * by) / SCALE).collect())
}

/// The nodes kept for box growing, with their integer radii.
#[derive(Debug, Clone)]
pub struct Boxes {
    /// Per kept node, its neighbours' radii, sorted.
    pub node_radii: Vec<Vec<u32>>,
    /// Index of each kept node among the input nodes.
    pub kept_index: Vec<usize>,
    /// `R`: every radius of every kept node, sorted and distinct.
    pub radii: Vec<u32>,
}

/// Keeps nodes with more than 10 admitted distances and rounds those to integer radii
/// (half to even, as numpy does).
pub fn grow_boxes(
    node_distances: &[Vec<f64>],
    rule: NeighbourRule,
) -> Result<Boxes, SpectrumError> {
    let mut node_radii = Vec::new();
    let mut kept_index = Vec::new();
    for (index, distances) in node_distances.iter().enumerate() {
        let mut radii: Vec<u32> = distances
            .iter()
            .copied()
            .filter(|&w| rule.admits(w))
            .map(|w| w.round_ties_even() as u32)
            .collect();
        if radii.len() > MIN_NEIGHBOURS_EXCLUSIVE {
            radii.sort_unstable();
            node_radii.push(radii);
            kept_index.push(index);
        }
    }
    if node_radii.is_empty() {
        return Err(SpectrumError::NoNodeKept {
            source_nodes: node_distances.len(),
            threshold: rule.threshold,
        });
    }
    let mut radii: Vec<u32> = node_radii.iter().flatten().copied().collect();
    radii.sort_unstable();
    radii.dedup();
    if radii.len() < 2 {
        return Err(SpectrumError::TooFewRadii { radii: radii.len() });
    }
    Ok(Boxes {
        node_radii,
        kept_index,
        radii,
    })
}

/// The multifractal spectrum of one sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spectrum {
    pub q: Vec<f64>,
    /// `τ(q)`, one per `q`.
    pub tau: Vec<f64>,
    /// Correlation coefficient `r` of each `τ(q)` fit (`R² = r²`).
    pub r_value: Vec<f64>,
    /// `α_k`, `f(α_k)` for `k = 0 … K−2`.
    pub alpha: Vec<f64>,
    pub f_alpha: Vec<f64>,
    /// `α0` as asked for (`Alpha0Method`).
    pub alpha0: f64,
    /// `α0` by the reference's peak rule, whatever was asked for.
    pub alpha0_peak: f64,
    /// `α0` by central difference at `q = 0`, when the grid has `0` with neighbours.
    pub alpha0_central: Option<f64>,
    /// `w = max α − min α`.
    pub width: f64,
    pub kept_nodes: usize,
    /// `R`, the box radii.
    pub radii: Vec<u32>,
    /// Local fractal dimension of each kept node (None with fewer than 2 distinct radii).
    pub node_dimensions: Vec<Option<f64>>,
}

impl Spectrum {
    pub fn r2(&self) -> Vec<f64> {
        self.r_value.iter().map(|r| r * r).collect()
    }
}

/// Least-squares slope of `y` on `x` and the correlation coefficient, computed on values
/// shifted by the first point so that a constant `y` gives a slope of exactly 0.
pub fn linear_fit(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let (x0, y0) = (x[0], y[0]);
    let mean_x = x.iter().map(|v| v - x0).sum::<f64>() / n;
    let mean_y = y.iter().map(|v| v - y0).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (&xi, &yi) in x.iter().zip(y) {
        let dx = (xi - x0) - mean_x;
        let dy = (yi - y0) - mean_y;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let denominator = (sxx * syy).sqrt();
    let r = if denominator == 0.0 {
        0.0
    } else {
        (sxy / denominator).clamp(-1.0, 1.0)
    };
    (slope, r)
}

/// Computes the spectrum from kept boxes over the `q` grid (ascending).
pub fn spectrum(boxes: &Boxes, q: &[f64], method: Alpha0Method) -> Result<Spectrum, SpectrumError> {
    if q.len() < 3 || q.windows(2).any(|w| w[1] <= w[0]) {
        return Err(SpectrumError::InvalidQ(
            "q must hold at least 3 strictly increasing values".into(),
        ));
    }
    let radii = &boxes.radii;
    let r_max = *radii.last().unwrap_or(&1);
    let log_r: Vec<f64> = radii
        .iter()
        .map(|&r| (f64::from(r) / f64::from(r_max)).ln())
        .collect();
    let (tau, r_value): (Vec<f64>, Vec<f64>) = log_partition_sums(boxes, q)
        .iter()
        .map(|y| linear_fit(&log_r, y))
        .unzip();

    // The Legendre transform, by forward differences of τ.
    let k_last = q.len() - 1;
    let mut alpha = Vec::with_capacity(k_last);
    let mut f_alpha = Vec::with_capacity(k_last);
    for k in 0..k_last {
        let a = (tau[k + 1] - tau[k]) / (q[k + 1] - q[k]);
        alpha.push(a);
        f_alpha.push(q[k] * a - tau[k]);
    }
    let (alpha0_peak, alpha0_central) = alpha0_estimates(q, &tau, &alpha, &f_alpha);
    let alpha0 = match method {
        Alpha0Method::Peak => alpha0_peak,
        Alpha0Method::CentralDifference => alpha0_central.ok_or_else(|| {
            SpectrumError::InvalidQ(
                "central-difference α0 needs q = 0 and a value either side of it in the grid"
                    .into(),
            )
        })?,
    };
    let min_alpha = alpha.iter().copied().fold(f64::INFINITY, f64::min);
    let max_alpha = alpha.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    Ok(Spectrum {
        q: q.to_vec(),
        tau,
        r_value,
        alpha,
        f_alpha,
        alpha0,
        alpha0_peak,
        alpha0_central,
        width: max_alpha - min_alpha,
        kept_nodes: boxes.node_radii.len(),
        radii: radii.clone(),
        node_dimensions: boxes.node_radii.iter().map(|r| node_dimension(r)).collect(),
    })
}

/// `ln Z_q(r)`, one row per `q` and a column per radius of `boxes.radii`, where `Z_q(r)` sums
/// `p_i(r)^q = (N_i(r)/N_i(r_max))^q` over the kept nodes.
fn log_partition_sums(boxes: &Boxes, q: &[f64]) -> Vec<Vec<f64>> {
    let radii = &boxes.radii;
    // N_i(r) and N_i(r_max) are small integers, so p_i(r) = a/b takes few distinct values:
    // histogram the (a, b) pairs per radius and raise each distinct pair to each q once.
    let mut pair_counts: Vec<BTreeMap<(u32, u32), u32>> = vec![BTreeMap::new(); radii.len()];
    for node in &boxes.node_radii {
        let total = node.len() as u32 + 1;
        let mut below = 0usize;
        for (k, &r) in radii.iter().enumerate() {
            while below < node.len() && node[below] <= r {
                below += 1;
            }
            *pair_counts[k].entry((below as u32 + 1, total)).or_insert(0) += 1;
        }
    }
    let mut powers: BTreeMap<(u32, u32), Vec<f64>> = BTreeMap::new();
    for counts in &pair_counts {
        for &(a, b) in counts.keys() {
            powers.entry((a, b)).or_insert_with(|| {
                let p = f64::from(a) / f64::from(b);
                q.iter().map(|&qj| p.powf(qj)).collect()
            });
        }
    }
    let mut log_z = vec![vec![0.0; radii.len()]; q.len()];
    let mut z = vec![0.0; q.len()];
    for (k, counts) in pair_counts.iter().enumerate() {
        z.fill(0.0);
        for (pair, &count) in counts {
            for (zj, power) in z.iter_mut().zip(&powers[pair]) {
                *zj += f64::from(count) * power;
            }
        }
        for (row, zj) in log_z.iter_mut().zip(&z) {
            row[k] = zj.ln();
        }
    }
    log_z
}

/// `α0` both ways: the `α` at the (first) maximum of `f(α)`, and `τ'(0)` by central
/// difference when the grid has `q = 0` with a value either side.
fn alpha0_estimates(q: &[f64], tau: &[f64], alpha: &[f64], f_alpha: &[f64]) -> (f64, Option<f64>) {
    let max_f = f_alpha.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tolerance = 1e-12 * max_f.abs().max(1.0);
    let peak = f_alpha
        .iter()
        .position(|&f| f >= max_f - tolerance)
        .unwrap_or(0);
    let central = q.iter().position(|&v| v == 0.0).and_then(|z| {
        (z > 0 && z + 1 < q.len()).then(|| (tau[z + 1] - tau[z - 1]) / (q[z + 1] - q[z - 1]))
    });
    (alpha[peak], central)
}

/// Paper Def. A.1: slope of `ln N(r)` against `ln r` over the node's own distinct radii.
pub fn node_dimension(sorted_radii: &[u32]) -> Option<f64> {
    let mut log_r = Vec::new();
    let mut log_n = Vec::new();
    for (i, &r) in sorted_radii.iter().enumerate() {
        let last_of_run = sorted_radii.get(i + 1) != Some(&r);
        if last_of_run && r > 0 {
            log_r.push(f64::from(r).ln());
            log_n.push(((i + 2) as f64).ln());
        }
    }
    (log_r.len() >= 2).then(|| linear_fit(&log_r, &log_n).0)
}

/// Box growing and spectrum in one step, from per-node out-distances.
pub fn spectrum_of_distances(
    node_distances: &[Vec<f64>],
    rule: NeighbourRule,
    q: &[f64],
    method: Alpha0Method,
) -> Result<Spectrum, SpectrumError> {
    spectrum(&grow_boxes(node_distances, rule)?, q, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_is_exact_hundredths() {
        let q = q_grid(-3.0, 3.0, 0.1).unwrap();
        assert_eq!(q.len(), 61);
        for (i, v) in q.iter().enumerate() {
            let k = -300 + 10 * i as i32;
            assert_eq!(*v, f64::from(k) / 100.0, "q[{i}]");
        }
    }

    #[test]
    fn bad_grids_are_refused() {
        assert!(q_grid(3.0, -3.0, 0.1).is_err());
        assert!(q_grid(-3.0, 3.0, 0.0).is_err());
        assert!(q_grid(-3.0, 3.0, f64::NAN).is_err());
    }

    #[test]
    fn fit_of_constant_is_exactly_flat() {
        let x = [0.1, 0.7, 1.3, 2.2];
        let (slope, r) = linear_fit(&x, &[0.3; 4]);
        assert_eq!(slope, 0.0);
        assert_eq!(r, 0.0);
        let (slope, r) = linear_fit(&x, &x.map(|v| 2.0 * v + 1.0));
        assert!((slope - 2.0).abs() < 1e-12 && (r - 1.0).abs() < 1e-12);
    }

    #[test]
    fn node_dimension_of_uniform_growth() {
        // N(r) = r + 1 at radii 1..: slope of ln(r+1) on ln r over r = 1..4 is well defined
        // and positive; a single radius gives none.
        assert!(node_dimension(&[1, 2, 3, 4]).is_some_and(|d| d > 0.0));
        assert_eq!(node_dimension(&[5, 5, 5]), None);
    }
}
