//! `neuromfa report`: plots, the paper's tables and a self-contained HTML page for a
//! sweep's state directory, optionally with benchmark accuracies set beside `E`.

pub mod evals;
mod html;
pub mod plots;
mod png;
mod render;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use neuromfa_common::stats::StepAggregate;
use neuromfa_coordinator::export::{self, ExportData, SpectrumRow};
use plotters::style::{RGBColor, BLACK};

use evals::Evals;
use plots::{categorical, slug, step_color, Axis, ColorKey, Figure, Panel, Series};
use tables::{pearson, spearman, Cell, Table};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The sweep's state directory.
    pub state_dir: PathBuf,
    /// Output directory (default: STATE_DIR/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Benchmark accuracies to set beside E: a CSV `model,step,benchmark,accuracy`, an
    /// lm-evaluation-harness results JSON file (`results.<task>.acc`; model and step from
    /// `config.model_args`), or a directory of such files. Repeatable.
    #[arg(long = "evals", value_name = "PATH")]
    pub evals: Vec<PathBuf>,
    /// Steps at which to compare E across model sizes (default: the last step every model
    /// has, and up to three earlier steps they all have).
    #[arg(long, value_name = "S1,S2,...", value_delimiter = ',')]
    pub steps: Vec<u64>,
    /// Benchmarks to plot and tabulate beside E, or `all` (default: all when there are at
    /// most 8; else those of the paper's Tables 7–8 that are present). Correlations always
    /// cover every benchmark.
    #[arg(long, value_name = "B1,B2,...", value_delimiter = ',')]
    pub benchmarks: Vec<String>,
}

/// The benchmarks of the paper's Tables 7–8.
const PAPER_BENCHMARKS: &[&str] = &[
    "lambada_openai",
    "piqa",
    "arc_easy",
    "sciq",
    "winogrande",
    "wsc",
];
/// More benchmarks than this make the per-model plots unreadable.
const MAX_DEFAULT_BENCHMARKS: usize = 8;

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    for path in write(&args)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes the report; returns the files written (warnings and notes go to stderr).
pub fn write(args: &ReportArgs) -> anyhow::Result<Vec<PathBuf>> {
    let data = export::load(&args.state_dir)
        .with_context(|| format!("cannot read the sweep in {}", args.state_dir.display()))?;
    let models: Vec<String> = data.spec.models.iter().map(|m| m.repo.clone()).collect();
    let evals = evals::load(&args.evals, &models)?;
    let report = Report::build(&data, &evals, args);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.state_dir.join("report"));
    let written = report.write(&out)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    Ok(written)
}

/// One model's rows.
struct ModelRows<'a> {
    repo: &'a str,
    slug: String,
    aggregates: Vec<&'a StepAggregate>,
    /// Non-embedding weight-matrix parameters (0 when unknown).
    parameters: u64,
    /// step → rows in `q` order.
    spectra: BTreeMap<u64, Vec<&'a SpectrumRow>>,
}

