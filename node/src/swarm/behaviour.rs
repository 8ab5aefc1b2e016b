//! The node's composed `NetworkBehaviour`.

use std::time::Duration;

use std::sync::Arc;

use libp2p::{
    dcutr, gossipsub, identify, identity::Keypair, kad, mdns, relay,
    swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, Multiaddr, PeerId, StreamProtocol,
};

use atmosphere_behaviours::{channel, heartbeat, membership, train};

use crate::{
    config::Config,
    error::Error,
    shared::{read, Shared},
    types::VERSION,
};

/// How long a members' circuit may last on our relay (libp2p's default is
/// 2 minutes, which would cut app traffic).
pub(crate) const MEMBER_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// How long a reservation on our relay lasts before the client renews it.
pub(crate) const RESERVATION_DURATION: Duration = Duration::from_secs(3600);

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
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub train: train::Behaviour,
    pub heartbeat: heartbeat::Behaviour,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
}

impl MeshBehaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        shared: Arc<Shared>,
    ) -> Result<Self, Error> {
        let peer = key.public().to_peer_id();
        let relay = config
            .relay_server
            .then(|| relay::Behaviour::new(peer, relay_config(config, shared)));
        let order = config
            .path_order()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let train_config = train::Config {
            order,
            backoff_min: Duration::from_secs(config.reconnect_min_secs),
            backoff_max: Duration::from_secs(config.reconnect_max_secs),
            probe_interval: train::ProbeIntervals {
                ble: Duration::from_secs(config.probe_ble_secs),
                lan: Duration::from_secs(config.probe_lan_secs),
                direct: Duration::from_secs(config.probe_direct_secs),
                relayed: Duration::from_secs(config.probe_relay_secs),
            },
            ..train::Config::default()
        };
        let heartbeat_config = heartbeat::Config {
            default_interval: config.heartbeat_interval(train::PathClass::LanDirect),
            max_missed: config.heartbeat_max_missed,
            ..heartbeat::Config::default()
        };
        let mdns = if config.mdns {
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
            relay_client,
            relay: Toggle::from(relay),
            dcutr: dcutr::Behaviour::new(peer),
            train: train::Behaviour::new(peer, train_config),
            heartbeat: heartbeat::Behaviour::new(peer, heartbeat_config),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(format!("atmosphere/{VERSION}")),
            ),
            mdns: Toggle::from(mdns),
            kad,
            gossipsub,
        })
    }
}

/// Our relay server's configuration. Members-only (the default): only peers
/// verified as members of one of our meshes may reserve a slot or open a
/// circuit, and circuits last up to a day with no byte limit. Open
/// (`relay_open`): anyone may, with the same limits (libp2p's relay applies
/// one set of limits to every circuit), bounded by libp2p's per-peer and
/// per-IP rate limits.
fn relay_config(config: &Config, shared: Arc<Shared>) -> relay::Config {
    let open = config.relay_open;
    let is_member = move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| {
        open || read(&shared.remotes)
            .get(&peer)
            .is_some_and(|r| r.connected)
    };
    let mut relay = relay::Config {
        max_reservations: config.relay_max_reservations,
        max_reservations_per_peer: 4,
        reservation_duration: RESERVATION_DURATION,
        max_circuits: config.relay_max_circuits,
        max_circuits_per_peer: 16,
        max_circuit_duration: MEMBER_CIRCUIT_DURATION,
        max_circuit_bytes: 0,
        ..relay::Config::default()
    };
    relay
        .reservation_rate_limiters
        .push(Box::new(is_member.clone()));
    relay.circuit_src_rate_limiters.push(Box::new(is_member));
    relay
}
