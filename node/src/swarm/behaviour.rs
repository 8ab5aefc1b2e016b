//! The node's composed `NetworkBehaviour`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use std::sync::Arc;

use libp2p::{
    autonat, dcutr, gossipsub, identify, identity::Keypair, kad, mdns, relay,
    swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, upnp, Multiaddr, PeerId,
    StreamProtocol,
};

use atmosphere_behaviours::{channel, heartbeat, membership, train};

use super::ip_only::IpOnly;
use super::reachability;
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
    pub autonat: IpOnly<autonat::v2::client::Behaviour>,
    pub autonat_server: autonat::v2::server::Behaviour,
    pub upnp: Toggle<upnp::tokio::Behaviour>,
    pub train: train::Behaviour,
    pub heartbeat: heartbeat::Behaviour,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub pairing: atmosphere_behaviours::pairing::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
}

impl MeshBehaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        name: &str,
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
        // Only members go into the routing table (the node adds them once
        // verified): a relay or any peer outside our meshes is never handed
        // out to, or dialled by, Kademlia's queries and bootstraps.
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad =
            kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
        // Inside a mesh there is often no confirmed external address (LAN only),
        // so client mode would never answer: always serve.
        // A relay server talks to many peers outside its meshes: it does not
        // answer Kademlia queries, which would hand them its members.
        kad.set_mode(Some(if config.relay_server {
            kad::Mode::Client
        } else {
            kad::Mode::Server
        }));
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
            membership: membership::Behaviour::new(peer, membership_config(config)),
            channel: channel::Behaviour::default(),
            relay_client,
            relay: Toggle::from(relay),
            dcutr: dcutr::Behaviour::new(peer),
            autonat: IpOnly(autonat::v2::client::Behaviour::new(
                rand::make_rng(),
                autonat::v2::client::Config::default()
                    .with_max_candidates(reachability::MAX_TESTED),
            )),
            autonat_server: autonat::v2::server::Behaviour::default(),
            upnp: Toggle::from(config.upnp.then(upnp::tokio::Behaviour::default)),
            train: train::Behaviour::new(peer, train_config),
            heartbeat: heartbeat::Behaviour::new(peer, heartbeat_config),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(format!("atmosphere/{VERSION}")),
            ),
            mdns: Toggle::from(mdns),
            pairing: atmosphere_behaviours::pairing::Behaviour::new(
                peer,
                atmosphere_behaviours::pairing::Config::default().with_name(name.to_owned()),
            ),
            kad,
            gossipsub,
        })
    }
}

/// How long a relay server keeps a non-member that holds no reservation or
/// circuit (a joiner's circuit, an open relay's client about to reserve).
pub(crate) const NON_MEMBER_GRACE: Duration = Duration::from_secs(30);

/// Membership checks. A relay server keeps non-members for
/// [`NON_MEMBER_GRACE`], and as long as they hold a reservation or circuit
/// (the node marks them exempt), as many as it has reservations and
/// circuits on top of the usual unverified bound.
fn membership_config(config: &Config) -> membership::Config {
    let defaults = membership::Config::default();
    if !config.relay_server {
        return defaults;
    }
    membership::Config {
        non_member_grace: Some(NON_MEMBER_GRACE),
        max_unverified_peers: defaults.max_unverified_peers
            + config.relay_max_reservations
            + config.relay_max_circuits,
        ..defaults
    }
}

