//! The gRPC control service: a thin adapter that maps proto messages to `p2p_core::Node` calls
//! and core errors to status codes (in one place, [`status_of`]). No logic lives here.

use std::collections::HashSet;
use std::path::PathBuf;

use p2p_core::{
    Direction, IncomingOffer, Node, NodeError, SendOptions, SessionInfo, TransferSnapshot,
    TransferState,
};
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_server::ControlService;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Events buffered per watcher before the producer waits.
const WATCH_BUFFER: usize = 64;

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

/// The one mapping from core errors to gRPC status codes.
fn status_of(e: NodeError) -> Status {
    let msg = e.to_string();
    match e {
        NodeError::PathNotFound(_) | NodeError::NotFound(_) => Status::not_found(msg),
        NodeError::InvalidArgument(_) => Status::invalid_argument(msg),
        NodeError::Unreachable { .. } => Status::unavailable(msg),
        NodeError::FailedPrecondition(_) => Status::failed_precondition(msg),
        NodeError::Io(_) => Status::failed_precondition(msg),
        NodeError::ListenerAddr(_) => Status::internal(msg),
    }
}

fn send_options(o: Option<pb::SendOptions>) -> SendOptions {
    let d = SendOptions::default();
    let Some(o) = o else { return d };
    SendOptions {
        compress: o.compress.unwrap_or(d.compress),
        level: if o.level == 0 { d.level } else { o.level },
        chunk_size: if o.chunk_size == 0 {
            d.chunk_size
        } else {
            o.chunk_size
        },
        window: if o.window == 0 { d.window } else { o.window },
    }
}

fn state_pb(s: TransferState) -> pb::TransferState {
    match s {
        TransferState::Offered => pb::TransferState::Offered,
        TransferState::WaitingAccept => pb::TransferState::WaitingAccept,
        TransferState::Running => pb::TransferState::Running,
        TransferState::Completed => pb::TransferState::Completed,
        TransferState::Failed => pb::TransferState::Failed,
        TransferState::Cancelled => pb::TransferState::Cancelled,
        TransferState::Rejected => pb::TransferState::Rejected,
    }
}

fn transfer_pb(t: TransferSnapshot) -> pb::Transfer {
    pb::Transfer {
        id: t.id,
        direction: match t.direction {
            Direction::Send => pb::Direction::Send,
            Direction::Receive => pb::Direction::Receive,
        } as i32,
        state: state_pb(t.state) as i32,
        peer_id: t.peer_id,
        peer_name: t.peer_name,
        peer_address: t.peer_address,
        roots: t.roots,
        total_files: t.total_files,
        total_bytes: t.total_bytes,
        files_done: t.files_done,
        bytes_done: t.bytes_done,
        wire_bytes: t.wire_bytes,
        current_file: t.current_file,
        current_file_bytes: t.current_file_bytes,
        current_file_size: t.current_file_size,
        bytes_per_second: t.bytes_per_second,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        error: t.error,
        destination: t.destination,
        chunks_resent: t.chunks_resent,
    }
}

fn offer_pb(o: IncomingOffer) -> pb::IncomingOffer {
    pb::IncomingOffer {
        transfer_id: o.transfer_id,
        peer_id: o.peer_id,
        peer_name: o.peer_name,
        peer_address: o.peer_address,
        roots: o.roots,
        total_files: o.total_files,
        total_bytes: o.total_bytes,
        offered_at_ms: o.offered_at_ms,
        expires_at_ms: o.expires_at_ms,
    }
}

fn session_pb(s: SessionInfo) -> pb::Session {
    pb::Session {
        peer_id: s.peer_id,
        peer_name: s.peer_name,
        peer_address: s.peer_address.to_string(),
        remote_address: s.remote_address.to_string(),
        outgoing: s.outgoing,
        established_at_ms: s.established_at_ms,
        active_transfers: s.active_transfers,
        peer_version: s.peer_version,
    }
}

fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(value)
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

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = request.into_inner();
        if r.paths.is_empty() {
            return Err(Status::invalid_argument("no paths to send"));
        }
        let peer = required(&r.peer, "peer (HOST:PORT)")?;
        let paths = r.paths.iter().map(PathBuf::from).collect();
        let id = self
            .node
            .send(paths, peer, send_options(r.options))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SendResponse { transfer_id: id }))
    }

    async fn list_transfers(
        &self,
        _request: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        let transfers = self.node.transfers().into_iter().map(transfer_pb).collect();
        Ok(Response::new(pb::ListTransfersResponse { transfers }))
    }

    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::Transfer>, Status> {
        let id = request.into_inner().id;
        self.node
            .transfer(required(&id, "id")?)
            .map(|t| Response::new(transfer_pb(t)))
            .map_err(status_of)
    }

    type WatchTransfersStream = ReceiverStream<Result<pb::TransferEvent, Status>>;

    async fn watch_transfers(
        &self,
        request: Request<pb::WatchTransfersRequest>,
    ) -> Result<Response<Self::WatchTransfersStream>, Status> {
        let r = request.into_inner();
        if r.until_done && r.ids.is_empty() {
            return Err(Status::invalid_argument("until_done needs transfer ids"));
        }
        // Subscribe before the snapshot so that no change falls between the two.
        let mut events = self.node.subscribe_transfers();
        let filter: HashSet<String> = r.ids.iter().cloned().collect();
        let mut initial = Vec::new();
        for id in &r.ids {
            initial.push(self.node.transfer(id).map_err(status_of)?);
        }
        if r.ids.is_empty() {
            initial = self.node.transfers();
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let node = self.node.clone();
        let shutdown = node.shutdown_token().clone();
        tokio::spawn(async move {
            let mut open: HashSet<String> = initial
                .iter()
                .filter(|t| !t.state.is_final())
                .map(|t| t.id.clone())
                .collect();
            for t in initial {
                if tx
                    .send(Ok(pb::TransferEvent {
                        transfer: Some(transfer_pb(t)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                if r.until_done && open.is_empty() {
                    return;
                }
                let snap = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    e = events.recv() => e,
                };
                let snaps = match snap {
                    Ok(s) => vec![s],
                    // Too slow a watcher: catch up with fresh snapshots instead of old events.
                    Err(RecvError::Lagged(_)) => node.transfers(),
                    Err(RecvError::Closed) => return,
                };
                for s in snaps {
                    if !filter.is_empty() && !filter.contains(&s.id) {
                        continue;
                    }
                    if s.state.is_final() {
                        open.remove(&s.id);
                    }
                    if tx
                        .send(Ok(pb::TransferEvent {
                            transfer: Some(transfer_pb(s)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_transfer(
        &self,
        request: Request<pb::CancelTransferRequest>,
    ) -> Result<Response<pb::CancelTransferResponse>, Status> {
        let id = request.into_inner().id;
        self.node.cancel(required(&id, "id")?).map_err(status_of)?;
        Ok(Response::new(pb::CancelTransferResponse {}))
    }

    async fn list_incoming(
        &self,
        _request: Request<pb::ListIncomingRequest>,
    ) -> Result<Response<pb::ListIncomingResponse>, Status> {
        let offers = self.node.incoming().into_iter().map(offer_pb).collect();
        Ok(Response::new(pb::ListIncomingResponse { offers }))
    }

    async fn accept_incoming(
        &self,
        request: Request<pb::AcceptIncomingRequest>,
    ) -> Result<Response<pb::AcceptIncomingResponse>, Status> {
        let r = request.into_inner();
        let dest = (!r.destination.is_empty()).then(|| PathBuf::from(&r.destination));
        self.node
            .accept(required(&r.transfer_id, "transfer_id")?, dest)
            .map_err(status_of)?;
        Ok(Response::new(pb::AcceptIncomingResponse {}))
    }

    async fn reject_incoming(
        &self,
        request: Request<pb::RejectIncomingRequest>,
    ) -> Result<Response<pb::RejectIncomingResponse>, Status> {
        let r = request.into_inner();
        self.node
            .reject(required(&r.transfer_id, "transfer_id")?, &r.reason)
            .map_err(status_of)?;
        Ok(Response::new(pb::RejectIncomingResponse {}))
    }

    async fn list_sessions(
        &self,
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let sessions = self.node.sessions().into_iter().map(session_pb).collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn connect(
        &self,
        request: Request<pb::ConnectRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let peer = request.into_inner().peer;
        let s = self
            .node
            .open_session(required(&peer, "peer (HOST:PORT)")?)
            .await
            .map_err(status_of)?;
        Ok(Response::new(session_pb(s)))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        let peer = request.into_inner().peer;
        self.node
            .disconnect(required(&peer, "peer")?)
            .map_err(status_of)?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }
}
