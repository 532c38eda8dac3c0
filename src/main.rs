use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use neuromfa::{analyze, slurm, sweep, synth};

/// Neuron-based Multifractal Analysis (NeuroMFA) of language-model checkpoints: how the
/// structure of a model's neuron interaction network self-organises during training.
///
/// Each checkpoint becomes a sampled neuron interaction network (one per seed); boxes
/// grown around every neuron give a multifractal spectrum, summarised by α0
/// (irregularity), its width w (heterogeneity) and the degree of emergence E over steps.
///
/// `analyze` works on checkpoints on local disk. A sweep runs a model × step × seed grid
/// over many machines: `coordinator` holds the durable state, `worker`s fetch weights from
/// the Hub and compute; `sweep run` does both in one process.
#[derive(Debug, Parser)]
#[command(name = "neuromfa", version, about, long_about)]
struct Cli {
    /// Log format: readable text, or one JSON object per line for clusters.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse checkpoints on local disk and print per-seed results, per-step means,
    /// variances and E.
    Analyze(analyze::AnalyzeArgs),
    /// Run a sweep's coordinator: durable state, leases, aggregation; workers connect to it.
    /// Once it listens it prints the URL workers dial on stdout.
    Coordinator(sweep::CoordinatorArgs),
    /// Run a worker: lease tasks from a coordinator, fetch weights from the Hub, compute.
    Worker(sweep::WorkerArgs),
    /// Run a whole sweep in this process; re-queue failed tasks or resume a stopped sweep.
    #[command(subcommand)]
    Sweep(sweep::SweepCommand),
    /// Show a running sweep: counts by state, throughput, ETA, workers, failures, and why
    /// leasing stopped if it did; with --wait, wait for the sweep to end and exit as it did.
    Status(sweep::StatusArgs),
    /// Run a sweep's workers on a Slurm cluster as one job array.
    #[command(subcommand)]
    Slurm(slurm::SlurmCommand),
    /// Write a sweep's tables (tasks, aggregates, spectra as CSV and JSON; a Markdown
    /// summary) from its state directory.
    Export(sweep::ExportArgs),
    /// Plots, the paper's tables and a self-contained HTML report for a sweep's state
    /// directory, optionally with benchmark accuracies set beside E.
    Report(neuromfa::report::ReportArgs),
    /// Serve checkpoints over the Hugging Face Hub download protocol.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Write a random f16 checkpoint with a published model's exact tensor names and
    /// shapes (for benchmarks).
    Synth(synth::SynthArgs),
    /// Check a checkpoint suite before computing on it: which steps serve identical
    /// weights. Exits 1 when a step cannot be checked, else 3 when duplicates are found
    /// (unless --allow-duplicates).
    Audit(neuromfa::integrity::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Serve DIR laid out as DIR/<org>/<name>/<revision>/<file>, for tests and for
    /// clusters without internet (a local mirror for the workers: point them at it with
    /// HF_ENDPOINT or the spec's hub.endpoint).
    Serve {
        dir: PathBuf,
        /// Address to listen on (port 0: the system chooses). The URL it serves at is
        /// printed on stdout once it listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Require this bearer token (as the Hub does for gated models); prefer the
        /// variable, which `ps` does not show.
        #[arg(long, env = "NEUROMFA_HUB_TOKEN")]
        token: Option<String>,
        /// Limit the total bandwidth of file bodies to MBPS megabytes (10^6 bytes) per
        /// second, so benchmarks on one machine can stand in for a network.
        #[arg(long, value_name = "MBPS")]
        throttle: Option<f64>,
    },
}

/// Services log what they do; interactive commands show progress instead and log only
/// what goes wrong (RUST_LOG overrides both).
fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Export(args) => sweep::export_command(args),
        Command::Slurm(command) => slurm::run(command),
        Command::Report(args) => neuromfa::report::run(args),
        Command::Coordinator(args) => runtime()?.block_on(sweep::coordinator(args)),
        Command::Worker(args) => runtime()?.block_on(sweep::worker(args)),
        Command::Sweep(command) => runtime()?.block_on(sweep::sweep(command)),
        Command::Status(args) => runtime()?.block_on(sweep::status(args)),
        Command::Audit(args) => runtime()?.block_on(neuromfa::integrity::audit(args)),
        Command::Hub(HubCommand::Serve {
            dir,
            listen,
            token,
            throttle,
        }) => runtime()?.block_on(neuromfa::hub::serve(dir, listen, token, throttle)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Coordinator(_) | Command::Worker(_) | Command::Hub(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) if error.is::<neuromfa::integrity::DuplicatesFound>() => {
            eprintln!("{error}");
            ExitCode::from(3)
        }
        Err(error) if error.is::<neuromfa::exit::NotDone>() => {
            eprintln!("{error}");
            error
                .downcast_ref::<neuromfa::exit::NotDone>()
                .map_or(ExitCode::FAILURE, |e| ExitCode::from(e.code))
        }
        Err(error) if error.is::<neuromfa::worker::SweepStopped>() => {
            eprintln!("{error}");
            ExitCode::from(neuromfa::exit::STOPPED)
        }
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
