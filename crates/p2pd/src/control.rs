//! The gRPC control service: a thin adapter that maps proto messages to `p2p_core::Node` calls
//! and core errors to status codes (in one place, [`errors::status_of`]). No logic lives here.
//!
//! tonic generates one `ControlService` trait, so its one `impl` below is a dispatch table:
//! one line per RPC, calling into the file of its area:
//! - [`transfers`]: send, list and get, watch, cancel, pause, resume, limits, history.
//! - [`offers`]: incoming offers — list, accept, reject.
//! - [`devices`]: known and pending devices, trust, untrust.
//! - [`peers`]: discovered and static peers, watch peers.
//! - [`sessions`]: sessions, connect, disconnect.
//! - [`status`]: status and shutdown.
//! - [`watch`]: the stream plumbing of every `Watch*` call, written once.
//! - [`errors`]: the one mapping from core errors to gRPC status codes.

// `tonic::Status`, the error of every RPC, is large; it is what tonic asks for.
#![allow(clippy::result_large_err)]

mod devices;
mod errors;
mod offers;
mod peers;
mod sessions;
mod status;
mod transfers;
pub(crate) mod watch;

use std::path::PathBuf;

use p2p_core::Node;
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_server::ControlService;
use tonic::{Request, Response, Status};

use self::watch::{WatchStream, Watchers};

/// The control service over one node.
#[derive(Debug, Clone)]
pub(crate) struct ControlApi {
    node: Node,
    /// The socket `GetStatus` reports.
    socket_path: PathBuf,
    /// Where `Watch*` calls spawn their forwarders.
    watchers: Watchers,
}

impl ControlApi {
    /// The service for `node`, reporting `socket_path` in `GetStatus`.
    pub(crate) fn new(node: Node, socket_path: PathBuf, watchers: Watchers) -> Self {
        ControlApi {
            node,
            socket_path,
            watchers,
        }
    }
}

/// `value`, unless it is blank: then `INVALID_ARGUMENT` naming `what`.
fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
}

/// The result type of every RPC.
type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(&self, r: Request<pb::GetStatusRequest>) -> Reply<pb::GetStatusResponse> {
        status::get(&self.node, &self.socket_path, r.into_inner()).map(Response::new)
    }

    async fn shutdown(&self, r: Request<pb::ShutdownRequest>) -> Reply<pb::ShutdownResponse> {
        status::shutdown(&self.node, r.into_inner()).map(Response::new)
    }

    async fn send(&self, r: Request<pb::SendRequest>) -> Reply<pb::SendResponse> {
        transfers::send(&self.node, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_transfers(
        &self,
        r: Request<pb::ListTransfersRequest>,
    ) -> Reply<pb::ListTransfersResponse> {
        transfers::list(&self.node, r.into_inner()).map(Response::new)
    }

    async fn get_transfer(&self, r: Request<pb::GetTransferRequest>) -> Reply<pb::Transfer> {
        transfers::get(&self.node, r.into_inner()).map(Response::new)
    }

    type WatchTransfersStream = WatchStream<pb::TransferEvent>;

    async fn watch_transfers(
        &self,
        r: Request<pb::WatchTransfersRequest>,
    ) -> Reply<Self::WatchTransfersStream> {
        transfers::watch(&self.node, &self.watchers, r.into_inner()).map(Response::new)
    }

    async fn cancel_transfer(
        &self,
        r: Request<pb::CancelTransferRequest>,
    ) -> Reply<pb::CancelTransferResponse> {
        transfers::cancel(&self.node, r.into_inner()).map(Response::new)
    }

    async fn pause_transfer(&self, r: Request<pb::PauseTransferRequest>) -> Reply<pb::Transfer> {
        transfers::pause(&self.node, r.into_inner()).map(Response::new)
    }

    async fn resume_transfer(&self, r: Request<pb::ResumeTransferRequest>) -> Reply<pb::Transfer> {
        transfers::resume(&self.node, r.into_inner()).map(Response::new)
    }

    async fn set_transfer_limit(
        &self,
        r: Request<pb::SetTransferLimitRequest>,
    ) -> Reply<pb::Transfer> {
        transfers::set_limit(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_history(
        &self,
        r: Request<pb::ListHistoryRequest>,
    ) -> Reply<pb::ListHistoryResponse> {
        transfers::history(&self.node, r.into_inner()).map(Response::new)
    }

    async fn clear_history(
        &self,
        r: Request<pb::ClearHistoryRequest>,
    ) -> Reply<pb::ClearHistoryResponse> {
        transfers::clear_history(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_incoming(
        &self,
        r: Request<pb::ListIncomingRequest>,
    ) -> Reply<pb::ListIncomingResponse> {
        offers::list(&self.node, r.into_inner()).map(Response::new)
    }

    async fn accept_incoming(
        &self,
        r: Request<pb::AcceptIncomingRequest>,
    ) -> Reply<pb::AcceptIncomingResponse> {
        offers::accept(&self.node, r.into_inner()).map(Response::new)
    }

    async fn reject_incoming(
        &self,
        r: Request<pb::RejectIncomingRequest>,
    ) -> Reply<pb::RejectIncomingResponse> {
        offers::reject(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_sessions(
        &self,
        r: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        sessions::list(&self.node, r.into_inner()).map(Response::new)
    }

    async fn connect(&self, r: Request<pb::ConnectRequest>) -> Reply<pb::Session> {
        sessions::connect(&self.node, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn disconnect(&self, r: Request<pb::DisconnectRequest>) -> Reply<pb::DisconnectResponse> {
        sessions::disconnect(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_devices(
        &self,
        r: Request<pb::ListDevicesRequest>,
    ) -> Reply<pb::ListDevicesResponse> {
        devices::list(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_pending(
        &self,
        r: Request<pb::ListPendingRequest>,
    ) -> Reply<pb::ListDevicesResponse> {
        devices::pending(&self.node, r.into_inner()).map(Response::new)
    }

    async fn trust_device(&self, r: Request<pb::TrustDeviceRequest>) -> Reply<pb::Device> {
        devices::trust(&self.node, r.into_inner()).map(Response::new)
    }

    async fn untrust_device(
        &self,
        r: Request<pb::UntrustDeviceRequest>,
    ) -> Reply<pb::UntrustDeviceResponse> {
        devices::untrust(&self.node, r.into_inner()).map(Response::new)
    }

    async fn list_peers(&self, r: Request<pb::ListPeersRequest>) -> Reply<pb::ListPeersResponse> {
        peers::list(&self.node, r.into_inner()).map(Response::new)
    }

    type WatchPeersStream = WatchStream<pb::PeerEvent>;

    async fn watch_peers(
        &self,
        r: Request<pb::WatchPeersRequest>,
    ) -> Reply<Self::WatchPeersStream> {
        peers::watch(&self.node, &self.watchers, r.into_inner()).map(Response::new)
    }
}
