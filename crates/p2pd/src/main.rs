//! `p2pd`: the resident peer-to-peer file transfer daemon.
//!
//! Module map:
//! - [`cli`]: command-line flags (the `--help` text).
//! - [`config`]: the optional TOML config merged with flags and defaults, validated.
//! - [`logging`]: tracing set-up with a reloadable filter.
//! - [`socket`]: the control socket — stale detection, permissions, socket activation.
//! - [`control`]: the gRPC control service, a thin adapter over `p2p_core::Node`.
//! - [`daemon`]: start-up order, daemonizing, the runtime, signals, reload and shutdown.

mod cli;
mod config;
mod control;
mod daemon;
mod logging;
mod socket;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match daemon::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2pd: error: {err}");
            for (i, cause) in err.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", i + 1);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
