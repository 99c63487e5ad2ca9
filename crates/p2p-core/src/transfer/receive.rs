//! The receiving side of a pushed transfer: the thread that takes the sender's frames, writes
//! and verifies the chunks, acknowledges them, and feeds the place pipeline (`place`), which
//! makes files durable, links them in place and hands them back to be recorded and reported to
//! the sender (`FileResult`).
//!
//! For resume, the thread takes a checkpoint every `CHECKPOINT_BYTES` or `CHECKPOINT_INTERVAL`:
//! the temporary files written since the last one are synced and their chunks recorded in the
//! store. An interrupted transfer keeps its temporary files; `resume` continues from them.
//!
//! - `receiver`: the receiving thread's loop — frames, the window, checkpoints.
//! - `acks`: chunk acknowledgements, held back and sent together.
//! - `resume`: where a receive starts — its destination and what it continues from.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::sync::mpsc;

use crate::error_chain;
use crate::net::wire::{self as codec, OutFrame};
use crate::store::{Store, StoreError};
use crate::transfer::chunkmap::ChunkMap;
use crate::transfer::place::PlaceError;
use crate::transfer::place::placer::Report;
use crate::transfer::place::sync::{Pipeline, Refused};
use crate::transfer::{Direction, SMALL_FILE_WINDOW, TransferEntry};

mod acks;
mod receiver;
mod resume;

pub(crate) use crate::transfer::place::destination::Destination;
pub(crate) use resume::{Start, fresh, prepare, remove_temps, restore, resume};

use receiver::Receiver;

/// How long the receiver waits for the sender's next frame of a transfer before it counts the
/// transfer as interrupted. A dead session is noticed sooner (keepalive); this catches a
/// live session whose sender stopped sending this transfer. Generous, because a speed limit
/// shared by many transfers can space their chunks out.
pub(crate) const TRANSFER_IDLE: Duration = Duration::from_secs(600);
/// A checkpoint (sync the temporary files, record their chunks) is taken after this many
/// payload bytes …
pub(crate) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// … or this much time with unrecorded bytes, whichever comes first. Together with the
/// window they bound what a crash makes the sender send again.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Why a receive failed or stopped. The messages are what the sender and the user see
/// (through `error_chain`), unchanged from when they were strings.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    /// The session went away (its writer is gone, or the transfer's frames ended).
    #[error("session to peer lost")]
    SessionLost,
    /// No frame of the transfer came for this long.
    #[error("no data from the sender for {} s", .0.as_secs())]
    Idle(Duration),
    /// The session's reader cut the peer off from this transfer, for this reason.
    #[error("{0}")]
    PeerFault(String),
    /// `Complete` before every file was verified and in place.
    #[error("sender said complete with {done} of {total} files verified")]
    EarlyComplete {
        /// Files in place.
        done: u64,
        /// Files in the transfer.
        total: usize,
    },
    /// A frame that has no place in a running transfer.
    #[error("unexpected {0} from sender")]
    Unexpected(&'static str),
    /// A chunk of a file index the manifest does not have.
    #[error("chunk for file #{0}, which does not exist")]
    ChunkOfNoFile(usize),
    /// A chunk past the end of its file.
    #[error("chunk {chunk} is beyond the end of {path:?}")]
    BeyondEnd {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
    },
    /// A chunk's payload larger than any chunk may be.
    #[error("chunk {chunk} of {path:?} is larger than the chunk size")]
    Oversized {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
    },
    /// A chunk a window or more ahead of the next one to write.
    #[error("chunk {chunk} of {path:?} arrived more than a window ahead of chunk {next}")]
    AheadOfWindow {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
        /// The next chunk to be written.
        next: u64,
    },
    /// A compressed chunk whose CRC matched but which does not decompress.
    #[error("chunk {chunk} of {path:?} does not decompress")]
    Decompress {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A chunk of the wrong length (after decompression).
    #[error("chunk {chunk} of {path:?} has {got} bytes, expected {expected}")]
    WrongLength {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
        /// Its length.
        got: usize,
        /// The length it must have.
        expected: usize,
    },
    /// More chunks held out of order than the window allows.
    #[error("more than a window of chunks out of order (at chunk {chunk} of {path:?})")]
    OutOfOrder {
        /// The chunk's index.
        chunk: u64,
        /// The file's path.
        path: String,
    },
    /// A `FileDone` of a file index the manifest does not have.
    #[error("FileDone for file #{0}, which does not exist")]
    FileDoneOfNoFile(usize),
    /// A second `FileDone` of a file.
    #[error("FileDone for {0:?} twice")]
    FileDoneTwice(String),
    /// The place pipeline's queue was full: the sender broke its windows.
    #[error("the sender finished more files than its window allows")]
    TooManyFinished,
    /// A file failed on the receiving thread (writing, verifying).
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The place pipeline failed (syncing, placing, recording).
    #[error(transparent)]
    Placing(Arc<PlaceError>),
    /// The place pipeline's threads ended without saying why.
    #[error("the syncing thread ended")]
    SyncerEnded,
}

impl From<Refused> for ReceiveError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Full => ReceiveError::TooManyFinished,
            Refused::Stopped(Some(e)) => ReceiveError::Placing(e),
            Refused::Stopped(None) => ReceiveError::SyncerEnded,
        }
    }
}

/// How the receiving thread ended.
#[derive(Debug)]
pub(crate) enum ReceiveEnd {
    /// Every file verified and in place.
    Completed,
    /// Cancelled, by the sender (its reason) or here.
    Cancelled(String),
    /// An error; `tell_peer` is false when the peer is already gone.
    Failed {
        /// What failed.
        error: ReceiveError,
        /// Whether the sender is still to hear of it.
        tell_peer: bool,
    },
    /// Stopped before the end, progress kept for a resume; `tell_peer` as above.
    Interrupted {
        /// Why: the sender's reason (a pause), or what happened here.
        reason: String,
        /// Whether the sender is still to hear of it.
        tell_peer: bool,
    },
}

