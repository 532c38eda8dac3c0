//! `neuromfa hub serve`: checkpoints on disk (or generated: `--virtual`) over the Hub's
//! download protocol, as an ideal mirror or (`--like-hf`) behaving like huggingface.co;
//! `neuromfa hub precompute`: the content hashes of a virtual hub, ahead of serving it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use neuromfa_hub_server::{
    self as hub_server, Description, FaultPlan, HfProfile, HubServerConfig, Plan, VirtualHub,
    XetFiles,
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory laid out as DIR/<org>/<name>/<revision>/<file> (not with --virtual).
    #[arg(
        required_unless_present = "virtual_hub",
        conflicts_with = "virtual_hub"
    )]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub virtual_hub: VirtualArgs,
    /// Address to listen on (port 0: the system chooses). The URL it serves at is
    /// printed on stdout once it listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Require this bearer token (as the Hub does for gated models); prefer the
    /// variable, which `ps` does not show.
    #[arg(long, env = "NEUROMFA_HUB_TOKEN")]
    pub token: Option<String>,
    /// Limit the total bandwidth of file bodies to MBPS megabytes (10^6 bytes) per
    /// second, so benchmarks on one machine can stand in for a network.
    #[arg(long, value_name = "MBPS")]
    pub throttle: Option<f64>,
    #[command(flatten)]
    pub like_hf: LikeHfArgs,
}

/// Behaving like the real Hub: a CDN listener that `/resolve/` redirects to, rate limits,
/// latency, Xet and faults.
#[derive(Debug, Args)]
pub struct LikeHfArgs {
    /// Behave like huggingface.co: LFS files redirect to a CDN on a second port with
    /// signed URLs, requests are metered in the Resolver and API buckets (429 when spent).
    #[arg(long)]
    pub like_hf: bool,
    /// The account tier whose rate limits apply: anonymous, free, pro or team.
    #[arg(long, default_value = "free", requires = "like_hf")]
    pub plan: String,
    /// Resolver requests per window, instead of the plan's.
    #[arg(long, value_name = "N", requires = "like_hf")]
    pub resolvers_quota: Option<u64>,
    /// API requests per window, instead of the plan's.
    #[arg(long, value_name = "N", requires = "like_hf")]
    pub api_quota: Option<u64>,
    /// The rate-limit window, instead of the Hub's 300 s.
    #[arg(long, value_name = "SECONDS", requires = "like_hf")]
    pub window_secs: Option<f64>,
    /// How long signed CDN URLs and Xet tokens stay valid.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3600,
        requires = "like_hf"
    )]
    pub url_lifetime_secs: u64,
    /// Added before every answer of the Hub and of the CDN (a round trip).
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "like_hf")]
    pub latency_ms: u64,
    /// Limit each connection's file bodies to MBPS megabytes per second.
    #[arg(long, value_name = "MBPS", requires = "like_hf")]
    pub connection_mbps: Option<f64>,
    /// Which LFS files are Xet-backed: none, all, share:FRACTION, or comma-separated
    /// path globs.
    #[arg(long, default_value = "none", requires = "like_hf")]
    pub xet: String,
    /// Answer files kept in git at once, as the Hub does for gated repos, instead of with
    /// a relative redirect to a commit-pinned resolve-cache URL (as it does for public ones).
    #[arg(long, requires = "like_hf")]
    pub no_resolve_cache: bool,
    /// Where the CDN listens (default: the Hub's IP address, any free port). Its URL is
    /// printed as the second line of stdout, `cdn URL`.
    #[arg(long, value_name = "ADDR", requires = "like_hf")]
    pub cdn_listen: Option<String>,
    /// The CDN's URL as clients must reach it (default: the host they reached the Hub
    /// at, with the CDN's port).
    #[arg(long, value_name = "URL", requires = "like_hf")]
    pub cdn_url: Option<String>,
    /// Faults injected on the Hub's listener, as KEY=VALUE pairs separated by commas
    /// (keys of a fault plan: error_share, error_next, error_status, reset_share,
    /// reset_next, reset_after_bytes, slow_share, slow_next, slow_first_byte_ms).
    #[arg(long, value_name = "PLAN", requires = "like_hf")]
    pub hub_faults: Option<String>,
    /// Faults injected on the CDN's listener (as --hub-faults).
    #[arg(long, value_name = "PLAN", requires = "like_hf")]
    pub cdn_faults: Option<String>,
}

