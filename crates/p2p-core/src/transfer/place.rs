//! Placing received data: the pipeline every way of receiving ends in. It knows files, bytes
//! and chunk bitmaps — not frames, sessions, acknowledgements or windows: the push receiver
//! (`receive`) feeds it today, a download from several sources can feed it the same way.
//!
//! A file is written to a temporary file next to its final place ([`partfile`]: hidden, or
//! unnamed for a file that could not be continued anyway), hashed as it is written
//! ([`filehash`]), checked and given its mode and modification time ([`file`]), then made
//! durable ([`sync`]) and linked under its final name ([`placer`]) — so a final name never
//! holds a partial or unverified file. Top-level names that already exist are never
//! overwritten: the new one becomes `name (1).ext`, `name (2).ext`, … ([`destination`]).
//!
//! Syncing is the slow part, so it has a thread of its own (the syncer): the caller's thread
//! writes and verifies while the syncer makes earlier files durable, in batches — one
//! `syncfs(2)` for a batch of many small files instead of an fsync each — and only then a
//! third thread (the placer) links them in place and hands them back to the caller (a
//! [`placer::Report`]: record them, tell whoever sent them), while the syncer already syncs the
//! next batch. Checkpoints — the chunks written so far of files still in progress — take the
//! same road, so a chunk is recorded only once its bytes are durable.
//!
//! - [`destination`]: the destination directory, final names and collisions, temporary names.
//! - [`partfile`]: temporary files, named or unnamed, and how they reach their final names.
//! - [`filehash`]: the hashing thread that checks a file's SHA-256 while it is written.
//! - [`file`]: one file's temporary file opened, reopened for a resume, and verified.
//! - [`sync`]: the syncer thread, the queue that feeds it and what the threads share.
//! - [`placer`]: the placer thread: link in place, record, report.

use std::io;
use std::path::PathBuf;

use crate::store::StoreError;

pub(crate) mod destination;
pub(crate) mod file;
pub(crate) mod filehash;
pub(crate) mod partfile;
pub(crate) mod placer;
pub(crate) mod sync;

/// Why a file, or the placing of received files, failed. The messages are what the sender and
/// the user see (through `error_chain`, so the cause follows).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceError {
    /// A directory of the destination could not be created, or the destination is gone.
    #[error("cannot prepare destination {}", path.display())]
    Destination {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A temporary file could not be created.
    #[error("cannot create {}", path.display())]
    CreateTemp {
        /// Its hidden name.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file's path has no directory to hold its temporary file.
    #[error("no parent directory")]
    NoParent {
        /// The file's local path.
        path: PathBuf,
    },
    /// Writing to a temporary file failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The temporary file (its final path, for an unnamed one).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The hashing thread gave no digest.
    #[error("hashing {path:?} failed")]
    Hashing {
        /// The file's relative path.
        path: String,
    },
    /// The file's SHA-256 is not the one expected.
    #[error("SHA-256 mismatch for {path:?}: the file arrived corrupted")]
    Corrupted {
        /// The file's relative path.
        path: String,
    },
    /// The received mode could not be set.
    #[error("cannot set mode")]
    SetMode(#[source] io::Error),
    /// The received modification time could not be set.
    #[error("cannot set mtime")]
    SetMtime(#[source] io::Error),
    /// A file could not be made durable.
    #[error("cannot sync {}", path.display())]
    Sync {
        /// The file (its final path, for an unnamed one).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A verified file could not be linked under its final name.
    #[error("cannot place {}", path.display())]
    Link {
        /// The final name wanted.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A checkpoint could not be recorded.
    #[error("cannot record progress")]
    Record(#[source] StoreError),
    /// The syncer or placer thread could not be started.
    #[error("cannot start the syncing threads")]
    Spawn(#[source] io::Error),
}
