//! `GET /v1/register?uri=…`: serve an RPC URI from a WebSocket client.
//!
//! The URI is registered on the node before the upgrade (so a bad or taken
//! URI is an HTTP error). Each call becomes a `{"type":"call","id",…}` frame;
//! the client answers `{"id", "result" | "result_base64" | "error" | "denied"}`.
//! At most [`MAX_IN_FLIGHT`] calls wait for answers per socket; each waits at
//! most the socket's timeout. When the socket closes the URI is unregistered.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{
        rejection::QueryRejection,
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade},
        Query, State,
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use atmosphere::{HandlerError, Node, Request};

use super::{ws, ws_subscribe::upgrade_error, ApiError, ApiState};
use crate::proto::{
    bytes_to_json, decode_base64, encode_base64, CallFrame, RegisterFrame, RegisterQuery,
    ReplyFrame,
};

/// Calls awaiting an answer from one socket, at most; further calls wait for a slot.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a call waits for its answer unless the client asks otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest per-call timeout a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The answer a handler waits for.
type Answer = Result<Bytes, HandlerError>;

/// A call handed from the node's handler to the socket task.
struct PendingCall {
    request: Request,
    answer: oneshot::Sender<Answer>,
}

/// Registers the URI with a forwarding handler, then upgrades.
pub async fn register(
    State(state): State<ApiState>,
    query: Result<Query<RegisterQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let upgrade = upgrade.map_err(upgrade_error)?;
    let timeout = match query.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(ms) if ms > 0 && Duration::from_millis(ms) <= MAX_TIMEOUT => Duration::from_millis(ms),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeout_ms must be between 1 and {}",
                MAX_TIMEOUT.as_millis()
            )))
        }
    };
    let (calls_tx, calls_rx) = mpsc::channel(MAX_IN_FLIGHT);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let handler = move |request: Request| {
        let calls = calls_tx.clone();
        let slots = Arc::clone(&slots);
        async move { forward(calls, slots, request, timeout).await }
    };
    let uri = query.uri;
    state.node.register(&uri, handler).await?;
    tracing::info!(%uri, "registered over the local API");

    let session = Session {
        node: state.node.clone(),
        uri,
        max_payload: state.max_payload,
    };
    let failed = session.clone();
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .max_message_size(state.body_limit())
        .on_failed_upgrade(move |error| {
            tracing::debug!(%error, uri = %failed.uri, "websocket upgrade failed");
            tokio::spawn(async move { failed.unregister().await });
        })
        .on_upgrade(move |socket| async move {
            session.serve(socket, calls_rx, shutdown).await;
            session.unregister().await;
        })
        .into_response())
}

/// Runs in the node's handler: hands the call to the socket task and waits.
async fn forward(
    calls: mpsc::Sender<PendingCall>,
    slots: Arc<Semaphore>,
    request: Request,
    timeout: Duration,
) -> Answer {
    let disconnected = || HandlerError::Failed("the handler disconnected".to_owned());
    let work = async {
        let _slot = slots.acquire_owned().await.map_err(|_| disconnected())?;
        let (answer, answered) = oneshot::channel();
        calls
            .send(PendingCall { request, answer })
            .await
            .map_err(|_| disconnected())?;
        answered.await.map_err(|_| disconnected())?
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        HandlerError::Failed(format!(
            "the handler did not answer within {}",
            humantime::format_duration(timeout)
        ))
    })?
}

/// One registered URI and its socket.
#[derive(Clone)]
struct Session {
    node: Node,
    uri: String,
    max_payload: usize,
}

