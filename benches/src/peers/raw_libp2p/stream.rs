//! The raw-stream baseline: `libp2p-stream` with one long-lived stream per
//! direction, length-prefixed frames and write batching in the application
//! (see [`super::link`]), plus one raw stream A → B for bulk transfer.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::{future::BoxFuture, AsyncReadExt, AsyncWriteExt, StreamExt, TryStreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use tokio::sync::{mpsc, oneshot};

use super::{
    counter,
    link::{Frame, Kind, Link, BATCH_BYTES},
    swarm::{self, Tasks, REPLY_TIMEOUT, SETUP_TIMEOUT},
    Transport,
};
use crate::{
    contender::{Contender, Measured, Rate},
    stats::Summary,
};

/// The framed message stream.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh-bench/frames/1.0.0");
/// The raw bulk-transfer stream.
const BULK: StreamProtocol = StreamProtocol::new("/mesh-bench/bulk/1.0.0");

/// A bulk transfer for B's bulk reader to wait for.
struct BulkJob {
    total: usize,
    done: oneshot::Sender<Instant>,
}

/// Two swarms joined by `libp2p-stream` streams.
pub(super) struct RawStream {
    name: String,
    /// A's link (A → B frames, B → A replies).
    a: Link,
    /// B's link; only its count requests are used from here.
    b: Link,
    /// A's raw bulk stream to B.
    bulk: Stream,
    bulk_jobs: mpsc::Sender<BulkJob>,
    next_id: u64,
    _tasks: Tasks,
}

/// Sets up the contender.
pub(super) async fn setup(transport: Transport) -> Result<RawStream> {
    let mut a = swarm::build(transport, |_| Ok(libp2p_stream::Behaviour::new()))?;
    let mut b = swarm::build(transport, |_| Ok(libp2p_stream::Behaviour::new()))?;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let mut a_ctl = a.behaviour().new_control();
    let mut b_ctl = b.behaviour().new_control();
    let mut a_incoming = a_ctl.accept(PROTOCOL)?;
    let mut b_incoming = b_ctl.accept(PROTOCOL)?;
    let mut b_bulk_incoming = b_ctl.accept(BULK)?;
    swarm::connect(transport, &mut a, &mut b).await?;
    let mut tasks = Tasks::default();
    tasks.add(swarm::spawn_driver(a));
    tasks.add(swarm::spawn_driver(b));

    let streams = async {
        let a_out = open(&mut a_ctl, b_id, PROTOCOL, &mut b_incoming).await?;
        let b_out = open(&mut b_ctl, a_id, PROTOCOL, &mut a_incoming).await?;
        let bulk = open(&mut a_ctl, b_id, BULK, &mut b_bulk_incoming).await?;
        anyhow::Ok((a_out, b_out, bulk))
    };
    let ((a_out, b_in), (b_out, a_in), (bulk, bulk_in)) =
        tokio::time::timeout(SETUP_TIMEOUT, streams)
            .await
            .map_err(|_| anyhow!("timed out opening streams"))??;
    let a_link = Link::spawn(a_out, a_in, &mut tasks);
    let b_link = Link::spawn(b_out, b_in, &mut tasks);
    let (bulk_jobs, jobs) = mpsc::channel(4);
    tasks.add(tokio::spawn(bulk_reader(bulk_in, jobs)));
    Ok(RawStream {
        name: format!("libp2p-stream/{}", transport.label()),
        a: a_link,
        b: b_link,
        bulk,
        bulk_jobs,
        next_id: 0,
        _tasks: tasks,
    })
}

/// Opens a stream to `peer` and takes it from the other side's `incoming`:
/// (ours, theirs).
async fn open(
    control: &mut Control,
    peer: PeerId,
    protocol: StreamProtocol,
    incoming: &mut IncomingStreams,
) -> Result<(Stream, Stream)> {
    let (ours, theirs) = tokio::join!(control.open_stream(peer, protocol), incoming.next());
    let ours = ours.context("opening a stream")?;
    let (_, theirs) = theirs.context("no inbound stream")?;
    Ok((ours, theirs))
}

