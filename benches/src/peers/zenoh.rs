//! Zenoh in peer mode over TCP, like its `z_ping`/`z_pong` and
//! `z_pub_thr`/`z_sub_thr` examples.
//!
//! [`setup`] opens two sessions in this process, both configured explicitly
//! so that nothing leaves loopback:
//!
//! - `mode: "peer"`;
//! - session `a` listens on `tcp/127.0.0.1:<free port>` only; session `b`
//!   listens nowhere (the peer default would be `tcp/[::]:0`, all
//!   interfaces) and connects to `a`'s endpoint;
//! - multicast scouting off (no UDP multicast socket at all) and gossip
//!   scouting off, so neither session discovers or dials anything else.
//!
//! Operations:
//!
//! - pub/sub latency: `a` puts on `bench/ping` with
//!   `CongestionControl::Block` and `express(true)`; a callback subscriber on
//!   `b` puts the payload back on `bench/pong` the same way; `a` receives it
//!   through the default FIFO channel.
//! - pub/sub throughput: a declared publisher on `a` with
//!   `CongestionControl::Block` (batching on, as `z_pub_thr`) puts `count`
//!   samples; a callback subscriber on `b` counts them (as `z_sub_thr`).
//! - RPC: a queryable on `bench/echo` (on `b`) replies with the query's
//!   payload; `a` calls `get` through a declared querier (consolidation
//!   `None`, so the reply is handed over as soon as it arrives;
//!   `CongestionControl::Block`; express left off as in `z_get`, since
//!   express queries measured both slower and 4× less throughput here) and
//!   takes the first reply. Concurrency: that many tasks doing sequential
//!   gets.
//! - bulk: 64 KiB samples put through the throughput path. Zenoh has no
//!   stream primitive; large puts (fragmented by Zenoh's transport) are how
//!   it moves bulk data, so this is its fair bulk figure.
//!
//! Zenoh blocks on some calls (`Block` congestion control, closing a
//! session): run it on a multi-threaded tokio runtime.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use tokio::{sync::Notify, task::JoinSet};
use zenoh::{
    bytes::ZBytes,
    handlers::FifoChannelHandler,
    pubsub::{Publisher, Subscriber},
    qos::CongestionControl,
    query::{ConsolidationMode, Querier, Queryable},
    sample::Sample,
    Config, Session, Wait,
};

use super::iperf::free_loopback_port;
use crate::{
    contender::{Contender, Measured, Rate, Setup, Unavailable},
    stats::Summary,
};

/// The name shown in tables.
const NAME: &str = "zenoh/peer-tcp";

/// Bulk transfers are cut into samples of this size.
const BULK_CHUNK: usize = 64 * 1024;

/// How long a run may go without any progress before it is declared failed.
const STALL: Duration = Duration::from_secs(10);

/// How long to wait for declarations to propagate between the sessions.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Opens the two peer sessions, or says why they could not be opened.
pub async fn setup() -> Setup {
    match Zenoh::open().await {
        Ok(zenoh) => Setup::Ready(Box::new(zenoh)),
        Err(err) => Setup::Missing(Unavailable {
            name: NAME.to_string(),
            reason: format!("zenoh peer sessions failed to open: {err:#}"),
        }),
    }
}

/// Zenoh's errors are boxed trait objects, which `anyhow` cannot take with `?`.
trait ZenohContext<T> {
    /// Turns a Zenoh error into an `anyhow` error with `what` as context.
    fn zctx(self, what: &str) -> Result<T>;
}

impl<T> ZenohContext<T> for zenoh::Result<T> {
    fn zctx(self, what: &str) -> Result<T> {
        self.map_err(|err| anyhow!("{what}: {err}"))
    }
}

/// Two peer sessions in this process: `a` measures, `b` answers.
///
/// The entities each operation needs are declared on first use and kept for
/// the contender's lifetime: re-declaring them per run races with the
/// propagation of the previous run's undeclarations (a query could be routed
/// by a stale route and finish without a reply). Fields drop in order, so
/// the entities are undeclared before the sessions close.
struct Zenoh {
    ping_pong: Option<PingPong>,
    echo: Option<Echo>,
    sinks: HashMap<&'static str, Sink>,
    a: Session,
    b: Session,
}

