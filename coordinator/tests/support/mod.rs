//! What the coordinator's tests share: specs, results shaped like real ones, and
//! decisions made in a transaction of their own.

#![allow(dead_code)]

use std::path::Path;

use neuromfa_common::SeedResult;
use neuromfa_coordinator::record::{StoredTask, TaskProgress};
use neuromfa_coordinator::schedule::Outcome;
use neuromfa_coordinator::{Schedule, StateError, SweepSpec, SweepState};

/// A spec named `test` with its state in `dir`; `body` holds the rest of the TOML.
pub fn spec(dir: &Path, body: &str) -> SweepSpec {
    let text = format!("name = \"test\"\nstate_dir = \"{}\"\n{body}", dir.display());
    SweepSpec::from_toml(&text, Path::new("spec.toml")).unwrap()
}

/// Models `org/a` and `org/b` at `steps` (a TOML list) with `seeds` seeds, 10 s leases
/// and 2 attempts; `extra` is appended (tables only).
pub fn two_models(dir: &Path, steps: &str, seeds: u32, extra: &str) -> SweepSpec {
    spec(
        dir,
        &format!(
            "seeds = {seeds}\nsteps = {steps}\n[[models]]\nrepo = \"org/a\"\n[[models]]\n\
             repo = \"org/b\"\n[coordinator]\nlease_seconds = 10\nmax_attempts = 2\n{extra}"
        ),
    )
}

/// A fresh grid's schedule of [`two_models`]: every (checkpoint, seed) pending, ids from 1
/// as the store numbers them.
pub fn schedule(steps: &str, seeds: u32, extra: &str) -> Schedule {
    let spec = two_models(Path::new("unused"), steps, seeds, extra);
    let mut id = 0;
    let mut tasks = Vec::new();
    for key in spec.checkpoints() {
        for seed in spec.seed_list() {
            id += 1;
            tasks.push(StoredTask {
                id,
                model: key.model.clone(),
                step: key.step,
                revision: key.revision.clone(),
                seed,
                progress: TaskProgress::pending(),
                result: None,
            });
        }
    }
    Schedule::restore(&spec, tasks, Vec::new(), 0)
}

/// A result that differs by step and seed (α0 falls with the step), so a point counted
/// at the wrong step or twice shows.
pub fn result(step: u64, seed: u32) -> SeedResult {
    let alpha0 = 1.5 - step as f64 / 100.0 + f64::from(seed) / 1000.0;
    let width = 0.6 + f64::from(seed) / 100.0 + step as f64 / 1000.0;
    SeedResult {
        step,
        seed,
        alpha0,
        width,
        tau: vec![0.0; 3],
        alpha: vec![alpha0, alpha0 + width],
        f_alpha: vec![0.5, 1.0],
        r2: vec![1.0; 3],
        alpha0_peak: alpha0,
        alpha0_central: None,
        edges: 10,
        source_nodes: 5,
        kept_nodes: 5,
        radii: 3,
        node_dimension_mean: None,
        parameters: 1000,
    }
}

/// Makes a decision in a transaction of its own; panics if it fails.
pub fn decide<T>(
    state: &mut SweepState,
    decision: impl FnOnce(&mut Schedule) -> Result<Outcome<T>, StateError>,
) -> T {
    state.transaction(|s| s.decide(decision)).unwrap()
}

/// A resolution at `commit` of one `format` file.
pub fn resolved(
    commit: &str,
    format: neuromfa_common::WeightFormat,
) -> neuromfa_common::RevisionWeights {
    neuromfa_common::RevisionWeights {
        commit: commit.to_string(),
        weights: neuromfa_common::WeightFiles {
            format,
            sharded: false,
        },
        files: vec![neuromfa_common::WeightFileInfo {
            name: format.single_file().to_string(),
            size: 1,
            sha256: "0".repeat(64),
        }],
    }
}
