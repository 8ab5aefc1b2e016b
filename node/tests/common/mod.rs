//! Helpers shared by the node's integration tests.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use atmosphere::{Config, Node, NodeBuilder};
use tempfile::TempDir;

/// Generous bound for anything the tests wait for.
pub const WAIT: Duration = Duration::from_secs(30);

/// A node with its own temporary data directory (removed on drop).
pub struct TestNode {
    pub node: Node,
    pub _dir: TempDir,
}

/// Logs to the test output, filtered by `RUST_LOG` (once per process).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh data directory and the test configuration named `name`, after
/// `tweak` adjusts it.
fn test_config(name: &str, tweak: impl FnOnce(&mut Config)) -> (TempDir, Config) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::ephemeral(dir.path());
    config.name = Some(name.to_owned());
    tweak(&mut config);
    (dir, config)
}

/// Starts a node on loopback (no mDNS) named `name`, after `tweak` adjusts its config.
pub async fn start_with(name: &str, tweak: impl FnOnce(&mut Config)) -> TestNode {
    let (dir, config) = test_config(name, tweak);
    let node = NodeBuilder::new(config).build().await.expect("node starts");
    TestNode { node, _dir: dir }
}

/// Starts a node inside network-lab host `host` (its sockets live in the
/// host's namespace), after `tweak` adjusts the test configuration.
pub async fn start_in(
    host: &atmosphere_lab::Host,
    name: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestNode {
    let (dir, config) = test_config(name, tweak);
    let node = host
        .spawn(async move { NodeBuilder::new(config).build().await })
        .await
        .expect("node task")
        .expect("node starts");
    TestNode { node, _dir: dir }
}

/// Starts a node with the default test configuration.
pub async fn start(name: &str) -> TestNode {
    start_with(name, |_| {}).await
}

/// Polls `check` until it returns true, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
