//! RPC: handlers, calls and the provider side of requests.
//!
//! A call goes to a local handler when one is registered (and no other peer
//! was asked for), else to a connected peer that announced the URI (the one
//! with the lowest measured round-trip time), as one [`Frame::Request`] in
//! the provider's session; the answer comes back as a [`Frame::Response`]
//! with the same id. Both travel through the sessions, so a call survives a
//! path switch, and the provider runs each request exactly once.

use std::{
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use bytes::Bytes;
use libp2p::PeerId;
use tokio::sync::oneshot;

use atmosphere_behaviours::pattern::validate_topic;

use crate::{
    error::RpcError,
    session::{SendError, Session},
    shared::{lock, read, PendingCall, Shared},
    types::{CallOptions, Request},
    wire::{CallResult, Frame},
};

/// Why a handler refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The handler refuses this caller (the caller sees [`RpcError::Denied`]).
    #[error("denied: {0}")]
    Denied(String),
    /// The handler failed (the caller sees [`RpcError::Remote`]).
    #[error("{0}")]
    Failed(String),
}

/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

/// Serves RPC calls to one URI. Implemented for every
/// `Fn(Request) -> impl Future<Output = Result<Bytes, HandlerError>>`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        Box::pin(self(request))
    }
}

fn from_wire(uri: &str, result: CallResult) -> Result<Bytes, RpcError> {
    match result {
        CallResult::Ok(bytes) => Ok(bytes),
        CallResult::NoProvider => Err(RpcError::NoProvider(uri.to_owned())),
        CallResult::Denied(reason) => Err(RpcError::Denied(reason)),
        CallResult::Remote(message) => Err(RpcError::Remote(message)),
        CallResult::Busy => Err(RpcError::Transport(
            "the provider is overloaded (too many handlers running)".into(),
        )),
    }
}

fn to_wire(result: Result<Bytes, HandlerError>) -> CallResult {
    match result {
        Ok(bytes) => CallResult::Ok(bytes),
        Err(HandlerError::Denied(reason)) => CallResult::Denied(reason),
        Err(HandlerError::Failed(message)) => CallResult::Remote(message),
    }
}

/// Makes a call (see the module docs).
pub(crate) async fn call(
    shared: &Shared,
    uri: &str,
    args: Bytes,
    options: CallOptions,
) -> Result<Bytes, RpcError> {
    validate_topic(uri).map_err(|e| RpcError::Invalid(e.to_string()))?;
    if args.len() > shared.limits.max_payload {
        return Err(RpcError::Invalid(format!(
            "arguments of {} bytes exceed the limit of {} bytes",
            args.len(),
            shared.limits.max_payload
        )));
    }
    let local = options.peer.is_none_or(|p| p == shared.local_peer);
    if local {
        let handler = read(&shared.handlers).get(uri).cloned();
        match handler {
            Some(handler) => {
                let request = Request {
                    uri: uri.to_owned(),
                    args,
                    caller: shared.local_peer,
                };
                return match tokio::time::timeout(options.timeout, handler.call(request)).await {
                    Ok(result) => from_wire(uri, to_wire(result)),
                    Err(_) => Err(RpcError::Timeout(options.timeout)),
                };
            }
            None if options.peer.is_some() => return Err(RpcError::NoProvider(uri.to_owned())),
            None => {}
        }
    }
    let (peer, session) = match shared.provider(uri, options.peer) {
        Some(found) => found,
        None if options.peer.is_some() => {
            return Err(RpcError::Transport(format!(
                "not connected to {}",
                options.peer.map(|p| p.to_string()).unwrap_or_default()
            )))
        }
        None => return Err(RpcError::NoProvider(uri.to_owned())),
    };
    let id = shared.next_call.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    {
        let mut pending = lock(&shared.pending);
        if pending.len() >= shared.limits.max_pending_calls {
            return Err(RpcError::Transport(format!(
                "too many calls in flight (at most {})",
                shared.limits.max_pending_calls
            )));
        }
        pending.insert(id, PendingCall { peer, tx });
    }
    let frame = Frame::Request {
        seq: 0,
        id,
        uri: uri.to_owned(),
        args,
    };
    let outcome = tokio::time::timeout(options.timeout, async {
        session
            .send(frame)
            .await
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        match rx.await {
            Ok(Ok(result)) => from_wire(uri, result),
            Ok(Err(reason)) => Err(RpcError::Transport(reason)),
            Err(_) => Err(RpcError::Transport("the call was abandoned".into())),
        }
    })
    .await;
    lock(&shared.pending).remove(&id);
    outcome.unwrap_or(Err(RpcError::Timeout(options.timeout)))
}

/// Serves a request that arrived from `caller` on its link: checks the
/// caller's ACL, finds the handler, runs it (bounded by the handler
/// semaphore) and sends the response on `reply`.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    caller: PeerId,
    id: u64,
    uri: String,
    args: Bytes,
    reply: Arc<Session>,
) {
    let allowed = read(&shared.remotes)
        .get(&caller)
        .is_some_and(|r| r.acl.may_call(&uri));
    // Refusals are queued only if the outbox has room now: a caller that
    // floods requests and never acknowledges cannot pile up reply tasks.
    let respond = |result: CallResult| {
        if let Err(error) = reply.try_send(Frame::Response { seq: 0, id, result }) {
            tracing::debug!(%caller, %error, "refusal not sent");
        }
    };
    if !allowed {
        respond(CallResult::Denied(format!(
            "this member may not call `{uri}`"
        )));
        return;
    }
    let Some(handler) = read(&shared.handlers).get(&uri).cloned() else {
        respond(CallResult::NoProvider);
        return;
    };
    let Ok(permit) = shared.handler_slots.clone().try_acquire_owned() else {
        respond(CallResult::Busy);
        return;
    };
    tokio::spawn(async move {
        let result = to_wire(handler.call(Request { uri, args, caller }).await);
        // The handler slot is held until the answer is queued, so a caller
        // that stops acknowledging ends up refused with `Busy`.
        let answer = Frame::Response { seq: 0, id, result };
        if let Err(SendError::TooLarge(max)) = reply.send(answer).await {
            let _ = reply
                .send(Frame::Response {
                    seq: 0,
                    id,
                    result: CallResult::Remote(format!(
                        "the handler's answer exceeds the payload limit of {max} bytes"
                    )),
                })
                .await;
        }
        drop(permit);
    });
}

/// Completes a pending call with the answer from `peer`.
pub(crate) fn complete(shared: &Shared, peer: PeerId, id: u64, result: CallResult) {
    let mut pending = lock(&shared.pending);
    if pending.get(&id).is_some_and(|c| c.peer == peer) {
        if let Some(call) = pending.remove(&id) {
            let _ = call.tx.send(Ok(result));
        }
    }
}
