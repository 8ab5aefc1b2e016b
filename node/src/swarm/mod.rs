//! The swarm task: one tokio task owns the `Swarm` and everything that must
//! not be shared (the store, the meshes, the peer directory). The [`crate::Node`]
//! handle talks to it through a bounded [`Command`] channel.

mod behaviour;
mod ble;
mod ip_only;
mod joins;
mod meshes;
mod pairing;
mod paths;
mod reachability;
mod recording;
mod relays;
mod saved;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    core::ConnectedPoint,
    gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash},
    identify,
    identity::Keypair,
    kad, mdns,
    swarm::{dial_opts::DialOpts, dial_opts::PeerCondition, ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Stream, Swarm,
};
use tokio::sync::{mpsc, oneshot};

use atmosphere_behaviours::{
    channel,
    membership::{
        self,
        cert::{Acl, CertificateBody, MeshDescriptor, MeshId},
    },
};

pub(crate) use behaviour::MeshBehaviour;
use behaviour::MeshBehaviourEvent;

use crate::{
    config::Config,
    error::Error,
    invite::InviteUri,
    session::Session,
    shared::{read, write, Remote, Shared},
    store::Store,
    types::{Invite, InviteOptions, JoinReport, MeshInfo, PeerInfo, Status, VERSION},
    wire::{self, Frame, MemberHint, NetworkState, StateAnnouncement, MAX_ADDRS, MAX_MEMBER_HINTS},
};

