//! The paper's tables (Tables 3–8) and the correlations of `E` with benchmarks, each
//! written as Markdown and CSV and shown in the HTML report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use neuromfa_common::stats::StepAggregate;
use neuromfa_coordinator::export::ExportData;

use super::evals::Evals;
use super::ModelRows;

/// One cell. Numbers keep full precision in CSV and are rounded for reading elsewhere.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Int(u64),
    /// None: no value (shown as `–`, empty in CSV).
    Num(Option<f64>),
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::Int(i) => i.to_string(),
            // `{}` prints the shortest text that reads back as the same f64.
            Cell::Num(v) => v.map_or_else(String::new, |v| v.to_string()),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Num(v) => v.map_or_else(|| "–".to_string(), format_number),
        }
    }

    fn is_numeric(&self) -> bool {
        !matches!(self, Cell::Text(_))
    }
}

/// Four decimals, or three significant digits in scientific form for values too small or
/// large for that (seed variances are often below 1e-4).
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if !v.is_finite() || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// A table in sections, one per model; CSV flattens them with a leading `model` column.
#[derive(Debug, Clone)]
pub struct Table {
    /// File stem, e.g. `table-emergence`.
    pub stem: String,
    pub title: String,
    /// What the numbers are, said in the Markdown and HTML.
    pub notes: Vec<String>,
    pub columns: Vec<String>,
    /// (model, rows).
    pub sections: Vec<(String, Vec<Vec<Cell>>)>,
}

impl Table {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", self.title);
        for note in &self.notes {
            let _ = writeln!(md, "{note}\n");
        }
        for (model, rows) in &self.sections {
            let _ = writeln!(md, "## {model}\n");
            let _ = writeln!(
                md,
                "| {} |",
                self.columns
                    .iter()
                    .map(|c| escape_md(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let align: Vec<&str> = (0..self.columns.len())
                .map(|i| {
                    let numeric = rows
                        .first()
                        .and_then(|r| r.get(i))
                        .is_some_and(Cell::is_numeric);
                    if numeric {
                        "---:"
                    } else {
                        "---"
                    }
                })
                .collect();
            let _ = writeln!(md, "|{}|", align.join("|"));
            for row in rows {
                let cells: Vec<String> = row.iter().map(|c| escape_md(&c.display())).collect();
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
            let _ = writeln!(md);
        }
        md
    }

    pub fn to_csv(&self) -> anyhow::Result<Vec<u8>> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let header: Vec<&str> = std::iter::once("model")
            .chain(self.columns.iter().map(String::as_str))
            .collect();
        writer
            .write_record(&header)
            .context("formatting a CSV table")?;
        for (model, rows) in &self.sections {
            for row in rows {
                let record: Vec<String> = std::iter::once(model.clone())
                    .chain(row.iter().map(Cell::csv))
                    .collect();
                writer
                    .write_record(&record)
                    .context("formatting a CSV table")?;
            }
        }
        writer.into_inner().context("formatting a CSV table")
    }
}

fn escape_md(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Pearson's r; None below two points or when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let r = sxy / (sxx * syy).sqrt();
    (sxx > 0.0 && syy > 0.0 && r.is_finite()).then_some(r)
}

/// Spearman's ρ: Pearson's r of the ranks, ties given their average rank (as scipy does).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    pearson(&ranks(&x[..n]), &ranks(&y[..n]))
}

/// 1-based ranks, ties averaged.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share the mean of ranks i+1..=j+1.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

// ---------------------------------------------------------------------------------------------
// The report's tables, built from a sweep's rows.

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// One section per model and in it a row per step: the step, its seeds, then `cells`.
fn per_step_sections(
    models: &[ModelRows],
    cells: impl Fn(&ModelRows, &StepAggregate) -> Vec<Cell>,
) -> Vec<(String, Vec<Vec<Cell>>)> {
    models
        .iter()
        .map(|m| {
            let rows = m
                .aggregates
                .iter()
                .map(|a| {
                    let mut row = vec![Cell::Int(a.step), Cell::Int(a.seeds as u64)];
                    row.extend(cells(m, a));
                    row
                })
                .collect();
            (m.repo.to_string(), rows)
        })
        .collect()
}

/// Tables 3–4: spread over seeds of the spectrum, per model and step.
pub(super) fn spectrum_variance_table(models: &[ModelRows], data: &ExportData) -> Table {
    // The q values the spectra rows actually hold (α has one value fewer than the q grid).
    let per_step = models
        .iter()
        .flat_map(|m| m.spectra.values().map(Vec::len))
        .max()
        .unwrap_or(0);
    let (q_lo, q_hi) = data
        .spectra
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r.q), hi.max(r.q))
        });
    Table {
        stem: "table-spectrum-variance".to_string(),
        title: "Variance of the spectrum over seeds (paper Tables 3–4)".to_string(),
        notes: vec![format!(
            "For each model and step: the population variance (ddof 0) over seeds of α(q) and of f(α(q)) at each q, averaged over the {per_step} q values from {q_lo:.2} to {q_hi:.2} (`var_alpha_mean_over_q`, `var_f_alpha_mean_over_q`)."
        )],
        columns: ["step", "seeds", "q_values", "var_alpha_mean_over_q", "var_f_alpha_mean_over_q"]
            .map(String::from)
            .to_vec(),
        sections: per_step_sections(models, |m, a| {
            let rows = m.spectra.get(&a.step).map_or(&[][..], Vec::as_slice);
            vec![
                Cell::Int(rows.len() as u64),
                Cell::Num(mean(rows.iter().map(|r| r.alpha_var))),
                Cell::Num(mean(rows.iter().map(|r| r.f_alpha_var))),
            ]
        }),
    }
}

