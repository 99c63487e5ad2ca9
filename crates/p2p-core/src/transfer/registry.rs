//! The transfer registry: every transfer this node knows of since it started, its state and
//! progress, and the event channel that `WatchTransfers` streams from.
//!
//! Counters are atomics updated by the sender and receiver threads; a snapshot is taken on
//! demand. Progress events are rate-limited per transfer (200 ms); state changes always emit.
//!
//! A registry may carry a [`FinalHook`]: it is called exactly once per transfer, when the
//! transfer reaches a final state, after the entry's lock is released and before the final
//! event is broadcast (the node records history with it).
//!
//! Speed limits live here too: each transfer has its own [`RateLimiter`], and the registry owns
//! the global one that it hands to every transfer. Limits apply on the sending side, where
//! [`TransferEntry::throttle`] paces each chunk through both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::transfer::ratelimit::{self, Cancelled, RateLimiter};

/// Transfers kept in the registry; the oldest finished ones are dropped beyond this.
const MAX_KEPT: usize = 1000;
/// How often progress events may be emitted per transfer.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Called with the final snapshot of each transfer that reaches a final state (see
/// [`Transfers::with_final_hook`]). It runs on the thread that ended the transfer, so it must
/// be short and must not call back into the registry's entry.
pub type FinalHook = Arc<dyn Fn(&TransferSnapshot) + Send + Sync>;

/// The registry's hook, shared with each entry it creates.
#[derive(Clone, Default)]
struct OnFinal(Option<FinalHook>);

impl std::fmt::Debug for OnFinal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(hook)"
        } else {
            "None"
        })
    }
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We send.
    Send,
    /// We receive.
    Receive,
}

/// Life cycle of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// Offered to the peer, waiting for its decision.
    Offered,
    /// An incoming offer waiting for a local decision.
    WaitingAccept,
    /// Moving bytes.
    Running,
    /// Every file verified by the receiver.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled by either side.
    Cancelled,
    /// Refused by the receiver.
    Rejected,
    /// Sending side: paused by the user; resumes on request (also after a restart).
    Paused,
    /// Sending side: the last attempt failed for a transient reason; waiting to try again.
    Retrying,
    /// Receiving side: stopped before the end (session lost, sender paused, restart); what
    /// arrived is kept until the sender offers the transfer again.
    Interrupted,
}

impl TransferState {
    /// Whether the transfer has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Rejected
        )
    }
}

/// A point-in-time view of a transfer.
#[derive(Debug, Clone)]
pub struct TransferSnapshot {
    /// Transfer id.
    pub id: String,
    /// Direction.
    pub direction: Direction,
    /// State.
    pub state: TransferState,
    /// Peer device id.
    pub peer_id: String,
    /// Peer name.
    pub peer_name: String,
    /// Peer listen address.
    pub peer_address: String,
    /// Top-level names.
    pub roots: Vec<String>,
    /// Number of files.
    pub total_files: u64,
    /// Payload bytes.
    pub total_bytes: u64,
    /// Files finished.
    pub files_done: u64,
    /// Payload bytes finished.
    pub bytes_done: u64,
    /// Payload bytes on the wire.
    pub wire_bytes: u64,
    /// The file in progress.
    pub current_file: String,
    /// Its bytes done.
    pub current_file_bytes: u64,
    /// Its size.
    pub current_file_size: u64,
    /// Average speed in bytes per second.
    pub bytes_per_second: u64,
    /// Start, ms since the epoch.
    pub started_at_ms: u64,
    /// End, ms since the epoch (0 while running).
    pub finished_at_ms: u64,
    /// Failure, rejection or cancellation reason.
    pub error: String,
    /// Destination directory (receiving side).
    pub destination: String,
    /// Chunks re-sent after CRC failures.
    pub chunks_resent: u64,
    /// Attempts made (sending side).
    pub attempt: u32,
    /// Next attempt, ms since the epoch, while retrying (else 0).
    pub next_attempt_at_ms: u64,
    /// Payload bytes the receiver already had at the last resume.
    pub resumed_bytes: u64,
    /// This transfer's own speed limit in bytes per second (0 = none).
    pub max_speed: u64,
}

