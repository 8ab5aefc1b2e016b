//! Relays and hole punching: our relay server (members-only by default), the
//! reservations we hold on other relays so that members can reach us through
//! them, and DCUtR upgrades of relayed connections to direct ones (the
//! connection train then prefers the direct path).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{
    core::{transport::ListenerId, ConnectedPoint},
    dcutr,
    multiaddr::Protocol,
    relay, Multiaddr, PeerId,
};

use atmosphere_behaviours::train::{path, PathClass};

use super::Runtime;
use crate::{shared::read, types::RelayStatus};

/// Relays we hold (or try to hold) a reservation on, at most.
pub(super) const MAX_RESERVATIONS: usize = 2;
/// Relays we know of, at most (configured ones and members running a relay).
pub(super) const MAX_KNOWN_RELAYS: usize = 16;
/// Settings key of the relays learned from invites (one multiaddr a line).
const LEARNED_RELAYS_KEY: &str = "relays.learned";
/// How long a failed reservation waits before it is tried again.
const RESERVATION_RETRY: Duration = Duration::from_secs(30);

/// A relay we know of and our reservation on it.
pub(super) struct KnownRelay {
    /// Where to reach it (ends in `/p2p/<relay>`).
    addr: Multiaddr,
    /// Our reservation's listener, while one is requested or held.
    listener: Option<ListenerId>,
    /// Whether the relay accepted the reservation.
    accepted: bool,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    /// When it may be dialled again while we are not connected.
    next_dial: Option<Instant>,
}

/// Counters of relaying and hole punching.
#[derive(Default)]
pub(super) struct RelayCounters {
    /// Peers holding a reservation on our relay (libp2p reports a closed
    /// reservation for every peer whose connection closes, so a count would
    /// drift; a set does not).
    pub reservations: std::collections::HashSet<PeerId>,
    pub circuits: usize,
    pub reservations_denied: u64,
    pub circuits_denied: u64,
    pub dcutr_attempts: u64,
    pub dcutr_successes: u64,
    pub last_time_to_direct: Option<Duration>,
}

/// Whether `addr` goes through a relay (the train's classification).
pub(crate) fn is_circuit(addr: &Multiaddr) -> bool {
    PathClass::classify(addr) == PathClass::Relayed
}

/// The relay a relayed address goes through: the part before
/// `/p2p-circuit`, ending in `/p2p/<relay>`.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut relay = Multiaddr::empty();
    for protocol in addr.iter() {
        if protocol == Protocol::P2pCircuit {
            return matches!(relay.iter().last(), Some(Protocol::P2p(_))).then_some(relay);
        }
        relay.push(protocol);
    }
    None
}

impl Runtime {
    /// Registers a relay that need not be a mesh member (configured, or
    /// from an invite): membership does not turn it away.
    pub(super) fn add_outside_relay(&mut self, addr: Multiaddr) {
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        if self.add_relay(addr) {
            if let Some(peer) = peer {
                self.swarm.behaviour_mut().membership.add_exempt(peer);
            }
        }
    }

