//! What requests cost on the link to where a file's bytes are, measured on a fetch's own
//! first reads: the round trip (the quickest first byte) and the bandwidth of one
//! connection. They decide how many requests go out at once, which gaps between needed
//! bytes are cheaper to read through than to skip with another request, and whether
//! ranges beat the whole file.
//!
//! With `c` requests in flight, a request costs the fetch `rtt / c` of wall time (they
//! overlap), but never less than the CPU a request takes the client; a gap of `g` bytes
//! costs `g / bandwidth`. So a gap is read through when it is under what a connection moves
//! in one request's share of a round trip, and `c` grows with the round trip until that
//! share falls to the CPU floor.

use std::time::Duration;

use serde::Serialize;

use super::plan::PlanSummary;
use crate::transport::Timing;

/// What a request costs the client in CPU (client and loopback server together) however
/// near the server: measured on the loopback benchmark, where tens of thousands of small
/// requests are CPU-bound.
pub const MIN_REQUEST_COST: Duration = Duration::from_micros(40);
/// Requests in flight at least: on a near link, more only costs sockets.
pub const MIN_CONCURRENCY: usize = 64;
/// Requests in flight at most: a file descriptor each over HTTP/1.1, streams of a few
/// connections over HTTP/2.
pub const MAX_CONCURRENCY: usize = 512;
/// Requests a checkpoint's ranges may take at most: past this, the merge gap grows until
/// they fit (the CDN sees no more, and the client spends at most seconds of CPU on them).
pub const MAX_REQUESTS: usize = 65_536;
/// The bytes of the read that measures a connection's bandwidth, when no layout read was
/// long enough to.
pub(crate) const PROBE_BYTES: u64 = 1 << 20;
/// Files smaller than this are not probed: the probe would cost a noticeable share of them,
/// and their layout reads already are a large share.
pub(crate) const PROBE_MIN_FILE: u64 = 64 << 20;
/// Reads shorter than this say little of the bandwidth.
const MEASURABLE: u64 = 16 << 10;

/// The link to where a file's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    /// From sending a request to its first byte.
    pub round_trip: Duration,
    /// What one connection moves.
    pub bytes_per_sec: f64,
}

/// What `Auto` expects each way of fetching to take from here on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchEstimate {
    pub ranges: Duration,
    pub full: Duration,
}

impl FetchEstimate {
    pub fn favours_ranges(&self, max_share: f64) -> bool {
        self.ranges.as_secs_f64() < max_share * self.full.as_secs_f64()
    }
}

impl Link {
    /// The link as reads showed it: the quickest first byte, and the fastest transfer of a
    /// read long enough to tell (else the fastest read over its whole time, a lower bound).
    /// When a read of half a [probe](PROBE_BYTES) or more exists, only such reads tell: a
    /// shorter one can arrive in one burst (a server's chunk, a link idle a moment before)
    /// and, taken as the fastest, overstate the link, which prices whole files as cheap
    /// and gaps as worth reading through. `None` without any read.
    ///
    /// A read's transfer is timed from one round trip after it was sent, not from when its
    /// own first byte was seen: a client that was not scheduled while the body arrived sees
    /// the first byte late and the rest at once from its socket's buffer, and a megabyte
    /// seemingly moved in a fraction of a millisecond would price gaps of megabytes.
    pub(crate) fn from_timings(timings: &[Timing]) -> Option<Link> {
        let round_trip = timings.iter().map(|t| t.first_byte).min()?;
        for t in timings.iter().filter(|t| t.bytes >= MEASURABLE) {
            tracing::debug!(
                bytes = t.bytes,
                first_byte_ms = t.first_byte.as_secs_f64() * 1e3,
                total_ms = t.total.as_secs_f64() * 1e3,
                "a read the link's bandwidth is measured by"
            );
        }
        let rate = |bytes: u64, time: Duration| bytes as f64 / time.as_secs_f64().max(1e-6);
        let telling = match Self::measured_bandwidth(timings) {
            true => PROBE_BYTES / 2,
            false => MEASURABLE,
        };
        let transfer = timings
            .iter()
            .filter(|t| t.bytes >= telling)
            .map(|t| {
                let moving = t.total.saturating_sub(round_trip);
                if moving >= Duration::from_millis(1) {
                    rate(t.bytes, moving)
                } else {
                    rate(t.bytes, t.total)
                }
            })
            .fold(None, |best: Option<f64>, r| {
                Some(best.map_or(r, |b| b.max(r)))
            });
        let bytes_per_sec = transfer.unwrap_or_else(|| {
            timings
                .iter()
                .map(|t| rate(t.bytes, t.total))
                .fold(0.0, f64::max)
        });
        Some(Link {
            round_trip,
            bytes_per_sec: bytes_per_sec.max(1.0),
        })
    }

    /// Whether the reads so far measured the bandwidth well enough.
    pub(crate) fn measured_bandwidth(timings: &[Timing]) -> bool {
        timings.iter().any(|t| t.bytes >= PROBE_BYTES / 2)
    }

    /// Requests to keep in flight: enough that the round trip's share of each falls to the
    /// CPU floor, within [`MIN_CONCURRENCY`] and [`MAX_CONCURRENCY`].
    pub fn concurrency(&self) -> usize {
        let wanted = self.round_trip.as_secs_f64() / MIN_REQUEST_COST.as_secs_f64();
        (wanted.ceil() as usize).clamp(MIN_CONCURRENCY, MAX_CONCURRENCY)
    }

