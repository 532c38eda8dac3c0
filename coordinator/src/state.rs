//! Durable sweep state: every task, lease, attempt, error and result in SQLite (WAL),
//! mirrored in memory for scheduling. Callers group mutations into transactions
//! (`begin` … `commit`) and acknowledge nothing before `commit` has returned, so an
//! acknowledged lease or result survives a crash of the process or the machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use neuromfa_common::stats::{aggregate, SeedPoint, StepAggregate};
use neuromfa_common::{AnalysisParams, SeedResult};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::integrity::DuplicatePolicy;
use crate::spec::{CheckpointKey, SweepSpec};

pub const DB_FILE: &str = "sweep.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("sweep state {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the analysis settings differ from those the sweep in {path} was started with\n  was: {old}\n  now: {new}\nresume with the old settings, or start a new sweep (--new-sweep) to recompute everything")]
    AnalysisChanged {
        path: PathBuf,
        old: String,
        new: String,
    },
    #[error("{path} is in use by a running coordinator; stop it first (or talk to it)")]
    Locked { path: PathBuf },
    #[error("{path} holds no sweep (no spec recorded)")]
    NoSweep { path: PathBuf },
    #[error("unknown worker `{0}`: register first")]
    UnknownWorker(String),
    #[error("unknown task {0}")]
    UnknownTask(i64),
    #[error("task {task}: result is for step {got_step} seed {got_seed}, task is step {step} seed {seed}")]
    MismatchedResult {
        task: i64,
        step: u64,
        seed: u32,
        got_step: u64,
        got_seed: u32,
    },
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl StateError {
    /// SQLite found no room to write: the state's disk (or its quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StateError::Db { source: rusqlite::Error::SqliteFailure(e, _), .. }
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

type Result<T> = std::result::Result<T, StateError>;

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

    fn parse(text: &str) -> Option<Self> {
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

/// How to open a state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Continue the sweep recorded there (or start one if there is none).
    Resume,
    /// Move any earlier sweep aside and start afresh.
    NewSweep,
}

/// One leased task as handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub task_id: i64,
    pub model: String,
    pub revision: String,
    pub step: u64,
    pub seed: u32,
    pub attempt: u32,
    pub deadline_ms: u64,
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

/// Fetch costs summed over a model's finished tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTotals {
    pub bytes_fetched: u64,
    pub requests: u64,
    pub fetch_ms: u64,
}

impl FetchTotals {
    fn add(&mut self, metrics: &TaskMetrics) {
        self.bytes_fetched += metrics.bytes_fetched;
        self.requests += u64::from(metrics.requests);
        self.fetch_ms += metrics.fetch_ms;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Accepted,
    /// The task was already done: counted, not stored again.
    Duplicate,
}

#[derive(Debug, Clone)]
struct TaskRecord {
    id: i64,
    checkpoint: usize,
    seed: u32,
    state: TaskState,
    attempts: u32,
    worker: Option<String>,
    deadline_ms: u64,
    last_error: Option<String>,
    /// `(α0, w)` once done, for live aggregates.
    summary: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
struct WorkerRecord {
    host: String,
    cores: u32,
    version: String,
    last_seen_ms: u64,
    /// Checkpoints whose weights the worker holds.
    cached: HashSet<usize>,
}

/// Live view of a worker, for status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub host: String,
    pub cores: u32,
    pub version: String,
    pub seconds_since_seen: f64,
    pub leased: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureStatus {
    pub model: String,
    pub step: u64,
    pub seed: u32,
    pub attempts: u32,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelProgress {
    pub model: String,
    pub done: usize,
    pub total: usize,
    /// Latest step with results and its `E` (from means), once the first step is in.
    pub latest_step: Option<u64>,
    #[serde(rename = "latest_E")]
    pub latest_e: Option<f64>,
    /// What fetching this model's finished tasks cost.
    #[serde(default)]
    pub fetch: FetchTotals,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DuplicateStatus {
    pub model: String,
    pub step: u64,
    /// The step whose weights this one serves too.
    pub duplicate_of: u64,
    pub weights_sha256: String,
}

/// Everything `neuromfa status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub sweep: String,
    pub total: usize,
    pub pending: usize,
    pub leased: usize,
    pub done: usize,
    pub failed: usize,
    #[serde(default)]
    pub skipped: usize,
    pub duplicates_ignored: u64,
    /// Completions per second over the last minute.
    pub throughput_per_s: f64,
    pub eta_seconds: Option<f64>,
    pub draining: bool,
    pub workers: Vec<WorkerStatus>,
    pub failures: Vec<FailureStatus>,
    pub models: Vec<ModelProgress>,
    /// Steps serving the same weights as a later step of their model.
    #[serde(default)]
    pub duplicate_steps: Vec<DuplicateStatus>,
}

/// The sweep's state, in memory and on disk.
pub struct SweepState {
    /// Held while open: one coordinator per state directory.
    _lock: std::fs::File,
    conn: Connection,
    db_path: PathBuf,
    spec: SweepSpec,
    params: AnalysisParams,
    lease_ms: u64,
    checkpoints: Vec<CheckpointKey>,
    /// First step of each model's grid, the reference for `E`.
    first_step: HashMap<String, u64>,
    tasks: Vec<TaskRecord>,
    slot_of_task: HashMap<i64, usize>,
    /// Pending task slots per checkpoint, keyed by scheduling rank (step-major).
    pending: BTreeMap<usize, BTreeSet<usize>>,
    rank_of_checkpoint: Vec<usize>,
    checkpoint_at_rank: Vec<usize>,
    leased: HashSet<usize>,
    /// The worker that last leased each checkpoint: its seeds go there first.
    owner: HashMap<usize, String>,
    workers: BTreeMap<String, WorkerRecord>,
    /// Per checkpoint: the sha256 of its weights, once resolved.
    weights: Vec<Option<String>>,
    /// Checkpoints whose weights duplicate a later step's, and that step.
    duplicate_of: HashMap<usize, u64>,
    duplicates: u64,
    recent_completions: VecDeque<u64>,
    /// Per model, what fetching its finished tasks cost.
    fetch_totals: HashMap<String, FetchTotals>,
    in_transaction: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    step INTEGER NOT NULL,
    revision TEXT NOT NULL,
    UNIQUE (model, step)
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id),
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    deadline_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (checkpoint_id, seed)
);
CREATE TABLE IF NOT EXISTS results (
    task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
    alpha0 REAL NOT NULL,
    width REAL NOT NULL,
    result_json TEXT NOT NULL,
    worker TEXT NOT NULL,
    bytes_fetched INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    fetch_ms INTEGER NOT NULL,
    compute_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    fetch_mode TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    cores INTEGER NOT NULL,
    version TEXT NOT NULL,
    registered_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revisions (
    checkpoint_id INTEGER PRIMARY KEY REFERENCES checkpoints(id),
    revision_commit TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL
);
";

/// Columns added since the first schema, for state directories made before them.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has_fetch_mode = conn
        .prepare("SELECT 1 FROM pragma_table_info('results') WHERE name = 'fetch_mode'")?
        .exists([])?;
    if !has_fetch_mode {
        conn.execute_batch("ALTER TABLE results ADD COLUMN fetch_mode TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection> {
    let db = |source| StateError::Db {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    // WAL with full sync: a committed transaction is on disk before it is acknowledged;
    // group commit in the caller keeps the fsync count low.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(db)?;
    Ok(conn)
}

impl SweepState {
    /// Opens (or creates) the sweep of `spec` in its state directory.
    pub fn open(spec: SweepSpec, mode: OpenMode) -> Result<Self> {
        let dir = spec.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = lock_state_dir(&dir)?;
        let db_path = dir.join(DB_FILE);
        if mode == OpenMode::NewSweep && db_path.exists() {
            move_aside(&db_path)?;
        }
        let conn = open_connection(&db_path)?;
        let db = |source| StateError::Db {
            path: db_path.clone(),
            source,
        };
        conn.execute_batch(SCHEMA).map_err(db)?;
        add_missing_columns(&conn).map_err(db)?;

        let params = spec.analysis_params();
        let params_json = serde_json::to_string(&params).unwrap_or_default();
        let old: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'analysis'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        if let Some(old) = old {
            // Compared as settings, not text: settings recorded before a field existed
            // read as that field's default.
            let recorded: Option<AnalysisParams> = serde_json::from_str(&old).ok();
            if recorded.as_ref() != Some(&params) {
                return Err(StateError::AnalysisChanged {
                    path: db_path,
                    old,
                    new: params_json,
                });
            }
        }
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let grid = spec.checkpoints();
        let seeds = spec.seed_list();
        {
            let tx = conn.unchecked_transaction().map_err(db)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('analysis', ?1), ('spec', ?2)",
                params![params_json, spec_json],
            )
            .map_err(db)?;
            let mut added = 0usize;
            for key in &grid {
                tx.execute(
                    "INSERT OR IGNORE INTO checkpoints (model, step, revision) VALUES (?1, ?2, ?3)",
                    params![key.model, key.step as i64, key.revision],
                )
                .map_err(db)?;
                let id: i64 = tx
                    .query_row(
                        "SELECT id FROM checkpoints WHERE model = ?1 AND step = ?2",
                        params![key.model, key.step as i64],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                for &seed in &seeds {
                    added += tx
                        .execute(
                            "INSERT OR IGNORE INTO tasks (checkpoint_id, seed, state) VALUES (?1, ?2, 'pending')",
                            params![id, seed],
                        )
                        .map_err(db)?;
                }
            }
            tx.commit().map_err(db)?;
            if added > 0 {
                tracing::info!(sweep = %spec.name, added, "tasks added to the grid");
            }
        }
        let mut state = Self::empty(lock, conn, db_path, spec, params);
        state.load(&grid, &seeds)?;
        Ok(state)
    }

    /// Opens an existing state directory with the spec recorded in it.
    pub fn open_existing(state_dir: &Path) -> Result<Self> {
        let spec = recorded_spec(state_dir)?;
        let spec = SweepSpec {
            state_dir: state_dir.to_path_buf(),
            ..spec
        };
        Self::open(spec, OpenMode::Resume)
    }

    fn empty(
        lock: std::fs::File,
        conn: Connection,
        db_path: PathBuf,
        spec: SweepSpec,
        params: AnalysisParams,
    ) -> Self {
        let lease_ms = spec.lease_ms();
        SweepState {
            _lock: lock,
            conn,
            db_path,
            spec,
            params,
            lease_ms,
            checkpoints: Vec::new(),
            first_step: HashMap::new(),
            tasks: Vec::new(),
            slot_of_task: HashMap::new(),
            pending: BTreeMap::new(),
            rank_of_checkpoint: Vec::new(),
            checkpoint_at_rank: Vec::new(),
            leased: HashSet::new(),
            owner: HashMap::new(),
            workers: BTreeMap::new(),
            weights: Vec::new(),
            duplicate_of: HashMap::new(),
            duplicates: 0,
            recent_completions: VecDeque::new(),
            fetch_totals: HashMap::new(),
            in_transaction: false,
        }
    }

    fn db_error(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    /// Loads the current grid's tasks, workers and counters into memory.
    fn load(&mut self, grid: &[CheckpointKey], seeds: &[u32]) -> Result<()> {
        let in_grid: HashSet<u32> = seeds.iter().copied().collect();
        self.checkpoints = grid.to_vec();
        self.first_step.clear();
        for key in grid {
            let first = self.first_step.entry(key.model.clone()).or_insert(key.step);
            *first = (*first).min(key.step);
        }
        let slot_of_checkpoint: HashMap<(String, u64), usize> = grid
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.model.clone(), k.step), i))
            .collect();
        // Step-major order: every model's early steps first, so E appears early for all.
        let model_rank: HashMap<&str, usize> = self
            .spec
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.repo.as_str(), i))
            .collect();
        let mut order: Vec<usize> = (0..grid.len()).collect();
        order.sort_by_key(|&i| {
            (
                grid[i].step,
                model_rank.get(grid[i].model.as_str()).copied(),
            )
        });
        self.checkpoint_at_rank = order.clone();
        self.rank_of_checkpoint = vec![0; grid.len()];
        for (rank, &slot) in order.iter().enumerate() {
            self.rank_of_checkpoint[slot] = rank;
        }

        let db_path = self.db_path.clone();
        let db = |source| StateError::Db {
            path: db_path.clone(),
            source,
        };
        let mut tasks = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT t.id, c.model, c.step, t.seed, t.state, t.attempts, t.worker,
                            t.deadline_ms, t.last_error, r.alpha0, r.width,
                            r.bytes_fetched, r.requests, r.fetch_ms
                     FROM tasks t JOIN checkpoints c ON c.id = t.checkpoint_id
                     LEFT JOIN results r ON r.task_id = t.id ORDER BY t.id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, u32>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<f64>>(9)?,
                        r.get::<_, Option<f64>>(10)?,
                        [11, 12, 13].map(|i| r.get::<_, Option<i64>>(i)),
                    ))
                })
                .map_err(db)?;
            self.fetch_totals.clear();
            for row in rows {
                let (id, model, step, seed, state, attempts, worker, deadline, error, a0, w, fetch) =
                    row.map_err(db)?;
                let [bytes, requests, fetch_ms] = fetch;
                let (bytes, requests, fetch_ms) = (
                    bytes.map_err(db)?,
                    requests.map_err(db)?,
                    fetch_ms.map_err(db)?,
                );
                let Some(&checkpoint) = slot_of_checkpoint.get(&(model.clone(), step as u64))
                else {
                    continue; // outside the current grid: kept on disk, not scheduled
                };
                if !in_grid.contains(&seed) {
                    continue;
                }
                let state = TaskState::parse(&state)
                    .ok_or_else(|| StateError::Corrupt(format!("task {id} has state `{state}`")))?;
                if let (Some(bytes), Some(requests), Some(fetch_ms)) = (bytes, requests, fetch_ms) {
                    self.fetch_totals
                        .entry(model)
                        .or_default()
                        .add(&TaskMetrics {
                            bytes_fetched: bytes.max(0) as u64,
                            requests: requests.clamp(0, i64::from(u32::MAX)) as u32,
                            fetch_ms: fetch_ms.max(0) as u64,
                            ..TaskMetrics::default()
                        });
                }
                tasks.push(TaskRecord {
                    id,
                    checkpoint,
                    seed,
                    state,
                    attempts,
                    worker,
                    deadline_ms: deadline.max(0) as u64,
                    last_error: error,
                    summary: a0.zip(w),
                });
            }
        }
        self.tasks = tasks;
        self.slot_of_task = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i))
            .collect();
        self.pending.clear();
        self.leased.clear();
        self.owner.clear();
        for (slot, task) in self.tasks.iter().enumerate() {
            match task.state {
                TaskState::Pending => {
                    self.pending
                        .entry(self.rank_of_checkpoint[task.checkpoint])
                        .or_default()
                        .insert(slot);
                }
                TaskState::Leased => {
                    self.leased.insert(slot);
                    if let Some(worker) = &task.worker {
                        self.owner.insert(task.checkpoint, worker.clone());
                    }
                }
                TaskState::Done | TaskState::Failed | TaskState::Skipped => {}
            }
        }
        self.load_revisions()?;
        self.workers.clear();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT id, host, cores, version, registered_ms FROM workers")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(db)?;
            for row in rows {
                let (id, host, cores, version, registered) = row.map_err(db)?;
                self.workers.insert(
                    id,
                    WorkerRecord {
                        host,
                        cores,
                        version,
                        last_seen_ms: registered.max(0) as u64,
                        cached: HashSet::new(),
                    },
                );
            }
        }
        self.duplicates = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'duplicates'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)?
            .unwrap_or(0)
            .max(0) as u64;
        Ok(())
    }

    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }

    pub fn params(&self) -> &AnalysisParams {
        &self.params
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Starts a transaction that the next `commit` makes durable.
    pub fn begin(&mut self) -> Result<()> {
        if !self.in_transaction {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(self.db_error())?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Makes everything since `begin` durable. Only then may callers acknowledge.
    pub fn commit(&mut self) -> Result<()> {
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                self.rollback_and_reload()?;
                return Err(self.db_error()(e));
            }
        }
        Ok(())
    }

    /// Abandons the open transaction and rebuilds memory from disk.
    pub fn rollback_and_reload(&mut self) -> Result<()> {
        self.in_transaction = false;
        let _ = self.conn.execute_batch("ROLLBACK");
        let grid = self.checkpoints.clone();
        let seeds = self.spec.seed_list();
        let workers = std::mem::take(&mut self.workers);
        self.load(&grid, &seeds)?;
        // Liveness is not durable; keep what we knew.
        for (id, old) in workers {
            if let Some(w) = self.workers.get_mut(&id) {
                w.last_seen_ms = old.last_seen_ms;
                w.cached = old.cached;
            }
        }
        Ok(())
    }

    /// Runs `f` in its own transaction (for callers without group commit).
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(value) => {
                self.commit()?;
                Ok(value)
            }
            Err(e) => {
                self.rollback_and_reload()?;
                Err(e)
            }
        }
    }

    pub fn register_worker(
        &mut self,
        host: &str,
        cores: u32,
        version: &str,
        now_ms: u64,
    ) -> Result<String> {
        let id = format!("{}-{:08x}", sanitize(host), rand::random::<u32>());
        self.conn
            .prepare_cached(
                "INSERT INTO workers (id, host, cores, version, registered_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![id, host, cores, version, now_ms as i64]))
            .map_err(self.db_error())?;
        self.workers.insert(
            id.clone(),
            WorkerRecord {
                host: host.to_string(),
                cores,
                version: version.to_string(),
                last_seen_ms: now_ms,
                cached: HashSet::new(),
            },
        );
        tracing::info!(worker = %id, host, cores, version, "worker registered");
        Ok(id)
    }

    fn touch_worker(&mut self, worker: &str, now_ms: u64) -> Result<()> {
        let record = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| StateError::UnknownWorker(worker.to_string()))?;
        record.last_seen_ms = now_ms;
        Ok(())
    }

    fn worker_active(&self, worker: &str, now_ms: u64) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| now_ms.saturating_sub(w.last_seen_ms) <= self.lease_ms)
    }

    /// Picks the checkpoint whose pending seeds this worker should take next.
    fn choose_checkpoint(&self, worker: &str, now_ms: u64) -> Option<usize> {
        let free = |rank: &usize| {
            let slot = self.checkpoint_at_rank[*rank];
            match self.owner.get(&slot) {
                None => true,
                Some(owner) => owner == worker || !self.worker_active(owner, now_ms),
            }
        };
        let mine = self.pending.keys().find(|rank| {
            let slot = self.checkpoint_at_rank[**rank];
            self.owner.get(&slot).is_some_and(|o| o == worker)
        });
        let cached = self.workers.get(worker).and_then(|w| {
            self.pending
                .keys()
                .find(|rank| w.cached.contains(&self.checkpoint_at_rank[**rank]) && free(rank))
        });
        mine.or(cached)
            .or_else(|| self.pending.keys().find(|rank| free(rank)))
            // Nothing unclaimed: help with a checkpoint another worker holds rather than idle.
            .or_else(|| self.pending.keys().next())
            .copied()
    }

    /// Leases up to `max_tasks` seeds of one checkpoint to `worker`.
    pub fn lease(&mut self, worker: &str, max_tasks: usize, now_ms: u64) -> Result<Vec<Lease>> {
        self.touch_worker(worker, now_ms)?;
        let Some(rank) = self.choose_checkpoint(worker, now_ms) else {
            return Ok(Vec::new());
        };
        let slots: Vec<usize> = match self.pending.get_mut(&rank) {
            Some(set) => {
                let take: Vec<usize> = set.iter().take(max_tasks.max(1)).copied().collect();
                for slot in &take {
                    set.remove(slot);
                }
                if set.is_empty() {
                    self.pending.remove(&rank);
                }
                take
            }
            None => Vec::new(),
        };
        let deadline = now_ms + self.lease_ms;
        let mut leases = Vec::with_capacity(slots.len());
        for slot in slots {
            let task = &mut self.tasks[slot];
            task.state = TaskState::Leased;
            task.attempts += 1;
            task.worker = Some(worker.to_string());
            task.deadline_ms = deadline;
            self.leased.insert(slot);
            let task = &self.tasks[slot];
            self.conn
                .prepare_cached(
                    "UPDATE tasks SET state = 'leased', attempts = ?2, worker = ?3, deadline_ms = ?4 WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![task.id, task.attempts, worker, deadline as i64])
                })
                .map_err(self.db_error())?;
            let key = &self.checkpoints[task.checkpoint];
            leases.push(Lease {
                task_id: task.id,
                model: key.model.clone(),
                revision: key.revision.clone(),
                step: key.step,
                seed: task.seed,
                attempt: task.attempts,
                deadline_ms: deadline,
            });
        }
        if let Some(first) = leases.first() {
            let checkpoint = self.tasks[self.slot_of_task[&first.task_id]].checkpoint;
            self.owner.insert(checkpoint, worker.to_string());
            if let Some(w) = self.workers.get_mut(worker) {
                w.cached.insert(checkpoint);
            }
        }
        Ok(leases)
    }

    /// Extends `worker`'s leases on `task_ids`; returns the ids it no longer holds.
    pub fn heartbeat(&mut self, worker: &str, task_ids: &[i64], now_ms: u64) -> Result<Vec<i64>> {
        self.touch_worker(worker, now_ms)?;
        let deadline = now_ms + self.lease_ms;
        let mut lost = Vec::new();
        for &id in task_ids {
            let held = self.slot_of_task.get(&id).copied().filter(|&slot| {
                let t = &self.tasks[slot];
                t.state == TaskState::Leased && t.worker.as_deref() == Some(worker)
            });
            match held {
                Some(slot) => {
                    self.tasks[slot].deadline_ms = deadline;
                    self.conn
                        .prepare_cached("UPDATE tasks SET deadline_ms = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![id, deadline as i64]))
                        .map_err(self.db_error())?;
                }
                None => lost.push(id),
            }
        }
        Ok(lost)
    }

    fn slot(&self, task_id: i64) -> Result<usize> {
        self.slot_of_task
            .get(&task_id)
            .copied()
            .ok_or(StateError::UnknownTask(task_id))
    }

    fn set_state(&mut self, slot: usize, state: TaskState) {
        let task = &mut self.tasks[slot];
        let rank = self.rank_of_checkpoint[task.checkpoint];
        if task.state == TaskState::Pending {
            if let Some(set) = self.pending.get_mut(&rank) {
                set.remove(&slot);
                if set.is_empty() {
                    self.pending.remove(&rank);
                }
            }
        }
        if task.state == TaskState::Leased {
            self.leased.remove(&slot);
        }
        task.state = state;
        match state {
            TaskState::Pending => {
                self.pending.entry(rank).or_default().insert(slot);
            }
            TaskState::Leased => {
                self.leased.insert(slot);
            }
            TaskState::Done | TaskState::Failed | TaskState::Skipped => {}
        }
        if state != TaskState::Leased {
            self.tasks[slot].worker = None;
        }
    }

    fn write_task(&self, slot: usize) -> Result<()> {
        let t = &self.tasks[slot];
        self.conn
            .prepare_cached(
                "UPDATE tasks SET state = ?2, attempts = ?3, worker = ?4, deadline_ms = ?5, last_error = ?6 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.id,
                    t.state.as_str(),
                    t.attempts,
                    t.worker,
                    t.deadline_ms as i64,
                    t.last_error
                ])
            })
            .map_err(self.db_error())?;
        Ok(())
    }

    /// Stores a task's result, once. A result for a task already done is counted and
    /// ignored; a late result for a task whose lease lapsed is still accepted.
    pub fn complete(
        &mut self,
        worker: &str,
        task_id: i64,
        result: &SeedResult,
        metrics: TaskMetrics,
        now_ms: u64,
    ) -> Result<Completion> {
        let slot = self.slot(task_id)?;
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now_ms;
        }
        let (step, seed) = (
            self.checkpoints[self.tasks[slot].checkpoint].step,
            self.tasks[slot].seed,
        );
        if result.step != step || result.seed != seed {
            return Err(StateError::MismatchedResult {
                task: task_id,
                step,
                seed,
                got_step: result.step,
                got_seed: result.seed,
            });
        }
        if self.tasks[slot].state == TaskState::Done {
            self.duplicates += 1;
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('duplicates', 1)
                     ON CONFLICT(name) DO UPDATE SET value = value + 1",
                )
                .and_then(|mut s| s.execute([]))
                .map_err(self.db_error())?;
            return Ok(Completion::Duplicate);
        }
        let json = serde_json::to_string(result)
            .map_err(|e| StateError::Corrupt(format!("cannot encode result: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO results (task_id, alpha0, width, result_json, worker, bytes_fetched,
                                      requests, fetch_ms, compute_ms, finished_ms, fetch_mode)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task_id,
                    result.alpha0,
                    result.width,
                    json,
                    worker,
                    metrics.bytes_fetched as i64,
                    metrics.requests,
                    metrics.fetch_ms as i64,
                    metrics.compute_ms as i64,
                    now_ms as i64,
                    metrics.fetch_mode
                ])
            })
            .map_err(self.db_error())?;
        self.set_state(slot, TaskState::Done);
        self.tasks[slot].last_error = None;
        self.tasks[slot].summary = Some((result.alpha0, result.width));
        self.write_task(slot)?;
        self.recent_completions.push_back(now_ms);
        let model = &self.checkpoints[self.tasks[slot].checkpoint].model;
        self.fetch_totals
            .entry(model.clone())
            .or_default()
            .add(&metrics);
        Ok(Completion::Accepted)
    }

    /// Records a failed attempt. Returns whether the task will be tried again.
    pub fn fail(
        &mut self,
        worker: &str,
        task_id: i64,
        error: &str,
        permanent: bool,
        now_ms: u64,
    ) -> Result<bool> {
        let slot = self.slot(task_id)?;
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now_ms;
        }
        let task = &self.tasks[slot];
        // Only the current lease holder speaks for the task.
        if task.state != TaskState::Leased || task.worker.as_deref() != Some(worker) {
            return Ok(false);
        }
        let exhausted = self.record_failed_attempt(slot, error.to_string(), permanent)?;
        let key = &self.checkpoints[self.tasks[slot].checkpoint];
        tracing::warn!(
            model = %key.model, step = key.step, seed = self.tasks[slot].seed,
            attempt = self.tasks[slot].attempts, worker, error, will_retry = !exhausted,
            "task failed"
        );
        Ok(!exhausted)
    }

    /// Records why an attempt failed and requeues the task, or marks it failed when it is
    /// out of attempts or the failure is permanent. Returns whether it is out.
    fn record_failed_attempt(
        &mut self,
        slot: usize,
        error: String,
        permanent: bool,
    ) -> Result<bool> {
        let exhausted =
            permanent || self.tasks[slot].attempts >= self.spec.coordinator.max_attempts;
        self.tasks[slot].last_error = Some(error);
        let next = if exhausted {
            TaskState::Failed
        } else {
            TaskState::Pending
        };
        self.set_state(slot, next);
        self.write_task(slot)?;
        Ok(exhausted)
    }

    /// Gives leases back without counting the attempt (a worker shutting down).
    pub fn release(&mut self, worker: &str, task_ids: &[i64]) -> Result<usize> {
        let mut released = 0;
        for &id in task_ids {
            let Ok(slot) = self.slot(id) else { continue };
            let t = &self.tasks[slot];
            if t.state == TaskState::Leased && t.worker.as_deref() == Some(worker) {
                self.tasks[slot].attempts = self.tasks[slot].attempts.saturating_sub(1);
                self.set_state(slot, TaskState::Pending);
                self.write_task(slot)?;
                released += 1;
            }
        }
        Ok(released)
    }

    /// Returns lapsed leases to the queue, or fails tasks out of attempts.
    pub fn expire_leases(&mut self, now_ms: u64) -> Result<usize> {
        let lapsed: Vec<usize> = self
            .leased
            .iter()
            .copied()
            .filter(|&slot| self.tasks[slot].deadline_ms < now_ms)
            .collect();
        for &slot in &lapsed {
            let task = &self.tasks[slot];
            let worker = task.worker.clone().unwrap_or_default();
            let key = &self.checkpoints[task.checkpoint];
            tracing::warn!(
                model = %key.model, step = key.step, seed = task.seed, attempt = task.attempts,
                worker = %worker, "lease expired"
            );
            let error = format!(
                "lease expired: worker {worker} stopped heartbeating (attempt {})",
                task.attempts
            );
            self.record_failed_attempt(slot, error, false)?;
        }
        Ok(lapsed.len())
    }

    /// Re-queues every failed task with a fresh attempt budget.
    pub fn retry_failed(&mut self) -> Result<usize> {
        let failed: Vec<usize> = (0..self.tasks.len())
            .filter(|&s| self.tasks[s].state == TaskState::Failed)
            .collect();
        for &slot in &failed {
            self.tasks[slot].attempts = 0;
            self.set_state(slot, TaskState::Pending);
            self.write_task(slot)?;
        }
        Ok(failed.len())
    }

    /// True when every task is done or failed.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.leased.is_empty()
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::from([
            ("pending", 0),
            ("leased", 0),
            ("done", 0),
            ("failed", 0),
            ("skipped", 0),
        ]);
        for t in &self.tasks {
            *counts.entry(t.state.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Per-model aggregates from `(α0, w)` of done tasks (no spectra: see `export`).
    pub fn live_aggregates(&self) -> BTreeMap<String, Vec<StepAggregate>> {
        let mut points: BTreeMap<String, Vec<SeedPoint>> = BTreeMap::new();
        for t in &self.tasks {
            if let Some((alpha0, width)) = t.summary {
                let key = &self.checkpoints[t.checkpoint];
                points
                    .entry(key.model.clone())
                    .or_default()
                    .push(SeedPoint {
                        step: key.step,
                        seed: t.seed,
                        alpha0,
                        width,
                        alpha: Vec::new(),
                        f_alpha: Vec::new(),
                    });
            }
        }
        points
            .into_iter()
            .map(|(model, points)| {
                let first = self.reference_step(&model);
                (model, aggregate(&points, first))
            })
            .collect()
    }

    pub fn status(&mut self, now_ms: u64, draining: bool) -> StatusReport {
        while self
            .recent_completions
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) > 60_000)
        {
            self.recent_completions.pop_front();
        }
        let counts = self.counts();
        let window_ms = self
            .recent_completions
            .front()
            .map(|&t| now_ms.saturating_sub(t).max(1000))
            .unwrap_or(60_000);
        let throughput = self.recent_completions.len() as f64 / (window_ms as f64 / 1000.0);
        let remaining = counts["pending"] + counts["leased"];
        let eta = (throughput > 0.0).then(|| remaining as f64 / throughput);
        let mut leased_by: HashMap<&str, usize> = HashMap::new();
        for &slot in &self.leased {
            if let Some(w) = &self.tasks[slot].worker {
                *leased_by.entry(w.as_str()).or_insert(0) += 1;
            }
        }
        let workers = self
            .workers
            .iter()
            .filter(|(id, _)| self.worker_active(id, now_ms) || leased_by.contains_key(id.as_str()))
            .map(|(id, w)| WorkerStatus {
                id: id.clone(),
                host: w.host.clone(),
                cores: w.cores,
                version: w.version.clone(),
                seconds_since_seen: now_ms.saturating_sub(w.last_seen_ms) as f64 / 1000.0,
                leased: leased_by.get(id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let failures = self
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| {
                let key = &self.checkpoints[t.checkpoint];
                FailureStatus {
                    model: key.model.clone(),
                    step: key.step,
                    seed: t.seed,
                    attempts: t.attempts,
                    error: t.last_error.clone().unwrap_or_default(),
                }
            })
            .collect();
        let aggregates = self.live_aggregates();
        let models = self
            .spec
            .models
            .iter()
            .map(|m| {
                let (done, total) = self.tasks.iter().fold((0, 0), |(d, n), t| {
                    if self.checkpoints[t.checkpoint].model == m.repo {
                        (d + usize::from(t.state == TaskState::Done), n + 1)
                    } else {
                        (d, n)
                    }
                });
                let latest = aggregates.get(&m.repo).and_then(|a| a.last());
                ModelProgress {
                    model: m.repo.clone(),
                    done,
                    total,
                    latest_step: latest.map(|a| a.step),
                    latest_e: latest.and_then(|a| a.e_from_means),
                    fetch: self.fetch_totals.get(&m.repo).copied().unwrap_or_default(),
                }
            })
            .collect();
        StatusReport {
            sweep: self.spec.name.clone(),
            total: self.tasks.len(),
            pending: counts["pending"],
            leased: counts["leased"],
            done: counts["done"],
            failed: counts["failed"],
            skipped: counts["skipped"],
            duplicates_ignored: self.duplicates,
            throughput_per_s: throughput,
            eta_seconds: eta,
            draining,
            workers,
            failures,
            models,
            duplicate_steps: self.duplicate_steps(),
        }
    }

    /// The step `E` is relative to: the model's first step, or under `skip` its first
    /// step that is not left out as a duplicate.
    fn reference_step(&self, model: &str) -> u64 {
        if self.spec.duplicates != DuplicatePolicy::Skip {
            return self.first_step.get(model).copied().unwrap_or(0);
        }
        self.checkpoints
            .iter()
            .enumerate()
            .filter(|(slot, k)| k.model == model && !self.duplicate_of.contains_key(slot))
            .map(|(_, k)| k.step)
            .min()
            .unwrap_or(0)
    }

    fn load_revisions(&mut self) -> Result<()> {
        self.weights = vec![None; self.checkpoints.len()];
        let slots: HashMap<(String, u64), usize> = self
            .checkpoints
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.model.clone(), k.step), i))
            .collect();
        let db_path = self.db_path.clone();
        let db = |source| StateError::Db {
            path: db_path.clone(),
            source,
        };
        for (model, step, hash) in read_revisions(&self.conn).map_err(db)? {
            if let Some(&slot) = slots.get(&(model, step)) {
                self.weights[slot] = Some(hash);
            }
        }
        self.regroup();
        Ok(())
    }

    fn regroup(&mut self) {
        let groups = crate::integrity::duplicate_of(
            self.checkpoints
                .iter()
                .zip(&self.weights)
                .filter_map(|(k, h)| h.as_deref().map(|h| (k.model.as_str(), k.step, h))),
        );
        self.duplicate_of = self
            .checkpoints
            .iter()
            .enumerate()
            .filter_map(|(slot, k)| {
                groups
                    .get(&(k.model.clone(), k.step))
                    .map(|&original| (slot, original))
            })
            .collect();
    }

    /// Checkpoints whose weights have not been resolved yet.
    pub fn unresolved(&self) -> Vec<CheckpointKey> {
        self.checkpoints
            .iter()
            .zip(&self.weights)
            .filter(|(_, h)| h.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Records what a checkpoint's revision serves.
    pub fn record_resolution(
        &mut self,
        model: &str,
        step: u64,
        commit: &str,
        weights_sha256: &str,
    ) -> Result<()> {
        let Some(slot) = self
            .checkpoints
            .iter()
            .position(|k| k.model == model && k.step == step)
        else {
            return Ok(());
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO revisions (checkpoint_id, revision_commit, weights_sha256)
                 SELECT id, ?3, ?4 FROM checkpoints WHERE model = ?1 AND step = ?2",
            )
            .and_then(|mut s| s.execute(params![model, step as i64, commit, weights_sha256]))
            .map_err(self.db_error())?;
        self.weights[slot] = Some(weights_sha256.to_string());
        Ok(())
    }

    /// Regroups identical weights and applies the spec's policy: under `skip` and
    /// `reuse` the pending tasks of duplicated checkpoints are not computed; under
    /// `warn` (or once a step is no longer a duplicate) they are queued again.
    pub fn apply_duplicate_policy(&mut self) -> Result<usize> {
        self.regroup();
        let hold = self.spec.duplicates != DuplicatePolicy::Warn;
        let mut changed = 0;
        for slot in 0..self.tasks.len() {
            let duplicated = self.duplicate_of.contains_key(&self.tasks[slot].checkpoint);
            let next = match self.tasks[slot].state {
                TaskState::Pending if hold && duplicated => TaskState::Skipped,
                TaskState::Skipped if !(hold && duplicated) => TaskState::Pending,
                _ => continue,
            };
            self.set_state(slot, next);
            self.write_task(slot)?;
            changed += 1;
        }
        Ok(changed)
    }

    pub fn duplicate_steps(&self) -> Vec<DuplicateStatus> {
        let mut list: Vec<DuplicateStatus> = self
            .duplicate_of
            .iter()
            .map(|(&slot, &original)| DuplicateStatus {
                model: self.checkpoints[slot].model.clone(),
                step: self.checkpoints[slot].step,
                duplicate_of: original,
                weights_sha256: self.weights[slot].clone().unwrap_or_default(),
            })
            .collect();
        list.sort_by(|a, b| (&a.model, a.step).cmp(&(&b.model, b.step)));
        list
    }
}

/// Every resolved checkpoint: `(model, step, weights sha256)`.
pub fn read_revisions(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, String)>> {
    let mut stmt = conn.prepare(
        "SELECT c.model, c.step, r.weights_sha256 FROM revisions r
         JOIN checkpoints c ON c.id = r.checkpoint_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?.max(0) as u64,
            r.get::<_, String>(2)?,
        ))
    })?;
    rows.collect()
}

/// The spec recorded in a state directory.
pub fn recorded_spec(state_dir: &Path) -> Result<SweepSpec> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Err(StateError::NoSweep { path });
    }
    let conn = open_connection(&path)?;
    let text: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'spec'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|source| StateError::Db {
            path: path.clone(),
            source,
        })?;
    let text = text.ok_or_else(|| StateError::NoSweep { path: path.clone() })?;
    serde_json::from_str(&text).map_err(|e| StateError::Corrupt(format!("recorded spec: {e}")))
}

fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("coordinator.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StateError::Io { path, source }),
    }
}

fn move_aside(db_path: &Path) -> Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}.{stamp}.old{suffix}", db_path.display()));
            std::fs::rename(&from, &to).map_err(|source| StateError::Io { path: from, source })?;
        }
    }
    Ok(())
}

fn sanitize(host: &str) -> String {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if cleaned.is_empty() {
        "worker".into()
    } else {
        cleaned
    }
}
