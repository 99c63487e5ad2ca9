//! Test harness for end-to-end tests: starts real `p2pd` processes in temporary directories
//! (own socket, state dir, download dir, ephemeral port), runs `p2pctl` against them, and kills
//! every process it started by PID when the test ends.
//!
//! The binaries are located next to the test executable (`target/<profile>/`); `cargo test
//! --workspace` builds them because the `p2pd` and `p2pctl` packages have integration tests.
//! The in-process tier is [`inprocess`]: a node and its gRPC API (`p2pd::serve`) in one runtime.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a daemon may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of a workspace binary (`p2pd`, `p2pctl`) built by cargo next to the test executable.
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

/// Polls `f` every 50 ms until it returns true or `timeout` passes. Returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Whether a process with this pid exists (and is not a zombie we own).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as i32, 0) };
    if r != 0 {
        return false;
    }
    // A zombie still answers kill(0): look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
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
    /// namespaces they create, with their own arguments).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--no-discovery".into(),
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

/// A running `p2pd` process. Dropping it kills the process (SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Daemon {
    /// Its directories.
    pub dirs: DaemonDirs,
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
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
        };
        d.wait_ready()
            .unwrap_or_else(|e| panic!("{e:#}\n--- p2pd stderr ---\n{}", d.stderr()));
        d
    }

    /// Waits until `p2pctl status` succeeds, or fails if the process exits first.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("p2pd exited during start-up with {status}");
                }
            }
            if self.dirs.socket.exists() && self.ctl(&["status", "--json"]).status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("p2pd did not answer within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `p2pctl --socket <ours> ARGS…` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.dirs.socket, args)
    }

    /// `p2pctl status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.dirs.log_file).unwrap_or_default()
    }

    /// Sends `sig` and waits up to `timeout` for the process to exit; returns its status.
    pub fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        signal(self.pid, sig);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and hands back its directories, e.g. to restart on them.
    pub fn into_dirs(mut self) -> DaemonDirs {
        self.kill();
        std::mem::take(&mut self.dirs)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `p2pd` on `dirs` with `opts` without waiting for it; stderr goes to `dirs.log_file`.
///
/// # Errors
/// If the config file cannot be written or the process cannot be spawned.
pub fn spawn_p2pd(dirs: &DaemonDirs, opts: &DaemonOptions) -> Result<Child> {
    let mut args = dirs.args();
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
pub fn run_p2pd(args: &[&str], timeout: Duration) -> Output {
    run_with_timeout(
        Command::new(bin("p2pd"))
            .args(args)
            .env_remove("P2PD_SOCKET"),
        timeout,
    )
}

/// Runs `p2pctl --socket SOCKET ARGS…` with a time limit.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("p2pctl"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1");
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

/// Runs a command, killing it if it takes longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            signal(pid, libc::SIGKILL);
            let s = child.wait().expect("wait");
            panic!("command timed out after {timeout:?}: {cmd:?} ({s})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Kills (SIGKILL) and reaps a spawned child when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills (SIGKILL) a process that is not our child (e.g. a detached daemon) when dropped.
#[derive(Debug)]
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, libc::SIGKILL);
        }
    }
}

pub mod inprocess;
pub mod netns;
pub mod proxy;

/// Helpers for transfer tests over the control API.
pub mod api {
    use std::path::Path;
    use std::time::Duration;

    use p2p_proto::control::v1 as pb;
    use p2p_proto::control::v1::control_service_client::ControlServiceClient;
    use sha2::{Digest, Sha256};
    use tokio_stream::StreamExt;
    use tonic::transport::Channel;

    use crate::Daemon;

    /// A control client for `d` (connected within 5 s).
    pub async fn client(d: &Daemon) -> ControlServiceClient<Channel> {
        let ch = tokio::time::timeout(
            Duration::from_secs(5),
            p2p_proto::uds::connect(&d.dirs.socket),
        )
        .await
        .expect("control connect timed out")
        .expect("connect to control socket");
        ControlServiceClient::new(ch)
    }

    /// The same as [`client`], under the name the wire-level tests use.
    pub async fn control(d: &Daemon) -> ControlServiceClient<Channel> {
        client(d).await
    }

    /// `GetStatus` of `d` over gRPC.
    pub async fn status(d: &Daemon) -> pb::GetStatusResponse {
        client(d)
            .await
            .get_status(pb::GetStatusRequest {})
            .await
            .expect("GetStatus")
            .into_inner()
    }

    /// The peer listen address of `d`.
    pub fn peer_addr(d: &Daemon) -> String {
        d.status()["listen_address"]
            .as_str()
            .expect("listen_address")
            .to_owned()
    }

    /// Starts a send and returns its id (panics on an RPC error).
    pub async fn send(
        from: &Daemon,
        paths: &[&Path],
        to: &str,
        options: Option<pb::SendOptions>,
    ) -> String {
        try_send(from, paths, to, options)
            .await
            .expect("Send RPC")
            .transfer_id
    }

