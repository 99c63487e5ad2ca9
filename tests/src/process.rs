//! Processes and waiting: finding a program, running a command with a time limit, signals
//! and liveness by PID, guards that kill what a test started, bounded polling, and the
//! crossings between blocking and async test code.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns true or `timeout` passes. Returns whether it did.
///
/// Safe to call from async tests too: on a multi-thread runtime it runs as [`blocking`] work.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    blocking(|| {
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
    })
}

/// Runs blocking work (a child process, a sleep, a poll loop) from wherever the test is: on a
/// worker of a multi-thread tokio runtime through `block_in_place`, so the runtime's other tasks
/// move on meanwhile; elsewhere (plain threads, `spawn_blocking`, a current-thread runtime)
/// directly.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Runs a future to completion from synchronous test code (not inside a runtime), on a
/// current-thread runtime of its own.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Looks a program up in `$PATH` (plus the usual system directories).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
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

/// Runs a command, killing it if it takes longer than `timeout`; stdout and stderr are
/// captured, stdin is empty.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    blocking(|| {
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
    })
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
