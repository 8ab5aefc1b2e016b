//! Proximity pairing: two devices near each other agree on a 6-digit code
//! both screens show, and the one that has the mesh hands the other its
//! credentials.
//!
//! # Sessions
//!
//! The **requester** calls [`Behaviour::request`] for a connected peer; the
//! **acceptor** (the founder, who has the mesh) must be in pairing mode
//! ([`Behaviour::set_accepting`], off by default). Each side uses a fresh
//! X25519 key for the session, and each derives the code from the shared
//! secret *and both peer ids* (see [`code`] for the formula and why the peer
//! ids are bound in). The code never travels. Then:
//!
//! 1. requester: `PAIR_REQUEST`; the acceptor answers `PAIR_ACCEPT` at once
//!    when accepting ([`Event::IncomingRequest`], then [`Event::CodeReady`] on
//!    both sides), else `PAIR_REJECT` (the requester's session fails with
//!    [`FailReason::NotAccepting`] or [`FailReason::Busy`]);
//! 2. each user compares the codes and decides, in either order:
//!    [`Behaviour::confirm`] or [`Behaviour::reject`]. The other side sees
//!    [`Event::PeerConfirmed`], or fails with [`FailReason::RejectedByPeer`];
//! 3. once both confirmed, both see [`Event::BothConfirmed`]; the acceptor's
//!    owner then calls [`Behaviour::send_credentials`] (refused before that
//!    point), the requester gets [`Event::CredentialsReceived`] and answers
//!    `DONE` (it completes on receipt, the acceptor on reading `DONE`):
//!    [`Event::Completed`] on both sides.
//!
//! Every session the owner learned of (from [`Behaviour::request`] or
//! [`Event::IncomingRequest`]) ends with exactly one [`Event::Completed`] or
//! [`Event::Failed`]; [`Behaviour::cancel`] ends it at any point. The
//! credentials are opaque here. Display names are the peers' unverified
//! claims (cut to [`protocol::MAX_NAME_LEN`] bytes, control characters
//! replaced): the code comparison is what authenticates the peer.
//!
//! An inbound stream whose first frame is malformed (or not a
//! `PAIR_REQUEST`) yields one [`Event::Failed`] with
//! [`FailReason::Protocol`] under a fresh session id that was never
//! announced; the active session, if any, is not affected.
//!
//! # Bounds
//!
//! - **One active session per node**, in either role. While one is active, a
//!   local [`Behaviour::request`] fails with [`PairingError::Busy`] and every
//!   inbound request is answered `PAIR_REJECT Busy` (the remote's session
//!   fails with [`FailReason::Busy`]; nothing is reported locally). Two peers
//!   that request each other at the same moment both fail with `Busy`.
//! - **Timeout**: a session fails with [`FailReason::Timeout`] after
//!   [`Config::timeout`] (default 120 s, user decisions included), counted
//!   from [`Behaviour::request`] or from the request's arrival; the side that
//!   times out tells the other (`ABORT`), which fails with `Timeout` too.
//! - **Frames**: see [`protocol`]: names ≤ 64 bytes, credentials ≤
//!   [`Config::max_credentials_len`] (default 64 KiB, at most 1 MiB), frames
//!   ≤ that plus 256 bytes, at most 8 frames read per stream. Anything
//!   malformed fails the session with [`FailReason::Protocol`]; nothing
//!   panics.
//! - **Per connection** (see [`handler`]): at most 4 pairing streams, the
//!   first frame within 10 s, closing streams dropped after 10 s.
//! - **Events**: a session yields at most 5 events; reports about malformed
//!   inbound streams are dropped (logged) while [`MAX_EVENTS`] events wait.
//!
//! # Keys
//!
//! Each session generates its own X25519 secret from the operating system's
//! random source (x25519-dalek panics only if that source fails): the
//! acceptor derives the code as soon as the request arrives, the requester
//! when the answer does. The secret is consumed by the derivation and
//! zeroized, as is the shared secret; the code is handed out in
//! [`Event::CodeReady`] and not stored.
//!
//! The behaviour never dials and never closes connections. In a node whose
//! membership behaviour disconnects non-members, the (unverified) pairing
//! connection must be let through for the two devices to pair.

pub mod code;
pub mod handler;
pub mod protocol;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{atomic::AtomicU64, Arc},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        behaviour::ConnectionEstablished, ConnectionClosed, ConnectionDenied, ConnectionId,
        FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
    Multiaddr, PeerId,
};

