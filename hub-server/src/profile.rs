//! The real-Hub profile: what the stand-in does differently when it behaves like
//! huggingface.co rather than like an ideal mirror, and the knobs of each behaviour.

use std::str::FromStr;
use std::time::Duration;

use crate::faults::FaultPlan;

/// The Hub's account tiers and their rate limits per 5-minute window (the Hub's
/// rate-limit documentation: Resolvers / API requests per IP or token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Anonymous,
    Free,
    Pro,
    Team,
}

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Anonymous, Plan::Free, Plan::Pro, Plan::Team];

    /// The window both buckets are counted in.
    pub const WINDOW: Duration = Duration::from_secs(300);

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Anonymous => "anonymous",
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Team => "team",
        }
    }

    /// Requests per window: `(resolvers, api)`.
    pub fn quotas(self) -> (u64, u64) {
        match self {
            Plan::Anonymous => (3000, 500),
            Plan::Free => (5000, 1000),
            Plan::Pro => (12000, 2500),
            Plan::Team => (20000, 3000),
        }
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown plan {s:?}: expected anonymous, free, pro or team"))
    }
}

/// One rate-limit bucket: at most `requests` per fixed `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub window: Duration,
}

/// Which LFS files are stored in Xet (and so answer with `X-Xet-Hash` and a redirect to
/// the Xet bridge instead of the LFS CDN).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum XetFiles {
    /// None: every LFS file is served by the LFS CDN.
    #[default]
    None,
    /// Every LFS file.
    All,
    /// LFS files whose path matches one of these glob patterns (the whole path must
    /// match; `*` crosses `/`).
    Matching(Vec<String>),
    /// This share of LFS files (0 to 1), chosen by content hash so that a file is always
    /// stored the same way.
    Share(f64),
}

impl FromStr for XetFiles {
    type Err = String;

    /// `none`, `all`, `share:0.5`, or comma-separated path patterns.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(XetFiles::None),
            "all" => Ok(XetFiles::All),
            _ => match s.strip_prefix("share:") {
                Some(share) => match share.parse::<f64>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => Ok(XetFiles::Share(x)),
                    _ => Err(format!("xet share must be between 0 and 1 (got {share:?})")),
                },
                None => Ok(XetFiles::Matching(
                    s.split(',').map(|p| p.trim().to_string()).collect(),
                )),
            },
        }
    }
}

/// [`XetFiles`] ready to decide, its patterns compiled.
pub(crate) struct XetSelector {
    files: XetFiles,
    globs: Option<globset::GlobSet>,
}

impl XetSelector {
    pub(crate) fn new(files: &XetFiles) -> anyhow::Result<Self> {
        let globs = match files {
            XetFiles::Matching(patterns) => {
                let mut set = globset::GlobSetBuilder::new();
                for p in patterns {
                    let glob = globset::GlobBuilder::new(p)
                        .literal_separator(false)
                        .build()
                        .map_err(|e| anyhow::anyhow!("bad Xet file pattern {p:?}: {e}"))?;
                    set.add(glob);
                }
                Some(set.build()?)
            }
            _ => None,
        };
        Ok(XetSelector {
            files: files.clone(),
            globs,
        })
    }

    /// Whether the LFS file at `path` with content hash `sha256` is stored in Xet.
    pub(crate) fn includes(&self, path: &str, sha256: &str) -> bool {
        match &self.files {
            XetFiles::None => false,
            XetFiles::All => true,
            XetFiles::Matching(_) => self.globs.as_ref().is_some_and(|g| g.is_match(path)),
            XetFiles::Share(share) => {
                // The hash's first 8 hex digits as a fraction of 2^32.
                let head = sha256
                    .get(..8)
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                head.is_some_and(|h| (f64::from(h) / 4_294_967_296.0) < *share)
            }
        }
    }
}

/// How the stand-in behaves when it plays the real Hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HfProfile {
    /// Requests whose path holds `/resolve/`.
    pub resolvers: Quota,
    /// Requests under `/api/` (model info, tree, paths-info, xet-read-token).
    pub api: Quota,
    /// How long a signed CDN URL or Xet token stays valid (the Hub's: about an hour).
    pub url_lifetime: Duration,
    /// Added before every answer of either listener: a round trip to a distant server.
    pub latency: Duration,
    /// If set, the rate at which one connection's file bodies leave (the total is
    /// [`crate::HubServerConfig::throttle_bytes_per_sec`]).
    pub connection_bytes_per_sec: Option<u64>,
    /// Which LFS files are Xet-backed.
    pub xet: XetFiles,
    /// Files kept in git answer `/resolve/` with a relative `307` to a commit-pinned
    /// `/api/resolve-cache/…` URL, as huggingface.co does for public repos; off, they answer
    /// `200` at once, as it does for gated and private ones.
    pub resolve_cache: bool,
    /// The CDN's base URL as clients must use it (e.g. `http://cdn.example:9000`); by
    /// default the host the client reached the Hub at, with the CDN listener's port.
    pub cdn_url: Option<String>,
    /// Faults injected from the start on the Hub's listener.
    pub hub_faults: FaultPlan,
    /// Faults injected from the start on the CDN's listener.
    pub cdn_faults: FaultPlan,
}

impl HfProfile {
    /// The profile of an account on `plan`, without latency, throttling, Xet or faults.
    pub fn plan(plan: Plan) -> Self {
        let (resolvers, api) = plan.quotas();
        HfProfile {
            resolvers: Quota {
                requests: resolvers,
                window: Plan::WINDOW,
            },
            api: Quota {
                requests: api,
                window: Plan::WINDOW,
            },
            url_lifetime: Duration::from_secs(3600),
            latency: Duration::ZERO,
            connection_bytes_per_sec: None,
            xet: XetFiles::None,
            resolve_cache: true,
            cdn_url: None,
            hub_faults: FaultPlan::default(),
            cdn_faults: FaultPlan::default(),
        }
    }
}

impl Default for HfProfile {
    fn default() -> Self {
        HfProfile::plan(Plan::Free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xet_selection_parses_and_decides() {
        assert_eq!("all".parse::<XetFiles>(), Ok(XetFiles::All));
        assert!("share:1.5".parse::<XetFiles>().is_err());
        let half = XetSelector::new(&"share:0.5".parse().unwrap()).unwrap();
        assert!(half.includes("x", "00000000ffff"));
        assert!(!half.includes("x", "ffffffff0000"));
        let globs = XetSelector::new(&"*.bin, *.safetensors, sub/*.pt".parse().unwrap()).unwrap();
        assert!(globs.includes("model.safetensors", "00"));
        assert!(globs.includes("pytorch_model-00001-of-00002.bin", "00"));
        assert!(globs.includes("sub/x.pt", "00"));
        assert!(!globs.includes("model.safetensors.index.json", "00"));
        assert!(!globs.includes("config.json", "00"));
    }
}
