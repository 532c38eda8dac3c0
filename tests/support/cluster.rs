//! A test cluster of real processes on 127.0.0.1: a loopback Hub serving checkpoints the
//! tests lay out, a coordinator, and workers, each of which can be killed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::faulty_hub::{Fault, FaultyHub};
use super::{data_dir, demo_step};

pub const TOKEN: &str = "test-sweep-token";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_neuromfa"))
}

/// A child process killed when dropped; its stderr goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// The lines of stdout after the first, for a service that prints more than its URL.
    stdout_lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Proc {
        Self::spawn_with_stdout(args, env, log, Stdio::null())
    }

    /// Spawns a service (`coordinator`, `hub serve`) and waits for the URL it prints once
    /// it listens: on port 0 the system picks the port, so no test picks one that another
    /// process may take first. `Err` holds its log when it exits (or stalls) instead.
    pub fn spawn_listening(
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<(Proc, String), String> {
        match Self::spawn_until_listening(args, env, log)? {
            (proc, Some(url)) => Ok((proc, url)),
            (mut proc, None) => Err(format!(
                "{args:?} exited ({:?}) before listening:\n{}",
                proc.child.wait(),
                proc.log_text()
            )),
        }
    }

    /// [`Proc::spawn_listening`], except that a process exiting with success before it
    /// listens (a coordinator whose sweep is finished) gives `None` instead of an error.
    pub fn spawn_until_listening(
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<(Proc, Option<String>), String> {
        let mut proc = Self::spawn_with_stdout(args, env, log, Stdio::piped());
        let stdout = proc.child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        let (more_tx, more_rx) = std::sync::mpsc::channel();
        proc.stdout_lines = Some(more_rx);
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let read = std::io::BufRead::read_line(&mut reader, &mut line);
            let _ = line_tx.send(read.map(|_| line.trim().to_string()));
            for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
                if more_tx.send(line.trim().to_string()).is_err() {
                    return;
                }
            }
        });
        // Only a bound on failure: a start takes well under a second.
        match line_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(url)) if !url.is_empty() => Ok((proc, Some(url))),
            Ok(_) => match proc.child.wait() {
                Ok(status) if status.success() => Ok((proc, None)),
                status => Err(format!(
                    "{args:?} exited ({status:?}) before listening:\n{}",
                    proc.log_text()
                )),
            },
            Err(_) => Err(format!(
                "{args:?} did not listen in 120 s:\n{}",
                proc.log_text()
            )),
        }
    }

    fn spawn_with_stdout(args: &[&str], env: &[(&str, &str)], log: PathBuf, stdout: Stdio) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .stdout(stdout)
            .stderr(file)
            .env_remove("NEUROMFA_TOKEN")
            .env_remove("NEUROMFA_COORDINATOR")
            .env_remove("NEUROMFA_TLS_CA")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            log,
            stdout_lines: None,
        }
    }

    /// The next line a service started by [`Proc::spawn_listening`] prints after its URL
    /// (`Err` with its log when it ends first).
    pub fn next_stdout_line(&mut self) -> Result<String, String> {
        let lines = self.stdout_lines.as_ref().ok_or("stdout is not read")?;
        // Only a bound on failure: the line follows the URL at once.
        lines
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| format!("no further line on stdout:\n{}", self.log_text()))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a polite stop).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Hub endpoint that takes connections and never answers. A worker fetching from it
/// holds its lease, heartbeating, and completes nothing until its HTTP timeouts (minutes).
pub struct SilentHub {
    listener: std::net::TcpListener,
}

impl SilentHub {
    pub fn start() -> SilentHub {
        // Never accepted: the kernel completes the connections into the backlog, and the
        // requests written into them are never read.
        SilentHub {
            listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }
}

/// Copies a checkpoint directory into the Hub tree as `org/name/revision`.
pub fn publish(hub: &Path, repo: &str, revision: &str, source: &Path) {
    let dest = hub.join(repo).join(revision);
    std::fs::create_dir_all(&dest).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), dest.join(file)).unwrap();
    }
}

/// Copies every file of a checkpoint directory (any format) into the Hub tree as
/// `org/name/revision`.
pub fn publish_all(hub: &Path, repo: &str, revision: &str, source: &Path) {
    let dest = hub.join(repo).join(revision);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

/// The spec's `[[models]]` for what [`publish_two_models`] publishes.
pub fn two_model_specs() -> &'static str {
    r#"
[[models]]
repo = "test-org/tiny"
steps = [0, 1000, 2000]

[[models]]
repo = "test-org/h64"
steps = [0, 64, 512]
"#
}

