//! Known devices: trusted ones with their per-device rules (accept, download dir), and pending
//! ones (untrusted devices that connected or offered something) — the `devices` table.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now_ms};
use crate::net::device_id::{DeviceId, normalize};

/// A per-device receiving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAccept {
    /// Accept at once.
    Auto,
    /// Wait for a decision.
    Ask,
    /// Refuse.
    Reject,
}

impl DeviceAccept {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ask => "ask",
            Self::Reject => "reject",
        }
    }
}

impl std::str::FromStr for DeviceAccept {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ask" => Ok(Self::Ask),
            "reject" => Ok(Self::Reject),
            other => Err(format!(
                "{other:?} is not a receiving rule (auto, ask or reject)"
            )),
        }
    }
}

/// A known device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub id: DeviceId,
    /// Its last announced name.
    pub name: String,
    /// Whether the user trusts it.
    pub trusted: bool,
    /// Its receiving rule; `None` follows the daemon's `--accept`.
    pub accept: Option<DeviceAccept>,
    /// Where its files go; `None` is the download dir.
    pub download_dir: Option<PathBuf>,
    /// First contact, ms since the epoch.
    pub first_seen_ms: u64,
    /// Last contact, ms since the epoch.
    pub last_seen_ms: u64,
    /// Its last known peer listen address.
    pub last_address: String,
}

impl Store {
    /// Records contact with a device (creating it as pending if new).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn seen(&self, id: &DeviceId, name: &str, address: &str) -> Result<(), StoreError> {
        let now = now_ms() as i64;
        self.with(|c| {
            c.execute(
                "INSERT INTO devices (id, name, first_seen_ms, last_seen_ms, last_address) VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, last_seen_ms = ?3, last_address = ?4",
                params![id.to_string(), name, now, address],
            )
            .map(|_| ())
        })
    }

    /// Trusts a device (creating it if unknown) and sets its rules.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn trust(
        &self,
        id: &DeviceId,
        name: Option<&str>,
        accept: Option<DeviceAccept>,
        download_dir: Option<&Path>,
    ) -> Result<(), StoreError> {
        let now = now_ms() as i64;
        self.with(|c| {
            c.execute(
                "INSERT INTO devices (id, name, trusted, accept, download_dir, first_seen_ms, last_seen_ms) VALUES (?1, COALESCE(?2, ''), 1, ?3, ?4, ?5, ?5)
                 ON CONFLICT(id) DO UPDATE SET trusted = 1, name = COALESCE(?2, name), accept = ?3, download_dir = ?4",
                params![
                    id.to_string(),
                    name,
                    accept.map(DeviceAccept::as_str),
                    download_dir.map(|p| p.display().to_string()),
                    now
                ],
            )
            .map(|_| ())
        })
    }

    /// Forgets a device entirely (trusted or pending). Returns whether it was known.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn forget(&self, id: &DeviceId) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM devices WHERE id = ?1", params![id.to_string()])
                .map(|n| n > 0)
        })
    }

    /// One device.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn get(&self, id: &DeviceId) -> Result<Option<Device>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("{SELECT} WHERE id = ?1"),
                params![id.to_string()],
                row,
            )
            .optional()
        })
        .map(Option::flatten)
    }

    /// Trusted devices (`trusted = true`) or pending ones (`false`), by name.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn list(&self, trusted: bool) -> Result<Vec<Device>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{SELECT} WHERE trusted = ?1 ORDER BY name, id"))?;
            let rows = stmt.query_map(params![trusted as i64], row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map(|v| v.into_iter().flatten().collect())
    }

    /// The trusted device last seen at `address`, if exactly one.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn trusted_at(&self, address: &str) -> Result<Option<DeviceId>, StoreError> {
        let found: Vec<Device> = self
            .list(true)?
            .into_iter()
            .filter(|d| d.last_address == address)
            .collect();
        Ok(if found.len() == 1 {
            Some(found[0].id)
        } else {
            None
        })
    }

    /// Resolves a full id, or a unique prefix among known (trusted or pending) devices.
    ///
    /// # Errors
    /// The outer [`StoreError`] if the store fails; the inner [`ResolveError`] if no device or
    /// several match.
    pub fn resolve(&self, text: &str) -> Result<Result<DeviceId, ResolveError>, StoreError> {
        if let Ok(id) = text.parse::<DeviceId>() {
            return Ok(Ok(id));
        }
        let want = normalize(text);
        if want.is_empty() {
            return Ok(Err(ResolveError::Empty));
        }
        let mut all = self.list(true)?;
        all.extend(self.list(false)?);
        let matches: Vec<&Device> = all
            .iter()
            .filter(|d| normalize(&d.id.to_string()).starts_with(&want))
            .collect();
        Ok(match matches.as_slice() {
            [one] => Ok(one.id),
            [] => Err(ResolveError::NoMatch(text.to_owned())),
            many => Err(ResolveError::Ambiguous {
                text: text.to_owned(),
                candidates: many.iter().map(|d| (d.id, d.name.clone())).collect(),
            }),
        })
    }
}

