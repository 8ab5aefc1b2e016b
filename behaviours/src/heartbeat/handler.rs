//! The per-connection state machine of the heartbeat behaviour.
//!
//! Outbound, it keeps one stream for its own beats and runs a fixed schedule:
//! a beat goes out every `interval` (the first one as soon as the connection
//! is up), at most one beat is outstanding, and a beat that has no answer
//! `max(min(interval, max_wait), min_wait)` after it was due is *missed*: its stream is
//! dropped (a late answer can then never be mistaken for the next one) and the
//! next beat opens a new stream. An answer resets the count of consecutive
//! misses; the `max_missed`-th consecutive miss is reported once as a timeout.
//!
//! Inbound, it serves at most one stream (a newer one replaces the older) and
//! answers every beat on it at once, but reads at most one beat per
//! [`MIN_INTERVAL`], so a flooding remote cannot flood the owner with events.
//!
//! Neither direction keeps the connection alive: the streams are excluded
//! from the swarm's keep-alive algorithm and
//! [`ConnectionHandler::connection_keep_alive`] is `false`.
//!
//! State is O(1): one outbound and one inbound stream, one outstanding beat,
//! two timers, and at most three events waiting to be handed out (events are
//! always handed out before any further progress is made).

use std::{
    collections::VecDeque,
    mem,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, AsyncWriteExt, FutureExt};
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
    protocol::{self, FrameError, Heartbeat, HeartbeatError, PROTOCOL},
    LocalInfo, MIN_INTERVAL,
};

/// The shortest time allowed for negotiating an outbound stream, however
/// short the interval: a slow path should get a stream eventually (misses are
/// counted meanwhile), a dead one is given up after this long.
const MIN_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A command from the behaviour to the handler.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Beat every `interval` from now on, telling the remote this connection
    /// is a `transport` path.
    SetInterval {
        /// The new beat interval.
        interval: Duration,
        /// The least wait for an answer.
        min_wait: Duration,
        /// The path class sent in heartbeats.
        transport: String,
    },
}

/// A report from the handler to the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// One of our beats was answered.
    Beat {
        /// From writing the beat to reading the answer.
        rtt: Duration,
        /// The answer, carrying the remote's payload.
        remote: Heartbeat,
    },
    /// The remote's beat arrived (and is being answered).
    Received(Heartbeat),
    /// A beat went unanswered; `consecutive` misses so far.
    Missed(u32),
    /// The `max_missed`-th consecutive miss.
    Timeout,
    /// The remote does not speak the protocol; no more beats are sent.
    Unsupported,
    /// The remote sent something invalid; the stream it came on was dropped.
    Malformed(HeartbeatError),
}

/// The handler's share of the behaviour's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) interval: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) min_wait: Duration,
    pub(crate) max_missed: u32,
    pub(crate) max_frame: usize,
}

type BeatFuture = BoxFuture<'static, Result<(Stream, Heartbeat, Duration), HeartbeatError>>;
type ReadFuture = BoxFuture<'static, Result<Option<(Stream, Vec<u8>)>, FrameError>>;
type WriteFuture = BoxFuture<'static, std::io::Result<Stream>>;

/// Our side of the outbound stream.
enum Outbound {
    /// No stream: one is requested when the next beat is due.
    NoStream,
    /// A stream has been requested and is being negotiated.
    Opening,
    /// The stream waits for the next beat.
    Idle(Stream),
    /// A beat has been (or is being) written; the answer is awaited.
    Beating(BeatFuture),
    /// The remote does not speak the protocol: no more beats.
    Disabled,
}

/// Our side of the remote's stream.
enum Inbound {
    None,
    /// Waiting for the remote's next beat.
    Reading(ReadFuture),
    /// Writing the answer to a beat.
    Answering(WriteFuture),
}

/// The beat currently awaiting an answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When the beat became due (the deadline counts from here, stream
    /// negotiation included).
    due: Instant,
    nonce: u64,
}

/// What the outbound side did in one step.
enum Step {
    /// Made progress; poll again.
    Progress,
    /// Wants a new outbound stream.
    OpenStream,
    /// Waiting on timers or I/O.
    Waiting,
}

