//! Where a receive starts: its destination prepared (a fresh transfer) or found again (a
//! resumed one), and the per-file state it continues from — nothing for a fresh start; for a
//! resume, what the store recorded and the kept temporary files still hold.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use p2p_proto::wire::v1 as wire;

use crate::store::Store;
use crate::store::records::FileRecord;
use crate::transfer::Direction;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::place::PlaceError;
use crate::transfer::place::destination::{self, Destination, Layout, is_top_level};
use crate::transfer::place::file::reopen_temp;
use crate::transfer::place::filehash::FileHash;
use crate::transfer::place::partfile::PartFile;

/// Per-file progress on the receiver.
#[derive(Default)]
pub(super) struct FileState {
    pub(super) temp: Option<PartFile>,
    pub(super) next_chunk: u64,
    pub(super) written: u64,
    pub(super) hash: FileHash,
    // Chunks that arrived ahead of a re-sent one, held until the gap is filled (bounded by the
    // window).
    pub(super) pending: BTreeMap<u64, Bytes>,
    pub(super) expected_sha: Option<Bytes>,
    // Written since the last checkpoint.
    pub(super) dirty: bool,
}

/// Per-file state, allocated only for files in progress (a manifest may list a million).
pub(crate) struct Files {
    pub(super) active: HashMap<usize, FileState>,
    pub(super) done: Vec<bool>,
}

impl Files {
    pub(super) fn state(&mut self, fi: usize) -> &mut FileState {
        self.active.entry(fi).or_default()
    }

    pub(super) fn finished(&mut self, fi: usize) {
        self.active.remove(&fi);
        if let Some(d) = self.done.get_mut(fi) {
            *d = true;
        }
    }
}

/// Where a receive starts: what is already on disk, and what to tell the sender.
pub(crate) struct Start {
    /// Per-file state to continue from.
    pub(crate) files: Files,
    /// The `have` list of `Ready`.
    pub(crate) have: Vec<wire::FileHave>,
    /// Payload bytes already held.
    pub(crate) have_bytes: u64,
    /// Files already complete.
    pub(crate) complete: u64,
    /// A later attempt of the transfer, which may find files an earlier one placed just
    /// before a crash (see `PartFile::link`).
    pub(crate) resumed: bool,
}

/// What the place layer needs to know of a transfer's tree.
pub(crate) fn layout(info: &wire::TransferInfo) -> Layout<'_> {
    Layout {
        roots: &info.roots,
        dirs: &info.dirs,
    }
}

/// Prepares the destination of a fresh transfer in `dir` (see `destination::prepare`).
///
/// # Errors
/// [`PlaceError::Destination`] naming the path that could not be created.
pub(crate) fn prepare(dir: &Path, info: &wire::TransferInfo) -> Result<Destination, PlaceError> {
    destination::prepare(dir, layout(info))
}

/// Finds the destination of a resumed transfer again (see `Destination::restore`).
///
/// # Errors
/// [`PlaceError::Destination`] naming the path that could not be created.
pub(crate) fn restore(
    dir: &Path,
    roots: HashMap<String, String>,
    info: &wire::TransferInfo,
) -> Result<Destination, PlaceError> {
    Destination::restore(dir, roots, layout(info))
}

/// The temporary file of file `fi` of a transfer, next to its final place.
pub(super) fn temp_path(
    dest: &Destination,
    info: &wire::TransferInfo,
    fi: usize,
) -> Option<PathBuf> {
    let entry = info.files.get(fi)?;
    dest.temp_path(&info.transfer_id, fi, &entry.path)
}

/// Removes the temporary files a transfer left (it was cancelled while interrupted).
pub(crate) fn remove_temps(dest: &Destination, info: &wire::TransferInfo) {
    for fi in 0..info.files.len() {
        if let Some(temp) = temp_path(dest, info, fi) {
            if fs::symlink_metadata(&temp).is_ok_and(|m| m.file_type().is_file()) {
                let _ = fs::remove_file(&temp);
            }
        }
    }
}

