//! Exports of a sweep's state directory: per-task rows, per-step aggregates, per-`q`
//! spectra, as CSV and JSON, and a Markdown summary. Rows are ordered by model (spec
//! order), step and seed, and hold nothing that depends on timing, on which worker ran a
//! task or on how many leases it took, so an interrupted and resumed sweep exports the
//! same files as one that ran straight through — except `fetch.*` and `fetch_by_model.*`,
//! which record how each task went (attempts, bytes, requests, time), and that depends on
//! crashes, caches and timing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use neuromfa_common::stats::{aggregate, SeedPoint, StepAggregate};
use neuromfa_common::SeedResult;
use rusqlite::Connection;
use serde::Serialize;

use crate::integrity::{duplicate_of, DuplicatePolicy};
use crate::spec::SweepSpec;
use crate::state::{read_revisions, recorded_spec, StateError, DB_FILE};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("reading {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
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
    /// The later step of the same model that serves identical weights.
    pub duplicate_of: Option<u64>,
}

/// One row of `aggregates.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateRow {
    pub model: String,
    /// Non-embedding weight-matrix parameters (0 when unknown).
    pub parameters: u64,
    pub step: u64,
    pub seeds: usize,
    pub alpha0_mean: f64,
    pub alpha0_var: f64,
    pub alpha0_var_ddof1: f64,
    pub width_mean: f64,
    pub width_var: f64,
    pub width_var_ddof1: f64,
    #[serde(rename = "E_from_means")]
    pub e_from_means: Option<f64>,
    #[serde(rename = "E_per_seed_mean")]
    pub e_per_seed_mean: Option<f64>,
    #[serde(rename = "E_per_seed_var")]
    pub e_per_seed_var: Option<f64>,
    #[serde(rename = "E_per_seed_var_ddof1")]
    pub e_per_seed_var_ddof1: Option<f64>,
    pub weights_sha256: String,
    /// Set when this step serves the same weights as the later step named here.
    pub duplicate_of: Option<u64>,
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
}

