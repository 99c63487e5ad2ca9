//! The receiving side's life across sessions: running an accepted transfer, keeping what
//! arrived when it is interrupted, and continuing it when the sender offers it again
//! (`resume`) — also after this daemon restarted. The receives running now are this file's
//! state ([`Claims`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Node, lock, now_ms};
use crate::error_chain;
use crate::net::session::Session;
use crate::store::history::HistoryStatus;
use crate::store::records::IncomingRecord;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::receive::{self, Destination, ReceiveEnd};
use crate::transfer::{Direction, NewTransfer, TransferEntry, TransferState};

/// Gives a claim back when the attempt ends, whichever way.
struct Release<'a>(&'a Node, &'a str, &'a Claim);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1, self.2);
    }
}

/// An interrupted incoming transfer whose sender has not come back within this long (from
/// its start) is removed at the next start of the daemon.
pub(super) const INTERRUPTED_TTL: Duration = Duration::from_secs(30 * 86_400);

/// How long a sender that resumes a completed transfer has to send `Complete`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// How a transfer that ended here ended, as the answer to its resume needs it.
enum Ended {
    /// Everything arrived.
    Completed,
    /// It failed, was cancelled or rejected: why, as the sender is told.
    Otherwise(String),
}

/// Answers the resume of a transfer that ended here: a completed one is confirmed
/// (everything arrived, the sender did not hear so: a lost CompleteAck, or it stopped just
/// then), any other refused with its reason.
async fn answer_ended(
    session: &Session,
    info: wire::TransferInfo,
    frames: mpsc::Receiver<Body>,
    ended: Ended,
) {
    match ended {
        Ended::Completed => {
            tracing::info!(transfer = %info.transfer_id, peer = %session.peer.device_id, "resume of a completed transfer; confirming");
            already_complete(session, &info, frames).await;
        }
        Ended::Otherwise(reason) => session.reject(&info.transfer_id, reason).await,
    }
}

/// How a transfer entry that is final here ended.
fn outcome(e: &TransferEntry) -> Ended {
    if e.state() == TransferState::Completed {
        Ended::Completed
    } else {
        Ended::Otherwise(format!(
            "the transfer already ended here: {}",
            e.snapshot().error
        ))
    }
}

/// Answers the resume of a transfer that completed here: `Ready` with every file complete,
/// then `CompleteAck` to its `Complete`.
async fn already_complete(
    session: &Session,
    info: &wire::TransferInfo,
    mut frames: mpsc::Receiver<Body>,
) {
    let have = (0..info.files.len() as u32)
        .map(|i| wire::FileHave {
            file_index: i,
            complete: true,
            chunks: bytes::Bytes::new(),
        })
        .collect();
    if session
        .send(Body::Ready(wire::Ready {
            transfer_id: info.transfer_id.clone(),
            have,
        }))
        .await
        .is_err()
    {
        return;
    }
    if let Ok(Some(Body::Complete(_))) = tokio::time::timeout(CONFIRM_TIMEOUT, frames.recv()).await
    {
        let _ = session
            .send(Body::CompleteAck(wire::CompleteAck {
                transfer_id: info.transfer_id.clone(),
            }))
            .await;
    }
}

/// Where an accepted receive starts.
pub(super) enum Plan {
    /// A new transfer into this directory.
    Fresh(PathBuf),
    /// A transfer accepted before, continuing from its record.
    Resume(Box<IncomingRecord>),
}

/// Free bytes for an unprivileged user on the filesystem of `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// An offer that does not fit in the free space of its destination.
#[derive(Debug, thiserror::Error)]
#[error("not enough free space in {dir}: the transfer needs {need} bytes, {free} are free")]
struct NoSpace {
    dir: PathBuf,
    need: u64,
    free: u64,
}

