//! The receiving side of a transfer: where files go, and the thread that verifies and writes
//! chunks.
//!
//! Every file is written to a temporary file next to its final place (see `partfile`: hidden,
//! or unnamed for a file of one chunk), hashed in order as it is written, and linked under its
//! final name only after the SHA-256 from the sender matches — so a final name never holds a partial or unverified file. Top-level names that
//! already exist are never overwritten: the new one becomes `name (1).ext`, `name (2).ext`, …
//!
//! For resume, the thread takes a checkpoint every `CHECKPOINT_BYTES` or `CHECKPOINT_INTERVAL`:
//! the temporary files written since the last one are synced and their chunks recorded in the
//! store. An interrupted transfer keeps its temporary files; `resume` continues from them.
//!
//! Syncing is the slow part, so it has a thread of its own (the syncer, see `Job`): the
//! receiving thread writes and verifies while the syncer makes earlier files durable, in
//! batches — one `syncfs(2)` for a batch of many small files instead of an fsync each — and only
//! then a third thread (the placer) links them in place, records them and reports them to the
//! sender, while the syncer already syncs the next batch.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ChunkStatus};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::net::wire::{self as codec, OutFrame};
use crate::store::Store;
use crate::store::records::FileRecord;
use crate::transfer::chunkmap::{ChunkMap, chunk_count};
use crate::transfer::place::filehash::{FileHash, Hashing};
use crate::transfer::place::partfile::{AlignedBuf, PartFile};
use crate::transfer::{Direction, SMALL_FILE_WINDOW, TransferEntry};

/// Most attempts at finding a free `name (n)` before giving up.
const MAX_RENAMES: u32 = 10_000;

/// Where each root of a transfer lands.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The directory the user chose.
    pub dir: PathBuf,
    /// Root name on the wire → final top-level name (differs on a collision). File roots are
    /// resolved when their file is complete; folder roots are reserved up front.
    pub roots: HashMap<String, String>,
}

/// Errors of preparing a destination.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare destination {path}: {source}")]
pub struct DestinationError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Creates the destination directory, reserves a free name for every folder root and creates
/// the directories of the manifest (including empty ones). Never follows a symlink inside the
/// destination.
///
/// # Errors
/// [`DestinationError`] naming the path that could not be created.
pub fn prepare(dir: &Path, info: &wire::TransferInfo) -> Result<Destination, DestinationError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DestinationError { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let folder_roots: std::collections::HashSet<&str> = info
        .dirs
        .iter()
        .filter(|d| !d.contains('/'))
        .map(String::as_str)
        .collect();
    let mut roots = HashMap::new();
    for root in &info.roots {
        if folder_roots.contains(root.as_str()) {
            let name = reserve_dir(dir, root).map_err(err(&dir.join(root)))?;
            roots.insert(root.clone(), name);
        } else {
            roots.insert(root.clone(), root.clone());
        }
    }
    let dest = Destination {
        dir: dir.to_path_buf(),
        roots,
    };
    for d in &info.dirs {
        if !d.contains('/') {
            continue;
        }
        let path = dest.path_of(d);
        make_dir_no_follow(&dest.dir, &path).map_err(err(&path))?;
    }
    Ok(dest)
}

impl Destination {
    /// The destination of a resumed transfer: the directory and root names chosen when it
    /// was accepted. The directory must exist; directories below it that went missing are
    /// created again (never through a symlink).
    ///
    /// # Errors
    /// [`DestinationError`] naming the path that could not be created.
    pub fn restore(
        dir: &Path,
        roots: HashMap<String, String>,
        info: &wire::TransferInfo,
    ) -> Result<Destination, DestinationError> {
        let dest = Destination {
            dir: dir.to_path_buf(),
            roots,
        };
        // The destination itself must still be there: if it went (an unmounted disk), the
        // transfer must not quietly start again somewhere else.
        if !dir.is_dir() {
            return Err(DestinationError {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the destination directory is gone",
                ),
            });
        }
        for d in &info.dirs {
            let path = dest.path_of(d);
            make_dir_no_follow(&dest.dir, &path).map_err(|source| DestinationError {
                path: path.clone(),
                source,
            })?;
        }
        Ok(dest)
    }

    /// The local path of a wire path (after root renaming).
    pub fn path_of(&self, rel: &str) -> PathBuf {
        let (root, rest) = rel.split_once('/').unwrap_or((rel, ""));
        let root = self.roots.get(root).map(String::as_str).unwrap_or(root);
        let mut p = self.dir.join(root);
        if !rest.is_empty() {
            p.push(rest);
        }
        p
    }
}

/// `name`, `name (1)`, … for a directory, created atomically so that two transfers cannot pick
/// the same one.
fn reserve_dir(dir: &Path, name: &str) -> std::io::Result<String> {
    for n in 0..MAX_RENAMES {
        let candidate = numbered(name, n, false);
        match fs::DirBuilder::new()
            .mode(0o755)
            .create(dir.join(&candidate))
        {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free name",
    ))
}

/// `report.pdf` → `report (1).pdf`; folders and names without extension get the suffix at the
/// end.
fn numbered(name: &str, n: u32, is_file: bool) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if is_file && dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Creates `path` (below `base`) component by component, refusing to pass through anything
/// that is not a real directory — a symlink planted in the destination cannot redirect writes.
fn make_dir_no_follow(base: &Path, path: &Path) -> std::io::Result<()> {
    let rel = path
        .strip_prefix(base)
        .map_err(|_| std::io::Error::other("path outside destination"))?;
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&cur)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a file of `size` bytes is written past the page cache where its file system allows
/// (see `PartFile::bypass_cache`): one of more than one chunk, of chunks of 1 MiB or more —
/// a direct write waits for the device before the next starts, which smaller chunks would
/// pay for on a device with some latency (a cloud volume).
fn bypasses_cache(size: u64, chunk_size: u32) -> bool {
    chunk_size >= 1 << 20 && size > u64::from(chunk_size)
}

/// Per-file progress on the receiver.
#[derive(Default)]
struct FileState {
    temp: Option<PartFile>,
    next_chunk: u64,
    written: u64,
    hash: FileHash,
    // Chunks that arrived ahead of a re-sent one, held until the gap is filled (bounded by the
    // window).
    pending: BTreeMap<u64, Bytes>,
    expected_sha: Option<Bytes>,
    // Written since the last checkpoint.
    dirty: bool,
}

/// Per-file state, allocated only for files in progress (a manifest may list a million).
pub(crate) struct Files {
    active: HashMap<usize, FileState>,
    done: Vec<bool>,
}

/// Where a receive starts: what is already on disk, and what to tell the sender.
pub(crate) struct Start {
    /// Per-file state to continue from.
    pub files: Files,
    /// The `have` list of `Ready`.
    pub have: Vec<wire::FileHave>,
    /// Payload bytes already held.
    pub have_bytes: u64,
    /// Files already complete.
    pub complete: u64,
    /// A later attempt of the transfer, which may find files an earlier one placed just
    /// before a crash (see `PartFile::link`).
    pub resumed: bool,
}

