//! A bound on the disk a worker's checkpoints take: checkpoints whose seeds are all done
//! are evicted from the HF cache, oldest first, once the bound is passed. A 2.8B model
//! alone is about 860 GB over 154 steps, so a long sweep cannot keep everything.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::fetch::FetchedCheckpoint;

#[derive(Debug, Clone)]
struct Entry {
    dir: PathBuf,
    bytes: u64,
    finished: bool,
}

/// The checkpoints this worker has fetched, in fetch order.
#[derive(Debug, Default)]
pub struct CheckpointCache {
    max_bytes: Option<u64>,
    entries: VecDeque<Entry>,
}

impl CheckpointCache {
    pub fn new(max_bytes: Option<u64>) -> Self {
        Self {
            max_bytes,
            entries: VecDeque::new(),
        }
    }

    fn size(fetched: &FetchedCheckpoint) -> u64 {
        fetched.files.iter().map(|f| f.size).sum()
    }

    /// Records a checkpoint as present and in use.
    pub fn note_fetched(&mut self, fetched: &FetchedCheckpoint) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.dir == fetched.dir) {
            entry.finished = false;
            return;
        }
        self.entries.push_back(Entry {
            dir: fetched.dir.clone(),
            bytes: Self::size(fetched),
            finished: false,
        });
    }

    /// Marks a checkpoint's leased seeds as all done: it may be evicted.
    pub fn note_finished(&mut self, fetched: &FetchedCheckpoint) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.dir == fetched.dir) {
            entry.finished = true;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Evicts finished checkpoints, oldest first, until under the bound. Returns the
    /// directories evicted.
    pub fn evict_if_needed(&mut self) -> Vec<PathBuf> {
        let Some(max) = self.max_bytes else {
            return Vec::new();
        };
        let mut evicted = Vec::new();
        while self.bytes() > max {
            let Some(index) = self.entries.iter().position(|e| e.finished) else {
                break;
            };
            let Some(entry) = self.entries.remove(index) else {
                break;
            };
            match remove_snapshot(&entry.dir) {
                Ok(()) => {
                    tracing::info!(dir = %entry.dir.display(), bytes = entry.bytes, "evicted checkpoint from cache")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.dir.display(), error = %e, "could not evict checkpoint")
                }
            }
            evicted.push(entry.dir);
        }
        evicted
    }
}

/// Removes a snapshot directory and the blobs only it links to. The HF cache keeps file
/// contents in `blobs/` and links them from `snapshots/<commit>/`; revisions with an
/// identical file share one blob, which must stay while another snapshot uses it.
fn remove_snapshot(dir: &Path) -> std::io::Result<()> {
    let snapshots = dir.parent();
    let still_linked = |blob: &Path| -> bool {
        let Some(snapshots) = snapshots else {
            return false;
        };
        let Ok(others) = std::fs::read_dir(snapshots) else {
            return false;
        };
        others
            .flatten()
            .map(|e| e.path())
            .filter(|other| other != dir)
            .filter_map(|other| std::fs::read_dir(other).ok())
            .flat_map(|files| files.flatten())
            .any(|f| std::fs::canonicalize(f.path()).is_ok_and(|t| t == blob))
    };
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let blob = std::fs::canonicalize(&path).ok().filter(|t| *t != path);
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        if let Some(blob) = blob {
            if !still_linked(&blob) {
                let _ = std::fs::remove_file(&blob);
            }
        }
    }
    std::fs::remove_dir(dir)
}
