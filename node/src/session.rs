//! Sessions: what keeps the app traffic to one peer whole across path switches.
//!
//! Every remote member has one [`Session`], which outlives the connections to
//! it. Outbound, the session numbers each sequenced frame (`Publish`,
//! `Request`, `Response`) and keeps it in a bounded outbox until the peer
//! acknowledges it ([`Frame::Ack`], cumulative). The link writer of the
//! current path reads frames straight from the outbox; when the path changes
//! the new writer starts with [`Frame::Open`] and replays everything not yet
//! acknowledged. When no path exists, frames wait in the outbox and go out on
//! reconnect.
//!
//! Inbound, the session remembers the peer's session id and the next sequence
//! number it expects. A frame is delivered to the app only if its number is
//! not below that; replays and stragglers from an old path are dropped. Frames
//! on one link arrive in order and a new link always starts at or below the
//! first undelivered number (acknowledgements never run ahead of delivery), so
//! every accepted frame is exactly the next one: delivery is exactly once and
//! in order per sender, across any number of switches.
//!
//! Failure detection: when the oldest unacknowledged frame is older than
//! `max(4 × SRTT, ack_timeout_floor)` plus its transmission time at the
//! path's minimum expected rate, [`Session::ack_overdue`] says so once;
//! the node then asks the connection train to promote the standby path.
//!
//! Bounds: the outbox holds at most [`OutboxLimits::frames`] frames and
//! [`OutboxLimits::bytes`] payload bytes. While a path exists, senders wait for
//! room (back-pressure); while none exists, a full outbox refuses new frames
//! with [`SendError::Full`] rather than growing.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use libp2p::{swarm::ConnectionId, PeerId};
use tokio::sync::Notify;

use crate::{shared::lock, wire::Frame};

/// Bounds of one peer's outbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    /// Most unacknowledged frames.
    pub frames: usize,
    /// Most unacknowledged payload bytes (a single larger frame is still
    /// accepted into an empty outbox).
    pub bytes: usize,
    /// Largest payload of one frame (`Config::max_payload`); larger frames
    /// are refused, since no peer would accept them.
    pub max_payload: usize,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// No path to the peer and its outbox is full.
    #[error("the peer is unreachable and its outbox is full")]
    Full,
    /// The session ended (the peer was forgotten or misbehaved).
    #[error("the session with the peer ended")]
    Closed,
    /// The frame's payload exceeds the payload limit.
    #[error("the payload exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// The outbox is full (only from [`Session::try_send`]).
    #[error("the peer's outbox is full")]
    Busy,
}

/// What the writer of a path should do next.
pub(crate) enum Batch {
    /// Frames were encoded into the buffer: write them.
    Ready {
        /// How many frames.
        frames: u64,
    },
    /// Nothing to send: wait for a wake-up.
    Idle,
    /// A newer path took over (or the session ended): stop.
    Superseded,
}

struct Pending {
    seq: u64,
    frame: Frame,
    size: usize,
    sent_at: Option<Instant>,
    sends: u32,
}

struct WriterSlot {
    generation: u64,
    connection: ConnectionId,
    notify: Arc<Notify>,
    fresh: bool,
}

struct Outbound {
    next_seq: u64,
    unacked: VecDeque<Pending>,
    /// Index in `unacked` of the next frame the current writer sends.
    cursor: usize,
    bytes: usize,
    writer: Option<WriterSlot>,
    next_generation: u64,
    /// The latest state record, sent before any queued frame.
    control: Option<Frame>,
    srtt: Option<Duration>,
    /// When the last acknowledgement moved the window: the front frame's
    /// wait starts no earlier (frames of one batch share a send time but
    /// cross the link one after another).
    last_progress: Option<Instant>,
    timeout_fired: bool,
    closed: bool,
}

struct Inbound {
    remote_session: Option<u64>,
    next_expected: u64,
    /// Sessions of the peer seen before the current one (a stale `Open`
    /// from an old stream must not switch back to them).
    retired: VecDeque<u64>,
    closed: bool,
}

