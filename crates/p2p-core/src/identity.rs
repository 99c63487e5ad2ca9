//! The device identity: a device id (UUID v4) and a default device name, created on first start
//! and kept in `identity.json` in the state dir (mode 0600).
//!
//! A corrupt identity file is an error, never silently replaced: other devices know this device
//! by its id, and a fresh id would make it a stranger to them.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsutil;

/// File name of the identity inside the state dir.
pub const IDENTITY_FILE: &str = "identity.json";

/// Who this device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The device id, stable for the life of the state dir.
    pub device_id: Uuid,
    /// The name chosen at creation (the host name); `--name` or config override it at run time.
    pub name: String,
}

/// Errors loading or creating the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state dir or identity file could not be read or written.
    #[error("cannot access identity at {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The identity file exists but does not parse.
    #[error("identity file {path} is corrupt (move it away to create a new identity)")]
    Corrupt {
        /// The identity file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl Identity {
    /// Loads the identity from `state_dir`, creating the directory (0700) and a new identity if
    /// there is none.
    ///
    /// # Errors
    /// [`IdentityError`] if the directory or file cannot be accessed or the file is corrupt.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        fsutil::ensure_private_dir(state_dir).map_err(|source| IdentityError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IdentityError::Corrupt {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Identity {
                    device_id: Uuid::new_v4(),
                    name: host_name(),
                };
                let json = serde_json::to_vec_pretty(&identity).map_err(|e| IdentityError::Io {
                    path: path.clone(),
                    source: io::Error::other(e),
                })?;
                fsutil::write_atomic(&path, &json, 0o600).map_err(|source| IdentityError::Io {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(device_id = %identity.device_id, name = %identity.name, "created a new device identity");
                Ok(identity)
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }
}

/// The host name, or `p2pd-device` if it is empty or not valid UTF-8.
pub fn host_name() -> String {
    let name = gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_owned();
    if name.is_empty() {
        "p2pd-device".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = Identity::load_or_create(&state).unwrap();
        let b = Identity::load_or_create(&state).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.device_id.get_version_num(), 4);
        let mode = std::fs::metadata(state.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_identity_is_an_error_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"{not json"
        );
    }
}
