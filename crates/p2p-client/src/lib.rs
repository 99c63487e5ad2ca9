//! What every client of the p2pd control API needs — no engine inside. `p2pctl` is built on
//! it, and so is any other front end: it depends only on this crate and `p2p-proto`.
//!
//! Module map:
//! - [`paths`]: where the control socket is (`--socket`, `P2PD_SOCKET`, the runtime-dir
//!   default) and whether a path fits in a socket address.
//! - [`control`]: connecting to the daemon ([`connect`]), and its failures as messages that
//!   say what to do ([`ConnectError`], [`RpcError`]).
//! - [`units`]: sizes and speeds parsed (`10M`, `unlimited`) and shown (`12.3 MiB`,
//!   `8.2 MiB/s`), durations, ages and percentages; the smallest speed limit.
//! - [`words`]: the names of states, directions and other values for people, which states are
//!   final, and the short forms of ids.
//! - [`ids`]: short transfer ids resolved to full ones through the API.
//! - [`watch`]: following the `Watch*` streams, and one transfer to its end.

pub mod control;
pub mod ids;
pub mod paths;
pub mod units;
pub mod watch;
pub mod words;

pub use control::{ConnectError, ControlClient, RpcError, connect};
