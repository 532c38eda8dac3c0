//! What only a full pass over a virtual file's bytes gives: its sha256, and the CRC-32 of
//! each storage record of a `.bin` archive (the archive's own bytes hold them). Computed
//! once per content and kept, keyed by the content's definition, in memory and in an
//! append-only file of JSON lines, so a restarted hub (or one that ran `hub precompute`)
//! knows them at once.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::error::lock;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Facts {
    /// The key of the content's definition.
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// CRC-32 of each storage record, in storage order (empty for other files).
    pub(crate) crcs: Vec<u32>,
}

pub(crate) struct FactsStore {
    path: Option<PathBuf>,
    known: Mutex<HashMap<String, Arc<Facts>>>,
    /// Serialises appends to the file.
    file: Mutex<()>,
}

impl FactsStore {
    /// Facts kept at `path` (created when first written), or only in memory.
    pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut known = HashMap::new();
        if let Some(path) = path {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            for (n, line) in text.lines().enumerate() {
                // A line cut short by a crash is computed again.
                match serde_json::from_str::<Facts>(line) {
                    Ok(facts) => {
                        known.insert(facts.key.clone(), Arc::new(facts));
                    }
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        line = n + 1,
                        error = %e,
                        "skipping an unreadable content-hash record"
                    ),
                }
            }
            if !text.is_empty() && !text.ends_with('\n') {
                // End the torn line, so the next record starts a line of its own.
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(b"\n"))
                    .with_context(|| format!("cannot repair {}", path.display()))?;
            }
        }
        Ok(FactsStore {
            path: path.map(Path::to_path_buf),
            known: Mutex::new(known),
            file: Mutex::new(()),
        })
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Facts>> {
        lock(&self.known).get(key).cloned()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.known).len()
    }

    /// Keeps `facts`; a file that cannot be written is logged, not fatal (the facts are
    /// computed again next time).
    pub(crate) fn record(&self, facts: Facts) -> Arc<Facts> {
        let facts = Arc::new(facts);
        lock(&self.known).insert(facts.key.clone(), facts.clone());
        if let Some(path) = &self.path {
            let _append = lock(&self.file);
            let written = serde_json::to_string(&*facts)
                .map_err(std::io::Error::other)
                .and_then(|line| {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    writeln!(f, "{line}")
                });
            if let Err(e) = written {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep a content hash");
            }
        }
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/facts.jsonl");
        let store = FactsStore::open(Some(&path)).unwrap();
        let facts = Facts {
            key: "k1".into(),
            size: 10,
            sha256: "ab".into(),
            crcs: vec![1, 2],
        };
        store.record(facts.clone());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\": \"k2\", \"si")
            .unwrap();
        let again = FactsStore::open(Some(&path)).unwrap();
        assert_eq!(again.get("k1").as_deref(), Some(&facts));
        assert_eq!(again.len(), 1);
        let k3 = Facts {
            key: "k3".into(),
            ..facts.clone()
        };
        again.record(k3.clone());
        let third = FactsStore::open(Some(&path)).unwrap();
        assert_eq!(third.get("k3").as_deref(), Some(&k3));
        assert!(FactsStore::open(None).unwrap().get("k1").is_none());
    }
}
