//! Faults on demand: server errors, connections cut mid-body and slow first bytes, on a
//! share of requests or on the next few, set at start or changed while serving.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::error::lock;

/// What to inject on one listener. Counts (`*_next`) are spent before shares apply;
/// shares are drawn from a fixed pseudo-random sequence, so a run is repeatable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Answer this share of requests (0 to 1) with `error_status`.
    pub error_share: f64,
    /// Answer the next this many requests with `error_status`.
    pub error_next: u64,
    /// The status of injected errors: 500 to 599 (0: 503).
    pub error_status: u16,
    /// Cut this share of file bodies short by closing the connection.
    pub reset_share: f64,
    /// Cut the next this many file bodies short.
    pub reset_next: u64,
    /// Bytes of a cut body that are sent first; `None`: half of the body.
    pub reset_after_bytes: Option<u64>,
    /// Delay the first byte of this share of answers by `slow_first_byte_ms`.
    pub slow_share: f64,
    /// Delay the first byte of the next this many answers.
    pub slow_next: u64,
    pub slow_first_byte_ms: u64,
}

impl FaultPlan {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, share) in [
            ("error_share", self.error_share),
            ("reset_share", self.reset_share),
            ("slow_share", self.slow_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1 (got {share})"));
            }
        }
        if self.error_status != 0 && !(500..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status must be a 5xx status (got {})",
                self.error_status
            ));
        }
        Ok(())
    }
}

/// The faults of one listener while it serves.
pub(crate) struct Faults {
    plan: Mutex<FaultPlan>,
    draws: AtomicU64,
    seed: u64,
}

/// What to do to one request before it is handled.
#[derive(Debug, Default)]
pub(crate) struct BeforeRequest {
    pub(crate) error: Option<StatusCode>,
    pub(crate) delay: Option<Duration>,
}

impl Faults {
    pub(crate) fn new(plan: FaultPlan, seed: u64) -> Self {
        Faults {
            plan: Mutex::new(plan),
            draws: AtomicU64::new(0),
            seed,
        }
    }

    pub(crate) fn set(&self, plan: FaultPlan) {
        *lock(&self.plan) = plan;
    }

    pub(crate) fn get(&self) -> FaultPlan {
        lock(&self.plan).clone()
    }

    /// A uniform draw in [0, 1) from the listener's sequence.
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        (splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 11) as f64
            / (1u64 << 53) as f64
    }

    /// Spends one of `next`, or draws against `share`.
    fn fires(&self, next: &mut u64, share: f64) -> bool {
        if *next > 0 {
            *next -= 1;
            return true;
        }
        share > 0.0 && self.draw() < share
    }

    pub(crate) fn before_request(&self) -> BeforeRequest {
        let mut plan = lock(&self.plan);
        let mut out = BeforeRequest::default();
        let (mut next, share) = (plan.error_next, plan.error_share);
        if self.fires(&mut next, share) {
            let status = match plan.error_status {
                0 => 503,
                s => s,
            };
            out.error =
                Some(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
        }
        plan.error_next = next;
        let (mut next, share) = (plan.slow_next, plan.slow_share);
        if plan.slow_first_byte_ms > 0 && self.fires(&mut next, share) {
            out.delay = Some(Duration::from_millis(plan.slow_first_byte_ms));
        }
        plan.slow_next = next;
        out
    }

    /// For a file body of `len` bytes: how many bytes to send before cutting the
    /// connection, if it is to be cut.
    pub(crate) fn cut_body(&self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let mut plan = lock(&self.plan);
        let (mut next, share) = (plan.reset_next, plan.reset_share);
        let fires = self.fires(&mut next, share);
        plan.reset_next = next;
        fires.then(|| plan.reset_after_bytes.unwrap_or(len / 2).min(len - 1))
    }
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `body` with only its first `keep` bytes, then an error: the server closes the
/// connection mid-body, and the client sees fewer bytes than `Content-Length` promised.
pub(crate) fn cut(body: Body, keep: u64) -> Body {
    let reset = || {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset (injected fault)",
        )
    };
    let kept = body.into_data_stream().scan(keep, |left, chunk| {
        let piece = match chunk {
            _ if *left == 0 => None,
            Err(e) => Some(Err(io::Error::other(e))),
            Ok(bytes) => {
                let take = (bytes.len() as u64).min(*left);
                *left -= take;
                Some(Ok(bytes.slice(..take as usize)))
            }
        };
        std::future::ready(piece)
    });
    // The server flushes what it has before the error closes the connection only if the
    // body pauses first; without the pause the client may not even get the headers.
    let reset = futures_util::stream::once(async move {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Err(reset())
    });
    Body::from_stream(kept.chain(reset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_first_then_shares() {
        let faults = Faults::new(
            FaultPlan {
                error_next: 2,
                error_status: 500,
                ..FaultPlan::default()
            },
            1,
        );
        assert_eq!(
            faults.before_request().error,
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert!(faults.before_request().error.is_some());
        assert!(faults.before_request().error.is_none());

        faults.set(FaultPlan {
            error_share: 0.25,
            ..FaultPlan::default()
        });
        let errors = (0..4000)
            .filter(|_| faults.before_request().error.is_some())
            .count();
        assert!((800..1200).contains(&errors), "{errors} of 4000");
    }

    #[test]
    fn cut_bodies_keep_less_than_all() {
        let faults = Faults::new(
            FaultPlan {
                reset_next: 1,
                ..FaultPlan::default()
            },
            1,
        );
        assert_eq!(faults.cut_body(0), None);
        assert_eq!(faults.cut_body(100), Some(50));
        assert_eq!(faults.cut_body(100), None);
        faults.set(FaultPlan {
            reset_next: 1,
            reset_after_bytes: Some(1000),
            ..FaultPlan::default()
        });
        assert_eq!(faults.cut_body(100), Some(99));
    }
}
