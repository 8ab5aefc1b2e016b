//! Raw rust-libp2p peers: what Atmosphere is built on, without Atmosphere.
//!
//! - [`stream`]: the floor of the stack — `libp2p-stream` with one long-lived
//!   stream per direction, length-prefixed frames and write batching in the
//!   application (yamux and QUIC do not batch writes themselves).
//! - [`gossipsub`]: raw gossipsub pub/sub.
//! - [`request_response`]: raw request-response with CBOR byte strings.
//!
//! Each sets up two swarms in this process on loopback, connected to each
//! other, each driven by its own task; the tasks stop when the contender is
//! dropped.

mod counter;
mod gossipsub;
mod link;
mod request_response;
mod stream;
mod swarm;

use crate::contender::{Contender, Setup, Unavailable};

/// The transport under the swarms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with Noise and Yamux (`TCP_NODELAY` on).
    Tcp,
    /// QUIC v1.
    Quic,
}

/// Turns a setup result into a [`Setup`] named `name`.
fn ready<C: Contender + 'static>(name: String, result: anyhow::Result<C>) -> Setup {
    match result {
        Ok(contender) => Setup::Ready(Box::new(contender)),
        Err(error) => Setup::Missing(Unavailable {
            name,
            reason: format!("setup failed: {error:#}"),
        }),
    }
}

/// The raw-stream baseline (`libp2p-stream/tcp` or `libp2p-stream/quic`):
/// pub/sub, RPC over one multiplexed stream pair, and bulk transfer.
pub async fn stream(transport: Transport) -> Setup {
    let name = format!("libp2p-stream/{}", transport.label());
    ready(name, stream::setup(transport).await)
}

/// Raw gossipsub (`libp2p-gossipsub/tcp` or `/quic`): pub/sub only.
pub async fn gossipsub(transport: Transport) -> Setup {
    let name = format!("libp2p-gossipsub/{}", transport.label());
    ready(name, gossipsub::setup(transport).await)
}

/// Raw request-response (`libp2p-reqresp/tcp` or `/quic`): RPC, and a call
/// as its pub/sub round trip.
pub async fn request_response(transport: Transport) -> Setup {
    let name = format!("libp2p-reqresp/{}", transport.label());
    ready(name, request_response::setup(transport).await)
}

#[cfg(test)]
mod tests;
