//! The one way this crate talks to the Hub, for whole files and byte ranges alike.
//!
//! - **Resolve** ([`Transport::resolve`]): one `HEAD` of `/{repo}/resolve/{rev}/{file}`
//!   that does not follow the redirect. The real Hub answers a weight file with `302`, and
//!   the metadata is on it: `X-Repo-Commit`, `X-Linked-Size`, `X-Linked-Etag` (the
//!   sha256), `X-Xet-Hash` and `Link` for files stored in Xet, and `Location`, a signed URL
//!   on the CDN (or the Xet bridge) valid about an hour. A plain mirror answers `200` with
//!   `ETag` and `Content-Length` and serves the bytes itself: its resolve URL is then the
//!   file's location.
//! - **Read** ([`Transport::read_range`], [`Transport::download`]): every GET of a file's
//!   bytes goes to its location ([`location`]), with `Accept-Encoding: identity` (the CDN
//!   answers `gzip` with the whole file) and the token only when the location is on the
//!   endpoint's own origin. A signature near its end, or a `403` from the CDN, resolves the
//!   file again.
//! - **Pace and retry** (every request): requests that count against a Hub bucket
//!   (`/resolve/`, `/api/`) are paced through the [`Budget`] first; every answer's
//!   `RateLimit` is reported to it; a `429` waits out the window the answer names and costs
//!   no attempt; `5xx`, `408`, resets and timeouts are retried with backoff up to
//!   [`MAX_ATTEMPTS`] times. Nothing goes through `hf-hub`'s own retry loop, which gives
//!   up after five quick attempts inside one window.

mod download;
pub(crate) mod location;
mod read;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT_ENCODING, CONTENT_LENGTH, ETAG, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use crate::budget::{rate_limit, rate_limit_policy, retry_after, Bucket, Budget};
use crate::client::{http_client, paths_info_url, resolve_url, same_origin};
use crate::error::{error_chain, FetchError, Names};
use crate::fetch::{HubRequests, MAX_ATTEMPTS};
pub(crate) use location::{Location, RemoteFile};

/// First retry delay; doubled on each further attempt.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(250);
/// How long one request may wait out `429`s in all before it fails (as transient): the
/// Hub's windows are five minutes, so this is several of them.
const MAX_THROTTLED: Duration = Duration::from_secs(3600);
/// The wait after a `429` that names no reset (no `RateLimit`, no `Retry-After`).
const UNNAMED_RESET: Duration = Duration::from_secs(10);
/// The shortest wait after a `429`: the Hub names whole seconds, and `t=0` (a reset within
/// the second) must not turn into a loop of refused requests.
const MIN_THROTTLED_WAIT: Duration = Duration::from_millis(250);
/// Relative redirects (a renamed repository) followed before giving up.
const MAX_RELATIVE_REDIRECTS: usize = 5;

pub(crate) const X_REPO_COMMIT: &str = "x-repo-commit";
const X_LINKED_SIZE: &str = "x-linked-size";
const X_LINKED_ETAG: &str = "x-linked-etag";
const X_XET_HASH: &str = "x-xet-hash";
const X_ERROR_CODE: &str = "x-error-code";

/// What the requests of one fetch cost, counted from any thread.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    requests: AtomicU32,
    resolvers: AtomicU32,
    api: AtomicU32,
    bytes: AtomicU64,
}

/// What requests cost, as seen from here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(crate) requests: u32,
    /// Of those, what the Hub counts in each bucket.
    pub(crate) hub: HubRequests,
    /// Bytes received in bodies.
    pub(crate) bytes: u64,
}

impl std::ops::Sub for Cost {
    type Output = Cost;
    fn sub(self, earlier: Cost) -> Cost {
        Cost {
            requests: self.requests - earlier.requests,
            hub: HubRequests {
                resolvers: self.hub.resolvers - earlier.hub.resolvers,
                api: self.hub.api - earlier.hub.api,
            },
            bytes: self.bytes - earlier.bytes,
        }
    }
}

