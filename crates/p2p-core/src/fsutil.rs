//! Filesystem helpers shared by the engine and the daemon: atomic writes, private directories
//! and the open-file limit.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. The file gets `mode`.
///
/// # Errors
/// Any I/O error of the steps above; on error `path` is left as it was.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and its parents) if missing, with mode 0700 for the last component, and checks
/// that it belongs to the current user. An existing directory of ours is tightened to 0700.
///
/// # Errors
/// I/O errors, or `PermissionDenied` if the directory belongs to another user — a directory
/// someone else controls could be used to intercept the socket or state.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user (uid {euid})",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (at most 2^20; 10240 on macOS), as a daemon that keeps
/// many files open at once should: a receiving transfer holds one descriptor per file until it
/// is synced and in place (up to a window of chunks plus 256 small files), and the common soft
/// limit of 1024 would be reached by a few concurrent transfers. Returns the limit now in force
/// (`None`: unlimited).
///
/// # Errors
/// When the limit cannot be changed; the old one stays.
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // macOS refuses a soft limit above kern.maxfilesperproc (EINVAL) and reports the hard
    // limit as unlimited; 10240 is OPEN_MAX there (Go's choice too).
    const MOST: u64 = if cfg!(target_os = "macos") {
        10_240
    } else {
        1 << 20
    };
    let now = getrlimit(Resource::Nofile);
    let wanted = now.maximum.map_or(MOST, |m| m.min(MOST));
    if now.current.is_none_or(|c| c >= wanted) {
        return Ok(now.current);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: now.maximum,
        },
    )?;
    Ok(Some(wanted))
}

/// File system kinds the engine tells apart, as `statfs(2)` reports them (`f_type`).
pub(crate) mod fs_kind {
    /// ext2, ext3 and ext4.
    pub(crate) const EXT4: u64 = 0xEF53;
    pub(crate) const XFS: u64 = 0x5846_5342;
    pub(crate) const BTRFS: u64 = 0x9123_683E;
    pub(crate) const F2FS: u64 = 0xF2F5_2010;
    pub(crate) const TMPFS: u64 = 0x0102_1994;
}

/// The kind of file system `file` is on (see `fs_kind`); `None` where the platform does not
/// say or `statfs` fails.
pub(crate) fn fs_kind_of(file: &fs::File) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // `f_type` is signed on some targets; the magic numbers fit in 32 bits.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::fstatfs(file)
            .ok()
            .map(|s| s.f_type as u64 & 0xFFFF_FFFF)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = file;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        let now = raise_open_file_limit().unwrap();
        assert_eq!(now, getrlimit(Resource::Nofile).current);
        if let (Some(now), Some(hard)) = (now, hard) {
            assert_eq!(
                now,
                hard.min(if cfg!(target_os = "macos") {
                    10_240
                } else {
                    1 << 20
                })
            );
        }
    }

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        ensure_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn private_dir_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        assert!(ensure_private_dir(&p).is_err());
    }
}
