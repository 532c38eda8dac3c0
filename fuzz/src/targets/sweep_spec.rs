//! The sweep spec (TOML), and the grid and settings made from it.

use std::path::Path;

use neuromfa_coordinator::spec::{Seeds, MAX_SEEDS};
use neuromfa_coordinator::SweepSpec;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "sweep_spec",
    about: "sweep spec TOML, its grid and analysis settings",
    run,
    // A `steps = "pythia"` preset gives 154 checkpoints for a model named in ~20 bytes.
    cap: Cap {
        per_byte: 2048,
        fixed: 4 << 20,
    },
    seeds: || crate::fixtures("examples", |n| n.ends_with(".toml")),
};

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let Ok(spec) = SweepSpec::from_toml(text, Path::new("conf/spec.toml")) else {
        return;
    };
    if let Seeds::Count(n) = spec.seeds {
        assert!(n <= MAX_SEEDS);
    }
    std::hint::black_box((
        spec.seed_list(),
        spec.checkpoints(),
        spec.analysis_params(),
        spec.lease_ms(),
        spec.worker_address(),
    ));
}
