//! Durable records of unfinished transfers, in the state store: what each side needs to carry
//! a transfer on after a broken session or a restart (`kill -9` included).
//!
//! - Sending side: the manifest as offered (wire entries plus local source paths), the
//!   options, the device and address to dial, and whether the user paused it. Written before
//!   the offer leaves, removed when the transfer ends.
//! - Receiving side: the manifest, where it goes (directory and the names chosen for its
//!   roots), written when the offer is accepted, removed when the transfer ends.
//! - Both sides: a bitmap of done chunks per file. The receiver records a chunk only after
//!   its bytes were synced to disk, and a file as complete only after it is in place; the
//!   sender records what the receiver acknowledged. The receiver's record is the one a resume
//!   trusts.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use p2p_proto::wire::v1::TransferInfo;
use prost::Message;
use rusqlite::params;

use crate::store::{Store, StoreError};
use crate::transfer::chunkmap::ChunkMap;
use crate::transfer::{Direction, SendOptions};

/// The schema of this module, applied as one migration of the store.
pub(crate) const MIGRATION: &str = "
    CREATE TABLE outgoing (
        id TEXT PRIMARY KEY,
        peer_id TEXT NOT NULL,
        dial TEXT NOT NULL,
        info BLOB NOT NULL,
        sources BLOB NOT NULL,
        compress INTEGER NOT NULL,
        level INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        window INTEGER NOT NULL,
        max_speed INTEGER NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE incoming (
        id TEXT PRIMARY KEY,
        peer_id TEXT NOT NULL,
        info BLOB NOT NULL,
        dest_dir BLOB NOT NULL,
        roots TEXT NOT NULL,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE chunk_maps (
        id TEXT NOT NULL,
        side TEXT NOT NULL,
        file_index INTEGER NOT NULL,
        complete INTEGER NOT NULL,
        chunks BLOB NOT NULL,
        PRIMARY KEY (id, side, file_index)
    );";

/// An outgoing transfer that has not ended.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingRecord {
    /// Transfer id.
    pub(crate) id: String,
    /// The receiving device.
    pub(crate) peer_id: String,
    /// What to dial again: `ID@HOST:PORT`.
    pub(crate) dial: String,
    /// The offer (files, dirs, roots, chunk size, window).
    pub(crate) info: TransferInfo,
    /// Local source path of each file, in manifest order.
    pub(crate) sources: Vec<PathBuf>,
    /// Options it was sent with.
    pub(crate) options: SendOptions,
    /// Paused by the user.
    pub(crate) paused: bool,
    /// When it started, ms since the epoch.
    pub(crate) started_ms: u64,
}

/// An accepted incoming transfer that has not ended.
#[derive(Debug, Clone)]
pub(crate) struct IncomingRecord {
    /// Transfer id.
    pub(crate) id: String,
    /// The sending device.
    pub(crate) peer_id: String,
    /// The offer as accepted.
    pub(crate) info: TransferInfo,
    /// The directory it goes to.
    pub(crate) dest_dir: PathBuf,
    /// Wire root → local top-level name.
    pub(crate) roots: HashMap<String, String>,
    /// When it started, ms since the epoch.
    pub(crate) started_ms: u64,
}

/// What one side recorded of one file.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileRecord {
    /// Verified and in place (receiver) or confirmed (sender).
    pub(crate) complete: bool,
    /// Done chunks.
    pub(crate) chunks: Vec<u8>,
}

fn side(d: Direction) -> &'static str {
    match d {
        Direction::Send => "send",
        Direction::Receive => "receive",
    }
}

fn join_paths(paths: &[PathBuf]) -> Vec<u8> {
    // Paths never contain NUL, so it separates them without escaping.
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_os_str().as_bytes());
    }
    out
}

fn split_paths(bytes: &[u8], expected: usize) -> Vec<PathBuf> {
    if expected == 0 {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|p| PathBuf::from(OsStr::from_bytes(p)))
        .collect()
}

