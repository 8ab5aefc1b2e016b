//! Heartbeats on every connection: round-trip time, dead-path detection, and
//! the peer's metrics, capabilities and endpoints.
//!
//! Atmosphere keeps several connections (paths) to a peer and picks an active
//! one. This behaviour beats on *every* connection, even while the app is
//! idle, at an interval the owner sets per connection with
//! [`Behaviour::set_interval`] (say 15 s on a LAN, 30 s over BLE, 60 s through
//! a relay, 1 s on the active path). See [`protocol`] for the wire format.
//!
//! # Beats, answers and misses
//!
//! Each side sends its own beats on its own stream; the remote answers each
//! one at once with its own [`Heartbeat`]. An answer yields [`Event::Beat`]
//! with the round-trip time and the remote's payload; the remote's beats yield
//! [`Event::Received`].
//!
//! A beat is due every `interval` (the first as soon as the connection is up),
//! and at most one is outstanding. A beat is **missed** when no valid answer
//! arrived `max(min(interval, max_wait), min_wait)` after it was due
//! ([`Behaviour::set_min_wait`]; stream negotiation
//! included), or earlier if its stream failed or the answer was invalid; the
//! stream is then dropped and the next beat opens a new one. Each miss yields
//! [`Event::Missed`] with the number of consecutive misses; the
//! [`Config::max_missed`]-th consecutive miss also yields one
//! [`Event::Timeout`], after which the connection is quiet (no further
//! `Missed`) until an answer arrives again, which resets the count. Beats
//! continue meanwhile, so a recovered path is noticed.
//!
//! The behaviour never closes a connection (the owner decides what a timeout
//! means) and never keeps one alive: another behaviour must.
//!
//! Heartbeats start on every connection as soon as it is established, before
//! any membership check, and answers go to whoever beats: [`LocalInfo`]
//! should hold only what any connected peer may learn (as identify tells
//! listen addresses to anyone).
//!
//! # Bounds
//!
//! Per connection: one outbound stream, one inbound stream (a newer one
//! replaces the older), one outstanding beat, O(1) timers and at most three
//! queued handler events. The behaviour holds one small record per
//! connection; interval changes are coalesced per connection.

pub mod handler;
pub mod protocol;

use std::{
    collections::{HashMap, VecDeque},
    mem,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll, Waker},
    time::Duration,
};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        behaviour::ConnectionEstablished, ConnectionClosed, ConnectionDenied, ConnectionId,
        FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
    Multiaddr, PeerId,
};

pub use handler::Handler;
pub use protocol::{Heartbeat, HeartbeatError, Metrics, PROTOCOL};

/// The shortest beat interval (and `max_wait`) accepted; shorter values are
/// raised to it.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The smallest frame limit accepted; smaller values are raised to it.
pub const MIN_MAX_FRAME: usize = 1024;

/// Configuration of the heartbeat behaviour.
#[derive(Debug, Clone)]
pub struct Config {
    /// Beat interval of a connection until [`Behaviour::set_interval`] is
    /// called for it (default 15 s).
    pub default_interval: Duration,
    /// Consecutive misses that make a [`Event::Timeout`] (default 3; at
    /// least 1).
    pub max_missed: u32,
    /// Largest heartbeat frame accepted, in bytes (default 16 KiB, at least
    /// [`MIN_MAX_FRAME`]). A larger frame drops the stream it came on.
    pub max_frame: usize,
    /// Longest wait for an answer, whatever the interval (default 20 s): a
    /// beat is missed `min(interval, max_wait)` after it was due.
    pub max_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(15),
            max_missed: 3,
            max_frame: protocol::DEFAULT_MAX_FRAME,
            max_wait: Duration::from_secs(20),
        }
    }
}

impl Config {
    /// Sets [`Config::default_interval`].
    pub fn with_default_interval(mut self, interval: Duration) -> Self {
        self.default_interval = interval;
        self
    }

    /// Sets [`Config::max_missed`].
    pub fn with_max_missed(mut self, max_missed: u32) -> Self {
        self.max_missed = max_missed;
        self
    }

    /// Sets [`Config::max_frame`].
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Sets [`Config::max_wait`].
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The configuration with every value raised to its minimum.
    fn normalized(mut self) -> Self {
        self.default_interval = self.default_interval.max(MIN_INTERVAL);
        self.max_missed = self.max_missed.max(1);
        self.max_frame = self.max_frame.max(MIN_MAX_FRAME);
        self.max_wait = self.max_wait.max(MIN_INTERVAL);
        self
    }
}

