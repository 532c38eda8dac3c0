//! `neuromfa hub serve`: checkpoints on disk over the Hub's download protocol.

use std::path::PathBuf;

use anyhow::{Context, Result};
use neuromfa_worker::hub_server::{self, HubServerConfig};

pub async fn serve(root: PathBuf, listen: String, token: Option<String>) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!("{} is not a directory", root.display());
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(root = %root.display(), "serving checkpoints at http://{addr} (HF_ENDPOINT=http://{addr})");
    let config = HubServerConfig { root, token };
    hub_server::serve(config, listener, crate::sweep::shutdown_signal()).await
}
