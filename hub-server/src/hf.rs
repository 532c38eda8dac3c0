//! The real-Hub profile at work on the Hub's listener: latency, the rate-limit buckets,
//! injected faults, and `/resolve/` answered with a redirect to a signed CDN (or Xet
//! bridge) URL that carries the file's metadata.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::budget::{Bucket, Budget};
use crate::error::{internal, lock, HubError};
use crate::faults::{cut, Faults};
use crate::profile::{HfProfile, XetSelector};
use crate::repo::{FileEntry, PinnedFile};
use crate::signing::Signer;
use crate::throttle::ConnectionThrottles;
use crate::{xet, Counters, Shared, X_REPO_COMMIT};

pub(crate) const X_LINKED_SIZE: HeaderName = HeaderName::from_static("x-linked-size");
pub(crate) const X_LINKED_ETAG: HeaderName = HeaderName::from_static("x-linked-etag");
pub(crate) const X_XET_HASH: HeaderName = HeaderName::from_static("x-xet-hash");

/// Paths of the stand-in's own routes (statistics, faults, clock): not the Hub's, so not
/// metered, delayed or failed.
pub(crate) const CONTROL_PREFIX: &str = "/_stand-in/";

/// A file a signed URL may name, with the repository it was resolved in.
#[derive(Clone)]
pub(crate) struct Stored {
    pub(crate) repo: String,
    pub(crate) file: FileEntry,
    /// The file held open, so that the CDN answers a small range with one `pread` on the
    /// async thread: a trip to the blocking pool and an `open` per range cost the stand-in
    /// thread switches a real CDN's requests do not wait for, and on a busy machine they,
    /// not the link, bound a ranged fetch.
    pub(crate) open: Option<Arc<PinnedFile>>,
}

pub(crate) struct HfState {
    pub(crate) profile: HfProfile,
    pub(crate) budget: Budget,
    pub(crate) signer: Signer,
    pub(crate) xet: XetSelector,
    pub(crate) hub_faults: Faults,
    pub(crate) cdn_faults: Faults,
    pub(crate) connections: Option<ConnectionThrottles>,
    /// The CDN listener's port, once bound.
    pub(crate) cdn_port: OnceLock<u16>,
    /// LFS objects handed out, by sha256.
    pub(crate) lfs_objects: Mutex<HashMap<String, Stored>>,
    /// Xet files handed out, by Xet hash.
    pub(crate) xet_files: Mutex<HashMap<String, Stored>>,
    /// Xorbs named by reconstructions: the file and the xorb's index in it.
    pub(crate) xorbs: Mutex<HashMap<String, (Stored, u64)>>,
}

impl HfState {
    pub(crate) fn new(profile: HfProfile) -> anyhow::Result<Self> {
        profile
            .hub_faults
            .validate()
            .and(profile.cdn_faults.validate())
            .map_err(anyhow::Error::msg)?;
        Ok(HfState {
            budget: Budget::new(profile.resolvers, profile.api),
            signer: Signer::new(),
            xet: XetSelector::new(&profile.xet)?,
            hub_faults: Faults::new(profile.hub_faults.clone(), 1),
            cdn_faults: Faults::new(profile.cdn_faults.clone(), 2),
            connections: profile
                .connection_bytes_per_sec
                .map(ConnectionThrottles::new),
            cdn_port: OnceLock::new(),
            lfs_objects: Mutex::new(HashMap::new()),
            xet_files: Mutex::new(HashMap::new()),
            xorbs: Mutex::new(HashMap::new()),
            profile,
        })
    }

    /// The CDN's base URL for a client that reached the Hub at `hub_host` (the `Host`
    /// header): the configured one, else that host with the CDN listener's port.
    pub(crate) fn cdn_base(&self, hub_host: Option<&str>) -> Result<String, HubError> {
        if let Some(url) = &self.profile.cdn_url {
            return Ok(url.trim_end_matches('/').to_string());
        }
        let port = self
            .cdn_port
            .get()
            .ok_or_else(|| HubError::Internal("the CDN listener is not running".into()))?;
        let host = hub_host.map_or("127.0.0.1", host_without_port);
        Ok(format!("http://{host}:{port}"))
    }

