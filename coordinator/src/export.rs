//! Exports of a sweep's state directory: per-task rows, per-step aggregates, per-`q`
//! spectra, as CSV and JSON, and a Markdown summary. Rows are ordered by model (spec
//! order), step and seed, and hold nothing that depends on timing, on which worker ran a
//! task or on how many leases it took, so an interrupted and resumed sweep exports the
//! same files as one that ran straight through — except `fetch.*` and `fetch_by_model.*`,
//! which record how each task went (attempts, bytes, requests, time), and that depends on
//! crashes, caches and timing.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use neuromfa_common::stats::StepAggregate;
use neuromfa_common::SeedResult;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::aggregate::Selection;
use crate::breaker::Breaker;
use crate::integrity::Ledger;
use crate::record::StoredTask;
use crate::spec::SweepSpec;
use crate::state::StateError;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("task {task}: stored result is unreadable: {message}")]
    BadResult { task: i64, message: String },
}

/// One row of `tasks.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub model: String,
    pub revision: String,
    pub step: u64,
    pub seed: u32,
    pub state: String,
    /// Leases the task took. Not written to `tasks.*` (a lost lease would change them);
    /// `fetch.*` has it for finished tasks, the summary for failed ones.
    #[serde(skip_serializing)]
    pub attempts: u32,
    pub last_error: String,
    pub alpha0: Option<f64>,
    pub width: Option<f64>,
    pub edges: Option<usize>,
    pub kept_nodes: Option<usize>,
    /// sha256 of the checkpoint's weights, as the Hub reports it.
    pub weights_sha256: String,
    /// `safetensors` or `pytorch-bin`: the files the weights were read from (empty while
    /// not resolved).
    pub weights_format: String,
    /// The later step of the same model that serves identical weights.
    pub duplicate_of: Option<u64>,
}

/// One row of `aggregates.csv`: a step's aggregate over seeds, with its model's size
/// and what the step's weights are. Its spectra go to `spectra.csv` instead.
#[derive(Debug, Clone)]
pub struct AggregateRow {
    pub model: String,
    /// Non-embedding weight-matrix parameters (0 when unknown).
    pub parameters: u64,
    pub aggregate: StepAggregate,
    pub weights_sha256: String,
    /// `safetensors` or `pytorch-bin` (empty while not resolved).
    pub weights_format: String,
    /// Set when this step serves the same weights as the later step named here.
    pub duplicate_of: Option<u64>,
}

/// The columns of `aggregates.csv` and `aggregates.json`: the aggregate's scalars between
/// the model's and the step's own columns (written by hand because CSV cannot flatten,
/// and the per-`q` moments are left out).
impl Serialize for AggregateRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let a = &self.aggregate;
        let mut row = serializer.serialize_struct("AggregateRow", 17)?;
        row.serialize_field("model", &self.model)?;
        row.serialize_field("parameters", &self.parameters)?;
        row.serialize_field("step", &a.step)?;
        row.serialize_field("seeds", &a.seeds)?;
        row.serialize_field("alpha0_mean", &a.alpha0_mean)?;
        row.serialize_field("alpha0_var", &a.alpha0_var)?;
        row.serialize_field("alpha0_var_ddof1", &a.alpha0_var_ddof1)?;
        row.serialize_field("width_mean", &a.width_mean)?;
        row.serialize_field("width_var", &a.width_var)?;
        row.serialize_field("width_var_ddof1", &a.width_var_ddof1)?;
        row.serialize_field("E_from_means", &a.e_from_means)?;
        row.serialize_field("E_per_seed_mean", &a.e_per_seed_mean)?;
        row.serialize_field("E_per_seed_var", &a.e_per_seed_var)?;
        row.serialize_field("E_per_seed_var_ddof1", &a.e_per_seed_var_ddof1)?;
        row.serialize_field("weights_sha256", &self.weights_sha256)?;
        row.serialize_field("weights_format", &self.weights_format)?;
        row.serialize_field("duplicate_of", &self.duplicate_of)?;
        row.end()
    }
}

/// One row of `spectra.csv`: moments over seeds of `α_k` and `f(α_k)` at `q_k`.
#[derive(Debug, Clone, Serialize)]
pub struct SpectrumRow {
    pub model: String,
    pub step: u64,
    pub q: f64,
    pub alpha_mean: f64,
    pub alpha_var: f64,
    pub alpha_var_ddof1: f64,
    pub f_alpha_mean: f64,
    pub f_alpha_var: f64,
    pub f_alpha_var_ddof1: f64,
}