impl Meter {
    pub(crate) fn cost(&self) -> Cost {
        Cost {
            requests: self.requests.load(Ordering::Relaxed),
            hub: HubRequests {
                resolvers: self.resolvers.load(Ordering::Relaxed),
                api: self.api.load(Ordering::Relaxed),
            },
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// A request sent, counted in the Hub's `bucket` when it has one.
    fn request(&self, bucket: Option<Bucket>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match bucket {
            Some(Bucket::Resolvers) => self.resolvers.fetch_add(1, Ordering::Relaxed),
            Some(Bucket::Api) => self.api.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    fn bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What one ranged read showed of the link to where the bytes are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing {
    /// From sending the request to the answer's first body byte.
    pub(crate) first_byte: Duration,
    /// From sending the request to its last byte.
    pub(crate) total: Duration,
    pub(crate) bytes: u64,
}

/// A fetch as its requests see it: the names its errors carry, what it spends, and the
/// timings of its ranged reads.
#[derive(Clone)]
pub(crate) struct Scope {
    pub(crate) names: Names,
    pub(crate) meter: Arc<Meter>,
    timings: Arc<Mutex<Vec<Timing>>>,
}

impl Scope {
    pub(crate) fn new(names: Names) -> Self {
        Scope {
            names,
            meter: Arc::default(),
            timings: Arc::default(),
        }
    }

    fn timed(&self, timing: Timing) {
        if let Ok(mut timings) = self.timings.lock() {
            timings.push(timing);
        }
    }

    /// Every ranged read's timing so far.
    pub(crate) fn timings(&self) -> Vec<Timing> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Why one attempt failed, and what to do about it.
pub(crate) enum Failure {
    /// Worth another attempt after a backoff: transport trouble, `5xx`, `408`, a short body.
    Retry(FetchError),
    /// `429`: wait until the window resets (`bucket`'s, when the request was metered),
    /// without spending an attempt.
    Throttled {
        bucket: Option<Bucket>,
        resets_in: Duration,
        error: FetchError,
    },
    /// A signed location was refused: resolve the file again, then retry.
    Expired(FetchError),
    /// Retrying will not help.
    Final(FetchError),
}

/// The attempts of one request: how many failed, and how long it waited out `429`s.
#[derive(Default)]
pub(crate) struct Retry {
    attempts: u32,
    renewals: u32,
    throttled: Duration,
}

impl Retry {
    /// Waits as `failure` asks, or gives its error back when no attempt is left.
    pub(crate) async fn after(
        &mut self,
        transport: &Transport,
        failure: Failure,
    ) -> Result<(), FetchError> {
        match failure {
            Failure::Final(e) => Err(e),
            Failure::Retry(e) => {
                self.attempts += 1;
                if self.attempts >= MAX_ATTEMPTS {
                    return Err(e);
                }
                tracing::debug!(attempt = self.attempts, error = %e, "request failed; retrying");
                tokio::time::sleep(RETRY_BASE_DELAY * 2u32.pow(self.attempts - 1)).await;
                Ok(())
            }
            Failure::Expired(e) => {
                self.renewals += 1;
                if self.renewals >= MAX_ATTEMPTS {
                    return Err(e);
                }
                Ok(())
            }
            Failure::Throttled {
                bucket,
                resets_in,
                error,
            } => {
                self.throttled += resets_in;
                if self.throttled > MAX_THROTTLED {
                    return Err(error);
                }
                tracing::info!(
                    bucket = bucket.map(Bucket::as_str),
                    wait_s = resets_in.as_secs_f64(),
                    "the Hub's rate limit is spent; waiting for its window to reset"
                );
                // Everyone sharing the budget waits for the reset too.
                if let Some(bucket) = bucket {
                    transport
                        .budget
                        .exhausted(bucket, resets_in)
                        .await
                        .map_err(|why| error_with_detail(error, why))?;
                }
                // The refused request waits itself, whatever bucket the answer named: it
                // may name another than the one the request is paced in (or the request
                // is not paced at all), and the next grant would then come at once and
                // spin through the whole quota in refused requests.
                tokio::time::sleep(resets_in).await;
                Ok(())
            }
        }
    }
}

fn error_with_detail(error: FetchError, why: String) -> FetchError {
    match error {
        FetchError::Transient {
            at,
            status,
            detail,
            retry_after,
        } => FetchError::Transient {
            at,
            status,
            detail: format!("{detail}; {why}"),
            retry_after,
        },
        other => other,
    }
}

/// What a resolve answer said of a file.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    /// `X-Repo-Commit`; a mirror may not say.
    pub(crate) commit: Option<String>,
    /// `X-Linked-Size`, else `Content-Length`.
    pub(crate) size: u64,
    /// `X-Linked-Etag`, else `ETag`, unquoted: the sha256 of an LFS file.
    pub(crate) etag: String,
    /// `X-Xet-Hash`: the file is stored in Xet, and its location is the Xet bridge.
    pub(crate) xet_hash: Option<String>,
    /// Where the bytes are, until when.
    pub(crate) location: Location,
}

/// A small file's bytes and what its answer said.
pub(crate) struct SmallFile {
    pub(crate) bytes: Vec<u8>,
    pub(crate) commit: Option<String>,
    /// The blob name: `X-Linked-Etag`, else `ETag`.
    pub(crate) etag: Option<String>,
}

/// The Hub's client for one endpoint: see the module docs.
pub(crate) struct Transport {
    http: reqwest::Client,
    base_url: Url,
    token: Option<String>,
    budget: Arc<dyn Budget>,
    stall: Duration,
    /// Set once an answer of the endpoint carried `RateLimit`: it meters, so reads of
    /// bytes it serves itself are paced too.
    meters: Arc<AtomicBool>,
    /// Set once the endpoint refused paths-info as form fields.
    paths_info_json: Arc<AtomicBool>,
}

impl Transport {
    pub(crate) fn new(
        base_url: Url,
        token: Option<String>,
        budget: Arc<dyn Budget>,
        stall: Duration,
    ) -> Result<Self, String> {
        Ok(Transport {
            http: http_client(&base_url, stall)?,
            base_url,
            token,
            budget,
            stall,
            meters: Arc::default(),
            paths_info_json: Arc::default(),
        })
    }

    /// The same transport with connections of its own, for a runtime of its own
    /// (connections belong to the runtime that opened them).
    pub(crate) fn with_own_connections(&self) -> Result<Self, String> {
        Ok(Transport {
            http: http_client(&self.base_url, self.stall)?,
            base_url: self.base_url.clone(),
            token: self.token.clone(),
            budget: self.budget.clone(),
            stall: self.stall,
            meters: self.meters.clone(),
            paths_info_json: self.paths_info_json.clone(),
        })
    }

    pub(crate) fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// A request to `url`: the token only on the endpoint's own origin, never compressed.
    fn request(&self, method: Method, url: &Url) -> RequestBuilder {
        let request = self
            .http
            .request(method, url.clone())
            .header(ACCEPT_ENCODING, "identity");
        match &self.token {
            Some(token) if same_origin(url, &self.base_url) => request.bearer_auth(token),
            _ => request,
        }
    }

    /// The bucket the Hub counts a request to `url` in: requests to the endpoint's
    /// `/resolve/` and `/api/` paths.
    fn counted_in(&self, url: &Url) -> Option<Bucket> {
        same_origin(url, &self.base_url)
            .then(|| Bucket::of_path(url.path()))
            .flatten()
    }

    /// Sends one request to `url` (a file's `location`, or a request of the Hub's own),
    /// paced when it is metered, and sorts out what the answer says of the Hub's windows. A
    /// `429` comes back as [`Failure::Throttled`]. A location on the endpoint's origin is
    /// paced only once the endpoint has shown it meters (a plain mirror serves ranges
    /// unmetered).
    async fn send(
        &self,
        scope: &Scope,
        file: &str,
        (url, location): (&Url, bool),
        request: RequestBuilder,
    ) -> Result<Response, Failure> {
        let counted = self.counted_in(url);
        let bucket = counted.filter(|_| !location || self.meters.load(Ordering::Relaxed));
        if let Some(bucket) = bucket {
            self.budget.acquire(bucket, 1).await.map_err(|why| {
                Failure::Retry(
                    scope
                        .names
                        .transient(file, format!("no budget for a request: {why}")),
                )
            })?;
        }
        scope.meter.request(counted);
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Retry(self.transport_error(scope, file, &e)))?;
        let headers = response.headers();
        let seen = rate_limit(headers);
        if let Some((bucket, window)) = seen {
            self.meters.store(true, Ordering::Relaxed);
            self.budget.observe(bucket, window);
        }
        if let Some((bucket, quota)) = rate_limit_policy(headers) {
            tracing::trace!(%bucket, quota = quota.requests, window_s = quota.window.as_secs(), "the Hub's policy");
        }
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let resets_in = seen
                .map(|(_, w)| w.resets_in)
                .or_else(|| retry_after(headers))
                .unwrap_or(UNNAMED_RESET)
                .max(MIN_THROTTLED_WAIT);
            let error = scope.names.for_status(
                file,
                429,
                None,
                format!("HTTP 429 from {}", host_and_path(response.url())),
                Some(resets_in),
            );
            return Err(Failure::Throttled {
                bucket: seen.map(|(b, _)| b).or(bucket),
                resets_in,
                error,
            });
        }
        Ok(response)
    }

    /// A request that got no answer: refused, reset, or silent past the stall timeout.
    fn transport_error(&self, scope: &Scope, file: &str, e: &reqwest::Error) -> FetchError {
        let detail = if e.is_timeout() {
            format!(
                "no progress for {}s, the server stalled ({})",
                self.stall.as_secs_f64(),
                error_chain(e)
            )
        } else {
            error_chain(e)
        };
        scope.names.transient(file, detail)
    }

    /// What an answer of `status` other than the ones a caller expects means.
    fn unexpected(scope: &Scope, file: &str, response: &Response, what: &str) -> Failure {
        let status = response.status().as_u16();
        let code = header(response.headers(), X_ERROR_CODE);
        let detail = format!(
            "HTTP {} for {what} {}",
            response.status(),
            host_and_path(response.url())
        );
        let error = scope.names.for_status(
            file,
            status,
            code.as_deref(),
            detail,
            retry_after(response.headers()),
        );
        match status {
            408 | 500..=599 => Failure::Retry(error),
            _ => Failure::Final(error),
        }
    }

    /// What the Hub says of `file` at `revision`, from one `HEAD` that does not follow the
    /// redirect (relative redirects, a renamed repository, are followed).
    pub(crate) async fn resolve(
        &self,
        scope: &Scope,
        revision: &str,
        file: &str,
    ) -> Result<Resolution, FetchError> {
        let mut url = resolve_url(&self.base_url, scope.names.repo(), revision, file);
        let mut retry = Retry::default();
        let mut hops = 0;
        loop {
            match self.resolve_once(scope, &url, file).await {
                Ok(Resolved::Here(resolution)) => return Ok(resolution),
                Ok(Resolved::Moved(to)) if hops < MAX_RELATIVE_REDIRECTS => {
                    hops += 1;
                    url = to;
                }
                Ok(Resolved::Moved(to)) => {
                    return Err(FetchError::Hub {
                        at: scope.names.at(file),
                        status: None,
                        detail: format!("too many redirects resolving it (last to {to})"),
                    })
                }
                Err(failure) => retry.after(self, failure).await?,
            }
        }
    }

    async fn resolve_once(
        &self,
        scope: &Scope,
        url: &Url,
        file: &str,
    ) -> Result<Resolved, Failure> {
        let request = self.request(Method::HEAD, url);
        let response = self.send(scope, file, (url, false), request).await?;
        let headers = response.headers();
        let status = response.status();
        let location = if status.is_redirection() {
            let to = header(headers, LOCATION.as_str()).and_then(|l| url.join(&l).ok());
            let Some(to) = to else {
                return Err(Failure::Final(FetchError::Hub {
                    at: scope.names.at(file),
                    status: Some(status.as_u16()),
                    detail: format!("HTTP {status} without a usable Location resolving it"),
                }));
            };
            // A redirect on the endpoint without the file's metadata is the repository
            // answering under another name: resolve there.
            if same_origin(&to, &self.base_url) && header(headers, X_LINKED_SIZE).is_none() {
                return Ok(Resolved::Moved(to));
            }
            to
        } else if status.is_success() {
            url.clone()
        } else {
            return Err(Self::unexpected(scope, file, &response, "resolving"));
        };
        let invalid = |what: &str| {
            Failure::Final(FetchError::Hub {
                at: scope.names.at(file),
                status: Some(status.as_u16()),
                detail: format!("the resolve answer (HTTP {status}) has no {what}"),
            })
        };
        let size = header(headers, X_LINKED_SIZE)
            .or_else(|| header(headers, CONTENT_LENGTH.as_str()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| invalid("size (X-Linked-Size or Content-Length)"))?;
        let etag = header(headers, X_LINKED_ETAG)
            .or_else(|| header(headers, ETAG.as_str()))
            .and_then(|e| crate::headers::etag(&e))
            .ok_or_else(|| invalid("ETag"))?;
        let xet_hash = header(headers, X_XET_HASH);
        if let Some(links) = header(headers, "link") {
            tracing::trace!(file, %links, "resolve links");
        }
        let location = Location::new(location, &self.base_url);
        Ok(Resolved::Here(Resolution {
            commit: header(headers, X_REPO_COMMIT),
            size,
            etag,
            xet_hash,
            location,
        }))
    }

    /// A small file at `revision` (`config.json`, a shard index) in memory, from one GET
    /// that does not follow the redirect: the file itself from a mirror; on the Hub, a
    /// relative redirect to where it keeps files stored in git (`/api/resolve-cache/…`),
    /// followed with one more GET; a file the Hub redirects to its CDN (stored in LFS) is
    /// resolved and read from its location.
    pub(crate) async fn get_small(
        &self,
        scope: &Scope,
        revision: &str,
        file: &str,
        max_len: u64,
    ) -> Result<SmallFile, FetchError> {
        let mut url = resolve_url(&self.base_url, scope.names.repo(), revision, file);
        let mut retry = Retry::default();
        let mut hops = 0;
        loop {
            match self.get_small_once(scope, &url, file, max_len).await {
                Ok(Small::Here(small)) => return Ok(small),
                Ok(Small::Moved(to)) if hops < MAX_RELATIVE_REDIRECTS => {
                    hops += 1;
                    url = to;
                }
                Ok(Small::Moved(to)) => {
                    return Err(FetchError::Hub {
                        at: scope.names.at(file),
                        status: None,
                        detail: format!("too many redirects reading it (last to {to})"),
                    })
                }
                Ok(Small::Elsewhere) => break,
                Err(failure) => retry.after(self, failure).await?,
            }
        }
        let resolution = self.resolve(scope, revision, file).await?;
        if resolution.size > max_len {
            return Err(too_large(scope, file, resolution.size, max_len));
        }
        let remote = RemoteFile::new(file, revision, resolution.clone());
        let bytes = self.read_to_vec(scope, &remote, 0..resolution.size).await?;
        Ok(SmallFile {
            bytes,
            commit: resolution.commit,
            etag: Some(resolution.etag),
        })
    }

    async fn get_small_once(
        &self,
        scope: &Scope,
        url: &Url,
        file: &str,
        max_len: u64,
    ) -> Result<Small, Failure> {
        let request = self.request(Method::GET, url);
        let response = self.send(scope, file, (url, false), request).await?;
        let status = response.status();
        let headers = response.headers();
        if status.is_redirection() {
            let to = header(headers, LOCATION.as_str()).and_then(|l| url.join(&l).ok());
            return Ok(match to {
                Some(to)
                    if same_origin(&to, &self.base_url)
                        && header(headers, X_LINKED_SIZE).is_none() =>
                {
                    Small::Moved(to)
                }
                _ => Small::Elsewhere,
            });
        }
        if !status.is_success() {
            return Err(Self::unexpected(scope, file, &response, "reading"));
        }
        if let Some(len) = response.content_length().filter(|&len| len > max_len) {
            return Err(Failure::Final(too_large(scope, file, len, max_len)));
        }
        let commit = header(headers, X_REPO_COMMIT);
        let etag = header(headers, X_LINKED_ETAG)
            .or_else(|| header(headers, ETAG.as_str()))
            .and_then(|e| crate::headers::etag(&e));
        let announced = response.content_length();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Retry(self.transport_error(scope, file, &e)))?;
        scope.meter.bytes(bytes.len());
        if announced.is_some_and(|len| len != bytes.len() as u64) {
            return Err(Failure::Retry(scope.names.transient(
                file,
                format!(
                    "the answer announced {announced:?} bytes and held {}",
                    bytes.len()
                ),
            )));
        }
        Ok(Small::Here(SmallFile {
            bytes: bytes.to_vec(),
            commit,
            etag,
        }))
    }

    /// Which of `paths` exist at `revision`: one paths-info call, with the paths as form
    /// fields (`paths=a&paths=b`), as `huggingface_hub` sends them and mirrors built to its
    /// behaviour expect. A server that refuses the form (`415`, `422`: an older mirror of
    /// this project) is asked again with the JSON body it takes, and from then on asked so.
    pub(crate) async fn paths_info(
        &self,
        scope: &Scope,
        revision: &str,
        paths: &[&str],
    ) -> Result<Vec<String>, FetchError> {
        let url = paths_info_url(&self.base_url, scope.names.repo(), revision);
        let form: Vec<(&str, &str)> = paths.iter().map(|p| ("paths", *p)).collect();
        let json = serde_json::json!({ "paths": paths });
        let file = paths.first().copied().unwrap_or_default();
        let mut retry = Retry::default();
        loop {
            let as_json = self.paths_info_json.load(Ordering::Relaxed);
            let request = match as_json {
                true => self.request(Method::POST, &url).json(&json),
                false => self.request(Method::POST, &url).form(&form),
            };
            let attempt = async {
                let response = self.send(scope, file, (&url, false), request).await?;
                let status = response.status();
                if !as_json && matches!(status.as_u16(), 415 | 422) {
                    tracing::info!(%status, "the Hub refused paths-info as form fields; asking with JSON");
                    self.paths_info_json.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                if !status.is_success() {
                    return Err(Self::unexpected(scope, file, &response, "listing"));
                }
                // Metadata, not file content: not counted in the fetch's bytes.
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| Failure::Retry(self.transport_error(scope, file, &e)))?;
                crate::listing::listed_files(&bytes).map(Some).map_err(|e| {
                    Failure::Final(FetchError::Hub {
                        at: scope.names.at(file),
                        status: None,
                        detail: format!("the paths-info answer is not a listing: {e}"),
                    })
                })
            };
            match attempt.await {
                Ok(Some(listed)) => return Ok(listed),
                Ok(None) => {}
                Err(failure) => retry.after(self, failure).await?,
            }
        }
    }
}

/// What one GET of a small file found.
enum Small {
    Here(SmallFile),
    /// A redirect on the endpoint: the same request, elsewhere on it.
    Moved(Url),
    /// A redirect to the file's location: resolve it.
    Elsewhere,
}

/// What one resolve request found.
enum Resolved {
    Here(Resolution),
    /// A relative redirect: the same request, elsewhere on the endpoint.
    Moved(Url),
}

fn too_large(scope: &Scope, file: &str, len: u64, max: u64) -> FetchError {
    scope.names.invalid(
        file,
        format!("the file is {len} bytes; refusing more than {max} for it"),
    )
}

/// A header's value as text.
pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An ETag without its weak marker and quotes.
/// `host/path` of a URL, never its query: signed URLs carry their signature there.
pub(crate) fn host_and_path(url: &Url) -> String {
    format!(
        "{}{}",
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}
