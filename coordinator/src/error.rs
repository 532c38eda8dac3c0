//! What can go wrong with a sweep's state: storage (from the store) and requests that
//! make no sense for the schedule.

use std::path::PathBuf;

use crate::store::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("sweep state {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: DbError,
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
    /// True for failures of the storage itself, after which memory and disk may differ.
    pub fn is_storage(&self) -> bool {
        matches!(self, StateError::Db { .. })
    }

    /// The storage found no room to write: the state's disk (or its quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StateError::Db { source, .. } if source.is_disk_full())
    }
}
