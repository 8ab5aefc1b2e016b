//! State shared between the swarm task and the data path (link readers,
//! publishers, callers). Locks are `std` locks held only for short,
//! non-async sections; nothing awaits while holding one.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

use atmosphere_behaviours::{
    membership::cert::Acl,
    pattern::{split_topic, Pattern, MAX_SEGMENTS},
};
use libp2p::{swarm::ConnectionId, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use crate::{
    rpc::Handler,
    session::{OutboxLimits, Session},
    types::{Message, PeerEvent},
    wire::{CallResult, NetworkState},
};

/// Read-locks, recovering from poisoning (a panicked holder cannot leave
/// these maps half-updated in a way that matters more than losing the node).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks, recovering from poisoning.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Locks a mutex, recovering from poisoning.
pub(crate) fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Limits copied from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_payload: usize,
    pub subscription_buffer: usize,
    pub max_pending_calls: usize,
}

impl Limits {
    /// Largest frame on a link: payload plus room for topic, ids and CBOR.
    pub fn max_frame(&self) -> usize {
        self.max_payload + 64 * 1024
    }
}

/// A local subscription.
pub(crate) struct LocalSub {
    pub id: u64,
    pub pattern: Pattern,
    pub tx: mpsc::Sender<Message>,
    pub dropped: Arc<AtomicU64>,
}

/// What we know about a verified member we are or were recently connected
/// to. A disconnected member stays for `Config::outbox_linger` so that frames
/// for it wait in its session's outbox.
pub(crate) struct Remote {
    pub acl: Acl,
    pub name: Option<String>,
    pub subscriptions: Vec<Pattern>,
    pub registrations: HashSet<String>,
    pub state_seq: u64,
    pub session: Arc<Session>,
    /// Whether at least one connection to it is open.
    pub connected: bool,
    /// Since when it has had no connection.
    pub disconnected_at: Option<Instant>,
    pub rtt: Option<Duration>,
}

impl Remote {
    pub fn new(acl: Acl, session: Arc<Session>) -> Self {
        Self {
            acl,
            name: None,
            subscriptions: Vec::new(),
            registrations: HashSet::new(),
            state_seq: 0,
            session,
            connected: true,
            disconnected_at: None,
            rtt: None,
        }
    }

    /// Applies a state record; returns false if it is older than the one held.
    pub fn apply_state(&mut self, state: &NetworkState) -> bool {
        if state.seq < self.state_seq {
            return false;
        }
        self.state_seq = state.seq;
        self.name = Some(state.name.clone()).filter(|n| !n.is_empty());
        self.subscriptions = state
            .subscriptions
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        self.registrations = state.registrations.iter().cloned().collect();
        true
    }
}

/// A call awaiting its answer.
pub(crate) struct PendingCall {
    pub peer: PeerId,
    /// `Err` carries a transport failure (the link to the provider was lost).
    pub tx: oneshot::Sender<Result<CallResult, String>>,
}

/// Shared state of one node.
pub(crate) struct Shared {
    pub local_peer: PeerId,
    pub limits: Limits,
    pub subs: RwLock<Vec<LocalSub>>,
    pub next_sub: AtomicU64,
    pub handlers: RwLock<HashMap<String, Arc<dyn Handler>>>,
    pub remotes: RwLock<HashMap<PeerId, Remote>>,
    pub pending: Mutex<HashMap<u64, PendingCall>>,
    pub next_call: AtomicU64,
    pub handler_slots: Arc<Semaphore>,
    /// Union of our own certificates' permissions.
    pub own_acl: RwLock<Acl>,
    /// App-channel traffic counters.
    pub traffic: TrafficCounters,
    /// App-channel bytes per connection (sent, received); entries are removed
    /// when the connection closes.
    pub path_traffic: Mutex<HashMap<ConnectionId, (u64, u64)>>,
    /// Outbox bounds for new sessions.
    pub outbox: OutboxLimits,
    /// Member status changes, for watchers (a bounded broadcast: a slow
    /// watcher misses events and is told how many).
    pub peer_events: broadcast::Sender<PeerEvent>,
    /// Pairing session updates, for watchers (bounded like `peer_events`).
    pub pairing_events: broadcast::Sender<crate::types::PairingSession>,
}

/// Member status events buffered per watcher.
pub(crate) const PEER_EVENT_BUFFER: usize = 256;

