//! Paths: the glue between the connection train, the heartbeats and the
//! sessions. The train decides which connection is active; this module opens
//! the app stream on it, attaches the peer's session (which replays what is
//! unacknowledged), tunes heartbeat intervals (fast on the active path, by
//! class elsewhere), turns heartbeat results and late acknowledgements into
//! train inputs, and reports member status.

use std::time::Duration;

use libp2p::{swarm::ConnectionId, Multiaddr, PeerId, Stream};

use atmosphere_behaviours::{
    heartbeat,
    train::{self, PathClass, PeerStatus, Role, SwitchReason},
};

use super::{unix_now, Runtime};
use crate::{
    link,
    pubsub::now_ms,
    shared::{read, write},
    types::{MemberStatus, PathStatus, PathSwitch, PeerEvent},
    wire::Frame,
};

/// Least rate, bytes per second, expected of a BLE path: the slow end of
/// BLE 4.x L2CAP (BLE 5 reaches 100–180 kB/s). A frame may take its size at
/// this rate on top of the ack timeout before the path is blamed.
pub(super) const BLE_MIN_RATE: u64 = 20_000;
/// Least ack timeout on a BLE path: a 1 Mbit/s link shared by heartbeats,
/// state announcements and gossip delays a reply by hundreds of ms now and
/// then without being broken (the radio's supervision timeout reports a
/// real loss).
pub(super) const BLE_ACK_FLOOR: Duration = Duration::from_secs(1);
/// Least rate, bytes per second, expected of any other path.
pub(super) const IP_MIN_RATE: u64 = 1_000_000;

/// The least rate expected of a path of `class` (unknown: an IP path).
fn min_rate(class: Option<PathClass>) -> u64 {
    match class {
        Some(PathClass::Ble) => BLE_MIN_RATE,
        _ => IP_MIN_RATE,
    }
}

/// Heartbeat answers a new path gets at the fast (active-path) interval, so
/// that it is measured quickly enough to take over if it is better.
pub(super) const FAST_SAMPLES: u32 = 3;

/// Most inbound app streams parked per peer while it is being verified.
pub(super) const MAX_PARKED_STREAMS: usize = 4;

/// The number libp2p gives a connection (for display).
pub(crate) fn connection_number(connection: ConnectionId) -> u64 {
    format!("{connection:?}")
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

fn reason_name(reason: &SwitchReason) -> &'static str {
    match reason {
        SwitchReason::Established => "established",
        SwitchReason::Better => "better",
        SwitchReason::ActiveClosed => "active_closed",
        SwitchReason::ActiveUnhealthy => "active_unhealthy",
        SwitchReason::AckTimeout => "ack_timeout",
        SwitchReason::PeerMoved => "peer_moved",
    }
}

/// The API form of a train status.
pub(crate) fn member_status(status: &PeerStatus) -> MemberStatus {
    match status {
        PeerStatus::Direct { class, rtt } => MemberStatus::Direct {
            class: class.as_str().to_owned(),
            rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
        },
        PeerStatus::Relayed { via } => MemberStatus::Relayed {
            via: via.map(|p| p.to_string()),
        },
        PeerStatus::Offline { last_seen_unix_ms } => MemberStatus::Offline {
            last_seen_ms: *last_seen_unix_ms,
        },
    }
}

impl Runtime {
    /// The heartbeat interval for a path of `class`: fast while it is active,
    /// unhealthy (to confirm its death or recovery quickly) or still new
    /// (fewer than [`FAST_SAMPLES`] answers), else by class.
    fn heartbeat_interval(
        &self,
        connection: ConnectionId,
        class: PathClass,
        fast: bool,
    ) -> Duration {
        let idle = self.config.heartbeat_interval(class);
        let new = self
            .heartbeat_samples
            .get(&connection)
            .is_none_or(|n| *n < FAST_SAMPLES);
        if fast || new {
            idle.min(Duration::from_millis(self.config.heartbeat_active_ms))
        } else {
            idle
        }
    }