/// The temporary file of file `fi` of a transfer, next to its final place.
fn temp_path(dest: &Destination, info: &wire::TransferInfo, fi: usize) -> Option<PathBuf> {
    let entry = info.files.get(fi)?;
    let final_path = dest.path_of(&entry.path);
    // Not derived from the file's name, so that a name near the 255-byte limit still fits;
    // the whole (canonical UUID) id, so that no other transfer's offer can name it.
    Some(
        final_path
            .parent()?
            .join(format!(".{}-{fi}.p2pd-part", info.transfer_id)),
    )
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
                && placed(&temp, &dest.path_of(&entry.path), !entry.path.contains('/')));
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
            reopen_temp(&temp, prefix, cs, entry.size)
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

/// Whether the temporary file is already linked under its final name (or, for a top-level
/// file, under one of its numbered names): the crash came between placing and recording.
fn placed(temp: &Path, wanted: &Path, numbered_names: bool) -> bool {
    let Ok(t) = fs::symlink_metadata(temp) else {
        return false;
    };
    let same = |p: &Path| {
        fs::symlink_metadata(p).map(|m| (m.dev(), m.ino())).ok() == Some((t.dev(), t.ino()))
    };
    if !numbered_names {
        return same(wanted);
    }
    for candidate in file_names(wanted) {
        if fs::symlink_metadata(&candidate).is_err() {
            return false;
        }
        if same(&candidate) {
            return true;
        }
    }
    false
}

/// `wanted`, then `name (1).ext`, `name (2).ext`, … beside it (at most `MAX_RENAMES`).
fn file_names(wanted: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    let dir = wanted.parent().unwrap_or(Path::new("."));
    let name = wanted
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (0..MAX_RENAMES).map(move |n| dir.join(numbered(&name, n, true)))
}

/// Opens a kept temporary file to continue after `prefix` chunks: it must be a regular file
/// of ours holding at least those bytes; it is cut back to them and they are hashed again.
fn reopen_temp(temp: &Path, prefix: u64, chunk_size: u32, size: u64) -> Option<FileState> {
    let keep = prefix.checked_mul(u64::from(chunk_size))?.min(size);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)
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
    let mut temp = PartFile::reopened(temp, file);
    if bypasses_cache(size, chunk_size) {
        temp.bypass_cache();
    }
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

impl Files {
    fn state(&mut self, fi: usize) -> &mut FileState {
        self.active.entry(fi).or_default()
    }

    fn finished(&mut self, fi: usize) {
        self.active.remove(&fi);
        if let Some(d) = self.done.get_mut(fi) {
            *d = true;
        }
    }
}

/// Why a receive stopped when the session went away (the text users see, and how the
/// thread tells an interruption from a failure).
const SESSION_LOST: &str = "session to peer lost";

/// How long the receiver waits for the sender's next frame of a transfer before it counts the
/// transfer as interrupted. A dead session is noticed sooner (keepalive); this catches a
/// live session whose sender stopped sending this transfer. Generous, because a speed limit
/// shared by many transfers can space their chunks out.
pub const TRANSFER_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
/// A checkpoint (sync the temporary files, record their chunks) is taken after this many
/// payload bytes …
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// … or this much time with unrecorded bytes, whichever comes first. Together with the
/// window they bound what a crash makes the sender send again.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Acknowledgements held back at most (see `Receiver::ack`) …
const ACK_BATCH: usize = 64;
/// … and the most payload they may acknowledge: a large chunk is acknowledged at once.
const ACK_BYTES: usize = 256 << 10;

/// How the receiving thread ended.
#[derive(Debug)]
pub(crate) enum ReceiveEnd {
    /// Every file verified and in place.
    Completed,
    /// The sender cancelled.
    Cancelled(String),
    /// An error; `tell_peer` is false when the peer is already gone.
    Failed { reason: String, tell_peer: bool },
    /// Stopped before the end, progress kept for a resume; `tell_peer` as above.
    Interrupted { reason: String, tell_peer: bool },
}

/// The receiving thread: consumes the transfer's frames until it completes, fails, is
/// cancelled or interrupted. Temporary files are removed when it fails or is cancelled; when
/// it is interrupted they are synced and recorded for a resume. Returns only once the syncer
/// has finished.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive(
    rt: &tokio::runtime::Handle,
    info: &wire::TransferInfo,
    dest: &Destination,
    start: Start,
    mut frames: mpsc::Receiver<Body>,
    writer: &mpsc::Sender<OutFrame>,
    entry: &Arc<TransferEntry>,
    store: &Store,
) -> ReceiveEnd {
    let shared = SyncShared::fresh(start.complete);
    // Place jobs are bounded by the windows (a file's FileDone, or a small file's first frame,
    // holds a permit until it is reported, and the syncer takes a job off the queue before it
    // reports it), checkpoints
    // by `checkpoint_pending` (plus the last one of an interrupted transfer): `queue` never
    // finds this full unless the sender broke its window.
    let (jobs, jobs_rx) =
        std::sync::mpsc::sync_channel(info.window as usize + SMALL_FILE_WINDOW as usize + 4);
    let ctx = SyncContext {
        info,
        dest,
        store,
        writer,
        entry,
        shared: &shared,
        anchor: File::open(&dest.dir).ok(),
        resumed: start.resumed,
    };
    let end = std::thread::scope(|scope| {
        // One batch may wait between the two: the syncer syncs the next batch while the
        // placer links the last one.
        let (synced, synced_rx) = std::sync::mpsc::sync_channel(1);
        let placer = std::thread::Builder::new()
            .name("p2pd-place".into())
            .spawn_scoped(scope, || place_loop(&ctx, synced_rx));
        let syncer = placer.and_then(|_| {
            std::thread::Builder::new()
                .name("p2pd-sync".into())
                .spawn_scoped(scope, || sync_loop(&ctx, jobs_rx, synced))
        });
        if let Err(e) = syncer {
            return ReceiveEnd::Failed {
                reason: format!("cannot start the syncing threads: {e}"),
                tell_peer: true,
            };
        }
        let mut files = start.files;
        let mut r = Receiver::new(info, dest, writer, entry, jobs, &shared);
        let end = r.run(rt, &mut files, &mut frames);
        match end {
            ReceiveEnd::Completed => {}
            ReceiveEnd::Interrupted { .. } => {
                if let Err(e) = r.checkpoint(&mut files) {
                    tracing::warn!(transfer = %info.transfer_id, cause = %e, "cannot record the progress of an interrupted transfer");
                }
            }
            ReceiveEnd::Cancelled(_) | ReceiveEnd::Failed { .. } => {
                // Verified files the syncer has not placed yet are removed too.
                shared.discard.store(true, Ordering::Relaxed);
                for f in files.active.values_mut() {
                    if let Some(part) = f.temp.take() {
                        part.remove();
                    }
                }
            }
        }
        // The syncer finishes what is queued and ends, and the placer after it; the scope
        // waits for both.
        r.jobs = None;
        end
    });
    // The sender may have cancelled for good while the syncer was finishing an interrupted
    // attempt (a pause, then a cancel): that Cancel waits in the channel, unread.
    let end = match end {
        ReceiveEnd::Interrupted { .. } => late_cancel(&mut frames).map_or(end, |reason| {
            remove_temps(dest, info);
            ReceiveEnd::Cancelled(reason)
        }),
        other => other,
    };
    // Temporary names kept for a resume (a placed file whose record failed) serve no one
    // once the transfer is over.
    let over = !matches!(end, ReceiveEnd::Interrupted { .. });
    if over && shared.kept_temps.load(Ordering::Relaxed) {
        remove_temps(dest, info);
    }
    end
}

