//! Devices and trust: the known and pending devices, trusting a device with its receiving
//! rules, forgetting one (which ends what it was sending here and closes its sessions), and
//! resolving the short device ids users type.

use std::path::Path;

use super::{DeviceView, Node, NodeError};
use crate::net::device_id::DeviceId;
use crate::store::DeviceAccept;
use crate::transfer::Direction;

impl Node {
    /// Trusted devices (`trusted`) or pending ones (untrusted devices that connected).
    ///
    /// # Errors
    /// [`NodeError::Store`] if the state store fails.
    pub fn devices(&self, trusted: bool) -> Result<Vec<DeviceView>, NodeError> {
        let connected = self.inner.sessions.connected_devices();
        let list = self.inner.store.list(trusted)?;
        Ok(list
            .into_iter()
            .map(|d| DeviceView {
                connected: connected.contains(&d.id),
                device: d,
            })
            .collect())
    }

    /// Trusts a device — a full id, or a unique prefix of a known or pending one — and sets
    /// its rules. Returns the stored record.
    ///
    /// # Errors
    /// [`NodeError::DeviceLookup`] for an id that does not resolve, [`NodeError::OwnDevice`],
    /// [`NodeError::NotAbsolute`] for a relative download dir; [`NodeError::Store`] if the
    /// store fails.
    pub fn trust(
        &self,
        id: &str,
        name: Option<&str>,
        accept: Option<DeviceAccept>,
        download_dir: Option<&Path>,
    ) -> Result<crate::store::Device, NodeError> {
        let id = self.resolve_device(id)?;
        if id == self.inner.identity.device_id {
            return Err(NodeError::OwnDevice);
        }
        if let Some(d) = download_dir {
            if !d.is_absolute() {
                return Err(NodeError::NotAbsolute {
                    what: "download dir",
                    path: d.to_path_buf(),
                });
            }
        }
        self.inner.store.trust(&id, name, accept, download_dir)?;
        tracing::info!(device = %id, "device trusted");
        self.inner
            .store
            .get(&id)?
            .ok_or(NodeError::DeviceVanished(id))
    }

    /// Forgets a device (trusted or pending); live sessions with it are closed.
    ///
    /// # Errors
    /// [`NodeError::DeviceLookup`] for an id that does not resolve, [`NodeError::UnknownDevice`]
    /// if it is not known, [`NodeError::Store`] if the store fails.
    pub fn untrust(&self, id: &str) -> Result<DeviceId, NodeError> {
        let id = self.resolve_device(id)?;
        if !self.inner.store.forget(&id)? {
            return Err(NodeError::UnknownDevice(id));
        }
        // What it was sending here ends: a device no longer trusted does not get to resume
        // into the download dir.
        let device = id.to_string();
        for t in self.inner.transfers.list() {
            if t.direction == Direction::Receive && t.peer_id == device && !t.state.is_final() {
                let _ = self.cancel_because(&t.id, "the sending device is no longer trusted");
            }
        }
        self.inner.sessions.close_device(&id);
        tracing::info!(device = %id, "device untrusted");
        Ok(id)
    }

    /// Whether a device is trusted.
    pub fn trusted(&self, id: &DeviceId) -> bool {
        self.is_trusted(id)
    }

    pub(super) fn is_trusted(&self, id: &DeviceId) -> bool {
        matches!(self.inner.store.get(id), Ok(Some(d)) if d.trusted)
    }

    /// The device a full id or a unique prefix of a known one names.
    pub(super) fn resolve_device(&self, text: &str) -> Result<DeviceId, NodeError> {
        Ok(self.inner.store.resolve(text)??)
    }
}
