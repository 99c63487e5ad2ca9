//! The sending side of one attempt of a transfer.
//!
//! An attempt offers the manifest (with `resume` once the transfer was interrupted: the
//! receiver answers with the chunks it holds, and only the others are sent), then an async
//! driver owns the transfer's frame route: it offers the manifest, waits for the
//! decision, then handles acknowledgements while a blocking producer thread reads each file
//! once — hashing (SHA-256), compressing (adaptive zstd) and checksumming (CRC32) every chunk —
//! and queues the frames. The window is a semaphore: the producer takes a permit per chunk, an
//! OK acknowledgement gives it back, a CRC failure re-sends the kept frame. The trackers and
//! their invariants are described in `STATE.md` in this folder. Whether a failed attempt is
//! tried again is decided by the caller (`node::outgoing`) from `AttemptEnd`.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ChunkStatus};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::net::session::Session;
use crate::net::wire::{self as codec, OutFrame};
use crate::store::Store;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::manifest::{LocalFile, LocalManifest};
use crate::transfer::{
    Direction, SMALL_FILE_WINDOW, SendOptions, TransferEntry, TransferState, is_small,
};

/// How often one chunk may be re-sent after CRC failures before the transfer fails.
pub(crate) const MAX_RESENDS: u8 = 5;
/// Chunks sampled at the start of each file to decide whether compression pays.
const SAMPLE_CHUNKS: u32 = 2;
/// A sampled chunk that compresses to more than this fraction counts as incompressible.
const INCOMPRESSIBLE_RATIO: f64 = 0.95;

/// Incompressible one-chunk files in a row after which only some are still tried …
const PROBE_MISSES: u32 = 8;
/// … namely one in this many, until one shrinks again.
const PROBE_EVERY: u32 = 32;

/// Whether to try compressing a file of one chunk. Such a file is its own whole sample, so a
/// folder of many small incompressible files (photos, archives) would pay a compression attempt
/// for every file; the decision is therefore carried from file to file.
#[derive(Debug, Default)]
struct OneChunkProbe {
    misses: u32,
    skipped: u32,
}

impl OneChunkProbe {
    fn should_try(&mut self) -> bool {
        if self.misses < PROBE_MISSES || self.skipped + 1 >= PROBE_EVERY {
            self.skipped = 0;
            true
        } else {
            self.skipped += 1;
            false
        }
    }

    fn saw(&mut self, incompressible: bool) {
        self.misses = if incompressible {
            self.misses.saturating_add(1)
        } else {
            0
        };
    }
}

/// A chunk sent but not yet acknowledged.
struct InFlight {
    frame: OutFrame,
    raw_len: u64,
    resends: u8,
    // A small file's chunk holds no window permit (its file holds a small-file permit).
    small: bool,
}

/// State shared by the driver and the producer.
struct Window {
    // Permits are chunks that may still be sent; the producer forgets one per chunk and the
    // driver adds one back per OK acknowledgement.
    permits: Arc<Semaphore>,
    // Small files (see `transfer::SMALL_FILE`) that may still be started; the producer forgets
    // one per small file, the driver adds one back per OK `FileResult` of a small file.
    small_files: Arc<Semaphore>,
    // The receiver has the small-file window (`caps::SMALL_FILES`); without it every file
    // counts against the chunk window.
    small_window: bool,
    // The frames in flight, kept for re-sending; at most `window` entries plus one per
    // small file in flight.
    in_flight: Mutex<HashMap<(u32, u64), InFlight>>,
}

