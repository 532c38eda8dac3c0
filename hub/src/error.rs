//! Why a fetch failed, with the repository, revision and file it was about, and how
//! `hf-hub`'s errors sort into what retrying may heal and what it will not.

use std::path::Path;
use std::time::Duration;

use hf_hub::HFError;

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
    /// Connection refused, timeout, stalled transfer, 408/429/5xx: worth retrying later.
    #[error(
        "temporary failure fetching {} from {} at revision {}: {detail}",
        .at.file, .at.repo, .at.revision
    )]
    Transient {
        at: Box<FileRef>,
        detail: String,
        /// How long the server asked to wait (`Retry-After`, `RateLimit`), when it said.
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
    /// The client could not be configured ([`Fetcher::new`] only).
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

    pub(crate) fn transient(&self, file: &str, detail: String) -> FetchError {
        self.transient_after(file, detail, None)
    }

    /// A transient failure the server named a wait for.
    pub(crate) fn transient_after(
        &self,
        file: &str,
        detail: String,
        retry_after: Option<Duration>,
    ) -> FetchError {
        FetchError::Transient {
            at: self.at(file),
            detail,
            retry_after,
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

    /// Sorts an hf-hub error into transient and permanent kinds.
    pub(crate) fn classify(&self, file: &str, e: HFError) -> FetchError {
        let detail = error_chain(&e);
        let at = self.at(file);
        match e {
            HFError::RepoNotFound { .. } => self.missing(Missing::Repo, file),
            HFError::RevisionNotFound { .. } => self.missing(Missing::Revision, file),
            HFError::EntryNotFound { .. } => self.missing(Missing::File, file),
            // The real Hub answers 401 + RepoNotFound for repositories it will not show.
            HFError::AuthRequired { context }
                if context.error_code.as_deref() == Some("RepoNotFound") =>
            {
                self.missing(Missing::Repo, file)
            }
            HFError::AuthRequired { .. } => FetchError::AccessDenied {
                at,
                status: 401,
                detail,
            },
            HFError::Forbidden { .. } => FetchError::AccessDenied {
                at,
                status: 403,
                detail,
            },
            HFError::RateLimited { retry_after, .. } => {
                self.transient_after(file, detail, retry_after)
            }
            HFError::Http { context } => {
                let status = context.status.as_u16();
                if status == 408 || status == 429 || status >= 500 {
                    self.transient(file, detail)
                } else {
                    FetchError::Hub {
                        at,
                        detail,
                        status: Some(status),
                    }
                }
            }
            HFError::Conflict { context } => FetchError::Hub {
                at,
                detail,
                status: Some(context.status.as_u16()),
            },
            // Transport failures: refused, reset, timed out, cut mid-body. Only a request that
            // could not even be built is our fault.
            HFError::Request { source, .. } if !source.is_builder() => self.transient(file, detail),
            HFError::Xet { .. } => self.transient(file, detail),
            HFError::Io(_) | HFError::CacheLockTimeout { .. } => FetchError::Cache { at, detail },
            _ => FetchError::Hub {
                at,
                detail,
                status: None,
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

/// The wait a rate-limited answer names: `Retry-After` in seconds, else the `t` (or
/// `reset`) seconds of a `RateLimit` header (`"api";r=0;t=42`, `limit=5, remaining=0,
/// reset=42`).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let seconds = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| {
            header("ratelimit")?
                .split([';', ','])
                .filter_map(|param| param.trim().split_once('='))
                .find(|(key, _)| matches!(*key, "t" | "reset"))
                .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        })?;
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn the_wait_comes_from_retry_after_else_the_ratelimit_window() {
        let wait = |pairs| retry_after(&headers(pairs)).map(|d| d.as_secs());
        assert_eq!(
            wait(&[("retry-after", "7"), ("ratelimit", "\"api\";r=0;t=42")]),
            Some(7)
        );
        assert_eq!(wait(&[("ratelimit", "\"api\";r=0;t=42")]), Some(42));
        assert_eq!(
            wait(&[("ratelimit", "limit=5, remaining=0, reset=9")]),
            Some(9)
        );
        // An HTTP date is not a number of seconds: no wait named.
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert_eq!(wait(&[]), None);
    }
}
