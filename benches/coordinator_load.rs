//! Load benchmark of the coordinator: 100 concurrent simulated workers complete 100,000
//! no-op tasks over loopback gRPC against a coordinator process. Prints durable
//! completions per second and the coordinator's peak memory.
//!
//!   cargo bench --bench coordinator_load [-- WORKERS TASKS]
//!
//! Targets: at least 5,000 completions/s and under 300 MiB.

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
    if let Err(e) = run(workers, tasks) {
        eprintln!("{e}");
    }
}

fn run(workers: usize, tasks: u64) -> Result<(), String> {
    let seeds = 100u64;
    let steps = tasks.div_ceil(seeds);
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    // Held, never listening: the coordinator checks every revision against it before it
    // serves, and a refused connection fails at once instead of waiting on the real Hub.
    let no_hub = tokio::net::TcpSocket::new_v4()
        .and_then(|socket| socket.bind(([127, 0, 0, 1], 0).into()).map(|()| socket))
        .and_then(|socket| socket.local_addr().map(|addr| (socket, addr)))
        .map_err(|e| format!("cannot hold a loopback port: {e}"))?;
    let spec = write_spec(dir.path(), seeds, steps, no_hub.1.port())?;

    let started = Instant::now();
    let (mut coordinator, url) = start_coordinator(&spec)?;
    println!(
        "coordinator up with {} tasks in {:.1} s",
        steps * seeds,
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("no runtime: {e}"))?;
    let completed = Arc::new(AtomicU64::new(0));
    let run_started = Instant::now();
    runtime.block_on(async {
        let handles: Vec<_> = (0..workers)
            .map(|w| tokio::spawn(simulated_worker(url.clone(), w, completed.clone())))
            .collect();
        for h in handles {
            let _ = h.await;
        }
    });
    let elapsed = run_started.elapsed().as_secs_f64();
    let done = completed.load(Ordering::Relaxed);
    let rss = peak_rss_kib(coordinator.id());
    let _ = Command::new("kill")
        .args(["-TERM", &coordinator.id().to_string()])
        .status();
    let _ = coordinator.wait();

    println!("workers: {workers}");
    println!("durable completions: {done} in {elapsed:.2} s");
    println!("completions per second: {:.0}", done as f64 / elapsed);
    match rss {
        Some(kib) => println!("coordinator peak RSS: {:.0} MiB", kib as f64 / 1024.0),
        None => println!("coordinator peak RSS: unavailable"),
    }
    Ok(())
}

/// The load sweep's spec in `dir`: one no-op model, `steps` × `seeds` tasks.
fn write_spec(dir: &Path, seeds: u64, steps: u64, hub_port: u16) -> Result<PathBuf, String> {
    let spec = dir.join("load.toml");
    let step_list: Vec<String> = (0..steps).map(|s| s.to_string()).collect();
    let text = format!(
        "name = \"load\"\nstate_dir = \"{}\"\nseeds = {seeds}\nsteps = [{}]\ntoken = \"{TOKEN}\"\n\
         [coordinator]\nlisten = \"127.0.0.1:0\"\nlease_seconds = 60\n\
         [hub]\nendpoint = \"http://127.0.0.1:{hub_port}\"\n\
         [[models]]\nrepo = \"load/noop\"\n",
        dir.join("state").display(),
        step_list.join(", ")
    );
    std::fs::write(&spec, text).map_err(|e| format!("cannot write spec: {e}"))?;
    Ok(spec)
}

/// `neuromfa coordinator SPEC`, once it listens, and the URL it prints then.
fn start_coordinator(spec: &Path) -> Result<(Child, String), String> {
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_neuromfa"))
        .args(["coordinator", spec.to_str().unwrap_or_default()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the coordinator: {e}"))?;
    let mut url = String::new();
    if let Some(stdout) = coordinator.stdout.take() {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut url);
    }
    let url = url.trim().to_string();
    if url.is_empty() {
        let _ = coordinator.kill();
        return Err("the coordinator did not start".to_string());
    }
    Ok((coordinator, url))
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
