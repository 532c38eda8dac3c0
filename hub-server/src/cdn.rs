//! The CDN's listener: LFS objects and Xet-bridge files behind signed URLs, the Xet
//! reconstruction API and xorb ranges. It answers as a CDN does, not as the Hub: one
//! `Range` gives `206`, past the end `416`, and a request that accepts gzip gets the
//! whole file with `200`; an expired or wrong signature gets `403`; none of the Hub's
//! headers are sent.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::content::{bytes_body, content_body, Pacing};
use crate::error::lock;
use crate::hf::{cut_if_due, HfState, Stored};
use crate::range::{parse_range, RangeSpec};
use crate::signing::Check;
use crate::xet::XetLayout;
use crate::Shared;

/// The CDN's router; every route needs the real-Hub profile.
pub(crate) fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/repos/{org}/{name}/{key}", get(signed_object))
        .route("/xet-bridge-us/{org}/{name}/{key}", get(signed_object))
        .route("/xorbs/default/{hash}", get(xorb))
        .route("/v1/reconstructions/{hash}", get(reconstruction))
        .fallback(|| async {
            s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            )
        })
        .layer(from_fn_with_state(state.clone(), cdn_layer))
        .with_state(state)
}

/// Counting, the round trip, faults and the connection's bandwidth, for every request.
async fn cdn_layer(State(st): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let Some(hf) = &st.hf else {
        return next.run(req).await;
    };
    let c = &st.stats;
    c.cdn_requests.fetch_add(1, Ordering::Relaxed);
    // The CAS API takes a Xet token this server issued; any other credential is a leak.
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let path = req.uri().path();
        let cas_api = path.starts_with("/v1/") || path.starts_with("/v2/");
        let xet_token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| {
                let (scope, check) = hf.signer.check_token(t, st.clock.unix_secs());
                check != Check::Invalid && scope.is_some_and(|s| s.starts_with(XET_SCOPE))
            });
        if !(cas_api && xet_token) {
            c.cdn_authorization.fetch_add(1, Ordering::Relaxed);
        }
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    req.extensions_mut().insert(st.pacing(peer));
    if !hf.profile.latency.is_zero() {
        tokio::time::sleep(hf.profile.latency).await;
    }
    let fault = hf.cdn_faults.before_request();
    let resp = match fault.error {
        Some(status) => {
            c.injected_errors.fetch_add(1, Ordering::Relaxed);
            s3_error(
                status,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )
        }
        None => cut_if_due(next.run(req).await, &hf.cdn_faults, c),
    };
    if let Some(delay) = fault.delay {
        c.injected_delays.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
    resp
}

/// An error in the shape S3 and CloudFront answer with.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Signature {
    expires: Option<u64>,
    signature: Option<String>,
}

/// `None` when the URL's signature holds, else the `403`.
fn refused(st: &Shared, hf: &HfState, path: &str, sig: &Signature) -> Option<Response> {
    let check = match (sig.expires, sig.signature.as_deref()) {
        (Some(expires), Some(signature)) => {
            hf.signer
                .check(path, expires, signature, st.clock.unix_secs())
        }
        _ => Check::Invalid,
    };
    match check {
        Check::Valid => None,
        Check::Expired => {
            st.stats.cdn_expired.fetch_add(1, Ordering::Relaxed);
            Some(s3_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired",
            ))
        }
        Check::Invalid => {
            st.stats.cdn_bad_signature.fetch_add(1, Ordering::Relaxed);
            Some(s3_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Access denied",
            ))
        }
    }
}

/// An LFS object (`/repos/…/{sha256}`) or a Xet-bridge file (`/xet-bridge-us/…/{hash}`).
async fn signed_object(
    State(st): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    UrlPath((_, _, key)): UrlPath<(String, String, String)>,
    Query(sig): Query<Signature>,
    Extension(pacing): Extension<Pacing>,
    headers: HeaderMap,
) -> Response {
    let bridge = uri.path().starts_with("/xet-bridge-us/");
    signed_file(&st, uri.path(), &sig, &method, &headers, &pacing, |hf| {
        let objects = if bridge {
            &hf.xet_files
        } else {
            &hf.lfs_objects
        };
        lock(objects).get(&key).cloned()
    })
    .await
}

/// A file behind a signed URL, whole or one range.
async fn signed_file(
    st: &Shared,
    path: &str,
    sig: &Signature,
    method: &Method,
    headers: &HeaderMap,
    pacing: &Pacing,
    find: impl FnOnce(&HfState) -> Option<Stored>,
) -> Response {
    let Some(hf) = &st.hf else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    if let Some(refusal) = refused(st, hf, path, sig) {
        return refusal;
    }
    let Some(stored) = find(hf) else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let file = &stored.file;
    let len = file.size;
    // A CDN cannot serve a range of a body it may compress, so it ignores the range.
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if !accepts_gzip => parse_range(value, len),
        _ => RangeSpec::Full,
    };
    let mut out = HeaderMap::new();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&s3_etag(&file.sha256, len)) {
        out.insert(header::ETAG, v);
    }
    out.insert("x-cache", HeaderValue::from_static("Hit from cloudfront"));
    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                out.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeSpec::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                out.insert(header::CONTENT_RANGE, v);
            }
            return (StatusCode::RANGE_NOT_SATISFIABLE, out).into_response();
        }
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if *method == Method::HEAD {
        return (status, out).into_response();
    }
    let held = match (&stored.open, status) {
        (Some(open), StatusCode::PARTIAL_CONTENT) => open.read_small(start, count),
        _ => None,
    };
    let body = match held {
        Some(bytes) => Ok(bytes_body(bytes, pacing)),
        None => content_body(&file.content, start, count, pacing).await,
    };
    match body {
        Ok(body) => {
            st.stats.cdn_body_bytes.fetch_add(count, Ordering::Relaxed);
            (status, out, body).into_response()
        }
        Err(e) => {
            tracing::error!(file = %file.content, error = %e, "CDN cannot read a file");
            s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "cannot read the object",
            )
        }
    }
}

