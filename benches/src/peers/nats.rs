//! NATS core (no JetStream) through a local `nats-server`.
//!
//! [`setup`] starts Debian's `nats-server` binary as a child process bound to
//! `127.0.0.1` on a free port (`-a 127.0.0.1 -p <port>`; no cluster, gateway,
//! leaf-node or monitoring listeners, which are all off unless configured)
//! and connects two `async_nats` clients to it: `a` measures, `b` answers.
//! The server is killed when the contender is dropped.
//!
//! - pub/sub latency: `a` publishes on `bench.ping`; `b`'s subscriber
//!   publishes the payload back on `bench.pong`; both flush after each publish.
//! - pub/sub throughput: `a` publishes `count` messages on `bench.thr` then
//!   flushes; `b` counts them.
//! - RPC: `a` calls `client.request("bench.echo", …)`; a responder task on `b`
//!   publishes each request's payload to its reply subject.
//! - bulk: 64 KiB messages published as fast as possible (the pub/sub
//!   throughput path; NATS has no stream primitive, and 64 KiB is well under
//!   the server's default 1 MiB `max_payload`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt};
use tokio::{
    net::TcpStream,
    process::{Child, Command},
    task::JoinSet,
};

use super::iperf::{find_binary, free_loopback_port};
use crate::{
    contender::{Contender, Measured, Rate, Setup, Unavailable},
    stats::Summary,
};

/// The name shown in tables.
const NAME: &str = "nats";

/// What to run when the server binary is missing.
const INSTALL_HINT: &str = "nats-server not installed: apt-get install -y nats-server";

/// Bulk transfers are cut into messages of this size.
const BULK_CHUNK: usize = 64 * 1024;

/// A subscriber's client-side queue, in messages. async-nats drops messages
/// (slow consumer) when it is full, so it is made large enough that a
/// throughput run is limited by the system, not by this buffer.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;

/// How long a run may go without any progress before it is declared failed.
const STALL: Duration = Duration::from_secs(10);

/// Starts a `nats-server` on loopback and connects two clients to it, or says
/// why it cannot (binary missing, server failed to start).
pub async fn setup() -> Setup {
    let Some(binary) = find_binary("nats-server") else {
        return missing(INSTALL_HINT.to_string());
    };
    match Nats::start(&binary).await {
        Ok(nats) => Setup::Ready(Box::new(nats)),
        Err(err) => missing(format!("nats-server failed to start: {err:#}")),
    }
}

fn missing(reason: String) -> Setup {
    Setup::Missing(Unavailable {
        name: NAME.to_string(),
        reason,
    })
}

/// Two clients of one local server. Field order matters: the clients are
/// dropped (disconnected) before the server is killed.
struct Nats {
    /// The measuring client.
    a: Client,
    /// The answering client.
    b: Client,
    /// The `nats-server` child process (`kill_on_drop`).
    _server: Child,
}

impl Nats {
    async fn start(binary: &std::path::Path) -> Result<Self> {
        let port = free_loopback_port()?;
        let mut server = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_accepting(&mut server, addr).await?;
        let url = format!("nats://{addr}");
        let connect = || async {
            ConnectOptions::new()
                .subscription_capacity(SUBSCRIPTION_CAPACITY)
                .connect(url.as_str())
                .await
                .with_context(|| format!("connecting to {url}"))
        };
        let a = connect().await?;
        let b = connect().await?;
        Ok(Self {
            a,
            b,
            _server: server,
        })
    }
}

/// Waits until the server accepts TCP connections on `addr` (or has exited).
async fn wait_accepting(server: &mut Child, addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if let Some(status) = server.try_wait().context("polling nats-server")? {
            bail!("nats-server exited: {status}");
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server never accepted connections on {addr}")
}

/// Returns once the server has processed everything `client` sent before
/// (subscriptions in particular): a message to a fresh inbox on the same
/// connection comes back only after the server has read what preceded it.
async fn barrier(client: &Client) -> Result<()> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, Bytes::new()).await?;
    client.flush().await?;
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .context("nats barrier timed out")?
        .context("nats barrier subscription ended")?;
    Ok(())
}

