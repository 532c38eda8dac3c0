//! File downloads: `HEAD` and `GET` on `/<org>/<name>/resolve/<revision>/<path>`.
//!
//! As an ideal mirror every file is answered here, whole or one byte range, streamed (small
//! bodies read in one go), paced when asked. In the real-Hub profile an LFS file answers
//! with a redirect to the CDN instead ([`crate::hf::redirect`]); a file kept in git is
//! answered here, its ETag the git blob id, after a relative `307` to
//! `/api/resolve-cache/models/<org>/<name>/<commit>/<path>` (as huggingface.co does for
//! public repos) unless [`crate::HfProfile::resolve_cache`] is off.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use neuromfa_hub::hashing::is_commit_hex;

use crate::content::{bytes_body, streamed_body, Pacing};
use crate::error::{blocking, internal, lock, HubError};
use crate::range::{parse_range, RangeSpec};
use crate::repo::{git_blob_id, FileEntry, PinnedKey};
use crate::{hf, Shared, SMALL_BODY, X_REPO_COMMIT};

/// A resolve request, as the route received it.
struct FileRequest {
    org: String,
    name: String,
    rev: String,
    path: String,
    /// The `Range` header, if any.
    range: Option<String>,
    is_head: bool,
    /// Set when the request names a commit: the key of a file pinned to it.
    pinned_key: Option<PinnedKey>,
    /// Answer with the file itself whatever the profile (the resolve-cache route).
    direct: bool,
}

/// The file a request resolved to, its ETag, the part of it to send, and that part when
/// it is small enough to have been read already.
struct Resolved {
    commit: String,
    file: FileEntry,
    etag: String,
    range: RangeSpec,
    small: Option<axum::body::Bytes>,
}

/// What to answer a resolve request with.
enum Outcome {
    /// The file itself, from this server.
    Direct(Resolved),
    /// A redirect to the CDN (real-Hub profile, LFS files).
    Redirect { commit: String, file: FileEntry },
    /// A redirect to the commit-pinned resolve-cache URL (real-Hub profile, files in git).
    ResolveCache { commit: String, etag: String },
}

/// `/<org>/<name>/resolve/<rev>/<path>`, and
/// `/api/resolve-cache/models/<org>/<name>/<commit>/<path>` (a file kept in git, answered
/// directly whatever the profile).
pub(crate) async fn resolve(
    State(st): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    Extension(pacing): Extension<Pacing>,
    req_headers: HeaderMap,
) -> Result<Response, HubError> {
    let direct = uri.path().starts_with("/api/resolve-cache/");
    let like_hf = st.hf.is_some();
    // A request naming a commit (every ranged fetch does) may use a file pinned to it.
    let pinned_key = (is_commit_hex(&rev) && !like_hf).then(|| {
        PinnedKey(
            format!("{org}/{name}"),
            rev.to_ascii_lowercase(),
            path.clone(),
        )
    });
    let repo = format!("{org}/{name}");
    let request_path = path.clone();
    let request = FileRequest {
        org,
        name,
        rev,
        path,
        range: req_headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        is_head: method == Method::HEAD,
        pinned_key,
        direct,
    };
    let is_head = request.is_head;
    let outcome = match read_pinned(&st, &request) {
        Some(done) => Outcome::Direct(done),
        None => {
            let st = st.clone();
            // One trip to the blocking pool per request: resolving the revision and, for a
            // small body, reading it too. Separate async file operations would each be
            // another trip, and on loopback those hops are the cost.
            blocking(move || resolve_on_disk(&st, request)).await?
        }
    };
    match outcome {
        Outcome::Direct(resolved) => respond(&st, resolved, is_head, &pacing).await,
        Outcome::Redirect { commit, file } => {
            let Some(profile) = &st.hf else {
                return Err(HubError::Internal(
                    "a redirect without the Hub profile".into(),
                ));
            };
            let host = req_headers.get(header::HOST).and_then(|v| v.to_str().ok());
            hf::redirect(&st, profile, &repo, &commit, &file, host)
        }
        Outcome::ResolveCache { commit, etag } => {
            Ok(hf::to_resolve_cache(&repo, &commit, &request_path, &etag))
        }
    }
}