/// The reason of a final `Cancel` among the frames that came after the receiving loop ended.
fn late_cancel(frames: &mut mpsc::Receiver<Body>) -> Option<String> {
    while let Ok(frame) = frames.try_recv() {
        if let Body::Cancel(c) = frame {
            if !c.resumable {
                return Some(if c.reason.is_empty() {
                    "cancelled by sender".to_owned()
                } else {
                    c.reason
                });
            }
        }
    }
    None
}

struct Receiver<'a> {
    info: &'a wire::TransferInfo,
    dest: &'a Destination,
    writer: &'a mpsc::Sender<OutFrame>,
    entry: &'a Arc<TransferEntry>,
    // The syncer's queue; dropped to end it.
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    shared: &'a SyncShared,
    // Acknowledgements (file, chunk, status) not yet handed to the session's writer, and the
    // payload bytes they acknowledge (see `ack`).
    acks: Vec<(u32, u64, ChunkStatus)>,
    acks_bytes: usize,
    // Chunks held out of order across all files; a sender keeps at most `window` chunks
    // unacknowledged in all, so this stays below `window`.
    pending_total: usize,
    // Payload bytes written since the last checkpoint.
    unrecorded: u64,
    last_checkpoint: Instant,
    // Where chunks are copied for direct writes (see `PartFile::write_at`).
    aligned: AlignedBuf,
    // The hashing thread of the files of more than one chunk.
    hashing: Hashing,
}

impl<'a> Receiver<'a> {
    fn new(
        info: &'a wire::TransferInfo,
        dest: &'a Destination,
        writer: &'a mpsc::Sender<OutFrame>,
        entry: &'a Arc<TransferEntry>,
        jobs: std::sync::mpsc::SyncSender<Job>,
        shared: &'a SyncShared,
    ) -> Self {
        Receiver {
            info,
            dest,
            writer,
            entry,
            jobs: Some(jobs),
            shared,
            acks: Vec::new(),
            acks_bytes: 0,
            pending_total: 0,
            unrecorded: 0,
            last_checkpoint: Instant::now(),
            aligned: AlignedBuf::default(),
            hashing: Hashing::default(),
        }
    }
}

