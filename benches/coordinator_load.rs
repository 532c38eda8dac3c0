//! Load benchmark of the coordinator: 100 concurrent simulated workers complete 100,000
//! no-op tasks over loopback gRPC against a coordinator process. Prints durable
//! completions per second, the coordinator's CPU time and its peak memory, for runs
//! without the dashboard and with it serving 20 browsers that poll it as the page does
//! (the snapshot every two seconds, each figure again whenever the results behind it
//! changed). The two kinds of run alternate, ROUNDS times each (5 unless told), so that a
//! change in the machine's load falls on both; the dashboard's cost is the median of the
//! rounds' differences, printed beside the spread of the runs without it (the noise).
//!
//!   cargo bench --bench coordinator_load [-- WORKERS TASKS ROUNDS]
//!
//! Targets: at least 5,000 completions/s and under 300 MiB; the dashboard with 20 browsers
//! costs at most 5 % of the completions per second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neuromfa::proto;
use neuromfa_common::SeedResult;

const TOKEN: &str = "load-benchmark";

fn fake_result(step: u64, seed: u32) -> String {
    // Shaped like a real result on the default 61-value q grid.
    let result = SeedResult {
        step,
        seed,
        alpha0: 1.4,
        width: 0.6,
        tau: vec![0.5; 61],
        alpha: vec![1.2; 60],
        f_alpha: vec![0.8; 60],
        r2: vec![0.95; 61],
        alpha0_peak: 1.4,
        alpha0_central: Some(1.41),
        edges: 330_000,
        source_nodes: 8192,
        kept_nodes: 5120,
        radii: 140,
        node_dimension_mean: Some(1.1),
        parameters: 2_516_582_400,
    };
    serde_json::to_string(&result).unwrap_or_default()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let workers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let tasks: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    if let Err(e) = run(workers, tasks, rounds.max(1)) {
        eprintln!("{e}");
    }
}

/// Browsers polling the dashboard in the second run.
const BROWSERS: usize = 20;
/// How often the page polls the snapshot (`POLL_MS` in src/dashboard/page.js).
const POLL: Duration = Duration::from_secs(2);

/// What one run measured.
struct Run {
    completions_per_s: f64,
    /// The coordinator's CPU time (user and system) per 1,000 completions.
    cpu_ms_per_1000: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unavailable".into())
}

fn run(workers: usize, tasks: u64, rounds: usize) -> Result<(), String> {
    println!("load average before: {}", load_average());
    let mut alone = Vec::new();
    let mut watched = Vec::new();
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        alone.push(run_once(workers, tasks, false)?);
        watched.push(run_once(workers, tasks, true)?);
    }
    println!("load average after: {}", load_average());
    let rates = |runs: &[Run]| runs.iter().map(|r| r.completions_per_s).collect::<Vec<_>>();
    let list = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (alone_rates, watched_rates) = (rates(&alone), rates(&watched));
    let (alone_median, watched_median) =
        (median(alone_rates.clone()), median(watched_rates.clone()));
    let spread = alone_rates.iter().cloned().fold(f64::MIN, f64::max)
        - alone_rates.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "completions per second without the dashboard: {} (median {alone_median:.0}; runs differ by up to {:.1} %)",
        list(&alone_rates),
        100.0 * spread / alone_median
    );
    println!(
        "completions per second with {BROWSERS} browsers polling it: {} (median {watched_median:.0})",
        list(&watched_rates)
    );
    let changes: Vec<f64> = alone_rates
        .iter()
        .zip(&watched_rates)
        .map(|(a, w)| 100.0 * (w - a) / a)
        .collect();
    let cpu = |runs: &[Run]| {
        runs.iter()
            .map(|r| r.cpu_ms_per_1000)
            .collect::<Option<Vec<f64>>>()
            .map(median)
    };
    if let (Some(alone_cpu), Some(watched_cpu)) = (cpu(&alone), cpu(&watched)) {
        println!(
            "coordinator CPU per 1,000 completions (median): {watched_cpu:.0} ms with the dashboard against {alone_cpu:.0} ms without ({:+.1} %)",
            100.0 * (watched_cpu - alone_cpu) / alone_cpu
        );
    }
    println!(
        "dashboard with {BROWSERS} browsers polling: {watched_median:.0} against {alone_median:.0} completions per second without; change per round {} %, median {:+.1} %",
        changes.iter().map(|c| format!("{c:+.1}")).collect::<Vec<_>>().join(", "),
        median(changes.clone())
    );
    Ok(())
}

/// User and system CPU time of process `pid` so far, in milliseconds.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // In clock ticks of USER_HZ, which Linux fixes at 100 per second for /proc.
    Some(10.0 * ticks)
}

