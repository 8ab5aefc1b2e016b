//! A direct CBOR codec for the hot app-channel frames: `Publish`, `Request`
//! and `Response { Ok }`.
//!
//! It writes exactly the bytes ciborium writes for these [`Frame`]s
//! (externally tagged enum, struct fields as a text-keyed map, minimal-length
//! heads), so the wire format is unchanged; the tests compare both encoders
//! byte for byte. It decodes that shape without serde's generic machinery;
//! anything else (other frames, other key orders, indefinite lengths) returns
//! `None` and the caller falls back to ciborium.

use bytes::Bytes;

use crate::wire::{CallResult, Frame};

const UINT: u8 = 0;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const MAP: u8 = 5;

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encodes a hot frame; `false` (nothing written) for other frames.
pub(crate) fn encode(frame: &Frame, out: &mut Vec<u8>) -> bool {
    match frame {
        Frame::Publish {
            seq,
            topic,
            payload,
            ts,
        } => {
            head(out, MAP, 1);
            text(out, "Publish");
            head(out, MAP, 4);
            text(out, "seq");
            head(out, UINT, *seq);
            text(out, "topic");
            text(out, topic);
            text(out, "payload");
            bytes(out, payload);
            text(out, "ts");
            head(out, UINT, *ts);
        }
        Frame::Request { seq, id, uri, args } => {
            head(out, MAP, 1);
            text(out, "Request");
            head(out, MAP, 4);
            text(out, "seq");
            head(out, UINT, *seq);
            text(out, "id");
            head(out, UINT, *id);
            text(out, "uri");
            text(out, uri);
            text(out, "args");
            bytes(out, args);
        }
        Frame::Response {
            seq,
            id,
            result: CallResult::Ok(value),
        } => {
            head(out, MAP, 1);
            text(out, "Response");
            head(out, MAP, 3);
            text(out, "seq");
            head(out, UINT, *seq);
            text(out, "id");
            head(out, UINT, *id);
            text(out, "result");
            head(out, MAP, 1);
            text(out, "Ok");
            bytes(out, value);
        }
        _ => return false,
    }
    true
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn head(&mut self, major: u8) -> Option<u64> {
        let first = *self.buf.get(self.pos)?;
        if first >> 5 != major {
            return None;
        }
        self.pos += 1;
        let info = first & 0x1f;
        let width = match info {
            0..=23 => return Some(u64::from(info)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None, // indefinite lengths and reserved values
        };
        let raw = self.buf.get(self.pos..self.pos + width)?;
        self.pos += width;
        Some(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn slice(&mut self, major: u8) -> Option<&'a [u8]> {
        let len = usize::try_from(self.head(major)?).ok()?;
        let end = self.pos.checked_add(len)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.slice(TEXT)?).ok()
    }

    fn key(&mut self, expected: &str) -> Option<()> {
        (self.text()? == expected).then_some(())
    }

    fn bytes(&mut self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self.slice(BYTES)?))
    }

    fn map(&mut self, len: u64) -> Option<()> {
        (self.head(MAP)? == len).then_some(())
    }
}

/// Decodes a hot frame in the canonical shape; `None` for anything else.
pub(crate) fn decode(buf: &[u8]) -> Option<Frame> {
    let mut c = Cursor { buf, pos: 0 };
    c.map(1)?;
    let frame = match c.text()? {
        "Publish" => {
            c.map(4)?;
            c.key("seq")?;
            let seq = c.head(UINT)?;
            c.key("topic")?;
            let topic = c.text()?.to_owned();
            c.key("payload")?;
            let payload = c.bytes()?;
            c.key("ts")?;
            let ts = c.head(UINT)?;
            Frame::Publish {
                seq,
                topic,
                payload,
                ts,
            }
        }
        "Request" => {
            c.map(4)?;
            c.key("seq")?;
            let seq = c.head(UINT)?;
            c.key("id")?;
            let id = c.head(UINT)?;
            c.key("uri")?;
            let uri = c.text()?.to_owned();
            c.key("args")?;
            let args = c.bytes()?;
            Frame::Request { seq, id, uri, args }
        }
        "Response" => {
            c.map(3)?;
            c.key("seq")?;
            let seq = c.head(UINT)?;
            c.key("id")?;
            let id = c.head(UINT)?;
            c.key("result")?;
            c.map(1)?;
            c.key("Ok")?;
            let value = c.bytes()?;
            Frame::Response {
                seq,
                id,
                result: CallResult::Ok(value),
            }
        }
        _ => return None,
    };
    (c.pos == buf.len()).then_some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        let mut frames = Vec::new();
        for len in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000] {
            let payload = Bytes::from(vec![0xa5; len]);
            let name = "t".repeat(len.min(300));
            for n in [
                0u64,
                23,
                24,
                255,
                256,
                65_535,
                65_536,
                u32::MAX as u64 + 1,
                u64::MAX,
            ] {
                frames.push(Frame::Publish {
                    seq: n,
                    topic: format!("a.{name}"),
                    payload: payload.clone(),
                    ts: n,
                });
                frames.push(Frame::Request {
                    seq: n / 2,
                    id: n,
                    uri: "node.echo".into(),
                    args: payload.clone(),
                });
                frames.push(Frame::Response {
                    seq: n,
                    id: n,
                    result: CallResult::Ok(payload.clone()),
                });
            }
        }
        frames
    }

    #[test]
    fn writes_exactly_what_ciborium_writes() {
        for frame in frames() {
            let mut ours = Vec::new();
            assert!(encode(&frame, &mut ours));
            let mut reference = Vec::new();
            ciborium::into_writer(&frame, &mut reference).unwrap();
            assert_eq!(ours, reference, "{frame:?}");
        }
    }

    #[test]
    fn reads_back_ciborium_output() {
        for frame in frames() {
            let mut reference = Vec::new();
            ciborium::into_writer(&frame, &mut reference).unwrap();
            assert_eq!(decode(&reference), Some(frame));
        }
    }

    #[test]
    fn other_or_malformed_input_is_left_to_the_fallback() {
        let other = Frame::Response {
            seq: 1,
            id: 1,
            result: CallResult::Denied("no".into()),
        };
        let mut buf = Vec::new();
        assert!(!encode(&other, &mut buf));
        ciborium::into_writer(&other, &mut buf).unwrap();
        assert_eq!(decode(&buf), None);
        let mut publish = Vec::new();
        encode(
            &Frame::Publish {
                seq: 1,
                topic: "a".into(),
                payload: Bytes::from_static(b"xyz"),
                ts: 1,
            },
            &mut publish,
        );
        for cut in 0..publish.len() {
            assert_eq!(decode(&publish[..cut]), None, "truncated at {cut}");
        }
        publish.push(0);
        assert_eq!(decode(&publish), None, "trailing byte");
        assert_eq!(decode(b"\xff\xff\xff"), None);
        assert_eq!(
            decode(&[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