impl Receiver<'_> {
    fn run(
        &mut self,
        rt: &tokio::runtime::Handle,
        files: &mut Files,
        frames: &mut mpsc::Receiver<Body>,
    ) -> ReceiveEnd {
        let info = self.info;
        let entry = self.entry;
        loop {
            if frames.is_empty() {
                // Nothing more to do right now: what was acknowledged goes out before waiting.
                if let Err(reason) = self.flush_acks() {
                    return ReceiveEnd::Interrupted {
                        reason,
                        tell_peer: false,
                    };
                }
            }
            let next = rt.block_on(async {
                tokio::select! {
                    f = tokio::time::timeout(TRANSFER_IDLE, frames.recv()) => Some(f),
                    () = self.shared.failed.notified() => None,
                }
            });
            let frame = match next {
                Some(Ok(Some(f))) => f,
                // The channel closes when the session ends, or when the transfer is cancelled
                // or stopped here.
                Some(Ok(None)) if entry.cancel.is_cancelled() => {
                    return ReceiveEnd::Cancelled("cancelled by receiver".into());
                }
                Some(Ok(None)) => {
                    return match entry.peer_fault.get() {
                        // The session's reader cut the peer off (and told it so).
                        Some(fault) => ReceiveEnd::Failed {
                            reason: fault.clone(),
                            tell_peer: false,
                        },
                        None => ReceiveEnd::Interrupted {
                            reason: SESSION_LOST.into(),
                            tell_peer: false,
                        },
                    };
                }
                Some(Err(_)) => {
                    return ReceiveEnd::Interrupted {
                        reason: format!(
                            "no data from the sender for {} s",
                            TRANSFER_IDLE.as_secs()
                        ),
                        tell_peer: true,
                    };
                }
                // The placer failed (it told the sender already).
                None => {
                    return ReceiveEnd::Failed {
                        reason: self.shared.failure(),
                        tell_peer: true,
                    };
                }
            };
            let step = match frame {
                Body::Chunk(c) => self.chunk(files, c),
                Body::FileDone(d) => self.file_done(files, d),
                Body::Complete(_) => {
                    let done = self.shared.files_done.load(Ordering::Relaxed);
                    if done == info.files.len() as u64 {
                        let _ = self.send(Body::CompleteAck(wire::CompleteAck {
                            transfer_id: info.transfer_id.clone(),
                        }));
                        return ReceiveEnd::Completed;
                    }
                    Err(format!(
                        "sender said complete with {done} of {} files verified",
                        info.files.len()
                    ))
                }
                Body::Cancel(c) if c.resumable => {
                    return ReceiveEnd::Interrupted {
                        reason: c.reason,
                        tell_peer: false,
                    };
                }
                Body::Cancel(c) => return ReceiveEnd::Cancelled(c.reason),
                other => Err(format!(
                    "unexpected {} from sender",
                    codec::body_name(&other)
                )),
            };
            if let Err(reason) = step.and_then(|()| self.maybe_checkpoint(files)) {
                // The session's writer is gone: an interruption like any session loss.
                if reason == SESSION_LOST {
                    return ReceiveEnd::Interrupted {
                        reason,
                        tell_peer: false,
                    };
                }
                return ReceiveEnd::Failed {
                    reason,
                    tell_peer: true,
                };
            }
        }
    }

    fn maybe_checkpoint(&mut self, files: &mut Files) -> Result<(), String> {
        let due = self.unrecorded >= CHECKPOINT_BYTES
            || (self.unrecorded > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        // One checkpoint at a time: a slow disk delays the next one rather than queueing them.
        if due && !self.shared.checkpoint_pending.load(Ordering::Acquire) {
            self.checkpoint(files)?;
        }
        Ok(())
    }

    /// Hands every file written since the last checkpoint to the syncer, which syncs it and
    /// then records its chunks: a chunk is recorded only once its bytes are durable.
    fn checkpoint(&mut self, files: &mut Files) -> Result<(), String> {
        let mut maps = Vec::new();
        for (fi, state) in files.active.iter_mut() {
            // Without a temporary file there is nothing unrecorded: never written, or verified
            // (the syncer records it complete). An unnamed one holds a single chunk, which a
            // resume sends again anyway.
            let Some(PartFile {
                name: Some(path),
                file,
                ..
            }) = &state.temp
            else {
                continue;
            };
            if !state.dirty {
                continue;
            }
            state.dirty = false;
            let size = self.info.files.get(*fi).map_or(0, |f| f.size);
            let mut map = ChunkMap::new(chunk_count(size, self.info.chunk_size));
            map.set_prefix(state.next_chunk);
            maps.push(Synced {
                fi: *fi as u32,
                map,
                path: path.clone(),
                file: file.clone(),
            });
        }
        if !maps.is_empty() {
            self.shared
                .checkpoint_pending
                .store(true, Ordering::Release);
            self.queue(Job::Checkpoint(maps))?;
        }
        self.unrecorded = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn queue(&self, job: Job) -> Result<(), String> {
        let Some(jobs) = self.jobs.as_ref() else {
            discard(vec![job]);
            return Err(self.shared.failure());
        };
        // Never blocks: a sender that keeps to its window cannot fill the queue (see
        // `receive`), so a full one means a peer that does not — and waiting for the syncer,
        // which may itself wait for that peer to read, could hang the transfer for good.
        jobs.try_send(job).map_err(|unsent| match unsent {
            std::sync::mpsc::TrySendError::Full(job) => {
                discard(vec![job]);
                "the sender finished more files than its window allows".to_owned()
            }
            // The syncer is gone: a verified file it will never place must not stay behind.
            std::sync::mpsc::TrySendError::Disconnected(job) => {
                discard(vec![job]);
                self.shared.failure()
            }
        })
    }

    /// Sends a frame, after the acknowledgements held back.
    fn send(&mut self, body: Body) -> Result<(), String> {
        self.flush_acks()?;
        self.writer
            .blocking_send(codec::encode(body).into())
            .map_err(|_| SESSION_LOST.to_owned())
    }

    /// Acknowledges a chunk (`bytes` of payload written). Acknowledgements of small chunks are
    /// held back and go out together — when no frame is waiting, every `ACK_BATCH` of them or
    /// once they cover `ACK_BYTES` — so that many small files do not cost a channel message, a
    /// wake-up and a TLS record each.
    fn ack(
        &mut self,
        file_index: u32,
        chunk_index: u64,
        status: ChunkStatus,
        bytes: usize,
    ) -> Result<(), String> {
        self.acks.push((file_index, chunk_index, status));
        self.acks_bytes += bytes;
        if status != ChunkStatus::Ok || self.acks.len() >= ACK_BATCH || self.acks_bytes >= ACK_BYTES
        {
            self.flush_acks()?;
        }
        Ok(())
    }

    /// A complete file's acknowledgements still held back are dropped: its `FileResult`
    /// acknowledges all its chunks. So every chunk gets one answer — its `ChunkAck` (sent
    /// before the file was handed to the syncer, hence before the `FileResult`) or the
    /// `FileResult` — and the sender's window bounds the answers it has to take.
    fn drop_acks_of(&mut self, fi: usize) {
        self.acks.retain(|&(f, _, _)| f as usize != fi);
    }

    fn flush_acks(&mut self) -> Result<(), String> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let mut frames = BytesMut::new();
        for (file_index, chunk_index, status) in self.acks.drain(..) {
            frames.put_slice(&codec::encode(Body::ChunkAck(wire::ChunkAck {
                transfer_id: self.info.transfer_id.clone(),
                file_index,
                chunk_index,
                status: status as i32,
            })));
        }
        self.acks_bytes = 0;
        self.writer
            .blocking_send(frames.freeze().into())
            .map_err(|_| SESSION_LOST.to_owned())
    }

    fn chunk_len(&self, file: &wire::FileEntry, chunk_index: u64) -> Option<usize> {
        let cs = u64::from(self.info.chunk_size);
        let start = chunk_index.checked_mul(cs)?;
        (start < file.size).then(|| (file.size - start).min(cs) as usize)
    }

    fn chunk(&mut self, files: &mut Files, c: wire::Chunk) -> Result<(), String> {
        let fi = c.file_index as usize;
        let entry = self
            .info
            .files
            .get(fi)
            .ok_or_else(|| format!("chunk for file #{fi}, which does not exist"))?;
        let expected = self.chunk_len(entry, c.chunk_index).ok_or_else(|| {
            format!(
                "chunk {} is beyond the end of {:?}",
                c.chunk_index, entry.path
            )
        })?;
        if c.data.len() > self.info.chunk_size as usize + codec::CHUNK_OVERHEAD {
            return Err(format!(
                "chunk {} of {:?} is larger than the chunk size",
                c.chunk_index, entry.path
            ));
        }
        if files.done[fi] {
            // A duplicate (a re-send raced with a late acknowledgement): already written.
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::Ok, 0);
        }
        let state = files.state(fi);
        if c.chunk_index < state.next_chunk {
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::Ok, 0);
        }
        if state.pending.contains_key(&c.chunk_index) {
            // Held already; it is acknowledged when written.
            return Ok(());
        }
        // Chunks held out of order are acknowledged only once written, so they keep their
        // window permits on the sender: nothing legitimate arrives a window or more ahead, and
        // `pending` stays below `window × chunk_size` bytes, which `MAX_IN_FLIGHT_BYTES` caps.
        if c.chunk_index >= state.next_chunk + u64::from(self.info.window) {
            return Err(format!(
                "chunk {} of {:?} arrived more than a window ahead of chunk {}",
                c.chunk_index, entry.path, state.next_chunk
            ));
        }
        if crc32fast::hash(&c.data) != c.crc32 {
            tracing::warn!(transfer = %self.info.transfer_id, file = %entry.path, chunk = c.chunk_index, "CRC mismatch; asking for the chunk again");
            return self.ack(c.file_index, c.chunk_index, ChunkStatus::CrcMismatch, 0);
        }
        self.entry
            .wire_bytes
            .fetch_add(c.data.len() as u64, Ordering::Relaxed);
        let raw = if c.flags & wire::ChunkFlag::Compressed as u32 != 0 {
            match zstd::bulk::decompress(&c.data, expected) {
                Ok(v) => Bytes::from(v),
                // The CRC matched, so the sender produced this: not a transmission error.
                Err(e) => {
                    return Err(format!(
                        "chunk {} of {:?} does not decompress: {e}",
                        c.chunk_index, entry.path
                    ));
                }
            }
        } else {
            c.data
        };
        if raw.len() != expected {
            return Err(format!(
                "chunk {} of {:?} has {} bytes, expected {expected}",
                c.chunk_index,
                entry.path,
                raw.len()
            ));
        }
        if c.chunk_index != state.next_chunk {
            if self.pending_total >= self.info.window as usize {
                return Err(format!(
                    "more than a window of chunks out of order (at chunk {} of {:?})",
                    c.chunk_index, entry.path
                ));
            }
            state.pending.insert(c.chunk_index, raw);
            self.pending_total += 1;
            return Ok(());
        }
        // Its bytes count against the route (see `session::Route::hold`) until written and
        // hashed.
        self.write(fi, state, raw)?;
        while let Some(next) = state.pending.remove(&state.next_chunk) {
            self.pending_total -= 1;
            self.write(fi, state, next)?;
        }
        self.entry
            .progress(Some((&entry.path, state.written, entry.size)));
        if state.expected_sha.is_some() && state.written == entry.size {
            self.finish(files, fi)?;
        }
        Ok(())
    }

    /// Appends the next chunk of a file, hashes it and acknowledges it.
    fn write(&mut self, fi: usize, state: &mut FileState, data: Bytes) -> Result<(), String> {
        if state.temp.is_none() {
            state.temp = Some(self.open_temp(fi)?);
        }
        let Some(part) = state.temp.as_mut() else {
            return Err("temporary file missing".into());
        };
        part.write_at(&data, state.written, &mut self.aligned)
            .map_err(|e| format!("cannot write {}: {e}", part.shown.display()))?;
        let large = self.info.files.get(fi).map_or(0, |f| f.size) > u64::from(self.info.chunk_size);
        let len = data.len();
        self.hashing.update(fi, &mut state.hash, data, large);
        state.written += len as u64;
        state.dirty = true;
        self.unrecorded += len as u64;
        let index = state.next_chunk;
        state.next_chunk += 1;
        self.entry
            .bytes_done
            .fetch_add(len as u64, Ordering::Relaxed);
        self.ack(fi as u32, index, ChunkStatus::Ok, len)
    }

    /// A file of one chunk gets an unnamed temporary file where possible (see `partfile`):
    /// a resume could not continue it anyway.
    fn open_temp(&self, fi: usize) -> Result<PartFile, String> {
        let entry = self.info.files.get(fi).ok_or("no such file")?;
        if entry.size <= u64::from(self.info.chunk_size) {
            if let Some(part) = PartFile::create_unnamed(&self.dest.path_of(&entry.path)) {
                return Ok(part);
            }
        }
        let mut part = PartFile::create_named(
            temp_path(self.dest, self.info, fi).ok_or("no parent directory")?,
        )?;
        if bypasses_cache(entry.size, self.info.chunk_size) {
            part.bypass_cache();
        }
        Ok(part)
    }

    fn file_done(&mut self, files: &mut Files, d: wire::FileDone) -> Result<(), String> {
        let fi = d.file_index as usize;
        let entry = self
            .info
            .files
            .get(fi)
            .ok_or_else(|| format!("FileDone for file #{fi}, which does not exist"))?;
        if files.done[fi] {
            return Err(format!("FileDone for {:?} twice", entry.path));
        }
        let state = files.state(fi);
        if state.expected_sha.is_some() {
            return Err(format!("FileDone for {:?} twice", entry.path));
        }
        state.expected_sha = Some(d.sha256);
        if state.written == entry.size {
            self.finish(files, fi)?;
        }
        Ok(())
    }

    /// Verifies a complete file and hands it to the syncer, which makes it durable, puts it
    /// in place, records it and reports it to the sender. A file that fails here is reported
    /// at once. A verified file leaves `files` at once — its temporary file is the syncer's
    /// now — so that nothing later (a final checkpoint) records it as partial again.
    fn finish(&mut self, files: &mut Files, fi: usize) -> Result<(), String> {
        match self.verify(fi, files.state(fi)) {
            Ok(job) => {
                files.finished(fi);
                self.drop_acks_of(fi);
                self.queue(Job::Place(job))
            }
            Err(error) => {
                self.send(Body::FileResult(wire::FileResult {
                    transfer_id: self.info.transfer_id.clone(),
                    file_index: fi as u32,
                    ok: false,
                    error: error.clone(),
                }))?;
                Err(error)
            }
        }
    }

    /// Checks the SHA-256 and sets the mode and modification time: everything that is left
    /// before the file may be synced and linked.
    fn verify(&mut self, fi: usize, state: &mut FileState) -> Result<Verified, String> {
        let entry = &self.info.files[fi];
        if state.temp.is_none() {
            state.temp = Some(self.open_temp(fi)?);
        }
        let Some(part) = state.temp.take() else {
            return Err("temporary file missing".into());
        };
        let checked = match self.hashing.finish(fi, std::mem::take(&mut state.hash)) {
            None => Err(format!("hashing {:?} failed", entry.path)),
            Some(digest) if state.expected_sha.as_deref() != Some(&digest[..]) => Err(format!(
                "SHA-256 mismatch for {:?}: the file arrived corrupted",
                entry.path
            )),
            Some(_) => {
                let mtime = UNIX_EPOCH
                    + Duration::new(
                        entry.mtime_sec.max(0) as u64,
                        entry.mtime_nsec.min(999_999_999),
                    );
                part.file
                    .set_permissions(fs::Permissions::from_mode(entry.mode & 0o777))
                    .map_err(|e| format!("cannot set mode: {e}"))
                    .and_then(|()| {
                        part.file
                            .set_modified(mtime)
                            .map_err(|e| format!("cannot set mtime: {e}"))
                    })
            }
        };
        match checked {
            Ok(()) => Ok(Verified { fi, part }),
            Err(e) => {
                part.remove();
                Err(e)
            }
        }
    }
}

