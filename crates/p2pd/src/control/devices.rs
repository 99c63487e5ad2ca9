//! Known devices: list, pending, trust, untrust.

use std::path::PathBuf;

use p2p_core::store::DeviceAccept;
use p2p_core::{DeviceView, Node};
use p2p_proto::control::v1 as pb;
use tonic::Status;

use super::errors::status_of;
use super::required;

/// The proto form of a device's receiving rule.
fn accept_pb(a: Option<DeviceAccept>) -> pb::DeviceAccept {
    match a {
        None => pb::DeviceAccept::Default,
        Some(DeviceAccept::Auto) => pb::DeviceAccept::Auto,
        Some(DeviceAccept::Ask) => pb::DeviceAccept::Ask,
        Some(DeviceAccept::Reject) => pb::DeviceAccept::Reject,
    }
}

/// The receiving rule of a `TrustDevice` request; an unknown value is `INVALID_ARGUMENT`.
fn accept_of(value: i32) -> Result<Option<DeviceAccept>, Status> {
    match pb::DeviceAccept::try_from(value) {
        Ok(pb::DeviceAccept::Default) => Ok(None),
        Ok(pb::DeviceAccept::Auto) => Ok(Some(DeviceAccept::Auto)),
        Ok(pb::DeviceAccept::Ask) => Ok(Some(DeviceAccept::Ask)),
        Ok(pb::DeviceAccept::Reject) => Ok(Some(DeviceAccept::Reject)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown accept rule {value}"
        ))),
    }
}

/// The proto form of a device.
fn device_pb(v: DeviceView) -> pb::Device {
    let d = v.device;
    pb::Device {
        id: d.id.to_string(),
        name: d.name,
        trusted: d.trusted,
        accept: accept_pb(d.accept) as i32,
        download_dir: d
            .download_dir
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        first_seen_ms: d.first_seen_ms,
        last_seen_ms: d.last_seen_ms,
        last_address: d.last_address,
        connected: v.connected,
    }
}

/// The trusted devices (`trusted`) or the pending ones.
fn devices(node: &Node, trusted: bool) -> Result<pb::ListDevicesResponse, Status> {
    let devices = node
        .devices(trusted)
        .map_err(status_of)?
        .into_iter()
        .map(device_pb)
        .collect();
    Ok(pb::ListDevicesResponse { devices })
}

/// `ListDevices`: the trusted devices.
pub(super) fn list(
    node: &Node,
    _r: pb::ListDevicesRequest,
) -> Result<pb::ListDevicesResponse, Status> {
    devices(node, true)
}

/// `ListPending`: devices seen but not trusted.
pub(super) fn pending(
    node: &Node,
    _r: pb::ListPendingRequest,
) -> Result<pb::ListDevicesResponse, Status> {
    devices(node, false)
}

/// `TrustDevice`, with an optional name, receiving rule and download dir.
pub(super) fn trust(node: &Node, r: pb::TrustDeviceRequest) -> Result<pb::Device, Status> {
    let accept = accept_of(r.accept)?;
    let name = (!r.name.trim().is_empty()).then_some(r.name.as_str());
    let dir = (!r.download_dir.is_empty()).then(|| PathBuf::from(&r.download_dir));
    let d = node
        .trust(required(&r.id, "id")?, name, accept, dir.as_deref())
        .map_err(status_of)?;
    let connected = node
        .sessions()
        .iter()
        .any(|s| s.peer_id == d.id.to_string());
    Ok(device_pb(DeviceView {
        device: d,
        connected,
    }))
}

/// `UntrustDevice`.
pub(super) fn untrust(
    node: &Node,
    r: pb::UntrustDeviceRequest,
) -> Result<pb::UntrustDeviceResponse, Status> {
    let id = node.untrust(required(&r.id, "id")?).map_err(status_of)?;
    Ok(pb::UntrustDeviceResponse { id: id.to_string() })
}