/// Tables 5–6: α0 and w, mean and variance over seeds.
pub(super) fn alpha0_width_table(models: &[ModelRows]) -> Table {
    Table {
        stem: "table-alpha0-width".to_string(),
        title: "α0 and w over seeds (paper Tables 5–6)".to_string(),
        notes: vec![
            "Mean over seeds; `var` is the population variance (ddof 0), `var_ddof1` the sample variance.".to_string(),
        ],
        columns: [
            "step",
            "seeds",
            "alpha0_mean",
            "alpha0_var",
            "alpha0_var_ddof1",
            "width_mean",
            "width_var",
            "width_var_ddof1",
        ]
        .map(String::from)
        .to_vec(),
        sections: per_step_sections(models, |_, a| {
            vec![
                Cell::Num(Some(a.alpha0_mean)),
                Cell::Num(Some(a.alpha0_var)),
                Cell::Num(Some(a.alpha0_var_ddof1)),
                Cell::Num(Some(a.width_mean)),
                Cell::Num(Some(a.width_var)),
                Cell::Num(Some(a.width_var_ddof1)),
            ]
        }),
    }
}

/// Tables 7–8: E per step beside each benchmark's accuracy at that step.
pub(super) fn emergence_table(models: &[ModelRows], evals: &Evals, chosen: &[String]) -> Table {
    let mut columns: Vec<String> = [
        "step",
        "seeds",
        "E_from_means",
        "E_per_seed_mean",
        "E_per_seed_var",
    ]
    .map(String::from)
    .to_vec();
    columns.extend(chosen.iter().cloned());
    let mut notes = vec![
        "E relative to the model's first step: from the per-step means (the reference's form) and per seed then averaged, with its population variance over seeds.".to_string(),
    ];
    if !chosen.is_empty() {
        notes.push(
            "Benchmark columns: accuracy (`acc`) at that step; – where not evaluated.".to_string(),
        );
    }
    Table {
        stem: "table-emergence".to_string(),
        title: "Degree of emergence and benchmarks (paper Tables 7–8)".to_string(),
        notes,
        columns,
        sections: per_step_sections(models, |m, a| {
            let acc = evals.accuracy.get(m.repo);
            let mut row = vec![
                Cell::Num(a.e_from_means),
                Cell::Num(a.e_per_seed_mean),
                Cell::Num(a.e_per_seed_var),
            ];
            row.extend(
                chosen
                    .iter()
                    .map(|b| Cell::Num(acc.and_then(|acc| acc.get(b)?.get(&a.step).copied()))),
            );
            row
        }),
    }
}

/// Pearson and Spearman correlation of E (from means) with each benchmark, per model,
/// over the steps that have both.
pub(super) fn correlation_table(models: &[ModelRows], evals: &Evals) -> Table {
    Table {
        stem: "table-correlations".to_string(),
        title: "Correlation of E with benchmark accuracy".to_string(),
        notes: vec![
            "Per model and benchmark, over the steps that have both E (from means) and an accuracy: n steps, Pearson's r and Spearman's ρ (ties at average rank). – where n < 2 or either side is constant.".to_string(),
        ],
        columns: ["benchmark", "n", "pearson", "spearman"]
            .map(String::from)
            .to_vec(),
        sections: models
            .iter()
            .filter_map(|m| {
                let acc = evals.accuracy.get(m.repo)?;
                let e: BTreeMap<u64, f64> = m.e_points()
                    .into_iter()
                    .map(|(s, e)| (s as u64, e))
                    .collect();
                let rows = acc
                    .iter()
                    .map(|(bench, by_step)| {
                        let (xs, ys): (Vec<f64>, Vec<f64>) = e
                            .iter()
                            .filter_map(|(step, &e)| by_step.get(step).map(|&a| (e, a)))
                            .unzip();
                        vec![
                            Cell::Text(bench.clone()),
                            Cell::Int(xs.len() as u64),
                            Cell::Num(pearson(&xs, &ys)),
                            Cell::Num(spearman(&xs, &ys)),
                        ]
                    })
                    .collect();
                Some((m.repo.to_string(), rows))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn correlations_of_known_series() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-15);
        assert!((spearman(&x, &[1.0, 10.0, 100.0, 1000.0]).unwrap() - 1.0).abs() < 1e-15);
        assert_eq!(pearson(&x, &[1.0; 4]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }

    #[test]
    fn csv_keeps_full_precision() {
        let t = Table {
            stem: "t".into(),
            title: "T".into(),
            notes: vec![],
            columns: vec!["v".into()],
            sections: vec![("m".into(), vec![vec![Cell::Num(Some(0.1 + 0.2))]])],
        };
        let csv = String::from_utf8(t.to_csv().unwrap()).unwrap();
        assert_eq!(csv, "model,v\nm,0.30000000000000004\n");
        assert!(t.to_markdown().contains("| 0.3000 |"));
    }
}