/// Work for the syncer, done in the order queued.
enum Job {
    /// Sync these files, then record their chunk prefixes (a checkpoint).
    Checkpoint(Vec<Synced>),
    /// A verified file: sync it, link it under its final name, record it, report it.
    Place(Verified),
}

/// A file of a checkpoint and the prefix of chunks written to it.
struct Synced {
    fi: u32,
    map: ChunkMap,
    path: PathBuf,
    file: Arc<File>,
}

/// A complete temporary file whose SHA-256 matched.
struct Verified {
    fi: usize,
    part: PartFile,
}

/// What the receiving thread, the syncer and the placer share.
struct SyncShared {
    // Why placing failed (a failed sync is reported by the placer too); `failed` wakes the
    // receiving thread.
    failure: Mutex<Option<String>>,
    failed: tokio::sync::Notify,
    // Set when the transfer failed or was cancelled: queued files are removed, not placed.
    discard: AtomicBool,
    // A checkpoint is queued or being synced.
    checkpoint_pending: AtomicBool,
    // Files verified and in place (counting those complete before a resume).
    files_done: AtomicU64,
    // A placed file kept its temporary name because its record could not be saved.
    kept_temps: AtomicBool,
}

impl SyncShared {
    /// Nothing failed or queued yet; `files_done` files complete already (a resume).
    fn fresh(files_done: u64) -> Self {
        Self {
            failure: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
            discard: AtomicBool::new(false),
            checkpoint_pending: AtomicBool::new(false),
            files_done: AtomicU64::new(files_done),
            kept_temps: AtomicBool::new(false),
        }
    }

    fn fail(&self, reason: String) {
        let mut f = match self.failure.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if f.is_none() {
            *f = Some(reason);
        }
        drop(f);
        self.failed.notify_one();
    }

    fn has_failed(&self) -> bool {
        match self.failure.lock() {
            Ok(g) => g.is_some(),
            Err(p) => p.into_inner().is_some(),
        }
    }

    fn failure(&self) -> String {
        let f = match self.failure.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f.clone()
            .unwrap_or_else(|| "the syncing thread ended".into())
    }
}

/// What the syncer and the placer work with.
struct SyncContext<'a> {
    info: &'a wire::TransferInfo,
    dest: &'a Destination,
    store: &'a Store,
    writer: &'a mpsc::Sender<OutFrame>,
    entry: &'a Arc<TransferEntry>,
    shared: &'a SyncShared,
    // The destination directory, opened before anything was written (see `sync_files`).
    anchor: Option<File>,
    // See `Start::resumed`.
    resumed: bool,
}

/// Most jobs the syncer takes into one batch.
const SYNC_BATCH: usize = 256;
/// From this many files in a batch on, one `syncfs(2)` replaces their fsyncs.
const SYNCFS_MIN_FILES: usize = 4;

/// A batch of jobs and whether syncing it succeeded.
type SyncedBatch = (Vec<Job>, Result<(), String>);