/// One row of `fetch.csv`: what a finished task's weights cost. A fetch that served
/// several seeds is split evenly between them, so sums are what was really fetched.
#[derive(Debug, Clone, Serialize)]
pub struct FetchRow {
    pub model: String,
    pub step: u64,
    pub seed: u32,
    pub worker: String,
    /// Leases the task took: more than 1 when a worker holding it died or failed.
    pub attempts: u32,
    /// `full` or `ranges`.
    pub fetch_mode: String,
    pub bytes_fetched: u64,
    pub requests: u64,
    pub fetch_ms: u64,
    pub compute_ms: u64,
}

/// One row of `fetch_by_model.csv`: [`FetchRow`]s summed per model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchModelRow {
    pub model: String,
    pub tasks: usize,
    pub ranged_tasks: usize,
    pub full_tasks: usize,
    pub bytes_fetched: u64,
    pub requests: u64,
    pub fetch_ms: u64,
    pub compute_ms: u64,
}

/// Everything the exports hold, in memory.
#[derive(Debug, Clone)]
pub struct ExportData {
    pub spec: SweepSpec,
    pub tasks: Vec<TaskRow>,
    pub aggregates: Vec<AggregateRow>,
    pub spectra: Vec<SpectrumRow>,
    pub fetches: Vec<FetchRow>,
    pub fetch_by_model: Vec<FetchModelRow>,
    /// Why the breaker stopped leasing, while it has.
    pub stopped: Option<String>,
}

/// Reads a state directory into export rows (beside a running coordinator, too).
pub fn load(state_dir: &Path) -> Result<ExportData, ExportError> {
    let store = Store::open_read(state_dir)?;
    let spec = store.recorded_spec()?;
    let ledger = Ledger::new(spec.checkpoints(), store.revisions()?);
    let stopped = store.breaker()?.and_then(|stored| {
        let breaker = Breaker::restore(spec.probe_ms(), stored, |name| {
            ledger.slot(&name.model, name.step)
        });
        breaker.tripped().map(|t| t.reason(ledger.checkpoints()))
    });
    let seeds: HashSet<u32> = spec.seed_list().into_iter().collect();
    let mut tasks = Vec::new();
    let mut fetches = Vec::new();
    let mut results = Vec::new();
    let mut parameters: BTreeMap<String, u64> = BTreeMap::new();
    // Read one at a time: every stored result's JSON at once is about 2 KB a task, 200 MB
    // at 100,000 tasks, and the coordinator exports when it stops.
    store.read_tasks(true, |stored_tasks| -> Result<(), ExportError> {
        for stored in stored_tasks {
            let Some(slot) = ledger.slot(&stored.model, stored.step) else {
                continue; // outside the current grid
            };
            if !seeds.contains(&stored.seed) {
                continue;
            }
            let result = parse_result(&stored)?;
            if let Some(r) = &result {
                results.push((slot, r.point()));
                parameters.insert(stored.model.clone(), r.parameters);
            }
            fetches.extend(fetch_row(&stored));
            tasks.push(TaskRow {
                alpha0: result.as_ref().map(|r| r.alpha0),
                width: result.as_ref().map(|r| r.width),
                edges: result.as_ref().map(|r| r.edges),
                kept_nodes: result.as_ref().map(|r| r.kept_nodes),
                weights_sha256: ledger.weights_of(slot).unwrap_or_default().to_string(),
                weights_format: ledger.format_name(slot).to_string(),
                duplicate_of: ledger
                    .original_of(slot)
                    .map(|o| ledger.checkpoints()[o].step),
                state: stored.progress.state.as_str().to_string(),
                last_error: stored.progress.last_error.unwrap_or_default(),
                model: stored.model,
                revision: stored.revision,
                step: stored.step,
                seed: stored.seed,
                attempts: stored.progress.attempts,
            });
        }
        Ok(())
    })??;
    let model_order: BTreeMap<&str, usize> = spec
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.repo.as_str(), i))
        .collect();
    let order = |model: &str| model_order.get(model).copied().unwrap_or(usize::MAX);
    tasks.sort_by_key(|t| (order(&t.model), t.step, t.seed));
    fetches.sort_by_key(|f| (order(&f.model), f.step, f.seed));
    let fetch_by_model = fetch_sums(&spec, &fetches);

    let q = spec.analysis_params().q;
    let mut by_model = Selection::new(&ledger, spec.duplicates).aggregates(results);
    let mut aggregates = Vec::new();
    let mut spectra = Vec::new();
    for model in &spec.models {
        for a in by_model.remove(model.repo.as_str()).unwrap_or_default() {
            spectra.extend(spectrum_rows(&model.repo, &a, &q));
            let slot = ledger.slot(&model.repo, a.step);
            aggregates.push(AggregateRow {
                model: model.repo.clone(),
                parameters: parameters.get(&model.repo).copied().unwrap_or(0),
                weights_sha256: slot
                    .and_then(|s| ledger.weights_of(s))
                    .unwrap_or_default()
                    .to_string(),
                weights_format: slot.map_or("", |s| ledger.format_name(s)).to_string(),
                duplicate_of: slot
                    .and_then(|s| ledger.original_of(s))
                    .map(|o| ledger.checkpoints()[o].step),
                aggregate: a,
            });
        }
    }
    Ok(ExportData {
        spec,
        tasks,
        aggregates,
        spectra,
        fetches,
        fetch_by_model,
        stopped,
    })
}

