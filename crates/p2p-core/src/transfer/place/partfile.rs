//! The receiver's temporary ("part") files and how they reach their final names.
//!
//! A file that may be continued after a break is written under a hidden name beside its final
//! place (`.<transfer-id>-<n>.p2pd-part`), which a resume finds again. A file of a single chunk
//! can never be continued — a partial chunk is never recorded — so on Linux it is written to an
//! unnamed file (`O_TMPFILE`) in its final directory instead: no name to create, link and
//! unlink again, which for a folder of many small files was most of the receiver's time (three
//! directory updates per file, each holding the directory's lock against the next file's
//! create). A crash drops an unnamed file by itself; nothing is left to clean up.
//!
//! Both kinds reach the final name by a hard link, which never replaces an existing name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::PlaceError;

/// A file being received, from its first byte until it is in place (or removed).
pub(crate) struct PartFile {
    /// Shared with the syncer, which syncs it for checkpoints and placement.
    pub(crate) file: Arc<File>,
    /// The hidden name a resume continues from; `None` for an unnamed file.
    pub(crate) name: Option<PathBuf>,
    /// What messages call it: the hidden name, or the final path for an unnamed file.
    pub(crate) shown: PathBuf,
    /// Writes bypass the page cache (`O_DIRECT`), see `bypass_cache`.
    direct: bool,
}

impl PartFile {
    /// Creates the hidden file `name`, failing if anything (a symlink included) sits there.
    ///
    /// # Errors
    /// [`PlaceError::CreateTemp`].
    pub(crate) fn create_named(name: PathBuf) -> Result<Self, PlaceError> {
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&name)
        {
            Ok(file) => file,
            Err(source) => return Err(PlaceError::CreateTemp { path: name, source }),
        };
        Ok(Self {
            file: Arc::new(file),
            shown: name.clone(),
            name: Some(name),
            direct: false,
        })
    }

    /// An unnamed file in the directory of `final_path`, where the file system and the
    /// kernel offer one (and `/proc` is there to link it by); `None` otherwise.
    pub(crate) fn create_unnamed(final_path: &Path) -> Option<Self> {
        let dir = final_path.parent()?;
        let file = open_unnamed(dir)?;
        Some(Self {
            file: Arc::new(file),
            name: None,
            shown: final_path.to_path_buf(),
            direct: false,
        })
    }

    /// Reopens the kept hidden file `name` to continue after its first `keep` bytes: it must
    /// be a regular file of ours with no other name, holding at least those bytes; it is cut
    /// back to them and they are hashed again. Returns it with that hash; `None` if anything
    /// does not check out.
    pub(crate) fn reopen(name: &Path, keep: u64) -> Option<(Self, Sha256)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(name)
            .ok()?;
        let meta = file.metadata().ok()?;
        // Ours, a plain file with no other name, holding at least the recorded bytes.
        if !meta.file_type().is_file()
            || meta.nlink() != 1
            || meta.uid() != rustix::process::geteuid().as_raw()
            || meta.len() < keep
        {
            return None;
        }
        file.set_len(keep).ok()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = keep;
        while left > 0 {
            let n = (left.min(buf.len() as u64)) as usize;
            file.read_exact(&mut buf[..n]).ok()?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let part = Self {
            file: Arc::new(file),
            name: Some(name.to_path_buf()),
            shown: name.to_path_buf(),
            direct: false,
        };
        Some((part, hasher))
    }

    /// Lets the file's writes bypass the page cache (`O_DIRECT`) where its file system is one
    /// known to do that well (ext4, XFS). A large file received then neither pushes the
    /// user's working set out of memory nor costs a copy into the page cache and its
    /// write-back — on this project's 2-core test machine the receiver's largest cost after
    /// SHA-256. Network and other file systems keep the page cache: a direct write there may
    /// wait for a round trip each, or not be direct at all.
    pub(crate) fn bypass_cache(&mut self) {
        use crate::fsutil::fs_kind::{EXT4, XFS};
        if matches!(crate::fsutil::fs_kind_of(&self.file), Some(EXT4 | XFS)) {
            self.direct = set_direct(&self.file, true).is_ok();
        }
    }

    /// Writes all of `data` at `offset`. While the file bypasses the page cache and `data`
    /// and `offset` are whole blocks, `data` is copied into `aligned` (a direct write needs
    /// an aligned buffer) and written from there; otherwise — a file's short last chunk, or a
    /// device that refuses — through the page cache, for good from then on. A write is
    /// positioned, so a direct one refused halfway is simply written again.
    pub(crate) fn write_at(
        &mut self,
        data: &[u8],
        offset: u64,
        aligned: &mut AlignedBuf,
    ) -> io::Result<()> {
        if self.direct && data.len() % DIRECT_ALIGN == 0 && offset % DIRECT_ALIGN as u64 == 0 {
            match self.file.write_all_at(aligned.copy_of(data), offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                done => return done,
            }
        }
        if self.direct {
            self.direct = false;
            set_direct(&self.file, false)?;
        }
        self.file.write_all_at(data, offset)
    }

    /// Removes the file: its hidden name goes; an unnamed one vanishes with its last handle.
    pub(crate) fn remove(self) {
        drop(self.file);
        if let Some(name) = self.name {
            let _ = fs::remove_file(name);
        }
    }

    /// Gives the file the name `to`; fails with `AlreadyExists` if `to` exists.
    ///
    /// `adopt_equal` is for a file received again after a crash that may have come between
    /// linking an unnamed file and recording it: a name that already holds this very file —
    /// see `earlier_link_of` — is taken as that earlier link. (A hidden file needs no such
    /// guess: `resume` recognises it by inode.)
    pub(crate) fn link(&self, to: &Path, adopt_equal: bool) -> io::Result<()> {
        let linked = match &self.name {
            Some(name) => fs::hard_link(name, to),
            None => link_unnamed(&self.file, to).inspect_err(|e| {
                if proc_refused(&self.file, e) {
                    unnamed_failed(e);
                }
            }),
        };
        match linked {
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && adopt_equal
                    && self.name.is_none()
                    && earlier_link_of(&self.file, to) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Links the file under `wanted`, or `wanted (1)`, … (`candidates`) — the first name that
    /// is free. Returns the name it got.
    pub(crate) fn link_free_name(
        &self,
        candidates: impl Iterator<Item = PathBuf>,
        adopt_equal: bool,
    ) -> io::Result<PathBuf> {
        for candidate in candidates {
            match self.link(&candidate, adopt_equal) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name"))
    }
}

/// Turns `O_DIRECT` on or off for `file` (Linux only; elsewhere it cannot be turned on).
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        let flags = fcntl_getfl(file)?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        fcntl_setfl(file, flags)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        if on {
            Err(io::ErrorKind::Unsupported.into())
        } else {
            Ok(())
        }
    }
}

