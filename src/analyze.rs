//! `neuromfa analyze`: NeuroMFA of checkpoints on local disk, printed as a table or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neuromfa_common::pipeline::SeedAnalysis;
use neuromfa_common::pipeline::{analyze_seeds_with, PathEngine, DEFAULT_GAMMA, DEFAULT_LAMBDA};
use neuromfa_common::sampler::check_layer_sample;
use neuromfa_common::spectrum::{q_grid, Alpha0Method};
use neuromfa_common::stats::{aggregate, StepAggregate};
use neuromfa_common::{AnalysisParams, Checkpoint, DistanceMode, SeedResult};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Checkpoint directories, each holding `config.json` and the weights of one
    /// checkpoint: `model.safetensors`, safetensors shards with their index,
    /// `pytorch_model.bin`, or `.bin` shards with their index, looked for in that order.
    /// The step comes from a `step<N>` directory name or is given as `DIR@N`.
    #[arg(required = true, value_name = "DIR[@STEP]")]
    pub dirs: Vec<String>,

    /// Seeds as a half-open range `A..B` (the paper uses 0..10).
    #[arg(long, default_value = "0..10", conflicts_with = "seed")]
    pub seeds: String,

    /// One seed; repeat for several. Replaces `--seeds`.
    #[arg(long = "seed", value_name = "N")]
    pub seed: Vec<u32>,

    /// Neurons drawn per layer (`s`).
    #[arg(long, default_value_t = 32)]
    pub layer_sample: usize,

    /// Distance threshold `T`: neighbours are at one-hop distance `1 < ω ≤ T`, or at
    /// shortest-path distance `d ≤ T`.
    #[arg(long, default_value_t = 150.0)]
    pub threshold: f64,

    /// `one-hop` (the reference code's `ω = 1/|w|` of one edge) or `shortest-path` (paper
    /// Eq. 1: the least `Σω + λ·|P|^γ` over paths through the full network).
    #[arg(long, value_enum, default_value = "one-hop")]
    pub distance: DistanceChoice,

    /// Shortest-path penalty `λ·|P|^γ`: `λ` (at least 0) …
    #[arg(long, default_value_t = DEFAULT_LAMBDA, allow_negative_numbers = true)]
    pub lambda: f64,

    /// … and `γ` (above 0).
    #[arg(long, default_value_t = DEFAULT_GAMMA)]
    pub gamma: f64,

    /// Compute shortest paths by plain Dijkstra over the full graph instead (the same
    /// numbers, much slower: the benchmark's baseline).
    #[arg(long, hide = true)]
    pub dijkstra: bool,

    #[arg(long, default_value_t = -3.0, allow_negative_numbers = true)]
    pub q_min: f64,
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub q_max: f64,
    #[arg(long, default_value_t = 0.1)]
    pub q_step: f64,

    /// How α0 is read off: `peak` (the reference: α at the maximum of f(α)) or
    /// `central-difference` (τ'(0) by (τ(Δq) − τ(−Δq))/2Δq, the better estimate).
    #[arg(long, value_enum, default_value = "peak")]
    pub alpha0: Alpha0Choice,

    /// Print one JSON document (`results[]`, `aggregates[]`) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Write each (step, seed)'s drawn neurons and edge list under this directory.
    #[arg(long, value_name = "OUT")]
    pub export_snin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistanceChoice {
    OneHop,
    ShortestPath,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Alpha0Choice {
    Peak,
    CentralDifference,
}

impl From<Alpha0Choice> for Alpha0Method {
    fn from(choice: Alpha0Choice) -> Self {
        match choice {
            Alpha0Choice::Peak => Alpha0Method::Peak,
            Alpha0Choice::CentralDifference => Alpha0Method::CentralDifference,
        }
    }
}

/// `A..B` as the seeds `A, A+1, …, B-1`.
pub fn parse_seed_range(text: &str) -> Result<Vec<u32>> {
    let (start, end) = text
        .split_once("..")
        .with_context(|| format!("--seeds `{text}`: expected a range like 0..10"))?;
    let start: u32 = start
        .trim()
        .parse()
        .with_context(|| format!("--seeds `{text}`: `{start}` is not a seed"))?;
    let end: u32 = end
        .trim()
        .parse()
        .with_context(|| format!("--seeds `{text}`: `{end}` is not a seed"))?;
    if end <= start {
        bail!("--seeds `{text}` is empty: the end is exclusive, e.g. 0..10 for ten seeds");
    }
    Ok((start..end).collect())
}

/// A checkpoint directory and its training step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDir {
    pub path: PathBuf,
    pub step: u64,
}