impl Window {
    /// Whether a file of `size` goes on a small-file permit.
    fn small(&self, size: u64, chunk_size: u32) -> bool {
        self.small_window && is_small(size, chunk_size)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u64), InFlight>> {
        match self.in_flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// How one attempt of an outgoing transfer ended.
#[derive(Debug)]
pub(crate) enum AttemptEnd {
    /// Every file verified by the receiver.
    Completed,
    /// The receiver refused the offer.
    Rejected(String),
    /// The receiver (or its user) cancelled.
    Cancelled(String),
    /// A permanent failure: trying again cannot help (source changed or unreadable, receiver
    /// could not store a file, protocol violation).
    Failed(String),
    /// The receiver failed (it could not store the data): permanent; it knows.
    PeerFailed(String),
    /// A transient failure: session lost, receiver paused or restarting. Try again later.
    Transient(String),
    /// Stopped here by `stop` (pause or shutdown); the receiver was told it may resume.
    Stopped,
    /// Cancelled here: the entry already says so; the receiver was told.
    LocalCancel,
}

/// What the receiver already holds, from its `Ready` on a resume.
#[derive(Debug, Default)]
struct Have {
    complete: Vec<bool>,
    chunks: HashMap<u32, ChunkMap>,
}

/// Acknowledged progress of the attempt, saved to the store now and then so that a restarted
/// sender shows where it was.
struct Acked {
    chunks: HashMap<u32, ChunkMap>,
    complete: Vec<u32>,
    dirty: bool,
}

/// How often the sender records acknowledged chunks.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// Runs one attempt over `session`: offer (with `resume` once the transfer was interrupted),
/// then stream what the receiver lacks until it verified every file.
pub(crate) async fn attempt(
    session: Arc<Session>,
    entry: Arc<TransferEntry>,
    manifest: Arc<LocalManifest>,
    opts: SendOptions,
    resume: bool,
    stop: CancellationToken,
    store: Arc<Store>,
) -> AttemptEnd {
    session.active.fetch_add(1, Ordering::Relaxed);
    let (route_tx, route_rx) = mpsc::channel(crate::net::session::route_capacity(opts.window));
    session.route(&entry.id, route_tx);
    let mut acked = Acked {
        chunks: HashMap::new(),
        complete: Vec::new(),
        dirty: false,
    };
    let outcome = drive(
        &session, &entry, manifest, opts, resume, &stop, route_rx, &store, &mut acked,
    )
    .await;
    save_acked(&store, &entry, &mut acked);
    session.unroute(&entry.id);
    session.active.fetch_sub(1, Ordering::Relaxed);
    let tell = |reason: String, resumable: bool| session.cancel(&entry.id, reason, resumable);
    // The peer hears of an end decided here; the others it decided itself, or it is gone.
    match outcome {
        Ok(()) => AttemptEnd::Completed,
        Err(AttemptEnd::Failed(reason)) => {
            session.fail(&entry.id, reason.clone()).await;
            AttemptEnd::Failed(reason)
        }
        Err(AttemptEnd::LocalCancel) => {
            tell("cancelled by sender".into(), false).await;
            AttemptEnd::LocalCancel
        }
        Err(AttemptEnd::Stopped) => {
            tell(
                if entry.state() == TransferState::Paused {
                    "paused by sender".into()
                } else {
                    "sender stopped".into()
                },
                true,
            )
            .await;
            AttemptEnd::Stopped
        }
        Err(other) => other,
    }
}

fn save_acked(store: &Store, entry: &TransferEntry, acked: &mut Acked) {
    if !acked.dirty {
        return;
    }
    let empty = ChunkMap::default();
    let mut rows: Vec<(u32, bool, &ChunkMap)> = acked
        .complete
        .iter()
        .map(|fi| (*fi, true, &empty))
        .collect();
    rows.extend(acked.chunks.iter().map(|(fi, m)| (*fi, false, m)));
    if let Err(e) = store.save_chunk_maps(&entry.id, Direction::Send, &rows) {
        tracing::warn!(transfer = %entry.id, cause = %e, "cannot record the transfer's progress");
    }
    acked.complete.clear();
    acked.dirty = false;
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    session: &Arc<Session>,
    entry: &Arc<TransferEntry>,
    manifest: Arc<LocalManifest>,
    opts: SendOptions,
    resume: bool,
    stop: &CancellationToken,
    mut route: mpsc::Receiver<Body>,
    store: &Store,
    acked: &mut Acked,
) -> Result<(), AttemptEnd> {
    // A peer without the capability would take a resume for a new offer.
    let resume = resume && session.caps & crate::net::wire::caps::RESUME != 0;
    let attempt = session.next_attempt();
    let mut info = manifest.offer(&entry.id, opts, resume);
    info.attempt = attempt;
    session
        .send(Body::TransferInfo(info))
        .await
        .map_err(|_| lost())?;

    // Wait for the receiver's decision (a person may be asked: no time limit here; the
    // receiver expires its offers).
    let frame = loop {
        let frame = tokio::select! {
            _ = entry.cancel.cancelled() => return Err(AttemptEnd::LocalCancel),
            _ = stop.cancelled() => return Err(AttemptEnd::Stopped),
            f = route.recv() => f.ok_or_else(lost)?,
        };
        match frame {
            // The tail of an earlier attempt on this session: the receiver's syncer may still
            // report files it placed after that attempt stopped. They come before the answer
            // to this offer, whose `have` already counts them.
            Body::ChunkAck(_) | Body::FileResult(_) | Body::CompleteAck(_) => {
                tracing::debug!(transfer = %entry.id, frame = codec::body_name(&frame), "late frame of an earlier attempt ignored");
            }
            other => break other,
        }
    };
    let have = match frame {
        Body::Ready(r) => have_of(&manifest, opts.chunk_size, r.have),
        Body::Reject(r) => return Err(AttemptEnd::Rejected(r.reason)),
        Body::Cancel(c) if c.resumable => return Err(AttemptEnd::Transient(c.reason)),
        Body::Cancel(c) if c.failed => return Err(AttemptEnd::PeerFailed(c.reason)),
        Body::Cancel(c) => return Err(AttemptEnd::Cancelled(c.reason)),
        other => {
            return Err(AttemptEnd::Failed(format!(
                "peer sent {} before Ready",
                codec::body_name(&other)
            )));
        }
    };
    let mut files_ok = have.complete.iter().filter(|c| **c).count() as u64;
    let resumed: u64 = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if have.complete[i] {
                f.entry.size
            } else {
                have.chunks
                    .get(&(i as u32))
                    .map_or(0, |m| m.bytes_done(f.entry.size, opts.chunk_size))
            }
        })
        .sum();
    // Progress restarts from what the receiver holds durably: anything acknowledged after
    // its last checkpoint is sent again.
    entry.bytes_done.store(resumed, Ordering::Relaxed);
    entry.resumed_bytes.store(resumed, Ordering::Relaxed);
    entry.files_done.store(files_ok, Ordering::Relaxed);
    if resume {
        tracing::info!(transfer = %entry.id, resumed_bytes = resumed, files_complete = files_ok, "resuming");
    }
    entry.set_state(TransferState::Running, "");

