//! Helpers shared by the ranged-fetch tests: checkpoints laid out for the loopback Hub, a
//! Hub behind a misbehaving layer, a fetcher, and bit-for-bit comparison of two readers.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use neuromfa_common::network::WeightReader;
use neuromfa_common::{analyze_seed, AnalysisParams};
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::ranges::{FetchedWeights, RangedCheckpoint};
use neuromfa_hub::HubSettings;
use neuromfa_hub_server::{HubServer, HubServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::common::write;

/// Copies every file of `src` to `root/<repo>/<revision>/`.
pub fn install(root: &Path, repo: &str, revision: &str, src: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        write(root, &format!("{repo}/{revision}/{name}"), &bytes);
    }
}

/// Serves `root` through `layer` (a middleware that misbehaves) on a loopback port.
pub async fn start_with_layer<F, Fut>(root: &Path, layer: F) -> String
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    start_counting_connections(root, layer).await.0
}

/// [`start_with_layer`], also counting the connections clients hold open.
pub async fn start_counting_connections<F, Fut>(
    root: &Path,
    layer: F,
) -> (String, Arc<OpenConnections>)
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let server = HubServer::new(HubServerConfig {
        root: root.to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let router: Router = server.router().layer(axum::middleware::from_fn(layer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(OpenConnections::default());
    let counting = CountingListener {
        listener,
        open: open.clone(),
    };
    tokio::spawn(async move { axum::serve(counting, router).await });
    (format!("http://{addr}"), open)
}

/// How many connections the server holds, and a wake-up whenever one closes.
#[derive(Default)]
pub struct OpenConnections {
    count: AtomicUsize,
    closed: tokio::sync::Notify,
}

impl OpenConnections {
    /// Returns once every connection accepted so far has closed.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }
}

struct CountingListener {
    listener: tokio::net::TcpListener,
    open: Arc<OpenConnections>,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (CountedStream, std::net::SocketAddr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        self.open.count.fetch_add(1, Ordering::SeqCst);
        let stream = CountedStream {
            stream,
            open: self.open.clone(),
        };
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// A served connection, counted out when the server drops it.
struct CountedStream {
    stream: tokio::net::TcpStream,
    open: Arc<OpenConnections>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.count.fetch_sub(1, Ordering::SeqCst);
        self.open.closed.notify_waiters();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pub fn fetcher(endpoint: &str, cache: &Path) -> Fetcher {
    Fetcher::new(HubSettings {
        endpoint: Some(endpoint.to_string()),
        token: None,
        cache_dir: Some(cache.to_path_buf()),
    })
    .unwrap()
}

pub fn params(layer_sample: usize) -> AnalysisParams {
    AnalysisParams {
        layer_sample,
        ..AnalysisParams::default()
    }
}

pub fn ranged(weights: FetchedWeights) -> RangedCheckpoint {
    match weights {
        FetchedWeights::Ranged(r) => r,
        FetchedWeights::Full(f) => panic!("expected a ranged fetch, got a full one: {f:?}"),
    }
}

/// `analyze_seed` gives the same result, bit for bit, on both readers (or the same error).
pub fn assert_identical(
    a: &dyn WeightReader,
    b: &dyn WeightReader,
    p: &AnalysisParams,
    seeds: &[u32],
) {
    for &seed in seeds {
        match (
            analyze_seed(a, p, 1000, seed),
            analyze_seed(b, p, 1000, seed),
        ) {
            (Ok(x), Ok(y)) => {
                assert_eq!(
                    x.result.alpha0.to_bits(),
                    y.result.alpha0.to_bits(),
                    "seed {seed}"
                );
                assert_eq!(
                    x.result.width.to_bits(),
                    y.result.width.to_bits(),
                    "seed {seed}"
                );
                assert_eq!(
                    serde_json::to_value(&x.result).unwrap(),
                    serde_json::to_value(&y.result).unwrap(),
                    "seed {seed}"
                );
                let edges = |s: &neuromfa_common::network::Snin| {
                    s.edges()
                        .map(|(from, to, w)| (from, to, w.to_bits()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(edges(&x.snin), edges(&y.snin), "seed {seed}");
            }
            (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string(), "seed {seed}"),
            (x, y) => panic!(
                "seed {seed}: {:?} vs {:?}",
                x.map(|a| a.result.alpha0),
                y.map(|a| a.result.alpha0)
            ),
        }
    }
}
