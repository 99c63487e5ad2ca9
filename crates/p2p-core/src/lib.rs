//! The p2pd engine as a library. No gRPC server, no CLI, no printing: the daemon and tests drive
//! it through [`Node`].
//!
//! Module map:
//! - [`paths`]: default locations of the control socket, state and downloads (XDG on Linux).
//! - [`identity`]: the device id and name, created once and kept in the state dir.
//! - [`fsutil`]: small filesystem helpers (atomic writes, private directories).
//! - [`node`]: the running node — identity, peer listener, live settings, counters, shutdown.

pub mod fsutil;
pub mod identity;
pub mod node;
pub mod paths;

pub use identity::{Identity, IdentityError};
pub use node::{Node, NodeSettings, Status};

/// Version of this crate (and of the p2pd release it belongs to).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
