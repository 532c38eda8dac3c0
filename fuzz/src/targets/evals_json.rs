//! An lm-evaluation-harness results file, as `report --evals` reads it.

use std::path::Path;

use neuromfa::report::evals::lm_eval_rows;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "evals_json",
    about: "lm-evaluation-harness results JSON (report --evals)",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds: || crate::fixtures("tests/data/evals", |n| n.ends_with(".json")),
};

/// The sweep models benchmark files are matched against.
pub fn models() -> Vec<String> {
    [
        "EleutherAI/pythia-160m-deduped",
        "EleutherAI/pythia-1.4b-deduped",
    ]
    .map(String::from)
    .to_vec()
}

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let mut warnings = Vec::new();
    let path = Path::new("evals/160m-deduped_step1000.json");
    if let Ok(rows) = lm_eval_rows(text, path, &models(), &mut warnings) {
        assert!(rows.iter().all(|(_, _, _, acc)| acc.is_finite()));
    }
}
