//! Scenarios with many Atmosphere nodes in this process: fan-out and scale.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use atmosphere::{InviteOptions, Node, NodeBuilder};
use bytes::Bytes;
use futures::StreamExt;
use tempfile::TempDir;

use crate::{
    ours::{bench_config, wait_announced, Transport},
    report::Row,
};

/// Joins in flight at once while a mesh forms.
const JOIN_CONCURRENCY: usize = 16;

/// A set of nodes in one mesh founded by the first.
struct Mesh {
    nodes: Vec<Node>,
    _dirs: Vec<TempDir>,
}

impl Mesh {
    /// Starts `count` nodes; the first founds a mesh, the others join it at once.
    async fn start(count: usize, transport: Transport) -> Result<Self> {
        let mut nodes = Vec::with_capacity(count);
        let mut dirs = Vec::with_capacity(count);
        for _ in 0..count {
            let dir = tempfile::tempdir()?;
            let mut config = bench_config(&dir, transport)?;
            // Many nodes share two cores: announce less often than the default.
            config.state_interval_secs = 60;
            nodes.push(NodeBuilder::new(config).build().await?);
            dirs.push(dir);
        }
        let founder = nodes.first().context("no nodes")?.clone();
        founder.create_mesh("scale").await?;
        let invite = founder
            .invite(
                None,
                InviteOptions {
                    uses: count as u32,
                    ..Default::default()
                },
            )
            .await?;
        // Joins run 16 at a time: hundreds of simultaneous handshakes on two
        // cores would time out, which measures the machine, not the mesh.
        let uri = invite.uri.clone();
        let results: Vec<_> = futures::stream::iter(nodes[1..].iter().cloned())
            .map(|n| {
                let uri = uri.clone();
                async move { n.join(&uri).await }
            })
            .buffer_unordered(JOIN_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(Self { nodes, _dirs: dirs })
    }

    /// Waits until every node has every other node connected.
    async fn wait_complete(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let want = self.nodes.len() - 1;
        for node in &self.nodes {
            loop {
                let connected = node.status().await?.connected_peers;
                if connected >= want {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("a node sees {connected} of {want} members after {limit:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn bytes_sent(&self) -> Result<u64> {
        let mut total = 0;
        for node in &self.nodes {
            total += node.status().await?.traffic.bytes_sent;
        }
        Ok(total)
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

fn row(scenario: &str, case: String, unit: &str, value: f64, higher_is_better: bool) -> Row {
    let system = if scenario == "scale" {
        "atmosphere/quic"
    } else {
        "atmosphere/tcp"
    };
    Row {
        scenario: scenario.into(),
        case,
        system: system.into(),
        unit: unit.into(),
        value,
        p99: None,
        min: None,
        max: None,
        higher_is_better,
        ratio: None,
    }
}

/// 1 publisher → `subscribers` subscribers: time until all received
/// `messages` 64-byte messages, and app bytes sent per delivered message.
pub async fn fanout(subscribers: usize, messages: usize) -> Result<Vec<Row>> {
    let mesh = Mesh::start(subscribers + 1, Transport::Tcp).await?;
    let publisher = mesh.nodes[0].clone();
    let mut counters = Vec::new();
    for node in &mesh.nodes[1..] {
        let mut sub = node.subscribe("fan.out").await?;
        wait_announced(&publisher, node, "fan.out").await?;
        counters.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < messages {
                if sub.recv().await.is_none() {
                    break;
                }
                seen += 1;
            }
            (seen, Instant::now())
        }));
    }
    let before = mesh.bytes_sent().await?;
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    for _ in 0..messages {
        publisher.publish("fan.out", payload.clone()).await?;
    }
    let mut last = start;
    for counter in counters {
        let (seen, at) = tokio::time::timeout(Duration::from_secs(120), counter)
            .await
            .context("fan-out did not complete")??;
        if seen < messages {
            bail!("a subscriber got {seen} of {messages}");
        }
        last = last.max(at);
    }
    let sent = mesh.bytes_sent().await? - before;
    mesh.shutdown().await;
    let case = format!("1→{subscribers}");
    Ok(vec![
        row(
            "fanout",
            case.clone(),
            "ms to all",
            (last - start).as_secs_f64() * 1e3,
            false,
        ),
        row(
            "fanout",
            case,
            "B sent/delivery",
            sent as f64 / (subscribers * messages) as f64,
            false,
        ),
    ])
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// `count` nodes join one mesh (over QUIC: one UDP socket per node keeps a
/// full mesh of 200 within the file-descriptor limit): time until every
/// member list is complete, RSS per node, idle CPU and app bytes/s per node.
pub async fn scale(count: usize) -> Result<Vec<Row>> {
    let rss_before = rss_bytes();
    let start = Instant::now();
    let mesh = Mesh::start(count, Transport::Quic).await?;
    mesh.wait_complete(Duration::from_secs(300)).await?;
    let complete = start.elapsed();
    let rss_per_node = rss_bytes().saturating_sub(rss_before) as f64 / count as f64;
    // The window is measured, not assumed: reading 200 nodes' counters takes
    // a while on a busy machine.
    // CPU is read right around the sleep; the byte counters' window runs from
    // the start of the first read to the end of the second.
    let bytes_window = Instant::now();
    let bytes0 = mesh.bytes_sent().await?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu1, cpu_window) = (cpu_seconds(), t0.elapsed());
    let bytes1 = mesh.bytes_sent().await?;
    let idle = bytes_window.elapsed();
    mesh.shutdown().await;
    let case = format!("{count} nodes");
    let per_node = |v: f64| v / count as f64;
    Ok(vec![
        row(
            "scale",
            case.clone(),
            "s to full lists",
            complete.as_secs_f64(),
            false,
        ),
        row(
            "scale",
            case.clone(),
            "MiB RSS/node",
            rss_per_node / (1 << 20) as f64,
            false,
        ),
        row(
            "scale",
            case.clone(),
            "% core idle/node",
            per_node((cpu1 - cpu0) / cpu_window.as_secs_f64() * 100.0),
            false,
        ),
        row(
            "scale",
            case,
            "app B/s idle/node",
            per_node((bytes1 - bytes0) as f64 / idle.as_secs_f64()),
            false,
        ),
    ])
}
