//! The connection train: which of the connections to a peer carries app
//! traffic.
//!
//! libp2p keeps every connection to a peer and sends on whichever a protocol
//! happens to pick. The train owns that decision. Per peer it keeps
//!
//! - one **active** connection, which carries all app traffic (the owner opens
//!   its app stream on [`Behaviour::active`]);
//! - at most one warm **standby**, which carries heartbeats only and takes
//!   over when the active path fails;
//! - no others: **extra** connections are closed (see below).
//!
//! The train has no protocol of its own (its handler is
//! [`dummy::ConnectionHandler`]). It learns about connections from the swarm,
//! and about their health from the owner, which feeds it the results of the
//! heartbeat behaviour ([`Behaviour::on_rtt`], [`Behaviour::on_missed`],
//! [`Behaviour::on_timeout`]) and of its app-level acknowledgements
//! ([`Behaviour::ack_timeout`], [`Behaviour::follow`]).
//!
//! # Classes and scores
//!
//! Each connection is classified from its address ([`path`]): BLE, LAN
//! (private address), direct (public address) or relayed. Paths are scored by
//! health, then degradation (≥ 10 % heartbeat loss over the last
//! [`Config::loss_window`] heartbeats), then the rank of their class in
//! [`Config::order`] (set from a [`Policy`]), then smoothed RTT; see
//! [`policy`] for the exact rules.
//!
//! # How the train decides
//!
//! - **First path**: the first connection to a peer becomes active
//!   ([`SwitchReason::Established`]).
//! - **Better path** (leader only): when a path that has been measured (RTT
//!   sample) scores better than the active one — better health, degradation or
//!   class, or the same class with an RTT more than 25 % *and* more than
//!   [`Config::rtt_margin`] lower after ≥ 2 samples — it becomes active
//!   ([`SwitchReason::Better`]). The hysteresis avoids flapping. One BLE
//!   path never replaces another on RTT: both share the same radio link, and
//!   the idle one only looks faster.
//! - **Following**: the follower does not switch for a better score; it
//!   follows the leader. When the remote's app stream arrives on a connection,
//!   the owner calls [`Behaviour::follow`] and the follower moves its traffic
//!   there ([`SwitchReason::PeerMoved`]). The follower moves on its own only
//!   in an emergency, so when the *leader* sees the follower's stream arrive
//!   on another connection it follows too, and treats its previous path as
//!   unhealthy until that path answers a heartbeat again.
//! - **Emergencies** (both sides, on their own): the active connection closed
//!   ([`SwitchReason::ActiveClosed`]), its heartbeat timed out
//!   ([`SwitchReason::ActiveUnhealthy`]) or app acks were late
//!   ([`SwitchReason::AckTimeout`]): the standby is promoted if healthy, else
//!   the best remaining path. A heartbeat or ack timeout only switches to a
//!   healthy path; if there is none the active path stays, and the first path
//!   that becomes usable later takes over (reason `ActiveUnhealthy`).
//!
//! The **leader** of a pair is the side with the smaller [`PeerId`] (by
//! [`PeerId`]'s `Ord`); both sides compute the same answer without talking.
//!
//! # Standby and extras
//!
//! The standby is the best path of another class than the active one; if
//! there is none, the best same-class path to a *different remote host* (a
//! second LAN, another relay). A same-class path to the same host as the
//! active (or without a host, like BLE) is never a standby: it would fail
//! together with the active path.
//!
//! Connections that are neither active nor standby are extras. Only the
//! leader closes them, once they are older than [`Config::close_grace`] (new
//! connections get that long to be measured; a better one can win in the
//! meantime), so the two sides never close different connections. The
//! follower closes connections only above the hard cap
//! [`Config::max_connections_per_peer`] (the leader enforces it too): the
//! oldest extras first, then the standby; never the active connection.
//!
//! # Watching and reconnection
//!
//! [`Behaviour::watch`] marks a peer the owner wants connected (a mesh
//! member), with its endpoints ordered by last success (see
//! [`backoff::order_endpoints`]). A watched peer without a connection is
//! dialed at once, then — after losing its last connection or after a failed
//! dial — with exponential backoff per peer: [`Config::backoff_min`] (1 s)
//! doubling to [`Config::backoff_max`] (60 s), reset when a connection is
//! established. At most [`Config::max_watched_peers`] peers are watched.
//!
//! # Probing
//!
//! [`Behaviour::add_candidate`] records addresses learnt from discovery
//! (mDNS, BLE scan, identify, Kademlia, invites, saved endpoints), at most
//! [`Config::max_candidates_per_peer`] per peer (the oldest is dropped). For
//! a watched or connected peer, candidates are dialed as additional
//! connections when their class ranks better than the active path's (any
//! class when there is no healthy active path) and no healthy path of that
//! class exists; and, while the peer has no standby, when they could become
//! one (another class than the active path, or the same class on another
//! remote host, e.g. the peer's address on a second LAN). A candidate is
//! never probed while a live connection goes to its address. Each candidate is probed
//! at its class's [`Config::probe_interval`], [`Config::probe_slowdown`] times
//! slower while the peer has both an active path and a standby (without a
//! standby the peer is one failure away from offline), doubling per failed
//! probe up to [`MAX_PROBE_BACKOFF_FACTOR`] times that interval. At most
//! [`Config::max_probes_in_flight`] probes run per peer. A probe that
//! succeeds is just another connection: once measured, the leader switches
//! to it if it is better. A healthy active path of the best class therefore
//! means no probing at all.
//!
//! # Timers and bounds
//!
//! One [`Delay`] drives redials, probes and grace closes. It is armed only
//! for the next due deadline (nothing is armed while there is nothing to do),
//! at most once per [`Config::tick`], and each tick starts at most
//! [`Config::max_dials_per_tick`] dials. Per peer the train keeps the
//! connections the swarm has (bounded by the swarm's connection limits and
//! the hard cap), the candidates, two probes and one redial.