/// What this node tells its peers about itself in every heartbeat.
///
/// Lists beyond the protocol's bounds are cut when set (see [`protocol`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInfo {
    /// What this node offers.
    pub capabilities: Vec<String>,
    /// Addresses this node can be reached at.
    pub endpoints: Vec<Multiaddr>,
    /// This node's counters.
    pub metrics: Metrics,
}

/// What the heartbeat behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// One of our beats was answered.
    Beat {
        /// The remote peer.
        peer: PeerId,
        /// The connection the beat ran on.
        connection: ConnectionId,
        /// From writing the beat to reading the answer.
        rtt: Duration,
        /// The answer: the remote's own heartbeat (its `echo` is our beat's
        /// nonce), with its metrics, capabilities and endpoints.
        remote: Heartbeat,
    },
    /// The remote's beat arrived (it is answered without the owner's help).
    Received {
        /// The remote peer.
        peer: PeerId,
        /// The connection the beat arrived on.
        connection: ConnectionId,
        /// The remote's heartbeat.
        heartbeat: Heartbeat,
    },
    /// A beat went unanswered (see the [module docs](self) for when).
    Missed {
        /// The remote peer.
        peer: PeerId,
        /// The connection the beat ran on.
        connection: ConnectionId,
        /// Consecutive misses on this connection, from 1.
        consecutive: u32,
    },
    /// [`Config::max_missed`] consecutive beats were missed: the path looks
    /// dead. Reported once per run of misses; the connection stays open.
    Timeout {
        /// The remote peer.
        peer: PeerId,
        /// The connection that timed out.
        connection: ConnectionId,
    },
    /// The remote does not speak [`PROTOCOL`]; no more beats are sent on this
    /// connection (the remote's own beats are still answered).
    Unsupported {
        /// The remote peer.
        peer: PeerId,
        /// The connection concerned.
        connection: ConnectionId,
    },
    /// The remote sent an oversized or invalid heartbeat (or answer); the
    /// stream it came on was dropped. An invalid answer also counts as a miss.
    Malformed {
        /// The remote peer.
        peer: PeerId,
        /// The connection concerned.
        connection: ConnectionId,
        /// What was wrong.
        error: HeartbeatError,
    },
}

#[derive(Debug)]
struct Connection {
    peer: PeerId,
    interval: Duration,
    /// Least wait for an answer (see [`Behaviour::set_min_wait`]).
    min_wait: Duration,
    transport: String,
    /// Whether the connection is in `Behaviour::updates`.
    update_queued: bool,
}

/// The heartbeat [`NetworkBehaviour`].
pub struct Behaviour {
    local_peer_id: PeerId,
    config: Config,
    /// Shared with every handler, which reads it for each heartbeat it sends.
    info: Arc<RwLock<Arc<LocalInfo>>>,
    connections: HashMap<ConnectionId, Connection>,
    /// Connections whose handler must be told a new interval, each at most
    /// once.
    updates: VecDeque<ConnectionId>,
    events: VecDeque<Event>,
    waker: Option<Waker>,
}

impl Behaviour {
    /// A heartbeat behaviour for the node `local_peer_id` (sent as
    /// [`Heartbeat::node`]) with `config`.
    pub fn new(local_peer_id: PeerId, config: Config) -> Self {
        Self {
            local_peer_id,
            config: config.normalized(),
            info: Arc::default(),
            connections: HashMap::new(),
            updates: VecDeque::new(),
            events: VecDeque::new(),
            waker: None,
        }
    }

    /// Sets what the next heartbeats on every connection carry. Lists are cut
    /// to the protocol's bounds.
    pub fn set_local_info(&mut self, mut info: LocalInfo) {
        protocol::bound_capabilities(&mut info.capabilities);
        protocol::bound_endpoints(&mut info.endpoints);
        *self.info.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(info);
    }

    /// Updates only the metrics the next heartbeats carry (cheap enough to
    /// call every few seconds).
    pub fn set_metrics(&mut self, metrics: Metrics) {
        let mut info = self.info.write().unwrap_or_else(PoisonError::into_inner);
        Arc::make_mut(&mut info).metrics = metrics;
    }

