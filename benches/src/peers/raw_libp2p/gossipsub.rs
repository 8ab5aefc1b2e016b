//! Raw gossipsub: two swarms subscribed to the same topics, signed messages,
//! each swarm in its own task taking publish commands through a channel.
//!
//! Gossipsub drops messages it has seen before. Message ids here are the
//! default (source + sequence number), so equal payloads would still pass,
//! but every payload also starts with a counter so a content-based id would
//! not merge them either.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt};
use libp2p::{
    gossipsub::{self, IdentTopic, MessageAuthenticity, PublishError, TopicHash},
    swarm::SwarmEvent,
    Swarm,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    counter::{self, CountJob, Counter},
    swarm::{self, Tasks, REPLY_TIMEOUT},
    Transport,
};
use crate::{
    contender::{Contender, Measured, Rate},
    stats::Summary,
};

/// Largest message gossipsub accepts here (64 KiB payloads plus envelope).
const MAX_TRANSMIT: usize = 1 << 20;

/// How long to wait before retrying a refused publish.
const BACKOFF: Duration = Duration::from_millis(1);

/// The three topics: pings (answered on pongs) and counted data.
#[derive(Clone)]
struct Topics {
    ping: TopicHash,
    pong: TopicHash,
    data: TopicHash,
}

impl Topics {
    fn new() -> Self {
        let hash = |name: &str| IdentTopic::new(name).hash();
        Self {
            ping: hash("bench.ping"),
            pong: hash("bench.pong"),
            data: hash("bench.data"),
        }
    }

    fn all(&self) -> [&TopicHash; 3] {
        [&self.ping, &self.pong, &self.data]
    }
}

/// A publish request to a swarm task.
struct Publish {
    topic: TopicHash,
    data: Bytes,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// The handles of one swarm task.
struct Node {
    publish: mpsc::Sender<Publish>,
    pongs: mpsc::Receiver<Bytes>,
    counts: mpsc::Sender<CountJob>,
}

/// Two gossipsub swarms.
pub(super) struct Gossipsub {
    name: String,
    a: Node,
    b: Node,
    topics: Topics,
    seq: u64,
    /// Publishes refused (`AllQueuesFull`, …) and retried so far.
    retries: u64,
    _tasks: Tasks,
}

fn behaviour(key: &libp2p::identity::Keypair) -> Result<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_TRANSMIT)
        // Only shortens setup: the mesh forms at the first heartbeat.
        .heartbeat_initial_delay(Duration::from_millis(100))
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))?;
    let mut behaviour = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| anyhow!("gossipsub: {e}"))?;
    for name in ["bench.ping", "bench.pong", "bench.data"] {
        behaviour.subscribe(&IdentTopic::new(name))?;
    }
    Ok(behaviour)
}

/// Sets up the contender; returns once each swarm has the other in its mesh
/// for every topic.
pub(super) async fn setup(transport: Transport) -> Result<Gossipsub> {
    let mut a = swarm::build(transport, behaviour)?;
    let mut b = swarm::build(transport, behaviour)?;
    swarm::connect(transport, &mut a, &mut b).await?;
    let topics = Topics::new();
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    swarm::drive_until(&mut a, &mut b, "the gossipsub mesh", |a, b| {
        topics.all().into_iter().all(|t| {
            a.behaviour().mesh_peers(t).any(|p| *p == b_id)
                && b.behaviour().mesh_peers(t).any(|p| *p == a_id)
        })
    })
    .await?;
    let mut tasks = Tasks::default();
    Ok(Gossipsub {
        name: format!("libp2p-gossipsub/{}", transport.label()),
        a: spawn(a, topics.clone(), &mut tasks),
        b: spawn(b, topics.clone(), &mut tasks),
        topics,
        seq: 0,
        retries: 0,
        _tasks: tasks,
    })
}

