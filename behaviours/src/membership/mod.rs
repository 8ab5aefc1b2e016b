//! Membership: who may stay connected.
//!
//! On every new connection the dialer sends a [`protocol::Hello`] with its
//! membership certificates; the listener verifies them against the founders of
//! the meshes it belongs to and answers with its own. A peer that shares no
//! mesh is refused and every connection to it is closed, as is a peer that does
//! not say hello within [`Config::hello_timeout`]. A Hello may carry an invite
//! ([`protocol::JoinRequest`]); the behaviour hands it to the owner
//! ([`Event::JoinRequested`]), which accepts it with a fresh certificate or
//! refuses it.
//!
//! Bounds: at most [`Config::max_unverified_peers`] peers may be connected
//! without being verified; connections from further unknown peers are denied.
//! Messages are limited to [`protocol::MAX_MESSAGE_SIZE`] bytes and
//! [`protocol::MAX_CERTIFICATES`] certificates.

pub mod cert;
pub mod protocol;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::{
    core::{transport::PortUse, Endpoint},
    identity::PublicKey,
    request_response::{
        self, cbor, InboundFailure, Message, OutboundFailure, OutboundRequestId, ProtocolSupport,
        ResponseChannel,
    },
    swarm::{
        behaviour::ConnectionEstablished, CloseConnection, ConnectionClosed, ConnectionDenied,
        ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
    Multiaddr, PeerId,
};

use cert::{Certificate, CertificateBody, MeshDescriptor, MeshId};
use protocol::{Hello, HelloReply, JoinRequest, Outcome};

type Inner = cbor::Behaviour<Hello, HelloReply>;

/// Configuration of the membership behaviour.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a peer that dialed us may stay connected without a valid
    /// Hello (default 10 s).
    pub hello_timeout: Duration,
    /// How long we wait for the answer to our Hello (default 10 s).
    pub request_timeout: Duration,
    /// How many peers may be connected before they are verified (default 128).
    pub max_unverified_peers: usize,
    /// Keep peers that are not members connected for this long instead of
    /// closing their connections at once (default `None`: close at once).
    /// A relay server sets it: peers that share no mesh with it use its
    /// reservations and circuits. While the node marks such a peer exempt
    /// ([`Behaviour::add_exempt`], e.g. while it holds a reservation) it
    /// stays; once the grace is over and it is not exempt, it is closed.
    /// Such peers never get an app protocol (they are never verified), and
    /// [`Config::max_unverified_peers`] still bounds them.
    pub non_member_grace: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_unverified_peers: 128,
            non_member_grace: None,
        }
    }
}

/// What the membership behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// The peer proved membership of at least one mesh we are in (or of more
    /// meshes than before).
    Verified {
        /// The peer.
        peer: PeerId,
        /// Every mesh it is verified for, with its certificate.
        meshes: BTreeMap<MeshId, CertificateBody>,
    },
    /// The peer was refused; its connections are being closed.
    Rejected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
        /// `true` when membership was actually refused (no valid certificate
        /// for a shared mesh, or the peer refused us); `false` when the
        /// exchange failed (timeout, I/O, connection closed) and a later
        /// attempt may well succeed.
        refused: bool,
    },
    /// The peer wants to join one of our meshes with an invite. Answer with
    /// [`Behaviour::accept_join`] or [`Behaviour::refuse_join`].
    JoinRequested {
        /// The peer.
        peer: PeerId,
        /// The mesh and invite token.
        request: JoinRequest,
        /// The handle to answer with.
        responder: JoinResponder,
    },
    /// Our join request was accepted: we are now a member of `mesh`.
    Joined {
        /// The peer that admitted us.
        peer: PeerId,
        /// The mesh joined (its binding to the founder key was checked).
        mesh: MeshDescriptor,
        /// Our certificate (its signature was checked).
        certificate: Certificate,
    },
    /// Our join request was refused or failed.
    JoinRefused {
        /// The peer asked.
        peer: PeerId,
        /// The mesh asked for.
        mesh: MeshId,
        /// Why.
        reason: String,
    },
}

/// The handle for answering a [`Event::JoinRequested`].
#[derive(Debug)]
pub struct JoinResponder {
    peer: PeerId,
    channel: ResponseChannel<HelloReply>,
    verified: BTreeMap<MeshId, CertificateBody>,
}