/// Two models × three steps, from the golden tiny GPT-NeoX and the trained history.
pub fn publish_two_models(hub: &Path) -> Vec<(String, u64, PathBuf)> {
    let mut published = Vec::new();
    for step in [0u64, 1000, 2000] {
        let src = data_dir().join(format!("golden/tiny-neox/step{step}"));
        publish(hub, "test-org/tiny", &format!("step{step}"), &src);
        published.push(("test-org/tiny".to_string(), step, src));
    }
    for step in [0u64, 64, 512] {
        let src = demo_step("h64", step);
        publish(hub, "test-org/h64", &format!("step{step}"), &src);
        published.push(("test-org/h64".to_string(), step, src));
    }
    published
}

/// `publish_two_models`, with test-org/tiny step 1000's weights cut short: its tasks fail.
pub fn publish_two_models_one_corrupt(hub: &Path) {
    publish_two_models(hub);
    let bad = hub.join("test-org/tiny/step1000/model.safetensors");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&bad, bytes).unwrap();
}

/// The cluster's Hub: `neuromfa hub serve`, or one in the test's process whose faults the
/// test switches.
pub enum TestHub {
    Process(Proc),
    Faulty(FaultyHub),
}

/// How a cluster's Hub runs: `neuromfa hub serve` with these flags, or a [`FaultyHub`].
enum HubKind<'a> {
    Serve(&'a [&'a str]),
    Faulty,
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub hub: TestHub,
    pub hub_url: String,
    /// The port the first coordinator got from the system (0 before it started); later
    /// ones are restarted on it, as a coordinator is in production.
    pub coordinator_port: u16,
    pub coordinator: Option<Proc>,
    pub workers: Vec<Proc>,
    pub spec: PathBuf,
    pub state_dir: PathBuf,
    /// The CA clients trust when the coordinator serves TLS.
    pub tls_ca: Option<PathBuf>,
    /// The Hub token workers started from now on find in `HF_TOKEN`.
    pub worker_hub_token: Option<String>,
    starts: usize,
}

