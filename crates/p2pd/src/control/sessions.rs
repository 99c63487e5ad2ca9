//! Sessions: list, connect, disconnect.

use p2p_core::{Node, SessionInfo};
use p2p_proto::control::v1 as pb;
use tonic::Status;

use super::errors::status_of;
use super::required;

/// The proto form of a session.
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

/// `ListSessions`.
pub(super) fn list(
    node: &Node,
    _r: pb::ListSessionsRequest,
) -> Result<pb::ListSessionsResponse, Status> {
    let sessions = node.sessions().into_iter().map(session_pb).collect();
    Ok(pb::ListSessionsResponse { sessions })
}

/// `Connect`: opens (or finds) the session with a peer.
pub(super) async fn connect(node: &Node, r: pb::ConnectRequest) -> Result<pb::Session, Status> {
    let s = node
        .open_session(required(&r.peer, "peer (HOST:PORT)")?)
        .await
        .map_err(status_of)?;
    Ok(session_pb(s))
}

/// `Disconnect`: closes the sessions with a peer.
pub(super) fn disconnect(
    node: &Node,
    r: pb::DisconnectRequest,
) -> Result<pb::DisconnectResponse, Status> {
    node.disconnect(required(&r.peer, "peer")?)
        .map_err(status_of)?;
    Ok(pb::DisconnectResponse {})
}