/// Frames and bytes on app channels (frame bytes, before noise and the
/// multiplexer add their own framing).
#[derive(Debug, Default)]
pub(crate) struct TrafficCounters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl TrafficCounters {
    pub fn snapshot(&self) -> crate::types::Traffic {
        crate::types::Traffic {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    pub fn new(
        local_peer: PeerId,
        limits: Limits,
        max_handlers: usize,
        outbox: OutboxLimits,
    ) -> Self {
        Self {
            local_peer,
            limits,
            subs: RwLock::new(Vec::new()),
            next_sub: AtomicU64::new(1),
            handlers: RwLock::new(HashMap::new()),
            remotes: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            handler_slots: Arc::new(Semaphore::new(max_handlers)),
            own_acl: RwLock::new(Acl::default()),
            traffic: TrafficCounters::default(),
            path_traffic: Mutex::new(HashMap::new()),
            outbox,
            peer_events: broadcast::channel(PEER_EVENT_BUFFER).0,
            pairing_events: broadcast::channel(PEER_EVENT_BUFFER).0,
        }
    }

    /// Counts app bytes written on `connection`.
    pub fn count_path_sent(&self, connection: ConnectionId, bytes: usize) {
        // Entries exist from establishment to close only (no re-creation by
        // a writer or reader still draining a closed connection).
        if let Some(entry) = lock(&self.path_traffic).get_mut(&connection) {
            entry.0 += bytes as u64;
        }
    }

    /// Counts app bytes read on `connection`.
    pub fn count_path_received(&self, connection: ConnectionId, bytes: usize) {
        if let Some(entry) = lock(&self.path_traffic).get_mut(&connection) {
            entry.1 += bytes as u64;
        }
    }

    /// App bytes (sent, received) on `connection`.
    pub fn path_bytes(&self, connection: ConnectionId) -> (u64, u64) {
        lock(&self.path_traffic)
            .get(&connection)
            .copied()
            .unwrap_or_default()
    }

    /// Hands `message` to every matching local subscription. A full
    /// subscription buffer drops the message for that subscriber (counted).
    pub fn deliver_local(&self, message: &Message) -> usize {
        let mut segments = [""; MAX_SEGMENTS];
        let Some(n) = split_topic(&message.topic, &mut segments) else {
            return 0;
        };
        let segments = &segments[..n];
        let subs = read(&self.subs);
        let mut delivered = 0;
        for sub in subs.iter().filter(|s| s.pattern.matches_segments(segments)) {
            match sub.tx.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pattern = %sub.pattern, "subscriber too slow: message dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Sessions of members subscribed to `topic` and allowed to receive it
    /// (including members briefly disconnected: their outbox holds the frame).
    pub fn subscriber_sessions(&self, topic: &str) -> Vec<Arc<Session>> {
        let mut segments = [""; MAX_SEGMENTS];
        let Some(n) = split_topic(topic, &mut segments) else {
            return Vec::new();
        };
        let segments = &segments[..n];
        read(&self.remotes)
            .values()
            .filter(|r| {
                r.subscriptions.iter().any(|p| p.matches_segments(segments))
                    && r.acl.may_subscribe(topic)
            })
            .map(|r| r.session.clone())
            .collect()
    }

    /// The session of member `peer`, if known.
    pub fn session(&self, peer: &PeerId) -> Option<Arc<Session>> {
        read(&self.remotes).get(peer).map(|r| r.session.clone())
    }

    /// A provider of `uri`: `wanted` if given (connected or in its outbox
    /// linger), else the connected provider with the lowest measured RTT.
    pub fn provider(&self, uri: &str, wanted: Option<PeerId>) -> Option<(PeerId, Arc<Session>)> {
        let remotes = read(&self.remotes);
        if let Some(peer) = wanted {
            return remotes.get(&peer).map(|r| (peer, r.session.clone()));
        }
        remotes
            .iter()
            .filter(|(_, r)| r.connected && r.registrations.contains(uri))
            .min_by_key(|(_, r)| r.rtt.unwrap_or(Duration::MAX))
            .map(|(p, r)| (*p, r.session.clone()))
    }

    /// Forgets a member: ends its session and fails its outstanding calls.
    pub fn remove_remote(&self, peer: &PeerId) {
        let removed = write(&self.remotes).remove(peer);
        if let Some(remote) = removed {
            remote.session.close();
        }
        let failed: Vec<PendingCall> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, c)| c.peer == *peer)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for call in failed {
            let _ = call
                .tx
                .send(Err("the connection to the provider was lost".into()));
        }
    }

    /// Number of members with an open connection.
    pub fn connected_count(&self) -> usize {
        read(&self.remotes).values().filter(|r| r.connected).count()
    }

    /// Our subscription patterns, de-duplicated.
    pub fn subscription_patterns(&self) -> Vec<String> {
        let mut patterns: Vec<String> = read(&self.subs)
            .iter()
            .map(|s| s.pattern.as_str().to_owned())
            .collect();
        patterns.sort();
        patterns.dedup();
        patterns
    }

    /// Our registered URIs.
    pub fn registration_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = read(&self.handlers).keys().cloned().collect();
        uris.sort();
        uris
    }
}