/// Refuses an offer that cannot fit: `need` payload bytes into `dir` (or its nearest
/// existing ancestor, before it is created).
fn check_space(dir: &Path, need: u64) -> Result<(), NoSpace> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => return Ok(()),
        }
    }
    match free_space(probe) {
        Ok(free) if free < need => Err(NoSpace {
            dir: dir.to_path_buf(),
            need,
            free,
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(dir = %probe.display(), cause = %e, "cannot read free space; accepting without the check");
            Ok(())
        }
    }
}

/// The right to run the receive of one transfer: at most one attempt holds it at a time.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    seq: u64,
    /// Cancelled to stop the attempt (shutdown, or a newer attempt wants the transfer).
    stop: CancellationToken,
}

/// The message of a resume that comes while the previous attempt still runs; the sender
/// tries again a little later.
const STILL_STOPPING: &str = "the previous attempt of this transfer is still stopping";

/// The receives running now: at most one attempt per transfer holds its claim.
#[derive(Debug, Default)]
pub(super) struct Claims {
    // Claims held, by transfer id, with how to stop each attempt (shutdown, or a resume on a
    // new session that replaces it). Taken and given back by the attempts, read by cancels:
    // a short std lock, never held across an await.
    held: Mutex<HashMap<String, Claim>>,
    // Numbers the claims, so that an attempt releases only its own.
    next: AtomicU64,
}

impl Claims {
    /// Claims transfer `id` for a new attempt, stopped with `parent` or on its own; if another
    /// attempt holds it, asks that one to stop and returns `None`.
    fn try_claim(&self, id: &str, parent: &CancellationToken) -> Option<Claim> {
        let mut map = lock(&self.held);
        if let Some(previous) = map.get(id) {
            previous.stop.cancel();
            return None;
        }
        let claim = Claim {
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            stop: parent.child_token(),
        };
        map.insert(id.to_owned(), claim.clone());
        Some(claim)
    }

    /// Gives a claim back (only if it is still the one held).
    fn release(&self, id: &str, claim: &Claim) {
        let mut map = lock(&self.held);
        if map.get(id).is_some_and(|c| c.seq == claim.seq) {
            map.remove(id);
        }
    }

    /// Whether an attempt holds the claim of transfer `id`.
    pub(super) fn holds(&self, id: &str) -> bool {
        lock(&self.held).contains_key(id)
    }

    /// Asks the attempt holding the claim of transfer `id`, if any, to stop (it keeps what it
    /// has).
    pub(super) fn stop(&self, id: &str) {
        if let Some(c) = lock(&self.held).get(id) {
            c.stop.cancel();
        }
    }
}

impl Node {
    /// Claims the receive of transfer `id` for a new attempt. If another attempt holds it,
    /// that one is asked to stop and `None` comes back: the caller tells the sender to try
    /// again (`Cancel{resumable}`), by when the other has stopped.
    pub(super) fn try_claim(&self, id: &str) -> Option<Claim> {
        self.inner.receiving.try_claim(id, &self.inner.shutdown)
    }

    /// Gives a claim back (only if it is still the one held).
    pub(super) fn release(&self, id: &str, claim: &Claim) {
        self.inner.receiving.release(id, claim);
    }

