//! Start-up order, the runtime, signals, reload and shutdown.
//!
//! Order matters: everything that can fail because of the user's input (config, state dir,
//! sockets, ports) happens before `--daemon` forks, so the error reaches the terminal; the tokio
//! runtime is built only after the fork.

use std::fs::OpenOptions;
use std::time::Duration;

use anyhow::{Context, Result};
use p2p_core::{Identity, Node, NodeSettings};
use p2p_proto::control::v1::control_service_server::ControlServiceServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::config::Config;
use crate::control::ControlApi;
use crate::logging::{self, LogHandle};
use crate::socket::ControlSocket;

/// How long the gRPC server may take to drain after shutdown begins.
const SERVER_DRAIN: Duration = Duration::from_secs(2);
/// How long the node's tasks may take to stop.
const NODE_STOP: Duration = Duration::from_secs(2);

/// Runs the daemon until it is told to stop.
pub(crate) fn run(cli: Cli) -> Result<()> {
    let config = Config::load(&cli)?;
    p2p_core::fsutil::ensure_private_dir(&config.state_dir)
        .with_context(|| format!("cannot use state dir {}", config.state_dir.display()))?;

    let log_file = if cli.daemon {
        let path = config.state_dir.join("p2pd.log");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        Some(f)
    } else {
        None
    };
    let log_for_std = match &log_file {
        Some(f) => Some((
            f.try_clone().context("cannot duplicate log file")?,
            f.try_clone().context("cannot duplicate log file")?,
        )),
        None => None,
    };
    let log = logging::init(&config.log_level, log_file).map_err(anyhow::Error::msg)?;
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
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(cli, config, identity, &control, peer, log));
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
) -> Result<(Identity, std::net::TcpListener, Option<PidFile>)> {
    let identity = Identity::load_or_create(&config.state_dir)?;
    let peer = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen for peers on {}", config.listen))?;
    peer.set_nonblocking(true)
        .context("cannot make the peer listener non-blocking")?;
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
    d.start().context("cannot daemonize")?;
    pidfile.write_pid()?;
    Ok((identity, peer, Some(pidfile)))
}

/// A pid file held with an exclusive `flock` for the daemon's lifetime.
struct PidFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl PidFile {
    fn lock(path: &std::path::Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("cannot open pid file {}", path.display()))?;
        // SAFETY: flock on a valid descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            anyhow::bail!(
                "pid file {} is locked by a running p2pd (pid {})",
                path.display(),
                holder.trim()
            );
        }
        Ok(PidFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write_pid(&mut self) -> Result<()> {
        use std::io::{Seek, Write};
        let ctx = || format!("cannot write pid file {}", self.path.display());
        self.file.set_len(0).with_context(ctx)?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .with_context(ctx)?;
        writeln!(self.file, "{}", std::process::id()).with_context(ctx)?;
        self.file.sync_all().with_context(ctx)
    }

    fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), cause = %e, "cannot remove pid file");
        }
    }
}

async fn serve(
    cli: Cli,
    config: Config,
    identity: Identity,
    control: &ControlSocket,
    peer: std::net::TcpListener,
    log: LogHandle,
) -> Result<()> {
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

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServiceServer<ControlApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(p2p_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(p2p_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;

    let std_listener = control
        .listener
        .try_clone()
        .context("cannot duplicate the control socket")?;
    std_listener
        .set_nonblocking(true)
        .context("cannot prepare the control socket")?;
    let uds = tokio::net::UnixListener::from_std(std_listener)
        .context("cannot register the control socket")?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);

    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(
                crate::control::check_caller,
            ))
            .add_service(ControlServiceServer::new(ControlApi::new(
                node.clone(),
                control.path.clone(),
            )))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                incoming,
                async move { server_shutdown.cancelled().await },
            ),
    );

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;

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

    // A second signal during the drain means "now".
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });

    let server_result = match tokio::time::timeout(SERVER_DRAIN, server).await {
        Ok(Ok(r)) => r.context("control server failed"),
        Ok(Err(join)) => Err(anyhow::anyhow!("control server task failed: {join}")),
        Err(_) => {
            tracing::warn!("control server did not drain in time");
            Ok(())
        }
    };
    node.shutdown(NODE_STOP).await;
    tracing::info!("p2pd stopped");
    server_result
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
