//! Transfer history: one record per transfer that ended — completed, failed, cancelled or
//! rejected — in either direction, kept in the state store's `history` table.
//!
//! The node installs [`recorder`] as the registry's [`FinalHook`], so a record is written
//! synchronously when a transfer reaches its final state, before the final event goes out:
//! whoever watches a transfer end (`p2pctl send`, `WatchTransfers`) finds it in history. The
//! insert is one small SQLite transaction in WAL mode (tens of microseconds: with
//! `synchronous = NORMAL` a commit is not fsynced, only the occasional checkpoint is), and a
//! committed row survives a crash or `kill -9` of the process. (`GetTransfer` can show the
//! final state during those microseconds, as the hook runs after the entry's lock is
//! released.)
//!
//! Retention: the newest [`MAX_HISTORY`] records are kept; each insert drops the oldest beyond
//! that. A transfer id is recorded once per direction and peer: if the same transfer ends
//! again (e.g. resumed after a restart), its newer outcome replaces the older one.
//!
//! Text that came from a peer or the file system is cleaned before it is stored: control
//! characters become `?`, a reason is cut at [`MAX_REASON_CHARS`], at most [`MAX_ROOTS`]
//! top-level names of [`MAX_ROOT_CHARS`] each are kept (the full count is in `root_count`).

use std::sync::Arc;

use rusqlite::OptionalExtension;
use rusqlite::{ToSql, params};

use crate::error_chain;
use crate::net::device_id::normalize;
use crate::store::{Store, StoreError};
use crate::transfer::{Direction, FinalHook, TransferSnapshot, TransferState};

/// Records kept; older ones are dropped as new ones arrive.
pub const MAX_HISTORY: usize = 10_000;
/// Records listed when a query gives no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// Top-level names kept per record.
pub const MAX_ROOTS: usize = 20;
/// Longest top-level name kept, in characters.
pub const MAX_ROOT_CHARS: usize = 255;
/// Longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 512;
/// Longest peer filter accepted, in characters.
const MAX_PEER_FILTER_CHARS: usize = 256;

/// How a recorded transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryStatus {
    /// Every file arrived and was verified.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled by either side.
    Cancelled,
    /// Refused by the receiver.
    Rejected,
}

impl HistoryStatus {
    /// The status of a transfer in `state`; `None` while it has not ended.
    pub fn of(state: TransferState) -> Option<Self> {
        match state {
            TransferState::Completed => Some(Self::Completed),
            TransferState::Failed => Some(Self::Failed),
            TransferState::Cancelled => Some(Self::Cancelled),
            TransferState::Rejected => Some(Self::Rejected),
            // Every other state (offered, running, waiting, and any state a transfer can leave
            // again) is not an end.
            _ => None,
        }
    }

    /// The stored word: `completed`, `failed`, `cancelled`, `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for HistoryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            "rejected" => Ok(Self::Rejected),
            other => Err(format!(
                "{other:?} is not a history status (completed, failed, cancelled or rejected)"
            )),
        }
    }
}

fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Send => "send",
        Direction::Receive => "receive",
    }
}

fn parse_direction(s: &str) -> Option<Direction> {
    match s {
        "send" => Some(Direction::Send),
        "receive" => Some(Direction::Receive),
        _ => None,
    }
}

/// One ended transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Transfer id.
    pub id: String,
    /// Which way the bytes went.
    pub direction: Direction,
    /// How it ended.
    pub status: HistoryStatus,
    /// Why it failed, was cancelled or rejected (empty when completed).
    pub reason: String,
    /// Peer device id.
    pub peer_id: String,
    /// Peer name at the time.
    pub peer_name: String,
    /// Peer listen address at the time.
    pub peer_address: String,
    /// Top-level names (at most [`MAX_ROOTS`]).
    pub roots: Vec<String>,
    /// How many top-level names the transfer had.
    pub root_count: u64,
    /// Number of files.
    pub total_files: u64,
    /// Files finished.
    pub files_done: u64,
    /// Payload bytes.
    pub total_bytes: u64,
    /// Payload bytes finished.
    pub bytes_done: u64,
    /// Start, ms since the epoch.
    pub started_at_ms: u64,
    /// End, ms since the epoch.
    pub finished_at_ms: u64,
}

