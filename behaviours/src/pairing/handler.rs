//! The per-connection part of the pairing behaviour: framed I/O on pairing
//! streams.
//!
//! The handler runs no session logic. It opens a stream when the behaviour
//! asks (writing the request first), accepts the remote's streams, decodes
//! every frame it reads into a [`Message`] for the behaviour, and writes the
//! frames the behaviour hands it. Each stream is split so that reading and
//! writing proceed independently (either side may confirm at any time).
//!
//! Bounds: at most [`MAX_STREAMS`] streams per connection (a further inbound
//! stream is dropped at once), at most [`MAX_FRAMES_PER_STREAM`] frames read
//! per stream, frames limited by the configured credentials limit, an inbound
//! stream must send its first frame within [`FIRST_FRAME_TIMEOUT`], and a
//! stream being closed is dropped after [`CLOSE_GRACE`] whatever is left to
//! write. Events are handed out before any further progress, so at most a
//! few wait at a time.

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    future::BoxFuture,
    io::{ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt, FutureExt,
};
use futures_timer::Delay;
use libp2p::{
    core::upgrade::ReadyUpgrade,
    swarm::{
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
        ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
        SubstreamProtocol,
    },
    PeerId,
};

use super::{
    protocol::{self, FrameError, Message, ProtocolError, MAX_FRAMES_PER_STREAM, PROTOCOL},
    SessionId,
};

/// Pairing streams open at once on one connection, in either direction.
pub const MAX_STREAMS: usize = 4;

/// How long the remote has to send the first frame on a stream it opened.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stream being closed may take to flush what is queued.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long opening an outbound stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A command from the behaviour to the handler.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Open a stream for `session` and write `frame` on it first.
    Open {
        /// The session the stream is for.
        session: SessionId,
        /// An encoded frame (the request).
        frame: Vec<u8>,
    },
    /// Write `frame` on the session's stream, then close the stream when
    /// `close`.
    Send {
        /// The session.
        session: SessionId,
        /// An encoded frame.
        frame: Vec<u8>,
        /// Close the stream after this frame.
        close: bool,
    },
    /// Close the session's stream once what is queued is written; nothing is
    /// reported about it any more.
    Close(SessionId),
}

/// How a stream ended without the behaviour closing it.
#[derive(Debug)]
pub enum StreamEnd {
    /// The remote closed or reset the stream.
    Closed,
    /// The remote does not speak [`PROTOCOL`].
    Unsupported,
    /// The remote sent something invalid.
    Malformed(ProtocolError),
    /// Opening, reading or writing failed.
    Failed(String),
}

/// A report from the handler to the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// The first message on a stream the remote opened, under a fresh session
    /// id.
    Inbound {
        /// The id given to the new stream.
        session: SessionId,
        /// The message.
        message: Message,
    },
    /// A message on a known session's stream.
    Message {
        /// The session.
        session: SessionId,
        /// The message.
        message: Message,
    },
    /// A stream the remote opened was invalid before its first message; the
    /// stream was dropped.
    InboundMalformed {
        /// The id given to the stream.
        session: SessionId,
        /// What was wrong.
        error: ProtocolError,
    },
    /// A known session's stream ended; it was dropped.
    Ended {
        /// The session.
        session: SessionId,
        /// How.
        end: StreamEnd,
    },
}

/// The handler's share of the behaviour's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_credentials_len: usize,
}

type ReadFuture = BoxFuture<'static, (ReadHalf<Stream>, Result<Option<Vec<u8>>, FrameError>)>;
type WriteFuture = BoxFuture<'static, (WriteHalf<Stream>, io::Result<()>)>;
type CloseFuture = BoxFuture<'static, io::Result<()>>;

/// The writing half of a stream.
enum Writer {
    Idle(WriteHalf<Stream>),
    Writing(WriteFuture),
    Closing(CloseFuture),
    /// Placeholder while the writer is moved out.
    Taken,
}

/// An outbound stream asked for and not negotiated yet.
struct Opening {
    session: SessionId,
    outbox: VecDeque<Vec<u8>>,
    close: bool,
}

