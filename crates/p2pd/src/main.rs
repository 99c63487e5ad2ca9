//! The `p2pd` binary: parses the flags, runs the daemon ([`p2pd::run`]) and prints the error
//! chain if it fails. Everything else lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = p2pd::Cli::parse();
    match p2pd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2pd: error: {err}");
            let mut cause = std::error::Error::source(&err);
            let mut i = 1;
            while let Some(c) = cause {
                eprintln!("  {i}: {c}");
                cause = c.source();
                i += 1;
            }
            std::process::ExitCode::FAILURE
        }
    }
}