/// One run: what it measured.
fn run_once(workers: usize, tasks: u64, dashboard: bool) -> Result<Run, String> {
    let seeds = 100u64;
    let steps = tasks.div_ceil(seeds);
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let (_hub, hub_port) = start_empty_hub()?;
    let spec = write_spec(dir.path(), seeds, steps, hub_port, dashboard)?;
    println!(
        "{}",
        if dashboard {
            format!("with the dashboard and {BROWSERS} browsers polling it:")
        } else {
            "without the dashboard:".to_string()
        }
    );

    let started = Instant::now();
    let (mut coordinator, url, dashboard_url) = start_coordinator(&spec, dashboard)?;
    println!(
        "coordinator up with {} tasks in {:.1} s",
        steps * seeds,
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("no runtime: {e}"))?;
    let completed = Arc::new(AtomicU64::new(0));
    let run_started = Instant::now();
    let polls = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let finished = Arc::new(tokio::sync::Notify::new());
        let browsers: Vec<_> = dashboard_url
            .into_iter()
            .flat_map(|base| std::iter::repeat_n(base, BROWSERS))
            .map(|base| tokio::spawn(browser(base, finished.clone(), polls.clone())))
            .collect();
        let handles: Vec<_> = (0..workers)
            .map(|w| tokio::spawn(simulated_worker(url.clone(), w, completed.clone())))
            .collect();
        for h in handles {
            let _ = h.await;
        }
        finished.notify_waiters();
        for b in browsers {
            let _ = b.await;
        }
    });
    let elapsed = run_started.elapsed().as_secs_f64();
    let done = completed.load(Ordering::Relaxed);
    let rss = peak_rss_kib(coordinator.id());
    let cpu = cpu_ms(coordinator.id());
    let _ = Command::new("kill")
        .args(["-TERM", &coordinator.id().to_string()])
        .status();
    let _ = coordinator.wait();

    println!("  workers: {workers}");
    println!("  durable completions: {done} in {elapsed:.2} s");
    println!("  completions per second: {:.0}", done as f64 / elapsed);
    let cpu_ms_per_1000 = cpu.filter(|_| done > 0).map(|ms| 1000.0 * ms / done as f64);
    if let Some(ms) = cpu_ms_per_1000 {
        println!("  coordinator CPU per 1,000 completions: {ms:.0} ms");
    }
    if dashboard {
        println!(
            "  dashboard requests answered: {}",
            polls.load(Ordering::Relaxed)
        );
    }
    match rss {
        Some(kib) => println!("  coordinator peak RSS: {:.0} MiB", kib as f64 / 1024.0),
        None => println!("  coordinator peak RSS: unavailable"),
    }
    Ok(Run {
        completions_per_s: done as f64 / elapsed,
        cpu_ms_per_1000,
    })
}

/// The one field of a snapshot a simulated browser acts on. A real browser reads all of it
/// on its own machine; building it all here would only take CPU from the coordinator on
/// this one.
#[derive(serde::Deserialize)]
struct FiguresVersion {
    figures_version: String,
}

