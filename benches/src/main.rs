//! `mesh-bench`: measures Atmosphere on this machine.
//!
//! `mesh-bench latency` starts two nodes in one process, joined in a mesh over
//! real loopback sockets (TCP or QUIC), and measures sequential round trips:
//! pub/sub ping-pong (A publishes `bench.ping`, B answers on `bench.pong`) and
//! RPC calls (`bench.echo`). It prints median, p99 and mean over many
//! iterations after a warm-up, and writes JSON to `benches/results/`.
//! Comparisons with other systems come with the `mesh-bench` issue.

mod stats;

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use atmosphere::{CallOptions, Config, InviteOptions, Node, NodeBuilder, Request};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};

use stats::Summary;

#[derive(Parser)]
#[command(name = "mesh-bench", about = "Atmosphere performance harness")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Sequential pub/sub and RPC round trips between two nodes on loopback.
    Latency {
        /// Measured round trips per case.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
        /// Unmeasured round trips first.
        #[arg(long, default_value_t = 500)]
        warmup: usize,
        /// Payload sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,1024")]
        sizes: Vec<usize>,
        /// Transports to measure.
        #[arg(long, value_delimiter = ',', default_value = "tcp,quic")]
        transports: Vec<Transport>,
        /// Where to write the JSON results.
        #[arg(long, default_value = "benches/results")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

struct Pair {
    a: Node,
    b: Node,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn node(transport: Transport, dir: &tempfile::TempDir) -> Result<Node> {
    let mut config = Config::ephemeral(dir.path());
    config.listen = vec![transport.listen().parse()?];
    Ok(NodeBuilder::new(config).build().await?)
}

async fn pair(transport: Transport) -> Result<Pair> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = node(transport, &dirs.0).await?;
    let b = node(transport, &dirs.1).await?;
    a.create_mesh("bench").await?;
    let invite = a.invite(None, InviteOptions::default()).await?;
    b.join(&invite.uri).await?;
    Ok(Pair { a, b, _dirs: dirs })
}

/// Waits until `node` sees `peer` announce `name` as a subscription or registration.
async fn wait_announced(node: &Node, peer: &Node, name: &str) -> Result<()> {
    let id = peer.peer_id().to_string();
    for _ in 0..600 {
        let seen = node.peers().await?.iter().any(|p| {
            p.peer_id == id
                && (p.subscriptions.iter().any(|s| s == name)
                    || p.registrations.iter().any(|r| r == name))
        });
        if seen {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bail!("{name} was never announced")
}

async fn pubsub_round_trips(p: &Pair, size: usize, warmup: usize, n: usize) -> Result<Summary> {
    let mut pings = p.b.subscribe("bench.ping").await?;
    let mut pongs = p.a.subscribe("bench.pong").await?;
    wait_announced(&p.a, &p.b, "bench.ping").await?;
    wait_announced(&p.b, &p.a, "bench.pong").await?;
    let b = p.b.clone();
    let echo = tokio::spawn(async move {
        while let Some(msg) = pings.recv().await {
            if b.publish("bench.pong", msg.payload).await.is_err() {
                break;
            }
        }
    });
    let payload = Bytes::from(vec![7u8; size]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        p.a.publish("bench.ping", payload.clone()).await?;
        pongs.recv().await.context("pong stream ended")?;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    echo.abort();
    Ok(Summary::of(samples))
}

async fn rpc_round_trips(p: &Pair, size: usize, warmup: usize, n: usize) -> Result<Summary> {
    if p.b
        .register("bench.echo", |r: Request| async move { Ok(r.args) })
        .await
        .is_ok()
    {
        wait_announced(&p.a, &p.b, "bench.echo").await?;
    }
    let payload = Bytes::from(vec![7u8; size]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        p.a.call("bench.echo", payload.clone(), CallOptions::default())
            .await?;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    Ok(Summary::of(samples))
}

async fn latency(
    iterations: usize,
    warmup: usize,
    sizes: &[usize],
    transports: &[Transport],
    out: PathBuf,
) -> Result<()> {
    let mut rows = Vec::new();
    println!(
        "{:<10} {:<6} {:>8} {:>12} {:>12} {:>12}",
        "case", "path", "bytes", "median µs", "p99 µs", "mean µs"
    );
    for &transport in transports {
        let p = pair(transport).await?;
        for &size in sizes {
            for case in ["pubsub", "rpc"] {
                let s = match case {
                    "pubsub" => pubsub_round_trips(&p, size, warmup, iterations).await?,
                    _ => rpc_round_trips(&p, size, warmup, iterations).await?,
                };
                println!(
                    "{:<10} {:<6} {:>8} {:>12.1} {:>12.1} {:>12.1}",
                    case,
                    transport.name(),
                    size,
                    s.median_us,
                    s.p99_us,
                    s.mean_us
                );
                rows.push(serde_json::json!({
                    "scenario": "latency", "case": case, "transport": transport.name(),
                    "bytes": size, "iterations": iterations, "median_us": s.median_us,
                    "p99_us": s.p99_us, "mean_us": s.mean_us, "min_us": s.min_us, "max_us": s.max_us,
                }));
            }
        }
        p.a.shutdown().await;
        p.b.shutdown().await;
    }
    std::fs::create_dir_all(&out)?;
    let file = out.join("latency.json");
    std::fs::write(&file, serde_json::to_string_pretty(&rows)?)?;
    println!("results written to {}", file.display());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Latency {
            iterations,
            warmup,
            sizes,
            transports,
            out,
        } => {
            if iterations == 0 {
                bail!("--iterations must be at least 1");
            }
            latency(iterations, warmup, &sizes, &transports, out).await
        }
    }
}
