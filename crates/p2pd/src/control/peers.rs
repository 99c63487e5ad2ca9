//! Peers: discovered and static peers, and the `WatchPeers` stream.

use p2p_core::Node;
use p2p_core::net::discovery::{Peer, PeerEvent};
use p2p_proto::control::v1 as pb;
use tonic::Status;

use super::watch::{Feed, WatchStream, Watchers};

/// The proto form of a peer; `is_static` says where it came from.
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

/// `ListPeers`.
pub(super) fn list(node: &Node, _r: pb::ListPeersRequest) -> Result<pb::ListPeersResponse, Status> {
    let peers = node
        .peers()
        .into_iter()
        .map(|(p, st)| peer_pb(node, p, st))
        .collect();
    Ok(pb::ListPeersResponse { peers })
}

/// `WatchPeers`: every known peer as `APPEARED`, then the changes.
pub(super) fn watch(
    node: &Node,
    watchers: &Watchers,
    _r: pb::WatchPeersRequest,
) -> Result<WatchStream<pb::PeerEvent>, Status> {
    // Subscribe before the snapshot so that no change falls between the two.
    let events = node.subscribe_peers();
    let initial = node
        .peers()
        .into_iter()
        .map(|(p, st)| pb::PeerEvent {
            change: pb::PeerChange::Appeared as i32,
            peer: Some(peer_pb(node, p, st)),
        })
        .collect();
    let span = tracing::info_span!("watch", rpc = "WatchPeers");
    let feed = PeerFeed { node: node.clone() };
    Ok(watchers.forward(span, initial, events, feed))
}

/// The events of a `WatchPeers` stream.
struct PeerFeed {
    node: Node,
}

impl Feed for PeerFeed {
    type Event = PeerEvent;
    type Item = pb::PeerEvent;

    fn event(&mut self, event: PeerEvent) -> Option<pb::PeerEvent> {
        let (change, p) = match event {
            PeerEvent::Appeared(p) => (pb::PeerChange::Appeared, p),
            PeerEvent::Changed(p) => (pb::PeerChange::Changed, p),
            PeerEvent::Lost(p) => (pb::PeerChange::Lost, p),
        };
        let is_static = p.is_static;
        Some(pb::PeerEvent {
            change: change as i32,
            peer: Some(peer_pb(&self.node, p, is_static)),
        })
    }

    /// A watcher too slow for a beacon flood skips ahead; the next events and `ListPeers` tell
    /// the current state.
    fn lagged(&mut self) -> Vec<pb::PeerEvent> {
        Vec::new()
    }
}