/// Handler for one connection.
pub struct Handler {
    local: PeerId,
    remote: PeerId,
    info: Arc<RwLock<Arc<LocalInfo>>>,
    settings: Settings,
    transport: String,

    outbound: Outbound,
    inbound: Inbound,
    /// The outstanding beat, if any (at most one).
    pending: Option<Pending>,
    /// Fires when `pending` is missed. Polled only while `pending` is set.
    deadline: Delay,
    /// When the latest beat became due; the next one is due `interval` later.
    last_due: Option<Instant>,
    /// Fires when the next beat is due. Polled only while nothing is pending.
    next_beat: Delay,

    next_nonce: u64,
    /// Consecutive misses.
    missed: u32,
    /// Whether the timeout was reported for the current run of misses.
    timed_out: bool,
    events: VecDeque<ToBehaviour>,
}

impl Handler {
    pub(crate) fn new(
        local: PeerId,
        remote: PeerId,
        info: Arc<RwLock<Arc<LocalInfo>>>,
        settings: Settings,
    ) -> Self {
        // Nonces only need to differ between the beats of one stream; starting
        // from the clock makes them differ across connections too.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            local,
            remote,
            info,
            settings,
            transport: String::new(),
            outbound: Outbound::NoStream,
            inbound: Inbound::None,
            pending: None,
            deadline: Delay::new(Duration::ZERO),
            last_due: None,
            // The first beat goes out as soon as the connection is up.
            next_beat: Delay::new(Duration::ZERO),
            next_nonce: seed,
            missed: 0,
            timed_out: false,
            events: VecDeque::with_capacity(3),
        }
    }

    /// How long a beat may go unanswered.
    fn wait(&self) -> Duration {
        self.settings
            .interval
            .min(self.settings.max_wait)
            .max(self.settings.min_wait)
    }

    fn take_nonce(&mut self) -> u64 {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        nonce
    }

    /// Our heartbeat with the latest local info, encoded as a frame.
    fn frame(&self, nonce: u64, echo: Option<u64>) -> Vec<u8> {
        let info = self
            .info
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut heartbeat = Heartbeat {
            node: self.local,
            nonce,
            echo,
            timestamp_ms: protocol::now_ms(),
            transport: self.transport.clone(),
            metrics: info.metrics.clone(),
            capabilities: info.capabilities.clone(),
            endpoints: info.endpoints.clone(),
        };
        match protocol::encode(&heartbeat, self.settings.max_frame) {
            Ok(frame) => frame,
            Err(error) => {
                // Only possible with a frame limit below the bounded size:
                // send the heartbeat without its lists rather than nothing.
                tracing::debug!(%error, "heartbeat too large, sending it without lists");
                heartbeat.capabilities.clear();
                heartbeat.endpoints.clear();
                protocol::encode(&heartbeat, usize::MAX).unwrap_or_default()
            }
        }
    }

    fn miss(&mut self) {
        self.missed = self.missed.saturating_add(1);
        if self.timed_out {
            // Reported once per run of misses; quiet until an answer arrives.
            return;
        }
        self.events.push_back(ToBehaviour::Missed(self.missed));
        if self.missed >= self.settings.max_missed {
            self.timed_out = true;
            self.events.push_back(ToBehaviour::Timeout);
        }
    }

    fn start_beat(&mut self, stream: Stream, nonce: u64) {
        let frame = self.frame(nonce, None);
        let remote = self.remote;
        let max = self.settings.max_frame;
        self.outbound = Outbound::Beating(beat(stream, frame, nonce, remote, max).boxed());
    }

    fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Step {
        if let Outbound::Beating(future) = &mut self.outbound {
            if let Poll::Ready(result) = future.poll_unpin(cx) {
                match result {
                    Ok((stream, remote, rtt)) => {
                        self.outbound = Outbound::Idle(stream);
                        self.pending = None;
                        self.missed = 0;
                        self.timed_out = false;
                        self.events.push_back(ToBehaviour::Beat { rtt, remote });
                    }
                    Err(error) => {
                        tracing::debug!(peer = %self.remote, %error, "heartbeat failed");
                        self.outbound = Outbound::NoStream;
                        if error.is_malformed() {
                            self.events.push_back(ToBehaviour::Malformed(error));
                        }
                        if self.pending.take().is_some() {
                            self.miss();
                        }
                    }
                }
                return Step::Progress;
            }
        }

        if self.pending.is_some() && self.deadline.poll_unpin(cx).is_ready() {
            self.pending = None;
            if matches!(self.outbound, Outbound::Beating(_)) {
                // Drop the stream with the beat: its answer, if it ever comes,
                // must not be read as the answer to the next one.
                self.outbound = Outbound::NoStream;
            }
            self.miss();
            return Step::Progress;
        }

        if self.pending.is_none()
            && !matches!(self.outbound, Outbound::Disabled)
            && self.next_beat.poll_unpin(cx).is_ready()
        {
            let now = Instant::now();
            self.last_due = Some(now);
            self.next_beat.reset(self.settings.interval);
            self.deadline.reset(self.wait());
            let nonce = self.take_nonce();
            self.pending = Some(Pending { due: now, nonce });
            return match mem::replace(&mut self.outbound, Outbound::NoStream) {
                Outbound::Idle(stream) => {
                    self.start_beat(stream, nonce);
                    Step::Progress
                }
                Outbound::NoStream => {
                    self.outbound = Outbound::Opening;
                    Step::OpenStream
                }
                // The beat goes out once the stream is negotiated.
                Outbound::Opening => {
                    self.outbound = Outbound::Opening;
                    Step::Progress
                }
                // Not reachable (nothing is pending while beating, and
                // disabled is excluded above); fall back to a new stream.
                Outbound::Beating(_) | Outbound::Disabled => {
                    self.outbound = Outbound::Opening;
                    Step::OpenStream
                }
            };
        }

        Step::Waiting
    }

    /// Returns whether it made progress.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.inbound {
            Inbound::None => false,
            Inbound::Reading(future) => {
                let Poll::Ready(result) = future.poll_unpin(cx) else {
                    return false;
                };
                self.inbound = Inbound::None;
                match result {
                    Ok(Some((stream, payload))) => self.answer(stream, &payload),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(peer = %self.remote, %error, "inbound heartbeat stream failed");
                        let error = HeartbeatError::Frame(error);
                        if error.is_malformed() {
                            self.events.push_back(ToBehaviour::Malformed(error));
                        }
                    }
                }
                true
            }
            Inbound::Answering(future) => {
                let Poll::Ready(result) = future.poll_unpin(cx) else {
                    return false;
                };
                self.inbound = match result {
                    Ok(stream) => {
                        Inbound::Reading(read(stream, self.settings.max_frame, true).boxed())
                    }
                    Err(error) => {
                        tracing::debug!(peer = %self.remote, %error, "answering a heartbeat failed");
                        Inbound::None
                    }
                };
                true
            }
        }
    }

    /// Handles the remote's beat: answer at once, report it.
    fn answer(&mut self, stream: Stream, payload: &[u8]) {
        let heartbeat = match protocol::decode(payload) {
            Ok(heartbeat) if heartbeat.node != self.remote => Err(HeartbeatError::WrongNode {
                claimed: heartbeat.node,
            }),
            other => other,
        };
        match heartbeat {
            Ok(heartbeat) => {
                let nonce = self.take_nonce();
                let frame = self.frame(nonce, Some(heartbeat.nonce));
                self.inbound = Inbound::Answering(write(stream, frame).boxed());
                self.events.push_back(ToBehaviour::Received(heartbeat));
            }
            Err(error) => {
                tracing::debug!(peer = %self.remote, %error, "refused an inbound heartbeat");
                // Dropping the stream tells the remote.
                drop(stream);
                self.events.push_back(ToBehaviour::Malformed(error));
            }
        }
    }

    fn set_interval(&mut self, interval: Duration, transport: String) {
        self.settings.interval = interval;
        self.transport = transport;
        let now = Instant::now();
        // Keep the schedule anchored on the latest beat: a shorter interval
        // brings the next beat forward (at once if it is already overdue), a
        // longer one pushes it back.
        if let Some(last) = self.last_due {
            self.next_beat
                .reset((last + interval).saturating_duration_since(now));
        }
        if let Some(pending) = self.pending {
            self.deadline
                .reset((pending.due + self.wait()).saturating_duration_since(now));
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    /// Heartbeats never keep a connection open on their own: whoever needs
    /// the connection (in Atmosphere, the channel behaviour for members)
    /// keeps it alive.
    fn connection_keep_alive(&self) -> bool {
        false
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        loop {
            // Events first: at most three can be waiting at any time.
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
            }
            if self.poll_inbound(cx) {
                continue;
            }
            match self.poll_outbound(cx) {
                Step::Progress => continue,
                Step::OpenStream => {
                    let timeout = self.wait().max(MIN_NEGOTIATION_TIMEOUT);
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
                            .with_timeout(timeout),
                    });
                }
                Step::Waiting => return Poll::Pending,
            }
        }
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::SetInterval {
                interval,
                min_wait,
                transport,
            } => {
                self.settings.min_wait = min_wait;
                self.set_interval(interval, transport)
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                // A newer inbound stream replaces the older one.
                self.inbound =
                    Inbound::Reading(read(stream, self.settings.max_frame, false).boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                if !matches!(self.outbound, Outbound::Opening) {
                    // Not asked for (cannot happen): keep the stream we have.
                    return;
                }
                match self.pending {
                    Some(pending) => self.start_beat(stream, pending.nonce),
                    // The beat it was opened for was missed meanwhile; the
                    // stream waits for the next one.
                    None => self.outbound = Outbound::Idle(stream),
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => match error {
                StreamUpgradeError::NegotiationFailed => {
                    self.outbound = Outbound::Disabled;
                    self.pending = None;
                    self.events.push_back(ToBehaviour::Unsupported);
                }
                StreamUpgradeError::Timeout | StreamUpgradeError::Io(_) => {
                    tracing::debug!(peer = %self.remote, ?error, "opening a heartbeat stream failed");
                    if matches!(self.outbound, Outbound::Opening) {
                        self.outbound = Outbound::NoStream;
                    }
                    if self.pending.take().is_some() {
                        self.miss();
                    }
                }
                StreamUpgradeError::Apply(never) => match never {},
            },
            _ => {}
        }
    }
}