    /// Sets the heartbeat interval of every path to `peer` from its role.
    /// While the active path is missing beats (the peer is "suspect"), every
    /// path beats fast: if the active path dies, the standby it would fail
    /// over to has been checked meanwhile, instead of only afterwards.
    pub(super) fn tune_heartbeats(&mut self, peer: PeerId) {
        let paths = self.swarm.behaviour().train.paths(&peer);
        let suspect = self.suspect_peers.contains(&peer);
        for path in paths {
            let interval = self.heartbeat_interval(
                path.connection,
                path.class,
                suspect || path.role == Role::Active || !path.healthy,
            );
            if self.heartbeat_intervals.get(&path.connection) != Some(&interval) {
                self.heartbeat_intervals.insert(path.connection, interval);
                let heartbeat = &mut self.swarm.behaviour_mut().heartbeat;
                heartbeat.set_interval(peer, path.connection, interval, path.class.as_str());
                if path.class == PathClass::Ble {
                    let wait = Duration::from_millis(self.config.heartbeat_ble_wait_ms);
                    heartbeat.set_min_wait(peer, path.connection, wait);
                }
            }
        }
    }

    pub(super) fn on_train_event(&mut self, event: train::Event) {
        match event {
            train::Event::PathChanged {
                peer,
                from,
                to,
                reason,
            } => {
                tracing::info!(
                    %peer,
                    from = ?from.as_ref().map(|p| p.class),
                    to = ?to.as_ref().map(|p| p.class),
                    reason = reason_name(&reason),
                    "path changed"
                );
                self.tune_heartbeats(peer);
                if let Some(to) = &to {
                    let on_it = self
                        .shared
                        .session(&peer)
                        .and_then(|s| s.connection())
                        .is_some_and(|c| c == to.connection);
                    // Only for a member verified on a live connection (a
                    // returning member is re-verified first, in `on_verified`).
                    let connected = read(&self.shared.remotes)
                        .get(&peer)
                        .is_some_and(|r| r.connected);
                    if !on_it && connected {
                        self.open_link(peer);
                    }
                }
                let switch = PathSwitch {
                    from: from.map(|p| p.class.as_str().to_owned()),
                    to: to.map(|p| p.class.as_str().to_owned()),
                    reason: reason_name(&reason).to_owned(),
                };
                let status = member_status(&self.swarm.behaviour().train.status(&peer));
                self.publish_peer_event(peer, status, Some(switch));
            }
            train::Event::PeerStatus { peer, status } => {
                let member = read(&self.shared.remotes).contains_key(&peer);
                if member && !matches!(status, PeerStatus::Offline { .. }) {
                    self.last_seen_ms.insert(peer, now_ms());
                }
                if !member {
                    return;
                }
                self.publish_peer_event(peer, member_status(&status), None);
            }
            train::Event::EndpointSucceeded { peer, addr } => {
                let rtt = self.path_rtt_ms(&peer, |p| p.remote_addr == addr);
                self.save_endpoint_success(peer, &addr, rtt);
            }
            _ => {}
        }
    }

    fn publish_peer_event(&self, peer: PeerId, status: MemberStatus, switch: Option<PathSwitch>) {
        // No receivers is fine: nobody is watching.
        let _ = self.shared.peer_events.send(PeerEvent {
            peer_id: peer.to_string(),
            status,
            switch,
            at_ms: now_ms(),
        });
    }

    pub(super) fn on_heartbeat_event(&mut self, event: heartbeat::Event) {
        match event {
            heartbeat::Event::Beat {
                peer,
                connection,
                rtt,
                ..
            } => {
                let train = &mut self.swarm.behaviour_mut().train;
                train.on_rtt(peer, connection, rtt);
                if train.active(&peer) == Some(connection) {
                    self.suspect_peers.remove(&peer);
                    if let Some(remote) = write(&self.shared.remotes).get_mut(&peer) {
                        remote.rtt = Some(rtt);
                    }
                }
                let samples = self.heartbeat_samples.entry(connection).or_default();
                *samples = samples.saturating_add(1);
                if *samples == FAST_SAMPLES {
                    self.record_endpoint_latency(peer, connection);
                }
                self.tune_heartbeats(peer);
            }
            heartbeat::Event::Missed {
                peer, connection, ..
            } => {
                let train = &mut self.swarm.behaviour_mut().train;
                train.on_missed(peer, connection);
                if train.active(&peer) == Some(connection) {
                    self.suspect_peers.insert(peer);
                }
                self.tune_heartbeats(peer);
            }
            heartbeat::Event::Timeout { peer, connection } => {
                tracing::info!(%peer, connection = connection_number(connection), "path dead: heartbeats unanswered");
                self.swarm
                    .behaviour_mut()
                    .train
                    .on_timeout(peer, connection);
                // A dead path is closed so that reconnection can start.
                self.swarm.close_connection(connection);
            }
            _ => {}
        }
    }

