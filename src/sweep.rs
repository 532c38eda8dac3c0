//! The sweep commands: `coordinator`, `worker`, `sweep run`, `sweep retry-failed`,
//! `sweep resume`, `status`, `export`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use neuromfa_coordinator::state::{recorded_spec, StateError};
use neuromfa_coordinator::status::Progress;
use neuromfa_coordinator::{export, OpenMode, StatusReport, SweepEnd, SweepSpec, SweepState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use neuromfa_common::checkpoint::FetchMode;
use neuromfa_hub::HubSettings;
use neuromfa_hub_server::{self as hub_server, HubServerConfig, RunningHub};

use crate::auth::{generate_token, os_random};
use crate::exit;
use crate::integrity::{resolve_again, resolve_awaited};
use crate::proto;
use crate::server::{ClusterBudget, RunningCoordinator};
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

/// The spec's token (or `NEUROMFA_TOKEN`); without one, a fresh token for a coordinator
/// listening on `listen` is written to `STATE_DIR/token` (readable by the owner only) for
/// workers started elsewhere.
pub(crate) fn sweep_token(spec: &SweepSpec, listen: &str) -> Result<String> {
    if let Some(token) = recorded_token(spec) {
        return Ok(token);
    }
    let path = spec.state_dir.join(TOKEN_FILE);
    std::fs::create_dir_all(&spec.state_dir)
        .with_context(|| format!("creating {}", spec.state_dir.display()))?;
    let token = generate_token(listen, os_random)?;
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

/// The cluster's budget of Hub requests, as the spec's `[hub]` budget keys set it.
fn cluster_budget(spec: &SweepSpec) -> ClusterBudget {
    let budgets = neuromfa_coordinator::budget::cluster_budgets(spec.hub.quotas());
    std::sync::Arc::new(std::sync::Mutex::new(budgets))
}

/// Prints the URL a service can be reached at, once it listens, as the one line of its
/// stdout: whoever started it (`slurm submit`, a script, a test) reads the port the system
/// chose for `:0` there instead of picking one. A reader that has gone is no reason to stop.
pub(crate) fn announce_listening(url: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{url}").and_then(|()| out.flush());
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
    let token = sweep_token(&spec, &spec.coordinator.listen)?;
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
    let budget = cluster_budget(&spec);
    let awaited = state.await_resolution();
    let listener = tokio::net::TcpListener::bind(&spec.coordinator.listen)
        .await
        .with_context(|| format!("cannot listen on {}", spec.coordinator.listen))?;
    let running = RunningCoordinator::start(
        state,
        listener,
        token.clone(),
        announced_hub(&spec),
        tls,
        budget.clone(),
    )?;
    let _resolution = start_resolution(&running, awaited, &hub);
    // With port 0 the system chose one: workers must be told that one.
    spec.coordinator.listen = running.addr.to_string();
    record_listening(&state_dir, running.addr);
    let url = dial_address(&spec);
    tracing::info!(
        sweep = %spec.name, addr = %running.addr, state_dir = %state_dir.display(), tls = spec.tls(),
        "coordinator listening; start workers with: NEUROMFA_COORDINATOR={url} neuromfa worker"
    );
    // After the log line: whoever reads this may act on the log at once.
    announce_listening(&url);
    let grace = Duration::from_secs(args.drain_seconds);
    let resume_hint =
        format!("`neuromfa sweep resume {url}` resumes it (a probe that succeeds does too)");
    let retry_hint = format!("`neuromfa sweep retry-failed {url}`");
    // The end last exported, and whether leasing was stopped at the last look.
    let mut exported: Option<SweepEnd> = None;
    let mut was_stopped = false;
    let dashboard = match &spec.dashboard.listen {
        Some(listen) => {
            let dashboard = start_dashboard(listen, &running, &token).await?;
            let dashboard_url = http_url(dashboard.addr);
            tracing::info!(
                url = %dashboard_url,
                "dashboard listening; open it once with ?token= and the sweep token, scrape /metrics with `Authorization: Bearer` and the token"
            );
            // The second line of stdout, after the coordinator's own URL.
            announce_listening(&format!("dashboard {dashboard_url}"));
            Some(dashboard)
        }
        None => None,
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping: no new leases; in-flight work may finish for {} s", args.drain_seconds);
                stop_dashboard(dashboard).await;
                running.drain_and_stop(grace).await;
                // The tables reflect everything acknowledged, finished or not.
                let files = export::export(&state_dir, None)?;
                tracing::info!(exports = %state_dir.join("exports").display(), files = files.len(), "stopped");
                if args.exit_when_done {
                    return Err(exit::interrupted("start the coordinator again to resume"));
                }
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let progress = match running.progress().await {
                    Ok(progress) => progress,
                    Err(e) => {
                        // Out of space: stop serving before saying why.
                        stop_dashboard(dashboard).await;
                        running.stop().await;
                        return Err(e);
                    }
                };
                let stopped = progress.stopped.is_some();
                if was_stopped && !stopped {
                    // Resumed: a Hub that refused when the coordinator started may answer now.
                    resolve_before_export(&running, &hub, grace).await;
                }
                was_stopped = stopped;
                let Some(end) = progress.end() else {
                    exported = None;
                    continue;
                };
                if args.exit_when_done {
                    if let SweepEnd::Stopped(reason) = &end {
                        running.state.announce_stop(reason.clone());
                    }
                    running.tell_workers_finished(grace).await;
                    if !stopped {
                        resolve_before_export(&running, &hub, grace).await;
                    }
                    // The last status, once every worker has said how its lease ended; the
                    // workers were told it stopped even if a late success resumed it.
                    let status = running.status().await?;
                    stop_dashboard(dashboard).await;
                    running.stop().await;
                    export::export(&state_dir, None)?;
                    log_end(&status.progress(), &state_dir);
                    let end = status.end().unwrap_or(end);
                    return exit::judge(&end, &status, &resume_hint, &retry_hint);
                }
                if exported.as_ref() != Some(&end) {
                    if !stopped {
                        resolve_before_export(&running, &hub, grace).await;
                    }
                    export::export(&state_dir, None)?;
                    log_end(&progress, &state_dir);
                    exported = Some(end);
                }
            }
        }
    }
}