    let window = Arc::new(Window {
        permits: Arc::new(Semaphore::new(opts.window as usize)),
        small_files: Arc::new(Semaphore::new(SMALL_FILE_WINDOW as usize)),
        small_window: session.caps & crate::net::wire::caps::SMALL_FILES != 0,
        in_flight: Mutex::new(HashMap::new()),
    });
    let producer_cancel = stop.child_token();
    let producer = {
        let window = window.clone();
        let lanes = session.lane_writers();
        let entry = entry.clone();
        let cancel = producer_cancel.clone();
        let compress = opts.compress && session.limits.compress;
        let handle = tokio::runtime::Handle::current();
        let manifest = manifest.clone();
        // The producer thread logs inside the attempt's span (transfer, peer).
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            produce(
                &handle, &manifest, &have, opts, compress, attempt, &window, &lanes, &entry,
                &cancel,
            )
        })
    };
    let _stop_producer = producer_cancel.clone().drop_guard();
    let mut producer = Some(producer);
    let total_files = manifest.files.len() as u64;
    let mut complete_sent = false;
    let mut save = tokio::time::interval(SAVE_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if !complete_sent && producer.is_none() && files_ok == total_files {
            session
                .send(Body::Complete(wire::Complete {
                    transfer_id: entry.id.clone(),
                }))
                .await
                .map_err(|_| lost())?;
            complete_sent = true;
        }
        tokio::select! {
            _ = entry.cancel.cancelled() => return Err(AttemptEnd::LocalCancel),
            _ = stop.cancelled() => return Err(AttemptEnd::Stopped),
            _ = save.tick() => save_acked(store, entry, acked),
            done = async {
                match producer.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if producer.is_some() => {
                producer = None;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(Produce::Failed(e))) => return Err(AttemptEnd::Failed(e)),
                    Ok(Err(Produce::Lost)) => return Err(lost()),
                    Ok(Err(Produce::Cancelled)) if entry.cancel.is_cancelled() => return Err(AttemptEnd::LocalCancel),
                    Ok(Err(Produce::Cancelled)) => return Err(AttemptEnd::Stopped),
                    Err(join) => return Err(AttemptEnd::Failed(format!("sender thread failed: {join}"))),
                }
            }
            frame = route.recv() => {
                // A route cut off because the receiver broke the protocol is no session loss.
                let gone = || entry.peer_fault.get().map_or_else(lost, |r| AttemptEnd::PeerFailed(r.clone()));
                match frame.ok_or_else(gone)? {
                    Body::ChunkAck(ack) => {
                        let (fi, ci) = (ack.file_index, ack.chunk_index);
                        // Only an acknowledgement that settles a chunk in flight is recorded:
                        // a late one of a file already complete must not bring it back.
                        if on_ack(session, entry, &window, ack).await? {
                            let size = manifest.files.get(fi as usize).map_or(0, |f| f.entry.size);
                            acked.chunks
                                .entry(fi)
                                .or_insert_with(|| ChunkMap::new(chunk_count(size, opts.chunk_size)))
                                .set(ci);
                            acked.dirty = true;
                        }
                    }
                    Body::FileResult(r) if r.ok => {
                        // FileDone (a small file: its first frame) took a permit: the
                        // receiver has answered it.
                        let size = manifest.files.get(r.file_index as usize).map_or(0, |f| f.entry.size);
                        if window.small(size, opts.chunk_size) {
                            window.small_files.add_permits(1);
                        } else {
                            window.permits.add_permits(1);
                        }
                        // The file is written whole: its chunks are acknowledged. The
                        // receiver sends no ChunkAck it still held back for them.
                        settle_file(entry, &window, r.file_index);
                        files_ok += 1;
                        acked.chunks.remove(&r.file_index);
                        acked.complete.push(r.file_index);
                        acked.dirty = true;
                        entry.files_done.store(files_ok, Ordering::Relaxed);
                        entry.progress(None);
                    }
                    Body::FileResult(r) => {
                        let name = manifest.files.get(r.file_index as usize).map_or("?", |f| f.entry.path.as_str());
                        return Err(AttemptEnd::PeerFailed(format!("receiver could not store {name}: {}", r.error)));
                    }
                    Body::CompleteAck(_) if complete_sent => return Ok(()),
                    Body::Cancel(c) if c.resumable => return Err(AttemptEnd::Transient(c.reason)),
                    Body::Cancel(c) if c.failed => return Err(AttemptEnd::PeerFailed(c.reason)),
                    Body::Cancel(c) => return Err(AttemptEnd::Cancelled(c.reason)),
                    other => return Err(AttemptEnd::Failed(format!("unexpected {} from receiver", codec::body_name(&other)))),
                }
            }
        }
    }
}