/// Reads the bulk stream: for each job, `total` bytes, then reports the time.
async fn bulk_reader(mut stream: Stream, mut jobs: mpsc::Receiver<BulkJob>) -> std::io::Result<()> {
    let mut buf = vec![0u8; BATCH_BYTES];
    while let Some(job) = jobs.recv().await {
        let mut got = 0;
        while got < job.total {
            let want = buf.len().min(job.total - got);
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        let _ = job.done.send(Instant::now());
    }
    Ok(())
}

impl RawStream {
    /// A sends a ping frame, B's reader answers with a pong, A waits for it.
    async fn ping_pong(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let payload = Bytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            let frame = Frame {
                kind: Kind::Ping,
                id: 0,
                payload: payload.clone(),
            };
            self.a
                .tx
                .send(frame)
                .await
                .map_err(|_| anyhow!("writer stopped"))?;
            tokio::time::timeout(REPLY_TIMEOUT, self.a.pongs.recv())
                .await
                .map_err(|_| anyhow!("no pong"))?
                .context("reader stopped")?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    /// A queues `count` data frames for its batching writer; B's reader
    /// counts them. Timed from the first send to the last frame read.
    async fn publish_many(&mut self, size: usize, count: usize) -> Result<Rate> {
        if count == 0 {
            return Ok(Rate::of(0, size, std::time::Duration::ZERO));
        }
        let arrived = counter::expect(&self.b.counts, count).await?;
        let payload = Bytes::from(vec![7u8; size]);
        let start = Instant::now();
        for _ in 0..count {
            let frame = Frame {
                kind: Kind::Data,
                id: 0,
                payload: payload.clone(),
            };
            self.a
                .tx
                .send(frame)
                .await
                .map_err(|_| anyhow!("writer stopped"))?;
        }
        let end = counter::finished(arrived, "the last message").await?;
        Ok(Rate::of(count, size, end - start))
    }

    /// Sequential calls: request frame A → B, response frame B → A.
    async fn calls(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let payload = Bytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            self.next_id += 1;
            let start = Instant::now();
            self.a.call(self.next_id, payload.clone()).await?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    /// `count` calls with `concurrency` in flight, multiplexed by id over
    /// the one stream pair.
    async fn concurrent_calls(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> Result<Rate> {
        let payload = Bytes::from(vec![7u8; size]);
        let base = self.next_id;
        self.next_id += count as u64;
        let link = &self.a;
        let start = Instant::now();
        futures::stream::iter(0..count as u64)
            .map(|i| link.call(base + 1 + i, payload.clone()))
            .buffer_unordered(concurrency.max(1))
            .try_for_each(|reply| async move {
                if reply.len() == size {
                    Ok(())
                } else {
                    Err(anyhow!("echo of {} bytes for {size}", reply.len()))
                }
            })
            .await?;
        Ok(Rate::of(count, size, start.elapsed()))
    }

    /// A writes 64 KiB chunks straight to the bulk stream; B reads until
    /// `total` bytes have arrived.
    async fn transfer(&mut self, total: usize) -> Result<Rate> {
        let (done, arrived) = oneshot::channel();
        self.bulk_jobs
            .send(BulkJob { total, done })
            .await
            .map_err(|_| anyhow!("bulk reader stopped"))?;
        let chunk = vec![7u8; BATCH_BYTES];
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            self.bulk.write_all(&chunk[..n]).await?;
            sent += n;
        }
        self.bulk.flush().await?;
        let end = counter::finished(arrived, "the last byte").await?;
        // Like the other contenders: "messages" are the 64 KiB chunks.
        let secs = (end - start).as_secs_f64().max(1e-9);
        Ok(Rate {
            per_sec: total.div_ceil(BATCH_BYTES) as f64 / secs,
            bytes_per_sec: total as f64 / secs,
        })
    }
}

impl Contender for RawStream {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { self.ping_pong(size, warmup, iters).await.map(Some) })
    }

    fn pubsub_throughput(&mut self, size: usize, count: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async move { self.publish_many(size, count).await.map(Some) })
    }

    fn rpc_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { self.calls(size, warmup, iters).await.map(Some) })
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
        Box::pin(async move { self.transfer(total).await.map(Some) })
    }
}
