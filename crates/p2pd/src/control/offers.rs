//! Incoming offers: list, accept, reject.

use std::path::PathBuf;

use p2p_core::{IncomingOffer, Node};
use p2p_proto::control::v1 as pb;
use tonic::Status;

use super::errors::status_of;
use super::required;

/// The proto form of an offer.
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

/// `ListIncoming`.
pub(super) fn list(
    node: &Node,
    _r: pb::ListIncomingRequest,
) -> Result<pb::ListIncomingResponse, Status> {
    let offers = node.incoming().into_iter().map(offer_pb).collect();
    Ok(pb::ListIncomingResponse { offers })
}

/// `AcceptIncoming`, into the given destination or the default one.
pub(super) fn accept(
    node: &Node,
    r: pb::AcceptIncomingRequest,
) -> Result<pb::AcceptIncomingResponse, Status> {
    let dest = (!r.destination.is_empty()).then(|| PathBuf::from(&r.destination));
    node.accept(required(&r.transfer_id, "transfer_id")?, dest)
        .map_err(status_of)?;
    Ok(pb::AcceptIncomingResponse {})
}

/// `RejectIncoming`, with the reason the sender is told.
pub(super) fn reject(
    node: &Node,
    r: pb::RejectIncomingRequest,
) -> Result<pb::RejectIncomingResponse, Status> {
    node.reject(required(&r.transfer_id, "transfer_id")?, &r.reason)
        .map_err(status_of)?;
    Ok(pb::RejectIncomingResponse {})
}
