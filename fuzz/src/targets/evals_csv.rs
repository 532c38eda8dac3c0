//! An evaluations CSV (`model,step,benchmark,accuracy`), as `report --evals` reads it.

use std::path::Path;

use neuromfa::report::evals::{csv_rows, lm_eval_rows};

use super::evals_json::models;
use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "evals_csv",
    about: "evaluations CSV model,step,benchmark,accuracy (report --evals)",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds,
};

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let mut warnings = Vec::new();
    if let Ok(rows) = csv_rows(text, Path::new("evals.csv"), &models(), &mut warnings) {
        assert!(rows.iter().all(|(_, _, _, acc)| acc.is_finite()));
    }
}

/// The JSON fixtures' accuracies as CSV, one file per model, as users write them.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for model in ["pythia-160m-deduped", "pythia-1.4b-deduped"] {
        let mut csv = String::from("model,step,benchmark,accuracy\n");
        let dir = crate::repository().join("tests/data/evals").join(model);
        for (path, bytes) in crate::files_in(&dir) {
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            let rows = lm_eval_rows(&text, &path, &models(), &mut Vec::new()).unwrap_or_default();
            for (model, benchmark, step, accuracy) in rows.into_iter().take(4) {
                csv += &format!("{model},{step},{benchmark},{accuracy}\n");
            }
        }
        seeds.push(csv.into_bytes());
    }
    seeds
}
