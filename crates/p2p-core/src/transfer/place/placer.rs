//! The placer: the thread that takes each batch the syncer made durable and (2) links its
//! verified files under their final names, (3) has the batch recorded — checkpoints and placed
//! files in one go, before the temporary names go — and (4) reports every file's end. Recording
//! and reporting are the caller's ([`Report`]): the place layer knows neither the store's
//! records of a transfer nor who is to hear of a file.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::PlaceError;
use super::destination::file_names;
use super::file::Verified;
use super::sync::{Job, Pipeline, SyncedBatch, discard};
use crate::store::StoreError;
use crate::transfer::chunkmap::ChunkMap;

/// What becomes of the placer's work: called on the placer thread, once per batch and once per
/// placed file — never per chunk.
pub(crate) trait Report: Sync {
    /// Records, in one transaction, checkpoints and placed files of one batch in queue order:
    /// `(file index, complete, chunks written)` — a placed file's row is complete (with no
    /// chunks), and comes after any earlier checkpoint row of it. Called before the temporary
    /// names of the placed files go, so a crash in between finds them linked in place.
    ///
    /// # Errors
    /// The store's; a failed checkpoint fails the pipeline, placed files keep their temporary
    /// names.
    fn record(&self, rows: &[(u32, bool, &ChunkMap)]) -> Result<(), StoreError>;

    /// File `fi`, handed over with [`Queue::place`](super::sync::Queue::place), ended: in
    /// place, the `n`th file so (`Ok(n)`, counting those complete before a resume), or not.
    fn file_ended(&self, fi: usize, result: Result<u64, &PlaceError>);
}