/// Runs `swarm` in a task: publishes on request, answers pings with pongs,
/// hands pongs over and counts data messages.
fn spawn(mut swarm: Swarm<gossipsub::Behaviour>, topics: Topics, tasks: &mut Tasks) -> Node {
    let (publish, mut commands) = mpsc::channel::<Publish>(64);
    let (pong_tx, pongs) = mpsc::channel(16);
    let (mut counter, counts) = Counter::new();
    tasks.add(tokio::spawn(async move {
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(Publish { topic, data, reply }) = command else { break };
                    let result = swarm.behaviour_mut().publish(topic, data.to_vec()).map(drop);
                    let _ = reply.send(result);
                }
                event = swarm.select_next_some() => {
                    let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event else {
                        continue;
                    };
                    if message.topic == topics.data {
                        counter.count();
                    } else if message.topic == topics.ping {
                        // A lost pong shows up as a timeout on the other side.
                        let _ = swarm.behaviour_mut().publish(topics.pong.clone(), message.data);
                    } else if message.topic == topics.pong {
                        let _ = pong_tx.try_send(Bytes::from(message.data));
                    }
                }
            }
        }
    }));
    Node {
        publish,
        pongs,
        counts,
    }
}

impl Gossipsub {
    /// A `size`-byte payload starting with a fresh sequence number.
    fn unique(&mut self, size: usize) -> Bytes {
        self.seq += 1;
        let mut data = vec![7u8; size];
        let seq = self.seq.to_be_bytes();
        let n = size.min(seq.len());
        data[..n].copy_from_slice(&seq[seq.len() - n..]);
        Bytes::from(data)
    }

    /// Publishes `data` from A, retrying (after [`BACKOFF`]) while gossipsub
    /// refuses it for full queues or no subscribed peer.
    async fn publish(&mut self, topic: &TopicHash, data: Bytes) -> Result<()> {
        let give_up = Instant::now() + REPLY_TIMEOUT;
        loop {
            let (reply, result) = oneshot::channel();
            let request = Publish {
                topic: topic.clone(),
                data: data.clone(),
                reply,
            };
            self.a
                .publish
                .send(request)
                .await
                .map_err(|_| anyhow!("swarm task stopped"))?;
            match result.await.map_err(|_| anyhow!("swarm task stopped"))? {
                Ok(()) => return Ok(()),
                Err(PublishError::AllQueuesFull(_) | PublishError::NoPeersSubscribedToTopic)
                    if Instant::now() < give_up =>
                {
                    self.retries += 1;
                    tokio::time::sleep(BACKOFF).await;
                }
                Err(e) => bail!("publish failed after {} retries: {e}", self.retries),
            }
        }
    }

    /// A publishes on the ping topic, B republishes on the pong topic.
    async fn ping_pong(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let mut samples = Vec::with_capacity(iters);
        let ping = self.topics.ping.clone();
        for i in 0..warmup + iters {
            let data = self.unique(size);
            let start = Instant::now();
            self.publish(&ping, data).await?;
            tokio::time::timeout(REPLY_TIMEOUT, self.a.pongs.recv())
                .await
                .map_err(|_| anyhow!("no pong"))?
                .ok_or_else(|| anyhow!("swarm task stopped"))?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    /// A publishes `count` messages on the data topic; B counts them.
    async fn publish_many(&mut self, size: usize, count: usize) -> Result<Rate> {
        if count == 0 {
            return Ok(Rate::of(0, size, Duration::ZERO));
        }
        let arrived = counter::expect(&self.b.counts, count).await?;
        let topic = self.topics.data.clone();
        let start = Instant::now();
        for _ in 0..count {
            let data = self.unique(size);
            self.publish(&topic, data).await?;
        }
        let what = format!("the last message ({} publishes retried)", self.retries);
        let end = counter::finished(arrived, &what).await?;
        Ok(Rate::of(count, size, end - start))
    }
}

impl Contender for Gossipsub {
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

    fn rpc_latency(&mut self, _: usize, _: usize, _: usize) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async { Ok(None) })
    }

    fn rpc_throughput(&mut self, _: usize, _: usize, _: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async { Ok(None) })
    }

    fn bulk(&mut self, _: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async { Ok(None) })
    }
}
