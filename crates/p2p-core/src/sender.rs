//! The sending side of a transfer.
//!
//! An async driver owns the transfer's frame route: it offers the manifest, waits for the
//! decision, then handles acknowledgements while a blocking producer thread reads each file
//! once — hashing (SHA-256), compressing (adaptive zstd) and checksumming (CRC32) every chunk —
//! and queues the frames. The window is a semaphore: the producer takes a permit per chunk, an
//! OK acknowledgement gives it back, a CRC failure re-sends the kept frame. The trackers and
//! their invariants are described in `STATE.md` beside this file.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ChunkStatus};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::manifest::LocalManifest;
use crate::session::Session;
use crate::transfer::{SendOptions, TransferEntry, TransferState};
use crate::wire::{self as codec};

/// How often one chunk may be re-sent after CRC failures before the transfer fails.
pub const MAX_RESENDS: u8 = 5;
/// Chunks sampled at the start of each file to decide whether compression pays.
const SAMPLE_CHUNKS: u32 = 2;
/// A sampled chunk that compresses to more than this fraction counts as incompressible.
const INCOMPRESSIBLE_RATIO: f64 = 0.95;

/// A chunk sent but not yet acknowledged.
struct InFlight {
    frame: Bytes,
    raw_len: u64,
    resends: u8,
}

/// State shared by the driver and the producer.
struct Window {
    // Permits are chunks that may still be sent; the producer forgets one per chunk and the
    // driver adds one back per OK acknowledgement.
    permits: Arc<Semaphore>,
    // The frames in flight, kept for re-sending; at most `window` entries.
    in_flight: Mutex<HashMap<(u32, u64), InFlight>>,
}

impl Window {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u64), InFlight>> {
        match self.in_flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Runs an outgoing transfer to its end; the entry carries the outcome.
pub(crate) async fn run(
    session: Arc<Session>,
    entry: Arc<TransferEntry>,
    manifest: LocalManifest,
    opts: SendOptions,
) {
    session.active.fetch_add(1, Ordering::Relaxed);
    let (route_tx, route_rx) = mpsc::channel(crate::session::route_capacity(opts.window));
    session.route(&entry.id, route_tx);
    let outcome = drive(&session, &entry, manifest, opts, route_rx).await;
    session.unroute(&entry.id);
    session.active.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            entry.set_state(TransferState::Completed, "");
        }
        Err(Outcome::Rejected(reason)) => {
            entry.set_state(TransferState::Rejected, reason);
        }
        Err(Outcome::Cancelled(reason)) => {
            entry.set_state(TransferState::Cancelled, reason);
        }
        Err(Outcome::Failed(reason)) => {
            // Already final means a local cancel won the race with this failure: the peer must
            // hear of the cancel either way.
            let reason = if entry.set_state(TransferState::Failed, reason.clone()) {
                reason
            } else {
                "cancelled by sender".to_owned()
            };
            let _ = session
                .send(Body::Cancel(wire::Cancel {
                    transfer_id: entry.id.clone(),
                    reason,
                }))
                .await;
        }
        Err(Outcome::LocalCancel) => {
            let _ = session
                .send(Body::Cancel(wire::Cancel {
                    transfer_id: entry.id.clone(),
                    reason: "cancelled by sender".into(),
                }))
                .await;
        }
    }
}

/// How a transfer ended, if not completed.
enum Outcome {
    Rejected(String),
    Cancelled(String),
    Failed(String),
    /// Cancelled here: the entry already says so; the peer must be told.
    LocalCancel,
}

