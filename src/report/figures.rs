//! The report's figures, built from a sweep's rows: spectra (paper Figs. 5 and 18), α0 and w
//! (Fig. 19), `E` over training (Fig. 6) and against model size (Fig. 8), and benchmarks
//! beside `E`.

use std::collections::{BTreeMap, BTreeSet};

use neuromfa_common::stats::StepAggregate;
use plotters::style::{RGBColor, BLACK};

use super::plots::{categorical, step_color, Axis, ColorKey, Figure, Panel, Series};
use super::ModelRows;

fn sd(var: f64) -> f64 {
    var.max(0.0).sqrt()
}

/// Points a line over training marks with dots: beyond, the dots merge into a thick line.
const MAX_MARKED_POINTS: usize = 40;

/// Curves a spectra plot draws at most: more overlap into one smear (a suite has 154 steps).
const MAX_SPECTRA_CURVES: usize = 12;

/// Which of `len` items (by rank) to keep when at most `n` fit: all when few, else `n`
/// spread evenly by rank, the first and the last always among them.
pub(crate) fn evenly_by_rank(len: usize, n: usize) -> Vec<usize> {
    if len <= n || n < 2 {
        return (0..len.min(n)).collect();
    }
    let last = n - 1;
    (0..n).map(|i| (i * (len - 1) + last / 2) / last).collect()
}

/// Which of `n` steps (by rank) a spectra plot draws (see [`evenly_by_rank`]).
fn spectra_ranks(n: usize) -> Vec<usize> {
    evenly_by_rank(n, MAX_SPECTRA_CURVES)
}

/// f(α) against α, one curve per step (at most [`MAX_SPECTRA_CURVES`] steps), ±1 sd of f
/// over seeds (Figs. 5 and 18).
pub(super) fn spectra_figure(m: &ModelRows) -> Figure {
    let n = m.spectra.len();
    let drawn = spectra_ranks(n);
    let mut series = Vec::new();
    let mut entries = Vec::new();
    for (rank, (step, rows)) in m.spectra.iter().enumerate() {
        if drawn.binary_search(&rank).is_err() {
            continue;
        }
        let color = step_color(rank, n);
        let mut s = Series::line(
            format!("step {step}"),
            color,
            rows.iter()
                .map(|r| (r.alpha_mean, r.f_alpha_mean))
                .collect(),
        );
        s.markers = false;
        s.band = rows
            .iter()
            .map(|r| {
                let d = sd(r.f_alpha_var);
                (r.alpha_mean, r.f_alpha_mean - d, r.f_alpha_mean + d)
            })
            .collect();
        series.push(s);
        entries.push((step.to_string(), color));
    }
    let seeds = m.aggregates.iter().map(|a| a.seeds).max().unwrap_or(0);
    let subset = if drawn.len() < n {
        format!(
            " {} of its {n} steps are drawn, evenly spaced by rank (every step is in spectra.csv);",
            drawn.len()
        )
    } else {
        String::new()
    };
    let panel = Panel {
        legend: false,
        ..Panel::only(
            Axis::linear("α (Lipschitz–Hölder exponent)"),
            Axis::linear("f(α)"),
            series,
        )
    };
    Figure {
        stem: format!("spectra-{}", m.slug),
        title: format!("Multifractal spectrum, {}", m.repo),
        caption: format!(
            "f(α) against α for {}: mean over seeds (up to {seeds}) at each q, one curve per step from blue (earliest) to red (latest);{subset} band: f(α) ± 1 sd over seeds (population variance).",
            m.repo
        ),
        size: (960, 620),
        panels: vec![panel],
        color_key: Some(ColorKey {
            title: "step".to_string(),
            entries,
        }),
    }
}

/// α0 and w against step, one line per model, ±1 sd (Fig. 19).
pub(super) fn alpha0_width_figure(models: &[ModelRows]) -> Figure {
    let panel =
        |key: &str, title: &str, label: &str, pick: fn(&StepAggregate) -> (f64, f64)| Panel {
            title: title.to_string(),
            key: key.to_string(),
            x: Axis::steps(),
            y: Axis::linear(label),
            y2: None,
            series: models
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut s = Series::line(
                        m.repo,
                        categorical(i),
                        m.aggregates
                            .iter()
                            .map(|a| (a.step as f64, pick(a).0))
                            .collect(),
                    );
                    s.markers = s.points.len() <= MAX_MARKED_POINTS;
                    s.band = m
                        .aggregates
                        .iter()
                        .map(|a| {
                            let (mean, var) = pick(a);
                            (a.step as f64, mean - sd(var), mean + sd(var))
                        })
                        .collect();
                    s
                })
                .collect(),
            legend: true,
        };
    Figure {
        stem: "alpha0-width".to_string(),
        title: "Irregularity α0 and heterogeneity w over training".to_string(),
        caption: "Mean over seeds of α0 (left) and of the spectrum width w (right) per step, one line per model; band ± 1 sd over seeds (population variance); steps drawn at step + 1 on a log axis.".to_string(),
        size: (1440, 600),
        panels: vec![
            panel("alpha0", "α0 (irregularity)", "α0 mean", |a| {
                (a.alpha0_mean, a.alpha0_var)
            }),
            panel("width", "w (heterogeneity)", "w mean", |a| {
                (a.width_mean, a.width_var)
            }),
        ],
        color_key: None,
    }
}

