//! Peer links: the tasks that write and read frames on channel streams.
//!
//! Each verified peer has one outbound channel stream (ours to write, on the
//! path the connection train chose) and one or more inbound streams (theirs,
//! which we read; during a path switch the old and the new one overlap). The
//! writer takes frames from the peer's [`Session`] outbox in batches of up to
//! [`BATCH_BYTES`], writes a batch with one `write_all` and flushes once, so
//! many small messages share a multiplexer frame. The reader decodes frames,
//! lets the session drop duplicates, and dispatches them without going
//! through the swarm task, except for state records and path moves.

use std::sync::{atomic::Ordering, Arc};

use futures::{io::BufReader, AsyncWriteExt};
use libp2p::{swarm::ConnectionId, PeerId, Stream};
use tokio::sync::{mpsc, Notify};

use atmosphere_behaviours::{channel::protocol, pattern::validate_topic};

use crate::{
    rpc,
    session::{Batch, Session},
    shared::{read, write, Shared},
    swarm::Command,
    types::Message,
    wire::{self, Frame},
};

/// Bytes collected into one write.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Encodes `frame` into `buf` with its length prefix; false if too large.
fn push_frame(buf: &mut Vec<u8>, frame: &Frame, max: usize) -> bool {
    let start = buf.len();
    buf.extend_from_slice(&[0; protocol::FRAME_HEADER_LEN]);
    wire::encode_frame(frame, buf);
    let len = buf.len() - start - protocol::FRAME_HEADER_LEN;
    match u32::try_from(len) {
        Ok(len32) if len <= max => {
            buf[start..start + protocol::FRAME_HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
            true
        }
        _ => {
            buf.truncate(start);
            false
        }
    }
}

/// Writes `session`'s frames on `stream` (the path on `connection`) until a
/// newer path takes over, the session ends or the stream fails; on failure
/// the session is detached from this path and the swarm task is told.
pub(crate) async fn run_writer(
    session: Arc<Session>,
    generation: u64,
    wake: Arc<Notify>,
    connection: ConnectionId,
    mut stream: Stream,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
) {
    let peer = session.peer();
    let max_frame = shared.limits.max_frame();
    let traffic = &shared.traffic;
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let result: std::io::Result<bool> = async {
        loop {
            buf.clear();
            match session.next_batch(generation, &mut buf, BATCH_BYTES, |buf, frame| {
                push_frame(buf, frame, max_frame)
            }) {
                Batch::Superseded => return Ok(true),
                Batch::Idle => wake.notified().await,
                Batch::Ready { frames } => {
                    traffic.frames_sent.fetch_add(frames, Ordering::Relaxed);
                    traffic
                        .bytes_sent
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    shared.count_path_sent(connection, buf.len());
                    stream.write_all(&buf).await?;
                    stream.flush().await?;
                }
            }
        }
    }
    .await;
    match result {
        Ok(_) => {
            // Superseded: close our half so the peer's reader ends cleanly.
            let _ = stream.close().await;
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "link writer stopped");
            session.detach(generation);
            let _ = commands
                .send(Command::LinkClosed { peer, connection })
                .await;
        }
    }
}

