//! Commands and flags of `p2pctl`, and the checks of flag values that need no daemon.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use p2p_client::units;

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
    /// the progress of `send` and `watch`, and for `peers --watch`).
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
    /// Print this daemon's device id (give it to the other machine's `p2pctl trust`).
    Id,
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
    /// Show the transfers that ended, newest first; `history clear` deletes them.
    ///
    /// Every transfer that completed, failed, was cancelled or rejected, in both directions, is
    /// recorded when it ends: its peer, files, bytes, duration, average speed, and why it did
    /// not complete. The daemon keeps the newest 10,000 across restarts. Filters combine;
    /// --completed, --failed, --cancelled and --rejected may be given together to see any of
    /// those outcomes.
    History(HistoryArgs),
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
    /// Pause an outgoing transfer; the receiver keeps what arrived. The pause survives a
    /// daemon restart.
    Pause {
        /// A transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Resume a paused outgoing transfer (or retry one now instead of waiting); only what the
    /// receiver lacks is sent.
    Resume {
        /// A transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Change the speed limit of a transfer this daemon is sending, at once.
    ///
    /// The daemon's global limit (config `max_speed`, shown by `p2pctl status`) applies as well;
    /// the lower of the two sets the pace. Limits apply on the sending side: for an incoming
    /// transfer, ask the sender.
    Limit {
        /// A transfer id, or a unique beginning of one.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
        /// Bytes per second on the wire, e.g. 512K, 10M or 1G (K, M, G are binary: 10M is
        /// 10 MiB/s), at least 1K; or `unlimited`.
        #[arg(
            value_name = "RATE",
            allow_negative_numbers = true,
            value_parser = units::parse_rate
        )]
        rate: u64,
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
    /// List the peers found by LAN discovery, and the static peers that are up.
    ///
    /// Shows each peer's name, device id, address, protocol version, whether it is trusted,
    /// where it came from (`broadcast` or `static`) and when it was last heard. Send to one by
    /// name: `p2pctl send FILE --peer NAME`. With --watch, follows the peers as they appear,
    /// change and go away, until the daemon stops or you press Ctrl-C.
    Peers {
        /// Follow the peers: one line per peer that appears, changes or is lost (the current
        /// ones first, as appeared).
        #[arg(long)]
        watch: bool,
    },
    /// List the live peer sessions.
    Sessions,
    /// Open a session with a peer (or reuse the open one) without sending anything.
    Connect {
        /// The peer: a name or device id prefix from `p2pctl peers`, HOST:PORT, or
        /// DEVICE-ID@HOST:PORT.
        ///
        /// A name or id prefix is looked up by the daemon among the discovered peers, and the
        /// peer must then prove the id it announced. DEVICE-ID@HOST:PORT insists on that device
        /// (the id may be shortened to a unique beginning of a known device's).
        #[arg(value_name = "PEER", value_parser = parse_peer)]
        peer: String,
    },
    /// Close the session with a peer; transfers running over it fail.
    Disconnect {
        /// A peer device id, or the HOST:PORT of a session.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        peer: String,
    },
    /// List the trusted devices: name, id, receiving rule, download dir, connected, last seen.
    Devices,
    /// List devices that connected or offered something while not trusted.
    Pending,
    /// Trust a device, or change the rules of a trusted one.
    ///
    /// Calling it again for a trusted device replaces its receiving rule and download dir with
    /// the ones given (left out: the defaults); the name is kept unless --name is given.
    Trust(TrustArgs),
    /// Forget a device, trusted or pending; its sessions are closed.
    Untrust {
        /// A device id, or a unique beginning of one (e.g. its first group of 7 characters).
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
}

/// Flags and subcommand of `p2pctl history`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct HistoryArgs {
    #[command(subcommand)]
    pub(crate) action: Option<HistoryAction>,

    /// Show at most N transfers (the newest), 1 to 10000.
    #[arg(
        short = 'n',
        long = "limit",
        value_name = "N",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub(crate) limit: u32,

    /// Only transfers in this direction (seen from this daemon).
    #[arg(long, value_name = "DIRECTION", value_enum)]
    pub(crate) direction: Option<DirectionArg>,

    /// Only transfers that completed (every file verified by the receiver).
    #[arg(long)]
    pub(crate) completed: bool,

    /// Only transfers that failed with an error.
    #[arg(long)]
    pub(crate) failed: bool,

    /// Only transfers that were cancelled, by either side.
    #[arg(long)]
    pub(crate) cancelled: bool,

    /// Only transfers that the receiver rejected.
    #[arg(long)]
    pub(crate) rejected: bool,

    /// Only transfers with this peer: its name, or the beginning of its device id (e.g. the 7
    /// characters `p2pctl peers` shows).
    #[arg(long, value_name = "PEER", value_parser = NonEmptyStringValueParser::new())]
    pub(crate) peer: Option<String>,

    /// Only transfers that ended within this time: a number and a unit, s, m, h, d or w, e.g.
    /// 30m, 12h, 7d.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub(crate) since: Option<Duration>,
}