pub use code::{EphemeralKey, PairingCode};
pub use handler::Handler;
pub use protocol::{AbortReason, Message, RejectReason, PROTOCOL};

use handler::{FromBehaviour, StreamEnd, ToBehaviour};

/// The shortest session timeout accepted; shorter values are raised to it.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// Events waiting to be handed out beyond which reports about malformed
/// inbound streams are dropped.
pub const MAX_EVENTS: usize = 64;

/// Identifies one pairing session of this behaviour (unique per behaviour,
/// not shared with the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The number behind the id (unique per behaviour).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Our side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We asked to pair and receive the credentials.
    Requester,
    /// We were asked, and send the credentials.
    Acceptor,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Requester => "requester",
            Role::Acceptor => "acceptor",
        })
    }
}

/// Configuration of the pairing behaviour.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a whole session may take, user decisions included (default
    /// 120 s, at least [`MIN_TIMEOUT`]).
    pub timeout: Duration,
    /// Largest credentials sent or accepted, in bytes (default 64 KiB, at
    /// most [`protocol::MAX_CREDENTIALS_LEN`]).
    pub max_credentials_len: usize,
    /// Our display name, sent to the peer (cut to
    /// [`protocol::MAX_NAME_LEN`] bytes; default empty).
    pub name: String,
    /// Whether inbound requests are accepted from the start (default
    /// `false`; see [`Behaviour::set_accepting`]).
    pub accepting: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            max_credentials_len: protocol::DEFAULT_MAX_CREDENTIALS_LEN,
            name: String::new(),
            accepting: false,
        }
    }
}

impl Config {
    /// Sets [`Config::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Config::max_credentials_len`].
    pub fn with_max_credentials_len(mut self, len: usize) -> Self {
        self.max_credentials_len = len;
        self
    }

    /// Sets [`Config::name`].
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets [`Config::accepting`].
    pub fn with_accepting(mut self, accepting: bool) -> Self {
        self.accepting = accepting;
        self
    }

    /// The configuration with every value brought within its bounds.
    fn normalized(mut self) -> Self {
        self.timeout = self.timeout.max(MIN_TIMEOUT);
        self.max_credentials_len = self.max_credentials_len.min(protocol::MAX_CREDENTIALS_LEN);
        self.name = protocol::bound_name(&self.name);
        self
    }
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// Our user rejected the code ([`Behaviour::reject`]).
    #[error("rejected by us")]
    RejectedByUs,
    /// The peer's user rejected the code or cancelled.
    #[error("rejected by the peer")]
    RejectedByPeer,
    /// Our owner cancelled the session ([`Behaviour::cancel`]).
    #[error("cancelled")]
    Cancelled,
    /// The session took longer than [`Config::timeout`] (ours or the
    /// peer's).
    #[error("timed out")]
    Timeout,
    /// The acceptor is in another session.
    #[error("the peer is busy with another pairing")]
    Busy,
    /// The acceptor is not in pairing mode.
    #[error("the peer is not accepting pairing requests")]
    NotAccepting,
    /// The connection or the session's stream closed or failed.
    #[error("the connection closed")]
    ConnectionClosed,
    /// The peer broke the protocol (malformed or unexpected message, an
    /// invalid key, or no support for [`PROTOCOL`]).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a call on the behaviour was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// No active session has this id (it ended, or never existed).
    #[error("no active pairing session {0}")]
    UnknownSession(SessionId),
    /// The call is for the other role (only the acceptor sends credentials).
    #[error("session {session}: not allowed as the {role}")]
    WrongRole {
        /// The session.
        session: SessionId,
        /// Our role in it.
        role: Role,
    },
    /// The session is not at a point where the call makes sense.
    #[error("session {session} is {state}")]
    WrongState {
        /// The session.
        session: SessionId,
        /// Where it is.
        state: &'static str,
    },
    /// The credentials exceed [`Config::max_credentials_len`].
    #[error("{len} bytes of credentials exceed the limit of {max} bytes")]
    TooLarge {
        /// Their length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer is not connected (the behaviour dials nothing itself).
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    /// Another session is active.
    #[error("another pairing session is active")]
    Busy,
}

/// What the pairing behaviour reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A peer asked to pair (we are the acceptor) and was answered
    /// `PAIR_ACCEPT`; [`Event::CodeReady`] follows at once.
    IncomingRequest {
        /// The new session.
        session: SessionId,
        /// The requester.
        peer: PeerId,
        /// The requester's display name (unverified).
        name: String,
    },
    /// The code to show; the user compares it with the peer's screen and
    /// calls [`Behaviour::confirm`] or [`Behaviour::reject`].
    CodeReady {
        /// The session.
        session: SessionId,
        /// The peer.
        peer: PeerId,
        /// Our role.
        role: Role,
        /// The six digits.
        code: PairingCode,
        /// The peer's display name (unverified).
        peer_name: String,
    },
    /// The peer's user confirmed the code.
    PeerConfirmed {
        /// The session.
        session: SessionId,
        /// The peer.
        peer: PeerId,
    },
    /// Both users confirmed. The acceptor now calls
    /// [`Behaviour::send_credentials`]; the requester waits for them.
    BothConfirmed {
        /// The session.
        session: SessionId,
        /// The peer.
        peer: PeerId,
    },
    /// The acceptor's credentials (we are the requester);
    /// [`Event::Completed`] follows at once.
    CredentialsReceived {
        /// The session.
        session: SessionId,
        /// The acceptor.
        peer: PeerId,
        /// The opaque credentials, as sent.
        credentials: Vec<u8>,
    },
    /// The session succeeded and is over.
    Completed {
        /// The session.
        session: SessionId,
        /// The peer.
        peer: PeerId,
        /// Our role.
        role: Role,
    },
    /// The session failed and is over.
    Failed {
        /// The session.
        session: SessionId,
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: FailReason,
    },
}

