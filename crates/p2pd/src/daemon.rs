//! Start-up order, the runtime, signals, reload and shutdown.
//!
//! Order matters: everything that can fail because of the user's input (config, state dir,
//! sockets, ports) happens before `--daemon` forks, so the error reaches the terminal; the tokio
//! runtime is built only after the fork.

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use p2p_core::{Identity, IdentityError, Node, NodeError, NodeSettings};
use tokio::signal::unix::SignalKind;
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::config::{Config, ConfigError};
use crate::logging::{self, LogHandle};
use crate::server::ServeError;
use crate::socket::{ControlSocket, SocketError};
use crate::tasks::Tasks;

/// How long the gRPC server may take to drain after shutdown begins.
const SERVER_DRAIN: Duration = Duration::from_secs(2);
/// How long the node's tasks may take to stop.
const NODE_STOP: Duration = Duration::from_secs(2);

/// Why the daemon could not start, or stopped with an error. Its message and the chain of its
/// [sources](std::error::Error::source) are what `p2pd` prints.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DaemonError(Failure);

/// One variant per failure site of the daemon.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use state dir {}", .path.display())]
    StateDir { path: PathBuf, source: io::Error },
    #[error("cannot open log file {}", .path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("cannot duplicate log file")]
    DupLogFile(#[source] io::Error),
    #[error("{0}")]
    Logging(String),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot listen for peers on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("cannot make the peer listener non-blocking")]
    ListenNonBlocking(#[source] io::Error),
    #[error("cannot open pid file {}", .path.display())]
    PidFileOpen { path: PathBuf, source: io::Error },
    #[error("pid file {} is locked by a running p2pd (pid {holder})", .path.display())]
    PidFileLocked { path: PathBuf, holder: String },
    #[error("cannot write pid file {}", .path.display())]
    PidFileWrite { path: PathBuf, source: io::Error },
    #[error("cannot daemonize")]
    Daemonize(#[source] daemonize::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{what} the control socket")]
    ControlSocket {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot install {signal} handler")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Server(#[from] ServeError),
    #[error("control server task failed")]
    ServerTask(#[source] tokio::task::JoinError),
}

/// Runs the daemon until it is told to stop: loads the configuration, binds the control
/// socket and the peer listener, forks with `--daemon`, then starts the node and serves the
/// control API until SIGTERM, SIGINT or a `Shutdown` call; SIGHUP reloads the configuration.
///
/// # Errors
/// A [`DaemonError`] naming the step that failed: invalid configuration, an unusable state
/// dir, log file, control socket, identity or peer address, a pid file held by another
/// daemon, or a failure of the node or the control server.
pub fn run(cli: Cli) -> Result<(), DaemonError> {
    run_daemon(cli).map_err(DaemonError)
}

fn run_daemon(cli: Cli) -> Result<(), Failure> {
    let config = Config::load(&cli)?;
    p2p_core::fsutil::ensure_private_dir(&config.state_dir).map_err(|source| {
        Failure::StateDir {
            path: config.state_dir.clone(),
            source,
        }
    })?;

    let log_file = if cli.daemon {
        let path = config.state_dir.join("p2pd.log");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Failure::LogFile { path, source })?;
        Some(f)
    } else {
        None
    };
    let log_for_std = match &log_file {
        Some(f) => Some((
            f.try_clone().map_err(Failure::DupLogFile)?,
            f.try_clone().map_err(Failure::DupLogFile)?,
        )),
        None => None,
    };
    let log = logging::init(&config.log_level, log_file).map_err(Failure::Logging)?;
    match p2p_core::fsutil::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(?limit, "open files limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open files limit"),
    }

    let control = ControlSocket::open(&config.socket)?;
    // From here on a failed start must not leave our socket behind.
    let prepared = prepare(&cli, &config, log_for_std);
    let (identity, peer, pidfile) = match prepared {
        Ok(p) => p,
        Err(e) => {
            control.remove();
            return Err(e);
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("p2pd")
        .build()
        .map_err(Failure::Runtime)?;
    let result = runtime.block_on(operate(cli, config, identity, &control, peer, log));
    control.remove();
    if let Some(p) = pidfile {
        p.remove();
    }
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// The start-up steps between binding the control socket and forking.
fn prepare(
    cli: &Cli,
    config: &Config,
    log_for_std: Option<(std::fs::File, std::fs::File)>,
) -> Result<(Identity, std::net::TcpListener, Option<PidFile>), Failure> {
    let identity = Identity::load_or_create(&config.state_dir)?;
    let peer = std::net::TcpListener::bind(config.listen).map_err(|source| Failure::Listen {
        addr: config.listen,
        source,
    })?;
    peer.set_nonblocking(true)
        .map_err(Failure::ListenNonBlocking)?;
    if !cli.daemon {
        return Ok((identity, peer, None));
    }
    let path = match &cli.pidfile {
        Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
        None => config.state_dir.join("p2pd.pid"),
    };
    // Locked before the fork so that a second daemon learns of the first on its terminal; the
    // lock travels with the inherited descriptor into the daemon.
    let mut pidfile = PidFile::lock(&path)?;
    let mut d = daemonize::Daemonize::new()
        .working_directory("/")
        .umask(0o077);
    if let Some((out, err)) = log_for_std {
        d = d.stdout(out).stderr(err);
    }
    d.start().map_err(Failure::Daemonize)?;
    pidfile.write_pid()?;
    Ok((identity, peer, Some(pidfile)))
}

/// A pid file held with an exclusive `flock` for the daemon's lifetime.
struct PidFile {
    file: std::fs::File,
    path: PathBuf,
}

impl PidFile {
    fn lock(path: &std::path::Path) -> Result<Self, Failure> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|source| Failure::PidFileOpen {
                path: path.to_path_buf(),
                source,
            })?;
        // SAFETY: flock on a valid descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            return Err(Failure::PidFileLocked {
                path: path.to_path_buf(),
                holder: holder.trim().to_owned(),
            });
        }
        Ok(PidFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write_pid(&mut self) -> Result<(), Failure> {
        use std::io::{Seek, Write};
        let file = &mut self.file;
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all());
        written.map_err(|source| Failure::PidFileWrite {
            path: self.path.clone(),
            source,
        })
    }

    fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), cause = %e, "cannot remove pid file");
        }
    }
}