pub mod backoff;
pub mod path;
pub mod policy;

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    task::{Context, Poll, Waker},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::{
    core::{transport::PortUse, ConnectedPoint, Endpoint},
    multiaddr::Protocol,
    swarm::{
        behaviour::ConnectionEstablished,
        dial_opts::{DialOpts, PeerCondition},
        dummy, AddressChange, CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId,
        DialError, DialFailure, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};
use serde::{Deserialize, Serialize};

pub use backoff::Backoff;
pub use path::{PathClass, RemoteHost};
pub use policy::Policy;

use policy::PathView;

/// How often each class of candidate is probed (seed values, before the
/// slowdown while a path is active and the per-failure doubling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeIntervals {
    /// BLE candidates (default 5 s).
    pub ble: Duration,
    /// LAN candidates (default 10 s).
    pub lan: Duration,
    /// Direct (public) candidates (default 10 s).
    pub direct: Duration,
    /// Relayed candidates (default 30 s).
    pub relayed: Duration,
}

impl ProbeIntervals {
    /// The interval for `class`.
    pub fn get(&self, class: PathClass) -> Duration {
        match class {
            PathClass::Ble => self.ble,
            PathClass::LanDirect => self.lan,
            PathClass::Direct => self.direct,
            PathClass::Relayed => self.relayed,
        }
    }
}

impl Default for ProbeIntervals {
    fn default() -> Self {
        Self {
            ble: Duration::from_secs(5),
            lan: Duration::from_secs(10),
            direct: Duration::from_secs(10),
            relayed: Duration::from_secs(30),
        }
    }
}

/// Configuration of the connection train.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path classes, best first (default [`Policy::MainsPowered`]'s order).
    /// Classes missing from the list rank after the listed ones.
    pub order: Vec<PathClass>,
    /// How old an extra connection must be before the leader closes it
    /// (default 10 s).
    pub close_grace: Duration,
    /// Hard cap on connections per peer, enforced by both sides (default 4;
    /// at least 1).
    pub max_connections_per_peer: usize,
    /// Absolute RTT improvement a same-class path needs, on top of 25 %, to
    /// take over (default 5 ms).
    pub rtt_margin: Duration,
    /// Seed probe interval per class.
    pub probe_interval: ProbeIntervals,
    /// Factor the probe intervals are multiplied by while the peer has an
    /// active path (default 6).
    pub probe_slowdown: u32,
    /// Probes in flight per peer (default 2).
    pub max_probes_in_flight: usize,
    /// First reconnection delay (default 1 s).
    pub backoff_min: Duration,
    /// Longest reconnection delay (default 60 s).
    pub backoff_max: Duration,
    /// Peers that can be watched at once (default 4096).
    pub max_watched_peers: usize,
    /// Candidate addresses (and watch endpoints) kept per peer (default 16).
    pub max_candidates_per_peer: usize,
    /// Heartbeats the loss ratio is computed over (default 10).
    pub loss_window: usize,
    /// Dials (redials and probes) started per timer tick (default 32).
    pub max_dials_per_tick: usize,
    /// Shortest time between two timer ticks (default 250 ms).
    pub tick: Duration,
}

impl Config {
    /// The default configuration with `policy`'s class order.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            order: policy.order(),
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            order: Policy::default().order(),
            close_grace: Duration::from_secs(10),
            max_connections_per_peer: 4,
            rtt_margin: Duration::from_millis(5),
            probe_interval: ProbeIntervals::default(),
            probe_slowdown: 6,
            max_probes_in_flight: 2,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_watched_peers: 4096,
            max_candidates_per_peer: 16,
            loss_window: 10,
            max_dials_per_tick: 32,
            tick: Duration::from_millis(250),
        }
    }
}

/// The role of a connection in the train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Carries the app traffic.
    Active,
    /// Kept warm (heartbeats only), promoted when the active path fails.
    Standby,
    /// Neither; the leader closes it after the grace period.
    Extra,
}

/// One connection to a peer as the train sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathInfo {
    /// The connection.
    pub connection: ConnectionId,
    /// Its class.
    pub class: PathClass,
    /// The address it is classified by (see [`path::endpoint_addr`]).
    pub remote_addr: Multiaddr,
    /// Smoothed heartbeat RTT, once measured.
    pub rtt: Option<Duration>,
    /// Missed-heartbeat ratio over the recent window.
    pub loss: f32,
    /// `false` after a heartbeat or ack timeout, until the next RTT sample.
    pub healthy: bool,
    /// Its role.
    pub role: Role,
}

/// Why the active connection changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SwitchReason {
    /// The first path to the peer.
    Established,
    /// A better path became healthy (leader).
    Better,
    /// The active connection closed.
    ActiveClosed,
    /// The active path's heartbeat timed out.
    ActiveUnhealthy,
    /// The owner saw app acknowledgements arrive late on the active path.
    AckTimeout,
    /// The remote moved its traffic to this connection (follower).
    PeerMoved,
}