/// `a`'s ping publisher and pong subscriber, and `b`'s echoing subscriber.
struct PingPong {
    ping: Publisher<'static>,
    pongs: Subscriber<FifoChannelHandler<Sample>>,
    _echo: Subscriber<()>,
}

/// `b`'s echo queryable and `a`'s querier for it.
struct Echo {
    querier: Arc<Querier<'static>>,
    _queryable: Queryable<()>,
}

/// A publisher on `a` and a counting subscriber on `b` for one key.
struct Sink {
    publisher: Publisher<'static>,
    counter: Arc<Counter>,
    _subscriber: Subscriber<()>,
}

/// A peer-mode configuration with scouting off, listening on `listen` and
/// connecting to `connect` (JSON5 lists of endpoints).
fn peer_config(listen: &str, connect: &str) -> Result<Config> {
    let mut config = Config::default();
    for (key, value) in [
        ("mode", r#""peer""#),
        ("listen/endpoints", listen),
        ("connect/endpoints", connect),
        ("scouting/multicast/enabled", "false"),
        ("scouting/gossip/enabled", "false"),
    ] {
        config
            .insert_json5(key, value)
            .zctx(&format!("zenoh config {key} = {value}"))?;
    }
    Ok(config)
}

impl Zenoh {
    async fn open() -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()?));
        let endpoint = format!(r#"["tcp/{addr}"]"#);
        let a = zenoh::open(peer_config(&endpoint, "[]")?)
            .await
            .zctx("opening the listening zenoh session")?;
        let b = zenoh::open(peer_config("[]", &endpoint)?)
            .await
            .zctx("opening the connecting zenoh session")?;
        Ok(Self {
            ping_pong: None,
            echo: None,
            sinks: HashMap::new(),
            a,
            b,
        })
    }

    /// Declares the ping/pong entities (once) and waits until both
    /// publishers see their subscriber.
    async fn ping_pong(&mut self) -> Result<&PingPong> {
        if self.ping_pong.is_none() {
            let pong = self
                .b
                .declare_publisher("bench/pong")
                .congestion_control(CongestionControl::Block)
                .express(true)
                .await
                .zctx("declaring the pong publisher")?;
            let pongs = self
                .a
                .declare_subscriber("bench/pong")
                .await
                .zctx("declaring the pong subscriber")?;
            wait_until("the pong subscriber to reach the pong publisher", || {
                pong.matching_status().wait().map(|m| m.matching())
            })
            .await?;
            let echo = self
                .b
                .declare_subscriber("bench/ping")
                .callback(move |sample| {
                    let _ = pong.put(sample.payload().clone()).wait();
                })
                .await
                .zctx("declaring the ping subscriber")?;
            let ping = self
                .a
                .declare_publisher("bench/ping")
                .congestion_control(CongestionControl::Block)
                .express(true)
                .await
                .zctx("declaring the ping publisher")?;
            wait_until("the ping subscriber to reach the ping publisher", || {
                ping.matching_status().wait().map(|m| m.matching())
            })
            .await?;
            self.ping_pong = Some(PingPong {
                ping,
                pongs,
                _echo: echo,
            });
        }
        self.ping_pong
            .as_ref()
            .context("ping/pong entities missing")
    }

    async fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> Result<Summary> {
        let pp = self.ping_pong().await?;
        // A pong left over from an aborted run would be taken for this run's.
        while pp.pongs.try_recv().zctx("draining pongs")?.is_some() {}
        let payload = ZBytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            pp.ping.put(payload.clone()).await.zctx("putting a ping")?;
            tokio::time::timeout(STALL, pp.pongs.recv_async())
                .await
                .context("no pong within 10 s")?
                .zctx("receiving a pong")?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    /// Declares the publisher and counting subscriber for `key` (once) and
    /// waits until the publisher sees the subscriber.
    async fn sink(&mut self, key: &'static str) -> Result<&Sink> {
        if !self.sinks.contains_key(key) {
            let counter = Arc::new(Counter::new());
            let hits = counter.clone();
            let subscriber = self
                .b
                .declare_subscriber(key)
                .callback(move |_sample| hits.hit())
                .await
                .zctx("declaring the counting subscriber")?;
            let publisher = self
                .a
                .declare_publisher(key)
                .congestion_control(CongestionControl::Block)
                .await
                .zctx("declaring the publisher")?;
            wait_until("the subscriber to reach the publisher", || {
                publisher.matching_status().wait().map(|m| m.matching())
            })
            .await?;
            let sink = Sink {
                publisher,
                counter,
                _subscriber: subscriber,
            };
            self.sinks.insert(key, sink);
        }
        self.sinks.get(key).context("sink missing")
    }

    async fn pubsub_throughput(
        &mut self,
        key: &'static str,
        size: usize,
        count: usize,
    ) -> Result<Rate> {
        let sink = self.sink(key).await?;
        sink.counter.reset(count);
        let payload = ZBytes::from(vec![7u8; size]);
        let start = Instant::now();
        for _ in 0..count {
            sink.publisher
                .put(payload.clone())
                .await
                .zctx("putting a sample")?;
        }
        let end = sink.counter.wait().await?;
        Ok(Rate::of(count, size, end.duration_since(start)))
    }

    /// Declares the echo queryable on `b` and a querier for it on `a` (once),
    /// and waits until the querier sees the queryable.
    async fn echo(&mut self) -> Result<Arc<Querier<'static>>> {
        if self.echo.is_none() {
            let queryable = self
                .b
                .declare_queryable("bench/echo")
                .callback(|query| {
                    let payload = query.payload().cloned().unwrap_or_default();
                    let _ = query.reply(query.key_expr().clone(), payload).wait();
                })
                .await
                .zctx("declaring the echo queryable")?;
            let querier = self
                .a
                .declare_querier("bench/echo")
                .consolidation(ConsolidationMode::None)
                .congestion_control(CongestionControl::Block)
                .await
                .zctx("declaring the echo querier")?;
            wait_until("the echo queryable to reach the querier", || {
                querier.matching_status().wait().map(|m| m.matching())
            })
            .await?;
            self.echo = Some(Echo {
                querier: Arc::new(querier),
                _queryable: queryable,
            });
        }
        self.echo
            .as_ref()
            .map(|echo| echo.querier.clone())
            .context("echo entities missing")
    }

    async fn rpc_latency(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let querier = self.echo().await?;
        let payload = ZBytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            call(&querier, &payload).await?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    async fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> Result<Rate> {
        let querier = self.echo().await?;
        let payload = ZBytes::from(vec![7u8; size]);
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut callers = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (querier, next, payload) = (querier.clone(), next.clone(), payload.clone());
            callers.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    call(&querier, &payload).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = callers.join_next().await {
            done.context("RPC caller task failed")??;
        }
        Ok(Rate::of(count, size, start.elapsed()))
    }
}

