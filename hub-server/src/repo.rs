//! The repositories on disk: `ROOT/<org>/<name>/<revision>/<file>`, each revision described
//! with its files' sha256 (cached by path, length and mtime) and a stable commit id, and the
//! files of commit-addressed revisions held open for quick ranged reads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use neuromfa_hub::hashing::{hex, is_commit_hex, sha256_file};
use sha2::{Digest, Sha256};

use crate::content::Content;
use crate::error::{internal, lock, HubError};
use crate::{HashEntry, Shared, MAX_DEPTH, PINNED_READ_MAX};

// ---------------------------------------------------------------------------------------------
// The repository view on disk.

/// `(org/name, commit, path)` of a pinned file.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PinnedKey(pub(crate) String, pub(crate) String, pub(crate) String);

/// A file of a commit-addressed revision, held open with what it was when it was described.
pub(crate) struct PinnedFile {
    pub(crate) entry: FileEntry,
    pub(crate) file: std::fs::File,
    pub(crate) mtime: Option<std::time::SystemTime>,
}

impl PinnedFile {
    /// `file` held open, if it is on disk and still what was described.
    pub(crate) fn open(file: &FileEntry) -> Option<Self> {
        let Content::Disk(abs) = &file.content else {
            return None;
        };
        let handle = std::fs::File::open(abs).ok()?;
        let meta = handle.metadata().ok()?;
        if meta.len() != file.size {
            return None;
        }
        Some(PinnedFile {
            entry: file.clone(),
            file: handle,
            mtime: meta.modified().ok(),
        })
    }

    /// `count` bytes from `start`, if the open file is still what was described (same length
    /// and mtime) and the read is small; `None` sends the request the long way.
    pub(crate) fn read_small(&self, start: u64, count: u64) -> Option<axum::body::Bytes> {
        use std::os::unix::fs::FileExt;
        if count > PINNED_READ_MAX {
            return None;
        }
        let meta = self.file.metadata().ok()?;
        if meta.len() != self.entry.size || meta.modified().ok() != self.mtime {
            return None;
        }
        let mut buf = vec![0u8; count as usize];
        self.file.read_exact_at(&mut buf, start).ok()?;
        Some(buf.into())
    }
}

#[derive(Clone)]
pub(crate) struct FileEntry {
    /// Path inside the revision, `/`-separated.
    pub(crate) path: String,
    pub(crate) content: Content,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// Files the Hub's default `.gitattributes` sends to LFS, by name.
const LFS_SUFFIXES: &[&str] = &[
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gguf",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".tgz",
    ".wasm",
    ".xz",
    ".zip",
    ".zst",
];

/// Files at least this big go to LFS whatever their name (the Hub refuses bigger ones in
/// git).
const LFS_MIN_SIZE: u64 = 10 * 1024 * 1024;

impl FileEntry {
    /// Whether the Hub would store this file in LFS (and so redirect its downloads).
    pub(crate) fn is_lfs(&self) -> bool {
        self.size >= LFS_MIN_SIZE || LFS_SUFFIXES.iter().any(|s| self.path.ends_with(s))
    }

    /// The Git LFS pointer the Hub keeps in git for an LFS file.
    pub(crate) fn lfs_pointer(&self) -> String {
        format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            self.sha256, self.size
        )
    }
}

/// The git blob id of what git holds for `file`: the file itself, or its LFS pointer.
/// Reads a file kept in git whole (such files are small).
pub(crate) fn git_blob_id(file: &FileEntry) -> io::Result<String> {
    let blob = if file.is_lfs() {
        file.lfs_pointer().into_bytes().into()
    } else {
        file.content.read(0, file.size)?
    };
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", blob.len()).as_bytes());
    h.update(&blob);
    Ok(hex(&h.finalize()))
}

#[derive(Clone)]
pub(crate) struct RevisionView {
    pub(crate) repo_id: String,
    pub(crate) revision: String,
    pub(crate) commit: String,
    /// Sorted by path.
    pub(crate) files: Vec<FileEntry>,
}

impl RevisionView {
    pub(crate) fn file(&self, path: &str) -> Result<&FileEntry, HubError> {
        let not_found = || HubError::EntryNotFound {
            message: format!(
                "Entry not found: {path} in {} at revision {}",
                self.repo_id, self.revision
            ),
            commit: Some(self.commit.clone()),
        };
        if !valid_path(path) {
            return Err(not_found());
        }
        self.files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(not_found)
    }

    pub(crate) fn is_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.files.iter().any(|f| f.path.starts_with(&prefix))
    }
}

/// One path component that cannot climb out of its parent.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

pub(crate) fn valid_path(p: &str) -> bool {
    p.split('/').all(valid_segment)
}