impl Session {
    /// Exchanges frames until the client leaves or the daemon shuts down.
    async fn serve(
        &self,
        mut socket: WebSocket,
        mut calls: mpsc::Receiver<PendingCall>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let registered = RegisterFrame::Registered {
            uri: self.uri.clone(),
        };
        if ws::send_json(&mut socket, &registered).await.is_err() {
            return;
        }
        let mut pending: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
        let mut next_id: u64 = 1;
        loop {
            tokio::select! {
                call = calls.recv() => {
                    let Some(call) = call else { break };
                    // Forget calls whose handler already gave up (timeout).
                    pending.retain(|_, answer| !answer.is_closed());
                    let id = next_id;
                    next_id += 1;
                    let frame = RegisterFrame::Call(CallFrame {
                        id,
                        uri: call.request.uri.clone(),
                        caller: call.request.caller.to_string(),
                        args: bytes_to_json(&call.request.args),
                        args_base64: encode_base64(&call.request.args),
                    });
                    if ws::send_json(&mut socket, &frame).await.is_err() {
                        break;
                    }
                    pending.insert(id, call.answer);
                }
                incoming = socket.recv() => {
                    let reply = match incoming {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(Message::Text(text))) => serde_json::from_str::<ReplyFrame>(text.as_str()),
                        Some(Ok(Message::Binary(data))) => serde_json::from_slice::<ReplyFrame>(&data),
                        Some(Ok(_)) => continue,
                    };
                    let problem = match reply {
                        Ok(reply) => self.deliver(reply, &mut pending).err(),
                        Err(e) => Some(format!("not a reply frame: {e}")),
                    };
                    if let Some(error) = problem {
                        tracing::debug!(uri = %self.uri, %error, "bad frame from handler client");
                        if ws::send_json(&mut socket, &RegisterFrame::Error { error }).await.is_err() {
                            break;
                        }
                    }
                }
                () = ws::shutting_down(&mut shutdown) => break,
            }
        }
        // Dropping `pending` fails the waiting calls with "disconnected".
        drop(pending);
        ws::close(socket).await;
    }

    /// Hands a reply to the call waiting for it.
    fn deliver(
        &self,
        reply: ReplyFrame,
        pending: &mut HashMap<u64, oneshot::Sender<Answer>>,
    ) -> Result<(), String> {
        let id = reply.id;
        let answer = self.answer_of(reply);
        let Some(waiting) = pending.remove(&id) else {
            // Late (timed out) or unknown: nobody waits for it any more.
            tracing::debug!(uri = %self.uri, id, "reply to a call nobody awaits");
            return Ok(());
        };
        match answer {
            Ok(answer) => {
                let _ = waiting.send(answer);
                Ok(())
            }
            Err(problem) => {
                let _ = waiting.send(Err(HandlerError::Failed(problem.clone())));
                Err(format!("call {id}: {problem}"))
            }
        }
    }

    /// What the caller gets for a reply; `Err` when the reply itself is malformed.
    fn answer_of(&self, reply: ReplyFrame) -> Result<Answer, String> {
        let given = [
            reply.result.is_some(),
            reply.result_base64.is_some(),
            reply.error.is_some(),
            reply.denied.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err("give at most one of result, result_base64, error and denied".to_owned());
        }
        if let Some(message) = reply.error {
            return Ok(Err(HandlerError::Failed(message)));
        }
        if let Some(message) = reply.denied {
            return Ok(Err(HandlerError::Denied(message)));
        }
        let bytes = match (reply.result, reply.result_base64) {
            (Some(value), _) => serde_json::to_vec(&value).map_err(|e| e.to_string())?,
            (None, Some(encoded)) => {
                decode_base64(&encoded).map_err(|e| format!("result_base64 is not base64: {e}"))?
            }
            (None, None) => Vec::new(),
        };
        if bytes.len() > self.max_payload {
            return Err(format!(
                "result of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                self.max_payload
            ));
        }
        Ok(Ok(Bytes::from(bytes)))
    }

    /// Removes the registration (the socket is gone).
    async fn unregister(&self) {
        match self.node.unregister(&self.uri).await {
            Ok(_) => tracing::info!(uri = %self.uri, "unregistered (socket closed)"),
            Err(error) => tracing::debug!(uri = %self.uri, %error, "unregister failed"),
        }
    }
}
