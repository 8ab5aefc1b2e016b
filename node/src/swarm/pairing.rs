//! Proximity pairing in the node (the flow itself is
//! [`atmosphere_behaviours::pairing`]).
//!
//! - **Nearby devices**: Atmosphere advertisements seen over BLE (see
//!   [`super::ble`]) and peers found on the LAN by mDNS, each named by its
//!   peer-id hint (12 hex digits). At most [`MAX_LAN_NEARBY`] LAN entries,
//!   each listed for [`super::ble::NEARBY_TTL`].
//! - **Requester** ([`crate::Node::pair`]): dials the device (over BLE
//!   without knowing its peer id: the noise handshake tells it), keeps the
//!   connection open although the peer is not a member, and asks to pair.
//! - **Acceptor** ([`crate::Node::pair_accept`], the mesh's founder): while
//!   accepting, connections from non-members are kept open (at most
//!   [`MAX_PAIRING_EXEMPT`] at a time) so that they can ask. Once both users
//!   confirmed the code, it signs a membership certificate for the
//!   requester's peer id and sends [`Credentials`]: the mesh descriptor, the
//!   certificate, its endpoints (LAN, public and relayed addresses) and
//!   capabilities. It saves the requester as a member.
//! - The requester checks the credentials (the descriptor's founder is the
//!   peer it paired with, the certificate is for us and signed by that
//!   founder), saves the mesh and the founder's endpoints, and runs the
//!   membership Hello again on the same connection: both sides are then
//!   verified members and pub/sub and RPC run as after a join.
//!
//! The last [`MAX_SESSIONS_KEPT`] sessions are kept for the API.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use atmosphere_behaviours::{
    membership::cert::{
        Certificate, CertificateBody, MeshDescriptor, MeshId, Permissions, Role as MemberRole,
    },
    pairing::{self, SessionId},
};
use atmosphere_transports::ble::{advert::PeerHint, BleAddr};
use libp2p::{
    multiaddr::Protocol,
    swarm::{dial_opts::DialOpts, ConnectionId},
    Multiaddr, PeerId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{unix_now, Runtime};
use crate::{
    error::Error,
    types::{NearbyDevice, PairingMode, PairingSession},
    wire,
};

/// Pairing sessions kept for the API (the oldest finished ones go first).
pub(crate) const MAX_SESSIONS_KEPT: usize = 16;
/// LAN peers (found by mDNS) listed as nearby, at most.
pub(crate) const MAX_LAN_NEARBY: usize = 64;
/// Non-members kept connected at once for pairing.
pub(crate) const MAX_PAIRING_EXEMPT: usize = 8;
/// Pairing dials in flight, at most.
pub(crate) const MAX_PAIRING_DIALS: usize = 4;
/// Endpoints sent in credentials, at most.
pub(crate) const MAX_CREDENTIAL_ENDPOINTS: usize = 16;

/// What the founder hands the new member (CBOR, inside the pairing
/// protocol's `CREDENTIALS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Credentials {
    /// The mesh.
    pub mesh: MeshDescriptor,
    /// The new member's certificate (CBOR), signed by the founder.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// The founder's addresses: LAN, public, relayed.
    pub endpoints: Vec<String>,
    /// What the founder offers (`pubsub`, `rpc`, `relay`).
    pub capabilities: Vec<String>,
}

struct LanNearby {
    addrs: Vec<Multiaddr>,
    last_seen: Instant,
}

type PairReply = oneshot::Sender<Result<PairingSession, Error>>;

/// The node's pairing state.
#[derive(Default)]
pub(crate) struct PairingState {
    accept_mesh: Option<MeshId>,
    sessions: VecDeque<PairingSession>,
    ids: HashMap<u64, SessionId>,
    dials: HashMap<ConnectionId, PairReply>,
    exempt: VecDeque<PeerId>,
    lan_nearby: HashMap<PeerId, LanNearby>,
}

