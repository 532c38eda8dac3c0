//! Partitions between workers and the coordinator: a sweep of the demo's checkpoints
//! ([`Sweep`]) whose every worker dials the coordinator through a [`FaultyLink`] of its
//! own, while the Hub stays reachable, so a worker cut off keeps fetching and computing.
//! When the sweep is done, every task must be done once with one result, the workers'
//! logs must agree, and the exports must equal a clean run's byte for byte.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::chaos::{clean_exports_of, poll, Grid, Rng, Sweep, DEMO};
use super::chaos_checks::{acknowledged, assert_same_exports, check_state, StateFacts};
use super::procfs;
use super::proxy::{Faults, FaultyLink};

/// A sweep whose workers each reach the coordinator through a link of their own.
pub struct Partitioned {
    pub sweep: Sweep,
    pub links: Vec<FaultyLink>,
}

impl Partitioned {
    /// Starts a serving coordinator for `grid` (the Hub at `throttle_mbps`) and `workers`
    /// workers, each behind a clean link (seeded from `seed`), giving up after
    /// `give_up_after` seconds without the coordinator.
    pub fn start(
        grid: &'static Grid,
        workers: usize,
        throttle_mbps: Option<f64>,
        give_up_after: u64,
        seed: u64,
    ) -> Partitioned {
        let mut sweep = Sweep::of(grid, throttle_mbps, None).serving();
        sweep.start_coordinator().unwrap();
        let links: Vec<FaultyLink> = (0..workers as u64)
            .map(|i| FaultyLink::start(sweep.coordinator_addr(), seed.wrapping_add(i)))
            .collect();
        for link in &links {
            sweep.add_worker_via(link.url(), give_up_after);
        }
        Partitioned { sweep, links }
    }

    /// Polls the coordinator's status (directly, not through a link) until `ready` holds;
    /// panics after `timeout`, saying what was awaited.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = poll(Instant::now() + timeout, Duration::from_millis(100), || {
            self.sweep.status().filter(|s| ready(s))
        });
        found.unwrap_or_else(|| panic!("never {what}\n{}", self.sweep.logs()))
    }

    /// Tasks done so far.
    pub fn done(&self) -> u64 {
        self.sweep
            .status()
            .and_then(|s| s["done"].as_u64())
            .unwrap_or(0)
    }

    /// Every log of slot `slot`'s workers (each start has its own), in order.
    pub fn worker_log(&self, slot: usize) -> String {
        let prefix = format!("worker{slot}-");
        let mut logs: Vec<_> = std::fs::read_dir(self.sweep.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits until slot `slot`'s log holds a line with every one of `words`.
    pub fn wait_log_line(&self, slot: usize, words: &[&str], timeout: Duration) {
        let found = poll(Instant::now() + timeout, Duration::from_millis(100), || {
            let log = self.worker_log(slot);
            log.lines()
                .any(|line| words.iter().all(|w| line.contains(w)))
                .then_some(())
        });
        if found.is_none() {
            panic!(
                "worker {slot} never logged a line with {words:?}\n{}",
                self.sweep.logs()
            );
        }
    }

    /// Waits until slot `slot`'s worker is fetching by ranges: it holds a lease.
    pub fn wait_fetching(&mut self, slot: usize, timeout: Duration) {
        let pid = self
            .sweep
            .worker(slot)
            .expect("a running worker")
            .child
            .id();
        let fetching = poll(Instant::now() + timeout, Duration::from_millis(2), || {
            procfs::thread_id(pid, "ranged-reads").map(|_| ())
        });
        if fetching.is_none() {
            panic!("worker {slot} never fetched\n{}", self.sweep.logs());
        }
    }

    /// Waits for every task to be done and every worker to hear that the sweep is finished
    /// and exit 0, stops the coordinator, and checks the state, the workers' logs and the
    /// exports; returns what the state counts.
    pub fn finish_and_check(mut self) -> StateFacts {
        let grid = self.sweep.grid;
        let clean = clean_exports_of(grid);
        for link in &self.links {
            link.heal();
        }
        self.wait_status("finished the sweep", Duration::from_secs(300), |s| {
            s["done"].as_u64() == Some(grid.tasks())
        });
        self.sweep
            .assert_workers_end_with_the_sweep(Duration::from_secs(120));
        self.sweep.stop_coordinator();
        let state = check_state(&self.sweep.state_dir, grid.tasks());
        // A worker stopped between the reply and its log line leaves no line, so these are
        // bounds: no task accepted twice, no repeat the coordinator did not count.
        let (accepted, refused) = acknowledged(self.sweep.root.path());
        let twice: Vec<_> = accepted.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "results accepted twice: {twice:?}");
        assert!(
            refused <= state.duplicates,
            "{refused} repeats refused, {} counted",
            state.duplicates
        );
        assert_same_exports(clean, &self.sweep.state_dir.join("exports"));
        state
    }
}

/// What the long partition run does; `NEUROMFA_PARTITION_{EVENTS,SEED}` override it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub events: usize,
    pub workers: usize,
    pub throttle_mbps: f64,
}

