//! One file on its way to its place: the temporary file it is written to (opened fresh, or
//! reopened to continue after a break), and the check that lets it be placed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::Sha256;

use super::PlaceError;
use super::destination::{Destination, is_top_level};
use super::partfile::PartFile;

/// One file to be placed, as the place layer sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileSpec<'a> {
    /// Its path below the destination, `/`-separated, its first component a root.
    pub(crate) path: &'a str,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its permission bits (only `0o777` of them are applied).
    pub(crate) mode: u32,
    /// Its modification time.
    pub(crate) mtime: SystemTime,
}

/// A complete temporary file whose content checked out and whose metadata is set: ready to be
/// synced and linked in place.
pub(crate) struct Verified {
    /// The file's index in its transfer (what the [`Report`](super::placer::Report) hears).
    pub(crate) fi: usize,
    /// Its temporary file.
    pub(crate) part: PartFile,
    /// Its final path.
    pub(crate) to: PathBuf,
    /// A top-level file takes the first free name of `to`, `to (1)`, …; a file in a folder
    /// takes `to` or fails.
    pub(crate) free_name: bool,
}

impl Verified {
    /// File `fi`, at `spec.path` below `dest`, verified into `part`.
    pub(crate) fn new(fi: usize, part: PartFile, dest: &Destination, spec: &FileSpec<'_>) -> Self {
        Verified {
            fi,
            part,
            to: dest.path_of(spec.path),
            free_name: is_top_level(spec.path),
        }
    }
}

/// Whether a file of `size` bytes is written past the page cache where its file system allows
/// (see `PartFile::bypass_cache`): one of more than one chunk, of chunks of 1 MiB or more —
/// a direct write waits for the device before the next starts, which smaller chunks would
/// pay for on a device with some latency (a cloud volume).
pub(crate) fn bypasses_cache(size: u64, chunk_size: u32) -> bool {
    chunk_size >= 1 << 20 && size > u64::from(chunk_size)
}

/// Creates the temporary file of file `fi` of transfer `id`, written in chunks of
/// `chunk_size`. A file of one chunk gets an unnamed temporary file where possible (see
/// `partfile`): a resume could not continue it anyway. Any other gets its hidden name.
///
/// # Errors
/// [`PlaceError::NoParent`] or [`PlaceError::CreateTemp`].
pub(crate) fn open_temp(
    dest: &Destination,
    id: &str,
    fi: usize,
    spec: &FileSpec<'_>,
    chunk_size: u32,
) -> Result<PartFile, PlaceError> {
    if spec.size <= u64::from(chunk_size) {
        if let Some(part) = PartFile::create_unnamed(&dest.path_of(spec.path)) {
            return Ok(part);
        }
    }
    let name = dest
        .temp_path(id, fi, spec.path)
        .ok_or_else(|| PlaceError::NoParent {
            path: dest.path_of(spec.path),
        })?;
    let mut part = PartFile::create_named(name)?;
    if bypasses_cache(spec.size, chunk_size) {
        part.bypass_cache();
    }
    Ok(part)
}

/// Reopens a kept temporary file to continue after its first `keep` bytes (see
/// `PartFile::reopen`), with the hash of those bytes; `None` if it does not check out.
pub(crate) fn reopen_temp(
    temp: &Path,
    keep: u64,
    size: u64,
    chunk_size: u32,
) -> Option<(PartFile, Sha256)> {
    let (mut part, hash) = PartFile::reopen(temp, keep)?;
    if bypasses_cache(size, chunk_size) {
        part.bypass_cache();
    }
    Some((part, hash))
}

/// Checks a complete file's `digest` (`None`: the hashing failed) against the one `expected`,
/// then sets the mode and modification time of `spec`: everything that is left before the
/// file may be synced and linked. A file that fails is removed.
///
/// # Errors
/// [`PlaceError::Hashing`], [`PlaceError::Corrupted`], [`PlaceError::SetMode`] or
/// [`PlaceError::SetMtime`].
pub(crate) fn verify(
    part: PartFile,
    digest: Option<[u8; 32]>,
    expected: Option<&[u8]>,
    spec: &FileSpec<'_>,
) -> Result<PartFile, PlaceError> {
    let checked = match digest {
        None => Err(PlaceError::Hashing {
            path: spec.path.to_owned(),
        }),
        Some(digest) if expected != Some(&digest[..]) => Err(PlaceError::Corrupted {
            path: spec.path.to_owned(),
        }),
        Some(_) => part
            .file
            .set_permissions(fs::Permissions::from_mode(spec.mode & 0o777))
            .map_err(PlaceError::SetMode)
            .and_then(|()| {
                part.file
                    .set_modified(spec.mtime)
                    .map_err(PlaceError::SetMtime)
            }),
    };
    match checked {
        Ok(()) => Ok(part),
        Err(e) => {
            part.remove();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_several_large_chunks_bypass_the_page_cache() {
        const MIB: u32 = 1 << 20;
        assert!(bypasses_cache(u64::from(MIB) + 1, MIB));
        assert!(bypasses_cache(100 << 20, 4 * MIB));
        assert!(!bypasses_cache(u64::from(MIB), MIB), "one chunk");
        assert!(!bypasses_cache(0, MIB));
        assert!(!bypasses_cache(100 << 20, 512 << 10), "small chunks");
    }
}
