//! The heartbeat protocol: its name, the [`Heartbeat`] message and its
//! encoding on the stream.
//!
//! # Wire format
//!
//! Each side opens **one** long-lived outbound stream per connection for its
//! own beats (like libp2p ping). The stream carries frames in the channel
//! framing (see [`crate::channel::protocol`]): a 4-byte big-endian length,
//! then that many bytes of one CBOR-encoded [`Heartbeat`].
//!
//! ```text
//! beat:   sender   → receiver   Heartbeat { nonce: n, echo: null, … }
//! answer: receiver → sender     Heartbeat { nonce: m, echo: n, … }
//! ```
//!
//! The receiver answers every beat at once, on the same stream, with its
//! *own* [`Heartbeat`] whose `echo` is the beat's `nonce`; so each exchange
//! carries both sides' payloads. The sender's round-trip time is the time from
//! writing the beat to reading the answer. At most one beat is outstanding on
//! a stream: the next beat is written only after the answer arrived.
//!
//! Bounds, enforced by every reader:
//!
//! - a frame longer than the reader's limit ([`DEFAULT_MAX_FRAME`], 16 KiB,
//!   by default) is refused without being read: the stream is dropped;
//! - bytes that do not decode as a [`Heartbeat`], or whose `node` is not the
//!   connection's remote peer, drop the stream too;
//! - lists are cut on decode: at most [`MAX_CAPABILITIES`] capabilities (each
//!   at most [`MAX_CAPABILITY_LEN`] bytes, longer ones are skipped) and
//!   [`MAX_ENDPOINTS`] endpoints (each at most [`MAX_ENDPOINT_LEN`] bytes;
//!   entries that are not valid multiaddrs are skipped); `transport` is cut to
//!   [`MAX_TRANSPORT_LEN`] bytes.
//!
//! Within those bounds an encoded heartbeat is always smaller than 9 KiB, so
//! it fits the default frame limit.

use std::{io, time::SystemTime};

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{
    de::{IgnoredAny, SeqAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};

pub use crate::channel::protocol::{encode_frame, read_frame, FrameError, FRAME_HEADER_LEN};

/// The protocol name negotiated for heartbeat streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/atmosphere/heartbeat/1.0.0");

/// Default limit on one heartbeat frame's payload, in bytes (16 KiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024;

/// Capabilities kept from one heartbeat.
pub const MAX_CAPABILITIES: usize = 32;

/// Longest capability name kept, in bytes.
pub const MAX_CAPABILITY_LEN: usize = 128;

/// Endpoints kept from one heartbeat.
pub const MAX_ENDPOINTS: usize = 16;

/// Longest endpoint kept, in bytes of its binary multiaddr form.
pub const MAX_ENDPOINT_LEN: usize = 256;

/// Longest `transport` string kept, in bytes.
pub const MAX_TRANSPORT_LEN: usize = 32;

/// Counters a node reports about itself in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Peers the sender is connected to.
    pub peers: u32,
    /// Messages the sender has sent since it started.
    pub messages_sent: u64,
    /// Messages the sender has received since it started.
    pub messages_received: u64,
    /// Seconds since the sender started.
    pub uptime_secs: u64,
}

/// One heartbeat: a beat (`echo` is `None`) or the answer to one (`echo` is
/// the beat's `nonce`).
///
/// Encoded as a CBOR map with the field names as keys. Only `node` and
/// `nonce` are required; every other field may be missing (it then takes its
/// default), and unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's peer id (a CBOR byte string: the peer id's bytes). It must
    /// be the connection's remote peer, else the message is refused.
    pub node: PeerId,
    /// Chosen by the sender; an answer echoes the nonce of the beat it answers.
    pub nonce: u64,
    /// In an answer, the `nonce` of the beat answered; `None` (CBOR `null`) in
    /// a beat.
    #[serde(default)]
    pub echo: Option<u64>,
    /// The sender's clock when it wrote the message, in milliseconds since the
    /// Unix epoch.
    #[serde(default)]
    pub timestamp_ms: u64,
    /// The path class the sender believes this connection is (e.g. `"lan"`,
    /// `"ble"`, `"relay"`), or `""` when it has not been told.
    #[serde(default, deserialize_with = "de_transport")]
    pub transport: String,
    /// The sender's counters.
    #[serde(default)]
    pub metrics: Metrics,
    /// What the sender offers (free-form names).
    #[serde(default, deserialize_with = "de_capabilities")]
    pub capabilities: Vec<String>,
    /// Addresses the sender can be reached at (CBOR byte strings: binary
    /// multiaddrs; text multiaddrs are accepted on decode).
    #[serde(default, deserialize_with = "de_endpoints")]
    pub endpoints: Vec<Multiaddr>,
}