/// Repositories generated from a description instead of read from disk.
#[derive(Debug, Args)]
pub struct VirtualArgs {
    /// Serve generated repositories: `pythia` (the eight models and 154 steps of
    /// examples/pythia-suite.toml) or a description file (TOML; see docs/stand-in-hub.md).
    #[arg(long = "virtual", value_name = "pythia|FILE")]
    pub virtual_hub: Option<String>,
    /// Only these models (repo or name, e.g. pythia-14m).
    #[arg(
        long,
        value_name = "MODELS",
        value_delimiter = ',',
        requires = "virtual_hub"
    )]
    pub models: Vec<String>,
    /// Only these steps.
    #[arg(
        long,
        value_name = "STEPS",
        value_delimiter = ',',
        requires = "virtual_hub"
    )]
    pub steps: Vec<u64>,
    /// Where content hashes are kept (default: $XDG_CACHE_HOME/neuromfa/virtual-hub-facts.jsonl,
    /// or ~/.cache/neuromfa/…).
    #[arg(long, value_name = "FILE", requires = "virtual_hub")]
    pub facts: Option<PathBuf>,
}

impl VirtualArgs {
    fn hub(&self) -> Result<Option<VirtualHub>> {
        let Some(name) = &self.virtual_hub else {
            return Ok(None);
        };
        let mut description = Description::load(name)?;
        description.restrict(&self.models, &self.steps)?;
        let facts = self.facts.clone().or_else(default_facts_file);
        match &facts {
            Some(path) => tracing::info!(facts = %path.display(), "content hashes kept in a file"),
            None => tracing::warn!("no cache directory: content hashes are kept in memory only"),
        }
        Ok(Some(VirtualHub::new(&description, facts.as_deref())?))
    }
}

fn default_facts_file() -> Option<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("neuromfa").join("virtual-hub-facts.jsonl"))
}

#[derive(Debug, Args)]
pub struct PrecomputeArgs {
    #[command(flatten)]
    pub virtual_hub: VirtualArgs,
    /// Only count the distinct files and the bytes a pass would cover.
    #[arg(long)]
    pub dry_run: bool,
}

/// Computes the content hash of every file of a virtual hub not known yet.
pub fn precompute(args: PrecomputeArgs) -> Result<()> {
    let hub = args
        .virtual_hub
        .hub()?
        .context("precompute needs --virtual pythia or a description file")?;
    if args.dry_run {
        let todo = hub.pending();
        println!(
            "revisions serve {:.1} GB; {} distinct files ({:.1} GB); {} not hashed yet ({:.1} GB)",
            todo.served_bytes as f64 / 1e9,
            todo.files,
            todo.bytes as f64 / 1e9,
            todo.computed,
            todo.computed_bytes as f64 / 1e9
        );
        return Ok(());
    }
    let started = Instant::now();
    let last_report = std::sync::Mutex::new(Instant::now());
    let done = hub.precompute(|done, total| {
        let mut last = last_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= Duration::from_secs(10) || done == total {
            *last = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {:.1} of {:.1} GB hashed, {:.2} GB/s",
                done as f64 / 1e9,
                total as f64 / 1e9,
                done as f64 / 1e9 / secs.max(1e-9)
            );
        }
    });
    eprintln!(
        "{} distinct files ({:.1} GB): {} hashed now ({:.1} GB) in {:.1} s, the rest were known",
        done.files,
        done.bytes as f64 / 1e9,
        done.computed,
        done.computed_bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A rate in MB/s as bytes per second.
fn bytes_per_sec(mbps: Option<f64>, flag: &str) -> Result<Option<u64>> {
    match mbps {
        None => Ok(None),
        Some(mbps) if mbps.is_finite() && mbps > 0.0 => {
            Ok(Some(((mbps * 1e6).round() as u64).max(1)))
        }
        Some(mbps) => anyhow::bail!("{flag} must be a positive number of MB/s (got {mbps})"),
    }
}

/// `error_share=0.1,error_status=500` as a fault plan.
fn fault_plan(text: &str, flag: &str) -> Result<FaultPlan> {
    let mut fields = serde_json::Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{flag}: {pair:?} is not KEY=VALUE"))?;
        let value: serde_json::Value = serde_json::from_str(value.trim())
            .with_context(|| format!("{flag}: {key} needs a number (got {value:?})"))?;
        fields.insert(key.trim().to_string(), value);
    }
    serde_json::from_value(serde_json::Value::Object(fields))
        .with_context(|| format!("{flag}: {text:?}"))
}