/// Reads the receiver's `have` list; entries for files that do not exist are ignored.
fn have_of(manifest: &LocalManifest, chunk_size: u32, list: Vec<wire::FileHave>) -> Have {
    let mut have = Have {
        complete: vec![false; manifest.files.len()],
        chunks: HashMap::new(),
    };
    for h in list {
        let Some(file) = manifest.files.get(h.file_index as usize) else {
            continue;
        };
        if h.complete {
            have.complete[h.file_index as usize] = true;
        } else {
            let map = ChunkMap::from_bytes(chunk_count(file.entry.size, chunk_size), &h.chunks);
            if map.count() > 0 {
                have.chunks.insert(h.file_index, map);
            }
        }
    }
    have
}

fn lost() -> AttemptEnd {
    AttemptEnd::Transient("session to peer lost".into())
}

/// Why the producer stopped early.
enum Produce {
    /// Permanent: the source cannot be read as it was offered.
    Failed(String),
    /// The session's writer is gone.
    Lost,
    /// Its token was cancelled.
    Cancelled,
}

/// Counts every chunk of `file_index` still in flight as acknowledged.
fn settle_file(entry: &TransferEntry, window: &Window, file_index: u32) {
    let settled: Vec<InFlight> = {
        let mut map = window.lock();
        let keys: Vec<(u32, u64)> = map
            .keys()
            .filter(|(fi, _)| *fi == file_index)
            .copied()
            .collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    };
    if settled.is_empty() {
        return;
    }
    let bytes: u64 = settled.iter().map(|f| f.raw_len).sum();
    entry.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    window
        .permits
        .add_permits(settled.iter().filter(|f| !f.small).count());
    entry.progress(None);
}