/// What `p2pctl history` does instead of listing.
#[derive(Debug, Subcommand)]
pub(crate) enum HistoryAction {
    /// Delete every transfer from the history.
    Clear,
}

/// A transfer direction, for filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DirectionArg {
    /// Transfers this daemon sent.
    Send,
    /// Transfers this daemon received.
    Receive,
}

/// An `--since` age: a whole number and a unit — `s`, `m`, `h`, `d` or `w` (`90s`, `30m`,
/// `12h`, `7d`, `2w`).
fn parse_age(text: &str) -> Result<Duration, String> {
    let example = "expected a number and a unit (s, m, h, d or w), e.g. 30m, 12h or 7d";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("{text:?} is not an age: {example}"));
    };
    let unit_secs: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(format!("{text:?} has no unit: {example}")),
        other => return Err(format!("unknown unit {other:?} in {text:?}: {example}")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// Flags of `p2pctl trust`.
#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// The device id, or a unique beginning of a known or pending one (e.g. its first group of
    /// 7 characters).
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub(crate) id: String,

    /// A name to remember it by; left out: the name given before, else the one the device
    /// announces.
    #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    pub(crate) name: Option<String>,

    /// What to do with its offers; left out: `default`, the daemon's own --accept.
    #[arg(long, value_name = "RULE", value_enum)]
    pub(crate) accept: Option<AcceptRule>,

    /// Put its files in DIR instead of the daemon's download directory (relative to the
    /// current directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) download_dir: Option<PathBuf>,
}

/// A device's receiving rule (`trust --accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AcceptRule {
    /// Follow the daemon's own `--accept`.
    Default,
    /// Accept its offers at once.
    Auto,
    /// Keep its offers waiting for `p2pctl accept` or `reject`.
    Ask,
    /// Reject its offers.
    Reject,
}

/// Flags of `p2pctl send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Files and folders to send.
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    /// The receiving peer: a name or device id prefix from `p2pctl peers`, HOST:PORT, or
    /// DEVICE-ID@HOST:PORT.
    ///
    /// A name or id prefix (4 characters or more) is looked up by the daemon among the
    /// discovered peers, and the peer must then prove the id it announced. DEVICE-ID@HOST:PORT
    /// insists on that device (the id may be shortened to a unique beginning of a known
    /// device's).
    #[arg(long, value_name = "PEER", value_parser = parse_peer)]
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

    /// Speed limit of this transfer in bytes per second on the wire, e.g. 512K, 10M or 1G (K,
    /// M, G are binary: 10M is 10 MiB/s), at least 1K; or `unlimited` [default: unlimited].
    /// The daemon's global limit applies as well. Change it later with `p2pctl limit ID RATE`.
    #[arg(
        long,
        value_name = "RATE",
        allow_negative_numbers = true,
        value_parser = units::parse_rate
    )]
    pub(crate) max_speed: Option<u64>,
}

/// Smallest and largest chunk size the daemon accepts.
const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(16 << 20);