fn decode_info(blob: &[u8]) -> rusqlite::Result<TransferInfo> {
    TransferInfo::decode(blob).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

impl Store {
    /// Records (or replaces) an outgoing transfer.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn save_outgoing(&self, r: &OutgoingRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO outgoing (id, peer_id, dial, info, sources, compress, level, chunk_size, window, paused, started_ms, max_speed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    r.id,
                    r.peer_id,
                    r.dial,
                    r.info.encode_to_vec(),
                    join_paths(&r.sources),
                    r.options.compress,
                    r.options.level,
                    r.options.chunk_size,
                    r.options.window,
                    r.paused,
                    r.started_ms as i64,
                    r.options.max_speed as i64,
                ],
            )
            .map(|_| ())
        })
    }

    /// Changes the recorded speed limit of an outgoing transfer (bytes per second, 0 = none).
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn set_outgoing_max_speed(
        &self,
        id: &str,
        max_speed: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outgoing SET max_speed = ?2 WHERE id = ?1",
                params![id, max_speed as i64],
            )
            .map(|_| ())
        })
    }

    /// Marks an outgoing transfer paused or not.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn set_outgoing_paused(&self, id: &str, paused: bool) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outgoing SET paused = ?2 WHERE id = ?1",
                params![id, paused],
            )
            .map(|_| ())
        })
    }

    /// Every unfinished outgoing transfer, oldest first. A row that no longer decodes is
    /// skipped with a warning (and left for a newer p2pd).
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn outgoing_records(&self) -> Result<Vec<OutgoingRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, peer_id, dial, info, sources, compress, level, chunk_size, window, paused, started_ms, max_speed
                 FROM outgoing ORDER BY started_ms, id",
            )?;
            let rows = st.query_map([], |row| {
                let id: String = row.get(0)?;
                let info = decode_info(&row.get::<_, Vec<u8>>(3)?);
                let sources: Vec<u8> = row.get(4)?;
                Ok((id, info, sources, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, bool>(5)?, row.get::<_, i32>(6)?, row.get::<_, u32>(7)?, row.get::<_, u32>(8)?, row.get::<_, bool>(9)?, row.get::<_, i64>(10)?, row.get::<_, i64>(11)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, info, sources, peer_id, dial, compress, level, chunk_size, window, paused, started, max_speed) = row?;
                let info = match info {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(transfer = %id, cause = %e, "cannot read the stored outgoing transfer; skipping it");
                        continue;
                    }
                };
                let sources = split_paths(&sources, info.files.len());
                if sources.len() != info.files.len() {
                    tracing::warn!(transfer = %id, "stored outgoing transfer lists the wrong number of sources; skipping it");
                    continue;
                }
                out.push(OutgoingRecord {
                    id,
                    peer_id,
                    dial,
                    info,
                    sources,
                    options: SendOptions {
                        compress,
                        level,
                        chunk_size,
                        window,
                        max_speed: max_speed.max(0) as u64,
                    },
                    paused,
                    started_ms: started.max(0) as u64,
                });
            }
            Ok(out)
        })
    }

    /// Records an accepted incoming transfer.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn save_incoming(&self, r: &IncomingRecord) -> Result<(), StoreError> {
        let roots = serde_json::to_string(&r.roots).unwrap_or_else(|_| "{}".into());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO incoming (id, peer_id, info, dest_dir, roots, started_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    r.id,
                    r.peer_id,
                    r.info.encode_to_vec(),
                    r.dest_dir.as_os_str().as_bytes(),
                    roots,
                    r.started_ms as i64,
                ],
            )
            .map(|_| ())
        })
    }

    /// Every unfinished incoming transfer, oldest first (undecodable rows are skipped with a
    /// warning).
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn incoming_records(&self) -> Result<Vec<IncomingRecord>, StoreError> {
        self.incoming_where("1 = 1", params![])
    }

    /// One unfinished incoming transfer.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn incoming_record(&self, id: &str) -> Result<Option<IncomingRecord>, StoreError> {
        Ok(self.incoming_where("id = ?1", params![id])?.pop())
    }

    fn incoming_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<IncomingRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT id, peer_id, info, dest_dir, roots, started_ms FROM incoming WHERE {filter} ORDER BY started_ms, id"
            ))?;
            let rows = st.query_map(args, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, peer_id, info, dest, roots, started) = row?;
                let info = match decode_info(&info) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(transfer = %id, cause = %e, "cannot read the stored incoming transfer; skipping it");
                        continue;
                    }
                };
                let Ok(roots) = serde_json::from_str(&roots) else {
                    tracing::warn!(transfer = %id, "stored incoming transfer has unreadable roots; skipping it");
                    continue;
                };
                out.push(IncomingRecord {
                    id,
                    peer_id,
                    info,
                    dest_dir: PathBuf::from(OsStr::from_bytes(&dest)),
                    roots,
                    started_ms: started.max(0) as u64,
                });
            }
            Ok(out)
        })
    }

    /// Saves chunk maps of several files of one transfer in one transaction.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn save_chunk_maps(
        &self,
        id: &str,
        direction: Direction,
        files: &[(u32, bool, &ChunkMap)],
    ) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                // A file recorded complete stays complete: a late partial record of it (a
                // checkpoint racing its placement) must not undo that.
                let mut st = tx.prepare_cached(
                    "INSERT INTO chunk_maps (id, side, file_index, complete, chunks) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id, side, file_index) DO UPDATE
                     SET complete = excluded.complete, chunks = excluded.chunks
                     WHERE chunk_maps.complete = 0",
                )?;
                for (fi, complete, map) in files {
                    // A complete file needs no bitmap.
                    let bytes: &[u8] = if *complete { &[] } else { map.as_bytes() };
                    st.execute(params![id, side(direction), fi, complete, bytes])?;
                }
            }
            tx.commit()
        })
    }

    /// The recorded files of one side of a transfer, by file index.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn chunk_maps(
        &self,
        id: &str,
        direction: Direction,
    ) -> Result<HashMap<u32, FileRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT file_index, complete, chunks FROM chunk_maps WHERE id = ?1 AND side = ?2",
            )?;
            let rows = st.query_map(params![id, side(direction)], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    FileRecord {
                        complete: row.get(1)?,
                        chunks: row.get(2)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Forgets one side of a transfer (it ended).
    ///
    /// # Errors
    /// [`StoreError`].
    pub(crate) fn forget_transfer(&self, id: &str, direction: Direction) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            match direction {
                Direction::Send => tx.execute("DELETE FROM outgoing WHERE id = ?1", params![id])?,
                Direction::Receive => {
                    tx.execute("DELETE FROM incoming WHERE id = ?1", params![id])?
                }
            };
            tx.execute(
                "DELETE FROM chunk_maps WHERE id = ?1 AND side = ?2",
                params![id, side(direction)],
            )?;
            tx.commit()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::wire::v1::FileEntry;

    fn info() -> TransferInfo {
        TransferInfo {
            transfer_id: "t".into(),
            roots: vec!["a".into()],
            files: vec![
                FileEntry {
                    path: "a/x".into(),
                    size: 10,
                    ..Default::default()
                },
                FileEntry {
                    path: "a/y".into(),
                    size: 0,
                    ..Default::default()
                },
            ],
            chunk_size: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_reopening_and_are_forgotten_per_side() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.save_outgoing(&OutgoingRecord {
                id: "t".into(),
                peer_id: "P".into(),
                dial: "P@127.0.0.1:1".into(),
                info: info(),
                sources: vec![PathBuf::from("/x/\u{e9}"), PathBuf::from("/x/y")],
                options: SendOptions::default(),
                paused: false,
                started_ms: 5,
            })
            .unwrap();
            s.set_outgoing_paused("t", true).unwrap();
            let mut roots = HashMap::new();
            roots.insert("a".to_owned(), "a (1)".to_owned());
            s.save_incoming(&IncomingRecord {
                id: "t".into(),
                peer_id: "Q".into(),
                info: info(),
                dest_dir: PathBuf::from("/d"),
                roots,
                started_ms: 6,
            })
            .unwrap();
            let mut m = ChunkMap::new(3);
            m.set(1);
            s.save_chunk_maps("t", Direction::Receive, &[(0, false, &m), (1, true, &m)])
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let out = s.outgoing_records().unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].paused);
        assert_eq!(out[0].sources[0], PathBuf::from("/x/\u{e9}"));
        assert_eq!(out[0].info, info());
        let inc = s.incoming_record("t").unwrap().unwrap();
        assert_eq!(inc.roots["a"], "a (1)");
        let maps = s.chunk_maps("t", Direction::Receive).unwrap();
        assert!(maps[&1].complete);
        assert!(ChunkMap::from_bytes(3, &maps[&0].chunks).get(1));
        assert!(s.chunk_maps("t", Direction::Send).unwrap().is_empty());
        // A complete file is never recorded partial again.
        s.save_chunk_maps("t", Direction::Receive, &[(1, false, &ChunkMap::new(3))])
            .unwrap();
        assert!(s.chunk_maps("t", Direction::Receive).unwrap()[&1].complete);
        s.forget_transfer("t", Direction::Receive).unwrap();
        assert!(s.incoming_record("t").unwrap().is_none());
        assert!(s.chunk_maps("t", Direction::Receive).unwrap().is_empty());
        assert_eq!(s.outgoing_records().unwrap().len(), 1);
    }
}
