//! The gRPC control service: a thin adapter that maps proto messages to `p2p_core::Node` calls.
//! No logic lives here.

use std::path::PathBuf;

use p2p_core::Node;
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_server::ControlService;
use tonic::{Request, Response, Status};

/// The control service over one node.
#[derive(Debug, Clone)]
pub(crate) struct ControlApi {
    node: Node,
    socket_path: PathBuf,
}

impl ControlApi {
    pub(crate) fn new(node: Node, socket_path: PathBuf) -> Self {
        ControlApi { node, socket_path }
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let s = self.node.status();
        Ok(Response::new(pb::GetStatusResponse {
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
            socket_path: self.socket_path.display().to_string(),
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        tracing::info!("shutdown requested over the control API");
        // The server drains in-flight requests before it stops, so this reply still goes out.
        self.node.request_shutdown();
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}
