//! The server's notion of time: real time plus an offset tests may advance, so that rate
//! windows roll over and signed URLs expire on cue instead of after a wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) struct Clock {
    started: Instant,
    started_unix: Duration,
    /// Added to real time, in milliseconds.
    skew_ms: AtomicU64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            skew_ms: AtomicU64::new(0),
        }
    }

    /// Time since the server started, skew included.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed() + Duration::from_millis(self.skew_ms.load(Ordering::Relaxed))
    }

    /// Seconds since the Unix epoch, skew included (what signed URLs and tokens carry).
    pub(crate) fn unix_secs(&self) -> u64 {
        (self.started_unix + self.elapsed()).as_secs()
    }

    pub(crate) fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
