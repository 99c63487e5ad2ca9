//! The SHA-256 of a file being received, computed beside the write rather than before it.
//!
//! Hashing (about 0.8 s per GiB on one core here) and writing a large file to disk take turns
//! on the receiving thread otherwise: while a direct write waits for the device, nothing
//! hashes. A file of more than one chunk therefore has its chunks hashed on a thread of its
//! own; a file of one chunk is hashed in place, where a thread would cost more than it saves.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Chunks a hashing thread may have queued: the receiving thread waits beyond that (the
/// chunks stay counted in their route meanwhile, see `session::Route::hold`).
const QUEUED_CHUNKS: usize = 8;

/// The running SHA-256 of one file.
pub(crate) enum FileHash {
    /// Hashed on the calling thread.
    Here(Sha256),
    /// Hashed on a thread of its own, which hands the digest back when the queue closes.
    Away {
        chunks: SyncSender<Bytes>,
        thread: JoinHandle<Sha256>,
    },
}

impl Default for FileHash {
    fn default() -> Self {
        FileHash::Here(Sha256::new())
    }
}

impl FileHash {
    /// Moves the hashing to a thread of its own, if not done yet. Where no thread can be
    /// started the hashing stays here: slower, never wrong.
    pub(crate) fn go_away(&mut self) {
        let FileHash::Here(state) = self else {
            return;
        };
        let (chunks, queue) = sync_channel(QUEUED_CHUNKS);
        let start = state.clone();
        let spawned = std::thread::Builder::new()
            .name("p2pd-hash".into())
            .spawn(move || hash_queue(start, queue));
        match spawned {
            Ok(thread) => *self = FileHash::Away { chunks, thread },
            Err(e) => {
                tracing::debug!(cause = %e, "cannot start a hashing thread; hashing in place")
            }
        }
    }

    /// Adds the next bytes of the file.
    pub(crate) fn update(&mut self, data: Bytes) {
        match self {
            FileHash::Here(h) => h.update(&data),
            FileHash::Away { chunks, .. } => {
                // The thread ends only when the queue closes, so it is there to take this; if
                // it panicked, `finish` reports it.
                let _ = chunks.send(data);
            }
        }
    }

    /// The digest of everything added; `None` if the hashing thread failed.
    pub(crate) fn finish(self) -> Option<[u8; 32]> {
        match self {
            FileHash::Here(h) => Some(h.finalize().into()),
            FileHash::Away { chunks, thread } => {
                drop(chunks);
                thread.join().ok().map(|h| h.finalize().into())
            }
        }
    }
}

fn hash_queue(mut state: Sha256, queue: Receiver<Bytes>) -> Sha256 {
    for chunk in queue {
        state.update(&chunk);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Vec<Bytes> {
        (0..40u32)
            .map(|i| Bytes::from(vec![i as u8; 1000 + i as usize * 37]))
            .collect()
    }

    fn whole(chunks: &[Bytes]) -> [u8; 32] {
        Sha256::digest(chunks.concat()).into()
    }

    /// The digest is the same wherever the hashing ran, and whenever it moved away.
    #[test]
    fn hashing_away_gives_the_same_digest() {
        let chunks = chunks();
        for moved_at in [0, 1, 17, chunks.len()] {
            let mut h = FileHash::default();
            for (i, c) in chunks.iter().enumerate() {
                if i == moved_at {
                    h.go_away();
                    assert!(matches!(h, FileHash::Away { .. }));
                }
                h.update(c.clone());
                // Moving away twice changes nothing.
                h.go_away();
            }
            assert_eq!(h.finish(), Some(whole(&chunks)), "moved at {moved_at}");
        }
    }

    /// A resume continues from the hash of what it found on disk.
    #[test]
    fn a_resumed_hash_continues_from_its_state() {
        let chunks = chunks();
        let mut state = Sha256::new();
        for c in &chunks[..10] {
            state.update(c);
        }
        let mut h = FileHash::Here(state);
        h.go_away();
        for c in &chunks[10..] {
            h.update(c.clone());
        }
        assert_eq!(h.finish(), Some(whole(&chunks)));
    }

    /// A file abandoned halfway lets its hashing thread end on its own.
    #[test]
    fn an_abandoned_hash_ends_its_thread() {
        let mut h = FileHash::default();
        h.go_away();
        let FileHash::Away { chunks, thread } = h else {
            panic!("not away")
        };
        for c in self::chunks() {
            chunks.send(c).unwrap();
        }
        drop(chunks);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