impl Heartbeat {
    /// Cuts the lists and strings to the protocol's bounds, dropping the
    /// capabilities and endpoints that are too long.
    pub fn apply_bounds(&mut self) {
        bound_transport(&mut self.transport);
        bound_capabilities(&mut self.capabilities);
        bound_endpoints(&mut self.endpoints);
    }
}

/// Why a heartbeat exchange failed or a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// Reading or writing a frame failed (including a frame over the limit).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame is not a valid CBOR `Heartbeat`.
    #[error("malformed heartbeat: {0}")]
    Decode(String),
    /// The message names a node other than the connection's remote peer.
    #[error("heartbeat from {claimed}, but the connection is to another peer")]
    WrongNode {
        /// The `node` in the message.
        claimed: PeerId,
    },
    /// An answer does not echo the nonce of the beat it should answer.
    #[error("answer echoes {got:?}, expected {expected}")]
    WrongEcho {
        /// The nonce of the outstanding beat.
        expected: u64,
        /// The `echo` received.
        got: Option<u64>,
    },
    /// The stream ended before an answer arrived.
    #[error("the heartbeat stream was closed")]
    Closed,
}

impl HeartbeatError {
    /// Whether the remote sent something it should not have (an oversized
    /// frame, undecodable bytes, the wrong node or echo), as opposed to the
    /// stream failing or closing.
    pub fn is_malformed(&self) -> bool {
        match self {
            HeartbeatError::Frame(FrameError::TooLarge { .. }) => true,
            HeartbeatError::Frame(_) | HeartbeatError::Closed => false,
            HeartbeatError::Decode(_)
            | HeartbeatError::WrongNode { .. }
            | HeartbeatError::WrongEcho { .. } => true,
        }
    }
}

/// Encodes `heartbeat` as one frame (length prefix included).
///
/// Fails with [`FrameError::TooLarge`] when the payload exceeds `max`.
pub fn encode(heartbeat: &Heartbeat, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::with_capacity(256);
    ciborium::into_writer(heartbeat, &mut payload)
        .map_err(|e| FrameError::Io(io::Error::other(e.to_string())))?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    encode_frame(&mut frame, &payload, max)?;
    Ok(frame)
}

/// Decodes one frame's payload (without its length prefix), applying the
/// bounds. Never panics, whatever the bytes.
pub fn decode(payload: &[u8]) -> Result<Heartbeat, HeartbeatError> {
    let mut heartbeat: Heartbeat =
        ciborium::from_reader(payload).map_err(|e| HeartbeatError::Decode(e.to_string()))?;
    // The deserializers already bound the lists; this also covers `transport`
    // edge cases and keeps one definition of the bounds.
    heartbeat.apply_bounds();
    Ok(heartbeat)
}

/// The local clock in milliseconds since the Unix epoch (0 if the clock is
/// before the epoch).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn bound_transport(transport: &mut String) {
    if transport.len() > MAX_TRANSPORT_LEN {
        let mut end = MAX_TRANSPORT_LEN;
        while !transport.is_char_boundary(end) {
            end -= 1;
        }
        transport.truncate(end);
    }
}

pub(crate) fn bound_capabilities(capabilities: &mut Vec<String>) {
    capabilities.retain(|c| c.len() <= MAX_CAPABILITY_LEN);
    capabilities.truncate(MAX_CAPABILITIES);
}

