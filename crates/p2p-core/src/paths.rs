//! Default locations: control socket, state directory, download directory.
//!
//! Linux follows XDG through the `directories` crate. Overrides (`--socket`, `P2PD_SOCKET`,
//! `--state-dir`, `--download-dir`, config keys) are applied by the binaries; this module only
//! answers "where, if nobody said otherwise".

use std::path::{Path, PathBuf};

use directories::{BaseDirs, ProjectDirs, UserDirs};

/// Name of the socket file inside the runtime directory.
pub const SOCKET_FILE: &str = "p2pd.sock";

/// Longest socket path the platform accepts (`sun_path` minus the terminating NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest socket path the platform accepts (`sun_path` minus the terminating NUL).
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

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
    /// A socket path the kernel cannot bind.
    #[error("socket path {path} is {len} bytes long; the limit is {MAX_SOCKET_PATH}")]
    SocketPathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The default control socket: `$XDG_RUNTIME_DIR/p2pd/p2pd.sock`; for root without a runtime dir
/// `/run/p2pd/p2pd.sock` (the system service); otherwise `/tmp/p2pd-$UID/p2pd.sock` (the directory
/// is created 0700 and its owner is checked before use).
pub fn default_socket_path() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| BaseDirs::new().and_then(|b| b.runtime_dir().map(Path::to_path_buf)));
    match runtime {
        Some(dir) => dir.join("p2pd").join(SOCKET_FILE),
        None if euid() == 0 => PathBuf::from("/run/p2pd").join(SOCKET_FILE),
        None => PathBuf::from(format!("/tmp/p2pd-{}", euid())).join(SOCKET_FILE),
    }
}

/// Checks that `path` fits in a `sockaddr_un`.
///
/// # Errors
/// [`PathError::SocketPathTooLong`] naming the path.
pub fn check_socket_path(path: &Path) -> Result<(), PathError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PathError::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_length_is_checked() {
        assert!(check_socket_path(Path::new("/tmp/p2pd.sock")).is_ok());
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        let err = check_socket_path(&long).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn default_socket_ends_with_the_socket_file() {
        assert!(
            default_socket_path().ends_with("p2pd/p2pd.sock")
                || default_socket_path().ends_with(SOCKET_FILE)
        );
    }
}