/// How long a join may take before it is reported as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a refused peer is not re-dialed after mDNS or hints.
const REJECT_COOLDOWN: Duration = Duration::from_secs(600);
/// Most refused peers remembered.
const MAX_REJECTED: usize = 1024;
/// Most peers in the directory (members heard of but maybe not connected).
const MAX_DIRECTORY: usize = 4096;
/// How often sessions are checked for late acknowledgements.
const ACK_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Requests to the swarm task.
pub(crate) enum Command {
    CreateMesh {
        name: String,
        reply: oneshot::Sender<Result<MeshInfo, Error>>,
    },
    Invite {
        mesh: Option<String>,
        options: InviteOptions,
        reply: oneshot::Sender<Result<Invite, Error>>,
    },
    Join {
        invite: InviteUri,
        reply: oneshot::Sender<Result<JoinReport, Error>>,
    },
    ListMeshes {
        reply: oneshot::Sender<Result<Vec<MeshInfo>, Error>>,
    },
    SetAutoReconnect {
        mesh: String,
        on: bool,
        reply: oneshot::Sender<Result<MeshInfo, Error>>,
    },
    Forget {
        mesh: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Peers {
        reply: oneshot::Sender<Result<Vec<PeerInfo>, Error>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Our subscriptions or registrations changed: announce.
    StateChanged,
    /// A peer's state record arrived on its link.
    RemoteState {
        peer: PeerId,
        state: NetworkState,
    },
    /// A link writer stopped.
    LinkClosed {
        peer: PeerId,
        connection: ConnectionId,
    },
    /// The peer's app frames arrive on a new connection (its `Open` frame).
    PeerMoved {
        peer: PeerId,
        connection: ConnectionId,
    },
    /// A BLE scan saw an advertisement.
    BleSighting(atmosphere_transports::ble::Sighting),
    /// Devices nearby (BLE and LAN).
    Nearby {
        reply: oneshot::Sender<Vec<crate::types::NearbyDevice>>,
    },
    /// Pairing mode on (for a mesh we founded) or off.
    PairAccept {
        mesh: Option<String>,
        on: bool,
        reply: oneshot::Sender<Result<crate::types::PairingMode, Error>>,
    },
    /// Ask a nearby device to pair.
    Pair {
        device: String,
        reply: oneshot::Sender<Result<crate::types::PairingSession, Error>>,
    },
    /// The user confirmed (or rejected) a pairing code.
    PairDecide {
        session: u64,
        confirm: bool,
        reply: oneshot::Sender<Result<crate::types::PairingSession, Error>>,
    },
    /// Pairing mode and the recent sessions.
    PairingState {
        reply: oneshot::Sender<(crate::types::PairingMode, Vec<crate::types::PairingSession>)>,
    },
    /// A peer sent something malformed on its link: drop it.
    Misbehaved {
        peer: PeerId,
        reason: String,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A mesh we are in.
pub(crate) struct MeshState {
    pub descriptor: MeshDescriptor,
    pub is_founder: bool,
    pub certificate: membership::cert::Certificate,
    pub acl: Acl,
    pub topic: IdentTopic,
}

/// A member heard of (connected or not).
#[derive(Default)]
struct DirectoryEntry {
    name: Option<String>,
    addrs: Vec<Multiaddr>,
    meshes: HashSet<MeshId>,
}

pub(crate) struct Runtime {
    swarm: Swarm<MeshBehaviour>,
    keypair: Keypair,
    shared: Arc<Shared>,
    store: Store,
    config: Config,
    name: String,
    commands: mpsc::Sender<Command>,
    meshes: HashMap<MeshId, MeshState>,
    topics: HashMap<TopicHash, MeshId>,
    joins: HashMap<PeerId, joins::PendingJoin>,
    /// App streams from peers still being verified (bounded per peer).
    pending_inbound: HashMap<PeerId, Vec<(ConnectionId, Stream)>>,
    connections: HashMap<PeerId, Vec<(ConnectionId, ConnectedPoint)>>,
    directory: HashMap<PeerId, DirectoryEntry>,
    rejected: HashMap<PeerId, Instant>,
    rejected_order: VecDeque<PeerId>,
    /// App streams being opened, and on which connection.
    opening: HashMap<PeerId, Option<ConnectionId>>,
    /// Heartbeat interval set on each connection.
    heartbeat_intervals: HashMap<ConnectionId, Duration>,
    /// Heartbeat answers received per connection.
    heartbeat_samples: HashMap<ConnectionId, u32>,
    /// Peers whose active path is missing heartbeats.
    suspect_peers: HashSet<PeerId>,
    /// Relays we know of and our reservations on them.
    relays: relays::Relays,
    /// Our relay server's and hole punching's counters.
    relay_counters: relays::RelayCounters,
    /// When the first relayed connection to a peer came up (for time to direct).
    relayed_at: HashMap<PeerId, Instant>,
    /// How peers see us and what AutoNAT found.
    reachability: reachability::ReachabilityState,
    /// Peers using our relay server: reservations plus circuits each
    /// (bounded by the relay's own limits).
    relay_users: HashMap<PeerId, u32>,
    /// Prometheus recorders.
    metrics: crate::metrics::NodeMetrics,
    /// When each member last had a working path (unix ms).
    last_seen_ms: HashMap<PeerId, u64>,
    /// Identify results that arrived before the peer was verified.
    early_identify: HashMap<PeerId, identify::Info>,
    /// The Bluetooth LE radio, when the node has one.
    ble: Option<ble::BleState>,
    /// Proximity pairing: mode, sessions, nearby LAN peers.
    pairing: pairing::PairingState,
    state_seq: u64,
    started: Instant,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether an address can be handed to another node: not `0.0.0.0` or
/// `::`, and not a BLE address (found by scanning, it rotates and means
/// nothing off the radio).
fn is_routable_for_hint(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Memory(_) => true,
        _ => false,
    })
}

impl Runtime {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<MeshBehaviour>,
        keypair: Keypair,
        shared: Arc<Shared>,
        store: Store,
        config: Config,
        name: String,
        commands: mpsc::Sender<Command>,
        metrics: crate::metrics::NodeMetrics,
    ) -> Result<Self, Error> {
        let mut runtime = Self {
            swarm,
            keypair,
            shared,
            store,
            config,
            name,
            commands,
            meshes: HashMap::new(),
            topics: HashMap::new(),
            joins: HashMap::new(),
            pending_inbound: HashMap::new(),
            connections: HashMap::new(),
            directory: HashMap::new(),
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
            opening: HashMap::new(),
            heartbeat_intervals: HashMap::new(),
            heartbeat_samples: HashMap::new(),
            last_seen_ms: HashMap::new(),
            suspect_peers: HashSet::new(),
            relays: HashMap::new(),
            relay_counters: relays::RelayCounters::default(),
            reachability: reachability::ReachabilityState::default(),
            relay_users: HashMap::new(),
            metrics,
            relayed_at: HashMap::new(),
            early_identify: HashMap::new(),
            ble: None,
            pairing: pairing::PairingState::default(),
            // Seeded from the clock so that a restarted node's records rank above
            // its previous process's, even ones still in flight.
            state_seq: crate::pubsub::now_ms(),
            started: Instant::now(),
        };
        runtime.load_meshes()?;
        Ok(runtime)
    }

    /// Gives the node a Bluetooth LE radio: listens on it (the listener's
    /// PSM is advertised once it is up). Sightings arrive as
    /// [`Command::BleSighting`].
    pub(crate) fn with_ble(
        mut self,
        link: atmosphere_transports::ble::BoxedLink,
    ) -> Result<Self, Error> {
        let state = ble::BleState::new(link, self.swarm.local_peer_id());
        let addr = state.listen_addr();
        self.swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Transport(format!("cannot listen on BLE {addr}: {e}")))?;
        self.ble = Some(state);
        Ok(self)
    }

    /// Runs until shutdown.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        for addr in self.config.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        // Saved meshes: reconnect to their members (unless paused).
        match self.members_to_watch() {
            Ok(members) => {
                for peer in members {
                    self.watch_member(peer);
                }
            }
            Err(e) => tracing::warn!(error = %e, "store"),
        }
        for addr in self.config.relays.clone() {
            self.add_outside_relay(addr);
        }
        for addr in self.learned_relays() {
            self.add_outside_relay(addr);
        }
        self.reserve_on_relays();
        let mut state_tick = tokio::time::interval(self.config.state_interval());
        let mut ack_tick = tokio::time::interval(ACK_CHECK_INTERVAL);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = state_tick.tick() => self.announce_state(),
                _ = ack_tick.tick() => self.check_acks(),
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
        tracing::info!("node stopped");
    }

