//! `neuromfa worker`: registers with a coordinator, leases a checkpoint's seeds, fetches
//! the weights through hf-hub, runs the pipeline and streams each result back as it is
//! ready. Heartbeats keep leases alive through long downloads; a coordinator that goes
//! away is retried with backoff; shutdown gives unfinished leases back.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use neuromfa_common::checkpoint::FetchMode;
use neuromfa_common::{analyze_seed, analyze_seeds, AnalysisParams, DistanceMode, SeedResult};
use neuromfa_hub::cache::CheckpointCache;
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::ranges::{fetch_for_seeds_with, FetchedWeights, RangeOptions};
use neuromfa_hub::HubSettings;
use rayon::prelude::*;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::auth::AddToken;
use crate::proto;
use crate::proto::coordinator_client::CoordinatorClient;
use crate::tls;

pub type Client = CoordinatorClient<InterceptedService<Channel, AddToken>>;

/// How a worker connects and what it may use.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub coordinator: String,
    pub token: String,
    /// CA certificate (PEM) to trust for an https:// coordinator (else the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// Overrides the Hub endpoint the coordinator announces.
    pub hub_endpoint: Option<String>,
    pub hub_token: Option<String>,
    /// HF cache directory (default: the standard one).
    pub cache_dir: Option<PathBuf>,
    /// Evict finished checkpoints to keep the cache under this many bytes.
    pub cache_max_bytes: Option<u64>,
    /// Seeds leased at a time (all from one checkpoint).
    pub max_tasks: u32,
    /// Give up when the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// Name reported to the coordinator.
    pub host: String,
    /// Overrides the fetch mode the coordinator announces.
    pub fetch_mode: Option<FetchMode>,
    /// Overrides the merge gap the coordinator announces.
    pub merge_gap: Option<u64>,
}

impl WorkerOptions {
    pub fn new(coordinator: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            token: token.into(),
            tls_ca: None,
            hub_endpoint: None,
            hub_token: None,
            cache_dir: None,
            cache_max_bytes: None,
            max_tasks: 64,
            give_up_after: Duration::from_secs(600),
            host: worker_name(),
            fetch_mode: None,
            merge_gap: None,
        }
    }
}

/// The name a worker reports: its host, and under Slurm first its job (array task), so
/// `status` tells apart the many workers of one node and names what to `scancel` (first,
/// because the coordinator keeps only the first 40 characters).
pub fn worker_name() -> String {
    let slurm = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        slurm("SLURM_ARRAY_JOB_ID"),
        slurm("SLURM_ARRAY_TASK_ID"),
        slurm("SLURM_JOB_ID"),
    ) {
        (Some(job), Some(task), _) => format!("slurm-{job}_{task}@{}", hostname()),
        (_, _, Some(job)) => format!("slurm-{job}@{}", hostname()),
        _ => hostname(),
    }
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerSummary {
    pub completed: usize,
    pub failed: usize,
    pub released: usize,
}

/// Connects lazily: the channel reconnects by itself once the coordinator is back. An
/// `https://` URL is dialled over TLS, trusting `tls_ca` (PEM) or else the system's roots.
pub fn connect(url: &str, token: &str, tls_ca: Option<&Path>) -> Result<Client> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("`{url}` is not a coordinator URL (e.g. http://host:50051)"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(tls::client_config(tls_ca)?)
            .with_context(|| format!("setting up TLS for {url}"))?;
    } else if let Some(ca) = tls_ca {
        bail!(
            "a TLS CA ({}) is given but `{url}` is not an https:// URL; dial https:// to use TLS",
            ca.display()
        );
    }
    let channel = endpoint.connect_lazy();
    let token = AddToken::new(token).map_err(|e| anyhow!(e))?;
    Ok(CoordinatorClient::with_interceptor(channel, token))
}

fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted | Code::Internal
    )
}

