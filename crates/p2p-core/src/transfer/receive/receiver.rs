//! The receiving thread's loop: it routes a transfer's frames — chunks written in order and
//! acknowledged, files verified when complete and handed to the place pipeline, checkpoints
//! taken for a resume — until the transfer completes, fails, is cancelled or interrupted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ChunkStatus};
use tokio::sync::mpsc;

use super::acks::Acks;
use super::resume::{FileState, Files};
use super::{CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, ReceiveEnd, ReceiveError, TRANSFER_IDLE};
use crate::error_chain;
use crate::net::wire::{self as codec, OutFrame};
use crate::transfer::TransferEntry;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::place::PlaceError;
use crate::transfer::place::destination::Destination;
use crate::transfer::place::file::{self, FileSpec, Verified};
use crate::transfer::place::filehash::Hashing;
use crate::transfer::place::partfile::{AlignedBuf, PartFile};
use crate::transfer::place::sync::{Queue, Refused, Synced};

/// The place layer's view of a file of the manifest.
pub(super) fn spec(entry: &wire::FileEntry) -> FileSpec<'_> {
    FileSpec {
        path: &entry.path,
        size: entry.size,
        mode: entry.mode,
        mtime: UNIX_EPOCH
            + Duration::new(
                entry.mtime_sec.max(0) as u64,
                entry.mtime_nsec.min(999_999_999),
            ),
    }
}

pub(super) struct Receiver<'a> {
    info: &'a wire::TransferInfo,
    dest: &'a Destination,
    writer: &'a mpsc::Sender<OutFrame>,
    entry: &'a Arc<TransferEntry>,
    // The place pipeline's queue (the syncer's); dropped with the receiver to end it.
    pub(super) queue: Queue<'a>,
    // Acknowledgements not yet handed to the session's writer (see `ack`).
    acks: Acks,
    // Chunks held out of order across all files; a sender keeps at most `window` chunks
    // unacknowledged in all, so this stays below `window`.
    pending_total: usize,
    // Payload bytes written since the last checkpoint.
    unrecorded: u64,
    last_checkpoint: Instant,
    // Where chunks are copied for direct writes (see `PartFile::write_at`).
    aligned: AlignedBuf,
    // The hashing thread of the files of more than one chunk.
    hashing: Hashing,
}

impl<'a> Receiver<'a> {
    pub(super) fn new(
        info: &'a wire::TransferInfo,
        dest: &'a Destination,
        writer: &'a mpsc::Sender<OutFrame>,
        entry: &'a Arc<TransferEntry>,
        queue: Queue<'a>,
    ) -> Self {
        Receiver {
            info,
            dest,
            writer,
            entry,
            queue,
            acks: Acks::default(),
            pending_total: 0,
            unrecorded: 0,
            last_checkpoint: Instant::now(),
            aligned: AlignedBuf::default(),
            hashing: Hashing::default(),
        }
    }
}

