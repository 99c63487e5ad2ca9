//! The syncer: the thread that makes received files durable, in batches and with as few syncs
//! as possible, before the placer (see `placer`) links them in place. Also the queue that
//! feeds it ([`Queue`]), the work it takes ([`Job`]) and what the caller's thread, the syncer
//! and the placer share ([`Shared`]); [`Pipeline::run`] runs the two threads beside the
//! caller's work.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use super::PlaceError;
use super::file::Verified;
use super::placer::Report;
use crate::transfer::chunkmap::ChunkMap;

/// Work for the syncer, done in the order queued.
pub(crate) enum Job {
    /// Sync these files, then record their chunks (a checkpoint).
    Checkpoint(Vec<Synced>),
    /// A verified file: sync it, link it under its final name, record it, report it.
    Place(Verified),
}

/// A file of a checkpoint and the chunks written to it.
pub(crate) struct Synced {
    /// The file's index in its transfer.
    pub(crate) fi: u32,
    /// The chunks of it that are written (and recorded once synced).
    pub(crate) map: ChunkMap,
    /// Its temporary file's name, for messages.
    pub(crate) path: PathBuf,
    /// Its temporary file, shared with the caller's thread that keeps writing it.
    pub(crate) file: Arc<File>,
}

/// What the caller's thread, the syncer and the placer share.
pub(crate) struct Shared {
    // Why placing failed (a failed sync is reported by the placer too); `failed` wakes the
    // caller's thread. An `Arc` because both the caller and its error chain may want it more
    // than once.
    failure: Mutex<Option<Arc<PlaceError>>>,
    failed: tokio::sync::Notify,
    // Set when the transfer failed or was cancelled: queued files are removed, not placed.
    discard: AtomicBool,
    // A checkpoint is queued or being synced.
    pub(super) checkpoint_pending: AtomicBool,
    // Files verified and in place (counting those complete before a resume).
    pub(super) files_done: AtomicU64,
    // A placed file kept its temporary name because its record could not be saved.
    pub(super) kept_temps: AtomicBool,
}

impl Shared {
    /// Nothing failed or queued yet; `files_done` files complete already (a resume).
    pub(crate) fn fresh(files_done: u64) -> Self {
        Self {
            failure: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
            discard: AtomicBool::new(false),
            checkpoint_pending: AtomicBool::new(false),
            files_done: AtomicU64::new(files_done),
            kept_temps: AtomicBool::new(false),
        }
    }

    /// Placing failed: nothing more is synced or placed, and the caller's thread wakes.
    pub(super) fn fail(&self, reason: PlaceError) {
        let mut f = match self.failure.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if f.is_none() {
            *f = Some(Arc::new(reason));
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

    fn failure(&self) -> Option<Arc<PlaceError>> {
        match self.failure.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether queued work is to be dropped rather than done.
    pub(super) fn stopped(&self) -> bool {
        self.has_failed() || self.discard.load(Ordering::Relaxed)
    }
}

/// Why the pipeline took no more work.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Its queue was full: more work than the capacity it was given (see [`Pipeline::run`]).
    Full,
    /// It failed (why, if it said) or its threads ended.
    Stopped(Option<Arc<PlaceError>>),
}

/// The caller's end of the pipeline: it queues work and reads how far the threads are.
/// Dropping it ends the syncer (once it has done what was queued), and the placer after it.
pub(crate) struct Queue<'a> {
    jobs: SyncSender<Job>,
    shared: &'a Shared,
}

impl<'a> Queue<'a> {
    /// A queue of `capacity` jobs over `shared`, and the syncer's end of it.
    pub(crate) fn new(shared: &'a Shared, capacity: usize) -> (Self, Receiver<Job>) {
        let (jobs, rx) = sync_channel(capacity);
        (Queue { jobs, shared }, rx)
    }

    /// Hands a verified file over to be synced, placed, recorded and reported.
    ///
    /// # Errors
    /// [`Refused`]; the file is removed then.
    pub(crate) fn place(&self, file: Verified) -> Result<(), Refused> {
        self.push(Job::Place(file))
    }

    /// Hands over a checkpoint: these files are synced, then their chunks recorded. Until the
    /// placer has recorded it, [`Queue::checkpoint_pending`] says so.
    ///
    /// # Errors
    /// [`Refused`].
    pub(crate) fn checkpoint(&self, files: Vec<Synced>) -> Result<(), Refused> {
        self.shared
            .checkpoint_pending
            .store(true, Ordering::Release);
        self.push(Job::Checkpoint(files))
    }

    /// Never blocks: a caller that keeps within the capacity it asked for cannot fill the
    /// queue, so a full one means the caller's own source broke its bounds — and waiting for
    /// the syncer, which may itself wait for that source (a report to a peer that does not
    /// read), could hang for good.
    fn push(&self, job: Job) -> Result<(), Refused> {
        self.jobs.try_send(job).map_err(|unsent| match unsent {
            TrySendError::Full(job) => {
                discard(vec![job]);
                Refused::Full
            }
            // The syncer is gone: a verified file it will never place must not stay behind.
            TrySendError::Disconnected(job) => {
                discard(vec![job]);
                Refused::Stopped(self.shared.failure())
            }
        })
    }

    /// Whether a checkpoint is queued or being synced (one at a time: a slow disk delays the
    /// next one rather than queueing them).
    pub(crate) fn checkpoint_pending(&self) -> bool {
        self.shared.checkpoint_pending.load(Ordering::Acquire)
    }

