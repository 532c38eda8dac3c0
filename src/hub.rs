//! `neuromfa hub serve`: checkpoints on disk over the Hub's download protocol.

use std::path::PathBuf;

use anyhow::{Context, Result};
use neuromfa_hub_server::{self as hub_server, HubServerConfig};

/// Serves `root` on `listen`; with `throttle_mbps`, file bodies leave at no more than that
/// many megabytes (10^6 bytes) per second in total, to stand in for a real network.
pub async fn serve(
    root: PathBuf,
    listen: String,
    token: Option<String>,
    throttle_mbps: Option<f64>,
) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!("{} is not a directory", root.display());
    }
    let throttle_bytes_per_sec = match throttle_mbps {
        None => None,
        Some(mbps) if mbps.is_finite() && mbps > 0.0 => Some(((mbps * 1e6).round() as u64).max(1)),
        Some(mbps) => anyhow::bail!("--throttle must be a positive number of MB/s (got {mbps})"),
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("cannot tell where {listen} listens"))?;
    tracing::info!(
        root = %root.display(),
        throttle_bytes_per_sec,
        "serving checkpoints at http://{addr} (HF_ENDPOINT=http://{addr})"
    );
    crate::sweep::announce_listening(&format!("http://{addr}"));
    let config = HubServerConfig {
        root,
        token,
        throttle_bytes_per_sec,
    };
    hub_server::serve(config, listener, crate::sweep::shutdown_signal()).await
}
