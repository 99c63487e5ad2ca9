//! The running node: identity, live settings, the peer listener, sessions, transfers, incoming
//! offers — and shutdown.
//!
//! `Node` is a cheap cloneable handle; the control service and tests call it. It never prints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error_chain;
use crate::net::device_id::DeviceId;
use crate::net::identity::Identity;
use crate::net::tls;
use crate::net::wire::caps;
use crate::store::history::{self, HistoryEntry, HistoryFilter};
use crate::store::records::OutgoingRecord;
use crate::store::{DeviceAccept, Store};
use crate::transfer::manifest::{LocalManifest, ManifestError};
use crate::transfer::{
    Direction, NewTransfer, SendOptions, TransferSnapshot, TransferState, Transfers,
};

mod connect;
mod errors;
mod incoming;
mod offers;
mod outgoing;
mod peers;
mod views;

pub use errors::NodeError;
pub use offers::OFFER_TIMEOUT;
pub use views::{AcceptPolicy, DeviceView, IncomingOffer, SessionInfo, Status, UntrustedPolicy};

/// Settings that can change while the node runs (on a config reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The device name shown to peers and in status.
    pub name: String,
    /// Where received files go unless a transfer names another directory.
    pub download_dir: PathBuf,
    /// What to do with incoming offers from trusted devices without a rule of their own.
    pub accept: AcceptPolicy,
    /// What to do with offers from devices that are not trusted.
    pub accept_untrusted: UntrustedPolicy,
    /// Consecutive failed attempts after which an outgoing transfer gives up; 0 = never.
    pub max_attempts: u32,
    /// Global speed limit of all outgoing transfers together, bytes per second; 0 = none.
    pub max_speed: u64,
}

