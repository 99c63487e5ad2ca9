//! Where the daemon's control socket is: `--socket`, else `P2PD_SOCKET`, else the default in the
//! user's runtime directory; and whether a path fits in a `sockaddr_un` at all.
//!
//! The daemon binds the socket with the same rules ([`default_socket_path`],
//! [`check_socket_path`]), so a client and a daemon started by the same user meet without
//! configuration.

use std::path::{Path, PathBuf};

use directories::BaseDirs;

/// Name of the socket file inside the runtime directory.
pub const SOCKET_FILE: &str = "p2pd.sock";

/// The environment variable that names the control socket, for the daemon and its clients.
pub const SOCKET_ENV: &str = "P2PD_SOCKET";

/// Longest socket path the platform accepts (`sun_path` minus the terminating NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest socket path the platform accepts (`sun_path` minus the terminating NUL).
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// A socket path the kernel cannot bind or connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket path {path} is {len} bytes long; the limit is {MAX_SOCKET_PATH}")]
pub struct SocketPathTooLong {
    /// The offending path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
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

/// The socket a client uses: `flag` (a `--socket` option) if given, else [`SOCKET_ENV`] if set
/// and not empty, else [`default_socket_path`].
///
/// A command line parser that already reads [`SOCKET_ENV`] into its flag (clap's `env`) gets
/// the same answer.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_socket_path)
}

/// Checks that `path` fits in a `sockaddr_un`.
///
/// # Errors
/// [`SocketPathTooLong`] naming the path.
pub fn check_socket_path(path: &Path) -> Result<(), SocketPathTooLong> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
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
        assert_eq!(
            err.to_string(),
            format!(
                "socket path {} is 205 bytes long; the limit is {MAX_SOCKET_PATH}",
                long.display()
            )
        );
        let longest = PathBuf::from(format!("/{}", "x".repeat(MAX_SOCKET_PATH - 1)));
        assert!(check_socket_path(&longest).is_ok());
    }

    #[test]
    fn default_socket_ends_with_the_socket_file() {
        assert!(
            default_socket_path().ends_with("p2pd/p2pd.sock")
                || default_socket_path().ends_with(SOCKET_FILE)
        );
    }

    #[test]
    fn a_flag_wins_over_everything() {
        let flag = Path::new("/somewhere/else.sock");
        assert_eq!(socket_path(Some(flag)), flag);
    }
}
