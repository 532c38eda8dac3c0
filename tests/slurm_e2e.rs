//! `neuromfa slurm submit`: the batch script it writes, and a sweep whose workers all come
//! from a job array on a real Slurm (one node on 127.0.0.1; `scripts/slurm-single-node.sh
//! up` starts one). Without Slurm that test is skipped and says so, unless
//! NEUROMFA_REQUIRE_SLURM=1 (as CI sets) makes a missing Slurm a failure.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::cluster::*;
use support::demo_step;

const SECRET: &str = "s3cret-sweep-token-for-dry-runs";

/// `neuromfa slurm submit ARGS` with a clean environment; `PATH` holds no Slurm command,
/// so anything that needs Slurm fails.
fn submit_without_slurm(args: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    Command::new(binary())
        .args(["slurm", "submit"])
        .args(args)
        .env("PATH", empty.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("NEUROMFA_TOKEN")
        .env_remove("NEUROMFA_COORDINATOR")
        .env_remove("NEUROMFA_TLS_CA")
        .output()
        .unwrap()
}

fn write_spec(dir: &Path, coordinator: &str) -> PathBuf {
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
name = "dry run"
state_dir = "{}"
seeds = 2
steps = [0, 512]
token = "{SECRET}"

[coordinator]
{coordinator}

[[models]]
repo = "test-org/h64"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    spec
}

#[test]
fn dry_run_prints_the_batch_script_with_no_secret_on_a_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "");
    let ca = dir.path().join("ca.pem");
    let out = submit_without_slurm(&[
        spec.to_str().unwrap(),
        "--workers",
        "3",
        "--partition",
        "compute",
        "--time",
        "2:00:00",
        "--cpus-per-task",
        "2",
        "--sbatch=--account=proj42",
        "--coordinator",
        "https://login1:50051",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--dry-run",
        "--",
        "--cache-max-gb",
        "50",
    ]);
    let script = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sbatch: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("#SBATCH "))
        .collect();
    for expected in [
        "--job-name=neuromfa-dry-run",
        "--array=0-2",
        "--partition=compute",
        "--time=2:00:00",
        "--cpus-per-task=2",
        "--export=ALL",
        "--requeue",
        "--signal=B:TERM@60",
        "--account=proj42",
    ] {
        assert!(sbatch.contains(&expected), "no {expected} in:\n{script}");
    }
    let output = dir.path().join("state/slurm/worker-%A_%a.log");
    assert!(sbatch.contains(&format!("--output={}", output.display()).as_str()));
    // The worker runs as the batch step itself, with the options given after `--` and
    // nothing else: address, token and CA come from the environment.
    let command: Vec<&str> = script
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        command,
        [format!(
            "exec {} worker --cache-max-gb 50",
            binary().display()
        )],
        "{script}"
    );
    assert!(!script.contains(SECRET), "{script}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(!script.contains("login1"), "{script}");
    assert!(script.contains("NEUROMFA_COORDINATOR, NEUROMFA_TOKEN, NEUROMFA_TLS_CA"));
    assert!(
        stderr.contains("NEUROMFA_COORDINATOR=https://login1:50051")
            && stderr.contains(&format!("NEUROMFA_TLS_CA={}", ca.display())),
        "{stderr}"
    );
    // A dry run starts nothing and writes nothing.
    assert!(!dir.path().join("state").exists());

    let checked = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut bash| {
            bash.stdin.take().unwrap().write_all(script.as_bytes())?;
            bash.wait()
        })
        .unwrap();
    assert!(checked.success(), "bash cannot parse:\n{script}");
}