    fn local_peer(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::CreateMesh { name, reply } => {
                let _ = reply.send(self.create_mesh(&name));
            }
            Command::Invite {
                mesh,
                options,
                reply,
            } => {
                let _ = reply.send(self.invite(mesh.as_deref(), options));
            }
            Command::Join { invite, reply } => self.join(invite, reply),
            Command::ListMeshes { reply } => {
                let _ = reply.send(self.list_meshes());
            }
            Command::SetAutoReconnect { mesh, on, reply } => {
                let _ = reply.send(self.set_auto_reconnect(&mesh, on));
            }
            Command::Forget { mesh, reply } => {
                let _ = reply.send(self.forget(&mesh));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peers());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| Error::Transport(e.to_string()));
                let _ = reply.send(result);
            }
            Command::StateChanged => self.announce_state(),
            Command::RemoteState { peer, state } => self.on_remote_state(peer, state),
            Command::LinkClosed { peer, connection } => self.on_link_closed(peer, connection),
            Command::PeerMoved { peer, connection } => self.on_peer_moved(peer, connection),
            Command::BleSighting(sighting) => self.on_ble_sighting(sighting),
            Command::Nearby { reply } => {
                let _ = reply.send(self.nearby());
            }
            Command::PairAccept { mesh, on, reply } => {
                let _ = reply.send(self.pair_accept(mesh.as_deref(), on));
            }
            Command::Pair { device, reply } => self.pair_request(&device, reply),
            Command::PairDecide {
                session,
                confirm,
                reply,
            } => {
                let _ = reply.send(self.pair_decide(session, confirm));
            }
            Command::PairingState { reply } => {
                let _ = reply.send((self.pairing_mode(), self.pairing_sessions()));
            }
            Command::Misbehaved { peer, reason } => {
                tracing::warn!(%peer, %reason, "peer sent a malformed frame; disconnecting");
                self.shared.remove_remote(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        self.record_metrics(&event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if ble::is_ble_addr(&address) {
                    self.on_ble_listening(&address);
                    return;
                }
                // A relay server is publicly reachable by definition; libp2p's
                // relay only serves once it has an external address.
                let circuit = relays::is_circuit(&address);
                if self.config.relay_server && !circuit && is_routable_for_hint(&address) {
                    self.swarm.add_external_address(address);
                }
                // Members learn new ways to reach us (a relayed address in
                // particular) at once, not at the next announcement.
                if circuit {
                    self.announce_state();
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => self.on_listener_closed(listener_id),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                if !self.config.relay_server {
                    self.on_external_addrs_changed();
                }
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.on_external_addrs_changed();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let endpoint_for_relays = endpoint.clone();
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, endpoint));
                crate::shared::lock(&self.shared.path_traffic).insert(connection_id, (0, 0));
                self.note_connection(peer_id, &endpoint_for_relays);
                self.on_join_connection(peer_id, connection_id, &endpoint_for_relays);
                self.on_pairing_connection(peer_id, connection_id);
                self.tune_heartbeats(peer_id);
                if self.relays.contains_key(&peer_id) {
                    self.reserve_on_relays();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established),
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                if let Some(peer) = peer_id {
                    self.on_join_dial_failed(peer, connection_id, error.to_string());
                }
                self.on_pairing_dial_failed(connection_id, error.to_string());
            }
            _ => {}
        }
    }

    fn on_connection_closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: u32) {
        if let Some(conns) = self.connections.get_mut(&peer) {
            conns.retain(|(id, _)| *id != connection);
        }
        self.heartbeat_intervals.remove(&connection);
        self.heartbeat_samples.remove(&connection);
        if let Some(session) = self.shared.session(&peer) {
            // A writer idle on this connection would never notice.
            session.detach_connection(connection);
        }
        crate::shared::lock(&self.shared.path_traffic).remove(&connection);
        if self.opening.get(&peer) == Some(&Some(connection)) {
            self.opening.remove(&peer);
        }
        if let Some(parked) = self.pending_inbound.get_mut(&peer) {
            parked.retain(|(c, _)| *c != connection);
        }
        if remaining == 0 {
            self.suspect_peers.remove(&peer);
            self.relayed_at.remove(&peer);
            self.start_deferred_join(peer);
            self.connections.remove(&peer);
            self.pending_inbound.remove(&peer);
            self.early_identify.remove(&peer);
            self.opening.remove(&peer);
            let was_member = {
                let mut remotes = write(&self.shared.remotes);
                match remotes.get_mut(&peer) {
                    Some(remote) => {
                        // The session stays: its outbox holds frames until
                        // the member is back or the linger ends.
                        remote.connected = false;
                        remote.disconnected_at = Some(Instant::now());
                        true
                    }
                    None => false,
                }
            };
            if was_member {
                tracing::info!(%peer, "member disconnected");
                if let Err(e) = self.store.upsert_peer(&peer.to_string(), None, unix_now()) {
                    tracing::warn!(error = %e, "store");
                }
            }
        } else {
            let link_on_it = self
                .shared
                .session(&peer)
                .is_some_and(|s| s.connection() == Some(connection));
            if link_on_it {
                self.on_link_closed(peer, connection);
            }
        }
    }

    fn on_behaviour_event(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Membership(event) => self.on_membership_event(event),
            MeshBehaviourEvent::Channel(event) => self.on_channel_event(event),
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            MeshBehaviourEvent::Train(event) => self.on_train_event(event),
            MeshBehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            MeshBehaviourEvent::Relay(event) => self.on_relay_server_event(event),
            MeshBehaviourEvent::Dcutr(event) => self.on_dcutr_event(event),
            MeshBehaviourEvent::Autonat(event) => self.on_autonat_event(event),
            MeshBehaviourEvent::Upnp(event) => self.on_upnp_event(event),
            MeshBehaviourEvent::Heartbeat(event) => self.on_heartbeat_event(event),
            MeshBehaviourEvent::Pairing(event) => self.on_pairing_event(event),
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.note_lan_nearby(peer, addr.clone());
                    self.add_candidates(peer, std::slice::from_ref(&addr));
                    self.maybe_dial(peer, vec![addr]);
                }
            }
            // Kademlia's addresses for a member are path candidates too.
            MeshBehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) if read(&self.shared.remotes).contains_key(&peer) => {
                let addrs: Vec<Multiaddr> = addresses.iter().cloned().collect();
                self.add_candidates(peer, &addrs);
            }
            MeshBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let acceptance = self.on_gossip(&message);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            _ => {}
        }
    }

    fn on_membership_event(&mut self, event: membership::Event) {
        match event {
            membership::Event::Verified { peer, meshes } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .remove_blacklisted_peer(&peer);
                self.on_verified(peer, meshes)
            }
            membership::Event::Rejected {
                peer,
                reason,
                refused,
            } => {
                tracing::info!(%peer, %reason, refused, "peer rejected");
                // Only a real refusal earns the cooldown; a failed exchange
                // (timeout under load, I/O) is retried on the next hint or tick.
                if refused {
                    self.remember_rejected(peer);
                }
                // A relay keeps non-members connected for a while: they get
                // no gossip (our meshes' state topics) meanwhile.
                if self.config.relay_server {
                    self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
                }
            }
            membership::Event::JoinRequested {
                peer,
                request,
                responder,
            } => self.on_join_request(peer, request, responder),
            membership::Event::Joined {
                peer,
                mesh,
                certificate,
            } => self.on_joined(peer, mesh, certificate),
            membership::Event::JoinRefused { peer, mesh, reason } => {
                tracing::info!(%peer, %mesh, %reason, "join refused");
                self.finish_join(peer, Err(Error::Join(reason)));
            }
        }
    }

    fn on_channel_event(&mut self, event: channel::Event) {
        match event {
            channel::Event::Inbound {
                peer,
                connection,
                stream,
            } => {
                if read(&self.shared.remotes)
                    .get(&peer)
                    .is_some_and(|r| r.connected)
                {
                    self.spawn_reader(peer, connection, stream);
                } else {
                    // Verification may still be under way; park the stream.
                    let parked = self.pending_inbound.entry(peer).or_default();
                    if parked.len() >= paths::MAX_PARKED_STREAMS {
                        parked.remove(0);
                    }
                    parked.push((connection, stream));
                }
            }
            channel::Event::Opened {
                peer,
                connection,
                stream,
                ..
            } => self.on_link_opened(peer, connection, stream),
            channel::Event::OpenFailed {
                peer,
                connection,
                error,
                ..
            } => {
                if self
                    .opening
                    .get(&peer)
                    .is_some_and(|c| c.is_none_or(|c| c == connection))
                {
                    self.opening.remove(&peer);
                }
                tracing::debug!(%peer, %error, "channel stream failed to open");
            }
        }
    }

    fn on_verified(
        &mut self,
        peer: PeerId,
        meshes: std::collections::BTreeMap<MeshId, CertificateBody>,
    ) {
        let acl = acl_of(&peer, &meshes);
        let needs_link = {
            let mut remotes = write(&self.shared.remotes);
            match remotes.get_mut(&peer) {
                Some(remote) => {
                    remote.acl = acl;
                    remote.connected = true;
                    remote.disconnected_at = None;
                    remote.session.connection().is_none()
                }
                None => {
                    let session = Session::new(peer, self.shared.outbox);
                    remotes.insert(peer, Remote::new(acl, session));
                    true
                }
            }
        };
        tracing::info!(%peer, meshes = meshes.len(), "member verified");
        self.rejected.remove(&peer);
        let now = unix_now();
        let peer_str = peer.to_string();
        for (mesh, body) in &meshes {
            let mut cbor = Vec::new();
            wire::encode(body, &mut cbor);
            if let Err(e) = self
                .store
                .save_member(&mesh.to_string(), &peer_str, &cbor, now)
            {
                tracing::warn!(error = %e, "could not save member");
            }
        }
        let entry = self.directory.entry(peer).or_default();
        entry.meshes.extend(meshes.keys().copied());
        if let Err(e) = self.store.upsert_peer(&peer_str, None, now) {
            tracing::warn!(error = %e, "store");
        }
        for (_, endpoint) in self.connections.get(&peer).into_iter().flatten() {
            if let ConnectedPoint::Dialer { address, .. } = endpoint {
                if let Err(e) = self.store.record_endpoint_success(
                    &peer_str,
                    &saved::endpoint_key(address),
                    now,
                    None,
                ) {
                    tracing::warn!(error = %e, "store");
                }
            }
        }
        if let Some(info) = self.early_identify.remove(&peer) {
            self.on_identify(peer, info);
        }
        if self
            .joins
            .get(&peer)
            .is_some_and(|j| j.admitted.is_some() && meshes.contains_key(&j.mesh))
        {
            if let Some(join) = self.joins.get(&peer) {
                let info = self.mesh_info(&join.mesh).ok().or(join.admitted.clone());
                self.finish_join(peer, info.ok_or(Error::Join("the mesh vanished".into())));
            }
        }
        for (connection, stream) in self.pending_inbound.remove(&peer).unwrap_or_default() {
            self.spawn_reader(peer, connection, stream);
        }
        if needs_link {
            self.open_link(peer);
        }
        // Kept connected from now on, unless all its meshes are paused.
        if self
            .members_to_watch()
            .map_or(true, |watched| watched.contains(&peer))
        {
            self.watch_member(peer);
        }
        self.reserve_on_relays();
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        self.note_relay_capability(peer, &info);
        if !read(&self.shared.remotes).contains_key(&peer) {
            // Bounded by the membership behaviour's limit on unverified peers.
            if self.swarm.is_connected(&peer) {
                self.early_identify.insert(peer, info);
            }
            return;
        }
        // How a member sees us (a non-member's word is not taken); a BLE
        // address says nothing about the internet.
        if !ble::is_ble_addr(&info.observed_addr) {
            self.reachability.observed(info.observed_addr.clone());
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(is_routable_for_hint)
            .take(MAX_ADDRS)
            .collect();
        let peer_str = peer.to_string();
        self.add_candidates(peer, &addrs);
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            if let Err(e) = self
                .store
                .add_endpoint(&peer_str, &saved::endpoint_key(addr))
            {
                tracing::warn!(error = %e, "store");
            }
        }
        if self.directory.len() < MAX_DIRECTORY || self.directory.contains_key(&peer) {
            self.directory.entry(peer).or_default().addrs = addrs;
        }
    }

    fn on_remote_state(&mut self, peer: PeerId, state: NetworkState) {
        let applied = {
            let mut remotes = write(&self.shared.remotes);
            remotes
                .get_mut(&peer)
                .map(|r| r.apply_state(&state))
                .unwrap_or(false)
        };
        if !applied {
            return;
        }
        self.note_directory(peer, &state);
        let addrs: Vec<Multiaddr> = state
            .addrs
            .iter()
            .filter(|a| is_routable_for_hint(a))
            .cloned()
            .collect();
        self.add_candidates(peer, &addrs);
        if let Err(e) = self.store.upsert_peer(
            &peer.to_string(),
            Some(&state.name)
                .filter(|n| !n.is_empty())
                .map(|n| n.as_str()),
            unix_now(),
        ) {
            tracing::warn!(error = %e, "store");
        }
        for hint in state.members {
            self.maybe_dial(hint.peer, hint.addrs);
        }
    }

    fn note_directory(&mut self, peer: PeerId, state: &NetworkState) {
        if self.directory.len() >= MAX_DIRECTORY && !self.directory.contains_key(&peer) {
            return;
        }
        let entry = self.directory.entry(peer).or_default();
        if !state.name.is_empty() {
            entry.name = Some(state.name.clone());
        }
        if !state.addrs.is_empty() {
            entry.addrs = state
                .addrs
                .iter()
                .filter(|a| is_routable_for_hint(a))
                .take(MAX_ADDRS)
                .cloned()
                .collect();
        }
    }

    fn on_gossip(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        let Some(mesh) = self.topics.get(&message.topic).copied() else {
            return MessageAcceptance::Ignore;
        };
        let Some(source) = message.source else {
            return MessageAcceptance::Reject;
        };
        let Ok(announcement) = wire::decode::<StateAnnouncement>(&message.data) else {
            return MessageAcceptance::Reject;
        };
        let Some(state) = self.meshes.get(&mesh) else {
            return MessageAcceptance::Ignore;
        };
        let Ok(founder) = state.descriptor.verify() else {
            return MessageAcceptance::Ignore;
        };
        let valid = announcement.mesh == mesh
            && announcement
                .certificate
                .verify(&founder, unix_now().max(0) as u64)
                .is_ok_and(|body| body.peer == source && body.mesh == mesh);
        if !valid {
            return MessageAcceptance::Reject;
        }
        if source != self.local_peer() {
            let state = announcement.state.bounded();
            self.note_directory(source, &state);
            if let Some(entry) = self.directory.get_mut(&source) {
                entry.meshes.insert(mesh);
            }
            if read(&self.shared.remotes).contains_key(&source) {
                self.on_remote_state(source, state);
            } else {
                let addrs = state.addrs.clone();
                self.maybe_dial(source, addrs);
            }
        }
        MessageAcceptance::Accept
    }

    fn remember_rejected(&mut self, peer: PeerId) {
        if self.rejected.insert(peer, Instant::now()).is_none() {
            self.rejected_order.push_back(peer);
            while self.rejected_order.len() > MAX_REJECTED {
                if let Some(old) = self.rejected_order.pop_front() {
                    self.rejected.remove(&old);
                }
            }
        }
    }

    /// Dials a discovered peer unless it is us, connected, or recently refused.
    fn maybe_dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_peer() || self.swarm.is_connected(&peer) || addrs.is_empty() {
            return;
        }
        if self
            .rejected
            .get(&peer)
            .is_some_and(|t| t.elapsed() < REJECT_COOLDOWN)
        {
            return;
        }
        if self.is_paused_member(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// Once a second: joins that took too long, outboxes past their linger,
    /// and the metrics our heartbeats carry.
    fn housekeeping(&mut self) {
        self.advance_joins();
        self.refresh_relay_gauges();
        self.expire_outboxes();
        self.repair_links();
        self.reserve_on_relays();
        self.ble_housekeeping();
        let traffic = self.shared.traffic.snapshot();
        let info = atmosphere_behaviours::heartbeat::LocalInfo {
            capabilities: vec!["pubsub".into(), "rpc".into()],
            endpoints: self.advertised_addrs(),
            metrics: atmosphere_behaviours::heartbeat::Metrics {
                peers: self.shared.connected_count() as u32,
                messages_sent: traffic.frames_sent,
                messages_received: traffic.frames_received,
                uptime_secs: self.started.elapsed().as_secs(),
            },
        };
        self.swarm.behaviour_mut().heartbeat.set_local_info(info);
    }

    /// Our listen addresses worth telling others.
    fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let mut seen = HashSet::new();
        self.swarm
            .listeners()
            .chain(self.swarm.external_addresses())
            .filter(|a| is_routable_for_hint(a) && seen.insert(*a))
            .take(MAX_ADDRS)
            .cloned()
            .collect()
    }

    /// Our state record as sent to `recipient` (member hints limited to the
    /// meshes it shares with us).
    fn state_for(&self, recipient: &PeerId) -> NetworkState {
        let shared_meshes: HashSet<MeshId> = self
            .swarm
            .behaviour()
            .membership
            .verified(recipient)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        let members = self
            .directory
            .iter()
            .filter(|(p, e)| {
                *p != recipient
                    && !e.addrs.is_empty()
                    && e.meshes.iter().any(|m| shared_meshes.contains(m))
            })
            .take(MAX_MEMBER_HINTS)
            .map(|(p, e)| MemberHint {
                peer: *p,
                addrs: e.addrs.clone(),
            })
            .collect();
        NetworkState {
            members,
            ..self.base_state()
        }
    }

    fn base_state(&self) -> NetworkState {
        NetworkState {
            name: self.name.clone(),
            seq: self.state_seq,
            subscriptions: self.shared.subscription_patterns(),
            registrations: self.shared.registration_uris(),
            addrs: self.advertised_addrs(),
            members: Vec::new(),
        }
    }

    /// Sends our state on every link and on every mesh's gossipsub topic.
    fn announce_state(&mut self) {
        self.state_seq += 1;
        let sessions: Vec<(PeerId, Arc<Session>)> = read(&self.shared.remotes)
            .iter()
            .filter(|(_, r)| r.connected)
            .map(|(p, r)| (*p, r.session.clone()))
            .collect();
        for (peer, session) in sessions {
            session.send_state(Frame::State(self.state_for(&peer)));
        }
        let base = self.base_state();
        let announcements: Vec<(IdentTopic, Vec<u8>)> = self
            .meshes
            .values()
            .map(|mesh| {
                let mut data = Vec::new();
                wire::encode(
                    &StateAnnouncement {
                        mesh: mesh.descriptor.id,
                        certificate: mesh.certificate.clone(),
                        state: base.clone(),
                    },
                    &mut data,
                );
                (mesh.topic.clone(), data)
            })
            .collect();
        for (topic, data) in announcements {
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
                tracing::trace!(error = %e, "state not gossiped");
            }
        }
    }

    fn status(&self) -> Status {
        let sessions: Vec<crate::session::SessionStats> = read(&self.shared.remotes)
            .values()
            .map(|r| r.session.stats())
            .collect();
        Status {
            peer_id: self.local_peer().to_string(),
            name: self.name.clone(),
            version: VERSION.to_owned(),
            listen_addrs: self.swarm.listeners().map(|a| a.to_string()).collect(),
            meshes: self.list_meshes().unwrap_or_default(),
            connected_peers: self.shared.connected_count(),
            open_connections: self.connections.values().map(Vec::len).sum(),
            subscriptions: self.shared.subscription_patterns(),
            registrations: self.shared.registration_uris(),
            uptime_secs: self.started.elapsed().as_secs(),
            traffic: self.shared.traffic.snapshot(),
            paths: self
                .connections
                .keys()
                .filter(|p| read(&self.shared.remotes).contains_key(p))
                .flat_map(|p| self.path_statuses(p))
                .collect(),
            retransmitted: sessions.iter().map(|s| s.retransmitted).sum(),
            duplicates_dropped: sessions.iter().map(|s| s.duplicates_dropped).sum(),
            unacked_frames: sessions.iter().map(|s| s.unacked as u64).sum(),
            relay: self.relay_status(),
            network: self.network_status(),
            ble: self.ble_status(),
            outbox_refused: sessions.iter().map(|s| s.refused_full).sum(),
        }
    }

    fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        let local = self.local_peer().to_string();
        let mut by_peer: HashMap<String, PeerInfo> = HashMap::new();
        for mesh in self.meshes.keys() {
            for member in self.store.members(&mesh.to_string())? {
                if member.peer_id == local {
                    continue;
                }
                by_peer
                    .entry(member.peer_id.clone())
                    .or_insert_with(|| empty_peer_info(&member.peer_id))
                    .meshes
                    .push(mesh.to_string());
            }
        }
        let remotes = read(&self.shared.remotes);
        for (peer, remote) in remotes.iter() {
            let info = by_peer
                .entry(peer.to_string())
                .or_insert_with(|| empty_peer_info(&peer.to_string()));
            info.connected = remote.connected;
            info.name = remote.name.clone();
            info.subscriptions = remote
                .subscriptions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect();
            let mut regs: Vec<String> = remote.registrations.iter().cloned().collect();
            regs.sort();
            info.registrations = regs;
            info.rtt_ms = remote
                .rtt
                .filter(|_| remote.connected)
                .map(|d| d.as_secs_f64() * 1000.0);
        }
        for info in by_peer.values_mut() {
            if let Ok(peer) = info.peer_id.parse::<PeerId>() {
                if let Some(entry) = self.directory.get(&peer) {
                    if info.name.is_none() {
                        info.name = entry.name.clone();
                    }
                    info.addresses = entry.addrs.iter().map(|a| a.to_string()).collect();
                }
            }
            if let Ok(Some(record)) = self.store.peer(&info.peer_id) {
                info.last_seen = Some(record.last_seen);
                if info.name.is_none() {
                    info.name = record.name;
                }
            }
            if info.addresses.is_empty() {
                info.addresses = self
                    .store
                    .endpoints(&info.peer_id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.addr)
                    .collect();
            }
            info.meshes.sort();
            info.meshes.dedup();
            if let Ok(peer) = info.peer_id.parse::<PeerId>() {
                let mut status = paths::member_status(&self.swarm.behaviour().train.status(&peer));
                if let crate::types::MemberStatus::Offline { last_seen_ms } = &mut status {
                    if last_seen_ms.is_none() {
                        *last_seen_ms = self
                            .last_seen_ms
                            .get(&peer)
                            .copied()
                            .or(info.last_seen.map(|s| (s.max(0) as u64) * 1000));
                    }
                }
                info.status = status;
                info.paths = self.path_statuses(&peer);
            }
        }
        let mut list: Vec<PeerInfo> = by_peer.into_values().collect();
        list.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then(a.peer_id.cmp(&b.peer_id))
        });
        Ok(list)
    }
}

/// The union of the permissions `peer` holds in `meshes`.
pub(crate) fn acl_of(
    peer: &PeerId,
    meshes: &std::collections::BTreeMap<MeshId, CertificateBody>,
) -> Acl {
    meshes.values().fold(Acl::default(), |acl, body| {
        match body.permissions.compile() {
            Ok(a) => acl.union(&a),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "invalid permissions in certificate");
                acl
            }
        }
    })
}

fn empty_peer_info(peer: &str) -> PeerInfo {
    PeerInfo {
        peer_id: peer.to_owned(),
        name: None,
        connected: false,
        meshes: Vec::new(),
        addresses: Vec::new(),
        subscriptions: Vec::new(),
        registrations: Vec::new(),
        rtt_ms: None,
        last_seen: None,
        status: crate::types::MemberStatus::Offline { last_seen_ms: None },
        paths: Vec::new(),
    }
}
