//! The control socket: where it is, who may reach it, and what to do with a leftover one.
//!
//! The socket is bound before the daemon forks (`--daemon`) so that "already running" and
//! permission errors reach the user's terminal. Under socket activation (`LISTEN_FDS`) systemd
//! owns the socket: p2pd serves on it and leaves the file alone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Errors of opening the control socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// Another daemon answers on the socket.
    #[error(
        "another p2pd is already running on {0} (stop it with `p2pctl --socket {0} shutdown`, or pick another --socket)"
    )]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// The socket's directory belongs to someone else.
    #[error("socket directory {dir} belongs to uid {owner}, not to this user")]
    ForeignDir { dir: PathBuf, owner: u32 },
    /// An I/O step failed.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The bound (or inherited) control socket.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
    /// Device and inode of the file we bound, so that shutdown removes only our own socket;
    /// `None` for an inherited socket, which belongs to systemd.
    owned: Option<(u64, u64)>,
}

impl ControlSocket {
    /// Takes the socket systemd passed (`LISTEN_FDS`), if any, else binds `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, SocketError> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() > 0 {
            let listener = fds
                .take_unix_listener(0)
                .map_err(|source| SocketError::Io {
                    what: "cannot use the socket passed by the service manager for",
                    path: path.to_path_buf(),
                    source,
                })?;
            if let Some(listener) = listener {
                tracing::info!(socket = %path.display(), "serving on the socket passed by the service manager");
                return Ok(ControlSocket {
                    listener,
                    path: path.to_path_buf(),
                    owned: None,
                });
            }
        }
        Self::bind(path)
    }

    fn bind(path: &Path) -> Result<Self, SocketError> {
        let io_err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| SocketError::Io { what, path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_dir(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::AlreadyRunning(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing stale socket");
                    std::fs::remove_file(path).map_err(io_err("cannot remove stale socket"))?;
                }
                Err(e) => return Err(io_err("cannot probe existing socket")(e)),
            },
            Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot inspect")(e)),
        }
        // The umask makes the socket 0600 from the moment it exists; the chmod below is a second
        // guard for file systems that ignore it.
        // SAFETY: umask only swaps the process mask; we restore it right after the bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_err("cannot bind control socket"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot set permissions of"))?;
        let meta = std::fs::metadata(path).map_err(io_err("cannot inspect"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            owned: Some((meta.dev(), meta.ino())),
        })
    }

    /// Removes the socket file if it is still the one this process bound.
    pub(crate) fn remove(&self) {
        let Some((dev, ino)) = self.owned else { return };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == dev && m.ino() == ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), cause = %e, "cannot remove socket");
                }
            }
            _ => {}
        }
    }
}

/// Creates the socket directory 0700 if missing; an existing one must belong to us or root.
fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    let io_err = |what: &'static str| {
        let path = dir.to_path_buf();
        move |source| SocketError::Io { what, path, source }
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create socket directory"))?;
        return Ok(());
    }
    let meta = std::fs::metadata(dir).map_err(io_err("cannot inspect socket directory"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(SocketError::ForeignDir {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_in_a_new_0700_dir_and_replaces_a_stale_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/p2pd.sock");
        let s = ControlSocket::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(SocketError::AlreadyRunning(_))
        ));
        drop(s); // listener closed, file left behind: stale
        let s2 = ControlSocket::bind(&path).unwrap();
        s2.remove();
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p2pd.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(SocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
