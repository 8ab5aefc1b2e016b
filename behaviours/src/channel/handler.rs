//! The per-connection state machine of the channel behaviour.
//!
//! It accepts inbound channel streams, opens outbound ones on request, and
//! hands every negotiated stream to the behaviour. It never reads or writes
//! application bytes itself: the owner of the stream does, so a busy stream
//! never stalls the swarm's event loop.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
};

use libp2p::{
    core::upgrade::ReadyUpgrade,
    swarm::{
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
        ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
        SubstreamProtocol,
    },
};

use super::{protocol::PROTOCOL, OpenError, OpenId};

/// A command from the behaviour to the handler.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Open an outbound channel stream on this connection.
    Open(OpenId),
}

/// A report from the handler to the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// The remote opened a channel stream.
    Inbound(Stream),
    /// An outbound stream asked for with [`FromBehaviour::Open`] is ready.
    Opened(OpenId, Stream),
    /// An outbound stream could not be opened.
    OpenFailed(OpenId, OpenError),
}

/// Handler for one connection.
pub struct Handler {
    /// Opens asked for but not yet requested from the connection. Bounded by
    /// the behaviour's `max_pending_opens_per_connection`.
    queued: VecDeque<OpenId>,
    events: VecDeque<ToBehaviour>,
    keep_alive: bool,
}

impl Handler {
    pub(crate) fn new(keep_alive: bool) -> Self {
        Self {
            queued: VecDeque::new(),
            events: VecDeque::new(),
            keep_alive,
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenId;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenId, Self::ToBehaviour>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(id) = self.queued.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), id),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::Open(id) => self.queued.push_back(id),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), OpenId>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.events.push_back(ToBehaviour::Inbound(stream)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info,
            }) => self.events.push_back(ToBehaviour::Opened(info, stream)),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::UnsupportedProtocol,
                    StreamUpgradeError::Timeout => OpenError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out opening a channel stream",
                    )),
                    StreamUpgradeError::Io(e) => OpenError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(ToBehaviour::OpenFailed(info, error));
            }
            _ => {}
        }
    }
}
