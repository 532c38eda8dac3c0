//! A fault-injecting TCP proxy for the test cluster: each worker dials the coordinator
//! through a [`FaultyLink`] of its own, which the test can partition in either direction
//! or both, slow down, or have cut connections in the middle of an exchange.
//!
//! A partitioned direction swallows what is sent into it, and a direction of a connection
//! that lost bytes so is dead for good: the connection stays open but that direction
//! carries nothing, even once the link heals (a half-open connection, as a peer behind a
//! lost NAT entry leaves), so only new connections work again. A cut closes the connection
//! at both ends at once.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::chaos::Rng;

/// What a link does to the bytes it carries from now on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Worker → coordinator bytes are swallowed.
    pub up_blackholed: bool,
    /// Coordinator → worker bytes are swallowed.
    pub down_blackholed: bool,
    /// Each chunk waits this long before it is passed on (in order).
    pub delay: Duration,
    /// Each chunk is, with this probability, the last its connection carries: the
    /// connection is cut instead of passing it on.
    pub cut_probability: f64,
}

impl Faults {
    pub const CLEAN: Faults = Faults {
        up_blackholed: false,
        down_blackholed: false,
        delay: Duration::ZERO,
        cut_probability: 0.0,
    };

    /// Both directions swallowed: a full partition.
    pub const PARTITIONED: Faults = Faults {
        up_blackholed: true,
        down_blackholed: true,
        ..Faults::CLEAN
    };

    fn blackholed(&self, direction: Direction) -> bool {
        match direction {
            Direction::Up => self.up_blackholed,
            Direction::Down => self.down_blackholed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Worker to coordinator.
    Up,
    /// Coordinator to worker.
    Down,
}

/// What a link has done so far.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connections: AtomicU64,
    /// Connections cut in the middle of an exchange.
    pub cuts: AtomicU64,
    /// Chunks swallowed by a partition.
    pub swallowed: AtomicU64,
    /// Chunks passed on, worker to coordinator.
    pub passed_up: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    stats: LinkStats,
    /// Bumped to close every open connection.
    cut_all: watch::Sender<u64>,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| *f).unwrap_or_default()
    }

    fn draw_cut(&self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        let draw = self.rng.lock().map_or(0, |mut rng| rng.next());
        (draw as f64 / u64::MAX as f64) < probability
    }
}

/// One proxied link: listens on a loopback port of its own, and passes each connection
/// on to `upstream` through the faults in force.
pub struct FaultyLink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
}

impl FaultyLink {
    /// A clean link to `upstream`; `seed` fixes which chunks random cuts hit.
    pub fn start(upstream: SocketAddr, seed: u64) -> FaultyLink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("faulty-link")
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(Faults::CLEAN),
            rng: Mutex::new(Rng::new(seed)),
            stats: LinkStats::default(),
            cut_all: watch::channel(0).0,
        });
        runtime.spawn(accept(listener, shared.clone()));
        FaultyLink {
            addr,
            shared,
            runtime,
        }
    }

    /// The URL a worker dials to reach the coordinator through this link.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, faults: Faults) {
        if let Ok(mut f) = self.shared.faults.lock() {
            *f = faults;
        }
    }

    pub fn heal(&self) {
        self.set(Faults::CLEAN);
    }

    /// Closes every connection open now, at both ends.
    pub fn cut_all(&self) {
        self.shared.cut_all.send_modify(|n| *n += 1);
    }

    pub fn stats(&self) -> &LinkStats {
        &self.shared.stats
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        // Connections end with the runtime; nothing is left listening.
        self.cut_all();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// How a direction of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Its sender closed (or failed): the close was passed on unless the link is dead.
    Closed,
    /// A random cut: the whole connection ends now.
    Cut,
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let mut cut_all = shared.cut_all.subscribe();
    // A connection made during a partition is accepted all the same (the kernel does
    // that), and is dead from its first byte.
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // Per direction: whether it lost bytes, and so carries nothing more.
    let dead = [AtomicBool::new(false), AtomicBool::new(false)];
    let up = pump(
        client_read,
        upstream_write,
        Direction::Up,
        &shared,
        &dead[0],
    );
    let down = pump(
        upstream_read,
        client_write,
        Direction::Down,
        &shared,
        &dead[1],
    );
    tokio::pin!(up, down);
    let (mut up_open, mut down_open) = (true, true);
    while up_open || down_open {
        tokio::select! {
            ended = &mut up, if up_open => {
                if ended == Ended::Cut { break; }
                up_open = false;
            }
            ended = &mut down, if down_open => {
                if ended == Ended::Cut { break; }
                down_open = false;
            }
            _ = cut_all.changed() => break,
        }
    }
    // Dropping both halves of both sockets closes the connection at both ends.
}

/// Passes chunks from `from` to `to` through the link's faults; `dead` is this direction's.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
    dead: &AtomicBool,
) -> Ended {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let faults = shared.faults();
        if faults.blackholed(direction) || dead.load(Ordering::Relaxed) {
            // Keep reading, so the sender sees its bytes leave; they go nowhere.
            dead.store(true, Ordering::Relaxed);
            shared.stats.swallowed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if shared.draw_cut(faults.cut_probability) {
            shared.stats.cuts.fetch_add(1, Ordering::Relaxed);
            return Ended::Cut;
        }
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if direction == Direction::Up {
            shared.stats.passed_up.fetch_add(1, Ordering::Relaxed);
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    // A dead direction stays half-open: the other end never hears of the close.
    if !dead.load(Ordering::Relaxed) {
        let _ = to.shutdown().await;
    }
    Ended::Closed
}
