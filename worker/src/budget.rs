//! The worker's side of the cluster's Hub budget: grants from the coordinator, spent soon
//! after the instant they were granted for. A lease carries what fetching its checkpoint
//! takes, so the worker asks for more only when something went wrong (a retry, a renewed
//! signature, a fallback to the whole file); what the Hub's answers say of its windows
//! goes back with the next ask, and a `429` at once, so that every worker waits for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use neuromfa_common::budget::GRANT_SLACK;
use neuromfa_hub::budget::{Bucket, Budget, BudgetFuture, HubWindow};
use neuromfa_proto as proto;

use crate::coordinator::Coordinator;

/// How long after its instant a grant is spent at most: the coordinator's slack, less a
/// margin for its reply's way here.
const SPEND_WITHIN: Duration = GRANT_SLACK.saturating_sub(Duration::from_secs(5));

/// Requests of one bucket granted, and when they may be sent.
#[derive(Debug, Clone, Copy)]
struct Held {
    left: u32,
    from: Instant,
    until: Instant,
}

/// The coordinator's grants, as a [`Budget`] the Hub client paces by.
pub(crate) struct RemoteBudget {
    coordinator: Coordinator,
    /// Per bucket, in [`Bucket::ALL`]'s order.
    held: Mutex<[Option<Held>; 2]>,
    /// What the Hub's answers said since the last ask.
    seen: Mutex<Vec<proto::HubWindowSeen>>,
}

fn slot(bucket: Bucket) -> usize {
    match bucket {
        Bucket::Resolvers => 0,
        Bucket::Api => 1,
    }
}

impl RemoteBudget {
    pub(crate) fn new(coordinator: Coordinator) -> Self {
        RemoteBudget {
            coordinator,
            held: Mutex::new([None; 2]),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Takes a grant (a lease's, or an ask's), in place of what is left of earlier ones.
    pub(crate) fn deposit(&self, grant: &proto::BudgetGrant) {
        let from = Instant::now() + Duration::from_millis(grant.wait_ms);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (bucket, granted) in [
            (Bucket::Resolvers, grant.resolvers),
            (Bucket::Api, grant.api),
        ] {
            if granted > 0 {
                held[slot(bucket)] = Some(Held {
                    left: granted,
                    from,
                    until: from + SPEND_WITHIN,
                });
            }
        }
    }

    /// `n` requests of `bucket` from what is held, if enough is and still may be spent:
    /// the instant they may be sent from.
    fn take(&self, bucket: Bucket, n: u32, now: Instant) -> Option<Instant> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let grant = held[slot(bucket)].as_mut()?;
        if grant.left < n || now >= grant.until {
            return None;
        }
        grant.left -= n;
        Some(grant.from)
    }

    fn drain_seen(&self) -> Vec<proto::HubWindowSeen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn ask(&self, resolvers: u32, api: u32) -> Result<Option<proto::BudgetGrant>, String> {
        let request = proto::BudgetRequest {
            worker_id: self.coordinator.worker_id().to_string(),
            resolvers,
            api,
            seen: self.drain_seen(),
        };
        let reply = self
            .coordinator
            .budget(request)
            .await
            .map_err(|e| format!("the coordinator granted no Hub requests: {e:#}"))?;
        Ok(reply.grant)
    }
}

impl Budget for RemoteBudget {
    fn acquire(&self, bucket: Bucket, n: u32) -> BudgetFuture<'_> {
        Box::pin(async move {
            loop {
                if let Some(from) = self.take(bucket, n, Instant::now()) {
                    tokio::time::sleep_until(from.into()).await;
                    return Ok(());
                }
                let (resolvers, api) = match bucket {
                    Bucket::Resolvers => (n, 0),
                    Bucket::Api => (0, n),
                };
                match self.ask(resolvers, api).await? {
                    Some(grant) => self.deposit(&grant),
                    None => return Err("the coordinator granted nothing".to_string()),
                }
            }
        })
    }

    fn observe(&self, bucket: Bucket, window: HubWindow) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Only the latest of each bucket matters.
        seen.retain(|s| s.bucket != bucket.as_str());
        seen.push(proto::HubWindowSeen {
            bucket: bucket.as_str().to_string(),
            remaining: window.remaining,
            resets_in_ms: window.resets_in.as_millis() as u64,
            exhausted: false,
        });
    }

    fn exhausted(&self, bucket: Bucket, resets_in: Duration) -> BudgetFuture<'_> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())[slot(bucket)] = None;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(proto::HubWindowSeen {
                bucket: bucket.as_str().to_string(),
                remaining: 0,
                resets_in_ms: resets_in.as_millis() as u64,
                exhausted: true,
            });
        // Told at once, so that every worker waits for the reset.
        Box::pin(async move { self.ask(0, 0).await.map(drop) })
    }
}
