//! Test harness for the end-to-end tests: real `p2pd` processes in temporary directories (own
//! socket, state dir, download dir, ephemeral port), driven through `p2pctl` and the gRPC
//! control API, on loopback or in network namespaces the tests create; every process a test
//! starts is killed by PID when it ends, every wait is bounded.
//!
//! | module | owns |
//! | --- | --- |
//! | [`daemon`] | where the binaries are; a daemon's directories and options; [`Daemon`], a running `p2pd` (its id and listen address, signals, restart on the same dirs); `run_p2pd` for commands that must fail fast |
//! | [`ctl`] | running `p2pctl` (against a socket or a [`Daemon`]), `status --json`, reading its output |
//! | [`api`] | the gRPC control API: client, send and the waits that follow a transfer, offers, sessions, peers, history, trust, a trusting pair of daemons |
//! | [`files`] | deterministic random data and files, SHA-256, the receiver's part files, listings of trees to compare |
//! | [`hostile`] | a device of the test's own that speaks TLS and the wire protocol by hand, either side, well or badly |
//! | [`netns`] | network namespaces: `ip`, a cleaning guard, a LAN of `n` hosts with daemons that discover each other, a bad link through `tun-delay` |
//! | [`proxy`] | a TCP proxy on the path that flips a byte, records, cuts, stalls or delays |
//! | [`process`] | commands with a time limit, signals and liveness by PID, kill guards, bounded polling, blocking work from async tests |
//!
//! The most common items are re-exported here, so that a test file can `use p2p_tests::{…}`.

pub mod api;
pub mod ctl;
pub mod daemon;
pub mod files;
pub mod hostile;
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
