//! Raw request-response: `request_response::cbor` with a byte-string payload
//! echoed back, each swarm in its own task taking calls through a channel.
//! Every call opens (and negotiates) a new stream: that is how the protocol
//! works. It has no pub/sub; its "pub/sub round trip" is a call whose
//! response is the echo.

use std::{collections::HashMap, time::Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt, TryStreamExt};
use libp2p::{
    request_response::{self, cbor, OutboundRequestId, ProtocolSupport},
    swarm::SwarmEvent,
    PeerId, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    swarm::{self, Tasks, REPLY_TIMEOUT},
    Transport,
};
use crate::{
    contender::{Contender, Measured, Rate},
    stats::Summary,
};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh-bench/echo/1.0.0");

/// Request and response size limit (well above 64 KiB payloads).
const MAX_MESSAGE: u64 = 4 << 20;

/// Streams (calls) in flight per connection.
const MAX_STREAMS: usize = 256;

/// The request and the response: bytes, encoded as a CBOR byte string.
#[derive(Debug, Serialize, Deserialize)]
struct Payload(Bytes);

type Behaviour = cbor::Behaviour<Payload, Payload>;

/// A call from A's task to B.
struct Call {
    payload: Bytes,
    reply: oneshot::Sender<Result<Bytes, String>>,
}

/// Two request-response swarms; A calls, B echoes.
pub(super) struct RequestResponse {
    name: String,
    calls: mpsc::Sender<Call>,
    _tasks: Tasks,
}

fn behaviour() -> Behaviour {
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_MESSAGE)
        .set_response_size_maximum(MAX_MESSAGE);
    let config = request_response::Config::default()
        .with_request_timeout(REPLY_TIMEOUT)
        .with_max_concurrent_streams(MAX_STREAMS);
    Behaviour::with_codec(codec, [(PROTOCOL, ProtocolSupport::Full)], config)
}

/// Sets up the contender.
pub(super) async fn setup(transport: Transport) -> Result<RequestResponse> {
    let mut a = swarm::build(transport, |_| Ok(behaviour()))?;
    let mut b = swarm::build(transport, |_| Ok(behaviour()))?;
    swarm::connect(transport, &mut a, &mut b).await?;
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    let (calls, call_rx) = mpsc::channel(2 * MAX_STREAMS);
    let (_no_calls, idle) = mpsc::channel(1);
    let mut tasks = Tasks::default();
    tasks.add(tokio::spawn(run(a, b_id, call_rx)));
    tasks.add(tokio::spawn(run(b, a_id, idle)));
    Ok(RequestResponse {
        name: format!("libp2p-reqresp/{}", transport.label()),
        calls,
        _tasks: tasks,
    })
}

/// Drives `swarm`: sends calls to `remote`, echoes requests, completes calls.
async fn run(mut swarm: Swarm<Behaviour>, remote: PeerId, mut calls: mpsc::Receiver<Call>) {
    let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Bytes, String>>> =
        HashMap::new();
    let mut accepting = true;
    loop {
        tokio::select! {
            call = calls.recv(), if accepting => match call {
                Some(Call { payload, reply }) => {
                    let id = swarm.behaviour_mut().send_request(&remote, Payload(payload));
                    pending.insert(id, reply);
                }
                None => accepting = false,
            },
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(event) = event else { continue };
                match event {
                    request_response::Event::Message { message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            // Fails only if the caller is gone, which it reports itself.
                            let _ = swarm.behaviour_mut().send_response(channel, request);
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(response.0));
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(reply) = pending.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl RequestResponse {
    /// One call through A's swarm task; the response is B's echo.
    async fn call(&self, payload: Bytes) -> Result<Bytes> {
        let (reply, response) = oneshot::channel();
        self.calls
            .send(Call { payload, reply })
            .await
            .map_err(|_| anyhow!("swarm task stopped"))?;
        tokio::time::timeout(REPLY_TIMEOUT, response)
            .await
            .map_err(|_| anyhow!("no response"))?
            .map_err(|_| anyhow!("swarm task stopped"))?
            .map_err(|e| anyhow!("call failed: {e}"))
    }

    /// Sequential calls.
    async fn calls(&mut self, size: usize, warmup: usize, iters: usize) -> Result<Summary> {
        let payload = Bytes::from(vec![7u8; size]);
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let start = Instant::now();
            self.call(payload.clone()).await?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        Ok(Summary::of(samples))
    }

    /// `count` calls with `concurrency` in flight.
    async fn concurrent_calls(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> Result<Rate> {
        let payload = Bytes::from(vec![7u8; size]);
        let this = &*self;
        let start = Instant::now();
        futures::stream::iter(0..count)
            .map(|_| this.call(payload.clone()))
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
}

impl Contender for RequestResponse {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// A call whose response is the echo: request-response has no pub/sub.
    fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>> {
        Box::pin(async move { self.calls(size, warmup, iters).await.map(Some) })
    }

    fn pubsub_throughput(&mut self, _: usize, _: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async { Ok(None) })
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

    fn bulk(&mut self, _: usize) -> BoxFuture<'_, Measured<Rate>> {
        Box::pin(async { Ok(None) })
    }
}
