//! The sweep commands: `coordinator`, `worker`, `sweep run`, `sweep retry-failed`,
//! `status`, `export`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use neuromfa_coordinator::{export, OpenMode, StatusReport, SweepSpec, SweepState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use neuromfa_common::checkpoint::FetchMode;
use neuromfa_hub::HubSettings;
use neuromfa_hub_server::{self as hub_server, HubServerConfig, RunningHub};

use crate::auth::generate_token;
use crate::integrity::resolve_grid;
use crate::proto;
use crate::server::RunningCoordinator;
use crate::web::WebServer;
use crate::worker::{self, WorkerOptions, WorkerSummary};

const TOKEN_FILE: &str = "token";

/// Loads a spec with `NEUROMFA_…` overrides from the environment.
pub fn load_spec(path: &Path) -> Result<SweepSpec> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(SweepSpec::load(path, &env)?)
}

/// The spec's token (or `NEUROMFA_TOKEN`), else the one a coordinator wrote to
/// `STATE_DIR/token`, if any.
pub(crate) fn recorded_token(spec: &SweepSpec) -> Option<String> {
    if let Some(token) = spec.token.clone().filter(|t| !t.is_empty()) {
        return Some(token);
    }
    std::fs::read_to_string(spec.state_dir.join(TOKEN_FILE))
        .ok()
        .map(|existing| existing.trim().to_string())
        .filter(|existing| !existing.is_empty())
}

/// The spec's token (or `NEUROMFA_TOKEN`); without one, a fresh token is written to
/// `STATE_DIR/token` (readable by the owner only) for workers started elsewhere.
pub(crate) fn sweep_token(spec: &SweepSpec) -> Result<String> {
    if let Some(token) = recorded_token(spec) {
        return Ok(token);
    }
    let path = spec.state_dir.join(TOKEN_FILE);
    std::fs::create_dir_all(&spec.state_dir)
        .with_context(|| format!("creating {}", spec.state_dir.display()))?;
    let token = generate_token();
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "no token in the spec or NEUROMFA_TOKEN: generated one");
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// The worker's token: `NEUROMFA_TOKEN`, else `--token-file`.
fn client_token(token_file: Option<&Path>) -> Result<String> {
    if let Ok(token) = std::env::var("NEUROMFA_TOKEN") {
        if !token.is_empty() {
            return Ok(token);
        }
    }
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        return Ok(token.trim().to_string());
    }
    bail!("no sweep token: set NEUROMFA_TOKEN or pass --token-file (the coordinator writes STATE_DIR/token when the spec names none)")
}

/// The URL workers on other machines dial: `coordinator.address`, else the listen
/// address, with this host's name in place of an unspecified IP (0.0.0.0, ::) that
/// means "every interface" to the coordinator but nothing to a worker.
pub(crate) fn dial_address(spec: &SweepSpec) -> String {
    if spec.coordinator.address.is_none() {
        if let Ok(listen) = spec.coordinator.listen.parse::<std::net::SocketAddr>() {
            if listen.ip().is_unspecified() {
                let scheme = if spec.tls() { "https" } else { "http" };
                return format!("{scheme}://{}:{}", worker::hostname(), listen.port());
            }
        }
    }
    spec.worker_address()
}

/// The URL of an HTTP listener bound at `addr`, with this host's name in place of an
/// unspecified IP.
fn http_url(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://{}:{}/", worker::hostname(), addr.port())
    } else {
        format!("http://{addr}/")
    }
}

/// Serves the dashboard of `running`'s sweep on `listen`.
async fn start_dashboard(
    listen: &str,
    running: &RunningCoordinator,
    token: &str,
) -> Result<WebServer> {
    let listener = crate::web::bind(listen, "dashboard").await?;
    crate::dashboard::start(listener, running.state.clone(), token).await
}