/// Our relay server's configuration. Members-only (the default): only peers
/// verified as members of one of our meshes may reserve a slot, so circuits
/// only ever lead to members; members open circuits freely, other peers
/// (joiners redeeming an invite through the relay) at [`JoinerCircuits`]'
/// rate, and the member they reach drops them unless they join. Circuits
/// last up to a day with no byte limit. Open (`relay_open`): anyone may
/// reserve and open circuits, with the same limits (libp2p's relay applies
/// one set of limits to every circuit), bounded by libp2p's per-peer and
/// per-IP rate limits.
fn relay_config(config: &Config, shared: Arc<Shared>) -> relay::Config {
    let open = config.relay_open;
    let reserving = shared.clone();
    let is_member = move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| {
        open || read(&reserving.remotes)
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
    relay.reservation_rate_limiters.push(Box::new(is_member));
    relay
        .circuit_src_rate_limiters
        .push(Box::new(JoinerCircuits::new(open, shared)));
    relay
}

/// Circuits a non-member may open on a members-only relay: one per peer
/// and one per source IP address every [`JoinerCircuits::PER_PEER`], and
/// [`JoinerCircuits::PER_MINUTE`] in all. Members are not limited by it
/// (libp2p's own per-peer and per-IP circuit limiters apply to everyone).
pub(crate) struct JoinerCircuits {
    open: bool,
    shared: Arc<Shared>,
    last: HashMap<PeerId, Instant>,
    last_ip: HashMap<std::net::IpAddr, Instant>,
    window: (Instant, u32),
}

impl JoinerCircuits {
    /// Least time between two circuits of one non-member.
    pub(crate) const PER_PEER: Duration = Duration::from_secs(10);
    /// Most circuits of non-members per minute.
    pub(crate) const PER_MINUTE: u32 = 30;
    /// Non-members remembered, at most.
    const MAX_PEERS: usize = 1024;

    fn new(open: bool, shared: Arc<Shared>) -> Self {
        Self {
            open,
            shared,
            last: HashMap::new(),
            last_ip: HashMap::new(),
            window: (Instant::now(), 0),
        }
    }

    /// Whether a non-member may open a circuit now from `ip` (if known).
    fn allow_joiner(&mut self, peer: PeerId, ip: Option<std::net::IpAddr>, now: Instant) -> bool {
        if now.duration_since(self.window.0) >= Duration::from_secs(60) {
            self.window = (now, 0);
            self.last
                .retain(|_, at| now.duration_since(*at) < Self::PER_PEER);
            self.last_ip
                .retain(|_, at| now.duration_since(*at) < Self::PER_PEER);
        }
        if self.window.1 >= Self::PER_MINUTE
            || self.last.len() >= Self::MAX_PEERS
            || self.last_ip.len() >= Self::MAX_PEERS
        {
            return false;
        }
        let recent = |at: &Instant| now.duration_since(*at) < Self::PER_PEER;
        if self.last.get(&peer).is_some_and(recent)
            || ip.is_some_and(|ip| self.last_ip.get(&ip).is_some_and(recent))
        {
            return false;
        }
        self.last.insert(peer, now);
        if let Some(ip) = ip {
            self.last_ip.insert(ip, now);
        }
        self.window.1 += 1;
        true
    }
}

impl relay::RateLimiter for JoinerCircuits {
    fn try_next(&mut self, peer: PeerId, addr: &Multiaddr, now: Instant) -> bool {
        let member = read(&self.shared.remotes)
            .get(&peer)
            .is_some_and(|r| r.connected);
        self.open || member || self.allow_joiner(peer, reachability::ip_of(addr), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_members_get_a_few_circuits_members_are_not_limited() {
        let shared = Arc::new(Shared::new(
            PeerId::random(),
            crate::shared::Limits {
                max_payload: 1024,
                subscription_buffer: 8,
                max_pending_calls: 8,
            },
            8,
            crate::session::OutboxLimits {
                frames: 8,
                bytes: 1024,
                max_payload: 1024,
            },
        ));
        let mut limiter = JoinerCircuits::new(false, shared);
        let start = Instant::now();
        let joiner = PeerId::random();
        let ip = |n: u8| Some(std::net::IpAddr::from([198, 51, 100, n]));
        assert!(limiter.allow_joiner(joiner, ip(1), start));
        assert!(!limiter.allow_joiner(joiner, ip(2), start + Duration::from_secs(1)));
        // Another peer id from the same address: refused too.
        assert!(!limiter.allow_joiner(PeerId::random(), ip(1), start + Duration::from_secs(1)));
        assert!(limiter.allow_joiner(joiner, ip(1), start + JoinerCircuits::PER_PEER));
        // The overall budget per minute.
        let mut allowed = 2;
        for n in 0..100u8 {
            if limiter.allow_joiner(
                PeerId::random(),
                ip(n.saturating_add(10)),
                start + Duration::from_secs(11),
            ) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, JoinerCircuits::PER_MINUTE);
        // A new minute, a new budget.
        assert!(limiter.allow_joiner(PeerId::random(), ip(200), start + Duration::from_secs(61)));
    }
}
