//! Plain records passed between the schedule, the integrity ledger and the store: what
//! the store holds (`Stored…`, read back on open) and what a decision changed (`Change`,
//! written by the store before the decision is acknowledged). Data, not decisions.

use neuromfa_common::{RevisionWeights, SeedResult, WeightFormat};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Leased,
    Done,
    Failed,
    /// Not computed: its checkpoint duplicates another's (policy `skip` or `reuse`).
    Skipped,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Leased => "leased",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => TaskState::Pending,
            "leased" => TaskState::Leased,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            "skipped" => TaskState::Skipped,
            _ => return None,
        })
    }
}

/// What a worker measured while running a task. A fetch that served several tasks is
/// split between them, so sums over tasks are what was really fetched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub bytes_fetched: u64,
    pub requests: u32,
    pub fetch_ms: u64,
    pub compute_ms: u64,
    /// How the weights came: `full` or `ranges` (empty when the worker did not say).
    pub fetch_mode: String,
}

/// Where a task is in its life: what scheduling decisions change and the store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProgress {
    pub state: TaskState,
    /// Leases taken (a released lease gives its attempt back).
    pub attempts: u32,
    /// The lease holder, while leased.
    pub worker: Option<String>,
    pub deadline_ms: u64,
    pub last_error: Option<String>,
}

impl TaskProgress {
    /// A task never leased.
    pub fn pending() -> Self {
        TaskProgress {
            state: TaskState::Pending,
            attempts: 0,
            worker: None,
            deadline_ms: 0,
            last_error: None,
        }
    }
}

/// A task as stored, with its result when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    pub id: i64,
    pub model: String,
    pub step: u64,
    /// The checkpoint's revision as recorded when the task was added.
    pub revision: String,
    pub seed: u32,
    pub progress: TaskProgress,
    pub result: Option<StoredResult>,
}

/// A stored result. `json` (the whole `SeedResult`) is read only when asked for: the
/// schedule needs `(α0, w)` and the costs, the exports need everything.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub alpha0: f64,
    pub width: f64,
    /// The worker that sent it.
    pub worker: String,
    pub metrics: TaskMetrics,
    pub json: Option<String>,
}

/// A registered worker as stored (liveness is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorker {
    pub id: String,
    pub host: String,
    pub cores: u32,
    pub version: String,
    pub registered_ms: u64,
}

/// One change a decision made, to be stored in the transaction that acknowledges it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A task's progress, written whole.
    TaskUpdated {
        id: i64,
        progress: TaskProgress,
    },
    /// A held lease's deadline moved (a heartbeat); nothing else changed.
    LeaseExtended {
        id: i64,
        deadline_ms: u64,
    },
    /// A task's first result.
    ResultStored {
        task_id: i64,
        worker: String,
        result: Box<SeedResult>,
        metrics: TaskMetrics,
        finished_ms: u64,
    },
    /// A result for a task already done: counted, not stored.
    DuplicateCounted,
    WorkerRegistered(StoredWorker),
    /// The breaker's state, written whole (it changes only when tasks fail, or succeed
    /// after failures).
    BreakerUpdated(StoredBreaker),
    /// What a checkpoint's revision serves.
    RevisionResolved {
        model: String,
        step: u64,
        weights_sha256: String,
        resolved: Box<RevisionWeights>,
    },
}

/// A checkpoint's resolution as stored: the hash of its weights and their format (`None`
/// for resolutions stored before formats were recorded, until resolved again), and what a
/// lease of it hands its worker (`None` for resolutions stored before that was recorded:
/// their workers list the revision themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRevision {
    pub model: String,
    pub step: u64,
    pub weights_sha256: String,
    pub format: Option<WeightFormat>,
    pub resolved: Option<RevisionWeights>,
}

/// Why an attempt failed, as the worker classified it: what it costs the task and whether
/// it says something about the whole sweep (see [`crate::breaker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// Worth trying again later (rate limiting, 5xx, resets, timeouts, a worker's local
    /// cache): the task is queued again after a wait and keeps its attempt.
    Transient,
    /// The checkpoint's own fault (its bytes or files are bad): the task fails at once.
    Checkpoint,
    /// The Hub refused the credentials (401, 403).
    HubAuth,
    /// The Hub does not know the repository.
    HubRepoMissing,
    /// The Hub refused the request as unprocessable (422).
    HubUnprocessable,
    /// The Hub and the client do not speak the same protocol (another 4xx, an answer the
    /// client cannot read, byte ranges not honoured).
    Protocol,
}

impl FailureClass {
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Transient,
        FailureClass::Checkpoint,
        FailureClass::HubAuth,
        FailureClass::HubRepoMissing,
        FailureClass::HubUnprocessable,
        FailureClass::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Checkpoint => "checkpoint",
            FailureClass::HubAuth => "hub-auth",
            FailureClass::HubRepoMissing => "hub-repo-missing",
            FailureClass::HubUnprocessable => "hub-unprocessable",
            FailureClass::Protocol => "protocol",
        }
    }

    /// A class that, seen on several checkpoints, is one cause rather than several.
    pub fn is_systemic(self) -> bool {
        !matches!(self, FailureClass::Transient | FailureClass::Checkpoint)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attempt as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub error: String,
    /// How long the Hub asked to wait (`Retry-After`, `RateLimit`), for transient failures.
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    pub fn new(class: FailureClass, error: impl Into<String>) -> Self {
        Failure {
            class,
            error: error.into(),
            retry_after_ms: None,
        }
    }

    pub fn retry_after(mut self, ms: Option<u64>) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

/// A (model, step) as stored: grids may grow between runs, so records name checkpoints
/// rather than number them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckpointName {
    pub model: String,
    pub step: u64,
}

/// Which rule tripped the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum TripCause {
    /// One systemic class on several checkpoints.
    SameClass { class: FailureClass },
    /// Failures on several checkpoints in a row, with no success between.
    Streak,
}

/// A failure the breaker counts, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredStrike {
    pub task_id: i64,
    pub checkpoint: CheckpointName,
    pub class: FailureClass,
}

/// A tripped breaker, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTrip {
    pub cause: TripCause,
    /// The failure that tripped it.
    pub error: String,
    pub since_ms: u64,
    /// Checkpoints whose failures tripped it or came while it was tripped.
    pub implicated: Vec<CheckpointName>,
    pub failed_probes: u32,
}

/// The breaker, as stored (the `breaker` row of the sweep's metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBreaker {
    /// Failures counted since the last success.
    pub streak: Vec<StoredStrike>,
    pub trip: Option<StoredTrip>,
    /// Checkpoints a trip implicated that proved to fail on their own once it closed.
    pub cleared: Vec<CheckpointName>,
}