#[derive(Debug)]
struct Mutable {
    state: TransferState,
    error: String,
    finished: Option<SystemTime>,
    finished_instant: Option<Instant>,
    current_file: String,
    current_file_bytes: u64,
    current_file_size: u64,
    destination: String,
    last_emit: Instant,
    attempt: u32,
    next_attempt_at: Option<SystemTime>,
}

/// One transfer's shared record.
#[derive(Debug)]
pub struct TransferEntry {
    /// Transfer id.
    pub id: String,
    /// Direction.
    pub direction: Direction,
    peer_id: String,
    peer_name: String,
    peer_address: String,
    roots: Vec<String>,
    total_files: u64,
    total_bytes: u64,
    /// Files finished.
    pub files_done: AtomicU64,
    /// Payload bytes finished.
    pub bytes_done: AtomicU64,
    /// Payload bytes on the wire.
    pub wire_bytes: AtomicU64,
    /// Chunks re-sent.
    pub chunks_resent: AtomicU64,
    /// Payload bytes the receiver already had at the last resume.
    pub resumed_bytes: AtomicU64,
    started: SystemTime,
    started_instant: Instant,
    /// Cancelled when the transfer must stop (user cancel, peer cancel, session loss).
    pub cancel: CancellationToken,
    /// Why the peer's frames for this transfer were cut off: it broke the protocol (more in
    /// flight than its window allows). The transfer then fails with this instead of counting
    /// as interrupted when its frames stop.
    pub peer_fault: std::sync::OnceLock<String>,
    // This transfer's own speed limit; the sending thread waits on it, the control API changes
    // it while the transfer runs.
    limit: RateLimiter,
    // The daemon-wide limit, shared with every other transfer (owned by the registry).
    global_limit: Arc<RateLimiter>,
    // Everything that changes together and is read together for a snapshot.
    inner: Mutex<Mutable>,
    events: broadcast::Sender<TransferSnapshot>,
    on_final: OnFinal,
}

