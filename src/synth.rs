//! `neuromfa synth`: a random checkpoint shaped exactly like a published model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use neuromfa_common::synth::{find_preset, tensor_bytes, write_checkpoint, PRESETS};

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
    write_checkpoint(&preset, &args.out, args.seed)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
