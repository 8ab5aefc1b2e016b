//! The pairing protocol: its name, the [`Message`]s and their encoding.
//!
//! # Wire format
//!
//! One stream per pairing session, opened by the requester. Each message is
//! one frame in the channel framing (see [`crate::channel::protocol`]): a
//! 4-byte big-endian length, then that many bytes holding exactly one
//! CBOR-encoded [`Message`] (a serde externally tagged enum: unit variants
//! are CBOR text strings such as `"DONE"`, the others one-entry maps such as
//! `{"PAIR_REQUEST": {"public_key": h'…32 bytes…', "name": "Kitchen"}}`).
//!
//! ```text
//! requester                                 acceptor
//!   PAIR_REQUEST {public_key, name}   →
//!                                     ←   PAIR_ACCEPT {public_key, name}
//!                                         | PAIR_REJECT {reason}      (end)
//!   (both derive the code, users compare; either order:)
//!   CODE_CONFIRMED | CODE_REJECTED    →
//!                                     ←   CODE_CONFIRMED | CODE_REJECTED
//!   (once both confirmed:)
//!                                     ←   CREDENTIALS {data}
//!   DONE                              →                                (end)
//! ```
//!
//! Either side may end the session at any point with `ABORT {reason}`
//! (timeout, cancelled, protocol violation) and then closes its side of the
//! stream; `CODE_REJECTED` and `PAIR_REJECT` end it too.
//!
//! Bounds, enforced by every reader (a violation fails the session with a
//! protocol error and drops the stream):
//!
//! - a frame longer than [`max_frame`]`(max_credentials_len)` (the reader's
//!   credentials limit plus [`FRAME_OVERHEAD`] bytes) is refused unread;
//! - the payload must be exactly one CBOR [`Message`], no trailing bytes;
//!   public keys are exactly 32 bytes;
//! - names are at most [`MAX_NAME_LEN`] bytes of UTF-8;
//! - credentials are at most the reader's `max_credentials_len` bytes;
//! - at most [`MAX_FRAMES_PER_STREAM`] frames are read from one stream (an
//!   honest peer sends at most four).

use std::io;

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub use crate::channel::protocol::{encode_frame, read_frame, FrameError, FRAME_HEADER_LEN};

/// The protocol name negotiated for pairing streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/atmosphere/pair/1.0.0");

/// Longest display name sent or accepted, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;

/// Default limit on the credentials of one session, in bytes (64 KiB).
pub const DEFAULT_MAX_CREDENTIALS_LEN: usize = 64 * 1024;

/// Hard limit on the credentials limit, in bytes (1 MiB): larger
/// configured values are lowered to it.
pub const MAX_CREDENTIALS_LEN: usize = 1024 * 1024;

/// Room for the CBOR around the credentials in the largest frame.
pub const FRAME_OVERHEAD: usize = 256;

/// Frames read from one stream at most.
pub const MAX_FRAMES_PER_STREAM: usize = 8;

/// The largest frame payload a reader with `max_credentials_len` accepts.
pub fn max_frame(max_credentials_len: usize) -> usize {
    max_credentials_len.saturating_add(FRAME_OVERHEAD)
}

/// One message of a pairing session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Message {
    /// Requester → acceptor, first on the stream.
    PairRequest {
        /// The requester's fresh X25519 public key.
        #[serde(with = "serde_bytes")]
        public_key: [u8; 32],
        /// The requester's display name (unverified; at most
        /// [`MAX_NAME_LEN`] bytes).
        name: String,
    },
    /// Acceptor → requester: the request is accepted, codes can be derived.
    PairAccept {
        /// The acceptor's fresh X25519 public key.
        #[serde(with = "serde_bytes")]
        public_key: [u8; 32],
        /// The acceptor's display name (unverified; at most
        /// [`MAX_NAME_LEN`] bytes).
        name: String,
    },
    /// Acceptor → requester: the request is refused; the session ends.
    PairReject {
        /// Why.
        reason: RejectReason,
    },
    /// Either side: our user saw matching codes.
    CodeConfirmed,
    /// Either side: our user saw different codes (or declined); the session
    /// ends.
    CodeRejected,
    /// Acceptor → requester, only after both sides confirmed: the opaque
    /// credentials.
    Credentials {
        /// Opaque to the protocol (the node puts a membership certificate
        /// and the mesh's endpoints here).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Requester → acceptor: the credentials arrived; the session ends.
    Done,
    /// Either side: the session ends.
    Abort {
        /// Why.
        reason: AbortReason,
    },
}

