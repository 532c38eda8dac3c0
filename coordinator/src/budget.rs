//! The cluster's budget of Hub requests. One token, or one address behind NAT, serves every
//! worker, so the coordinator owns the budget: its own resolution of revisions and every
//! worker's fetches spend from the same [`Budgets`], each bucket paced by a sliding window
//! (at most the quota in any interval of the window's length, whatever the Hub's
//! alignment), lowered by what the Hub's answers say of its windows (workers relay them)
//! and stopped by a `429` until its reset. A lease carries a grant for what fetching its
//! checkpoint takes, so a worker asks for more only when something goes wrong. Pure:
//! instants are passed in; the gRPC service holds the budgets.

use std::time::Instant;

use neuromfa_common::budget::{Bucket, Budgets, Quotas, GRANT_SLACK};
use neuromfa_common::checkpoint::RevisionWeights;

/// The budgets a cluster paces within `quotas`.
pub fn cluster_budgets(quotas: Quotas) -> Budgets {
    Budgets::new(quotas, GRANT_SLACK)
}

/// Requests of each metered bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub resolvers: u32,
    pub api: u32,
}

impl Needs {
    fn asks(self) -> [(Bucket, u32); 2] {
        [(Bucket::Resolvers, self.resolvers), (Bucket::Api, self.api)]
    }
}

/// Resolver requests a small file kept in git takes: the Hub redirects its resolve to where
/// it keeps such files (`/api/resolve-cache/…`), counted as a Resolver request too.
const SMALL_FILE: u32 = 2;

/// What fetching a leased checkpoint takes from the Hub's buckets when nothing goes wrong:
/// `config.json`, each weight file's resolve and the shard index; and, when the coordinator
/// has not resolved the checkpoint, the listing (API) and its single file's resolve.
pub fn lease_needs(resolved: Option<&RevisionWeights>) -> Needs {
    match resolved {
        Some(resolved) => Needs {
            resolvers: SMALL_FILE
                + resolved.files.len() as u32
                + SMALL_FILE * u32::from(resolved.weights.sharded),
            api: 0,
        },
        None => Needs {
            resolvers: SMALL_FILE + 1,
            api: 1,
        },
    }
}

/// Requests of each bucket that may be sent from an instant on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub needs: Needs,
    pub at: Instant,
}

/// Books `needs` for the earliest instant every bucket allows.
pub fn grant(budgets: &mut Budgets, needs: Needs, now: Instant) -> Grant {
    let at = budgets.book_together(&needs.asks(), now);
    Grant { needs, at }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use neuromfa_common::budget::Quota;
    use neuromfa_common::checkpoint::{WeightFileInfo, WeightFiles, WeightFormat};

    use super::*;

    fn resolved(shards: usize) -> RevisionWeights {
        RevisionWeights {
            commit: "c".repeat(40),
            weights: WeightFiles {
                format: WeightFormat::PytorchBin,
                sharded: shards > 1,
            },
            files: (0..shards)
                .map(|i| WeightFileInfo {
                    name: format!("pytorch_model-{i}.bin"),
                    size: 1,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }
    }

    #[test]
    fn a_lease_needs_its_configs_and_files_resolves_and_the_listing_when_not_resolved() {
        // config.json (its resolve and the resolve-cache it redirects to), the listing and
        // the single file's resolve.
        assert_eq!(
            lease_needs(None),
            Needs {
                resolvers: 3,
                api: 1
            }
        );
        assert_eq!(
            lease_needs(Some(&resolved(1))),
            Needs {
                resolvers: 3,
                api: 0
            }
        );
        // pythia-12b: config.json, the index (two each) and three shards.
        assert_eq!(
            lease_needs(Some(&resolved(3))),
            Needs {
                resolvers: 7,
                api: 0
            }
        );
    }

    #[test]
    fn grants_past_the_quota_wait_for_the_window_plus_the_slack() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut budgets = cluster_budgets(Quotas {
            resolvers: Quota {
                requests: 6,
                window,
            },
            api: Quota {
                requests: 1,
                window,
            },
        });
        let first = grant(&mut budgets, lease_needs(Some(&resolved(1))), t0);
        assert_eq!(first.at, t0);
        let second = grant(&mut budgets, lease_needs(Some(&resolved(1))), t0);
        assert_eq!(second.at, t0);
        let third = grant(&mut budgets, lease_needs(None), t0);
        assert_eq!(third.at, t0 + window + GRANT_SLACK);
    }
}
