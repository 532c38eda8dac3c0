//! The sweep's durable state in SQLite (WAL, `synchronous = FULL`): the schema and its
//! migrations, the state directory's lock, reading everything back, and writing the
//! [`Change`]s decisions make inside transactions. The only module that speaks SQL; it
//! decides nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::StateError;
use crate::record::{
    Change, StoredBreaker, StoredResult, StoredRevision, StoredTask, StoredWorker, TaskMetrics,
    TaskProgress, TaskState,
};
use crate::spec::SweepSpec;

pub const DB_FILE: &str = "sweep.sqlite";

type Result<T> = std::result::Result<T, StateError>;

/// An error of the SQLite library, kept opaque so only this module names it.
#[derive(Debug)]
pub struct DbError(rusqlite::Error);

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl DbError {
    /// SQLite found no room to write: the disk (or its quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(&self.0, rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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
    weights_sha256 TEXT NOT NULL,
    weights_format TEXT NOT NULL DEFAULT ''
);
";

/// Columns added since the first schema, for state directories made before them: each
/// `(table, column, definition)`. Rows stored before read the default (`''`: not known).
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("results", "fetch_mode", "TEXT NOT NULL DEFAULT ''"),
    ("revisions", "weights_format", "TEXT NOT NULL DEFAULT ''"),
    // The commit and weight files a lease hands its worker, as JSON.
    ("revisions", "weights_json", "TEXT NOT NULL DEFAULT ''"),
];

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let present = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists(params![table, column])?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// One sweep's database, open for writing (holding the state directory's lock) or for
/// reading beside a running coordinator.
pub struct Store {
    /// Held while open for writing: one coordinator per state directory.
    _lock: Option<std::fs::File>,
    conn: Connection,
    path: PathBuf,
    in_transaction: bool,
}

impl Store {
    /// Opens (or creates) the sweep of `spec` in its state directory for writing:
    /// takes the lock, migrates the schema, refuses changed analysis settings, records
    /// the spec and adds the tasks of any new part of the grid.
    pub fn open(spec: &SweepSpec, mode: OpenMode) -> Result<Self> {
        let dir = &spec.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = lock_state_dir(dir)?;
        let path = dir.join(DB_FILE);
        if mode == OpenMode::NewSweep && path.exists() {
            move_aside(&path)?;
        }
        let store = Store {
            _lock: Some(lock),
            conn: open_connection(&path)?,
            path,
            in_transaction: false,
        };
        store.conn.execute_batch(SCHEMA).map_err(store.db())?;
        add_missing_columns(&store.conn).map_err(store.db())?;
        store.check_analysis(spec)?;
        store.record_grid(spec)?;
        Ok(store)
    }