    /// Handles an offer marked `resume`: when this node holds a record of that transfer from
    /// that device, it continues it without asking again; when history says it already ended
    /// here, the sender hears how. Gives the offer back otherwise (it is then a new offer).
    pub(super) async fn resume_offer(
        &self,
        session: &Arc<Session>,
        info: wire::TransferInfo,
        frames: mpsc::Receiver<Body>,
    ) -> Result<(), (wire::TransferInfo, mpsc::Receiver<Body>)> {
        let id = info.transfer_id.clone();
        let peer = session.peer.device_id.clone();
        // Ended here, its attempt perhaps still winding down (record and claim not yet
        // given back): answered as history would answer it a moment later.
        let ended = self.inner.transfers.get(&id).filter(|e| {
            e.direction == Direction::Receive
                && e.state().is_final()
                && e.snapshot().peer_id == peer
        });
        if let Some(e) = ended {
            answer_ended(session, info, frames, outcome(&e)).await;
            return Ok(());
        }
        let record = match self.inner.store.incoming_record(&id) {
            Ok(Some(r)) if r.peer_id == peer => r,
            Ok(Some(_)) => return Err((info, frames)),
            Ok(None) => {
                let ended = self
                    .inner
                    .store
                    .history_outcome(&id, Direction::Receive, &peer);
                let ended = match ended {
                    Ok(Some((HistoryStatus::Completed, _))) => Ended::Completed,
                    Ok(Some((_, reason))) => Ended::Otherwise(reason),
                    _ => return Err((info, frames)),
                };
                answer_ended(session, info, frames, ended).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(cause = %error_chain(&e), "cannot read the transfer's record; treating the resume as a new offer");
                return Err((info, frames));
            }
        };
        let same = record.info.files == info.files
            && record.info.dirs == info.dirs
            && record.info.roots == info.roots
            && record.info.chunk_size == info.chunk_size;
        if !same {
            session
                .reject(&id, "the resumed transfer does not match the one accepted")
                .await;
            return Ok(());
        }
        // The device's rule may have changed since it was accepted.
        if let Some(reason) = self.refusal(&session.peer.id) {
            tracing::info!(transfer = %id, peer = %peer, "resume refused by the device's current rule");
            if let Some(e) = self.inner.transfers.get(&id) {
                e.set_state(TransferState::Rejected, reason.clone());
            }
            self.discard_incoming(&id);
            session.reject(&id, reason).await;
            return Ok(());
        }
        // A previous attempt may still run on a session that has not noticed its end yet.
        let Some(claim) = self.try_claim(&id) else {
            session.cancel(&id, STILL_STOPPING, true).await;
            return Ok(());
        };
        let entry = match self.inner.transfers.get(&id) {
            Some(e) if e.state() == TransferState::Interrupted => e,
            // Ended since the look above.
            Some(e) if e.state().is_final() => {
                self.release(&id, &claim);
                answer_ended(session, info, frames, outcome(&e)).await;
                return Ok(());
            }
            Some(_) => {
                self.release(&id, &claim);
                session.cancel(&id, STILL_STOPPING, true).await;
                return Ok(());
            }
            None => self.restored_entry(&record),
        };
        tracing::info!(transfer = %id, peer = %peer, "sender resumes the transfer");
        session
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run_receive(
            session,
            &entry,
            info,
            frames,
            Plan::Resume(Box::new(record)),
            claim,
        )
        .await;
        session
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Runs an accepted receive to its end (or interruption), holding `claim`.
    pub(super) async fn run_receive(
        &self,
        session: &Arc<Session>,
        entry: &Arc<TransferEntry>,
        info: wire::TransferInfo,
        route_rx: mpsc::Receiver<Body>,
        plan: Plan,
        claim: Claim,
    ) {
        let id = info.transfer_id.clone();
        let stop = claim.stop.clone();
        let _release = Release(self, &id, &claim);
        let send_reject = |reason: String| session.reject(&id, reason);
        let info = Arc::new(info);
        let prepared = {
            let info = info.clone();
            let store = self.inner.store.clone();
            let peer_id = session.peer.device_id.clone();
            tokio::task::spawn_blocking(move || prepare(&info, plan, &store, &peer_id)).await
        };
        let (dest, start) = match prepared {
            Ok(Ok(x)) => x,
            Ok(Err((outcome, reason))) => {
                entry.set_state(outcome, reason.clone());
                // What a resumed attempt had goes with the record.
                self.discard_incoming(&id);
                send_reject(reason).await;
                return;
            }
            Err(e) => {
                entry.set_state(
                    TransferState::Failed,
                    format!("preparing the destination failed: {e}"),
                );
                self.forget_incoming(&id).await;
                send_reject("receiver error".into()).await;
                return;
            }
        };
        entry.set_destination(dest.dir.display().to_string());
        entry.bytes_done.store(start.have_bytes, Ordering::Relaxed);
        entry
            .resumed_bytes
            .store(start.have_bytes, Ordering::Relaxed);
        entry.files_done.store(start.complete, Ordering::Relaxed);
        entry.set_state(TransferState::Running, "");
        if session
            .send(Body::Ready(wire::Ready {
                transfer_id: id.clone(),
                have: start.have.clone(),
            }))
            .await
            .is_err()
        {
            entry.set_state(TransferState::Interrupted, "session to peer lost");
            return;
        }
        let mut worker = {
            let writer = session.writer();
            let entry = entry.clone();
            let info = info.clone();
            let store = self.inner.store.clone();
            let rt = tokio::runtime::Handle::current();
            // The receiving thread logs in the offer's span (transfer, peer).
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _span = span.enter();
                receive::receive(&rt, &info, &dest, start, route_rx, &writer, &entry, &store)
            })
        };
        // A local cancel, a shutdown or a resume on another session closes the worker's
        // channel by unrouting the transfer: nothing here holds a sender, so the worker wakes
        // as soon as the reader's copy goes.
        let mut local_cancel = false;
        let mut local_stop = false;
        let end = loop {
            tokio::select! {
                r = &mut worker => break r,
                _ = entry.cancel.cancelled(), if !local_cancel => {
                    local_cancel = true;
                    session.unroute(&id);
                }
                _ = stop.cancelled(), if !local_stop => {
                    local_stop = true;
                    session.unroute(&id);
                }
            }
        };
        let tell_peer = |reason: String, resumable: bool| session.cancel(&id, reason, resumable);
        match end {
            Ok(ReceiveEnd::Completed) => {
                entry.set_state(TransferState::Completed, "");
                self.forget_incoming(&entry.id).await;
            }
            Ok(ReceiveEnd::Cancelled(reason)) => {
                entry.set_state(TransferState::Cancelled, reason.clone());
                self.forget_incoming(&entry.id).await;
                if local_cancel {
                    let snap = entry.snapshot();
                    tell_peer(
                        if snap.error.is_empty() {
                            reason
                        } else {
                            snap.error
                        },
                        false,
                    )
                    .await;
                }
            }
            Ok(ReceiveEnd::Failed {
                error,
                tell_peer: tell,
            }) => {
                let reason = error_chain(&error);
                entry.set_state(TransferState::Failed, reason.clone());
                self.forget_incoming(&entry.id).await;
                if tell || local_cancel {
                    session.fail(&id, reason).await;
                }
            }
            Ok(ReceiveEnd::Interrupted {
                reason,
                tell_peer: tell,
            }) => {
                let reason = if local_stop && self.inner.shutdown.is_cancelled() {
                    "receiver shutting down".to_owned()
                } else if local_stop {
                    "replaced by a newer attempt".to_owned()
                } else {
                    reason
                };
                // Over before it says so: a cancel or a resume that sees the transfer
                // interrupted finds no attempt holding it. No new attempt starts before it
                // does say so, so the Cancel below reaches the peer as this attempt's.
                self.release(&id, &claim);
                if tell || local_stop {
                    tell_peer(reason.clone(), true).await;
                }
                if !entry.set_state(TransferState::Interrupted, reason) {
                    // Cancelled while it stopped, after the cancel looked for an attempt to
                    // clean up: nothing will continue it.
                    self.discard_incoming(&id);
                }
            }
            Err(e) => {
                entry.set_state(
                    TransferState::Failed,
                    format!("receiver thread failed: {e}"),
                );
                self.forget_incoming(&entry.id).await;
                session.fail(&id, "receiver error").await;
            }
        }
    }

    async fn forget_incoming(&self, id: &str) {
        let store = self.inner.store.clone();
        let id = id.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = store.forget_transfer(&id, Direction::Receive) {
                tracing::warn!(transfer = %id, cause = %error_chain(&e), "cannot remove the ended transfer's record");
            }
        })
        .await;
    }

    fn restored_entry(&self, r: &IncomingRecord) -> Arc<TransferEntry> {
        let peer = r.peer_id.parse::<crate::DeviceId>().ok();
        let device = peer.and_then(|d| self.inner.store.get(&d).ok().flatten());
        let entry = self.inner.transfers.insert(
            NewTransfer {
                id: r.id.clone(),
                direction: Direction::Receive,
                state: TransferState::Interrupted,
                peer_id: r.peer_id.clone(),
                peer_name: device.as_ref().map(|d| d.name.clone()).unwrap_or_default(),
                peer_address: device.map(|d| d.last_address).unwrap_or_default(),
                roots: r.info.roots.clone(),
                total_files: r.info.files.len() as u64,
                total_bytes: r.info.files.iter().map(|f| f.size).sum(),
                destination: r.dest_dir.display().to_string(),
                started: Some(UNIX_EPOCH + Duration::from_millis(r.started_ms)),
                max_speed: 0,
            },
            CancellationToken::new(),
        );
        if let Ok(maps) = self.inner.store.chunk_maps(&r.id, Direction::Receive) {
            let (mut bytes, mut files) = (0u64, 0u64);
            for (fi, rec) in maps {
                let Some(f) = r.info.files.get(fi as usize) else {
                    continue;
                };
                if rec.complete {
                    files += 1;
                    bytes += f.size;
                } else {
                    bytes +=
                        ChunkMap::from_bytes(chunk_count(f.size, r.info.chunk_size), &rec.chunks)
                            .bytes_done(f.size, r.info.chunk_size);
                }
            }
            entry.bytes_done.store(bytes, Ordering::Relaxed);
            entry.files_done.store(files, Ordering::Relaxed);
        }
        entry
    }

    /// Incoming transfers recorded before a restart wait, interrupted, for their sender.
    pub(super) fn restore_incoming(&self) {
        match self.inner.store.incoming_records() {
            Ok(records) => {
                for r in records {
                    if self.inner.transfers.get(&r.id).is_some() {
                        continue;
                    }
                    let entry = self.restored_entry(&r);
                    let snap = entry.snapshot();
                    if snap.files_done == snap.total_files {
                        // Every file was in place; the end was not recorded (killed just then).
                        entry.set_state(TransferState::Completed, "");
                        if let Err(e) = self.inner.store.forget_transfer(&r.id, Direction::Receive)
                        {
                            tracing::warn!(transfer = %r.id, cause = %error_chain(&e), "cannot remove a finished transfer's record");
                        }
                    } else if now_ms().saturating_sub(r.started_ms)
                        > INTERRUPTED_TTL.as_millis() as u64
                    {
                        tracing::info!(transfer = %r.id, "an interrupted incoming transfer expired; removing what arrived");
                        entry.set_state(
                            TransferState::Failed,
                            format!(
                                "expired: not resumed within {} days",
                                INTERRUPTED_TTL.as_secs() / 86_400
                            ),
                        );
                        self.discard_incoming(&r.id);
                    } else {
                        tracing::info!(transfer = %r.id, "an interrupted incoming transfer waits for its sender");
                    }
                }
            }
            Err(e) => {
                tracing::error!(cause = %error_chain(&e), "cannot read unfinished incoming transfers");
            }
        }
    }

    /// An interrupted receive was cancelled here, or by its sender while no attempt ran:
    /// remove what arrived and the record.
    pub(super) fn discard_incoming(&self, id: &str) {
        let store = self.inner.store.clone();
        let id = id.to_owned();
        let span = tracing::info_span!("discard", transfer = %id);
        self.inner.tasks.spawn_blocking(move || {
            let _span = span.enter();
            if let Ok(Some(r)) = store.incoming_record(&id) {
                let dest = Destination {
                    dir: r.dest_dir.clone(),
                    roots: r.roots.clone(),
                };
                receive::remove_temps(&dest, &r.info);
            }
            if let Err(e) = store.forget_transfer(&id, Direction::Receive) {
                tracing::warn!(transfer = %id, cause = %error_chain(&e), "cannot remove the cancelled transfer's record");
            }
        });
    }

    /// A `Cancel` for a transfer without a running attempt: the sender gave up on an
    /// interrupted transfer.
    pub(super) fn stray_cancel(&self, session: &Session, c: &wire::Cancel) {
        // A resumable one (a pause) asks for nothing that is not so already.
        if c.resumable {
            return;
        }
        let Some(entry) = self.inner.transfers.get(&c.transfer_id) else {
            return;
        };
        // Interrupted, or an attempt that ended and is being wound down (it gave its claim
        // back and has yet to say Interrupted; it discards what it kept when it finds the
        // transfer cancelled).
        let stopped = match entry.state() {
            TransferState::Interrupted => true,
            TransferState::Running => !self.inner.receiving.holds(&c.transfer_id),
            _ => false,
        };
        if entry.direction != Direction::Receive
            || entry.snapshot().peer_id != session.peer.device_id
            || !stopped
        {
            return;
        }
        let reason = if c.reason.is_empty() {
            "cancelled by sender".to_owned()
        } else {
            c.reason.clone()
        };
        if entry.set_state(TransferState::Cancelled, reason) {
            self.discard_incoming(&c.transfer_id);
        }
    }
}

