//! Test harness for the end-to-end tests: real `p2pd` processes in temporary directories (own
//! socket, state dir, download dir, ephemeral port), driven through `p2pctl` and the gRPC
//! control API, on loopback or in network namespaces the tests create; every process a test
//! starts is killed by PID when it ends, every wait is bounded.
//!
//! Module map:
//!
//! - [`daemon`]: where the binaries are; a daemon's directories and options; [`Daemon`], a
//!   running `p2pd` (its device id and listen address, signals, a restart on the same
//!   directories); [`run_p2pd`] for commands that must fail fast.
//! - [`ctl`](mod@ctl): running `p2pctl` against a socket or a [`Daemon`] (`status --json` too), and
//!   reading what it printed.
//! - [`api`]: the gRPC control API — a client, sends and the waits that follow a transfer to a
//!   state or its end, offers (accept, reject), cancel, sessions, peers, history, device trust,
//!   and a trusting pair of daemons to start from.
//! - [`inprocess`]: the in-process tier — a node and its gRPC API (`p2pd::serve`) in the test's
//!   own runtime, on a temporary socket, with an explicit shutdown.
//! - [`files`]: deterministic random data and files, SHA-256, the receiver's part files,
//!   listings of whole trees to compare.
//! - [`hostile`]: a device of the test's own that speaks TLS and the wire protocol by hand,
//!   either side, well or badly.
//! - [`netns`]: network namespaces — `ip`, a guard that cleans up, a LAN of `n` hosts with
//!   daemons that discover each other, a bad link through `tun-delay`.
//! - [`proxy`]: a TCP proxy on the path that flips a byte, records, cuts, stalls or delays.
//! - [`process`]: commands with a time limit, signals and liveness by PID, kill guards,
//!   bounded polling, blocking work from async tests and async work from blocking ones.
//!
//! The most common items are re-exported here, so that a test file can `use p2p_tests::{…}`.

pub mod api;
pub mod ctl;
pub mod daemon;
pub mod files;
pub mod hostile;
pub mod inprocess;
pub mod netns;
pub mod process;
pub mod proxy;

pub use ctl::{ctl, text};
pub use daemon::{
    Daemon, DaemonDirs, DaemonOptions, START_TIMEOUT, bin, repo_root, run_p2pd, spawn_p2pd, start,
};
pub use process::{
    ChildGuard, PidGuard, alive, block_on, blocking, run_with_timeout, signal, wait_until,
};