impl Message {
    /// The message's name on the wire, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PairRequest { .. } => "PAIR_REQUEST",
            Message::PairAccept { .. } => "PAIR_ACCEPT",
            Message::PairReject { .. } => "PAIR_REJECT",
            Message::CodeConfirmed => "CODE_CONFIRMED",
            Message::CodeRejected => "CODE_REJECTED",
            Message::Credentials { .. } => "CREDENTIALS",
            Message::Done => "DONE",
            Message::Abort { .. } => "ABORT",
        }
    }
}

/// Why an acceptor refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectReason {
    /// The acceptor is not in pairing mode.
    NotAccepting,
    /// The acceptor is in another pairing session.
    Busy,
}

/// Why a side ended a session with [`Message::Abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AbortReason {
    /// The sender's session timeout elapsed.
    Timeout,
    /// The sender's user cancelled.
    Cancelled,
    /// The sender received something it did not expect.
    Protocol,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing a frame failed (including a frame over the limit).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The payload is not exactly one CBOR [`Message`].
    #[error("malformed pairing message: {0}")]
    Decode(String),
    /// A name longer than [`MAX_NAME_LEN`] bytes.
    #[error("name of {len} bytes exceeds {MAX_NAME_LEN}")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Credentials over the reader's limit.
    #[error("credentials of {len} bytes exceed the limit of {max} bytes")]
    CredentialsTooLarge {
        /// Their length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// More than [`MAX_FRAMES_PER_STREAM`] frames on one stream.
    #[error("more than {MAX_FRAMES_PER_STREAM} frames on one pairing stream")]
    TooManyFrames,
}

impl ProtocolError {
    /// Whether the remote sent something it should not have, as opposed to
    /// the stream failing or ending early.
    pub fn is_malformed(&self) -> bool {
        match self {
            ProtocolError::Frame(FrameError::TooLarge { .. }) => true,
            ProtocolError::Frame(FrameError::Truncated | FrameError::Io(_)) => false,
            ProtocolError::Decode(_)
            | ProtocolError::NameTooLong { .. }
            | ProtocolError::CredentialsTooLarge { .. }
            | ProtocolError::TooManyFrames => true,
        }
    }
}

/// Encodes `message` as one frame (length prefix included).
///
/// Fails with [`FrameError::TooLarge`] when the payload exceeds `max`.
pub fn encode(message: &Message, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::with_capacity(128);
    ciborium::into_writer(message, &mut payload)
        .map_err(|e| FrameError::Io(io::Error::other(e.to_string())))?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    encode_frame(&mut frame, &payload, max)?;
    Ok(frame)
}

