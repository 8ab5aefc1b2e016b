//! `GET /v1/peers/watch`: a WebSocket streaming member status changes.
//!
//! The daemon listens to the node's peer events and takes a snapshot of the
//! peers before the upgrade (so no change falls between the two, and a
//! stopping node is an HTTP error). Once upgraded, the first frame is
//! `{"type":"peers","peers":[…]}`, then one `{"type":"event",…}` frame per
//! change. The node keeps a bounded event buffer per watcher; a socket that
//! falls behind gets `{"type":"lagged","missed":n}` followed by a fresh
//! `peers` frame, and keeps streaming.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade},
        State,
    },
    response::{IntoResponse, Response},
};
use tokio::sync::{broadcast, watch};

use atmosphere::{Node, PeerEvent, PeerInfo};

use super::{ws, ws_subscribe::upgrade_error, ApiError, ApiState};
use crate::proto::{PeerEventJson, WatchFrame};

/// Largest message a watcher may send (it has nothing to say).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Least time between two name lookups for unnamed peers, per socket.
const NAME_LOOKUP_INTERVAL: Duration = Duration::from_secs(5);

/// Starts listening to peer events, takes the snapshot, then upgrades.
pub async fn watch(
    State(state): State<ApiState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(upgrade_error)?;
    // Subscribe first: a change during the snapshot is then streamed too.
    let events = state.node.peer_events();
    let peers = state.node.peers().await?;
    tracing::debug!(peers = peers.len(), "websocket peer watch");
    let watcher = Watcher {
        node: state.node.clone(),
        names: Names::default(),
    };
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| watcher.stream(socket, peers, events, shutdown))
        .into_response())
}

/// Peer names known to one socket (events carry only the peer id).
#[derive(Default)]
struct Names {
    known: HashMap<String, Option<String>>,
    /// When the names were last looked up for an unnamed peer.
    refreshed: Option<Instant>,
}

impl Names {
    /// Remembers the names of `peers`.
    fn learn(&mut self, peers: &[PeerInfo]) {
        for peer in peers {
            self.known.insert(peer.peer_id.clone(), peer.name.clone());
        }
    }

    /// The name, if known.
    fn get(&self, peer_id: &str) -> Option<String> {
        self.known.get(peer_id).cloned().flatten()
    }

    /// Whether an unnamed peer justifies asking the node again (rate-limited).
    fn lookup_due(&self) -> bool {
        self.refreshed
            .is_none_or(|at| at.elapsed() >= NAME_LOOKUP_INTERVAL)
    }
}

/// One watching socket.
struct Watcher {
    node: Node,
    names: Names,
}

impl Watcher {
    /// Streams events until the client leaves, the node stops or the daemon shuts down.
    async fn stream(
        mut self,
        mut socket: WebSocket,
        peers: Vec<PeerInfo>,
        mut events: broadcast::Receiver<PeerEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if self.send_peers(&mut socket, peers).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                event = events.recv() => {
                    let sent = match event {
                        Ok(event) => {
                            let name = self.name_of(&event.peer_id).await;
                            let frame = WatchFrame::Event(PeerEventJson::from_event(event, name));
                            ws::send_json(&mut socket, &frame).await
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "peer watch lagged");
                            self.resync(&mut socket, missed).await
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if sent.is_err() {
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
        tracing::debug!("websocket peer watch closed");
        ws::close(socket).await;
    }

    /// Sends a `peers` frame and remembers the names in it.
    async fn send_peers(
        &mut self,
        socket: &mut WebSocket,
        peers: Vec<PeerInfo>,
    ) -> Result<(), axum::Error> {
        self.names.learn(&peers);
        ws::send_json(socket, &WatchFrame::Peers { peers }).await
    }

    /// After lost events: says how many, then sends the current state.
    async fn resync(&mut self, socket: &mut WebSocket, missed: u64) -> Result<(), axum::Error> {
        ws::send_json(socket, &WatchFrame::Lagged { missed }).await?;
        match self.node.peers().await {
            Ok(peers) => self.send_peers(socket, peers).await,
            // The node is stopping: the event stream ends next.
            Err(error) => {
                tracing::debug!(%error, "no peer snapshot after lag");
                Ok(())
            }
        }
    }

    /// The peer's name. An unnamed peer (new, or its name not announced yet)
    /// makes the socket look the names up again, at most every
    /// [`NAME_LOOKUP_INTERVAL`].
    async fn name_of(&mut self, peer_id: &str) -> Option<String> {
        if let Some(name) = self.names.get(peer_id) {
            return Some(name);
        }
        if !self.names.lookup_due() {
            return None;
        }
        self.names.refreshed = Some(Instant::now());
        if let Ok(peers) = self.node.peers().await {
            self.names.learn(&peers);
        }
        self.names.get(peer_id)
    }
}