/// Where the active session is.
#[derive(Debug)]
enum State {
    /// Requester: `PAIR_REQUEST` sent, waiting for the answer.
    Requested(EphemeralKey),
    /// Codes shown; waiting for both users.
    Comparing,
    /// Acceptor: both confirmed; waiting for [`Behaviour::send_credentials`].
    ReadyToSend,
    /// Acceptor: credentials sent; waiting for `DONE`.
    CredentialsSent,
    /// Requester: both confirmed; waiting for the credentials.
    AwaitingCredentials,
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            State::Requested(_) => "waiting for the peer's answer",
            State::Comparing => "comparing codes",
            State::ReadyToSend => "waiting for the credentials to send",
            State::CredentialsSent => "waiting for the peer's acknowledgement",
            State::AwaitingCredentials => "waiting for the peer's credentials",
        }
    }
}

/// The one active session.
#[derive(Debug)]
struct Session {
    id: SessionId,
    peer: PeerId,
    connection: ConnectionId,
    role: Role,
    state: State,
    we_confirmed: bool,
    peer_confirmed: bool,
    deadline: Delay,
}

/// The pairing [`NetworkBehaviour`].
pub struct Behaviour {
    local_peer_id: PeerId,
    config: Config,
    accepting: bool,
    next_session: Arc<AtomicU64>,
    /// Established connections per peer.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    session: Option<Session>,
    /// Commands for handlers; each is handed out on the next poll.
    commands: VecDeque<(PeerId, ConnectionId, FromBehaviour)>,
    events: VecDeque<Event>,
    waker: Option<Waker>,
}

impl Behaviour {
    /// A pairing behaviour for the node `local_peer_id` (bound into every
    /// code) with `config`.
    pub fn new(local_peer_id: PeerId, config: Config) -> Self {
        let config = config.normalized();
        Self {
            local_peer_id,
            accepting: config.accepting,
            config,
            next_session: Arc::new(AtomicU64::new(1)),
            connections: HashMap::new(),
            session: None,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            waker: None,
        }
    }

    /// The configuration in force (after bringing values within bounds).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Turns pairing mode on or off. When off, inbound requests are answered
    /// `PAIR_REJECT NotAccepting`; an active session is not affected.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Whether inbound requests are accepted.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The active session, if any: its id, peer and our role.
    pub fn active_session(&self) -> Option<(SessionId, PeerId, Role)> {
        self.session.as_ref().map(|s| (s.id, s.peer, s.role))
    }

    /// Asks the connected `peer` to pair, as the requester.
    ///
    /// Fails with [`PairingError::Busy`] while another session is active and
    /// with [`PairingError::NotConnected`] unless a connection to `peer` is
    /// established (the behaviour dials nothing).
    pub fn request(&mut self, peer: PeerId) -> Result<SessionId, PairingError> {
        if self.session.is_some() {
            return Err(PairingError::Busy);
        }
        let connection = self
            .connections
            .get(&peer)
            .and_then(|c| c.last().copied())
            .ok_or(PairingError::NotConnected(peer))?;
        let key = EphemeralKey::generate();
        let frame = frame(&Message::PairRequest {
            public_key: key.public(),
            name: self.config.name.clone(),
        });
        let id = self.new_session_id();
        tracing::debug!(%peer, session = %id, "pairing requested");
        self.session = Some(Session {
            id,
            peer,
            connection,
            role: Role::Requester,
            state: State::Requested(key),
            we_confirmed: false,
            peer_confirmed: false,
            deadline: Delay::new(self.config.timeout),
        });
        self.command(peer, connection, FromBehaviour::Open { session: id, frame });
        Ok(id)
    }

