//! The standard HF cache layout, as `huggingface_hub` and `hf-hub` write and read it, so
//! that every HF tool finds what a worker downloaded (and a worker finds theirs):
//!
//! ```text
//! <cache>/models--<org>--<name>/blobs/<etag>                 file contents, by ETag
//!                              /snapshots/<commit>/<file>     → ../../blobs/<etag>
//!                              /refs/<revision>               the commit a branch pointed at
//!                              /.no_exist/<commit>/<file>     known absent at that commit
//! <cache>/.locks/models--<org>--<name>/<etag>.lock            held while a blob is written
//! ```
//!
//! The ETag is the LFS sha256 for weight files (`X-Linked-Etag`), the git blob id for small
//! files kept in git; it is what names a blob, so two revisions with the same file share it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::hashing::is_commit_hex;

/// One repository's folder in the HF cache.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    cache_dir: PathBuf,
    /// `models--<org>--<name>`.
    folder: String,
}

/// A blob's lock, held until dropped.
pub(crate) struct BlobLock {
    _file: File,
}

impl RepoCache {
    pub(crate) fn new(cache_dir: &Path, owner: &str, name: &str) -> Self {
        RepoCache {
            cache_dir: cache_dir.to_path_buf(),
            folder: format!("models--{owner}--{name}"),
        }
    }

    /// `<cache>/models--<org>--<name>`.
    pub(crate) fn dir(&self) -> PathBuf {
        self.cache_dir.join(&self.folder)
    }

    pub(crate) fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir().join("snapshots").join(commit)
    }

    pub(crate) fn blob(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(etag)
    }

    /// Where a blob is written before it is verified.
    pub(crate) fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir().join("blobs").join(format!("{etag}.incomplete"))
    }

    fn no_exist(&self, commit: &str) -> PathBuf {
        self.dir().join(".no_exist").join(commit)
    }

    /// Whether `file` is recorded as absent at `commit`.
    pub(crate) fn known_absent(&self, commit: &str, file: &str) -> bool {
        self.no_exist(commit).join(file).exists()
    }

    /// Records `file` as absent at `commit`. Only saves a request next time: a marker that
    /// cannot be written is no error.
    pub(crate) fn mark_absent(&self, commit: &str, file: &str) {
        let dir = self.no_exist(commit);
        let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(file), b""));
    }

    /// Records that `revision` points at `commit` (nothing for a commit).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        if is_commit_hex(revision) || !is_commit_hex(commit) {
            return Ok(());
        }
        let path = self.dir().join("refs").join(revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, commit)
    }

    /// Links `snapshots/<commit>/<file>` to the blob `etag` (relative, as the HF tools do)
    /// and returns the link's path.
    pub(crate) fn link(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let pointer = self.snapshot(commit).join(file);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // From the pointer's directory: up through the file's own folders, the commit and
        // `snapshots`.
        let depth = file.split('/').filter(|s| !s.is_empty()).count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        match std::fs::remove_file(&pointer) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(&target, &pointer)?;
        Ok(pointer)
    }

    /// Takes the lock of blob `etag` (the lock file `huggingface_hub` and `hf-hub` take), so
    /// that two processes sharing the cache never write one blob at once.
    pub(crate) async fn lock(&self, etag: &str) -> io::Result<BlobLock> {
        let path = self
            .cache_dir
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"));
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = File::create(&path)?;
            file.lock()?;
            Ok(BlobLock { _file: file })
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_linked_from_snapshots_and_branches_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "EleutherAI", "tiny");
        let commit = "a".repeat(40);
        let _lock = cache.lock("e1").await.unwrap();
        std::fs::create_dir_all(cache.blob("e1").parent().unwrap()).unwrap();
        std::fs::write(cache.blob("e1"), b"weights").unwrap();
        let link = cache.link(&commit, "model.safetensors", "e1").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"weights");
        let nested = cache.link(&commit, "sub/dir/model.bin", "e1").unwrap();
        assert_eq!(std::fs::read(&nested).unwrap(), b"weights");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../blobs/e1")
        );
        // Linking again replaces the link.
        cache.link(&commit, "model.safetensors", "e1").unwrap();

        cache.write_ref("step1", &commit).unwrap();
        cache.write_ref(&commit, &commit).unwrap();
        let refs = dir.path().join("models--EleutherAI--tiny/refs");
        assert_eq!(std::fs::read_to_string(refs.join("step1")).unwrap(), commit);
        assert_eq!(
            std::fs::read_dir(&refs).unwrap().count(),
            1,
            "a commit is no branch"
        );

        assert!(!cache.known_absent(&commit, "pytorch_model.bin"));
        cache.mark_absent(&commit, "pytorch_model.bin");
        assert!(cache.known_absent(&commit, "pytorch_model.bin"));
    }
}
