//! What a revision of a checkpoint really serves, without downloading its weights: which
//! weight files it offers (its listing of the names [`choose_weight_files`] looks at, one
//! paths-info call), the commit it points at and the content hash of those files, as the
//! Hub reports them on the resolve answer (the LFS sha256 in `X-Linked-Etag`, or `ETag`
//! where the Hub does not redirect). Branch names are not always what they say: revisions
//! serving identical weights share a hash. Both formats are hashed alike, so a `.bin` step
//! and a safetensors step never share one.
//!
//! The requests go through the same transport as fetches, paced by the budget the resolver
//! is given: the coordinator's, which its workers spend from too.
//!
//! [`choose_weight_files`]: neuromfa_common::checkpoint::choose_weight_files

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use neuromfa_common::checkpoint::{
    parse_shard_index, RevisionWeights, WeightFileInfo, WeightFiles, WeightFormat,
};

use crate::budget::{Budget, LocalBudget};
use crate::client::{hub_base_url, HubSettings};
use crate::error::{FetchError, Names};
use crate::fetch::DEFAULT_STALL_TIMEOUT;
use crate::hashing::{hex, is_commit_hex};
use crate::listing::list_weight_files;
use crate::transport::{Scope, Transport};

/// The largest shard index accepted.
const MAX_INDEX: u64 = 64 << 20;

/// One revision, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedRevision {
    pub revision: String,
    pub commit: String,
    /// The format of the weight files chosen from the revision's listing.
    pub format: WeightFormat,
    /// sha256 of the weights: the single file's own LFS sha256, or for a sharded
    /// checkpoint the sha256 of its sorted `name:sha256` lines (either format).
    pub weights_sha256: String,
    /// What workers are handed with a lease of it: the weight files chosen, each file
    /// with its size and sha256.
    pub weights: RevisionWeights,
}

/// Resolves revisions with resolve requests that do not follow the redirect (and one small
/// GET for a shard index).
pub struct Resolver {
    transport: Transport,
    endpoint: String,
}

impl Resolver {
    /// A resolver paced by a budget of its own at a free account's quotas.
    pub fn new(settings: &HubSettings) -> Result<Self, FetchError> {
        Self::with_budget(settings, Arc::new(LocalBudget::default()))
    }

    /// A resolver paced by `budget`.
    pub fn with_budget(
        settings: &HubSettings,
        budget: Arc<dyn Budget>,
    ) -> Result<Self, FetchError> {
        let setup = |detail: String| FetchError::Setup { detail };
        let endpoint = settings.resolved_endpoint();
        let base_url = hub_base_url(&endpoint).map_err(setup)?;
        let transport = Transport::new(
            base_url,
            settings.resolved_token(),
            budget,
            DEFAULT_STALL_TIMEOUT,
        )
        .map_err(setup)?;
        Ok(Resolver {
            transport,
            endpoint,
        })
    }

    /// Resolves `repo` at `revision` to its weights' format, commit and hash.
    pub async fn resolve(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<ResolvedRevision, FetchError> {
        let scope = Scope::new(Names::new(repo, revision, &self.endpoint));
        let (weights, _) = list_weight_files(&self.transport, &scope, revision).await?;
        let entry = weights.entry_file();
        let resolution = self.transport.resolve(&scope, revision, entry).await?;
        let commit = resolution
            .commit
            .filter(|c| is_commit_hex(c))
            .ok_or_else(|| FetchError::Hub {
                at: scope.names.at(entry),
                status: None,
                detail: "the resolve answer names no commit (X-Repo-Commit)".to_string(),
            })?;
        let files = if weights.sharded {
            // Pin the shards to the index's commit so a moving branch cannot mix commits.
            let index = self
                .transport
                .get_small(&scope, &commit, entry, MAX_INDEX)
                .await?;
            let text = String::from_utf8_lossy(&index.bytes);
            let weight_map = parse_shard_index(&text).map_err(|e| scope.names.invalid(entry, e))?;
            let mut shards: Vec<String> = weight_map.into_values().collect();
            shards.sort_unstable();
            shards.dedup();
            let mut files = Vec::with_capacity(shards.len());
            for shard in shards {
                let shard_resolution = self.transport.resolve(&scope, &commit, &shard).await?;
                files.push(WeightFileInfo {
                    name: shard,
                    size: shard_resolution.size,
                    sha256: shard_resolution.etag,
                });
            }
            files
        } else {
            vec![WeightFileInfo {
                name: entry.to_string(),
                size: resolution.size,
                sha256: resolution.etag,
            }]
        };
        Ok(ResolvedRevision {
            revision: revision.to_string(),
            commit: commit.clone(),
            format: weights.format,
            weights_sha256: weights_sha256(weights, &files),
            weights: RevisionWeights {
                commit,
                weights,
                files,
            },
        })
    }
}

/// The hash of a checkpoint's weights: the single file's own sha256, or for a sharded one
/// the sha256 of its sorted `name:sha256` lines.
fn weights_sha256(weights: WeightFiles, files: &[WeightFileInfo]) -> String {
    match (weights.sharded, files) {
        (false, [single]) => single.sha256.clone(),
        _ => {
            let mut hasher = Sha256::new();
            for file in files {
                hasher.update(format!("{}:{}\n", file.name, file.sha256).as_bytes());
            }
            hex(&hasher.finalize())
        }
    }
}
