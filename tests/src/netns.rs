//! Network namespaces for tests that need a network of their own (they run as root, with
//! iproute2): running `ip`, a guard that kills whatever is left in its namespaces and deletes
//! them, and two networks built from them:
//!
//! - [`lan`]: a LAN — a bridge with `n` host namespaces — and daemons started in its hosts
//!   with LAN discovery on;
//! - [`link`]: two namespaces joined by the user-space relay `tun-delay` (delay, rate, random
//!   loss, stalls), a daemon at either end.

pub mod lan;
pub mod link;

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

pub use lan::{Lan, LanDaemon};
pub use link::{End, Link};

use crate::process::signal;

/// Runs `ip ARGS…`; the error carries the command and its stderr.
///
/// # Errors
/// The command could not run or failed.
pub fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
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
    pub fn add(&mut self, name: &str) -> Result<()> {
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
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}
