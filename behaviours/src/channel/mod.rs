//! The app channel: one long-lived, length-prefixed stream per connection.
//!
//! Pub/sub, RPC and direct messages travel on channel streams rather than on a
//! stream per message (request-response) or through gossipsub. This behaviour
//! only negotiates the streams, on the connection the caller chooses, and hands
//! them out through [`Event`]s; the owner reads and writes frames on them
//! (see [`protocol`]) in its own tasks, batching writes. That keeps the swarm's
//! event loop out of the data path.
//!
//! Bounds: at most [`Config::max_pending_opens_per_connection`] outbound opens
//! are outstanding per connection; further [`Behaviour::open_stream`] calls fail
//! with [`OpenError::TooManyPending`]. Inbound streams are limited by the
//! multiplexer's own stream limit; the owner decides which to keep.

pub mod handler;
pub mod protocol;

use std::{
    collections::{HashMap, VecDeque},
    task::{Context, Poll},
};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        behaviour::ConnectionEstablished, ConnectionClosed, ConnectionDenied, ConnectionId,
        FromSwarm, NetworkBehaviour, NotifyHandler, Stream, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

pub use handler::Handler;

/// Identifies one call to [`Behaviour::open_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpenId(u64);

/// Why an outbound channel stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No connection to the peer (or not the connection asked for).
    #[error("not connected to the peer")]
    NotConnected,
    /// The per-connection bound on outstanding opens was reached.
    #[error("too many channel streams being opened on this connection")]
    TooManyPending,
    /// The remote does not speak the channel protocol.
    #[error("the remote does not support {}", protocol::PROTOCOL)]
    UnsupportedProtocol,
    /// The connection closed before the stream was negotiated.
    #[error("the connection closed before the stream was open")]
    ConnectionClosed,
    /// Negotiation failed with an I/O error or timed out.
    #[error("opening the channel stream failed: {0}")]
    Io(std::io::Error),
}

/// Configuration of the channel behaviour.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outstanding outbound opens allowed per connection (default 8).
    pub max_pending_opens_per_connection: usize,
    /// Whether connections are kept alive while idle (default `true`). Atmosphere
    /// keeps connections to mesh members open; non-members are disconnected by
    /// the membership behaviour.
    pub keep_alive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_pending_opens_per_connection: 8,
            keep_alive: true,
        }
    }
}

/// What the channel behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// The remote opened a channel stream to us.
    Inbound {
        /// The remote peer.
        peer: PeerId,
        /// The connection the stream runs on.
        connection: ConnectionId,
        /// The negotiated stream.
        stream: Stream,
    },
    /// A stream asked for with [`Behaviour::open_stream`] is open.
    Opened {
        /// The remote peer.
        peer: PeerId,
        /// The connection the stream runs on.
        connection: ConnectionId,
        /// The id returned by `open_stream`.
        id: OpenId,
        /// The negotiated stream.
        stream: Stream,
    },
    /// A stream asked for with [`Behaviour::open_stream`] could not be opened.
    OpenFailed {
        /// The remote peer.
        peer: PeerId,
        /// The connection that was tried.
        connection: ConnectionId,
        /// The id returned by `open_stream`.
        id: OpenId,
        /// Why it failed.
        error: OpenError,
    },
}

#[derive(Debug)]
struct Connection {
    id: ConnectionId,
    pending: Vec<OpenId>,
}

/// The channel [`NetworkBehaviour`].
pub struct Behaviour {
    config: Config,
    /// Connections per peer, oldest first.
    connections: HashMap<PeerId, Vec<Connection>>,
    next_open: u64,
    events: VecDeque<ToSwarm<Event, handler::FromBehaviour>>,
}

impl Behaviour {
    /// A channel behaviour with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            connections: HashMap::new(),
            next_open: 0,
            events: VecDeque::new(),
        }
    }

    /// Asks for an outbound channel stream to `peer`, on `connection` if given,
    /// else on the peer's oldest connection. The result arrives as
    /// [`Event::Opened`] or [`Event::OpenFailed`] with the returned id.
    pub fn open_stream(
        &mut self,
        peer: PeerId,
        connection: Option<ConnectionId>,
    ) -> Result<OpenId, OpenError> {
        let conns = self
            .connections
            .get_mut(&peer)
            .ok_or(OpenError::NotConnected)?;
        let conn = match connection {
            Some(wanted) => conns.iter_mut().find(|c| c.id == wanted),
            None => conns.first_mut(),
        }
        .ok_or(OpenError::NotConnected)?;
        if conn.pending.len() >= self.config.max_pending_opens_per_connection {
            return Err(OpenError::TooManyPending);
        }
        let id = OpenId(self.next_open);
        self.next_open += 1;
        conn.pending.push(id);
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(conn.id),
            event: handler::FromBehaviour::Open(id),
        });
        Ok(id)
    }

    /// The connections to `peer` this behaviour knows, oldest first.
    pub fn connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.connections
            .get(peer)
            .map(|c| c.iter().map(|c| c.id).collect())
            .unwrap_or_default()
    }

    fn settle(&mut self, peer: &PeerId, connection: ConnectionId, id: OpenId) {
        if let Some(conn) = self
            .connections
            .get_mut(peer)
            .and_then(|conns| conns.iter_mut().find(|c| c.id == connection))
        {
            conn.pending.retain(|p| *p != id);
        }
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.config.keep_alive))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.config.keep_alive))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // Connections are tracked from `ConnectionEstablished`, which the swarm
        // sends only once every behaviour accepted the connection.
        if let FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id,
            connection_id,
            ..
        }) = event
        {
            self.connections
                .entry(peer_id)
                .or_default()
                .push(Connection {
                    id: connection_id,
                    pending: Vec::new(),
                });
            return;
        }
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            ..
        }) = event
        {
            let Some(conns) = self.connections.get_mut(&peer_id) else {
                return;
            };
            if let Some(pos) = conns.iter().position(|c| c.id == connection_id) {
                let closed = conns.remove(pos);
                for id in closed.pending {
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::OpenFailed {
                            peer: peer_id,
                            connection: connection_id,
                            id,
                            error: OpenError::ConnectionClosed,
                        }));
                }
            }
            if conns.is_empty() {
                self.connections.remove(&peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            handler::ToBehaviour::Inbound(stream) => Event::Inbound {
                peer,
                connection,
                stream,
            },
            handler::ToBehaviour::Opened(id, stream) => {
                self.settle(&peer, connection, id);
                Event::Opened {
                    peer,
                    connection,
                    id,
                    stream,
                }
            }
            handler::ToBehaviour::OpenFailed(id, error) => {
                self.settle(&peer, connection, id);
                Event::OpenFailed {
                    peer,
                    connection,
                    id,
                    error,
                }
            }
        };
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}
