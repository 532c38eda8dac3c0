//! The chaos harness: the demo's training history (2 models × 8 steps × 10 seeds) swept by
//! real processes of the built binary — a loopback Hub throttled so fetches take seconds,
//! a coordinator and 2–4 workers — while a seeded loop SIGKILLs one of them at a time and
//! starts it again. Kills are aimed, through `/proc` (see `procfs`), at workers in the
//! middle of a fetch and at the coordinator inside the `fdatasync` of a commit. When the
//! sweep ends, its SQLite state must be consistent and its exports byte-identical to
//! those of a clean run of the same spec.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cluster::{free_port, log_tails, status_at, Proc, TOKEN};
use super::procfs;

pub const MODELS: [&str; 2] = ["neuromfa-demo/gpt-neox-h64", "neuromfa-demo/gpt-neox-h128"];
pub const STEPS: [u64; 8] = [0, 16, 64, 256, 512, 1000, 2000, 3000];
pub const SEEDS: u64 = 10;
pub const TASKS: u64 = MODELS.len() as u64 * STEPS.len() as u64 * SEEDS;
/// The exports that must not depend on how the sweep went (README "Exports").
pub const COMPARED: [&str; 6] = [
    "tasks.csv",
    "tasks.json",
    "aggregates.csv",
    "aggregates.json",
    "spectra.csv",
    "spectra.json",
];
/// Short, so a killed worker's lease lapses and its tasks move on within seconds.
const LEASE_SECONDS: u32 = 3;

/// splitmix64: a few lines, and the same sequence everywhere for a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// What a chaos run does; `NEUROMFA_CHAOS_{KILLS,SEED,WORKERS,THROTTLE}` override it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub kills: usize,
    pub workers: usize,
    /// The Hub's bandwidth in MB/s: what makes fetches long enough to be hit.
    pub throttle_mbps: f64,
}

impl Settings {
    pub fn from_env(kills: usize, seed: Option<u64>) -> Settings {
        fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
            let text = std::env::var(name).ok()?;
            Some(
                text.parse()
                    .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
            )
        }
        let seed = env("NEUROMFA_CHAOS_SEED").or(seed).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        });
        let workers = env("NEUROMFA_CHAOS_WORKERS").unwrap_or(3);
        assert!((2..=4).contains(&workers), "2 to 4 workers");
        Settings {
            seed,
            kills: env("NEUROMFA_CHAOS_KILLS").unwrap_or(kills),
            workers,
            throttle_mbps: env("NEUROMFA_CHAOS_THROTTLE").unwrap_or(1.0),
        }
    }
}

/// Where a killed process was when the SIGKILL left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The coordinator's state thread inside `fsync`/`fdatasync`.
    Commit,
    CoordinatorElsewhere,
    /// A worker's `ranged-reads` thread alive.
    RangedFetch,
    /// A worker writing a download to `*.incomplete`.
    FullDownload,
    WorkerElsewhere,
}

struct WorkerSlot {
    proc: Option<Proc>,
    starts: usize,
    /// Fetches whole files (`--fetch-mode full`) instead of the spec's ranges.
    full: bool,
    /// Its worker exited because the coordinator said the sweep is finished.
    finished: bool,
}

/// A sweep of the demo grid over real processes, any of which can be killed and restarted.
pub struct Sweep {
    pub root: tempfile::TempDir,
    _hub: Proc,
    pub state_dir: PathBuf,
    spec: PathBuf,
    port: u16,
    coordinator: Option<Proc>,
    coordinator_starts: usize,
    workers: Vec<WorkerSlot>,
    /// Processes that exited without being killed before the sweep finished.
    pub unexpected_exits: Vec<String>,
}