async fn drive(
    session: &Arc<Session>,
    entry: &Arc<TransferEntry>,
    manifest: LocalManifest,
    opts: SendOptions,
    mut route: mpsc::Receiver<Body>,
) -> Result<(), Outcome> {
    let info = wire::TransferInfo {
        transfer_id: entry.id.clone(),
        mode: if manifest.has_folder {
            wire::TransferMode::Folder as i32
        } else {
            wire::TransferMode::File as i32
        },
        roots: manifest.roots.clone(),
        files: manifest.files.iter().map(|f| f.entry.clone()).collect(),
        dirs: manifest.dirs.clone(),
        chunk_size: opts.chunk_size,
        window: opts.window,
        resume: false,
        total_bytes: manifest.total_bytes,
    };
    session
        .send(Body::TransferInfo(info))
        .await
        .map_err(|_| lost())?;

    // Wait for the receiver's decision (a person may be asked: no time limit here; the
    // receiver expires its offers).
    let frame = tokio::select! {
        _ = entry.cancel.cancelled() => return Err(Outcome::LocalCancel),
        f = route.recv() => f.ok_or_else(lost)?,
    };
    match frame {
        Body::Ready(_) => {}
        Body::Reject(r) => return Err(Outcome::Rejected(r.reason)),
        Body::Cancel(c) => return Err(Outcome::Cancelled(c.reason)),
        other => {
            return Err(Outcome::Failed(format!(
                "peer sent {} before Ready",
                codec::body_name(&other)
            )));
        }
    }
    entry.set_state(TransferState::Running, "");

    let window = Arc::new(Window {
        permits: Arc::new(Semaphore::new(opts.window as usize)),
        in_flight: Mutex::new(HashMap::new()),
    });
    let producer_cancel = entry.cancel.child_token();
    let producer = {
        let window = window.clone();
        let writer = session.writer();
        let entry = entry.clone();
        let cancel = producer_cancel.clone();
        let compress = opts.compress && session.limits.compress;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            produce(
                &handle, manifest, opts, compress, &window, &writer, &entry, &cancel,
            )
        })
    };
    let _stop_producer = producer_cancel.clone().drop_guard();
    let mut producer = Some(producer);
    let total_files = entry.snapshot().total_files;
    let mut files_ok: u64 = 0;
    let mut complete_sent = false;

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
            _ = entry.cancel.cancelled() => return Err(Outcome::LocalCancel),
            done = async {
                match producer.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if producer.is_some() => {
                producer = None;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Outcome::Failed(e)),
                    Err(join) => return Err(Outcome::Failed(format!("sender thread failed: {join}"))),
                }
            }
            frame = route.recv() => {
                match frame.ok_or_else(lost)? {
                    Body::ChunkAck(ack) => on_ack(session, entry, &window, ack).await?,
                    Body::FileResult(r) if r.ok => {
                        // FileDone took a window permit: the receiver has answered it.
                        window.permits.add_permits(1);
                        files_ok += 1;
                        entry.files_done.store(files_ok, Ordering::Relaxed);
                        entry.progress(None);
                    }
                    Body::FileResult(r) => {
                        return Err(Outcome::Failed(format!("receiver could not store file #{}: {}", r.file_index, r.error)));
                    }
                    Body::CompleteAck(_) if complete_sent => return Ok(()),
                    Body::Cancel(c) => return Err(Outcome::Cancelled(c.reason)),
                    other => return Err(Outcome::Failed(format!("unexpected {} from receiver", codec::body_name(&other)))),
                }
            }
        }
    }
}

fn lost() -> Outcome {
    Outcome::Failed("session to peer lost".into())
}

async fn on_ack(
    session: &Session,
    entry: &TransferEntry,
    window: &Window,
    ack: wire::ChunkAck,
) -> Result<(), Outcome> {
    let key = (ack.file_index, ack.chunk_index);
    if ack.status == ChunkStatus::Ok as i32 {
        let removed = window.lock().remove(&key);
        if let Some(f) = removed {
            entry.bytes_done.fetch_add(f.raw_len, Ordering::Relaxed);
            window.permits.add_permits(1);
            entry.progress(None);
        }
        return Ok(());
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
            None => return Ok(()),
        }
    };
    match resend {
        Some(frame) => {
            tracing::warn!(transfer = %entry.id, file = ack.file_index, chunk = ack.chunk_index, "receiver reported a corrupt chunk; re-sending");
            entry.chunks_resent.fetch_add(1, Ordering::Relaxed);
            session.writer().send(frame).await.map_err(|_| lost())
        }
        None => Err(Outcome::Failed(format!(
            "chunk {} of file #{} arrived corrupt {} times",
            ack.chunk_index,
            ack.file_index,
            MAX_RESENDS + 1
        ))),
    }
}