    /// Opens a recorded sweep for reading, without the lock (a coordinator may hold it).
    pub fn open_read(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StateError::NoSweep { path });
        }
        Ok(Store {
            _lock: None,
            conn: open_connection(&path)?,
            path,
            in_transaction: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Db {
            path: self.path.clone(),
            source: DbError(source),
        }
    }

    /// Refuses to resume with analysis settings other than those recorded. Compared as
    /// settings, not text: settings recorded before a field existed read as its default.
    fn check_analysis(&self, spec: &SweepSpec) -> Result<()> {
        let params = spec.analysis_params();
        let old: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'analysis'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db())?;
        if let Some(old) = old {
            let recorded: Option<neuromfa_common::AnalysisParams> = serde_json::from_str(&old).ok();
            if recorded.as_ref() != Some(&params) {
                return Err(StateError::AnalysisChanged {
                    path: self.path.clone(),
                    old,
                    new: serde_json::to_string(&params).unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// Records the spec and adds every checkpoint and task of its grid not there yet.
    fn record_grid(&self, spec: &SweepSpec) -> Result<()> {
        let params_json = serde_json::to_string(&spec.analysis_params()).unwrap_or_default();
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        let seeds = spec.seed_list();
        let tx = self.conn.unchecked_transaction().map_err(self.db())?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('analysis', ?1), ('spec', ?2)",
            params![params_json, spec_json],
        )
        .map_err(self.db())?;
        let mut added = 0usize;
        for key in spec.checkpoints() {
            tx.execute(
                "INSERT OR IGNORE INTO checkpoints (model, step, revision) VALUES (?1, ?2, ?3)",
                params![key.model, key.step as i64, key.revision],
            )
            .map_err(self.db())?;
            let id: i64 = tx
                .query_row(
                    "SELECT id FROM checkpoints WHERE model = ?1 AND step = ?2",
                    params![key.model, key.step as i64],
                    |r| r.get(0),
                )
                .map_err(self.db())?;
            for &seed in &seeds {
                added += tx
                    .execute(
                        "INSERT OR IGNORE INTO tasks (checkpoint_id, seed, state) VALUES (?1, ?2, 'pending')",
                        params![id, seed],
                    )
                    .map_err(self.db())?;
            }
        }
        tx.commit().map_err(self.db())?;
        if added > 0 {
            tracing::info!(sweep = %spec.name, added, "tasks added to the grid");
        }
        Ok(())
    }

    /// The spec the sweep was recorded with.
    pub fn recorded_spec(&self) -> Result<SweepSpec> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'spec'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db())?;
        let text = text.ok_or_else(|| StateError::NoSweep {
            path: self.path.clone(),
        })?;
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt(format!("recorded spec: {e}")))
    }

    /// Every task, in id order, with its result; the whole result (`json`) only when
    /// `with_json` (exports need it, scheduling does not).
    pub fn tasks(&self, with_json: bool) -> Result<Vec<StoredTask>> {
        self.read_tasks(with_json, |tasks| tasks.collect())
    }

    /// Hands [`tasks`](Self::tasks) to `f` one by one as they are read, so a caller
    /// keeping only part of each (the schedule) never holds them all. Reading stops at
    /// the first unreadable row, whose error is returned instead of `f`'s value.
    pub fn read_tasks<R>(
        &self,
        with_json: bool,
        f: impl FnOnce(&mut dyn Iterator<Item = StoredTask>) -> R,
    ) -> Result<R> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t.id, c.model, c.step, c.revision, t.seed, t.state, t.attempts, t.worker,
                        t.deadline_ms, t.last_error, r.alpha0, r.width, r.worker, r.bytes_fetched,
                        r.requests, r.fetch_ms, r.compute_ms, r.fetch_mode,
                        CASE WHEN ?1 THEN r.result_json END
                 FROM tasks t JOIN checkpoints c ON c.id = t.checkpoint_id
                 LEFT JOIN results r ON r.task_id = t.id ORDER BY t.id",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map([with_json], |r| Ok((task_row(r)?, r.get::<_, String>(5)?)))
            .map_err(self.db())?;
        let mut error = None;
        let mut tasks = rows.map_while(|row| {
            let decoded = row.map_err(self.db()).and_then(|(mut task, state)| {
                task.progress.state = TaskState::parse(&state).ok_or_else(|| {
                    StateError::Corrupt(format!("task {} has state `{state}`", task.id))
                })?;
                Ok(task)
            });
            decoded.map_err(|e| error = Some(e)).ok()
        });
        let value = f(&mut tasks);
        drop(tasks);
        match error {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    pub fn workers(&self) -> Result<Vec<StoredWorker>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, host, cores, version, registered_ms FROM workers")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredWorker {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    cores: r.get(2)?,
                    version: r.get(3)?,
                    registered_ms: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })
            .map_err(self.db())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.db())
    }

    /// Results received for tasks already done.
    pub fn duplicates_counted(&self) -> Result<u64> {
        let value = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'duplicates'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(self.db())?;
        Ok(value.unwrap_or(0).max(0) as u64)
    }

    /// The breaker as last stored (none before anything failed).
    pub fn breaker(&self) -> Result<Option<StoredBreaker>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'breaker'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db())?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| StateError::Corrupt(format!("the breaker's record: {e}")))
        })
        .transpose()
    }

    /// Every resolved checkpoint. A format this build does not know reads as not known
    /// (resolved again on the next start).
    pub fn revisions(&self) -> Result<Vec<StoredRevision>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.model, c.step, r.weights_sha256, r.weights_format, r.weights_json
                 FROM revisions r JOIN checkpoints c ON c.id = r.checkpoint_id",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredRevision {
                    model: r.get(0)?,
                    step: r.get::<_, i64>(1)?.max(0) as u64,
                    weights_sha256: r.get(2)?,
                    format: r.get::<_, String>(3)?.parse().ok(),
                    resolved: serde_json::from_str(&r.get::<_, String>(4)?).ok(),
                })
            })
            .map_err(self.db())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.db())
    }

    /// Starts a transaction that the next `commit` makes durable.
    pub fn begin(&mut self) -> Result<()> {
        if !self.in_transaction {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(self.db())?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Makes everything since `begin` durable. On failure the transaction is over and
    /// its changes lost (the caller rebuilds what it holds in memory).
    pub fn commit(&mut self) -> Result<()> {
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(self.db()(e));
            }
        }
        Ok(())
    }

    /// Abandons the open transaction, if any.
    pub fn rollback(&mut self) {
        self.in_transaction = false;
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    /// Writes `changes` (in the open transaction, if any), in order.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        changes.iter().try_for_each(|c| self.apply_one(c))
    }

    fn apply_one(&self, change: &Change) -> Result<()> {
        let conn = &self.conn;
        let written = match change {
            Change::TaskUpdated { id, progress: p } => conn
                .prepare_cached(
                    "UPDATE tasks SET state = ?2, attempts = ?3, worker = ?4, deadline_ms = ?5,
                                      last_error = ?6 WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        p.state.as_str(),
                        p.attempts,
                        p.worker,
                        p.deadline_ms as i64,
                        p.last_error
                    ])
                }),
            Change::LeaseExtended { id, deadline_ms } => conn
                .prepare_cached("UPDATE tasks SET deadline_ms = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, *deadline_ms as i64])),
            Change::ResultStored {
                task_id,
                worker,
                result,
                metrics,
                finished_ms,
            } => {
                let json = serde_json::to_string(result)
                    .map_err(|e| StateError::Corrupt(format!("cannot encode result: {e}")))?;
                conn.prepare_cached(
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
                        *finished_ms as i64,
                        metrics.fetch_mode
                    ])
                })
            }
            Change::DuplicateCounted => conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('duplicates', 1)
                     ON CONFLICT(name) DO UPDATE SET value = value + 1",
                )
                .and_then(|mut s| s.execute([])),
            Change::BreakerUpdated(breaker) => {
                let json = serde_json::to_string(breaker).map_err(|e| {
                    StateError::Corrupt(format!("cannot encode the breaker's record: {e}"))
                })?;
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('breaker', ?1)",
                )
                .and_then(|mut s| s.execute(params![json]))
            }
            Change::WorkerRegistered(w) => conn
                .prepare_cached(
                    "INSERT INTO workers (id, host, cores, version, registered_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        w.id,
                        w.host,
                        w.cores,
                        w.version,
                        w.registered_ms as i64
                    ])
                }),
            Change::RevisionResolved {
                model,
                step,
                weights_sha256,
                resolved,
            } => conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO revisions
                         (checkpoint_id, revision_commit, weights_sha256, weights_format,
                          weights_json)
                     SELECT id, ?3, ?4, ?5, ?6 FROM checkpoints WHERE model = ?1 AND step = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        model,
                        *step as i64,
                        resolved.commit,
                        weights_sha256,
                        resolved.weights.format.as_str(),
                        serde_json::to_string(resolved).unwrap_or_default()
                    ])
                }),
        };
        written.map(drop).map_err(self.db())
    }
}