impl Shared {
    /// The default branch (`main`) of a repository, if it has one.
    pub(crate) fn default_revision(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<RevisionView>, HubError> {
        let has_main = match &self.virtual_hub {
            Some(_) => true,
            None => self.repo_dir(org, name)?.join("main").is_dir(),
        };
        match has_main {
            true => self.describe(org, name, "main").map(Some),
            false => Ok(None),
        }
    }

    pub(crate) fn repo_dir(&self, org: &str, name: &str) -> Result<PathBuf, HubError> {
        let not_found = || HubError::RepoNotFound(format!("Repository not found: {org}/{name}"));
        if !valid_segment(org) || !valid_segment(name) {
            return Err(not_found());
        }
        let dir = self.root.join(org).join(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(not_found())
        }
    }

    /// Resolves `rev` (a revision directory name or a commit id) and describes it.
    /// Holds `file` of `commit` open for later ranged reads naming that commit.
    pub(crate) fn pin(&self, key: PinnedKey, file: &FileEntry) {
        if let Some(pinned) = PinnedFile::open(file) {
            lock(&self.pinned).insert(key, Arc::new(pinned));
        }
    }

    pub(crate) fn describe(
        &self,
        org: &str,
        name: &str,
        rev: &str,
    ) -> Result<RevisionView, HubError> {
        if let Some(hub) = &self.virtual_hub {
            return hub.describe(org, name, rev);
        }
        let repo_dir = self.repo_dir(org, name)?;
        if valid_segment(rev) && repo_dir.join(rev).is_dir() {
            return self.describe_dir(org, name, rev, &repo_dir.join(rev));
        }
        if is_commit_hex(rev) {
            let commit = rev.to_ascii_lowercase();
            let key = format!("{org}/{name}@{commit}");
            // Fast path: a commit this server handed out before, if its content is unchanged.
            let known = lock(&self.commits).get(&key).cloned();
            if let Some(known) = known {
                let dir = repo_dir.join(&known);
                if dir.is_dir() {
                    let view = self.describe_dir(org, name, &known, &dir)?;
                    if view.commit == commit {
                        return Ok(view);
                    }
                }
            }
            for rev_name in list_subdirs(&repo_dir)? {
                let view = self.describe_dir(org, name, &rev_name, &repo_dir.join(&rev_name))?;
                if view.commit == commit {
                    return Ok(view);
                }
            }
        }
        Err(HubError::RevisionNotFound(format!(
            "Revision Not Found for {org}/{name}: {rev}"
        )))
    }

    pub(crate) fn describe_dir(
        &self,
        org: &str,
        name: &str,
        rev: &str,
        dir: &Path,
    ) -> Result<RevisionView, HubError> {
        let mut found = Vec::new();
        walk(dir, "", 0, &mut found)
            .map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut files = Vec::with_capacity(found.len());
        for (path, abs, meta) in found {
            let sha256 = self
                .sha256_of(&abs, &meta)
                .map_err(|e| internal(&format!("cannot hash {}", abs.display()), e))?;
            files.push(FileEntry {
                path,
                content: Content::Disk(abs),
                size: meta.len(),
                sha256,
            });
        }
        let commit = commit_id(org, name, rev, &files);
        lock(&self.commits).insert(format!("{org}/{name}@{commit}"), rev.to_string());
        Ok(RevisionView {
            repo_id: format!("{org}/{name}"),
            revision: rev.to_string(),
            commit,
            files,
        })
    }

    pub(crate) fn sha256_of(&self, abs: &Path, meta: &std::fs::Metadata) -> io::Result<String> {
        let mtime = meta.modified().ok();
        let cached = || {
            lock(&self.hashes)
                .get(abs)
                .filter(|e| e.len == meta.len() && e.mtime == mtime)
                .map(|e| e.sha256.clone())
        };
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        // One hashing per file at a time: concurrent first requests for a multi-GB file wait
        // for the first hash instead of each reading the whole file again.
        let gate = lock(&self.hashing)
            .entry(abs.to_path_buf())
            .or_default()
            .clone();
        let _hashing = lock(&gate);
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        let sha256 = sha256_file(abs)?;
        lock(&self.hashes).insert(
            abs.to_path_buf(),
            HashEntry {
                len: meta.len(),
                mtime,
                sha256: sha256.clone(),
            },
        );
        Ok(sha256)
    }
}

/// Subdirectory names of `dir`, sorted.
pub(crate) fn list_subdirs(dir: &Path) -> Result<Vec<String>, HubError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| internal(&format!("cannot list {}", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str() {
            if valid_segment(name) && entry.path().is_dir() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Regular files below `dir` (following symlinks, so a tree of links into an HF cache works).
pub(crate) fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Names that are not UTF-8 cannot appear in a URL path we would match.
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_segment(&name) {
            continue;
        }
        let abs = entry.path();
        let Ok(meta) = std::fs::metadata(&abs) else {
            continue; // dangling symlink
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if meta.is_dir() {
            walk(&abs, &rel, depth + 1, out)?;
        } else if meta.is_file() {
            out.push((rel, abs, meta));
        }
    }
    Ok(())
}

/// A 40-hex id for `(repo, revision, content)`.
pub(crate) fn commit_id(org: &str, name: &str, rev: &str, files: &[FileEntry]) -> String {
    if is_commit_hex(rev) {
        return rev.to_ascii_lowercase();
    }
    let mut h = Sha256::new();
    h.update(b"neuromfa-hub commit v1\0");
    for part in [org, name, rev] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for f in files {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    let mut id = hex(&h.finalize());
    id.truncate(40);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn path_segments_cannot_escape() {
        assert!(valid_path("model.safetensors"));
        assert!(valid_path("sub/dir/file.bin"));
        for bad in ["", "..", "../x", "a/../b", "a//b", "/abs", "a\\b", "."] {
            assert!(!valid_path(bad), "{bad:?} should be rejected");
        }
    }
}
