//! Benchmark accuracies to set beside `E`: a CSV `model,step,benchmark,accuracy`, an
//! lm-evaluation-harness results JSON file, or a directory of such files (subdirectories
//! included).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// Accuracies per sweep model (repo, as in the spec), benchmark and step.
#[derive(Debug, Default)]
pub struct Evals {
    /// model → benchmark → step → accuracy.
    pub accuracy: BTreeMap<String, BTreeMap<String, BTreeMap<u64, f64>>>,
    /// Files or rows that were read but could not be used (no matching model, no `acc`).
    pub warnings: Vec<String>,
}

impl Evals {
    /// Every benchmark any model has, sorted.
    pub fn benchmarks(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .accuracy
            .values()
            .flat_map(|b| b.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Where each accuracy came from, to name both files when two disagree.
type Sources = BTreeMap<(String, String, u64), (f64, PathBuf)>;

/// Reads every path; `models` are the sweep's repos in spec order.
pub fn load(paths: &[PathBuf], models: &[String]) -> anyhow::Result<Evals> {
    let mut evals = Evals::default();
    let mut sources = Sources::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let files = eval_files_in(path)?;
            if files.is_empty() {
                bail!(
                    "{}: the directory and its subdirectories hold no .json or .csv evaluation files",
                    path.display()
                );
            }
            for file in files {
                load_file(&file, models, &mut evals, &mut sources)?;
            }
        } else {
            load_file(path, models, &mut evals, &mut sources)?;
        }
    }
    Ok(evals)
}

/// The `.json` and `.csv` files in `dir` and its subdirectories (one folder per model, as
/// lm-evaluation-harness output is often kept).
fn eval_files_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot list {}", folder.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", folder.display()))?
                .path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if path.is_dir() {
                folders.push(path);
            } else if path.is_file() && matches!(ext.as_deref(), Some("json" | "csv")) {
                files.push(path);
            }
        }
    }
    // Sorted so that warnings and conflicts come out in the same order on every machine.
    files.sort();
    Ok(files)
}

fn load_file(
    path: &Path,
    models: &[String],
    evals: &mut Evals,
    sources: &mut Sources,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_json = match ext.as_deref() {
        Some("json") => true,
        Some("csv") => false,
        // Anything else: JSON documents start with `{`, the CSV with its header.
        _ => text.trim_start().starts_with('{'),
    };
    let rows = if is_json {
        lm_eval_rows(&text, path, models, &mut evals.warnings)?
    } else {
        csv_rows(&text, path, models, &mut evals.warnings)?
    };
    for (model, benchmark, step, accuracy) in rows {
        let key = (model.clone(), benchmark.clone(), step);
        if let Some((previous, from)) = sources.get(&key) {
            // Identical repeats (the same file given twice) are harmless; different values
            // would make the report depend on argument order.
            if previous.to_bits() != accuracy.to_bits() {
                bail!(
                    "{}: {model} {benchmark} at step {step} is {accuracy}, but {} says {previous}",
                    path.display(),
                    from.display()
                );
            }
            continue;
        }
        sources.insert(key, (accuracy, path.to_path_buf()));
        evals
            .accuracy
            .entry(model)
            .or_default()
            .entry(benchmark)
            .or_default()
            .insert(step, accuracy);
    }
    Ok(())
}

/// (model, benchmark, step, accuracy).
pub type Row = (String, String, u64, f64);

/// `model,step,benchmark,accuracy` with a header; extra columns are ignored. `path` names
/// the file in messages.
pub fn csv_rows(
    text: &str,
    path: &Path,
    models: &[String],
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the CSV header", path.display()))?
        .clone();
    let column = |name: &str| -> anyhow::Result<usize> {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                anyhow!(
                    "{}: the CSV header has no `{name}` column (expected model,step,benchmark,accuracy; found {})",
                    path.display(),
                    headers.iter().collect::<Vec<_>>().join(",")
                )
            })
    };
    let (c_model, c_step, c_bench, c_acc) = (
        column("model")?,
        column("step")?,
        column("benchmark")?,
        column("accuracy")?,
    );
    let mut rows = Vec::new();
    let mut unmatched: BTreeMap<String, usize> = BTreeMap::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let step = parse_step(field(c_step)).ok_or_else(|| {
            anyhow!(
                "{}: line {line}: step `{}` is not a whole number",
                path.display(),
                field(c_step)
            )
        })?;
        let accuracy: f64 = field(c_acc)
            .parse()
            .ok()
            .filter(|a: &f64| a.is_finite())
            .ok_or_else(|| {
                anyhow!(
                    "{}: line {line}: accuracy `{}` is not a finite number",
                    path.display(),
                    field(c_acc)
                )
            })?;
        let benchmark = field(c_bench);
        if benchmark.is_empty() {
            bail!("{}: line {line}: empty benchmark name", path.display());
        }
        match match_model(field(c_model), models) {
            Ok(model) => rows.push((model.to_string(), benchmark.to_string(), step, accuracy)),
            Err(_) => *unmatched.entry(field(c_model).to_string()).or_default() += 1,
        }
    }
    for (name, count) in unmatched {
        warnings.push(format!(
            "{}: model `{name}` ({count} rows) matches no model of the sweep; its rows are left out",
            path.display()
        ));
    }
    Ok(rows)
}

