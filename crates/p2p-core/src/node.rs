//! The running node: construction, live settings, status and shutdown. `Node` is a cheap
//! cloneable handle; the control service and tests call it. It never prints.
//!
//! The rest of the facade is cut along its seams, each file owning its part of the state:
//! - `connect`: the accept loop, dialing, TLS, lanes, `connect` / `disconnect`, the live
//!   sessions (`Sessions`).
//! - `offers`: an incoming offer from its arrival to a decision — checks, rules, the wait for
//!   `accept` / `reject`, expiry (`Offers`).
//! - `incoming`: the receiving side's life across sessions — running an accepted transfer,
//!   resume, restart (`Claims`).
//! - `outgoing`: `send` and the supervisor of each outgoing transfer — retries with backoff,
//!   pause and resume, restart (`Outgoing`).
//! - `devices`: known devices and trust.
//! - `peers`: discovery, static peers, peer names (`PeerBook`).
//! - `transfers`: listing, cancelling, limits and history of transfers.
//! - `views`: the plain values the node takes and shows (policies, status, offers, sessions).
//! - `errors`: [`NodeError`] and its [`ErrorKind`], with the causes of dial failures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::identity::Identity;
use crate::net::tls;
use crate::store::Store;
use crate::store::history;
use crate::transfer::Transfers;

mod connect;
mod devices;
mod errors;
mod incoming;
mod offers;
mod outgoing;
mod peers;
mod transfers;
mod views;

pub use errors::{DialError, ErrorKind, NodeError, PeerLookupError, TlsHandshakeError};
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

/// The node's state: what it is, and one component per concern, each owned by its file.
struct Inner {
    identity: Identity,
    // Reloads replace the settings while RPCs read them; no one holds it across an await.
    settings: RwLock<NodeSettings>,
    state_dir: PathBuf,
    started: Instant,
    listen_addr: SocketAddr,
    tls_acceptor: tokio_rustls::TlsAcceptor,
    sessions: connect::Sessions,
    offers: offers::Offers,
    receiving: incoming::Claims,
    outgoing: outgoing::Outgoing,
    peers: peers::PeerBook,
    transfers: Transfers,
    // Known and trusted devices, unfinished transfers and history; shared with the
    // history hook of `transfers`.
    store: Arc<Store>,
    // The root token: cancelling it stops every task; sessions, claims and attempts hang
    // child tokens under it.
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

/// Locks a std mutex; a panic elsewhere while it was held does not poison the node.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Wall-clock time in ms since the epoch.
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
    /// [`NodeError::ListenerAddr`] if the listener cannot be used, [`NodeError::Store`] or
    /// [`NodeError::TlsSetup`] if the state store or TLS cannot be set up.
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
        let store = Arc::new(Store::open(state_dir)?);
        // Every transfer that ends is recorded in history before its final event goes out.
        let transfers = Transfers::with_final_hook(history::recorder(store.clone()));
        transfers.set_max_speed(settings.max_speed);
        let tls_acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&identity)?);
        tracing::info!(%listen_addr, device_id = %identity.device_id, name = %settings.name, "node started");
        let node = Node {
            inner: Arc::new(Inner {
                identity,
                settings: RwLock::new(settings),
                state_dir: state_dir.to_path_buf(),
                started: Instant::now(),
                listen_addr,
                tls_acceptor,
                sessions: connect::Sessions::default(),
                offers: offers::Offers::default(),
                receiving: incoming::Claims::default(),
                outgoing: outgoing::Outgoing::default(),
                peers: peers::PeerBook::default(),
                transfers,
                store,
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        // Restored before the listener runs, so that a sender resuming at once finds them.
        node.restore_incoming();
        let n = node.clone();
        node.spawn(
            tracing::info_span!("listener", addr = %listen_addr),
            async move { n.accept_loop(listener).await },
        );
        node.restore_outgoing();
        Ok(node)
    }

    /// Spawns `task` on the node's tracker, which shutdown joins, inside `span`, which names
    /// what the task is for (transfer, peer, address): every task the node starts goes through
    /// here (session tasks go on the same tracker through their `TaskScope`).
    pub(crate) fn spawn(
        &self,
        span: tracing::Span,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.inner.tasks.spawn(task.instrument(span));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings of a test node: named `n`, receiving into `dir/dl`, trusted offers accepted.
    pub(super) fn settings(dir: &Path) -> NodeSettings {
        NodeSettings {
            name: "n".into(),
            download_dir: dir.join("dl"),
            accept: AcceptPolicy::Auto,
            accept_untrusted: UntrustedPolicy::Ask,
            max_attempts: 0,
            max_speed: 0,
        }
    }

    /// A node with its state in `dir`, listening on a free loopback port.
    pub(super) fn node_with(dir: &Path, settings: NodeSettings) -> Node {
        let identity = Identity::load_or_create(dir).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Node::start(identity, settings, dir, listener, CancellationToken::new()).unwrap()
    }

    /// A node with the test settings.
    pub(super) fn node(dir: &Path) -> Node {
        node_with(dir, settings(dir))
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
}