/// A `--chunk-size` value: a size (see [`units::parse_size`]) within
/// 4 KiB ..= 16 MiB.
fn parse_chunk_size(text: &str) -> Result<u32, String> {
    let size = units::parse_size(text).map_err(|e| e.to_string())?;
    if !CHUNK_SIZE_RANGE.contains(&size) {
        return Err(format!(
            "the chunk size must be between 4K and 16M, not {}",
            units::bytes(size)
        ));
    }
    u32::try_from(size).map_err(|_| format!("{text:?} is too large"))
}

/// A peer as given to `send --peer` and `connect`, passed on to the daemon unchanged:
/// - `HOST:PORT` with a non-zero port, IPv6 literals in brackets (`[::1]:14567`), optionally
///   after a device id and `@` (`P56IOI7-…@host:14567`); the daemon checks the id;
/// - anything else without `@` or `:` — a peer name or a device id prefix, which the daemon
///   looks up among the peers discovery found (`p2pctl peers`).
///
/// Text with a `:` is taken as an address and checked as one, so that `host:`, `host:0` or
/// `::1:14567` are refused here; so is a bare IP address, which is an address without its port
/// rather than a name. Empty or blank text is refused.
fn parse_peer(text: &str) -> Result<String, String> {
    let example = "expected a peer name or device id prefix (see `p2pctl peers`), HOST:PORT or \
                   DEVICE-ID@HOST:PORT, e.g. kitchen-pc, 192.168.1.20:14567 or \
                   P56IOI7@kitchen-pc.local:14567";
    if text.trim().is_empty() {
        return Err(format!("the peer is empty: {example}"));
    }
    let address = match text.split_once('@') {
        Some((id, address)) => {
            if id.trim().is_empty() || id.contains(char::is_whitespace) {
                return Err(format!(
                    "{text:?} has no valid device id before '@': {example}"
                ));
            }
            if address.contains('@') {
                return Err(format!("{text:?} has more than one '@': {example}"));
            }
            address
        }
        // A name or id prefix: the daemon resolves it.
        None if !text.contains(':') && text.trim().parse::<IpAddr>().is_err() => {
            return Ok(text.to_owned());
        }
        None => text,
    };
    parse_address(address, text, example)?;
    Ok(text.to_owned())
}