struct Report {
    sweep: String,
    state_dir: PathBuf,
    counts: BTreeMap<String, usize>,
    total_tasks: usize,
    failed: Vec<[String; 5]>,
    figures: Vec<Figure>,
    tables: Vec<Table>,
    /// Index into `tables` of the correlations, when there are evals.
    correlations: Option<usize>,
    warnings: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    fn build(data: &ExportData, evals: &Evals, args: &ReportArgs) -> Self {
        let mut warnings = evals.warnings.clone();
        let mut notes = Vec::new();
        let policy = serde_json::to_value(data.spec.duplicates)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let flagged: std::collections::BTreeSet<(&str, u64, u64)> = data
            .tasks
            .iter()
            .filter_map(|t| t.duplicate_of.map(|d| (t.model.as_str(), t.step, d)))
            .collect();
        for (model, step, original) in flagged {
            warnings.push(format!(
                "{model} step {step} serves the same weights as step {original} (duplicates = \"{policy}\")"
            ));
        }
        let models = model_rows(data, &mut warnings);

        let mut figures = Vec::new();
        for m in &models {
            figures.push(spectra_figure(m));
        }
        figures.push(alpha0_width_figure(&models));
        figures.push(emergence_figure(&models));
        let steps = size_steps(&models, &args.steps, &mut warnings, &mut notes);
        figures.push(emergence_vs_size_figure(&models, &steps, &mut warnings));

        let chosen = choose_benchmarks(evals, &args.benchmarks, &mut warnings, &mut notes);
        for m in &models {
            if let Some(acc) = evals.accuracy.get(m.repo) {
                figures.push(evals_figure(m, acc, &chosen));
            }
        }

        let mut tables = vec![
            spectrum_variance_table(&models, data),
            alpha0_width_table(&models),
            emergence_table(&models, evals, &chosen),
        ];
        let correlations = if args.evals.is_empty() {
            None
        } else {
            tables.push(correlation_table(&models, evals));
            Some(tables.len() - 1)
        };

        let mut counts = BTreeMap::new();
        for t in &data.tasks {
            *counts.entry(t.state.clone()).or_insert(0) += 1;
        }
        let failed = data
            .tasks
            .iter()
            .filter(|t| t.state == "failed")
            .map(|t| {
                [
                    t.model.clone(),
                    t.step.to_string(),
                    t.seed.to_string(),
                    t.attempts.to_string(),
                    t.last_error.clone(),
                ]
            })
            .collect();
        Report {
            sweep: data.spec.name.clone(),
            state_dir: args.state_dir.clone(),
            counts,
            total_tasks: data.tasks.len(),
            failed,
            figures,
            tables,
            correlations,
            warnings,
            notes,
        }
    }

    /// Writes every file into `out`, returning their paths in the order written.
    fn write(&self, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut written = Vec::new();
        let mut put = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
            let path = out.join(name);
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path);
            Ok(())
        };
        let mut svgs = Vec::new();
        let mut plot_data = BTreeMap::new();
        for figure in &self.figures {
            let svg = render::svg(figure)?;
            put(&format!("{}.svg", figure.stem), svg.as_bytes())?;
            svgs.push(svg);
            plot_data.insert(figure.stem.clone(), figure.data());
        }
        let mut json =
            serde_json::to_vec_pretty(&plot_data).context("formatting plot-data.json")?;
        json.push(b'\n');
        put("plot-data.json", &json)?;
        for table in &self.tables {
            put(
                &format!("{}.md", table.stem),
                table.to_markdown().as_bytes(),
            )?;
            let csv = table
                .to_csv()
                .with_context(|| format!("formatting {}.csv", table.stem))?;
            put(&format!("{}.csv", table.stem), &csv)?;
        }
        put("report.html", html::page(self, &svgs).as_bytes())?;
        // PNGs last: plotters writes them itself, to paths under `out`.
        for figure in &self.figures {
            let path = out.join(format!("{}.png", figure.stem));
            render::png(figure, &path)?;
            written.push(path);
        }
        Ok(written)
    }
}

fn model_rows<'a>(data: &'a ExportData, warnings: &mut Vec<String>) -> Vec<ModelRows<'a>> {
    let mut slugs = BTreeSet::new();
    let mut out = Vec::new();
    for model in &data.spec.models {
        let rows = || data.aggregates.iter().filter(|a| a.model == model.repo);
        let aggregates: Vec<&StepAggregate> = rows().map(|a| &a.aggregate).collect();
        if aggregates.is_empty() {
            warnings.push(format!(
                "{}: no results yet; left out of the plots and tables",
                model.repo
            ));
            continue;
        }
        let mut spectra: BTreeMap<u64, Vec<&SpectrumRow>> = BTreeMap::new();
        for row in data.spectra.iter().filter(|s| s.model == model.repo) {
            spectra.entry(row.step).or_default().push(row);
        }
        // Two repos may slug alike (`org/a` and `org-a`); file names must not collide.
        let base = slug(&model.repo);
        let mut name = base.clone();
        let mut k = 2;
        while !slugs.insert(name.clone()) {
            name = format!("{base}-{k}");
            k += 1;
        }
        out.push(ModelRows {
            repo: &model.repo,
            slug: name,
            aggregates,
            parameters: rows().map(|a| a.parameters).max().unwrap_or(0),
            spectra,
        });
    }
    out
}

