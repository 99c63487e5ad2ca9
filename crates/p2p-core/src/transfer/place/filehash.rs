//! The SHA-256 of the files of a receive, computed beside the writes rather than before them.
//!
//! Hashing (about 0.8 s per GiB on one core here) and writing a large file to disk take turns
//! on the receiving thread otherwise: while a direct write waits for the device, nothing
//! hashes. So the files of more than one chunk of a receive are hashed on one thread of its
//! own, started at the first such file; a file of one chunk is hashed in place, where handing
//! it over would cost more than it saves.
//!
//! The thread's queue is short and counted in chunks: a chunk handed over is acknowledged to
//! the sender, so what waits here lives beyond the sender's window (see `HASH_QUEUE`).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Chunks queued for the hashing thread at most; one more may be being hashed. They are
/// acknowledged already, so `session::LARGE_HELD_MAX` allows for them beyond the window —
/// and they bound the decompressed chunks (not counted in a route) alive per receive.
pub(crate) const HASH_QUEUE: usize = 2;

enum Msg {
    /// File `fi` is hashed here from now on, continuing from this state.
    Start(usize, Sha256),
    /// The next bytes of file `fi`.
    Data(usize, Bytes),
    /// File `fi` is complete: its digest, please.
    Finish(usize, SyncSender<[u8; 32]>),
}

/// Where the running SHA-256 of one file is.
pub(crate) enum FileHash {
    /// On the receiving thread.
    Here(Sha256),
    /// On the hashing thread, under the file's index.
    Away,
}

impl Default for FileHash {
    fn default() -> Self {
        FileHash::Here(Sha256::new())
    }
}

/// The hashing thread of one receive; it ends when this is dropped.
#[derive(Default)]
pub(crate) struct Hashing {
    queue: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    // The thread could not be started: everything is hashed in place.
    unavailable: bool,
}

impl Hashing {
    /// Adds `data`, the next bytes of file `fi`. The hash of a file of more than one chunk
    /// (`large`) moves to the hashing thread first — where no thread can be started it stays
    /// here: slower, never wrong.
    pub(crate) fn update(&mut self, fi: usize, hash: &mut FileHash, data: Bytes, large: bool) {
        if let (true, FileHash::Here(state)) = (large, &*hash) {
            if let Some(queue) = self.queue() {
                if queue.send(Msg::Start(fi, state.clone())).is_ok() {
                    *hash = FileHash::Away;
                }
            }
        }
        match hash {
            FileHash::Here(state) => state.update(&data),
            FileHash::Away => {
                // A thread gone (it cannot fail short of a panic) is reported by `finish`.
                if let Some(queue) = &self.queue {
                    let _ = queue.send(Msg::Data(fi, data));
                }
            }
        }
    }

    /// The digest of file `fi` (waits for the bytes queued before); `None` if the hashing
    /// thread failed.
    pub(crate) fn finish(&mut self, fi: usize, hash: FileHash) -> Option<[u8; 32]> {
        match hash {
            FileHash::Here(state) => Some(state.finalize().into()),
            FileHash::Away => {
                let (reply, digest) = sync_channel(1);
                self.queue.as_ref()?.send(Msg::Finish(fi, reply)).ok()?;
                digest.recv().ok()
            }
        }
    }

    fn queue(&mut self) -> Option<&SyncSender<Msg>> {
        if self.queue.is_none() && !self.unavailable {
            let (queue, messages) = sync_channel(HASH_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("p2pd-hash".into())
                .spawn(move || hash_loop(messages));
            match spawned {
                Ok(thread) => {
                    self.queue = Some(queue);
                    self.thread = Some(thread);
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot start a hashing thread; hashing in place");
                    self.unavailable = true;
                }
            }
        }
        self.queue.as_ref()
    }
}

impl Drop for Hashing {
    fn drop(&mut self) {
        // The thread hashes what is queued (a few chunks at most) and ends.
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hash_loop(messages: Receiver<Msg>) {
    let mut files: HashMap<usize, Sha256> = HashMap::new();
    for msg in messages {
        match msg {
            Msg::Start(fi, state) => {
                files.insert(fi, state);
            }
            Msg::Data(fi, data) => {
                if let Some(state) = files.get_mut(&fi) {
                    state.update(&data);
                }
            }
            Msg::Finish(fi, reply) => {
                if let Some(state) = files.remove(&fi) {
                    let _ = reply.send(state.finalize().into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(seed: u8) -> Vec<Bytes> {
        (0..40u8)
            .map(|i| Bytes::from(vec![i ^ seed; 1000 + usize::from(i) * 37]))
            .collect()
    }

    fn whole(chunks: &[Bytes]) -> [u8; 32] {
        Sha256::digest(chunks.concat()).into()
    }

    /// Files hashed here and away, interleaved on one thread, each get their own digest.
    #[test]
    fn interleaved_files_get_their_own_digests() {
        let mut hashing = Hashing::default();
        let files: Vec<Vec<Bytes>> = (0..3).map(|f| chunks(f * 50)).collect();
        // File 1 is "small" (hashed here), files 0 and 2 "large".
        let mut hashes: Vec<FileHash> = (0..3).map(|_| FileHash::default()).collect();
        for i in 0..40 {
            for (fi, file) in files.iter().enumerate() {
                hashing.update(fi, &mut hashes[fi], file[i].clone(), fi != 1);
            }
        }
        assert!(matches!(hashes[0], FileHash::Away));
        assert!(matches!(hashes[1], FileHash::Here(_)));
        for (fi, hash) in hashes.into_iter().enumerate().rev() {
            assert_eq!(
                hashing.finish(fi, hash),
                Some(whole(&files[fi])),
                "file {fi}"
            );
        }
    }

    /// A resume continues from the hash of what it found on disk.
    #[test]
    fn a_resumed_hash_continues_from_its_state() {
        let chunks = chunks(0);
        let mut state = Sha256::new();
        for c in &chunks[..10] {
            state.update(c);
        }
        let mut hashing = Hashing::default();
        let mut hash = FileHash::Here(state);
        for c in &chunks[10..] {
            hashing.update(7, &mut hash, c.clone(), true);
        }
        assert_eq!(hashing.finish(7, hash), Some(whole(&chunks)));
    }

    /// A receive that ends with files half hashed ends its thread.
    #[test]
    fn dropping_the_hashing_ends_its_thread() {
        let mut hashing = Hashing::default();
        let mut hash = FileHash::default();
        for c in chunks(1) {
            hashing.update(0, &mut hash, c, true);
        }
        let thread = hashing.thread.take().unwrap();
        drop(hashing);
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
