//! The node's composed `NetworkBehaviour`.

use std::time::Duration;

use libp2p::{
    gossipsub, identify, identity::Keypair, kad, mdns, ping, swarm::behaviour::toggle::Toggle,
    swarm::NetworkBehaviour, StreamProtocol,
};

use atmosphere_behaviours::{channel, membership};

use crate::{error::Error, types::VERSION};

/// Identify protocol version string.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/atmosphere/id/1.0.0";
/// Kademlia protocol name (separate DHT from the public IPFS one).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/atmosphere/kad/1.0.0");
/// Largest gossipsub message (network-state records), in bytes.
pub(crate) const MAX_GOSSIP_SIZE: usize = 256 * 1024;

/// Everything one node's swarm runs. Membership comes first so that it can
/// deny connections before the others set up their handlers.
#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    pub membership: membership::Behaviour,
    pub channel: channel::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
}

impl MeshBehaviour {
    pub(crate) fn new(key: &Keypair, mdns_enabled: bool) -> Result<Self, Error> {
        let peer = key.public().to_peer_id();
        let mdns = if mdns_enabled {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| Error::Transport(format!("mDNS: {e}")))?,
            )
        } else {
            None
        };
        let mut kad = kad::Behaviour::with_config(
            peer,
            kad::store::MemoryStore::new(peer),
            kad::Config::new(KAD_PROTOCOL),
        );
        // Inside a mesh there is often no confirmed external address (LAN only),
        // so client mode would never answer: always serve.
        kad.set_mode(Some(kad::Mode::Server));
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_SIZE)
            .heartbeat_interval(Duration::from_secs(1))
            .build()
            .map_err(|e| Error::Transport(format!("gossipsub config: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| Error::Transport(format!("gossipsub: {e}")))?;
        Ok(Self {
            membership: membership::Behaviour::new(peer, membership::Config::default()),
            channel: channel::Behaviour::default(),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(format!("atmosphere/{VERSION}")),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            mdns: Toggle::from(mdns),
            kad,
            gossipsub,
        })
    }
}