impl Receiver<'_> {
    pub(super) fn run(
        &mut self,
        rt: &tokio::runtime::Handle,
        files: &mut Files,
        frames: &mut mpsc::Receiver<Body>,
    ) -> ReceiveEnd {
        let info = self.info;
        let entry = self.entry;
        loop {
            if frames.is_empty() {
                // Nothing more to do right now: what was acknowledged goes out before waiting.
                if let Err(e) = self.flush_acks() {
                    return ReceiveEnd::Interrupted {
                        reason: error_chain(&e),
                        tell_peer: false,
                    };
                }
            }
            let next = rt.block_on(async {
                tokio::select! {
                    f = tokio::time::timeout(TRANSFER_IDLE, frames.recv()) => Some(f),
                    () = self.queue.failed() => None,
                }
            });
            let frame = match next {
                Some(Ok(Some(f))) => f,
                // The channel closes when the session ends, or when the transfer is cancelled
                // or stopped here.
                Some(Ok(None)) if entry.cancel.is_cancelled() => {
                    return ReceiveEnd::Cancelled("cancelled by receiver".into());
                }
                Some(Ok(None)) => {
                    return match entry.peer_fault.get() {
                        // The session's reader cut the peer off (and told it so).
                        Some(fault) => ReceiveEnd::Failed {
                            error: ReceiveError::PeerFault(fault.clone()),
                            tell_peer: false,
                        },
                        None => ReceiveEnd::Interrupted {
                            reason: ReceiveError::SessionLost.to_string(),
                            tell_peer: false,
                        },
                    };
                }
                Some(Err(_)) => {
                    return ReceiveEnd::Interrupted {
                        reason: ReceiveError::Idle(TRANSFER_IDLE).to_string(),
                        tell_peer: true,
                    };
                }
                // The placer failed (it told the sender already).
                None => {
                    return ReceiveEnd::Failed {
                        error: Refused::Stopped(self.queue.failure()).into(),
                        tell_peer: true,
                    };
                }
            };
            let step = match frame {
                Body::Chunk(c) => self.chunk(files, c),
                Body::FileDone(d) => self.file_done(files, d),
                Body::Complete(_) => {
                    let done = self.queue.files_done();
                    if done == info.files.len() as u64 {
                        let _ = self.send(Body::CompleteAck(wire::CompleteAck {
                            transfer_id: info.transfer_id.clone(),
                        }));
                        return ReceiveEnd::Completed;
                    }
                    Err(ReceiveError::EarlyComplete {
                        done,
                        total: info.files.len(),
                    })
                }
                Body::Cancel(c) if c.resumable => {
                    return ReceiveEnd::Interrupted {
                        reason: c.reason,
                        tell_peer: false,
                    };
                }
                Body::Cancel(c) => return ReceiveEnd::Cancelled(c.reason),
                other => Err(ReceiveError::Unexpected(codec::body_name(&other))),
            };
            match step.and_then(|()| self.maybe_checkpoint(files)) {
                Ok(()) => {}
                // The session's writer is gone: an interruption like any session loss.
                Err(e @ ReceiveError::SessionLost) => {
                    return ReceiveEnd::Interrupted {
                        reason: error_chain(&e),
                        tell_peer: false,
                    };
                }
                Err(error) => {
                    return match entry.peer_fault.get() {
                        // The session's reader cut the peer off meanwhile and told it so: a
                        // failure on frames queued before is its consequence, no news to the
                        // peer (which would hear of the transfer's end twice).
                        Some(fault) => ReceiveEnd::Failed {
                            error: ReceiveError::PeerFault(fault.clone()),
                            tell_peer: false,
                        },
                        None => ReceiveEnd::Failed {
                            error,
                            tell_peer: true,
                        },
                    };
                }
            }
        }
    }

    fn maybe_checkpoint(&mut self, files: &mut Files) -> Result<(), ReceiveError> {
        let due = self.unrecorded >= CHECKPOINT_BYTES
            || (self.unrecorded > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        // One checkpoint at a time: a slow disk delays the next one rather than queueing them.
        if due && !self.queue.checkpoint_pending() {
            self.checkpoint(files)?;
        }
        Ok(())
    }

    /// Hands every file written since the last checkpoint to the syncer, which syncs it and
    /// then records its chunks: a chunk is recorded only once its bytes are durable.
    pub(super) fn checkpoint(&mut self, files: &mut Files) -> Result<(), ReceiveError> {
        let mut maps = Vec::new();
        for (fi, state) in files.active.iter_mut() {
            // Without a temporary file there is nothing unrecorded: never written, or verified
            // (the syncer records it complete). An unnamed one holds a single chunk, which a
            // resume sends again anyway.
            let Some(PartFile {
                name: Some(path),
                file,
                ..
            }) = &state.temp
            else {
                continue;
            };
            if !state.dirty {
                continue;
            }
            state.dirty = false;
            let size = self.info.files.get(*fi).map_or(0, |f| f.size);
            let mut map = ChunkMap::new(chunk_count(size, self.info.chunk_size));
            map.set_prefix(state.next_chunk);
            maps.push(Synced {
                fi: *fi as u32,
                map,
                path: path.clone(),
                file: file.clone(),
            });
        }
        if !maps.is_empty() {
            self.queue.checkpoint(maps)?;
        }
        self.unrecorded = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Sends a frame, after the acknowledgements held back.
    fn send(&mut self, body: Body) -> Result<(), ReceiveError> {
        self.flush_acks()?;
        self.writer
            .blocking_send(codec::encode(body).into())
            .map_err(|_| ReceiveError::SessionLost)
    }

    /// Acknowledges a chunk (`bytes` of payload written). Acknowledgements of small chunks are
    /// held back and go out together (see `Acks::hold`) — when no frame is waiting, every
    /// `ACK_BATCH` of them or once they cover `ACK_BYTES` — so that many small files do not
    /// cost a channel message, a wake-up and a TLS record each.
    fn ack(
        &mut self,
        file_index: u32,
        chunk_index: u64,
        status: ChunkStatus,
        bytes: usize,
    ) -> Result<(), ReceiveError> {
        if self.acks.hold(file_index, chunk_index, status, bytes) {
            self.flush_acks()?;
        }
        Ok(())
    }

    /// A complete file's acknowledgements still held back are dropped: its `FileResult`
    /// acknowledges all its chunks. So every chunk gets one answer — its `ChunkAck` (sent
    /// before the file was handed to the syncer, hence before the `FileResult`) or the
    /// `FileResult` — and the sender's window bounds the answers it has to take.
    fn drop_acks_of(&mut self, fi: usize) {
        self.acks.drop_file(fi);
    }

    pub(super) fn flush_acks(&mut self) -> Result<(), ReceiveError> {
        self.acks.flush(&self.info.transfer_id, self.writer)
    }

    fn chunk_len(&self, file: &wire::FileEntry, chunk_index: u64) -> Option<usize> {
        let cs = u64::from(self.info.chunk_size);
        let start = chunk_index.checked_mul(cs)?;
        (start < file.size).then(|| (file.size - start).min(cs) as usize)
    }

    pub(super) fn chunk(&mut self, files: &mut Files, c: wire::Chunk) -> Result<(), ReceiveError> {
        let fi = c.file_index as usize;
        let entry = self
            .info
            .files
            .get(fi)
            .ok_or(ReceiveError::ChunkOfNoFile(fi))?;
        let expected =
            self.chunk_len(entry, c.chunk_index)
                .ok_or_else(|| ReceiveError::BeyondEnd {
                    chunk: c.chunk_index,
                    path: entry.path.clone(),
                })?;
        if c.data.len() > self.info.chunk_size as usize + codec::CHUNK_OVERHEAD {
            return Err(ReceiveError::Oversized {
                chunk: c.chunk_index,
                path: entry.path.clone(),
            });
        }
        if files.done[fi] {
            // A duplicate (a re-send raced with a late acknowledgement): already written.
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::Ok, 0);
        }
        let state = files.state(fi);
        if c.chunk_index < state.next_chunk {
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::Ok, 0);
        }
        if state.pending.contains_key(&c.chunk_index) {
            // Held already; it is acknowledged when written.
            return Ok(());
        }
        // Chunks held out of order are acknowledged only once written, so they keep their
        // window permits on the sender: nothing legitimate arrives a window or more ahead, and
        // `pending` stays below `window × chunk_size` bytes, which `MAX_IN_FLIGHT_BYTES` caps.
        if c.chunk_index >= state.next_chunk + u64::from(self.info.window) {
            return Err(ReceiveError::AheadOfWindow {
                chunk: c.chunk_index,
                path: entry.path.clone(),
                next: state.next_chunk,
            });
        }
        if crc32fast::hash(&c.data) != c.crc32 {
            tracing::warn!(transfer = %self.info.transfer_id, file = %entry.path, chunk = c.chunk_index, "CRC mismatch; asking for the chunk again");
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::CrcMismatch, 0);
        }
        self.entry
            .wire_bytes
            .fetch_add(c.data.len() as u64, Ordering::Relaxed);
        let raw = if c.flags & wire::ChunkFlag::Compressed as u32 != 0 {
            match zstd::bulk::decompress(&c.data, expected) {
                Ok(v) => Bytes::from(v),
                // The CRC matched, so the sender produced this: not a transmission error.
                Err(source) => {
                    return Err(ReceiveError::Decompress {
                        chunk: c.chunk_index,
                        path: entry.path.clone(),
                        source,
                    });
                }
            }
        } else {
            c.data
        };
        if raw.len() != expected {
            return Err(ReceiveError::WrongLength {
                chunk: c.chunk_index,
                path: entry.path.clone(),
                got: raw.len(),
                expected,
            });
        }
        if c.chunk_index != state.next_chunk {
            if self.pending_total >= self.info.window as usize {
                return Err(ReceiveError::OutOfOrder {
                    chunk: c.chunk_index,
                    path: entry.path.clone(),
                });
            }
            state.pending.insert(c.chunk_index, raw);
            self.pending_total += 1;
            return Ok(());
        }
        // Its bytes count against the route (see `session::Route::hold`) until written and
        // hashed.
        self.write(fi, entry, state, raw)?;
        while let Some(next) = state.pending.remove(&state.next_chunk) {
            self.pending_total -= 1;
            self.write(fi, entry, state, next)?;
        }
        self.entry
            .progress(Some((&entry.path, state.written, entry.size)));
        if state.expected_sha.is_some() && state.written == entry.size {
            self.finish(files, fi)?;
        }
        Ok(())
    }

    /// Appends the next chunk of a file, hashes it and acknowledges it.
    fn write(
        &mut self,
        fi: usize,
        entry: &wire::FileEntry,
        state: &mut FileState,
        data: Bytes,
    ) -> Result<(), ReceiveError> {
        let part = match &mut state.temp {
            Some(part) => part,
            slot @ None => slot.insert(self.open_temp(fi, entry)?),
        };
        if let Err(source) = part.write_at(&data, state.written, &mut self.aligned) {
            return Err(PlaceError::Write {
                path: part.shown.clone(),
                source,
            }
            .into());
        }
        let large = entry.size > u64::from(self.info.chunk_size);
        let len = data.len();
        self.hashing.update(fi, &mut state.hash, data, large);
        state.written += len as u64;
        state.dirty = true;
        self.unrecorded += len as u64;
        let index = state.next_chunk;
        state.next_chunk += 1;
        self.entry
            .bytes_done
            .fetch_add(len as u64, Ordering::Relaxed);
        self.ack(fi as u32, index, ChunkStatus::Ok, len)
    }

    /// The temporary file of file `fi` (see `file::open_temp`).
    fn open_temp(&self, fi: usize, entry: &wire::FileEntry) -> Result<PartFile, PlaceError> {
        file::open_temp(
            self.dest,
            &self.info.transfer_id,
            fi,
            &spec(entry),
            self.info.chunk_size,
        )
    }

    pub(super) fn file_done(
        &mut self,
        files: &mut Files,
        d: wire::FileDone,
    ) -> Result<(), ReceiveError> {
        let fi = d.file_index as usize;
        let entry = self
            .info
            .files
            .get(fi)
            .ok_or(ReceiveError::FileDoneOfNoFile(fi))?;
        if files.done[fi] {
            return Err(ReceiveError::FileDoneTwice(entry.path.clone()));
        }
        let state = files.state(fi);
        if state.expected_sha.is_some() {
            return Err(ReceiveError::FileDoneTwice(entry.path.clone()));
        }
        state.expected_sha = Some(d.sha256);
        if state.written == entry.size {
            self.finish(files, fi)?;
        }
        Ok(())
    }

    /// Verifies a complete file and hands it to the syncer, which makes it durable, puts it
    /// in place, records it and reports it to the sender. A file that fails here is reported
    /// at once. A verified file leaves `files` at once — its temporary file is the syncer's
    /// now — so that nothing later (a final checkpoint) records it as partial again.
    fn finish(&mut self, files: &mut Files, fi: usize) -> Result<(), ReceiveError> {
        match self.verify(fi, files.state(fi)) {
            Ok(job) => {
                files.finished(fi);
                self.drop_acks_of(fi);
                Ok(self.queue.place(job)?)
            }
            Err(error) => {
                self.send(Body::FileResult(wire::FileResult {
                    transfer_id: self.info.transfer_id.clone(),
                    file_index: fi as u32,
                    ok: false,
                    error: error_chain(&error),
                }))?;
                Err(error.into())
            }
        }
    }

    /// Checks the SHA-256 and sets the mode and modification time: everything that is left
    /// before the file may be synced and linked.
    fn verify(&mut self, fi: usize, state: &mut FileState) -> Result<Verified, PlaceError> {
        let entry = &self.info.files[fi];
        let part = match state.temp.take() {
            Some(part) => part,
            // Nothing was written: an empty file.
            None => self.open_temp(fi, entry)?,
        };
        let digest = self.hashing.finish(fi, std::mem::take(&mut state.hash));
        let spec = spec(entry);
        let part = file::verify(part, digest, state.expected_sha.as_deref(), &spec)?;
        Ok(Verified::new(fi, part, self.dest, &spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::place::sync::{Job, Shared};
    use crate::transfer::receive::resume::{fresh, prepare};
    use crate::transfer::{Direction, NewTransfer, TransferState, Transfers};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::fs;

    /// Every chunk gets exactly one answer: its ChunkAck, sent before its file is handed to
    /// the syncer (whose FileResult answers for all the file's chunks), or that FileResult -
    /// never a ChunkAck after it, which the sender would have to take beyond its window.
    #[test]
    fn no_chunk_is_acknowledged_after_its_file_went_to_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let info = wire::TransferInfo {
            transfer_id: "0123456789".into(),
            roots: vec!["d".into()],
            dirs: vec!["d".into()],
            files: files
                .iter()
                .enumerate()
                .map(|(i, f)| wire::FileEntry {
                    path: format!("d/f{i}"),
                    size: f.len() as u64,
                    mode: 0o644,
                    ..Default::default()
                })
                .collect(),
            chunk_size: 64,
            window: 64,
            ..Default::default()
        };
        let dest = prepare(dir.path(), &info).unwrap();
        let transfers = Transfers::new();
        let entry = receiving_entry(&transfers, &info);
        let (writer, mut sent) = mpsc::channel(10_000);
        let shared = Shared::fresh(0);
        let (queue, queued) = Queue::new(&shared, 1000);
        let mut r = Receiver::new(&info, &dest, &writer, &entry, queue);
        let mut state = fresh(&info).files;
        let mut acked: HashMap<(u32, u64), usize> = HashMap::new();
        let mut placed = std::collections::HashSet::new();
        // What the receiving thread sent so far: ChunkAcks must not name a placed file.
        let mut check = |placed: &std::collections::HashSet<u32>| {
            while let Ok(out) = sent.try_recv() {
                let mut bytes = &out.head[..];
                while !bytes.is_empty() {
                    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                    let frame =
                        <wire::Frame as prost::Message>::decode(&bytes[4..4 + len]).unwrap();
                    bytes = &bytes[4 + len..];
                    if let Some(Body::ChunkAck(a)) = frame.body {
                        assert!(
                            !placed.contains(&a.file_index),
                            "chunk {} of file {} acknowledged after its file went to the syncer",
                            a.chunk_index,
                            a.file_index
                        );
                        *acked.entry((a.file_index, a.chunk_index)).or_default() += 1;
                    }
                }
            }
        };
        for (fi, data) in files.iter().enumerate() {
            for (ci, piece) in data.chunks(64).enumerate() {
                let c = wire::Chunk {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi as u32,
                    chunk_index: ci as u64,
                    flags: 0,
                    crc32: crc32fast::hash(piece),
                    data: Bytes::copy_from_slice(piece),
                    attempt: 0,
                };
                r.chunk(&mut state, c).unwrap();
                check(&placed);
            }
            r.file_done(
                &mut state,
                wire::FileDone {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi as u32,
                    sha256: Bytes::copy_from_slice(&Sha256::digest(data)),
                },
            )
            .unwrap();
            check(&placed);
            while let Ok(job) = queued.try_recv() {
                if let Job::Place(v) = job {
                    placed.insert(v.fi as u32);
                }
            }
        }
        r.flush_acks().unwrap();
        check(&placed);
        assert_eq!(placed.len(), files.len(), "every file went to the syncer");
        assert!(
            acked.values().all(|n| *n == 1),
            "no chunk acknowledged twice"
        );
    }

    fn receiving_entry(transfers: &Transfers, info: &wire::TransferInfo) -> Arc<TransferEntry> {
        transfers.insert(
            NewTransfer {
                id: info.transfer_id.clone(),
                direction: Direction::Receive,
                state: TransferState::Running,
                peer_id: String::new(),
                peer_name: String::new(),
                peer_address: String::new(),
                roots: info.roots.clone(),
                total_files: info.files.len() as u64,
                total_bytes: 0,
                destination: String::new(),
                started: None,
                max_speed: 0,
            },
            tokio_util::sync::CancellationToken::new(),
        )
    }

    /// A sender that finishes more files than its window allows fills the syncer's queue: the
    /// transfer fails instead of waiting, and the file that did not fit leaves nothing behind.
    #[test]
    fn more_finished_files_than_the_window_fail_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let info = wire::TransferInfo {
            transfer_id: "0123456789".into(),
            roots: vec!["d".into()],
            dirs: vec!["d".into()],
            // Two chunks each: files with named temporary files, which must not stay behind.
            files: (0..3)
                .map(|i| wire::FileEntry {
                    path: format!("d/e{i}"),
                    size: 100,
                    mode: 0o644,
                    ..Default::default()
                })
                .collect(),
            chunk_size: 64,
            window: 2,
            ..Default::default()
        };
        let dest = prepare(dir.path(), &info).unwrap();
        let transfers = Transfers::new();
        let entry = receiving_entry(&transfers, &info);
        let (writer, _sent) = mpsc::channel(100);
        // Nobody takes jobs off this queue: a syncer stuck behind a peer that does not read.
        let shared = Shared::fresh(0);
        let (queue, _queued) = Queue::new(&shared, 2);
        let mut r = Receiver::new(&info, &dest, &writer, &entry, queue);
        let mut files = fresh(&info).files;
        let data = [7u8; 100];
        let mut send_file = |r: &mut Receiver<'_>, fi: u32| {
            for (ci, piece) in data.chunks(64).enumerate() {
                r.chunk(
                    &mut files,
                    wire::Chunk {
                        transfer_id: info.transfer_id.clone(),
                        file_index: fi,
                        chunk_index: ci as u64,
                        crc32: crc32fast::hash(piece),
                        data: Bytes::copy_from_slice(piece),
                        ..Default::default()
                    },
                )
                .unwrap();
            }
            r.file_done(
                &mut files,
                wire::FileDone {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi,
                    sha256: Bytes::copy_from_slice(&Sha256::digest(data)),
                },
            )
        };
        send_file(&mut r, 0).unwrap();
        send_file(&mut r, 1).unwrap();
        let err = send_file(&mut r, 2).unwrap_err();
        assert!(matches!(err, ReceiveError::TooManyFinished), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("window"), "{err}");
        let temps: Vec<String> = fs::read_dir(dir.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(temps.len(), 2, "the two queued files only: {temps:?}");
        assert!(temps.iter().all(|t| !t.contains("-2.")), "{temps:?}");
    }
}