pub(crate) fn bound_endpoints(endpoints: &mut Vec<Multiaddr>) {
    endpoints.retain(|e| e.len() <= MAX_ENDPOINT_LEN);
    endpoints.truncate(MAX_ENDPOINTS);
}

fn de_transport<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let mut transport = String::deserialize(d)?;
    bound_transport(&mut transport);
    Ok(transport)
}

fn de_capabilities<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(BoundedList {
        max: MAX_CAPABILITIES,
        what: "a list of capability names",
        parse: |value| match value {
            ciborium::Value::Text(s) if s.len() <= MAX_CAPABILITY_LEN => Some(s),
            _ => None,
        },
    })
}

fn de_endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
    d.deserialize_any(BoundedList {
        max: MAX_ENDPOINTS,
        what: "a list of multiaddrs",
        parse: |value| match value {
            ciborium::Value::Bytes(b) if b.len() <= MAX_ENDPOINT_LEN => Multiaddr::try_from(b).ok(),
            ciborium::Value::Text(s) => s
                .parse::<Multiaddr>()
                .ok()
                .filter(|a| a.len() <= MAX_ENDPOINT_LEN),
            _ => None,
        },
    })
}

/// Deserializes a list leniently: entries `parse` rejects are skipped, and
/// only the first `max` accepted entries are kept (the rest are read and
/// discarded, which a 16 KiB frame bounds). `null` reads as an empty list.
struct BoundedList<T> {
    max: usize,
    what: &'static str,
    parse: fn(ciborium::Value) -> Option<T>,
}

impl<'de, T> Visitor<'de> for BoundedList<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while out.len() < self.max {
            match seq.next_element::<ciborium::Value>()? {
                Some(value) => out.extend((self.parse)(value)),
                None => return Ok(out),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(out)
    }

    fn visit_unit<E>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_none<E>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::multiaddr::Protocol;

    fn sample() -> Heartbeat {
        Heartbeat {
            node: PeerId::random(),
            nonce: 42,
            echo: None,
            timestamp_ms: 1_732_190_000_000,
            transport: "lan".into(),
            metrics: Metrics {
                peers: 3,
                messages_sent: 10,
                messages_received: 20,
                uptime_secs: 3600,
            },
            capabilities: vec!["pubsub".into(), "rpc".into()],
            endpoints: vec![
                "/ip4/192.168.1.2/tcp/4001".parse().unwrap(),
                "/ip4/192.168.1.2/udp/4001/quic-v1".parse().unwrap(),
            ],
        }
    }