impl Nats {
    async fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> Result<Summary> {
        let mut pings = self.b.subscribe("bench.ping").await?;
        let mut pongs = self.a.subscribe("bench.pong").await?;
        barrier(&self.b).await?;
        barrier(&self.a).await?;
        let b = self.b.clone();
        let echo = tokio::spawn(async move {
            while let Some(msg) = pings.next().await {
                if b.publish("bench.pong", msg.payload).await.is_err() || b.flush().await.is_err() {
                    break;
                }
            }
        });
        let result = async {
            let payload = Bytes::from(vec![7u8; size]);
            let mut samples = Vec::with_capacity(iters);
            for i in 0..warmup + iters {
                let start = Instant::now();
                self.a.publish("bench.ping", payload.clone()).await?;
                self.a.flush().await?;
                tokio::time::timeout(STALL, pongs.next())
                    .await
                    .context("no pong within 10 s")?
                    .context("pong subscription ended")?;
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            Ok(Summary::of(samples))
        }
        .await;
        echo.abort();
        let _ = echo.await;
        result
    }

    async fn pubsub_throughput(
        &mut self,
        subject: &str,
        size: usize,
        count: usize,
    ) -> Result<Rate> {
        let mut sub = self.b.subscribe(subject.to_string()).await?;
        barrier(&self.b).await?;
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let mut sink = tokio::spawn(async move {
            while counter.load(Ordering::Relaxed) < count {
                if sub.next().await.is_none() {
                    break;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Instant::now()
        });
        let payload = Bytes::from(vec![7u8; size]);
        let start = Instant::now();
        for _ in 0..count {
            self.a.publish(subject.to_string(), payload.clone()).await?;
        }
        self.a.flush().await?;
        let end = wait_progress(&mut sink, &received, count).await?;
        Ok(Rate::of(count, size, end.duration_since(start)))
    }

    async fn rpc_latency(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let responder = self.responder().await?;
        let result = async {
            let payload = Bytes::from(vec![7u8; size]);
            let mut samples = Vec::with_capacity(iters);
            for i in 0..warmup + iters {
                let start = Instant::now();
                self.a.request("bench.echo", payload.clone()).await?;
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            Ok(Summary::of(samples))
        }
        .await;
        responder.abort();
        let _ = responder.await;
        result
    }

    async fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> Result<Rate> {
        let responder = self.responder().await?;
        let result = async {
            let payload = Bytes::from(vec![7u8; size]);
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut callers = JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (a, next, payload) = (self.a.clone(), next.clone(), payload.clone());
                callers.spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        a.request("bench.echo", payload.clone()).await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = callers.join_next().await {
                done.context("RPC caller task failed")??;
            }
            Ok(Rate::of(count, size, start.elapsed()))
        }
        .await;
        responder.abort();
        let _ = responder.await;
        result
    }

    /// Subscribes `b` to `bench.echo` and answers every request with its payload.
    async fn responder(&self) -> Result<tokio::task::JoinHandle<()>> {
        let mut requests = self.b.subscribe("bench.echo").await?;
        barrier(&self.b).await?;
        let b = self.b.clone();
        Ok(tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                if let Some(reply) = msg.reply {
                    if b.publish(reply, msg.payload).await.is_err() {
                        break;
                    }
                }
            }
        }))
    }
}

/// Waits for `sink` to count `target` messages, failing if `received` stops
/// moving for [`STALL`]; returns the time the last message arrived.
async fn wait_progress(
    sink: &mut tokio::task::JoinHandle<Instant>,
    received: &AtomicUsize,
    target: usize,
) -> Result<Instant> {
    let mut seen = received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), &mut *sink).await {
            Ok(end) => {
                let end = end.context("subscriber task failed")?;
                let got = received.load(Ordering::Relaxed);
                if got < target {
                    bail!("subscription ended after {got} of {target} messages");
                }
                return Ok(end);
            }
            Err(_) => {
                let now = received.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > STALL {
                    sink.abort();
                    return Err(anyhow!(
                        "stalled: {now} of {target} messages arrived (lost or slow consumer)"
                    ));
                }
            }
        }
    }
}

impl Contender for Nats {
    fn name(&self) -> String {
        NAME.to_string()
    }

    fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move {
            Nats::pubsub_latency(self, size, warmup, iters)
                .await
                .map(Some)
        })
    }

    fn pubsub_throughput(&mut self, size: usize, count: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            Nats::pubsub_throughput(self, "bench.thr", size, count)
                .await
                .map(Some)
        })
    }

    fn rpc_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { Nats::rpc_latency(self, size, warmup, iters).await.map(Some) })
    }

    fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            Nats::rpc_throughput(self, size, concurrency, count)
                .await
                .map(Some)
        })
    }

    fn bulk(&mut self, total: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            let count = total.div_ceil(BULK_CHUNK).max(1);
            Nats::pubsub_throughput(self, "bench.bulk", BULK_CHUNK, count)
                .await
                .map(Some)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_operation_runs() -> Result<()> {
        let mut nats = match setup().await {
            Setup::Ready(c) => c,
            Setup::Missing(m) => {
                eprintln!("skipped: {}", m.reason);
                return Ok(());
            }
        };
        assert_eq!(nats.name(), "nats");
        let lat = nats
            .pubsub_latency(64, 5, 20)
            .await?
            .context("pubsub latency")?;
        assert!(lat.median_us > 0.0);
        let thr = nats
            .pubsub_throughput(64, 1000)
            .await?
            .context("pubsub throughput")?;
        assert!(thr.per_sec > 0.0);
        let rpc = nats.rpc_latency(64, 5, 20).await?.context("rpc latency")?;
        assert!(rpc.median_us > 0.0);
        let rpc_thr = nats
            .rpc_throughput(64, 4, 200)
            .await?
            .context("rpc throughput")?;
        assert!(rpc_thr.per_sec > 0.0);
        let bulk = nats.bulk(4 * 1024 * 1024).await?.context("bulk")?;
        assert!(bulk.bytes_per_sec > 0.0);
        // Operations can be repeated on the same contender.
        nats.pubsub_latency(1024, 1, 5)
            .await?
            .context("second pubsub latency")?;
        nats.rpc_latency(1024, 1, 5)
            .await?
            .context("second rpc latency")?;
        Ok(())
    }
}
