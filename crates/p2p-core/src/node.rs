//! The running node: identity, live settings, the peer listener, activity counters and the
//! task tracker that shutdown joins.
//!
//! `Node` is a cheap cloneable handle. The control service and tests call it; it never prints.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::Identity;

/// Settings that can change while the node runs (on a config reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The device name shown to peers and in status.
    pub name: String,
    /// Where received files go unless a transfer names another directory.
    pub download_dir: PathBuf,
}

/// A snapshot of the node, as reported by `GetStatus`.
#[derive(Debug, Clone)]
pub struct Status {
    /// The device id.
    pub device_id: String,
    /// The device name.
    pub device_name: String,
    /// The software version.
    pub version: &'static str,
    /// Time since the node started.
    pub uptime: Duration,
    /// The bound peer listen address.
    pub listen_addr: SocketAddr,
    /// Live peer sessions.
    pub session_count: u32,
    /// Transfers not yet finished.
    pub active_transfer_count: u32,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The default download directory.
    pub download_dir: PathBuf,
}

/// Errors of node start-up.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The peer listener's address could not be read.
    #[error("cannot read the peer listener's address")]
    ListenerAddr(#[source] std::io::Error),
}

/// Handle to the running node.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: Identity,
    // Reloads replace the settings while RPCs read them; a std lock suffices since no one holds
    // it across an await.
    settings: RwLock<NodeSettings>,
    state_dir: PathBuf,
    started: Instant,
    listen_addr: SocketAddr,
    // Keeps the peer port bound for the node's lifetime, so the reported address stays ours.
    _peer_listener: Mutex<Option<TcpListener>>,
    sessions: AtomicU32,
    active_transfers: AtomicU32,
    shutdown: CancellationToken,
    // Every task the node spawns is registered here so that shutdown can join them.
    tasks: TaskTracker,
}

impl Node {
    /// Starts a node over an already bound peer listener. `shutdown` is the root cancellation
    /// token: cancelling it stops every task of the node.
    ///
    /// # Errors
    /// [`NodeError`] if the listener's address cannot be read.
    pub fn start(
        identity: Identity,
        settings: NodeSettings,
        state_dir: &Path,
        peer_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, NodeError> {
        let listen_addr = peer_listener
            .local_addr()
            .map_err(NodeError::ListenerAddr)?;
        tracing::info!(%listen_addr, device_id = %identity.device_id, name = %settings.name, "node started");
        Ok(Node {
            inner: Arc::new(Inner {
                identity,
                settings: RwLock::new(settings),
                state_dir: state_dir.to_path_buf(),
                started: Instant::now(),
                listen_addr,
                _peer_listener: Mutex::new(Some(peer_listener)),
                sessions: AtomicU32::new(0),
                active_transfers: AtomicU32::new(0),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        })
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
            session_count: self.inner.sessions.load(Ordering::Relaxed),
            active_transfer_count: self.inner.active_transfers.load(Ordering::Relaxed),
            state_dir: self.inner.state_dir.clone(),
            download_dir: settings.download_dir,
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

    /// Stops the node: cancels every task and waits for them, at most `timeout`. Returns whether
    /// all tasks finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let joined = tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_ok();
        if let Ok(mut l) = self.inner._peer_listener.lock() {
            l.take();
        }
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

    fn node(dir: &Path) -> Node {
        let identity = Identity::load_or_create(dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = NodeSettings {
            name: "n".into(),
            download_dir: dir.join("dl"),
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
        });
        assert_eq!(old.name, "n");
        assert_eq!(n.status().device_name, "m");
        assert!(n.shutdown(Duration::from_secs(1)).await);
        assert!(n.shutdown_token().is_cancelled());
    }
}
