//! Atmosphere itself as a contender: two nodes in this process, joined in a
//! mesh over real loopback sockets.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use atmosphere::{CallOptions, Config, InviteOptions, Node, NodeBuilder, Request};
use bytes::Bytes;
use futures::future::BoxFuture;
use tempfile::TempDir;

use crate::{
    contender::{Contender, Measured, Rate, Setup, Unavailable},
    stats::Summary,
};

/// How long a measurement may take before it is reported as failed.
const LIMIT: Duration = Duration::from_secs(120);

/// The transport our nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP + noise + yamux.
    Tcp,
    /// QUIC.
    Quic,
}

impl Transport {
    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }

    /// `tcp` or `quic`.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// A node configuration for measurements: loopback, no mDNS, buffers large
/// enough that a subscriber keeping up never drops.
pub fn bench_config(dir: &TempDir, transport: Transport) -> Result<Config> {
    let mut config = Config::ephemeral(dir.path());
    config.listen = vec![transport.listen().parse()?];
    config.subscription_buffer = 1 << 20;
    Ok(config)
}

/// Two nodes in one mesh.
pub struct Atmosphere {
    transport: Transport,
    a: Node,
    b: Node,
    /// Makes every measurement's topics unique: re-subscribing a topic just
    /// unsubscribed races with the "unsubscribed" announcement, and
    /// at-most-once delivery would drop messages sent in between.
    round: u64,
    _dirs: (TempDir, TempDir),
}

/// Sets up the pair, or says why it could not.
pub async fn setup(transport: Transport) -> Setup {
    let name = format!("atmosphere/{}", transport.label());
    match Atmosphere::new(transport).await {
        Ok(pair) => Setup::Ready(Box::new(pair)),
        Err(e) => Setup::Missing(Unavailable {
            name,
            reason: format!("{e:#}"),
        }),
    }
}

impl Atmosphere {
    async fn new(transport: Transport) -> Result<Self> {
        let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
        let a = NodeBuilder::new(bench_config(&dirs.0, transport)?)
            .build()
            .await?;
        let b = NodeBuilder::new(bench_config(&dirs.1, transport)?)
            .build()
            .await?;
        a.create_mesh("bench").await?;
        let invite = a.invite(None, InviteOptions::default()).await?;
        b.join(&invite.uri).await?;
        b.register("bench.echo", |r: Request| async move { Ok(r.args) })
            .await?;
        wait_announced(&a, &b, "bench.echo").await?;
        Ok(Self {
            transport,
            a,
            b,
            round: 0,
            _dirs: dirs,
        })
    }
}

/// Waits until `node` sees `peer` announce `name` as a subscription or registration.
pub async fn wait_announced(node: &Node, peer: &Node, name: &str) -> Result<()> {
    let id = peer.peer_id().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let seen = node.peers().await?.iter().any(|p| {
            p.peer_id == id
                && (p.subscriptions.iter().any(|s| s == name)
                    || p.registrations.iter().any(|r| r == name))
        });
        if seen {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{name} was never announced")
}

impl Drop for Atmosphere {
    fn drop(&mut self) {
        let (a, b) = (self.a.clone(), self.b.clone());
        tokio::spawn(async move {
            a.shutdown().await;
            b.shutdown().await;
        });
    }
}

impl Atmosphere {
    fn topic(&mut self, name: &str) -> String {
        self.round += 1;
        format!("bench.{name}.r{}", self.round)
    }

    async fn latency(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let (ping, pong) = (self.topic("ping"), self.topic("pong"));
        let mut pings = self.b.subscribe(&ping).await?;
        let mut pongs = self.a.subscribe(&pong).await?;
        wait_announced(&self.a, &self.b, &ping).await?;
        wait_announced(&self.b, &self.a, &pong).await?;
        let b = self.b.clone();
        let echo = tokio::spawn(async move {
            while let Some(msg) = pings.recv().await {
                if b.publish(&pong, msg.payload).await.is_err() {
                    break;
                }
            }
        });
        let payload = Bytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            self.a.publish(&ping, payload.clone()).await?;
            tokio::time::timeout(LIMIT, pongs.recv())
                .await
                .context("no pong in time")?
                .context("pong stream ended")?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        echo.abort();
        Ok(Summary::of(samples))
    }

    async fn throughput(&mut self, size: usize, count: usize) -> Result<Rate> {
        let topic = self.topic("thr");
        let topic = topic.as_str();
        let mut sub = self.b.subscribe(topic).await?;
        wait_announced(&self.a, &self.b, topic).await?;
        let counter = tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < count {
                match sub.recv().await {
                    Some(_) => seen += 1,
                    None => break,
                }
            }
            (seen, Instant::now(), sub.dropped())
        });
        let payload = Bytes::from(vec![7u8; size]);
        let start = Instant::now();
        for _ in 0..count {
            self.a.publish(topic, payload.clone()).await?;
        }
        let (seen, end, dropped) = tokio::time::timeout(LIMIT, counter)
            .await
            .context("subscriber did not receive everything in time")??;
        if seen < count {
            bail!("only {seen} of {count} messages arrived ({dropped} dropped by a full buffer)");
        }
        Ok(Rate::of(count, size, end - start))
    }

    async fn sequential_calls(&self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let payload = Bytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            self.a
                .call("bench.echo", payload.clone(), CallOptions::default())
                .await?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    async fn concurrent_calls(
        &self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> Result<Rate> {
        let payload = Bytes::from(vec![7u8; size]);
        let per_worker = count.div_ceil(concurrency.max(1));
        let start = Instant::now();
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let a = self.a.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    for _ in 0..per_worker {
                        a.call("bench.echo", payload.clone(), CallOptions::timeout(LIMIT))
                            .await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.await??;
        }
        Ok(Rate::of(
            per_worker * concurrency.max(1),
            size,
            start.elapsed(),
        ))
    }
}

impl Contender for Atmosphere {
    fn name(&self) -> String {
        format!("atmosphere/{}", self.transport.label())
    }

    fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { self.latency(size, warmup, iters).await.map(Some) })
    }

    fn pubsub_throughput(&mut self, size: usize, count: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move { self.throughput(size, count).await.map(Some) })
    }

    fn rpc_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { self.sequential_calls(size, warmup, iters).await.map(Some) })
    }

    fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            self.concurrent_calls(size, concurrency, count)
                .await
                .map(Some)
        })
    }

    fn bulk(&mut self, total: usize) -> BoxFuture<'_, Measured<Rate>> {
        // Bulk for us is pub/sub of 64 KiB messages: the app-level way to move bytes.
        const CHUNK: usize = 64 * 1024;
        Box::pin(async move {
            let rate = self.throughput(CHUNK, total.div_ceil(CHUNK)).await?;
            Ok(Some(rate))
        })
    }
}