fn sd(var: f64) -> f64 {
    var.max(0.0).sqrt()
}

/// f(α) against α, one curve per step, ±1 sd of f over seeds (Figs. 5 and 18).
fn spectra_figure(m: &ModelRows) -> Figure {
    let n = m.spectra.len();
    let mut series = Vec::new();
    let mut entries = Vec::new();
    for (rank, (step, rows)) in m.spectra.iter().enumerate() {
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
    Figure {
        stem: format!("spectra-{}", m.slug),
        title: format!("Multifractal spectrum, {}", m.repo),
        caption: format!(
            "f(α) against α for {}: mean over seeds (up to {seeds}) at each q, one curve per step from blue (earliest) to red (latest); band: f(α) ± 1 sd over seeds (population variance).",
            m.repo
        ),
        size: (960, 620),
        panels: vec![Panel {
            title: String::new(),
            key: String::new(),
            x: Axis::linear("α (Lipschitz–Hölder exponent)"),
            y: Axis::linear("f(α)"),
            y2: None,
            series,
            legend: false,
        }],
        color_key: Some(ColorKey {
            title: "step".to_string(),
            entries,
        }),
    }
}

/// α0 and w against step, one line per model, ±1 sd (Fig. 19).
fn alpha0_width_figure(models: &[ModelRows]) -> Figure {
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

fn e_points(m: &ModelRows) -> Vec<(f64, f64)> {
    m.aggregates
        .iter()
        .filter_map(|a| {
            a.e_from_means
                .filter(|e| e.is_finite())
                .map(|e| (a.step as f64, e))
        })
        .collect()
}

/// E (from means) against step per model (Fig. 6).
fn emergence_figure(models: &[ModelRows]) -> Figure {
    Figure {
        stem: "emergence".to_string(),
        title: "Degree of emergence E over training".to_string(),
        caption: "E = (w/w0)·ln(α0,0/α0) from the per-step means over seeds, relative to each model's first step; steps drawn at step + 1 on a log axis.".to_string(),
        size: (960, 620),
        panels: vec![Panel {
            title: String::new(),
            key: String::new(),
            x: Axis::steps(),
            y: Axis::linear("E (from means)"),
            y2: None,
            series: models
                .iter()
                .enumerate()
                .map(|(i, m)| Series::line(m.repo, categorical(i), e_points(m)))
                .collect(),
            legend: true,
        }],
        color_key: None,
    }
}

/// The steps at which to compare E across sizes: the user's, or the last step every model
/// has E at and up to three earlier common steps (the first step, where E is 0 by
/// definition, left out).
fn size_steps(
    models: &[ModelRows],
    requested: &[u64],
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<u64> {
    let with_e =
        |m: &ModelRows| -> BTreeSet<u64> { e_points(m).iter().map(|&(s, _)| s as u64).collect() };
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
fn emergence_vs_size_figure(
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
    Figure {
        stem: "emergence-vs-size".to_string(),
        title: "Degree of emergence E against model size".to_string(),
        caption: "E (from means) of each model at the chosen steps, against its non-embedding weight-matrix parameter count (log axis); one line per step.".to_string(),
        size: (960, 620),
        panels: vec![Panel {
            title: String::new(),
            key: String::new(),
            x: Axis::log("model size: non-embedding matrix parameters (log)"),
            y: Axis::linear("E (from means)"),
            y2: None,
            series,
            legend: true,
        }],
        color_key: None,
    }
}

/// Which benchmarks the per-model plots and the emergence table show.
fn choose_benchmarks(
    evals: &Evals,
    requested: &[String],
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<String> {
    let all = evals.benchmarks();
    if requested.iter().any(|b| b.eq_ignore_ascii_case("all")) {
        return all;
    }
    if !requested.is_empty() {
        let mut chosen = Vec::new();
        for b in requested {
            if all.contains(b) {
                if !chosen.contains(b) {
                    chosen.push(b.clone());
                }
            } else {
                warnings.push(format!("--benchmarks {b}: not in the evaluations given"));
            }
        }
        return chosen;
    }
    if all.len() <= MAX_DEFAULT_BENCHMARKS {
        return all;
    }
    let paper: Vec<String> = PAPER_BENCHMARKS
        .iter()
        .filter(|b| all.iter().any(|a| a == *b))
        .map(|b| b.to_string())
        .collect();
    let chosen = if paper.is_empty() {
        all.iter().take(MAX_DEFAULT_BENCHMARKS).cloned().collect()
    } else {
        paper
    };
    notes.push(format!(
        "{} benchmarks in the evaluations; plots and table-emergence show {} (choose with --benchmarks, or --benchmarks all); table-correlations covers all",
        all.len(),
        chosen.join(", ")
    ));
    chosen
}

/// Accuracy per benchmark against step, E on the right-hand axis.
fn evals_figure(
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
        e_points(m),
    );
    e.secondary = true;
    e.dashed = true;
    series.push(e);
    Figure {
        stem: format!("evals-{}", m.slug),
        title: format!("Benchmarks and emergence, {}", m.repo),
        caption: format!(
            "Benchmark accuracy (left axis) and E from means (right axis, dashed) of {} against step + 1 (log axis).",
            m.repo
        ),
        size: (1040, 620),
        panels: vec![Panel {
            title: String::new(),
            key: String::new(),
            x: Axis::steps(),
            y: Axis::linear("accuracy"),
            y2: Some(Axis::linear("E (from means)")),
            series,
            legend: true,
        }],
        color_key: None,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Tables 3–4: spread over seeds of the spectrum, per model and step.
fn spectrum_variance_table(models: &[ModelRows], data: &ExportData) -> Table {
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
        sections: models
            .iter()
            .map(|m| {
                let rows = m
                    .aggregates
                    .iter()
                    .map(|a| {
                        let rows = m.spectra.get(&a.step).map_or(&[][..], Vec::as_slice);
                        vec![
                            Cell::Int(a.step),
                            Cell::Int(a.seeds as u64),
                            Cell::Int(rows.len() as u64),
                            Cell::Num(mean(rows.iter().map(|r| r.alpha_var))),
                            Cell::Num(mean(rows.iter().map(|r| r.f_alpha_var))),
                        ]
                    })
                    .collect();
                (m.repo.to_string(), rows)
            })
            .collect(),
    }
}

/// Tables 5–6: α0 and w, mean and variance over seeds.
fn alpha0_width_table(models: &[ModelRows]) -> Table {
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
        sections: models
            .iter()
            .map(|m| {
                let rows = m
                    .aggregates
                    .iter()
                    .map(|a| {
                        vec![
                            Cell::Int(a.step),
                            Cell::Int(a.seeds as u64),
                            Cell::Num(Some(a.alpha0_mean)),
                            Cell::Num(Some(a.alpha0_var)),
                            Cell::Num(Some(a.alpha0_var_ddof1)),
                            Cell::Num(Some(a.width_mean)),
                            Cell::Num(Some(a.width_var)),
                            Cell::Num(Some(a.width_var_ddof1)),
                        ]
                    })
                    .collect();
                (m.repo.to_string(), rows)
            })
            .collect(),
    }
}

/// Tables 7–8: E per step beside each benchmark's accuracy at that step.
fn emergence_table(models: &[ModelRows], evals: &Evals, chosen: &[String]) -> Table {
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
        sections: models
            .iter()
            .map(|m| {
                let acc = evals.accuracy.get(m.repo);
                let rows = m
                    .aggregates
                    .iter()
                    .map(|a| {
                        let mut row = vec![
                            Cell::Int(a.step),
                            Cell::Int(a.seeds as u64),
                            Cell::Num(a.e_from_means),
                            Cell::Num(a.e_per_seed_mean),
                            Cell::Num(a.e_per_seed_var),
                        ];
                        row.extend(chosen.iter().map(|b| {
                            Cell::Num(acc.and_then(|acc| acc.get(b)?.get(&a.step).copied()))
                        }));
                        row
                    })
                    .collect();
                (m.repo.to_string(), rows)
            })
            .collect(),
    }
}

/// Pearson and Spearman correlation of E (from means) with each benchmark, per model,
/// over the steps that have both.
fn correlation_table(models: &[ModelRows], evals: &Evals) -> Table {
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
                let e: BTreeMap<u64, f64> = e_points(m)
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
