//! `GET /v1/subscribe?pattern=…`: a WebSocket streaming matching messages.
//!
//! The subscription is made before the upgrade, so a bad pattern is an HTTP
//! error; once upgraded, the first frame is `{"type":"subscribed"}`, then one
//! `{"type":"message",…}` frame per message. Closing the socket unsubscribes.

use axum::{
    extract::{
        rejection::QueryRejection,
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade},
        Query, State,
    },
    response::{IntoResponse, Response},
};
use tokio::sync::watch;

use atmosphere::Subscription;

use super::{ws, ApiError, ApiState};
use crate::proto::{MessageJson, SubscribeFrame, SubscribeQuery};

/// Subscribes, then upgrades to the streaming socket.
pub async fn subscribe(
    State(state): State<ApiState>,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let upgrade = upgrade.map_err(upgrade_error)?;
    let subscription = state.node.subscribe(&query.pattern).await?;
    tracing::debug!(pattern = %query.pattern, "websocket subscription");
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .max_message_size(state.body_limit())
        .on_upgrade(move |socket| stream(socket, subscription, shutdown))
        .into_response())
}

/// Maps a failed upgrade (not a WebSocket request) to a JSON error.
pub fn upgrade_error(rejection: WebSocketUpgradeRejection) -> ApiError {
    ApiError::new(
        rejection.status(),
        "websocket_required",
        format!(
            "this route needs a WebSocket upgrade: {}",
            rejection.body_text()
        ),
    )
}

/// Forwards messages until the client leaves, the node stops or the daemon shuts down.
async fn stream(
    mut socket: WebSocket,
    mut subscription: Subscription,
    mut shutdown: watch::Receiver<bool>,
) {
    let pattern = subscription.pattern().to_owned();
    let subscribed = SubscribeFrame::Subscribed {
        pattern: pattern.clone(),
    };
    if ws::send_json(&mut socket, &subscribed).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = subscription.recv() => {
                let Some(message) = message else { break };
                let frame = SubscribeFrame::Message(MessageJson::from_message(&message));
                if ws::send_json(&mut socket, &frame).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                // Pings are answered by axum; anything else is ignored.
                Some(Ok(_)) => {}
            },
            () = ws::shutting_down(&mut shutdown) => break,
        }
    }
    tracing::debug!(%pattern, "websocket subscription closed");
    ws::close(socket).await;
}
