//! The Hub's rate limits: Resolver and API requests counted in fixed windows, one budget
//! for the whole server (one IP address or token: a cluster shares it), reported on every
//! answer as the Hub reports it.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::lock;
use crate::profile::Quota;

pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The buckets requests are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    Resolvers,
    Api,
}

impl Bucket {
    /// The bucket a request path counts against: any path holding `/resolve/` is a
    /// Resolver request, and so (an assumption: the Hub's documentation does not say) is
    /// the resolve-cache URL a `/resolve/` of a file in git redirects to; anything else is
    /// an API request.
    pub(crate) fn of_path(path: &str) -> Bucket {
        if path.contains("/resolve/") || path.starts_with("/api/resolve-cache/") {
            Bucket::Resolvers
        } else {
            Bucket::Api
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bucket::Resolvers => "resolvers",
            Bucket::Api => "api",
        }
    }

    fn index(self) -> usize {
        match self {
            Bucket::Resolvers => 0,
            Bucket::Api => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    index: u64,
    used: u64,
}

pub(crate) struct Budget {
    quotas: [Quota; 2],
    windows: Mutex<[Window; 2]>,
}

/// One request's standing in its bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    bucket: Bucket,
    quota: Quota,
    /// Requests left in the window after this one.
    pub(crate) remaining: u64,
    /// Until the window resets.
    pub(crate) reset_in: Duration,
    /// The window was spent: this request is refused.
    pub(crate) limited: bool,
}

impl Budget {
    pub(crate) fn new(resolvers: Quota, api: Quota) -> Self {
        Budget {
            quotas: [resolvers, api],
            windows: Mutex::new([Window::default(); 2]),
        }
    }

    /// Counts a request at `now` (time since the server started) against `bucket`.
    pub(crate) fn spend(&self, bucket: Bucket, now: Duration) -> Standing {
        let quota = self.quotas[bucket.index()];
        let window_ms = quota.window.as_millis().max(1);
        let index = (now.as_millis() / window_ms) as u64;
        let reset_in =
            Duration::from_millis(((index as u128 + 1) * window_ms - now.as_millis()) as u64);
        let mut windows = lock(&self.windows);
        let window = &mut windows[bucket.index()];
        if window.index != index {
            *window = Window { index, used: 0 };
        }
        let limited = window.used >= quota.requests;
        if !limited {
            window.used += 1;
        }
        Standing {
            bucket,
            quota,
            remaining: quota.requests - window.used,
            reset_in,
            limited,
        }
    }
}

impl Standing {
    /// Whole seconds until the window resets, rounded up (a client waiting this long
    /// finds a new window).
    pub(crate) fn reset_secs(&self) -> u64 {
        self.reset_in.as_millis().div_ceil(1000) as u64
    }

    /// `RateLimit` and `RateLimit-Policy`, as the Hub sends them.
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap) {
        let name = self.bucket.name();
        let limit = format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs());
        let window = self.quota.window.as_millis().div_ceil(1000);
        let policy = format!(
            "\"fixed window\";\"{name}\";q={};w={window}",
            self.quota.requests
        );
        for (header, value) in [(RATELIMIT, limit), (RATELIMIT_POLICY, policy)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u64, secs: u64) -> Quota {
        Quota {
            requests,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn fixed_windows_refuse_past_the_quota_and_reset_on_the_boundary() {
        let budget = Budget::new(quota(2, 10), quota(1, 300));
        let at = Duration::from_secs;
        let first = budget.spend(Bucket::Resolvers, at(1));
        assert_eq!((first.remaining, first.limited), (1, false));
        assert_eq!(first.reset_secs(), 9);
        assert!(!budget.spend(Bucket::Resolvers, at(2)).limited);
        let third = budget.spend(Bucket::Resolvers, Duration::from_millis(9500));
        assert!(third.limited);
        assert_eq!((third.remaining, third.reset_secs()), (0, 1));
        // The other bucket is counted apart.
        assert!(!budget.spend(Bucket::Api, at(3)).limited);
        assert!(budget.spend(Bucket::Api, at(4)).limited);
        // A new window.
        let next = budget.spend(Bucket::Resolvers, at(10));
        assert_eq!(
            (next.remaining, next.limited, next.reset_secs()),
            (1, false, 10)
        );

        let mut headers = HeaderMap::new();
        next.write_headers(&mut headers);
        assert_eq!(headers[RATELIMIT], "\"resolvers\";r=1;t=10");
        assert_eq!(
            headers[RATELIMIT_POLICY],
            "\"fixed window\";\"resolvers\";q=2;w=10"
        );
    }

    #[test]
    fn paths_fall_in_their_buckets() {
        assert_eq!(
            Bucket::of_path("/EleutherAI/x/resolve/main/config.json"),
            Bucket::Resolvers
        );
        assert_eq!(
            Bucket::of_path("/api/models/EleutherAI/x/paths-info/main"),
            Bucket::Api
        );
        assert_eq!(
            Bucket::of_path("/api/models/a/b/xet-read-token/main"),
            Bucket::Api
        );
        assert_eq!(
            Bucket::of_path("/api/resolve-cache/models/a/b/0123/config.json"),
            Bucket::Resolvers
        );
    }
}