    /// What the next heartbeats carry.
    pub fn local_info(&self) -> LocalInfo {
        LocalInfo::clone(&self.info.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sets the beat interval of `connection` to `peer` (at least
    /// [`MIN_INTERVAL`]) and the path class sent on it (`transport`, cut to
    /// [`protocol::MAX_TRANSPORT_LEN`] bytes).
    ///
    /// Takes effect at once: the next beat is due `interval` after the latest
    /// one, so a shorter interval brings it forward (immediately if that time
    /// has passed) and a longer one pushes it back; an outstanding beat's
    /// deadline moves accordingly. Returns `false`, doing nothing, if
    /// `connection` is not an established connection to `peer` (connections
    /// are known from the swarm's `ConnectionEstablished` on; until this is
    /// called they beat every [`Config::default_interval`] and send an empty
    /// `transport`).
    pub fn set_interval(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        interval: Duration,
        transport: &str,
    ) -> bool {
        let Some(conn) = self
            .connections
            .get_mut(&connection)
            .filter(|c| c.peer == peer)
        else {
            return false;
        };
        conn.interval = interval.max(MIN_INTERVAL);
        conn.transport = transport.to_owned();
        protocol::bound_transport(&mut conn.transport);
        let queued = mem::replace(&mut conn.update_queued, true);
        if !queued {
            self.queue_update(connection);
        }
        true
    }

    /// Sets the least time a beat on `connection` waits for its answer
    /// before it is missed (default zero): the wait becomes
    /// `max(min(interval, max_wait), min_wait)`. For slow links whose queue
    /// can hold seconds of data ahead of a beat (a BLE link busy with a bulk
    /// transfer). Returns `false` if the connection is unknown or not to
    /// `peer`.
    pub fn set_min_wait(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        min_wait: Duration,
    ) -> bool {
        let Some(conn) = self
            .connections
            .get_mut(&connection)
            .filter(|c| c.peer == peer)
        else {
            return false;
        };
        conn.min_wait = min_wait.min(self.config.max_wait);
        let queued = mem::replace(&mut conn.update_queued, true);
        if !queued {
            self.queue_update(connection);
        }
        true
    }

    /// Queues `connection`'s settings for its handler and wakes the behaviour.
    fn queue_update(&mut self, connection: ConnectionId) {
        self.updates.push_back(connection);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The interval and path class of `connection`, if it is established.
    pub fn interval(&self, connection: ConnectionId) -> Option<(Duration, &str)> {
        self.connections
            .get(&connection)
            .map(|c| (c.interval, c.transport.as_str()))
    }

    /// The established connections to `peer`, in no particular order.
    pub fn connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.connections
            .iter()
            .filter(|(_, c)| c.peer == *peer)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The configuration in force (after raising values to their minimums).
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler::new(
            self.local_peer_id,
            peer,
            self.info.clone(),
            handler::Settings {
                interval: self.config.default_interval,
                max_wait: self.config.max_wait,
                min_wait: Duration::ZERO,
                max_missed: self.config.max_missed,
                max_frame: self.config.max_frame,
            },
        )
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _connection: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            // Tracked from `ConnectionEstablished`, which the swarm sends only
            // once every behaviour accepted the connection.
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections.insert(
                    connection_id,
                    Connection {
                        peer: peer_id,
                        interval: self.config.default_interval,
                        min_wait: Duration::ZERO,
                        transport: String::new(),
                        update_queued: false,
                    },
                );
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                // A queued update for it is skipped in `poll`.
                self.connections.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            handler::ToBehaviour::Beat { rtt, remote } => Event::Beat {
                peer,
                connection,
                rtt,
                remote,
            },
            handler::ToBehaviour::Received(heartbeat) => Event::Received {
                peer,
                connection,
                heartbeat,
            },
            handler::ToBehaviour::Missed(consecutive) => Event::Missed {
                peer,
                connection,
                consecutive,
            },
            handler::ToBehaviour::Timeout => Event::Timeout { peer, connection },
            handler::ToBehaviour::Unsupported => Event::Unsupported { peer, connection },
            handler::ToBehaviour::Malformed(error) => Event::Malformed {
                peer,
                connection,
                error,
            },
        };
        // The swarm hands these out before polling connections again, so the
        // queue holds at most a few events.
        self.events.push_back(event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        while let Some(id) = self.updates.pop_front() {
            let Some(conn) = self.connections.get_mut(&id) else {
                continue; // closed since
            };
            conn.update_queued = false;
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id: conn.peer,
                handler: NotifyHandler::One(id),
                event: handler::FromBehaviour::SetInterval {
                    interval: conn.interval,
                    min_wait: conn.min_wait,
                    transport: conn.transport.clone(),
                },
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