/// One negotiated pairing stream.
struct SessionStream {
    session: SessionId,
    /// Opened by the remote, and its first message not read yet: failures
    /// are reported as [`ToBehaviour::InboundMalformed`] or not at all.
    fresh_inbound: bool,
    frames_read: usize,
    /// `None` once the behaviour closes the stream (nothing more is read).
    reader: Option<ReadFuture>,
    writer: Writer,
    outbox: VecDeque<Vec<u8>>,
    /// Close once `outbox` is written.
    close: bool,
    /// The first-frame deadline of a fresh inbound stream, or the close
    /// grace of a closing one.
    deadline: Option<Delay>,
}

/// What polling a stream did.
enum StreamStep {
    Progress,
    /// Progress, and the stream is to be dropped.
    Remove,
    Pending,
}

/// Handler for one connection.
pub struct Handler {
    remote: PeerId,
    settings: Settings,
    /// Shared with the behaviour and every other handler: session ids are
    /// unique per behaviour.
    next_session: Arc<AtomicU64>,
    /// Outbound streams not requested from the connection yet.
    to_request: VecDeque<SessionId>,
    opening: Vec<Opening>,
    streams: Vec<SessionStream>,
    events: VecDeque<ToBehaviour>,
}

impl Handler {
    pub(crate) fn new(remote: PeerId, settings: Settings, next_session: Arc<AtomicU64>) -> Self {
        Self {
            remote,
            settings,
            next_session,
            to_request: VecDeque::new(),
            opening: Vec::new(),
            streams: Vec::new(),
            events: VecDeque::new(),
        }
    }

    fn max_frame(&self) -> usize {
        protocol::max_frame(self.settings.max_credentials_len)
    }

    fn stream_count(&self) -> usize {
        self.streams.len() + self.opening.len()
    }

    fn add_stream(
        &mut self,
        session: SessionId,
        stream: Stream,
        inbound: bool,
        outbox: VecDeque<Vec<u8>>,
        close: bool,
    ) {
        let (reader, writer) = stream.split();
        let deadline = if inbound {
            Some(Delay::new(FIRST_FRAME_TIMEOUT))
        } else if close {
            Some(Delay::new(CLOSE_GRACE))
        } else {
            None
        };
        self.streams.push(SessionStream {
            session,
            fresh_inbound: inbound,
            frames_read: 0,
            reader: (!close).then(|| read(reader, self.max_frame())),
            writer: Writer::Idle(writer),
            outbox,
            close,
            deadline,
        });
    }

    /// Reports the end of a stream (not one the behaviour closed).
    fn report_end(&mut self, session: SessionId, fresh_inbound: bool, end: StreamEnd) {
        if fresh_inbound {
            match end {
                StreamEnd::Malformed(error) => self
                    .events
                    .push_back(ToBehaviour::InboundMalformed { session, error }),
                other => {
                    tracing::debug!(peer = %self.remote, %session, ?other, "inbound pairing stream ended before its first message");
                }
            }
        } else {
            self.events.push_back(ToBehaviour::Ended { session, end });
        }
    }

    /// Handles a frame read on `self.streams[index]`. Returns whether the
    /// stream is to be dropped.
    fn on_frame(&mut self, index: usize, payload: &[u8]) -> bool {
        let max_credentials_len = self.settings.max_credentials_len;
        let Some(s) = self.streams.get_mut(index) else {
            return true;
        };
        s.frames_read += 1;
        let decoded = if s.frames_read > MAX_FRAMES_PER_STREAM {
            Err(ProtocolError::TooManyFrames)
        } else {
            protocol::decode(payload, max_credentials_len)
        };
        let (session, fresh) = (s.session, s.fresh_inbound);
        match decoded {
            Ok(message) => {
                s.fresh_inbound = false;
                if fresh {
                    s.deadline = None;
                    self.events
                        .push_back(ToBehaviour::Inbound { session, message });
                } else {
                    self.events
                        .push_back(ToBehaviour::Message { session, message });
                }
                false
            }
            Err(error) => {
                tracing::debug!(peer = %self.remote, %session, %error, "malformed pairing frame");
                self.report_end(session, fresh, StreamEnd::Malformed(error));
                true
            }
        }
    }

