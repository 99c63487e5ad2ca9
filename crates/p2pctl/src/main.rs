//! `p2pctl`: command-line client of the p2pd control API.
//!
//! Built on [`p2p_client`] (the socket, units, state words, short ids, watches) and `p2p-proto`;
//! what is here is the command line and its rendering.
//!
//! Module map:
//! - [`cli`]: commands and flags (the `--help` text), and checks of flag values.
//! - [`client`]: the socket and the connection (through [`p2p_client`]), and exit codes.
//! - [`commands`]: runs the command named on the command line.
//! - [`send`]: `p2pctl send` — local path checks, starting and following a transfer.
//! - [`watch`]: following transfers over `WatchTransfers` (`watch`, and `send`'s progress).
//! - [`peers`]: `p2pctl peers` — the peers discovery found, listed or followed (`--watch`).
//! - [`progress`]: progress bars, the plain line fallback, and the one-line texts.
//! - [`table`]: the human tables of `transfers`, `history`, `incoming`, `sessions`, `devices`,
//!   `pending` and `peers`.
//! - [`json`]: `--json` rendering of the control API's messages.

mod cli;
mod client;
mod commands;
mod json;
mod peers;
mod progress;
mod send;
mod table;
mod watch;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p2pctl: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(commands::Finished::Done) => std::process::ExitCode::SUCCESS,
        Ok(commands::Finished::Interrupted) => {
            std::process::ExitCode::from(client::EXIT_INTERRUPTED)
        }
        Err(err) => {
            let code = client::exit_code(&err);
            eprintln!("p2pctl: error: {err}");
            for (i, cause) in err.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", i + 1);
            }
            std::process::ExitCode::from(code)
        }
    }
}