impl Pipeline<'_> {
    /// The placer: the second half of the syncer's work, for each synced batch in turn.
    pub(super) fn place_loop(&self, batches: std::sync::mpsc::Receiver<SyncedBatch>) {
        while let Ok((batch, synced)) = batches.recv() {
            if self.shared.stopped() {
                discard(batch);
                continue;
            }
            if let Err(reason) = self.place_batch(batch, synced) {
                self.shared.fail(reason);
            }
        }
    }

    /// 2.–4. of a synced batch: placed, recorded, reported.
    fn place_batch(
        &self,
        batch: Vec<Job>,
        synced: Result<(), PlaceError>,
    ) -> Result<(), PlaceError> {
        let checkpoint = batch.iter().any(|j| matches!(j, Job::Checkpoint(_)));
        if let Err(e) = synced {
            // Nothing of this batch is placed or recorded; its verified files go.
            if checkpoint {
                self.shared
                    .checkpoint_pending
                    .store(false, Ordering::Release);
            }
            for job in batch {
                if let Job::Place(v) = job {
                    self.report(v.fi, Err(&e));
                    v.part.remove();
                }
            }
            return Err(e);
        }
        // 2. In place: each verified file under its final name.
        let empty = ChunkMap::default();
        let mut rows: Vec<(u32, bool, &ChunkMap)> = Vec::new();
        let mut placed: Vec<Result<PathBuf, PlaceError>> = Vec::new();
        for job in &batch {
            match job {
                Job::Checkpoint(files) => rows.extend(files.iter().map(|f| (f.fi, false, &f.map))),
                Job::Place(v) => {
                    let result = link_in_place(v, self.resumed, self.id);
                    if result.is_ok() {
                        rows.push((v.fi as u32, true, &empty));
                    }
                    placed.push(result);
                }
            }
        }
        // 3. Recorded — before the temporary names go: a crash in between finds a temporary
        // file linked under its final name, and a resume counts the file as complete.
        let saved = self.report.record(&rows);
        if checkpoint {
            self.shared
                .checkpoint_pending
                .store(false, Ordering::Release);
        }
        let mut failure = None;
        let recorded = saved.is_ok();
        if let Err(e) = saved {
            if checkpoint {
                failure = Some(PlaceError::Record(e));
            } else {
                tracing::warn!(transfer = %self.id, cause = %e, "cannot record placed files; keeping their temporary names");
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
                self.shared.kept_temps.store(true, Ordering::Relaxed);
            }
            match result {
                Ok(_) => self.report(fi, Ok(())),
                Err(e) => {
                    self.report(fi, Err(&e));
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Counts a file when it is in place, and tells the caller how it ended.
    fn report(&self, fi: usize, result: Result<(), &PlaceError>) {
        let result = result.map(|()| self.shared.files_done.fetch_add(1, Ordering::Relaxed) + 1);
        self.report.file_ended(fi, result);
    }
}

/// Links a verified file under its final name (a top-level one under the first free one of
/// its numbered names); `resumed`: see `PartFile::link`. Returns where it went.
fn link_in_place(v: &Verified, resumed: bool, id: &str) -> Result<PathBuf, PlaceError> {
    let placed = if v.free_name {
        v.part.link_free_name(file_names(&v.to), resumed)
    } else {
        v.part.link(&v.to, resumed).map(|()| v.to.clone())
    };
    match placed {
        Ok(p) => {
            tracing::debug!(transfer = %id, path = %p.display(), "file verified");
            Ok(p)
        }
        Err(source) => Err(PlaceError::Link {
            path: v.to.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::place::destination::{Layout, prepare};
    use crate::transfer::place::file::FileSpec;
    use crate::transfer::place::partfile::PartFile;
    use std::fs;
    use std::io::Write;

    /// A file of one chunk received again after a crash that may have come between its link
    /// and its record: in a resumed attempt, a final name that looks exactly like that earlier
    /// link (see `partfile::earlier_link_of`) is taken as it (no failure in a folder, no
    /// `name (1)` copy at the top); a name with other bytes is never taken, and a fresh
    /// transfer takes none.
    #[test]
    fn a_resumed_one_chunk_file_adopts_its_own_earlier_link_only() {
        use crate::transfer::place::partfile::tests::{plant, set_received_metadata};
        let dir = tempfile::tempdir().unwrap();
        let roots = ["d".to_owned(), "top.txt".to_owned()];
        let dirs = ["d".to_owned()];
        let files = ["d/same", "d/other", "top.txt"];
        let dest = prepare(
            dir.path(),
            Layout {
                roots: &roots,
                dirs: &dirs,
            },
        )
        .unwrap();
        let root = dir.path().join(&dest.roots["d"]);
        plant(&root.join("same"), b"hello");
        plant(&root.join("other"), b"world");
        plant(&dir.path().join("top.txt"), b"hello");
        let place = |fi: usize, resumed: bool| {
            let spec = FileSpec {
                path: files[fi],
                size: 5,
                mode: 0o644,
                mtime: std::time::UNIX_EPOCH,
            };
            let final_path = dest.path_of(spec.path);
            let part = PartFile::create_unnamed(&final_path)?;
            (&*part.file).write_all(b"hello").unwrap();
            set_received_metadata(&part.file);
            let v = Verified::new(fi, part, &dest, &spec);
            Some(link_in_place(&v, resumed, "0123456789").ok())
        };
        let Some(fresh_try) = place(0, false) else {
            eprintln!("no O_TMPFILE here: named temporary files are recognised by inode instead");
            return;
        };
        assert!(
            fresh_try.is_none(),
            "a fresh transfer never takes an existing name"
        );
        assert_eq!(place(0, true).unwrap(), Some(root.join("same")));
        assert!(
            place(1, true).unwrap().is_none(),
            "other bytes are not ours"
        );
        assert_eq!(fs::read(root.join("other")).unwrap(), b"world");
        assert_eq!(place(2, true).unwrap(), Some(dir.path().join("top.txt")));
        assert_eq!(
            place(2, false).unwrap(),
            Some(dir.path().join("top (1).txt")),
            "a fresh transfer takes the next free name"
        );
    }
}
