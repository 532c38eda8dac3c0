//! The API routes `hf-hub` asks before or instead of downloads: model info, the file tree
//! and paths-info, with LFS entries carrying each file's sha256 and size.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use neuromfa_hub::hashing::hex;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{blocking, HubError};
use crate::repo::{valid_path, FileEntry, RevisionView};
use crate::Shared;

pub(crate) async fn model_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, HubError> {
    blocking(move || {
        let repo_dir = st.repo_dir(&org, &name)?;
        // The Hub reports the default branch; a tree without `main` has no sha to give.
        let view = if repo_dir.join("main").is_dir() {
            Some(st.describe(&org, &name, "main")?)
        } else {
            None
        };
        Ok(Json(info_json(&org, &name, view.as_ref())))
    })
    .await
}

pub(crate) async fn model_info_at_revision(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
) -> Result<Json<Value>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        Ok(Json(info_json(&org, &name, Some(&view))))
    })
    .await
}

fn info_json(org: &str, name: &str, view: Option<&RevisionView>) -> Value {
    let id = format!("{org}/{name}");
    let mut info = json!({
        "id": id,
        "modelId": id,
        "private": false,
        "gated": false,
        "disabled": false,
        "tags": [],
        "siblings": [],
    });
    if let Some(view) = view {
        info["sha"] = json!(view.commit);
        info["siblings"] = view
            .files
            .iter()
            .map(|f| json!({ "rfilename": f.path, "size": f.size }))
            .collect();
    }
    info
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TreeQuery {
    recursive: Option<String>,
}

impl TreeQuery {
    fn recursive(&self) -> bool {
        matches!(self.recursive.as_deref(), Some("true" | "1" | "True"))
    }
}

pub(crate) async fn tree_root(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    Query(q): Query<TreeQuery>,
) -> Result<Json<Vec<Value>>, HubError> {
    tree(st, org, name, rev, String::new(), q.recursive()).await
}

pub(crate) async fn tree_path(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    Query(q): Query<TreeQuery>,
) -> Result<Json<Vec<Value>>, HubError> {
    tree(st, org, name, rev, path, q.recursive()).await
}

async fn tree(
    st: Arc<Shared>,
    org: String,
    name: String,
    rev: String,
    path: String,
    recursive: bool,
) -> Result<Json<Vec<Value>>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        let path = path.trim_matches('/').to_string();
        let is_dir = path.is_empty() || (valid_path(&path) && view.is_dir(&path));
        if !is_dir {
            return Err(HubError::EntryNotFound {
                message: format!("Entry not found: {path} is not a directory of {org}/{name}"),
                commit: Some(view.commit.clone()),
            });
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        // Keyed by path so directories are listed once and everything comes out sorted.
        let mut entries: BTreeMap<String, Value> = BTreeMap::new();
        for f in &view.files {
            let Some(rest) = f.path.strip_prefix(&prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let dirs = if recursive { parts.len() - 1 } else { 1 };
            for depth in 1..=dirs.min(parts.len() - 1) {
                let dir = format!("{prefix}{}", parts[..depth].join("/"));
                entries
                    .entry(dir.clone())
                    .or_insert_with(|| dir_entry(&view.commit, &dir));
            }
            if recursive || parts.len() == 1 {
                entries.insert(f.path.clone(), file_entry(f));
            }
        }
        Ok(Json(entries.into_values().collect()))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct PathsInfoBody {
    paths: Vec<String>,
}

pub(crate) async fn paths_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    Json(body): Json<PathsInfoBody>,
) -> Result<Json<Vec<Value>>, HubError> {
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        let mut out = Vec::new();
        for p in &body.paths {
            let p = p.trim_matches('/');
            if let Some(f) = view.files.iter().find(|f| f.path == p) {
                out.push(file_entry(f));
            } else if valid_path(p) && view.is_dir(p) {
                out.push(dir_entry(&view.commit, p));
            }
        }
        Ok(Json(out))
    })
    .await
}

fn file_entry(f: &FileEntry) -> Value {
    // The Git LFS pointer the Hub would store for this file; its size is reported too.
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        f.sha256, f.size
    );
    json!({
        "type": "file",
        "oid": f.sha256,
        "size": f.size,
        "path": f.path,
        "lfs": {
            "oid": f.sha256,
            // hf-hub 1.0 reads `sha256` (the Hub's JSON says `oid`); both are given.
            "sha256": f.sha256,
            "size": f.size,
            "pointerSize": pointer.len(),
        },
    })
}

fn dir_entry(commit: &str, path: &str) -> Value {
    let mut h = Sha256::new();
    h.update(commit.as_bytes());
    h.update(b"\0");
    h.update(path.as_bytes());
    let mut oid = hex(&h.finalize());
    oid.truncate(40);
    json!({ "type": "directory", "oid": oid, "path": path })
}
