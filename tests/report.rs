//! `neuromfa report` end to end: a state directory built without a network (results from
//! the real analysis of the golden tiny GPT-NeoX checkpoints, completed through
//! `SweepState`), then the binary: every file written, SVGs that parse, real PNGs, a
//! self-contained HTML page, plotted values equal to the exported ones, correlations
//! with real lm-evaluation-harness results recomputed here, and clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use neuromfa_common::{analyze_seed, Checkpoint, SeedResult};
use neuromfa_coordinator::export::{self, ExportData};
use neuromfa_coordinator::{
    Completion, Failure, FailureClass, OpenMode, SweepSpec, SweepState, TaskMetrics,
};
use serde_json::Value;

const MODEL_A: &str = "EleutherAI/pythia-160m-deduped";
const MODEL_B: &str = "org/tiny-b";
const STEPS_A: [u64; 5] = [0, 1000, 3000, 13000, 23000];
const STEPS_B: [u64; 3] = [0, 1000, 3000];
const SWEEP: &str = "report-test-sweep";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec(dir: &Path) -> SweepSpec {
    let text = format!(
        r#"
name = "{SWEEP}"
state_dir = "{}"
seeds = 3
steps = {STEPS_A:?}
[[models]]
repo = "{MODEL_A}"
[[models]]
repo = "{MODEL_B}"
steps = {STEPS_B:?}
[coordinator]
max_attempts = 1
"#,
        dir.display()
    );
    SweepSpec::from_toml(&text, Path::new("report-test.toml")).unwrap()
}

/// Moves a result along "training": lower α (more regular), slightly wider spectrum.
fn evolve(base: &SeedResult, step: u64, shift: f64, widen: f64) -> SeedResult {
    let mut r = base.clone();
    r.step = step;
    r.alpha0 -= shift;
    r.alpha0_peak -= shift;
    r.alpha.iter_mut().for_each(|a| *a -= shift);
    r.width *= widen;
    r
}

/// Per (model, step, seed): real analyses of tiny-neox step0/1000/2000 for the first three
/// steps; later steps of A continue the trend of the last one. B is the same network at
/// another "size", shifted a little so the two models differ.
fn results(
    real: bool,
    params: &neuromfa_common::AnalysisParams,
) -> BTreeMap<(String, u64, u32), SeedResult> {
    let golden = repo().join("tests/data/golden/tiny-neox");
    let mut base: BTreeMap<(u64, u32), SeedResult> = BTreeMap::new();
    for (i, dir) in ["step0", "step1000", "step2000"].iter().enumerate() {
        for seed in 0..3u32 {
            let r = if real {
                let ckpt = Checkpoint::open(&golden.join(dir)).unwrap();
                analyze_seed(&ckpt, params, STEPS_A[i], seed)
                    .unwrap()
                    .result
            } else {
                synthetic(STEPS_A[i], seed, params.q.len())
            };
            base.insert((STEPS_A[i], seed), r);
        }
    }
    let mut out = BTreeMap::new();
    for seed in 0..3u32 {
        for &step in &STEPS_A[..3] {
            let r = base[&(step, seed)].clone();
            out.insert((MODEL_A.to_string(), step, seed), r);
        }
        let last = &base[&(3000, seed)];
        out.insert(
            (MODEL_A.to_string(), 13000, seed),
            evolve(last, 13000, 0.02, 1.01),
        );
        out.insert(
            (MODEL_A.to_string(), 23000, seed),
            evolve(last, 23000, 0.035, 1.02),
        );
        for &step in &STEPS_B {
            let mut r = evolve(
                &base[&(step, seed)],
                step,
                0.004 * (step as f64 / 1000.0),
                1.0,
            );
            r.parameters = base[&(step, seed)].parameters * 8 + 1;
            out.insert((MODEL_B.to_string(), step, seed), r);
        }
    }
    out
}

fn synthetic(step: u64, seed: u32, q: usize) -> SeedResult {
    let alpha0 = 2.0 - step as f64 / 4000.0 + f64::from(seed) / 200.0;
    let alpha: Vec<f64> = (0..q - 1)
        .map(|k| alpha0 + 0.5 - k as f64 / (q as f64))
        .collect();
    let f_alpha: Vec<f64> = alpha
        .iter()
        .map(|a| 1.0 - (a - alpha0).powi(2) + f64::from(seed) / 100.0)
        .collect();
    SeedResult {
        step,
        seed,
        alpha0,
        width: 1.0 + step as f64 / 10000.0,
        tau: vec![0.0; q],
        alpha,
        f_alpha,
        r2: vec![1.0; q],
        alpha0_peak: alpha0,
        alpha0_central: None,
        edges: 100,
        source_nodes: 10,
        kept_nodes: 10,
        radii: 5,
        node_dimension_mean: None,
        parameters: 120_000,
    }
}