impl JoinResponder {
    /// The peer asking to join.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

#[derive(Debug)]
enum PeerState {
    Unverified { since: Instant, hello_sent: bool },
    Verified(BTreeMap<MeshId, CertificateBody>),
}

#[derive(Debug)]
struct PeerEntry {
    connections: usize,
    state: PeerState,
}

#[derive(Debug, thiserror::Error)]
#[error("too many unverified peers connected")]
struct TooManyUnverified;

/// The membership [`NetworkBehaviour`].
pub struct Behaviour {
    local_peer: PeerId,
    config: Config,
    inner: Inner,
    certificates: HashMap<MeshId, Certificate>,
    founders: HashMap<MeshId, PublicKey>,
    exempt: HashSet<PeerId>,
    peers: HashMap<PeerId, PeerEntry>,
    joins: HashMap<PeerId, JoinRequest>,
    joins_in_flight: HashMap<OutboundRequestId, MeshId>,
    close_after_reply: HashSet<PeerId>,
    /// Refused peers to disconnect once the grace period for reading our reply is over.
    closing: HashMap<PeerId, Instant>,
    events: VecDeque<ToSwarm<Event, THandlerInEvent<Self>>>,
    sweep: Delay,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refused dialer has to read our reply before we close the
/// connection ourselves (it normally closes first, on reading the refusal;
/// closing at once could cut the reply off).
pub const REFUSAL_GRACE: Duration = Duration::from_secs(2);

impl Behaviour {
    /// A membership behaviour for the node `local_peer`.
    pub fn new(local_peer: PeerId, config: Config) -> Self {
        let codec = cbor::codec::Codec::default()
            .set_request_size_maximum(protocol::MAX_MESSAGE_SIZE)
            .set_response_size_maximum(protocol::MAX_MESSAGE_SIZE);
        let inner = request_response::Behaviour::with_codec(
            codec,
            [(protocol::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.request_timeout),
        );
        Self {
            local_peer,
            config,
            inner,
            certificates: HashMap::new(),
            founders: HashMap::new(),
            exempt: HashSet::new(),
            peers: HashMap::new(),
            joins: HashMap::new(),
            joins_in_flight: HashMap::new(),
            close_after_reply: HashSet::new(),
            closing: HashMap::new(),
            events: VecDeque::new(),
            sweep: Delay::new(SWEEP_INTERVAL),
        }
    }

    /// Adds a mesh we are a member of: its founder's key and our certificate.
    pub fn add_mesh(&mut self, mesh: MeshId, founder: PublicKey, certificate: Certificate) {
        self.founders.insert(mesh, founder);
        self.certificates.insert(mesh, certificate);
    }

    /// Removes a mesh; peers that no longer share any mesh with us are
    /// disconnected and returned.
    pub fn remove_mesh(&mut self, mesh: &MeshId) -> Vec<PeerId> {
        self.founders.remove(mesh);
        self.certificates.remove(mesh);
        let mut dropped = Vec::new();
        for (peer, entry) in self.peers.iter_mut() {
            if let PeerState::Verified(meshes) = &mut entry.state {
                meshes.remove(mesh);
                if meshes.is_empty() && !self.exempt.contains(peer) {
                    dropped.push(*peer);
                }
            }
        }
        for peer in &dropped {
            self.close(*peer);
        }
        dropped
    }

    /// The meshes we are a member of.
    pub fn meshes(&self) -> impl Iterator<Item = &MeshId> {
        self.certificates.keys()
    }

    /// Never disconnect `peer` for lack of membership (e.g. a configured relay).
    pub fn add_exempt(&mut self, peer: PeerId) {
        self.exempt.insert(peer);
    }

    /// Runs the Hello exchange again with `peer`, if connected: after a new
    /// mesh made it a possible member (pairing handed us the mesh's
    /// credentials over a connection that had been refused).
    pub fn hello_again(&mut self, peer: PeerId) {
        if self.peers.get(&peer).is_some_and(|e| e.connections > 0) {
            self.send_hello(peer);
        }
    }

    /// Ends [`Behaviour::add_exempt`]: a non-member is closed again at the
    /// end of its grace period.
    pub fn remove_exempt(&mut self, peer: &PeerId) {
        self.exempt.remove(peer);
    }

    /// The meshes `peer` is verified for, if it is verified.
    pub fn verified(&self, peer: &PeerId) -> Option<&BTreeMap<MeshId, CertificateBody>> {
        match &self.peers.get(peer)?.state {
            PeerState::Verified(meshes) => Some(meshes),
            PeerState::Unverified { .. } => None,
        }
    }

    /// Redeems an invite with `peer`: the token is sent in our Hello on the next
    /// connection to `peer` (now, if already connected).
    pub fn request_join(&mut self, peer: PeerId, request: JoinRequest) {
        let connected = self.peers.get(&peer).is_some_and(|e| e.connections > 0);
        self.joins.insert(peer, request);
        if connected {
            self.send_hello(peer);
        }
    }

    /// Accepts a join: `mesh` and the new member's `certificate` are sent back
    /// and the peer counts as verified for `mesh`.
    pub fn accept_join(
        &mut self,
        responder: JoinResponder,
        mesh: MeshDescriptor,
        certificate: Certificate,
    ) {
        let JoinResponder {
            peer,
            channel,
            mut verified,
        } = responder;
        match certificate.body() {
            Ok(body) if body.peer == peer && body.mesh == mesh.id => {
                verified.insert(mesh.id, body);
            }
            _ => {
                tracing::warn!(%peer, "accept_join called with a certificate for someone else");
            }
        }
        let reply = HelloReply {
            certificates: self.certificates.values().cloned().collect(),
            outcome: Outcome::Joined { mesh, certificate },
        };
        if self.inner.send_response(channel, reply).is_err() {
            tracing::debug!(%peer, "joiner went away before the reply");
        }
        self.mark_verified(peer, verified);
    }

    /// Refuses a join with a reason the joiner will see.
    pub fn refuse_join(&mut self, responder: JoinResponder, reason: String) {
        let JoinResponder {
            peer,
            channel,
            verified,
        } = responder;
        let reply = HelloReply {
            certificates: self.certificates.values().cloned().collect(),
            outcome: Outcome::Refused {
                reason: reason.clone(),
            },
        };
        let _ = self.inner.send_response(channel, reply);
        if verified.is_empty() {
            self.reject(peer, reason, true, true);
        } else {
            self.mark_verified(peer, verified);
        }
    }

    fn send_hello(&mut self, peer: PeerId) {
        let join = self.joins.remove(&peer);
        let hello = Hello {
            certificates: self.certificates.values().cloned().collect(),
            join: join.clone(),
        };
        let id = self.inner.send_request(&peer, hello);
        if let Some(join) = join {
            self.joins_in_flight.insert(id, join.mesh);
        }
        if let Some(PeerEntry {
            state: PeerState::Unverified { hello_sent, .. },
            ..
        }) = self.peers.get_mut(&peer)
        {
            *hello_sent = true;
        }
    }

    /// Checks `certificates` presented by `peer` against our meshes.
    fn verify_certificates(
        &self,
        peer: PeerId,
        certificates: &[Certificate],
    ) -> BTreeMap<MeshId, CertificateBody> {
        let now = unix_now();
        let mut verified = BTreeMap::new();
        for cert in certificates.iter().take(protocol::MAX_CERTIFICATES) {
            let Ok(unverified) = cert.body() else {
                continue;
            };
            let Some(founder) = self.founders.get(&unverified.mesh) else {
                continue;
            };
            match cert.verify(founder, now) {
                Ok(body) if body.peer == peer => {
                    verified.insert(body.mesh, body);
                }
                Ok(_) => tracing::debug!(%peer, "certificate for another peer presented"),
                Err(e) => tracing::debug!(%peer, error = %e, "certificate refused"),
            }
        }
        verified
    }

    fn mark_verified(&mut self, peer: PeerId, meshes: BTreeMap<MeshId, CertificateBody>) {
        if meshes.is_empty() {
            return;
        }
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let merged = match &mut entry.state {
            PeerState::Verified(existing) => {
                let before = existing.len();
                existing.extend(meshes);
                if existing.len() == before {
                    return;
                }
                existing.clone()
            }
            PeerState::Unverified { .. } => {
                entry.state = PeerState::Verified(meshes.clone());
                meshes
            }
        };
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Verified {
                peer,
                meshes: merged,
            }));
    }

