//! The API routes clients ask before or instead of downloads: model info, the file tree
//! and paths-info, with LFS entries carrying each file's sha256 and size; and, in the
//! real-Hub profile, the Xet read token.
//!
//! As an ideal mirror every file is reported as an LFS file whose `oid` is its sha256. In
//! the real-Hub profile entries have the Hub's shape: `oid` is the git blob id (of the
//! file, or of its LFS pointer), `lfs` is present for LFS files only, `xetHash` for
//! Xet-backed ones, and `expand` adds `lastCommit` and `securityFileStatus`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use neuromfa_hub::hashing::hex;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{blocking, internal, HubError};
use crate::repo::{git_blob_id, valid_path, FileEntry, RevisionView};
use crate::{cdn, xet, Shared};

pub(crate) async fn model_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, HubError> {
    blocking(move || {
        // The Hub reports the default branch; a tree without `main` has no sha to give.
        let view = st.default_revision(&org, &name)?;
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
                entries.insert(f.path.clone(), file_entry(&st, f, &view.commit, false)?);
            }
        }
        Ok(Json(entries.into_values().collect()))
    })
    .await
}

/// What paths-info is asked: the paths, and whether to expand entries.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PathsInfoQuery {
    paths: Vec<String>,
    #[serde(default)]
    expand: bool,
}

impl PathsInfoQuery {
    /// A JSON body (`{"paths": [...], "expand": true}`) or form fields
    /// (`paths=a&paths=b&expand=True`, as huggingface_hub sends them), counted by kind.
    fn parse(st: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Self, HubError> {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let counter = match is_json {
            true => &st.stats.paths_info_json,
            false => &st.stats.paths_info_form,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if is_json {
            return serde_json::from_slice(body)
                .map_err(|e| HubError::BadRequest(format!("paths-info: {e}")));
        }
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| HubError::BadRequest(format!("paths-info: {e}")))?;
        let mut query = PathsInfoQuery::default();
        for (key, value) in fields {
            match key.as_str() {
                "paths" | "paths[]" => query.paths.push(value),
                "expand" => query.expand = matches!(value.as_str(), "true" | "True" | "1"),
                _ => {}
            }
        }
        Ok(query)
    }
}

pub(crate) async fn paths_info(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<Value>>, HubError> {
    let query = PathsInfoQuery::parse(&st, &headers, &body)?;
    blocking(move || {
        let view = st.describe(&org, &name, &rev)?;
        let mut out = Vec::new();
        for p in &query.paths {
            let p = p.trim_matches('/');
            if let Some(f) = view.files.iter().find(|f| f.path == p) {
                out.push(file_entry(&st, f, &view.commit, query.expand)?);
            } else if valid_path(p) && view.is_dir(p) {
                out.push(dir_entry(&view.commit, p));
            }
        }
        Ok(Json(out))
    })
    .await
}

/// One file's entry in a tree or paths-info answer.
fn file_entry(st: &Shared, f: &FileEntry, commit: &str, expand: bool) -> Result<Value, HubError> {
    let Some(hf) = &st.hf else {
        // The Git LFS pointer the Hub would store for this file; its size is reported too.
        return Ok(json!({
            "type": "file",
            "oid": f.sha256,
            "size": f.size,
            "path": f.path,
            "lfs": {
                "oid": f.sha256,
                // hf-hub 1.0 reads `sha256` (the Hub's JSON says `oid`); both are given.
                "sha256": f.sha256,
                "size": f.size,
                "pointerSize": f.lfs_pointer().len(),
            },
        }));
    };
    let oid = git_blob_id(f).map_err(|e| internal(&format!("cannot read {}", f.content), e))?;
    let mut entry = json!({ "type": "file", "oid": oid, "size": f.size, "path": f.path });
    if f.is_lfs() {
        entry["lfs"] = json!({
            "oid": f.sha256,
            "size": f.size,
            "pointerSize": f.lfs_pointer().len(),
        });
        if hf.xet.includes(&f.path, &f.sha256) {
            entry["xetHash"] = json!(xet::file_hash(&f.sha256));
        }
    }
    if expand {
        entry["lastCommit"] = json!({
            "id": commit,
            "title": "Upload",
            "date": "2023-01-01T00:00:00.000Z",
        });
        entry["securityFileStatus"] = json!({ "status": "safe" });
    }
    Ok(entry)
}

/// `GET /api/models/{repo}/xet-read-token/{revision}`: a token for the CAS, valid for the
/// profile's URL lifetime, in the body and in the `X-Xet-*` headers.
pub(crate) async fn xet_read_token(
    State(st): State<Arc<Shared>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, HubError> {
    let Some(hf) = &st.hf else {
        return Err(HubError::RepoNotFound(
            "Xet is not served by this mirror".into(),
        ));
    };
    st.stats.xet_tokens.fetch_add(1, Ordering::Relaxed);
    let (check_st, repo) = (st.clone(), format!("{org}/{name}"));
    blocking(move || check_st.describe(&org, &name, &rev).map(|_| ())).await?;
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let cas_url = hf.cdn_base(host)?;
    let exp = st.clock.unix_secs() + hf.profile.url_lifetime.as_secs().max(1);
    let token = hf.signer.token(&cdn::xet_scope(&repo), exp);
    let mut out = HeaderMap::new();
    for (name, value) in [
        ("x-xet-access-token", token.clone()),
        ("x-xet-token-expiration", exp.to_string()),
        ("x-xet-cas-url", cas_url.clone()),
    ] {
        let value = HeaderValue::from_str(&value).map_err(|e| internal("bad header", e))?;
        out.insert(HeaderName::from_static(name), value);
    }
    let body = json!({ "accessToken": token, "exp": exp, "casUrl": cas_url });
    Ok((out, Json(body)).into_response())
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
