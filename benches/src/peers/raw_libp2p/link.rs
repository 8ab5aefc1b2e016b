//! One side of the raw-stream baseline: a writer task that batches frames
//! onto its outbound stream and a reader task that handles frames from the
//! inbound stream — the same shape as Atmosphere's peer links, minus CBOR.
//!
//! A frame is a 4-byte big-endian length, then a 1-byte kind, then (for
//! requests and responses only) an 8-byte big-endian call id, then the
//! payload.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use futures::{io::BufReader, AsyncReadExt, AsyncWriteExt};
use libp2p::Stream;
use tokio::sync::{mpsc, oneshot};

use super::{
    counter::{CountJob, Counter},
    swarm::Tasks,
};

/// Bytes collected into one write (and the reader's buffer size).
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// Frames queued for the writer (bounded: senders wait when it is full).
const WRITE_QUEUE: usize = 4096;

/// Largest frame accepted by the reader.
const MAX_FRAME: usize = 16 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A published message, counted by the receiver.
    Data = 0,
    /// A published message the receiver publishes back as a [`Kind::Pong`].
    Ping = 1,
    /// The answer to a [`Kind::Ping`].
    Pong = 2,
    /// A call; the receiver echoes its payload in a [`Kind::Response`].
    Request = 3,
    /// The answer to a [`Kind::Request`] with the same id.
    Response = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Kind::Data,
            1 => Kind::Ping,
            2 => Kind::Pong,
            3 => Kind::Request,
            4 => Kind::Response,
            _ => return None,
        })
    }

    fn has_id(self) -> bool {
        matches!(self, Kind::Request | Kind::Response)
    }
}

/// One frame to write.
#[derive(Debug)]
pub(super) struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Call id (requests and responses only).
    pub id: u64,
    /// The payload (shared, so queuing a frame copies no payload bytes).
    pub payload: Bytes,
}

/// Appends `frame`, length-prefixed, to `buf`.
fn encode(buf: &mut Vec<u8>, frame: &Frame) {
    let id_len = if frame.kind.has_id() { 8 } else { 0 };
    let len = 1 + id_len + frame.payload.len();
    // Frames are built here from payloads far below 4 GiB.
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(frame.kind as u8);
    if id_len > 0 {
        buf.extend_from_slice(&frame.id.to_be_bytes());
    }
    buf.extend_from_slice(&frame.payload);
}

/// Calls waiting for their response, by id.
pub(super) type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// The handles of one side's link.
pub(super) struct Link {
    /// Frames to send on the outbound stream.
    pub tx: mpsc::Sender<Frame>,
    /// Calls waiting for a response.
    pub pending: Pending,
    /// Payloads of pongs received.
    pub pongs: mpsc::Receiver<Bytes>,
    /// Count requests for the data frames this side receives.
    pub counts: mpsc::Sender<CountJob>,
}

impl Link {
    /// Starts the writer on `outbound` and the reader on `inbound`; the tasks
    /// are added to `tasks`.
    pub(super) fn spawn(outbound: Stream, inbound: Stream, tasks: &mut Tasks) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (pong_tx, pongs) = mpsc::channel(16);
        let (counter, counts) = Counter::new();
        let pending = Pending::default();
        tasks.add(tokio::spawn(write_loop(outbound, rx)));
        let reader = Reader {
            tx: tx.clone(),
            pending: pending.clone(),
            pongs: pong_tx,
            counter,
        };
        tasks.add(tokio::spawn(reader.run(inbound)));
        Self {
            tx,
            pending,
            pongs,
            counts,
        }
    }

    /// Sends one request and waits for its response.
    pub(super) async fn call(&self, id: u64, payload: Bytes) -> anyhow::Result<Bytes> {
        let (done, response) = oneshot::channel();
        lock(&self.pending).insert(id, done);
        let frame = Frame {
            kind: Kind::Request,
            id,
            payload,
        };
        if self.tx.send(frame).await.is_err() {
            lock(&self.pending).remove(&id);
            anyhow::bail!("the stream writer stopped");
        }
        match tokio::time::timeout(super::swarm::REPLY_TIMEOUT, response).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => anyhow::bail!("the stream reader stopped"),
            Err(_) => {
                lock(&self.pending).remove(&id);
                anyhow::bail!("no response to call {id}")
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drains the queue in batches of up to [`BATCH_BYTES`]: one `write_all` and
/// one flush per batch.
async fn write_loop(mut stream: Stream, mut rx: mpsc::Receiver<Frame>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(2 * BATCH_BYTES);
    while let Some(frame) = rx.recv().await {
        buf.clear();
        encode(&mut buf, &frame);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) => encode(&mut buf, &frame),
                Err(_) => break,
            }
        }
        stream.write_all(&buf).await?;
        stream.flush().await?;
    }
    stream.close().await
}

/// The reader's state.
struct Reader {
    tx: mpsc::Sender<Frame>,
    pending: Pending,
    pongs: mpsc::Sender<Bytes>,
    counter: Counter,
}

impl Reader {
    /// Reads and handles frames until the stream ends or fails.
    async fn run(mut self, inbound: Stream) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(BATCH_BYTES, inbound);
        let mut buf = Vec::with_capacity(BATCH_BYTES);
        loop {
            let mut header = [0u8; 4];
            reader.read_exact(&mut header).await?;
            let len = u32::from_be_bytes(header) as usize;
            if len == 0 || len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad frame length",
                ));
            }
            buf.resize(len, 0);
            reader.read_exact(&mut buf).await?;
            self.handle(&buf).await?;
        }
    }

    async fn handle(&mut self, frame: &[u8]) -> io::Result<()> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad frame");
        let kind = Kind::from_byte(frame[0]).ok_or_else(bad)?;
        let (id, payload) = if kind.has_id() {
            let id = frame.get(1..9).ok_or_else(bad)?;
            let id = u64::from_be_bytes(id.try_into().map_err(|_| bad())?);
            (id, &frame[9..])
        } else {
            (0, &frame[1..])
        };
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "writer stopped");
        match kind {
            Kind::Data => self.counter.count(),
            Kind::Ping | Kind::Request => {
                let kind = if kind == Kind::Ping {
                    Kind::Pong
                } else {
                    Kind::Response
                };
                let payload = Bytes::copy_from_slice(payload);
                let frame = Frame { kind, id, payload };
                self.tx.send(frame).await.map_err(|_| closed())?;
            }
            // Nobody waiting (or a full queue) drops the pong.
            Kind::Pong => drop(self.pongs.try_send(Bytes::copy_from_slice(payload))),
            Kind::Response => {
                if let Some(done) = lock(&self.pending).remove(&id) {
                    let _ = done.send(Bytes::copy_from_slice(payload));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_kind_id_and_payload() {
        let mut buf = Vec::new();
        let payload = Bytes::from_static(b"abc");
        encode(
            &mut buf,
            &Frame {
                kind: Kind::Request,
                id: 7,
                payload: payload.clone(),
            },
        );
        assert_eq!(&buf[..4], &12u32.to_be_bytes());
        assert_eq!(buf[4], Kind::Request as u8);
        assert_eq!(&buf[5..13], &7u64.to_be_bytes());
        assert_eq!(&buf[13..], b"abc");
        buf.clear();
        encode(
            &mut buf,
            &Frame {
                kind: Kind::Data,
                id: 0,
                payload,
            },
        );
        assert_eq!(buf, [0, 0, 0, 4, 0, b'a', b'b', b'c']);
    }
}