/// Decodes one frame's payload (without its length prefix) and checks the
/// bounds, with `max_credentials_len` as the credentials limit. Never panics,
/// whatever the bytes.
pub fn decode(payload: &[u8], max_credentials_len: usize) -> Result<Message, ProtocolError> {
    let mut rest = payload;
    let message: Message =
        ciborium::from_reader(&mut rest).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Decode(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    match &message {
        Message::PairRequest { name, .. } | Message::PairAccept { name, .. }
            if name.len() > MAX_NAME_LEN =>
        {
            Err(ProtocolError::NameTooLong { len: name.len() })
        }
        Message::Credentials { data } if data.len() > max_credentials_len => {
            Err(ProtocolError::CredentialsTooLarge {
                len: data.len(),
                max: max_credentials_len,
            })
        }
        _ => Ok(message),
    }
}

/// `name` cut to at most [`MAX_NAME_LEN`] bytes (on a character boundary),
/// with control characters replaced by U+FFFD, so that it can be sent and
/// shown.
pub fn bound_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_NAME_LEN));
    for c in name.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER_LEN..]
    }

    #[test]
    fn messages_round_trip() {
        let messages = [
            Message::PairRequest {
                public_key: [1; 32],
                name: "Kitchen".into(),
            },
            Message::PairAccept {
                public_key: [2; 32],
                name: String::new(),
            },
            Message::PairReject {
                reason: RejectReason::Busy,
            },
            Message::PairReject {
                reason: RejectReason::NotAccepting,
            },
            Message::CodeConfirmed,
            Message::CodeRejected,
            Message::Credentials {
                data: vec![9; 1000],
            },
            Message::Done,
            Message::Abort {
                reason: AbortReason::Timeout,
            },
        ];
        for message in messages {
            let frame = encode(&message, 4096).unwrap();
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - FRAME_HEADER_LEN);
            assert_eq!(decode(payload(&frame), 1000).unwrap(), message);
        }
    }

    #[test]
    fn the_encoding_uses_the_documented_names() {
        let frame = encode(&Message::Done, 64).unwrap();
        let value: ciborium::Value = ciborium::from_reader(payload(&frame)).unwrap();
        assert_eq!(value, ciborium::Value::Text("DONE".into()));
        let frame = encode(
            &Message::PairReject {
                reason: RejectReason::NotAccepting,
            },
            64,
        )
        .unwrap();
        let value: ciborium::Value = ciborium::from_reader(payload(&frame)).unwrap();
        let map = value.as_map().unwrap();
        assert_eq!(map[0].0, ciborium::Value::Text("PAIR_REJECT".into()));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for bytes in [
            &[][..],
            &[0xff, 0xfe, 0xfd][..],
            b"garbage",
            // A text string that names no message.
            &[0x63, b'F', b'O', b'O'][..],
        ] {
            assert!(
                matches!(decode(bytes, 1024), Err(ProtocolError::Decode(_))),
                "{bytes:?}"
            );
        }
        // Trailing bytes after a valid message.
        let mut frame = encode(&Message::Done, 64).unwrap();
        frame.push(0);
        assert!(matches!(
            decode(payload(&frame), 64),
            Err(ProtocolError::Decode(_))
        ));
        // A 31-byte public key.
        #[derive(Serialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        enum Short {
            PairRequest {
                #[serde(with = "serde_bytes")]
                public_key: Vec<u8>,
                name: String,
            },
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &Short::PairRequest {
                public_key: vec![1; 31],
                name: "x".into(),
            },
            &mut bytes,
        )
        .unwrap();
        assert!(matches!(decode(&bytes, 64), Err(ProtocolError::Decode(_))));
    }

    #[test]
    fn bounds_are_enforced_on_decode() {
        let frame = encode(
            &Message::PairRequest {
                public_key: [0; 32],
                name: "n".repeat(MAX_NAME_LEN + 1),
            },
            4096,
        )
        .unwrap();
        assert!(matches!(
            decode(payload(&frame), 4096),
            Err(ProtocolError::NameTooLong { len: 65 })
        ));
        let frame = encode(&Message::Credentials { data: vec![0; 101] }, 4096).unwrap();
        assert!(matches!(
            decode(payload(&frame), 100),
            Err(ProtocolError::CredentialsTooLarge { len: 101, max: 100 })
        ));
        assert!(decode(payload(&frame), 101).is_ok());
        // The largest credentials fit the frame limit derived from them.
        let max = DEFAULT_MAX_CREDENTIALS_LEN;
        let data = vec![0xaa; max];
        assert!(encode(&Message::Credentials { data }, max_frame(max)).is_ok());
    }

    #[test]
    fn names_are_bounded_on_char_boundaries() {
        assert_eq!(bound_name("Kitchen"), "Kitchen");
        assert_eq!(bound_name(&"a".repeat(100)).len(), MAX_NAME_LEN);
        let accented = "é".repeat(40); // 80 bytes
        let cut = bound_name(&accented);
        assert_eq!(cut, "é".repeat(32));
        assert_eq!(bound_name("a\nb\u{7}"), "a\u{fffd}b\u{fffd}");
    }
}