impl Sweep {
    /// Serves the demo Hub (throttled to `throttle_mbps`) and writes the spec; the state
    /// goes to `state_dir` (default: inside the sweep's temporary directory).
    pub fn new(throttle_mbps: Option<f64>, state_dir: Option<PathBuf>) -> Sweep {
        let root = tempfile::tempdir().unwrap();
        let demo_hub = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/demo/hub");
        let hub_port = free_port();
        let listen = format!("127.0.0.1:{hub_port}");
        let mut args = vec![
            "hub",
            "serve",
            demo_hub.to_str().unwrap(),
            "--listen",
            &listen,
        ];
        let throttle = throttle_mbps.map(|t| t.to_string());
        if let Some(t) = &throttle {
            args.extend(["--throttle", t]);
        }
        let hub = Proc::spawn(&args, &[], root.path().join("hub.log"));
        super::cluster::wait_for_port(hub_port);
        let port = free_port();
        let state_dir = state_dir.unwrap_or_else(|| root.path().join("state"));
        let spec = root.path().join("spec.toml");
        let steps: Vec<String> = STEPS.iter().map(u64::to_string).collect();
        let models: String = MODELS
            .iter()
            .map(|m| format!("[[models]]\nrepo = \"{m}\"\n"))
            .collect();
        // max_attempts: a lease lost to a kill counts as an attempt (the coordinator cannot
        // tell a crash the task caused from one it did not); the budget is for tasks that
        // crash workers, and here every crash is the harness's.
        std::fs::write(
            &spec,
            format!(
                "name = \"chaos\"\nstate_dir = \"{}\"\nseeds = {SEEDS}\ntoken = \"{TOKEN}\"\n\
                 steps = [{}]\n\n[hub]\nendpoint = \"http://{listen}\"\nfetch_mode = \"ranges\"\n\
                 merge_gap = 256\n\n[coordinator]\nlisten = \"127.0.0.1:{port}\"\n\
                 lease_seconds = {LEASE_SECONDS}\nmax_attempts = 1000\n\n{models}",
                state_dir.display(),
                steps.join(", "),
            ),
        )
        .unwrap();
        Sweep {
            root,
            _hub: hub,
            state_dir,
            spec,
            port,
            coordinator: None,
            coordinator_starts: 0,
            workers: Vec::new(),
            unexpected_exits: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spec(&self) -> &Path {
        &self.spec
    }

    /// Starts the coordinator (`--exit-when-done`) and waits until it listens; if it exits
    /// instead, returns its log.
    pub fn start_coordinator(&mut self) -> Result<(), String> {
        self.coordinator_starts += 1;
        let log = self
            .root
            .path()
            .join(format!("coordinator-{}.log", self.coordinator_starts));
        let spec = self.spec.to_str().unwrap().to_string();
        let mut proc = Proc::spawn(&["coordinator", &spec, "--exit-when-done"], &[], log);
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(format!(
                    "coordinator exited ({status}):\n{}",
                    proc.log_text()
                ));
            }
            assert!(Instant::now() < deadline, "coordinator never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.coordinator = Some(proc);
        Ok(())
    }

    /// Adds a worker slot and starts its worker.
    pub fn add_worker(&mut self, full: bool) -> usize {
        self.workers.push(WorkerSlot {
            proc: None,
            starts: 0,
            full,
            finished: false,
        });
        let slot = self.workers.len() - 1;
        self.start_worker(slot);
        slot
    }

    /// (Re)starts slot `slot`'s worker, on the same cache directory as before.
    fn start_worker(&mut self, slot: usize) {
        let cache = self.root.path().join(format!("cache{slot}"));
        let worker = &mut self.workers[slot];
        worker.starts += 1;
        let log = self
            .root
            .path()
            .join(format!("worker{slot}-{}.log", worker.starts));
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut args = vec![
            "worker",
            "--coordinator",
            &url,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--give-up-after",
            "120",
        ];
        if worker.full {
            args.extend(["--fetch-mode", "full"]);
        }
        worker.proc = Some(Proc::spawn(&args, &[("NEUROMFA_TOKEN", TOKEN)], log));
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        status_at(&self.url(), &[])
    }

    pub fn logs(&self) -> String {
        log_tails(&[self.root.path()])
    }

    /// The coordinator's exit status, once it has exited.
    pub fn coordinator_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.coordinator.as_mut()?.child.try_wait().ok().flatten()
    }

    pub fn coordinator_log(&self) -> String {
        self.coordinator
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// Restarts every worker that exited without being killed or told the sweep is
    /// finished, noting why.
    fn revive_workers(&mut self) {
        for slot in 0..self.workers.len() {
            let worker = &mut self.workers[slot];
            let Some(proc) = worker.proc.as_mut().filter(|_| !worker.finished) else {
                continue;
            };
            let Some(status) = proc.child.try_wait().ok().flatten() else {
                continue;
            };
            if status.success() && proc.log_text().contains("sweep finished") {
                worker.finished = true;
                continue;
            }
            let log = proc.log.clone();
            self.unexpected_exits.push(format!(
                "worker {slot} exited ({status}); log {}",
                log.display()
            ));
            self.start_worker(slot);
        }
    }

    /// Waits until `done` tasks are done, keeping workers alive. Panics if the sweep
    /// finishes first (it was meant to be killed more) or `deadline` passes.
    fn wait_progress(&mut self, done: u64, deadline: Instant, why: &str) {
        loop {
            if let Some(status) = self.coordinator_exit() {
                panic!(
                    "the coordinator exited ({status}) before {why}: slow the Hub down \
                     (NEUROMFA_CHAOS_THROTTLE) or kill less\n{}",
                    self.logs()
                );
            }
            self.revive_workers();
            let now_done = self.status().and_then(|s| s["done"].as_u64()).unwrap_or(0);
            if now_done >= done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no progress to {done} tasks done ({why})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the coordinator to finish the sweep and exit, keeping workers alive.
    pub fn wait_finished(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.coordinator_exit() {
                assert!(status.success(), "coordinator failed:\n{}", self.logs());
                return;
            }
            self.revive_workers();
            assert!(
                Instant::now() < deadline,
                "the sweep did not finish in {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the coordinator; `aimed`, first waits (a while) for its state thread to
    /// be inside the `fdatasync` of a commit. Returns where it was.
    fn kill_coordinator(&mut self, aimed: bool) -> Phase {
        let proc = self.coordinator.as_mut().unwrap();
        let pid = proc.child.id();
        let state_thread = procfs::thread_id(pid, "sweep-state");
        let committing = || state_thread.is_some_and(|tid| procfs::syncing(pid, tid));
        if aimed {
            procfs::poll(
                Duration::from_secs(10),
                Duration::from_micros(100),
                committing,
            );
        }
        let phase = if committing() {
            Phase::Commit
        } else {
            Phase::CoordinatorElsewhere
        };
        proc.kill();
        self.coordinator = None;
        phase
    }

    /// SIGKILLs slot `slot`'s worker; `aimed`, first waits (a while) for it to be fetching
    /// and then a random moment more. Returns where it was.
    fn kill_worker(&mut self, slot: usize, aimed: bool, rng: &mut Rng) -> Phase {
        let full = self.workers[slot].full;
        let proc = self.workers[slot].proc.as_mut().unwrap();
        let pid = proc.child.id();
        let fetching = || {
            if full {
                procfs::has_open_file(pid, ".incomplete")
            } else {
                procfs::thread_id(pid, "ranged-reads").is_some()
            }
        };
        if aimed && procfs::poll(Duration::from_secs(10), Duration::from_millis(2), fetching) {
            std::thread::sleep(rng.millis(400));
        }
        let phase = match (fetching(), full) {
            (true, false) => Phase::RangedFetch,
            (true, true) => Phase::FullDownload,
            (false, _) => Phase::WorkerElsewhere,
        };
        proc.kill();
        self.workers[slot].proc = None;
        phase
    }
}

/// What the finished sweep's SQLite state says.
#[derive(Debug, Clone, Default)]
pub struct StateFacts {
    /// Leases beyond each task's first: times a task was handed out again because the
    /// worker holding it died (the work it had done was lost and redone).
    pub extra_leases: u64,
    /// Tasks leased more than once.
    pub releases: u64,
    /// Results that arrived for tasks already done, counted and ignored.
    pub duplicates: u64,
}

/// Checks that the state holds every task of the grid done exactly once, with one result
/// that is that task's, and nothing damaged; returns what it counts.
pub fn check_state(state_dir: &Path) -> StateFacts {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        state_dir.join("sweep.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(one("SELECT COUNT(*) FROM tasks") as u64, TASKS);
    let states: BTreeMap<String, i64> = conn
        .prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(states, BTreeMap::from([("done".to_string(), TASKS as i64)]));
    assert_eq!(
        one("SELECT COUNT(*) FROM tasks WHERE worker IS NOT NULL"),
        0
    );
    assert_eq!(one("SELECT COUNT(*) FROM tasks WHERE attempts < 1"), 0);
    assert_eq!(one("SELECT COUNT(*) FROM results") as u64, TASKS);
    let mut stmt = conn
        .prepare(
            "SELECT c.step, t.seed, r.result_json FROM results r
             JOIN tasks t ON t.id = r.task_id JOIN checkpoints c ON c.id = t.checkpoint_id",
        )
        .unwrap();
    let rows: Vec<(i64, i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len() as u64, TASKS, "a result without its task");
    for (step, seed, json) in rows {
        let result: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (result["step"].as_i64(), result["seed"].as_i64()),
            (Some(step), Some(seed))
        );
    }
    StateFacts {
        extra_leases: one("SELECT COALESCE(SUM(attempts - 1), 0) FROM tasks") as u64,
        releases: one("SELECT COUNT(*) FROM tasks WHERE attempts > 1") as u64,
        duplicates: conn
            .query_row(
                "SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'duplicates'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64,
    }
}

/// Panics with the first differing line unless `ours` holds the same bytes as `clean` in
/// every compared export.
pub fn assert_same_exports(clean: &Path, ours: &Path) {
    for name in COMPARED {
        let read = |dir: &Path| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
        };
        let (expected, got) = (read(clean), read(ours));
        if expected != got {
            let (line, (a, b)) = expected
                .lines()
                .zip(got.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("(lengths differ)", "")));
            panic!(
                "{name} differs from the clean run's at line {}:\n  clean: {a}\n  ours:  {b}",
                line + 1
            );
        }
    }
}

/// The exports of a clean run of the same spec (no kills, no throttle, two workers, one
/// fetching whole files), made once per test binary and kept under the target directory.
pub fn clean_exports() -> &'static Path {
    static CLEAN: OnceLock<PathBuf> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let mut sweep = Sweep::new(None, None);
        sweep.start_coordinator().unwrap();
        sweep.add_worker(false);
        sweep.add_worker(true);
        sweep.wait_finished(Duration::from_secs(600));
        check_state(&sweep.state_dir);
        let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chaos-clean-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::create_dir_all(&keep).unwrap();
        for name in COMPARED {
            std::fs::copy(sweep.state_dir.join("exports").join(name), keep.join(name)).unwrap();
        }
        keep
    })
}

/// What a chaos run did and survived.
#[derive(Debug)]
pub struct Report {
    pub settings: Settings,
    pub kills: Vec<Phase>,
    pub state: StateFacts,
    pub unexpected_exits: Vec<String>,
    pub wall: Duration,
}

impl Report {
    pub fn count(&self, phase: Phase) -> usize {
        self.kills.iter().filter(|&&p| p == phase).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |p| self.count(p);
        let coordinator = c(Phase::Commit) + c(Phase::CoordinatorElsewhere);
        writeln!(
            f,
            "chaos seed {}: {} kills survived, {} workers, Hub at {} MB/s",
            self.settings.seed,
            self.kills.len(),
            self.settings.workers,
            self.settings.throttle_mbps
        )?;
        writeln!(
            f,
            "  coordinator {coordinator}: {} inside a commit's fdatasync, {} elsewhere",
            c(Phase::Commit),
            c(Phase::CoordinatorElsewhere)
        )?;
        writeln!(
            f,
            "  workers {}: {} mid ranged fetch, {} mid full download, {} elsewhere",
            self.kills.len() - coordinator,
            c(Phase::RangedFetch),
            c(Phase::FullDownload),
            c(Phase::WorkerElsewhere)
        )?;
        writeln!(
            f,
            "  tasks recomputed: {} (leases beyond the first, over {} tasks); duplicate results ignored: {}",
            self.state.extra_leases, self.state.releases, self.state.duplicates
        )?;
        write!(
            f,
            "  wall time {:.1} s (the clean run not counted); {TASKS} tasks, each done once",
            self.wall.as_secs_f64()
        )
    }
}

/// Runs the demo sweep under `settings.kills` SIGKILLs and checks what it ends with.
pub fn run(settings: &Settings) -> Report {
    assert!(
        procfs::available(),
        "the chaos harness watches processes through Linux's /proc"
    );
    // Printed first, so a run that hangs or fails can be repeated.
    eprintln!(
        "chaos: seed {} ({} kills, {} workers)",
        settings.seed, settings.kills, settings.workers
    );
    let clean = clean_exports();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120 + 30 * settings.kills as u64);
    let mut rng = Rng::new(settings.seed);
    let mut sweep = Sweep::new(Some(settings.throttle_mbps), None);
    sweep.start_coordinator().unwrap();
    for slot in 0..settings.workers {
        // With three workers or more, one fetches whole files so kills also land in
        // hf-hub's downloads into the cache it reuses when it is restarted.
        sweep.add_worker(slot == 0 && settings.workers >= 3);
    }
    let mut kills = Vec::with_capacity(settings.kills);
    for i in 0..settings.kills {
        // Kills are spread over the first 80 % of the sweep, so it cannot end before the
        // last one: kill i waits for i/kills of that share to be done.
        let gate = i as u64 * TASKS * 4 / (5 * settings.kills as u64);
        sweep.wait_progress(
            gate,
            deadline,
            &format!("kill {} of {}", i + 1, settings.kills),
        );
        std::thread::sleep(rng.millis(800));
        // Target 0 is the coordinator, k the worker of slot k - 1. The first two kills are
        // aimed, at a commit and at a ranged fetch (the last slot's worker fetches by
        // ranges), so that even a short run has both.
        let (target, aimed) = match i {
            0 => (0, true),
            1 => (settings.workers, true),
            _ => (rng.below(settings.workers as u64 + 1) as usize, rng.coin()),
        };
        let phase = if target == 0 {
            sweep.kill_coordinator(aimed)
        } else {
            sweep.kill_worker(target - 1, aimed, &mut rng)
        };
        kills.push(phase);
        std::thread::sleep(rng.millis(500));
        if target == 0 {
            if let Err(log) = sweep.start_coordinator() {
                panic!(
                    "the coordinator did not come back after kill {}: {log}",
                    i + 1
                );
            }
        } else {
            sweep.start_worker(target - 1);
        }
    }
    sweep.wait_finished(deadline.saturating_duration_since(Instant::now()));
    let wall = started.elapsed();
    let state = check_state(&sweep.state_dir);
    let report = Report {
        settings: settings.clone(),
        kills,
        state,
        unexpected_exits: sweep.unexpected_exits.clone(),
        wall,
    };
    eprintln!("{report}");
    assert_same_exports(clean, &sweep.state_dir.join("exports"));
    eprintln!("  {} byte-identical to a clean run's", COMPARED.join(", "));
    report
}
