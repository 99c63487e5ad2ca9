//! Framing of the peer wire protocol: a 4-byte big-endian length, then an encoded
//! `p2p.wire.v1.Frame`. The reader checks the length against its current limit before it
//! allocates anything; chunk payloads decode as slices of the received buffer (no copy).

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use p2p_proto::wire::v1::{Frame, frame::Body};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Version of the wire protocol this build speaks. Version 2 runs inside TLS 1.3 with mutual
/// authentication; version 1 (plaintext) is not spoken any more.
pub const PROTOCOL_VERSION: u32 = 2;

/// Capability bits (`p2p.wire.v1.Capability`).
pub mod caps {
    /// zstd compression of chunks.
    pub const COMPRESSION: u32 = 1;
    /// Chunk-level resume.
    pub const RESUME: u32 = 2;
    /// Folder transfers.
    pub const FOLDER: u32 = 4;
    /// More than one chunk in flight.
    pub const WINDOWED: u32 = 8;
    /// What this build supports.
    pub const SUPPORTED: u32 = COMPRESSION | RESUME | FOLDER | WINDOWED;
}

/// Frame limit during the handshake.
pub const HANDSHAKE_MAX_FRAME: usize = 1 << 20;
/// Frame limit for anything but chunks once the session is up (a manifest of a big folder).
pub const CONTROL_MAX_FRAME: usize = 32 << 20;
/// Room for a chunk's header fields on top of its payload.
pub const CHUNK_OVERHEAD: usize = 64 << 10;

/// Errors of reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection ended between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The connection failed or ended inside a frame.
    #[error("connection error")]
    Io(#[from] std::io::Error),
    /// The announced length is above the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes are not a valid frame.
    #[error("malformed frame")]
    Decode(#[from] prost::DecodeError),
    /// A frame without a body.
    #[error("empty frame")]
    Empty,
    /// Nothing arrived for the idle timeout.
    #[error("peer silent")]
    Idle,
}

/// Encodes a frame body with its length prefix, ready to be written.
pub fn encode(body: Body) -> Bytes {
    let frame = Frame { body: Some(body) };
    let len = frame.encoded_len();
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = frame.encode(&mut buf);
    buf.freeze()
}

/// Reads one frame from `r`, refusing lengths above `max`.
///
/// # Errors
/// [`WireError`]: closed, I/O, too large, malformed or empty.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Body, WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await?;
    let frame = Frame::decode(buf.freeze())?;
    frame.body.ok_or(WireError::Empty)
}

/// First byte of an encoded `Frame` whose body is a `Chunk` (field 8, length-delimited).
const CHUNK_TAG: u8 = (8 << 3) | 2;

/// Reads one frame, with a tighter limit for chunk frames: a frame longer than `chunk_max` is
/// refused before allocation unless its first byte shows it is not a chunk, in which case
/// `other_max` applies.
///
/// # Errors
/// As [`read_frame`].
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    chunk_max: usize,
    other_max: usize,
) -> Result<Body, WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(WireError::Idle),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    let max = chunk_max.max(other_max);
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            WireError::Idle
        } else {
            WireError::Io(e)
        }
    })?;
    let max = if tag[0] == CHUNK_TAG {
        chunk_max
    } else {
        other_max
    };
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut buf = BytesMut::zeroed(len);
    buf[0] = tag[0];
    r.read_exact(&mut buf[1..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            WireError::Idle
        } else {
            WireError::Io(e)
        }
    })?;
    let frame = Frame::decode(buf.freeze())?;
    let body = frame.body.ok_or(WireError::Empty)?;
    // The first byte can lie (protobuf keeps the last oneof field): check the real kind.
    if matches!(body, Body::Chunk(_)) && len > chunk_max {
        return Err(WireError::TooLarge {
            len,
            max: chunk_max,
        });
    }
    Ok(body)
}

/// Reads one frame like [`read_frame_limited`], failing with [`WireError::Idle`] only when no
/// byte at all arrives for `idle` — a large frame on a slow link is not "silence".
///
/// # Errors
/// As [`read_frame_limited`], plus `Idle`.
pub async fn read_frame_idle<R: AsyncRead + Unpin>(
    r: &mut R,
    chunk_max: usize,
    other_max: usize,
    idle: std::time::Duration,
) -> Result<Body, WireError> {
    let mut timed = IdleReader {
        inner: r,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
    };
    read_frame_limited(&mut timed, chunk_max, other_max).await
}

/// A reader that fails with `TimedOut` when no byte arrives for `idle`; every byte resets it.
struct IdleReader<'a, R> {
    inner: &'a mut R,
    idle: std::time::Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleReader<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.sleep.as_mut().reset(deadline);
                }
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => match this.sleep.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle",
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

/// Short name of a frame body, for logs and errors.
pub fn body_name(b: &Body) -> &'static str {
    match b {
        Body::Hello(_) => "Hello",
        Body::HelloAck(_) => "HelloAck",
        Body::Config(_) => "Config",
        Body::ConfigAck(_) => "ConfigAck",
        Body::TransferInfo(_) => "TransferInfo",
        Body::Ready(_) => "Ready",
        Body::Reject(_) => "Reject",
        Body::Chunk(_) => "Chunk",
        Body::ChunkAck(_) => "ChunkAck",
        Body::FileDone(_) => "FileDone",
        Body::FileResult(_) => "FileResult",
        Body::Complete(_) => "Complete",
        Body::CompleteAck(_) => "CompleteAck",
        Body::Cancel(_) => "Cancel",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Error(_) => "Error",
    }
}

#[cfg(test)]
mod tests {
    use p2p_proto::wire::v1::{Chunk, Ping};

    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let data = Bytes::from(vec![7u8; 1000]);
        let bytes = encode(Body::Chunk(Chunk {
            transfer_id: "t".into(),
            file_index: 1,
            chunk_index: 2,
            flags: 0,
            crc32: 3,
            data: data.clone(),
        }));
        let mut r = &bytes[..];
        match read_frame(&mut r, 2000).await.unwrap() {
            Body::Chunk(c) => assert_eq!(c.data, data),
            other => panic!("{}", body_name(&other)),
        }
        let mut r = &bytes[..];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(WireError::TooLarge { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut empty, 100).await,
            Err(WireError::Closed)
        ));
        let ping = encode(Body::Ping(Ping { nonce: 9 }));
        let mut truncated = &ping[..ping.len() - 1];
        assert!(matches!(
            read_frame(&mut truncated, 100).await,
            Err(WireError::Io(_))
        ));
        let mut garbage: &[u8] = &[0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut garbage, 100).await,
            Err(WireError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn chunk_frames_have_their_own_limit() {
        let chunk = encode(Body::Chunk(Chunk {
            data: Bytes::from(vec![1u8; 5000]),
            ..Default::default()
        }));
        let ping = encode(Body::Ping(Ping { nonce: 1 }));
        let mut r = &chunk[..];
        assert!(matches!(
            read_frame_limited(&mut r, 4096, 1 << 20).await,
            Err(WireError::TooLarge { max: 4096, .. })
        ));
        let mut r = &chunk[..];
        assert!(matches!(
            read_frame_limited(&mut r, 8192, 100).await,
            Ok(Body::Chunk(_))
        ));
        let mut r = &ping[..];
        assert!(matches!(
            read_frame_limited(&mut r, 1, 100).await,
            Ok(Body::Ping(_))
        ));
    }

    #[tokio::test]
    async fn a_huge_length_is_refused_before_allocating() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        match read_frame(&mut r, CONTROL_MAX_FRAME).await {
            Err(WireError::TooLarge { len, .. }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("{other:?}"),
        }
    }
}
