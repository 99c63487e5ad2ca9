//! `p2pd`: the resident peer-to-peer file transfer daemon, as a library and a thin binary.
//!
//! The binary parses [`Cli`] and calls [`run`]. The library also exports [`serve`]: the gRPC
//! control API (control service, `grpc.health.v1`, server reflection) for one
//! [`p2p_core::Node`] over any stream of Unix connections, so that tests can run the API
//! in-process on a temporary socket.
//!
//! Module map:
//! - `cli`: command-line flags (the `--help` text).
//! - `config`: the optional TOML config merged with flags and defaults, validated.
//! - `logging`: tracing set-up with a reloadable filter.
//! - `socket`: the control socket — stale detection, permissions, socket activation.
//! - `server`: [`serve`] — the control services on a stream of Unix connections, behind the
//!   caller check (SO_PEERCRED).
//! - `control`: the gRPC control service, a thin adapter over `p2p_core::Node`, one file per
//!   area (transfers, offers, devices, peers, sessions, status) and one for `Watch*` streams.
//! - `tasks`: the tracker every task p2pd spawns is registered with, each in a tracing span.
//! - `daemon`: [`run`] — start-up order, daemonizing, the runtime, signals, reload, shutdown.

mod cli;
mod config;
mod control;
mod daemon;
mod logging;
mod server;
mod socket;
mod tasks;

pub use cli::Cli;
pub use daemon::{DaemonError, run};
pub use server::{ControlServer, ServeError, serve};