/// Resolves the checkpoints `awaited` in the background while `running` serves (see
/// [`resolve_awaited`]), until done or until the set returned is dropped.
fn start_resolution(
    running: &RunningCoordinator,
    awaited: Vec<neuromfa_coordinator::spec::CheckpointKey>,
    hub: &HubSettings,
) -> tokio::task::JoinSet<()> {
    let (state, hub) = (running.state.clone(), hub.clone());
    let mut resolution = tokio::task::JoinSet::new();
    resolution.spawn(async move {
        if let Err(e) = resolve_awaited(state, awaited, hub).await {
            tracing::warn!(error = %format!("{e:#}"), "resolving checkpoints stopped; their tasks are leased unresolved");
        }
    });
    resolution
}

/// Resolves again, for up to `grace`, the checkpoints still unresolved, so that the
/// exports about to be written name every checkpoint's weights.
async fn resolve_before_export(running: &RunningCoordinator, hub: &HubSettings, grace: Duration) {
    let again = resolve_again(&running.state, hub, &running.state.budget);
    match tokio::time::timeout(grace, again).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "resolving checkpoints again"),
        Err(_) => tracing::warn!("resolving checkpoints again took too long; exporting without"),
    }
}

/// Says in the log how the sweep ended (or stopped) and where its exports are.
fn log_end(progress: &Progress, state_dir: &Path) {
    let exports = state_dir.join("exports");
    match &progress.stopped {
        Some(reason) if progress.pending + progress.leased > 0 => tracing::error!(
            reason = %reason, pending = progress.pending, exports = %exports.display(),
            "sweep stopped by a systemic failure"
        ),
        _ => tracing::info!(
            done = progress.done, failed = progress.failed, exports = %exports.display(),
            "sweep finished"
        ),
    }
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
    /// spec's `hub.merge_gap`, else the gap the measured link prices.
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
    /// Re-queue every failed task with a fresh attempt budget: over the coordinator's RPC
    /// while it runs, else in the state directory.
    RetryFailed(OperatorArgs),
    /// Resume leasing after the breaker stopped the sweep (once its cause is fixed): over
    /// the coordinator's RPC while it runs, else in the state directory.
    Resume(OperatorArgs),
}

