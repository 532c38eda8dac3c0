//! What a revision of a checkpoint really serves, without downloading its weights: which
//! weight files it offers (its listing of the names [`choose_weight_files`] looks at, one
//! paths-info call), the commit it points at and the content hash of those files, as the
//! Hub reports them (the LFS sha256 in `X-Linked-Etag`, or `ETag` where the Hub does not
//! redirect). Branch names are not always what they say: revisions serving identical weights
//! share a hash. Both formats are hashed alike, so a `.bin` step and a safetensors step never
//! share one.

use std::time::Duration;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use neuromfa_common::checkpoint::{
    choose_weight_files, parse_shard_index, weight_file_names, WeightFiles, WeightFormat,
};

use crate::client::{hub_base_url, is_loopback, paths_info_url, resolve_url, HubSettings};
use crate::hashing::hex;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{repo} at {revision}: {detail}")]
    Failed {
        repo: String,
        revision: String,
        detail: String,
        transient: bool,
    },
    #[error("cannot set up the Hub client: {0}")]
    Setup(String),
}

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
    pub files: Vec<(String, String)>,
}

/// Resolves revisions with HEAD requests (and one small GET for a shard index).
pub struct Resolver {
    http: reqwest::Client,
    base_url: reqwest::Url,
    token: Option<String>,
}

impl Resolver {
    pub fn new(settings: &HubSettings) -> Result<Self, ResolveError> {
        let endpoint = settings.resolved_endpoint();
        let token = settings.resolved_token();
        let base_url = hub_base_url(&endpoint).map_err(ResolveError::Setup)?;
        let loopback = is_loopback(&base_url);
        let mut http = reqwest::Client::builder()
            // The Hub answers LFS files with a redirect whose headers carry the hash;
            // following it would lose them.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(60));
        if loopback {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            token,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> reqwest::RequestBuilder {
        let url = resolve_url(&self.base_url, repo, revision, file);
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// `(commit, sha256)` of one file; `None` when the file does not exist.
    async fn head(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<Option<(String, String)>, ResolveError> {
        let failed = |detail: String, transient: bool| ResolveError::Failed {
            repo: repo.to_string(),
            revision: revision.to_string(),
            detail,
            transient,
        };
        let response = self
            .request(reqwest::Method::HEAD, repo, revision, file)
            .send()
            .await
            .map_err(|e| failed(format!("HEAD {file}: {e}"), true))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !(status.is_success() || status.is_redirection()) {
            return Err(failed(
                format!("HEAD {file}: HTTP {status}"),
                status.is_server_error(),
            ));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_string())
        };
        let commit = header("x-repo-commit")
            .ok_or_else(|| failed(format!("HEAD {file}: no X-Repo-Commit"), false))?;
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .and_then(|e| crate::headers::etag(&e))
            .ok_or_else(|| failed(format!("HEAD {file}: no usable ETag"), false))?;
        Ok(Some((commit, etag)))
    }

    /// Which weight files `revision` offers: the listing of the names
    /// [`choose_weight_files`] looks at, and its choice.
    async fn weight_files(&self, repo: &str, revision: &str) -> Result<WeightFiles, ResolveError> {
        let failed = |detail: String, transient: bool| ResolveError::Failed {
            repo: repo.to_string(),
            revision: revision.to_string(),
            detail,
            transient,
        };
        let mut request = self
            .http
            .post(paths_info_url(&self.base_url, repo, revision))
            .json(&serde_json::json!({ "paths": WeightFiles::candidates() }));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| failed(format!("listing the weight files: {e}"), true))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(failed(
                "the revision (or the repository) does not exist".to_string(),
                false,
            ));
        }
        if !status.is_success() {
            return Err(failed(
                format!("listing the weight files: HTTP {status}"),
                status.is_server_error(),
            ));
        }
        #[derive(Deserialize)]
        struct Listed {
            #[serde(rename = "type")]
            kind: String,
            path: String,
        }
        let listed: Vec<Listed> = response
            .json()
            .await
            .map_err(|e| failed(format!("the listing is not JSON: {e}"), false))?;
        let names: Vec<&str> = listed
            .iter()
            .filter(|l| l.kind == "file")
            .map(|l| l.path.as_str())
            .collect();
        choose_weight_files(&names).ok_or_else(|| {
            failed(
                format!(
                    "no weight files: the revision has none of {}",
                    weight_file_names()
                ),
                false,
            )
        })
    }

    /// Resolves `repo` at `revision` to its weights' format, commit and hash.
    pub async fn resolve(
        &self,
        repo: &str,
        revision: &str,
    ) -> Result<ResolvedRevision, ResolveError> {
        let failed = |detail: String| ResolveError::Failed {
            repo: repo.to_string(),
            revision: revision.to_string(),
            detail,
            transient: false,
        };
        let weights = self.weight_files(repo, revision).await?;
        let entry = weights.entry_file();
        let Some((commit, sha)) = self.head(repo, revision, entry).await? else {
            return Err(failed(format!("{entry} is listed but cannot be found")));
        };
        if !weights.sharded {
            return Ok(ResolvedRevision {
                revision: revision.to_string(),
                commit,
                format: weights.format,
                weights_sha256: sha.clone(),
                files: vec![(entry.to_string(), sha)],
            });
        }
        // Pin the shards to the index's commit so a moving branch cannot mix commits.
        let index = self
            .request(reqwest::Method::GET, repo, &commit, entry)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(format!("GET {entry}: {e}")))?
            .text()
            .await
            .map_err(|e| failed(format!("GET {entry}: {e}")))?;
        let weight_map = parse_shard_index(&index).map_err(|e| failed(format!("{entry}: {e}")))?;
        let shards: BTreeSet<String> = weight_map.into_values().collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let (_, sha) = self
                .head(repo, &commit, &shard)
                .await?
                .ok_or_else(|| failed(format!("shard {shard} named by the index is missing")))?;
            files.push((shard, sha));
        }
        Ok(ResolvedRevision {
            revision: revision.to_string(),
            commit,
            format: weights.format,
            weights_sha256: shards_sha256(&files),
            files,
        })
    }
}

/// The hash of a sharded checkpoint: sha256 of its sorted `name:sha256` lines.
fn shards_sha256(files: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    for (name, sha) in files {
        hasher.update(format!("{name}:{sha}\n").as_bytes());
    }
    hex(&hasher.finalize())
}

impl ResolveError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ResolveError::Failed {
                transient: true,
                ..
            }
        )
    }
}