/// Reads frames from `peer`'s stream on `connection` and dispatches them.
pub(crate) async fn run_reader(
    session: Arc<Session>,
    connection: ConnectionId,
    stream: Stream,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
) {
    let peer = session.peer();
    let max_frame = shared.limits.max_frame();
    let mut reader = BufReader::with_capacity(BATCH_BYTES, stream);
    let mut buf = Vec::new();
    // The peer's session this link belongs to (from its `Open` frame).
    let mut link_session: Option<u64> = None;
    // Sequenced frames read but not yet acknowledged.
    let mut ack_owed = false;
    loop {
        match next_frame(&mut reader, &mut buf, max_frame).await {
            Ok(Some(frame)) => {
                let traffic = &shared.traffic;
                let len = buf.len() + protocol::FRAME_HEADER_LEN;
                traffic.frames_received.fetch_add(1, Ordering::Relaxed);
                traffic
                    .bytes_received
                    .fetch_add(len as u64, Ordering::Relaxed);
                shared.count_path_received(connection, len);
                match frame {
                    Frame::Open {
                        session: id,
                        first_seq,
                    } => {
                        if session.on_open(id, first_seq) {
                            // A new session (the peer restarted): its state
                            // record numbers start over.
                            if let Some(remote) = write(&shared.remotes).get_mut(&peer) {
                                remote.state_seq = 0;
                            }
                        }
                        link_session = Some(id);
                        let _ = commands.send(Command::PeerMoved { peer, connection }).await;
                    }
                    Frame::Ack { session: id, upto } => session.on_ack(id, upto),
                    Frame::State(state) => {
                        let _ = commands
                            .send(Command::RemoteState {
                                peer,
                                state: state.bounded(),
                            })
                            .await;
                    }
                    frame => {
                        let (Some(link_session), Some(seq)) = (link_session, frame.seq()) else {
                            let reason = "sequenced frame before the link's Open".to_owned();
                            let _ = commands.send(Command::Misbehaved { peer, reason }).await;
                            break;
                        };
                        session.accept(link_session, seq, || {
                            dispatch(peer, frame, &shared, &session)
                        });
                        // Duplicates are acknowledged again too: the
                        // sender may have missed our earlier ack.
                        ack_owed = true;
                        if session.is_closed() {
                            break;
                        }
                    }
                }
                // One ack per read burst: once nothing more is buffered.
                if ack_owed && reader.buffer().is_empty() {
                    ack_owed = false;
                    session.request_ack();
                }
            }
            Ok(None) => break,
            Err(reason) => {
                let _ = commands.send(Command::Misbehaved { peer, reason }).await;
                break;
            }
        }
    }
}

/// The next frame; `Ok(None)` when the stream ended or failed at the I/O
/// level, `Err` with a reason when the peer sent something malformed.
async fn next_frame<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_frame: usize,
) -> Result<Option<Frame>, String> {
    match protocol::read_frame(reader, buf, max_frame).await {
        Ok(true) => wire::decode_frame(buf).map(Some).map_err(|e| e.to_string()),
        Ok(false) => Ok(None),
        Err(protocol::FrameError::Io(error)) => {
            tracing::debug!(%error, "link reader stopped");
            Ok(None)
        }
        // A connection torn down mid-frame (peer killed, path closed while a
        // batch was in flight) ends the stream early: not misbehaviour. The
        // sender replays whatever we did not acknowledge.
        Err(protocol::FrameError::Truncated) => {
            tracing::debug!("link stream ended inside a frame");
            Ok(None)
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Hands a new sequenced frame to the app (synchronous: called in order
/// under the session's delivery lock).
fn dispatch(peer: PeerId, frame: Frame, shared: &Arc<Shared>, session: &Arc<Session>) {
    match frame {
        Frame::Publish {
            topic, payload, ts, ..
        } => {
            let allowed = validate_topic(&topic).is_ok()
                && read(&shared.remotes)
                    .get(&peer)
                    .is_some_and(|r| r.acl.may_publish(&topic));
            if !allowed {
                tracing::debug!(%peer, %topic, "publish refused by ACL or invalid topic");
                return;
            }
            shared.deliver_local(&Message {
                topic,
                payload,
                sender: peer,
                timestamp_ms: ts,
            });
        }
        Frame::Request { id, uri, args, .. } => {
            rpc::serve(shared, peer, id, uri, args, session.clone());
        }
        Frame::Response { id, result, .. } => rpc::complete(shared, peer, id, result),
        Frame::State(_) | Frame::Open { .. } | Frame::Ack { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn batched_frames_decode_in_order() {
        let mut buf = Vec::new();
        for i in 0..3u64 {
            assert!(push_frame(
                &mut buf,
                &Frame::Publish {
                    seq: i,
                    topic: "t".into(),
                    payload: Bytes::from(vec![i as u8; 10]),
                    ts: i
                },
                1024
            ));
        }
        assert!(!push_frame(
            &mut buf,
            &Frame::Publish {
                seq: 9,
                topic: "t".into(),
                payload: Bytes::from(vec![0; 2000]),
                ts: 9
            },
            1024
        ));
        let mut reader = futures::io::Cursor::new(buf);
        let mut frame = Vec::new();
        for i in 0..3u64 {
            assert!(protocol::read_frame(&mut reader, &mut frame, 1024)
                .await
                .unwrap());
            match wire::decode::<Frame>(&frame).unwrap() {
                Frame::Publish { ts, .. } => assert_eq!(ts, i),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(!protocol::read_frame(&mut reader, &mut frame, 1024)
            .await
            .unwrap());
    }
}