/// Handle to the running node.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    // Reloads replace the settings while RPCs read them; no one holds it across an await.
    settings: RwLock<NodeSettings>,
    state_dir: PathBuf,
    started: Instant,
    listen_addr: SocketAddr,
    sessions: connect::Sessions,
    transfers: Transfers,
    // Known and trusted devices, unfinished transfers and history; shared with the
    // history hook of `transfers`.
    store: Arc<Store>,
    // Control of each outgoing transfer's supervisor (pause, resume, wake), by transfer id.
    outgoing: Mutex<HashMap<String, Arc<outgoing::Control>>>,
    receiving: incoming::Claims,
    peers: peers::PeerBook,
    tls_acceptor: tokio_rustls::TlsAcceptor,
    offers: offers::Offers,
    shutdown: CancellationToken,
    // Every task the node spawns is registered here so that shutdown can join them.
    tasks: TaskTracker,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device_id", &self.identity.device_id)
            .field("listen_addr", &self.listen_addr)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Starts a node over an already bound peer listener (set non-blocking). `shutdown` is the
    /// root cancellation token: cancelling it stops every task of the node. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// [`NodeError::ListenerAddr`] if the listener cannot be used, [`NodeError::Setup`] if the
    /// state store or TLS cannot be set up.
    pub fn start(
        identity: Identity,
        settings: NodeSettings,
        state_dir: &Path,
        peer_listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, NodeError> {
        let listen_addr = peer_listener
            .local_addr()
            .map_err(NodeError::ListenerAddr)?;
        peer_listener
            .set_nonblocking(true)
            .map_err(NodeError::ListenerAddr)?;
        let listener =
            tokio::net::TcpListener::from_std(peer_listener).map_err(NodeError::ListenerAddr)?;
        let store =
            Arc::new(Store::open(state_dir).map_err(|e| NodeError::Setup(error_chain(&e)))?);
        // Every transfer that ends is recorded in history before its final event goes out.
        let transfers = Transfers::with_final_hook(history::recorder(store.clone()));
        transfers.set_max_speed(settings.max_speed);
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(
            tls::server_config(&identity).map_err(|e| NodeError::Setup(error_chain(&e)))?,
        );
        tracing::info!(%listen_addr, device_id = %identity.device_id, name = %settings.name, "node started");
        let node = Node {
            inner: Arc::new(Inner {
                peers: peers::PeerBook::default(),
                store,
                outgoing: Mutex::new(HashMap::new()),
                receiving: incoming::Claims::default(),
                tls_acceptor,
                identity,
                settings: RwLock::new(settings),
                state_dir: state_dir.to_path_buf(),
                started: Instant::now(),
                listen_addr,
                sessions: connect::Sessions::default(),
                transfers,
                offers: offers::Offers::default(),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        // Restored before the listener runs, so that a sender resuming at once finds them.
        node.restore_incoming();
        let n = node.clone();
        node.inner
            .tasks
            .spawn(async move { n.accept_loop(listener).await });
        node.restore_outgoing();
        Ok(node)
    }

    /// The device identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The current live settings.
    pub fn settings(&self) -> NodeSettings {
        match self.inner.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the live settings (config reload). Returns the previous ones.
    pub fn update_settings(&self, new: NodeSettings) -> NodeSettings {
        let mut guard = match self.inner.settings.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.inner.peers.rename(&new.name);
        self.inner.transfers.set_max_speed(new.max_speed);
        std::mem::replace(&mut *guard, new)
    }

    /// The bound peer listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen_addr
    }

    /// A snapshot for `GetStatus`.
    pub fn status(&self) -> Status {
        let settings = self.settings();
        Status {
            device_id: self.inner.identity.device_id.to_string(),
            device_name: settings.name,
            version: crate::VERSION,
            uptime: self.inner.started.elapsed(),
            listen_addr: self.inner.listen_addr,
            session_count: self.inner.sessions.len() as u32,
            active_transfer_count: self.inner.transfers.active_count(),
            state_dir: self.inner.state_dir.clone(),
            download_dir: settings.download_dir,
            max_speed: self.inner.transfers.max_speed(),
        }
    }

    /// The node's root cancellation token.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Asks the node to stop (the same as cancelling the root token).
    pub fn request_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stops the node: fails unfinished transfers, closes sessions, and waits for every task,
    /// at most `timeout`. Returns whether all tasks finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.transfers.stop_all("daemon shutting down");
        self.inner.tasks.close();
        let joined = tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_ok();
        if !joined {
            tracing::warn!(
                remaining = self.inner.tasks.len(),
                "tasks still running at shutdown"
            );
        }
        joined
    }

    pub(super) fn is_trusted(&self, id: &DeviceId) -> bool {
        matches!(self.inner.store.get(id), Ok(Some(d)) if d.trusted)
    }

    pub(super) fn resolve_device(&self, text: &str) -> Result<DeviceId, NodeError> {
        match self.inner.store.resolve(text) {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(msg)) => Err(NodeError::InvalidArgument(msg)),
            Err(e) => Err(NodeError::Io(error_chain(&e))),
        }
    }

    ///
    /// # Errors
    /// `PathNotFound`, `InvalidArgument` (options, paths, peer), `Unreachable`.
    pub async fn send(
        &self,
        paths: Vec<PathBuf>,
        peer: &str,
        opts: SendOptions,
    ) -> Result<String, NodeError> {
        opts.validate().map_err(NodeError::InvalidArgument)?;
        if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
            return Err(NodeError::InvalidArgument(format!(
                "path {} is not absolute",
                p.display()
            )));
        }
        let manifest = tokio::task::spawn_blocking(move || LocalManifest::build(&paths))
            .await
            .map_err(|e| NodeError::Io(format!("reading the files failed: {e}")))?
            .map_err(|e| match e {
                ManifestError::NotFound(p) => NodeError::PathNotFound(p),
                ManifestError::Io { .. } => NodeError::Io(error_chain(&e)),
                other => NodeError::InvalidArgument(other.to_string()),
            })?;
        let session = self.connect(peer).await?;
        if manifest.has_folder && session.caps & caps::FOLDER == 0 {
            return Err(NodeError::InvalidArgument(
                "the peer does not accept folders".into(),
            ));
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
            .map_err(|e| NodeError::Io(format!("recording the transfer failed: {e}")))?
            .map_err(|e| {
                NodeError::Io(format!("cannot record the transfer: {}", error_chain(&e)))
            })?;
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

    /// Snapshots of every transfer since the node started.
    pub fn transfers(&self) -> Vec<TransferSnapshot> {
        self.inner.transfers.list()
    }

    /// One transfer.
    ///
    /// # Errors
    /// `NotFound`.
    pub fn transfer(&self, id: &str) -> Result<TransferSnapshot, NodeError> {
        self.inner
            .transfers
            .get(id)
            .map(|e| e.snapshot())
            .ok_or_else(|| NodeError::NotFound(format!("no transfer {id}")))
    }

    /// Subscribes to transfer events (subscribe before listing to miss nothing).
    pub fn subscribe_transfers(&self) -> tokio::sync::broadcast::Receiver<TransferSnapshot> {
        self.inner.transfers.subscribe()
    }

    /// Cancels a transfer in either direction.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` if it already ended.
    pub fn cancel(&self, id: &str) -> Result<(), NodeError> {
        self.cancel_because(id, "cancelled by user")
    }

    fn cancel_because(&self, id: &str, reason: &str) -> Result<(), NodeError> {
        let entry = self
            .inner
            .transfers
            .get(id)
            .ok_or_else(|| NodeError::NotFound(format!("no transfer {id}")))?;
        let was = entry.state();
        if !entry.set_state(TransferState::Cancelled, reason) {
            return Err(NodeError::FailedPrecondition(format!(
                "transfer {id} has already ended ({:?})",
                entry.state()
            )));
        }
        self.inner.offers.withdraw(id);
        let running_here = self.inner.receiving.holds(id);
        if entry.direction == Direction::Receive
            && was == TransferState::Interrupted
            && !running_here
        {
            self.discard_incoming(id);
        }
        Ok(())
    }

    /// Changes the speed limit of an outgoing transfer (bytes per second, 0 = none), effective
    /// at once. Returns the transfer with its new limit.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a limit below the minimum; `FailedPrecondition` if the
    /// transfer has ended or is an incoming one (limits apply on the sending daemon).
    pub fn set_transfer_limit(
        &self,
        id: &str,
        max_speed: u64,
    ) -> Result<TransferSnapshot, NodeError> {
        let entry =
            self.outgoing_entry(id, "speed limits apply on the sending daemon, set it there")?;
        let state = entry.state();
        if state.is_final() {
            return Err(NodeError::FailedPrecondition(format!(
                "transfer {id} has already ended ({state:?})"
            )));
        }
        crate::transfer::ratelimit::check_rate(max_speed)
            .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        // Kept with the transfer's record, so the limit holds after a restart too.
        self.inner
            .store
            .set_outgoing_max_speed(id, max_speed)
            .map_err(|e| NodeError::Io(error_chain(&e)))?;
        Ok(entry.set_max_speed(max_speed))
    }
}

impl Node {
    /// Trusted devices (`trusted`) or pending ones (untrusted devices that connected).
    ///
    /// # Errors
    /// `Io` if the state store fails.
    pub fn devices(&self, trusted: bool) -> Result<Vec<DeviceView>, NodeError> {
        let connected = self.inner.sessions.connected_devices();
        let list = self
            .inner
            .store
            .list(trusted)
            .map_err(|e| NodeError::Io(error_chain(&e)))?;
        Ok(list
            .into_iter()
            .map(|d| DeviceView {
                connected: connected.contains(&d.id),
                device: d,
            })
            .collect())
    }

    /// Trusts a device — a full id, or a unique prefix of a known or pending one — and sets
    /// its rules. Returns the stored record.
    ///
    /// # Errors
    /// `InvalidArgument` for an id that does not resolve or a relative download dir; `Io` if
    /// the store fails.
    pub fn trust(
        &self,
        id: &str,
        name: Option<&str>,
        accept: Option<DeviceAccept>,
        download_dir: Option<&Path>,
    ) -> Result<crate::store::Device, NodeError> {
        let id = self.resolve_device(id)?;
        if id == self.inner.identity.device_id {
            return Err(NodeError::InvalidArgument(
                "that is this device's own id".into(),
            ));
        }
        if let Some(d) = download_dir {
            if !d.is_absolute() {
                return Err(NodeError::InvalidArgument(format!(
                    "download dir {} is not absolute",
                    d.display()
                )));
            }
        }
        let io = |e: crate::store::StoreError| NodeError::Io(error_chain(&e));
        self.inner
            .store
            .trust(&id, name, accept, download_dir)
            .map_err(io)?;
        tracing::info!(device = %id, "device trusted");
        self.inner
            .store
            .get(&id)
            .map_err(io)?
            .ok_or_else(|| NodeError::Io("trusted device vanished".into()))
    }

    /// Forgets a device (trusted or pending); live sessions with it are closed.
    ///
    /// # Errors
    /// `InvalidArgument` for an id that does not resolve, `NotFound` if it is not known.
    pub fn untrust(&self, id: &str) -> Result<DeviceId, NodeError> {
        let id = self.resolve_device(id)?;
        if !self
            .inner
            .store
            .forget(&id)
            .map_err(|e| NodeError::Io(error_chain(&e)))?
        {
            return Err(NodeError::NotFound(format!("device {id} is not known")));
        }
        // What it was sending here ends: a device no longer trusted does not get to resume
        // into the download dir.
        let device = id.to_string();
        for t in self.inner.transfers.list() {
            if t.direction == Direction::Receive && t.peer_id == device && !t.state.is_final() {
                let _ = self.cancel_because(&t.id, "the sending device is no longer trusted");
            }
        }
        self.inner.sessions.close_device(&id);
        tracing::info!(device = %id, "device untrusted");
        Ok(id)
    }
}

impl Node {
    /// Ended transfers matching `filter`, newest first.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad filter value; `Io` if the state store fails.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>, NodeError> {
        filter.validate().map_err(NodeError::InvalidArgument)?;
        self.inner
            .store
            .list_history(filter)
            .map_err(|e| NodeError::Io(error_chain(&e)))
    }

    /// Deletes the whole history. Returns how many records it held.
    ///
    /// # Errors
    /// `Io` if the state store fails.
    pub fn clear_history(&self) -> Result<u64, NodeError> {
        let removed = self
            .inner
            .store
            .clear_history()
            .map_err(|e| NodeError::Io(error_chain(&e)))?;
        tracing::info!(removed, "history cleared");
        Ok(removed)
    }
}

impl Node {
    /// Whether a device is trusted.
    pub fn trusted(&self, id: &DeviceId) -> bool {
        self.is_trusted(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> Node {
        let identity = Identity::load_or_create(dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = NodeSettings {
            name: "n".into(),
            download_dir: dir.join("dl"),
            accept: AcceptPolicy::Auto,
            accept_untrusted: UntrustedPolicy::Ask,
            max_attempts: 0,
            max_speed: 0,
        };
        Node::start(identity, settings, dir, listener, CancellationToken::new()).unwrap()
    }

    #[tokio::test]
    async fn status_reports_the_bound_port_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        let s = n.status();
        assert_ne!(s.listen_addr.port(), 0);
        assert_eq!(s.device_name, "n");
        assert_eq!(s.device_id, n.identity().device_id.to_string());
        let old = n.update_settings(NodeSettings {
            name: "m".into(),
            download_dir: dir.path().into(),
            accept: AcceptPolicy::Ask,
            accept_untrusted: UntrustedPolicy::Reject,
            max_attempts: 0,
            max_speed: 5 << 20,
        });
        assert_eq!(old.name, "n");
        assert_eq!(n.status().device_name, "m");
        assert_eq!((old.max_speed, n.status().max_speed), (0, 5 << 20));
        assert!(n.shutdown(Duration::from_secs(1)).await);
        assert!(n.shutdown_token().is_cancelled());
    }

    #[tokio::test]
    async fn two_nodes_transfer_a_file_in_process() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = node(a_dir.path());
        let b = node(b_dir.path());
        let src = a_dir.path().join("hello.txt");
        std::fs::write(&src, b"hello, peer").unwrap();
        // Untrusted offers always wait: the two trust each other first.
        a.trust(&b.identity().device_id.to_string(), None, None, None)
            .unwrap();
        b.trust(&a.identity().device_id.to_string(), None, None, None)
            .unwrap();
        let mut events = a.subscribe_transfers();
        let id = a
            .send(
                vec![src],
                &b.listen_addr().to_string(),
                SendOptions::default(),
            )
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let e = events.recv().await.unwrap();
                if e.id == id && e.state.is_final() {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(end.state, TransferState::Completed, "{}", end.error);
        assert_eq!(
            std::fs::read(b_dir.path().join("dl/hello.txt")).unwrap(),
            b"hello, peer"
        );
        assert_eq!(a.sessions().len(), 1);
        a.shutdown(Duration::from_secs(2)).await;
        b.shutdown(Duration::from_secs(2)).await;
    }
}