/// Description of a new transfer for the registry.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    /// Transfer id.
    pub id: String,
    /// Direction.
    pub direction: Direction,
    /// Initial state.
    pub state: TransferState,
    /// Peer device id.
    pub peer_id: String,
    /// Peer name.
    pub peer_name: String,
    /// Peer address.
    pub peer_address: String,
    /// Top-level names.
    pub roots: Vec<String>,
    /// Number of files.
    pub total_files: u64,
    /// Payload bytes.
    pub total_bytes: u64,
    /// Destination (receiving side).
    pub destination: String,
    /// When it started, if before now (a transfer restored after a restart).
    pub started: Option<SystemTime>,
    /// Speed limit in bytes per second (sending side; 0 = none).
    pub max_speed: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TransferEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mutable> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The current state.
    pub fn state(&self) -> TransferState {
        self.lock().state
    }

    /// A snapshot.
    pub fn snapshot(&self) -> TransferSnapshot {
        let m = self.lock();
        self.snapshot_locked(&m)
    }

    fn snapshot_locked(&self, m: &Mutable) -> TransferSnapshot {
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let end = m.finished_instant.unwrap_or_else(Instant::now);
        let secs = end.duration_since(self.started_instant).as_secs_f64();
        TransferSnapshot {
            id: self.id.clone(),
            direction: self.direction,
            state: m.state,
            peer_id: self.peer_id.clone(),
            peer_name: self.peer_name.clone(),
            peer_address: self.peer_address.clone(),
            roots: self.roots.clone(),
            total_files: self.total_files,
            total_bytes: self.total_bytes,
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done,
            wire_bytes: self.wire_bytes.load(Ordering::Relaxed),
            current_file: m.current_file.clone(),
            current_file_bytes: m.current_file_bytes,
            current_file_size: m.current_file_size,
            bytes_per_second: if secs > 0.0 {
                (bytes_done as f64 / secs) as u64
            } else {
                0
            },
            started_at_ms: ms(self.started),
            finished_at_ms: m.finished.map(ms).unwrap_or(0),
            error: m.error.clone(),
            destination: m.destination.clone(),
            chunks_resent: self.chunks_resent.load(Ordering::Relaxed),
            attempt: m.attempt,
            next_attempt_at_ms: match (m.state, m.next_attempt_at) {
                (TransferState::Retrying, Some(t)) => ms(t),
                _ => 0,
            },
            resumed_bytes: self.resumed_bytes.load(Ordering::Relaxed),
            max_speed: self.limit.rate(),
        }
    }

    /// Moves to `state` (ignored once final) and emits an event. Returns whether it changed.
    pub fn set_state(&self, state: TransferState, error: impl Into<String>) -> bool {
        let mut m = self.lock();
        if m.state.is_final() {
            return false;
        }
        m.state = state;
        let error = error.into();
        if !error.is_empty() {
            m.error = error;
        } else if matches!(
            state,
            TransferState::Running | TransferState::WaitingAccept | TransferState::Offered
        ) {
            // Going again after an interruption: the old reason no longer applies.
            m.error.clear();
        }
        if state.is_final() {
            m.finished = Some(SystemTime::now());
            m.finished_instant = Some(Instant::now());
            m.current_file.clear();
        }
        m.last_emit = Instant::now();
        let snap = self.snapshot_locked(&m);
        drop(m);
        if state.is_final() {
            self.cancel.cancel();
            tracing::info!(transfer = %self.id, state = ?state, error = %snap.error, "transfer ended");
            self.report_final(&snap);
        }
        let _ = self.events.send(snap);
        true
    }

    /// Counts a new attempt (sending side) and moves to Running-preparation: the state stays
    /// as it is until the offer is answered.
    pub fn begin_attempt(&self) -> u32 {
        let mut m = self.lock();
        m.attempt += 1;
        m.next_attempt_at = None;
        m.attempt
    }

    /// Moves to `Retrying` with the reason of the failed attempt and the time of the next one.
    /// Returns false once final.
    pub fn set_retrying(&self, reason: &str, next: SystemTime) -> bool {
        {
            let mut m = self.lock();
            if m.state.is_final() {
                return false;
            }
            m.next_attempt_at = Some(next);
        }
        self.set_state(TransferState::Retrying, reason)
    }

    /// Hands a final snapshot to the registry's hook, if any. Called once per entry: by
    /// `set_state` on the one change into a final state, or at insertion of an entry created
    /// final.
    fn report_final(&self, snap: &TransferSnapshot) {
        if let Some(hook) = &self.on_final.0 {
            hook(snap);
        }
    }

    /// This transfer's own speed limit in bytes per second (0 = none).
    pub fn max_speed(&self) -> u64 {
        self.limit.rate()
    }

    /// Changes this transfer's speed limit (0 = none), effective at once — also for a chunk
    /// already waiting — and emits an event. Checking that the transfer is an outgoing one that
    /// has not ended is the caller's business.
    pub fn set_max_speed(&self, bytes_per_second: u64) -> TransferSnapshot {
        self.limit.set_rate(bytes_per_second);
        let mut m = self.lock();
        m.last_emit = Instant::now();
        let snap = self.snapshot_locked(&m);
        drop(m);
        tracing::info!(transfer = %self.id, max_speed = bytes_per_second, "speed limit changed");
        let _ = self.events.send(snap.clone());
        snap
    }

    /// Whether a speed limit (this transfer's or the global one) is set.
    pub fn is_limited(&self) -> bool {
        self.limit.rate() != 0 || self.global_limit.rate() != 0
    }

    /// Waits (on the sending thread) until `bytes` may go on the wire under this transfer's
    /// limit and the global one. With no limit set this is two atomic loads.
    ///
    /// # Errors
    /// [`Cancelled`] as soon as `cancel` is cancelled.
    pub fn throttle(
        &self,
        bytes: u64,
        rt: &tokio::runtime::Handle,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        ratelimit::blocking_acquire(&[&self.limit, &self.global_limit], bytes, rt, cancel)
    }

    /// Sets the destination shown for a receiving transfer.
    pub fn set_destination(&self, dest: String) {
        self.lock().destination = dest;
    }

    /// Records the file in progress and emits a (rate-limited) progress event.
    pub fn progress(&self, current_file: Option<(&str, u64, u64)>) {
        let mut m = self.lock();
        if let Some((name, done, size)) = current_file {
            if m.current_file != name {
                m.current_file = name.to_owned();
            }
            m.current_file_bytes = done;
            m.current_file_size = size;
        }
        if m.last_emit.elapsed() < PROGRESS_INTERVAL || m.state.is_final() {
            return;
        }
        m.last_emit = Instant::now();
        let snap = self.snapshot_locked(&m);
        drop(m);
        let _ = self.events.send(snap);
    }
}