/// Alignment of direct writes (buffer address, length and file offset): the largest logical
/// block size of common devices.
const DIRECT_ALIGN: usize = 4096;

/// A buffer for direct writes, aligned to `DIRECT_ALIGN`, kept across chunks.
#[derive(Default)]
pub(crate) struct AlignedBuf(Vec<u8>);

impl AlignedBuf {
    /// A copy of `data` at an aligned address, valid until the next call.
    fn copy_of(&mut self, data: &[u8]) -> &[u8] {
        if self.0.len() < data.len() + DIRECT_ALIGN {
            self.0.resize(data.len() + DIRECT_ALIGN, 0);
        }
        let at = self.0.as_ptr().align_offset(DIRECT_ALIGN);
        let block = &mut self.0[at..at + data.len()];
        block.copy_from_slice(data);
        block
    }
}

/// Whether `path` is, as far as can be told, an earlier link of `file` (an unnamed file
/// whose mode and modification time are set, as `verify` sets them before linking): a regular
/// file (a symlink is not followed), ours, with no other name, of the same mode, modification
/// time (to the nanosecond) and bytes. Only ever asked for files of one chunk.
fn earlier_link_of(file: &File, path: &Path) -> bool {
    let (Ok(mine), Ok(theirs)) = (file.metadata(), fs::symlink_metadata(path)) else {
        return false;
    };
    let ours = theirs.file_type().is_file()
        && theirs.nlink() == 1
        && theirs.uid() == mine.uid()
        && theirs.len() == mine.len()
        && theirs.mode() & 0o7777 == mine.mode() & 0o7777
        && (theirs.mtime(), theirs.mtime_nsec()) == (mine.mtime(), mine.mtime_nsec());
    if !ours {
        return false;
    }
    let Ok(mut other) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return false;
    };
    // Still the file looked at above.
    if !other
        .metadata()
        .is_ok_and(|m| (m.dev(), m.ino()) == (theirs.dev(), theirs.ino()))
    {
        return false;
    }
    let mut a = vec![0u8; 64 << 10];
    let mut b = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    while offset < mine.len() {
        let n = (mine.len() - offset).min(a.len() as u64) as usize;
        if file.read_exact_at(&mut a[..n], offset).is_err()
            || other.read_exact(&mut b[..n]).is_err()
        {
            return false;
        }
        if a[..n] != b[..n] {
            return false;
        }
        offset += n as u64;
    }
    true
}