impl HistoryEntry {
    /// The record of a transfer's final snapshot (`None` if it has not ended). Text is
    /// cleaned and capped as the module documentation says.
    pub fn from_snapshot(s: &TransferSnapshot) -> Option<Self> {
        let status = HistoryStatus::of(s.state)?;
        Some(HistoryEntry {
            id: s.id.clone(),
            direction: s.direction,
            status,
            reason: clean(&s.error, MAX_REASON_CHARS),
            peer_id: s.peer_id.clone(),
            peer_name: clean(&s.peer_name, MAX_ROOT_CHARS),
            peer_address: clean(&s.peer_address, MAX_ROOT_CHARS),
            roots: s
                .roots
                .iter()
                .take(MAX_ROOTS)
                .map(|r| clean(r, MAX_ROOT_CHARS))
                .collect(),
            root_count: s.roots.len() as u64,
            total_files: s.total_files,
            files_done: s.files_done,
            total_bytes: s.total_bytes,
            bytes_done: s.bytes_done,
            started_at_ms: s.started_at_ms,
            finished_at_ms: if s.finished_at_ms == 0 {
                now_ms()
            } else {
                s.finished_at_ms
            },
        })
    }

    /// Wall-clock time from start to end (including any wait for the receiver's decision), in
    /// milliseconds; 0 if the clock went backwards.
    pub fn duration_ms(&self) -> u64 {
        self.finished_at_ms.saturating_sub(self.started_at_ms)
    }

    /// Average payload speed over [`duration_ms`](Self::duration_ms), bytes per second; 0 for
    /// a zero duration.
    pub fn bytes_per_second(&self) -> u64 {
        match self.duration_ms() {
            0 => 0,
            ms => u64::try_from(u128::from(self.bytes_done) * 1000 / u128::from(ms))
                .unwrap_or(u64::MAX),
        }
    }
}

/// Which records to list. The default lists the newest [`DEFAULT_LIMIT`] of every kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// At most this many records, newest first; 0 means [`DEFAULT_LIMIT`]. At most
    /// [`MAX_HISTORY`].
    pub limit: usize,
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Only these outcomes (empty: any).
    pub statuses: Vec<HistoryStatus>,
    /// Only this peer: the beginning of its device id (dashes and case ignored), or its name
    /// (ASCII case ignored).
    pub peer: Option<String>,
    /// Only transfers that ended at or after this time, ms since the epoch.
    pub since_ms: Option<u64>,
}

impl HistoryFilter {
    /// Checks the values.
    ///
    /// # Errors
    /// A [`FilterError`] naming the bad value: a limit above [`MAX_HISTORY`], a blank or
    /// overlong peer, a time beyond the year 292 million.
    pub fn validate(&self) -> Result<(), FilterError> {
        if self.limit > MAX_HISTORY {
            return Err(FilterError::Limit(self.limit));
        }
        if let Some(peer) = &self.peer {
            if peer.trim().is_empty() {
                return Err(FilterError::BlankPeer);
            }
            if peer.chars().count() > MAX_PEER_FILTER_CHARS {
                return Err(FilterError::LongPeer);
            }
        }
        if self.since_ms.is_some_and(|t| i64::try_from(t).is_err()) {
            return Err(FilterError::Since);
        }
        Ok(())
    }
}

/// A history filter value that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// More records than history keeps.
    #[error("limit {0} is above {MAX_HISTORY}, the number of transfers history keeps")]
    Limit(usize),
    /// A peer filter of nothing but blanks.
    #[error("the peer filter is blank; give a device id (or its beginning) or a peer name")]
    BlankPeer,
    /// A peer filter longer than any id or name.
    #[error("the peer filter is longer than {MAX_PEER_FILTER_CHARS} characters")]
    LongPeer,
    /// A time the store cannot hold.
    #[error("since is too far in the future")]
    Since,
}

