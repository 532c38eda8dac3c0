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