    fn reject(&mut self, peer: PeerId, reason: String, refused: bool, after_reply: bool) {
        if let Some(grace) = self.config.non_member_grace {
            // Kept for the grace period (longer while exempt); the first
            // rejection sets the deadline and is reported, later ones are not.
            if let std::collections::hash_map::Entry::Vacant(entry) = self.closing.entry(peer) {
                entry.insert(Instant::now() + grace);
                tracing::debug!(%peer, %reason, "not a member; kept for the grace period");
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::Rejected {
                        peer,
                        reason,
                        refused,
                    }));
            }
            return;
        }
        if self.exempt.contains(&peer) {
            return;
        }
        tracing::debug!(%peer, %reason, refused, "peer rejected");
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Rejected {
                peer,
                reason,
                refused,
            }));
        if after_reply {
            self.close_after_reply.insert(peer);
        } else {
            self.close(peer);
        }
    }

    fn close(&mut self, peer: PeerId) {
        self.events.push_back(ToSwarm::CloseConnection {
            peer_id: peer,
            connection: CloseConnection::All,
        });
    }

    fn on_hello(&mut self, peer: PeerId, hello: Hello, channel: ResponseChannel<HelloReply>) {
        let verified = self.verify_certificates(peer, &hello.certificates);
        if let Some(join) = hello.join {
            let can_admit = self
                .founders
                .get(&join.mesh)
                .is_some_and(|f| f.to_peer_id() == self.local_peer);
            if join.token.len() > protocol::MAX_TOKEN_LEN || !can_admit {
                let reason = if can_admit {
                    "malformed invite token".to_owned()
                } else {
                    format!("this node cannot admit members to mesh {}", join.mesh)
                };
                let responder = JoinResponder {
                    peer,
                    channel,
                    verified,
                };
                self.refuse_join(responder, reason);
                return;
            }
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::JoinRequested {
                    peer,
                    request: join,
                    responder: JoinResponder {
                        peer,
                        channel,
                        verified,
                    },
                }));
            return;
        }
        let outcome = if verified.is_empty() {
            Outcome::Refused {
                reason: "no shared mesh: not a member".to_owned(),
            }
        } else {
            Outcome::Accepted
        };
        let reply = HelloReply {
            certificates: self.certificates.values().cloned().collect(),
            outcome,
        };
        let _ = self.inner.send_response(channel, reply);
        if verified.is_empty() {
            self.reject(
                peer,
                "presented no valid certificate for a shared mesh".into(),
                true,
                true,
            );
        } else {
            self.mark_verified(peer, verified);
        }
    }

    fn on_reply(&mut self, peer: PeerId, request: OutboundRequestId, reply: HelloReply) {
        let was_join = match self.joins_in_flight.remove(&request) {
            Some(mesh_id) => {
                self.on_join_outcome(peer, mesh_id, &reply.outcome);
                true
            }
            None => false,
        };
        let verified = self.verify_certificates(peer, &reply.certificates);
        if let Outcome::Refused { reason } = &reply.outcome {
            // Only a refused *join* from a peer we already share another mesh
            // with leaves the connection standing (the listener keeps us as
            // verified for that mesh); any other refusal ends it.
            if !was_join || verified.is_empty() {
                self.reject(peer, format!("refused by the peer: {reason}"), true, false);
                return;
            }
        }
        if verified.is_empty() {
            self.reject(peer, "the peer shares no mesh with us".into(), true, false);
        } else {
            self.mark_verified(peer, verified);
        }
    }

    fn on_join_outcome(&mut self, peer: PeerId, wanted: MeshId, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Joined { mesh, certificate } => self
                .check_admission(wanted, mesh, certificate)
                .map(|founder| (mesh.clone(), certificate.clone(), founder)),
            Outcome::Refused { reason } => Err(reason.clone()),
            Outcome::Accepted => Err("the peer ignored the invite".to_owned()),
        };
        let event = match result {
            Ok((mesh, certificate, founder)) => {
                self.add_mesh(mesh.id, founder, certificate.clone());
                Event::Joined {
                    peer,
                    mesh,
                    certificate,
                }
            }
            Err(reason) => Event::JoinRefused {
                peer,
                mesh: wanted,
                reason,
            },
        };
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn check_admission(
        &self,
        wanted: MeshId,
        mesh: &MeshDescriptor,
        certificate: &Certificate,
    ) -> Result<PublicKey, String> {
        if mesh.id != wanted {
            return Err(format!("admitted to mesh {} instead of {wanted}", mesh.id));
        }
        let founder = mesh.verify().map_err(|e| e.to_string())?;
        let body = certificate
            .verify(&founder, unix_now())
            .map_err(|e| e.to_string())?;
        if body.peer != self.local_peer || body.mesh != wanted {
            return Err("the certificate is not ours".to_owned());
        }
        Ok(founder)
    }

    fn on_inner_event(&mut self, event: request_response::Event<Hello, HelloReply>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request, channel, ..
                } => self.on_hello(peer, request, channel),
                Message::Response {
                    request_id,
                    response,
                } => self.on_reply(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(mesh) = self.joins_in_flight.remove(&request_id) {
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::JoinRefused {
                            peer,
                            mesh,
                            reason: describe_outbound(&error),
                        }));
                }
                if self.verified(&peer).is_none() {
                    let refused = matches!(error, OutboundFailure::UnsupportedProtocols);
                    self.reject(peer, describe_outbound(&error), refused, false);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.close_after_reply.remove(&peer);
                if self.verified(&peer).is_none() {
                    self.reject(peer, describe_inbound(&error), false, false);
                }
            }
            request_response::Event::ResponseSent { peer, .. } => {
                if self.close_after_reply.remove(&peer) {
                    self.closing.insert(peer, Instant::now() + REFUSAL_GRACE);
                }
            }
        }
    }

    fn sweep_unverified(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if self.exempt.contains(&peer) {
                // In use (a relay reservation, say): look again later.
                let grace = self.config.non_member_grace.unwrap_or(REFUSAL_GRACE);
                self.closing.insert(peer, now + grace);
                continue;
            }
            self.closing.remove(&peer);
            if self.verified(&peer).is_none() {
                self.close(peer);
            }
        }
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter_map(|(peer, entry)| match entry.state {
                PeerState::Unverified { since, hello_sent }
                    if !hello_sent && now.duration_since(since) >= self.config.hello_timeout =>
                {
                    Some(*peer)
                }
                _ => None,
            })
            .collect();
        for peer in expired {
            if let Some(entry) = self.peers.get_mut(&peer) {
                // Reset the clock so a slow close is not reported every second.
                entry.state = PeerState::Unverified {
                    since: now,
                    hello_sent: false,
                };
            }
            self.reject(peer, "no membership hello in time".into(), false, false);
        }
    }

    fn admit_connection(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.peers.contains_key(peer) || self.exempt.contains(peer) {
            return Ok(());
        }
        let unverified = self
            .peers
            .values()
            .filter(|e| matches!(e.state, PeerState::Unverified { .. }))
            .count();
        if unverified >= self.config.max_unverified_peers {
            return Err(ConnectionDenied::new(TooManyUnverified));
        }
        Ok(())
    }
}

