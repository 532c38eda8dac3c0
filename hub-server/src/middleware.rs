//! What every request goes through: counting and logging, the bandwidth a body may use,
//! and the bearer token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::HubError;
use crate::Shared;

pub(crate) async fn log_request(
    State(st): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let started = Instant::now();
    st.stats.requests.fetch_add(1, Ordering::Relaxed);
    if method == Method::HEAD {
        st.stats.head_requests.fetch_add(1, Ordering::Relaxed);
    } else if method == Method::GET {
        st.stats.get_requests.fetch_add(1, Ordering::Relaxed);
    }
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %uri,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "hub request"
    );
    resp
}

/// Gives the request the bandwidth limits of its connection ([`crate::content::Pacing`]).
pub(crate) async fn pace(State(st): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    req.extensions_mut().insert(st.pacing(peer));
    next.run(req).await
}

pub(crate) async fn require_token(
    State(st): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            return HubError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "Not Found" }))).into_response()
}