/// A coordinator's TLS files: its certificate and key, and the CA that signed it.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Cluster {
    /// Lays out the Hub tree with `publish`, serves it, and writes a spec with `models`
    /// (TOML `[[models]]` tables) and `extra` settings.
    pub fn new(publish: impl FnOnce(&Path), models: &str, seeds: u32, extra: &str) -> Cluster {
        Self::with_lease(publish, models, seeds, extra, 3)
    }

    pub fn with_lease(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        extra: &str,
        lease_seconds: u32,
    ) -> Cluster {
        Self::build(
            publish,
            models,
            seeds,
            extra,
            lease_seconds,
            None,
            HubKind::Serve(&[]),
        )
    }

    /// A cluster whose Hub is a [`FaultyHub`], healthy until [`Cluster::hub_fault`].
    pub fn with_faulty_hub(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        extra: &str,
    ) -> Cluster {
        Self::build(publish, models, seeds, extra, 3, None, HubKind::Faulty)
    }

    /// A cluster whose Hub serves file bodies at `mbps` megabytes per second in all, so a
    /// sweep lasts long enough to be watched.
    pub fn throttled(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        extra: &str,
        mbps: f64,
    ) -> Cluster {
        let mbps = mbps.to_string();
        Self::with_hub_flags(publish, models, seeds, extra, &["--throttle", &mbps])
    }

    /// A cluster whose Hub is `neuromfa hub serve` with more `flags` (e.g. `--like-hf`).
    pub fn with_hub_flags(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        extra: &str,
        flags: &[&str],
    ) -> Cluster {
        Self::build(
            publish,
            models,
            seeds,
            extra,
            3,
            None,
            HubKind::Serve(flags),
        )
    }

    /// Makes the Hub misbehave as `fault` says (a cluster built with a faulty Hub only).
    pub fn hub_fault(&self, fault: Fault) {
        match &self.hub {
            TestHub::Faulty(hub) => hub.set(fault),
            TestHub::Process(_) => panic!("this cluster's Hub has no faults to switch"),
        }
    }

    /// Requests the faulty Hub answered with a fault.
    pub fn hub_refused(&self) -> u64 {
        match &self.hub {
            TestHub::Faulty(hub) => hub.refused(),
            TestHub::Process(_) => 0,
        }
    }

    /// A coordinator that serves TLS with `tls`; workers and `status` trust `tls.ca`.
    pub fn with_tls(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        tls: TlsFiles,
    ) -> Cluster {
        Self::build(
            publish,
            models,
            seeds,
            "",
            3,
            Some(tls),
            HubKind::Serve(&[]),
        )
    }

    fn build(
        publish: impl FnOnce(&Path),
        models: &str,
        seeds: u32,
        extra: &str,
        lease_seconds: u32,
        tls: Option<TlsFiles>,
        hub_kind: HubKind,
    ) -> Cluster {
        let tls_keys = tls.as_ref().map_or(String::new(), |t| {
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                t.cert.display(),
                t.key.display()
            )
        });
        let root = tempfile::tempdir().unwrap();
        let hub_dir = root.path().join("hub");
        publish(&hub_dir);
        let (hub, hub_url) = match hub_kind {
            HubKind::Faulty => {
                let hub = FaultyHub::start(&hub_dir);
                let url = hub.url.clone();
                (TestHub::Faulty(hub), url)
            }
            HubKind::Serve(flags) => {
                let mut args = vec![
                    "hub",
                    "serve",
                    hub_dir.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                ];
                args.extend_from_slice(flags);
                let (hub, url) =
                    Proc::spawn_listening(&args, &[], root.path().join("hub.log")).unwrap();
                (TestHub::Process(hub), url)
            }
        };
        let state_dir = root.path().join("state");
        let spec = root.path().join("spec.toml");
        std::fs::write(
            &spec,
            format!(
                r#"
name = "e2e"
state_dir = "{}"
seeds = {seeds}
token = "{TOKEN}"

[hub]
endpoint = "{hub_url}"

[coordinator]
listen = "127.0.0.1:0"
lease_seconds = {lease_seconds}
max_attempts = 3
{tls_keys}

{extra}

{models}
"#,
                state_dir.display()
            ),
        )
        .unwrap();
        Cluster {
            root,
            hub,
            hub_url,
            coordinator_port: 0,
            coordinator: None,
            workers: Vec::new(),
            spec,
            state_dir,
            tls_ca: tls.map(|t| t.ca),
            worker_hub_token: None,
            starts: 0,
        }
    }

    pub fn coordinator_url(&self) -> String {
        assert_ne!(self.coordinator_port, 0, "no coordinator has listened yet");
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.coordinator_port)
    }

    /// `--tls-ca CA` when the coordinator serves TLS.
    fn tls_flags(&self) -> Vec<String> {
        self.tls_ca
            .iter()
            .flat_map(|ca| ["--tls-ca".to_string(), ca.display().to_string()])
            .collect()
    }

    pub fn start_coordinator(&mut self) {
        self.start_coordinator_with(&["--exit-when-done"]);
    }

    pub fn start_coordinator_with(&mut self, flags: &[&str]) {
        self.starts += 1;
        let log = self
            .root
            .path()
            .join(format!("coordinator{}.log", self.starts));
        let listen = format!("127.0.0.1:{}", self.coordinator_port);
        let mut args = vec!["coordinator", self.spec.to_str().unwrap()];
        if self.coordinator_port != 0 {
            args.extend(["--listen", &listen]);
        }
        args.extend_from_slice(flags);
        let (proc, url) = Proc::spawn_listening(&args, &[], log).unwrap();
        self.coordinator_port = port_of(&url);
        self.coordinator = Some(proc);
    }

    pub fn start_worker(&mut self, token: &str) -> usize {
        self.start_worker_with(token, &[])
    }

    /// A worker with more `flags`; returns its index in `workers`.
    pub fn start_worker_with(&mut self, token: &str, extra: &[&str]) -> usize {
        let index = self.workers.len();
        let cache = self.root.path().join(format!("cache{index}"));
        let log = self.root.path().join(format!("worker{index}.log"));
        let mut flags = vec!["--give-up-after".to_string(), "60".to_string()];
        flags.extend(self.tls_flags());
        flags.extend(extra.iter().map(|f| f.to_string()));
        let hub_token = self.worker_hub_token.as_deref();
        let env: Vec<(&str, &str)> = hub_token.map(|t| ("HF_TOKEN", t)).into_iter().collect();
        let proc = spawn_worker_with_env(&self.coordinator_url(), token, &cache, &flags, &env, log);
        self.workers.push(proc);
        index
    }

    /// `neuromfa status --json` against the coordinator.
    pub fn status(&self) -> Option<serde_json::Value> {
        status_at(&self.coordinator_url(), &self.tls_flags())
    }

    /// Polls status until `ready` holds.
    pub fn wait_status(
        &self,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if ready(&s) {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "status never got ready; last: {:?}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the coordinator to finish the sweep and exit.
    pub fn wait_finished(&mut self, timeout: Duration) {
        let logs = self.logs();
        let coordinator = self.coordinator.as_mut().unwrap();
        match coordinator.wait_exit(timeout) {
            Some(status) => assert!(status.success(), "coordinator failed:\n{logs}"),
            None => panic!("sweep did not finish in {timeout:?}:\n{}", self.logs()),
        }
    }

    /// The last lines of every log in the cluster's directory and its state directory.
    pub fn logs(&self) -> String {
        log_tails(&[self.root.path(), self.state_dir.as_path()])
    }

    /// `neuromfa sweep run` on the spec with `workers` workers; its stdout, once it succeeded.
    pub fn sweep_run(&self, workers: u32) -> String {
        let out = self.sweep_run_output(workers);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `neuromfa sweep run` on the spec with `workers` workers, however it ended.
    pub fn sweep_run_output(&self, workers: u32) -> std::process::Output {
        Command::new(binary())
            .args(["sweep", "run", self.spec.to_str().unwrap()])
            .args(["--workers", &workers.to_string(), "--cache-dir"])
            .arg(self.root.path().join("cache"))
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap()
    }

    /// `neuromfa ARGS` as an operator on this machine runs it, with the sweep's token.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .env("NEUROMFA_TOKEN", TOKEN)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap()
    }

    /// Sets `[hub] fetch_mode` in the spec.
    pub fn set_fetch_mode(&self, mode: &str) {
        self.set_hub_keys(&format!("fetch_mode = \"{mode}\""));
    }

    /// Adds `lines` (TOML `key = value` lines) to the spec's `[hub]` table.
    pub fn set_hub_keys(&self, lines: &str) {
        let spec = std::fs::read_to_string(&self.spec).unwrap();
        let spec = spec.replace("[hub]\n", &format!("[hub]\n{}\n", lines.trim()));
        std::fs::write(&self.spec, spec).unwrap();
    }

    pub fn export_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir.join("exports").join(name))
            .unwrap_or_else(|e| panic!("export {name}: {e}\n{}", self.logs()))
    }
}

