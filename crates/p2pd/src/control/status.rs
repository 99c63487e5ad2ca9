//! Status and shutdown.

use std::path::Path;

use p2p_core::Node;
use p2p_proto::control::v1 as pb;
use tonic::Status;

/// `GetStatus`: the node's status, this process's pid and the control socket's path.
pub(super) fn get(
    node: &Node,
    socket_path: &Path,
    _r: pb::GetStatusRequest,
) -> Result<pb::GetStatusResponse, Status> {
    let s = node.status();
    Ok(pb::GetStatusResponse {
        device_id: s.device_id,
        device_name: s.device_name,
        version: s.version.to_owned(),
        uptime_ms: u64::try_from(s.uptime.as_millis()).unwrap_or(u64::MAX),
        listen_address: s.listen_addr.to_string(),
        session_count: s.session_count,
        active_transfer_count: s.active_transfer_count,
        pid: std::process::id(),
        state_dir: s.state_dir.display().to_string(),
        download_dir: s.download_dir.display().to_string(),
        socket_path: socket_path.display().to_string(),
        max_speed: s.max_speed,
    })
}

/// `Shutdown`: asks the node to stop.
pub(super) fn shutdown(
    node: &Node,
    _r: pb::ShutdownRequest,
) -> Result<pb::ShutdownResponse, Status> {
    tracing::info!("shutdown requested over the control API");
    // The server drains in-flight requests before it stops, so this reply still goes out.
    node.request_shutdown();
    Ok(pb::ShutdownResponse {})
}
