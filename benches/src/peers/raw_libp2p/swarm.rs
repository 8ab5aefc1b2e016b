//! Shared swarm setup: two swarms in this process on loopback, connected to
//! each other, each then driven by its own tokio task.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use libp2p::{
    identity::Keypair,
    multiaddr::Protocol,
    noise,
    swarm::{dial_opts::DialOpts, NetworkBehaviour},
    tcp, yamux, Multiaddr, Swarm, SwarmBuilder,
};
use tokio::task::{AbortHandle, JoinHandle};

use super::Transport;

/// How long setup steps (listening, connecting, mesh forming) may take.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for a reply, or for the last message after the last send.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections stay open while the contender lives, used or not.
const IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Transport {
    /// The loopback address to listen on, with an OS-chosen port.
    fn listen_addr(self) -> Multiaddr {
        let transport = match self {
            Transport::Tcp => Protocol::Tcp(0),
            Transport::Quic => Protocol::Udp(0),
        };
        let mut addr = Multiaddr::empty()
            .with(Protocol::Ip4([127, 0, 0, 1].into()))
            .with(transport);
        if self == Transport::Quic {
            addr.push(Protocol::QuicV1);
        }
        addr
    }

    /// The suffix of contender names: `tcp` or `quic`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// A swarm with a fresh identity on `transport` (TCP + Noise + Yamux with
/// `TCP_NODELAY`, or QUIC), with default multiplexer settings like
/// Atmosphere's own nodes. `behaviour` makes the behaviour from the identity.
pub(super) fn build<B, F>(transport: Transport, behaviour: F) -> Result<Swarm<B>>
where
    B: NetworkBehaviour,
    F: FnOnce(&Keypair) -> Result<B>,
{
    let behaviour =
        |key: &Keypair| behaviour(key).map_err(Box::<dyn std::error::Error + Send + Sync>::from);
    let config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(IDLE_TIMEOUT);
    let swarm = match transport {
        Transport::Tcp => SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| anyhow!("TCP transport: {e}"))?
            .with_behaviour(behaviour)
            .map_err(|e| anyhow!("behaviour: {e}"))?
            .with_swarm_config(config)
            .build(),
        Transport::Quic => SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(behaviour)
            .map_err(|e| anyhow!("behaviour: {e}"))?
            .with_swarm_config(config)
            .build(),
    };
    Ok(swarm)
}

/// Polls both swarms (dropping their events) until `done` holds.
pub(super) async fn drive_until<A, B>(
    a: &mut Swarm<A>,
    b: &mut Swarm<B>,
    what: &str,
    mut done: impl FnMut(&mut Swarm<A>, &mut Swarm<B>) -> bool,
) -> Result<()>
where
    A: NetworkBehaviour,
    B: NetworkBehaviour,
{
    let wait = async {
        while !done(a, b) {
            tokio::select! {
                _ = a.select_next_some() => {}
                _ = b.select_next_some() => {}
            }
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow!("timed out after {SETUP_TIMEOUT:?} waiting for {what}"))
}

/// Makes both swarms listen on loopback and `a` dial `b`; returns once each
/// has a connection to the other.
pub(super) async fn connect<A, B>(
    transport: Transport,
    a: &mut Swarm<A>,
    b: &mut Swarm<B>,
) -> Result<()>
where
    A: NetworkBehaviour,
    B: NetworkBehaviour,
{
    a.listen_on(transport.listen_addr())
        .context("listening on loopback")?;
    b.listen_on(transport.listen_addr())
        .context("listening on loopback")?;
    drive_until(a, b, "listen addresses", |a, b| {
        a.listeners().next().is_some() && b.listeners().next().is_some()
    })
    .await?;
    let Some(addr) = b.listeners().next().cloned() else {
        bail!("no listen address");
    };
    let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
    a.dial(DialOpts::peer_id(b_id).addresses(vec![addr]).build())
        .context("dialing the other swarm")?;
    drive_until(a, b, "the connection", |a, b| {
        a.is_connected(&b_id) && b.is_connected(&a_id)
    })
    .await
}

/// Drives `swarm` forever, dropping its events (for behaviours used only
/// through handles, like `libp2p_stream`).
pub(super) fn spawn_driver<B>(mut swarm: Swarm<B>) -> JoinHandle<()>
where
    B: NetworkBehaviour + Send + 'static,
    Swarm<B>: Send,
{
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

/// Tasks that belong to a contender: aborted when it is dropped.
#[derive(Default)]
pub(super) struct Tasks(Vec<AbortHandle>);

impl Tasks {
    /// Takes ownership of `task`: it is aborted with the others on drop.
    pub(super) fn add<T>(&mut self, task: JoinHandle<T>) {
        self.0.push(task.abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