/// The hook the node installs on its transfer registry: records each final snapshot in
/// `store`. A store failure is logged; it never affects the transfer.
pub fn recorder(store: Arc<Store>) -> FinalHook {
    Arc::new(move |snap: &TransferSnapshot| {
        let Some(entry) = HistoryEntry::from_snapshot(snap) else {
            return;
        };
        if let Err(e) = store.record_history(&entry) {
            tracing::warn!(transfer = %snap.id, cause = %error_chain(&e), "cannot record the transfer in history");
        }
    })
}

impl Store {
    /// Records an ended transfer, replacing an earlier record of the same transfer (id,
    /// direction and peer), and drops the oldest records beyond [`MAX_HISTORY`].
    ///
    /// # Errors
    /// [`StoreError`] if SQLite fails.
    pub fn record_history(&self, e: &HistoryEntry) -> Result<(), StoreError> {
        self.record_history_keeping(e, MAX_HISTORY)
    }

    /// [`record_history`](Self::record_history) keeping at most `keep` records.
    pub(crate) fn record_history_keeping(
        &self,
        e: &HistoryEntry,
        keep: usize,
    ) -> Result<(), StoreError> {
        let roots = serde_json::to_string(&e.roots).unwrap_or_else(|_| "[]".to_owned());
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO history (id, direction, status, reason, peer_id, peer_name,
                     peer_address, roots, root_count, total_files, files_done, total_bytes,
                     bytes_done, started_at_ms, finished_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    e.id,
                    direction_word(e.direction),
                    e.status.as_str(),
                    e.reason,
                    e.peer_id,
                    e.peer_name,
                    e.peer_address,
                    roots,
                    sql_int(e.root_count),
                    sql_int(e.total_files),
                    sql_int(e.files_done),
                    sql_int(e.total_bytes),
                    sql_int(e.bytes_done),
                    sql_int(e.started_at_ms),
                    sql_int(e.finished_at_ms),
                ],
            )?;
            // With fewer rows than `keep` the subquery is NULL and nothing goes.
            tx.execute(
                "DELETE FROM history WHERE seq <= (SELECT seq FROM history ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                params![i64::try_from(keep).unwrap_or(i64::MAX)],
            )?;
            tx.commit()
        })
    }

    /// How transfer `id` from or to `peer_id` ended in `direction`, if history has it: the
    /// status and the reason.
    ///
    /// # Errors
    /// [`StoreError`] if SQLite fails.
    pub fn history_outcome(
        &self,
        id: &str,
        direction: Direction,
        peer_id: &str,
    ) -> Result<Option<(HistoryStatus, String)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT status, reason FROM history WHERE id = ?1 AND direction = ?2 AND peer_id = ?3",
                params![id, direction_word(direction), peer_id],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
        })
        .map(|row| row.and_then(|(status, reason)| Some((status.parse().ok()?, reason))))
    }

    /// Records matching `filter`, newest first (in the order they were recorded).
    ///
    /// # Errors
    /// [`StoreError`] if SQLite fails. The filter is not validated here (see
    /// [`HistoryFilter::validate`]): a limit above [`MAX_HISTORY`] simply lists everything.
    pub fn list_history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut sql = format!("{SELECT} WHERE 1 = 1");
        let mut args: Vec<Box<dyn ToSql>> = Vec::new();
        if let Some(d) = filter.direction {
            args.push(Box::new(direction_word(d)));
            sql.push_str(&format!(" AND direction = ?{}", args.len()));
        }
        if !filter.statuses.is_empty() {
            let mut marks = Vec::new();
            for s in &filter.statuses {
                args.push(Box::new(s.as_str()));
                marks.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(" AND status IN ({})", marks.join(", ")));
        }
        if let Some(peer) = &filter.peer {
            let prefix = normalize(peer);
            args.push(Box::new(prefix.chars().count() as i64));
            let len = args.len();
            args.push(Box::new(prefix));
            let pre = args.len();
            args.push(Box::new(peer.trim().to_owned()));
            let name = args.len();
            sql.push_str(&format!(
                " AND ((?{pre} <> '' AND substr(upper(replace(peer_id, '-', '')), 1, ?{len}) = ?{pre})
                       OR lower(peer_name) = lower(?{name}))"
            ));
        }
        if let Some(since) = filter.since_ms {
            args.push(Box::new(sql_int(since)));
            sql.push_str(&format!(" AND finished_at_ms >= ?{}", args.len()));
        }
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            n => n,
        };
        args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ?{}", args.len()));
        self.with(|c| {
            let mut stmt = c.prepare(&sql)?;
            let refs: Vec<&dyn ToSql> = args.iter().map(AsRef::as_ref).collect();
            let rows = stmt.query_map(refs.as_slice(), row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map(|v| v.into_iter().flatten().collect())
    }

    /// Deletes every record. Returns how many there were.
    ///
    /// # Errors
    /// [`StoreError`] if SQLite fails.
    pub fn clear_history(&self) -> Result<u64, StoreError> {
        self.with(|c| c.execute("DELETE FROM history", []))
            .map(|n| n as u64)
    }
}

const SELECT: &str = "SELECT id, direction, status, reason, peer_id, peer_name, peer_address,
    roots, root_count, total_files, files_done, total_bytes, bytes_done, started_at_ms,
    finished_at_ms FROM history";

/// A row as a record; a row with an unknown direction or status (edited by hand, or written
/// by a newer p2pd) is skipped.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<HistoryEntry>> {
    let direction: String = r.get(1)?;
    let status: String = r.get(2)?;
    let (Some(direction), Ok(status)) = (parse_direction(&direction), status.parse()) else {
        return Ok(None);
    };
    let roots: String = r.get(7)?;
    let u = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(Some(HistoryEntry {
        id: r.get(0)?,
        direction,
        status,
        reason: r.get(3)?,
        peer_id: r.get(4)?,
        peer_name: r.get(5)?,
        peer_address: r.get(6)?,
        roots: serde_json::from_str(&roots).unwrap_or_default(),
        root_count: u(8)?,
        total_files: u(9)?,
        files_done: u(10)?,
        total_bytes: u(11)?,
        bytes_done: u(12)?,
        started_at_ms: u(13)?,
        finished_at_ms: u(14)?,
    }))
}