/// A finished sweep in `dir`; B's step-3000 seed 2 fails for good.
fn build_state(dir: &Path, real: bool) -> ExportData {
    let spec = spec(dir);
    let params = spec.analysis_params();
    let results = results(real, &params);
    let mut state = SweepState::open(spec, OpenMode::Resume).unwrap();
    let worker = state
        .transaction(|s| s.decide(|d| Ok(d.register_worker("test-host", 2, "0", 0))))
        .unwrap();
    loop {
        let leases = state
            .transaction(|s| s.decide(|d| d.lease(&worker, 8, 1)))
            .unwrap();
        if leases.is_empty() {
            break;
        }
        for l in leases {
            if l.model == MODEL_B && l.step == 3000 && l.seed == 2 {
                state
                    .transaction(|s| {
                        let failure = Failure::new(FailureClass::Checkpoint, "corrupt checkpoint");
                        s.decide(|d| d.fail(&worker, l.task_id, failure, 2))
                    })
                    .unwrap();
                continue;
            }
            let r = &results[&(l.model.clone(), l.step, l.seed)];
            let done = state
                .transaction(|s| {
                    s.decide(|d| {
                        d.complete(&worker, l.task_id, r.clone(), TaskMetrics::default(), 2)
                    })
                })
                .unwrap();
            assert_eq!(done, Completion::Accepted);
        }
    }
    drop(state);
    export::load(dir).unwrap()
}

fn neuromfa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuromfa"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "report failed:\n{stderr}");
    (stdout, stderr)
}

fn figure_stems() -> Vec<String> {
    vec![
        "spectra-eleutherai-pythia-160m-deduped".into(),
        "spectra-org-tiny-b".into(),
        "alpha0-width".into(),
        "emergence".into(),
        "emergence-vs-size".into(),
        "evals-eleutherai-pythia-160m-deduped".into(),
    ]
}

const TABLES: [&str; 4] = [
    "table-spectrum-variance",
    "table-alpha0-width",
    "table-emergence",
    "table-correlations",
];

/// `[[x, y], ...]` of one series in plot-data.json.
fn series(plot_data: &Value, figure: &str, name: &str) -> Vec<(f64, f64)> {
    plot_data[figure]["series"][name]
        .as_array()
        .unwrap_or_else(|| panic!("plot-data.json has no series {figure} / {name}"))
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Pearson's r, computed from sums (a different route from the report's centred form).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (sx, sy): (f64, f64) = (x.iter().sum(), y.iter().sum());
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let sxx: f64 = x.iter().map(|a| a * a).sum();
    let syy: f64 = y.iter().map(|b| b * b).sum();
    (n * sxy - sx * sy) / ((n * sxx - sx * sx).sqrt() * (n * syy - sy * sy).sqrt())
}

/// Rank = 1 + number below + half the other equal values (average rank of ties).
fn ranks(v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|a| {
            let below = v.iter().filter(|b| *b < a).count() as f64;
            let equal = v.iter().filter(|b| *b == a).count() as f64 - 1.0;
            1.0 + below + equal / 2.0
        })
        .collect()
}

fn sciq_accuracy(step: u64) -> f64 {
    let path = repo().join(format!(
        "tests/data/evals/pythia-160m-deduped/160m-deduped_step{step}.json"
    ));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["results"]["sciq"]["acc"].as_f64().unwrap()
}

fn assert_png(path: &Path, size: (u32, u32)) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 1000, "{} is too small", path.display());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), size, "{}", path.display());
}

/// Parses an SVG, checks it draws lines and text, returns its (width, height).
fn assert_svg(path: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let lines = doc
        .descendants()
        .filter(|n| matches!(n.tag_name().name(), "path" | "polyline"))
        .count();
    assert!(lines > 0, "{} draws no line", path.display());
    assert!(
        doc.descendants().any(|n| n.tag_name().name() == "text"),
        "{} has no text",
        path.display()
    );
    let dim = |a: &str| root.attribute(a).unwrap().parse::<u32>().unwrap();
    (dim("width"), dim("height"))
}

