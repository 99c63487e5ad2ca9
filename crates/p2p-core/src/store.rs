//! The durable state store: an SQLite database (`state.db`) in the state dir, WAL mode, schema
//! versioned with `PRAGMA user_version` and applied by ordered migrations. This file owns the
//! connection, the schema and its migrations; each table family has a file of its own:
//!
//! - [`devices`]: known devices — trusted ones with their rules, pending ones.
//! - [`history`]: the transfer history — records of ended transfers, filters, retention.
//! - `records`: durable records of unfinished transfers (resume after a break or restart).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub mod devices;
pub mod history;
pub(crate) mod records;

pub use devices::{Device, DeviceAccept};

/// File name of the database inside the state dir.
pub const STORE_FILE: &str = "state.db";

/// Migrations, in order; `user_version` counts how many have run. Only ever append.
const MIGRATIONS: &[&str] = &[
    // 1: known devices.
    "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        trusted INTEGER NOT NULL DEFAULT 0,
        accept TEXT,
        download_dir TEXT,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        last_address TEXT NOT NULL DEFAULT ''
    );",
    // 2: transfer history, one row per ended transfer (see `crate::store::history`). `seq` orders
    // rows by the time they were recorded; `roots` is a JSON array of at most
    // `history::MAX_ROOTS` names, `root_count` the number the transfer had.
    "CREATE TABLE history (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        direction TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        peer_id TEXT NOT NULL,
        peer_name TEXT NOT NULL DEFAULT '',
        peer_address TEXT NOT NULL DEFAULT '',
        roots TEXT NOT NULL DEFAULT '[]',
        root_count INTEGER NOT NULL DEFAULT 0,
        total_files INTEGER NOT NULL,
        files_done INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        bytes_done INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER NOT NULL,
        UNIQUE (id, direction, peer_id)
    );
    CREATE INDEX history_finished ON history (finished_at_ms);",
    // 3: unfinished transfers, for resume (see `crate::store::records`).
    crate::store::records::MIGRATION,
];

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state store {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer p2pd.
    #[error("state store {path} has schema version {found}, newer than this p2pd knows ({known})")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
}

/// Handle to the store.
#[derive(Debug)]
pub struct Store {
    // One connection, serialised: writes are small and rare next to the data path.
    conn: Mutex<Connection>,
    path: PathBuf,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating and migrating) the store in `state_dir`.
    ///
    /// # Errors
    /// [`StoreError`] if SQLite fails or the schema is newer than this build.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(STORE_FILE);
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path,
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        if let Err(e) =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), cause = %e, "cannot restrict the state store's mode");
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Runs `f` on the connection (serialised), naming the database in an error.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let c = Connection::open(dir.path().join(STORE_FILE)).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