/// `DIR@N`, or `DIR` whose last component is `step<N>`.
pub fn parse_step_dir(arg: &str) -> Result<StepDir> {
    if let Some((dir, step)) = arg.rsplit_once('@') {
        if let Ok(step) = step.parse::<u64>() {
            return Ok(StepDir {
                path: PathBuf::from(dir),
                step,
            });
        }
    }
    let path = PathBuf::from(arg);
    let step = step_from_dir_name(&path).with_context(|| {
        format!("cannot tell the training step of `{arg}`: name the directory step<N> or pass {arg}@<N>")
    })?;
    Ok(StepDir { path, step })
}

fn step_from_dir_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("step")?.parse().ok()
}

#[derive(Serialize)]
struct JsonReport<'a> {
    params: &'a AnalysisParams,
    first_step: u64,
    results: Vec<&'a SeedResult>,
    aggregates: &'a [StepAggregate],
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    let seeds = args.seed_list()?;
    let dirs = args.step_dirs()?;
    let (params, engine) = args.analysis()?;

    let started = Instant::now();
    let checkpoints = open_checkpoints(&dirs, &params)?;
    if let Some(out) = &args.export_snin {
        std::fs::create_dir_all(out)
            .with_context(|| format!("creating export directory {}", out.display()))?;
    }
    let results = analyze_checkpoints(
        &dirs,
        &checkpoints,
        &params,
        &seeds,
        engine,
        args.export_snin.as_deref(),
    )?;
    let first_step = dirs[0].step;
    let points: Vec<_> = results.iter().map(SeedResult::point).collect();
    let aggregates = aggregate(&points, first_step);

    let mapped: u64 = checkpoints.iter().map(Checkpoint::mapped_bytes).sum();
    let touched: u64 = checkpoints.iter().map(Checkpoint::touched_bytes).sum();
    eprintln!(
        "analysed {} checkpoint(s) × {} seed(s) in {:.2} s; read {} of {} checkpoint bytes ({:.2}%)",
        dirs.len(),
        seeds.len(),
        started.elapsed().as_secs_f64(),
        human_bytes(touched),
        human_bytes(mapped),
        100.0 * touched as f64 / mapped.max(1) as f64
    );

    let mut stdout = std::io::stdout().lock();
    if args.json {
        let report = JsonReport {
            params: &params,
            first_step,
            results: results.iter().collect(),
            aggregates: &aggregates,
        };
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write_tables(&mut stdout, &results, &aggregates, first_step)?;
    }
    if let Some(out) = &args.export_snin {
        eprintln!("networks written to {}", out.display());
    }
    Ok(())
}

impl AnalyzeArgs {
    /// `--seed`s when given, else the `--seeds` range.
    fn seed_list(&self) -> Result<Vec<u32>> {
        if self.seed.is_empty() {
            parse_seed_range(&self.seeds)
        } else {
            Ok(self.seed.clone())
        }
    }

    /// The checkpoint directories in step order; a step given twice is refused.
    fn step_dirs(&self) -> Result<Vec<StepDir>> {
        let mut dirs = self
            .dirs
            .iter()
            .map(|d| parse_step_dir(d))
            .collect::<Result<Vec<_>>>()?;
        dirs.sort_by_key(|d| d.step);
        if let Some(w) = dirs.windows(2).find(|w| w[0].step == w[1].step) {
            bail!(
                "step {} is given twice ({} and {})",
                w[0].step,
                w[0].path.display(),
                w[1].path.display()
            );
        }
        Ok(dirs)
    }

