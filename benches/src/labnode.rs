//! Nodes of the network-lab scenarios (`failover`, `nat`): started inside a
//! lab host with a temporary data directory, and a poll helper.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use atmosphere::{Config, Node, NodeBuilder};
use atmosphere_lab::Host;
use tempfile::TempDir;

/// Longest wait for anything in a lab scenario.
pub const WAIT: Duration = Duration::from_secs(60);

/// A node and its data directory (removed on drop).
pub struct LabNode {
    /// The node.
    pub node: Node,
    _dir: TempDir,
}

/// Starts a node in `host` with fresh data (so a fresh identity), named
/// `name`, after `tweak` adjusts the test configuration.
pub async fn start(host: &Host, name: &str, tweak: impl FnOnce(&mut Config)) -> Result<LabNode> {
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let mut config = Config::ephemeral(dir.path());
    config.name = Some(name.to_owned());
    tweak(&mut config);
    let node = host
        .spawn(async move { NodeBuilder::new(config).build().await })
        .await
        .context("node task")?
        .with_context(|| format!("starting {name}"))?;
    Ok(LabNode { node, _dir: dir })
}

/// Polls `check` every 20 ms until it gives a value, failing after [`WAIT`].
pub async fn wait_for<F, Fut, T>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}")
}