#[cfg(target_os = "linux")]
fn open_unnamed(dir: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    if !proc_fd_links() || UNNAMED_FAILED.load(Ordering::Relaxed) {
        return None;
    }
    // Fails on file systems without O_TMPFILE (EOPNOTSUPP) and kernels before 3.11; the
    // caller then writes a named file. The directory is reached as the named file's would be
    // (the destination may well be a symlink to another disk).
    rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()
    .map(File::from)
}

#[cfg(not(target_os = "linux"))]
fn open_unnamed(_dir: &Path) -> Option<File> {
    None
}

/// Links an unnamed file by its `/proc/self/fd` entry: `linkat(AT_EMPTY_PATH)` would need
/// CAP_DAC_READ_SEARCH, this needs nothing.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        from.as_str(),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_file: &File, _to: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Set when linking an unnamed file failed because of `/proc` (not for a taken name, a full
/// disk, a removed directory and the like): from then on files get named temporary files,
/// which need no `/proc`.
static UNNAMED_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether a failed link of an unnamed file is `/proc`'s doing: its entry for the file is not
/// there, or linking through it is refused (EPERM; EXDEV: the magic link was not followed).
fn proc_refused(file: &File, e: &io::Error) -> bool {
    use std::os::fd::AsRawFd;
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EXDEV))
        || fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd())).is_err()
}

fn unnamed_failed(e: &io::Error) {
    if !UNNAMED_FAILED.swap(true, Ordering::Relaxed) {
        tracing::warn!(cause = %e, "cannot link an unnamed temporary file; using named temporary files from now on");
    }
}

