//! The life of an outgoing transfer across attempts: starting a send, dialing, retry with
//! backoff, pause and resume, continuing after a restart. The controls of the running
//! supervisors are this file's state ([`Outgoing`]).
//!
//! One supervisor task per transfer runs attempts (`send::attempt`) until the transfer
//! ends. A transient failure (session lost, peer unreachable, receiver paused or restarting)
//! waits 2 s, 4 s, … (at most 60 s) and tries again with `resume`, so only the chunks the
//! receiver lacks are sent; a permanent one ends the transfer at once. The consecutive
//! failures count restarts after an attempt that moved data, so a long transfer over a flaky
//! link is not given up by `max_attempts`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Node, NodeError, lock, now_ms};
use crate::error_chain;
use crate::net::session::Session;
use crate::net::wire::caps;
use crate::store::records::OutgoingRecord;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::manifest::{LocalManifest, ManifestError};
use crate::transfer::send::{self, AttemptEnd};
use crate::transfer::{
    Direction, NewTransfer, SendOptions, TransferEntry, TransferSnapshot, TransferState,
};

/// First retry delay; doubled per consecutive failure.
pub(super) const BACKOFF_START: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The delay before attempt number `failures + 1` (after `failures` consecutive failures).
pub(super) fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// How the user steers a transfer's supervisor.
#[derive(Debug, Default)]
pub(super) struct Control {
    // Set by `pause`, cleared by `resume` (RPCs), read by the supervisor between attempts:
    // a flag, with `wake` to tell it.
    paused: AtomicBool,
    // Wakes the supervisor out of a pause or a backoff.
    wake: Notify,
    // Stops the attempt in progress (pause).
    attempt: std::sync::Mutex<Option<CancellationToken>>,
}

impl Control {
    fn stop_attempt(&self) {
        if let Some(t) = lock(&self.attempt).as_ref() {
            t.cancel();
        }
    }
}

/// The controls of the outgoing transfers whose supervisor runs, by transfer id.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    // Inserted when a supervisor starts and removed when it ends; RPCs (pause, resume) look
    // their transfer's control up. A short std lock, never held across an await.
    controls: std::sync::Mutex<HashMap<String, Arc<Control>>>,
}

impl Outgoing {
    fn insert(&self, id: &str, control: Arc<Control>) {
        lock(&self.controls).insert(id.to_owned(), control);
    }

    fn remove(&self, id: &str) {
        lock(&self.controls).remove(id);
    }

    fn get(&self, id: &str) -> Option<Arc<Control>> {
        lock(&self.controls).get(id).cloned()
    }
}