/// Hub endpoint workers should use when the spec names one (else theirs: HF_ENDPOINT or
/// the real Hub).
fn announced_hub(spec: &SweepSpec) -> String {
    spec.hub.endpoint.clone().unwrap_or_default()
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_mode(new_sweep: bool) -> OpenMode {
    if new_sweep {
        OpenMode::NewSweep
    } else {
        OpenMode::Resume
    }
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The sweep spec (TOML).
    pub spec: PathBuf,
    /// Listen here instead of the spec's `coordinator.listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Start over: move the state directory's earlier sweep aside.
    #[arg(long)]
    pub new_sweep: bool,
    /// Exit once every task is done or failed (after writing the exports, and once the
    /// workers still around have heard, for up to --drain-seconds).
    #[arg(long)]
    pub exit_when_done: bool,
    /// On SIGTERM, how long to wait for leased work before exiting (and with
    /// --exit-when-done, for workers to hear the sweep is finished).
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let mut spec = load_spec(&args.spec)?;
    if let Some(listen) = args.listen {
        spec.coordinator.listen = listen;
    }
    let token = sweep_token(&spec)?;
    let state_dir = spec.state_dir.clone();
    let mut state = SweepState::open(spec.clone(), open_mode(args.new_sweep))?;
    let hub = HubSettings {
        endpoint: spec.hub.endpoint.clone(),
        token: spec.hub.token.clone(),
        cache_dir: None,
    };
    let tls = match (&spec.coordinator.tls_cert, &spec.coordinator.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    resolve_grid(&mut state, &hub).await?;
    let listener = tokio::net::TcpListener::bind(&spec.coordinator.listen)
        .await
        .with_context(|| format!("cannot listen on {}", spec.coordinator.listen))?;
    let running =
        RunningCoordinator::start(state, listener, token.clone(), announced_hub(&spec), tls)?;
    tracing::info!(
        sweep = %spec.name, addr = %running.addr, state_dir = %state_dir.display(), tls = spec.tls(),
        "coordinator listening; start workers with: NEUROMFA_COORDINATOR={} neuromfa worker",
        dial_address(&spec)
    );
    let dashboard = match &spec.dashboard.listen {
        Some(listen) => {
            let dashboard = start_dashboard(listen, &running, &token).await?;
            tracing::info!(
                url = %http_url(dashboard.addr),
                "dashboard listening; open it once with ?token= and the sweep token, scrape /metrics with `Authorization: Bearer` and the token"
            );
            Some(dashboard)
        }
        None => None,
    };
    let mut exported = false;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping: no new leases; in-flight work may finish for {} s", args.drain_seconds);
                stop_dashboard(dashboard).await;
                running.drain_and_stop(Duration::from_secs(args.drain_seconds)).await;
                // The tables reflect everything acknowledged, finished or not.
                let files = export::export(&state_dir, None)?;
                tracing::info!(exports = %state_dir.join("exports").display(), files = files.len(), "stopped");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let status = match running.status().await {
                    Ok(status) => status,
                    Err(e) => {
                        // Out of space: stop serving before saying why.
                        stop_dashboard(dashboard).await;
                        running.stop().await;
                        return Err(e);
                    }
                };
                let finished = status.pending + status.leased == 0;
                if finished && !exported {
                    let files = export::export(&state_dir, None)?;
                    tracing::info!(done = status.done, failed = status.failed, exports = %state_dir.join("exports").display(), files = files.len(), "sweep finished");
                    exported = true;
                }
                if !finished {
                    exported = false;
                }
                if finished && args.exit_when_done {
                    running.tell_workers_finished(Duration::from_secs(args.drain_seconds)).await;
                    stop_dashboard(dashboard).await;
                    running.stop().await;
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn stop_dashboard(dashboard: Option<WebServer>) {
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://login-node:50051, or https:// when it serves TLS.
    #[arg(long, env = "NEUROMFA_COORDINATOR")]
    pub coordinator: String,
    /// File holding the sweep token (else NEUROMFA_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an https:// coordinator's certificate (else the
    /// system's roots).
    #[arg(long, env = "NEUROMFA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Fetch checkpoints from this Hub endpoint instead of the one the coordinator
    /// announces (else HF_ENDPOINT, else the real Hub).
    #[arg(long)]
    pub hub_endpoint: Option<String>,
    /// HF cache directory (default: the standard one, HF_HUB_CACHE or ~/.cache/huggingface/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep this worker's downloaded checkpoints under this many GB, evicting finished ones.
    #[arg(long)]
    pub cache_max_gb: Option<f64>,
    /// Seeds leased at a time.
    #[arg(long, default_value_t = 64)]
    pub max_tasks: u32,
    /// Exit when the coordinator has been unreachable this many seconds.
    #[arg(long, default_value_t = 600)]
    pub give_up_after: u64,
    /// How to get weights: `full` files into the HF cache, only the byte `ranges` the
    /// leased seeds read, or `auto` (ranges when they are a small share of the files and
    /// the Hub honours them). Default: the sweep spec's `hub.fetch_mode`.
    #[arg(long)]
    pub fetch_mode: Option<FetchMode>,
    /// Byte ranges closer than this many bytes are fetched as one request. Default: the
    /// spec's `hub.merge_gap`, else 4096.
    #[arg(long)]
    pub merge_gap: Option<u64>,
    /// Serve this worker's metrics at http://ADDR/metrics in Prometheus' text format
    /// (behind the sweep token, like the coordinator's dashboard).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

pub async fn worker(args: WorkerArgs) -> Result<()> {
    let token = client_token(args.token_file.as_deref())?;
    let mut options = WorkerOptions::new(args.coordinator, token);
    options.tls_ca = args.tls_ca;
    options.hub_endpoint = args.hub_endpoint;
    options.cache_dir = args.cache_dir;
    options.cache_max_bytes = match args.cache_max_gb {
        Some(gb) if gb.is_finite() && gb > 0.0 => Some((gb * 1e9) as u64),
        Some(gb) => bail!("--cache-max-gb must be positive (got {gb})"),
        None => None,
    };
    options.max_tasks = args.max_tasks.max(1);
    options.give_up_after = Duration::from_secs(args.give_up_after);
    options.fetch_mode = args.fetch_mode;
    options.merge_gap = args.merge_gap;
    let metrics = match &args.metrics_listen {
        Some(listen) => {
            let listener = crate::web::bind(listen, "worker metrics").await?;
            let server = crate::web::metrics_server(listener, &options)?;
            tracing::info!(url = %format!("{}metrics", http_url(server.addr)), "worker metrics listening");
            Some(server)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: releasing leases");
        let _ = stop_tx.send(true);
    });
    let summary = worker::run(options, stop_rx).await;
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    let summary = summary?;
    tracing::info!(
        completed = summary.completed,
        failed = summary.failed,
        released = summary.released,
        "worker stopped"
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Run a whole sweep on this machine: a coordinator and N workers in one process over
    /// loopback gRPC, with a progress bar; writes the exports at the end.
    Run(SweepRunArgs),
    /// Re-queue every failed task of a stopped sweep with a fresh attempt budget.
    RetryFailed {
        /// The sweep's state directory.
        state_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SweepRunArgs {
    /// The sweep spec (TOML).
    pub spec: PathBuf,
    /// Workers to run in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Start over: move the state directory's earlier sweep aside.
    #[arg(long)]
    pub new_sweep: bool,
    /// HF cache directory for the workers.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub async fn sweep(command: SweepCommand) -> Result<()> {
    match command {
        SweepCommand::Run(args) => sweep_run(args).await,
        SweepCommand::RetryFailed { state_dir } => {
            let mut state = SweepState::open_existing(&state_dir)?;
            let n = state.transaction(|s| s.decide(|d| Ok(d.retry_failed())))?;
            println!("{n} failed task(s) re-queued in {}", state_dir.display());
            Ok(())
        }
    }
}

async fn sweep_run(args: SweepRunArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let spec = load_spec(&args.spec)?;
    let token = sweep_token(&spec)?;
    let state_dir = spec.state_dir.clone();
    let mut state = SweepState::open(spec.clone(), open_mode(args.new_sweep))?;
    let local_hub = serve_local_checkpoints(&spec).await?;
    let hub = HubSettings {
        endpoint: local_hub
            .as_ref()
            .map(RunningHub::endpoint)
            .or_else(|| spec.hub.endpoint.clone()),
        token: spec.hub.token.clone(),
        cache_dir: None,
    };
    resolve_grid(&mut state, &hub).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    // Loopback only, inside this process: no TLS needed. The workers hear of the Hub the
    // checkpoints were resolved on.
    let announced = hub.endpoint.clone().unwrap_or_default();
    let running = RunningCoordinator::start(state, listener, token.clone(), announced, None)?;
    // The dashboard is always on here, on loopback unless the spec says where.
    let listen = spec.dashboard.listen.as_deref().unwrap_or("127.0.0.1:0");
    let dashboard = start_dashboard(listen, &running, &token).await?;
    println!("dashboard: {}?token={token}", http_url(dashboard.addr));
    let mut options = WorkerOptions::new(format!("http://{}", running.addr), token);
    options.cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| local_hub.as_ref().map(|_| state_dir.join("hf-cache")));
    options.give_up_after = Duration::from_secs(30);
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = start_local_workers(args.workers, &options, &stop_rx);

    let interrupted = follow_progress(&running, &workers).await?;
    let _ = stop_tx.send(true);
    let worker_error = join_workers(workers).await;
    let status = running.state.status().await?;
    dashboard.stop().await;
    running.stop().await;
    if let Some(hub) = local_hub {
        let _ = hub.shutdown().await;
    }
    write_outputs(&state_dir, &status)?;
    if interrupted {
        println!("interrupted: run the same command again to resume");
    } else if status.failed > 0 {
        println!(
            "{} task(s) failed; `neuromfa sweep retry-failed {}` re-queues them",
            status.failed,
            state_dir.display()
        );
    }
    if let Some(e) = worker_error {
        if status.pending + status.leased > 0 {
            return Err(e.context("workers stopped before the sweep finished"));
        }
    }
    Ok(())
}

/// A loopback Hub serving the spec's local checkpoint tree (`hub.serve_dir`), if it names
/// one: workers download from it into a cache inside the state directory, the same path
/// real downloads take, with no network.
async fn serve_local_checkpoints(spec: &SweepSpec) -> Result<Option<RunningHub>> {
    let Some(dir) = &spec.hub.serve_dir else {
        return Ok(None);
    };
    if !dir.is_dir() {
        bail!("hub.serve_dir {} is not a directory", dir.display());
    }
    let config = HubServerConfig {
        root: dir.clone(),
        ..HubServerConfig::default()
    };
    let hub = hub_server::spawn(config, ([127, 0, 0, 1], 0).into())
        .await
        .with_context(|| format!("serving {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), endpoint = %hub.endpoint(), "serving local checkpoints");
    Ok(Some(hub))
}

/// `count` workers in this process, each with `options` and a host name of its own.
fn start_local_workers(
    count: usize,
    options: &WorkerOptions,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<Result<WorkerSummary>>> {
    (0..count)
        .map(|i| {
            let mut options = options.clone();
            options.host = format!("{}-local{i}", worker::hostname());
            tokio::spawn(worker::run(options, stop.clone()))
        })
        .collect()
}

/// Shows progress until the sweep is finished, every worker has stopped, or the user
/// interrupts; returns whether the user did.
async fn follow_progress(
    running: &RunningCoordinator,
    workers: &[JoinHandle<Result<WorkerSummary>>],
) -> Result<bool> {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} tasks {msg} [{elapsed}, eta {eta}]")
    {
        bar.set_style(style);
    }
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut interrupted = false;
    loop {
        let status = running.status().await?;
        bar.set_length(status.total as u64);
        bar.set_position((status.done + status.failed) as u64);
        bar.set_message(format!("({} failed)", status.failed));
        if status.pending + status.leased == 0 {
            break;
        }
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::select! {
            _ = &mut stop => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    bar.finish_and_clear();
    Ok(interrupted)
}

/// Waits for every worker; the last error any of them ended with.
async fn join_workers(workers: Vec<JoinHandle<Result<WorkerSummary>>>) -> Option<anyhow::Error> {
    let mut worker_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => worker_error = Some(e),
            Err(e) => worker_error = Some(anyhow::anyhow!("worker task: {e}")),
        }
    }
    worker_error
}

/// The exports, the final status and, once anything is done, the report.
fn write_outputs(state_dir: &Path, status: &StatusReport) -> Result<()> {
    let files = export::export(state_dir, None)?;
    print_status(status);
    println!(
        "exports: {} ({} files)",
        state_dir.join("exports").display(),
        files.len()
    );
    if status.done > 0 {
        let report = crate::report::ReportArgs {
            state_dir: state_dir.to_path_buf(),
            out: None,
            evals: Vec::new(),
            steps: Vec::new(),
            benchmarks: Vec::new(),
        };
        let written = crate::report::write(&report)?;
        println!(
            "report: {} ({} files: plots as SVG and PNG, tables, report.html)",
            state_dir.join("report/report.html").display(),
            written.len()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator's URL (https:// when it serves TLS).
    #[arg(env = "NEUROMFA_COORDINATOR")]
    pub url: String,
    /// Redraw every two seconds until interrupted or the sweep finishes.
    #[arg(long)]
    pub watch: bool,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// File holding the sweep token (else NEUROMFA_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an https:// coordinator's certificate.
    #[arg(long, env = "NEUROMFA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

pub async fn fetch_status(url: &str, token: &str, tls_ca: Option<&Path>) -> Result<StatusReport> {
    let mut client = worker::connect(url, token, tls_ca)?;
    let reply = match client.status(proto::StatusRequest {}).await {
        Ok(reply) => reply,
        Err(status) => {
            let why = crate::tls::tls_failure(url, &status)
                .await
                .unwrap_or_else(|| status.message().to_string());
            bail!("coordinator {url}: {why}");
        }
    };
    serde_json::from_str(&reply.into_inner().status_json).context("unreadable status")
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let token = client_token(args.token_file.as_deref())?;
    loop {
        let status = fetch_status(&args.url, &token, args.tls_ca.as_deref()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print_status(&status);
        }
        if !args.watch || status.pending + status.leased == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn print_status(s: &StatusReport) {
    println!(
        "sweep {}: {}/{} done, {} leased, {} pending, {} failed, {} skipped; {} repeated result(s) ignored{}",
        s.sweep,
        s.done,
        s.total,
        s.leased,
        s.pending,
        s.failed,
        s.skipped,
        s.duplicates_ignored,
        if s.draining { " (draining)" } else { "" }
    );
    let eta = s
        .eta_seconds
        .map_or("-".to_string(), |e| format!("{:.0} s", e));
    println!("throughput {:.2} tasks/s, eta {eta}", s.throughput_per_s);
    if !s.workers.is_empty() {
        println!("workers:");
        for w in &s.workers {
            println!(
                "  {:<28} {:>3} cores {:>4} leased  seen {:.1} s ago  v{}",
                w.id, w.cores, w.leased, w.seconds_since_seen, w.version
            );
        }
    }
    println!("models:");
    for m in &s.models {
        let e = m.latest_e.map_or("-".into(), |e| format!("{e:.4}"));
        let step = m.latest_step.map_or("-".into(), |v| v.to_string());
        let formats: Vec<String> = m
            .weights_formats
            .iter()
            .map(|(format, steps)| format!("{format} ({steps} steps)"))
            .collect();
        let formats = match formats.is_empty() {
            true => "not resolved yet".to_string(),
            false => formats.join(", "),
        };
        println!(
            "  {:<40} {:>6}/{:<6} latest step {step:>7}  E {e}  fetched {:.1} MB in {} requests, {:.1} s  weights: {formats}",
            m.model,
            m.done,
            m.total,
            m.fetch.bytes_fetched as f64 / 1e6,
            m.fetch.requests,
            m.fetch.fetch_ms as f64 / 1000.0
        );
    }
    if !s.duplicate_steps.is_empty() {
        println!("steps serving the same weights as a later step:");
        for d in &s.duplicate_steps {
            println!(
                "  {} step {} = step {} (weights {})",
                d.model,
                d.step,
                d.duplicate_of,
                &d.weights_sha256[..d.weights_sha256.len().min(16)]
            );
        }
    }
    if !s.failures.is_empty() {
        println!("failures:");
        for f in &s.failures {
            println!(
                "  {} step {} seed {} ({} attempts): {}",
                f.model, f.step, f.seed, f.attempts, f.error
            );
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The sweep's state directory.
    pub state_dir: PathBuf,
    /// Where to write (default: STATE_DIR/exports).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn export_command(args: ExportArgs) -> Result<()> {
    let files = export::export(&args.state_dir, args.out.as_deref())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
