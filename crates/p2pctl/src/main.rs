//! `p2pctl`: command-line client of the p2pd control API.
//!
//! Module map:
//! - [`cli`]: commands and flags (the `--help` text).
//! - [`client`]: connecting to the daemon and turning failures into messages and exit codes.
//! - [`commands`]: one function per command; each prints a human summary or `--json`.

mod cli;
mod client;
mod commands;

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
        Ok(()) => std::process::ExitCode::SUCCESS,
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
