//! Command-line flags of `p2pd`. Every flag except `--config`, `--daemon` and `--pidfile` can
//! also be set in the config file; the flag wins.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// p2pd — peer-to-peer file transfer daemon.
///
/// Runs in the foreground until SIGTERM/SIGINT (or `p2pctl shutdown`); control it with `p2pctl`
/// or any gRPC client on its Unix socket. Every setting has a default: no config file is needed.
#[derive(Debug, Clone, Parser)]
#[command(name = "p2pd", version, about, long_about)]
pub struct Cli {
    /// Control socket path [default: $XDG_RUNTIME_DIR/p2pd/p2pd.sock].
    #[arg(long, env = "P2PD_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Directory for the identity and state [default: $XDG_STATE_HOME/p2pd].
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// TOML config file [default: $XDG_CONFIG_HOME/p2pd/config.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Peer listen address; port 0 picks a free port (shown by `p2pctl status`)
    /// [default: 0.0.0.0:14567].
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<SocketAddr>,

    /// Device name shown to peers [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// Where received files go [default: the user's download dir + p2p/].
    #[arg(long, value_name = "DIR")]
    pub(crate) download_dir: Option<PathBuf>,

    /// Log filter: a level (error, warn, info, debug, trace) or RUST_LOG-style directives
    /// [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,

    /// Receiving policy for trusted devices: `ask` keeps incoming offers waiting for
    /// `p2pctl accept` or `reject`; `auto` accepts them into the download dir [default: ask].
    #[arg(long, value_name = "POLICY")]
    pub(crate) accept: Option<p2p_core::AcceptPolicy>,

    /// Offers from untrusted devices: `ask` keeps them waiting for an explicit accept (whatever
    /// --accept says); `reject` refuses them outright [default: ask].
    #[arg(long, value_name = "POLICY")]
    pub(crate) accept_untrusted: Option<p2p_core::UntrustedPolicy>,

    /// Consecutive failed attempts after which an outgoing transfer gives up; 0 retries
    /// forever (backoff 2 s, 4 s, … up to 60 s) [default: 0].
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,

    /// Global speed limit of all outgoing transfers together, in bytes per second on the wire:
    /// e.g. 512K, 10M, 1G (K, M, G are binary: 10M is 10 MiB/s), or `unlimited`
    /// [default: unlimited]. A transfer's own limit (`p2pctl send --max-speed`) applies as well.
    #[arg(
        long,
        value_name = "RATE",
        allow_negative_numbers = true,
        value_parser = p2p_client::units::parse_rate
    )]
    pub(crate) max_speed: Option<u64>,

    /// UDP port of LAN discovery beacons [default: 14566].
    #[arg(long, value_name = "PORT")]
    pub(crate) discovery_port: Option<u16>,

    /// Turn LAN discovery off (no beacons sent or heard).
    #[arg(long)]
    pub(crate) no_discovery: bool,

    /// A peer to keep a session with where broadcast does not reach (VPNs, other subnets);
    /// repeatable; adds to the config's `peers`.
    #[arg(long = "peer-addr", value_name = "HOST:PORT")]
    pub(crate) peer_addr: Vec<String>,

    /// Detach into the background; logs go to p2pd.log in the state dir.
    #[arg(long)]
    pub(crate) daemon: bool,

    /// With --daemon: write and lock this pid file [default: p2pd.pid in the state dir].
    #[arg(long, value_name = "FILE", requires = "daemon")]
    pub(crate) pidfile: Option<PathBuf>,
}