/// Handles an acknowledgement; true when an OK one settled a chunk in flight.
async fn on_ack(
    session: &Session,
    entry: &TransferEntry,
    window: &Window,
    ack: wire::ChunkAck,
) -> Result<bool, AttemptEnd> {
    let key = (ack.file_index, ack.chunk_index);
    if ack.status == ChunkStatus::Ok as i32 {
        let removed = window.lock().remove(&key);
        let settled = removed.is_some();
        if let Some(f) = removed {
            entry.bytes_done.fetch_add(f.raw_len, Ordering::Relaxed);
            if !f.small {
                window.permits.add_permits(1);
            }
            entry.progress(None);
        }
        return Ok(settled);
    }
    // CRC mismatch on the receiver: send the kept frame again, a bounded number of times.
    let resend = {
        let mut map = window.lock();
        match map.get_mut(&key) {
            Some(f) if f.resends < MAX_RESENDS => {
                f.resends += 1;
                Some(f.frame.clone())
            }
            Some(_) => None,
            None => return Ok(false),
        }
    };
    match resend {
        Some(frame) => {
            tracing::warn!(transfer = %entry.id, file = ack.file_index, chunk = ack.chunk_index, "receiver reported a corrupt chunk; re-sending");
            entry.chunks_resent.fetch_add(1, Ordering::Relaxed);
            session.writer().send(frame).await.map_err(|_| lost())?;
            Ok(false)
        }
        None => Err(AttemptEnd::Failed(format!(
            "chunk {} of file #{} arrived corrupt {} times",
            ack.chunk_index,
            ack.file_index,
            MAX_RESENDS + 1
        ))),
    }
}

