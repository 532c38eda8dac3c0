//! The fetch stage: a lease's weights from the Hub, whole into the HF cache or only the byte
//! ranges its seeds read (as the sweep's fetch mode and the science's read plan decide, in
//! `neuromfa-hub`), paced by the cluster's budget of Hub requests, and the bounded cache of
//! whole downloads.

use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use neuromfa_common::checkpoint::FetchMode;
use neuromfa_hub::cache::CheckpointCache;
use neuromfa_hub::fetch::{FetchedCheckpoint, Fetcher};
use neuromfa_hub::ranges::{fetch_for_seeds_with, FetchedWeights, RangeOptions};
use neuromfa_hub::{FetchError, HubSettings};
use neuromfa_proto as proto;

use crate::budget::RemoteBudget;
use crate::coordinator::Coordinator;
use crate::lease::Lease;
use crate::WorkerOptions;

/// The Hub client, how to fetch, and what this worker keeps in its cache.
pub(crate) struct FetchStage {
    fetcher: Fetcher,
    /// The coordinator's grants of Hub requests, which the fetcher paces by.
    budget: Arc<RemoteBudget>,
    options: RangeOptions,
    cache: CheckpointCache,
    /// The whole checkpoint the current lease works on, if it was downloaded whole.
    current: Option<FetchedCheckpoint>,
}

impl FetchStage {
    /// The Hub the worker's flags name, else the one the coordinator announced; the fetch
    /// mode and merge gap likewise.
    pub(crate) fn new(
        options: &WorkerOptions,
        registration: &proto::RegisterReply,
        coordinator: &Coordinator,
    ) -> Result<Self> {
        let hub = HubSettings {
            endpoint: options
                .hub_endpoint
                .clone()
                .or_else(|| Some(registration.hub_endpoint.clone()).filter(|e| !e.is_empty())),
            token: options.hub_token.clone(),
            cache_dir: options.cache_dir.clone(),
        };
        let budget = Arc::new(RemoteBudget::new(coordinator.clone()));
        let fetcher = Fetcher::new(hub)
            .and_then(|f| f.with_budget(budget.clone()))
            .context("setting up the Hub client")?;
        let fetch_options = fetch_options(options, registration)?;
        tracing::info!(
            fetch_mode = %fetch_options.mode,
            merge_gap = ?fetch_options.merge_gap,
            "fetch settings"
        );
        Ok(FetchStage {
            fetcher,
            budget,
            options: fetch_options,
            cache: CheckpointCache::new(options.cache_max_bytes),
            current: None,
        })
    }

    /// What the lease's seeds read, starting from what the coordinator resolved of the
    /// checkpoint and spending the Hub requests the lease was granted.
    pub(crate) async fn fetch(&mut self, lease: &Lease) -> Result<FetchedWeights, FetchError> {
        let checkpoint = &lease.checkpoint;
        if let Some(grant) = &lease.grant {
            self.budget.deposit(grant);
        }
        let options = RangeOptions {
            known: lease.resolved.clone(),
            ..self.options.clone()
        };
        let fetched = fetch_for_seeds_with(
            &self.fetcher,
            &checkpoint.model,
            &checkpoint.revision,
            &lease.params,
            &lease.seeds(),
            &options,
        )
        .await?;
        self.current = match &fetched {
            FetchedWeights::Full(whole) => {
                self.cache.note_fetched(whole);
                Some(whole.clone())
            }
            FetchedWeights::Ranged(_) => None,
        };
        let metrics = fetched.metrics();
        tracing::info!(
            mode = %metrics.mode,
            bytes = metrics.bytes_downloaded,
            file_bytes = metrics.file_bytes,
            requests = metrics.requests,
            fetch_ms = metrics.elapsed.as_millis() as u64,
            "checkpoint ready"
        );
        Ok(fetched)
    }

    /// Every seed of the last fetch is done here: a whole checkpoint may be evicted.
    pub(crate) fn finished(&mut self) {
        if let Some(whole) = self.current.take() {
            self.cache.note_finished(&whole);
        }
    }

    /// Keeps the cache under its bound, finished checkpoints first out.
    pub(crate) fn evict_if_needed(&mut self) {
        self.cache.evict_if_needed();
    }
}

/// The worker's flags over what the coordinator announced, over the defaults.
fn fetch_options(
    options: &WorkerOptions,
    registration: &proto::RegisterReply,
) -> Result<RangeOptions> {
    let announced = if registration.fetch_mode.is_empty() {
        FetchMode::default()
    } else {
        registration.fetch_mode.parse().map_err(|e: String| {
            anyhow!("the coordinator announced a fetch mode this worker cannot use: {e}")
        })?
    };
    let defaults = RangeOptions::default();
    Ok(RangeOptions {
        mode: options.fetch_mode.unwrap_or(announced),
        merge_gap: options
            .merge_gap
            .or((registration.merge_gap > 0).then_some(registration.merge_gap)),
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(fetch_mode: &str, merge_gap: u64) -> proto::RegisterReply {
        proto::RegisterReply {
            fetch_mode: fetch_mode.to_string(),
            merge_gap,
            ..proto::RegisterReply::default()
        }
    }

    #[test]
    fn worker_flags_override_the_sweep_which_overrides_the_defaults() {
        let mut options = WorkerOptions::new("http://127.0.0.1:1", "t");
        let defaults = RangeOptions::default();

        let chosen = fetch_options(&options, &registration("", 0)).unwrap();
        assert_eq!(
            (chosen.mode, chosen.merge_gap),
            (defaults.mode, defaults.merge_gap)
        );

        let chosen = fetch_options(&options, &registration("ranges", 1024)).unwrap();
        assert_eq!(
            (chosen.mode, chosen.merge_gap),
            (FetchMode::Ranges, Some(1024))
        );

        options.fetch_mode = Some(FetchMode::Full);
        options.merge_gap = Some(99);
        let chosen = fetch_options(&options, &registration("ranges", 1024)).unwrap();
        assert_eq!((chosen.mode, chosen.merge_gap), (FetchMode::Full, Some(99)));

        let refused = fetch_options(&options, &registration("sideways", 0)).unwrap_err();
        assert!(refused.to_string().contains("sideways"), "{refused}");
    }
}
