//! The chaos harness: the demo's training history (2 models × 8 steps × 10 seeds) swept by
//! real processes of the built binary — a loopback Hub throttled so fetches take seconds,
//! a coordinator and 2–4 workers — while a seeded loop SIGKILLs one of them at a time and
//! starts it again. Kills are aimed, through `/proc` (see `procfs`), at workers in the
//! middle of a fetch and at the coordinator inside the `fdatasync` of a commit. When the
//! sweep ends, its SQLite state must be consistent and its exports byte-identical to
//! those of a clean run of the same spec.

#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::chaos_checks::{
    acknowledged, assert_same_exports, check_state, compared, read_exports, Exports, StateFacts,
};
use super::cluster::{log_tails, port_of, spawn_worker, status_at, Proc, TOKEN};
use super::procfs;

/// A sweep's grid over the demo's checkpoints, and the exports of a clean run of it (made
/// once per test binary, when first asked for).
pub struct Grid {
    pub models: &'static [&'static str],
    pub steps: &'static [u64],
    pub seeds: u64,
    clean: OnceLock<Exports>,
}

impl Grid {
    pub fn tasks(&self) -> u64 {
        self.models.len() as u64 * self.steps.len() as u64 * self.seeds
    }
}

/// The demo's whole training history: 2 models × 8 steps × 10 seeds.
pub static DEMO: Grid = Grid {
    models: &["neuromfa-demo/gpt-neox-h64", "neuromfa-demo/gpt-neox-h128"],
    steps: &[0, 16, 64, 256, 512, 1000, 2000, 3000],
    seeds: 10,
    clean: OnceLock::new(),
};

/// A few of its checkpoints, for scenarios that need a sweep, not a long one: 2 models ×
/// 3 steps × 4 seeds.
pub static SMALL: Grid = Grid {
    models: &["neuromfa-demo/gpt-neox-h64", "neuromfa-demo/gpt-neox-h128"],
    steps: &[0, 512, 3000],
    seeds: 4,
    clean: OnceLock::new(),
};

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

/// Calls `f` every `every` until it gives a value, or `deadline` passes (`None`).
pub fn poll<T>(deadline: Instant, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
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
        let kills = env("NEUROMFA_CHAOS_KILLS").unwrap_or(kills);
        // A kill with its restart takes about a second, and at 1 MB/s a checkpoint is
        // done every second or so: more kills need a slower Hub to land within the sweep.
        let throttle = (25.0 / kills.max(1) as f64).clamp(0.1, 1.0);
        Settings {
            seed,
            kills,
            workers,
            throttle_mbps: env("NEUROMFA_CHAOS_THROTTLE").unwrap_or(throttle),
        }
    }
}

/// Where a killed process was when the SIGKILL left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The coordinator's state thread inside `fsync`/`fdatasync`.
    Commit,
    /// A coordinator not listening yet: opening the state, adding the grid.
    Starting,
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
    /// Where it dials the coordinator (a [`super::proxy::FaultyLink`]'s URL, say); `None`:
    /// directly.
    dial: Option<String>,
    /// `--give-up-after`, in seconds.
    give_up_after: u64,
    /// Its worker exited because the coordinator said the sweep is finished.
    finished: bool,
}

/// A sweep of the demo grid over real processes, any of which can be killed and restarted.
pub struct Sweep {
    pub grid: &'static Grid,
    pub root: tempfile::TempDir,
    _hub: Proc,
    pub state_dir: PathBuf,
    spec: PathBuf,
    /// The port the first coordinator got from the system; restarts listen on it again.
    port: u16,
    coordinator: Option<Proc>,
    coordinator_starts: usize,
    workers: Vec<WorkerSlot>,
    /// Processes that exited without being killed before the sweep finished.
    pub unexpected_exits: Vec<String>,
    /// The coordinator exits once the sweep is finished (`--exit-when-done`); else it
    /// serves until [`Sweep::stop_coordinator`].
    exit_when_done: bool,
}

impl Sweep {
    /// Serves the demo Hub (throttled to `throttle_mbps`) and writes the spec of the
    /// [`DEMO`] grid; the state goes to `state_dir` (default: inside the sweep's temporary
    /// directory).
    pub fn new(throttle_mbps: Option<f64>, state_dir: Option<PathBuf>) -> Sweep {
        Sweep::of(&DEMO, throttle_mbps, state_dir)
    }

