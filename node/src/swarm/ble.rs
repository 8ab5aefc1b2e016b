//! Bluetooth LE in the node.
//!
//! With a radio ([`crate::NodeBuilder::ble`]) the node listens on an L2CAP
//! PSM through [`BleTransport`](atmosphere_transports::ble::BleTransport),
//! advertises its [`Advert`] (peer-id hint + PSM) once the listener is up,
//! and scans. A sighting whose hint is a member's becomes a path candidate of
//! class `ble` for the connection train, as an mDNS record does for the LAN;
//! the train dials and scores it like any other path. Other sightings are
//! kept as *nearby devices* (for pairing), at most [`MAX_NEARBY`], each for
//! [`NEARBY_TTL`] after it was last seen.
//!
//! Dial races: when both devices see each other, the one with the lower hint
//! dials at once; the other waits [`DIAL_YIELD`] and dials only if no BLE
//! path to the peer has come up by then (the lower one may not be scanning).
//!
//! BLE addresses are never handed to other nodes (they rotate and mean
//! nothing off the radio): peers find them by scanning.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use atmosphere_behaviours::train::path::PathClass;
use atmosphere_transports::ble::{
    advert::{Advert, PeerHint},
    BleAddr, BleLink, BoxedLink, DeviceAddress, Sighting,
};
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};

use super::Runtime;
use crate::types::{BleStatus, NearbyDevice};

/// Most nearby (non-member) devices remembered.
pub(crate) const MAX_NEARBY: usize = 64;
/// How long a nearby device is listed after its last sighting.
pub(crate) const NEARBY_TTL: Duration = Duration::from_secs(60);
/// How long the higher-hint side of a dial race waits for the other to dial.
pub(crate) const DIAL_YIELD: Duration = Duration::from_secs(10);
/// A device not seen for this long is "back" when seen again: its candidate
/// is probed at once instead of on the train's (backed-off) schedule.
const RETURN_AFTER: Duration = Duration::from_secs(3);
/// How often the member hint table may be rebuilt from the store.
const HINT_REFRESH: Duration = Duration::from_secs(2);

/// A device advertising Atmosphere's service.
#[derive(Debug, Clone)]
pub(crate) struct Nearby {
    pub address: DeviceAddress,
    pub psm: u16,
    pub rssi_dbm: i16,
    pub last_seen: Instant,
    /// The member this hint belongs to, if any.
    pub member: Option<PeerId>,
}

/// The node's radio and what it has seen.
pub(crate) struct BleState {
    pub link: BoxedLink,
    pub hint: PeerHint,
    /// The PSM we listen on, once the listener is up.
    pub psm: Option<u16>,
    pub advertising: bool,
    pub nearby: HashMap<PeerHint, Nearby>,
    /// Member hints, with whether the member is paused (rebuilt at most
    /// every [`HINT_REFRESH`] for an unknown hint, and after a change of our
    /// meshes: [`Runtime::forget_member_hints`]).
    member_hints: HashMap<PeerHint, (PeerId, bool)>,
    hints_built: Option<Instant>,
    /// Peers whose BLE dial we yield to them, until when.
    yielding: HashMap<PeerId, (Instant, Multiaddr)>,
}

impl BleState {
    pub fn new(link: BoxedLink, local: &PeerId) -> Self {
        Self {
            link,
            hint: PeerHint::of(local),
            psm: None,
            advertising: false,
            nearby: HashMap::new(),
            member_hints: HashMap::new(),
            hints_built: None,
            yielding: HashMap::new(),
        }
    }

    /// The multiaddr to listen on: our device address, any PSM.
    pub fn listen_addr(&self) -> Multiaddr {
        BleAddr {
            device: self.link.local_address(),
            psm: 0,
        }
        .to_multiaddr()
    }

    fn remember(&mut self, hint: PeerHint, nearby: Nearby) {
        let now = Instant::now();
        self.nearby
            .retain(|_, n| now.duration_since(n.last_seen) < NEARBY_TTL);
        if !self.nearby.contains_key(&hint) && self.nearby.len() >= MAX_NEARBY {
            if let Some(oldest) = self
                .nearby
                .iter()
                .min_by_key(|(_, n)| n.last_seen)
                .map(|(h, _)| *h)
            {
                self.nearby.remove(&oldest);
            }
        }
        self.nearby.insert(hint, nearby);
    }
}

