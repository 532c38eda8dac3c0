//! The breaker: failures that share one cause across checkpoints stop the leasing, so a
//! broken Hub, token or protocol costs a few tasks' first attempts instead of the sweep.
//! Pure: the schedule reports every failure and success to it, asks it whether to lease,
//! and applies what it answers; the store keeps its [`StoredBreaker`].
//!
//! Rules, over the failures since the last success (transient ones do not count: they
//! are retried and cost nothing):
//! - one systemic class ([`FailureClass::is_systemic`]) on [`SAME_CLASS_CHECKPOINTS`]
//!   distinct checkpoints trips it;
//! - failures of any class on [`STREAK_CHECKPOINTS`] distinct checkpoints trip it.
//!
//! Tripping gives every counted failure its attempt back (a failed task is pending again)
//! and stops leasing. Failures of leases still out while it is tripped are given back
//! too. Every `probe_ms` (doubling after each failed probe, up to 16 times) one task is
//! leased as a probe, from a checkpoint the trip did not implicate when there is one; any
//! success closes the breaker, as does being told to resume. Once closed, the
//! checkpoints it implicated are trusted to speak for themselves: a failure of their own
//! bytes then fails them as usual without counting towards a new trip.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{
    CheckpointName, FailureClass, StoredBreaker, StoredStrike, StoredTrip, TripCause,
};
use crate::spec::CheckpointKey;

/// Distinct checkpoints failing with one systemic class, no success between, that trip
/// the breaker: two, because one repository can be gated or missing alone, while the
/// same refusal from a second checkpoint is the Hub's answer to everything.
pub const SAME_CLASS_CHECKPOINTS: usize = 2;

/// Distinct checkpoints failing in a row, no success between, that trip the breaker
/// whatever the classes: five. Leases go out step-major across models, so in a sweep
/// that works successes come between failures; bad uploads come a few at a time (four
/// corrupt archives in a row must still fail alone); five distinct checkpoints failing
/// with nothing succeeding is one cause nobody classified (a worker bug, a mirror serving
/// garbage), and costs five checkpoints' first attempts, all given back.
pub const STREAK_CHECKPOINTS: usize = 5;

/// Each failed probe doubles the wait before the next, this many times at most (16 times
/// the first wait).
const MAX_PROBE_DOUBLINGS: u32 = 4;

/// A failure the breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strike {
    pub task_id: i64,
    /// Index into the schedule's checkpoints.
    pub checkpoint: usize,
    pub class: FailureClass,
}

/// A tripped breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub cause: TripCause,
    /// The failure that tripped it.
    pub error: String,
    pub since_ms: u64,
    /// Checkpoints whose failures tripped it or came while it was tripped.
    pub implicated: BTreeSet<usize>,
    pub failed_probes: u32,
}

impl Trip {
    /// One line saying why leasing stopped.
    pub fn reason(&self, checkpoints: &[CheckpointKey]) -> String {
        let named: Vec<String> = self
            .implicated
            .iter()
            .filter_map(|&c| checkpoints.get(c))
            .map(|k| format!("{} step {}", k.model, k.step))
            .collect();
        let rule = match self.cause {
            TripCause::SameClass { class } => {
                format!("{class} failures on {} checkpoints", named.len())
            }
            TripCause::Streak => format!(
                "{} checkpoints failed in a row with no success between",
                named.len()
            ),
        };
        format!("{rule} ({}); last: {}", named.join(", "), self.error)
    }
}

/// What a counted failure does to its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It costs the task, as its class says (a non-transient failure fails it).
    Charge,
    /// It costs nothing: the task goes back to the queue with its attempt.
    Hold,
    /// It tripped the breaker: these tasks (this one among them) get their attempts back.
    Trip(Vec<i64>),
}

/// Whether a lease may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leasing {
    Open,
    /// Tripped, and a probe is due: one task.
    Probe,
    Held,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    /// Wait before the first probe.
    probe_ms: u64,
    /// Failures counted since the last success.
    streak: Vec<Strike>,
    trip: Option<Trip>,
    /// Checkpoints a closed trip implicated: their own failures count as theirs.
    cleared: BTreeSet<usize>,
    /// The task leased as a probe, while its lease is out.
    probe: Option<i64>,
    next_probe_ms: u64,
}

impl Breaker {
    pub fn new(probe_ms: u64) -> Self {
        Breaker {
            probe_ms: probe_ms.max(1),
            streak: Vec::new(),
            trip: None,
            cleared: BTreeSet::new(),
            probe: None,
            next_probe_ms: 0,
        }
    }

    /// Wait before the first probe.
    pub fn probe_ms(&self) -> u64 {
        self.probe_ms
    }

    pub fn tripped(&self) -> Option<&Trip> {
        self.trip.as_ref()
    }

    /// When the next probe may go out, while tripped with no probe out.
    pub fn next_probe_ms(&self) -> Option<u64> {
        (self.trip.is_some() && self.probe.is_none()).then_some(self.next_probe_ms)
    }