impl Settings {
    pub fn from_env(events: usize) -> Settings {
        let env = |name: &str| -> Option<u64> {
            let text = std::env::var(name).ok()?;
            Some(
                text.parse()
                    .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
            )
        };
        let seed = env("NEUROMFA_PARTITION_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        });
        let events = env("NEUROMFA_PARTITION_EVENTS").map_or(events, |n| n as usize);
        Settings {
            seed,
            events,
            workers: 3,
            // Each event holds its fault for up to a few seconds: the sweep must outlast them.
            throttle_mbps: (10.0 / events.max(1) as f64).clamp(0.05, 1.0),
        }
    }
}

/// A fault the long run puts on a link, or on every link at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// Both directions swallowed, for longer than a lease.
    LongPartition,
    /// Both directions swallowed, within a lease.
    ShortPartition,
    /// Requests pass, answers are swallowed: calls are delivered and retried.
    AnswersLost,
    /// Answers pass, requests are swallowed.
    RequestsLost,
    /// Every chunk held up to half a second.
    Delay,
    /// A fifth of the chunks end their connection.
    Cuts,
    /// Every open connection cut at once.
    CutAll,
    /// The coordinator partitioned from every worker at once.
    Isolated,
}

const EVENTS: [Event; 8] = [
    Event::LongPartition,
    Event::ShortPartition,
    Event::AnswersLost,
    Event::RequestsLost,
    Event::Delay,
    Event::Cuts,
    Event::CutAll,
    Event::Isolated,
];

/// What a long partition run did and survived.
#[derive(Debug)]
pub struct Report {
    pub settings: Settings,
    pub events: Vec<Event>,
    pub cuts: u64,
    pub swallowed: u64,
    pub state: StateFacts,
    pub wall: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts: BTreeMap<Event, usize> = BTreeMap::new();
        for &event in &self.events {
            *counts.entry(event).or_default() += 1;
        }
        writeln!(
            f,
            "partition seed {}: {} of {} events survived, {} workers, Hub at {} MB/s",
            self.settings.seed,
            self.events.len(),
            self.settings.events,
            self.settings.workers,
            self.settings.throttle_mbps
        )?;
        writeln!(f, "  events: {counts:?}")?;
        writeln!(
            f,
            "  connections cut mid-exchange: {}; chunks swallowed by partitions: {}",
            self.cuts, self.swallowed
        )?;
        writeln!(f, "  {}", self.state)?;
        write!(
            f,
            "  wall time {:.1} s (the clean run not counted); {} tasks, each done once, exports byte-identical",
            self.wall.as_secs_f64(),
            DEMO.tasks()
        )
    }
}

/// Sweeps the demo grid while a seeded loop puts `settings.events` faults on the links,
/// each held for a while and then healed; checks what the sweep ends with.
pub fn run(settings: &Settings) -> Report {
    assert!(
        procfs::available(),
        "the harness watches processes through /proc"
    );
    eprintln!(
        "partition: seed {} ({} events, {} workers)",
        settings.seed, settings.events, settings.workers
    );
    clean_exports_of(&DEMO);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300 + 20 * settings.events as u64);
    let mut rng = Rng::new(settings.seed);
    let partitioned = Partitioned::start(
        &DEMO,
        settings.workers,
        Some(settings.throttle_mbps),
        120,
        settings.seed,
    );
    let mut events = Vec::with_capacity(settings.events);
    for i in 0..settings.events {
        // Spread over the first 80 % of the sweep, as the chaos run spreads its kills.
        let gate = i as u64 * DEMO.tasks() * 4 / (5 * settings.events as u64);
        let reached = poll(deadline, Duration::from_millis(200), || {
            (partitioned.done() >= gate).then_some(())
        });
        if reached.is_none() {
            panic!(
                "no progress to {gate} tasks done\n{}",
                partitioned.sweep.logs()
            );
        }
        let event = EVENTS[rng.below(EVENTS.len() as u64) as usize];
        let link = rng.below(settings.workers as u64) as usize;
        // Drawn for every event, so a seed runs the same sequence whatever the timing.
        let (hold, delay) = (rng.millis(2_000), rng.millis(500));
        let faults = match event {
            Event::LongPartition | Event::ShortPartition | Event::Isolated => Faults::PARTITIONED,
            Event::AnswersLost => Faults {
                down_blackholed: true,
                ..Faults::CLEAN
            },
            Event::RequestsLost => Faults {
                up_blackholed: true,
                ..Faults::CLEAN
            },
            Event::Delay => Faults {
                delay,
                ..Faults::CLEAN
            },
            Event::Cuts => Faults {
                cut_probability: 0.2,
                ..Faults::CLEAN
            },
            Event::CutAll => Faults::CLEAN,
        };
        let hold = match event {
            // The test spec's lease is 3 s.
            Event::LongPartition | Event::Isolated => Duration::from_secs(4) + hold,
            _ => hold,
        };
        let targets: Vec<&FaultyLink> = match event {
            Event::Isolated => partitioned.links.iter().collect(),
            _ => vec![&partitioned.links[link]],
        };
        for target in &targets {
            target.set(faults);
            if event == Event::CutAll {
                target.cut_all();
            }
        }
        std::thread::sleep(hold);
        for target in &targets {
            target.heal();
        }
        events.push(event);
    }
    let (cuts, swallowed) = partitioned.links.iter().fold((0, 0), |(c, s), link| {
        let stats = link.stats();
        (
            c + stats.cuts.load(std::sync::atomic::Ordering::Relaxed),
            s + stats.swallowed.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let state = partitioned.finish_and_check();
    let report = Report {
        settings: settings.clone(),
        events,
        cuts,
        swallowed,
        state,
        wall: started.elapsed(),
    };
    eprintln!("{report}");
    report
}
