//! One bandwidth budget shared by every file body, so that a benchmark on one machine can
//! stand in for a network.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt as _;

use crate::error::lock;

/// One bandwidth budget shared by every response body.
///
/// A virtual clock: each chunk reserves `len / rate` seconds from where the previous
/// reservation ended, and is sent when its reservation ends. A sender that wakes a little
/// late (timers tick in milliseconds, a 64 KiB chunk at 100 MB/s is 0.65 ms) continues from
/// the clock, not from its late wake-up, so lateness does not add up to a lower rate; a link
/// idle for longer than [`Throttle::SLACK`] restarts from now, so it earns no burst.
pub(crate) struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have left.
    busy_until: Mutex<Instant>,
}

impl Throttle {
    /// Idle time after which the clock restarts from now.
    const SLACK: Duration = Duration::from_millis(20);

    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        let now = Instant::now();
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            // Idle from the start: the first body earns no credit.
            busy_until: Mutex::new(now.checked_sub(Self::SLACK * 2).unwrap_or(now)),
        }
    }

    /// Reserves the link for `len` bytes; returns when they may be sent.
    fn reserve(&self, len: usize) -> Instant {
        let needed = Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut busy = lock(&self.busy_until);
        if now > *busy + Self::SLACK {
            *busy = now;
        }
        *busy += needed;
        *busy
    }
}

/// A body whose chunks leave no faster than `throttle` allows.
pub(crate) fn throttled<S>(chunks: S, throttle: Arc<Throttle>) -> Body
where
    S: futures_util::Stream<Item = io::Result<axum::body::Bytes>> + Send + 'static,
{
    Body::from_stream(chunks.then(move |chunk| {
        let throttle = throttle.clone();
        async move {
            if let Ok(bytes) = &chunk {
                tokio::time::sleep_until(throttle.reserve(bytes.len()).into()).await;
            }
            chunk
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reservation is its own length over the rate, from where the previous one ended
    /// (or from now, after an idle link): read off the clock, not measured.
    #[test]
    fn reservations_follow_each_other_at_the_rate() {
        let throttle = Throttle::new(4_000_000);
        let before = Instant::now();
        let first = throttle.reserve(200_000);
        let after = Instant::now();
        let range_time = Duration::from_secs_f64(200_000.0 / 4_000_000.0);
        assert!(first >= before + range_time && first <= after + range_time);
        // A range is charged its own length: the next body starts where it ends.
        let second = throttle.reserve(1_000_000);
        assert_eq!(second - first, Duration::from_millis(250));
    }
}
