//! One file of a checkpoint into the HF cache through `hf-hub`, checked against what the Hub
//! announced (size, and sha256 when the ETag is one) and downloaded again when it does not
//! match; a download that makes no progress for too long is abandoned.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent, FileStatus, ProgressEvent, ProgressHandler};
use hf_hub::{HFRepository, RepoTypeModel};
use neuromfa_common::checkpoint::CONFIG_FILE;

use super::{Cost, FetchedFile, MAX_ATTEMPTS};
use crate::error::{FetchError, Missing, Names};
use crate::hashing::{is_commit_hex, is_sha256_hex, sha256_file};

/// Verified downloads of one repository's files, and what they cost.
pub(super) struct Downloader {
    pub(super) names: Names,
    pub(super) handle: HFRepository<RepoTypeModel>,
    /// `<cache>/models--<org>--<name>`.
    pub(super) folder: PathBuf,
    pub(super) stall_timeout: Duration,
    pub(super) spent: Cost,
}

enum Check {
    Ok(FetchedFile),
    Mismatch {
        check: &'static str,
        expected: String,
        actual: String,
    },
}

impl Downloader {
    /// Downloads one file (or finds it cached) and verifies it, retrying bad content.
    /// Returns the snapshot path and the file's description.
    pub(super) async fn fetch_file(
        &mut self,
        file: &str,
        rev: &str,
    ) -> Result<(PathBuf, FetchedFile), FetchError> {
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            // hf-hub answers a commit-addressed file from the snapshot without any request.
            let local =
                is_commit_hex(rev) && self.folder.join("snapshots").join(rev).join(file).exists();
            let probe = Arc::new(Probe::new());
            let download = self
                .handle
                .download_file()
                .filename(file)
                .revision(rev)
                .progress(probe.clone())
                .send();
            let outcome = watch(download, &probe, self.stall_timeout).await;
            let seen = probe.state();
            self.spent += Cost {
                requests: u32::from(!local) + u32::from(seen.body_started),
                bytes: seen.bytes,
            };
            let path = match outcome {
                None => {
                    return Err(self.names.transient(
                        file,
                        format!(
                            "no progress for {}s, the server stalled",
                            self.stall_timeout.as_secs_f64()
                        ),
                    ))
                }
                Some(Err(e)) => return Err(self.names.classify(file, e)),
                Some(Ok(path)) => path,
            };
            match self.verify(file, &path, &seen).await? {
                Check::Ok(f) => return Ok((path, f)),
                Check::Mismatch {
                    check,
                    expected,
                    actual,
                } => {
                    tracing::warn!(
                        repo = %self.names.repo(),
                        revision = %self.names.revision(),
                        file,
                        attempt,
                        check,
                        %expected,
                        %actual,
                        "downloaded file does not match the Hub's metadata; discarding it"
                    );
                    self.discard(file, &path)?;
                    last = Some((check, expected, actual));
                }
            }
        }
        let (check, expected, actual) = last.unwrap_or(("size", String::new(), String::new()));
        Err(FetchError::Integrity {
            at: self.names.at(file),
            check,
            expected,
            actual,
        })
    }

    /// Compares the blob behind `path` with the HEAD metadata of this download.
    async fn verify(
        &self,
        file: &str,
        path: &Path,
        seen: &ProbeState,
    ) -> Result<Check, FetchError> {
        // The snapshot entry links to `blobs/<etag>`; the blob's name is the ETag.
        let (blob, etag) = match std::fs::read_link(path) {
            Ok(target) => {
                let blob = path.parent().map(|p| p.join(&target)).unwrap_or(target);
                let etag = blob
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string);
                (blob, etag)
            }
            Err(_) => (path.to_path_buf(), None),
        };
        let size = std::fs::metadata(&blob)
            .map_err(|e| self.names.cache(file, &blob, &e))?
            .len();
        if let Some(expected) = seen.head_size {
            if size != expected {
                return Ok(Check::Mismatch {
                    check: "size",
                    expected: expected.to_string(),
                    actual: size.to_string(),
                });
            }
        }
        let sha256 = etag
            .filter(|e| is_sha256_hex(e))
            .map(|e| e.to_ascii_lowercase());
        if let (Some(expected), true) = (&sha256, seen.body_started) {
            let hashed = blob.clone();
            let actual = tokio::task::spawn_blocking(move || sha256_file(&hashed))
                .await
                .map_err(|e| self.names.cache(file, &blob, &std::io::Error::other(e)))?
                .map_err(|e| self.names.cache(file, &blob, &e))?;
            if &actual != expected {
                return Ok(Check::Mismatch {
                    check: "sha256",
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(Check::Ok(FetchedFile {
            name: file.to_string(),
            size,
            sha256,
        }))
    }

    /// Removes a bad download: the blob and the snapshot entry pointing at it.
    fn discard(&self, file: &str, path: &Path) -> Result<(), FetchError> {
        if let Ok(target) = std::fs::read_link(path) {
            let blob = path.parent().map(|p| p.join(&target)).unwrap_or(target);
            remove_if_present(&blob).map_err(|e| self.names.cache(file, &blob, &e))?;
        }
        remove_if_present(path).map_err(|e| self.names.cache(file, path, &e))
    }

    /// Turns a 404 on `config.json` into the most precise error: no repository, no revision,
    /// or no config file (hf-hub reports all three as a missing entry).
    pub(super) async fn explain_missing(&mut self) -> FetchError {
        self.spent.requests += 1;
        let revision_exists = self
            .handle
            .revision_exists()
            .revision(self.names.revision())
            .send()
            .await;
        let missing = match revision_exists {
            Ok(true) => Missing::File,
            Ok(false) => {
                self.spent.requests += 1;
                match self.handle.exists().send().await {
                    Ok(false) => Missing::Repo,
                    Ok(true) => Missing::Revision,
                    Err(e) => return self.names.classify(CONFIG_FILE, e),
                }
            }
            Err(e) => return self.names.classify(CONFIG_FILE, e),
        };
        self.names.missing(missing, CONFIG_FILE)
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What hf-hub's progress events revealed about one `download_file` call.
#[derive(Debug, Clone, Copy)]
struct ProbeState {
    last_activity: Instant,
    /// File size from the HEAD response (`Start` is emitted right after it).
    head_size: Option<u64>,
    /// A body download began: the file was not in the cache.
    body_started: bool,
    /// Body bytes received.
    bytes: u64,
}

/// Progress handler that records sizes and activity, for verification and the stall watch.
struct Probe {
    state: Mutex<ProbeState>,
}

impl Probe {
    fn new() -> Self {
        Probe {
            state: Mutex::new(ProbeState {
                last_activity: Instant::now(),
                head_size: None,
                body_started: false,
                bytes: 0,
            }),
        }
    }

    fn state(&self) -> ProbeState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ProgressHandler for Probe {
    fn on_progress(&self, event: &ProgressEvent) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last_activity = Instant::now();
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => s.head_size = Some(*total_bytes),
            DownloadEvent::Progress { files } => {
                for f in files {
                    // A cache hit reports only `Complete`; a download starts with `Started`.
                    if f.status == FileStatus::Started || f.status == FileStatus::InProgress {
                        s.body_started = true;
                    }
                    if f.status == FileStatus::InProgress {
                        s.bytes = s.bytes.max(f.bytes_completed);
                    }
                }
            }
            // Xet transfers report aggregate bytes only.
            DownloadEvent::AggregateProgress {
                bytes_completed, ..
            } => {
                s.body_started = true;
                s.bytes = s.bytes.max(*bytes_completed);
            }
            DownloadEvent::Complete => {}
        }
    }
}

/// Runs `fut` until it completes, or returns `None` once `stall` passes without progress.
/// hf-hub's HEAD client has no timeout, so this is the only guard against a silent server.
async fn watch<F: Future>(fut: F, probe: &Probe, stall: Duration) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = probe.state().last_activity + stall;
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(deadline.into()) => {
                if probe.state().last_activity + stall <= Instant::now() {
                    return None;
                }
            }
        }
    }
}
