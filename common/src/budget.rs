//! The Hub's request budgets and the pacing that keeps a cluster within them: the vocabulary
//! the Hub client (pacing its own requests) and the coordinator (pacing a whole cluster's)
//! share. Pure: every instant is passed in.
//!
//! The Hub meters two buckets ([`Bucket`]) in fixed windows of five minutes whose alignment
//! it does not announce. A [`Pacer`] grants at most `q` requests in *any* interval of its
//! window's length (a sliding window), which keeps within `q` per fixed window whatever the
//! Hub's alignment; what the Hub's answers say of its own window (`RateLimit`: remaining,
//! seconds to reset) can only lower that, and a `429` stops every grant until the reset it
//! names. Grants are booked first come, first served, possibly in the future: a caller is
//! told when it may send, and waits.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The length of the Hub's rate-limit windows.
pub const HUB_WINDOW: Duration = Duration::from_secs(300);

/// How long after the instant it was granted for a worker may still send a request: a
/// cluster's grants are counted over the Hub's window plus this, so that requests sent
/// that late still keep within every one of the Hub's windows. Workers drop grants older
/// than this (less the time a reply takes to reach them).
pub const GRANT_SLACK: Duration = Duration::from_secs(15);

/// A metered class of Hub requests. Requests to the CDN a `302` points at are not metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Every request whose path holds `/resolve/`.
    Resolvers,
    /// `/api/*`: paths-info, tree, model info, xet-read-token.
    Api,
}

impl Bucket {
    pub const ALL: [Bucket; 2] = [Bucket::Resolvers, Bucket::Api];

    /// The name the Hub gives the bucket in its `RateLimit` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Resolvers => "resolvers",
            Bucket::Api => "api",
        }
    }

    /// The bucket a request to `path` (a URL's path on the Hub) counts against. The
    /// `/api/resolve-cache/` URLs the Hub redirects files kept in git to are counted as
    /// Resolvers: they serve files, and the Hub's documentation does not say.
    pub fn of_path(path: &str) -> Option<Bucket> {
        if path.contains("/resolve/") || path.starts_with("/api/resolve-cache/") {
            Some(Bucket::Resolvers)
        } else if path.starts_with("/api/") {
            Some(Bucket::Api)
        } else {
            None
        }
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Bucket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bucket::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("unknown Hub bucket {s:?}: expected resolvers or api"))
    }
}

/// At most `requests` in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub requests: u32,
    pub window: Duration,
}

/// The quota of each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub resolvers: Quota,
    pub api: Quota,
}

impl Quotas {
    pub fn of(&self, bucket: Bucket) -> Quota {
        match bucket {
            Bucket::Resolvers => self.resolvers,
            Bucket::Api => self.api,
        }
    }
}

/// The Hub's account tiers, by their published per-address (anonymous) or per-token quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Anonymous,
    #[default]
    Free,
    Pro,
    Team,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Anonymous, Tier::Free, Tier::Pro, Tier::Team];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Anonymous => "anonymous",
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Team => "team",
        }
    }

    /// Requests per five minutes: Resolvers, API.
    pub fn quotas(self) -> Quotas {
        let (resolvers, api) = match self {
            Tier::Anonymous => (3_000, 500),
            Tier::Free => (5_000, 1_000),
            Tier::Pro => (12_000, 2_500),
            Tier::Team => (20_000, 3_000),
        };
        let quota = |requests| Quota {
            requests,
            window: HUB_WINDOW,
        };
        Quotas {
            resolvers: quota(resolvers),
            api: quota(api),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown Hub budget {s:?}: expected anonymous, free, pro or team")
            })
    }
}

/// What one Hub answer said of a bucket's current window (`RateLimit: "…";r=…;t=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubWindow {
    pub remaining: u32,
    pub resets_in: Duration,
}

/// What a bucket's pacing did, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketStatus {
    pub bucket: Option<Bucket>,
    pub quota: u32,
    pub window_seconds: f64,
    /// Requests granted since the pacer started.
    pub granted: u64,
    /// Of those, granted within the last window.
    pub granted_in_window: u64,
    /// Time callers were told to wait for their grants, summed.
    pub waited_seconds: f64,
    /// `429` answers reported.
    pub throttled: u32,
    /// How long grants stay stopped by a reported `429` or an exhausted Hub window.
    pub paused_seconds: f64,
    /// How far ahead of now grants are booked: the wait a new ask would start from.
    pub booked_ahead_seconds: f64,
}

