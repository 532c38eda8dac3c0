//! Bandwidth budgets for file bodies, so that a benchmark on one machine can stand in for
//! a network: one shared by every body (the server's link), and one per connection (what
//! one TCP stream moves across a long path).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt as _;

use crate::error::lock;

/// One bandwidth budget.
///
/// A virtual clock: each chunk reserves `len / rate` seconds from where the previous
/// reservation ended, and is sent when its reservation ends. A sender that wakes a little
/// late (timers tick in milliseconds, a 64 KiB chunk at 100 MB/s is 0.65 ms) continues from
/// the clock, not from its late wake-up, so lateness does not add up to a lower rate; but
/// the clock never lags now by more than [`Throttle::SLACK`], so an idle link earns at most
/// that much of a burst. (At 20 ms, 2.5 MB at 125 MB/s, a 1 MiB read after a short pause
/// went out at once and measured the link at three times its rate.)
pub(crate) struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have left.
    busy_until: Mutex<Instant>,
}

impl Throttle {
    /// How far the clock may lag now: a timer tick and a little more.
    const SLACK: Duration = Duration::from_millis(2);

    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        let now = Instant::now();
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            // Idle from the start.
            busy_until: Mutex::new(now),
        }
    }

    /// Reserves the link for `len` bytes; returns when they may be sent.
    fn reserve(&self, len: usize) -> Instant {
        let needed = Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut busy = lock(&self.busy_until);
        if let Some(earliest) = now.checked_sub(Self::SLACK) {
            *busy = (*busy).max(earliest);
        }
        *busy += needed;
        *busy
    }
}

/// A body whose chunks leave no faster than every one of `throttles` allows.
pub(crate) fn throttled<S>(chunks: S, throttles: Vec<Arc<Throttle>>) -> Body
where
    S: futures_util::Stream<Item = io::Result<axum::body::Bytes>> + Send + 'static,
{
    Body::from_stream(chunks.then(move |chunk| {
        let throttles = throttles.clone();
        async move {
            if let Ok(bytes) = &chunk {
                let ready = throttles.iter().map(|t| t.reserve(bytes.len())).max();
                if let Some(ready) = ready {
                    tokio::time::sleep_until(ready.into()).await;
                }
            }
            chunk
        }
    }))
}

/// One budget per client connection, found by the peer's address (a connection's
/// address is unique while it is open; bodies hold their budget, so a budget lives as
/// long as a body of its connection does).
pub(crate) struct ConnectionThrottles {
    bytes_per_sec: u64,
    live: Mutex<HashMap<SocketAddr, Weak<Throttle>>>,
}

impl ConnectionThrottles {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        ConnectionThrottles {
            bytes_per_sec,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn of(&self, peer: SocketAddr) -> Arc<Throttle> {
        let mut live = lock(&self.live);
        if let Some(t) = live.get(&peer).and_then(Weak::upgrade) {
            return t;
        }
        if live.len() > 1024 {
            live.retain(|_, t| t.strong_count() > 0);
        }
        let t = Arc::new(Throttle::new(self.bytes_per_sec));
        live.insert(peer, Arc::downgrade(&t));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reservation is its own length over the rate, from where the previous one ended
    /// (or from at most the slack before now, after an idle link): read off the clock.
    #[test]
    fn reservations_follow_each_other_at_the_rate() {
        let throttle = Throttle::new(4_000_000);
        let before = Instant::now();
        let first = throttle.reserve(200_000);
        let after = Instant::now();
        let range_time = Duration::from_secs_f64(200_000.0 / 4_000_000.0);
        assert!(first >= before + range_time - Throttle::SLACK && first <= after + range_time);
        // A range is charged its own length: the next body starts where it ends.
        let second = throttle.reserve(1_000_000);
        assert_eq!(second - first, Duration::from_millis(250));
    }

    /// A link idle for a while starts again at most a few milliseconds behind now: a
    /// short pause earns no burst worth measuring.
    #[test]
    fn a_pause_earns_no_burst() {
        let throttle = Throttle::new(1_000_000);
        let _ = throttle.reserve(1_000);
        std::thread::sleep(Duration::from_millis(15));
        let before = Instant::now();
        // 10 ms of bytes after a 14 ms pause: due no earlier than 7 ms from now.
        let due = throttle.reserve(10_000);
        assert!(
            due >= before + Duration::from_millis(7),
            "due {:?} before now + 7 ms",
            (before + Duration::from_millis(7)).saturating_duration_since(due)
        );
    }
}