    /// Relays (ending in `/p2p/<relay>`) from the invite of a successful
    /// join: used for our own reservations from now on, and remembered
    /// across restarts.
    pub(super) fn learn_relays<'a>(&mut self, relays: impl Iterator<Item = &'a Multiaddr>) {
        let mut learned = self.learned_relays();
        for relay in relays.cloned() {
            if !learned.contains(&relay) && learned.len() < MAX_KNOWN_RELAYS {
                learned.push(relay.clone());
            }
            self.add_outside_relay(relay);
        }
        let text: Vec<String> = learned.iter().map(ToString::to_string).collect();
        if let Err(e) = self.store.set_setting(LEARNED_RELAYS_KEY, &text.join("\n")) {
            tracing::warn!(error = %e, "could not save the invite's relays");
        }
    }

    /// Relays remembered from invites (unparsable lines are skipped).
    pub(super) fn learned_relays(&self) -> Vec<Multiaddr> {
        match self.store.get_setting(LEARNED_RELAYS_KEY) {
            Ok(text) => text
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .take(MAX_KNOWN_RELAYS)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "store");
                Vec::new()
            }
        }
    }

    /// Registers a relay; returns false if it names no peer or the bound is hit.
    pub(super) fn add_relay(&mut self, addr: Multiaddr) -> bool {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            tracing::warn!(%addr, "relay address without /p2p/<peer id> ignored");
            return false;
        };
        if peer == self.local_peer()
            || (self.relays.len() >= MAX_KNOWN_RELAYS && !self.relays.contains_key(&peer))
        {
            return false;
        }
        self.relays.entry(peer).or_insert(KnownRelay {
            addr,
            listener: None,
            accepted: false,
            retry_at: None,
            next_dial: None,
        });
        true
    }

    /// Asks for reservations on known relays we are connected to, up to
    /// [`MAX_RESERVATIONS`]. A relay server does not reserve elsewhere.
    pub(super) fn reserve_on_relays(&mut self) {
        if self.config.relay_server || self.publicly_reachable() {
            return;
        }
        let now = Instant::now();
        let held = self
            .relays
            .values()
            .filter(|r| r.listener.is_some())
            .count();
        let mut room = MAX_RESERVATIONS.saturating_sub(held);
        let candidates: Vec<PeerId> = self
            .relays
            .iter()
            .filter(|(_, r)| r.listener.is_none() && r.retry_at.is_none_or(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in candidates {
            if room == 0 {
                break;
            }
            if !self.swarm.is_connected(&peer) {
                // Dialled at most once per retry period (a relay that is gone
                // is not hammered).
                let Some(relay) = self.relays.get_mut(&peer) else {
                    continue;
                };
                if relay.next_dial.is_some_and(|t| t > now) {
                    continue;
                }
                relay.next_dial = Some(now + RESERVATION_RETRY);
                let addr = relay.addr.clone();
                if let Err(e) = self.swarm.dial(addr) {
                    tracing::debug!(%peer, error = %e, "cannot dial relay");
                }
                continue;
            }
            let circuit = self.relays[&peer].addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::info!(relay = %peer, "requesting a relay reservation");
                    if let Some(r) = self.relays.get_mut(&peer) {
                        r.listener = Some(listener);
                    }
                    room -= 1;
                }
                Err(e) => {
                    tracing::warn!(relay = %peer, error = %e, "cannot reserve on relay");
                    if let Some(r) = self.relays.get_mut(&peer) {
                        r.retry_at = Some(now + RESERVATION_RETRY);
                    }
                }
            }
        }
    }

    /// Gives up every reservation (we are publicly reachable: members dial
    /// us directly, and the relays' slots are for those who cannot).
    pub(super) fn release_reservations(&mut self) {
        let held: Vec<(PeerId, ListenerId)> = self
            .relays
            .iter()
            .filter_map(|(p, r)| r.listener.map(|l| (*p, l)))
            .collect();
        for (peer, listener) in held {
            tracing::info!(relay = %peer, "publicly reachable: releasing the relay reservation");
            self.swarm.remove_listener(listener);
            if let Some(r) = self.relays.get_mut(&peer) {
                r.listener = None;
                r.accepted = false;
            }
        }
    }

    /// A listener ended: if it was a reservation, retry later.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        let retry = Instant::now() + RESERVATION_RETRY;
        for (peer, relay) in self.relays.iter_mut() {
            if relay.listener == Some(listener) {
                tracing::info!(relay = %peer, "relay reservation ended");
                relay.listener = None;
                relay.accepted = false;
                relay.retry_at = Some(retry);
            }
        }
    }

    /// Identify says `peer` runs a relay server: a member's relay is used
    /// for reservations.
    pub(super) fn note_relay_capability(&mut self, peer: PeerId, info: &libp2p::identify::Info) {
        let hop = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        if !hop || !read(&self.shared.remotes).contains_key(&peer) {
            return;
        }
        let addr = info
            .listen_addrs
            .iter()
            .find(|a| !is_circuit(a) && super::is_routable_for_hint(a))
            .cloned();
        if let Some(addr) = addr {
            let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
            if self.add_relay(addr) {
                self.reserve_on_relays();
            }
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                if let Some(r) = self.relays.get_mut(&relay_peer_id) {
                    r.accepted = true;
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. }
            | relay::client::Event::InboundCircuitEstablished {
                src_peer_id: relay_peer_id,
                ..
            } => {
                tracing::debug!(peer = %relay_peer_id, "relayed circuit established");
            }
        }
    }

    pub(super) fn on_relay_server_event(&mut self, event: relay::Event) {
        tracing::debug!(?event, "relay server");
        self.track_relay_users(&event);
        let c = &mut self.relay_counters;
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. }
                if c.reservations.len() < self.config.relay_max_reservations =>
            {
                c.reservations.insert(src_peer_id);
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                c.reservations.remove(&src_peer_id);
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                c.reservations_denied += 1;
                tracing::info!(peer = %src_peer_id, "relay reservation refused");
            }
            relay::Event::CircuitReqAccepted { .. } => c.circuits += 1,
            relay::Event::CircuitClosed { .. } => c.circuits = c.circuits.saturating_sub(1),
            relay::Event::CircuitReqDenied { src_peer_id, .. } => {
                c.circuits_denied += 1;
                tracing::info!(peer = %src_peer_id, "relay circuit refused");
            }
            _ => {}
        }
    }

    /// Peers using our relay (a reservation, or either end of a circuit)
    /// stay connected while they do, member or not; a non-member is closed
    /// after its grace period once it no longer does.
    fn track_relay_users(&mut self, event: &relay::Event) {
        let (started, ended): (Vec<PeerId>, Vec<PeerId>) = match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => (vec![*src_peer_id], vec![]),
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => (vec![], vec![*src_peer_id]),
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => (vec![*src_peer_id, *dst_peer_id], vec![]),
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => (vec![], vec![*src_peer_id, *dst_peer_id]),
            _ => return,
        };
        for peer in started {
            *self.relay_users.entry(peer).or_default() += 1;
            self.swarm.behaviour_mut().membership.add_exempt(peer);
        }
        for peer in ended {
            let Some(uses) = self.relay_users.get_mut(&peer) else {
                continue;
            };
            *uses = uses.saturating_sub(1);
            if *uses == 0 {
                self.relay_users.remove(&peer);
                if !self.relays.contains_key(&peer) {
                    self.swarm.behaviour_mut().membership.remove_exempt(&peer);
                }
            }
        }
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        let c = &mut self.relay_counters;
        c.dcutr_attempts += 1;
        match event.result {
            Ok(_) => {
                c.dcutr_successes += 1;
                // Both sides may punch (two relayed connections): the first
                // success measures the time, a second one keeps it.
                if let Some(since) = self.relayed_at.remove(&event.remote_peer_id) {
                    let elapsed = since.elapsed();
                    c.last_time_to_direct = Some(elapsed);
                    self.metrics.time_to_direct.observe(elapsed.as_secs_f64());
                }
                tracing::info!(peer = %event.remote_peer_id, after = ?c.last_time_to_direct, "hole punch succeeded: direct path");
            }
            Err(error) => {
                tracing::info!(peer = %event.remote_peer_id, %error, "hole punch failed: staying relayed");
            }
        }
    }

    /// Remembers when the first relayed connection to `peer` came up (for
    /// the time to direct).
    pub(super) fn note_connection(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        let addr = path::endpoint_addr(&peer, endpoint);
        if is_circuit(&addr) && self.relayed_at.len() < MAX_KNOWN_RELAYS * 64 {
            self.relayed_at.entry(peer).or_insert_with(Instant::now);
        }
    }

    /// Relays that accepted our reservation.
    fn reserved_relays(&self) -> impl Iterator<Item = &PeerId> {
        self.relays
            .iter()
            .filter(|(_, r)| r.accepted)
            .map(|(p, _)| p)
    }

    /// How many relays hold a reservation for us.
    pub(super) fn reserved_relay_count(&self) -> usize {
        self.reserved_relays().count()
    }

    /// The relay part of `status`.
    pub(super) fn relay_status(&self) -> RelayStatus {
        let c = &self.relay_counters;
        RelayStatus {
            server: self.config.relay_server,
            open: self.config.relay_open,
            reservations: c.reservations.len(),
            max_reservations: self.config.relay_max_reservations,
            circuits: c.circuits,
            max_circuits: self.config.relay_max_circuits,
            reservations_denied: c.reservations_denied,
            circuits_denied: c.circuits_denied,
            reserved_on: self.reserved_relays().map(ToString::to_string).collect(),
            dcutr_attempts: c.dcutr_attempts,
            dcutr_successes: c.dcutr_successes,
            last_time_to_direct_ms: c.last_time_to_direct.map(|d| d.as_millis() as u64),
        }
    }
}

/// Known relays (for the runtime's field).
pub(super) type Relays = HashMap<PeerId, KnownRelay>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_of_a_relayed_address_is_its_part_before_the_circuit() {
        let relay = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let peer = "12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA";
        let addr = |s: String| {
            s.parse::<Multiaddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert_eq!(
            relay_of(&addr(format!(
                "/ip4/198.51.100.2/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}"
            ))),
            Some(addr(format!("/ip4/198.51.100.2/tcp/4001/p2p/{relay}")))
        );
        // Not relayed, or a circuit without the relay's id: none.
        assert_eq!(
            relay_of(&addr(format!("/ip4/198.51.100.2/tcp/1/p2p/{peer}"))),
            None
        );
        assert_eq!(
            relay_of(&addr("/ip4/198.51.100.2/tcp/1/p2p-circuit".into())),
            None
        );
    }
}
