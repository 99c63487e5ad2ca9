//! Commands and flags of `p2pctl`, and the checks of flag values that need no daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};

use crate::units;

/// p2pctl — control a running p2pd daemon.
///
/// Exit codes: 0 success, 1 the command failed (for `send` and `watch ID`: the transfer did not
/// complete), 2 usage error, 3 no daemon reachable, 130 interrupted by Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "p2pctl", version, about, long_about)]
pub(crate) struct Cli {
    /// Control socket of the daemon [default: $XDG_RUNTIME_DIR/p2pd/p2pd.sock].
    #[arg(long, global = true, env = "P2PD_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Print machine-readable JSON instead of the human summary (one JSON object per line for
    /// the progress of `send` and `watch`).
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
    /// Send files or folders to a peer, and show the progress until the transfer ends.
    ///
    /// The paths are read by the daemon, so they must be readable by it; relative paths are
    /// taken from the current directory. Exit code 0 only when every file arrived and was
    /// verified by the receiver.
    Send(SendArgs),
    /// List the transfers the daemon knows of since it started, both directions.
    Transfers,
    /// Follow transfers as they change: every transfer, or only the one with ID.
    ///
    /// Without ID it runs until the daemon stops or you press Ctrl-C. With ID it ends when that
    /// transfer ends, with exit code 0 only if it completed.
    Watch {
        /// A transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: Option<String>,
    },
    /// Cancel a transfer in either direction; the peer is told.
    Cancel {
        /// A transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// List offers from peers that wait for your decision (`accept` or `reject`).
    Incoming,
    /// Accept an incoming offer; its files go to the download directory unless --to says
    /// otherwise.
    Accept {
        /// The offer's transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
        /// Put the files in DIR instead (created if missing; relative to the current directory).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Reject an incoming offer; the sender is told.
    Reject {
        /// The offer's transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
        /// A reason shown to the sender.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// List the live peer sessions.
    Sessions,
    /// Open a session with a peer (or reuse the open one) without sending anything.
    Connect {
        /// The peer's listen address, HOST:PORT.
        #[arg(value_name = "HOST:PORT", value_parser = parse_peer)]
        peer: String,
    },
    /// Close the session with a peer; transfers running over it fail.
    Disconnect {
        /// A peer device id, or the HOST:PORT of a session.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        peer: String,
    },
}

/// Flags of `p2pctl send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Files and folders to send.
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    /// The receiving peer's listen address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer)]
    pub(crate) peer: String,

    /// Print the transfer id and return at once; the transfer goes on in the daemon.
    #[arg(long)]
    pub(crate) detach: bool,

    /// Send the data uncompressed (by default chunks are compressed with zstd, and
    /// compression is switched off by itself for data that does not shrink).
    #[arg(long)]
    pub(crate) no_compress: bool,

    /// zstd level: 1 (fast) to 22 (small), or -1 to -7 for the fastest modes [default: 3].
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        conflicts_with = "no_compress",
        value_parser = clap::value_parser!(i32).range(-7..=22)
    )]
    pub(crate) level: Option<i32>,

    /// Size of one chunk, 4K to 16M, e.g. 64K, 1M, 1MiB or 4096 [default: 1M].
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size)]
    pub(crate) chunk_size: Option<u32>,

    /// Chunks in flight at once, 1 to 1024; 1 sends one chunk and waits for its
    /// acknowledgement [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) window: Option<u32>,
}

/// Smallest and largest chunk size the daemon accepts.
const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(16 << 20);

/// A `--chunk-size` value: a size (see [`units::parse_size`]) within 4 KiB ..= 16 MiB.
fn parse_chunk_size(text: &str) -> Result<u32, String> {
    let size = units::parse_size(text)?;
    if !CHUNK_SIZE_RANGE.contains(&size) {
        return Err(format!(
            "the chunk size must be between 4K and 16M, not {}",
            units::bytes(size)
        ));
    }
    u32::try_from(size).map_err(|_| format!("{text:?} is too large"))
}

/// A peer address: `HOST:PORT` with a non-zero port; IPv6 literals in brackets (`[::1]:14567`).
fn parse_peer(text: &str) -> Result<String, String> {
    if text.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(text.to_owned());
    }
    let example = "expected HOST:PORT, e.g. 192.168.1.20:14567 or kitchen-pc.local:14567";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port: {example}"));
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{text:?} has no valid host: {example}"));
    }
    if host.contains(':') {
        return Err(format!(
            "{text:?}: put an IPv6 address in brackets, e.g. [::1]:14567"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(text.to_owned()),
        _ => Err(format!("{text:?} has no valid port (1-65535): {example}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn chunk_sizes_are_checked_against_the_daemons_range() {
        assert_eq!(parse_chunk_size("64K"), Ok(65_536));
        assert_eq!(parse_chunk_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_chunk_size("4096"), Ok(4096));
        assert_eq!(parse_chunk_size("16M"), Ok(16 << 20));
        assert!(
            parse_chunk_size("4095")
                .unwrap_err()
                .contains("between 4K and 16M")
        );
        assert!(
            parse_chunk_size("17M")
                .unwrap_err()
                .contains("not 17.0 MiB")
        );
        assert!(parse_chunk_size("0").is_err());
        assert!(parse_chunk_size("lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn peers_need_host_and_port() {
        for good in [
            "127.0.0.1:1",
            "[::1]:14567",
            "kitchen-pc.local:14567",
            "host:65535",
        ] {
            assert_eq!(parse_peer(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1",
            ":14567",
            "host:",
            "host:0",
            "host:70000",
            "::1:14567",
            "a b:1",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_flags_parse() {
        let cli = Cli::try_parse_from([
            "p2pctl",
            "send",
            "a",
            "b",
            "--peer",
            "h:1",
            "--level",
            "-3",
            "--chunk-size",
            "64K",
            "--window",
            "1",
        ])
        .unwrap();
        let Command::Send(args) = cli.command else {
            panic!("not send: {cli:?}");
        };
        assert_eq!(args.paths, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(
            (args.level, args.chunk_size, args.window),
            (Some(-3), Some(65_536), Some(1))
        );
        for bad in [
            &["p2pctl", "send", "a", "--peer", "h:1", "--window", "0"][..],
            &["p2pctl", "send", "a", "--peer", "h:1", "--level", "23"],
            &[
                "p2pctl",
                "send",
                "a",
                "--peer",
                "h:1",
                "--no-compress",
                "--level",
                "5",
            ],
            &["p2pctl", "send", "--peer", "h:1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