    /// The analysis settings, validated, and how shortest paths are computed.
    fn analysis(&self) -> Result<(AnalysisParams, PathEngine)> {
        let params = AnalysisParams {
            layer_sample: self.layer_sample,
            threshold: self.threshold,
            q: q_grid(self.q_min, self.q_max, self.q_step)?,
            alpha0_method: self.alpha0.into(),
            distance: match self.distance {
                DistanceChoice::OneHop => DistanceMode::OneHop,
                DistanceChoice::ShortestPath => DistanceMode::ShortestPath {
                    lambda: self.lambda,
                    gamma: self.gamma,
                },
            },
        };
        params.validate()?;
        if self.distance == DistanceChoice::OneHop
            && (self.lambda != DEFAULT_LAMBDA || self.gamma != DEFAULT_GAMMA || self.dijkstra)
        {
            bail!("--lambda, --gamma and --dijkstra apply to --distance shortest-path only");
        }
        let engine = if self.dijkstra {
            PathEngine::Dijkstra
        } else {
            PathEngine::MinPlus
        };
        Ok((params, engine))
    }
}

/// Every checkpoint, opened and checked against the settings before any is analysed.
fn open_checkpoints(dirs: &[StepDir], params: &AnalysisParams) -> Result<Vec<Checkpoint>> {
    let checkpoints = dirs
        .iter()
        .map(|d| {
            Checkpoint::open(&d.path)
                .with_context(|| format!("opening checkpoint {}", d.path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    for (dir, checkpoint) in dirs.iter().zip(&checkpoints) {
        check_layer_sample(checkpoint.shape(), params.layer_sample)
            .with_context(|| format!("checkpoint {}", dir.path.display()))?;
    }
    Ok(checkpoints)
}

/// Every seed of every checkpoint, in step then seed order, each network exported under
/// `snin_out` when given. Checkpoint by checkpoint, the seeds of each together: in
/// shortest-path mode they share every weight read.
fn analyze_checkpoints(
    dirs: &[StepDir],
    checkpoints: &[Checkpoint],
    params: &AnalysisParams,
    seeds: &[u32],
    engine: PathEngine,
    snin_out: Option<&Path>,
) -> Result<Vec<SeedResult>> {
    let progress = progress_bar((dirs.len() * seeds.len()) as u64);
    let mut results = Vec::with_capacity(dirs.len() * seeds.len());
    for (dir, checkpoint) in dirs.iter().zip(checkpoints) {
        let context = |seed: Option<u32>| match seed {
            Some(seed) => format!("{} (step {}), seed {seed}", dir.path.display(), dir.step),
            None => format!("{} (step {})", dir.path.display(), dir.step),
        };
        let analyses = analyze_seeds_with(checkpoint, params, dir.step, seeds, engine)
            .with_context(|| context(None))?;
        for (analysis, &seed) in analyses.into_iter().zip(seeds) {
            let analysis = analysis.with_context(|| context(Some(seed)))?;
            if let Some(out) = snin_out {
                export_snin(out, &analysis).with_context(|| {
                    format!("exporting the network of step {} seed {seed}", dir.step)
                })?;
            }
            progress.inc(1);
            results.push(analysis.result);
        }
    }
    progress.finish_and_clear();
    Ok(results)
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    // Hidden when stderr is not a terminal, so logs and pipes stay clean.
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} tasks, {elapsed} (eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn write_tables(
    out: &mut impl Write,
    results: &[SeedResult],
    aggregates: &[StepAggregate],
    first_step: u64,
) -> Result<()> {
    writeln!(out, "Per seed")?;
    writeln!(
        out,
        "{:>8} {:>6} {:>10} {:>10} {:>8} {:>7} {:>8}",
        "step", "seed", "alpha0", "width", "kept", "radii", "min R²"
    )?;
    for r in results {
        let min_r2 =
            r.r2.iter()
                .zip(&r.tau)
                .filter(|(_, tau)| **tau != 0.0)
                .map(|(r2, _)| *r2)
                .fold(f64::INFINITY, f64::min);
        writeln!(
            out,
            "{:>8} {:>6} {:>10.6} {:>10.6} {:>8} {:>7} {:>8.4}",
            r.step, r.seed, r.alpha0, r.width, r.kept_nodes, r.radii, min_r2
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Per step (variances: pop = ddof 0, smp = ddof 1; E relative to step {first_step})"
    )?;
    writeln!(
        out,
        "{:>8} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "step",
        "seeds",
        "alpha0",
        "pop var",
        "smp var",
        "width",
        "pop var",
        "smp var",
        "E(means)",
        "E(seeds)",
        "E sd"
    )?;
    let fmt = |v: Option<f64>, width: usize| match v {
        Some(v) => format!("{v:>width$.6}"),
        None => format!("{:>width$}", "-"),
    };
    for a in aggregates {
        writeln!(
            out,
            "{:>8} {:>5} {:>10.6} {:>10.3e} {:>10.3e} {:>10.6} {:>10.3e} {:>10.3e} {} {} {}",
            a.step,
            a.seeds,
            a.alpha0_mean,
            a.alpha0_var,
            a.alpha0_var_ddof1,
            a.width_mean,
            a.width_var,
            a.width_var_ddof1,
            fmt(a.e_from_means, 10),
            fmt(a.e_per_seed_mean, 10),
            fmt(a.e_per_seed_var.map(f64::sqrt), 10),
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct SninNodes<'a> {
    step: u64,
    seed: u32,
    layer_sample: usize,
    layers: &'a [neuromfa_common::network::Layer],
}

/// `OUT/step<N>/seed<k>.nodes.json` (drawn neurons per layer) and `.edges.csv`.
fn export_snin(out: &Path, analysis: &SeedAnalysis) -> Result<()> {
    let r = &analysis.result;
    let dir = out.join(format!("step{}", r.step));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let nodes_path = dir.join(format!("seed{}.nodes.json", r.seed));
    let nodes = SninNodes {
        step: r.step,
        seed: r.seed,
        layer_sample: analysis.draw.layer_sample,
        layers: &analysis.snin.layers,
    };
    let text = serde_json::to_string_pretty(&nodes)?;
    std::fs::write(&nodes_path, text)
        .with_context(|| format!("writing {}", nodes_path.display()))?;

    let edges_path = dir.join(format!("seed{}.edges.csv", r.seed));
    let file = std::fs::File::create(&edges_path)
        .with_context(|| format!("writing {}", edges_path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(
        w,
        "source_layer,source_neuron,target_layer,target_neuron,weight,distance"
    )?;
    let snin = &analysis.snin;
    for (source, target, weight) in snin.edges() {
        let (s, t) = (snin.node(source), snin.node(target));
        let (sl, tl) = (&snin.layers[s.layer], &snin.layers[t.layer]);
        writeln!(
            w,
            "{},{},{},{},{},{}",
            sl.name,
            sl.neurons[s.position],
            tl.name,
            tl.neurons[t.position],
            weight,
            1.0 / weight.abs()
        )?;
    }
    w.flush()
        .with_context(|| format!("writing {}", edges_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_are_half_open() {
        assert_eq!(parse_seed_range("0..3").unwrap(), vec![0, 1, 2]);
        assert!(parse_seed_range("3..3").is_err());
        assert!(parse_seed_range("x..3").is_err());
    }

    #[test]
    fn steps_come_from_names_or_suffixes() {
        assert_eq!(parse_step_dir("a/step1000").unwrap().step, 1000);
        let explicit = parse_step_dir("ckpt/final@143000").unwrap();
        assert_eq!(
            (explicit.path, explicit.step),
            (PathBuf::from("ckpt/final"), 143000)
        );
        assert!(parse_step_dir("ckpt/final").is_err());
    }
}
