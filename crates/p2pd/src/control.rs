//! The gRPC control service: a thin adapter that maps proto messages to `p2p_core::Node` calls
//! and core errors to status codes (in one place, [`status_of`]). No logic lives here.

use std::collections::HashSet;
use std::path::PathBuf;

use p2p_core::net::discovery::{Peer, PeerEvent};
use p2p_core::store::DeviceAccept;
use p2p_core::{
    DeviceView, Direction, ErrorKind, HistoryEntry, HistoryFilter, HistoryStatus, IncomingOffer,
    Node, NodeError, SendOptions, SessionInfo, TransferSnapshot, TransferState,
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

/// Refuses calls from any user but the daemon's own (and root), whatever the socket's mode:
/// the peer credentials of the Unix socket connection (SO_PEERCRED) say who is calling.
#[allow(clippy::result_large_err)]
pub(crate) fn check_caller(req: Request<()>) -> Result<Request<()>, Status> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let caller = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    match caller {
        Some(uid) if uid == me || uid == 0 => Ok(req),
        Some(uid) => {
            tracing::warn!(uid, "refused a control call from another user");
            Err(Status::permission_denied(format!(
                "uid {uid} may not control this p2pd (it belongs to uid {me})"
            )))
        }
        None => Err(Status::permission_denied(
            "cannot tell which user is calling",
        )),
    }
}

/// The one mapping from core errors to gRPC status codes: the error's kind gives the code, its
/// chain of causes the message.
fn status_of(e: NodeError) -> Status {
    let msg = p2p_core::error_chain(&e);
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::Internal => Status::internal(msg),
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
        max_speed: o.max_speed,
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
        TransferState::Paused => pb::TransferState::Paused,
        TransferState::Retrying => pb::TransferState::Retrying,
        TransferState::Interrupted => pb::TransferState::Interrupted,
    }
}

fn transfer_pb(t: TransferSnapshot) -> pb::Transfer {
    pb::Transfer {
        id: t.id,
        direction: direction_pb(t.direction) as i32,
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
        attempt: t.attempt,
        next_attempt_at_ms: t.next_attempt_at_ms,
        resumed_bytes: t.resumed_bytes,
        max_speed: t.max_speed,
    }
}

fn direction_pb(d: Direction) -> pb::Direction {
    match d {
        Direction::Send => pb::Direction::Send,
        Direction::Receive => pb::Direction::Receive,
    }
}

fn history_pb(e: HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        duration_ms: e.duration_ms(),
        bytes_per_second: e.bytes_per_second(),
        id: e.id,
        direction: direction_pb(e.direction) as i32,
        status: match e.status {
            HistoryStatus::Completed => pb::HistoryStatus::Completed,
            HistoryStatus::Failed => pb::HistoryStatus::Failed,
            HistoryStatus::Cancelled => pb::HistoryStatus::Cancelled,
            HistoryStatus::Rejected => pb::HistoryStatus::Rejected,
        } as i32,
        reason: e.reason,
        peer_id: e.peer_id,
        peer_name: e.peer_name,
        peer_address: e.peer_address,
        roots: e.roots,
        root_count: e.root_count,
        total_files: e.total_files,
        files_done: e.files_done,
        total_bytes: e.total_bytes,
        bytes_done: e.bytes_done,
        started_at_ms: e.started_at_ms,
        finished_at_ms: e.finished_at_ms,
    }
}