/// The syncer: takes what is queued as one batch and makes it durable with as few syncs as
/// possible, then hands it to the placer (which records checkpoints and places, records and
/// reports verified files) — in queue order. Syncing waits for the disk and placing works the
/// directories, so the two overlap. Ends when the queue closes, which ends the placer.
fn sync_loop(
    ctx: &SyncContext<'_>,
    jobs: std::sync::mpsc::Receiver<Job>,
    placer: std::sync::mpsc::SyncSender<SyncedBatch>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < SYNC_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if ctx.shared.has_failed() || ctx.shared.discard.load(Ordering::Relaxed) {
            discard(batch);
            continue;
        }
        let synced = make_durable(ctx, &batch);
        if let Err(std::sync::mpsc::SendError((batch, _))) = placer.send((batch, synced)) {
            discard(batch);
        }
    }
}

/// The placer: the second half of the syncer's work, for each synced batch in turn.
fn place_loop(ctx: &SyncContext<'_>, batches: std::sync::mpsc::Receiver<SyncedBatch>) {
    while let Ok((batch, synced)) = batches.recv() {
        if ctx.shared.has_failed() || ctx.shared.discard.load(Ordering::Relaxed) {
            discard(batch);
            continue;
        }
        if let Err(reason) = place_batch(ctx, batch, synced) {
            ctx.shared.fail(reason);
        }
    }
}

/// Removes the temporary files of verified files that will not be placed.
fn discard(batch: Vec<Job>) {
    for job in batch {
        if let Job::Place(v) = job {
            v.part.remove();
        }
    }
}

/// 1. Durable: every file of the batch.
fn make_durable(ctx: &SyncContext<'_>, batch: &[Job]) -> Result<(), String> {
    let mut to_sync: Vec<(&Path, &File)> = Vec::new();
    for job in batch {
        match job {
            Job::Checkpoint(files) => {
                to_sync.extend(files.iter().map(|f| (f.path.as_path(), &*f.file)));
            }
            Job::Place(v) => to_sync.push((&v.part.shown, &v.part.file)),
        }
    }
    sync_files(&to_sync, ctx.anchor.as_ref())
}