    fn poll_stream(&mut self, index: usize, cx: &mut Context<'_>) -> StreamStep {
        let max_frame = self.max_frame();
        let Some(s) = self.streams.get_mut(index) else {
            return StreamStep::Pending;
        };
        let (session, fresh) = (s.session, s.fresh_inbound);

        if let Some(deadline) = &mut s.deadline {
            if deadline.poll_unpin(cx).is_ready() {
                if s.close {
                    tracing::debug!(peer = %self.remote, %session, "pairing stream did not close in time; dropped");
                } else {
                    tracing::debug!(peer = %self.remote, %session, "no pairing request on an inbound stream; dropped");
                }
                return StreamStep::Remove;
            }
        }

        if let Some(reader) = &mut s.reader {
            if let Poll::Ready((half, result)) = reader.poll_unpin(cx) {
                s.reader = None;
                return match result {
                    Ok(Some(payload)) => {
                        if self.on_frame(index, &payload) {
                            return StreamStep::Remove;
                        }
                        if let Some(s) = self.streams.get_mut(index) {
                            if !s.close {
                                s.reader = Some(read(half, max_frame));
                            }
                        }
                        StreamStep::Progress
                    }
                    Ok(None) => {
                        self.report_end(session, fresh, StreamEnd::Closed);
                        StreamStep::Remove
                    }
                    Err(error) => {
                        let error = ProtocolError::Frame(error);
                        let end = if error.is_malformed() {
                            StreamEnd::Malformed(error)
                        } else {
                            StreamEnd::Failed(error.to_string())
                        };
                        self.report_end(session, fresh, end);
                        StreamStep::Remove
                    }
                };
            }
        }

        match std::mem::replace(&mut s.writer, Writer::Taken) {
            Writer::Idle(half) => match s.outbox.pop_front() {
                Some(frame) => {
                    s.writer = Writer::Writing(write(half, frame));
                    StreamStep::Progress
                }
                None if s.close => {
                    s.writer = Writer::Closing(close(half));
                    StreamStep::Progress
                }
                None => {
                    s.writer = Writer::Idle(half);
                    StreamStep::Pending
                }
            },
            Writer::Writing(mut future) => match future.poll_unpin(cx) {
                Poll::Ready((half, Ok(()))) => {
                    s.writer = Writer::Idle(half);
                    StreamStep::Progress
                }
                Poll::Ready((_, Err(error))) => {
                    tracing::debug!(peer = %self.remote, %session, %error, "writing on a pairing stream failed");
                    if !s.close {
                        self.report_end(session, fresh, StreamEnd::Failed(error.to_string()));
                    }
                    StreamStep::Remove
                }
                Poll::Pending => {
                    s.writer = Writer::Writing(future);
                    StreamStep::Pending
                }
            },
            Writer::Closing(mut future) => match future.poll_unpin(cx) {
                // Closed cleanly: the remote reads what was written, then the
                // end of the stream (dropping a closed stream resets nothing).
                Poll::Ready(result) => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.remote, %session, %error, "closing a pairing stream failed");
                    }
                    StreamStep::Remove
                }
                Poll::Pending => {
                    s.writer = Writer::Closing(future);
                    StreamStep::Pending
                }
            },
            // Only while this function runs.
            Writer::Taken => StreamStep::Remove,
        }
    }

    fn send(&mut self, session: SessionId, frame: Vec<u8>, close: bool) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.session == session) {
            if s.close {
                return; // closing: nothing more is sent
            }
            s.outbox.push_back(frame);
            if close {
                s.start_closing();
            }
        } else if let Some(o) = self.opening.iter_mut().find(|o| o.session == session) {
            if close {
                // Ended before the stream was even open: the remote never
                // needs to hear of it.
                o.close = true;
            } else if !o.close {
                o.outbox.push_back(frame);
            }
        } else {
            tracing::debug!(peer = %self.remote, %session, "no pairing stream to send on");
        }
    }

    fn close(&mut self, session: SessionId) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.session == session) {
            s.start_closing();
        } else if let Some(o) = self.opening.iter_mut().find(|o| o.session == session) {
            o.close = true;
        }
    }
}

