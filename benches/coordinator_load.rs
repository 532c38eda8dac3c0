//! Load benchmark of the coordinator: 100 concurrent simulated workers complete 100,000
//! no-op tasks over loopback gRPC against a coordinator process. Prints durable
//! completions per second and the coordinator's peak memory.
//!
//!   cargo bench --bench coordinator_load [-- WORKERS TASKS]
//!
//! Targets: at least 5,000 completions/s and under 300 MiB.

use std::process::{Command, Stdio};
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
    let seeds = 100u64;
    let steps = tasks.div_ceil(seeds);

    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return eprintln!("no temp dir: {e}"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(50_951);
    // The coordinator checks every revision before it serves: against a port nobody
    // listens on that fails at once, instead of waiting on the real Hub (or on no network).
    let hub_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let spec = dir.path().join("load.toml");
    let step_list: Vec<String> = (0..steps).map(|s| s.to_string()).collect();
    let text = format!(
        "name = \"load\"\nstate_dir = \"{}\"\nseeds = {seeds}\nsteps = [{}]\ntoken = \"{TOKEN}\"\n\
         [coordinator]\nlisten = \"127.0.0.1:{port}\"\nlease_seconds = 60\n\
         [hub]\nendpoint = \"http://127.0.0.1:{hub_port}\"\n\
         [[models]]\nrepo = \"load/noop\"\n",
        dir.path().join("state").display(),
        step_list.join(", ")
    );
    if let Err(e) = std::fs::write(&spec, text) {
        return eprintln!("cannot write spec: {e}");
    }

    let started = Instant::now();
    let mut coordinator = match Command::new(env!("CARGO_BIN_EXE_neuromfa"))
        .args(["coordinator", spec.to_str().unwrap_or_default()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return eprintln!("cannot start the coordinator: {e}"),
    };
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = coordinator.kill();
            return eprintln!("the coordinator did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "coordinator up with {} tasks in {:.1} s",
        steps * seeds,
        started.elapsed().as_secs_f64()
    );

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return eprintln!("no runtime: {e}"),
    };
    let completed = Arc::new(AtomicU64::new(0));
    let url = format!("http://127.0.0.1:{port}");
    let run_started = Instant::now();
    runtime.block_on(async {
        let mut handles = Vec::new();
        for w in 0..workers {
            let url = url.clone();
            let completed = completed.clone();
            handles.push(tokio::spawn(async move {
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
            }));
        }
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
}