/// An ETag as S3 gives a multipart upload: not the content's sha256, which a client must
/// take from the Hub's `X-Linked-Etag` instead.
fn s3_etag(sha256: &str, len: u64) -> String {
    let parts = len.div_ceil(16 << 20).max(1);
    format!("\"{}-{parts}\"", sha256.get(..32).unwrap_or(sha256))
}

/// `GET /v1/reconstructions/{hash}` with a Xet read token: the file (or the `Range` of
/// it) as terms and fetch info.
async fn reconstruction(
    State(st): State<Arc<Shared>>,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(hf) = &st.hf else {
        return StatusCode::NOT_FOUND.into_response();
    };
    st.stats.reconstructions.fetch_add(1, Ordering::Relaxed);
    let Some(stored) = lock(&hf.xet_files).get(&hash).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "file not found" })),
        )
            .into_response();
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let check = token.map(|t| hf.signer.check_token(t, st.clock.unix_secs()));
    match check {
        Some((Some(scope), Check::Valid)) if scope == xet_scope(&stored.repo) => {}
        Some((_, Check::Expired)) => {
            return (StatusCode::UNAUTHORIZED, "token expired").into_response();
        }
        _ => return (StatusCode::UNAUTHORIZED, "token missing or invalid").into_response(),
    }
    let layout = XetLayout::new(stored.file.size);
    let (start, end) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (0, layout.size.saturating_sub(1)),
        Some(value) => match parse_range(value, layout.size) {
            RangeSpec::Full => (0, layout.size.saturating_sub(1)),
            RangeSpec::Partial { start, end } => (start, end),
            RangeSpec::Unsatisfiable => return StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        },
    };
    if layout.size == 0 {
        return Json(serde_json::json!({
            "offset_into_first_range": 0, "terms": [], "fetch_info": {}
        }))
        .into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let base = match (&hf.profile.cdn_url, host) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(host)) => format!("http://{host}"),
        (None, None) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let now = st.clock.unix_secs();
    let mut xorbs = Vec::new();
    let body = layout.reconstruction(&hash, start, end, |xorb_hash, index| {
        xorbs.push((xorb_hash.to_string(), index));
        format!(
            "{base}{}",
            hf.signed(&format!("/xorbs/default/{xorb_hash}"), now)
        )
    });
    let mut known = lock(&hf.xorbs);
    for (xorb_hash, index) in xorbs {
        known.insert(xorb_hash, (stored.clone(), index));
    }
    drop(known);
    Json(body).into_response()
}

const XET_SCOPE: &str = "xet-read ";

/// What a Xet read token for `repo` grants.
pub(crate) fn xet_scope(repo: &str) -> String {
    format!("{XET_SCOPE}{repo}")
}

/// Bytes a xorb piece is read in.
const XORB_PIECE: u64 = 1 << 20;

async fn xorb(
    State(st): State<Arc<Shared>>,
    UrlPath(hash): UrlPath<String>,
    Query(sig): Query<Signature>,
    Extension(pacing): Extension<Pacing>,
    headers: HeaderMap,
) -> Response {
    let Some(hf) = &st.hf else {
        return StatusCode::NOT_FOUND.into_response();
    };
    st.stats.xorb_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(refusal) = refused(&st, hf, &format!("/xorbs/default/{hash}"), &sig) {
        return refusal;
    }
    let Some((stored, index)) = lock(&hf.xorbs).get(&hash).cloned() else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let layout = XetLayout::new(stored.file.size);
    let len = layout.xorb_len(index);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeSpec::Full, |v| parse_range(v, len));
    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeSpec::Unsatisfiable => return StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
    };
    st.stats.cdn_body_bytes.fetch_add(count, Ordering::Relaxed);
    let content = stored.file.content.clone();
    let pieces = futures_util::stream::unfold(start, move |at| {
        let content = content.clone();
        async move {
            if at >= start + count {
                return None;
            }
            let n = XORB_PIECE.min(start + count - at);
            let piece =
                tokio::task::spawn_blocking(move || layout.read_xorb(&content, index, at, n))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map(Bytes::from);
            Some((piece, at + n))
        }
    });
    let body = if pacing.0.is_empty() {
        Body::from_stream(pieces)
    } else {
        crate::throttle::throttled(pieces.boxed(), pacing.0.clone())
    };
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            out.insert(header::CONTENT_RANGE, v);
        }
    }
    (status, out, body).into_response()
}
