//! `p2pd` processes: where the binaries are, a directory layout per daemon (socket, state,
//! downloads, config, log), the options a test starts one with, and [`Daemon`], a running
//! process that is killed by PID when the test drops it.
//!
//! The binaries are located next to the test executable (`target/<profile>/`); `cargo test
//! --workspace` builds them because the `p2pd`, `p2pctl` and `p2p-tools` packages have
//! integration tests.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{blocking, run_with_timeout, signal};

/// How long a daemon may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`Daemon::stop`] waits for the process to exit after its signal.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of a workspace binary (`p2pd`, `p2pctl`, `tun-delay`) built by cargo next to the test
/// executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found; build it first (`cargo test --workspace` or `cargo build --bins`)",
        p.display()
    );
    p
}

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Options for a daemon to start.
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    /// Extra arguments for `p2pd`.
    pub args: Vec<String>,
    /// Contents of a config file passed with `--config`.
    pub config: Option<String>,
    /// Whether to pass `--listen 127.0.0.1:0` (default true unless the args set --listen).
    pub no_default_listen: bool,
    /// Run it inside this network namespace (`ip netns exec`, which execs: the pid is the
    /// daemon's). The control socket is a path, reachable from the test's namespace.
    pub netns: Option<String>,
    /// Leave LAN discovery on (it is off unless asked for: tests send no broadcasts on the
    /// host's networks; the discovery tests run their daemons in network namespaces).
    pub discovery: bool,
}

impl DaemonOptions {
    /// Options with these extra arguments and nothing else.
    pub fn with_args(args: &[&str]) -> Self {
        DaemonOptions {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// Options with `--accept POLICY` (`auto`, `ask`, `reject`).
    pub fn accepting(policy: &str) -> Self {
        Self::with_args(&["--accept", policy])
    }
}

/// A directory layout for one daemon: socket, state, downloads, logs.
#[derive(Debug)]
pub struct DaemonDirs {
    /// Temporary root, removed on drop.
    pub root: tempfile::TempDir,
    /// Control socket path.
    pub socket: PathBuf,
    /// State dir.
    pub state_dir: PathBuf,
    /// Download dir.
    pub download_dir: PathBuf,
    /// Config file path (written only when options carry a config).
    pub config_file: PathBuf,
    /// Where the daemon's stderr goes.
    pub log_file: PathBuf,
}

impl DaemonDirs {
    /// A fresh layout under a short temporary directory (socket paths have a length limit).
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("p2pt")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let r = root.path().to_path_buf();
        DaemonDirs {
            socket: r.join("run/p2pd.sock"),
            state_dir: r.join("state"),
            download_dir: r.join("downloads"),
            config_file: r.join("config.toml"),
            log_file: r.join("p2pd.stderr"),
            root,
        }
    }

    /// The standard arguments pointing the daemon at this layout. Discovery is off: tests
    /// send no broadcasts on the host's networks (the discovery tests run in network
    /// namespaces they create, see [`DaemonOptions::discovery`]).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--no-discovery".to_owned()];
        args.extend(self.path_args());
        args
    }

    /// [`args`](Self::args) followed by `extra`.
    pub fn args_with(&self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `--socket`, `--state-dir` and `--download-dir` of this layout.
    fn path_args(&self) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--download-dir".into(),
            self.download_dir.display().to_string(),
        ]
    }
}

impl Default for DaemonDirs {
    fn default() -> Self {
        Self::new()
    }
}

/// What a daemon reported about itself once it answered.
#[derive(Debug, Clone)]
struct Identity {
    device_id: String,
    listen_address: SocketAddr,
}

/// A running `p2pd` process. Dropping it kills the process (SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Daemon {
    /// Its directories.
    pub dirs: DaemonDirs,
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
    /// Read from `status --json` when it first answered; both stay for the process's life.
    identity: Option<Identity>,
}