/// SQLite integers are signed: counters beyond `i64::MAX` (never reached) are stored capped.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Control characters replaced by `?` (terminal escapes from a peer), at most `max` characters;
/// a cut text ends in `…`.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::transfer::{NewTransfer, Transfers};

    fn entry(id: &str, direction: Direction, status: HistoryStatus, at: u64) -> HistoryEntry {
        HistoryEntry {
            id: id.to_owned(),
            direction,
            status,
            reason: if status == HistoryStatus::Completed {
                String::new()
            } else {
                format!("{} because", status.as_str())
            },
            peer_id: "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2".to_owned(),
            peer_name: "Kitchen-PC".to_owned(),
            peer_address: "10.0.0.2:14567".to_owned(),
            roots: vec!["photos".to_owned(), "notes.txt".to_owned()],
            root_count: 2,
            total_files: 10,
            files_done: 10,
            total_bytes: 4000,
            bytes_done: 4000,
            started_at_ms: at,
            finished_at_ms: at + 2000,
        }
    }

    fn ids(list: &[HistoryEntry]) -> Vec<&str> {
        list.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn records_list_newest_first_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert!(
                s.list_history(&HistoryFilter::default())
                    .unwrap()
                    .is_empty()
            );
            for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
                s.record_history(&entry(
                    id,
                    Direction::Send,
                    HistoryStatus::Completed,
                    1000 * i as u64,
                ))
                .unwrap();
            }
        }
        let s = Store::open(dir.path()).unwrap();
        let list = s.list_history(&HistoryFilter::default()).unwrap();
        assert_eq!(ids(&list), ["c", "b", "a"]);
        assert_eq!(
            list[2],
            entry("a", Direction::Send, HistoryStatus::Completed, 0)
        );
        assert_eq!(list[0].duration_ms(), 2000);
        assert_eq!(list[0].bytes_per_second(), 2000);
    }

    #[test]
    fn a_store_from_before_history_gains_the_table_and_keeps_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::DeviceId::from_spki(b"a");
        {
            let s = Store::open(dir.path()).unwrap();
            s.seen(&id, "alpha", "10.0.0.1:14567").unwrap();
        }
        // Back to schema version 1: devices only.
        let c = rusqlite::Connection::open(dir.path().join(crate::store::STORE_FILE)).unwrap();
        c.execute_batch(
            "DROP TABLE history; DROP TABLE outgoing; DROP TABLE incoming; DROP TABLE chunk_maps;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(c);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.list(false).unwrap()[0].name, "alpha");
        s.record_history(&entry("a", Direction::Send, HistoryStatus::Completed, 0))
            .unwrap();
        assert_eq!(s.list_history(&HistoryFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn filters_combine() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let other_peer = HistoryEntry {
            peer_id: "MFZWI3D-BONSGYC-AAAAAAA".to_owned(),
            peer_name: "attic".to_owned(),
            ..entry("e", Direction::Receive, HistoryStatus::Completed, 5000)
        };
        for e in [
            entry("a", Direction::Send, HistoryStatus::Completed, 1000),
            entry("b", Direction::Receive, HistoryStatus::Failed, 2000),
            entry("c", Direction::Send, HistoryStatus::Cancelled, 3000),
            entry("d", Direction::Receive, HistoryStatus::Rejected, 4000),
            other_peer,
        ] {
            s.record_history(&e).unwrap();
        }
        let list = |f: HistoryFilter| ids(&s.list_history(&f).unwrap()).join("");
        assert_eq!(list(HistoryFilter::default()), "edcba");
        assert_eq!(
            list(HistoryFilter {
                limit: 2,
                ..Default::default()
            }),
            "ed"
        );
        assert_eq!(
            list(HistoryFilter {
                direction: Some(Direction::Send),
                ..Default::default()
            }),
            "ca"
        );
        assert_eq!(
            list(HistoryFilter {
                statuses: vec![HistoryStatus::Failed, HistoryStatus::Rejected],
                ..Default::default()
            }),
            "db"
        );
        assert_eq!(
            list(HistoryFilter {
                direction: Some(Direction::Receive),
                statuses: vec![HistoryStatus::Completed],
                ..Default::default()
            }),
            "e"
        );
        for peer in [
            "p56ioi7",
            "P56I",
            "P56IOI7-MZJN",
            "kitchen-pc",
            " Kitchen-PC ",
        ] {
            assert_eq!(
                list(HistoryFilter {
                    peer: Some(peer.to_owned()),
                    ..Default::default()
                }),
                "dcba",
                "{peer}"
            );
        }
        for peer in ["attic", "MFZW"] {
            assert_eq!(
                list(HistoryFilter {
                    peer: Some(peer.to_owned()),
                    ..Default::default()
                }),
                "e"
            );
        }
        for peer in ["kitchen", "ZZZZ", "%", "_"] {
            assert_eq!(
                list(HistoryFilter {
                    peer: Some(peer.to_owned()),
                    ..Default::default()
                }),
                "",
                "{peer}"
            );
        }
        // "since" looks at when a transfer ended (started + 2 s here).
        assert_eq!(
            list(HistoryFilter {
                since_ms: Some(5000),
                ..Default::default()
            }),
            "edc"
        );
    }

    #[test]
    fn filters_are_validated() {
        assert!(HistoryFilter::default().validate().is_ok());
        let ok = HistoryFilter {
            limit: MAX_HISTORY,
            peer: Some("beta".into()),
            since_ms: Some(1),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let err = HistoryFilter {
            limit: MAX_HISTORY + 1,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err, FilterError::Limit(MAX_HISTORY + 1));
        assert!(err.to_string().contains("limit 10001"), "{err}");
        for peer in ["", "  ", &"x".repeat(300)] {
            let f = HistoryFilter {
                peer: Some(peer.to_owned()),
                ..Default::default()
            };
            let err = f.validate().unwrap_err();
            assert!(err.to_string().contains("peer filter"), "{peer}: {err}");
        }
        let f = HistoryFilter {
            since_ms: Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(f.validate(), Err(FilterError::Since));
    }

    #[test]
    fn the_table_keeps_only_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for i in 0..12u64 {
            let e = entry(
                &format!("t{i:02}"),
                Direction::Send,
                HistoryStatus::Completed,
                i,
            );
            s.record_history_keeping(&e, 5).unwrap();
        }
        let all = s
            .list_history(&HistoryFilter {
                limit: MAX_HISTORY,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&all), ["t11", "t10", "t09", "t08", "t07"]);
    }

    #[test]
    fn the_same_transfer_ending_again_replaces_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.record_history(&entry("a", Direction::Send, HistoryStatus::Failed, 0))
            .unwrap();
        s.record_history(&entry("b", Direction::Send, HistoryStatus::Completed, 1))
            .unwrap();
        // The same id received (a send to ourselves) is another record.
        s.record_history(&entry("a", Direction::Receive, HistoryStatus::Completed, 2))
            .unwrap();
        s.record_history(&entry("a", Direction::Send, HistoryStatus::Completed, 3))
            .unwrap();
        let list = s.list_history(&HistoryFilter::default()).unwrap();
        let got: Vec<(&str, Direction, HistoryStatus)> = list
            .iter()
            .map(|e| (e.id.as_str(), e.direction, e.status))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Direction::Send, HistoryStatus::Completed),
                ("a", Direction::Receive, HistoryStatus::Completed),
                ("b", Direction::Send, HistoryStatus::Completed),
            ]
        );
    }

    #[test]
    fn clear_removes_everything_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for id in ["a", "b"] {
            s.record_history(&entry(id, Direction::Send, HistoryStatus::Completed, 0))
                .unwrap();
        }
        assert_eq!(s.clear_history().unwrap(), 2);
        assert!(
            s.list_history(&HistoryFilter::default())
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.clear_history().unwrap(), 0);
        // Recording goes on after a clear.
        s.record_history(&entry("c", Direction::Send, HistoryStatus::Completed, 0))
            .unwrap();
        assert_eq!(s.list_history(&HistoryFilter::default()).unwrap().len(), 1);
    }

    fn new_transfer(id: &str) -> NewTransfer {
        NewTransfer {
            id: id.to_owned(),
            direction: Direction::Receive,
            state: TransferState::WaitingAccept,
            peer_id: "P56IOI7".to_owned(),
            peer_name: "evil\u{1b}[2Jname".to_owned(),
            peer_address: "10.0.0.2:14567".to_owned(),
            roots: (0..30).map(|i| format!("root{i}")).collect(),
            total_files: 30,
            total_bytes: 300,
            destination: String::new(),
            started: None,
            max_speed: 0,
        }
    }

    #[test]
    fn snapshots_are_cleaned_and_capped() {
        let reg = Transfers::new();
        let e = reg.insert(new_transfer("t1"), CancellationToken::new());
        assert!(
            HistoryEntry::from_snapshot(&e.snapshot()).is_none(),
            "not ended"
        );
        let reason = format!("bad\nthing {}", "x".repeat(2000));
        e.set_state(TransferState::Failed, reason);
        let h = HistoryEntry::from_snapshot(&e.snapshot()).unwrap();
        assert_eq!(h.status, HistoryStatus::Failed);
        assert_eq!(h.peer_name, "evil?[2Jname");
        assert!(h.reason.starts_with("bad?thing xx"), "{}", h.reason);
        assert!(h.reason.ends_with('…'));
        assert_eq!(h.reason.chars().count(), MAX_REASON_CHARS);
        assert_eq!(h.roots.len(), MAX_ROOTS);
        assert_eq!(h.root_count, 30);
        assert!(h.finished_at_ms >= h.started_at_ms && h.finished_at_ms > 0);
        assert_eq!(clean("short", 10), "short");
        assert_eq!(clean("exactly", 7), "exactly");
        assert_eq!(clean("too long", 4), "too…");
    }

    #[tokio::test]
    async fn the_registry_hook_runs_once_per_end_before_the_final_event() {
        let seen: Arc<Mutex<Vec<(String, TransferState)>>> = Arc::default();
        let hook: FinalHook = {
            let seen = seen.clone();
            Arc::new(move |s: &TransferSnapshot| {
                seen.lock().unwrap().push((s.id.clone(), s.state));
            })
        };
        let reg = Transfers::with_final_hook(hook);
        let mut events = reg.subscribe();
        let e = reg.insert(new_transfer("t1"), CancellationToken::new());
        assert!(e.set_state(TransferState::Running, ""));
        assert!(seen.lock().unwrap().is_empty(), "not final yet");
        assert!(e.set_state(TransferState::Completed, ""));
        assert!(!e.set_state(TransferState::Failed, "late"));
        assert!(!e.set_state(TransferState::Cancelled, "later"));
        assert_eq!(
            *seen.lock().unwrap(),
            [("t1".to_owned(), TransferState::Completed)]
        );
        // By the time the final event is out, the hook has run.
        loop {
            let s = events.recv().await.unwrap();
            if s.state.is_final() {
                assert_eq!(seen.lock().unwrap().len(), 1);
                break;
            }
        }
        // An entry registered already final is reported once too.
        let mut done = new_transfer("t2");
        done.state = TransferState::Rejected;
        let e2 = reg
            .insert_new(done, CancellationToken::new())
            .expect("new id");
        assert!(!e2.set_state(TransferState::Failed, "again"));
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(seen.lock().unwrap()[1].1, TransferState::Rejected);
        // Without a hook nothing is called, and nothing breaks.
        let plain = Transfers::new();
        let e3 = plain.insert(new_transfer("t3"), CancellationToken::new());
        assert!(e3.set_state(TransferState::Cancelled, ""));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_recorder_writes_final_snapshots_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let reg = Transfers::with_final_hook(recorder(store.clone()));
        let e = reg.insert(new_transfer("t1"), CancellationToken::new());
        e.bytes_done
            .store(120, std::sync::atomic::Ordering::Relaxed);
        e.set_state(TransferState::Cancelled, "cancelled by user");
        let list = store.list_history(&HistoryFilter::default()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "t1");
        assert_eq!(list[0].status, HistoryStatus::Cancelled);
        assert_eq!(list[0].reason, "cancelled by user");
        assert_eq!(list[0].bytes_done, 120);
        assert_eq!(list[0].direction, Direction::Receive);
    }

    #[test]
    fn status_words_round_trip() {
        for s in [
            HistoryStatus::Completed,
            HistoryStatus::Failed,
            HistoryStatus::Cancelled,
            HistoryStatus::Rejected,
        ] {
            assert_eq!(s.as_str().parse::<HistoryStatus>(), Ok(s));
        }
        assert!("running".parse::<HistoryStatus>().is_err());
        assert_eq!(HistoryStatus::of(TransferState::Running), None);
        assert_eq!(HistoryStatus::of(TransferState::Offered), None);
        assert_eq!(HistoryStatus::of(TransferState::WaitingAccept), None);
    }
}
