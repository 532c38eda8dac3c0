//! Why a fetch failed, with the repository, revision and file it was about, and how the
//! Hub's answers sort into what retrying may heal and what it will not. The HTTP status is
//! kept wherever an answer decided: `401`/`403`, a missing repository and a `422` are the
//! same for every task of a sweep, a `5xx` or a reset is not.

use std::path::Path;
use std::time::Duration;

use crate::fetch::MAX_ATTEMPTS;

/// The file of a checkpoint an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `org/name`.
    pub repo: String,
    /// The revision as asked for (branch or commit).
    pub revision: String,
    /// Path in the repository.
    pub file: String,
}

/// Why a fetch failed. Messages name the repository, the revision and the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The repository does not exist (or is invisible with these credentials).
    #[error(
        "repository {} not found at {endpoint} (fetching {} at revision {})",
        .at.repo, .at.file, .at.revision
    )]
    RepoNotFound { at: Box<FileRef>, endpoint: String },
    /// The repository exists but not the revision.
    #[error(
        "revision {} of {} not found at {endpoint} (fetching {})",
        .at.revision, .at.repo, .at.file
    )]
    RevisionNotFound { at: Box<FileRef>, endpoint: String },
    /// The revision exists but not the file.
    #[error("{} not found in {} at revision {}", .at.file, .at.repo, .at.revision)]
    FileNotFound { at: Box<FileRef> },
    /// 401 or 403: a token is missing, wrong, or lacks access (gated or private repository).
    #[error(
        "access to {} in {} at revision {} denied (HTTP {status}): {detail}; check the Hub token",
        .at.file, .at.repo, .at.revision
    )]
    AccessDenied {
        at: Box<FileRef>,
        status: u16,
        detail: String,
    },
    /// The downloaded bytes never matched what the Hub announced, in [`MAX_ATTEMPTS`]
    /// downloads.
    #[error(
        "{} in {} at revision {} failed verification after {MAX_ATTEMPTS} download attempts: \
         {check} expected {expected}, got {actual}",
        .at.file, .at.repo, .at.revision
    )]
    Integrity {
        at: Box<FileRef>,
        /// `"size"` or `"sha256"`.
        check: &'static str,
        expected: String,
        actual: String,
    },
    /// Connection refused, timeout, stalled transfer, 408/429/5xx (`status`, when an answer
    /// came), after the retries the transport makes: worth retrying later.
    #[error(
        "temporary failure fetching {} from {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Transient {
        at: Box<FileRef>,
        status: Option<u16>,
        detail: String,
        /// How long the server asked to wait (`Retry-After`, `RateLimit`), when it said: the
        /// coordinator leases the task again no sooner.
        retry_after: Option<Duration>,
    },
    /// The local cache could not be read or written (disk full, permissions).
    #[error(
        "local cache error for {} of {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Cache { at: Box<FileRef>, detail: String },
    /// The files are there but do not form a checkpoint (e.g. an unreadable shard index).
    #[error(
        "invalid checkpoint {} at revision {}: {}: {detail}",
        .at.repo, .at.revision, .at.file
    )]
    InvalidCheckpoint { at: Box<FileRef>, detail: String },
    /// The request itself is malformed (e.g. a repository id that is not `org/name`).
    #[error(
        "cannot fetch {} of {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    InvalidRequest { at: Box<FileRef>, detail: String },
    /// Any other answer from the Hub that retrying will not change, with its status (a
    /// `422` from a mirror that reads the request another way, an unexpected redirect).
    #[error(
        "fetching {} from {} at revision {} failed: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Hub {
        at: Box<FileRef>,
        status: Option<u16>,
        detail: String,
    },
    /// The server answered a byte-range request with something other than that range (it
    /// ignores `Range`): fetch the whole checkpoint instead ([`crate::ranges`]).
    #[error(
        "the Hub serving {} at revision {} does not honour byte ranges ({}): {detail}",
        .at.repo, .at.revision, .at.file
    )]
    RangesUnsupported { at: Box<FileRef>, detail: String },
    /// The client could not be configured ([`crate::fetch::Fetcher::new`] only).
    #[error("cannot set up the Hub client: {detail}")]
    Setup { detail: String },
}