/// A small ranged GET of a file pinned to the commit it names, answered from the open file
/// on this thread; `None` sends the request the long way.
fn read_pinned(st: &Shared, request: &FileRequest) -> Option<Resolved> {
    if request.is_head {
        return None;
    }
    let key = request.pinned_key.as_ref()?;
    let pinned = lock(&st.pinned).get(key).cloned()?;
    let range = parse_range(request.range.as_deref()?, pinned.entry.size);
    let RangeSpec::Partial { start, end } = range else {
        return None;
    };
    let bytes = pinned.read_small(start, end - start + 1)?;
    Some(Resolved {
        commit: key.1.clone(),
        file: pinned.entry.clone(),
        etag: pinned.entry.sha256.clone(),
        range,
        small: Some(bytes),
    })
}

/// Resolves the revision and, for a small body, reads it (blocking); pins the file when the
/// request named its commit.
fn resolve_on_disk(st: &Shared, request: FileRequest) -> Result<Outcome, HubError> {
    let view = st.describe(&request.org, &request.name, &request.rev)?;
    let file = view.file(&request.path)?.clone();
    let etag = match &st.hf {
        None => file.sha256.clone(),
        Some(_) if file.is_lfs() => {
            return Ok(Outcome::Redirect {
                commit: view.commit,
                file,
            })
        }
        Some(hf) => {
            let etag = git_blob_id(&file)
                .map_err(|e| internal(&format!("cannot read {}", file.content), e))?;
            if hf.profile.resolve_cache && !request.direct {
                return Ok(Outcome::ResolveCache {
                    commit: view.commit,
                    etag,
                });
            }
            etag
        }
    };
    let range = request
        .range
        .as_deref()
        .map(|v| parse_range(v, file.size))
        .unwrap_or(RangeSpec::Full);
    let (start, count) = match range {
        RangeSpec::Full => (0, file.size),
        RangeSpec::Partial { start, end } => (start, end - start + 1),
        RangeSpec::Unsatisfiable => (0, 0),
    };
    let small = if !request.is_head && range != RangeSpec::Unsatisfiable && count <= SMALL_BODY {
        Some(read_part(&file, start, count, &view.commit)?)
    } else {
        None
    };
    if let Some(key) = request.pinned_key.filter(|key| key.1 == view.commit) {
        st.pin(key, &file);
    }
    Ok(Outcome::Direct(Resolved {
        commit: view.commit,
        file,
        etag,
        range,
        small,
    }))
}

/// The answer: the Hub's headers, and for a GET the requested part of the file.
async fn respond(
    st: &Shared,
    resolved: Resolved,
    is_head: bool,
    pacing: &Pacing,
) -> Result<Response, HubError> {
    let Resolved {
        commit,
        file,
        etag,
        range,
        small,
    } = resolved;
    let mut headers = HeaderMap::new();
    let etag =
        HeaderValue::from_str(&format!("\"{etag}\"")).map_err(|e| internal("bad ETag", e))?;
    headers.insert(header::ETAG, etag);
    headers.insert(
        X_REPO_COMMIT,
        HeaderValue::from_str(&commit).map_err(|e| internal("bad commit id", e))?,
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // If-None-Match is deliberately ignored: on a 304 hf-hub reuses the commit it cached for a
    // branch, whereas a 200 carries the current X-Repo-Commit and costs no body either.

    let len = file.size;
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return Ok((StatusCode::OK, headers).into_response());
    }

    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial { start, end } => {
            let content_range = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                .map_err(|e| internal("bad Content-Range", e))?;
            headers.insert(header::CONTENT_RANGE, content_range);
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeSpec::Unsatisfiable => return Err(HubError::RangeNotSatisfiable { len }),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = match small {
        Some(bytes) => bytes_body(bytes, pacing),
        None => streamed_body(&file.content, start, count, pacing)
            .await
            .map_err(|e| file_error(&file, &commit, "read", e))?,
    };
    st.stats.file_bodies.fetch_add(1, Ordering::Relaxed);
    st.stats.file_body_bytes.fetch_add(count, Ordering::Relaxed);
    Ok((status, headers, body).into_response())
}

/// A file that vanished since it was described is missing; anything else is our fault.
fn file_error(file: &FileEntry, commit: &str, what: &str, e: std::io::Error) -> HubError {
    if e.kind() == std::io::ErrorKind::NotFound {
        HubError::EntryNotFound {
            message: format!("Entry not found: {}", file.path),
            commit: Some(commit.to_string()),
        }
    } else {
        internal(&format!("cannot {what} {}", file.content), e)
    }
}

/// `count` bytes of `file` from `start`, read in one go (blocking).
fn read_part(
    file: &FileEntry,
    start: u64,
    count: u64,
    commit: &str,
) -> Result<axum::body::Bytes, HubError> {
    file.content
        .read(start, count)
        .map_err(|e| file_error(file, commit, "read", e))
}
