//! The device identity: an Ed25519 key pair and a self-signed certificate, created on first
//! start and kept in the state dir (mode 0600), and a default device name (the host name).
//!
//! The device id is the SHA-256 of the public key, so re-issuing the certificate (delete
//! `device.crt` and restart) keeps the id; a new key is a new device. A corrupt key is an error,
//! never silently replaced: other devices know this device by its id.

use std::io;
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::net::device_id::DeviceId;

/// The device's settings file inside the state dir.
pub const IDENTITY_FILE: &str = "identity.json";
/// The private key (PKCS#8 PEM).
pub const KEY_FILE: &str = "device.key";
/// The self-signed certificate (PEM).
pub const CERT_FILE: &str = "device.crt";

/// Who this device is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The device id (SHA-256 of the public key).
    pub device_id: DeviceId,
    /// The name chosen at creation (the host name); `--name` or config override it at run time.
    pub name: String,
    /// The certificate presented to peers.
    pub cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    name: String,
}

/// Errors loading or creating the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state dir or an identity file could not be read or written.
    #[error("cannot access identity at {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An identity file exists but does not parse.
    #[error("identity file {path} is corrupt ({reason}); move it away to create a new identity")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Identity {
    /// Loads the identity from `state_dir`, creating the directory (0700), a key pair and a
    /// certificate if there are none.
    ///
    /// # Errors
    /// [`IdentityError`] if a file cannot be accessed or is corrupt.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        fsutil::ensure_private_dir(state_dir).map_err(|source| IdentityError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let corrupt = |path: &Path, reason: String| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };

        let id_path = state_dir.join(IDENTITY_FILE);
        let name = match std::fs::read(&id_path) {
            // Older files carry more fields (a UUID device id); only the name is kept.
            Ok(bytes) => {
                serde_json::from_slice::<Stored>(&bytes)
                    .map_err(|e| corrupt(&id_path, e.to_string()))?
                    .name
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let name = host_name();
                let json = serde_json::to_vec_pretty(&Stored { name: name.clone() })
                    .map_err(|e| io_err(&id_path)(io::Error::other(e)))?;
                fsutil::write_atomic(&id_path, &json, 0o600).map_err(io_err(&id_path))?;
                name
            }
            Err(e) => return Err(io_err(&id_path)(e)),
        };

        let key_path = state_dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                rcgen::KeyPair::from_pem(&pem).map_err(|e| corrupt(&key_path, e.to_string()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| io_err(&key_path)(io::Error::other(e)))?;
                fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                    .map_err(io_err(&key_path))?;
                key
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let device_id = DeviceId::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&key));

        let cert_path = state_dir.join(CERT_FILE);
        let cert = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => {
                let der = pem_to_der(&pem)
                    .ok_or_else(|| corrupt(&cert_path, "not a PEM certificate".into()))?;
                let ee = webpki::EndEntityCert::try_from(&der)
                    .map_err(|e| corrupt(&cert_path, format!("{e:?}")))?;
                if DeviceId::from_spki(ee.subject_public_key_info().as_ref()) != device_id {
                    return Err(corrupt(
                        &cert_path,
                        format!("it does not belong to the key in {KEY_FILE}"),
                    ));
                }
                der
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut params = rcgen::CertificateParams::new(vec!["p2pd".to_owned()])
                    .map_err(|e| io_err(&cert_path)(io::Error::other(e)))?;
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, "p2pd");
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| io_err(&cert_path)(io::Error::other(e)))?;
                fsutil::write_atomic(&cert_path, cert.pem().as_bytes(), 0o600)
                    .map_err(io_err(&cert_path))?;
                tracing::info!(%device_id, "issued a device certificate");
                cert.der().clone()
            }
            Err(e) => return Err(io_err(&cert_path)(e)),
        };
        Ok(Identity {
            device_id,
            name,
            cert,
            key_pkcs8: key.serialize_der(),
        })
    }

    /// The private key, for TLS.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = data_encoding::BASE64.decode(body.trim().as_bytes()).ok()?;
    Some(CertificateDer::from(der))
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
        assert_eq!(a.device_id, b.device_id);
        assert_eq!(a.cert, b.cert);
        for f in [IDENTITY_FILE, KEY_FILE, CERT_FILE] {
            let mode = std::fs::metadata(state.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn reissuing_the_certificate_keeps_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.device_id, b.device_id);
    }

    #[test]
    fn corrupt_files_are_errors_and_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            b"{not json"
        );

        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        Identity::load_or_create(a.path()).unwrap();
        Identity::load_or_create(b.path()).unwrap();
        std::fs::copy(b.path().join(CERT_FILE), a.path().join(CERT_FILE)).unwrap();
        let err = Identity::load_or_create(a.path()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn an_old_uuid_identity_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            br#"{"device_id":"828b67ea-d5bb-4e04-b938-3bdf47761202","name":"old-name"}"#,
        )
        .unwrap();
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().name,
            "old-name"
        );
    }
}