    /// Starts a send and returns the RPC result.
    pub async fn try_send(
        from: &Daemon,
        paths: &[&Path],
        to: &str,
        options: Option<pb::SendOptions>,
    ) -> Result<pb::SendResponse, tonic::Status> {
        let req = pb::SendRequest {
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            peer: to.to_owned(),
            options,
        };
        client(from)
            .await
            .send(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits (at most `timeout`) until transfer `id` on `d` ends; returns its final record.
    pub async fn wait_done(d: &Daemon, id: &str, timeout: Duration) -> pb::Transfer {
        let mut c = client(d).await;
        let req = pb::WatchTransfersRequest {
            ids: vec![id.to_owned()],
            until_done: true,
        };
        let fut = async {
            let mut stream = c
                .watch_transfers(req)
                .await
                .expect("WatchTransfers")
                .into_inner();
            let mut last = None;
            while let Some(ev) = stream.next().await {
                last = ev.expect("event").transfer;
            }
            last.expect("at least one event")
        };
        let t = tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| panic!("transfer {id} did not end within {timeout:?}"));
        assert!(is_final(&t), "stream ended before the transfer did: {t:?}");
        t
    }

    /// Waits until `pred` holds for transfer `id` (polling GetTransfer), at most `timeout`.
    pub async fn wait_for(
        d: &Daemon,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&pb::Transfer) -> bool,
    ) -> pb::Transfer {
        let mut c = client(d).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(t) = c
                .get_transfer(pb::GetTransferRequest { id: id.to_owned() })
                .await
            {
                let t = t.into_inner();
                if pred(&t) {
                    return t;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition on transfer {id} not reached within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until transfer `id` on `d` is in `want` (or has ended), at most `timeout`, and
    /// checks it is `want`.
    pub async fn wait_state(
        d: &Daemon,
        id: &str,
        want: pb::TransferState,
        timeout: Duration,
    ) -> pb::Transfer {
        let t = wait_for(d, id, timeout, |t| state(t) == want || is_final(t)).await;
        assert_eq!(state(&t), want, "{t:?}\n--- daemon ---\n{}", d.stderr());
        t
    }

    /// Checks that a transfer completed; on failure shows both daemons' logs.
    pub fn assert_completed(t: &pb::Transfer, a: &Daemon, b: &Daemon) {
        assert_eq!(
            state(t),
            pb::TransferState::Completed,
            "{t:?}\n--- A ---\n{}\n--- B ---\n{}",
            a.stderr(),
            b.stderr()
        );
    }

    /// Checks that a transfer completed; on failure shows its state and error.
    pub fn expect_completed(t: &pb::Transfer) {
        assert_eq!(
            state(t),
            pb::TransferState::Completed,
            "transfer ended {:?}: {}",
            state(t),
            t.error
        );
    }

    /// Waits (at most `timeout`) until no temporary part file is left under `dir`.
    pub async fn wait_no_part_files(dir: &Path, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !part_files(dir).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "temporary files left: {:?}",
                part_files(dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The incoming offers waiting on `d`.
    pub async fn incoming(d: &Daemon) -> Vec<pb::IncomingOffer> {
        client(d)
            .await
            .list_incoming(pb::ListIncomingRequest {})
            .await
            .expect("ListIncoming")
            .into_inner()
            .offers
    }

    /// Waits until an incoming offer is listed on `d`, returns it.
    pub async fn wait_offer(d: &Daemon, timeout: Duration) -> pb::IncomingOffer {
        let mut c = client(d).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let offers = c
                .list_incoming(pb::ListIncomingRequest {})
                .await
                .expect("ListIncoming")
                .into_inner()
                .offers;
            if let Some(o) = offers.into_iter().next() {
                return o;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no offer within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes `a` and `b` trust each other (so `--accept auto` applies between them).
    pub async fn trust_each_other(a: &Daemon, b: &Daemon) {
        let (ia, ib) = (device_id(a), device_id(b));
        for (d, other) in [(a, ib), (b, ia)] {
            client(d)
                .await
                .trust_device(pb::TrustDeviceRequest {
                    id: other,
                    ..Default::default()
                })
                .await
                .expect("TrustDevice");
        }
    }

    /// The same, from synchronous code (not inside a runtime).
    pub fn trust_each_other_blocking(a: &Daemon, b: &Daemon) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(trust_each_other(a, b));
    }

    /// The device id of `d`.
    pub fn device_id(d: &Daemon) -> String {
        d.status()["device_id"]
            .as_str()
            .expect("device_id")
            .to_owned()
    }

    /// Whether a transfer has ended.
    pub fn is_final(t: &pb::Transfer) -> bool {
        matches!(
            pb::TransferState::try_from(t.state),
            Ok(pb::TransferState::Completed
                | pb::TransferState::Failed
                | pb::TransferState::Cancelled
                | pb::TransferState::Rejected)
        )
    }

    /// The state of a transfer as an enum.
    pub fn state(t: &pb::Transfer) -> pb::TransferState {
        pb::TransferState::try_from(t.state).unwrap_or(pb::TransferState::Unspecified)
    }

    /// SHA-256 of a file, hex.
    pub fn sha256_file(p: &Path) -> String {
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        std::io::copy(&mut f, &mut h).expect("read");
        format!("{:x}", h.finalize())
    }

    /// Writes `size` pseudo-random (incompressible) bytes, deterministic per `seed`.
    pub fn random_file(p: &Path, size: usize, seed: u64) {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            buf.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        buf.truncate(size);
        std::fs::write(p, buf).expect("write random file");
    }

    /// Files under `dir` whose name marks a temporary part file.
    pub fn part_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(".p2pd-part") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Default send timeout for tests.
    pub const T: Duration = Duration::from_secs(60);
    /// A short wait.
    pub const SHORT: Duration = Duration::from_secs(10);
}
