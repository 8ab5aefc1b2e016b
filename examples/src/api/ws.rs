//! Helpers shared by the WebSocket routes.

use axum::extract::ws::{Message, WebSocket};
use serde::Serialize;
use tokio::sync::watch;

/// Sends `frame` as one JSON text message.
pub async fn send_json<T: Serialize>(socket: &mut WebSocket, frame: &T) -> Result<(), axum::Error> {
    let text = serde_json::to_string(frame).map_err(axum::Error::new)?;
    socket.send(Message::Text(text.into())).await
}

/// Resolves once the daemon starts shutting down (or its signal is gone).
pub async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Closes the socket politely, ignoring a peer that is already gone.
pub async fn close(mut socket: WebSocket) {
    let _ = socket.send(Message::Close(None)).await;
}