/// Old peer session ids remembered per session.
const MAX_RETIRED_SESSIONS: usize = 8;

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SessionStats {
    pub unacked: usize,
    pub retransmitted: u64,
    pub duplicates_dropped: u64,
    pub refused_full: u64,
}

/// One remote peer's session (see the module docs).
pub(crate) struct Session {
    peer: PeerId,
    id: u64,
    limits: OutboxLimits,
    out: Mutex<Outbound>,
    /// Senders waiting for room in the outbox.
    room: Notify,
    inbound: Mutex<Inbound>,
    ack_due: AtomicBool,
    retransmitted: AtomicU64,
    duplicates: AtomicU64,
    refused_full: AtomicU64,
}

/// Room for a topic or URI beside the payload in the size check.
const MAX_NAME_OVERHEAD: usize = 1024;

/// A frame's size for the byte bound: its payload.
fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Publish { payload, topic, .. } => payload.len() + topic.len(),
        Frame::Request { args, uri, .. } => args.len() + uri.len(),
        Frame::Response { result, .. } => match result {
            crate::wire::CallResult::Ok(b) => b.len(),
            crate::wire::CallResult::Denied(s) | crate::wire::CallResult::Remote(s) => s.len(),
            _ => 0,
        },
        _ => 0,
    }
}

impl Session {
    /// A new session with `peer`, with a random id.
    pub fn new(peer: PeerId, limits: OutboxLimits) -> Arc<Self> {
        Arc::new(Self {
            peer,
            id: rand::random::<u64>() | 1,
            limits,
            out: Mutex::new(Outbound {
                next_seq: 1,
                unacked: VecDeque::new(),
                cursor: 0,
                bytes: 0,
                writer: None,
                next_generation: 1,
                control: None,
                srtt: None,
                last_progress: None,
                timeout_fired: false,
                closed: false,
            }),
            room: Notify::new(),
            inbound: Mutex::new(Inbound {
                remote_session: None,
                next_expected: 0,
                retired: VecDeque::new(),
                closed: false,
            }),
            ack_due: AtomicBool::new(false),
            retransmitted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
        })
    }