    /// Our user saw matching codes. Allowed once, after
    /// [`Event::CodeReady`] and before the session ends.
    pub fn confirm(&mut self, session: SessionId) -> Result<(), PairingError> {
        let s = self.active_mut(session)?;
        if !matches!(s.state, State::Comparing) || s.we_confirmed {
            let state = if s.we_confirmed {
                "already confirmed"
            } else {
                s.state.describe()
            };
            return Err(PairingError::WrongState { session, state });
        }
        s.we_confirmed = true;
        let both = s.peer_confirmed;
        self.send(&Message::CodeConfirmed, false);
        if both {
            self.both_confirmed();
        }
        Ok(())
    }

    /// Our user saw different codes (or declined): the session fails with
    /// [`FailReason::RejectedByUs`] here and [`FailReason::RejectedByPeer`]
    /// at the peer. Allowed while the codes are being compared (afterwards,
    /// use [`Behaviour::cancel`]).
    pub fn reject(&mut self, session: SessionId) -> Result<(), PairingError> {
        let s = self.active_mut(session)?;
        if !matches!(s.state, State::Comparing) {
            let state = s.state.describe();
            return Err(PairingError::WrongState { session, state });
        }
        self.fail(FailReason::RejectedByUs, Some(Message::CodeRejected));
        Ok(())
    }

    /// Sends the credentials (acceptor only, once both users confirmed:
    /// after [`Event::BothConfirmed`]). At most
    /// [`Config::max_credentials_len`] bytes.
    pub fn send_credentials(
        &mut self,
        session: SessionId,
        credentials: Vec<u8>,
    ) -> Result<(), PairingError> {
        let max = self.config.max_credentials_len;
        let s = self.active_mut(session)?;
        if s.role != Role::Acceptor {
            return Err(PairingError::WrongRole {
                session,
                role: s.role,
            });
        }
        if !matches!(s.state, State::ReadyToSend) {
            let state = s.state.describe();
            return Err(PairingError::WrongState { session, state });
        }
        if credentials.len() > max {
            return Err(PairingError::TooLarge {
                len: credentials.len(),
                max,
            });
        }
        s.state = State::CredentialsSent;
        tracing::debug!(%session, len = credentials.len(), "sending pairing credentials");
        self.send(&Message::Credentials { data: credentials }, false);
        Ok(())
    }

    /// Ends the active session at once: [`FailReason::Cancelled`] here,
    /// [`FailReason::RejectedByPeer`] at the peer.
    pub fn cancel(&mut self, session: SessionId) -> Result<(), PairingError> {
        self.active_mut(session)?;
        self.fail(
            FailReason::Cancelled,
            Some(Message::Abort {
                reason: AbortReason::Cancelled,
            }),
        );
        Ok(())
    }

