//! Peer links: the tasks that write and read frames on channel streams.
//!
//! Each verified peer gets one outbound channel stream (ours to write) and
//! one inbound stream (theirs, which we read). The writer drains its bounded
//! queue in batches of up to [`BATCH_BYTES`], writes a batch with one
//! `write_all` and flushes once, so many small messages share a multiplexer
//! frame. The reader decodes frames and dispatches them without going through
//! the swarm task, except for state records.

use std::sync::{atomic::Ordering, Arc};

use futures::{io::BufReader, AsyncWriteExt};
use libp2p::{swarm::ConnectionId, PeerId, Stream};
use tokio::sync::mpsc;

use atmosphere_behaviours::{channel::protocol, pattern::validate_topic};

use crate::{
    rpc,
    shared::{read, Shared},
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

/// Writes frames from `rx` to `stream` until the queue closes or the stream fails,
/// then tells the swarm task.
pub(crate) async fn run_writer(
    peer: PeerId,
    connection: ConnectionId,
    mut stream: Stream,
    mut rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
) {
    let max_frame = shared.limits.max_frame();
    let traffic = &shared.traffic;
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let result: std::io::Result<()> = async {
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut frames = 0u64;
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                if push_frame(&mut buf, &frame, max_frame) {
                    frames += 1;
                } else {
                    tracing::warn!(%peer, "frame over the size limit not sent");
                }
                if buf.len() < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            traffic.frames_sent.fetch_add(frames, Ordering::Relaxed);
            traffic
                .bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            stream.write_all(&buf).await?;
            stream.flush().await?;
        }
        stream.close().await
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "link writer stopped");
    }
    let _ = commands
        .send(Command::LinkClosed { peer, connection })
        .await;
}

/// Reads frames from `peer`'s stream and dispatches them.
pub(crate) async fn run_reader(
    peer: PeerId,
    stream: Stream,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
) {
    let max_frame = shared.limits.max_frame();
    let mut reader = BufReader::with_capacity(BATCH_BYTES, stream);
    let mut buf = Vec::new();
    loop {
        match next_frame(&mut reader, &mut buf, max_frame).await {
            Ok(Some(frame)) => {
                let traffic = &shared.traffic;
                traffic.frames_received.fetch_add(1, Ordering::Relaxed);
                traffic.bytes_received.fetch_add(
                    (buf.len() + protocol::FRAME_HEADER_LEN) as u64,
                    Ordering::Relaxed,
                );
                dispatch(peer, frame, &shared, &commands).await
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
        Err(error) => Err(error.to_string()),
    }
}

async fn dispatch(
    peer: PeerId,
    frame: Frame,
    shared: &Arc<Shared>,
    commands: &mpsc::Sender<Command>,
) {
    match frame {
        Frame::Publish { topic, payload, ts } => {
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
        Frame::Request { id, uri, args } => {
            let Some(reply) = shared.link(&peer) else {
                return;
            };
            rpc::serve(shared, peer, id, uri, args, reply);
        }
        Frame::Response { id, result } => rpc::complete(shared, peer, id, result),
        Frame::State(state) => {
            let _ = commands
                .send(Command::RemoteState {
                    peer,
                    state: state.bounded(),
                })
                .await;
        }
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
