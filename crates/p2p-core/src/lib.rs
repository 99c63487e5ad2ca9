//! The p2pd engine as a library. No gRPC server, no CLI, no printing: the daemon and tests drive
//! it through [`Node`].
//!
//! Module map:
//! - [`net`]: identity, device ids, TLS, wire framing, peer sessions, discovery, socket tuning.
//! - [`transfer`]: transfer options and bounds, the registry, manifests, chunk maps, rate
//!   limits, the sending and receiving sides, and the placement pipeline of received files.
//! - [`store`]: the SQLite state store — known and trusted devices, transfer history, durable
//!   records of unfinished transfers.
//! - [`node`]: the running node — the facade the daemon and tests drive.
//! - [`paths`]: default locations of state, config and downloads (XDG on Linux).
//! - [`fsutil`]: small filesystem helpers (atomic writes, private directories, fs kinds).

pub mod fsutil;
pub mod net;
pub mod node;
pub mod paths;
pub mod store;
pub mod transfer;

pub use net::device_id::DeviceId;
pub use net::identity::{Identity, IdentityError};
pub use node::{
    AcceptPolicy, DeviceView, ErrorKind, IncomingOffer, Node, NodeError, NodeSettings, SessionInfo,
    Status, UntrustedPolicy,
};
pub use store::history::{HistoryEntry, HistoryFilter, HistoryStatus};
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
