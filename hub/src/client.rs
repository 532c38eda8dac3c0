//! Where the Hub is and how to reach it: the endpoint, token and cache in use, its URLs, and
//! the HTTP client every request goes through.

use std::path::PathBuf;
use std::time::Duration;

/// The Hub used when neither the settings nor `HF_ENDPOINT` name one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and as whom to fetch. `Default` means: `HF_ENDPOINT` or the real Hub, the token
/// `hf-hub` finds (`HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`), the standard cache
/// (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
#[derive(Clone, Default)]
pub struct HubSettings {
    /// Hub base URL; `None` = `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Bearer token; `None` = whatever `hf-hub` finds in the environment.
    pub token: Option<String>,
    /// HF cache directory; `None` = the standard one.
    pub cache_dir: Option<PathBuf>,
}

impl HubSettings {
    /// The endpoint in use: the one set here, else `HF_ENDPOINT`, else the real Hub.
    pub fn resolved_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
    }

    /// The token in use: the one set here, else what `hf-hub` would find (`HF_TOKEN`, the
    /// file at `HF_TOKEN_PATH`, `$HF_HOME/token`), unless `HF_HUB_DISABLE_IMPLICIT_TOKEN`.
    /// Resolved once here so every request we send ourselves carries the same token as
    /// `hf-hub`'s.
    pub fn resolved_token(&self) -> Option<String> {
        if let Some(token) = &self.token {
            return Some(token.clone());
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if env("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some() {
            return None;
        }
        if let Some(token) = env("HF_TOKEN") {
            return Some(token);
        }
        let from_file = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        };
        if let Some(token) = env("HF_TOKEN_PATH").and_then(|p| from_file(PathBuf::from(p))) {
            return Some(token);
        }
        let hf_home = env("HF_HOME").map(PathBuf::from).or_else(|| {
            env("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        })?;
        from_file(hf_home.join("token"))
    }
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// The Hub endpoint as a URL that file paths can be appended to.
pub(crate) fn hub_base_url(endpoint: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(endpoint.trim_end_matches('/'))
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if url.cannot_be_a_base() {
        return Err(format!("endpoint {endpoint:?} cannot carry a path"));
    }
    Ok(url)
}

/// `{base}/{repo}/resolve/{revision}/{file}`, the revision escaped as one path segment and
/// the file by its own segments, as `hf-hub` builds it.
pub(crate) fn resolve_url(
    base: &reqwest::Url,
    repo: &str,
    revision: &str,
    file: &str,
) -> reqwest::Url {
    let mut url = base.clone();
    // `hub_base_url` made sure the base can carry a path.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(repo.split('/'))
            .push("resolve")
            .push(revision)
            .extend(file.split('/').filter(|s| !s.is_empty()));
    }
    url
}

/// `{base}/api/models/{repo}/paths-info/{revision}`, the revision escaped as one segment:
/// the files among a list of names that a revision has.
pub(crate) fn paths_info_url(base: &reqwest::Url, repo: &str, revision: &str) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["api", "models"])
            .extend(repo.split('/'))
            .push("paths-info")
            .push(revision);
    }
    url
}

/// `org/name` → `("org", "name")`.
pub(crate) fn parse_repo_id(repo: &str) -> Result<(&str, &str), String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid(owner) && valid(name) => Ok((owner, name)),
        _ => Err(format!(
            "repository id {repo:?} is not of the form org/name"
        )),
    }
}

/// The HTTP client every request of this crate goes through. It never follows a redirect:
/// a resolve answer's metadata is on the `302` itself, and what follows it goes to another
/// host, without the token. `stall` bounds the wait for each read of an answer (`hf-hub`'s
/// own client sets no timeout at all, so a dead connection would hang a worker forever).
/// Traffic to an `endpoint` on this machine never goes through a proxy.
pub(crate) fn http_client(
    endpoint: &reqwest::Url,
    stall: Duration,
) -> Result<reqwest::Client, String> {
    let mut http = reqwest::Client::builder()
        .user_agent(concat!(
            "hf-hub/1.0.0; neuromfa-worker/",
            env!("CARGO_PKG_VERSION")
        ))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(stall);
    if is_loopback(endpoint) {
        http = http.no_proxy();
    }
    http.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Whether `a` and `b` share scheme, host and port: only requests to the endpoint's own
/// origin carry the token.
pub(crate) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(
            parse_repo_id("EleutherAI/pythia-160m"),
            Ok(("EleutherAI", "pythia-160m"))
        );
        for bad in ["pythia", "a/b/c", "/b", "a/", "../b", "a/..", "a b/c"] {
            assert!(parse_repo_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for (u, want) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.1.2.3", true),
            ("http://localhost:1", true),
            ("http://[::1]:9", true),
            ("https://huggingface.co", false),
            ("http://10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(&reqwest::Url::parse(u).unwrap()), want, "{u}");
        }
    }

    #[test]
    fn only_the_same_scheme_host_and_port_is_the_same_origin() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let hub = url("https://huggingface.co");
        assert!(same_origin(
            &hub,
            &url("https://huggingface.co:443/a/resolve/x")
        ));
        assert!(!same_origin(&hub, &url("https://cdn-lfs.huggingface.co/x")));
        assert!(!same_origin(&hub, &url("http://huggingface.co/x")));
        let local = url("http://127.0.0.1:8080");
        assert!(!same_origin(&local, &url("http://127.0.0.1:8081/x")));
    }

    #[test]
    fn settings_debug_hides_the_token() {
        let s = HubSettings {
            token: Some("hf_secret".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hf_secret"));
    }
}