/// The receiving thread: consumes the transfer's frames until it completes, fails, is
/// cancelled or interrupted. Temporary files are removed when it fails or is cancelled; when
/// it is interrupted they are synced and recorded for a resume. Returns only once the place
/// pipeline has finished.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive(
    rt: &tokio::runtime::Handle,
    info: &wire::TransferInfo,
    dest: &Destination,
    start: Start,
    mut frames: mpsc::Receiver<Body>,
    writer: &mpsc::Sender<OutFrame>,
    entry: &Arc<TransferEntry>,
    store: &Store,
) -> ReceiveEnd {
    let report = PushReport {
        info,
        store,
        writer,
        entry,
    };
    let pipeline = Pipeline::new(
        &info.transfer_id,
        &dest.dir,
        start.resumed,
        start.complete,
        &report,
    );
    // Place jobs are bounded by the windows (a file's FileDone, or a small file's first frame,
    // holds a permit until it is reported, and the syncer takes a job off the queue before it
    // reports it), checkpoints by `checkpoint_pending` (plus the last one of an interrupted
    // transfer): the queue is never found full unless the sender broke its window.
    let capacity = info.window as usize + SMALL_FILE_WINDOW as usize + 4;
    let end = pipeline.run(capacity, |queue| {
        let mut files = start.files;
        let mut r = Receiver::new(info, dest, writer, entry, queue);
        let end = r.run(rt, &mut files, &mut frames);
        match end {
            ReceiveEnd::Completed => {}
            ReceiveEnd::Interrupted { .. } => {
                if let Err(e) = r.checkpoint(&mut files) {
                    tracing::warn!(transfer = %info.transfer_id, cause = %error_chain(&e), "cannot record the progress of an interrupted transfer");
                }
            }
            ReceiveEnd::Cancelled(_) | ReceiveEnd::Failed { .. } => {
                // Verified files the syncer has not placed yet are removed too.
                r.queue.discard();
                for f in files.active.values_mut() {
                    if let Some(part) = f.temp.take() {
                        part.remove();
                    }
                }
            }
        }
        // The receiver goes here, and with it the queue: the syncer finishes what is queued
        // and ends, and the placer after it.
        end
    });
    let end = end.unwrap_or_else(|e| ReceiveEnd::Failed {
        error: e.into(),
        tell_peer: true,
    });
    // The sender may have cancelled for good while the syncer was finishing an interrupted
    // attempt (a pause, then a cancel): that Cancel waits in the channel, unread.
    let end = match end {
        ReceiveEnd::Interrupted { .. } => late_cancel(&mut frames).map_or(end, |reason| {
            remove_temps(dest, info);
            ReceiveEnd::Cancelled(reason)
        }),
        other => other,
    };
    // Temporary names kept for a resume (a placed file whose record failed) serve no one
    // once the transfer is over.
    let over = !matches!(end, ReceiveEnd::Interrupted { .. });
    if over && pipeline.kept_temps() {
        remove_temps(dest, info);
    }
    end
}

/// What becomes of the place pipeline's work in a pushed transfer: recorded in the store
/// under the transfer, and every file's end told to the sender as its `FileResult`.
struct PushReport<'a> {
    info: &'a wire::TransferInfo,
    store: &'a Store,
    writer: &'a mpsc::Sender<OutFrame>,
    entry: &'a Arc<TransferEntry>,
}

impl Report for PushReport<'_> {
    fn record(&self, rows: &[(u32, bool, &ChunkMap)]) -> Result<(), StoreError> {
        self.store
            .save_chunk_maps(&self.info.transfer_id, Direction::Receive, rows)
    }

    fn file_ended(&self, fi: usize, result: Result<u64, &PlaceError>) {
        let file = &self.info.files[fi];
        if let Ok(done) = result {
            self.entry.files_done.store(done, Ordering::Relaxed);
            self.entry
                .progress(Some((&file.path, file.size, file.size)));
        }
        // A session that is gone takes no reports; the receiving thread sees it end.
        let _ = self.writer.blocking_send(
            codec::encode(Body::FileResult(wire::FileResult {
                transfer_id: self.info.transfer_id.clone(),
                file_index: fi as u32,
                ok: result.is_ok(),
                error: result.err().map(|e| error_chain(e)).unwrap_or_default(),
            }))
            .into(),
        );
    }
}

/// The reason of a final `Cancel` among the frames that came after the receiving loop ended.
fn late_cancel(frames: &mut mpsc::Receiver<Body>) -> Option<String> {
    while let Ok(frame) = frames.try_recv() {
        if let Body::Cancel(c) = frame {
            if !c.resumable {
                return Some(if c.reason.is_empty() {
                    "cancelled by sender".to_owned()
                } else {
                    c.reason
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_final_cancel_that_came_late_is_found() {
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = |reason: &str, resumable: bool| {
            Body::Cancel(wire::Cancel {
                transfer_id: "t".into(),
                reason: reason.into(),
                resumable,
                failed: false,
            })
        };
        tx.send(cancel("paused", true)).await.unwrap();
        assert_eq!(late_cancel(&mut rx), None, "a pause is no cancel");
        tx.send(cancel("paused", true)).await.unwrap();
        tx.send(cancel("", false)).await.unwrap();
        assert_eq!(late_cancel(&mut rx).as_deref(), Some("cancelled by sender"));
        tx.send(cancel("user changed their mind", false))
            .await
            .unwrap();
        assert_eq!(
            late_cancel(&mut rx).as_deref(),
            Some("user changed their mind")
        );
    }
}