/// A device id the user typed that names no single known device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing was given.
    #[error("empty device id")]
    Empty,
    /// No known or pending device has an id that begins so.
    #[error("no known or pending device matches {0:?}; give the full device id")]
    NoMatch(String),
    /// Several do.
    #[error("{text:?} matches several devices: {}", list(.candidates))]
    Ambiguous {
        /// What was given.
        text: String,
        /// The devices it matches: id and name.
        candidates: Vec<(DeviceId, String)>,
    },
}

fn list(candidates: &[(DeviceId, String)]) -> String {
    candidates
        .iter()
        .map(|(id, name)| format!("{id} ({name})"))
        .collect::<Vec<_>>()
        .join(", ")
}

const SELECT: &str = "SELECT id, name, trusted, accept, download_dir, first_seen_ms, last_seen_ms, last_address FROM devices";

/// A row as a device; a row whose id does not parse (edited by hand) is skipped.
fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Device>> {
    let id: String = r.get(0)?;
    let Ok(id) = id.parse::<DeviceId>() else {
        return Ok(None);
    };
    let accept: Option<String> = r.get(3)?;
    let dir: Option<String> = r.get(4)?;
    Ok(Some(Device {
        id,
        name: r.get(1)?,
        trusted: r.get::<_, i64>(2)? != 0,
        accept: accept.and_then(|a| a.parse().ok()),
        download_dir: dir.map(PathBuf::from),
        first_seen_ms: r.get::<_, i64>(5)?.max(0) as u64,
        last_seen_ms: r.get::<_, i64>(6)?.max(0) as u64,
        last_address: r.get(7)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_pending_until_trusted_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::from_spki(b"a");
        let b = DeviceId::from_spki(b"b");
        {
            let s = Store::open(dir.path()).unwrap();
            s.seen(&a, "alpha", "10.0.0.1:14567").unwrap();
            s.seen(&b, "beta", "10.0.0.2:14567").unwrap();
            assert_eq!(s.list(false).unwrap().len(), 2);
            s.trust(&a, None, Some(DeviceAccept::Auto), Some(Path::new("/x")))
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let t = s.list(true).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "alpha");
        assert_eq!(t[0].accept, Some(DeviceAccept::Auto));
        assert_eq!(t[0].download_dir.as_deref(), Some(Path::new("/x")));
        assert_eq!(s.trusted_at("10.0.0.1:14567").unwrap(), Some(a));
        assert_eq!(
            s.trusted_at("10.0.0.2:14567").unwrap(),
            None,
            "pending devices do not pin"
        );
        assert!(s.forget(&a).unwrap());
        assert!(s.get(&a).unwrap().is_none());
    }

    #[test]
    fn prefixes_resolve_only_among_known_devices() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = DeviceId::from_spki(b"a");
        s.seen(&a, "alpha", "").unwrap();
        let short = a.short();
        assert_eq!(s.resolve(&short.to_lowercase()).unwrap(), Ok(a));
        assert_eq!(
            s.resolve("ZZZZZZZ").unwrap(),
            Err(ResolveError::NoMatch("ZZZZZZZ".into()))
        );
        assert_eq!(s.resolve(" - ").unwrap(), Err(ResolveError::Empty));
        assert_eq!(
            s.resolve(&a.to_string()).unwrap(),
            Ok(a),
            "a full id needs no record"
        );
    }
}
