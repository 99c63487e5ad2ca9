//! Chunk acknowledgements, held back and sent together: many small files must not cost a
//! channel message, a wake-up and a TLS record per chunk.

use bytes::{BufMut, BytesMut};
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ChunkStatus};
use tokio::sync::mpsc;

use super::ReceiveError;
use crate::net::wire::{self as codec, OutFrame};

/// Acknowledgements held back at most …
const ACK_BATCH: usize = 64;
/// … and the most payload they may acknowledge: a large chunk is acknowledged at once.
const ACK_BYTES: usize = 256 << 10;

/// Acknowledgements (file, chunk, status) not yet handed to the session's writer, and the
/// payload bytes they acknowledge.
#[derive(Default)]
pub(super) struct Acks {
    held: Vec<(u32, u64, ChunkStatus)>,
    bytes: usize,
}

impl Acks {
    /// Holds back the acknowledgement of a chunk (`bytes` of payload written). Returns whether
    /// what is held should go out now: a status other than OK, `ACK_BATCH` of them, or
    /// `ACK_BYTES` acknowledged. (They also go out when no frame is waiting, and before any
    /// other frame: the receiving thread's business.)
    pub(super) fn hold(
        &mut self,
        file_index: u32,
        chunk_index: u64,
        status: ChunkStatus,
        bytes: usize,
    ) -> bool {
        self.held.push((file_index, chunk_index, status));
        self.bytes += bytes;
        status != ChunkStatus::Ok || self.held.len() >= ACK_BATCH || self.bytes >= ACK_BYTES
    }

    /// Drops the held acknowledgements of file `fi` (its `FileResult` will answer for them).
    pub(super) fn drop_file(&mut self, fi: usize) {
        self.held.retain(|&(f, _, _)| f as usize != fi);
    }

    /// Hands what is held to the session's writer, as one message.
    ///
    /// # Errors
    /// [`ReceiveError::SessionLost`] if the writer is gone.
    pub(super) fn flush(
        &mut self,
        transfer_id: &str,
        writer: &mpsc::Sender<OutFrame>,
    ) -> Result<(), ReceiveError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let mut frames = BytesMut::new();
        for (file_index, chunk_index, status) in self.held.drain(..) {
            frames.put_slice(&codec::encode(Body::ChunkAck(wire::ChunkAck {
                transfer_id: transfer_id.to_owned(),
                file_index,
                chunk_index,
                status: status as i32,
            })));
        }
        self.bytes = 0;
        writer
            .blocking_send(frames.freeze().into())
            .map_err(|_| ReceiveError::SessionLost)
    }
}