/// How a peer is reachable, for member lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerStatus {
    /// The active path is not relayed (BLE, LAN or direct).
    Direct {
        /// The active path's class.
        class: PathClass,
        /// Its smoothed RTT, once measured.
        rtt: Option<Duration>,
    },
    /// The active path runs through a relay.
    Relayed {
        /// The relay, from the circuit address.
        via: Option<PeerId>,
    },
    /// No connection.
    Offline {
        /// When the peer was last connected (Unix milliseconds), if known.
        last_seen_unix_ms: Option<u64>,
    },
}

/// What the train reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The active connection to `peer` changed.
    PathChanged {
        /// The peer.
        peer: PeerId,
        /// The previous active path (`None` for the first one).
        from: Option<PathInfo>,
        /// The new active path (`None` when the last path is gone).
        to: Option<PathInfo>,
        /// Why.
        reason: SwitchReason,
    },
    /// The peer's [`PeerStatus`] changed (its kind, class, relay or
    /// offline-ness; not every RTT sample).
    PeerStatus {
        /// The peer.
        peer: PeerId,
        /// Its new status.
        status: PeerStatus,
    },
    /// An outbound connection to `addr` was established (the owner records
    /// the endpoint's last success). `addr` has no trailing `/p2p/<peer>`.
    EndpointSucceeded {
        /// The peer.
        peer: PeerId,
        /// The address that worked.
        addr: Multiaddr,
    },
    /// The train is redialing a watched peer.
    Dialing {
        /// The peer.
        peer: PeerId,
        /// Dial attempts since the last connection, this one included.
        attempt: u32,
        /// The delay before the next attempt should this one fail.
        next_backoff: Duration,
    },
}

/// Heartbeat outcomes over the last `cap` heartbeats.
#[derive(Debug)]
struct LossWindow {
    outcomes: VecDeque<bool>,
    misses: usize,
    cap: usize,
}

impl LossWindow {
    fn new(cap: usize) -> Self {
        Self {
            outcomes: VecDeque::new(),
            misses: 0,
            cap: cap.max(1),
        }
    }

    fn push(&mut self, answered: bool) {
        if self.outcomes.len() == self.cap && self.outcomes.pop_front() == Some(false) {
            self.misses -= 1;
        }
        self.outcomes.push_back(answered);
        if !answered {
            self.misses += 1;
        }
    }

    fn ratio(&self) -> f32 {
        if self.outcomes.is_empty() {
            0.0
        } else {
            self.misses as f32 / self.outcomes.len() as f32
        }
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    class: PathClass,
    addr: Multiaddr,
    host: Option<RemoteHost>,
    via: Option<PeerId>,
    since: Instant,
    srtt: Option<Duration>,
    samples: u32,
    loss: LossWindow,
    healthy: bool,
    /// The train asked the swarm to close it.
    closing: bool,
}

impl Conn {
    fn new(id: ConnectionId, addr: Multiaddr, loss_window: usize) -> Self {
        let mut conn = Self {
            id,
            class: PathClass::Direct,
            addr: Multiaddr::empty(),
            host: None,
            via: None,
            since: Instant::now(),
            srtt: None,
            samples: 0,
            loss: LossWindow::new(loss_window),
            healthy: true,
            closing: false,
        };
        conn.set_addr(addr);
        conn
    }

    fn set_addr(&mut self, addr: Multiaddr) {
        self.class = PathClass::classify(&addr);
        self.host = path::remote_host(&addr);
        self.via = path::relay_of(&addr);
        self.addr = addr;
    }

    fn view(&self) -> PathView {
        PathView {
            class: self.class,
            rtt: self.srtt,
            samples: self.samples,
            loss: self.loss.ratio(),
            healthy: self.healthy,
            host: self.host.clone(),
        }
    }
}

#[derive(Debug)]
struct Candidate {
    addr: Multiaddr,
    class: PathClass,
    next_probe: Instant,
    failures: u32,
}

#[derive(Debug)]
struct Watch {
    endpoints: Vec<Multiaddr>,
    backoff: Backoff,
    attempts: u32,
    /// When to redial, while disconnected and not dialing.
    next_dial: Option<Instant>,
    /// The redial in flight.
    dialing: Option<ConnectionId>,
}

/// What [`Event::PeerStatus`] is emitted on a change of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusKey {
    Direct(PathClass),
    Relayed(Option<PeerId>),
    Offline,
}

#[derive(Debug, Default)]
struct Peer {
    /// Oldest first.
    conns: Vec<Conn>,
    active: Option<ConnectionId>,
    standby: Option<ConnectionId>,
    watch: Option<Watch>,
    candidates: VecDeque<Candidate>,
    /// Probe dials in flight and their address.
    probes: Vec<(ConnectionId, Multiaddr)>,
    last_seen_ms: Option<u64>,
    /// The status last reported in an event.
    reported: Option<StatusKey>,
}