/// The stored result of a task, decoded.
fn parse_result(task: &StoredTask) -> Result<Option<SeedResult>, ExportError> {
    let Some(json) = task.result.as_ref().and_then(|r| r.json.as_deref()) else {
        return Ok(None);
    };
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| ExportError::BadResult {
            task: task.id,
            message: e.to_string(),
        })
}

/// What a finished task's weights cost, when it has a result.
fn fetch_row(task: &StoredTask) -> Option<FetchRow> {
    let r = task.result.as_ref()?;
    Some(FetchRow {
        model: task.model.clone(),
        step: task.step,
        seed: task.seed,
        worker: r.worker.clone(),
        attempts: task.progress.attempts,
        fetch_mode: r.metrics.fetch_mode.clone(),
        bytes_fetched: r.metrics.bytes_fetched,
        requests: u64::from(r.metrics.requests),
        fetch_ms: r.metrics.fetch_ms,
        compute_ms: r.metrics.compute_ms,
    })
}

/// Per model (in spec order), the sums of its tasks' fetch costs.
fn fetch_sums(spec: &SweepSpec, fetches: &[FetchRow]) -> Vec<FetchModelRow> {
    spec.models
        .iter()
        .map(|m| {
            let mut sum = FetchModelRow {
                model: m.repo.clone(),
                ..FetchModelRow::default()
            };
            for f in fetches.iter().filter(|f| f.model == m.repo) {
                sum.tasks += 1;
                sum.ranged_tasks += usize::from(f.fetch_mode == "ranges");
                sum.full_tasks += usize::from(f.fetch_mode == "full");
                sum.bytes_fetched += f.bytes_fetched;
                sum.requests += f.requests;
                sum.fetch_ms += f.fetch_ms;
                sum.compute_ms += f.compute_ms;
            }
            sum
        })
        .collect()
}

/// A step's spectrum as rows, one per `q`.
pub fn spectrum_rows(model: &str, a: &StepAggregate, q: &[f64]) -> Vec<SpectrumRow> {
    a.alpha
        .iter()
        .zip(&a.f_alpha)
        .zip(q)
        .map(|((alpha, f), &q)| SpectrumRow {
            model: model.to_string(),
            step: a.step,
            q,
            alpha_mean: alpha.mean,
            alpha_var: alpha.var,
            alpha_var_ddof1: alpha.var_ddof1,
            f_alpha_mean: f.mean,
            f_alpha_var: f.var,
            f_alpha_var_ddof1: f.var_ddof1,
        })
        .collect()
}

/// The files `write` produces, in order.
pub const EXPORT_FILES: &[&str] = &[
    "tasks.csv",
    "tasks.json",
    "aggregates.csv",
    "aggregates.json",
    "spectra.csv",
    "spectra.json",
    "fetch.csv",
    "fetch.json",
    "fetch_by_model.csv",
    "fetch_by_model.json",
    "summary.md",
];

/// Writes every export of `data` into `out`.
pub fn write(data: &ExportData, out: &Path) -> Result<Vec<PathBuf>, ExportError> {
    std::fs::create_dir_all(out).map_err(|e| ExportError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: Vec<u8>| -> Result<(), ExportError> {
        let path = out.join(name);
        write_atomically(&path, &bytes)?;
        written.push(path);
        Ok(())
    };
    put("tasks.csv", to_csv(&data.tasks, out)?)?;
    put("tasks.json", to_json(&data.tasks))?;
    put("aggregates.csv", to_csv(&data.aggregates, out)?)?;
    put("aggregates.json", to_json(&data.aggregates))?;
    put("spectra.csv", to_csv(&data.spectra, out)?)?;
    put("spectra.json", to_json(&data.spectra))?;
    put("fetch.csv", to_csv(&data.fetches, out)?)?;
    put("fetch.json", to_json(&data.fetches))?;
    put("fetch_by_model.csv", to_csv(&data.fetch_by_model, out)?)?;
    put("fetch_by_model.json", to_json(&data.fetch_by_model))?;
    put("summary.md", summary_markdown(data).into_bytes())?;
    Ok(written)
}

/// Loads a state directory and writes its exports into `out` (default: `STATE/exports`).
pub fn export(state_dir: &Path, out: Option<&Path>) -> Result<Vec<PathBuf>, ExportError> {
    let data = load(state_dir)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join("exports"));
    write(&data, &out)
}