/// The producer thread: reads every file once and queues its chunks and `FileDone`. Chunks
/// the receiver already holds are read and hashed but not sent; complete files are skipped.
#[allow(clippy::too_many_arguments)]
fn produce(
    rt: &tokio::runtime::Handle,
    manifest: &LocalManifest,
    have: &Have,
    opts: SendOptions,
    compress: bool,
    attempt: u32,
    window: &Window,
    lanes: &[mpsc::Sender<OutFrame>],
    entry: &TransferEntry,
    cancel: &CancellationToken,
) -> Result<(), Produce> {
    let chunk_size = opts.chunk_size as usize;
    let mut compressor = if compress {
        Some(
            zstd::bulk::Compressor::new(opts.level)
                .map_err(|e| Produce::Failed(format!("cannot start zstd: {e}")))?,
        )
    } else {
        None
    };
    let mut out = Outbox {
        lanes,
        next_lane: 0,
        batch: BytesMut::new(),
    };
    let acquire = |out: &mut Outbox<'_>, permits: &Semaphore| {
        if cancel.is_cancelled() {
            return Err(Produce::Cancelled);
        }
        if let Ok(p) = permits.try_acquire() {
            p.forget();
            return Ok(());
        }
        // Whatever is held back goes out before waiting for the receiver.
        out.flush()?;
        let permit = rt.block_on(async {
            tokio::select! {
                p = permits.acquire() => p.ok(),
                _ = cancel.cancelled() => None,
            }
        });
        match permit {
            Some(p) => {
                p.forget();
                Ok(())
            }
            None => Err(Produce::Cancelled),
        }
    };
    let mut probe = OneChunkProbe::default();
    for (index, file) in manifest.files.iter().enumerate() {
        if have.complete[index] {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(Produce::Cancelled);
        }
        let file_index = index as u32;
        let size = file.entry.size;
        let skip = have.chunks.get(&file_index);
        let mut f = open_unchanged(file).map_err(Produce::Failed)?;
        // A small file's frames (its chunk, FileDone) go on one small-file permit.
        let small = window.small(size, opts.chunk_size);
        if small {
            acquire(&mut out, &window.small_files)?;
        }
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut chunk_index: u64 = 0;
        let one_chunk = size > 0 && size <= chunk_size as u64;
        let mut compress_file = compressor.is_some() && (!one_chunk || probe.should_try());
        let mut incompressible = 0u32;
        // Chunks sampled so far (a resumed file samples the first chunks it sends).
        let mut sampled = 0u32;
        while done < size {
            let want = (size - done).min(chunk_size as u64) as usize;
            let raw = read_chunk(&f, want).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    " (it shrank while being sent)"
                } else {
                    ""
                };
                Produce::Failed(format!(
                    "cannot read {} at byte {done}{hint}: {e}",
                    file.source.display()
                ))
            })?;
            hasher.update(&raw);
            if skip.is_some_and(|m| m.get(chunk_index)) {
                // The receiver has it: hashed for the end-to-end check, not sent.
                done += want as u64;
                chunk_index += 1;
                continue;
            }
            let (data, flags) = match (&mut compressor, compress_file) {
                (Some(c), true) => {
                    let packed = c
                        .compress(&raw)
                        .map_err(|e| Produce::Failed(format!("zstd failed: {e}")))?;
                    if sampled < SAMPLE_CHUNKS {
                        sampled += 1;
                        let missed = packed.len() as f64 > raw.len() as f64 * INCOMPRESSIBLE_RATIO;
                        if missed {
                            incompressible += 1;
                        }
                        if one_chunk {
                            probe.saw(missed);
                        }
                        if sampled == SAMPLE_CHUNKS && incompressible == SAMPLE_CHUNKS {
                            compress_file = false;
                        }
                    }
                    if packed.len() < raw.len() {
                        (Bytes::from(packed), wire::ChunkFlag::Compressed as u32)
                    } else {
                        (raw, 0)
                    }
                }
                _ => (raw, 0),
            };
            let wire_len = data.len() as u64;
            let crc = crc32fast::hash(&data);
            let frame = codec::encode_chunk(
                &entry.id,
                attempt,
                file_index,
                chunk_index,
                flags,
                crc,
                data,
            );
            // One permit per chunk in flight; waiting here is the window at work.
            if !small {
                acquire(&mut out, &window.permits)?;
            }
            window.lock().insert(
                (file_index, chunk_index),
                InFlight {
                    frame: frame.clone(),
                    raw_len: want as u64,
                    resends: 0,
                    small,
                },
            );
            // Speed limits count the whole frame as it goes on the wire (and a limited
            // transfer sends each frame as soon as it is let through).
            if entry.is_limited() {
                out.flush()?;
            }
            entry
                .throttle(frame.len() as u64, rt, cancel)
                .map_err(|_| Produce::Cancelled)?;
            out.send(frame)?;
            entry.wire_bytes.fetch_add(wire_len, Ordering::Relaxed);
            done += want as u64;
            chunk_index += 1;
            entry.progress(Some((&file.entry.path, done, size)));
        }
        // A file that grew while it was read would be sent truncated: refuse instead.
        let mut one_more = [0u8; 1];
        if matches!(f.read(&mut one_more), Ok(n) if n > 0) {
            return Err(Produce::Failed(format!(
                "{} grew while it was being sent",
                file.source.display()
            )));
        }
        let sha = hasher.finalize();
        // FileDone takes a permit too (given back by FileResult), so that a folder of empty
        // files cannot put an unbounded number of frames in flight.
        if !small {
            acquire(&mut out, &window.permits)?;
        }
        let frame = codec::encode(Body::FileDone(wire::FileDone {
            transfer_id: entry.id.clone(),
            file_index,
            sha256: Bytes::copy_from_slice(&sha),
        }));
        out.send(frame.into())?;
        if size == 0 {
            entry.progress(Some((&file.entry.path, 0, 0)));
        }
    }
    out.flush()?;
    Ok(())
}