/// Whether `/proc/self/fd` is there to link unnamed files by (a chroot or container may
/// lack `/proc`).
#[cfg(target_os = "linux")]
fn proc_fd_links() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// What `verify` gives a received file before it is linked.
    pub(crate) fn set_received_metadata(file: &File) {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 42))
            .unwrap();
    }

    /// A file at `path` as an earlier link of a received file would look.
    pub(crate) fn plant(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        set_received_metadata(&File::options().write(true).open(path).unwrap());
    }

    fn unnamed_with(dir: &Path, name: &str, bytes: &[u8]) -> Option<PartFile> {
        let part = PartFile::create_unnamed(&dir.join(name))?;
        (&*part.file).write_all(bytes).unwrap();
        set_received_metadata(&part.file);
        Some(part)
    }

    #[test]
    fn an_unnamed_file_appears_only_when_linked() {
        let dir = tempfile::tempdir().unwrap();
        let Some(part) = unnamed_with(dir.path(), "a.txt", b"hello") else {
            eprintln!("no O_TMPFILE here; the named path covers this file system");
            return;
        };
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        part.link(&dir.path().join("a.txt"), false).unwrap();
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"hello");
        part.remove();
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"hello");
    }

    #[test]
    fn a_link_never_replaces_and_adopts_only_its_own_earlier_link() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("a.txt");
        plant(&to, b"other");
        let Some(part) = unnamed_with(dir.path(), "a.txt", b"hello") else {
            return;
        };
        let e = part.link(&to, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = part.link(&to, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "different bytes");
        assert_eq!(fs::read(&to).unwrap(), b"other");
        // Same bytes, but not what a received file looks like: another modification time,
        // another mode, a second name.
        fs::write(&to, b"hello").unwrap();
        assert!(part.link(&to, true).is_err(), "modification time differs");
        plant(&to, b"hello");
        fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(part.link(&to, true).is_err(), "mode differs");
        plant(&to, b"hello");
        fs::hard_link(&to, dir.path().join("second")).unwrap();
        assert!(part.link(&to, true).is_err(), "a file with another name");
        fs::remove_file(dir.path().join("second")).unwrap();
        part.link(&to, true).unwrap();
        // A symlink to such a file is not adopted.
        fs::remove_file(&to).unwrap();
        plant(&dir.path().join("real"), b"hello");
        std::os::unix::fs::symlink(dir.path().join("real"), &to).unwrap();
        assert!(part.link(&to, true).is_err());
        assert!(fs::symlink_metadata(&to).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_free_name_is_found_beside_taken_ones() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"x").unwrap();
        let Some(part) = unnamed_with(dir.path(), "a", b"y") else {
            return;
        };
        let names = ["a", "a (1)", "a (2)"].map(|n| dir.path().join(n));
        let got = part.link_free_name(names.into_iter(), false).unwrap();
        assert_eq!(got, dir.path().join("a (1)"));
        assert_eq!(fs::read(&got).unwrap(), b"y");
    }

    /// Whole blocks go past the page cache where the file system allows it; a short last
    /// chunk, an unaligned offset and a rewrite of a range all end with the right bytes.
    #[test]
    fn direct_writes_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut part = PartFile::create_named(dir.path().join(".d.p2pd-part")).unwrap();
        part.bypass_cache();
        #[cfg(target_os = "linux")]
        {
            use crate::fsutil::fs_kind::{EXT4, XFS};
            let kind = crate::fsutil::fs_kind_of(&part.file);
            let flags = rustix::fs::fcntl_getfl(&*part.file).unwrap();
            if matches!(kind, Some(EXT4 | XFS)) {
                assert!(part.direct, "ext4 and XFS take O_DIRECT");
                assert!(flags.contains(rustix::fs::OFlags::DIRECT));
            } else {
                assert_eq!(part.direct, flags.contains(rustix::fs::OFlags::DIRECT));
            }
        }
        let block = DIRECT_ALIGN;
        let data: Vec<u8> = (0..5 * block + 100).map(|i| (i * 7 % 251) as u8).collect();
        let mut aligned = AlignedBuf::default();
        // Two whole blocks, the same two again (a re-sent range), then three more.
        part.write_at(&data[..2 * block], 0, &mut aligned).unwrap();
        part.write_at(&data[..2 * block], 0, &mut aligned).unwrap();
        part.write_at(&data[2 * block..5 * block], 2 * block as u64, &mut aligned)
            .unwrap();
        let was_direct = part.direct;
        // The short tail turns the page cache on again, for good.
        part.write_at(&data[5 * block..], 5 * block as u64, &mut aligned)
            .unwrap();
        assert!(!part.direct);
        if was_direct {
            #[cfg(target_os = "linux")]
            assert!(
                !rustix::fs::fcntl_getfl(&*part.file)
                    .unwrap()
                    .contains(rustix::fs::OFlags::DIRECT)
            );
        }
        assert_eq!(fs::read(dir.path().join(".d.p2pd-part")).unwrap(), data);

        // An unaligned offset while direct is written through the page cache.
        let mut other = PartFile::create_named(dir.path().join(".e.p2pd-part")).unwrap();
        other.bypass_cache();
        other.write_at(&data[..block], 10, &mut aligned).unwrap();
        other.write_at(&data[..10], 0, &mut aligned).unwrap();
        let mut want = data[..10].to_vec();
        want.extend_from_slice(&data[..block]);
        assert_eq!(fs::read(dir.path().join(".e.p2pd-part")).unwrap(), want);
    }

    #[test]
    fn a_named_file_is_created_exclusively_and_removed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join(".x.p2pd-part");
        let part = PartFile::create_named(name.clone()).unwrap();
        assert!(PartFile::create_named(name.clone()).is_err());
        part.link(&dir.path().join("x"), false).unwrap();
        part.remove();
        assert!(!name.exists());
        assert!(dir.path().join("x").exists());
    }
}