    /// A dialled path has been measured: its endpoint's saved latency is
    /// the smoothed heartbeat RTT.
    fn record_endpoint_latency(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(address) = self.connections.get(&peer).and_then(|conns| {
            conns.iter().find_map(|(id, endpoint)| match endpoint {
                libp2p::core::ConnectedPoint::Dialer { address, .. } if *id == connection => {
                    Some(address.clone())
                }
                _ => None,
            })
        }) else {
            return;
        };
        let rtt = self.path_rtt_ms(&peer, |p| p.connection == connection);
        self.save_endpoint_success(peer, &address, rtt);
    }

    /// The smoothed RTT of the first path of `peer` that `which` picks, in ms.
    fn path_rtt_ms(&self, peer: &PeerId, which: impl Fn(&train::PathInfo) -> bool) -> Option<u32> {
        self.swarm
            .behaviour()
            .train
            .paths(peer)
            .iter()
            .find(|p| which(p))
            .and_then(|p| p.rtt)
            .map(|d| d.as_millis().min(u32::MAX as u128) as u32)
    }

    /// Saves that `addr` of `peer` worked now (with its latency, if known).
    fn save_endpoint_success(&self, peer: PeerId, addr: &Multiaddr, rtt: Option<u32>) {
        if let Err(e) = self.store.record_endpoint_success(
            &peer.to_string(),
            &super::saved::endpoint_key(addr),
            unix_now(),
            rtt,
        ) {
            tracing::warn!(error = %e, "store");
        }
    }

    /// Sessions whose oldest frame waits too long for its ack: the train
    /// promotes the standby.
    pub(super) fn check_acks(&mut self) {
        let floor = Duration::from_millis(self.config.ack_timeout_floor_ms);
        let train = &self.swarm.behaviour().train;
        let overdue: Vec<(PeerId, Option<ConnectionId>)> = read(&self.shared.remotes)
            .iter()
            .filter(|(peer, r)| {
                let class = r.session.connection().and_then(|c| train.class_of(peer, c));
                let floor = match class {
                    Some(PathClass::Ble) => floor.max(BLE_ACK_FLOOR),
                    _ => floor,
                };
                r.connected && r.session.ack_overdue(floor, min_rate(class))
            })
            .map(|(p, r)| (*p, r.session.connection()))
            .collect();
        for (peer, on) in overdue {
            let active = self.swarm.behaviour().train.active(&peer);
            if on.is_some() && on == active {
                tracing::info!(%peer, "acknowledgements late: trying another path");
                self.swarm.behaviour_mut().train.ack_timeout(peer);
                self.tune_heartbeats(peer);
            } else {
                // The session lags behind the train: move it, don't blame
                // the train's (new) active path.
                self.open_link(peer);
            }
        }
    }

    /// Members whose session is not on the train's active path (a failed
    /// stream open, a switch while detached) get a new stream. Runs every second.
    pub(super) fn repair_links(&mut self) {
        let lagging: Vec<PeerId> = read(&self.shared.remotes)
            .iter()
            .filter(|(_, r)| r.connected)
            .map(|(p, r)| (*p, r.session.connection()))
            .filter(|(p, on)| {
                let active = self.swarm.behaviour().train.active(p);
                active.is_some() && *on != active
            })
            .map(|(p, _)| p)
            .collect();
        for peer in lagging {
            if !self.opening.contains_key(&peer) {
                self.open_link(peer);
            }
        }
    }

    /// The peer's frames arrive on `connection`: follow it there.
    pub(super) fn on_peer_moved(&mut self, peer: PeerId, connection: ConnectionId) {
        let train = &mut self.swarm.behaviour_mut().train;
        if train.active(&peer) != Some(connection) {
            train.follow(peer, connection);
            self.tune_heartbeats(peer);
        }
    }

    /// Opens our app stream on the train's active connection to `peer`.
    pub(super) fn open_link(&mut self, peer: PeerId) {
        let Some(target) = self.swarm.behaviour().train.active(&peer) else {
            // No path yet: `repair_links` opens one once the train has it.
            return;
        };
        let already_on = self
            .shared
            .session(&peer)
            .and_then(|s| s.connection())
            .is_some_and(|c| c == target);
        if already_on || self.opening.get(&peer) == Some(&Some(target)) {
            return;
        }
        let target = Some(target);
        match self.swarm.behaviour_mut().channel.open_stream(peer, target) {
            Ok(_) => {
                self.opening.insert(peer, target);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "cannot open a link"),
        }
    }