/// The hint of `peer` as the 12 hex digits nearby devices are named by.
pub(crate) fn hint_hex(hint: &PeerHint) -> String {
    hint.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn session_view(id: SessionId, peer: PeerId, role: pairing::Role) -> PairingSession {
    PairingSession {
        id: id.get(),
        role: role.to_string(),
        peer_id: peer.to_string(),
        peer_name: None,
        state: "connecting".into(),
        code: None,
        peer_confirmed: false,
        mesh_id: None,
        mesh_name: None,
        error: None,
    }
}

impl Runtime {
    /// mDNS found `peer` at `addr`: list it as nearby.
    pub(super) fn note_lan_nearby(&mut self, peer: PeerId, addr: Multiaddr) {
        let lan = &mut self.pairing.lan_nearby;
        let now = Instant::now();
        lan.retain(|_, n| now.duration_since(n.last_seen) < super::ble::NEARBY_TTL);
        if !lan.contains_key(&peer) && lan.len() >= MAX_LAN_NEARBY {
            return;
        }
        let entry = lan.entry(peer).or_insert_with(|| LanNearby {
            addrs: Vec::new(),
            last_seen: now,
        });
        entry.last_seen = now;
        if !entry.addrs.contains(&addr) && entry.addrs.len() < 4 {
            entry.addrs.push(addr);
        }
    }

    /// Devices nearby, over BLE and on the LAN.
    pub(super) fn nearby(&self) -> Vec<NearbyDevice> {
        let now = Instant::now();
        let mut out = self.ble_nearby();
        for (peer, n) in &self.pairing.lan_nearby {
            if now.duration_since(n.last_seen) >= super::ble::NEARBY_TTL
                || *peer == self.local_peer()
            {
                continue;
            }
            out.push(NearbyDevice {
                id: hint_hex(&PeerHint::of(peer)),
                via: "lan".into(),
                address: n.addrs.first().map(|a| a.to_string()).unwrap_or_default(),
                rssi_dbm: None,
                peer_id: Some(peer.to_string()),
                member: self.swarm.behaviour().membership.verified(peer).is_some()
                    || self.directory.contains_key(peer),
                name: self.directory.get(peer).and_then(|d| d.name.clone()),
                last_seen_ms_ago: now.duration_since(n.last_seen).as_millis() as u64,
            });
        }
        out
    }

    pub(super) fn pairing_mode(&self) -> PairingMode {
        let mesh = self.pairing.accept_mesh.and_then(|id| {
            self.meshes
                .get(&id)
                .map(|m| (id, m.descriptor.name.clone()))
        });
        PairingMode {
            accepting: self.swarm.behaviour().pairing.is_accepting(),
            mesh_id: mesh.as_ref().map(|(id, _)| id.to_string()),
            mesh_name: mesh.map(|(_, name)| name),
        }
    }

    /// Turns pairing mode on (for `mesh`, which we must have founded) or off.
    pub(super) fn pair_accept(
        &mut self,
        mesh: Option<&str>,
        on: bool,
    ) -> Result<PairingMode, Error> {
        if on {
            let id = self.resolve_mesh(mesh)?;
            let founder = self.meshes.get(&id).is_some_and(|m| m.is_founder);
            if !founder {
                return Err(Error::NotFounder(id.to_string()));
            }
            self.pairing.accept_mesh = Some(id);
            self.swarm.behaviour_mut().pairing.set_accepting(true);
            tracing::info!(mesh = %id, "pairing mode on");
        } else {
            self.pairing.accept_mesh = None;
            self.swarm.behaviour_mut().pairing.set_accepting(false);
            let active = self.pairing_peer();
            let idle: Vec<PeerId> = self
                .pairing
                .exempt
                .iter()
                .copied()
                .filter(|p| Some(*p) != active)
                .collect();
            for peer in idle {
                self.release_pairing_peer(peer, true);
            }
            tracing::info!("pairing mode off");
        }
        Ok(self.pairing_mode())
    }

    /// The peer of the active pairing session, if any.
    fn pairing_peer(&self) -> Option<PeerId> {
        self.swarm
            .behaviour()
            .pairing
            .active_session()
            .map(|(_, peer, _)| peer)
    }

    /// Asks the nearby device `device` (its id, its peer id, or an address
    /// to dial) to pair.
    pub(super) fn pair_request(&mut self, device: &str, reply: PairReply) {
        if self.swarm.behaviour().pairing.active_session().is_some() {
            let _ = reply.send(Err(Error::Busy(
                "a pairing session is already under way".into(),
            )));
            return;
        }
        if self.pairing.dials.len() >= MAX_PAIRING_DIALS {
            let _ = reply.send(Err(Error::Busy("too many pairing dials in flight".into())));
            return;
        }
        let typed = device.trim();
        // An address typed by the user (a device on the LAN without mDNS).
        if let Ok(addr) = typed.parse::<Multiaddr>() {
            let opts = match addr.iter().last() {
                Some(Protocol::P2p(peer)) if self.swarm.is_connected(&peer) => {
                    self.exempt_for_pairing(peer);
                    self.start_pair_request(peer, reply);
                    return;
                }
                Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer).addresses(vec![addr]).build(),
                _ => DialOpts::unknown_peer_id().address(addr).build(),
            };
            self.dial_to_pair(typed, opts, reply);
            return;
        }
        let device = typed.to_ascii_lowercase();
        let lan = self
            .pairing
            .lan_nearby
            .iter()
            .find(|(p, _)| hint_hex(&PeerHint::of(p)) == device || p.to_string() == typed)
            .map(|(p, n)| (*p, n.addrs.clone()));
        let opts = if let Some((peer, addrs)) = lan {
            if self.swarm.is_connected(&peer) {
                self.exempt_for_pairing(peer);
                self.start_pair_request(peer, reply);
                return;
            }
            DialOpts::peer_id(peer).addresses(addrs).build()
        } else if let Some(target) = self.ble_device(&device) {
            DialOpts::unknown_peer_id()
                .address(target.to_multiaddr())
                .build()
        } else {
            let _ = reply.send(Err(Error::Invalid(format!(
                "no nearby device `{device}` (list them with `nearby`)"
            ))));
            return;
        };
        self.dial_to_pair(&device, opts, reply);
    }

    fn dial_to_pair(&mut self, device: &str, opts: DialOpts, reply: PairReply) {
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                tracing::info!(%device, "dialing to pair");
                self.pairing.dials.insert(connection, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Transport(format!("cannot dial {device}: {e}"))));
            }
        }
    }

    /// The BLE address of the nearby device named `device` (its hint).
    fn ble_device(&self, device: &str) -> Option<BleAddr> {
        let ble = self.ble.as_ref()?;
        ble.nearby
            .iter()
            .find(|(hint, _)| hint_hex(hint) == device)
            .map(|(_, n)| BleAddr {
                device: n.address,
                psm: n.psm,
            })
    }

    fn start_pair_request(&mut self, peer: PeerId, reply: PairReply) {
        match self.swarm.behaviour_mut().pairing.request(peer) {
            Ok(session) => {
                let view = session_view(session, peer, pairing::Role::Requester);
                self.pairing.ids.insert(session.get(), session);
                self.store_session(view.clone());
                let _ = reply.send(Ok(view));
            }
            Err(e) => {
                self.release_pairing_peer(peer, true);
                let _ = reply.send(Err(match e {
                    pairing::PairingError::Busy => Error::Busy(e.to_string()),
                    other => Error::Invalid(other.to_string()),
                }));
            }
        }
    }

    /// A connection came up: a pairing dial of ours, or (in pairing mode) a
    /// non-member that may want to pair.
    pub(super) fn on_pairing_connection(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(reply) = self.pairing.dials.remove(&connection) {
            self.exempt_for_pairing(peer);
            self.start_pair_request(peer, reply);
            return;
        }
        let accepting = self.swarm.behaviour().pairing.is_accepting();
        if accepting && self.swarm.behaviour().membership.verified(&peer).is_none() {
            self.exempt_for_pairing(peer);
        }
    }

    /// A pairing dial failed.
    pub(super) fn on_pairing_dial_failed(&mut self, connection: ConnectionId, error: String) {
        if let Some(reply) = self.pairing.dials.remove(&connection) {
            let _ = reply.send(Err(Error::Transport(format!(
                "cannot reach the device: {error}"
            ))));
        }
    }

    fn exempt_for_pairing(&mut self, peer: PeerId) {
        if self.pairing.exempt.contains(&peer) {
            return;
        }
        if self.pairing.exempt.len() >= MAX_PAIRING_EXEMPT {
            let active = self.pairing_peer();
            let oldest = self
                .pairing
                .exempt
                .iter()
                .copied()
                .find(|p| Some(*p) != active);
            if let Some(oldest) = oldest {
                self.release_pairing_peer(oldest, true);
            } else {
                return;
            }
        }
        self.pairing.exempt.push_back(peer);
        self.swarm.behaviour_mut().membership.add_exempt(peer);
    }

    /// Ends `peer`'s pairing exemption; with `close`, a peer that is still
    /// no member is disconnected.
    fn release_pairing_peer(&mut self, peer: PeerId, close: bool) {
        self.pairing.exempt.retain(|p| *p != peer);
        // Relays keep their own exemption.
        if self.relays.contains_key(&peer) || self.relay_users.contains_key(&peer) {
            return;
        }
        self.swarm.behaviour_mut().membership.remove_exempt(&peer);
        if close && self.swarm.behaviour().membership.verified(&peer).is_none() {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn store_session(&mut self, view: PairingSession) {
        let _ = self.shared.pairing_events.send(view.clone());
        let sessions = &mut self.pairing.sessions;
        if let Some(existing) = sessions.iter_mut().find(|s| s.id == view.id) {
            *existing = view;
            return;
        }
        if sessions.len() >= MAX_SESSIONS_KEPT {
            if let Some(i) = sessions.iter().position(|s| s.is_over()) {
                if let Some(old) = sessions.remove(i) {
                    self.pairing.ids.remove(&old.id);
                }
            } else if let Some(old) = sessions.pop_front() {
                self.pairing.ids.remove(&old.id);
            }
        }
        sessions.push_back(view);
    }

    fn update_session(&mut self, id: SessionId, change: impl FnOnce(&mut PairingSession)) {
        let Some(mut view) = self
            .pairing
            .sessions
            .iter()
            .find(|s| s.id == id.get())
            .cloned()
        else {
            return;
        };
        change(&mut view);
        self.store_session(view);
    }

    pub(super) fn pairing_sessions(&self) -> Vec<PairingSession> {
        self.pairing.sessions.iter().cloned().collect()
    }

    /// The user compared the codes: `confirm` or reject session `id`.
    pub(super) fn pair_decide(&mut self, id: u64, confirm: bool) -> Result<PairingSession, Error> {
        let session = *self
            .pairing
            .ids
            .get(&id)
            .ok_or_else(|| Error::Invalid(format!("no pairing session {id}")))?;
        let behaviour = &mut self.swarm.behaviour_mut().pairing;
        let result = if confirm {
            behaviour.confirm(session)
        } else {
            behaviour.reject(session)
        };
        result.map_err(|e| Error::Invalid(e.to_string()))?;
        if confirm {
            self.update_session(session, |s| s.state = "confirmed".into());
        }
        self.pairing
            .sessions
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no pairing session {id}")))
    }

    pub(super) fn on_pairing_event(&mut self, event: pairing::Event) {
        match event {
            pairing::Event::IncomingRequest {
                session,
                peer,
                name,
            } => {
                tracing::info!(%peer, %name, "pairing request");
                let mut view = session_view(session, peer, pairing::Role::Acceptor);
                view.peer_name = Some(name);
                self.pairing.ids.insert(session.get(), session);
                self.store_session(view);
            }
            pairing::Event::CodeReady {
                session,
                code,
                peer_name,
                ..
            } => self.update_session(session, |s| {
                s.state = "comparing".into();
                s.code = Some(code.to_string());
                s.peer_name = Some(peer_name);
            }),
            pairing::Event::PeerConfirmed { session, .. } => {
                self.update_session(session, |s| s.peer_confirmed = true)
            }
            pairing::Event::BothConfirmed { session, peer } => {
                self.update_session(session, |s| {
                    s.state = "confirmed".into();
                    s.peer_confirmed = true;
                });
                let acceptor = self
                    .pairing
                    .sessions
                    .iter()
                    .any(|s| s.id == session.get() && s.role == "acceptor");
                if acceptor {
                    self.send_pairing_credentials(session, peer);
                }
            }
            pairing::Event::CredentialsReceived {
                session,
                peer,
                credentials,
            } => match self.install_credentials(peer, &credentials) {
                Ok((mesh_id, mesh_name)) => self.update_session(session, |s| {
                    s.mesh_id = Some(mesh_id);
                    s.mesh_name = Some(mesh_name);
                }),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "pairing credentials refused");
                    self.update_session(session, |s| s.error = Some(e.to_string()));
                }
            },
            pairing::Event::Completed { session, peer, .. } => {
                let failed = self
                    .pairing
                    .sessions
                    .iter()
                    .any(|s| s.id == session.get() && s.error.is_some());
                self.update_session(session, |s| {
                    s.state = if failed { "failed" } else { "completed" }.into()
                });
                tracing::info!(%peer, ok = !failed, "pairing finished");
                // On success the Hello exchange verifies the peer; the
                // exemption is no longer needed either way.
                self.release_pairing_peer(peer, failed);
            }
            pairing::Event::Failed {
                session,
                peer,
                reason,
            } => {
                tracing::info!(%peer, %reason, "pairing failed");
                self.update_session(session, |s| {
                    s.state = "failed".into();
                    s.error = Some(reason.to_string());
                });
                self.release_pairing_peer(peer, true);
            }
        }
    }

    /// Both users confirmed: sign the requester's certificate and send the
    /// mesh's credentials.
    fn send_pairing_credentials(&mut self, session: SessionId, peer: PeerId) {
        let result = self.issue_pairing_credentials(peer);
        let pairing = &mut self.swarm.behaviour_mut().pairing;
        match result {
            Ok((bytes, mesh_id, mesh_name)) => match pairing.send_credentials(session, bytes) {
                Ok(()) => self.update_session(session, |s| {
                    s.mesh_id = Some(mesh_id);
                    s.mesh_name = Some(mesh_name);
                }),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "could not send pairing credentials");
                    let _ = pairing.cancel(session);
                }
            },
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not issue pairing credentials");
                let _ = pairing.cancel(session);
                self.update_session(session, |s| s.error = Some(e.to_string()));
            }
        }
    }

    fn issue_pairing_credentials(
        &mut self,
        peer: PeerId,
    ) -> Result<(Vec<u8>, String, String), Error> {
        let id = self
            .pairing
            .accept_mesh
            .ok_or_else(|| Error::Invalid("pairing mode has no mesh".into()))?;
        let state = self
            .meshes
            .get(&id)
            .filter(|m| m.is_founder)
            .ok_or_else(|| Error::NotFounder(id.to_string()))?;
        let descriptor = state.descriptor.clone();
        let now = unix_now();
        let body = CertificateBody {
            mesh: id,
            peer,
            role: MemberRole::Member,
            permissions: Permissions::all(),
            issued_at: now.max(0) as u64,
            expires_at: None,
        };
        let certificate =
            Certificate::sign(&body, &self.keypair).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut body_cbor = Vec::new();
        wire::encode(&body, &mut body_cbor);
        self.store
            .save_member(&id.to_string(), &peer.to_string(), &body_cbor, now)?;
        let local = self.local_peer();
        let endpoints = self
            .advertised_addrs()
            .into_iter()
            .map(|a| a.with_p2p(local).unwrap_or_else(|a| a).to_string())
            .take(MAX_CREDENTIAL_ENDPOINTS)
            .collect();
        let mut capabilities = vec!["pubsub".to_owned(), "rpc".to_owned()];
        if self.config.relay_server {
            capabilities.push("relay".into());
        }
        let credentials = Credentials {
            mesh: descriptor.clone(),
            certificate: certificate.to_cbor(),
            endpoints,
            capabilities,
        };
        let mut bytes = Vec::new();
        wire::encode(&credentials, &mut bytes);
        tracing::info!(%peer, mesh = %id, "pairing: member admitted");
        Ok((bytes, id.to_string(), descriptor.name))
    }

    /// Checks and saves the credentials `founder` sent; returns the mesh's id
    /// and name.
    fn install_credentials(
        &mut self,
        founder: PeerId,
        bytes: &[u8],
    ) -> Result<(String, String), Error> {
        let credentials: Credentials = wire::decode(bytes)
            .map_err(|e| Error::Invalid(format!("malformed credentials: {e}")))?;
        let descriptor = credentials.mesh;
        let founder_key = descriptor
            .verify()
            .map_err(|e| Error::Invalid(format!("bad mesh descriptor: {e}")))?;
        if founder_key.to_peer_id() != founder {
            return Err(Error::Invalid(
                "the credentials are for a mesh the peer did not found".into(),
            ));
        }
        let certificate = Certificate::from_cbor(&credentials.certificate)
            .map_err(|e| Error::Invalid(format!("malformed certificate: {e}")))?;
        let body = certificate
            .verify(&founder_key, unix_now().max(0) as u64)
            .map_err(|e| Error::Invalid(format!("bad certificate: {e}")))?;
        if body.peer != self.local_peer() || body.mesh != descriptor.id {
            return Err(Error::Invalid("the certificate is not ours".into()));
        }
        let (id, name) = (descriptor.id, descriptor.name.clone());
        self.on_joined(founder, descriptor, certificate);
        if !self.meshes.contains_key(&id) {
            return Err(Error::Invalid("the mesh could not be saved".into()));
        }
        let founder_str = founder.to_string();
        let mut relays = Vec::new();
        for endpoint in credentials.endpoints.iter().take(MAX_CREDENTIAL_ENDPOINTS) {
            let Ok(addr) = endpoint.parse::<Multiaddr>() else {
                continue;
            };
            if !matches!(addr.iter().last(), Some(Protocol::P2p(p)) if p == founder) {
                continue;
            }
            if let Some(relay) = super::relays::relay_of(&addr) {
                relays.push(relay);
            }
            if let Err(e) = self
                .store
                .add_endpoint(&founder_str, &super::saved::endpoint_key(&addr))
            {
                tracing::warn!(error = %e, "store");
            }
        }
        self.learn_relays(relays.iter());
        self.watch_member(founder);
        self.swarm.behaviour_mut().membership.hello_again(founder);
        tracing::info!(%founder, mesh = %id, "paired: joined mesh");
        Ok((id.to_string(), name))
    }
}
