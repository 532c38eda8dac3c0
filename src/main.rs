use std::process::ExitCode;

use clap::{Parser, Subcommand};
use neuromfa::{analyze, synth};

/// Neuron-based Multifractal Analysis (NeuroMFA) of language-model checkpoints: how the
/// structure of a model's neuron interaction network self-organises during training.
///
/// Each checkpoint becomes a sampled neuron interaction network (one per seed); boxes
/// grown around every neuron give a multifractal spectrum, summarised by α0
/// (irregularity), its width w (heterogeneity) and the degree of emergence E over steps.
#[derive(Debug, Parser)]
#[command(name = "neuromfa", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse checkpoints on local disk and print per-seed results, per-step means,
    /// variances and E.
    Analyze(analyze::AnalyzeArgs),
    /// Write a random f16 checkpoint with a published model's exact tensor names and
    /// shapes (for benchmarks).
    Synth(synth::SynthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Synth(args) => synth::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                .is_some_and(|kind| kind == std::io::ErrorKind::BrokenPipe)
    })
}