    /// Our app stream to `peer` on `connection` is open: if that is still the
    /// active path, the session moves onto it (replaying what is unacknowledged).
    pub(super) fn on_link_opened(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: Stream,
    ) {
        if self
            .opening
            .get(&peer)
            .is_some_and(|c| c.is_none_or(|c| c == connection))
        {
            self.opening.remove(&peer);
        }
        let active = self.swarm.behaviour().train.active(&peer);
        if active.is_some_and(|a| a != connection) {
            // The train moved on while this stream was negotiated.
            drop(stream);
            self.open_link(peer);
            return;
        }
        let Some(session) = self.shared.session(&peer) else {
            return;
        };
        let state = Frame::State(self.state_for(&peer));
        let (generation, wake) = session.attach(connection, state);
        tokio::spawn(link::run_writer(
            session,
            generation,
            wake,
            connection,
            stream,
            self.shared.clone(),
            self.commands.clone(),
        ));
    }

    /// Starts reading the peer's app stream on `connection`.
    pub(super) fn spawn_reader(&self, peer: PeerId, connection: ConnectionId, stream: Stream) {
        let Some(session) = self.shared.session(&peer) else {
            return;
        };
        tokio::spawn(link::run_reader(
            session,
            connection,
            stream,
            self.shared.clone(),
            self.commands.clone(),
        ));
    }

    /// Our writer on `connection` failed: if that was the peer's path, open a
    /// new one (the train may already have moved).
    pub(super) fn on_link_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(session) = self.shared.session(&peer) else {
            return;
        };
        if session.connection().is_none_or(|c| c == connection) && self.swarm.is_connected(&peer) {
            self.open_link(peer);
        }
    }

    /// Adds addresses heard for `peer` as path candidates.
    pub(super) fn add_candidates(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if peer == self.local_peer() {
            return;
        }
        let train = &mut self.swarm.behaviour_mut().train;
        for addr in addrs {
            train.add_candidate(peer, addr.clone());
        }
    }

    /// Asks the train to keep `peer` connected, from its saved endpoints
    /// (most recent success first) and any addresses heard.
    pub(super) fn watch_member(&mut self, peer: PeerId) {
        if peer == self.local_peer() {
            return;
        }
        let mut addrs: Vec<Multiaddr> = self
            .store
            .endpoints(&peer.to_string())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.addr.parse().ok())
            .collect();
        if let Some(entry) = self.directory.get(&peer) {
            addrs.extend(entry.addrs.iter().cloned());
        }
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(a.clone()));
        self.swarm.behaviour_mut().train.watch(peer, addrs.clone());
        // Saved endpoints are also path candidates (a better or standby path).
        self.add_candidates(peer, &addrs);
    }

    /// Every open path, for `status`.
    pub(super) fn path_statuses(&self, peer: &PeerId) -> Vec<PathStatus> {
        self.swarm
            .behaviour()
            .train
            .paths(peer)
            .into_iter()
            .map(|p| {
                let (sent, received) = self.shared.path_bytes(p.connection);
                PathStatus {
                    peer_id: peer.to_string(),
                    connection: connection_number(p.connection),
                    class: p.class.as_str().to_owned(),
                    remote_addr: p.remote_addr.to_string(),
                    role: match p.role {
                        Role::Active => "active",
                        Role::Standby => "standby",
                        Role::Extra => "extra",
                    }
                    .to_owned(),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    loss: p.loss,
                    healthy: p.healthy,
                    heartbeat_ms: self
                        .heartbeat_intervals
                        .get(&p.connection)
                        .map_or(0, |d| d.as_millis() as u64),
                    app_bytes_sent: sent,
                    app_bytes_received: received,
                }
            })
            .collect()
    }

    /// Drops members unreachable for longer than the outbox linger.
    pub(super) fn expire_outboxes(&mut self) {
        let linger = Duration::from_secs(self.config.outbox_linger_secs);
        let expired: Vec<PeerId> = read(&self.shared.remotes)
            .iter()
            .filter(|(_, r)| r.disconnected_at.is_some_and(|t| t.elapsed() > linger))
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            tracing::info!(%peer, "member unreachable past the outbox linger: queued frames dropped");
            self.shared.remove_remote(&peer);
        }
    }
}