/// Which sweep an operator's command is for.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The sweep's state directory (its coordinator, if one runs on it, is told over RPC
    /// at the address and with the token recorded there), or the URL of its coordinator
    /// (http:// or https://).
    pub target: String,
    /// File holding the sweep token (else NEUROMFA_TOKEN; for a state directory, also the
    /// token recorded there).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an https:// coordinator's certificate.
    #[arg(long, env = "NEUROMFA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
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
        SweepCommand::RetryFailed(args) => {
            let (n, place) = match operator_target(&args)? {
                Target::Offline(mut state, dir) => {
                    let n = state.transaction(|s| s.decide(|d| Ok(d.retry_failed())))?;
                    (n as u32, dir.display().to_string())
                }
                Target::Live(mut client, url) => {
                    let reply = client
                        .retry_failed(proto::RetryFailedRequest {})
                        .await
                        .map_err(|status| refused(&url, status))?;
                    (
                        reply.into_inner().requeued,
                        format!("the coordinator at {url}"),
                    )
                }
            };
            writeln!(
                std::io::stdout().lock(),
                "{n} failed task(s) re-queued in {place}"
            )?;
            Ok(())
        }
        SweepCommand::Resume(args) => {
            let (stopped_because, place) = match operator_target(&args)? {
                Target::Offline(mut state, dir) => {
                    let reason = state.transaction(|s| s.decide(|d| Ok(d.resume())))?;
                    (reason.unwrap_or_default(), dir.display().to_string())
                }
                Target::Live(mut client, url) => {
                    let reply = client
                        .resume(proto::ResumeRequest {})
                        .await
                        .map_err(|status| refused(&url, status))?;
                    (
                        reply.into_inner().stopped_because,
                        format!("the coordinator at {url}"),
                    )
                }
            };
            let mut out = std::io::stdout().lock();
            match stopped_because.is_empty() {
                true => writeln!(out, "leasing was not stopped in {place}")?,
                false => writeln!(
                    out,
                    "leasing resumed in {place}; it had stopped: {stopped_because}"
                )?,
            }
            Ok(())
        }
    }
}

/// Where an operator's command goes.
enum Target {
    /// A stopped sweep's state, open (and locked) here.
    Offline(Box<SweepState>, PathBuf),
    /// A running coordinator, and its URL.
    Live(worker::Client, String),
}

