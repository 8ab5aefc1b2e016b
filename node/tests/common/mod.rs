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

/// Stops `node` and starts it again in `host` on the same data directory
/// (same identity, meshes and saved endpoints), after `tweak` adjusts the
/// test configuration.
pub async fn restart_in(
    host: &atmosphere_lab::Host,
    node: TestNode,
    name: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestNode {
    let TestNode { node, _dir: dir } = node;
    node.shutdown().await;
    drop(node);
    start_on_dir(host, dir, name, tweak).await
}

/// Starts a node in `host` on an existing data directory.
pub async fn start_on_dir(
    host: &atmosphere_lab::Host,
    dir: TempDir,
    name: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestNode {
    let mut config = Config::ephemeral(dir.path());
    config.name = Some(name.to_owned());
    tweak(&mut config);
    // A stopped swarm's sockets close as its task ends: a fixed port may
    // still be taken for a moment.
    for _ in 0..40 {
        let attempt = config.clone();
        let built = host
            .spawn(async move { NodeBuilder::new(attempt).build().await })
            .await
            .expect("node task");
        match built {
            Ok(node) => return TestNode { node, _dir: dir },
            Err(e) => eprintln!("start of {name} failed ({e}); retrying"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{name} did not start");
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

/// Starts a node on loopback with a radio on the simulated BLE `radio` at
/// `position` (range 10 m), after `tweak` adjusts its config.
pub async fn start_with_ble(
    name: &str,
    radio: &atmosphere::transports::ble::sim::SimRadio,
    position: atmosphere::transports::ble::sim::Position,
    tweak: impl FnOnce(&mut Config),
) -> (TestNode, atmosphere::transports::ble::sim::SimNode) {
    let (dir, config) = test_config(name, tweak);
    let sim = radio.add_node(position, 10.0);
    let node = NodeBuilder::new(config)
        .ble(atmosphere::transports::ble::BoxedLink::new(sim.clone()))
        .build()
        .await
        .expect("node starts");
    (TestNode { node, _dir: dir }, sim)
}

/// `node`'s paths to `peer` (empty when it is not a known peer).
pub async fn paths(
    node: &atmosphere::Node,
    peer: atmosphere::PeerId,
) -> Vec<atmosphere::PathStatus> {
    node.peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())
        .map(|p| p.paths)
        .unwrap_or_default()
}