impl SessionStream {
    /// Stops reading and closes once the outbox is written (within
    /// [`CLOSE_GRACE`]).
    fn start_closing(&mut self) {
        if !self.close {
            self.close = true;
            self.reader = None;
            self.deadline = Some(Delay::new(CLOSE_GRACE));
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = SessionId;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    /// The connection is kept while a pairing stream is open or being
    /// opened.
    fn connection_keep_alive(&self) -> bool {
        !self.streams.is_empty() || !self.opening.is_empty() || !self.to_request.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, SessionId, Self::ToBehaviour>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
            }
            if let Some(session) = self.to_request.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), session)
                        .with_timeout(OPEN_TIMEOUT),
                });
            }
            let mut progress = false;
            let mut index = 0;
            while index < self.streams.len() {
                match self.poll_stream(index, cx) {
                    StreamStep::Progress => {
                        progress = true;
                        index += 1;
                    }
                    StreamStep::Remove => {
                        progress = true;
                        self.streams.swap_remove(index);
                    }
                    StreamStep::Pending => index += 1,
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::Open { session, frame } => {
                // The behaviour opens at most one stream at a time (one
                // active session), so this bound never bites in practice.
                if self.stream_count() >= MAX_STREAMS {
                    self.events.push_back(ToBehaviour::Ended {
                        session,
                        end: StreamEnd::Failed("too many pairing streams".into()),
                    });
                    return;
                }
                self.opening.push(Opening {
                    session,
                    outbox: VecDeque::from([frame]),
                    close: false,
                });
                self.to_request.push_back(session);
            }
            FromBehaviour::Send {
                session,
                frame,
                close,
            } => self.send(session, frame, close),
            FromBehaviour::Close(session) => self.close(session),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), SessionId>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.stream_count() >= MAX_STREAMS {
                    tracing::debug!(peer = %self.remote, "too many pairing streams; inbound stream dropped");
                    return;
                }
                let session = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
                self.add_stream(session, stream, true, VecDeque::new(), false);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: session,
            }) => {
                let Some(i) = self.opening.iter().position(|o| o.session == session) else {
                    return;
                };
                let opening = self.opening.swap_remove(i);
                if opening.close {
                    return; // ended meanwhile: dropping the stream resets it
                }
                self.add_stream(session, stream, false, opening.outbox, opening.close);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: session,
                error,
            }) => {
                let Some(i) = self.opening.iter().position(|o| o.session == session) else {
                    return;
                };
                let opening = self.opening.swap_remove(i);
                if opening.close {
                    return;
                }
                let end = match error {
                    StreamUpgradeError::NegotiationFailed => StreamEnd::Unsupported,
                    StreamUpgradeError::Timeout => {
                        StreamEnd::Failed("timed out opening a pairing stream".into())
                    }
                    StreamUpgradeError::Io(e) => StreamEnd::Failed(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.events.push_back(ToBehaviour::Ended { session, end });
            }
            _ => {}
        }
    }
}

/// Reads the next frame; `None` on a clean end of stream.
fn read(mut half: ReadHalf<Stream>, max_frame: usize) -> ReadFuture {
    async move {
        let mut buf = Vec::new();
        let result = protocol::read_frame(&mut half, &mut buf, max_frame)
            .await
            .map(|more| more.then_some(buf));
        (half, result)
    }
    .boxed()
}

/// Writes and flushes one frame.
fn write(mut half: WriteHalf<Stream>, frame: Vec<u8>) -> WriteFuture {
    async move {
        let result = async {
            half.write_all(&frame).await?;
            half.flush().await
        }
        .await;
        (half, result)
    }
    .boxed()
}

/// Closes our side of the stream.
fn close(mut half: WriteHalf<Stream>) -> CloseFuture {
    async move { half.close().await }.boxed()
}