impl Node {
    /// Starts sending `paths` to `peer`; returns the transfer id once the offer is on its way.
    ///
    /// # Errors
    /// [`NodeError::Options`] or [`NodeError::NotAbsolute`] for what was asked;
    /// [`NodeError::PathNotFound`], [`NodeError::ReadPath`] or [`NodeError::Sources`] for the
    /// paths; [`NodeError::BadAddress`], [`NodeError::NoAddress`], [`NodeError::PeerLookup`],
    /// [`NodeError::DeviceLookup`], [`NodeError::Unreachable`] or [`NodeError::TlsSetup`] for
    /// the peer; [`NodeError::NoFolders`];
    /// [`NodeError::RecordTransfer`] or [`NodeError::Task`] if the transfer cannot be recorded.
    pub async fn send(
        &self,
        paths: Vec<PathBuf>,
        peer: &str,
        opts: SendOptions,
    ) -> Result<String, NodeError> {
        opts.validate()?;
        if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
            return Err(NodeError::NotAbsolute {
                what: "path",
                path: p.clone(),
            });
        }
        let manifest = tokio::task::spawn_blocking(move || LocalManifest::build(&paths))
            .await
            .map_err(|source| NodeError::Task {
                what: "reading the files",
                source,
            })?
            .map_err(|e| match e {
                ManifestError::NotFound(p) => NodeError::PathNotFound(p),
                ManifestError::Io { path, source } => NodeError::ReadPath { path, source },
                other => NodeError::Sources(other),
            })?;
        let session = self.connect(peer).await?;
        if manifest.has_folder && session.caps & caps::FOLDER == 0 {
            return Err(NodeError::NoFolders);
        }
        let opts = SendOptions {
            chunk_size: opts.chunk_size.min(session.limits.chunk_size),
            window: if session.limits.windowed {
                opts.window.min(session.limits.window_size)
            } else {
                1
            },
            compress: opts.compress && session.limits.compress,
            level: opts.level,
            max_speed: opts.max_speed,
        };
        let id = uuid::Uuid::new_v4().to_string();
        // Retries dial the same device at the address that worked (an incoming session's
        // peer is dialed at its listen address).
        let dial = format!(
            "{}@{}",
            session.peer.id,
            if session.outgoing {
                session.remote
            } else {
                session.peer.listen_addr
            }
        );
        let manifest = Arc::new(manifest);
        let record = OutgoingRecord {
            id: id.clone(),
            peer_id: session.peer.device_id.clone(),
            dial: dial.clone(),
            info: manifest.offer(&id, opts, false),
            sources: manifest.files.iter().map(|f| f.source.clone()).collect(),
            options: opts,
            paused: false,
            started_ms: now_ms(),
        };
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.save_outgoing(&record))
            .await
            .map_err(|source| NodeError::Task {
                what: "recording the transfer",
                source,
            })?
            .map_err(NodeError::RecordTransfer)?;
        let entry = self.inner.transfers.insert(
            NewTransfer {
                id: id.clone(),
                direction: Direction::Send,
                state: TransferState::Offered,
                peer_id: session.peer.device_id.clone(),
                peer_name: session.peer.name.clone(),
                peer_address: session.peer.listen_addr.to_string(),
                roots: manifest.roots.clone(),
                total_files: manifest.files.len() as u64,
                total_bytes: manifest.total_bytes,
                destination: String::new(),
                started: None,
                max_speed: opts.max_speed,
            },
            CancellationToken::new(),
        );
        tracing::info!(transfer = %id, peer = %session.peer.device_id, files = manifest.files.len(), bytes = manifest.total_bytes, "sending");
        self.spawn_outgoing(entry, manifest, opts, dial, Some(session), false, false);
        Ok(id)
    }

    /// Starts the supervisor of an outgoing transfer.
    #[allow(clippy::too_many_arguments)]
    fn spawn_outgoing(
        &self,
        entry: Arc<TransferEntry>,
        manifest: Arc<LocalManifest>,
        opts: SendOptions,
        dial: String,
        session: Option<Arc<Session>>,
        resume: bool,
        paused: bool,
    ) {
        let control = Arc::new(Control::default());
        control.paused.store(paused, Ordering::Relaxed);
        self.inner.outgoing.insert(&entry.id, control.clone());
        let node = self.clone();
        let span = tracing::info_span!("send", transfer = %entry.id, peer = %dial);
        self.spawn(span, async move {
            node.supervise(&entry, manifest, opts, &dial, session, resume, &control)
                .await;
            node.inner.outgoing.remove(&entry.id);
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        &self,
        entry: &Arc<TransferEntry>,
        manifest: Arc<LocalManifest>,
        opts: SendOptions,
        dial: &str,
        mut session: Option<Arc<Session>>,
        mut resume: bool,
        control: &Control,
    ) {
        let shutdown = self.inner.shutdown.clone();
        let mut failures: u32 = 0;
        loop {
            if control.paused.load(Ordering::Relaxed) {
                entry.set_state(TransferState::Paused, "paused by user");
                tokio::select! {
                    _ = control.wake.notified() => continue,
                    _ = entry.cancel.cancelled() => break self.outgoing_ended(entry, dial, true).await,
                    _ = shutdown.cancelled() => return,
                }
            }
            entry.begin_attempt();
            let sent_before = entry.wire_bytes.load(Ordering::Relaxed);
            let session = match session.take().filter(|s| !s.closed.is_cancelled()) {
                Some(s) => Ok(s),
                None => self.redial(dial, &entry.snapshot().peer_id).await,
            };
            let end = match session {
                Ok(s) => {
                    let stop = shutdown.child_token();
                    *lock(&control.attempt) = Some(stop.clone());
                    if control.paused.load(Ordering::Relaxed) {
                        // Paused while dialing.
                        stop.cancel();
                    }
                    let end = send::attempt(
                        s,
                        entry.clone(),
                        manifest.clone(),
                        opts,
                        resume,
                        stop,
                        self.inner.store.clone(),
                    )
                    .await;
                    *lock(&control.attempt) = None;
                    end
                }
                Err(e) => AttemptEnd::Transient(error_chain(&e)),
            };
            let snap = entry.snapshot();
            // Data moved in this attempt: the link works, only the failures since count.
            let moved = entry.wire_bytes.load(Ordering::Relaxed) > sent_before;
            match end {
                AttemptEnd::Completed => {
                    entry.set_state(TransferState::Completed, "");
                    break self.outgoing_ended(entry, dial, false).await;
                }
                AttemptEnd::Rejected(r) => {
                    entry.set_state(TransferState::Rejected, r);
                    break self.outgoing_ended(entry, dial, false).await;
                }
                AttemptEnd::Cancelled(r) => {
                    entry.set_state(TransferState::Cancelled, r);
                    break self.outgoing_ended(entry, dial, false).await;
                }
                AttemptEnd::Failed(r) | AttemptEnd::PeerFailed(r) => {
                    entry.set_state(TransferState::Failed, r);
                    break self.outgoing_ended(entry, dial, false).await;
                }
                AttemptEnd::LocalCancel => break self.outgoing_ended(entry, dial, false).await,
                AttemptEnd::Stopped => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    // Paused: the loop waits at the top.
                    resume = true;
                    continue;
                }
                AttemptEnd::Transient(reason) => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    resume = true;
                    failures = if moved { 1 } else { failures + 1 };
                    let max = self.settings().max_attempts;
                    if max > 0 && failures >= max {
                        entry.set_state(
                            TransferState::Failed,
                            format!("gave up after {failures} failed attempts: {reason}"),
                        );
                        break self.outgoing_ended(entry, dial, true).await;
                    }
                    if control.paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    let delay = backoff(failures);
                    tracing::info!(transfer = %entry.id, %reason, attempt = snap.attempt, retry_in = ?delay, "transfer interrupted; will retry");
                    entry.set_retrying(&reason, SystemTime::now() + delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = control.wake.notified() => {}
                        _ = entry.cancel.cancelled() => break self.outgoing_ended(entry, dial, true).await,
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Dials the transfer's peer again: at the address that worked, else where discovery
    /// last heard the device.
    async fn redial(&self, dial: &str, peer_id: &str) -> Result<Arc<Session>, NodeError> {
        let first = self.connect(dial).await;
        if first.is_ok() {
            return first;
        }
        let elsewhere = self
            .peers()
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| p.id.to_string() == peer_id)
            .map(|p| format!("{}@{}", p.id, p.addr))
            .filter(|d| d != dial);
        match elsewhere {
            Some(d) => self.connect(&d).await,
            None => first,
        }
    }

    /// The transfer ended: forget its record. When it ended here while no attempt was
    /// running (`tell_receiver`), the receiver may still hold a partial copy: tell it, best
    /// effort, so it can clean up.
    async fn outgoing_ended(&self, entry: &TransferEntry, dial: &str, tell_receiver: bool) {
        let store = self.inner.store.clone();
        let id = entry.id.clone();
        let forgot =
            tokio::task::spawn_blocking(move || store.forget_transfer(&id, Direction::Send)).await;
        if !matches!(forgot, Ok(Ok(()))) {
            tracing::warn!(transfer = %entry.id, "cannot remove the ended transfer's record");
        }
        if !tell_receiver || self.inner.shutdown.is_cancelled() {
            return;
        }
        let reason = entry.snapshot().error;
        let reach = tokio::time::timeout(Duration::from_secs(10), self.connect(dial)).await;
        if let Ok(Ok(s)) = reach {
            s.cancel(&entry.id, reason, false).await;
        }
    }

    /// Pauses an outgoing transfer.
    ///
    /// # Errors
    /// [`NodeError::NoTransfer`]; [`NodeError::Incoming`], [`NodeError::TransferEnded`] or
    /// [`NodeError::AlreadyPaused`]; [`NodeError::Store`] if the pause cannot be recorded.
    pub fn pause(&self, id: &str) -> Result<TransferSnapshot, NodeError> {
        let (entry, control) = self.outgoing_control(id)?;
        match entry.state() {
            TransferState::Paused => return Err(NodeError::AlreadyPaused(id.to_owned())),
            s if s.is_final() => {
                return Err(NodeError::TransferEnded {
                    id: id.to_owned(),
                    state: s,
                });
            }
            _ => {}
        }
        self.inner.store.set_outgoing_paused(id, true)?;
        control.paused.store(true, Ordering::Relaxed);
        entry.set_state(TransferState::Paused, "paused by user");
        control.stop_attempt();
        control.wake.notify_one();
        Ok(entry.snapshot())
    }

    /// Resumes a paused outgoing transfer, or makes a retrying one try again now.
    ///
    /// # Errors
    /// [`NodeError::NoTransfer`]; [`NodeError::Incoming`], [`NodeError::TransferEnded`] or
    /// [`NodeError::NotPaused`]; [`NodeError::Store`] if the resume cannot be recorded.
    pub fn resume(&self, id: &str) -> Result<TransferSnapshot, NodeError> {
        let (entry, control) = self.outgoing_control(id)?;
        match entry.state() {
            TransferState::Paused | TransferState::Retrying => {}
            s if s.is_final() => {
                return Err(NodeError::TransferEnded {
                    id: id.to_owned(),
                    state: s,
                });
            }
            s => {
                return Err(NodeError::NotPaused {
                    id: id.to_owned(),
                    state: s,
                });
            }
        }
        self.inner.store.set_outgoing_paused(id, false)?;
        control.paused.store(false, Ordering::Relaxed);
        control.wake.notify_one();
        Ok(entry.snapshot())
    }

    fn outgoing_control(&self, id: &str) -> Result<(Arc<TransferEntry>, Arc<Control>), NodeError> {
        let entry = self.outgoing_entry(id, "pause and resume it on the sending device")?;
        let control = self
            .inner
            .outgoing
            .get(id)
            .ok_or_else(|| NodeError::TransferEnded {
                id: id.to_owned(),
                state: entry.state(),
            })?;
        Ok((entry, control))
    }

    /// The outgoing transfer `id`; [`NodeError::NoTransfer`], or [`NodeError::Incoming`]
    /// saying `instead` for a receiving one.
    pub(super) fn outgoing_entry(
        &self,
        id: &str,
        instead: &'static str,
    ) -> Result<Arc<TransferEntry>, NodeError> {
        let entry = self
            .inner
            .transfers
            .get(id)
            .ok_or_else(|| NodeError::NoTransfer(id.to_owned()))?;
        if entry.direction == Direction::Receive {
            return Err(NodeError::Incoming {
                id: id.to_owned(),
                instead,
            });
        }
        Ok(entry)
    }

    /// Outgoing transfers recorded before a restart carry on: paused ones stay paused, the
    /// others dial their peer at once and resume.
    pub(super) fn restore_outgoing(&self) {
        let records = match self.inner.store.outgoing_records() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(cause = %error_chain(&e), "cannot read unfinished outgoing transfers");
                return;
            }
        };
        for r in records {
            self.restore_one(r);
        }
    }

    fn restore_one(&self, r: OutgoingRecord) {
        let OutgoingRecord {
            id,
            peer_id,
            dial,
            info,
            sources,
            options,
            paused,
            started_ms,
        } = r;
        let manifest = Arc::new(LocalManifest::from_offer(&info, sources));
        let peer_name = peer_id
            .parse::<crate::DeviceId>()
            .ok()
            .and_then(|d| self.inner.store.get(&d).ok().flatten())
            .map(|d| d.name)
            .unwrap_or_default();
        let address = dial.rsplit_once('@').map_or(dial.as_str(), |(_, a)| a);
        let entry = self.inner.transfers.insert(
            NewTransfer {
                id: id.clone(),
                direction: Direction::Send,
                state: if paused {
                    TransferState::Paused
                } else {
                    TransferState::Retrying
                },
                peer_id,
                peer_name,
                peer_address: address.to_owned(),
                roots: manifest.roots.clone(),
                total_files: manifest.files.len() as u64,
                total_bytes: manifest.total_bytes,
                destination: String::new(),
                started: Some(UNIX_EPOCH + Duration::from_millis(started_ms)),
                max_speed: options.max_speed,
            },
            CancellationToken::new(),
        );
        // Show where it was until the receiver answers.
        if let Ok(maps) = self.inner.store.chunk_maps(&id, Direction::Send) {
            let mut bytes = 0u64;
            let mut files = 0u64;
            for (fi, rec) in maps {
                let Some(f) = manifest.files.get(fi as usize) else {
                    continue;
                };
                if rec.complete {
                    files += 1;
                    bytes += f.entry.size;
                } else {
                    bytes += ChunkMap::from_bytes(
                        chunk_count(f.entry.size, options.chunk_size),
                        &rec.chunks,
                    )
                    .bytes_done(f.entry.size, options.chunk_size);
                }
            }
            entry.bytes_done.store(bytes, Ordering::Relaxed);
            entry.files_done.store(files, Ordering::Relaxed);
        }
        tracing::info!(transfer = %id, paused, "continuing an outgoing transfer after a restart");
        self.spawn_outgoing(entry, manifest, options, dial, None, true, paused);
    }
}

#[cfg(test)]
mod tests {
    use super::super::NodeSettings;
    use super::super::tests::{node_with, settings};
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    /// A node whose outgoing transfers give up after `max_attempts`, and a transfer of one
    /// small file to a peer that cannot be dialed: a name no discovery heard of, so that every
    /// attempt fails at once, with no socket to wait for (the clock is paused).
    fn unreachable_send(
        dir: &std::path::Path,
        max_attempts: u32,
    ) -> (Node, Arc<TransferEntry>, Arc<LocalManifest>) {
        let node = node_with(
            dir,
            NodeSettings {
                max_attempts,
                ..settings(dir)
            },
        );
        let src = dir.join("f.txt");
        std::fs::write(&src, b"x").unwrap();
        let manifest = Arc::new(LocalManifest::build(&[src]).unwrap());
        let entry = node.inner.transfers.insert(
            NewTransfer {
                id: uuid::Uuid::new_v4().to_string(),
                direction: Direction::Send,
                state: TransferState::Offered,
                peer_id: crate::DeviceId::from_spki(b"peer").to_string(),
                peer_name: String::new(),
                peer_address: String::new(),
                roots: manifest.roots.clone(),
                total_files: 1,
                total_bytes: 1,
                destination: String::new(),
                started: None,
                max_speed: 0,
            },
            CancellationToken::new(),
        );
        (node, entry, manifest)
    }

    /// Starts the supervisor of `entry`, dialing the unknown peer `nobody`.
    fn supervise_unreachable(
        node: &Node,
        entry: &Arc<TransferEntry>,
        manifest: Arc<LocalManifest>,
    ) {
        node.spawn_outgoing(
            entry.clone(),
            manifest,
            SendOptions::default(),
            "nobody".into(),
            None,
            false,
            false,
        );
    }

    /// The next event of transfer `id` in `state`, within a (virtual) hour.
    async fn next_in(
        events: &mut tokio::sync::broadcast::Receiver<TransferSnapshot>,
        id: &str,
        state: TransferState,
    ) -> TransferSnapshot {
        tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                let snap = events.recv().await.unwrap();
                if snap.id == id && snap.state == state {
                    return snap;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {state:?} event"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_transfer_retries_after_2_4_8_s_and_then_every_minute() {
        let dir = tempfile::tempdir().unwrap();
        let (node, entry, manifest) = unreachable_send(dir.path(), 0);
        let mut events = node.subscribe_transfers();
        let start = tokio::time::Instant::now();
        supervise_unreachable(&node, &entry, manifest);
        // Each failed attempt announces the retry; the next attempt comes after the delay.
        let mut failed_at = Vec::new();
        for attempt in 1..=9 {
            let snap = next_in(&mut events, &entry.id, TransferState::Retrying).await;
            assert_eq!(snap.attempt, attempt);
            assert!(snap.error.contains("no peer named"), "{}", snap.error);
            failed_at.push(start.elapsed().as_secs());
        }
        assert_eq!(failed_at, [0, 2, 6, 14, 30, 62, 122, 182, 242]);
        node.cancel(&entry.id).unwrap();
        assert!(node.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_transfer_gives_up_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (node, entry, manifest) = unreachable_send(dir.path(), 3);
        let mut events = node.subscribe_transfers();
        let start = tokio::time::Instant::now();
        supervise_unreachable(&node, &entry, manifest);
        let end = next_in(&mut events, &entry.id, TransferState::Failed).await;
        // Attempts at 0, 2 and 6 s; the third failure ends it.
        assert_eq!(start.elapsed().as_secs(), 6);
        assert_eq!(end.attempt, 3);
        assert!(
            end.error.starts_with("gave up after 3 failed attempts: "),
            "{}",
            end.error
        );
        assert!(node.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_cuts_a_backoff_short() {
        let dir = tempfile::tempdir().unwrap();
        let (node, entry, manifest) = unreachable_send(dir.path(), 0);
        let mut events = node.subscribe_transfers();
        let start = tokio::time::Instant::now();
        supervise_unreachable(&node, &entry, manifest);
        for _ in 0..4 {
            next_in(&mut events, &entry.id, TransferState::Retrying).await;
        }
        // Waiting 16 s now; a resume tries again at once.
        assert_eq!(start.elapsed().as_secs(), 14);
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.resume(&entry.id).unwrap();
        let snap = next_in(&mut events, &entry.id, TransferState::Retrying).await;
        assert_eq!((snap.attempt, start.elapsed().as_secs()), (5, 15));
        node.cancel(&entry.id).unwrap();
        assert!(node.shutdown(Duration::from_secs(5)).await);
    }
}
