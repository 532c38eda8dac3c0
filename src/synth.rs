//! `neuromfa synth`: a random checkpoint shaped exactly like a published model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use neuromfa_common::synth::{
    find_preset, tensor_bytes, write_checkpoint, write_trajectory_checkpoint, TrajectoryPoint,
    PRESETS,
};

use crate::analyze::human_bytes;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The model whose tensor names and shapes to copy, e.g. pythia-160m, pythia-2.8b
    /// (an `EleutherAI/` prefix and `-deduped` suffix are accepted).
    #[arg(long = "like", value_name = "MODEL")]
    pub like: String,

    /// Seed of the random weights; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Write a synthetic training history instead of one checkpoint: `OUT/step<N>` for
    /// each step listed (e.g. 0,1000,2000). The same base weights move along the way the
    /// paper's toy experiments move them: preferential attachment (α0 falls) and growing
    /// diversity between neurons (w widens).
    #[arg(long, value_name = "STEPS", value_delimiter = ',')]
    pub trajectory: Vec<u64>,

    /// Directory to write `config.json` and `model.safetensors` (f16) into.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let preset = find_preset(&args.like).with_context(|| {
        let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        format!("unknown model `{}`; known: {}", args.like, known.join(", "))
    })?;
    let started = Instant::now();
    eprintln!(
        "writing a random {} checkpoint ({}) to {}",
        preset.name,
        human_bytes(tensor_bytes(&preset)),
        args.out.display()
    );
    if args.trajectory.is_empty() {
        write_checkpoint(&preset, &args.out, args.seed)
            .with_context(|| format!("writing {}", args.out.display()))?;
    } else {
        let mut steps = args.trajectory.clone();
        steps.sort_unstable();
        steps.dedup();
        let last = (steps.len().max(2) - 1) as f64;
        for (i, step) in steps.iter().enumerate() {
            let dir = args.out.join(format!("step{step}"));
            let point = TrajectoryPoint::at(i as f64 / last);
            write_trajectory_checkpoint(&preset, &dir, args.seed, point)
                .with_context(|| format!("writing {}", dir.display()))?;
            eprintln!("  {} ({point:?})", dir.display());
        }
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