/// One `get` with `payload`, returning once the first (only) reply arrived.
async fn call(querier: &Querier<'_>, payload: &ZBytes) -> Result<()> {
    let replies = querier
        .get()
        .payload(payload.clone())
        .await
        .zctx("sending a query")?;
    let reply = replies
        .recv_async()
        .await
        .map_err(|err| anyhow!("no reply to the query: {err}"))?;
    if let Err(err) = reply.result() {
        bail!("the query failed: {err:?}");
    }
    Ok(())
}

/// Polls `ready` until it returns true, for at most [`PROPAGATION`].
async fn wait_until(what: &str, mut ready: impl FnMut() -> zenoh::Result<bool>) -> Result<()> {
    let deadline = Instant::now() + PROPAGATION;
    while !ready().zctx(what)? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Counts samples delivered to a callback and records when the last
/// expected one arrived; reset before each run.
struct Counter {
    target: AtomicUsize,
    seen: AtomicUsize,
    done_at: Mutex<Option<Instant>>,
    done: Notify,
}

impl Counter {
    fn new() -> Self {
        Self {
            target: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
            done_at: Mutex::new(None),
            done: Notify::new(),
        }
    }

    /// Starts a run expecting `target` samples.
    fn reset(&self, target: usize) {
        if let Ok(mut at) = self.done_at.lock() {
            *at = None;
        }
        self.seen.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    /// Called for every sample (from Zenoh's receive thread).
    fn hit(&self) {
        let seen = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if seen == self.target.load(Ordering::SeqCst) {
            if let Ok(mut at) = self.done_at.lock() {
                *at = Some(Instant::now());
            }
            self.done.notify_one();
        }
    }

    /// The last sample of this run arrived.
    fn done_at(&self) -> Result<Option<Instant>> {
        Ok(*self
            .done_at
            .lock()
            .map_err(|_| anyhow!("counter lock poisoned"))?)
    }

    /// When the last sample arrived; fails if no sample arrives for [`STALL`].
    async fn wait(&self) -> Result<Instant> {
        let target = self.target.load(Ordering::SeqCst);
        if target == 0 {
            return Ok(Instant::now());
        }
        let mut seen = self.seen.load(Ordering::SeqCst);
        let mut last_progress = Instant::now();
        loop {
            // A permit left by an earlier run is told apart by `done_at`.
            let _ = tokio::time::timeout(Duration::from_millis(200), self.done.notified()).await;
            if let Some(at) = self.done_at()? {
                return Ok(at);
            }
            let now = self.seen.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                bail!("stalled: {now} of {target} samples arrived");
            }
        }
    }
}

impl Contender for Zenoh {
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
            Zenoh::pubsub_latency(self, size, warmup, iters)
                .await
                .map(Some)
        })
    }

    fn pubsub_throughput(&mut self, size: usize, count: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            Zenoh::pubsub_throughput(self, "bench/thr", size, count)
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
        Box::pin(async move {
            Zenoh::rpc_latency(self, size, warmup, iters)
                .await
                .map(Some)
        })
    }

    fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            Zenoh::rpc_throughput(self, size, concurrency, count)
                .await
                .map(Some)
        })
    }

    fn bulk(&mut self, total: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move {
            let count = total.div_ceil(BULK_CHUNK).max(1);
            Zenoh::pubsub_throughput(self, "bench/bulk", BULK_CHUNK, count)
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
        let mut zenoh = match setup().await {
            Setup::Ready(c) => c,
            Setup::Missing(m) => bail!("zenoh did not set up: {}", m.reason),
        };
        assert_eq!(zenoh.name(), "zenoh/peer-tcp");
        let lat = zenoh
            .pubsub_latency(64, 5, 20)
            .await?
            .context("pubsub latency")?;
        assert!(lat.median_us > 0.0);
        let thr = zenoh
            .pubsub_throughput(64, 1000)
            .await?
            .context("pubsub throughput")?;
        assert!(thr.per_sec > 0.0);
        let rpc = zenoh.rpc_latency(64, 5, 20).await?.context("rpc latency")?;
        assert!(rpc.median_us > 0.0);
        let rpc_thr = zenoh
            .rpc_throughput(64, 4, 200)
            .await?
            .context("rpc throughput")?;
        assert!(rpc_thr.per_sec > 0.0);
        let bulk = zenoh.bulk(4 * 1024 * 1024).await?.context("bulk")?;
        assert!(bulk.bytes_per_sec > 0.0);
        // Operations can be repeated on the same contender.
        zenoh
            .pubsub_latency(1024, 1, 5)
            .await?
            .context("second pubsub latency")?;
        zenoh
            .rpc_latency(1024, 1, 5)
            .await?
            .context("second rpc latency")?;
        Ok(())
    }
}