impl FetchError {
    /// True when the same fetch may succeed later (network or server trouble, local cache
    /// trouble); false when it never will as asked (missing repo, revision or file, access
    /// denied, corrupt content after retries, invalid checkpoint).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Transient { .. } | FetchError::Cache { .. }
        )
    }

    /// The HTTP status of the answer that decided, when one did.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::AccessDenied { status, .. } => Some(*status),
            FetchError::Transient { status, .. } | FetchError::Hub { status, .. } => *status,
            FetchError::RepoNotFound { .. }
            | FetchError::RevisionNotFound { .. }
            | FetchError::FileNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// How long the server asked to wait before trying again, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The repository, revision and file concerned (`None` for [`FetchError::Setup`]).
    pub fn file_ref(&self) -> Option<&FileRef> {
        match self {
            FetchError::RepoNotFound { at, .. }
            | FetchError::RevisionNotFound { at, .. }
            | FetchError::FileNotFound { at }
            | FetchError::AccessDenied { at, .. }
            | FetchError::Integrity { at, .. }
            | FetchError::Transient { at, .. }
            | FetchError::Cache { at, .. }
            | FetchError::InvalidCheckpoint { at, .. }
            | FetchError::InvalidRequest { at, .. }
            | FetchError::RangesUnsupported { at, .. }
            | FetchError::Hub { at, .. } => Some(at),
            FetchError::Setup { .. } => None,
        }
    }
}

/// `e` and its sources, joined, so transport errors show their root cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The repository and revision a fetch is about: every error it raises names them, with
/// the file concerned.
#[derive(Clone)]
pub(crate) struct Names {
    repo: String,
    revision: String,
    endpoint: String,
}

impl Names {
    pub(crate) fn new(repo: &str, revision: &str, endpoint: &str) -> Self {
        Names {
            repo: repo.to_string(),
            revision: revision.to_string(),
            endpoint: endpoint.to_string(),
        }
    }

    /// `org/name`.
    pub(crate) fn repo(&self) -> &str {
        &self.repo
    }

    /// The revision as asked for.
    pub(crate) fn revision(&self) -> &str {
        &self.revision
    }

    pub(crate) fn at(&self, file: &str) -> Box<FileRef> {
        Box::new(FileRef {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: file.to_string(),
        })
    }

    /// A failure no answer decided (refused, reset, timed out).
    pub(crate) fn transient(&self, file: &str, detail: String) -> FetchError {
        FetchError::Transient {
            at: self.at(file),
            status: None,
            detail,
            retry_after: None,
        }
    }

    pub(crate) fn cache(&self, file: &str, path: &Path, e: &std::io::Error) -> FetchError {
        FetchError::Cache {
            at: self.at(file),
            detail: format!("{}: {e}", path.display()),
        }
    }

    pub(crate) fn missing(&self, what: Missing, file: &str) -> FetchError {
        let at = self.at(file);
        let endpoint = self.endpoint.clone();
        match what {
            Missing::Repo => FetchError::RepoNotFound { at, endpoint },
            Missing::Revision => FetchError::RevisionNotFound { at, endpoint },
            Missing::File => FetchError::FileNotFound { at },
        }
    }

    pub(crate) fn invalid(&self, file: &str, detail: String) -> FetchError {
        FetchError::InvalidCheckpoint {
            at: self.at(file),
            detail,
        }
    }

    pub(crate) fn invalid_request(&self, file: &str, detail: String) -> FetchError {
        FetchError::InvalidRequest {
            at: self.at(file),
            detail,
        }
    }

    /// What an answer of `status` about `file` means. `error_code` is the Hub's
    /// `X-Error-Code`, which tells a missing repository, revision and file apart;
    /// `retry_after` the wait the answer named (a `429`'s window, a `503`'s `Retry-After`).
    pub(crate) fn for_status(
        &self,
        file: &str,
        status: u16,
        error_code: Option<&str>,
        detail: String,
        retry_after: Option<Duration>,
    ) -> FetchError {
        let at = self.at(file);
        match (status, error_code) {
            // The Hub answers 401 + RepoNotFound for repositories it will not show.
            (401 | 404, Some("RepoNotFound")) => self.missing(Missing::Repo, file),
            (404, Some("RevisionNotFound")) => self.missing(Missing::Revision, file),
            (404, _) => self.missing(Missing::File, file),
            (401 | 403, _) => FetchError::AccessDenied { at, status, detail },
            (408 | 429 | 500..=599, _) => FetchError::Transient {
                at,
                status: Some(status),
                detail,
                retry_after,
            },
            _ => FetchError::Hub {
                at,
                status: Some(status),
                detail,
            },
        }
    }
}

/// What a 404 turned out to mean.
pub(crate) enum Missing {
    Repo,
    Revision,
    File,
}
