//! Running `p2pctl` as a user would, and reading what it printed: [`ctl`] against any socket,
//! [`Daemon::ctl`] and [`Daemon::status`] against a started daemon, and the text helpers
//! tests use on the output.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::daemon::{Daemon, bin};
use crate::process::run_with_timeout;

/// How long one `p2pctl` command may run.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `p2pctl --socket SOCKET ARGS…` with a time limit ([`CTL_TIMEOUT`]). Callable from
/// async tests too (it runs as [`blocking`](crate::process::blocking) work there).
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("p2pctl"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1");
    run_with_timeout(&mut cmd, CTL_TIMEOUT)
}

impl Daemon {
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
}

/// Bytes a command printed, as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command's exit status, stdout and stderr, for a failure message.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Newline-delimited JSON (`--json` of a streaming command), one value per line.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    text(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}