impl Peer {
    fn conn(&self, id: ConnectionId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnectionId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn role(&self, id: ConnectionId) -> Role {
        if self.active == Some(id) {
            Role::Active
        } else if self.standby == Some(id) {
            Role::Standby
        } else {
            Role::Extra
        }
    }

    fn info(&self, id: ConnectionId) -> Option<PathInfo> {
        let c = self.conn(id)?;
        Some(PathInfo {
            connection: c.id,
            class: c.class,
            remote_addr: c.addr.clone(),
            rtt: c.srtt,
            loss: c.loss.ratio(),
            healthy: c.healthy,
            role: self.role(id),
        })
    }

    /// Views of the connections not being closed, and their ids.
    fn views(&self) -> (Vec<PathView>, Vec<ConnectionId>) {
        self.conns
            .iter()
            .filter(|c| !c.closing)
            .map(|c| (c.view(), c.id))
            .unzip()
    }

    fn status(&self) -> PeerStatus {
        match self.active.and_then(|id| self.conn(id)) {
            Some(c) if c.class == PathClass::Relayed => PeerStatus::Relayed { via: c.via },
            Some(c) => PeerStatus::Direct {
                class: c.class,
                rtt: c.srtt,
            },
            None => PeerStatus::Offline {
                last_seen_unix_ms: self.last_seen_ms,
            },
        }
    }

    fn status_key(&self) -> StatusKey {
        match self.status() {
            PeerStatus::Direct { class, .. } => StatusKey::Direct(class),
            PeerStatus::Relayed { via } => StatusKey::Relayed(via),
            PeerStatus::Offline { .. } => StatusKey::Offline,
        }
    }

    /// Indices (into `candidates`) of the candidates worth probing now,
    /// timing aside (see the module docs): candidates of a better class than
    /// a healthy active path (any class without one), and — while there is
    /// no standby — candidates that could become one (another class, or the
    /// same class on another remote host).
    fn probe_targets(&self, order: &[PathClass]) -> Vec<usize> {
        let active = self
            .active
            .and_then(|id| self.conn(id))
            .filter(|a| a.healthy);
        let limit = active.map(|a| policy::rank(order, a.class));
        let wants_standby = active.is_some() && self.standby.is_none();
        self.candidates
            .iter()
            .enumerate()
            .filter(|(_, cand)| {
                let host = path::remote_host(&cand.addr);
                let better = limit.is_none_or(|r| policy::rank(order, cand.class) < r)
                    && !self
                        .conns
                        .iter()
                        .any(|c| !c.closing && c.class == cand.class && c.healthy);
                let standby = wants_standby
                    && active.is_some_and(|a| {
                        a.class != cand.class || (host.is_some() && a.host != host)
                    })
                    && !self.conns.iter().any(|c| {
                        !c.closing && c.healthy && c.class == cand.class && c.host == host
                    });
                (better || standby)
                    && !self.conns.iter().any(|c| !c.closing && c.addr == cand.addr)
                    && !self.probes.iter().any(|(_, a)| *a == cand.addr)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The delay before probing `cand` again.
/// A failing candidate is probed at most this many times less often than its
/// class's interval (a link that comes back is found within that).
pub const MAX_PROBE_BACKOFF_FACTOR: u32 = 4;

/// `redundant`: the peer has both an active path and a standby (probing then
/// slows down by [`Config::probe_slowdown`]).
fn probe_delay(config: &Config, cand: &Candidate, redundant: bool) -> Duration {
    let mut base = config.probe_interval.get(cand.class);
    if redundant {
        base = base.saturating_mul(config.probe_slowdown.max(1));
    }
    let cap = base.saturating_mul(MAX_PROBE_BACKOFF_FACTOR);
    base.saturating_mul(1u32 << cand.failures.min(16)).min(cap)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `addr` as a dialable address of `peer` (no trailing `/p2p/<peer>`), or
/// `None` if it names another peer or is empty.
fn normalize(peer: &PeerId, addr: &Multiaddr) -> Option<Multiaddr> {
    if let Some(Protocol::P2p(other)) = addr.iter().last() {
        if other != *peer {
            return None;
        }
    }
    let addr = path::strip_peer(addr, peer);
    (!addr.is_empty()).then_some(addr)
}

/// Makes `to` the active connection and emits [`Event::PathChanged`].
fn switch(
    p: &mut Peer,
    peer: PeerId,
    from: Option<PathInfo>,
    to: Option<ConnectionId>,
    reason: SwitchReason,
    order: &[PathClass],
    events: &mut VecDeque<ToSwarm<Event, Infallible>>,
) {
    p.active = to;
    if to.is_none() {
        p.last_seen_ms = Some(now_unix_ms());
    }
    update_standby(p, order);
    let to = to.and_then(|id| p.info(id));
    tracing::debug!(
        %peer,
        ?reason,
        from = ?from.as_ref().map(|f| f.connection),
        to = ?to.as_ref().map(|t| t.connection),
        "active path changed"
    );
    events.push_back(ToSwarm::GenerateEvent(Event::PathChanged {
        peer,
        from,
        to,
        reason,
    }));
}

fn update_standby(p: &mut Peer, order: &[PathClass]) {
    let (views, ids) = p.views();
    p.standby = p
        .active
        .and_then(|a| ids.iter().position(|id| *id == a))
        .and_then(|ai| policy::select_standby(&views, ai, order))
        .map(|i| ids[i]);
}

fn report_status(p: &mut Peer, peer: PeerId, events: &mut VecDeque<ToSwarm<Event, Infallible>>) {
    let key = p.status_key();
    if p.reported != Some(key) {
        p.reported = Some(key);
        events.push_back(ToSwarm::GenerateEvent(Event::PeerStatus {
            peer,
            status: p.status(),
        }));
    }
}

/// The connection train [`NetworkBehaviour`] (see the [module docs](self)).
pub struct Behaviour {
    local: PeerId,
    config: Config,
    peers: HashMap<PeerId, Peer>,
    watched: usize,
    events: VecDeque<ToSwarm<Event, Infallible>>,
    /// The armed timer and when it fires.
    timer: Option<(Instant, Delay)>,
    last_tick: Option<Instant>,
    /// State changed: the timer must be re-armed.
    reschedule: bool,
    waker: Option<Waker>,
}

impl Behaviour {
    /// A train for the node `local_peer` (needed to tell leader from
    /// follower) with `config`.
    pub fn new(local_peer: PeerId, config: Config) -> Self {
        Self {
            local: local_peer,
            config,
            peers: HashMap::new(),
            watched: 0,
            events: VecDeque::new(),
            timer: None,
            last_tick: None,
            reschedule: false,
            waker: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node leads the pair with `peer` (it has the smaller
    /// [`PeerId`]).
    pub fn is_leader(&self, peer: &PeerId) -> bool {
        self.local < *peer
    }

    /// The connection app traffic to `peer` goes on.
    pub fn active(&self, peer: &PeerId) -> Option<ConnectionId> {
        self.peers.get(peer).and_then(|p| p.active)
    }

    /// The warm standby connection to `peer`.
    pub fn standby(&self, peer: &PeerId) -> Option<ConnectionId> {
        self.peers.get(peer).and_then(|p| p.standby)
    }

    /// Every connection to `peer` the train knows, oldest first.
    pub fn paths(&self, peer: &PeerId) -> Vec<PathInfo> {
        self.peers
            .get(peer)
            .map(|p| p.conns.iter().filter_map(|c| p.info(c.id)).collect())
            .unwrap_or_default()
    }

    /// The class of `connection` to `peer`, if the train knows it (cheaper
    /// than [`Behaviour::paths`] when only the class is wanted).
    pub fn class_of(&self, peer: &PeerId, connection: ConnectionId) -> Option<PathClass> {
        self.peers
            .get(peer)?
            .conns
            .iter()
            .find(|c| c.id == connection)
            .map(|c| c.class)
    }

    /// How `peer` is reachable. Peers neither connected nor watched are
    /// forgotten: `Offline` without a last-seen time.
    pub fn status(&self, peer: &PeerId) -> PeerStatus {
        self.peers
            .get(peer)
            .map(Peer::status)
            .unwrap_or(PeerStatus::Offline {
                last_seen_unix_ms: None,
            })
    }

    /// The status of every connected or watched peer.
    pub fn all_statuses(&self) -> Vec<(PeerId, PeerStatus)> {
        self.peers.iter().map(|(id, p)| (*id, p.status())).collect()
    }

    /// Whether `peer` is watched.
    pub fn is_watched(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.watch.is_some())
    }

    /// The candidate addresses recorded for `peer`, oldest first.
    pub fn candidates(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|p| p.candidates.iter().map(|c| c.addr.clone()).collect())
            .unwrap_or_default()
    }

    /// Keeps `peer` connected: dials it now if it has no connection, and
    /// again with backoff whenever it loses its last one. `endpoints` are
    /// tried in the given order (pass them ordered by last success, see
    /// [`backoff::order_endpoints`]); with none, the swarm asks the other
    /// behaviours (e.g. Kademlia) for addresses. Watching an already watched
    /// peer replaces its endpoints. Returns `false` when
    /// [`Config::max_watched_peers`] peers are already watched (or `peer` is
    /// the local peer).
    pub fn watch(&mut self, peer: PeerId, endpoints: Vec<Multiaddr>) -> bool {
        if peer == self.local {
            return false;
        }
        let already = self.is_watched(&peer);
        if !already && self.watched >= self.config.max_watched_peers {
            return false;
        }
        let mut clean: Vec<Multiaddr> = Vec::new();
        for addr in endpoints.iter().filter_map(|a| normalize(&peer, a)) {
            if clean.len() < self.config.max_candidates_per_peer && !clean.contains(&addr) {
                clean.push(addr);
            }
        }
        let p = self.peers.entry(peer).or_default();
        match &mut p.watch {
            Some(w) => w.endpoints = clean,
            None => {
                let connected = !p.conns.is_empty();
                p.watch = Some(Watch {
                    endpoints: clean,
                    backoff: Backoff::new(self.config.backoff_min, self.config.backoff_max),
                    attempts: 0,
                    next_dial: (!connected).then(Instant::now),
                    dialing: None,
                });
                if p.reported.is_none() {
                    p.reported = Some(p.status_key());
                }
                self.watched += 1;
            }
        }
        self.changed();
        true
    }

    /// Stops keeping `peer` connected (existing connections stay).
    pub fn unwatch(&mut self, peer: &PeerId) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.watch.take().is_some() {
            self.watched -= 1;
        }
        if p.conns.is_empty() {
            self.peers.remove(peer);
        }
        self.changed();
    }

    /// Records a candidate address of `peer` to probe (see the module docs).
    /// Only kept for watched or connected peers; duplicates are ignored and
    /// beyond [`Config::max_candidates_per_peer`] the oldest is dropped.
    /// Returns whether the address is now a candidate.
    pub fn add_candidate(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        let Some(addr) = normalize(&peer, &addr) else {
            return false;
        };
        let max = self.config.max_candidates_per_peer;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.candidates.iter().any(|c| c.addr == addr) {
            return true;
        }
        if max == 0 {
            return false;
        }
        while p.candidates.len() >= max {
            p.candidates.pop_front();
        }
        p.candidates.push_back(Candidate {
            class: PathClass::classify(&addr),
            addr,
            next_probe: Instant::now(),
            failures: 0,
        });
        self.changed();
        true
    }

    /// A candidate was just seen again (a BLE sighting after an absence):
    /// probe it at the next opportunity, forgetting its failures. Returns
    /// whether it is a candidate of a watched peer.
    pub fn candidate_seen(&mut self, peer: &PeerId, addr: &Multiaddr) -> bool {
        let Some(addr) = normalize(peer, addr) else {
            return false;
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        let Some(cand) = p.candidates.iter_mut().find(|c| c.addr == addr) else {
            return false;
        };
        cand.failures = 0;
        cand.next_probe = Instant::now();
        self.changed();
        true
    }

    /// Forgets a candidate address (e.g. an expired mDNS record). Returns
    /// whether it was one.
    pub fn remove_candidate(&mut self, peer: &PeerId, addr: &Multiaddr) -> bool {
        let Some(addr) = normalize(peer, addr) else {
            return false;
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        let before = p.candidates.len();
        p.candidates.retain(|c| c.addr != addr);
        let removed = p.candidates.len() != before;
        if removed {
            self.changed();
        }
        removed
    }

    /// A heartbeat on `connection` was answered after `rtt`: the path is
    /// healthy, its smoothed RTT (⅞ old + ⅛ new) updated and the loss window
    /// records a success. May switch (leader: a better path). Returns whether
    /// the connection is known.
    pub fn on_rtt(&mut self, peer: PeerId, connection: ConnectionId, rtt: Duration) -> bool {
        let Some(c) = self.peer_conn_mut(&peer, connection) else {
            return false;
        };
        c.srtt = Some(match c.srtt {
            None => rtt,
            Some(s) => (s.saturating_mul(7).saturating_add(rtt)) / 8,
        });
        c.samples = c.samples.saturating_add(1);
        c.loss.push(true);
        c.healthy = true;
        self.settle(peer);
        true
    }

    /// A heartbeat on `connection` went unanswered: the loss window records a
    /// miss (the path may become degraded). Returns whether the connection is
    /// known.
    pub fn on_missed(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let Some(c) = self.peer_conn_mut(&peer, connection) else {
            return false;
        };
        c.loss.push(false);
        self.settle(peer);
        true
    }

    /// The heartbeat on `connection` timed out: the path is unhealthy until
    /// its next RTT sample. If it was active, the standby (or the best healthy
    /// path) takes over ([`SwitchReason::ActiveUnhealthy`]). Returns whether
    /// the connection is known.
    pub fn on_timeout(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some(c) = p.conn_mut(connection) else {
            return false;
        };
        c.healthy = false;
        if p.active == Some(connection) {
            self.emergency(peer, SwitchReason::ActiveUnhealthy);
        }
        self.settle(peer);
        true
    }

    /// App acknowledgements on the active path to `peer` are late: the active
    /// path is marked unhealthy until its next RTT sample and the standby (or
    /// the best healthy path) takes over ([`SwitchReason::AckTimeout`]).
    /// Returns the new active connection, if the train switched.
    pub fn ack_timeout(&mut self, peer: PeerId) -> Option<ConnectionId> {
        let p = self.peers.get_mut(&peer)?;
        let active = p.active?;
        p.conn_mut(active)?.healthy = false;
        let switched = self.emergency(peer, SwitchReason::AckTimeout);
        self.settle(peer);
        switched
    }

    /// The remote's app stream arrived on `connection`: we move our own
    /// traffic there too ([`SwitchReason::PeerMoved`]) if the connection is
    /// known, not being closed and not unhealthy. Returns whether
    /// `connection` is now active.
    ///
    /// The follower moves only to follow the leader or in an emergency (its
    /// active path failed), so on the leader a move is always an emergency
    /// signal: the leader follows as well, and treats its previous active
    /// path as unhealthy until that path answers a heartbeat again, so that
    /// its own scoring does not send the pair straight back to a dead path.
    pub fn follow(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let leader = self.is_leader(&peer);
        let order = &self.config.order;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.active == Some(connection) {
            return true;
        }
        if !p.conn(connection).is_some_and(|c| c.healthy && !c.closing) {
            return false;
        }
        if leader {
            if let Some(old) = p.active.and_then(|id| p.conn_mut(id)) {
                old.healthy = false;
            }
        }
        let from = p.active.and_then(|id| p.info(id));
        switch(
            p,
            peer,
            from,
            Some(connection),
            SwitchReason::PeerMoved,
            order,
            &mut self.events,
        );
        self.settle(peer);
        true
    }

    /// Promotes the standby (or the best healthy path) over the failed active
    /// path. Returns the new active connection.
    fn emergency(&mut self, peer: PeerId, reason: SwitchReason) -> Option<ConnectionId> {
        let order = &self.config.order;
        let p = self.peers.get_mut(&peer)?;
        let (views, ids) = p.views();
        let position =
            |id: Option<ConnectionId>| id.and_then(|id| ids.iter().position(|i| *i == id));
        let failed = position(p.active);
        let standby = position(p.standby);
        let to =
            policy::select_replacement(&views, failed, standby, order, true).map(|i| ids[i])?;
        let from = p.active.and_then(|id| p.info(id));
        switch(p, peer, from, Some(to), reason, order, &mut self.events);
        Some(to)
    }

    /// The connection `connection` to `peer`, if the train knows it.
    fn peer_conn_mut(&mut self, peer: &PeerId, connection: ConnectionId) -> Option<&mut Conn> {
        self.peers.get_mut(peer)?.conn_mut(connection)
    }

    /// Re-evaluates `peer` after a change: first path, leader's better path,
    /// an unhealthy active path with a healthy alternative, the standby, the
    /// status, the timer.
    fn settle(&mut self, peer: PeerId) {
        let leader = self.is_leader(&peer);
        let config = &self.config;
        let order = &config.order;
        if let Some(p) = self.peers.get_mut(&peer) {
            let (views, ids) = p.views();
            let position =
                |id: Option<ConnectionId>| id.and_then(|id| ids.iter().position(|i| *i == id));
            match position(p.active) {
                None if !views.is_empty() => {
                    // Only when there was no active path: the first one.
                    let to = policy::best(&views, order, None).map(|i| ids[i]);
                    switch(
                        p,
                        peer,
                        None,
                        to,
                        SwitchReason::Established,
                        order,
                        &mut self.events,
                    );
                }
                None => {}
                Some(ai) => {
                    // An unhealthy active path gives way to a healthy one;
                    // a healthy one only to a better path, by the leader.
                    let replacement = if !views[ai].healthy {
                        let standby = position(p.standby);
                        policy::select_replacement(&views, Some(ai), standby, order, true)
                            .map(|i| (i, SwitchReason::ActiveUnhealthy))
                    } else if leader {
                        policy::better_path(&views, ai, order, config.rtt_margin)
                            .map(|i| (i, SwitchReason::Better))
                    } else {
                        None
                    };
                    if let Some((i, reason)) = replacement {
                        let from = p.info(ids[ai]);
                        switch(p, peer, from, Some(ids[i]), reason, order, &mut self.events);
                    }
                }
            }
            update_standby(p, order);
            report_status(p, peer, &mut self.events);
        }
        self.changed();
    }

    /// Closes connections above [`Config::max_connections_per_peer`]: the
    /// oldest extras first, then the standby, never the active one.
    fn enforce_cap(&mut self, peer: PeerId) {
        let cap = self.config.max_connections_per_peer.max(1);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut live = p.conns.iter().filter(|c| !c.closing).count();
        while live > cap {
            let victim = p
                .conns
                .iter()
                .find(|c| !c.closing && p.role(c.id) == Role::Extra)
                .or_else(|| {
                    p.conns
                        .iter()
                        .find(|c| !c.closing && p.role(c.id) == Role::Standby)
                })
                .map(|c| c.id);
            let Some(victim) = victim else { break };
            if let Some(c) = p.conn_mut(victim) {
                c.closing = true;
            }
            tracing::debug!(%peer, connection = %victim, "closing a connection above the cap");
            self.events.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::One(victim),
            });
            live -= 1;
        }
        update_standby(p, &self.config.order);
    }

    /// Something changed: re-arm the timer and wake the task.
    fn changed(&mut self) {
        self.reschedule = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let addr = path::endpoint_addr(&peer, endpoint);
        if endpoint.is_dialer() {
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::EndpointSucceeded {
                    peer,
                    addr: addr.clone(),
                }));
        }
        let p = self.peers.entry(peer).or_default();
        if let Some(w) = &mut p.watch {
            w.backoff.reset();
            w.attempts = 0;
            w.next_dial = None;
            if w.dialing == Some(id) {
                w.dialing = None;
            }
        }
        if let Some(pos) = p.probes.iter().position(|(c, _)| *c == id) {
            let (_, probed) = p.probes.remove(pos);
            if let Some(cand) = p.candidates.iter_mut().find(|c| c.addr == probed) {
                cand.failures = 0;
            }
        }
        let conn = Conn::new(id, addr, self.config.loss_window);
        tracing::debug!(
            %peer,
            connection = %id,
            class = %conn.class,
            addr = %conn.addr,
            "new path"
        );
        p.conns.push(conn);
        self.settle(peer);
        self.enforce_cap(peer);
    }

    fn on_connection_closed(&mut self, peer: PeerId, id: ConnectionId) {
        let order = &self.config.order;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(pos) = p.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let from = (p.active == Some(id)).then(|| p.info(id)).flatten();
        p.conns.remove(pos);
        if p.standby == Some(id) {
            p.standby = None;
        }
        if from.is_some() {
            p.active = None;
            let (views, ids) = p.views();
            let standby = p.standby.and_then(|s| ids.iter().position(|i| *i == s));
            let to =
                policy::select_replacement(&views, None, standby, order, false).map(|i| ids[i]);
            switch(
                p,
                peer,
                from,
                to,
                SwitchReason::ActiveClosed,
                order,
                &mut self.events,
            );
        }
        if p.conns.is_empty() {
            p.last_seen_ms = Some(now_unix_ms());
            if let Some(w) = &mut p.watch {
                if w.dialing.is_none() {
                    w.next_dial = Some(Instant::now() + w.backoff.next_delay());
                }
            }
            report_status(p, peer, &mut self.events);
            if p.watch.is_none() {
                self.peers.remove(&peer);
            }
            self.changed();
            return;
        }
        self.settle(peer);
    }

    fn on_dial_failure(&mut self, peer: PeerId, id: ConnectionId, error: &DialError) {
        let config = &self.config;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let now = Instant::now();
        if let Some(w) = &mut p.watch {
            if w.dialing == Some(id) {
                w.dialing = None;
                if p.conns.is_empty() {
                    // Refused because another dial is under way: not a failure.
                    let delay = if matches!(error, DialError::DialPeerConditionFalse(_)) {
                        w.backoff.peek()
                    } else {
                        w.backoff.next_delay()
                    };
                    tracing::debug!(%peer, %error, ?delay, "redial failed");
                    w.next_dial = Some(now + delay);
                }
            }
        }
        if let Some(pos) = p.probes.iter().position(|(c, _)| *c == id) {
            let (_, probed) = p.probes.remove(pos);
            let redundant = p.active.is_some() && p.standby.is_some();
            if let Some(cand) = p.candidates.iter_mut().find(|c| c.addr == probed) {
                cand.failures = cand.failures.saturating_add(1);
                cand.next_probe = now + probe_delay(config, cand, redundant);
                tracing::debug!(
                    %peer,
                    addr = %probed,
                    %error,
                    failures = cand.failures,
                    "probe failed"
                );
            }
        }
        self.changed();
    }

    /// The earliest time something is due: a redial, a probe, a grace close.
    fn next_deadline(&self) -> Option<Instant> {
        let config = &self.config;
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        for (peer, p) in &self.peers {
            if let Some(w) = &p.watch {
                if p.conns.is_empty() && w.dialing.is_none() {
                    if let Some(at) = w.next_dial {
                        consider(at);
                    }
                }
            }
            if p.probes.len() < config.max_probes_in_flight {
                for i in p.probe_targets(&config.order) {
                    consider(p.candidates[i].next_probe);
                }
            }
            if self.is_leader(peer) {
                for c in &p.conns {
                    if !c.closing && p.role(c.id) == Role::Extra {
                        consider(c.since + config.close_grace);
                    }
                }
            }
        }
        next
    }

    /// Starts due redials and probes, closes extras past their grace.
    fn tick(&mut self, now: Instant) {
        let config = &self.config;
        let local = self.local;
        let events = &mut self.events;
        let mut budget = config.max_dials_per_tick;
        for (peer, p) in self.peers.iter_mut() {
            let peer = *peer;
            if budget > 0 {
                if let Some(w) = &mut p.watch {
                    if p.conns.is_empty()
                        && w.dialing.is_none()
                        && w.next_dial.is_some_and(|at| at <= now)
                    {
                        let opts = if w.endpoints.is_empty() {
                            DialOpts::peer_id(peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build()
                        } else {
                            DialOpts::peer_id(peer)
                                .addresses(w.endpoints.clone())
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .extend_addresses_through_behaviour()
                                .build()
                        };
                        w.dialing = Some(opts.connection_id());
                        w.attempts = w.attempts.saturating_add(1);
                        w.next_dial = None;
                        tracing::debug!(%peer, attempt = w.attempts, "redialing");
                        events.push_back(ToSwarm::GenerateEvent(Event::Dialing {
                            peer,
                            attempt: w.attempts,
                            next_backoff: w.backoff.peek(),
                        }));
                        events.push_back(ToSwarm::Dial { opts });
                        budget -= 1;
                    }
                }
            }
            let redundant = p.active.is_some() && p.standby.is_some();
            for i in p.probe_targets(&config.order) {
                if budget == 0 || p.probes.len() >= config.max_probes_in_flight {
                    break;
                }
                let cand = &mut p.candidates[i];
                if cand.next_probe > now {
                    continue;
                }
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![cand.addr.clone()])
                    .condition(PeerCondition::Always)
                    .build();
                cand.next_probe = now + probe_delay(config, cand, redundant);
                tracing::debug!(%peer, addr = %cand.addr, "probing");
                p.probes.push((opts.connection_id(), cand.addr.clone()));
                events.push_back(ToSwarm::Dial { opts });
                budget -= 1;
            }
            if local < peer {
                let roles: Vec<(ConnectionId, Role)> =
                    p.conns.iter().map(|c| (c.id, p.role(c.id))).collect();
                for (c, (_, role)) in p.conns.iter_mut().zip(roles) {
                    if !c.closing && role == Role::Extra && c.since + config.close_grace <= now {
                        c.closing = true;
                        tracing::debug!(%peer, connection = %c.id, "closing an extra connection");
                        events.push_back(ToSwarm::CloseConnection {
                            peer_id: peer,
                            connection: CloseConnection::One(c.id),
                        });
                    }
                }
            }
        }
    }

    /// Arms the timer for the next deadline, no sooner than one tick after
    /// the last.
    fn arm_timer(&mut self, now: Instant) {
        let Some(at) = self.next_deadline() else {
            self.timer = None;
            return;
        };
        let earliest = self.last_tick.map_or(now, |t| t + self.config.tick);
        let at = at.max(earliest);
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        self.timer = Some((at, Delay::new(at.saturating_duration_since(now))));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            // Tracked from `ConnectionEstablished`, which the swarm sends only
            // once every behaviour accepted the connection.
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => self.on_connection_established(peer_id, connection_id, endpoint),
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => self.on_connection_closed(peer_id, connection_id),
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer_id),
                error,
                connection_id,
            }) => self.on_dial_failure(peer_id, connection_id, error),
            FromSwarm::AddressChange(AddressChange {
                peer_id,
                connection_id,
                new,
                ..
            }) => {
                let addr = path::endpoint_addr(&peer_id, new);
                if let Some(c) = self.peer_conn_mut(&peer_id, connection_id) {
                    c.set_addr(addr);
                    self.settle(peer_id);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            let now = Instant::now();
            if std::mem::take(&mut self.reschedule) {
                self.arm_timer(now);
            }
            let Some((_, delay)) = &mut self.timer else {
                return Poll::Pending;
            };
            if delay.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
            self.last_tick = Some(now);
            self.tick(now);
            self.reschedule = true;
        }
    }
}