fn operator_target(args: &OperatorArgs) -> Result<Target> {
    if args.target.starts_with("http://") || args.target.starts_with("https://") {
        let token = client_token(args.token_file.as_deref())?;
        let client = worker::connect(&args.target, &token, args.tls_ca.as_deref())?;
        return Ok(Target::Live(client, args.target.clone()));
    }
    let dir = PathBuf::from(&args.target);
    match SweepState::open_existing(&dir) {
        Ok(state) => Ok(Target::Offline(Box::new(state), dir)),
        // A coordinator runs on it: tell that one.
        Err(StateError::Locked { .. }) => {
            let mut spec = SweepSpec {
                state_dir: dir.clone(),
                ..recorded_spec(&dir)?
            };
            if let Some(addr) = recorded_listening(&dir) {
                spec.coordinator.listen = addr;
            }
            let token = match client_token(args.token_file.as_deref()) {
                Ok(token) => token,
                Err(_) => recorded_token(&spec).with_context(|| {
                    format!(
                        "a coordinator runs on {} but no token was found for it: set \
                         NEUROMFA_TOKEN or pass --token-file",
                        dir.display()
                    )
                })?,
            };
            let url = local_address(&spec);
            let client = worker::connect(&url, &token, args.tls_ca.as_deref())?;
            Ok(Target::Live(client, url))
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the coordinator holding `state_dir` listens, beside its lock, so that operator
/// commands given the directory find it even when the system chose its port.
const LISTENING_FILE: &str = "listening";

fn record_listening(state_dir: &Path, addr: std::net::SocketAddr) {
    let path = state_dir.join(LISTENING_FILE);
    // Only spares the operator the URL: a directory that cannot take it is no error.
    if let Err(e) = std::fs::write(&path, addr.to_string()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the listening address");
    }
}

fn recorded_listening(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(LISTENING_FILE)).ok()?;
    let addr = text.trim();
    addr.parse::<std::net::SocketAddr>().ok()?;
    Some(addr.to_string())
}

/// Where this machine dials a coordinator of `spec`: the listen address, loopback for a
/// coordinator listening on every interface.
fn local_address(spec: &SweepSpec) -> String {
    match spec.coordinator.listen.parse::<std::net::SocketAddr>() {
        Ok(listen) => {
            let scheme = if spec.tls() { "https" } else { "http" };
            let ip = match listen.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
                ip => ip,
            };
            format!(
                "{scheme}://{}",
                std::net::SocketAddr::new(ip, listen.port())
            )
        }
        Err(_) => spec.worker_address(),
    }
}

/// A coordinator's refusal, or why it could not be reached, naming it.
fn refused(url: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator {url}: {}", status.message())
}

async fn sweep_run(args: SweepRunArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let spec = load_spec(&args.spec)?;
    // Coordinator and workers meet on loopback inside this process.
    const LISTEN: &str = "127.0.0.1:0";
    let token = sweep_token(&spec, LISTEN)?;
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
    let budget = cluster_budget(&spec);
    let awaited = state.await_resolution();
    let listener = tokio::net::TcpListener::bind(LISTEN)
        .await
        .context("cannot listen on loopback")?;
    // Loopback only, inside this process: no TLS needed. The workers hear of the Hub the
    // checkpoints are resolved on.
    let announced = hub.endpoint.clone().unwrap_or_default();
    let running = RunningCoordinator::start(
        state,
        listener,
        token.clone(),
        announced,
        None,
        budget.clone(),
    )?;
    let _resolution = start_resolution(&running, awaited, &hub);
    record_listening(&state_dir, running.addr);
    // The dashboard is always on here, on loopback unless the spec says where.
    let listen = spec.dashboard.listen.as_deref().unwrap_or("127.0.0.1:0");
    let dashboard = start_dashboard(listen, &running, &token).await?;
    writeln!(
        std::io::stdout().lock(),
        "dashboard: {}?token={token}",
        http_url(dashboard.addr)
    )?;
    let mut options = WorkerOptions::new(format!("http://{}", running.addr), token);
    // The workers fetch as whom the coordinator resolved: a token for a gated or private
    // repository (or a Hub that wants one) is needed by both.
    options.hub_token = hub.token.clone();
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
    let end = running.state.progress().await?.end();
    if matches!(end, Some(SweepEnd::Done | SweepEnd::Failed(_))) {
        resolve_before_export(&running, &hub, Duration::from_secs(30)).await;
    }
    let status = running.state.status().await?;
    dashboard.stop().await;
    running.stop().await;
    if let Some(hub) = local_hub {
        let _ = hub.shutdown().await;
    }
    let mut out = std::io::stdout().lock();
    write_outputs(&mut out, &state_dir, &status)?;
    drop(out);
    let again = "run the same command again to resume";
    if interrupted {
        return Err(exit::interrupted(again));
    }
    let Some(end) = status.end() else {
        let why = worker_error.unwrap_or_else(|| anyhow::anyhow!("no worker is left"));
        return Err(why.context("workers stopped before the sweep finished"));
    };
    let resume = format!("{again} (leasing starts with one probe task)");
    let retry = format!("`neuromfa sweep retry-failed {}`", state_dir.display());
    exit::judge(&end, &status, &resume, &retry)
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

/// Shows progress until the sweep is finished or stopped by the breaker, every worker has
/// stopped, or the user interrupts; returns whether the user did.
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
        let progress = running.progress().await?;
        bar.set_length(progress.total as u64);
        bar.set_position((progress.done + progress.failed) as u64);
        bar.set_message(format!("({} failed)", progress.failed));
        // Finished, or stopped by the breaker: a one-shot run does not wait for probes.
        if progress.end().is_some() {
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
fn write_outputs(out: &mut impl Write, state_dir: &Path, status: &StatusReport) -> Result<()> {
    let files = export::export(state_dir, None)?;
    print_status(out, status)?;
    writeln!(
        out,
        "exports: {} ({} files)",
        state_dir.join("exports").display(),
        files.len()
    )?;
    if status.done > 0 {
        let report = crate::report::ReportArgs {
            state_dir: state_dir.to_path_buf(),
            out: None,
            evals: Vec::new(),
            steps: Vec::new(),
            benchmarks: Vec::new(),
        };
        let written = crate::report::write(&report)?;
        writeln!(
            out,
            "report: {} ({} files: plots as SVG and PNG, tables, report.html)",
            state_dir.join("report/report.html").display(),
            written.len()
        )?;
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
    /// Wait until the sweep ends, then print its status and exit as `sweep run` does: 0
    /// when every task is done, 4 when tasks failed, 5 when the breaker stopped it.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: exit (1) when the coordinator has been unreachable this many seconds.
    #[arg(long, default_value_t = 600)]
    pub give_up_after: u64,
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
    let client = worker::connect(url, token, tls_ca)?;
    match ask_status(client).await {
        Ok(status) => status,
        Err(status) => {
            let why = crate::tls::tls_failure(url, &status)
                .await
                .unwrap_or_else(|| status.message().to_string());
            bail!("coordinator {url}: {why}");
        }
    }
}

/// One status call: the report, or the coordinator's refusal (or silence).
async fn ask_status(mut client: worker::Client) -> Result<Result<StatusReport>, tonic::Status> {
    let reply = client.status(proto::StatusRequest {}).await?;
    Ok(serde_json::from_str(&reply.into_inner().status_json).context("unreadable status"))
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let token = client_token(args.token_file.as_deref())?;
    if args.wait {
        return wait_for_end(&args, &token).await;
    }
    loop {
        let status = fetch_status(&args.url, &token, args.tls_ca.as_deref()).await?;
        show_status(
            &mut std::io::stdout().lock(),
            &status,
            args.json,
            args.watch,
        )?;
        if !args.watch || status.pending + status.leased == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn show_status(
    out: &mut impl Write,
    status: &StatusReport,
    json: bool,
    redraw: bool,
) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(status)?)?;
    } else {
        if redraw {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        print_status(out, status)?;
    }
    out.flush()?;
    Ok(())
}

/// `status --wait`: polls until the sweep ends (riding out a coordinator that restarts,
/// for up to --give-up-after), prints its status, and ends as the sweep did.
async fn wait_for_end(args: &StatusArgs, token: &str) -> Result<()> {
    let client = worker::connect(&args.url, token, args.tls_ca.as_deref())?;
    let give_up_after = Duration::from_secs(args.give_up_after);
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let status = match ask_status(client.clone()).await {
            Ok(status) => status?,
            Err(refusal) if refusal.code() != tonic::Code::Unavailable => {
                let why = crate::tls::tls_failure(&args.url, &refusal)
                    .await
                    .unwrap_or_else(|| refusal.message().to_string());
                bail!("coordinator {}: {why}", args.url);
            }
            Err(silence) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= give_up_after {
                    bail!(
                        "coordinator {} unreachable for {:.0} s: {}",
                        args.url,
                        since.elapsed().as_secs_f64(),
                        silence.message()
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        unreachable_since = None;
        if args.watch || status.end().is_some() {
            show_status(
                &mut std::io::stdout().lock(),
                &status,
                args.json,
                args.watch,
            )?;
        }
        if let Some(end) = status.end() {
            let resume = format!("`neuromfa sweep resume {}` resumes it", args.url);
            let retry = format!("`neuromfa sweep retry-failed {}`", args.url);
            return exit::judge(&end, &status, &resume, &retry);
        }
        tokio::time::sleep(Duration::from_secs(if args.watch { 2 } else { 1 })).await;
    }
}

fn print_status(out: &mut impl Write, s: &StatusReport) -> std::io::Result<()> {
    writeln!(
        out,
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
    )?;
    if let Some(b) = &s.stopped {
        let probe = b
            .next_probe_in_s
            .map_or("a probe task is out".to_string(), |t| {
                format!("next probe in {t:.0} s")
            });
        writeln!(
            out,
            "STOPPED by a systemic failure {:.0} s ago: {}\n  leasing resumes when a probe succeeds ({probe}, {} failed) or on `neuromfa sweep resume`",
            b.seconds_stopped, b.reason, b.failed_probes
        )?;
    }
    if s.retrying > 0 {
        writeln!(
            out,
            "{} pending task(s) waiting to retry after a temporary failure",
            s.retrying
        )?;
    }
    if s.unresolved > 0 {
        writeln!(out, "{} checkpoint(s) not resolved yet", s.unresolved)?;
    }
    let eta = s
        .eta_seconds
        .map_or("-".to_string(), |e| format!("{:.0} s", e));
    writeln!(
        out,
        "throughput {:.2} tasks/s, eta {eta}",
        s.throughput_per_s
    )?;
    if !s.workers.is_empty() {
        writeln!(out, "workers:")?;
        for w in &s.workers {
            writeln!(
                out,
                "  {:<28} {:>3} cores {:>4} leased  seen {:.1} s ago  v{}",
                w.id, w.cores, w.leased, w.seconds_since_seen, w.version
            )?;
        }
    }
    writeln!(out, "models:")?;
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
        writeln!(
            out,
            "  {:<40} {:>6}/{:<6} latest step {step:>7}  E {e}  fetched {:.1} MB in {} requests, {:.1} s  weights: {formats}",
            m.model,
            m.done,
            m.total,
            m.fetch.bytes_fetched as f64 / 1e6,
            m.fetch.requests,
            m.fetch.fetch_ms as f64 / 1000.0
        )?;
    }
    if !s.budget.is_empty() {
        println!("hub budget (the cluster's requests to the Hub's rate-limited buckets):");
        for b in &s.budget {
            let bucket = b.bucket.map_or("?", |b| b.as_str());
            let paused = match b.paused_seconds > 0.0 {
                // A 429 pauses grants, and so does the Hub reporting its window spent.
                true => format!(
                    ", paused {:.1} s more until the Hub's window resets",
                    b.paused_seconds
                ),
                false => String::new(),
            };
            println!(
                "  {bucket:<10} granted {} ({} in the last {:.0} s of {} allowed), waited {:.1} s in all, {} throttled{paused}",
                b.granted, b.granted_in_window, b.window_seconds, b.quota, b.waited_seconds, b.throttled
            );
        }
    }
    if !s.duplicate_steps.is_empty() {
        writeln!(out, "steps serving the same weights as a later step:")?;
        for d in &s.duplicate_steps {
            writeln!(
                out,
                "  {} step {} = step {} (weights {})",
                d.model,
                d.step,
                d.duplicate_of,
                &d.weights_sha256[..d.weights_sha256.len().min(16)]
            )?;
        }
    }
    if !s.failures.is_empty() {
        writeln!(out, "failures:")?;
        for f in &s.failures {
            writeln!(
                out,
                "  {} step {} seed {} ({} attempts): {}",
                f.model, f.step, f.seed, f.attempts, f.error
            )?;
        }
    }
    Ok(())
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
    let mut out = std::io::stdout().lock();
    for f in files {
        writeln!(out, "{}", f.display())?;
    }
    Ok(())
}