    fn new_session_id(&self) -> SessionId {
        SessionId(
            self.next_session
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn active_mut(&mut self, session: SessionId) -> Result<&mut Session, PairingError> {
        self.session
            .as_mut()
            .filter(|s| s.id == session)
            .ok_or(PairingError::UnknownSession(session))
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn command(&mut self, peer: PeerId, connection: ConnectionId, command: FromBehaviour) {
        self.commands.push_back((peer, connection, command));
        self.wake();
    }

    fn event(&mut self, event: Event) {
        self.events.push_back(event);
        self.wake();
    }

    /// Sends `message` on the active session's stream.
    fn send(&mut self, message: &Message, close: bool) {
        let Some(s) = &self.session else {
            return;
        };
        let (peer, connection, session) = (s.peer, s.connection, s.id);
        self.command(
            peer,
            connection,
            FromBehaviour::Send {
                session,
                frame: frame(message),
                close,
            },
        );
    }

    /// Ends the active session with `reason`, telling the peer with `notice`
    /// (if any) before closing the stream.
    fn fail(&mut self, reason: FailReason, notice: Option<Message>) {
        let Some(s) = self.session.take() else {
            return;
        };
        tracing::debug!(peer = %s.peer, session = %s.id, %reason, "pairing failed");
        self.close_stream(&s, notice);
        self.event(Event::Failed {
            session: s.id,
            peer: s.peer,
            reason,
        });
    }

    /// Closes the session's stream, after sending `last` if any.
    fn close_stream(&mut self, s: &Session, last: Option<Message>) {
        match last {
            Some(message) => self.send_last(s.peer, s.connection, s.id, &message),
            None => self.command(s.peer, s.connection, FromBehaviour::Close(s.id)),
        }
    }

    /// Sends `message` as the last one on `session`'s stream, then closes it.
    fn send_last(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        session: SessionId,
        message: &Message,
    ) {
        let command = FromBehaviour::Send {
            session,
            frame: frame(message),
            close: true,
        };
        self.command(peer, connection, command);
    }

    /// Ends the active session because the peer broke the protocol.
    fn protocol_failure(&mut self, what: String) {
        self.fail(
            FailReason::Protocol(what),
            Some(Message::Abort {
                reason: AbortReason::Protocol,
            }),
        );
    }

    /// Ends the active session successfully.
    fn complete(&mut self, closing_message: Option<Message>) {
        let Some(s) = self.session.take() else {
            return;
        };
        tracing::debug!(peer = %s.peer, session = %s.id, role = %s.role, "pairing completed");
        self.close_stream(&s, closing_message);
        self.event(Event::Completed {
            session: s.id,
            peer: s.peer,
            role: s.role,
        });
    }

    fn both_confirmed(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        s.state = match s.role {
            Role::Acceptor => State::ReadyToSend,
            Role::Requester => State::AwaitingCredentials,
        };
        let event = Event::BothConfirmed {
            session: s.id,
            peer: s.peer,
        };
        self.event(event);
    }

    /// Reports an inbound stream that failed before becoming a session,
    /// unless too many events wait.
    fn report_refused_stream(&mut self, session: SessionId, peer: PeerId, what: String) {
        tracing::debug!(%peer, %session, %what, "refused an inbound pairing stream");
        if self.events.len() < MAX_EVENTS {
            self.event(Event::Failed {
                session,
                peer,
                reason: FailReason::Protocol(what),
            });
        }
    }

    /// The first message on a stream `peer` opened.
    fn on_inbound(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        session: SessionId,
        message: Message,
    ) {
        let abort = Message::Abort {
            reason: AbortReason::Protocol,
        };
        let (public_key, name) = match message {
            Message::PairRequest { public_key, name } => (public_key, name),
            other => {
                let what = format!("expected PAIR_REQUEST, got {}", other.kind());
                self.send_last(peer, connection, session, &abort);
                self.report_refused_stream(session, peer, what);
                return;
            }
        };
        if !self.accepting {
            tracing::debug!(%peer, %session, "pairing request refused: not accepting");
            let reject = Message::PairReject {
                reason: RejectReason::NotAccepting,
            };
            self.send_last(peer, connection, session, &reject);
            return;
        }
        if self.session.is_some() {
            tracing::debug!(%peer, %session, "pairing request refused: busy");
            let reject = Message::PairReject {
                reason: RejectReason::Busy,
            };
            self.send_last(peer, connection, session, &reject);
            return;
        }
        let key = EphemeralKey::generate();
        let our_public = key.public();
        let code = match key.derive_code(&public_key, &peer, &self.local_peer_id) {
            Ok(code) => code,
            Err(error) => {
                self.send_last(peer, connection, session, &abort);
                self.report_refused_stream(session, peer, error.to_string());
                return;
            }
        };
        let peer_name = protocol::bound_name(&name);
        tracing::debug!(%peer, %session, name = %peer_name, "pairing request accepted");
        self.session = Some(Session {
            id: session,
            peer,
            connection,
            role: Role::Acceptor,
            state: State::Comparing,
            we_confirmed: false,
            peer_confirmed: false,
            deadline: Delay::new(self.config.timeout),
        });
        self.send(
            &Message::PairAccept {
                public_key: our_public,
                name: self.config.name.clone(),
            },
            false,
        );
        self.event(Event::IncomingRequest {
            session,
            peer,
            name: peer_name.clone(),
        });
        self.event(Event::CodeReady {
            session,
            peer,
            role: Role::Acceptor,
            code,
            peer_name,
        });
    }

    /// A message on the active session's stream.
    fn on_message(&mut self, message: Message) {
        let Some(s) = &mut self.session else {
            return;
        };
        let (id, peer, role) = (s.id, s.peer, s.role);
        match (message, &s.state) {
            (Message::Abort { reason }, _) => {
                let reason = match reason {
                    AbortReason::Timeout => FailReason::Timeout,
                    AbortReason::Cancelled => FailReason::RejectedByPeer,
                    AbortReason::Protocol => {
                        FailReason::Protocol("the peer reported a protocol error".into())
                    }
                };
                self.fail(reason, None);
            }
            (Message::CodeRejected, _) => self.fail(FailReason::RejectedByPeer, None),
            (Message::PairReject { reason }, State::Requested(_)) => {
                let reason = match reason {
                    RejectReason::NotAccepting => FailReason::NotAccepting,
                    RejectReason::Busy => FailReason::Busy,
                };
                self.fail(reason, None);
            }
            (Message::PairAccept { public_key, name }, State::Requested(_)) => {
                let State::Requested(key) = std::mem::replace(&mut s.state, State::Comparing)
                else {
                    return;
                };
                match key.derive_code(&public_key, &self.local_peer_id, &peer) {
                    Ok(code) => self.event(Event::CodeReady {
                        session: id,
                        peer,
                        role,
                        code,
                        peer_name: protocol::bound_name(&name),
                    }),
                    Err(error) => self.protocol_failure(error.to_string()),
                }
            }
            (Message::CodeConfirmed, State::Comparing) if !s.peer_confirmed => {
                s.peer_confirmed = true;
                let both = s.we_confirmed;
                self.event(Event::PeerConfirmed { session: id, peer });
                if both {
                    self.both_confirmed();
                }
            }
            (Message::Credentials { data }, State::AwaitingCredentials) => {
                tracing::debug!(%peer, session = %id, len = data.len(), "pairing credentials received");
                self.event(Event::CredentialsReceived {
                    session: id,
                    peer,
                    credentials: data,
                });
                self.complete(Some(Message::Done));
            }
            (Message::Done, State::CredentialsSent) => self.complete(None),
            (message, state) => {
                let what = format!("unexpected {} while {}", message.kind(), state.describe());
                self.protocol_failure(what);
            }
        }
    }

    fn on_ended(&mut self, end: StreamEnd) {
        let reason = match end {
            StreamEnd::Closed | StreamEnd::Failed(_) => FailReason::ConnectionClosed,
            StreamEnd::Unsupported => {
                FailReason::Protocol(format!("the peer does not support {PROTOCOL}"))
            }
            StreamEnd::Malformed(error) => FailReason::Protocol(error.to_string()),
        };
        self.fail(reason, None);
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler::new(
            peer,
            handler::Settings {
                max_credentials_len: self.config.max_credentials_len,
            },
            self.next_session.clone(),
        )
    }
}

/// `message` as one frame. Messages are bounded well below any frame limit,
/// so encoding cannot fail; if it somehow did, nothing is sent and the
/// session runs into its timeout.
fn frame(message: &Message) -> Vec<u8> {
    protocol::encode(message, usize::MAX).unwrap_or_else(|error| {
        tracing::warn!(%error, kind = message.kind(), "could not encode a pairing message");
        Vec::new()
    })
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
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(list) = self.connections.get_mut(&peer_id) {
                    list.retain(|c| *c != connection_id);
                    if list.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.connection == connection_id)
                {
                    self.fail(FailReason::ConnectionClosed, None);
                }
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
        let is_active = |this: &Self, session: SessionId| {
            this.session
                .as_ref()
                .is_some_and(|s| s.id == session && s.connection == connection)
        };
        match event {
            ToBehaviour::Inbound { session, message } => {
                self.on_inbound(peer, connection, session, message);
            }
            ToBehaviour::Message { session, message } => {
                if is_active(self, session) {
                    self.on_message(message);
                } else {
                    tracing::debug!(%peer, %session, kind = message.kind(), "pairing message for an ended session ignored");
                }
            }
            ToBehaviour::InboundMalformed { session, error } => {
                self.report_refused_stream(session, peer, error.to_string());
            }
            ToBehaviour::Ended { session, end } => {
                if is_active(self, session) {
                    self.on_ended(end);
                }
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if let Some((peer_id, connection, event)) = self.commands.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event,
            });
        }
        if let Some(s) = &mut self.session {
            if s.deadline.poll_unpin(cx).is_ready() {
                self.fail(
                    FailReason::Timeout,
                    Some(Message::Abort {
                        reason: AbortReason::Timeout,
                    }),
                );
                if let Some(event) = self.events.pop_front() {
                    return Poll::Ready(ToSwarm::GenerateEvent(event));
                }
            }
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
