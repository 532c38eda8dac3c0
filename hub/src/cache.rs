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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchedFile;
    use std::time::Duration;

    /// A repo in HF cache layout with one snapshot per revision; `config.json` is the
    /// same blob in every snapshot, each model file its own.
    fn snapshot(repo: &Path, commit: &str, model_bytes: usize) -> FetchedCheckpoint {
        let blobs = repo.join("blobs");
        let dir = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(blobs.join("shared-config"), b"{}").unwrap();
        std::fs::write(
            blobs.join(format!("model-{commit}")),
            vec![1u8; model_bytes],
        )
        .unwrap();
        std::os::unix::fs::symlink("../../blobs/shared-config", dir.join("config.json")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/model-{commit}"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        FetchedCheckpoint {
            dir,
            commit: commit.into(),
            weights: neuromfa_common::WeightFiles::ALL[0],
            files: vec![FetchedFile {
                name: "model.safetensors".into(),
                size: model_bytes as u64,
                sha256: None,
            }],
            bytes_downloaded: model_bytes as u64,
            requests: 2,
            hub_requests: Default::default(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn evicts_finished_checkpoints_oldest_first_and_keeps_shared_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--m");
        let (a, b, c) = (
            snapshot(&repo, "aaa", 1000),
            snapshot(&repo, "bbb", 1000),
            snapshot(&repo, "ccc", 1000),
        );
        let mut cache = CheckpointCache::new(Some(2500));
        for fetched in [&a, &b, &c] {
            cache.note_fetched(fetched);
        }
        // Nothing finished yet: over the bound, but nothing may go.
        assert!(cache.evict_if_needed().is_empty());
        cache.note_finished(&b);
        cache.note_finished(&a);
        let evicted = cache.evict_if_needed();
        assert_eq!(
            evicted,
            vec![a.dir.clone()],
            "oldest finished first, only as needed"
        );
        assert!(!a.dir.exists());
        assert!(
            !repo.join("blobs/model-aaa").exists(),
            "its own blob is freed"
        );
        assert!(
            repo.join("blobs/shared-config").exists(),
            "a shared blob stays"
        );
        assert!(std::fs::read_to_string(b.dir.join("config.json")).is_ok());
        assert!(c.dir.join("model.safetensors").exists());
        assert_eq!(cache.bytes(), 2000);
    }

    #[test]
    fn no_bound_means_no_eviction() {
        let tmp = tempfile::tempdir().unwrap();
        let a = snapshot(&tmp.path().join("r"), "aaa", 10);
        let mut cache = CheckpointCache::new(None);
        cache.note_fetched(&a);
        cache.note_finished(&a);
        assert!(cache.evict_if_needed().is_empty());
        assert!(a.dir.exists());
    }
}
