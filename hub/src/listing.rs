//! Which files of a revision a fetch reads: the weight files chosen from its listing
//! ([`choose_weight_files`]), the shard index when there is one, and each weight file
//! resolved once (its size, hash and location).
//!
//! The choice comes, cheapest first, from the coordinator's resolution handed over with a
//! lease; from the cache (the chosen entry file is there and every name preferred to it is
//! known absent at this commit: `.no_exist` markers, as `hf-hub` records a `404`); or from
//! one paths-info call for the four names the choice looks at.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use neuromfa_common::checkpoint::{
    choose_weight_files, parse_shard_index, weight_file_names, WeightFiles,
};

use crate::error::FetchError;
use crate::fetch::{FetchedFile, Session};
use crate::hashing::is_commit_hex;
use crate::transport::{RemoteFile, Scope, Transport};

/// One entry of a paths-info answer.
#[derive(serde::Deserialize)]
struct Listed {
    #[serde(rename = "type")]
    kind: String,
    path: String,
}

/// The files a paths-info answer (a JSON array of tree entries, as the Hub and its mirrors
/// give it) lists; folders are left out.
pub fn listed_files(answer: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let listed: Vec<Listed> = serde_json::from_slice(answer)?;
    Ok(listed
        .into_iter()
        .filter(|l| l.kind == "file")
        .map(|l| l.path)
        .collect())
}

/// A sharded checkpoint's index, in the cache.
pub(crate) struct ShardIndex {
    pub(crate) file: FetchedFile,
    /// Tensor name → shard file name.
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// The shard holding `tensor`.
    pub(crate) fn shard_of(&self, tensor: &str) -> Option<&str> {
        self.weight_map.get(tensor).map(String::as_str)
    }

    /// Shard file names, sorted and deduplicated.
    pub(crate) fn shards(&self) -> Vec<String> {
        let shards: BTreeSet<&String> = self.weight_map.values().collect();
        shards.into_iter().cloned().collect()
    }
}

/// The weight files `revision` offers first, from one paths-info call for the names the
/// choice looks at, and which of those names it has.
pub(crate) async fn list_weight_files(
    transport: &Transport,
    scope: &Scope,
    revision: &str,
) -> Result<(WeightFiles, Vec<String>), FetchError> {
    let present = transport
        .paths_info(scope, revision, &WeightFiles::candidates())
        .await?;
    let files = choose_weight_files(&present).ok_or_else(|| FetchError::FileNotFound {
        at: scope.names.at(&weight_file_names()),
    })?;
    Ok((files, present))
}

impl Session {
    /// Which weight files to read, chosen once per session.
    pub(crate) async fn weight_files(&mut self) -> Result<WeightFiles, FetchError> {
        if let Some(files) = self.weights {
            return Ok(files);
        }
        let files = match self.known.as_ref().map(|k| k.weights) {
            Some(files) => files,
            None => match self.weights_from_cache() {
                Some(files) => files,
                None => self.list_weight_files().await?,
            },
        };
        self.weights = Some(files);
        Ok(files)
    }

    /// The choice the cache answers without a request, if it does.
    fn weights_from_cache(&self) -> Option<WeightFiles> {
        let commit = self.commit();
        if !is_commit_hex(commit) {
            return None;
        }
        for files in WeightFiles::ALL {
            let name = files.entry_file();
            if self.is_cached(name) {
                return Some(files);
            }
            if !self.cache.known_absent(commit, name) {
                return None;
            }
        }
        None
    }

    /// Lists the candidates at the commit and chooses; records the absent ones.
    async fn list_weight_files(&mut self) -> Result<WeightFiles, FetchError> {
        let (files, present) =
            list_weight_files(&self.transport, &self.scope, self.commit()).await?;
        if is_commit_hex(self.commit()) {
            for absent in WeightFiles::candidates()
                .iter()
                .filter(|c| !present.iter().any(|p| p == *c))
            {
                self.cache.mark_absent(self.commit(), absent);
            }
        }
        tracing::debug!(
            repo = self.names().repo(),
            revision = self.names().revision(),
            format = %files.format,
            sharded = files.sharded,
            "weight files chosen"
        );
        Ok(files)
    }

    /// The shard index (into the cache) if the chosen weights are sharded, `None` if they
    /// are a single file. Shard names are checked: none may climb out of the snapshot.
    pub(crate) async fn shard_index(&mut self) -> Result<Option<ShardIndex>, FetchError> {
        let files = self.weight_files().await?;
        if !files.sharded {
            return Ok(None);
        }
        let index_name = files.entry_file();
        let file = match self.cached_file(index_name) {
            Some(file) => file,
            None => {
                let commit = self.commit().to_string();
                self.fetch_small(index_name, &commit).await?.1
            }
        };
        let path = self.dir().join(index_name);
        let names = self.names();
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| names.cache(index_name, &path, &e))?;
        let weight_map =
            parse_shard_index(&text).map_err(|detail| names.invalid(index_name, detail))?;
        Ok(Some(ShardIndex { file, weight_map }))
    }

    /// `name` at the commit as its resolve answers: resolved once per session.
    pub(crate) async fn remote_file(&mut self, name: &str) -> Result<Arc<RemoteFile>, FetchError> {
        Ok(self.remote_files(&[name.to_string()]).await?.remove(0))
    }

    /// Each of `names` at the commit, resolved (those not resolved yet, all at once). A file
    /// the coordinator saw with another size or hash is an error: the commit is the same.
    pub(crate) async fn remote_files(
        &mut self,
        names: &[String],
    ) -> Result<Vec<Arc<RemoteFile>>, FetchError> {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !self.resolved.contains_key(*n))
            .collect();
        let commit = self.commit().to_string();
        let resolving = missing
            .iter()
            .map(|name| self.transport.resolve(&self.scope, &commit, name));
        let resolutions = futures_util::future::join_all(resolving).await;
        for (name, resolution) in missing.into_iter().zip(resolutions) {
            let resolution = resolution?;
            let known = self
                .known
                .as_ref()
                .and_then(|k| k.files.iter().find(|f| &f.name == name));
            if let Some(known) = known.filter(|k| {
                k.size != resolution.size || !k.sha256.eq_ignore_ascii_case(&resolution.etag)
            }) {
                return Err(FetchError::Hub {
                    at: self.names().at(name),
                    status: None,
                    detail: format!(
                        "at commit {commit} the Hub now reports {} bytes with ETag {}, where the \
                         coordinator resolved {} bytes with sha256 {}",
                        resolution.size, resolution.etag, known.size, known.sha256
                    ),
                });
            }
            let remote = Arc::new(RemoteFile::new(name, &commit, resolution));
            self.resolved.insert(name.clone(), remote);
        }
        Ok(names
            .iter()
            .filter_map(|n| self.resolved.get(n).cloned())
            .collect())
    }
}