/// A fresh start: nothing held.
pub(crate) fn fresh(info: &wire::TransferInfo) -> Start {
    Start {
        files: Files {
            active: HashMap::new(),
            done: vec![false; info.files.len()],
        },
        have: Vec::new(),
        have_bytes: 0,
        complete: 0,
        resumed: false,
    }
}

/// Continues from what the store recorded: complete files stay complete; a partial file
/// continues from its recorded prefix of chunks, provided its temporary file still holds
/// them (it is cut back to that prefix and hashed again, so the end-to-end SHA-256 covers the
/// whole file). Anything that does not check out is started again.
pub(crate) fn resume(
    info: &wire::TransferInfo,
    dest: &Destination,
    recorded: &HashMap<u32, FileRecord>,
    store: &Store,
) -> Start {
    let mut start = fresh(info);
    start.resumed = true;
    let cs = info.chunk_size;
    let mut newly_complete = Vec::new();
    for (fi, entry) in info.files.iter().enumerate() {
        let Some(temp) = temp_path(dest, info, fi) else {
            continue;
        };
        let record = recorded.get(&(fi as u32));
        let complete = record.is_some_and(|r| r.complete)
            || (fs::symlink_metadata(&temp).is_ok()
                && destination::placed(
                    &temp,
                    &dest.path_of(&entry.path),
                    is_top_level(&entry.path),
                ));
        if complete {
            if record.is_some_and(|r| r.complete) {
                let _ = fs::remove_file(&temp);
            } else {
                // Placed just before a crash, before it was recorded: its temporary name goes
                // only once the record is saved.
                newly_complete.push((fi as u32, temp));
            }
            start.files.done[fi] = true;
            start.complete += 1;
            start.have_bytes += entry.size;
            start.have.push(wire::FileHave {
                file_index: fi as u32,
                complete: true,
                chunks: Bytes::new(),
            });
            continue;
        }
        let prefix = record
            .map(|r| ChunkMap::from_bytes(chunk_count(entry.size, cs), &r.chunks).prefix())
            .unwrap_or(0);
        let state = if prefix > 0 {
            reopen(&temp, prefix, cs, entry.size)
        } else {
            None
        };
        match state {
            Some(state) => {
                let mut map = ChunkMap::new(chunk_count(entry.size, cs));
                map.set_prefix(state.next_chunk);
                start.have_bytes += state.written;
                start.have.push(wire::FileHave {
                    file_index: fi as u32,
                    complete: false,
                    chunks: Bytes::copy_from_slice(map.as_bytes()),
                });
                start.files.active.insert(fi, state);
            }
            None => {
                // Whatever sits there is not ours to continue: start the file again.
                if fs::symlink_metadata(&temp).is_ok_and(|m| m.file_type().is_file()) {
                    let _ = fs::remove_file(&temp);
                }
            }
        }
    }
    if !newly_complete.is_empty() {
        let empty = ChunkMap::default();
        let rows: Vec<(u32, bool, &ChunkMap)> = newly_complete
            .iter()
            .map(|(fi, _)| (*fi, true, &empty))
            .collect();
        match store.save_chunk_maps(&info.transfer_id, Direction::Receive, &rows) {
            Ok(()) => {
                for (_, temp) in &newly_complete {
                    let _ = fs::remove_file(temp);
                }
            }
            Err(e) => {
                tracing::warn!(transfer = %info.transfer_id, cause = %e, "cannot record placed files; keeping their temporary names");
            }
        }
    }
    start
}

/// Opens a kept temporary file to continue after `prefix` chunks (see `file::reopen_temp`).
fn reopen(temp: &Path, prefix: u64, chunk_size: u32, size: u64) -> Option<FileState> {
    let keep = prefix.checked_mul(u64::from(chunk_size))?.min(size);
    let (temp, hasher) = reopen_temp(temp, keep, size, chunk_size)?;
    Some(FileState {
        temp: Some(temp),
        next_chunk: prefix,
        written: keep,
        hash: FileHash::Here(hasher),
        pending: BTreeMap::new(),
        expected_sha: None,
        dirty: false,
    })
}