/// A row of [`Store::tasks`]' query; its state is parsed by the caller.
fn task_row(r: &Row) -> rusqlite::Result<StoredTask> {
    let count = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let result = match (r.get::<_, Option<f64>>(10)?, r.get::<_, Option<f64>>(11)?) {
        (Some(alpha0), Some(width)) => Some(StoredResult {
            alpha0,
            width,
            worker: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            metrics: TaskMetrics {
                bytes_fetched: count(13)?,
                requests: count(14)?.min(u64::from(u32::MAX)) as u32,
                fetch_ms: count(15)?,
                compute_ms: count(16)?,
                fetch_mode: r.get::<_, Option<String>>(17)?.unwrap_or_default(),
            },
            json: r.get(18)?,
        }),
        _ => None,
    };
    Ok(StoredTask {
        id: r.get(0)?,
        model: r.get(1)?,
        step: r.get::<_, i64>(2)?.max(0) as u64,
        revision: r.get(3)?,
        seed: r.get(4)?,
        progress: TaskProgress {
            state: TaskState::Pending,
            attempts: r.get(6)?,
            worker: r.get(7)?,
            deadline_ms: r.get::<_, i64>(8)?.max(0) as u64,
            last_error: r.get(9)?,
        },
        result,
    })
}

fn open_connection(path: &Path) -> Result<Connection> {
    let db = |source| StateError::Db {
        path: path.to_path_buf(),
        source: DbError(source),
    };
    let conn = Connection::open(path).map_err(db)?;
    // WAL with full sync: a committed transaction is on disk before it is acknowledged;
    // group commit keeps the fsync count low.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(db)?;
    Ok(conn)
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
