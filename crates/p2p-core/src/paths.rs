//! Default locations of what the daemon keeps: state directory, config file, download
//! directory. (The control socket's location is a client's concern too: `p2p_client::paths`.)
//!
//! Linux follows XDG through the `directories` crate. Overrides (`--state-dir`,
//! `--download-dir`, config keys) are applied by the binaries; this module only answers "where, if nobody said otherwise".

use std::path::{Path, PathBuf};

use directories::{ProjectDirs, UserDirs};

/// Errors of path resolution.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// No home directory could be found to derive a default from.
    #[error("cannot determine a default {what}: no home directory; pass {flag}")]
    NoDefault {
        /// What was looked for.
        what: &'static str,
        /// The flag that sets it.
        flag: &'static str,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The default state directory: `$XDG_STATE_HOME/p2pd` (else the data-local dir); for root
/// without a home, `/var/lib/p2pd`.
///
/// # Errors
/// [`PathError::NoDefault`] when no home directory is known.
pub fn default_state_dir() -> Result<PathBuf, PathError> {
    if let Some(p) = ProjectDirs::from("", "", "p2pd") {
        return Ok(p
            .state_dir()
            .unwrap_or_else(|| p.data_local_dir())
            .to_path_buf());
    }
    if euid() == 0 {
        return Ok(PathBuf::from("/var/lib/p2pd"));
    }
    Err(PathError::NoDefault {
        what: "state directory",
        flag: "--state-dir",
    })
}

/// The default config file: `$XDG_CONFIG_HOME/p2pd/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    ProjectDirs::from("", "", "p2pd").map(|p| p.config_dir().join("config.toml"))
}

/// The default download directory: the user's download dir (or `~/Downloads`) plus `p2p/`; for
/// a user without a home, `p2p-downloads` inside `state_dir`.
pub fn default_download_dir(state_dir: &Path) -> PathBuf {
    if let Some(u) = UserDirs::new() {
        let base = u
            .download_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| u.home_dir().join("Downloads"));
        return base.join("p2p");
    }
    state_dir.join("p2p-downloads")
}
