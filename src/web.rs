//! The HTTP side of the coordinator and the worker: a listener serving read-only pages
//! and `/metrics` beside gRPC, every request guarded by the sweep token. A request is let
//! through with `Authorization: Bearer TOKEN` (Prometheus' `authorization` setting) or the
//! cookie a browser gets by opening any page once with `?token=TOKEN`; anything else gets
//! only the login hint, which says how to open it and nothing about the sweep.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use neuromfa_proto::auth::constant_time_eq;
use tokio::sync::oneshot;

/// Where the token is found: a query parameter turned into a cookie, the cookie, or a header.
#[derive(Clone)]
struct Guard {
    token: Arc<str>,
    /// Per port, so dashboards of two sweeps on one host keep their own.
    cookie: Arc<str>,
    /// What a refused request is told: how to open this server.
    hint: Arc<str>,
}

/// The login hint for a server at `addr`: how to open it with the token, where the token is.
fn login_hint(addr: SocketAddr, what: &str) -> String {
    format!(
        "This is the {what} of a neuromfa sweep, and it needs the sweep's token.\n\n\
         In a browser, open it once as http://{addr}/?token=TOKEN (a cookie keeps it).\n\
         For Prometheus or curl, send the header `Authorization: Bearer TOKEN`.\n\n\
         The token is the spec's `token`, or NEUROMFA_TOKEN where the coordinator was started, \
         or else the file STATE_DIR/token the coordinator wrote.\n"
    )
}

fn token_in_query(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Percent-decodes a query value (tokens are hex, but a pasted one may arrive encoded).
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn refused(guard: &Guard, headers: &HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = if wants_html {
        let body = format!(
            "<!doctype html><meta charset=utf-8><title>neuromfa: token needed</title>\
             <body style=\"font-family:sans-serif;max-width:44em;margin:3em auto;line-height:1.5\">\
             <h1>Token needed</h1><pre style=\"white-space:pre-wrap\">{}</pre>",
            html_escape(&guard.hint)
        );
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            guard.hint.to_string(),
        )
            .into_response()
    };
    no_store(&mut response);
    response
}

pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Lets a request with the token through; a correct `?token=` sets the cookie and sends
/// the browser to the same page without it (so the token leaves the address bar).
async fn require_token(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let expected = guard.token.as_bytes();
    let headers = request.headers();
    if let Some(given) = request.uri().query().and_then(token_in_query) {
        if !constant_time_eq(decode(given).as_bytes(), expected) {
            return refused(&guard, headers);
        }
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            guard.cookie, guard.token
        );
        let location = request.uri().path().to_string();
        return match HeaderValue::from_str(&cookie) {
            Ok(cookie) => {
                let mut response =
                    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
                response.headers_mut().insert(header::SET_COOKIE, cookie);
                no_store(&mut response);
                response
            }
            Err(_) => refused(&guard, headers),
        };
    }
    let given = bearer(headers).or_else(|| cookie_value(headers, &guard.cookie));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected) => {
            let mut response = next.run(request).await;
            no_store(&mut response);
            response
        }
        _ => refused(&guard, headers),
    }
}

/// A running HTTP listener.
pub struct WebServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl WebServer {
    /// Serves `router` on `listener`, every route behind the token; `what` names the
    /// server in the login hint ("dashboard", "worker metrics").
    pub fn start(
        listener: tokio::net::TcpListener,
        router: Router,
        token: &str,
        what: &str,
    ) -> anyhow::Result<Self> {
        let addr = listener
            .local_addr()
            .context("the HTTP listening socket has no address")?;
        let guard = Guard {
            token: token.into(),
            cookie: format!("neuromfa_token_{}", addr.port()).into(),
            hint: login_hint(addr, what).into(),
        };
        let router = router.layer(axum::middleware::from_fn_with_state(guard, require_token));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "HTTP listener stopped");
            }
        });
        Ok(WebServer {
            addr,
            stop: Some(stop),
            served,
        })
    }

    /// Stops serving (open connections are let finish).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.served).await;
    }
}

/// Serves the metrics of the worker `options` describes at `/metrics`, behind its token.
pub fn metrics_server(
    listener: tokio::net::TcpListener,
    options: &crate::worker::WorkerOptions,
) -> anyhow::Result<WebServer> {
    let metrics = options.metrics.clone();
    let router = Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let mut registry = prometheus_client::registry::Registry::default();
                metrics.register(&mut registry);
                let mut text = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            header::CONTENT_TYPE,
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    WebServer::start(listener, router, &options.token, "worker's metrics")
}

/// Binds `listen` for an HTTP listener, naming it in the error.
pub async fn bind(listen: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_where_browsers_and_scrapers_put_them() {
        assert_eq!(token_in_query("a=1&token=abc"), Some("abc"));
        assert_eq!(token_in_query("tokens=abc"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; neuromfa_token_80=abc"),
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(cookie_value(&headers, "neuromfa_token_80"), Some("abc"));
        assert_eq!(cookie_value(&headers, "neuromfa_token_8"), None);
        assert_eq!(bearer(&headers), Some("t"));
        assert_eq!(decode("a%2Fb+c"), "a/b c");
    }
}
