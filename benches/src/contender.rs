//! The contract every measured system implements.
//!
//! A contender is one system set up as a pair of endpoints on this machine
//! (two nodes, two swarms, a client and a server through a broker…). Each
//! operation returns `Ok(None)` when the system has no such operation, and an
//! error when it has one but the measurement failed. Implementations must run
//! everything on loopback and clean up on drop.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::stats::Summary;

/// Messages (or calls) per second and payload bytes per second, measured once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Messages or calls per second.
    pub per_sec: f64,
    /// Payload bytes per second (messages × payload size).
    pub bytes_per_sec: f64,
}

impl Rate {
    /// The rate of `count` messages of `size` bytes in `elapsed`.
    pub fn of(count: usize, size: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            per_sec: count as f64 / secs,
            bytes_per_sec: (count * size) as f64 / secs,
        }
    }
}

/// The result type of one measurement.
pub type Measured<T> = anyhow::Result<Option<T>>;

/// One system under measurement. All methods run on a tokio runtime.
pub trait Contender: Send {
    /// Short name shown in tables, e.g. `atmosphere/tcp`, `libp2p-stream/tcp`, `zenoh`, `nats`.
    fn name(&self) -> String;

    /// Sequential pub/sub round trips (publish → the other side's subscriber
    /// publishes back → our subscriber receives), `warmup` unmeasured first.
    fn pubsub_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>>;

    /// One publisher → one subscriber: publish `count` messages of `size`
    /// bytes as fast as the system allows; elapsed from the first publish to
    /// the last message received by the subscriber. All must arrive.
    fn pubsub_throughput(&mut self, size: usize, count: usize) -> BoxFuture<'_, Measured<Rate>>;

    /// Sequential request/response round trips with `size`-byte arguments echoed back.
    fn rpc_latency(
        &mut self,
        size: usize,
        warmup: usize,
        iters: usize,
    ) -> BoxFuture<'_, Measured<Summary>>;

    /// `count` calls of `size` bytes with `concurrency` calls in flight at once.
    fn rpc_throughput(
        &mut self,
        size: usize,
        concurrency: usize,
        count: usize,
    ) -> BoxFuture<'_, Measured<Rate>>;

    /// Moves `total` bytes one way as fast as possible (bulk transfer).
    fn bulk(&mut self, total: usize) -> BoxFuture<'_, Measured<Rate>>;
}

/// A contender that could not be set up, with the reason (shown in the report).
pub struct Unavailable {
    /// The contender's name.
    pub name: String,
    /// Why it could not run (missing binary, feature not built, …).
    pub reason: String,
}

/// Either a ready contender or why it is missing.
pub enum Setup {
    /// Ready to measure.
    Ready(Box<dyn Contender>),
    /// Not available on this machine or in this build.
    Missing(Unavailable),
}