fn to_csv<T: Serialize>(rows: &[T], out: &Path) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(|e| ExportError::Write {
            path: out.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    writer.into_inner().map_err(|e| ExportError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    })
}

fn to_json<T: Serialize>(rows: &[T]) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(rows).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Write to a sibling and rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ExportError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn summary_markdown(data: &ExportData) -> String {
    let mut md = String::new();
    let done = data.tasks.iter().filter(|t| t.state == "done").count();
    let failed: Vec<&TaskRow> = data.tasks.iter().filter(|t| t.state == "failed").collect();
    let _ = writeln!(md, "# Sweep `{}`\n", data.spec.name);
    let _ = writeln!(
        md,
        "{done} of {} tasks done, {} failed. Variances: `var` is the population variance (ddof 0), sd from it.\n",
        data.tasks.len(),
        failed.len()
    );
    if let Some(reason) = &data.stopped {
        let pending = data.tasks.iter().filter(|t| t.state == "pending").count();
        let _ = writeln!(
            md,
            "**Stopped by a systemic failure:** {reason}. {pending} task(s) are pending with their \
             attempts unspent; once the cause is fixed, `neuromfa sweep resume` (or a probe that \
             succeeds) resumes the sweep.\n"
        );
    }
    model_tables(&mut md, data);
    duplicates_section(&mut md, data);
    fetch_section(&mut md, data);
    failures_section(&mut md, &failed);
    md
}

/// Per model, its aggregates by step.
fn model_tables(md: &mut String, data: &ExportData) {
    for model in &data.spec.models {
        let rows: Vec<&AggregateRow> = data
            .aggregates
            .iter()
            .filter(|a| a.model == model.repo)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {}\n", model.repo);
        let _ = writeln!(
            md,
            "| step | seeds | α0 mean | α0 sd | w mean | w sd | E (means) | E (per seed) | weights |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
        for row in rows {
            let a = &row.aggregate;
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {} |",
                a.step,
                a.seeds,
                a.alpha0_mean,
                a.alpha0_var.sqrt(),
                a.width_mean,
                a.width_var.sqrt(),
                fmt(a.e_from_means),
                fmt(a.e_per_seed_mean),
                row.weights_format
            );
        }
        let _ = writeln!(md);
    }
}

/// Steps serving a later step's weights, when there are any.
fn duplicates_section(md: &mut String, data: &ExportData) {
    let duplicated = data
        .aggregates
        .iter()
        .filter(|a| a.duplicate_of.is_some())
        .count();
    let flagged: std::collections::BTreeSet<(String, u64, u64)> = data
        .tasks
        .iter()
        .filter_map(|t| t.duplicate_of.map(|d| (t.model.clone(), t.step, d)))
        .collect();
    if flagged.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Duplicated checkpoints\n\nThese steps serve the same weights as a later step (policy `{}`); {} aggregate rows are affected.\n",
        serde_json::to_value(data.spec.duplicates)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        duplicated
    );
    let _ = writeln!(md, "| model | step | same weights as step |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (model, step, original) in &flagged {
        let _ = writeln!(md, "| {model} | {step} | {original} |");
    }
    let _ = writeln!(md);
}

/// What fetching cost per model, when anything was fetched.
fn fetch_section(md: &mut String, data: &ExportData) {
    if !data.fetch_by_model.iter().any(|f| f.tasks > 0) {
        return;
    }
    let _ = writeln!(
        md,
        "## Fetching\n\nWhat getting the weights of the finished tasks cost (`fetch_by_model.csv`; per task in `fetch.csv`).\n"
    );
    let _ = writeln!(
        md,
        "| model | tasks | by ranges | whole files | downloaded | requests | fetch time |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for f in data.fetch_by_model.iter().filter(|f| f.tasks > 0) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} MB | {} | {:.1} s |",
            f.model,
            f.tasks,
            f.ranged_tasks,
            f.full_tasks,
            f.bytes_fetched as f64 / 1e6,
            f.requests,
            f.fetch_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(md);
}

fn failures_section(md: &mut String, failed: &[&TaskRow]) {
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Failed tasks\n");
    let _ = writeln!(md, "| model | step | seed | attempts | error |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for t in failed {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            t.model,
            t.step,
            t.seed,
            t.attempts,
            t.last_error.replace('|', "\\|").replace('\n', " ")
        );
    }
}