/// `neuromfa worker` for the coordinator at `url`, caching in `cache`, with more `flags`.
pub fn spawn_worker(url: &str, token: &str, cache: &Path, flags: &[String], log: PathBuf) -> Proc {
    spawn_worker_with_env(url, token, cache, flags, &[], log)
}

/// [`spawn_worker`] with more environment variables.
pub fn spawn_worker_with_env(
    url: &str,
    token: &str,
    cache: &Path,
    flags: &[String],
    env: &[(&str, &str)],
    log: PathBuf,
) -> Proc {
    let mut args = vec![
        "worker",
        "--coordinator",
        url,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend(flags.iter().map(String::as_str));
    let mut env = env.to_vec();
    env.push(("NEUROMFA_TOKEN", token));
    Proc::spawn(&args, &env, log)
}

/// `neuromfa status --json` against the coordinator at `url`, or `None` while it does not answer.
pub fn status_at(url: &str, flags: &[String]) -> Option<serde_json::Value> {
    let out = Command::new(binary())
        .args(["status", "--json", url])
        .args(flags)
        .env("NEUROMFA_TOKEN", TOKEN)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The last lines of every `*.log` file in `dirs`.
pub fn log_tails(dirs: &[&Path]) -> String {
    let mut text = String::new();
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .collect();
    paths.sort();
    for p in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let body = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = body.lines().rev().take(30).collect();
        text += &format!(
            "--- {} ---\n{}\n",
            p.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    text
}

/// The port of a URL like `http://127.0.0.1:41234`.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Rows of a CSV file as header → value maps.
pub fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}
