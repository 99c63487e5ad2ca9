//! Commands and flags of `p2pctl`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// p2pctl — control a running p2pd daemon.
///
/// Exit codes: 0 success, 1 the command failed, 2 usage error, 3 no daemon reachable.
#[derive(Debug, Parser)]
#[command(name = "p2pctl", version, about, long_about)]
pub(crate) struct Cli {
    /// Control socket of the daemon [default: $XDG_RUNTIME_DIR/p2pd/p2pd.sock].
    #[arg(long, global = true, env = "P2PD_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Print machine-readable JSON instead of the human summary.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the daemon's identity, version, uptime, listen address and activity.
    Status,
    /// Stop the daemon (it saves its state and removes its socket).
    Shutdown,
}