fn describe_outbound(error: &OutboundFailure) -> String {
    match error {
        OutboundFailure::UnsupportedProtocols => {
            "the peer does not speak Atmosphere membership".into()
        }
        other => format!("membership exchange failed: {other}"),
    }
}

fn describe_inbound(error: &InboundFailure) -> String {
    format!("membership exchange failed: {error}")
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit_connection(&peer)?;
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit_connection(&peer)?;
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id, endpoint, ..
            }) => {
                let entry = self.peers.entry(peer_id).or_insert(PeerEntry {
                    connections: 0,
                    state: PeerState::Unverified {
                        since: Instant::now(),
                        hello_sent: false,
                    },
                });
                entry.connections += 1;
                let hello_due = match entry.state {
                    PeerState::Unverified { hello_sent, .. } => endpoint.is_dialer() && !hello_sent,
                    PeerState::Verified(_) => false,
                };
                if hello_due || self.joins.contains_key(&peer_id) {
                    self.send_hello(peer_id);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                remaining_established,
                ..
            }) => {
                if remaining_established == 0 {
                    self.peers.remove(&peer_id);
                    self.close_after_reply.remove(&peer_id);
                    self.closing.remove(&peer_id);
                } else if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.connections = remaining_established;
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            if self.sweep.poll_unpin(cx).is_ready() {
                self.sweep.reset(SWEEP_INTERVAL);
                self.sweep_unverified();
                continue;
            }
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(event)) => self.on_inner_event(event),
                Poll::Ready(action) => {
                    return Poll::Ready(
                        action
                            .map_out(|_| unreachable!("GenerateEvent is handled by the arm above")),
                    )
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
