//! File downloads: `HEAD` and `GET` on `/<org>/<name>/resolve/<revision>/<path>`, whole or
//! one byte range, streamed from disk (small bodies read in one go), throttled when asked.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use neuromfa_hub::hashing::is_commit_hex;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::error::{blocking, internal, lock, HubError};
use crate::repo::{FileEntry, PinnedKey};
use crate::throttle::throttled;
use crate::{Shared, SMALL_BODY, STREAM_CHUNK, THROTTLED_CHUNK, X_REPO_COMMIT};

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
}

/// The file a request resolved to, the part of it to send, and that part when it is small
/// enough to have been read already.
struct Resolved {
    commit: String,
    file: FileEntry,
    range: RangeSpec,
    small: Option<axum::body::Bytes>,
}

pub(crate) async fn resolve(
    State(st): State<Arc<Shared>>,
    method: Method,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    req_headers: HeaderMap,
) -> Result<Response, HubError> {
    // A request naming a commit (every ranged fetch does) may use a file pinned to it.
    let pinned_key = is_commit_hex(&rev).then(|| {
        PinnedKey(
            format!("{org}/{name}"),
            rev.to_ascii_lowercase(),
            path.clone(),
        )
    });
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
    };
    let is_head = request.is_head;
    let resolved = match read_pinned(&st, &request) {
        Some(done) => done,
        None => {
            let st = st.clone();
            // One trip to the blocking pool per request: resolving the revision and, for a
            // small body, reading it too. Separate async file operations would each be
            // another trip, and on loopback those hops are the cost.
            blocking(move || resolve_on_disk(&st, request)).await?
        }
    };
    respond(&st, resolved, is_head).await
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
        range,
        small: Some(bytes),
    })
}

/// Resolves the revision on disk and, for a small body, reads it (blocking); pins the file
/// when the request named its commit.
fn resolve_on_disk(st: &Shared, request: FileRequest) -> Result<Resolved, HubError> {
    let view = st.describe(&request.org, &request.name, &request.rev)?;
    let file = view.file(&request.path)?.clone();
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
    Ok(Resolved {
        commit: view.commit,
        file,
        range,
        small,
    })
}

/// The answer: the Hub's headers, and for a GET the requested part of the file.
async fn respond(st: &Shared, resolved: Resolved, is_head: bool) -> Result<Response, HubError> {
    let Resolved {
        commit,
        file,
        range,
        small,
    } = resolved;
    let mut headers = HeaderMap::new();
    let etag = HeaderValue::from_str(&format!("\"{}\"", file.sha256))
        .map_err(|e| internal("bad ETag", e))?;
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
        Some(bytes) => small_body(st, bytes),
        None => streamed_body(st, &file, &commit, start, count).await?,
    };
    Ok((status, headers, body).into_response())
}

/// A body already read.
fn small_body(st: &Shared, bytes: axum::body::Bytes) -> Body {
    st.stats.file_bodies.fetch_add(1, Ordering::Relaxed);
    st.stats
        .file_body_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    match &st.throttle {
        None => Body::from(bytes),
        Some(throttle) => {
            let chunks: Vec<io::Result<axum::body::Bytes>> = (0..bytes.len())
                .step_by(THROTTLED_CHUNK)
                .map(|at| Ok(bytes.slice(at..(at + THROTTLED_CHUNK).min(bytes.len()))))
                .collect();
            throttled(futures_util::stream::iter(chunks), throttle.clone())
        }
    }
}

/// `count` bytes of `file` from `start`, streamed from disk.
async fn streamed_body(
    st: &Shared,
    file: &FileEntry,
    commit: &str,
    start: u64,
    count: u64,
) -> Result<Body, HubError> {
    let mut f = tokio::fs::File::open(&file.abs)
        .await
        .map_err(|e| file_error(file, commit, "open", e))?;
    if start > 0 {
        f.seek(io::SeekFrom::Start(start))
            .await
            .map_err(|e| file_error(file, commit, "seek", e))?;
    }
    st.stats.file_bodies.fetch_add(1, Ordering::Relaxed);
    st.stats.file_body_bytes.fetch_add(count, Ordering::Relaxed);
    Ok(match &st.throttle {
        None => Body::from_stream(ReaderStream::with_capacity(f.take(count), STREAM_CHUNK)),
        Some(throttle) => throttled(
            ReaderStream::with_capacity(f.take(count), THROTTLED_CHUNK),
            throttle.clone(),
        ),
    })
}

/// A file that vanished since it was described is missing; anything else is our fault.
fn file_error(file: &FileEntry, commit: &str, what: &str, e: io::Error) -> HubError {
    if e.kind() == io::ErrorKind::NotFound {
        HubError::EntryNotFound {
            message: format!("Entry not found: {}", file.path),
            commit: Some(commit.to_string()),
        }
    } else {
        internal(&format!("cannot {what} {}", file.abs.display()), e)
    }
}

/// `count` bytes of `file` from `start`, read in one go (blocking).
fn read_part(
    file: &FileEntry,
    start: u64,
    count: u64,
    commit: &str,
) -> Result<axum::body::Bytes, HubError> {
    use std::io::{Read, Seek};
    let context = |what: &str, e: io::Error| file_error(file, commit, what, e);
    let mut f = std::fs::File::open(&file.abs).map_err(|e| context("open", e))?;
    f.seek(io::SeekFrom::Start(start))
        .map_err(|e| context("seek", e))?;
    let mut buf = vec![0u8; count as usize];
    f.read_exact(&mut buf).map_err(|e| context("read", e))?;
    Ok(buf.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// No usable Range: serve everything (RFC 9110 says to ignore malformed ones).
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `len` bytes. Multiple ranges are not
/// supported and fall back to the whole file, which RFC 9110 permits.
fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial {
        start,
        end: end.min(len - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        let partial = |start, end| Partial { start, end };
        for (header, len, expected) in [
            ("bytes=0-9", 100, partial(0, 9)),
            ("bytes=90-", 100, partial(90, 99)),
            ("bytes=90-500", 100, partial(90, 99)),
            ("bytes=-10", 100, partial(90, 99)),
            ("bytes=-500", 100, partial(0, 99)),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=9-3", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=x-1", 100, Full),
        ] {
            assert_eq!(
                parse_range(header, len),
                expected,
                "{header} of {len} bytes"
            );
        }
    }
}
