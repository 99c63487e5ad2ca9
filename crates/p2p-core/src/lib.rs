//! The p2pd engine as a library. No gRPC server, no CLI, no printing: the daemon and tests drive
//! it through [`Node`].
//!
//! Module map:
//! - [`paths`]: default locations of the control socket, state and downloads (XDG on Linux).
//! - [`identity`]: the key pair, certificate and name, created once and kept in the state dir.
//! - [`device_id`]: device ids (SHA-256 of the public key) in Syncthing's format.
//! - [`tls`]: TLS 1.3 configurations and the verifier that pins device ids.
//! - [`store`]: the SQLite state store (known and trusted devices, history).
//! - [`history`]: the transfer history — records of ended transfers, filters, retention.
//! - [`records`]: durable records of unfinished transfers (resume after a break or restart).
//! - [`chunkmap`]: bitmaps of the chunks of a file that are done.
//! - [`discovery`]: LAN discovery beacons and the table of peers heard.
//! - [`fsutil`]: small filesystem helpers (atomic writes, private directories).
//! - [`wire`]: framing of the peer wire protocol (length prefix, limits, capability bits).
//! - [`session`]: peer sessions — handshake, reader and writer tasks, keepalive, routing.
//! - [`manifest`]: what a transfer carries; validation of a peer's manifest.
//! - [`transfer`]: the registry of transfers, their state, progress, events and speed limits.
//! - [`ratelimit`]: token buckets with a live-changeable rate (per-transfer and global limits).
//! - [`units`]: sizes and speeds as people write them (`64K`, `10M`, `unlimited`).
//! - [`sender`]: the sending side of a transfer (window, adaptive compression, hashing).
//! - [`receiver`]: the receiving side (verification, temporary files, atomic placement).
//! - `partfile`: the receiver's temporary files (named for resume, or unnamed) and their links.
//! - [`node`]: the running node — identity, listener, sessions, transfers, offers, shutdown.

pub mod chunkmap;
pub mod device_id;
pub mod discovery;
mod filehash;
pub mod fsutil;
pub mod history;
pub mod identity;
pub mod manifest;
pub mod node;
mod partfile;
pub mod paths;
pub mod ratelimit;
pub mod receiver;
pub mod records;
pub mod sender;
pub mod session;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod units;
pub mod wire;

pub use device_id::DeviceId;
pub use history::{HistoryEntry, HistoryFilter, HistoryStatus};
pub use identity::{Identity, IdentityError};
pub use node::{
    AcceptPolicy, DeviceView, IncomingOffer, Node, NodeError, NodeSettings, SessionInfo, Status,
    UntrustedPolicy,
};
pub use transfer::{Direction, SendOptions, TransferSnapshot, TransferState};

/// An error and its sources, outermost first, joined by `: ` — the one-line form users see.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Version of this crate (and of the p2pd release it belongs to).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