impl Daemon {
    /// Starts a daemon with default options and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(DaemonDirs::new(), DaemonOptions::default())
    }

    /// Starts a daemon in `dirs` with `opts` and waits until it answers `status`.
    pub fn start_with(dirs: DaemonDirs, opts: DaemonOptions) -> Self {
        let child = spawn_p2pd(&dirs, &opts).expect("spawn p2pd");
        let pid = child.id();
        let mut d = Daemon {
            dirs,
            child: Some(child),
            pid,
            identity: None,
        };
        d.wait_ready()
            .unwrap_or_else(|e| panic!("{e:#}\n--- p2pd stderr ---\n{}", d.stderr()));
        d
    }

    /// [`start_with`](Self::start_with) from async code: on a blocking thread, so that
    /// several daemons started with `tokio::join!` start at the same time.
    pub async fn launch(dirs: DaemonDirs, opts: DaemonOptions) -> Self {
        tokio::task::spawn_blocking(move || Daemon::start_with(dirs, opts))
            .await
            .expect("start daemon")
    }

    /// Waits until `p2pctl status` succeeds, or fails if the process exits first.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("p2pd exited during start-up with {status}");
                }
            }
            if self.dirs.socket.exists() {
                let out = self.ctl(&["status", "--json"]);
                if out.status.success() {
                    self.identity = Some(identity_of(&out)?);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("p2pd did not answer within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn identity(&self) -> &Identity {
        self.identity
            .as_ref()
            .expect("a started daemon has answered status")
    }

    /// Its device id, as `status` reported it at start-up.
    pub fn device_id(&self) -> &str {
        &self.identity().device_id
    }

    /// The address its peer port listens on, as `status` reported it (the port resolved).
    pub fn listen_addr(&self) -> SocketAddr {
        self.identity().listen_address
    }

    /// [`listen_addr`](Self::listen_addr) as a peer argument (`HOST:PORT`).
    pub fn peer_addr(&self) -> String {
        self.listen_addr().to_string()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.dirs.log_file).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` and waits up to `timeout` for the process to exit; returns its status.
    pub fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        signal(self.pid, sig);
        self.wait_exit(timeout)
    }

    /// Sends `sig` and waits (at most [`STOP_TIMEOUT`]) for the process to exit; panics if
    /// it does not.
    pub fn stop(&mut self, sig: i32) -> ExitStatus {
        self.signal_and_wait(sig, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "p2pd {} did not exit within {STOP_TIMEOUT:?} of signal {sig}",
                self.pid
            )
        })
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = blocking(|| {
            let deadline = Instant::now() + timeout;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
        self.child = None;
        Some(status)
    }

    /// Kills the process (SIGKILL) and hands back its directories, e.g. to restart on them.
    pub fn into_dirs(mut self) -> DaemonDirs {
        self.kill();
        std::mem::take(&mut self.dirs)
    }

    /// Kills and reaps the process unless it has exited and been reaped already (then its pid
    /// may belong to another process by now, and is left alone). `ip netns exec` execs, so a
    /// daemon in a namespace is our child too.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            blocking(|| {
                let _ = child.kill();
                let _ = child.wait();
            });
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The device id and listen address in the output of `p2pctl status --json`.
fn identity_of(out: &Output) -> Result<Identity> {
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("status --json is JSON")?;
    let device_id = v["device_id"]
        .as_str()
        .context("status --json has a device_id")?
        .to_owned();
    let listen_address = v["listen_address"]
        .as_str()
        .context("status --json has a listen_address")?
        .parse()
        .context("listen_address is HOST:PORT")?;
    Ok(Identity {
        device_id,
        listen_address,
    })
}

/// Starts a daemon with these extra arguments in fresh directories, from async code (see
/// [`Daemon::launch`]).
pub async fn start(args: &[&str]) -> Daemon {
    Daemon::launch(DaemonDirs::new(), DaemonOptions::with_args(args)).await
}

/// Spawns `p2pd` on `dirs` with `opts` without waiting for it; stderr goes to `dirs.log_file`.
///
/// # Errors
/// If the config file cannot be written or the process cannot be spawned.
pub fn spawn_p2pd(dirs: &DaemonDirs, opts: &DaemonOptions) -> Result<Child> {
    let mut args = if opts.discovery {
        dirs.path_args()
    } else {
        dirs.args()
    };
    if !opts.no_default_listen && !opts.args.iter().any(|a| a == "--listen") {
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    }
    if let Some(cfg) = &opts.config {
        std::fs::write(&dirs.config_file, cfg).context("write config")?;
        args.extend(["--config".into(), dirs.config_file.display().to_string()]);
    }
    args.extend(opts.args.iter().cloned());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&dirs.log_file)
        .context("open daemon log")?;
    let mut cmd = match &opts.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("p2pd"));
            c
        }
        None => Command::new(bin("p2pd")),
    };
    cmd.args(&args)
        .env_remove("P2PD_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn p2pd")
}

/// Runs `p2pd ARGS…` to completion (for commands that must fail fast), with a time limit.
pub fn run_p2pd(args: &[impl AsRef<OsStr>], timeout: Duration) -> Output {
    run_with_timeout(
        Command::new(bin("p2pd"))
            .args(args)
            .env_remove("P2PD_SOCKET"),
        timeout,
    )
}