    /// CBOR of an arbitrary map, for hand-made messages.
    fn cbor(value: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    fn text(s: &str) -> ciborium::Value {
        ciborium::Value::Text(s.into())
    }

    #[tokio::test]
    async fn heartbeat_round_trips_through_a_frame() {
        let mut beat = sample();
        let mut answer = sample();
        answer.echo = Some(42);
        beat.apply_bounds();
        let mut wire = encode(&beat, DEFAULT_MAX_FRAME).unwrap();
        wire.extend(encode(&answer, DEFAULT_MAX_FRAME).unwrap());
        let mut reader = Cursor::new(wire);
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf, DEFAULT_MAX_FRAME)
            .await
            .unwrap());
        assert_eq!(decode(&buf).unwrap(), beat);
        assert!(read_frame(&mut reader, &mut buf, DEFAULT_MAX_FRAME)
            .await
            .unwrap());
        assert_eq!(decode(&buf).unwrap(), answer);
        assert!(!read_frame(&mut reader, &mut buf, DEFAULT_MAX_FRAME)
            .await
            .unwrap());
    }

    #[test]
    fn peer_ids_and_multiaddrs_are_byte_strings() {
        let beat = sample();
        let frame = encode(&beat, DEFAULT_MAX_FRAME).unwrap();
        let value: ciborium::Value = ciborium::from_reader(&frame[FRAME_HEADER_LEN..]).unwrap();
        let map = value.as_map().unwrap();
        let get = |k: &str| {
            map.iter()
                .find(|(key, _)| key.as_text() == Some(k))
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("node"), ciborium::Value::Bytes(beat.node.to_bytes()));
        assert_eq!(get("echo"), ciborium::Value::Null);
        let endpoints = get("endpoints");
        let endpoints = endpoints.as_array().unwrap();
        assert_eq!(
            endpoints[0],
            ciborium::Value::Bytes(beat.endpoints[0].to_vec())
        );
    }

    #[test]
    fn only_node_and_nonce_are_required_and_unknown_keys_are_ignored() {
        let node = PeerId::random();
        let minimal = cbor(&ciborium::Value::Map(vec![
            (text("node"), ciborium::Value::Bytes(node.to_bytes())),
            (text("nonce"), ciborium::Value::Integer(7.into())),
            (text("future_field"), text("ignored")),
        ]));
        let hb = decode(&minimal).unwrap();
        assert_eq!((hb.node, hb.nonce, hb.echo), (node, 7, None));
        assert!(hb.capabilities.is_empty() && hb.endpoints.is_empty());
        assert_eq!(hb.metrics, Metrics::default());

        let no_nonce = cbor(&ciborium::Value::Map(vec![(
            text("node"),
            ciborium::Value::Bytes(node.to_bytes()),
        )]));
        assert!(matches!(decode(&no_nonce), Err(HeartbeatError::Decode(_))));
        let bad_node = cbor(&ciborium::Value::Map(vec![
            (text("node"), ciborium::Value::Bytes(vec![1, 2, 3])),
            (text("nonce"), ciborium::Value::Integer(7.into())),
        ]));
        assert!(matches!(decode(&bad_node), Err(HeartbeatError::Decode(_))));
    }

    #[test]
    fn lists_are_cut_and_invalid_entries_skipped_on_decode() {
        let node = PeerId::random();
        let mut capabilities = vec![
            text(&"x".repeat(MAX_CAPABILITY_LEN + 1)), // too long: skipped
            ciborium::Value::Integer(5.into()),        // not text: skipped
        ];
        capabilities.extend((0..40).map(|i| text(&format!("cap{i}"))));
        let addr = |i: u16| Multiaddr::empty().with(Protocol::Memory(u64::from(i)));
        let mut endpoints = vec![
            ciborium::Value::Bytes(vec![0xff, 0xff]), // not a multiaddr
            text("not a multiaddr"),
            ciborium::Value::Map(vec![(text("nested"), ciborium::Value::Array(vec![]))]),
            text("/ip4/10.0.0.1/tcp/1"), // text form is accepted
        ];
        endpoints.extend((0..20).map(|i| ciborium::Value::Bytes(addr(i).to_vec())));
        let payload = cbor(&ciborium::Value::Map(vec![
            (text("node"), ciborium::Value::Bytes(node.to_bytes())),
            (text("nonce"), ciborium::Value::Integer(1.into())),
            (text("transport"), text(&"é".repeat(40))),
            (text("capabilities"), ciborium::Value::Array(capabilities)),
            (text("endpoints"), ciborium::Value::Array(endpoints)),
            // Keys after the cut lists still decode.
            (text("timestamp_ms"), ciborium::Value::Integer(99.into())),
        ]));
        let hb = decode(&payload).unwrap();
        assert_eq!(hb.capabilities.len(), MAX_CAPABILITIES);
        assert_eq!(hb.capabilities[0], "cap0");
        assert_eq!(hb.endpoints.len(), MAX_ENDPOINTS);
        assert_eq!(hb.endpoints[0], "/ip4/10.0.0.1/tcp/1".parse().unwrap());
        assert_eq!(hb.endpoints[1], addr(0));
        assert!(hb.transport.len() <= MAX_TRANSPORT_LEN);
        assert!(hb.transport.chars().all(|c| c == 'é'));
        assert_eq!(hb.timestamp_ms, 99);

        let null_lists = cbor(&ciborium::Value::Map(vec![
            (text("node"), ciborium::Value::Bytes(node.to_bytes())),
            (text("nonce"), ciborium::Value::Integer(1.into())),
            (text("capabilities"), ciborium::Value::Null),
            (text("endpoints"), ciborium::Value::Null),
        ]));
        let hb = decode(&null_lists).unwrap();
        assert!(hb.capabilities.is_empty() && hb.endpoints.is_empty());
    }

    #[test]
    fn a_heartbeat_at_its_bounds_fits_the_default_frame() {
        let mut hb = sample();
        hb.echo = Some(u64::MAX);
        hb.nonce = u64::MAX;
        hb.transport = "t".repeat(MAX_TRANSPORT_LEN);
        hb.capabilities = (0..MAX_CAPABILITIES)
            .map(|i| format!("{i:0>width$}", width = MAX_CAPABILITY_LEN))
            .collect();
        // The longest multiaddrs that still fit MAX_ENDPOINT_LEN.
        let long = Multiaddr::empty().with(Protocol::Dns("d".repeat(MAX_ENDPOINT_LEN - 3).into()));
        assert!(long.len() <= MAX_ENDPOINT_LEN, "{}", long.len());
        hb.endpoints = vec![long; MAX_ENDPOINTS];
        hb.metrics = Metrics {
            peers: u32::MAX,
            messages_sent: u64::MAX,
            messages_received: u64::MAX,
            uptime_secs: u64::MAX,
        };
        let before = hb.clone();
        hb.apply_bounds();
        assert_eq!(hb, before, "already within bounds");
        let frame = encode(&hb, DEFAULT_MAX_FRAME).unwrap();
        assert!(frame.len() < 9 * 1024, "{} bytes", frame.len());
        assert_eq!(decode(&frame[FRAME_HEADER_LEN..]).unwrap(), hb);
    }

    #[test]
    fn apply_bounds_cuts_local_lists() {
        let mut hb = sample();
        hb.capabilities = (0..50).map(|i| i.to_string()).collect();
        hb.capabilities
            .insert(0, "y".repeat(MAX_CAPABILITY_LEN + 1));
        hb.endpoints = (0..50u64)
            .map(|i| Multiaddr::empty().with(Protocol::Memory(i)))
            .collect();
        hb.transport = "x".repeat(100);
        hb.apply_bounds();
        assert_eq!(hb.capabilities.len(), MAX_CAPABILITIES);
        assert_eq!(hb.capabilities[0], "0");
        assert_eq!(hb.endpoints.len(), MAX_ENDPOINTS);
        assert_eq!(hb.transport.len(), MAX_TRANSPORT_LEN);
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_on_both_sides() {
        let mut hb = sample();
        hb.capabilities = vec!["c".repeat(100); 30];
        assert!(matches!(
            encode(&hb, 1024),
            Err(FrameError::TooLarge { max: 1024, .. })
        ));
        let mut reader = Cursor::new((DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes().to_vec());
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut reader, &mut buf, DEFAULT_MAX_FRAME).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let valid = encode(&sample(), DEFAULT_MAX_FRAME).unwrap();
        let valid = &valid[FRAME_HEADER_LEN..];
        // Deterministic pseudo-random bytes (xorshift).
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let len = (next() % 300) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode(&random);
            // Mutations of a valid message reach deeper into the decoder.
            let mut mutated = valid.to_vec();
            for _ in 0..=(round % 4) {
                let i = (next() as usize) % mutated.len();
                mutated[i] = next() as u8;
            }
            let _ = decode(&mutated);
            let cut = (next() as usize) % valid.len();
            assert!(decode(&valid[..cut]).is_err());
        }
        // Huge declared lengths and deep nesting are errors, not allocations
        // or stack overflows.
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0x81; 10_000]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn malformed_errors_are_told_apart_from_stream_failures() {
        assert!(HeartbeatError::Decode("x".into()).is_malformed());
        assert!(HeartbeatError::Frame(FrameError::TooLarge { len: 2, max: 1 }).is_malformed());
        assert!(!HeartbeatError::Frame(FrameError::Truncated).is_malformed());
        assert!(!HeartbeatError::Closed.is_malformed());
    }
}