/// The Hub's own count of its current window, as its answers reported it.
#[derive(Debug, Clone, Copy)]
struct HubCount {
    resets_at: Instant,
    remaining: u32,
}

/// One bucket's grants: at most `quota.requests` in any interval of `quota.window` (plus the
/// slack a grant may take to be spent), never more than the Hub says remain before its
/// window resets. First come, first served.
#[derive(Debug, Clone)]
pub struct Pacer {
    quota: Quota,
    /// The window grants are counted over: the quota's, plus how late a grant may be spent.
    span: Duration,
    /// Grants by the instant they may be spent, non-decreasing; those that may still count.
    booked: VecDeque<(Instant, u32)>,
    /// The latest instant booked: nothing is booked before it.
    last: Option<Instant>,
    hub: Option<HubCount>,
    granted: u64,
    waited: Duration,
    throttled: u32,
}

/// Two answers whose resets lie closer than this describe the same Hub window (the Hub
/// reports whole seconds).
const SAME_WINDOW: Duration = Duration::from_millis(1100);

impl Pacer {
    /// Grants at most `quota` requests, each spent within `slack` of the instant it is
    /// booked for.
    pub fn new(quota: Quota, slack: Duration) -> Self {
        Pacer {
            quota,
            span: quota.window + slack,
            booked: VecDeque::new(),
            last: None,
            hub: None,
            granted: 0,
            waited: Duration::ZERO,
            throttled: 0,
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The earliest instant, no earlier than `from` nor than any booking before, at which
    /// `n` requests (at most the quota) keep every window within the quota and the Hub's
    /// count. Later instants are as good: no booking lies after the last one.
    pub fn earliest(&self, n: u32, from: Instant) -> Instant {
        let n = u64::from(n.clamp(1, self.quota.requests.max(1)));
        let quota = u64::from(self.quota.requests);
        let mut at = self.last.map_or(from, |last| last.max(from));
        loop {
            let counted = self
                .booked
                .partition_point(|&(time, _)| time + self.span <= at);
            let in_span: u64 = self
                .booked
                .range(counted..)
                .map(|&(_, c)| u64::from(c))
                .sum();
            if in_span + n > quota {
                // The earliest instant at which enough of the oldest grants leave the span.
                let mut left = in_span;
                for &(time, count) in self.booked.range(counted..) {
                    left -= u64::from(count);
                    if left + n <= quota {
                        at = at.max(time + self.span);
                        break;
                    }
                }
                continue;
            }
            match self.hub {
                Some(hub) if at < hub.resets_at && u64::from(hub.remaining) < n => {
                    at = hub.resets_at
                }
                _ => return at,
            }
        }
    }

    /// Books `n` requests (at most the quota; fewer are booked if more are asked) for the
    /// [earliest](Self::earliest) instant from `now`. Returns that instant and how many were
    /// booked.
    pub fn book(&mut self, n: u32, now: Instant) -> (Instant, u32) {
        self.book_from(n, now, now)
    }

    /// [`Pacer::book`] for no earlier than `from`.
    pub fn book_from(&mut self, n: u32, from: Instant, now: Instant) -> (Instant, u32) {
        let n = n.clamp(1, self.quota.requests.max(1));
        // What can no longer count, for a booking nor for the status.
        while let Some(&(time, _)) = self.booked.front() {
            if time + self.span.max(self.quota.window) > now {
                break;
            }
            self.booked.pop_front();
        }
        let at = self.earliest(n, from.max(now));
        match self.hub.as_mut() {
            Some(hub) if at >= hub.resets_at => self.hub = None,
            Some(hub) => hub.remaining -= n,
            None => {}
        }
        self.booked.push_back((at, n));
        self.last = Some(at);
        self.granted += u64::from(n);
        self.waited += at.saturating_duration_since(now);
        (at, n)
    }

    /// Takes in what an answer received at `now` said of the Hub's window: it lowers what
    /// may be granted before the window resets (someone else behind the same address or
    /// token spends it too). An answer from a window already over is ignored.
    pub fn observe(&mut self, window: HubWindow, now: Instant) {
        let resets_at = now + window.resets_in;
        match self.hub.as_mut() {
            Some(hub) if resets_at + SAME_WINDOW < hub.resets_at => {}
            Some(hub) if resets_at <= hub.resets_at + SAME_WINDOW => {
                hub.remaining = hub.remaining.min(window.remaining);
            }
            _ => {
                self.hub = Some(HubCount {
                    resets_at,
                    remaining: window.remaining,
                })
            }
        }
    }

    /// A `429` came at `now`: nothing more is granted until the window resets, `resets_in`
    /// later.
    pub fn exhausted(&mut self, resets_in: Duration, now: Instant) {
        self.throttled += 1;
        let resets_at = now + resets_in;
        let resets_at = match self.hub {
            Some(hub) if hub.remaining == 0 => hub.resets_at.max(resets_at),
            _ => resets_at,
        };
        self.hub = Some(HubCount {
            resets_at,
            remaining: 0,
        });
    }

    /// What the pacing did so far, as of `now`.
    pub fn status(&self, bucket: Bucket, now: Instant) -> BucketStatus {
        let since = now.checked_sub(self.quota.window);
        let granted_in_window = self
            .booked
            .iter()
            .filter(|(time, _)| *time <= now && since.is_none_or(|since| *time > since))
            .map(|&(_, count)| u64::from(count))
            .sum();
        let paused = match self.hub {
            Some(hub) if hub.remaining == 0 => hub.resets_at.saturating_duration_since(now),
            _ => Duration::ZERO,
        };
        BucketStatus {
            bucket: Some(bucket),
            quota: self.quota.requests,
            window_seconds: self.quota.window.as_secs_f64(),
            granted: self.granted,
            granted_in_window,
            waited_seconds: self.waited.as_secs_f64(),
            throttled: self.throttled,
            paused_seconds: paused.as_secs_f64(),
            booked_ahead_seconds: self
                .last
                .map_or(Duration::ZERO, |last| last.saturating_duration_since(now))
                .as_secs_f64(),
        }
    }
}

/// A pacer for each bucket.
#[derive(Debug, Clone)]
pub struct Budgets {
    resolvers: Pacer,
    api: Pacer,
}

impl Budgets {
    /// Pacers for `quotas`, each grant spent within `slack` of its instant.
    pub fn new(quotas: Quotas, slack: Duration) -> Self {
        Budgets {
            resolvers: Pacer::new(quotas.resolvers, slack),
            api: Pacer::new(quotas.api, slack),
        }
    }

    pub fn pacer(&mut self, bucket: Bucket) -> &mut Pacer {
        match bucket {
            Bucket::Resolvers => &mut self.resolvers,
            Bucket::Api => &mut self.api,
        }
    }

    /// Books requests of several buckets for one instant, the earliest every one allows, so
    /// that none is spent long after the instant it was booked for. Asks for nothing are
    /// skipped.
    pub fn book_together(&mut self, asks: &[(Bucket, u32)], now: Instant) -> Instant {
        let asks: Vec<(Bucket, u32)> = asks.iter().copied().filter(|&(_, n)| n > 0).collect();
        let at = asks
            .iter()
            .map(|&(bucket, n)| self.pacer(bucket).earliest(n, now))
            .max()
            .unwrap_or(now);
        for &(bucket, n) in &asks {
            self.pacer(bucket).book_from(n, at, now);
        }
        at
    }

    /// Every bucket's status as of `now`.
    pub fn status(&self, now: Instant) -> Vec<BucketStatus> {
        vec![
            self.resolvers.status(Bucket::Resolvers, now),
            self.api.status(Bucket::Api, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u32, seconds: u64) -> Quota {
        Quota {
            requests,
            window: Duration::from_secs(seconds),
        }
    }

    /// The most grants in any interval `(t - window, t]`, over the booked instants.
    fn most_in_any_window(booked: &[(Instant, u32)], window: Duration) -> u64 {
        booked
            .iter()
            .map(|&(end, _)| {
                booked
                    .iter()
                    .filter(|&&(t, _)| t <= end && t + window > end)
                    .map(|&(_, c)| u64::from(c))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_interval_of_the_window_holds_more_than_the_quota() {
        let start = Instant::now();
        let mut pacer = Pacer::new(quota(10, 60), Duration::ZERO);
        let mut booked = Vec::new();
        // Uneven asks at uneven times, some in bursts.
        let mut now = start;
        for i in 0..200u64 {
            now += Duration::from_millis((i * 7919) % 3000);
            let n = (i % 4) as u32 + 1;
            let (at, got) = pacer.book(n, now);
            assert_eq!(got, n);
            assert!(at >= now);
            if let Some(&(last, _)) = booked.last() {
                assert!(at >= last, "first come, first served");
            }
            booked.push((at, got));
        }
        assert_eq!(most_in_any_window(&booked, Duration::from_secs(60)), 10);
        assert!(pacer.status(Bucket::Api, now).waited_seconds > 0.0);
    }

    #[test]
    fn a_full_window_books_the_next_grant_when_the_oldest_leaves_it() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(quota(3, 10), Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(pacer.book(1, t0), (t0, 1));
        }
        // The span is the window plus the slack.
        assert_eq!(pacer.book(1, t0).0, t0 + Duration::from_secs(11));
        // Later asks queue behind it, never before.
        let (at, _) = pacer.book(1, t0 + Duration::from_secs(1));
        assert_eq!(at, t0 + Duration::from_secs(11));
        let status = pacer.status(Bucket::Resolvers, t0);
        assert_eq!(status.granted, 5);
        assert_eq!(status.granted_in_window, 3);
        assert!((status.waited_seconds - 21.0).abs() < 1e-9, "{status:?}");
    }

    #[test]
    fn what_the_hub_reports_lowers_the_grants_until_its_reset() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(quota(100, 300), Duration::ZERO);
        // Someone else spent most of the Hub's window: 2 remain, reset in 40 s.
        pacer.observe(
            HubWindow {
                remaining: 2,
                resets_in: Duration::from_secs(40),
            },
            t0,
        );
        assert_eq!(pacer.book(2, t0).0, t0);
        assert_eq!(pacer.book(1, t0).0, t0 + Duration::from_secs(40));
        // A later answer of the same window can only lower the count, and an answer from
        // the window before is ignored.
        pacer.observe(
            HubWindow {
                remaining: 50,
                resets_in: Duration::from_secs(339),
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!(pacer.book(1, t0).0, t0 + Duration::from_secs(40));
    }

    #[test]
    fn a_429_stops_every_grant_until_the_reset_it_names() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(quota(1000, 300), Duration::ZERO);
        assert_eq!(pacer.book(1, t0).0, t0);
        pacer.exhausted(Duration::from_secs(17), t0);
        let resumes = t0 + Duration::from_secs(17);
        assert_eq!(pacer.book(5, t0 + Duration::from_secs(2)).0, resumes);
        let status = pacer.status(Bucket::Resolvers, t0 + Duration::from_secs(2));
        assert_eq!(status.throttled, 1);
        assert_eq!(status.booked_ahead_seconds, 15.0);
        // After the reset the sliding window alone decides again.
        assert_eq!(pacer.book(1, resumes).0, resumes);
    }

    #[test]
    fn asks_of_several_buckets_are_booked_for_one_instant() {
        let t0 = Instant::now();
        let quotas = Quotas {
            resolvers: quota(100, 60),
            api: quota(1, 60),
        };
        let mut budgets = Budgets::new(quotas, Duration::ZERO);
        assert_eq!(budgets.pacer(Bucket::Api).book(1, t0).0, t0);
        // The API bucket is spent for a minute: the resolvers wait with it.
        let at = budgets.book_together(&[(Bucket::Resolvers, 2), (Bucket::Api, 1)], t0);
        assert_eq!(at, t0 + Duration::from_secs(60));
        let status = budgets.status(t0);
        assert_eq!(status[0].booked_ahead_seconds, 60.0);
        assert_eq!(status[0].granted, 2);
        assert_eq!(status[1].granted, 2);
        // Only resolvers asked for: the API bucket is not touched.
        budgets.book_together(&[(Bucket::Resolvers, 1), (Bucket::Api, 0)], t0);
        assert_eq!(budgets.status(t0)[1].granted, 2);
    }

    #[test]
    fn names_parse_back() {
        for bucket in Bucket::ALL {
            assert_eq!(bucket.as_str().parse::<Bucket>(), Ok(bucket));
        }
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
        }
        assert!("gold".parse::<Tier>().is_err());
        assert_eq!(Tier::default().quotas().resolvers.requests, 5_000);
        assert_eq!(
            Bucket::of_path("/api/models/a/b/paths-info/main"),
            Some(Bucket::Api)
        );
        assert_eq!(
            Bucket::of_path("/a/b/resolve/main/config.json"),
            Some(Bucket::Resolvers)
        );
        assert_eq!(Bucket::of_path("/blobs/abc"), None);
        assert_eq!(
            Bucket::of_path("/api/resolve-cache/models/a/b/c/config.json"),
            Some(Bucket::Resolvers)
        );
    }
}