/// The core filter of a `ListHistory` request; unknown enum values are `INVALID_ARGUMENT`
/// (the ranges of the other values are checked by the node).
#[allow(clippy::result_large_err)]
fn history_filter(r: pb::ListHistoryRequest) -> Result<HistoryFilter, Status> {
    let direction = match pb::Direction::try_from(r.direction) {
        Ok(pb::Direction::Unspecified) => None,
        Ok(pb::Direction::Send) => Some(Direction::Send),
        Ok(pb::Direction::Receive) => Some(Direction::Receive),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown direction {} (1 = send, 2 = receive, 0 = both)",
                r.direction
            )));
        }
    };
    let statuses = r
        .statuses
        .iter()
        .map(|&s| match pb::HistoryStatus::try_from(s) {
            Ok(pb::HistoryStatus::Completed) => Ok(HistoryStatus::Completed),
            Ok(pb::HistoryStatus::Failed) => Ok(HistoryStatus::Failed),
            Ok(pb::HistoryStatus::Cancelled) => Ok(HistoryStatus::Cancelled),
            Ok(pb::HistoryStatus::Rejected) => Ok(HistoryStatus::Rejected),
            Ok(pb::HistoryStatus::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "unknown history status {s} (1 = completed, 2 = failed, 3 = cancelled, 4 = rejected)"
            ))),
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(HistoryFilter {
        limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
        direction,
        statuses,
        peer: (!r.peer.is_empty()).then_some(r.peer),
        since_ms: (r.since_ms != 0).then_some(r.since_ms),
    })
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
        peer_trusted: o.peer_trusted,
    }
}

fn peer_pb(node: &Node, p: Peer, is_static: bool) -> pb::Peer {
    pb::Peer {
        compatible: p.compatible(),
        trusted: node.trusted(&p.id),
        device_id: p.id.to_string(),
        name: p.name,
        address: p.addr.to_string(),
        protocol_version: p.protocol_version,
        last_seen_ms: p.last_seen_ms,
        source: if is_static { "static" } else { "broadcast" }.to_owned(),
    }
}