/// Whether `addr` is a BLE address (`/memory/<u64>`).
pub(crate) fn is_ble_addr(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Memory(_)))
}

impl Runtime {
    /// A listener came up on `address`: advertise its PSM.
    pub(super) fn on_ble_listening(&mut self, address: &Multiaddr) {
        let Some(ble) = self.ble.as_mut() else {
            return;
        };
        let Some(addr) = BleAddr::from_multiaddr(address) else {
            return;
        };
        ble.psm = Some(addr.psm);
        let advert = Advert {
            peer_hint: ble.hint,
            psm: addr.psm,
        };
        ble.advertising = true;
        let advertise = ble.link.advertise(Some(advert.encode()));
        tokio::spawn(async move {
            if let Err(e) = advertise.await {
                tracing::warn!(error = %e, "BLE advertising failed");
            }
        });
        tracing::info!(psm = addr.psm, "BLE advertising");
    }

    /// A scan saw `sighting`.
    pub(super) fn on_ble_sighting(&mut self, sighting: Sighting) {
        let Some(ble) = self.ble.as_ref() else {
            return;
        };
        let advert = match Advert::decode(&sighting.data) {
            Ok(advert) => advert,
            Err(e) => {
                tracing::debug!(address = %sighting.address, error = %e, "ignoring advertisement");
                return;
            }
        };
        if advert.peer_hint == ble.hint {
            return;
        }
        let member = self.member_of_hint(&advert.peer_hint);
        let paused = member.is_some_and(|(_, paused)| paused);
        let member = member.map(|(peer, _)| peer);
        let Some(ble) = self.ble.as_mut() else {
            return;
        };
        // Back after an absence (or a new address): worth a dial at once.
        let returning = ble.nearby.get(&advert.peer_hint).is_none_or(|n| {
            n.last_seen.elapsed() >= RETURN_AFTER
                || n.address != sighting.address
                || n.psm != advert.psm
        });
        ble.remember(
            advert.peer_hint,
            Nearby {
                address: sighting.address,
                psm: advert.psm,
                rssi_dbm: sighting.rssi_dbm,
                last_seen: Instant::now(),
                member,
            },
        );
        let Some(peer) = member.filter(|_| !paused) else {
            return;
        };
        let addr = BleAddr {
            device: sighting.address,
            psm: advert.psm,
        }
        .to_multiaddr();
        let Some(ble) = self.ble.as_mut() else {
            return;
        };
        if ble.hint < advert.peer_hint {
            tracing::debug!(%peer, %addr, "member sighted over BLE: path candidate");
            self.add_candidates(peer, std::slice::from_ref(&addr));
            if returning {
                self.swarm
                    .behaviour_mut()
                    .train
                    .candidate_seen(&peer, &addr);
            }
        } else {
            let deadline = Instant::now() + DIAL_YIELD;
            // (The higher hint yields: see the module docs.)
            let entry = ble.yielding.entry(peer).or_insert((deadline, addr.clone()));
            entry.1 = addr;
        }
    }