/// Reads a state directory into export rows.
pub fn load(state_dir: &Path) -> Result<ExportData, ExportError> {
    let spec = recorded_spec(state_dir)?;
    let params = spec.analysis_params();
    let path = state_dir.join(DB_FILE);
    let db = |source| ExportError::Db {
        path: path.clone(),
        source,
    };
    let conn = Connection::open(&path).map_err(db)?;
    let model_order: BTreeMap<&str, usize> = spec
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.repo.as_str(), i))
        .collect();
    let seeds: std::collections::HashSet<u32> = spec.seed_list().into_iter().collect();
    let grid: std::collections::HashSet<(String, u64)> = spec
        .checkpoints()
        .into_iter()
        .map(|c| (c.model, c.step))
        .collect();

    let hashes: BTreeMap<(String, u64), String> = read_revisions(&conn)
        .map_err(db)?
        .into_iter()
        .filter(|(model, step, _)| grid.contains(&(model.clone(), *step)))
        .map(|(model, step, hash)| ((model, step), hash))
        .collect();
    let duplicates = duplicate_of(
        hashes
            .iter()
            .map(|((m, s), h)| (m.as_str(), *s, h.as_str())),
    );

    let mut stmt = conn
        .prepare(
            "SELECT t.id, c.model, c.revision, c.step, t.seed, t.state, t.attempts, t.last_error,
                    r.result_json, r.bytes_fetched, r.requests, r.fetch_ms, r.compute_ms,
                    r.fetch_mode, r.worker
             FROM tasks t JOIN checkpoints c ON c.id = t.checkpoint_id
             LEFT JOIN results r ON r.task_id = t.id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
                [9, 10, 11, 12].map(|i| r.get::<_, Option<i64>>(i)),
                r.get::<_, Option<String>>(13)?,
                r.get::<_, Option<String>>(14)?,
            ))
        })
        .map_err(db)?;
    let mut tasks = Vec::new();
    let mut points: BTreeMap<String, Vec<SeedPoint>> = BTreeMap::new();
    let mut results: std::collections::HashMap<(String, u64, u32), SeedPoint> =
        std::collections::HashMap::new();
    let mut parameters: BTreeMap<String, u64> = BTreeMap::new();
    let mut fetches = Vec::new();
    for row in rows {
        let (id, model, revision, step, seed, state, attempts, error, json, costs, mode, worker) =
            row.map_err(db)?;
        let step = step.max(0) as u64;
        if !grid.contains(&(model.clone(), step)) || !seeds.contains(&seed) {
            continue;
        }
        let result: Option<SeedResult> = json
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| ExportError::BadResult {
                task: id,
                message: e.to_string(),
            })?;
        if let Some(r) = &result {
            results.insert((model.clone(), step, seed), r.point());
            parameters.insert(model.clone(), r.parameters);
            let [bytes, requests, fetch_ms, compute_ms] =
                costs.map(|c| c.map(|v| v.unwrap_or(0).max(0) as u64));
            fetches.push(FetchRow {
                model: model.clone(),
                step,
                seed,
                worker: worker.unwrap_or_default(),
                attempts,
                fetch_mode: mode.unwrap_or_default(),
                bytes_fetched: bytes.map_err(db)?,
                requests: requests.map_err(db)?,
                fetch_ms: fetch_ms.map_err(db)?,
                compute_ms: compute_ms.map_err(db)?,
            });
        }
        let key = (model.clone(), step);
        tasks.push(TaskRow {
            model,
            revision,
            step,
            seed,
            state,
            attempts,
            last_error: error.unwrap_or_default(),
            alpha0: result.as_ref().map(|r| r.alpha0),
            width: result.as_ref().map(|r| r.width),
            edges: result.as_ref().map(|r| r.edges),
            kept_nodes: result.as_ref().map(|r| r.kept_nodes),
            weights_sha256: hashes.get(&key).cloned().unwrap_or_default(),
            duplicate_of: duplicates.get(&key).copied(),
        });
    }
    // Under `skip` duplicates are left out; under `reuse` they take their original's
    // results; under `warn` they count as computed.
    let policy = spec.duplicates;
    for t in &tasks {
        let source = match (t.duplicate_of, policy) {
            (Some(_), DuplicatePolicy::Skip) => continue,
            (Some(original), DuplicatePolicy::Reuse) => original,
            _ => t.step,
        };
        if let Some(point) = results.get(&(t.model.clone(), source, t.seed)) {
            points.entry(t.model.clone()).or_default().push(SeedPoint {
                step: t.step,
                ..point.clone()
            });
        }
    }
    let order = |model: &str| model_order.get(model).copied().unwrap_or(usize::MAX);
    tasks.sort_by_key(|t| (order(&t.model), t.step, t.seed));
    fetches.sort_by_key(|f| (order(&f.model), f.step, f.seed));
    let fetch_by_model = fetch_sums(&spec, &fetches);

    let mut aggregates = Vec::new();
    let mut spectra = Vec::new();
    for model in &spec.models {
        let Some(points) = points.get(&model.repo) else {
            continue;
        };
        // E is relative to the model's first step; under `skip`, its first step kept.
        let first = spec
            .steps_of(model)
            .unwrap_or_default()
            .into_iter()
            .find(|&s| {
                policy != DuplicatePolicy::Skip
                    || !duplicates.contains_key(&(model.repo.clone(), s))
            })
            .unwrap_or(0);
        for a in aggregate(points, first) {
            spectra.extend(spectrum_rows(&model.repo, &a, &params.q));
            let size = parameters.get(&model.repo).copied().unwrap_or(0);
            let key = (model.repo.clone(), a.step);
            let mut row = aggregate_row(&model.repo, size, &a);
            row.weights_sha256 = hashes.get(&key).cloned().unwrap_or_default();
            row.duplicate_of = duplicates.get(&key).copied();
            aggregates.push(row);
        }
    }
    Ok(ExportData {
        spec,
        tasks,
        aggregates,
        spectra,
        fetches,
        fetch_by_model,
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

fn aggregate_row(model: &str, parameters: u64, a: &StepAggregate) -> AggregateRow {
    AggregateRow {
        model: model.to_string(),
        parameters,
        step: a.step,
        seeds: a.seeds,
        alpha0_mean: a.alpha0_mean,
        alpha0_var: a.alpha0_var,
        alpha0_var_ddof1: a.alpha0_var_ddof1,
        width_mean: a.width_mean,
        width_var: a.width_var,
        width_var_ddof1: a.width_var_ddof1,
        e_from_means: a.e_from_means,
        e_per_seed_mean: a.e_per_seed_mean,
        e_per_seed_var: a.e_per_seed_var,
        e_per_seed_var_ddof1: a.e_per_seed_var_ddof1,
        weights_sha256: String::new(),
        duplicate_of: None,
    }
}

fn spectrum_rows(model: &str, a: &StepAggregate, q: &[f64]) -> Vec<SpectrumRow> {
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
            "| step | seeds | α0 mean | α0 sd | w mean | w sd | E (means) | E (per seed) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
        for a in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} |",
                a.step,
                a.seeds,
                a.alpha0_mean,
                a.alpha0_var.sqrt(),
                a.width_mean,
                a.width_var.sqrt(),
                fmt(a.e_from_means),
                fmt(a.e_per_seed_mean)
            );
        }
        let _ = writeln!(md);
    }
    let duplicated: Vec<&AggregateRow> = data
        .aggregates
        .iter()
        .filter(|a| a.duplicate_of.is_some())
        .collect();
    let flagged: std::collections::BTreeSet<(String, u64, u64)> = data
        .tasks
        .iter()
        .filter_map(|t| t.duplicate_of.map(|d| (t.model.clone(), t.step, d)))
        .collect();
    if !flagged.is_empty() {
        let _ = writeln!(
            md,
            "## Duplicated checkpoints\n\nThese steps serve the same weights as a later step (policy `{}`); {} aggregate rows are affected.\n",
            serde_json::to_value(data.spec.duplicates)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            duplicated.len()
        );
        let _ = writeln!(md, "| model | step | same weights as step |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (model, step, original) in &flagged {
            let _ = writeln!(md, "| {model} | {step} | {original} |");
        }
        let _ = writeln!(md);
    }
    if data.fetch_by_model.iter().any(|f| f.tasks > 0) {
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
    if !failed.is_empty() {
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
    md
}
