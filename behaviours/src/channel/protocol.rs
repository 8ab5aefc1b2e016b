//! The channel protocol: its name and the frame encoding on the stream.
//!
//! A channel stream carries a sequence of frames. Each frame is a 4-byte
//! big-endian length followed by that many bytes of payload (for Atmosphere
//! nodes, one CBOR-encoded message; see `docs/wire-format.md`). Frames larger
//! than the reader's limit end the stream with [`FrameError::TooLarge`].

use futures::{AsyncRead, AsyncReadExt};
use libp2p::StreamProtocol;

/// The protocol name negotiated for channel streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/atmosphere/channel/1.0.0");

/// Bytes of framing added to each payload.
pub const FRAME_HEADER_LEN: usize = 4;

/// Errors while reading or encoding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame declared (or a payload has) more bytes than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared or attempted length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// Any other I/O error on the stream.
    #[error("channel stream I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends one frame carrying `payload` to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, payload: &[u8], max: usize) -> Result<(), FrameError> {
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max,
    })?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// Reads the next frame into `buf` (replacing its contents).
///
/// Returns `Ok(false)` on a clean end of stream between frames.
pub async fn read_frame<R>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, b"one", 16).unwrap();
        encode_frame(&mut wire, b"", 16).unwrap();
        encode_frame(&mut wire, b"three", 16).unwrap();
        let mut reader = Cursor::new(wire);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        while read_frame(&mut reader, &mut buf, 16).await.unwrap() {
            seen.push(buf.clone());
        }
        assert_eq!(seen, vec![b"one".to_vec(), b"".to_vec(), b"three".to_vec()]);
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut wire = Vec::new();
        assert!(matches!(
            encode_frame(&mut wire, &[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
        let mut reader = Cursor::new(1_000_000u32.to_be_bytes().to_vec());
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut reader, &mut buf, 1024).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut reader = Cursor::new(vec![0, 0, 0, 5, b'a']);
        assert!(matches!(
            read_frame(&mut reader, &mut buf, 1024).await,
            Err(FrameError::Truncated)
        ));
        let mut reader = Cursor::new(vec![0, 0]);
        assert!(matches!(
            read_frame(&mut reader, &mut buf, 1024).await,
            Err(FrameError::Truncated)
        ));
    }
}
