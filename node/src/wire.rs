//! Frames on the app channel and the network-state record.
//!
//! Every frame is one CBOR-encoded [`Frame`] inside the channel's length-prefixed
//! framing (`atmosphere_behaviours::channel::protocol`). The network-state record
//! also travels in gossipsub on the mesh's state topic as a [`StateAnnouncement`].
//! See `docs/wire-format.md`.

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use atmosphere_behaviours::membership::cert::{Certificate, MeshId};

/// Most subscription patterns or registrations announced per node.
pub const MAX_ANNOUNCED: usize = 1024;
/// Most member hints in one state record.
pub const MAX_MEMBER_HINTS: usize = 256;
/// Most addresses per peer in a state record.
pub const MAX_ADDRS: usize = 16;

/// One message on the app channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// The sender's network state (sent first on every link and on change).
    State(NetworkState),
    /// A pub/sub message from the sender.
    Publish {
        /// Position in the sender's session (see [`Frame::Open`]).
        seq: u64,
        /// The topic.
        topic: String,
        /// The payload.
        payload: Bytes,
        /// Publisher's clock, ms since the Unix epoch.
        ts: u64,
    },
    /// An RPC call.
    Request {
        /// Position in the sender's session.
        seq: u64,
        /// Caller-chosen id, echoed in the response.
        id: u64,
        /// The URI.
        uri: String,
        /// The arguments.
        args: Bytes,
    },
    /// The answer to a [`Frame::Request`].
    Response {
        /// Position in the sender's session.
        seq: u64,
        /// The request's id.
        id: u64,
        /// The outcome.
        result: CallResult,
    },
    /// First frame on every link: the sequenced frames that follow belong to
    /// the sender's session `session` and start at `first_seq`. A new session
    /// id means the sender restarted: the receiver resets its de-duplication.
    Open {
        /// The sender's session id for this receiver (random per process and peer).
        session: u64,
        /// Sequence number of the first sequenced frame on this link.
        first_seq: u64,
    },
    /// Cumulative acknowledgement: every sequenced frame of `session` up to
    /// and including `upto` was delivered.
    Ack {
        /// The session acknowledged (the receiver's id for us).
        session: u64,
        /// Highest delivered sequence number.
        upto: u64,
    },
}

impl Frame {
    /// The sequence number of a sequenced frame (`Publish`, `Request`, `Response`).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Frame::Publish { seq, .. }
            | Frame::Request { seq, .. }
            | Frame::Response { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// Sets the sequence number of a sequenced frame (no-op on others).
    pub fn set_seq(&mut self, value: u64) {
        match self {
            Frame::Publish { seq, .. }
            | Frame::Request { seq, .. }
            | Frame::Response { seq, .. } => *seq = value,
            _ => {}
        }
    }
}

/// The outcome of a call, on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallResult {
    /// The handler's answer.
    Ok(Bytes),
    /// No handler for the URI on this node.
    NoProvider,
    /// The caller may not call this URI.
    Denied(String),
    /// The handler failed.
    Remote(String),
    /// The provider is overloaded (too many handlers running).
    Busy,
}

/// What a node announces about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkState {
    /// Its name.
    pub name: String,
    /// Increases with every change.
    pub seq: u64,
    /// Subscription patterns.
    pub subscriptions: Vec<String>,
    /// RPC URIs it serves.
    pub registrations: Vec<String>,
    /// Addresses it listens on.
    pub addrs: Vec<Multiaddr>,
    /// Members it knows and where (so that newcomers find everyone quickly).
    pub members: Vec<MemberHint>,
}

/// A member and its addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberHint {
    /// The member.
    pub peer: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
}

/// The gossipsub form of the network state: the sender's certificate lets
/// members who are not directly connected check membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateAnnouncement {
    /// The mesh this announcement is for.
    pub mesh: MeshId,
    /// The sender's certificate for that mesh.
    pub certificate: Certificate,
    /// The state.
    pub state: NetworkState,
}

/// Errors decoding frames.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct DecodeError(String);

/// Encodes a frame to CBOR, appending to `out`.
pub fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // ok: writing into a Vec cannot fail and our types always serialise.
    let _ = ciborium::into_writer(value, out);
}

/// Encodes an app-channel frame, appending to `out` (fast path for the hot
/// frames; the bytes are the same as [`encode`]'s).
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    if !crate::frame_codec::encode(frame, out) {
        encode(frame, out);
    }
}

/// Decodes an app-channel frame (fast path for the hot frames).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, DecodeError> {
    match crate::frame_codec::decode(bytes) {
        Some(frame) => Ok(frame),
        None => decode(bytes),
    }
}

/// Decodes a CBOR value.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    ciborium::from_reader(bytes).map_err(|e| DecodeError(e.to_string()))
}

impl NetworkState {
    /// Truncates every list to its bound (for states received from the network).
    pub fn bounded(mut self) -> Self {
        self.subscriptions.truncate(MAX_ANNOUNCED);
        self.registrations.truncate(MAX_ANNOUNCED);
        self.addrs.truncate(MAX_ADDRS);
        self.members.truncate(MAX_MEMBER_HINTS);
        for m in &mut self.members {
            m.addrs.truncate(MAX_ADDRS);
        }
        self.name = truncate_chars(&self.name, MAX_NAME_LEN);
        self
    }
}

/// Longest node name kept, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate_chars(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let frames = vec![
            Frame::Publish {
                seq: 1,
                topic: "a.b".into(),
                payload: Bytes::from_static(b"hello"),
                ts: 7,
            },
            Frame::Request {
                seq: 2,
                id: 1,
                uri: "node.echo".into(),
                args: Bytes::from_static(b"{}"),
            },
            Frame::Response {
                seq: 3,
                id: 1,
                result: CallResult::Denied("no".into()),
            },
            Frame::Open {
                session: 9,
                first_seq: 1,
            },
            Frame::Ack {
                session: 9,
                upto: 3,
            },
            Frame::State(NetworkState {
                name: "n".into(),
                seq: 3,
                subscriptions: vec!["a.**".into()],
                ..Default::default()
            }),
        ];
        for frame in frames {
            let mut buf = Vec::new();
            encode(&frame, &mut buf);
            assert_eq!(decode::<Frame>(&buf).unwrap(), frame);
        }
        assert!(decode::<Frame>(b"\xff\xfe\x00garbage").is_err());
        assert!(decode::<Frame>(b"").is_err());
    }

    #[test]
    fn long_multibyte_names_are_cut_on_a_character_boundary() {
        let state = NetworkState {
            name: "€".repeat(40),
            ..Default::default()
        }
        .bounded();
        assert!(state.name.len() <= MAX_NAME_LEN);
        assert_eq!(state.name, "€".repeat(21));
    }

    #[test]
    fn payload_bytes_are_a_cbor_byte_string() {
        let mut buf = Vec::new();
        encode(
            &Frame::Publish {
                seq: 0,
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; 1000]),
                ts: 0,
            },
            &mut buf,
        );
        // A byte string costs ~1000 bytes; an array of integers would cost more.
        assert!(buf.len() < 1100, "encoded size {}", buf.len());
    }
}