/// One lm-evaluation-harness results file: `results.<task>.acc`, model and step from
/// `config.model_args` (step also from a `_step<N>` file name).
pub fn lm_eval_rows(
    text: &str,
    path: &Path,
    models: &[String],
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let doc: Value = serde_json::from_str(text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let results = doc
        .get("results")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            anyhow!(
                "{}: not an lm-evaluation-harness results file (no `results` object)",
                path.display()
            )
        })?;
    let args = model_args(doc.get("config").and_then(|c| c.get("model_args")));
    let Some(pretrained) = args.get("pretrained") else {
        warnings.push(format!(
            "{}: config.model_args names no model (`pretrained=`); file left out",
            path.display()
        ));
        return Ok(Vec::new());
    };
    let model = match match_model(pretrained, models) {
        Ok(model) => model,
        Err(why) => {
            warnings.push(format!("{}: {why}; file left out", path.display()));
            return Ok(Vec::new());
        }
    };
    let step = args
        .get("revision")
        .and_then(|r| parse_step(r))
        .or_else(|| step_from_file_name(path))
        .ok_or_else(|| {
            anyhow!(
                "{}: cannot tell the training step: no `revision=step<N>` in config.model_args and no `_step<N>` in the file name",
                path.display()
            )
        })?;
    let mut rows = Vec::new();
    for (task, metrics) in results {
        // Harness 0.3 writes `acc`; 0.4 writes `acc,none` for the same number.
        let acc = metrics
            .get("acc")
            .or_else(|| metrics.get("acc,none"))
            .and_then(Value::as_f64);
        if let Some(acc) = acc.filter(|a| a.is_finite()) {
            rows.push((model.to_string(), task.clone(), step, acc));
        }
    }
    if rows.is_empty() {
        warnings.push(format!(
            "{}: no task reports `acc`; file left out",
            path.display()
        ));
    }
    Ok(rows)
}

/// `model_args` is a `k=v,k=v` string in harness 0.3 and may be an object in 0.4.
fn model_args(value: Option<&Value>) -> BTreeMap<String, String> {
    match value {
        Some(Value::String(s)) => s
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `1000` or `step1000`.
fn parse_step(text: &str) -> Option<u64> {
    let text = text.trim();
    text.strip_prefix("step").unwrap_or(text).parse().ok()
}

/// `..._step<N>.json` (the last `step` followed only by digits up to the extension).
fn step_from_file_name(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    let at = stem.rfind("step")?;
    let digits = &stem[at + 4..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A model's comparable name: no org, lower case, and Pythia's `v1.1-`/`v0-` infix
/// dropped (`EleutherAI/pythia-v1.1-160m-deduped` → `pythia-160m-deduped`).
pub fn normalise_model(name: &str) -> String {
    let name = name.trim();
    let name = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    for infix in ["v1.1-", "v0-"] {
        if let Some(rest) = name
            .strip_prefix("pythia-")
            .and_then(|r| r.strip_prefix(infix))
        {
            return format!("pythia-{rest}");
        }
    }
    name
}

/// The sweep model a benchmark file's model name means: the same repo, or else the one
/// model whose normalised name is the same.
pub fn match_model<'a>(name: &str, models: &'a [String]) -> Result<&'a str, String> {
    if let Some(exact) = models.iter().find(|m| m.eq_ignore_ascii_case(name.trim())) {
        return Ok(exact);
    }
    let wanted = normalise_model(name);
    let hits: Vec<&String> = models
        .iter()
        .filter(|m| normalise_model(m) == wanted)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.as_str()),
        [] => Err(format!(
            "model `{name}` matches no model of the sweep ({})",
            models.join(", ")
        )),
        many => Err(format!(
            "model `{name}` matches several models of the sweep ({})",
            many.iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pythia_names_normalise() {
        assert_eq!(
            normalise_model("EleutherAI/pythia-v1.1-160m-deduped"),
            "pythia-160m-deduped"
        );
        assert_eq!(normalise_model("pythia-v0-1.4b"), "pythia-1.4b");
        let models = vec![
            "EleutherAI/pythia-160m-deduped".to_string(),
            "EleutherAI/pythia-1.4b-deduped".to_string(),
        ];
        assert_eq!(
            match_model("EleutherAI/pythia-v1.1-1.4b-deduped", &models),
            Ok("EleutherAI/pythia-1.4b-deduped")
        );
        assert!(match_model("EleutherAI/pythia-410m", &models).is_err());
    }

    #[test]
    fn steps_come_from_revision_or_file_name() {
        assert_eq!(parse_step("step1000"), Some(1000));
        assert_eq!(parse_step("main"), None);
        assert_eq!(
            step_from_file_name(Path::new("dir/160m-deduped_step13000.json")),
            Some(13000)
        );
        assert_eq!(step_from_file_name(Path::new("dir/results.json")), None);
        let args = model_args(Some(&Value::String(
            "use_accelerate=True,pretrained=EleutherAI/pythia-v1.1-160m-deduped,revision=step0"
                .into(),
        )));
        assert_eq!(args["revision"], "step0");
    }

    #[test]
    fn a_directory_of_per_model_folders_is_read_whole() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/evals");
        let models = vec![
            "EleutherAI/pythia-160m-deduped".to_string(),
            "EleutherAI/pythia-1.4b-deduped".to_string(),
        ];
        let evals = load(&[dir], &models).unwrap();
        for model in &models {
            let steps = evals.accuracy.get(model).and_then(|b| b.get("sciq"));
            assert!(
                steps.is_some_and(|s| s.contains_key(&1000)),
                "{model}: {evals:?}"
            );
        }
        assert!(evals.warnings.is_empty(), "{:?}", evals.warnings);
    }
}