/// Frames at least this long go to the writer on their own; shorter ones are held back and
/// sent together, up to this many bytes.
const BATCH_BYTES: usize = 64 << 10;

/// The producer's way to the session's writers: large chunk frames go to the session's lanes
/// (connections) in turn; small frames (the chunks and `FileDone`s of small files) are gathered
/// into one message for the first lane — one channel send, one wake-up of the writer, one TLS
/// write — flushed before the producer waits for anything.
struct Outbox<'a> {
    lanes: &'a [mpsc::Sender<OutFrame>],
    next_lane: usize,
    batch: BytesMut,
}

impl Outbox<'_> {
    fn send(&mut self, frame: OutFrame) -> Result<(), Produce> {
        if frame.len() >= BATCH_BYTES {
            self.flush()?;
            let lane = &self.lanes[self.next_lane % self.lanes.len()];
            self.next_lane = self.next_lane.wrapping_add(1);
            return lane.blocking_send(frame).map_err(|_| Produce::Lost);
        }
        self.batch.put_slice(&frame.head);
        self.batch.put_slice(&frame.payload);
        if self.batch.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Produce> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let frames = self.batch.split().freeze();
        self.lanes[0]
            .blocking_send(frames.into())
            .map_err(|_| Produce::Lost)
    }
}

/// Reads the next `want` bytes of `f` into a buffer of their own, which then is the chunk's
/// payload as it is: no zero-filling, no copy into a frame.
fn read_chunk(f: &std::fs::File, want: usize) -> std::io::Result<Bytes> {
    let mut v: Vec<u8> = Vec::with_capacity(want);
    if v.capacity() != want {
        // Reading into the spare room must not take bytes past `want`; the global allocator
        // gives exact capacities, but nothing promises it.
        v.resize(want, 0);
        let mut r = f;
        r.read_exact(&mut v)?;
        return Ok(Bytes::from(v));
    }
    while v.len() < want {
        match rustix::io::read(f, rustix::buffer::spare_capacity(&mut v)) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Bytes::from(v))
}

/// Opens a source file, refusing one that changed since the transfer began: a resumed
/// transfer must not mix old and new bytes.
fn open_unchanged(file: &LocalFile) -> Result<std::fs::File, String> {
    let path = &file.source;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "source file {} is gone since the transfer began",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let changed = meta.len() != file.entry.size
        || meta.mtime() != file.entry.mtime_sec
        || meta.mtime_nsec() != i64::from(file.entry.mtime_nsec);
    if changed {
        return Err(format!(
            "source file {} changed since the transfer began (size or modification time differs); not mixing old and new bytes",
            path.display()
        ));
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_files_stop_being_compressed_after_a_run_of_misses_and_come_back() {
        let mut probe = OneChunkProbe::default();
        for _ in 0..PROBE_MISSES {
            assert!(probe.should_try());
            probe.saw(true);
        }
        // Now only one in PROBE_EVERY is tried.
        let tried: Vec<bool> = (0..PROBE_EVERY * 2)
            .map(|_| {
                let t = probe.should_try();
                if t {
                    probe.saw(true);
                }
                t
            })
            .collect();
        assert_eq!(tried.iter().filter(|t| **t).count(), 2);
        assert!(tried[PROBE_EVERY as usize - 1]);
        // One that shrinks brings every file back.
        while !probe.should_try() {}
        probe.saw(false);
        assert!((0..PROBE_EVERY).all(|_| probe.should_try()));
    }
}
