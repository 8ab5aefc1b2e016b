//! Pub/sub: subscriptions and publishing.
//!
//! Delivery guarantee: a message goes to every member whose subscription the
//! publisher knows at publish time, through that member's session: it is
//! acknowledged, replayed on a new path after a switch, held in the bounded
//! outbox while the member is briefly unreachable, and de-duplicated by the
//! receiver — exactly once to the app, in publish order per publisher. It is
//! lost only when the member stays unreachable past `Config::outbox_linger`,
//! when the outbox of an unreachable member is full, or when the subscriber's
//! own buffer (`Config::subscription_buffer`) is full (counted in
//! [`Subscription::dropped`]).

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use atmosphere_behaviours::pattern::{validate_topic, Pattern};

use crate::{
    error::Error,
    shared::{read, write, LocalSub, Shared},
    swarm::Command,
    types::Message,
    wire::{Frame, MAX_ANNOUNCED},
};

/// A live subscription: a [`Stream`] of [`Message`]s. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    pattern: String,
    rx: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl Subscription {
    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next message; `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Messages lost because this subscription's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        write(&self.shared.subs).retain(|s| s.id != self.id);
        // If the queue is full the next periodic announcement carries the change.
        let _ = self.commands.try_send(Command::StateChanged);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .finish()
    }
}

/// Adds a local subscription and announces it.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    commands: &mpsc::Sender<Command>,
    pattern: &str,
) -> Result<Subscription, Error> {
    let parsed = Pattern::parse(pattern)?;
    {
        let subs = read(&shared.subs);
        let known = subs.iter().any(|s| s.pattern.as_str() == pattern);
        let distinct: std::collections::HashSet<&str> =
            subs.iter().map(|s| s.pattern.as_str()).collect();
        if !known && distinct.len() >= MAX_ANNOUNCED {
            return Err(Error::Busy(format!(
                "at most {MAX_ANNOUNCED} distinct subscription patterns per node"
            )));
        }
    }
    let (tx, rx) = mpsc::channel(shared.limits.subscription_buffer);
    let id = shared.next_sub.fetch_add(1, Ordering::Relaxed);
    let dropped = Arc::new(AtomicU64::new(0));
    write(&shared.subs).push(LocalSub {
        id,
        pattern: parsed,
        tx,
        dropped: dropped.clone(),
    });
    commands
        .send(Command::StateChanged)
        .await
        .map_err(|_| Error::Shutdown)?;
    Ok(Subscription {
        id,
        pattern: pattern.to_owned(),
        rx,
        dropped,
        shared: shared.clone(),
        commands: commands.clone(),
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes: local subscribers first, then one frame per connected remote
/// subscriber. Returns how many remote subscribers it was sent to.
pub(crate) async fn publish(shared: &Shared, topic: &str, payload: Bytes) -> Result<usize, Error> {
    validate_topic(topic)?;
    if payload.len() > shared.limits.max_payload {
        return Err(Error::PayloadTooLarge {
            len: payload.len(),
            max: shared.limits.max_payload,
        });
    }
    if !read(&shared.own_acl).may_publish(topic) {
        return Err(Error::Denied(format!(
            "our certificates do not allow publishing to `{topic}`"
        )));
    }
    let ts = now_ms();
    shared.deliver_local(&Message {
        topic: topic.to_owned(),
        payload: payload.clone(),
        sender: shared.local_peer,
        timestamp_ms: ts,
    });
    let sessions = shared.subscriber_sessions(topic);
    let mut sent = 0;
    for session in sessions {
        let frame = Frame::Publish {
            seq: 0,
            topic: topic.to_owned(),
            payload: payload.clone(),
            ts,
        };
        match session.send(frame).await {
            Ok(()) => sent += 1,
            Err(error) => {
                tracing::debug!(peer = %session.peer(), %error, "message not queued for a subscriber")
            }
        }
    }
    Ok(sent)
}
