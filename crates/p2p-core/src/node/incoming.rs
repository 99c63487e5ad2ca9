//! The receiving side's life across sessions: running an accepted transfer, keeping what
//! arrived when it is interrupted, and continuing it when the sender offers it again
//! (`resume`) — also after this daemon restarted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Node, error_chain, lock, now_ms};
use crate::chunkmap::{ChunkMap, chunk_count};
use crate::receiver::{self, Destination, ReceiveEnd};
use crate::records::IncomingRecord;
use crate::session::Session;
use crate::transfer::{Direction, NewTransfer, TransferEntry, TransferState};

/// How long a resume waits for the previous attempt of the same transfer to stop.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Refuses an offer that cannot fit: `need` payload bytes into `dir` (or its nearest
/// existing ancestor, before it is created).
fn check_space(dir: &Path, need: u64) -> Result<(), String> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => return Ok(()),
        }
    }
    match free_space(probe) {
        Ok(free) if free < need => Err(format!(
            "not enough free space in {}: the transfer needs {need} bytes, {free} are free",
            dir.display()
        )),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(dir = %probe.display(), cause = %e, "cannot read free space; accepting without the check");
            Ok(())
        }
    }
}

impl Node {
    /// Handles an offer marked `resume`: when this node holds a record of that transfer from
    /// that device, it continues it without asking again. Gives the offer back otherwise (it
    /// is then a new offer).
    pub(super) async fn resume_offer(
        &self,
        session: &Arc<Session>,
        info: wire::TransferInfo,
        frames: mpsc::Receiver<Body>,
    ) -> Result<(), (wire::TransferInfo, mpsc::Receiver<Body>)> {
        let record = match self.inner.store.incoming_record(&info.transfer_id) {
            Ok(Some(r)) if r.peer_id == session.peer.device_id => r,
            Ok(_) => return Err((info, frames)),
            Err(e) => {
                tracing::warn!(cause = %error_chain(&e), "cannot read the transfer's record; treating the resume as a new offer");
                return Err((info, frames));
            }
        };
        let id = info.transfer_id.clone();
        let same = record.info.files == info.files
            && record.info.dirs == info.dirs
            && record.info.roots == info.roots
            && record.info.chunk_size == info.chunk_size;
        if !same {
            let _ = session
                .send(Body::Reject(wire::Reject {
                    transfer_id: id,
                    reason: "the resumed transfer does not match the one accepted".into(),
                }))
                .await;
            return Ok(());
        }
        // A previous attempt may still run on a session that has not noticed its end yet.
        let previous = lock(&self.inner.receiving).get(&id).cloned();
        if let Some((stop, stopped)) = previous {
            stop.cancel();
            if tokio::time::timeout(REPLACE_TIMEOUT, stopped.cancelled())
                .await
                .is_err()
            {
                let _ = session
                    .send(Body::Cancel(wire::Cancel {
                        transfer_id: id,
                        reason: "the previous attempt of this transfer is still stopping".into(),
                        resumable: true,
                    }))
                    .await;
                return Ok(());
            }
        }
        let entry = match self.inner.transfers.get(&id) {
            Some(e) if e.state() == TransferState::Interrupted => e,
            Some(e) => {
                let _ = session
                    .send(Body::Reject(wire::Reject {
                        transfer_id: id,
                        reason: format!("the transfer cannot resume: it is {:?} here", e.state()),
                    }))
                    .await;
                return Ok(());
            }
            None => self.restored_entry(&record),
        };
        tracing::info!(transfer = %id, peer = %session.peer.device_id, "sender resumes the transfer");
        session
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run_receive(
            session,
            &entry,
            info,
            frames,
            Plan::Resume(Box::new(record)),
        )
        .await;
        session
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Runs an accepted receive to its end (or interruption).
    pub(super) async fn run_receive(
        &self,
        session: &Arc<Session>,
        entry: &Arc<TransferEntry>,
        info: wire::TransferInfo,
        route_rx: mpsc::Receiver<Body>,
        plan: Plan,
    ) {
        let id = info.transfer_id.clone();
        let stop = self.inner.shutdown.child_token();
        let stopped = CancellationToken::new();
        lock(&self.inner.receiving).insert(id.clone(), (stop.clone(), stopped.clone()));
        let _stopped = stopped.drop_guard();
        let send_reject = |reason: String| async {
            let _ = session
                .send(Body::Reject(wire::Reject {
                    transfer_id: id.clone(),
                    reason,
                }))
                .await;
        };
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
                self.forget_incoming(&id).await;
                send_reject(reason).await;
                self.unregister_receive(&id);
                return;
            }
            Err(e) => {
                entry.set_state(
                    TransferState::Failed,
                    format!("preparing the destination failed: {e}"),
                );
                self.forget_incoming(&id).await;
                send_reject("receiver error".into()).await;
                self.unregister_receive(&id);
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
            self.unregister_receive(&id);
            return;
        }
        let mut worker = {
            let writer = session.writer();
            let entry = entry.clone();
            let info = info.clone();
            let store = self.inner.store.clone();
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                receiver::receive(&rt, &info, &dest, start, route_rx, &writer, &entry, &store)
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
        let tell_peer = |reason: String, resumable: bool| async move {
            let _ = session
                .send(Body::Cancel(wire::Cancel {
                    transfer_id: id.clone(),
                    reason,
                    resumable,
                }))
                .await;
        };
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
                reason,
                tell_peer: tell,
            }) => {
                entry.set_state(TransferState::Failed, reason.clone());
                self.forget_incoming(&entry.id).await;
                if tell || local_cancel {
                    tell_peer(reason, false).await;
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
                entry.set_state(TransferState::Interrupted, reason.clone());
                if tell || local_stop {
                    tell_peer(reason, true).await;
                }
            }
            Err(e) => {
                entry.set_state(
                    TransferState::Failed,
                    format!("receiver thread failed: {e}"),
                );
                self.forget_incoming(&entry.id).await;
                tell_peer("receiver error".into(), false).await;
            }
        }
        self.unregister_receive(&entry.id);
    }

    // A newer attempt registers only after this one signalled that it stopped, which
    // happens after this removal: the entry removed is always this attempt's own.
    fn unregister_receive(&self, id: &str) {
        lock(&self.inner.receiving).remove(id);
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
                    if self.inner.transfers.get(&r.id).is_none() {
                        tracing::info!(transfer = %r.id, "an interrupted incoming transfer waits for its sender");
                        self.restored_entry(&r);
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
        self.inner.tasks.spawn_blocking(move || {
            if let Ok(Some(r)) = store.incoming_record(&id) {
                let dest = Destination {
                    dir: r.dest_dir.clone(),
                    roots: r.roots.clone(),
                };
                receiver::remove_temps(&dest, &r.info);
            }
            if let Err(e) = store.forget_transfer(&id, Direction::Receive) {
                tracing::warn!(transfer = %id, cause = %error_chain(&e), "cannot remove the cancelled transfer's record");
            }
        });
    }

    /// A `Cancel` for a transfer without a running attempt: the sender gave up on an
    /// interrupted transfer.
    pub(super) fn stray_cancel(&self, session: &Session, c: &wire::Cancel) {
        let Some(entry) = self.inner.transfers.get(&c.transfer_id) else {
            return;
        };
        if entry.direction != Direction::Receive
            || entry.snapshot().peer_id != session.peer.device_id
            || entry.state() != TransferState::Interrupted
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
) -> Result<(Destination, receiver::Start), (TransferState, String)> {
    let failed = |e: String| (TransferState::Failed, e);
    let rejected = |e: String| (TransferState::Rejected, e);
    let total: u64 = info
        .files
        .iter()
        .map(|f| f.size)
        .fold(0, u64::saturating_add);
    match plan {
        Plan::Fresh(dir) => {
            check_space(&dir, total).map_err(rejected)?;
            let dest = receiver::prepare(&dir, info).map_err(|e| failed(e.to_string()))?;
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
            Ok((dest, receiver::fresh(info)))
        }
        Plan::Resume(record) => {
            let dest = Destination::restore(&record.dest_dir, record.roots.clone(), info)
                .map_err(|e| failed(e.to_string()))?;
            let recorded = store
                .chunk_maps(&info.transfer_id, Direction::Receive)
                .map_err(|e| {
                    failed(format!(
                        "receiver cannot read the transfer's progress: {}",
                        error_chain(&e)
                    ))
                })?;
            let start = receiver::resume(info, &dest, &recorded, store);
            if let Err(e) = check_space(&dest.dir, total.saturating_sub(start.have_bytes)) {
                // The transfer ends here: what it had goes too.
                drop(start);
                receiver::remove_temps(&dest, info);
                return Err(rejected(e));
            }
            Ok((dest, start))
        }
    }
}