/// Writes one beat and reads its answer.
async fn beat(
    mut stream: Stream,
    frame: Vec<u8>,
    nonce: u64,
    remote: PeerId,
    max_frame: usize,
) -> Result<(Stream, Heartbeat, Duration), HeartbeatError> {
    let start = Instant::now();
    stream.write_all(&frame).await.map_err(FrameError::Io)?;
    stream.flush().await.map_err(FrameError::Io)?;
    let mut buf = Vec::new();
    if !protocol::read_frame(&mut stream, &mut buf, max_frame).await? {
        return Err(HeartbeatError::Closed);
    }
    let rtt = start.elapsed();
    let answer = protocol::decode(&buf)?;
    if answer.node != remote {
        return Err(HeartbeatError::WrongNode {
            claimed: answer.node,
        });
    }
    if answer.echo != Some(nonce) {
        return Err(HeartbeatError::WrongEcho {
            expected: nonce,
            got: answer.echo,
        });
    }
    Ok((stream, answer, rtt))
}

/// Reads the remote's next beat; `None` on a clean end of stream.
///
/// Waits [`MIN_INTERVAL`] first when `pause` (after an answer): the remote
/// cannot make us answer, nor report, more than one beat per `MIN_INTERVAL`,
/// which is the shortest interval anyone should beat at.
async fn read(
    mut stream: Stream,
    max_frame: usize,
    pause: bool,
) -> Result<Option<(Stream, Vec<u8>)>, FrameError> {
    if pause {
        Delay::new(MIN_INTERVAL).await;
    }
    let mut buf = Vec::new();
    if protocol::read_frame(&mut stream, &mut buf, max_frame).await? {
        Ok(Some((stream, buf)))
    } else {
        Ok(None)
    }
}

/// Writes an answer.
async fn write(mut stream: Stream, frame: Vec<u8>) -> std::io::Result<Stream> {
    stream.write_all(&frame).await?;
    stream.flush().await?;
    Ok(stream)
}