/// 2.–4. of a synced batch: placed, recorded, reported.
fn place_batch(
    ctx: &SyncContext<'_>,
    batch: Vec<Job>,
    synced: Result<(), String>,
) -> Result<(), String> {
    let checkpoint = batch.iter().any(|j| matches!(j, Job::Checkpoint(_)));
    if let Err(e) = synced {
        // Nothing of this batch is placed or recorded; its verified files go.
        let result = Err(e);
        if checkpoint {
            ctx.shared
                .checkpoint_pending
                .store(false, Ordering::Release);
        }
        for job in batch {
            if let Job::Place(v) = job {
                report(ctx, v.fi, &result);
                v.part.remove();
            }
        }
        return result;
    }
    // 2. In place: each verified file under its final name.
    let empty = ChunkMap::default();
    let mut rows: Vec<(u32, bool, &ChunkMap)> = Vec::new();
    let mut placed: Vec<Result<PathBuf, String>> = Vec::new();
    for job in &batch {
        match job {
            Job::Checkpoint(files) => rows.extend(files.iter().map(|f| (f.fi, false, &f.map))),
            Job::Place(v) => {
                let result = link_in_place(ctx, v);
                if result.is_ok() {
                    rows.push((v.fi as u32, true, &empty));
                }
                placed.push(result);
            }
        }
    }
    // 3. Recorded — before the temporary names go: a crash in between finds a temporary file
    // linked under its final name, and a resume counts the file as complete.
    let saved = ctx
        .store
        .save_chunk_maps(&ctx.info.transfer_id, Direction::Receive, &rows);
    if checkpoint {
        ctx.shared
            .checkpoint_pending
            .store(false, Ordering::Release);
    }
    let mut failure = None;
    let recorded = saved.is_ok();
    if let Err(e) = saved {
        if checkpoint {
            failure = Some(format!("cannot record progress: {e}"));
        } else {
            tracing::warn!(transfer = %ctx.info.transfer_id, cause = %e, "cannot record placed files; keeping their temporary names");
        }
    }
    // 4. Reported. A placed file whose record failed keeps its temporary name: a resume
    // recognises it by that link as complete.
    let verified = batch.into_iter().filter_map(|job| match job {
        Job::Place(v) => Some(v),
        Job::Checkpoint(_) => None,
    });
    for (v, result) in verified.zip(placed) {
        let fi = v.fi;
        if recorded || result.is_err() || v.part.name.is_none() {
            v.part.remove();
        } else {
            ctx.shared.kept_temps.store(true, Ordering::Relaxed);
        }
        let ok = result.as_ref().map(|_| ()).map_err(Clone::clone);
        report(ctx, fi, &ok);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Tells the sender how a file ended and counts it when it is in place.
fn report(ctx: &SyncContext<'_>, fi: usize, result: &Result<(), String>) {
    let entry = &ctx.info.files[fi];
    if result.is_ok() {
        let done = ctx.shared.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        ctx.entry.files_done.store(done, Ordering::Relaxed);
        ctx.entry
            .progress(Some((&entry.path, entry.size, entry.size)));
    }
    // A session that is gone takes no reports; the receiving thread sees it end.
    let _ = ctx.writer.blocking_send(
        codec::encode(Body::FileResult(wire::FileResult {
            transfer_id: ctx.info.transfer_id.clone(),
            file_index: fi as u32,
            ok: result.is_ok(),
            error: result.as_ref().err().cloned().unwrap_or_default(),
        }))
        .into(),
    );
}

fn link_in_place(ctx: &SyncContext<'_>, v: &Verified) -> Result<PathBuf, String> {
    let entry = &ctx.info.files[v.fi];
    let final_path = ctx.dest.path_of(&entry.path);
    let placed = if entry.path.contains('/') {
        v.part
            .link(&final_path, ctx.resumed)
            .map(|()| final_path.clone())
    } else {
        v.part.link_free_name(file_names(&final_path), ctx.resumed)
    };
    match placed {
        Ok(p) => {
            tracing::debug!(transfer = %ctx.info.transfer_id, path = %p.display(), "file verified");
            Ok(p)
        }
        Err(e) => Err(format!("cannot place {}: {e}", final_path.display())),
    }
}

/// Makes the written bytes (and metadata) of `files` durable: one `syncfs(2)` per file system
/// for a batch of many files where that is known to be reliable, an fsync per file otherwise
/// (and for whatever syncfs could not vouch for).
///
/// `anchor` is the destination directory, opened before any of the files was written: syncfs
/// reports a writeback error to a descriptor only if it happened after that descriptor was
/// opened (and not yet reported to it), so only the anchor can vouch for all of them. Files
/// on another file system than the anchor are fsynced each.
fn sync_files(files: &[(&Path, &File)], anchor: Option<&File>) -> Result<(), String> {
    let mut rest: Vec<(&Path, &File)> = Vec::new();
    let anchor = anchor
        .filter(|a| syncfs_suits(a))
        .and_then(|a| a.metadata().ok().map(|m| (a, m.dev())));
    if let (true, true, Some((anchor, anchor_dev))) = (
        files.len() >= SYNCFS_MIN_FILES,
        syncfs_reports_errors(),
        anchor,
    ) {
        let mut group: Vec<(&Path, &File)> = Vec::new();
        for &(path, file) in files {
            let dev = file.metadata().map(|m| m.dev()).ok();
            if dev == Some(anchor_dev) {
                group.push((path, file));
            } else {
                rest.push((path, file));
            }
        }
        if group.len() < SYNCFS_MIN_FILES || syncfs(anchor).is_err() {
            // An error may be another file's on that file system: let each fsync tell.
            rest.extend(group);
        }
    } else {
        rest.extend_from_slice(files);
    }
    for (path, file) in rest {
        file.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn syncfs(file: &File) -> std::io::Result<()> {
    rustix::fs::syncfs(file.as_fd()).map_err(std::io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn syncfs(_file: &File) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// `syncfs(2)` reports writeback errors only since Linux 5.8; before, it could return success
/// for data that never reached the disk.
fn syncfs_reports_errors() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return false;
        }
        fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| kernel_at_least(&r, 5, 8))
    })
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (Some(ma), Some(mi)) = (parts.next(), parts.next()) else {
        return false;
    };
    (ma, mi) >= (major, minor)
}

/// Local file systems whose `syncfs` writes back and flushes everything (ext2/3/4, XFS, Btrfs,
/// F2FS, tmpfs). Anything else — network and FUSE file systems above all — gets an fsync per
/// file.
fn syncfs_suits(file: &File) -> bool {
    use crate::fsutil::fs_kind::{BTRFS, EXT4, F2FS, TMPFS, XFS};
    matches!(
        crate::fsutil::fs_kind_of(file),
        Some(EXT4 | XFS | BTRFS | F2FS | TMPFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::{NewTransfer, TransferState, Transfers};
    use std::io::Write;

    /// Every chunk gets exactly one answer: its ChunkAck, sent before its file is handed to
    /// the syncer (whose FileResult answers for all the file's chunks), or that FileResult -
    /// never a ChunkAck after it, which the sender would have to take beyond its window.
    #[test]
    fn no_chunk_is_acknowledged_after_its_file_went_to_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let info = wire::TransferInfo {
            transfer_id: "0123456789".into(),
            roots: vec!["d".into()],
            dirs: vec!["d".into()],
            files: files
                .iter()
                .enumerate()
                .map(|(i, f)| wire::FileEntry {
                    path: format!("d/f{i}"),
                    size: f.len() as u64,
                    mode: 0o644,
                    ..Default::default()
                })
                .collect(),
            chunk_size: 64,
            window: 64,
            ..Default::default()
        };
        let dest = prepare(dir.path(), &info).unwrap();
        let transfers = Transfers::new();
        let entry = receiving_entry(&transfers, &info);
        let (writer, mut sent) = mpsc::channel(10_000);
        let (jobs, queued) = std::sync::mpsc::sync_channel(1000);
        let shared = SyncShared::fresh(0);
        let mut r = Receiver::new(&info, &dest, &writer, &entry, jobs, &shared);
        let mut state = fresh(&info).files;
        let mut acked: HashMap<(u32, u64), usize> = HashMap::new();
        let mut placed = std::collections::HashSet::new();
        // What the receiving thread sent so far: ChunkAcks must not name a placed file.
        let mut check = |placed: &std::collections::HashSet<u32>| {
            while let Ok(out) = sent.try_recv() {
                let mut bytes = &out.head[..];
                while !bytes.is_empty() {
                    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                    let frame =
                        <wire::Frame as prost::Message>::decode(&bytes[4..4 + len]).unwrap();
                    bytes = &bytes[4 + len..];
                    if let Some(Body::ChunkAck(a)) = frame.body {
                        assert!(
                            !placed.contains(&a.file_index),
                            "chunk {} of file {} acknowledged after its file went to the syncer",
                            a.chunk_index,
                            a.file_index
                        );
                        *acked.entry((a.file_index, a.chunk_index)).or_default() += 1;
                    }
                }
            }
        };
        for (fi, data) in files.iter().enumerate() {
            for (ci, piece) in data.chunks(64).enumerate() {
                let c = wire::Chunk {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi as u32,
                    chunk_index: ci as u64,
                    flags: 0,
                    crc32: crc32fast::hash(piece),
                    data: Bytes::copy_from_slice(piece),
                    attempt: 0,
                };
                r.chunk(&mut state, c).unwrap();
                check(&placed);
            }
            r.file_done(
                &mut state,
                wire::FileDone {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi as u32,
                    sha256: Bytes::copy_from_slice(&Sha256::digest(data)),
                },
            )
            .unwrap();
            check(&placed);
            while let Ok(job) = queued.try_recv() {
                if let Job::Place(v) = job {
                    placed.insert(v.fi as u32);
                }
            }
        }
        r.flush_acks().unwrap();
        check(&placed);
        assert_eq!(placed.len(), files.len(), "every file went to the syncer");
        assert!(
            acked.values().all(|n| *n == 1),
            "no chunk acknowledged twice"
        );
    }

    /// A file of one chunk received again after a crash that may have come between its link
    /// and its record: in a resumed attempt, a final name that looks exactly like that earlier
    /// link (see `partfile::earlier_link_of`) is taken as it (no failure in a folder, no
    /// `name (1)` copy at the top); a name with other bytes is never taken, and a fresh
    /// transfer takes none.
    #[test]
    fn a_resumed_one_chunk_file_adopts_its_own_earlier_link_only() {
        use crate::transfer::place::partfile::tests::{plant, set_received_metadata};
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let info = wire::TransferInfo {
            transfer_id: "0123456789".into(),
            roots: vec!["d".into(), "top.txt".into()],
            dirs: vec!["d".into()],
            files: ["d/same", "d/other", "top.txt"]
                .iter()
                .map(|p| wire::FileEntry {
                    path: (*p).into(),
                    size: 5,
                    mode: 0o644,
                    ..Default::default()
                })
                .collect(),
            chunk_size: 64,
            window: 4,
            ..Default::default()
        };
        let dest = prepare(dir.path(), &info).unwrap();
        let root = dir.path().join(&dest.roots["d"]);
        plant(&root.join("same"), b"hello");
        plant(&root.join("other"), b"world");
        plant(&dir.path().join("top.txt"), b"hello");
        let store = Store::open(state.path()).unwrap();
        let transfers = Transfers::new();
        let entry = receiving_entry(&transfers, &info);
        let (writer, _sent) = mpsc::channel(16);
        let shared = SyncShared::fresh(0);
        let place = |fi: usize, resumed: bool| {
            let ctx = SyncContext {
                info: &info,
                dest: &dest,
                store: &store,
                writer: &writer,
                entry: &entry,
                shared: &shared,
                anchor: None,
                resumed,
            };
            let final_path = dest.path_of(&info.files[fi].path);
            let part = PartFile::create_unnamed(&final_path)?;
            (&*part.file).write_all(b"hello").unwrap();
            set_received_metadata(&part.file);
            Some(link_in_place(&ctx, &Verified { fi, part }))
        };
        let Some(fresh_try) = place(0, false) else {
            eprintln!("no O_TMPFILE here: named temporary files are recognised by inode instead");
            return;
        };
        assert!(
            fresh_try.is_err(),
            "a fresh transfer never takes an existing name"
        );
        assert_eq!(place(0, true).unwrap(), Ok(root.join("same")));
        assert!(place(1, true).unwrap().is_err(), "other bytes are not ours");
        assert_eq!(fs::read(root.join("other")).unwrap(), b"world");
        assert_eq!(place(2, true).unwrap(), Ok(dir.path().join("top.txt")));
        assert_eq!(
            place(2, false).unwrap(),
            Ok(dir.path().join("top (1).txt")),
            "a fresh transfer takes the next free name"
        );
    }

    fn receiving_entry(transfers: &Transfers, info: &wire::TransferInfo) -> Arc<TransferEntry> {
        transfers.insert(
            NewTransfer {
                id: info.transfer_id.clone(),
                direction: Direction::Receive,
                state: TransferState::Running,
                peer_id: String::new(),
                peer_name: String::new(),
                peer_address: String::new(),
                roots: info.roots.clone(),
                total_files: info.files.len() as u64,
                total_bytes: 0,
                destination: String::new(),
                started: None,
                max_speed: 0,
            },
            tokio_util::sync::CancellationToken::new(),
        )
    }

    /// A sender that finishes more files than its window allows fills the syncer's queue: the
    /// transfer fails instead of waiting, and the file that did not fit leaves nothing behind.
    #[test]
    fn more_finished_files_than_the_window_fail_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let info = wire::TransferInfo {
            transfer_id: "0123456789".into(),
            roots: vec!["d".into()],
            dirs: vec!["d".into()],
            // Two chunks each: files with named temporary files, which must not stay behind.
            files: (0..3)
                .map(|i| wire::FileEntry {
                    path: format!("d/e{i}"),
                    size: 100,
                    mode: 0o644,
                    ..Default::default()
                })
                .collect(),
            chunk_size: 64,
            window: 2,
            ..Default::default()
        };
        let dest = prepare(dir.path(), &info).unwrap();
        let transfers = Transfers::new();
        let entry = receiving_entry(&transfers, &info);
        let (writer, _sent) = mpsc::channel(100);
        // Nobody takes jobs off this queue: a syncer stuck behind a peer that does not read.
        let (jobs, _queued) = std::sync::mpsc::sync_channel(2);
        let shared = SyncShared::fresh(0);
        let mut r = Receiver::new(&info, &dest, &writer, &entry, jobs, &shared);
        let mut files = fresh(&info).files;
        let data = [7u8; 100];
        let mut send_file = |r: &mut Receiver<'_>, fi: u32| {
            for (ci, piece) in data.chunks(64).enumerate() {
                r.chunk(
                    &mut files,
                    wire::Chunk {
                        transfer_id: info.transfer_id.clone(),
                        file_index: fi,
                        chunk_index: ci as u64,
                        crc32: crc32fast::hash(piece),
                        data: Bytes::copy_from_slice(piece),
                        ..Default::default()
                    },
                )
                .unwrap();
            }
            r.file_done(
                &mut files,
                wire::FileDone {
                    transfer_id: info.transfer_id.clone(),
                    file_index: fi,
                    sha256: Bytes::copy_from_slice(&Sha256::digest(data)),
                },
            )
        };
        send_file(&mut r, 0).unwrap();
        send_file(&mut r, 1).unwrap();
        let err = send_file(&mut r, 2).unwrap_err();
        assert!(err.contains("window"), "{err}");
        let temps: Vec<String> = fs::read_dir(dir.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(temps.len(), 2, "the two queued files only: {temps:?}");
        assert!(temps.iter().all(|t| !t.contains("-2.")), "{temps:?}");
    }

    #[tokio::test]
    async fn a_final_cancel_that_came_late_is_found() {
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = |reason: &str, resumable: bool| {
            Body::Cancel(wire::Cancel {
                transfer_id: "t".into(),
                reason: reason.into(),
                resumable,
                failed: false,
            })
        };
        tx.send(cancel("paused", true)).await.unwrap();
        assert_eq!(late_cancel(&mut rx), None, "a pause is no cancel");
        tx.send(cancel("paused", true)).await.unwrap();
        tx.send(cancel("", false)).await.unwrap();
        assert_eq!(late_cancel(&mut rx).as_deref(), Some("cancelled by sender"));
        tx.send(cancel("user changed their mind", false))
            .await
            .unwrap();
        assert_eq!(
            late_cancel(&mut rx).as_deref(),
            Some("user changed their mind")
        );
    }

    #[test]
    fn only_files_of_several_large_chunks_bypass_the_page_cache() {
        const MIB: u32 = 1 << 20;
        assert!(bypasses_cache(u64::from(MIB) + 1, MIB));
        assert!(bypasses_cache(100 << 20, 4 * MIB));
        assert!(!bypasses_cache(u64::from(MIB), MIB), "one chunk");
        assert!(!bypasses_cache(0, MIB));
        assert!(!bypasses_cache(100 << 20, 512 << 10), "small chunks");
    }

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.44-fc-v595\n", 5, 8));
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("4.19", 5, 8));
        assert!(!kernel_at_least("garbage", 5, 8));
    }

    #[test]
    fn a_batch_of_files_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(PathBuf, File)> = (0..SYNCFS_MIN_FILES + 1)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                let mut f = File::create(&p).unwrap();
                f.write_all(b"data").unwrap();
                (p, f)
            })
            .collect();
        let refs: Vec<(&Path, &File)> = files.iter().map(|(p, f)| (p.as_path(), f)).collect();
        let anchor = File::open(dir.path()).unwrap();
        sync_files(&refs, Some(&anchor)).unwrap();
        sync_files(&refs, None).unwrap();
        sync_files(&refs[..1], Some(&anchor)).unwrap();
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("report.pdf", 0, true), "report.pdf");
        assert_eq!(numbered("report.pdf", 1, true), "report (1).pdf");
        assert_eq!(numbered(".bashrc", 2, true), ".bashrc (2)");
        assert_eq!(numbered("photos", 1, false), "photos (1)");
        assert_eq!(numbered("a.tar.gz", 1, true), "a.tar (1).gz");
    }

    #[test]
    fn folder_roots_are_reserved_and_links_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("photos")).unwrap();
        let info = wire::TransferInfo {
            roots: vec!["photos".into()],
            dirs: vec!["photos".into(), "photos/2024".into()],
            ..Default::default()
        };
        let d = prepare(dir.path(), &info).unwrap();
        assert_eq!(d.roots["photos"], "photos (1)");
        assert!(dir.path().join("photos (1)/2024").is_dir());

        let temp = PartFile::create_named(dir.path().join("t")).unwrap();
        (&*temp.file).write_all(b"new").unwrap();
        fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let placed = temp
            .link_free_name(file_names(&dir.path().join("a.txt")), false)
            .unwrap();
        assert_eq!(placed, dir.path().join("a (1).txt"));
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"old");
    }

    #[test]
    fn a_symlink_in_the_destination_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::os::unix::fs::symlink(outside.path(), base.join("evil")).unwrap();
        assert!(make_dir_no_follow(base, &base.join("evil/sub")).is_err());
        assert!(!outside.path().join("sub").exists());
    }
}