    /// `path?Expires=…&Signature=…` valid for the profile's URL lifetime from `now`.
    pub(crate) fn signed(&self, path: &str, now: u64) -> String {
        let expires = now + self.profile.url_lifetime.as_secs().max(1);
        let signature = self.signer.sign(path, expires);
        format!("{path}?Expires={expires}&Signature={signature}&Key-Pair-Id=K2STANDIN")
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The profile on the Hub's listener: the round trip, the bucket (429 when spent, the
/// `RateLimit` headers always), injected errors, delays and cut bodies.
pub(crate) async fn hub_layer(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(hf) = &st.hf else {
        return next.run(req).await;
    };
    if req.uri().path().starts_with(CONTROL_PREFIX) {
        return next.run(req).await;
    }
    let c = &st.stats;
    if !hf.profile.latency.is_zero() {
        tokio::time::sleep(hf.profile.latency).await;
    }
    let bucket = Bucket::of_path(req.uri().path());
    match bucket {
        Bucket::Resolvers => c.resolver_requests.fetch_add(1, Ordering::Relaxed),
        Bucket::Api => c.api_requests.fetch_add(1, Ordering::Relaxed),
    };
    let standing = hf.budget.spend(bucket, st.clock.elapsed());
    let fault = hf.hub_faults.before_request();
    let mut resp = if standing.limited {
        c.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": "You have been rate-limited; retry after the window resets." })),
        )
            .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(standing.reset_secs()),
        );
        resp
    } else if let Some(status) = fault.error {
        c.injected_errors.fetch_add(1, Ordering::Relaxed);
        (
            status,
            Json(json!({ "error": "Internal Error (injected fault)" })),
        )
            .into_response()
    } else {
        let resp = next.run(req).await;
        cut_if_due(resp, &hf.hub_faults, c)
    };
    if let Some(delay) = fault.delay {
        c.injected_delays.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
    standing.write_headers(resp.headers_mut());
    resp
}

/// Cuts a body answer short when the listener's faults say so.
pub(crate) fn cut_if_due(resp: Response, faults: &Faults, c: &Counters) -> Response {
    let carries_body = matches!(resp.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT);
    let len = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(keep) = len
        .filter(|_| carries_body)
        .and_then(|len| faults.cut_body(len))
    else {
        return resp;
    };
    c.injected_resets.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, cut(body, keep))
}

/// The answer to a `/resolve/` of an LFS file: `302` to the CDN (or the Xet bridge), with
/// the file's metadata on the redirect itself.
pub(crate) fn redirect(
    st: &Shared,
    hf: &HfState,
    repo: &str,
    commit: &str,
    file: &FileEntry,
    hub_host: Option<&str>,
) -> Result<Response, HubError> {
    let cdn = hf.cdn_base(hub_host)?;
    let now = st.clock.unix_secs();
    let stored = Stored {
        repo: repo.to_string(),
        file: file.clone(),
        open: PinnedFile::open(file).map(Arc::new),
    };
    let mut headers = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| internal("bad header value", e));
    let quoted_sha = format!("\"{}\"", file.sha256);
    let location = if hf.xet.includes(&file.path, &file.sha256) {
        let xet_hash = xet::file_hash(&file.sha256);
        lock(&hf.xet_files).insert(xet_hash.clone(), stored);
        let hub = match hub_host {
            Some(host) => format!("http://{host}"),
            None => cdn.clone(),
        };
        let link = format!(
            "<{hub}/api/models/{repo}/xet-read-token/{commit}>; rel=\"xet-auth\", <{cdn}/v1/reconstructions/{xet_hash}>; rel=\"xet-reconstruction-info\""
        );
        headers.insert(X_XET_HASH, value(&xet_hash)?);
        headers.insert(header::LINK, value(&link)?);
        format!(
            "{cdn}{}",
            hf.signed(&format!("/xet-bridge-us/{repo}/{xet_hash}"), now)
        )
    } else {
        lock(&hf.lfs_objects).insert(file.sha256.clone(), stored);
        format!(
            "{cdn}{}",
            hf.signed(&format!("/repos/{repo}/{}", file.sha256), now)
        )
    };
    headers.insert(header::LOCATION, value(&location)?);
    headers.insert(X_REPO_COMMIT, value(commit)?);
    headers.insert(X_LINKED_SIZE, HeaderValue::from(file.size));
    headers.insert(X_LINKED_ETAG, value(&quoted_sha)?);
    headers.insert(header::ETAG, value(&quoted_sha)?);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    st.stats.redirects.fetch_add(1, Ordering::Relaxed);
    let body = Body::from(format!("Found. Redirecting to {location}"));
    Ok((StatusCode::FOUND, headers, body).into_response())
}

/// The Hub's answer to a `/resolve/` of a file kept in git: a relative `307` to the
/// commit-pinned resolve-cache URL, which answers with the file.
pub(crate) fn to_resolve_cache(repo: &str, commit: &str, path: &str, etag: &str) -> Response {
    let location = format!("/api/resolve-cache/models/{repo}/{commit}/{path}?etag=%22{etag}%22");
    let body = format!("Temporary Redirect. Redirecting to {location}");
    match HeaderValue::from_str(&location) {
        Ok(v) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, v)],
            body,
        )
            .into_response(),
        Err(e) => HubError::Internal(format!("bad resolve-cache location: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_without_port("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_without_port("hub.local"), "hub.local");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }
}