    /// What one more request costs the fetch's wall time at `concurrency`.
    pub fn request_cost(&self, concurrency: usize) -> Duration {
        (self.round_trip / concurrency.max(1) as u32).max(MIN_REQUEST_COST)
    }

    /// The longest gap between needed bytes cheaper to read through than to skip with
    /// another request: what a connection moves in a request's share of a round trip.
    pub fn merge_gap(&self, concurrency: usize) -> u64 {
        (self.bytes_per_sec * self.request_cost(concurrency).as_secs_f64()) as u64
    }

    /// What the plan's ranges and the whole files would take from here on (the layout,
    /// read already, is no longer a cost of either).
    pub fn estimate(&self, plan: &PlanSummary, concurrency: usize) -> FetchEstimate {
        let bytes = |n: u64| Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        FetchEstimate {
            ranges: self.round_trip
                + self.request_cost(concurrency) * plan.requests as u32
                + bytes(plan.planned_bytes),
            full: self.round_trip + bytes(plan.file_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(first_ms: f64, total_ms: f64, bytes: u64) -> Timing {
        Timing {
            first_byte: Duration::from_secs_f64(first_ms / 1e3),
            total: Duration::from_secs_f64(total_ms / 1e3),
            bytes,
        }
    }

    #[test]
    fn the_quickest_first_byte_and_the_fastest_long_transfer_describe_the_link() {
        let link = Link::from_timings(&[
            timing(31.0, 31.5, 8),
            timing(30.0, 40.0, 1 << 20),
            timing(45.0, 46.0, 64 << 10),
        ])
        .unwrap();
        assert_eq!(link.round_trip, Duration::from_millis(30));
        // 1 MiB moved in the 10 ms after its first byte.
        assert!((link.bytes_per_sec - 104_857_600.0).abs() < 1.0, "{link:?}");
        assert!(Link::measured_bandwidth(&[timing(30.0, 40.0, 1 << 20)]));
        assert!(!Link::measured_bandwidth(&[timing(30.0, 40.0, 1 << 10)]));
        assert_eq!(Link::from_timings(&[]), None);
    }

    #[test]
    fn a_short_read_that_arrived_at_once_does_not_outrank_the_probe() {
        // 64 KiB sent in one chunk, seen 0.1 ms after the round trip (655 MB/s), beside
        // the probe's 1 MiB at 100 MB/s.
        let link =
            Link::from_timings(&[timing(0.5, 0.6, 64 << 10), timing(0.6, 11.0, 1 << 20)]).unwrap();
        let mb_per_s = link.bytes_per_sec / 1e6;
        assert!((95.0..105.0).contains(&mb_per_s), "{link:?}");
    }

    #[test]
    fn a_body_seen_late_does_not_inflate_the_bandwidth() {
        // 100 ms away at 100 MB/s, the probe's 1 MiB took its 10.5 ms after the round
        // trip, but the client first looked at it 9 ms late and found most of it buffered:
        // timed from its own first byte, it moved 700 MB/s.
        let link =
            Link::from_timings(&[timing(100.0, 100.2, 8 << 10), timing(109.0, 110.5, 1 << 20)])
                .unwrap();
        assert_eq!(link.round_trip, Duration::from_millis(100));
        let mb_per_s = link.bytes_per_sec / 1e6;
        assert!((99.0..101.0).contains(&mb_per_s), "{link:?}");
    }

    fn link(rtt_ms: u64, mb_per_s: f64) -> Link {
        Link {
            round_trip: Duration::from_millis(rtt_ms),
            bytes_per_sec: mb_per_s * 1e6,
        }
    }

    #[test]
    fn a_longer_round_trip_means_more_in_flight_and_longer_gaps_read_through() {
        let near = link(0, 100.0);
        assert_eq!(near.concurrency(), MIN_CONCURRENCY);
        // The CPU floor: 40 µs at 100 MB/s is 4 KB.
        assert_eq!(near.merge_gap(near.concurrency()), 4000);
        let far = link(30, 100.0);
        assert_eq!(far.concurrency(), MAX_CONCURRENCY);
        // 30 ms over 512 in flight is 58.6 µs: 5.9 KB.
        assert_eq!(far.merge_gap(MAX_CONCURRENCY), 5859);
        let farther = link(100, 100.0);
        assert!(farther.merge_gap(MAX_CONCURRENCY) > far.merge_gap(MAX_CONCURRENCY));
        assert_eq!(link(10, 100.0).concurrency(), 250);
    }

    #[test]
    fn auto_weighs_requests_by_the_links_round_trip() {
        // pythia-1b, 10 seeds, gap 4096 (scripts/bench-fetch.sh).
        let plan = PlanSummary {
            seeds: 10,
            elements: 0,
            needed_bytes: 2_619_466,
            planned_bytes: 189_069_500,
            requests: 29_544,
            file_bytes: 2_023_586_192,
            merge_gap: 4096,
            layout_requests: 1,
            layout_bytes: 65_536,
        };
        // A loopback mirror: requests cost their CPU, the bytes decide.
        let near = link(0, 100.0);
        let estimate = near.estimate(&plan, near.concurrency());
        assert!(estimate.favours_ranges(0.25), "{estimate:?}");
        assert!(
            (estimate.full.as_secs_f64() - 20.2).abs() < 0.1,
            "{estimate:?}"
        );
        // 30 ms away at 512 in flight: still well under a quarter of the file's time.
        let far = link(30, 100.0);
        assert!(far.estimate(&plan, far.concurrency()).favours_ranges(0.25));
        // At the old 64 in flight, 29.5 k requests 30 ms away take most of the file's time.
        assert!(!far.estimate(&plan, 64).favours_ranges(0.25));
    }
}