    /// What a non-transient failure means, and what it does to the breaker.
    pub fn failed(&mut self, strike: Strike, error: &str, now_ms: u64) -> Verdict {
        if let Some(trip) = &mut self.trip {
            if self.probe == Some(strike.task_id) {
                self.probe = None;
                trip.failed_probes += 1;
                let doublings = trip.failed_probes.min(MAX_PROBE_DOUBLINGS);
                let wait = self.probe_ms.saturating_mul(1 << doublings);
                self.next_probe_ms = now_ms.saturating_add(wait);
                // Tried alone, a checkpoint whose own bytes are bad is its own failure.
                if strike.class == FailureClass::Checkpoint {
                    return Verdict::Charge;
                }
            }
            trip.implicated.insert(strike.checkpoint);
            return Verdict::Hold;
        }
        if strike.class == FailureClass::Checkpoint && self.cleared.contains(&strike.checkpoint) {
            return Verdict::Charge;
        }
        self.streak.retain(|s| s.task_id != strike.task_id);
        self.streak.push(strike);
        let Some(cause) = self.cause() else {
            return Verdict::Charge;
        };
        let tasks: BTreeSet<i64> = self.streak.iter().map(|s| s.task_id).collect();
        self.trip = Some(Trip {
            cause,
            error: error.to_string(),
            since_ms: now_ms,
            implicated: self.streak.iter().map(|s| s.checkpoint).collect(),
            failed_probes: 0,
        });
        self.streak.clear();
        self.next_probe_ms = now_ms.saturating_add(self.probe_ms);
        Verdict::Trip(tasks.into_iter().collect())
    }

    /// The rule the streak breaks, if any.
    fn cause(&self) -> Option<TripCause> {
        let mut by_class: BTreeMap<FailureClass, BTreeSet<usize>> = BTreeMap::new();
        for s in &self.streak {
            by_class.entry(s.class).or_default().insert(s.checkpoint);
        }
        let same_class = by_class
            .iter()
            .find(|(class, checkpoints)| {
                class.is_systemic() && checkpoints.len() >= SAME_CLASS_CHECKPOINTS
            })
            .map(|(&class, _)| TripCause::SameClass { class });
        let distinct: BTreeSet<usize> = self.streak.iter().map(|s| s.checkpoint).collect();
        same_class.or((distinct.len() >= STREAK_CHECKPOINTS).then_some(TripCause::Streak))
    }

    /// A task succeeded: the streak is over and a tripped breaker closes. Whether
    /// anything changed, and the trip it closed.
    pub fn succeeded(&mut self) -> (bool, Option<Trip>) {
        let had_streak = !self.streak.is_empty();
        self.streak.clear();
        let closed = self.close();
        (had_streak || closed.is_some(), closed)
    }

    /// Told to resume: closes a tripped breaker; the trip it closed.
    pub fn resume(&mut self) -> Option<Trip> {
        self.close()
    }

    fn close(&mut self) -> Option<Trip> {
        let trip = self.trip.take()?;
        self.probe = None;
        self.cleared.extend(trip.implicated.iter().copied());
        Some(trip)
    }

    /// Whether a lease may go out at `now_ms`.
    pub fn leasing(&self, now_ms: u64) -> Leasing {
        if self.trip.is_none() {
            return Leasing::Open;
        }
        match self.next_probe_ms() {
            Some(at) if now_ms >= at => Leasing::Probe,
            _ => Leasing::Held,
        }
    }

    /// `task_id` went out as the probe.
    pub fn probe_sent(&mut self, task_id: i64) {
        self.probe = Some(task_id);
    }

    /// `task_id`'s lease ended without an answer (given back, or lapsed): if it was the
    /// probe, the next lease probes again.
    pub fn lease_ended(&mut self, task_id: i64) {
        if self.probe == Some(task_id) {
            self.probe = None;
        }
    }

    /// Whether the trip implicated `checkpoint`.
    pub fn implicates(&self, checkpoint: usize) -> bool {
        self.trip
            .as_ref()
            .is_some_and(|t| t.implicated.contains(&checkpoint))
    }

    /// The record the store keeps.
    pub fn record(&self, checkpoints: &[CheckpointKey]) -> StoredBreaker {
        let name = |&slot: &usize| {
            let key = &checkpoints[slot];
            CheckpointName {
                model: key.model.clone(),
                step: key.step,
            }
        };
        StoredBreaker {
            streak: self
                .streak
                .iter()
                .map(|s| StoredStrike {
                    task_id: s.task_id,
                    checkpoint: name(&s.checkpoint),
                    class: s.class,
                })
                .collect(),
            trip: self.trip.as_ref().map(|t| StoredTrip {
                cause: t.cause,
                error: t.error.clone(),
                since_ms: t.since_ms,
                implicated: t.implicated.iter().map(name).collect(),
                failed_probes: t.failed_probes,
            }),
            cleared: self.cleared.iter().map(name).collect(),
        }
    }

    /// The breaker a record describes, its checkpoints found by `slot_of` (those no longer
    /// in the grid are left out). A tripped breaker probes at once: whoever started the
    /// coordinator again may have fixed the cause.
    pub fn restore(
        probe_ms: u64,
        stored: StoredBreaker,
        slot_of: impl Fn(&CheckpointName) -> Option<usize>,
    ) -> Self {
        let mut breaker = Breaker::new(probe_ms);
        breaker.streak = stored
            .streak
            .iter()
            .filter_map(|s| {
                Some(Strike {
                    task_id: s.task_id,
                    checkpoint: slot_of(&s.checkpoint)?,
                    class: s.class,
                })
            })
            .collect();
        breaker.trip = stored.trip.map(|t| Trip {
            cause: t.cause,
            error: t.error,
            since_ms: t.since_ms,
            implicated: t.implicated.iter().filter_map(&slot_of).collect(),
            failed_probes: t.failed_probes,
        });
        breaker.cleared = stored.cleared.iter().filter_map(&slot_of).collect();
        breaker
    }
}
