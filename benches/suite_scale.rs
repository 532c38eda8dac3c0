//! The Pythia suite's size without computing anything: a state of every task of
//! `examples/pythia-suite.toml` (8 models × 154 steps × 10 seeds = 12,320 tasks), completed
//! with results shaped like real ones (61 q values), then the times of what a user runs on
//! it: `status`, the exports and the report. Prints each.
//!
//!   cargo bench --bench suite_scale [-- DIR]     # DIR: keep the state and report there
//!
//! Target: each under a few seconds (a quadratic step shows as minutes at this size), and
//! the peak RSS well under the coordinator's 300 MiB.

use std::path::Path;
use std::time::Instant;

use neuromfa::report::{self, ReportArgs};
use neuromfa_common::{RevisionWeights, SeedResult, WeightFiles, WeightFormat};
use neuromfa_coordinator::{export, OpenMode, SweepSpec, SweepState, TaskMetrics};

/// A result on the default 61-value q grid that moves with the step.
fn result(step: u64, seed: u32) -> SeedResult {
    let t = (step as f64 + 1.0).ln() / 143_001f64.ln();
    let alpha0 = 1.6 - 0.3 * t + f64::from(seed) / 1000.0;
    let width = 0.5 + 0.4 * t;
    let alpha: Vec<f64> = (0..60)
        .map(|i| alpha0 - width / 2.0 + width * f64::from(i) / 59.0)
        .collect();
    let f_alpha = alpha
        .iter()
        .map(|a| 1.0 - ((a - alpha0) / width).powi(2))
        .collect();
    SeedResult {
        step,
        seed,
        alpha0,
        width,
        tau: vec![0.5; 61],
        alpha,
        f_alpha,
        r2: vec![0.95; 61],
        alpha0_peak: alpha0,
        alpha0_central: Some(alpha0),
        edges: 330_000,
        source_nodes: 8192,
        kept_nodes: 5120,
        radii: 140,
        node_dimension_mean: Some(1.1),
        parameters: 1_000_000,
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    println!("{what:<28} {:>8.2} s", started.elapsed().as_secs_f64());
    value
}

fn main() -> anyhow::Result<()> {
    let kept = std::env::args().skip(1).find(|a| a != "--bench");
    let temporary = tempfile::tempdir()?;
    let dir = kept.as_deref().map_or(temporary.path(), Path::new);
    let suite = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pythia-suite.toml"),
    )?;
    // Under `reuse`, as a suite with duplicate branches is best run.
    let text = format!("duplicates = \"reuse\"\n{suite}").replace(
        "state_dir = \"runs/pythia-suite\"",
        &format!("state_dir = {:?}", dir.display().to_string()),
    );
    let spec = SweepSpec::from_toml(&text, Path::new("pythia-suite.toml"))?;
    let mut state = timed("open (12,320 tasks)", || {
        SweepState::open(spec, OpenMode::Resume)
    })?;
    let awaited = state.await_resolution();
    timed("resolve 1,232 one by one", || -> anyhow::Result<()> {
        for key in &awaited {
            // Steps up to 6300 of each model serve one set of weights, as pythia-2.8b's do.
            let hash = format!("{}@{}", key.model, key.step.max(6300));
            let weights = RevisionWeights {
                commit: hash.clone(),
                weights: WeightFiles {
                    format: WeightFormat::Safetensors,
                    sharded: false,
                },
                files: Vec::new(),
            };
            state.transaction(|s| {
                s.resolution_ended(&key.model, key.step);
                s.record_resolution(&key.model, key.step, &hash, &weights)?;
                s.apply_duplicate_policy().map(drop)
            })?;
        }
        Ok(())
    })?;
    let worker = state.transaction(|s| s.decide(|d| Ok(d.register_worker("h", 16, "v", 0))))?;
    let done = timed("lease and complete all", || -> anyhow::Result<usize> {
        let mut done = 0;
        loop {
            let n = state.transaction(|s| {
                let leases = s.decide(|d| d.lease(&worker, 1000, 1))?;
                for l in &leases {
                    let r = result(l.step, l.seed);
                    let metrics = TaskMetrics {
                        bytes_fetched: 1 << 20,
                        requests: 2,
                        fetch_ms: 100,
                        compute_ms: 1000,
                        fetch_mode: "ranges".into(),
                    };
                    s.decide(|d| d.complete(&worker, l.task_id, r, metrics, 2))?;
                }
                Ok(leases.len())
            })?;
            if n == 0 {
                return Ok(done);
            }
            done += n;
        }
    })?;
    println!("tasks done                   {done:>8}");
    let status = timed("status", || state.status(3, false));
    assert_eq!(status.done, done);
    println!("duplicates not computed      {:>8}", 12_320 - done);
    drop(state);
    timed("export::load", || export::load(dir))?;
    timed("export (every file)", || export::export(dir, None))?;
    let files = timed("report", || {
        report::write(&ReportArgs {
            state_dir: dir.to_path_buf(),
            out: None,
            evals: Vec::new(),
            steps: Vec::new(),
            benchmarks: Vec::new(),
        })
    })?;
    println!("report files                 {:>8}", files.len());
    // The coordinator holds this state (and does these steps): its peak is this one's.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(peak) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!(
            "peak RSS                     {:>8}",
            peak.trim_start_matches("VmHWM:").trim()
        );
    }
    Ok(())
}