    /// [`Sweep::new`] over `grid`.
    pub fn of(
        grid: &'static Grid,
        throttle_mbps: Option<f64>,
        state_dir: Option<PathBuf>,
    ) -> Sweep {
        let root = tempfile::tempdir().unwrap();
        let demo_hub = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/demo/hub");
        let mut args = vec![
            "hub",
            "serve",
            demo_hub.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        let throttle = throttle_mbps.map(|t| t.to_string());
        if let Some(t) = &throttle {
            args.extend(["--throttle", t]);
        }
        let (hub, hub_url) =
            Proc::spawn_listening(&args, &[], root.path().join("hub.log")).unwrap();
        let state_dir = state_dir.unwrap_or_else(|| root.path().join("state"));
        let spec = root.path().join("spec.toml");
        let steps: Vec<String> = grid.steps.iter().map(u64::to_string).collect();
        let seeds = grid.seeds;
        let models: String = grid
            .models
            .iter()
            .map(|m| format!("[[models]]\nrepo = \"{m}\"\n"))
            .collect();
        // max_attempts: a lease lost to a kill counts as an attempt (the coordinator cannot
        // tell a crash the task caused from one it did not); the budget is for tasks that
        // crash workers, and here every crash is the harness's.
        std::fs::write(
            &spec,
            format!(
                "name = \"chaos\"\nstate_dir = \"{}\"\nseeds = {seeds}\ntoken = \"{TOKEN}\"\n\
                 steps = [{}]\n\n[hub]\nendpoint = \"{hub_url}\"\nfetch_mode = \"ranges\"\n\
                 merge_gap = 256\n\n[coordinator]\nlisten = \"127.0.0.1:0\"\n\
                 lease_seconds = {LEASE_SECONDS}\nmax_attempts = 1000\n\n{models}",
                state_dir.display(),
                steps.join(", "),
            ),
        )
        .unwrap();
        Sweep {
            grid,
            root,
            _hub: hub,
            state_dir,
            spec,
            port: 0,
            coordinator: None,
            coordinator_starts: 0,
            workers: Vec::new(),
            unexpected_exits: Vec::new(),
            exit_when_done: true,
        }
    }

    /// The coordinator keeps serving once the sweep is finished (it tells workers so, and
    /// exports), until [`Sweep::stop_coordinator`]: a test can wait for stragglers first.
    pub fn serving(mut self) -> Sweep {
        self.exit_when_done = false;
        self
    }

    /// Stops the coordinator as an operator does (SIGTERM) and waits for it to exit 0.
    pub fn stop_coordinator(&mut self) {
        let logs = self.logs();
        let coordinator = self.coordinator.as_mut().expect("a coordinator to stop");
        coordinator.terminate();
        match coordinator.wait_exit(Duration::from_secs(120)) {
            Some(status) => assert!(
                status.success(),
                "the coordinator failed ({status}):\n{logs}"
            ),
            None => panic!("the coordinator did not stop\n{logs}"),
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
        let (args, log) = self.coordinator_command();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, url) = Proc::spawn_until_listening(&args, &[], log)?;
        // Without a URL the sweep is finished: the coordinator said so and exited.
        if let Some(url) = url {
            self.port = port_of(&url);
        }
        self.coordinator = Some(proc);
        Ok(())
    }

    fn spawn_coordinator(&mut self) -> Proc {
        let (args, log) = self.coordinator_command();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(&args, &[], log)
    }

    /// The next coordinator's arguments (on the first one's port, once it has one) and log.
    fn coordinator_command(&mut self) -> (Vec<String>, PathBuf) {
        self.coordinator_starts += 1;
        let log = self
            .root
            .path()
            .join(format!("coordinator-{}.log", self.coordinator_starts));
        let mut args = vec![
            "coordinator".to_string(),
            self.spec.to_str().unwrap().to_string(),
        ];
        if self.exit_when_done {
            args.push("--exit-when-done".to_string());
        }
        if self.port != 0 {
            args.extend(["--listen".to_string(), format!("127.0.0.1:{}", self.port)]);
        }
        (args, log)
    }

    fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Starts a coordinator and SIGKILLs it `after` that long, most likely while it opens
    /// (and recovers) the state and adds the grid. Returns where it was.
    fn kill_starting_coordinator(&mut self, after: Duration) -> Phase {
        let mut proc = self.spawn_coordinator();
        std::thread::sleep(after);
        let phase = if self.listening() {
            Phase::CoordinatorElsewhere
        } else {
            Phase::Starting
        };
        proc.kill();
        phase
    }

    /// Adds a worker slot and starts its worker.
    pub fn add_worker(&mut self, full: bool) -> usize {
        self.add_worker_slot(full, None, 120)
    }

    /// Adds a worker slot whose worker dials the coordinator at `url` and gives up after
    /// `give_up_after` seconds without it, and starts the worker.
    pub fn add_worker_via(&mut self, url: String, give_up_after: u64) -> usize {
        self.add_worker_slot(false, Some(url), give_up_after)
    }

    fn add_worker_slot(&mut self, full: bool, dial: Option<String>, give_up_after: u64) -> usize {
        self.workers.push(WorkerSlot {
            proc: None,
            starts: 0,
            full,
            dial,
            give_up_after,
            finished: false,
        });
        let slot = self.workers.len() - 1;
        self.start_worker(slot);
        slot
    }

    /// The coordinator's address, for proxies in front of it.
    pub fn coordinator_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Slot `slot`'s worker process, while it has one.
    pub fn worker(&mut self, slot: usize) -> Option<&mut Proc> {
        self.workers[slot].proc.as_mut()
    }

    /// (Re)starts slot `slot`'s worker, on the same cache directory as before.
    pub fn start_worker(&mut self, slot: usize) {
        let cache = self.root.path().join(format!("cache{slot}"));
        let worker = &mut self.workers[slot];
        worker.starts += 1;
        let log = self
            .root
            .path()
            .join(format!("worker{slot}-{}.log", worker.starts));
        let mut flags = vec![
            "--give-up-after".to_string(),
            worker.give_up_after.to_string(),
        ];
        if worker.full {
            flags.extend(["--fetch-mode".to_string(), "full".to_string()]);
        }
        let direct = format!("http://127.0.0.1:{}", self.port);
        let url = worker.dial.clone().unwrap_or(direct);
        worker.proc = Some(spawn_worker(&url, TOKEN, &cache, &flags, log));
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

    /// Waits until `done` tasks are done, keeping workers alive; returns how many are, or
    /// `None` when the sweep finished first. Panics if the coordinator fails or `deadline`
    /// passes.
    pub fn wait_progress(&mut self, done: u64, deadline: Instant, why: &str) -> Option<u64> {
        let reached = poll(deadline, Duration::from_millis(200), || {
            if let Some(status) = self.coordinator_exit() {
                return Some(Err(status));
            }
            self.revive_workers();
            let now_done = self.status().and_then(|s| s["done"].as_u64()).unwrap_or(0);
            (now_done >= done).then_some(Ok(now_done))
        });
        match reached {
            Some(Ok(now_done)) => Some(now_done),
            Some(Err(status)) if status.success() => None,
            Some(Err(status)) => panic!(
                "the coordinator failed ({status}) before {why}\n{}",
                self.logs()
            ),
            None => panic!("no progress to {done} tasks done ({why})\n{}", self.logs()),
        }
    }

    /// Waits for the coordinator to finish the sweep and exit, keeping workers alive.
    pub fn wait_finished(&mut self, timeout: Duration) {
        let exit = poll(Instant::now() + timeout, Duration::from_millis(100), || {
            let exit = self.coordinator_exit();
            if exit.is_none() {
                self.revive_workers();
            }
            exit
        });
        match exit {
            Some(status) => assert!(status.success(), "coordinator failed:\n{}", self.logs()),
            None => panic!("the sweep did not finish in {timeout:?}\n{}", self.logs()),
        }
    }

    /// Once the coordinator has finished: every worker still running must exit 0 within
    /// `timeout`, having heard that the sweep is finished.
    pub fn assert_workers_end_with_the_sweep(&mut self, timeout: Duration) {
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            let Some(proc) = worker.proc.as_mut() else {
                continue;
            };
            let exit = proc.wait_exit(timeout);
            let log = proc.log_text();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            assert!(
                exit.is_some_and(|s| s.success()) && log.contains("sweep finished"),
                "worker {slot} did not end with the sweep ({exit:?}):\n{}",
                tail.join("\n")
            );
        }
    }

    /// SIGKILLs the coordinator; `aim` set, first waits up to that long for its state
    /// thread to be inside the `fdatasync` of a commit. Returns where it was.
    fn kill_coordinator(&mut self, aim: Option<Duration>) -> Phase {
        let proc = self.coordinator.as_mut().unwrap();
        let pid = proc.child.id();
        let state_thread = procfs::thread_id(pid, "sweep-state");
        let committing = || state_thread.is_some_and(|tid| procfs::syncing(pid, tid));
        if let Some(window) = aim {
            poll(Instant::now() + window, Duration::from_micros(100), || {
                committing().then_some(())
            });
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

    /// SIGKILLs slot `slot`'s worker; `aim` set, first waits up to that long for it to be
    /// fetching, and then a random moment more. Returns where it was.
    fn kill_worker(&mut self, slot: usize, aim: Option<Duration>, rng: &mut Rng) -> Phase {
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
        let into_the_fetch = rng.millis(400);
        let caught = aim.is_some_and(|window| {
            poll(Instant::now() + window, Duration::from_millis(2), || {
                fetching().then_some(())
            })
            .is_some()
        });
        if caught {
            std::thread::sleep(into_the_fetch);
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

impl Drop for Sweep {
    fn drop(&mut self) {
        // A failed run keeps its logs and state for a look.
        if std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!("chaos: kept {}", self.root.path().display());
        }
    }
}

/// The exports of a clean run of the [`DEMO`] grid.
pub fn clean_exports() -> &'static Exports {
    clean_exports_of(&DEMO)
}

/// The exports of a clean run of `grid`'s spec (no faults, no throttle, two workers, one
/// fetching whole files), made once per test binary and kept in memory.
pub fn clean_exports_of(grid: &'static Grid) -> &'static Exports {
    grid.clean.get_or_init(|| {
        let mut sweep = Sweep::of(grid, None, None);
        sweep.start_coordinator().unwrap();
        sweep.add_worker(false);
        sweep.add_worker(true);
        sweep.wait_finished(Duration::from_secs(600));
        sweep.assert_workers_end_with_the_sweep(Duration::from_secs(60));
        let state = check_state(&sweep.state_dir, grid.tasks());
        let (accepted, refused) = acknowledged(sweep.root.path());
        assert_eq!(
            (accepted.len() as u64, refused, state.duplicates),
            (grid.tasks(), 0, 0)
        );
        read_exports(&sweep.state_dir.join("exports"))
    })
}

/// What a chaos run did and survived.
#[derive(Debug)]
pub struct Report {
    pub settings: Settings,
    /// Every kill that landed (a coordinator killed while starting counts on its own).
    pub kills: Vec<Phase>,
    /// Rounds of the kill loop run: fewer than `settings.kills` when the sweep finished
    /// first.
    pub rounds: usize,
    /// Coordinator restarts after more than a lease's time down.
    pub down_long: usize,
    pub state: StateFacts,
    pub unexpected_exits: Vec<String>,
    pub wall: Duration,
}

impl Report {
    pub fn count(&self, phase: Phase) -> usize {
        self.kills.iter().filter(|&&p| p == phase).count()
    }

    /// Whether the sweep finished before every planned kill landed.
    pub fn landed_short(&self) -> bool {
        self.rounds < self.settings.kills
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |p| self.count(p);
        let coordinator = c(Phase::Commit) + c(Phase::Starting) + c(Phase::CoordinatorElsewhere);
        writeln!(
            f,
            "chaos seed {}: {} kills survived, {} workers, Hub at {} MB/s",
            self.settings.seed,
            self.kills.len(),
            self.settings.workers,
            self.settings.throttle_mbps
        )?;
        if self.landed_short() {
            writeln!(
                f,
                "  the sweep finished with {} of the {} planned kills landed: a slower Hub \
                 (NEUROMFA_CHAOS_THROTTLE below {}) lands them all",
                self.rounds, self.settings.kills, self.settings.throttle_mbps
            )?;
        }
        writeln!(
            f,
            "  coordinator {coordinator}: {} inside a commit's fdatasync, {} while starting, {} \
             elsewhere; {} times down longer than a lease",
            c(Phase::Commit),
            c(Phase::Starting),
            c(Phase::CoordinatorElsewhere),
            self.down_long
        )?;
        writeln!(
            f,
            "  workers {}: {} mid ranged fetch, {} mid full download, {} elsewhere",
            self.kills.len() - coordinator,
            c(Phase::RangedFetch),
            c(Phase::FullDownload),
            c(Phase::WorkerElsewhere)
        )?;
        writeln!(f, "  {}", self.state)?;
        write!(
            f,
            "  wall time {:.1} s (the clean run not counted); {} tasks, each done once",
            self.wall.as_secs_f64(),
            DEMO.tasks()
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
    let mut down_long = 0;
    let mut rounds = 0;
    for i in 0..settings.kills {
        // Kills are spread over the first 80 % of the sweep, so it cannot end before the
        // last one: kill i waits for i/kills of that share to be done.
        let gate = |i: usize| i as u64 * DEMO.tasks() * 4 / (5 * settings.kills as u64);
        let why = format!("kill {} of {}", i + 1, settings.kills);
        // A sweep that finishes first is checked all the same, with the kills that landed.
        let Some(done) = sweep.wait_progress(gate(i), deadline, &why) else {
            eprintln!("chaos: the sweep finished before {why}");
            break;
        };
        // Behind the sweep (the next kill's share is already done): no pauses. They are
        // drawn all the same, so a seed kills the same sequence whatever the timing.
        let behind = done >= gate(i + 1);
        let (pause, restart_pause) = (rng.millis(800), rng.millis(500));
        if !behind {
            std::thread::sleep(pause);
        }
        // Target 0 is the coordinator, k the worker of slot k - 1. The first two kills are
        // aimed, at a commit and at a ranged fetch (the last slot's worker fetches by
        // ranges), and wait longer for them, so that even a short run has both.
        let (target, aim) = match i {
            0 => (0, Some(Duration::from_secs(60))),
            1 => (settings.workers, Some(Duration::from_secs(60))),
            _ => {
                let target = rng.below(settings.workers as u64 + 1) as usize;
                (target, rng.coin().then_some(Duration::from_secs(10)))
            }
        };
        let phase = if target == 0 {
            sweep.kill_coordinator(aim)
        } else {
            sweep.kill_worker(target - 1, aim, &mut rng)
        };
        kills.push(phase);
        if !behind {
            std::thread::sleep(restart_pause);
        }
        // Now and then the coordinator stays down longer than a lease, so leases lapse while
        // their workers compute, or its next start is killed too. Drawn for every kill.
        let (long_down, kill_start, start_for) =
            (rng.below(8) == 0, rng.below(8) == 0, rng.millis(25));
        if target == 0 && long_down {
            std::thread::sleep(Duration::from_secs(u64::from(LEASE_SECONDS) + 1));
            down_long += 1;
        }
        if target == 0 && kill_start {
            kills.push(sweep.kill_starting_coordinator(start_for));
        }
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
        rounds += 1;
    }
    sweep.wait_finished(deadline.saturating_duration_since(Instant::now()));
    let wall = started.elapsed();
    sweep.assert_workers_end_with_the_sweep(Duration::from_secs(60));
    let state = check_state(&sweep.state_dir, DEMO.tasks());
    // A worker killed between the reply and its log line leaves no line, so these are
    // bounds: no task accepted twice, no repeat the coordinator did not count.
    let (accepted, refused) = acknowledged(sweep.root.path());
    let twice: Vec<_> = accepted.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "results accepted twice: {twice:?}");
    assert!(
        refused <= state.duplicates,
        "{refused} repeats refused, {} counted",
        state.duplicates
    );
    let report = Report {
        settings: settings.clone(),
        kills,
        rounds,
        down_long,
        state,
        unexpected_exits: sweep.unexpected_exits.clone(),
        wall,
    };
    eprintln!("{report}");
    assert_same_exports(clean, &sweep.state_dir.join("exports"));
    eprintln!(
        "  {} byte-identical to a clean run's",
        compared().join(", ")
    );
    report
}