    /// The peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Queues a sequenced frame (its `seq` is assigned here). Waits for room
    /// while a path exists; fails at once when none does and the outbox is full.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_inner(frame, true).await
    }

    /// Queues a sequenced frame only if there is room now; never waits.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        use futures::FutureExt;
        match self.send_inner(frame, false).now_or_never() {
            Some(result) => result,
            None => Err(SendError::Busy),
        }
    }

    async fn send_inner(&self, frame: Frame, wait: bool) -> Result<(), SendError> {
        let size = payload_len(&frame);
        if size > self.limits.max_payload + MAX_NAME_OVERHEAD {
            return Err(SendError::TooLarge(self.limits.max_payload));
        }
        let mut frame = Some(frame);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Decide under the lock; wait (if needed) after releasing it.
            let wake = {
                let mut out = lock(&self.out);
                if out.closed {
                    return Err(SendError::Closed);
                }
                let has_room = out.unacked.is_empty()
                    || (out.unacked.len() < self.limits.frames
                        && out.bytes + size <= self.limits.bytes);
                if has_room {
                    let seq = out.next_seq;
                    out.next_seq += 1;
                    if let Some(mut frame) = frame.take() {
                        frame.set_seq(seq);
                        out.bytes += size;
                        out.unacked.push_back(Pending {
                            seq,
                            frame,
                            size,
                            sent_at: None,
                            sends: 0,
                        });
                    }
                    Some(out.writer.as_ref().map(|w| w.notify.clone()))
                } else if out.writer.is_none() {
                    self.refused_full.fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Full);
                } else if !wait {
                    return Err(SendError::Busy);
                } else {
                    notified.as_mut().enable();
                    None
                }
            };
            match wake {
                Some(writer) => {
                    if let Some(notify) = writer {
                        notify.notify_one();
                    }
                    return Ok(());
                }
                None => notified.await,
            }
        }
    }

    /// Replaces the pending state record (unsequenced: only the newest matters).
    pub fn send_state(&self, frame: Frame) {
        let wake = {
            let mut out = lock(&self.out);
            out.control = Some(frame);
            out.writer.as_ref().map(|w| w.notify.clone())
        };
        if let Some(notify) = wake {
            notify.notify_one();
        }
    }

    /// Makes `connection` the path for outbound frames, with `state` as the
    /// first record. Returns the writer's generation and wake-up handle; the
    /// previous writer stops at its next batch.
    pub fn attach(&self, connection: ConnectionId, state: Frame) -> (u64, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        let (generation, previous) = {
            let mut out = lock(&self.out);
            let generation = out.next_generation;
            out.next_generation += 1;
            let previous = out.writer.replace(WriterSlot {
                generation,
                connection,
                notify: notify.clone(),
                fresh: true,
            });
            out.cursor = 0;
            out.timeout_fired = false;
            out.control = Some(state);
            for pending in out.unacked.iter_mut() {
                pending.sent_at = None;
            }
            (generation, previous)
        };
        if let Some(previous) = previous {
            previous.notify.notify_one();
        }
        self.ack_due.store(true, Ordering::Release);
        notify.notify_one();
        (generation, notify)
    }

    /// The writer of `generation` stopped (its path failed).
    pub fn detach(&self, generation: u64) {
        let mut out = lock(&self.out);
        if out
            .writer
            .as_ref()
            .is_some_and(|w| w.generation == generation)
        {
            out.writer = None;
            drop(out);
            self.room.notify_waiters();
        }
    }

    /// `connection` closed: if outbound frames used it, the session has no
    /// path until a new one is attached (senders stop waiting for room).
    pub fn detach_connection(&self, connection: ConnectionId) {
        let writer = {
            let mut out = lock(&self.out);
            if out
                .writer
                .as_ref()
                .is_some_and(|w| w.connection == connection)
            {
                out.writer.take()
            } else {
                None
            }
        };
        if let Some(writer) = writer {
            writer.notify.notify_one();
            self.room.notify_waiters();
        }
    }

    /// The connection outbound frames currently use.
    pub fn connection(&self) -> Option<ConnectionId> {
        lock(&self.out).writer.as_ref().map(|w| w.connection)
    }

    /// Encodes the next batch for the writer of `generation` into `buf`
    /// (using `push` to add one length-prefixed frame; it returns false for a
    /// frame over the size limit, which is then skipped).
    pub fn next_batch(
        &self,
        generation: u64,
        buf: &mut Vec<u8>,
        batch_bytes: usize,
        mut push: impl FnMut(&mut Vec<u8>, &Frame) -> bool,
    ) -> Batch {
        let mut out = lock(&self.out);
        let fresh = match out.writer.as_mut() {
            Some(w) if w.generation == generation => std::mem::replace(&mut w.fresh, false),
            _ => return Batch::Superseded,
        };
        if out.closed {
            return Batch::Superseded;
        }
        let mut frames = 0u64;
        if fresh {
            let first_seq = out.unacked.front().map_or(out.next_seq, |p| p.seq);
            push(
                buf,
                &Frame::Open {
                    session: self.id,
                    first_seq,
                },
            );
            frames += 1;
        }
        if self.ack_due.swap(false, Ordering::AcqRel) {
            // Lock order: `out`, then `inbound` (never the reverse).
            let ack = {
                let inbound = lock(&self.inbound);
                inbound
                    .remote_session
                    .map(|session| (session, inbound.next_expected.saturating_sub(1)))
            };
            if let Some((session, upto)) = ack.filter(|(_, upto)| *upto > 0) {
                push(buf, &Frame::Ack { session, upto });
                frames += 1;
            }
        }
        if let Some(state) = out.control.take() {
            push(buf, &state);
            frames += 1;
        }
        let now = Instant::now();
        while buf.len() < batch_bytes && out.cursor < out.unacked.len() {
            let cursor = out.cursor;
            let pending = &mut out.unacked[cursor];
            if !push(buf, &pending.frame) {
                tracing::warn!(peer = %self.peer, seq = pending.seq, "frame over the size limit not sent");
            }
            if pending.sends > 0 {
                self.retransmitted.fetch_add(1, Ordering::Relaxed);
            }
            pending.sends += 1;
            pending.sent_at = Some(now);
            out.cursor += 1;
            frames += 1;
        }
        if frames == 0 {
            Batch::Idle
        } else {
            Batch::Ready { frames }
        }
    }

    /// Applies the peer's cumulative acknowledgement.
    pub fn on_ack(&self, session: u64, upto: u64) {
        if session != self.id {
            return;
        }
        let mut out = lock(&self.out);
        let mut sample = None;
        let mut popped = false;
        while out.unacked.front().is_some_and(|p| p.seq <= upto) {
            let Some(p) = out.unacked.pop_front() else {
                break;
            };
            out.bytes -= p.size;
            out.cursor = out.cursor.saturating_sub(1);
            popped = true;
            // Karn: only frames sent once give a clean sample.
            if p.sends == 1 {
                sample = p.sent_at.map(|t| t.elapsed());
            }
        }
        if let Some(sample) = sample {
            out.srtt = Some(match out.srtt {
                Some(srtt) => (srtt * 7 + sample) / 8,
                None => sample,
            });
        }
        if popped {
            out.last_progress = Some(Instant::now());
            out.timeout_fired = false;
            drop(out);
            self.room.notify_waiters();
        }
    }

    /// True once when the oldest unacknowledged frame has waited longer than
    /// `max(4 × SRTT, floor)` plus its transmission time at `min_rate` bytes
    /// per second on the current path (re-armed by progress or a new path).
    /// The wait counts from the frame's send or the last acknowledgement
    /// that made progress, whichever is later (as TCP restarts its
    /// retransmission timer on each new ACK).
    /// The transmission time keeps a large frame on a slow path (1 MiB over
    /// BLE takes seconds) from passing for a dead path.
    pub fn ack_overdue(&self, floor: Duration, min_rate: u64) -> bool {
        let mut out = lock(&self.out);
        if out.timeout_fired || out.writer.is_none() {
            return false;
        }
        let rto = out.srtt.map_or(floor, |s| (s * 4).max(floor));
        let progress = out.last_progress;
        let late = out.unacked.front().is_some_and(|p| {
            let transmission = Duration::from_secs_f64(p.size as f64 / min_rate.max(1) as f64);
            p.sent_at
                .map(|sent| progress.map_or(sent, |t| t.max(sent)))
                .is_some_and(|since| since.elapsed() > rto + transmission)
        });
        if late {
            out.timeout_fired = true;
        }
        late
    }

    /// A link from the peer announced `session` starting at `first_seq`.
    /// Returns true when that is a new session (the peer restarted, or this
    /// is its first link): what we knew of its state is stale. An `Open` of
    /// a session the peer had before the current one is ignored (a late
    /// stream of the old process).
    pub fn on_open(&self, session: u64, first_seq: u64) -> bool {
        let mut inbound = lock(&self.inbound);
        if inbound.remote_session == Some(session) || inbound.retired.contains(&session) {
            return false;
        }
        if let Some(old) = inbound.remote_session.replace(session) {
            if inbound.retired.len() >= MAX_RETIRED_SESSIONS {
                inbound.retired.pop_front();
            }
            inbound.retired.push_back(old);
        }
        inbound.next_expected = first_seq;
        true
    }

    /// Delivers sequenced frame `seq` of `link_session` with `deliver` if it
    /// is new; returns false for a duplicate or a frame of an older session.
    /// Deliveries are serialised, so frames reach the app in order even when
    /// two paths deliver at once. `deliver` must not block or send on this
    /// session.
    pub fn accept(&self, link_session: u64, seq: u64, deliver: impl FnOnce()) -> bool {
        let mut inbound = lock(&self.inbound);
        // `u64::MAX` is never a valid number (a sender would need 2^64
        // frames): refusing it keeps `next_expected` from saturating.
        if inbound.closed
            || inbound.remote_session != Some(link_session)
            || seq < inbound.next_expected
            || seq == u64::MAX
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if seq > inbound.next_expected {
            tracing::warn!(peer = %self.peer, expected = inbound.next_expected, seq, "gap in the peer's session");
        }
        deliver();
        inbound.next_expected = seq.saturating_add(1);
        true
    }

    /// Whether the session ended (readers stop).
    pub fn is_closed(&self) -> bool {
        lock(&self.inbound).closed
    }

    /// Asks the writer to send an acknowledgement soon (coalesced).
    pub fn request_ack(&self) {
        if !self.ack_due.swap(true, Ordering::AcqRel) {
            let notify = lock(&self.out).writer.as_ref().map(|w| w.notify.clone());
            if let Some(notify) = notify {
                notify.notify_one();
            }
        }
    }

    /// Ends the session: queued frames are dropped, senders and the writer stop.
    pub fn close(&self) {
        let writer = {
            let mut out = lock(&self.out);
            out.closed = true;
            out.unacked.clear();
            out.bytes = 0;
            out.cursor = 0;
            out.writer.take()
        };
        if let Some(writer) = writer {
            writer.notify.notify_one();
        }
        lock(&self.inbound).closed = true;
        self.room.notify_waiters();
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        let out = lock(&self.out);
        SessionStats {
            unacked: out.unacked.len(),
            retransmitted: self.retransmitted.load(Ordering::Relaxed),
            duplicates_dropped: self.duplicates.load(Ordering::Relaxed),
            refused_full: self.refused_full.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(n: u8) -> Frame {
        Frame::Publish {
            seq: 0,
            topic: "t".into(),
            payload: Bytes::from(vec![n; 10]),
            ts: 0,
        }
    }

    /// Decodes what a writer batch produced (frames without length prefix,
    /// collected by the test's `push`).
    fn batch(session: &Session, generation: u64) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        match session.next_batch(generation, &mut buf, usize::MAX, |_, f| {
            frames.push(f.clone());
            true
        }) {
            Batch::Ready { frames: n } => assert_eq!(n as usize, frames.len()),
            Batch::Idle => assert!(frames.is_empty()),
            Batch::Superseded => panic!("superseded"),
        }
        frames
    }

    fn limits() -> OutboxLimits {
        OutboxLimits {
            frames: 4,
            bytes: 1 << 20,
            max_payload: 1 << 16,
        }
    }

    #[tokio::test]
    async fn a_new_path_replays_everything_unacknowledged() {
        let s = Session::new(PeerId::random(), limits());
        let state = Frame::State(Default::default());
        let (g1, _) = s.attach(ConnectionId::new_unchecked(1), state.clone());
        for n in 0..3 {
            s.send(publish(n)).await.unwrap();
        }
        let first = batch(&s, g1);
        assert!(matches!(first[0], Frame::Open { first_seq: 1, .. }));
        assert!(matches!(first[1], Frame::State(_)));
        assert_eq!(
            first[2..].iter().map(|f| f.seq()).collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(3)]
        );
        s.on_ack(s.id, 1);
        let (g2, _) = s.attach(ConnectionId::new_unchecked(2), state);
        assert!(matches!(
            s.next_batch(g1, &mut Vec::new(), 1, |_, _| true),
            Batch::Superseded
        ));
        let replay = batch(&s, g2);
        assert!(matches!(replay[0], Frame::Open { first_seq: 2, .. }));
        assert_eq!(
            replay[2..].iter().map(|f| f.seq()).collect::<Vec<_>>(),
            vec![Some(2), Some(3)]
        );
        assert_eq!(s.stats().retransmitted, 2);
    }

    #[tokio::test]
    async fn receiver_delivers_each_number_once_in_order() {
        let s = Session::new(PeerId::random(), limits());
        s.on_open(77, 5);
        let mut got = Vec::new();
        for seq in [5, 6, 5, 6, 7, 4, 8] {
            s.accept(77, seq, || got.push(seq));
        }
        assert_eq!(got, vec![5, 6, 7, 8]);
        // Frames of an unknown (older) session are dropped.
        assert!(!s.accept(76, 9, || panic!("delivered")));
        // The peer restarted: a new session starts over.
        assert!(s.on_open(78, 1));
        assert!(s.accept(78, 1, || {}));
        // A late stream of the old process cannot switch back.
        assert!(!s.on_open(77, 9));
        assert!(s.accept(78, 2, || {}));
        // Huge numbers from the network do not overflow.
        assert!(s.accept(78, u64::MAX - 1, || {}));
        assert!(!s.accept(78, u64::MAX - 1, || {}));
        assert!(!s.accept(78, u64::MAX, || {}));
        assert_eq!(
            s.stats().duplicates_dropped,
            6,
            "three replays, one stale frame, one repeat, one impossible number"
        );
    }

    #[tokio::test]
    async fn full_outbox_refuses_without_a_path_and_waits_with_one() {
        let s = Session::new(PeerId::random(), limits());
        for n in 0..4 {
            s.send(publish(n)).await.unwrap();
        }
        assert_eq!(s.send(publish(9)).await, Err(SendError::Full));
        let (g, _) = s.attach(
            ConnectionId::new_unchecked(1),
            Frame::State(Default::default()),
        );
        let sender = {
            let s = s.clone();
            tokio::spawn(async move { s.send(publish(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !sender.is_finished(),
            "a sender waits for room while a path exists"
        );
        batch(&s, g);
        s.on_ack(s.id, 2);
        assert_eq!(sender.await.unwrap(), Ok(()));
        assert_eq!(s.stats().unacked, 3);
        assert_eq!(s.try_send(publish(6)), Ok(()));
        assert_eq!(
            s.try_send(publish(7)),
            Err(SendError::Busy),
            "try_send never waits"
        );
        let huge = Frame::Publish {
            seq: 0,
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; (1 << 16) + 2048]),
            ts: 0,
        };
        assert_eq!(s.try_send(huge), Err(SendError::TooLarge(1 << 16)));
        s.close();
        assert_eq!(s.send(publish(1)).await, Err(SendError::Closed));
        assert!(s.is_closed());
    }

    #[tokio::test]
    async fn late_acks_are_reported_once_per_path() {
        let s = Session::new(PeerId::random(), limits());
        let (g, _) = s.attach(
            ConnectionId::new_unchecked(1),
            Frame::State(Default::default()),
        );
        s.send(publish(1)).await.unwrap();
        batch(&s, g);
        assert!(!s.ack_overdue(Duration::from_millis(30), u64::MAX));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(s.ack_overdue(Duration::from_millis(30), u64::MAX));
        assert!(
            !s.ack_overdue(Duration::from_millis(30), u64::MAX),
            "reported once"
        );
        s.attach(
            ConnectionId::new_unchecked(2),
            Frame::State(Default::default()),
        );
        assert!(
            !s.ack_overdue(Duration::from_millis(30), u64::MAX),
            "not yet resent"
        );
    }

    #[tokio::test]
    async fn a_large_frame_gets_its_transmission_time_before_it_is_late() {
        let s = Session::new(PeerId::random(), limits());
        let (g, _) = s.attach(
            ConnectionId::new_unchecked(1),
            Frame::State(Default::default()),
        );
        s.send(Frame::Publish {
            seq: 0,
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; 50_000]),
            ts: 0,
        })
        .await
        .unwrap();
        batch(&s, g);
        // 50 kB at 250 kB/s: 200 ms on top of the 30 ms floor.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!s.ack_overdue(Duration::from_millis(30), 250_000));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(s.ack_overdue(Duration::from_millis(30), 250_000));
    }

    #[tokio::test]
    async fn each_acknowledgement_restarts_the_wait_of_the_next_frame() {
        let s = Session::new(PeerId::random(), limits());
        let (g, _) = s.attach(
            ConnectionId::new_unchecked(1),
            Frame::State(Default::default()),
        );
        s.send(publish(1)).await.unwrap();
        s.send(publish(2)).await.unwrap();
        // Both frames leave in one batch, with one send time.
        batch(&s, g);
        // The first is acknowledged after 200 ms (SRTT 200 ms: a wait of
        // 800 ms). The second's wait starts at that acknowledgement, not at
        // the shared send time: not late at 900 ms, late after 1 000 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.on_ack(s.id, 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!s.ack_overdue(Duration::from_millis(40), u64::MAX));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(s.ack_overdue(Duration::from_millis(40), u64::MAX));
    }
}
