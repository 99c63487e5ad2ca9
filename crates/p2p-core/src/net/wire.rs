//! Framing of the peer wire protocol: a 4-byte big-endian length, then an encoded
//! `p2p.wire.v1.Frame`. The reader checks the length against its current limit before it
//! allocates anything sized by it; chunk payloads decode as slices of the received buffer (no
//! copy), and a chunk is encoded with its payload kept apart ([`OutFrame`]) so that the
//! sender never copies it into a frame either.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use p2p_proto::wire::v1::{self as wire, Frame, frame::Body};
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
    /// More than one TCP connection (lane) per session.
    pub const LANES: u32 = 16;
    /// Small files have a window of their own (`transfer::SMALL_FILE_WINDOW`).
    pub const SMALL_FILES: u32 = 32;
    /// What this build supports.
    pub const SUPPORTED: u32 = COMPRESSION | RESUME | FOLDER | WINDOWED | LANES | SMALL_FILES;
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

/// A frame ready for the session's writer: its encoded bytes, and for a chunk the payload kept
/// apart — written right after `head`, never copied into it. `head` followed by `payload` is
/// exactly the encoding of the frame.
#[derive(Debug, Clone, Default)]
pub struct OutFrame {
    /// The length prefix and every encoded byte before the payload.
    pub head: Bytes,
    /// A chunk's payload; empty for every other frame.
    pub payload: Bytes,
}

impl OutFrame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for OutFrame {
    fn from(head: Bytes) -> Self {
        OutFrame {
            head,
            payload: Bytes::new(),
        }
    }
}

/// Tag of `Chunk.data` (field 6, length-delimited).
const CHUNK_DATA_TAG: u8 = (6 << 3) | 2;