/// Prepares the destination and the starting point (blocking): a fresh transfer reserves
/// its names, is recorded, and starts from nothing; a resumed one finds its names and files
/// again. Either way the free space must hold what is still to come. An offer that does not
/// fit is `Rejected`; one that cannot be set up `Failed`.
fn prepare(
    info: &wire::TransferInfo,
    plan: Plan,
    store: &crate::store::Store,
    peer_id: &str,
) -> Result<(Destination, receive::Start), (TransferState, String)> {
    let failed = |e: String| (TransferState::Failed, e);
    let rejected = |e: NoSpace| (TransferState::Rejected, e.to_string());
    let total: u64 = info
        .files
        .iter()
        .map(|f| f.size)
        .fold(0, u64::saturating_add);
    match plan {
        Plan::Fresh(dir) => {
            // A record left from an earlier offer of the same id (accepted, then offered
            // anew) goes first, with its temporary files: nothing of it may count now.
            if let Ok(Some(old)) = store.incoming_record(&info.transfer_id) {
                let old_dest = Destination {
                    dir: old.dest_dir.clone(),
                    roots: old.roots.clone(),
                };
                receive::remove_temps(&old_dest, &old.info);
                store
                    .forget_transfer(&info.transfer_id, Direction::Receive)
                    .map_err(|e| failed(error_chain(&e)))?;
            }
            check_space(&dir, total).map_err(rejected)?;
            let dest = receive::prepare(&dir, info).map_err(|e| failed(error_chain(&e)))?;
            let record = IncomingRecord {
                id: info.transfer_id.clone(),
                peer_id: peer_id.to_owned(),
                info: info.clone(),
                dest_dir: dir,
                roots: dest.roots.clone(),
                started_ms: now_ms(),
            };
            store.save_incoming(&record).map_err(|e| {
                failed(format!(
                    "receiver cannot record the transfer: {}",
                    error_chain(&e)
                ))
            })?;
            Ok((dest, receive::fresh(info)))
        }
        Plan::Resume(record) => {
            let dest = receive::restore(&record.dest_dir, record.roots.clone(), info)
                .map_err(|e| failed(error_chain(&e)))?;
            let recorded = store
                .chunk_maps(&info.transfer_id, Direction::Receive)
                .map_err(|e| {
                    failed(format!(
                        "receiver cannot read the transfer's progress: {}",
                        error_chain(&e)
                    ))
                })?;
            let start = receive::resume(info, &dest, &recorded, store);
            if let Err(e) = check_space(&dest.dir, total.saturating_sub(start.have_bytes)) {
                // The transfer ends here: what it had goes too.
                drop(start);
                receive::remove_temps(&dest, info);
                return Err(rejected(e));
            }
            Ok((dest, start))
        }
    }
}