#[test]
fn dry_run_workers_dial_the_spec_address_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "address = \"http://login2:6000\"");
    let out = submit_without_slurm(&[spec.to_str().unwrap(), "--workers", "1", "--dry-run"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("#SBATCH --array=0-0"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NEUROMFA_COORDINATOR=http://login2:6000")
    );

    // Listening on every interface: workers dial this host by name.
    let spec = write_spec(dir.path(), "listen = \"0.0.0.0:6001\"");
    let out = submit_without_slurm(&[spec.to_str().unwrap(), "--workers", "1", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NEUROMFA_COORDINATOR=http://") && !stderr.contains("0.0.0.0"),
        "{stderr}"
    );

    let out = submit_without_slurm(&[
        spec.to_str().unwrap(),
        "--workers",
        "2",
        "--dry-run",
        "--",
        "--cache-max-gigabytes",
        "5",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cache-max-gigabytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = submit_without_slurm(&[spec.to_str().unwrap(), "--workers", "0", "--dry-run"]);
    assert!(!out.status.success());
}

#[test]
fn without_slurm_submitting_says_so_and_stops_the_coordinator_it_started() {
    let cluster = Cluster::new(
        |hub| publish(hub, "test-org/h64", "step0", &demo_step("h64", 0)),
        "[[models]]\nrepo = \"test-org/h64\"\nsteps = [0]\n",
        1,
        "",
    );
    let out = submit_without_slurm(&[cluster.spec.to_str().unwrap(), "--workers", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot run sbatch"), "{stderr}");
    // It had started and was listening (its log says where); now nothing listens there.
    let log = std::fs::read_to_string(cluster.state_dir.join("coordinator.log")).unwrap();
    assert!(log.contains("coordinator listening"), "{log}");
    let addr = log
        .split(" addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the log names no address: {log}"));
    assert!(std::net::TcpStream::connect(addr).is_err(), "{addr}");
}

#[test]
fn the_documented_submit_command_is_accepted() {
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/clusters.md");
    let readme = std::fs::read_to_string(page).unwrap();
    let start = readme
        .find("neuromfa slurm submit sweep.toml")
        .expect("docs/clusters.md shows `neuromfa slurm submit`");
    let command = readme[start..]
        .split("\n```")
        .next()
        .unwrap()
        .replace("\\\n", " ");
    let command = command.lines().next().unwrap();
    // The page's `[coordinator]` table for a cluster, as the spec's.
    let table = readme
        .split("```toml\n[coordinator]\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/clusters.md shows a [coordinator] table");
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), table);
    let mut args: Vec<String> = command
        .split_whitespace()
        .skip(3)
        .map(|a| a.replace("sweep.toml", spec.to_str().unwrap()))
        .collect();
    let options_end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(options_end, "--dry-run".to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = submit_without_slurm(&args);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(script.contains("#SBATCH --array=0-31"), "{script}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NEUROMFA_COORDINATOR=https://"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// A real Slurm.

/// Why Slurm cannot be used here, if it cannot.
fn slurm_missing() -> Option<String> {
    let state = Command::new("sinfo").args(["-h", "-o", "%t"]).output();
    match state {
        Err(e) => Some(format!("no `sinfo` ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => {
            let states = String::from_utf8_lossy(&out.stdout).to_string();
            let usable = states
                .lines()
                .any(|s| ["idle", "mix", "alloc"].contains(&s.trim_end_matches('*')));
            (!usable).then(|| format!("no usable Slurm node (states: {})", states.trim()))
        }
    }
}

/// True when Slurm is here. Without it: a failure under NEUROMFA_REQUIRE_SLURM=1, else a
/// skip.
fn slurm_or_skip(test: &str) -> bool {
    let Some(why) = slurm_missing() else {
        return true;
    };
    support::skip_or_fail(
        support::required("NEUROMFA_REQUIRE_SLURM"),
        test,
        &format!(
            "{why}. Start a one-node Slurm with `sudo scripts/slurm-single-node.sh up` to run it"
        ),
    );
    false
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// Array task ids of `job` that Slurm still lists, with their state.
fn array_tasks(job: &str) -> BTreeMap<String, String> {
    let out = run("squeue", &["-h", "-r", "-j", job, "-o", "%i %T"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect()
}

/// Cancels the job array and kills the coordinator `slurm submit` started, whatever
/// happens to the test.
struct SlurmRun {
    job: String,
    coordinator_pid: Option<u32>,
}

impl Drop for SlurmRun {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.job).status();
        if let Some(pid) = self.coordinator_pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A process that is gone or a zombie (nobody may reap a detached coordinator here).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_array_runs_the_sweep_and_a_cancelled_array_task_loses_nothing() {
    if !slurm_or_skip("a_job_array_runs_the_sweep_and_a_cancelled_array_task_loses_nothing") {
        return;
    }
    let started = Instant::now();
    const SEEDS: u32 = 8;
    let steps = [0u64, 16, 64, 256, 512, 1000, 2000, 3000];
    let models = r#"
[[models]]
repo = "test-org/h128"
steps = [0, 16, 64, 256, 512, 1000, 2000, 3000]
"#;
    let mut cluster = Cluster::with_lease(
        |hub| {
            for step in steps {
                publish(
                    hub,
                    "test-org/h128",
                    &format!("step{step}"),
                    &demo_step("h128", step),
                );
            }
        },
        models,
        SEEDS,
        "",
        3,
    );
    let cache = cluster.root.path().join("hf-cache");
    // Logs beside the cluster's own, so a failure shows them.
    let log_dir = cluster.root.path();
    let out = Command::new(binary())
        .args(["slurm", "submit", cluster.spec.to_str().unwrap()])
        .args(["--workers", "4", "--cpus-per-task", "1", "--time", "10:00"])
        .arg("--log-dir")
        .arg(log_dir)
        .args([
            "--",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--give-up-after",
            "60",
        ])
        .env_remove("NEUROMFA_TOKEN")
        .env_remove("NEUROMFA_COORDINATOR")
        .env_remove("NEUROMFA_TLS_CA")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let pid_file = cluster.state_dir.join("coordinator.pid");
    let coordinator_pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let job = stdout
        .split("submitted job array ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_default()
        .to_string();
    let guard = SlurmRun {
        job: job.clone(),
        coordinator_pid,
    };
    assert!(
        out.status.success() && !job.is_empty(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let coordinator_pid = coordinator_pid.expect("slurm submit records the coordinator's pid");
    // The spec's port is 0: submit says which one the coordinator got.
    let url = stdout
        .split("coordinator: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("submit names no coordinator: {stdout}"));
    cluster.coordinator_port = port_of(url);
    let script = std::fs::read_to_string(log_dir.join("worker-array.sh")).unwrap();
    assert!(!script.contains(TOKEN), "{script}");
    let log_of = |task: &str| {
        std::fs::read_to_string(log_dir.join(format!("worker-{job}_{task}.log")))
            .unwrap_or_default()
    };

    // Pick an array task that holds leases mid-sweep, and cancel it.
    let array_worker = format!("slurm-{job}-");
    let status = cluster.wait_status(Duration::from_secs(120), |s| {
        s["done"].as_u64().unwrap_or(0) < 24
            && s["workers"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w["id"].as_str().unwrap_or("").contains(&array_worker)
                        && w["leased"].as_u64().unwrap_or(0) > 0
                })
            })
    });
    let victim_id = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["leased"].as_u64().unwrap_or(0) > 0)
        .filter_map(|w| w["id"].as_str())
        .find(|id| id.contains(&array_worker))
        .unwrap()
        .to_string();
    // Worker ids are `slurm-<job>-<task>-<host>-<random>`.
    let victim_task = victim_id
        .split(&array_worker)
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .unwrap()
        .to_string();
    let victim = format!("{job}_{victim_task}");
    let cancelled = run("scancel", &[&victim]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    wait_until(
        &format!("{victim} to leave the queue"),
        Duration::from_secs(60),
        || !array_tasks(&job).contains_key(&victim),
    );

    // The others finish the sweep, every result once; then they exit by themselves.
    let total = steps.len() as u64 * u64::from(SEEDS);
    let finished = cluster.wait_status(Duration::from_secs(300), |s| {
        s["pending"] == 0 && s["leased"] == 0
    });
    assert_eq!(finished["done"].as_u64(), Some(total), "{finished}");
    wait_until("the array to finish", Duration::from_secs(60), || {
        array_tasks(&job).is_empty()
    });
    Command::new("kill")
        .args(["-TERM", &coordinator_pid.to_string()])
        .status()
        .unwrap();
    wait_until("the coordinator to stop", Duration::from_secs(60), || {
        exited(coordinator_pid)
    });

    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    let mut seen = BTreeMap::new();
    for t in &tasks {
        assert_eq!(t["state"], "done", "{t:?}");
        *seen
            .entry((t["step"].clone(), t["seed"].clone()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u64, total);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(
        csv_rows(&cluster.export_file("aggregates.csv")).len(),
        steps.len()
    );

    // The cancelled task got SIGTERM (its worker is the batch step) and stopped before
    // the sweep was finished; at least two other array tasks computed.
    let victim_log = log_of(&victim_task);
    assert!(
        victim_log.contains("stopping: releasing leases"),
        "{victim_log}"
    );
    assert!(!victim_log.contains("sweep finished"), "{victim_log}");
    let computed = (0..4)
        .map(|t| t.to_string())
        .filter(|t| *t != victim_task && log_of(t).contains("task done"))
        .count();
    assert!(computed >= 2, "{}", cluster.logs());
    drop(guard);
    let _ = writeln!(
        std::io::stderr(),
        "slurm job array test: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