    /// Files in place, counting those complete before a resume.
    pub(crate) fn files_done(&self) -> u64 {
        self.shared.files_done.load(Ordering::Relaxed)
    }

    /// Completes when placing has failed (at once if it did while nobody waited).
    pub(crate) fn failed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.failed.notified()
    }

    /// Why placing failed; `None` if it did not say.
    pub(crate) fn failure(&self) -> Option<Arc<PlaceError>> {
        self.shared.failure()
    }

    /// The caller gives up (it failed or was cancelled): verified files still queued are
    /// removed, not placed.
    pub(crate) fn discard(&self) {
        self.shared.discard.store(true, Ordering::Relaxed);
    }
}

/// The syncer and placer threads of one receive and what they work with.
pub(crate) struct Pipeline<'a> {
    /// Names the work in logs (a transfer id).
    pub(super) id: &'a str,
    pub(super) report: &'a dyn Report,
    pub(super) shared: Shared,
    // The destination directory, opened before anything was written (see `sync_files`).
    anchor: Option<File>,
    // A later attempt of a transfer, which may find files an earlier one placed just before a
    // crash (see `PartFile::link`).
    pub(super) resumed: bool,
}

/// Most jobs the syncer takes into one batch.
const SYNC_BATCH: usize = 256;
/// From this many files in a batch on, one `syncfs(2)` replaces their fsyncs.
const SYNCFS_MIN_FILES: usize = 4;

/// A batch of jobs and whether syncing it succeeded.
pub(super) type SyncedBatch = (Vec<Job>, Result<(), PlaceError>);

impl<'a> Pipeline<'a> {
    /// The pipeline of work `id` (for logs) into the destination directory `dir`, which must
    /// be opened before anything is written to it. `resumed`: a later attempt of a transfer;
    /// `files_done` files are complete already. `report` records and reports what is placed.
    pub(crate) fn new(
        id: &'a str,
        dir: &Path,
        resumed: bool,
        files_done: u64,
        report: &'a dyn Report,
    ) -> Self {
        Pipeline {
            id,
            report,
            shared: Shared::fresh(files_done),
            anchor: File::open(dir).ok(),
            resumed,
        }
    }

    /// Runs `body` beside the syncer and the placer; it feeds them through the [`Queue`] it
    /// gets, which holds `capacity` jobs at most. Returns once `body` has returned and both
    /// threads have finished what it queued.
    ///
    /// # Errors
    /// [`PlaceError::Spawn`] if the threads cannot be started (`body` does not run then).
    pub(crate) fn run<R>(
        &self,
        capacity: usize,
        body: impl FnOnce(Queue<'_>) -> R,
    ) -> Result<R, PlaceError> {
        let (queue, jobs) = Queue::new(&self.shared, capacity);
        std::thread::scope(|scope| {
            // One batch may wait between the two: the syncer syncs the next batch while the
            // placer links the last one.
            let (synced, synced_rx) = sync_channel(1);
            let placer = std::thread::Builder::new()
                .name("p2pd-place".into())
                .spawn_scoped(scope, || self.place_loop(synced_rx));
            let syncer = placer.and_then(|_| {
                std::thread::Builder::new()
                    .name("p2pd-sync".into())
                    .spawn_scoped(scope, || self.sync_loop(jobs, synced))
            });
            if let Err(e) = syncer {
                return Err(PlaceError::Spawn(e));
            }
            // The queue goes with `body`: the syncer finishes what is queued and ends, and
            // the placer after it; the scope waits for both.
            Ok(body(queue))
        })
    }

    /// Whether a placed file kept its temporary name because its record failed (a resume
    /// would recognise it by it; once the transfer is over, nobody needs it).
    pub(crate) fn kept_temps(&self) -> bool {
        self.shared.kept_temps.load(Ordering::Relaxed)
    }

    /// The syncer: takes what is queued as one batch and makes it durable with as few syncs
    /// as possible, then hands it to the placer (which records checkpoints and places, records
    /// and reports verified files) — in queue order. Syncing waits for the disk and placing
    /// works the directories, so the two overlap. Ends when the queue closes, which ends the
    /// placer.
    fn sync_loop(&self, jobs: Receiver<Job>, placer: SyncSender<SyncedBatch>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < SYNC_BATCH {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            if self.shared.stopped() {
                discard(batch);
                continue;
            }
            let synced = self.make_durable(&batch);
            if let Err(std::sync::mpsc::SendError((batch, _))) = placer.send((batch, synced)) {
                discard(batch);
            }
        }
    }

    /// 1. Durable: every file of the batch.
    fn make_durable(&self, batch: &[Job]) -> Result<(), PlaceError> {
        let mut to_sync: Vec<(&Path, &File)> = Vec::new();
        for job in batch {
            match job {
                Job::Checkpoint(files) => {
                    to_sync.extend(files.iter().map(|f| (f.path.as_path(), &*f.file)));
                }
                Job::Place(v) => to_sync.push((&v.part.shown, &v.part.file)),
            }
        }
        sync_files(&to_sync, self.anchor.as_ref())
    }
}

/// Removes the temporary files of verified files that will not be placed.
pub(super) fn discard(batch: Vec<Job>) {
    for job in batch {
        if let Job::Place(v) = job {
            v.part.remove();
        }
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
fn sync_files(files: &[(&Path, &File)], anchor: Option<&File>) -> Result<(), PlaceError> {
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
        file.sync_all().map_err(|source| PlaceError::Sync {
            path: path.to_path_buf(),
            source,
        })?;
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
    use std::io::Write;

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
}