/// All transfers of the node.
#[derive(Debug)]
pub struct Transfers {
    map: Mutex<HashMap<String, Arc<TransferEntry>>>,
    events: broadcast::Sender<TransferSnapshot>,
    on_final: OnFinal,
    // The daemon-wide speed limit, handed to every transfer; changed on a config reload.
    global_limit: Arc<RateLimiter>,
}

impl Default for Transfers {
    fn default() -> Self {
        Self::new()
    }
}

impl Transfers {
    /// An empty registry.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Transfers {
            map: Mutex::new(HashMap::new()),
            events,
            on_final: OnFinal::default(),
            global_limit: Arc::new(RateLimiter::new(0)),
        }
    }

    /// An empty registry that calls `hook` exactly once for every transfer that reaches a final
    /// state (completed, failed, cancelled, rejected), with its final snapshot. The hook runs
    /// after the entry's lock is released and before the final event is broadcast, so a
    /// watcher that sees the end of a transfer sees it after the hook has returned.
    pub fn with_final_hook(hook: FinalHook) -> Self {
        Transfers {
            on_final: OnFinal(Some(hook)),
            ..Self::new()
        }
    }

    /// An empty registry with a global speed limit (bytes per second, 0 = none).
    pub fn with_max_speed(bytes_per_second: u64) -> Self {
        let t = Self::new();
        t.set_max_speed(bytes_per_second);
        t
    }

    /// The global speed limit shared by every outgoing transfer, bytes per second (0 = none).
    pub fn max_speed(&self) -> u64 {
        self.global_limit.rate()
    }

    /// Changes the global speed limit (0 = none); running transfers follow at once.
    pub fn set_max_speed(&self, bytes_per_second: u64) {
        if self.global_limit.rate() != bytes_per_second {
            tracing::info!(max_speed = bytes_per_second, "global speed limit changed");
            self.global_limit.set_rate(bytes_per_second);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TransferEntry>>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers a transfer and emits its first event.
    pub fn insert(&self, t: NewTransfer, cancel: CancellationToken) -> Arc<TransferEntry> {
        let entry = self.make(t, cancel);
        {
            let mut map = self.lock();
            self.prune(&mut map);
            map.insert(entry.id.clone(), entry.clone());
        }
        self.announce(&entry);
        entry
    }

    /// Emits a new entry's first event (reporting it as final first if it was created so).
    fn announce(&self, entry: &TransferEntry) {
        let snap = entry.snapshot();
        if snap.state.is_final() {
            entry.report_final(&snap);
        }
        let _ = self.events.send(snap);
    }

    fn make(&self, t: NewTransfer, cancel: CancellationToken) -> Arc<TransferEntry> {
        Arc::new(TransferEntry {
            id: t.id.clone(),
            direction: t.direction,
            peer_id: t.peer_id,
            peer_name: t.peer_name,
            peer_address: t.peer_address,
            roots: t.roots,
            total_files: t.total_files,
            total_bytes: t.total_bytes,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            chunks_resent: AtomicU64::new(0),
            resumed_bytes: AtomicU64::new(0),
            started: t.started.unwrap_or_else(SystemTime::now),
            started_instant: t
                .started
                .and_then(|s| s.elapsed().ok())
                .and_then(|age| Instant::now().checked_sub(age))
                .unwrap_or_else(Instant::now),
            cancel,
            peer_fault: std::sync::OnceLock::new(),
            limit: RateLimiter::new(t.max_speed),
            global_limit: self.global_limit.clone(),
            inner: Mutex::new(Mutable {
                state: t.state,
                error: String::new(),
                finished: None,
                finished_instant: None,
                current_file: String::new(),
                current_file_bytes: 0,
                current_file_size: 0,
                destination: t.destination,
                last_emit: Instant::now(),
                attempt: 0,
                next_attempt_at: None,
            }),
            events: self.events.clone(),
            on_final: self.on_final.clone(),
        })
    }

    /// Registers a transfer unless one with its id exists (checked and inserted under one
    /// lock); `None` for a duplicate.
    pub fn insert_new(
        &self,
        t: NewTransfer,
        cancel: CancellationToken,
    ) -> Option<Arc<TransferEntry>> {
        let mut map = self.lock();
        if map.contains_key(&t.id) {
            return None;
        }
        self.prune(&mut map);
        let entry = self.make(t, cancel);
        map.insert(entry.id.clone(), entry.clone());
        drop(map);
        self.announce(&entry);
        Some(entry)
    }

    /// Keeps the registry bounded: beyond `MAX_KEPT`, the oldest finished transfers go.
    fn prune(&self, map: &mut HashMap<String, Arc<TransferEntry>>) {
        if map.len() < MAX_KEPT {
            return;
        }
        let mut finished: Vec<(u64, String)> = map
            .values()
            .map(|e| e.snapshot())
            .filter(|s| s.state.is_final())
            .map(|s| (s.finished_at_ms, s.id))
            .collect();
        finished.sort();
        for (_, id) in finished.into_iter().take(map.len() + 1 - MAX_KEPT) {
            map.remove(&id);
        }
    }

    /// Receiving transfers running or waiting for a decision (interrupted ones wait for
    /// their sender and cost nothing meanwhile).
    pub fn active_receives(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| {
                let s = e.state();
                e.direction == Direction::Receive
                    && !s.is_final()
                    && s != TransferState::Interrupted
            })
            .count()
    }

    /// Looks up a transfer.
    pub fn get(&self, id: &str) -> Option<Arc<TransferEntry>> {
        self.lock().get(id).cloned()
    }

    /// Snapshots of every transfer, oldest first.
    pub fn list(&self) -> Vec<TransferSnapshot> {
        let mut v: Vec<TransferSnapshot> = self.lock().values().map(|e| e.snapshot()).collect();
        v.sort_by(|a, b| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }

    /// Transfers that have not ended.
    pub fn active_count(&self) -> u32 {
        self.lock()
            .values()
            .filter(|e| !e.state().is_final())
            .count() as u32
    }

    /// Subscribes to transfer events.
    pub fn subscribe(&self) -> broadcast::Receiver<TransferSnapshot> {
        self.events.subscribe()
    }

    /// At shutdown: transfers that carry on after a restart (recorded in the store) become
    /// `Interrupted` with `reason`; offers nobody accepted yet fail with it.
    pub fn stop_all(&self, reason: &str) {
        let entries: Vec<_> = self.lock().values().cloned().collect();
        for e in entries {
            match e.state() {
                TransferState::WaitingAccept => {
                    e.set_state(TransferState::Failed, reason);
                }
                s if s.is_final() => {}
                _ => {
                    e.set_state(TransferState::Interrupted, reason);
                }
            }
        }
    }
}