/// E (from means) against step per model (Fig. 6).
pub(super) fn emergence_figure(models: &[ModelRows]) -> Figure {
    let series = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut s = Series::line(m.repo, categorical(i), m.e_points());
            s.markers = s.points.len() <= MAX_MARKED_POINTS;
            s
        })
        .collect();
    let panel = Panel::only(Axis::steps(), Axis::linear("E (from means)"), series);
    Figure {
        stem: "emergence".to_string(),
        title: "Degree of emergence E over training".to_string(),
        caption: "E = (w/w0)·ln(α0,0/α0) from the per-step means over seeds, relative to each model's first step; steps drawn at step + 1 on a log axis.".to_string(),
        size: (960, 620),
        panels: vec![panel],
        color_key: None,
    }
}

/// The steps at which to compare E across sizes: the user's, or the last step every model
/// has E at and up to three earlier common steps (the first step, where E is 0 by
/// definition, left out).
pub(super) fn size_steps(
    models: &[ModelRows],
    requested: &[u64],
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<u64> {
    let with_e =
        |m: &ModelRows| -> BTreeSet<u64> { m.e_points().iter().map(|&(s, _)| s as u64).collect() };
    if !requested.is_empty() {
        let mut steps: Vec<u64> = requested.to_vec();
        steps.sort_unstable();
        steps.dedup();
        for &step in &steps {
            if !models.iter().any(|m| with_e(m).contains(&step)) {
                warnings.push(format!(
                    "--steps {step}: no model has E at this step; left out of emergence-vs-size"
                ));
            }
        }
        return steps;
    }
    let mut common: Option<BTreeSet<u64>> = None;
    for m in models {
        let steps = with_e(m);
        common = Some(match common {
            None => steps,
            Some(c) => c.intersection(&steps).copied().collect(),
        });
    }
    let common: Vec<u64> = common.unwrap_or_default().into_iter().collect();
    let candidates: Vec<u64> = common.iter().skip(1).copied().collect();
    let chosen: Vec<u64> = if candidates.len() <= 4 {
        candidates
    } else {
        // Four steps spread over the common ones by index, the last included.
        let last = candidates.len() - 1;
        let mut picked: Vec<u64> = (0..4).map(|i| candidates[(i * last + 1) / 3]).collect();
        picked.dedup();
        picked
    };
    if chosen.is_empty() {
        if models.len() > 1 {
            warnings.push(
                "no step after the first has E for every model; emergence-vs-size is empty (choose steps with --steps)".to_string(),
            );
        }
    } else {
        notes.push(format!(
            "emergence-vs-size at steps {} (common to every model; change with --steps)",
            chosen
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    chosen
}

/// E against model size at chosen steps, one line per step (Fig. 8).
pub(super) fn emergence_vs_size_figure(
    models: &[ModelRows],
    steps: &[u64],
    warnings: &mut Vec<String>,
) -> Figure {
    for m in models {
        if m.parameters == 0 {
            warnings.push(format!(
                "{}: model size unknown (no parameter count in its results); left out of emergence-vs-size",
                m.repo
            ));
        }
    }
    let series = steps
        .iter()
        .enumerate()
        .map(|(rank, &step)| {
            let mut points: Vec<(f64, f64)> = models
                .iter()
                .filter_map(|m| {
                    let a = m.aggregates.iter().find(|a| a.step == step)?;
                    let e = a.e_from_means.filter(|e| e.is_finite())?;
                    (m.parameters > 0).then_some((m.parameters as f64, e))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::line(
                format!("step {step}"),
                step_color(rank, steps.len()),
                points,
            )
        })
        .collect();
    let panel = Panel::only(
        Axis::log("model size: non-embedding matrix parameters (log)"),
        Axis::linear("E (from means)"),
        series,
    );
    Figure {
        stem: "emergence-vs-size".to_string(),
        title: "Degree of emergence E against model size".to_string(),
        caption: "E (from means) of each model at the chosen steps, against its non-embedding weight-matrix parameter count (log axis); one line per step.".to_string(),
        size: (960, 620),
        panels: vec![panel],
        color_key: None,
    }
}

/// Accuracy per benchmark against step, E on the right-hand axis.
pub(super) fn evals_figure(
    m: &ModelRows,
    accuracy: &BTreeMap<String, BTreeMap<u64, f64>>,
    chosen: &[String],
) -> Figure {
    let mut series: Vec<Series> = chosen
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let steps = accuracy.get(b)?;
            Some(Series::line(
                b.clone(),
                categorical(i),
                steps.iter().map(|(&s, &a)| (s as f64, a)).collect(),
            ))
        })
        .collect();
    let mut e = Series::line(
        "E (from means)",
        RGBColor(BLACK.0, BLACK.1, BLACK.2),
        m.e_points(),
    );
    e.secondary = true;
    e.dashed = true;
    series.push(e);
    let panel = Panel {
        y2: Some(Axis::linear("E (from means)")),
        ..Panel::only(Axis::steps(), Axis::linear("accuracy"), series)
    };
    Figure {
        stem: format!("evals-{}", m.slug),
        title: format!("Benchmarks and emergence, {}", m.repo),
        caption: format!(
            "Benchmark accuracy (left axis) and E from means (right axis, dashed) of {} against step + 1 (log axis).",
            m.repo
        ),
        size: (1040, 620),
        panels: vec![panel],
        color_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_of_steps_draws_a_few_spectra_first_and_last_included() {
        assert_eq!(spectra_ranks(3), vec![0, 1, 2]);
        let ranks = spectra_ranks(154);
        assert_eq!(ranks.len(), MAX_SPECTRA_CURVES);
        assert_eq!((ranks[0], ranks[ranks.len() - 1]), (0, 153));
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        // Evenly spread: no gap more than one rank wider than another.
        let gaps: Vec<usize> = ranks.windows(2).map(|w| w[1] - w[0]).collect();
        let (min, max) = (gaps.iter().min(), gaps.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{gaps:?}");
    }
}