#[test]
fn report_writes_every_file_with_the_exported_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = build_state(dir.path(), true);
    let evals_a = repo().join("tests/data/evals/pythia-160m-deduped");
    // A model the sweep does not have: warned about, not fatal.
    let evals_other =
        repo().join("tests/data/evals/pythia-1.4b-deduped/1.4b-deduped_step1000.json");
    let state = dir.path().to_str().unwrap();
    let (stdout, stderr) = ok(&neuromfa(&[
        "report",
        state,
        "--evals",
        evals_a.to_str().unwrap(),
        "--evals",
        evals_other.to_str().unwrap(),
    ]));
    let out = dir.path().join("report");

    // Every file exists and is printed.
    let mut expected: Vec<String> = Vec::new();
    for stem in figure_stems() {
        expected.push(format!("{stem}.svg"));
        expected.push(format!("{stem}.png"));
    }
    for t in TABLES {
        expected.push(format!("{t}.md"));
        expected.push(format!("{t}.csv"));
    }
    expected.push("plot-data.json".into());
    expected.push("report.html".into());
    for name in &expected {
        let path = out.join(name);
        assert!(path.is_file(), "{name} missing");
        assert!(
            stdout.lines().any(|l| Path::new(l) == path),
            "{name} not printed:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("warning:")
            && stderr.contains("1.4b-deduped_step1000.json")
            && stderr.contains("matches no model of the sweep"),
        "no warning for the unmatched file:\n{stderr}"
    );

    // SVGs parse and draw; PNGs are PNGs of the same size.
    for stem in figure_stems() {
        let size = assert_svg(&out.join(format!("{stem}.svg")));
        assert_png(&out.join(format!("{stem}.png")), size);
    }
    let spectra_svg =
        std::fs::read_to_string(out.join("spectra-eleutherai-pythia-160m-deduped.svg")).unwrap();
    // Axis label and the colour key's last step.
    assert!(spectra_svg.contains("f(α)") && spectra_svg.contains("23000"));

    // plot-data.json holds exactly the exported numbers.
    let plot_data: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plot-data.json")).unwrap())
            .unwrap();
    for model in [MODEL_A, MODEL_B] {
        let rows: Vec<_> = data
            .aggregates
            .iter()
            .filter(|a| a.model == model)
            .collect();
        let alpha0: Vec<(f64, f64)> = rows
            .iter()
            .map(|a| (a.aggregate.step as f64, a.aggregate.alpha0_mean))
            .collect();
        assert_eq!(
            series(&plot_data, "alpha0-width", &format!("alpha0: {model}")),
            alpha0
        );
        let width: Vec<(f64, f64)> = rows
            .iter()
            .map(|a| (a.aggregate.step as f64, a.aggregate.width_mean))
            .collect();
        assert_eq!(
            series(&plot_data, "alpha0-width", &format!("width: {model}")),
            width
        );
        let e: Vec<(f64, f64)> = rows
            .iter()
            .map(|a| (a.aggregate.step as f64, a.aggregate.e_from_means.unwrap()))
            .collect();
        assert_eq!(series(&plot_data, "emergence", model), e);
        assert_eq!(e[0].1, 0.0, "E is 0 at the first step");
    }
    let spectrum: Vec<(f64, f64)> = data
        .spectra
        .iter()
        .filter(|s| s.model == MODEL_A && s.step == 1000)
        .map(|s| (s.alpha_mean, s.f_alpha_mean))
        .collect();
    assert_eq!(spectrum.len(), 60);
    assert_eq!(
        series(
            &plot_data,
            "spectra-eleutherai-pythia-160m-deduped",
            "step 1000"
        ),
        spectrum
    );
    let band = plot_data["spectra-eleutherai-pythia-160m-deduped"]["bands"]["step 1000"]
        .as_array()
        .unwrap();
    let first = data
        .spectra
        .iter()
        .find(|s| s.model == MODEL_A && s.step == 1000)
        .unwrap();
    assert_eq!(
        band[0][2].as_f64().unwrap(),
        first.f_alpha_mean + first.f_alpha_var.sqrt()
    );
    // Default size comparison: the steps after the first that both models have.
    let sizes = &plot_data["emergence-vs-size"]["series"];
    assert_eq!(
        sizes.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["step 1000", "step 3000"]
    );
    let at = |model: &str, step: u64| {
        data.aggregates
            .iter()
            .find(|a| a.model == model && a.aggregate.step == step)
            .unwrap()
    };
    let (a, b) = (at(MODEL_A, 3000), at(MODEL_B, 3000));
    assert!(a.parameters < b.parameters && a.parameters > 0);
    assert_eq!(
        series(&plot_data, "emergence-vs-size", "step 3000"),
        vec![
            (a.parameters as f64, a.aggregate.e_from_means.unwrap()),
            (b.parameters as f64, b.aggregate.e_from_means.unwrap())
        ]
    );
    assert_eq!(b.aggregate.seeds, 2, "the failed seed is left out");
    let sciq = series(&plot_data, "evals-eleutherai-pythia-160m-deduped", "sciq");
    assert_eq!(sciq.len(), 27, "every evaluated step is drawn");
    assert_eq!(sciq[0], (0.0, sciq_accuracy(0)));

    // Correlations, recomputed here from the evaluation files and the exports.
    let (e, acc): (Vec<f64>, Vec<f64>) = STEPS_A
        .iter()
        .map(|&s| {
            (
                at(MODEL_A, s).aggregate.e_from_means.unwrap(),
                sciq_accuracy(s),
            )
        })
        .unzip();
    let correlations = csv_rows(&out.join("table-correlations.csv"));
    let row = correlations
        .iter()
        .find(|r| r["model"] == MODEL_A && r["benchmark"] == "sciq")
        .expect("no sciq row");
    assert_eq!(row["n"], "5");
    let r: f64 = row["pearson"].parse().unwrap();
    let rho: f64 = row["spearman"].parse().unwrap();
    assert!(
        (r - pearson(&e, &acc)).abs() < 1e-12,
        "{r} vs {}",
        pearson(&e, &acc)
    );
    assert!((rho - pearson(&ranks(&e), &ranks(&acc))).abs() < 1e-12);
    assert!(
        correlations.iter().all(|r| r["model"] == MODEL_A),
        "only A has evaluations"
    );
    assert_eq!(
        correlations.len(),
        65,
        "every benchmark with `acc` is correlated"
    );

    // Tables: the paper's forms, full precision in CSV.
    let emergence = csv_rows(&out.join("table-emergence.csv"));
    let row = emergence
        .iter()
        .find(|r| r["model"] == MODEL_A && r["step"] == "13000")
        .unwrap();
    assert_eq!(row["sciq"].parse::<f64>().unwrap(), sciq_accuracy(13000));
    assert_eq!(
        row["E_from_means"].parse::<f64>().unwrap(),
        at(MODEL_A, 13000).aggregate.e_from_means.unwrap()
    );
    // 65 benchmarks: the table shows the paper's six.
    for b in [
        "lambada_openai",
        "piqa",
        "arc_easy",
        "sciq",
        "winogrande",
        "wsc",
    ] {
        assert!(row.contains_key(b), "{b} column missing");
    }
    assert!(!row.contains_key("hendrycksTest-anatomy"));
    let variance = csv_rows(&out.join("table-spectrum-variance.csv"));
    let row = variance
        .iter()
        .find(|r| r["model"] == MODEL_B && r["step"] == "1000")
        .unwrap();
    let rows: Vec<_> = data
        .spectra
        .iter()
        .filter(|s| s.model == MODEL_B && s.step == 1000)
        .collect();
    let mean_var = rows.iter().map(|s| s.f_alpha_var).sum::<f64>() / rows.len() as f64;
    let got: f64 = row["var_f_alpha_mean_over_q"].parse().unwrap();
    assert!((got - mean_var).abs() <= 1e-15 * mean_var.abs().max(1.0));
    let md = std::fs::read_to_string(out.join("table-spectrum-variance.md")).unwrap();
    assert!(md.contains("population variance") && md.contains("averaged over the 60 q values"));
    let widths = csv_rows(&out.join("table-alpha0-width.csv"));
    assert_eq!(widths.len(), data.aggregates.len());
    assert_eq!(
        widths[1]["alpha0_var"].parse::<f64>().unwrap(),
        data.aggregates[1].aggregate.alpha0_var
    );

    // One self-contained page.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(SWEEP));
    assert_eq!(html.matches("<svg").count(), figure_stems().len());
    assert!(
        !html.contains("src=\"http") && !html.contains("<script") && !html.contains("href=\"http")
    );
    let done = data.tasks.iter().filter(|t| t.state == "done").count();
    assert_eq!(done, 5 * 3 + 3 * 3 - 1);
    assert!(html.contains(&format!("<b>{done}</b> done")));
    assert!(html.contains("<b>1</b> failed") && html.contains("corrupt checkpoint"));
    assert!(html.contains("Correlation of E with benchmark accuracy"));
}