/// Checks the `HOST:PORT` part of a peer; `whole` and `example` are for the messages.
fn parse_address(text: &str, whole: &str, example: &str) -> Result<(), String> {
    if text.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{whole:?} has no port: {example}"));
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{whole:?} has no valid host: {example}"));
    }
    if host.contains(':') {
        return Err(format!(
            "{whole:?}: put an IPv6 address in brackets, e.g. [::1]:14567"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{whole:?} has no valid port (1-65535): {example}")),
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
    fn addresses_need_host_and_port() {
        for good in [
            "127.0.0.1:1",
            "[::1]:14567",
            "kitchen-pc.local:14567",
            "host:65535",
            "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2@192.0.2.7:14567",
            "P56IOI7@kitchen-pc.local:14567",
            "p56ioi7@[::1]:14567",
        ] {
            assert_eq!(parse_peer(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "[::1]",
            ":14567",
            "host:",
            "host:0",
            "host:70000",
            "::1:14567",
            "a b:1",
            "@host:1",
            " @host:1",
            "a b@host:1",
            "ID@",
            "ID@host",
            "ID@host:0",
            "ID@::1:14567",
            "ID@kitchen-pc",
            "a@b@host:1",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        assert!(
            parse_peer("@host:1")
                .unwrap_err()
                .contains("no valid device id")
        );
        assert!(
            parse_peer("ID@host")
                .unwrap_err()
                .contains("DEVICE-ID@HOST:PORT")
        );
        assert!(parse_peer("127.0.0.1").unwrap_err().contains("no port"));
        assert!(parse_peer("host:0").unwrap_err().contains("no valid port"));
    }

    #[test]
    fn names_and_id_prefixes_go_to_the_daemon_unchanged() {
        for name in [
            "kitchen-pc",
            "Kitchen-PC",
            "kitchen pc",
            " kitchen-pc ",
            "kitchen-pc.local",
            "P56IOI7",
            "p56i",
            "P56IOI7-MZJNU2Y",
            "pi",
            "Mémé's laptop",
        ] {
            assert_eq!(parse_peer(name).as_deref(), Ok(name));
        }
        for blank in ["", " ", "\t", " \n "] {
            let err = parse_peer(blank).unwrap_err();
            assert!(err.contains("the peer is empty"), "{blank:?}: {err}");
            assert!(err.contains("p2pctl peers"), "{err}");
        }
    }

    #[test]
    fn connect_and_send_take_an_optional_device_id() {
        let cli = Cli::try_parse_from(["p2pctl", "connect", "ABCDEFG@h:1"]).unwrap();
        assert!(matches!(cli.command, Command::Connect { peer } if peer == "ABCDEFG@h:1"));
        let cli = Cli::try_parse_from(["p2pctl", "send", "a", "--peer", "ABCDEFG@h:1"]).unwrap();
        assert!(matches!(cli.command, Command::Send(args) if args.peer == "ABCDEFG@h:1"));
    }

    #[test]
    fn connect_and_send_take_a_peer_name() {
        let cli = Cli::try_parse_from(["p2pctl", "connect", "kitchen-pc"]).unwrap();
        assert!(matches!(cli.command, Command::Connect { peer } if peer == "kitchen-pc"));
        let cli = Cli::try_parse_from(["p2pctl", "send", "a", "--peer", "P56I"]).unwrap();
        assert!(matches!(cli.command, Command::Send(args) if args.peer == "P56I"));
        for bad in [
            &["p2pctl", "connect", ""][..],
            &["p2pctl", "connect", "  "],
            &["p2pctl", "send", "a", "--peer", ""],
            &["p2pctl", "send", "a", "--peer", "kitchen-pc:"],
        ] {
            let err = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peers_takes_watch() {
        let cli = Cli::try_parse_from(["p2pctl", "peers"]).unwrap();
        assert!(matches!(cli.command, Command::Peers { watch: false }));
        let cli = Cli::try_parse_from(["p2pctl", "peers", "--watch", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Peers { watch: true }));
        assert!(cli.json);
        assert!(Cli::try_parse_from(["p2pctl", "peers", "kitchen-pc"]).is_err());
    }

    #[test]
    fn trust_flags_parse() {
        let cli = Cli::try_parse_from([
            "p2pctl",
            "trust",
            "P56IOI7",
            "--name",
            "beta",
            "--accept",
            "auto",
            "--download-dir",
            "in/beta",
        ])
        .unwrap();
        let Command::Trust(args) = cli.command else {
            panic!("not trust: {cli:?}");
        };
        assert_eq!(args.id, "P56IOI7");
        assert_eq!(args.name.as_deref(), Some("beta"));
        assert_eq!(args.accept, Some(AcceptRule::Auto));
        assert_eq!(args.download_dir, Some(PathBuf::from("in/beta")));

        let cli = Cli::try_parse_from(["p2pctl", "trust", "X"]).unwrap();
        let Command::Trust(args) = cli.command else {
            panic!("not trust: {cli:?}");
        };
        assert_eq!(
            (args.name, args.accept, args.download_dir),
            (None, None, None)
        );
        for (word, rule) in [
            ("default", AcceptRule::Default),
            ("ask", AcceptRule::Ask),
            ("reject", AcceptRule::Reject),
        ] {
            let cli = Cli::try_parse_from(["p2pctl", "trust", "X", "--accept", word]).unwrap();
            assert!(matches!(cli.command, Command::Trust(a) if a.accept == Some(rule)));
        }
        for bad in [
            &["p2pctl", "trust"][..],
            &["p2pctl", "trust", ""],
            &["p2pctl", "trust", "X", "--accept", "sometimes"],
            &["p2pctl", "trust", "X", "--name", ""],
            &["p2pctl", "untrust"],
            &["p2pctl", "untrust", ""],
            &["p2pctl", "id", "extra"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let err = Cli::try_parse_from(["p2pctl", "trust", "X", "--accept", "sometimes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--accept"), "{err}");
    }

    #[test]
    fn history_flags_parse() {
        let cli = Cli::try_parse_from(["p2pctl", "history"]).unwrap();
        let Command::History(args) = cli.command else {
            panic!("not history: {cli:?}");
        };
        assert!(args.action.is_none());
        assert_eq!(args.limit, 20, "the default");
        assert_eq!(
            (
                args.direction,
                args.completed,
                args.failed,
                args.peer,
                args.since
            ),
            (None, false, false, None, None)
        );
        let cli = Cli::try_parse_from([
            "p2pctl",
            "history",
            "-n",
            "5",
            "--direction",
            "receive",
            "--failed",
            "--cancelled",
            "--peer",
            "beta",
            "--since",
            "2h",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::History(args) = cli.command else {
            panic!("not history: {cli:?}");
        };
        assert_eq!(args.limit, 5);
        assert_eq!(args.direction, Some(DirectionArg::Receive));
        assert!(args.failed && args.cancelled && !args.completed && !args.rejected);
        assert_eq!(args.peer.as_deref(), Some("beta"));
        assert_eq!(args.since, Some(Duration::from_secs(7200)));

        let cli = Cli::try_parse_from(["p2pctl", "history", "clear", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::History(HistoryArgs {
                action: Some(HistoryAction::Clear),
                ..
            })
        ));

        for bad in [
            &["p2pctl", "history", "-n", "abc"][..],
            &["p2pctl", "history", "-n", "0"],
            &["p2pctl", "history", "-n", "10001"],
            &["p2pctl", "history", "--direction", "sideways"],
            &["p2pctl", "history", "--peer", ""],
            &["p2pctl", "history", "--since", "yesterday"],
            &["p2pctl", "history", "clear", "-n", "3"],
            &["p2pctl", "history", "-n", "3", "clear"],
            &["p2pctl", "history", "wipe"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let err = Cli::try_parse_from(["p2pctl", "history", "--direction", "sideways"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sideways") && err.contains("send"), "{err}");
    }

    #[test]
    fn ages_need_a_number_and_a_unit() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_age(" 0s "), Ok(Duration::ZERO));
        assert!(parse_age("12").unwrap_err().contains("no unit"));
        assert!(parse_age("12y").unwrap_err().contains("unknown unit"));
        assert!(parse_age("h").unwrap_err().contains("not an age"));
        assert!(parse_age("-1h").unwrap_err().contains("not an age"));
        assert!(
            parse_age("99999999999999999w")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn device_commands_parse() {
        for (args, want) in [
            (&["p2pctl", "id"][..], "Id"),
            (&["p2pctl", "devices", "--json"], "Devices"),
            (&["p2pctl", "pending"], "Pending"),
            (&["p2pctl", "untrust", "P56IOI7"], "Untrust"),
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(format!("{:?}", cli.command).starts_with(want), "{args:?}");
        }
        assert!(
            Cli::try_parse_from(["p2pctl", "devices", "--json"])
                .unwrap()
                .json
        );
    }

    #[test]
    fn speed_limits_parse_and_bad_ones_are_usage_errors() {
        let cli =
            Cli::try_parse_from(["p2pctl", "send", "a", "--peer", "h:1", "--max-speed", "10M"])
                .unwrap();
        assert!(matches!(cli.command, Command::Send(a) if a.max_speed == Some(10 << 20)));
        let cli = Cli::try_parse_from(["p2pctl", "limit", "0123", "unlimited"]).unwrap();
        assert!(matches!(cli.command, Command::Limit { id, rate: 0 } if id == "0123"));
        let cli = Cli::try_parse_from(["p2pctl", "limit", "0123", "512K"]).unwrap();
        assert!(matches!(cli.command, Command::Limit { rate: 524_288, .. }));
        // Every bad form is in p2p_client::units' tests and the end-to-end tests; here: that a
        // bad RATE is a validation error naming the argument, a negative one included.
        for args in [
            &["p2pctl", "limit", "0123", "-1"][..],
            &["p2pctl", "send", "a", "--peer", "h:1", "--max-speed", "10X"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(err.to_string().contains("RATE"), "{args:?}: {err}");
        }
        assert!(Cli::try_parse_from(["p2pctl", "limit", "0123"]).is_err());
        assert!(Cli::try_parse_from(["p2pctl", "limit", "", "5M"]).is_err());
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
