//! What the node shows and takes in plain values: the receiving policies of its settings, and
//! the views the control service turns into its replies (devices, status, waiting offers,
//! sessions). No state lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use crate::net::session::Session;

/// What to do with an incoming offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptPolicy {
    /// Wait for `accept` or `reject` from the user.
    #[default]
    Ask,
    /// Accept into the download directory at once.
    Auto,
}

impl std::str::FromStr for AcceptPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ask" => Ok(Self::Ask),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not a receiving policy (ask or auto)")),
        }
    }
}

/// What to do with offers from devices that are not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UntrustedPolicy {
    /// Keep them waiting for an explicit accept (whatever `--accept` says).
    #[default]
    Ask,
    /// Refuse them outright.
    Reject,
}

impl std::str::FromStr for UntrustedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ask" => Ok(Self::Ask),
            "reject" => Ok(Self::Reject),
            other => Err(format!(
                "{other:?} is not a policy for untrusted devices (ask or reject)"
            )),
        }
    }
}

/// A device as the control API shows it.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// The stored record.
    pub device: crate::store::Device,
    /// Whether a session with it is up.
    pub connected: bool,
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
    /// The global speed limit of outgoing transfers, bytes per second (0 = none).
    pub max_speed: u64,
}

/// An offer waiting for a local decision.
#[derive(Debug, Clone)]
pub struct IncomingOffer {
    /// Whether the offering device is trusted.
    pub peer_trusted: bool,
    /// Transfer id.
    pub transfer_id: String,
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
    /// When it arrived (ms since the epoch).
    pub offered_at_ms: u64,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: u64,
}

/// A view of a live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Peer device id.
    pub peer_id: String,
    /// Peer name.
    pub peer_name: String,
    /// Peer listen address.
    pub peer_address: SocketAddr,
    /// Remote address of the connection.
    pub remote_address: SocketAddr,
    /// Whether we connected.
    pub outgoing: bool,
    /// When it was established (ms since the epoch).
    pub established_at_ms: u64,
    /// Transfers using it.
    pub active_transfers: u32,
    /// Peer software version.
    pub peer_version: String,
    /// Whether the peer is a trusted device.
    pub trusted: bool,
}

impl SessionInfo {
    /// The view of session `s` with a device that is `trusted` or not.
    pub(super) fn of(s: &Session, trusted: bool) -> Self {
        SessionInfo {
            trusted,
            peer_id: s.peer.device_id.clone(),
            peer_name: s.peer.name.clone(),
            peer_address: s.peer.listen_addr,
            remote_address: s.remote,
            outgoing: s.outgoing,
            established_at_ms: s
                .established
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            active_transfers: s.active.load(std::sync::atomic::Ordering::Relaxed),
            peer_version: s.peer.version.clone(),
        }
    }
}