#[test]
fn csv_evals_match_models_by_name_and_steps_choose_the_size_comparison() {
    let dir = tempfile::tempdir().unwrap();
    build_state(dir.path(), false);
    let csv = dir.path().join("evals.csv");
    std::fs::write(
        &csv,
        "model,step,benchmark,accuracy\n\
         EleutherAI/pythia-v1.1-160m-deduped,0,mybench,0.25\n\
         pythia-160m-deduped,1000,mybench,0.5\n\
         EleutherAI/pythia-160m-deduped,step3000,mybench,0.75\n\
         org/tiny-b,1000,other,0.4\n\
         org/unknown,1000,mybench,0.9\n",
    )
    .unwrap();
    let out = dir.path().join("custom-out");
    let (stdout, stderr) = ok(&neuromfa(&[
        "report",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--evals",
        csv.to_str().unwrap(),
        "--steps",
        "1000",
    ]));
    assert!(stdout.contains("custom-out"));
    assert!(
        stderr.contains("org/unknown") && stderr.contains("evals.csv"),
        "{stderr}"
    );
    let rows = csv_rows(&out.join("table-emergence.csv"));
    let acc = |model: &str, step: &str, bench: &str| -> String {
        rows.iter()
            .find(|r| r["model"] == model && r["step"] == step)
            .unwrap()[bench]
            .clone()
    };
    assert_eq!(acc(MODEL_A, "0", "mybench"), "0.25");
    assert_eq!(acc(MODEL_A, "3000", "mybench"), "0.75");
    assert_eq!(acc(MODEL_A, "13000", "mybench"), "", "no evaluation there");
    assert_eq!(acc(MODEL_B, "1000", "other"), "0.4");
    // Both models have evaluations: both get a plot.
    assert!(out.join("evals-org-tiny-b.svg").is_file());
    let plot_data: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plot-data.json")).unwrap())
            .unwrap();
    let keys: Vec<&String> = plot_data["emergence-vs-size"]["series"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["step 1000"]);
    // Three points: a perfect rank correlation, E rising with accuracy.
    let corr = csv_rows(&out.join("table-correlations.csv"));
    let row = corr
        .iter()
        .find(|r| r["model"] == MODEL_A && r["benchmark"] == "mybench")
        .unwrap();
    assert_eq!(row["n"], "3");
    assert_eq!(row["spearman"].parse::<f64>().unwrap(), 1.0);
    // One point is no correlation: shown as missing, not as NaN.
    let row = corr
        .iter()
        .find(|r| r["model"] == MODEL_B && r["benchmark"] == "other")
        .unwrap();
    assert_eq!((row["n"].as_str(), row["pearson"].as_str()), ("1", ""));

    // --benchmarks picks the table's columns; an unknown name is warned about.
    let out2 = dir.path().join("picked");
    let (_, stderr) = ok(&neuromfa(&[
        "report",
        dir.path().to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--evals",
        csv.to_str().unwrap(),
        "--benchmarks",
        "other,nosuch",
    ]));
    assert!(stderr.contains("--benchmarks nosuch"), "{stderr}");
    let header = std::fs::read_to_string(out2.join("table-emergence.csv")).unwrap();
    let header = header.lines().next().unwrap();
    assert!(
        header.ends_with(",other") && !header.contains("mybench"),
        "{header}"
    );
}

#[test]
fn malformed_evals_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    build_state(dir.path(), false);
    let state = dir.path().to_str().unwrap();
    let cases = [
        ("broken.json", "{\"results\": {\"sciq\": ", "not valid JSON"),
        ("no-results.json", "{\"config\": {}}", "no `results` object"),
        (
            "bad.csv",
            "model,step,benchmark,accuracy\norg/tiny-b,1000,sciq,high\n",
            "line 2: accuracy `high`",
        ),
        ("columns.csv", "model,step,score\n", "no `benchmark` column"),
        (
            "nostep.json",
            "{\"results\": {\"sciq\": {\"acc\": 0.5}}, \"config\": {\"model_args\": \"pretrained=org/tiny-b\"}}",
            "cannot tell the training step",
        ),
    ];
    for (name, text, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = neuromfa(&["report", state, "--evals", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A missing path and a missing state directory are errors too, not panics.
    let out = neuromfa(&["report", state, "--evals", "/nonexistent/evals.csv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/evals.csv"), "{stderr}");
    let missing = dir.path().join("no-such-sweep");
    let out = neuromfa(&["report", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("no-such-sweep") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
