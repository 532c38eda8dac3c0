//! Errors in the Hub's shape (status, `X-Error-Code`, `X-Error-Message`), and the helpers
//! every route shares to reach them.

use std::sync::{Mutex, MutexGuard};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::{X_ERROR_CODE, X_ERROR_MESSAGE, X_REPO_COMMIT};

#[derive(Debug)]
pub(crate) enum HubError {
    Unauthorized,
    RepoNotFound(String),
    RevisionNotFound(String),
    EntryNotFound {
        message: String,
        commit: Option<String>,
    },
    RangeNotSatisfiable {
        len: u64,
    },
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let (status, code, message, commit) = match self {
            HubError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                None,
                "Invalid credentials in Authorization header".to_string(),
                None,
            ),
            HubError::RepoNotFound(m) => (StatusCode::NOT_FOUND, Some("RepoNotFound"), m, None),
            HubError::RevisionNotFound(m) => {
                (StatusCode::NOT_FOUND, Some("RevisionNotFound"), m, None)
            }
            HubError::EntryNotFound { message, commit } => (
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                message,
                commit,
            ),
            HubError::RangeNotSatisfiable { len } => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
            HubError::BadRequest(m) => (StatusCode::BAD_REQUEST, Some("BadRequest"), m, None),
            HubError::Internal(m) => {
                tracing::error!(error = %m, "hub server internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, None, m, None)
            }
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        let headers = resp.headers_mut();
        if let Some(code) = code {
            headers.insert(X_ERROR_CODE, HeaderValue::from_static(code));
        }
        // Header values cannot hold every character a message may contain.
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert(X_ERROR_MESSAGE, v);
        }
        // The Hub names the commit on a missing file so clients can cache the absence.
        if let Some(v) = commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(X_REPO_COMMIT, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub(crate) fn internal(context: &str, e: impl std::fmt::Display) -> HubError {
    HubError::Internal(format!("{context}: {e}"))
}

/// Runs blocking filesystem work (directory walks, hashing) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("hub worker task failed", e))?
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain caches; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