impl LikeHfArgs {
    fn profile(&self) -> Result<Option<HfProfile>> {
        if !self.like_hf {
            return Ok(None);
        }
        let plan: Plan = self.plan.parse().map_err(anyhow::Error::msg)?;
        let mut profile = HfProfile::plan(plan);
        if let Some(n) = self.resolvers_quota {
            profile.resolvers.requests = n;
        }
        if let Some(n) = self.api_quota {
            profile.api.requests = n;
        }
        if let Some(secs) = self.window_secs {
            anyhow::ensure!(
                secs.is_finite() && secs > 0.0,
                "--window-secs must be positive (got {secs})"
            );
            profile.resolvers.window = Duration::from_secs_f64(secs);
            profile.api.window = Duration::from_secs_f64(secs);
        }
        profile.url_lifetime = Duration::from_secs(self.url_lifetime_secs.max(1));
        profile.latency = Duration::from_millis(self.latency_ms);
        profile.connection_bytes_per_sec =
            bytes_per_sec(self.connection_mbps, "--connection-mbps")?;
        profile.xet = self.xet.parse::<XetFiles>().map_err(anyhow::Error::msg)?;
        profile.cdn_url = self.cdn_url.clone();
        profile.resolve_cache = !self.no_resolve_cache;
        if let Some(plan) = &self.hub_faults {
            profile.hub_faults = fault_plan(plan, "--hub-faults")?;
        }
        if let Some(plan) = &self.cdn_faults {
            profile.cdn_faults = fault_plan(plan, "--cdn-faults")?;
        }
        Ok(Some(profile))
    }
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let virtual_hub = args.virtual_hub.hub()?;
    let root = args.dir.clone().unwrap_or_default();
    if virtual_hub.is_none() && !root.is_dir() {
        anyhow::bail!("{} is not a directory", root.display());
    }
    let throttle_bytes_per_sec = bytes_per_sec(args.throttle, "--throttle")?;
    let like_hf = args.like_hf.profile()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("cannot tell where {} listens", args.listen))?;
    tracing::info!(
        root = %root.display(),
        virtual_repos = ?virtual_hub.as_ref().map(VirtualHub::repos),
        throttle_bytes_per_sec,
        like_hf = like_hf.is_some(),
        "serving checkpoints at http://{addr} (HF_ENDPOINT=http://{addr})"
    );
    // The CDN binds before anything is announced, so both lines name live listeners.
    let cdn = match (args.like_hf.like_hf, &args.like_hf.cdn_listen) {
        (false, _) => None,
        (true, listen) => {
            let listen = listen.clone().unwrap_or_else(|| format!("{}:0", addr.ip()));
            let cdn = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (the CDN)"))?;
            Some(cdn)
        }
    };
    crate::sweep::announce_listening(&format!("http://{addr}"));
    if let Some(cdn) = &cdn {
        let cdn_addr = cdn
            .local_addr()
            .context("the CDN's socket has no address")?;
        // The second line of stdout: where the CDN the Hub redirects to listens.
        crate::sweep::announce_listening(&format!("cdn http://{cdn_addr}"));
    }
    let config = HubServerConfig {
        root,
        token: args.token,
        throttle_bytes_per_sec,
        like_hf,
        virtual_hub,
    };
    let server = hub_server::HubServer::new(config)?;
    let shutdown = crate::sweep::shutdown_signal();
    match cdn {
        Some(cdn) => server.serve_with_cdn(listener, cdn, shutdown).await,
        None => server.serve(listener, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_read_from_key_value_pairs() {
        let plan = fault_plan("error_share=0.25, error_status=500,reset_next=2", "--x").unwrap();
        assert_eq!(plan.error_share, 0.25);
        assert_eq!(plan.error_status, 500);
        assert_eq!(plan.reset_next, 2);
        assert!(fault_plan("error_shar=1", "--x").is_err());
        assert!(fault_plan("error_share", "--x").is_err());
    }
}