/// The producer thread: reads every file once and queues its chunks and `FileDone`.
#[allow(clippy::too_many_arguments)]
fn produce(
    rt: &tokio::runtime::Handle,
    manifest: LocalManifest,
    opts: SendOptions,
    compress: bool,
    window: &Window,
    writer: &mpsc::Sender<Bytes>,
    entry: &TransferEntry,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let chunk_size = opts.chunk_size as usize;
    let mut buf = vec![0u8; chunk_size];
    let mut compressor = if compress {
        Some(
            zstd::bulk::Compressor::new(opts.level)
                .map_err(|e| format!("cannot start zstd: {e}"))?,
        )
    } else {
        None
    };
    for (index, file) in manifest.files.iter().enumerate() {
        let file_index = index as u32;
        let size = file.entry.size;
        let mut f = std::fs::File::open(&file.source)
            .map_err(|e| format!("cannot read {}: {e}", file.source.display()))?;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut chunk_index: u64 = 0;
        let mut compress_file = compressor.is_some();
        let mut incompressible = 0u32;
        while done < size {
            let want = (size - done).min(chunk_size as u64) as usize;
            f.read_exact(&mut buf[..want]).map_err(|e| {
                format!(
                    "cannot read {} at byte {done} (did it shrink while sending?): {e}",
                    file.source.display()
                )
            })?;
            let raw = &buf[..want];
            hasher.update(raw);
            let (data, flags) = match (&mut compressor, compress_file) {
                (Some(c), true) => {
                    let packed = c.compress(raw).map_err(|e| format!("zstd failed: {e}"))?;
                    if chunk_index < u64::from(SAMPLE_CHUNKS) {
                        if packed.len() as f64 > raw.len() as f64 * INCOMPRESSIBLE_RATIO {
                            incompressible += 1;
                        }
                        if chunk_index + 1 == u64::from(SAMPLE_CHUNKS)
                            && incompressible == SAMPLE_CHUNKS
                        {
                            compress_file = false;
                        }
                    }
                    if packed.len() < raw.len() {
                        (Bytes::from(packed), wire::ChunkFlag::Compressed as u32)
                    } else {
                        (Bytes::copy_from_slice(raw), 0)
                    }
                }
                _ => (Bytes::copy_from_slice(raw), 0),
            };
            let wire_len = data.len() as u64;
            let frame = codec::encode(Body::Chunk(wire::Chunk {
                transfer_id: entry.id.clone(),
                file_index,
                chunk_index,
                flags,
                crc32: crc32fast::hash(&data),
                data,
            }));
            // One permit per chunk in flight; waiting here is the window at work.
            let permit = rt.block_on(async {
                tokio::select! {
                    p = window.permits.acquire() => p.ok(),
                    _ = cancel.cancelled() => None,
                }
            });
            let Some(permit) = permit else {
                return Err("cancelled".into());
            };
            permit.forget();
            window.lock().insert(
                (file_index, chunk_index),
                InFlight {
                    frame: frame.clone(),
                    raw_len: want as u64,
                    resends: 0,
                },
            );
            // Speed limits count the whole frame as it goes on the wire.
            entry
                .throttle(frame.len() as u64, rt, cancel)
                .map_err(|e| e.to_string())?;
            writer
                .blocking_send(frame)
                .map_err(|_| "session to peer lost".to_owned())?;
            entry.wire_bytes.fetch_add(wire_len, Ordering::Relaxed);
            done += want as u64;
            chunk_index += 1;
            entry.progress(Some((&file.entry.path, done, size)));
        }
        // A file that grew while it was read would be sent truncated: refuse instead.
        let mut probe = [0u8; 1];
        if matches!(f.read(&mut probe), Ok(n) if n > 0) {
            return Err(format!(
                "{} grew while it was being sent",
                file.source.display()
            ));
        }
        let sha = hasher.finalize();
        // FileDone takes a permit too (given back by FileResult), so that a folder of empty
        // files cannot put an unbounded number of frames in flight.
        let permit = rt.block_on(async {
            tokio::select! {
                p = window.permits.acquire() => p.ok(),
                _ = cancel.cancelled() => None,
            }
        });
        let Some(permit) = permit else {
            return Err("cancelled".into());
        };
        permit.forget();
        let frame = codec::encode(Body::FileDone(wire::FileDone {
            transfer_id: entry.id.clone(),
            file_index,
            sha256: Bytes::copy_from_slice(&sha),
        }));
        writer
            .blocking_send(frame)
            .map_err(|_| "session to peer lost".to_owned())?;
        if size == 0 {
            entry.progress(Some((&file.entry.path, 0, 0)));
        }
    }
    Ok(())
}