/// The running daemon: starts the node, serves the control API on the control socket, and
/// handles signals until shutdown; then drains the server and stops the node, each within its
/// bound. A second SIGTERM or SIGINT during the drain exits at once.
async fn operate(
    cli: Cli,
    config: Config,
    identity: Identity,
    control: &ControlSocket,
    peer: std::net::TcpListener,
    log: LogHandle,
) -> Result<(), Failure> {
    let shutdown = CancellationToken::new();
    let settings = settings_of(&config, &identity);
    let node = Node::start(
        identity,
        settings,
        &config.state_dir,
        peer,
        shutdown.clone(),
    )?;
    if let Some(port) = config.discovery_port {
        node.start_discovery(port)?;
    }
    node.add_static_peers(config.peers.clone());

    let control_socket = |what| move |source| Failure::ControlSocket { what, source };
    let std_listener = control
        .listener
        .try_clone()
        .map_err(control_socket("cannot duplicate"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(control_socket("cannot prepare"))?;
    let uds = tokio::net::UnixListener::from_std(std_listener)
        .map_err(control_socket("cannot register"))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);

    // Built before the daemon reports itself ready: a failure stops the start-up.
    let services = crate::ControlServer::new(node.clone(), control.path.clone())?;
    let tasks = Tasks::new();
    let server = tasks.spawn(
        tracing::info_span!("control_server", socket = %control.path.display()),
        services.run(incoming, shutdown.clone()),
    );

    let handler = |kind, signal| {
        tokio::signal::unix::signal(kind).map_err(|source| Failure::Signal { signal, source })
    };
    let mut sigterm = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = handler(SignalKind::hangup(), "SIGHUP")?;

    tracing::info!(socket = %control.path.display(), pid = std::process::id(), "p2pd ready");
    notify(&[sd_notify::NotifyState::Ready]);

    let mut current = config;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => current = reload(&cli, current, &node, &log),
        }
    }
    shutdown.cancel();
    notify(&[sd_notify::NotifyState::Stopping]);

    let drain = async {
        // Joins the server task (the only one in `tasks`); if it does not drain in time, the
        // runtime's shutdown ends it.
        let server_result = match tokio::time::timeout(SERVER_DRAIN, server).await {
            Ok(Ok(r)) => r.map_err(Failure::from),
            Ok(Err(join)) => Err(Failure::ServerTask(join)),
            Err(_) => {
                tracing::warn!("control server did not drain in time");
                Ok(())
            }
        };
        node.shutdown(NODE_STOP).await;
        server_result
    };
    // A second signal during the drain means "now".
    let result = tokio::select! {
        r = drain => r,
        _ = sigterm.recv() => second_signal(),
        _ = sigint.recv() => second_signal(),
    };
    tracing::info!("p2pd stopped");
    result
}

/// A second SIGTERM or SIGINT while shutting down: exit at once.
fn second_signal() -> ! {
    tracing::warn!("second signal: exiting at once");
    std::process::exit(130);
}

fn settings_of(config: &Config, identity: &Identity) -> NodeSettings {
    NodeSettings {
        name: config.name.clone().unwrap_or_else(|| identity.name.clone()),
        download_dir: config.download_dir.clone(),
        accept: config.accept,
        accept_untrusted: config.accept_untrusted,
        max_attempts: config.max_attempts,
        max_speed: config.max_speed,
    }
}

/// SIGHUP: re-reads the config file and applies what can change live. An invalid file is logged
/// and the running configuration is kept.
fn reload(cli: &Cli, current: Config, node: &Node, log: &LogHandle) -> Config {
    let new = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cause = %e, "SIGHUP: config not reloaded, keeping the running configuration");
            return current;
        }
    };
    let restart_needed: Vec<&str> = [
        ("socket", new.socket != current.socket),
        ("state_dir", new.state_dir != current.state_dir),
        ("listen", new.listen != current.listen),
        ("discovery", new.discovery_port != current.discovery_port),
        ("peers", new.peers != current.peers),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect();
    for key in &restart_needed {
        tracing::warn!(
            key,
            "SIGHUP: `{key}` changed; it takes effect after a restart"
        );
    }
    if new.log_level != current.log_level {
        if let Err(e) = log.set(&new.log_level) {
            tracing::error!(cause = %e, "SIGHUP: cannot apply log_level");
        }
    }
    let settings = settings_of(&new, node.identity());
    let old = node.update_settings(settings.clone());
    tracing::info!(
        name = %settings.name,
        download_dir = %settings.download_dir.display(),
        accept = ?settings.accept,
        accept_untrusted = ?settings.accept_untrusted,
        max_attempts = settings.max_attempts,
        max_speed = settings.max_speed,
        log_level = %new.log_level,
        name_changed = old.name != settings.name,
        "SIGHUP: configuration reloaded"
    );
    // Keep the values that need a restart as they are running, so the next reload compares
    // against what is really in effect.
    Config {
        socket: current.socket,
        state_dir: current.state_dir,
        listen: current.listen,
        discovery_port: current.discovery_port,
        peers: current.peers,
        ..new
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(cause = %e, "sd_notify failed");
    }
}