/// Encodes a `Chunk` frame without copying `data`: the frame is a small head (length prefix,
/// the other fields, then the data field's tag and length) followed by `data` itself. Every
/// field but `data` is encoded first, so `data` ends the frame (protobuf decodes fields in any
/// order; apart from that order the bytes are what [`encode`] makes of the same chunk).
#[allow(clippy::too_many_arguments)]
pub fn encode_chunk(
    transfer_id: &str,
    attempt: u32,
    file_index: u32,
    chunk_index: u64,
    flags: u32,
    crc32: u32,
    data: Bytes,
) -> OutFrame {
    let fields = wire::Chunk {
        transfer_id: transfer_id.to_owned(),
        file_index,
        chunk_index,
        flags,
        crc32,
        data: Bytes::new(),
        attempt,
    };
    let fields_len = fields.encoded_len();
    // proto3 leaves an empty bytes field out, as prost does.
    let data_head = if data.is_empty() {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(data.len() as u64)
    };
    let chunk_len = fields_len + data_head + data.len();
    let frame_len = 1 + prost::encoding::encoded_len_varint(chunk_len as u64) + chunk_len;
    let mut head = BytesMut::with_capacity(4 + frame_len - data.len());
    head.put_u32(frame_len as u32);
    head.put_u8(CHUNK_TAG);
    prost::encoding::encode_varint(chunk_len as u64, &mut head);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = fields.encode(&mut head);
    if !data.is_empty() {
        head.put_u8(CHUNK_DATA_TAG);
        prost::encoding::encode_varint(data.len() as u64, &mut head);
    }
    OutFrame {
        head: head.freeze(),
        payload: data,
    }
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

/// A read that fills the buffer by at least this much when a frame's head is missing: many
/// small frames (acknowledgements) arrive in one read, and what a read takes beyond the frame
/// in progress — to be moved when the buffer is renewed — stays small next to a chunk.
const HEAD_READ: usize = 16 << 10;

/// Frames longer than this (chunks) are read into a buffer of their own from the pool.
const LARGE_FRAME: usize = 64 << 10;
/// Buffers a connection's pool keeps for reuse …
const POOL_BUFFERS: usize = 4;
/// … if they are no larger than this (chunk sizes up to 4 MiB): an idle session holds little.
const POOL_MAX_BUFFER: usize = (4 << 20) + CHUNK_OVERHEAD;

/// The chunk buffers of one connection. A frame's buffer comes back here when the last slice
/// of it (the chunk's payload, on the receiving thread) is dropped, whichever frame that is:
/// a steady stream of chunks reuses a few buffers instead of allocating — and faulting in —
/// fresh memory for each (malloc hands large blocks back to the system and takes them again).
#[derive(Debug, Default)]
struct Pool {
    bufs: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        match self.bufs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// An empty buffer with room for `size` bytes.
    fn take(&self, size: usize) -> Vec<u8> {
        let reused = {
            let mut bufs = self.lock();
            bufs.iter()
                .position(|b| b.capacity() >= size)
                .map(|i| bufs.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(size),
        }
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() > POOL_MAX_BUFFER {
            return;
        }
        let mut bufs = self.lock();
        if bufs.len() < POOL_BUFFERS {
            bufs.push(buf);
        }
    }
}

/// A frame's bytes in a pooled buffer; back to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: std::sync::Arc<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

/// Reads the frames of one connection through buffers of its own: few, large reads; a chunk's
/// bytes are read straight into the buffer its payload is then a slice of (no zero-filling, no
/// copy), and that buffer is reused once the payload is dropped.
///
/// Limits as [`read_frame_limited`]: the announced length (and, by the frame's first byte,
/// whether a chunk's limit applies) is checked before anything sized by it is allocated. A
/// read fails with [`WireError::Idle`] when no byte at all arrives for the idle time — a large
/// frame on a slow link is not silence.
pub struct FrameReader<R> {
    inner: R,
    // Frame heads and small frames; the start of a large one.
    buf: BytesMut,
    pool: std::sync::Arc<Pool>,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `inner` that gives up after `idle` without a byte.
    pub fn new(inner: R, idle: Duration) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            pool: std::sync::Arc::default(),
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Reads at most `limit` more bytes (all that is there if `usize::MAX`) into the reader's
    /// own buffer; 0 at end of stream.
    async fn read_into_buf(&mut self, limit: usize) -> Result<usize, WireError> {
        let FrameReader {
            inner,
            buf,
            idle,
            sleep,
            ..
        } = self;
        read_some(inner, buf, limit, *idle, sleep).await
    }

    /// Reads the next frame; frames longer than `chunk_max` (chunks) or `other_max` (anything
    /// else) are refused.
    ///
    /// # Errors
    /// [`WireError`]: closed (between frames), I/O, too large, malformed, empty or idle.
    pub async fn next(&mut self, chunk_max: usize, other_max: usize) -> Result<Body, WireError> {
        // The length prefix and the frame's first byte.
        while self.buf.len() < 5 {
            if self.buf.len() >= 4 {
                // A length above both limits is refused before its first byte arrives.
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                let max = chunk_max.max(other_max);
                if len > max {
                    return Err(WireError::TooLarge { len, max });
                }
                if len == 0 {
                    return Err(WireError::Empty);
                }
            }
            if self.buf.capacity() - self.buf.len() < 5 {
                self.buf.reserve(HEAD_READ);
            }
            if self.read_into_buf(usize::MAX).await? == 0 {
                return Err(if self.buf.len() < 4 {
                    WireError::Closed
                } else {
                    WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let max = if self.buf[4] == CHUNK_TAG {
            chunk_max
        } else {
            other_max
        };
        if len > max {
            return Err(WireError::TooLarge { len, max });
        }
        // Only now, with the length checked, is room for the whole frame made.
        let total = 4 + len;
        let mut frame = if total > LARGE_FRAME {
            let mut body = self.pool.take(total);
            let held = self.buf.len().min(total);
            body.extend_from_slice(&self.buf[..held]);
            self.buf.advance(held);
            while body.len() < total {
                let want = total - body.len();
                let FrameReader {
                    inner, idle, sleep, ..
                } = self;
                if read_some(inner, &mut body, want, *idle, sleep).await? == 0 {
                    return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Bytes::from_owner(Pooled {
                buf: body,
                pool: self.pool.clone(),
            })
        } else {
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
            }
            while self.buf.len() < total {
                let want = total - self.buf.len();
                if self.read_into_buf(want).await? == 0 {
                    return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            self.buf.split_to(total).freeze()
        };
        frame.advance(4);
        let body = Frame::decode(frame)?.body.ok_or(WireError::Empty)?;
        // The first byte can lie (protobuf keeps the last oneof field): check the real kind.
        if matches!(body, Body::Chunk(_)) && len > chunk_max {
            return Err(WireError::TooLarge {
                len,
                max: chunk_max,
            });
        }
        Ok(body)
    }
}

/// One read of at most `limit` bytes into `buf`'s free room; 0 at the end of the stream;
/// [`WireError::Idle`] if no byte arrives for `idle`.
async fn read_some<R: AsyncRead + Unpin, B: BufMut>(
    inner: &mut R,
    buf: &mut B,
    limit: usize,
    idle: Duration,
    sleep: &mut Pin<Box<tokio::time::Sleep>>,
) -> Result<usize, WireError> {
    sleep.as_mut().reset(tokio::time::Instant::now() + idle);
    let read = async {
        if limit == usize::MAX {
            inner.read_buf(buf).await
        } else {
            (&mut *inner).take(limit as u64).read_buf(buf).await
        }
    };
    tokio::select! {
        biased;
        r = read => r.map_err(|e| if e.kind() == std::io::ErrorKind::TimedOut {
            WireError::Idle
        } else {
            WireError::Io(e)
        }),
        () = sleep.as_mut() => Err(WireError::Idle),
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
            attempt: 4,
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

    fn chunk(data: &[u8]) -> Chunk {
        Chunk {
            transfer_id: "0123456789abcdef".into(),
            file_index: 7,
            chunk_index: 300,
            flags: 1,
            crc32: 0xdead_beef,
            data: Bytes::copy_from_slice(data),
            attempt: 3,
        }
    }

    #[test]
    fn a_chunk_encodes_with_its_payload_apart_and_last() {
        for len in [0usize, 1, 127, 128, 4095, 4096, 16_384, 1 << 20] {
            for attempt in [0, 1, 300] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let mut c = chunk(&data);
                c.attempt = attempt;
                let whole = encode(Body::Chunk(c.clone()));
                let apart = encode_chunk(
                    &c.transfer_id,
                    c.attempt,
                    c.file_index,
                    c.chunk_index,
                    c.flags,
                    c.crc32,
                    c.data.clone(),
                );
                assert_eq!(apart.len(), whole.len(), "length of a {len}-byte chunk");
                assert_eq!(apart.payload, c.data, "the payload is the data, untouched");
                let mut joined = apart.head.to_vec();
                joined.extend_from_slice(&apart.payload);
                assert_eq!(
                    u32::from_be_bytes(joined[..4].try_into().unwrap()) as usize,
                    joined.len() - 4
                );
                assert_eq!(joined[4], CHUNK_TAG);
                let decoded = Frame::decode(&joined[4..]).unwrap().body;
                assert_eq!(decoded, Some(Body::Chunk(c)), "a {len}-byte chunk decodes");
            }
        }
    }

    /// A reader that hands out at most `step` bytes per read, to cut frames at every place.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_frame_reader_reads_frames_in_any_cut() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 5000, 100, 70_000, 3];
        for (i, len) in sizes.iter().enumerate() {
            stream.extend_from_slice(&encode(Body::Ping(Ping { nonce: i as u64 })));
            stream.extend_from_slice(&encode(Body::Chunk(chunk(&vec![i as u8; *len]))));
        }
        for step in [1, 2, 5, 7, 4096, 1 << 20] {
            let mut r = FrameReader::new(
                Trickle {
                    data: &stream,
                    step,
                },
                Duration::from_secs(5),
            );
            for (i, len) in sizes.iter().enumerate() {
                match r.next(1 << 20, 100).await.unwrap() {
                    Body::Ping(p) => assert_eq!(p.nonce, i as u64),
                    other => panic!("{}", body_name(&other)),
                }
                match r.next(1 << 20, 100).await.unwrap() {
                    Body::Chunk(c) => assert_eq!(c.data, vec![i as u8; *len]),
                    other => panic!("{}", body_name(&other)),
                }
            }
            assert!(matches!(r.next(1 << 20, 100).await, Err(WireError::Closed)));
        }
    }

    #[tokio::test]
    async fn the_frame_reader_reuses_buffers_and_never_those_in_use() {
        let mut stream = Vec::new();
        for i in 0..40u8 {
            stream.extend_from_slice(&encode(Body::Chunk(chunk(&vec![i; 100_000]))));
        }
        // Payloads dropped as they come: a few buffers go round.
        let mut r = FrameReader::new(&stream[..], Duration::from_secs(5));
        let mut seen = std::collections::HashSet::new();
        for i in 0..40u8 {
            match r.next(1 << 20, 100).await.unwrap() {
                Body::Chunk(c) => {
                    assert_eq!(c.data, vec![i; 100_000]);
                    seen.insert(c.data.as_ptr() as usize);
                }
                other => panic!("{}", body_name(&other)),
            }
        }
        assert!(seen.len() <= 3, "{} buffers for 40 chunks", seen.len());
        // Payloads kept: nothing is overwritten.
        let mut r = FrameReader::new(&stream[..], Duration::from_secs(5));
        let mut kept = Vec::new();
        for _ in 0..40 {
            match r.next(1 << 20, 100).await.unwrap() {
                Body::Chunk(c) => kept.push(c.data),
                other => panic!("{}", body_name(&other)),
            }
        }
        for (i, data) in kept.iter().enumerate() {
            assert_eq!(*data, vec![i as u8; 100_000]);
        }
    }

    #[tokio::test]
    async fn the_frame_reader_keeps_the_limits() {
        let big = encode(Body::Chunk(chunk(&[1u8; 5000])));
        let mut r = FrameReader::new(&big[..], Duration::from_secs(5));
        assert!(matches!(
            r.next(4096, 1 << 20).await,
            Err(WireError::TooLarge { max: 4096, .. })
        ));
        let ping = encode(Body::Ping(Ping { nonce: 1 }));
        let mut r = FrameReader::new(&ping[..], Duration::from_secs(5));
        assert!(matches!(
            r.next(1 << 20, 2).await,
            Err(WireError::TooLarge { max: 2, .. })
        ));
        // Refused on its length alone, before any further byte.
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[0xff, 0xff, 0xff, 0xf0])
            .await
            .unwrap();
        let mut r = FrameReader::new(rx, Duration::from_secs(5));
        assert!(matches!(
            r.next(1 << 20, 1 << 20).await,
            Err(WireError::TooLarge { .. })
        ));
        let empty: &[u8] = &[0, 0, 0, 0];
        let mut r = FrameReader::new(empty, Duration::from_secs(5));
        assert!(matches!(r.next(100, 100).await, Err(WireError::Empty)));
        let truncated = &ping[..ping.len() - 1];
        let mut r = FrameReader::new(truncated, Duration::from_secs(5));
        assert!(matches!(r.next(100, 100).await, Err(WireError::Io(_))));
        // A frame that claims to be something else but decodes as a chunk gets the chunk limit.
        let mut liar = big.to_vec();
        let lie = encode(Body::Ping(Ping { nonce: 1 }));
        let mut forged = Vec::new();
        let body_len = (liar.len() - 4) + (lie.len() - 4);
        forged.extend_from_slice(&(body_len as u32).to_be_bytes());
        forged.extend_from_slice(&lie[4..]);
        forged.extend_from_slice(&liar.split_off(4));
        let mut r = FrameReader::new(&forged[..], Duration::from_secs(5));
        assert!(matches!(
            r.next(4096, 1 << 20).await,
            Err(WireError::TooLarge { max: 4096, .. })
        ));
    }

    #[tokio::test]
    async fn the_frame_reader_gives_up_on_a_silent_peer() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(rx, Duration::from_millis(100));
        // Half a frame, then silence.
        let ping = encode(Body::Ping(Ping { nonce: 1 }));
        tokio::io::AsyncWriteExt::write_all(&mut tx, &ping[..3])
            .await
            .unwrap();
        assert!(matches!(r.next(100, 100).await, Err(WireError::Idle)));
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
