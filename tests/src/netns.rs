//! Network namespaces for tests that need a network of their own (they run as root, with
//! iproute2): running `ip`, and a guard that kills whatever is left in its namespaces and
//! deletes them.

use std::process::{Command, Output, Stdio};

use crate::signal;

/// Runs `ip ARGS…`; the error carries the command and its stderr.
///
/// # Errors
/// The command could not run or failed.
pub fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces created by a test. Dropping the guard kills every process left in them (by
/// pid) and deletes them.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` (with its loopback up) and adds it to the guard.
    ///
    /// # Errors
    /// `ip` failed (not root, no iproute2, name taken).
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Adds an already created namespace to the guard.
    pub fn adopt(&mut self, name: &str) {
        self.names.push(name.to_owned());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            if let Ok(out) = ip(&["netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        for ns in &self.names {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
