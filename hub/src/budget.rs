//! What the Hub lets a client spend: the [`Budget`] every metered request is paced through,
//! a [`LocalBudget`] for a process on its own, and what the Hub's answers say of its windows
//! (`RateLimit`, `RateLimit-Policy`, `Retry-After`).
//!
//! A cluster shares one budget (one token, or one address behind NAT): the worker's budget
//! asks the coordinator, which paces every worker with the same [`Budgets`] its own
//! resolution spends from (see the `neuromfa` binary). This crate knows only the trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use neuromfa_common::budget::{Bucket, BucketStatus, Budgets, HubWindow, Quota, Quotas, Tier};

/// How late after its grant a request of a [`LocalBudget`] may go out: it is sent at once.
pub const LOCAL_SLACK: Duration = Duration::from_secs(1);

/// A future a [`Budget`] returns; an error says why no grant could be had (a coordinator
/// out of reach), and is transient.
pub type BudgetFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Paces the requests that count against the Hub's buckets.
pub trait Budget: Send + Sync {
    /// Resolves once `n` requests of `bucket` may be sent.
    fn acquire(&self, bucket: Bucket, n: u32) -> BudgetFuture<'_>;

    /// An answer said this of `bucket`'s current window.
    fn observe(&self, bucket: Bucket, window: HubWindow);

    /// An answer was `429`: `bucket` is spent until `resets_in` has passed. Everyone sharing
    /// the budget waits; the caller's next [`Budget::acquire`] does too.
    fn exhausted(&self, bucket: Bucket, resets_in: Duration) -> BudgetFuture<'_>;
}

/// A budget paced in this process: for a fetch or an audit on its own, and for the
/// coordinator's own requests (sharing its [`Budgets`] with what it grants workers).
#[derive(Clone)]
pub struct LocalBudget {
    budgets: Arc<Mutex<Budgets>>,
}

impl std::fmt::Debug for LocalBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBudget").finish_non_exhaustive()
    }
}

impl LocalBudget {
    /// Paces within `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self::shared(Arc::new(Mutex::new(Budgets::new(quotas, LOCAL_SLACK))))
    }

    /// Paces with `budgets`, which others book from too.
    pub fn shared(budgets: Arc<Mutex<Budgets>>) -> Self {
        LocalBudget { budgets }
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for LocalBudget {
    /// A free account's quotas, the Hub's default tier.
    fn default() -> Self {
        LocalBudget::new(Tier::default().quotas())
    }
}

impl Budget for LocalBudget {
    fn acquire(&self, bucket: Bucket, n: u32) -> BudgetFuture<'_> {
        Box::pin(async move {
            let mut left = n;
            while left > 0 {
                let (at, booked) = self.budgets().pacer(bucket).book(left, Instant::now());
                left -= booked;
                tokio::time::sleep_until(at.into()).await;
            }
            Ok(())
        })
    }

    fn observe(&self, bucket: Bucket, window: HubWindow) {
        self.budgets().pacer(bucket).observe(window, Instant::now());
    }

    fn exhausted(&self, bucket: Bucket, resets_in: Duration) -> BudgetFuture<'_> {
        self.budgets()
            .pacer(bucket)
            .exhausted(resets_in, Instant::now());
        Box::pin(async { Ok(()) })
    }
}

/// What an answer's `RateLimit` header says: the bucket and its window.
pub(crate) fn rate_limit(headers: &reqwest::header::HeaderMap) -> Option<(Bucket, HubWindow)> {
    crate::headers::rate_limit(headers.get("ratelimit")?.to_str().ok()?)
}

/// What an answer's `RateLimit-Policy` header says: the bucket and its quota.
pub(crate) fn rate_limit_policy(headers: &reqwest::header::HeaderMap) -> Option<(Bucket, Quota)> {
    crate::headers::rate_limit_policy(headers.get("ratelimit-policy")?.to_str().ok()?)
}

/// `Retry-After` in seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    crate::headers::retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_hubs_rate_limit_headers_are_read() {
        let h = headers(&[
            ("ratelimit", "\"resolvers\";r=4990;t=217"),
            (
                "ratelimit-policy",
                "\"fixed window\";\"resolvers\";q=5000;w=300",
            ),
            ("retry-after", "12"),
        ]);
        assert_eq!(
            rate_limit(&h),
            Some((
                Bucket::Resolvers,
                HubWindow {
                    remaining: 4990,
                    resets_in: Duration::from_secs(217)
                }
            ))
        );
        assert_eq!(
            rate_limit_policy(&h),
            Some((
                Bucket::Resolvers,
                Quota {
                    requests: 5000,
                    window: Duration::from_secs(300)
                }
            ))
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        let api = headers(&[("ratelimit", "\"api\"; r=0; t=3")]);
        assert_eq!(
            rate_limit(&api).map(|(b, w)| (b, w.remaining)),
            Some((Bucket::Api, 0))
        );
        for junk in ["", "\"pages\";r=1;t=1", "\"api\";r=x;t=1", "\"api\";t=1"] {
            let h = headers(&[("ratelimit", Box::leak(junk.to_string().into_boxed_str()))]);
            assert_eq!(rate_limit(&h), None, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn a_local_budget_holds_requests_past_its_quota_until_the_window_moves() {
        let budget = LocalBudget::new(Quotas {
            resolvers: Quota {
                requests: 2,
                window: Duration::from_millis(300),
            },
            api: Quota {
                requests: 100,
                window: Duration::from_secs(300),
            },
        });
        budget.acquire(Bucket::Resolvers, 2).await.unwrap();
        // The third waits for the first two to leave the window (and the slack).
        let third = budget.acquire(Bucket::Resolvers, 1);
        let held = tokio::time::timeout(Duration::from_millis(100), third).await;
        assert!(
            held.is_err(),
            "the third request was granted inside the window"
        );
        // The API bucket is paced apart.
        tokio::time::timeout(Duration::from_secs(5), budget.acquire(Bucket::Api, 3))
            .await
            .unwrap()
            .unwrap();
    }
}