/// Retries `call` while the coordinator is unreachable, with capped exponential backoff;
/// gives up after `give_up_after` of continuous failure, or at once on a refusal.
async fn with_retry<T, F, Fut>(
    options: &WorkerOptions,
    shutdown: &watch::Receiver<bool>,
    what: &str,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let status = match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        if status.code() == Code::Unauthenticated {
            bail!(
                "coordinator {} refused us: {}",
                options.coordinator,
                status.message()
            );
        }
        if let Some(why) = tls::tls_failure(&options.coordinator, &status).await {
            bail!("coordinator {}: {why}", options.coordinator);
        }
        if !transient(&status) {
            bail!("{what}: {}", status.message());
        }
        if started.elapsed() >= options.give_up_after {
            bail!(
                "coordinator {} unreachable for {:.0} s ({what}): {}",
                options.coordinator,
                started.elapsed().as_secs_f64(),
                status.message()
            );
        }
        if *shutdown.borrow() {
            bail!("stopping");
        }
        tracing::warn!(coordinator = %options.coordinator, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "{what}: coordinator unavailable");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs until the sweep is finished, `shutdown` turns true, or the coordinator is lost.
pub async fn run(
    options: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerSummary> {
    let client = connect(
        &options.coordinator,
        &options.token,
        options.tls_ca.as_deref(),
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let registration = {
        let host = options.host.clone();
        with_retry(&options, &shutdown, "register", || {
            let mut c = client.clone();
            let request = proto::RegisterRequest {
                host: host.clone(),
                cores,
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            async move { c.register(request).await }
        })
        .await?
    };
    let worker_id = registration.worker_id.clone();
    tracing::info!(worker = %worker_id, sweep = %registration.sweep, "registered");
    let hub = HubSettings {
        endpoint: options
            .hub_endpoint
            .clone()
            .or_else(|| Some(registration.hub_endpoint.clone()).filter(|e| !e.is_empty())),
        token: options.hub_token.clone(),
        cache_dir: options.cache_dir.clone(),
    };
    let fetcher = Fetcher::new(hub).context("setting up the Hub client")?;
    let fetch_options = fetch_options(&options, &registration)?;
    tracing::info!(
        fetch_mode = %fetch_options.mode,
        merge_gap = fetch_options.merge_gap,
        "fetch settings"
    );
    let mut cache = CheckpointCache::new(options.cache_max_bytes);
    let heartbeat_every = Duration::from_millis(registration.heartbeat_ms.max(50));
    let mut summary = WorkerSummary::default();

    loop {
        if *shutdown.borrow() {
            break;
        }
        let lease = {
            let worker_id = worker_id.clone();
            let max_tasks = options.max_tasks;
            with_retry(&options, &shutdown, "lease", || {
                let mut c = client.clone();
                let request = proto::LeaseRequest {
                    worker_id: worker_id.clone(),
                    max_tasks,
                };
                async move { c.lease(request).await }
            })
            .await
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(_) if *shutdown.borrow() => break,
            Err(e) => return Err(e),
        };
        if lease.tasks.is_empty() {
            if lease.sweep_finished {
                tracing::info!(worker = %worker_id, "sweep finished");
                break;
            }
            let wait = Duration::from_millis(lease.retry_after_ms.max(50));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let params: AnalysisParams = serde_json::from_str(&lease.params_json)
            .context("the coordinator sent analysis settings this worker cannot read")?;
        let outcome = run_checkpoint(
            &client,
            &options,
            &worker_id,
            &fetcher,
            &fetch_options,
            &mut cache,
            params,
            lease.tasks,
            heartbeat_every,
            shutdown.clone(),
        )
        .await?;
        summary.completed += outcome.completed;
        summary.failed += outcome.failed;
        summary.released += outcome.released;
    }
    Ok(summary)
}

/// One lease: every task is a seed of the same checkpoint.
#[allow(clippy::too_many_arguments)]
async fn run_checkpoint(
    client: &Client,
    options: &WorkerOptions,
    worker_id: &str,
    fetcher: &Fetcher,
    fetch_options: &RangeOptions,
    cache: &mut CheckpointCache,
    params: AnalysisParams,
    tasks: Vec<proto::TaskLease>,
    heartbeat_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerSummary> {
    let first = &tasks[0];
    let (model, revision, step) = (first.model.clone(), first.revision.clone(), first.step);
    let span = tracing::info_span!("checkpoint", model = %model, step, revision = %revision);
    let held: Arc<Mutex<HashSet<i64>>> =
        Arc::new(Mutex::new(tasks.iter().map(|t| t.task_id).collect()));

    // Heartbeats run beside the download and the computation.
    let (stop_heartbeat, mut heartbeat_stopped) = watch::channel(false);
    let heartbeat = {
        let mut client = client.clone();
        let held = held.clone();
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(heartbeat_every) => {}
                    _ = heartbeat_stopped.changed() => return,
                }
                let ids: Vec<i64> = held
                    .lock()
                    .map(|h| h.iter().copied().collect())
                    .unwrap_or_default();
                if ids.is_empty() {
                    continue;
                }
                let request = proto::HeartbeatRequest {
                    worker_id: worker_id.clone(),
                    task_ids: ids,
                };
                match client.heartbeat(request).await {
                    Ok(reply) => {
                        let lost = reply.into_inner().lost_task_ids;
                        if !lost.is_empty() {
                            tracing::warn!(lost = ?lost, "leases lost; results will still be offered");
                        }
                    }
                    Err(status) => tracing::warn!(error = %status.message(), "heartbeat failed"),
                }
            }
        })
    };

    let mut summary = WorkerSummary::default();
    let result = async {
        let seeds: Vec<u32> = tasks.iter().map(|t| t.seed).collect();
        let fetched = tokio::select! {
            fetched = fetch_for_seeds_with(
                fetcher, &model, &revision, &params, &seeds, fetch_options,
            ) => fetched,
            _ = shutdown.changed() => {
                return Ok::<_, anyhow::Error>(None);
            }
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                let permanent = !e.is_transient();
                tracing::warn!(error = %e, permanent, "fetch failed");
                for t in &tasks {
                    report_failure(
                        client,
                        options,
                        worker_id,
                        t,
                        &format!("fetch: {e}"),
                        permanent,
                        &shutdown,
                    )
                    .await?;
                    summary.failed += 1;
                }
                return Ok(Some(()));
            }
        };
        let metrics = fetched.metrics();
        let cached = match &fetched {
            FetchedWeights::Full(checkpoint) => Some(checkpoint.clone()),
            FetchedWeights::Ranged(_) => None,
        };
        if let Some(checkpoint) = &cached {
            cache.note_fetched(checkpoint);
        }
        tracing::info!(
            mode = %metrics.mode,
            bytes = metrics.bytes_downloaded,
            file_bytes = metrics.file_bytes,
            requests = metrics.requests,
            fetch_ms = metrics.elapsed.as_millis() as u64,
            "checkpoint ready"
        );

        // The pipeline runs on rayon; each seed's result comes back as soon as it is ready.
        let (done_tx, mut done_rx) =
            mpsc::unbounded_channel::<(proto::TaskLease, Result<SeedResult, String>, u64)>();
        let compute_tasks = tasks.clone();
        let compute = tokio::task::spawn_blocking(move || {
            let weights = match fetched.open() {
                Ok(w) => w,
                Err(e) => {
                    for t in compute_tasks {
                        let _ = done_tx.send((t, Err(format!("{e}")), 0));
                    }
                    return;
                }
            };
            if params.distance == DistanceMode::OneHop {
                compute_tasks.into_par_iter().for_each(|t| {
                    let started = Instant::now();
                    let result = analyze_seed(weights.as_ref(), &params, t.step, t.seed)
                        .map(|a| a.result)
                        .map_err(|e| e.to_string());
                    let _ = done_tx.send((t, result, started.elapsed().as_millis() as u64));
                });
                return;
            }
            // Shortest paths: the seeds share every weight read, so they run together and
            // their results come at once; compute time is split evenly between them.
            let started = Instant::now();
            let seeds: Vec<u32> = compute_tasks.iter().map(|t| t.seed).collect();
            let analyses = analyze_seeds(weights.as_ref(), &params, step, &seeds);
            let share = started.elapsed().as_millis() as u64 / seeds.len().max(1) as u64;
            match analyses {
                Ok(analyses) => {
                    for (t, analysis) in compute_tasks.into_iter().zip(analyses) {
                        let result = analysis.map(|a| a.result).map_err(|e| e.to_string());
                        let _ = done_tx.send((t, result, share));
                    }
                }
                Err(e) => {
                    for t in compute_tasks {
                        let _ = done_tx.send((t, Err(e.to_string()), share));
                    }
                }
            }
        });

        // Fetch costs are shared by the checkpoint's seeds; split them so sums stay exact.
        let n = tasks.len() as u64;
        let mut index = 0u64;
        let share = |total: u64, i: u64| total / n + u64::from(i < total % n);
        loop {
            let next = tokio::select! {
                next = done_rx.recv() => next,
                _ = shutdown.changed() => return Ok(None),
            };
            let Some((task, result, compute_ms)) = next else {
                break;
            };
            let task_span = tracing::info_span!("task", seed = task.seed, attempt = task.attempt);
            match result {
                Ok(result) => {
                    let request = proto::CompleteRequest {
                        worker_id: worker_id.to_string(),
                        task_id: task.task_id,
                        attempt: task.attempt,
                        result_json: serde_json::to_string(&result).unwrap_or_default(),
                        bytes_fetched: share(metrics.bytes_downloaded, index),
                        requests: share(u64::from(metrics.requests), index) as u32,
                        fetch_ms: share(metrics.elapsed.as_millis() as u64, index),
                        compute_ms,
                        fetch_mode: metrics.mode.to_string(),
                    };
                    index += 1;
                    let reply = with_retry(options, &shutdown, "complete", || {
                        let mut c = client.clone();
                        let request = request.clone();
                        async move { c.complete(request).await }
                    })
                    .instrument(task_span.clone())
                    .await?;
                    task_span.in_scope(|| {
                        tracing::info!(
                            alpha0 = result.alpha0,
                            width = result.width,
                            compute_ms,
                            accepted = reply.accepted,
                            "task done"
                        );
                    });
                    summary.completed += 1;
                }
                Err(message) => {
                    task_span.in_scope(|| tracing::warn!(error = %message, "task failed"));
                    // The checkpoint itself is bad (corrupt, missing tensor): retrying
                    // the same bytes cannot help.
                    report_failure(client, options, worker_id, &task, &message, true, &shutdown)
                        .await?;
                    summary.failed += 1;
                }
            }
            if let Ok(mut h) = held.lock() {
                h.remove(&task.task_id);
            }
        }
        let _ = compute.await;
        if let Some(checkpoint) = &cached {
            cache.note_finished(checkpoint);
        }
        Ok(Some(()))
    }
    .instrument(span.clone())
    .await;

    let _ = stop_heartbeat.send(true);
    let _ = heartbeat.await;
    let finished = result?;
    if finished.is_none() {
        // Shutting down: give back what is not done so others take it at once.
        let ids: Vec<i64> = held
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        if !ids.is_empty() {
            let request = proto::ReleaseRequest {
                worker_id: worker_id.to_string(),
                task_ids: ids,
            };
            let mut c = client.clone();
            match tokio::time::timeout(Duration::from_secs(5), c.release(request)).await {
                Ok(Ok(reply)) => summary.released += reply.into_inner().released as usize,
                _ => span.in_scope(|| tracing::warn!("could not release leases; they will lapse")),
            }
        }
    }
    cache.evict_if_needed();
    Ok(summary)
}

/// The worker's flags over what the coordinator announced, over the defaults.
fn fetch_options(
    options: &WorkerOptions,
    registration: &proto::RegisterReply,
) -> Result<RangeOptions> {
    let announced = if registration.fetch_mode.is_empty() {
        FetchMode::default()
    } else {
        registration.fetch_mode.parse().map_err(|e: String| {
            anyhow!("the coordinator announced a fetch mode this worker cannot use: {e}")
        })?
    };
    let defaults = RangeOptions::default();
    Ok(RangeOptions {
        mode: options.fetch_mode.unwrap_or(announced),
        merge_gap: options
            .merge_gap
            .or((registration.merge_gap > 0).then_some(registration.merge_gap))
            .unwrap_or(defaults.merge_gap),
        ..defaults
    })
}

async fn report_failure(
    client: &Client,
    options: &WorkerOptions,
    worker_id: &str,
    task: &proto::TaskLease,
    error: &str,
    permanent: bool,
    shutdown: &watch::Receiver<bool>,
) -> Result<()> {
    let request = proto::FailRequest {
        worker_id: worker_id.to_string(),
        task_id: task.task_id,
        attempt: task.attempt,
        error: error.to_string(),
        permanent,
    };
    with_retry(options, shutdown, "fail", || {
        let mut c = client.clone();
        let request = request.clone();
        async move { c.fail(request).await }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(fetch_mode: &str, merge_gap: u64) -> proto::RegisterReply {
        proto::RegisterReply {
            fetch_mode: fetch_mode.to_string(),
            merge_gap,
            ..proto::RegisterReply::default()
        }
    }

    #[test]
    fn worker_flags_override_the_sweep_which_overrides_the_defaults() {
        let mut options = WorkerOptions::new("http://127.0.0.1:1", "t");
        let defaults = RangeOptions::default();

        let chosen = fetch_options(&options, &registration("", 0)).unwrap();
        assert_eq!(
            (chosen.mode, chosen.merge_gap),
            (defaults.mode, defaults.merge_gap)
        );

        let chosen = fetch_options(&options, &registration("ranges", 1024)).unwrap();
        assert_eq!((chosen.mode, chosen.merge_gap), (FetchMode::Ranges, 1024));

        options.fetch_mode = Some(FetchMode::Full);
        options.merge_gap = Some(99);
        let chosen = fetch_options(&options, &registration("ranges", 1024)).unwrap();
        assert_eq!((chosen.mode, chosen.merge_gap), (FetchMode::Full, 99));

        let refused = fetch_options(&options, &registration("sideways", 0)).unwrap_err();
        assert!(refused.to_string().contains("sideways"), "{refused}");
    }
}