    /// Housekeeping: the higher-hint side dials once its yield is over and
    /// no BLE path has come up.
    pub(super) fn ble_housekeeping(&mut self) {
        let Some(ble) = self.ble.as_mut() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<(PeerId, Multiaddr)> = ble
            .yielding
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, (_, a))| (*p, a.clone()))
            .collect();
        ble.yielding.retain(|_, (at, _)| *at > now);
        for (peer, addr) in due {
            if !self.has_ble_path(&peer) {
                tracing::debug!(%peer, %addr, "peer did not dial over BLE: dialing");
                self.add_candidates(peer, std::slice::from_ref(&addr));
            }
        }
    }

    fn has_ble_path(&self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour()
            .train
            .paths(peer)
            .iter()
            .any(|p| p.class == PathClass::Ble)
    }

    /// Our meshes or their auto-reconnect settings changed: the member hint
    /// table is rebuilt at the next sighting.
    pub(super) fn forget_member_hints(&mut self) {
        if let Some(ble) = self.ble.as_mut() {
            ble.member_hints.clear();
            ble.hints_built = None;
        }
    }

    /// The member advertising `hint`, and whether it is paused (see
    /// [`Runtime::is_paused_member`]; decided when the table is built, so that
    /// a sighting reads no store).
    fn member_of_hint(&mut self, hint: &PeerHint) -> Option<(PeerId, bool)> {
        let stale = self
            .ble
            .as_ref()
            .is_some_and(|b| b.hints_built.is_none_or(|t| t.elapsed() >= HINT_REFRESH));
        let known = self
            .ble
            .as_ref()
            .and_then(|b| b.member_hints.get(hint).copied());
        if known.is_some() || !stale {
            return known;
        }
        // Members we reconnect to are not paused; anyone else we know of
        // may be.
        let watched = self.members_to_watch().unwrap_or_default();
        let mut others: HashSet<PeerId> = self.directory.keys().copied().collect();
        others.extend(crate::shared::read(&self.shared.remotes).keys().copied());
        others.retain(|p| !watched.contains(p));
        let mut table: HashMap<PeerHint, (PeerId, bool)> = others
            .into_iter()
            .map(|p| (PeerHint::of(&p), (p, self.is_paused_member(&p))))
            .collect();
        table.extend(watched.into_iter().map(|p| (PeerHint::of(&p), (p, false))));
        let found = table.get(hint).copied();
        if let Some(ble) = self.ble.as_mut() {
            ble.member_hints = table;
            ble.hints_built = Some(Instant::now());
        }
        found
    }

    /// Devices seen advertising over BLE, strongest signal first.
    pub(super) fn ble_nearby(&self) -> Vec<NearbyDevice> {
        let Some(ble) = self.ble.as_ref() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut nearby: Vec<NearbyDevice> = ble
            .nearby
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_seen) < NEARBY_TTL)
            .map(|(hint, n)| NearbyDevice {
                id: super::pairing::hint_hex(hint),
                via: "ble".into(),
                address: BleAddr {
                    device: n.address,
                    psm: n.psm,
                }
                .to_string(),
                rssi_dbm: Some(n.rssi_dbm),
                peer_id: n.member.map(|p| p.to_string()),
                member: n.member.is_some(),
                name: n
                    .member
                    .and_then(|p| self.directory.get(&p))
                    .and_then(|d| d.name.clone()),
                last_seen_ms_ago: now.duration_since(n.last_seen).as_millis() as u64,
            })
            .collect();
        nearby.sort_by_key(|n| std::cmp::Reverse(n.rssi_dbm));
        nearby
    }

    /// The `ble` part of `status`.
    pub(super) fn ble_status(&self) -> Option<BleStatus> {
        let ble = self.ble.as_ref()?;
        let nearby = self.ble_nearby();
        let connections = self
            .connections
            .values()
            .flatten()
            .filter(|(_, endpoint)| is_ble_addr(endpoint.get_remote_address()))
            .count();
        Some(BleStatus {
            address: ble.link.local_address().to_string(),
            psm: ble.psm,
            advertising: ble.advertising,
            connections,
            nearby,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_transports::ble::sim::{Position, SimRadio};

    fn nearby(address: DeviceAddress, at: Instant) -> Nearby {
        Nearby {
            address,
            psm: 0x80,
            rssi_dbm: -50,
            last_seen: at,
            member: None,
        }
    }

    #[test]
    fn the_nearby_table_is_bounded_and_drops_the_oldest() {
        let radio = SimRadio::default();
        let link = BoxedLink::new(radio.add_node(Position::new(0.0, 0.0), 10.0));
        let mut state = BleState::new(link, &PeerId::random());
        let start = Instant::now();
        let first = PeerHint([0; 6]);
        state.remember(first, nearby(DeviceAddress::from_bytes([1; 6]), start));
        for i in 1..=MAX_NEARBY as u32 {
            let mut hint = [0u8; 6];
            hint[..4].copy_from_slice(&i.to_be_bytes());
            state.remember(
                PeerHint(hint),
                nearby(
                    DeviceAddress::from_bytes([2; 6]),
                    start + Duration::from_millis(u64::from(i)),
                ),
            );
        }
        assert_eq!(state.nearby.len(), MAX_NEARBY);
        assert!(!state.nearby.contains_key(&first), "the oldest went first");
        // Seeing a known device again does not evict anyone.
        let known = *state.nearby.keys().next().expect("an entry");
        state.remember(
            known,
            nearby(DeviceAddress::from_bytes([3; 6]), Instant::now()),
        );
        assert_eq!(state.nearby.len(), MAX_NEARBY);
    }

    #[test]
    fn ble_addresses_are_recognised() {
        assert!(is_ble_addr(&"/memory/42".parse().expect("addr")));
        assert!(!is_ble_addr(&"/ip4/10.0.0.1/tcp/1".parse().expect("addr")));
    }
}