/// A browser showing the dashboard at `base`: the snapshot every [`POLL`], and each figure
/// the page shows again whenever it is not of the latest results, until `finished`.
async fn browser(base: String, finished: Arc<tokio::sync::Notify>, answered: Arc<AtomicU64>) {
    let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
        return;
    };
    let auth = format!("Bearer {TOKEN}");
    let mut etags: std::collections::HashMap<&str, String> = Default::default();
    let get = |path: String, etag: Option<String>| {
        let mut request = client
            .get(format!("{base}{path}"))
            .header("Authorization", &auth);
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        request.send()
    };
    loop {
        if let Ok(response) = get("/api/live".into(), etags.get("live").cloned()).await {
            answered.fetch_add(1, Ordering::Relaxed);
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let (Some(etag), Ok(body)) = (etag, response.bytes().await) {
                etags.insert("live", etag);
                let version = serde_json::from_slice::<FiguresVersion>(&body)
                    .ok()
                    .map(|v| format!("\"{}\"", v.figures_version));
                for stem in ["emergence", "alpha0-width", "spectra-load-noop"] {
                    if version.is_some() && etags.get(stem) != version.as_ref() {
                        if let Ok(figure) =
                            get(format!("/figure/{stem}"), etags.get(stem).cloned()).await
                        {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if let Some(etag) =
                                figure.headers().get("etag").and_then(|v| v.to_str().ok())
                            {
                                etags.insert(stem, etag.to_string());
                            }
                            let _ = figure.bytes().await;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = finished.notified() => return,
        }
    }
}

/// The load sweep's spec in `dir`: one no-op model, `steps` × `seeds` tasks.
fn write_spec(
    dir: &Path,
    seeds: u64,
    steps: u64,
    hub_port: u16,
    dashboard: bool,
) -> Result<PathBuf, String> {
    let spec = dir.join("load.toml");
    let step_list: Vec<String> = (0..steps).map(|s| s.to_string()).collect();
    let text = format!(
        "name = \"load\"\nstate_dir = \"{}\"\nseeds = {seeds}\nsteps = [{}]\ntoken = \"{TOKEN}\"\n\
         [coordinator]\nlisten = \"127.0.0.1:0\"\nlease_seconds = 60\n\
         [hub]\nendpoint = \"http://127.0.0.1:{hub_port}\"\n\
         budget_api = 1000000\nbudget_resolvers = 1000000\n\
         [[models]]\nrepo = \"load/noop\"\n{}",
        dir.join("state").display(),
        step_list.join(", "),
        if dashboard {
            "[dashboard]\nlisten = \"127.0.0.1:0\"\n"
        } else {
            ""
        },
    );
    std::fs::write(&spec, text).map_err(|e| format!("cannot write spec: {e}"))?;
    Ok(spec)
}

/// `neuromfa coordinator SPEC`, once it listens, the URL it prints then, and with
/// `dashboard` the dashboard's URL it prints next (without its trailing slash).
/// A Hub that knows no repository, serving until dropped: the coordinator checks every
/// revision against it while it leases, and its `404` settles each at once. (A port that
/// refuses connections is a Hub that is down, retried with backoff: the runs measured how
/// fast revisions failed to resolve, about 200 completions a second.) The spec gives it a
/// budget no run reaches: a free account's 1,000 API requests per 5 minutes would hold the
/// last of the 1,000 revisions for the window, and the run would measure that.
fn start_empty_hub() -> Result<(tokio::runtime::Runtime, u16), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime for the Hub: {e}"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("cannot listen for the Hub: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("the Hub's address: {e}"))?
        .port();
    let router = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::NOT_FOUND,
            [("x-error-code", "RepoNotFound")],
            "Repository not found",
        )
    });
    runtime.spawn(async move { axum::serve(listener, router).await });
    Ok((runtime, port))
}

fn start_coordinator(
    spec: &Path,
    dashboard: bool,
) -> Result<(Child, String, Option<String>), String> {
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_neuromfa"))
        .args(["coordinator", spec.to_str().unwrap_or_default()])
        // Not warn: every revision's resolution fails, by design, with a warning.
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the coordinator: {e}"))?;
    let mut lines = Vec::new();
    if let Some(stdout) = coordinator.stdout.take() {
        let mut reader = std::io::BufReader::new(stdout);
        for _ in 0..1 + usize::from(dashboard) {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut reader, &mut line);
            lines.push(line.trim().to_string());
        }
    }
    let url = lines.first().cloned().unwrap_or_default();
    let dashboard_url = lines
        .get(1)
        .and_then(|l| l.strip_prefix("dashboard "))
        .map(|u| u.trim_end_matches('/').to_string());
    if url.is_empty() || dashboard != dashboard_url.is_some() {
        let _ = coordinator.kill();
        return Err("the coordinator did not start".to_string());
    }
    Ok((coordinator, url, dashboard_url))
}

/// A worker that registers, then leases and completes (with a fake result) until the
/// sweep is finished, counting its accepted completions in `completed`.
async fn simulated_worker(url: String, w: usize, completed: Arc<AtomicU64>) {
    let Ok(mut client) = neuromfa::worker::connect(&url, TOKEN, None) else {
        return;
    };
    let Ok(reply) = client
        .register(proto::RegisterRequest {
            host: format!("sim{w}"),
            cores: 1,
            version: "bench".into(),
        })
        .await
    else {
        return;
    };
    let worker_id = reply.into_inner().worker_id;
    loop {
        let Ok(lease) = client
            .lease(proto::LeaseRequest {
                worker_id: worker_id.clone(),
                max_tasks: 10,
            })
            .await
        else {
            return;
        };
        let lease = lease.into_inner();
        if lease.tasks.is_empty() {
            if lease.sweep_finished {
                return;
            }
            tokio::time::sleep(Duration::from_millis(lease.retry_after_ms)).await;
            continue;
        }
        for task in lease.tasks {
            let request = proto::CompleteRequest {
                worker_id: worker_id.clone(),
                task_id: task.task_id,
                attempt: task.attempt,
                result_json: fake_result(task.step, task.seed),
                ..Default::default()
            };
            if client.complete(request).await.is_ok() {
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
