//! `neuromfa report`: plots, the paper's tables and a self-contained HTML page for a
//! sweep's state directory, optionally with benchmark accuracies set beside `E`.

pub mod evals;
mod figures;
pub(crate) use figures::evenly_by_rank;
mod html;
pub mod plots;
mod png;
mod render;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use neuromfa_common::stats::StepAggregate;
use neuromfa_coordinator::export::{self, ExportData, SpectrumRow};

use evals::Evals;
use figures::{
    alpha0_width_figure, emergence_figure, emergence_vs_size_figure, evals_figure, size_steps,
    spectra_figure,
};
use plots::{slug, Figure};
use tables::{
    alpha0_width_table, correlation_table, emergence_table, spectrum_variance_table, Table,
};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The sweep's state directory.
    pub state_dir: PathBuf,
    /// Output directory (default: STATE_DIR/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Benchmark accuracies to set beside E: a CSV `model,step,benchmark,accuracy`, an
    /// lm-evaluation-harness results JSON file (`results.<task>.acc`; model and step from
    /// `config.model_args`), or a directory of such files, subdirectories included.
    /// Repeatable.
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
    let mut out = std::io::stdout().lock();
    for path in write(&args)? {
        writeln!(out, "{}", path.display())?;
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

impl ModelRows<'_> {
    /// `(step, E from means)` at every step where `E` is finite.
    fn e_points(&self) -> Vec<(f64, f64)> {
        self.aggregates
            .iter()
            .filter_map(|a| {
                a.e_from_means
                    .filter(|e| e.is_finite())
                    .map(|e| (a.step as f64, e))
            })
            .collect()
    }
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

/// File-name slugs of `repos`, distinct: two repos may slug alike (`org/a` and `org-a`),
/// and file names must not collide.
fn unique_slugs<'a>(repos: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut slugs = BTreeSet::new();
    repos
        .into_iter()
        .map(|repo| {
            let base = slug(repo);
            let mut name = base.clone();
            let mut k = 2;
            while !slugs.insert(name.clone()) {
                name = format!("{base}-{k}");
                k += 1;
            }
            name
        })
        .collect()
}

/// One model's results as a running sweep has them, for the dashboard.
pub struct LiveModel<'a> {
    pub repo: &'a str,
    /// Per step with results, steps ascending.
    pub aggregates: &'a [StepAggregate],
    /// Per step whose spectrum is known: its rows in `q` order.
    pub spectra: BTreeMap<u64, Vec<SpectrumRow>>,
}

/// The figures the report draws that a running sweep can show, as (stem, title): `α0`
/// and `w`, `E`, and each model's spectra, in that order.
pub fn live_figure_stems(repos: &[&str]) -> Vec<(String, String)> {
    let mut stems = vec![
        ("emergence".to_string(), "E against step".to_string()),
        (
            "alpha0-width".to_string(),
            "α0 and w against step".to_string(),
        ),
    ];
    for (repo, slug) in repos.iter().zip(unique_slugs(repos.iter().copied())) {
        stems.push((format!("spectra-{slug}"), format!("Spectra, {repo}")));
    }
    stems
}

/// The report's figure `stem` (see [`live_figure_stems`]) drawn from live results as SVG,
/// exactly as the report draws it; None while no model it shows has results.
pub fn live_figure_svg(models: &[LiveModel], stem: &str) -> anyhow::Result<Option<String>> {
    let slugs = unique_slugs(models.iter().map(|m| m.repo));
    let rows: Vec<ModelRows> = models
        .iter()
        .zip(slugs)
        .map(|(m, slug)| ModelRows {
            repo: m.repo,
            slug,
            aggregates: m.aggregates.iter().collect(),
            parameters: 0,
            spectra: m
                .spectra
                .iter()
                .map(|(step, rows)| (*step, rows.iter().collect()))
                .collect(),
        })
        .collect();
    let with_results: Vec<ModelRows> = rows
        .into_iter()
        .filter(|m| !m.aggregates.is_empty())
        .collect();
    let figure = match stem {
        _ if with_results.is_empty() => None,
        "emergence" => Some(emergence_figure(&with_results)),
        "alpha0-width" => Some(alpha0_width_figure(&with_results)),
        _ => with_results
            .iter()
            .find(|m| stem.strip_prefix("spectra-") == Some(m.slug.as_str()))
            .filter(|m| !m.spectra.is_empty())
            .map(spectra_figure),
    };
    figure.map(|f| render::svg(&f)).transpose()
}

fn model_rows<'a>(data: &'a ExportData, warnings: &mut Vec<String>) -> Vec<ModelRows<'a>> {
    let slugs = unique_slugs(data.spec.models.iter().map(|m| m.repo.as_str()));
    let mut out = Vec::new();
    for (model, name) in data.spec.models.iter().zip(slugs) {
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