fn accept_pb(a: Option<DeviceAccept>) -> pb::DeviceAccept {
    match a {
        None => pb::DeviceAccept::Default,
        Some(DeviceAccept::Auto) => pb::DeviceAccept::Auto,
        Some(DeviceAccept::Ask) => pb::DeviceAccept::Ask,
        Some(DeviceAccept::Reject) => pb::DeviceAccept::Reject,
    }
}

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
        trusted: s.trusted,
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
            max_speed: s.max_speed,
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
    type WatchPeersStream = ReceiverStream<Result<pb::PeerEvent, Status>>;

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

    async fn pause_transfer(
        &self,
        request: Request<pb::PauseTransferRequest>,
    ) -> Result<Response<pb::Transfer>, Status> {
        let id = request.into_inner().id;
        let t = self.node.pause(required(&id, "id")?).map_err(status_of)?;
        Ok(Response::new(transfer_pb(t)))
    }

    async fn resume_transfer(
        &self,
        request: Request<pb::ResumeTransferRequest>,
    ) -> Result<Response<pb::Transfer>, Status> {
        let id = request.into_inner().id;
        let t = self.node.resume(required(&id, "id")?).map_err(status_of)?;
        Ok(Response::new(transfer_pb(t)))
    }

    async fn list_history(
        &self,
        request: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        let filter = history_filter(request.into_inner())?;
        let entries = self
            .node
            .history(&filter)
            .map_err(status_of)?
            .into_iter()
            .map(history_pb)
            .collect();
        Ok(Response::new(pb::ListHistoryResponse { entries }))
    }

    async fn clear_history(
        &self,
        _request: Request<pb::ClearHistoryRequest>,
    ) -> Result<Response<pb::ClearHistoryResponse>, Status> {
        let removed = self.node.clear_history().map_err(status_of)?;
        Ok(Response::new(pb::ClearHistoryResponse { removed }))
    }

    async fn set_transfer_limit(
        &self,
        request: Request<pb::SetTransferLimitRequest>,
    ) -> Result<Response<pb::Transfer>, Status> {
        let r = request.into_inner();
        self.node
            .set_transfer_limit(required(&r.id, "id")?, r.max_speed)
            .map(|t| Response::new(transfer_pb(t)))
            .map_err(status_of)
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

    async fn list_devices(
        &self,
        _request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let devices = self
            .node
            .devices(true)
            .map_err(status_of)?
            .into_iter()
            .map(device_pb)
            .collect();
        Ok(Response::new(pb::ListDevicesResponse { devices }))
    }

    async fn list_pending(
        &self,
        _request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let devices = self
            .node
            .devices(false)
            .map_err(status_of)?
            .into_iter()
            .map(device_pb)
            .collect();
        Ok(Response::new(pb::ListDevicesResponse { devices }))
    }

    async fn trust_device(
        &self,
        request: Request<pb::TrustDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let r = request.into_inner();
        let accept = match pb::DeviceAccept::try_from(r.accept) {
            Ok(pb::DeviceAccept::Default) => None,
            Ok(pb::DeviceAccept::Auto) => Some(DeviceAccept::Auto),
            Ok(pb::DeviceAccept::Ask) => Some(DeviceAccept::Ask),
            Ok(pb::DeviceAccept::Reject) => Some(DeviceAccept::Reject),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown accept rule {}",
                    r.accept
                )));
            }
        };
        let name = (!r.name.trim().is_empty()).then_some(r.name.as_str());
        let dir = (!r.download_dir.is_empty()).then(|| PathBuf::from(&r.download_dir));
        let d = self
            .node
            .trust(required(&r.id, "id")?, name, accept, dir.as_deref())
            .map_err(status_of)?;
        let connected = self
            .node
            .sessions()
            .iter()
            .any(|s| s.peer_id == d.id.to_string());
        Ok(Response::new(device_pb(DeviceView {
            device: d,
            connected,
        })))
    }

    async fn untrust_device(
        &self,
        request: Request<pb::UntrustDeviceRequest>,
    ) -> Result<Response<pb::UntrustDeviceResponse>, Status> {
        let id = request.into_inner().id;
        let id = self.node.untrust(required(&id, "id")?).map_err(status_of)?;
        Ok(Response::new(pb::UntrustDeviceResponse {
            id: id.to_string(),
        }))
    }

    async fn list_peers(
        &self,
        _request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let peers = self
            .node
            .peers()
            .into_iter()
            .map(|(p, st)| peer_pb(&self.node, p, st))
            .collect();
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn watch_peers(
        &self,
        _request: Request<pb::WatchPeersRequest>,
    ) -> Result<Response<Self::WatchPeersStream>, Status> {
        let mut events = self.node.subscribe_peers();
        let initial = self.node.peers();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let node = self.node.clone();
        let shutdown = node.shutdown_token().clone();
        tokio::spawn(async move {
            for (p, st) in initial {
                let ev = pb::PeerEvent {
                    change: pb::PeerChange::Appeared as i32,
                    peer: Some(peer_pb(&node, p, st)),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    e = events.recv() => e,
                };
                let (change, p) = match ev {
                    Ok(PeerEvent::Appeared(p)) => (pb::PeerChange::Appeared, p),
                    Ok(PeerEvent::Changed(p)) => (pb::PeerChange::Changed, p),
                    Ok(PeerEvent::Lost(p)) => (pb::PeerChange::Lost, p),
                    // A watcher too slow for a beacon flood skips ahead; the next events and
                    // ListPeers tell the current state.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let is_static = p.is_static;
                let ev = pb::PeerEvent {
                    change: change as i32,
                    peer: Some(peer_pb(&node, p, is_static)),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_filters_map_and_unknown_values_are_invalid_arguments() {
        let f = history_filter(pb::ListHistoryRequest {
            limit: 5,
            direction: pb::Direction::Receive as i32,
            statuses: vec![
                pb::HistoryStatus::Failed as i32,
                pb::HistoryStatus::Rejected as i32,
            ],
            peer: "beta".into(),
            since_ms: 42,
        })
        .unwrap();
        assert_eq!(
            f,
            HistoryFilter {
                limit: 5,
                direction: Some(Direction::Receive),
                statuses: vec![HistoryStatus::Failed, HistoryStatus::Rejected],
                peer: Some("beta".into()),
                since_ms: Some(42),
            }
        );
        assert_eq!(
            history_filter(pb::ListHistoryRequest::default()).unwrap(),
            HistoryFilter::default()
        );
        let bad_direction = history_filter(pb::ListHistoryRequest {
            direction: 7,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(bad_direction.code(), tonic::Code::InvalidArgument);
        assert!(bad_direction.message().contains("direction 7"));
        for s in [0, 9] {
            let err = history_filter(pb::ListHistoryRequest {
                statuses: vec![s],
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains("history status"), "{err}");
        }
    }
}
