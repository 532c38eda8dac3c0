//! A stand-in Hub with faults, in the test's process: the loopback Hub's router behind a
//! layer that answers as a broken or rate-limiting Hub would, switched by the test while
//! the cluster's processes use it.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use neuromfa_hub_server::{HubServer, HubServerConfig};

/// How the Hub misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every paths-info call answered 422, as by a mirror whose route refuses a JSON body.
    UnprocessablePathsInfo,
    /// Rate limiting in windows: from the first request after it is set, `limited` of 429s
    /// (with `Retry-After` and `RateLimit` naming the rest of the window), then `open` of
    /// service, and so on.
    RateLimitWindows {
        limited: Duration,
        open: Duration,
    },
}

struct Faults {
    fault: Mutex<(Fault, Option<Instant>)>,
    /// Requests answered with a fault.
    refused: AtomicU64,
}

impl Faults {
    /// The fault's answer to `request`, if it has one.
    fn answer(&self, request: &Request) -> Option<Response> {
        let mut guard = self.fault.lock().unwrap();
        let (fault, windows_from) = &mut *guard;
        let answer = match *fault {
            Fault::None => None,
            Fault::UnprocessablePathsInfo => (request.method() == Method::POST
                && request.uri().path().contains("/paths-info/"))
            .then(|| {
                let body = r#"{"error":"Unprocessable Entity: expected form data"}"#;
                (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
            }),
            Fault::RateLimitWindows { limited, open } => {
                let from = *windows_from.get_or_insert_with(Instant::now);
                let cycle = (limited + open).as_nanos();
                let into = Duration::from_nanos((from.elapsed().as_nanos() % cycle) as u64);
                (into < limited).then(|| rate_limited(request.uri().path(), limited - into))
            }
        };
        if answer.is_some() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }
}

/// A 429 whose `Retry-After` and `RateLimit` name `left` (rounded up to a second) of the
/// bucket the Hub counts `path` in, as the Hub's do.
fn rate_limited(path: &str, left: Duration) -> Response {
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let bucket = match path.starts_with("/api/") {
        true => "api",
        false => "resolvers",
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
    let headers = response.headers_mut();
    headers.insert("retry-after", HeaderValue::from(seconds));
    if let Ok(value) = HeaderValue::from_str(&format!("\"{bucket}\";r=0;t={seconds}")) {
        headers.insert("ratelimit", value);
    }
    response
}

async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    match faults.answer(&request) {
        Some(answer) => answer,
        None => next.run(request).await,
    }
}

/// The Hub, serving on 127.0.0.1 from a runtime of its own until dropped.
pub struct FaultyHub {
    pub url: String,
    faults: Arc<Faults>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultyHub {
    /// Serves `root` (laid out as `org/name/revision/file`), with no fault yet.
    pub fn start(root: &Path) -> FaultyHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults {
            fault: Mutex::new((Fault::None, None)),
            refused: AtomicU64::new(0),
        });
        let config = HubServerConfig {
            root: root.to_path_buf(),
            ..HubServerConfig::default()
        };
        let router = HubServer::new(config)
            .unwrap()
            .router()
            .layer(from_fn_with_state(faults.clone(), inject));
        runtime.spawn(async move { axum::serve(listener, router).await });
        FaultyHub {
            url,
            faults,
            _runtime: runtime,
        }
    }

    /// From now on, `fault` (rate-limit windows start at the next request).
    pub fn set(&self, fault: Fault) {
        *self.faults.fault.lock().unwrap() = (fault, None);
    }

    /// Requests answered with a fault so far.
    pub fn refused(&self) -> u64 {
        self.faults.refused.load(Ordering::Relaxed)
    }
}
