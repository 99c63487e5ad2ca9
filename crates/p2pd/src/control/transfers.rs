//! Transfers: send, list and get, the `WatchTransfers` stream, cancel, pause, resume, speed
//! limits, and the history of ended transfers.

use std::collections::HashSet;
use std::path::PathBuf;

use p2p_core::{
    Direction, HistoryEntry, HistoryFilter, HistoryStatus, Node, SendOptions, TransferSnapshot,
    TransferState,
};
use p2p_proto::control::v1 as pb;
use tonic::Status;

use super::errors::status_of;
use super::required;
use super::watch::{Feed, WatchStream, Watchers};

/// The core options of a `Send` request; zero (or absent) values take the defaults.
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

/// The proto form of a transfer state.
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

/// The proto form of a transfer.
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

/// The proto form of a direction.
fn direction_pb(d: Direction) -> pb::Direction {
    match d {
        Direction::Send => pb::Direction::Send,
        Direction::Receive => pb::Direction::Receive,
    }
}

/// The proto form of a history entry.
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

/// `Send`: offers files and folders to a peer; the transfer runs in the node.
pub(super) async fn send(node: &Node, r: pb::SendRequest) -> Result<pb::SendResponse, Status> {
    if r.paths.is_empty() {
        return Err(Status::invalid_argument("no paths to send"));
    }
    let peer = required(&r.peer, "peer (HOST:PORT)")?;
    let paths = r.paths.iter().map(PathBuf::from).collect();
    let id = node
        .send(paths, peer, send_options(r.options))
        .await
        .map_err(status_of)?;
    Ok(pb::SendResponse { transfer_id: id })
}

/// `ListTransfers`.
pub(super) fn list(
    node: &Node,
    _r: pb::ListTransfersRequest,
) -> Result<pb::ListTransfersResponse, Status> {
    let transfers = node.transfers().into_iter().map(transfer_pb).collect();
    Ok(pb::ListTransfersResponse { transfers })
}

/// `GetTransfer`.
pub(super) fn get(node: &Node, r: pb::GetTransferRequest) -> Result<pb::Transfer, Status> {
    node.transfer(required(&r.id, "id")?)
        .map(transfer_pb)
        .map_err(status_of)
}

/// `WatchTransfers`: the watched transfers (all, or those named) as they are now, then their
/// changes; with `until_done`, the stream ends when every named transfer has ended.
pub(super) fn watch(
    node: &Node,
    watchers: &Watchers,
    r: pb::WatchTransfersRequest,
) -> Result<WatchStream<pb::TransferEvent>, Status> {
    if r.until_done && r.ids.is_empty() {
        return Err(Status::invalid_argument("until_done needs transfer ids"));
    }
    // Subscribe before the snapshot so that no change falls between the two.
    let events = node.subscribe_transfers();
    let initial = if r.ids.is_empty() {
        node.transfers()
    } else {
        r.ids
            .iter()
            .map(|id| node.transfer(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status_of)?
    };
    let span = tracing::info_span!("watch", rpc = "WatchTransfers", ids = ?r.ids);
    let feed = TransferFeed {
        node: node.clone(),
        open: initial
            .iter()
            .filter(|t| !t.state.is_final())
            .map(|t| t.id.clone())
            .collect(),
        ids: r.ids.into_iter().collect(),
        until_done: r.until_done,
    };
    let initial = initial.into_iter().map(transfer_event).collect();
    Ok(watchers.forward(span, initial, events, feed))
}

/// The stream message of a transfer.
fn transfer_event(t: TransferSnapshot) -> pb::TransferEvent {
    pb::TransferEvent {
        transfer: Some(transfer_pb(t)),
    }
}

/// The events of a `WatchTransfers` stream.
struct TransferFeed {
    node: Node,
    /// The transfers watched; empty: all.
    ids: HashSet<String>,
    /// Watched transfers that have not ended yet.
    open: HashSet<String>,
    /// Whether the stream ends when `open` is empty.
    until_done: bool,
}

impl Feed for TransferFeed {
    type Event = TransferSnapshot;
    type Item = pb::TransferEvent;

    fn event(&mut self, s: TransferSnapshot) -> Option<pb::TransferEvent> {
        if !self.ids.is_empty() && !self.ids.contains(&s.id) {
            return None;
        }
        if s.state.is_final() {
            self.open.remove(&s.id);
        }
        Some(transfer_event(s))
    }

    /// Too slow a watcher catches up with fresh snapshots instead of old events.
    fn lagged(&mut self) -> Vec<pb::TransferEvent> {
        self.node
            .transfers()
            .into_iter()
            .filter_map(|s| self.event(s))
            .collect()
    }

    fn finished(&self) -> bool {
        self.until_done && self.open.is_empty()
    }
}

/// `CancelTransfer`.
pub(super) fn cancel(
    node: &Node,
    r: pb::CancelTransferRequest,
) -> Result<pb::CancelTransferResponse, Status> {
    node.cancel(required(&r.id, "id")?).map_err(status_of)?;
    Ok(pb::CancelTransferResponse {})
}

/// `PauseTransfer`.
pub(super) fn pause(node: &Node, r: pb::PauseTransferRequest) -> Result<pb::Transfer, Status> {
    let t = node.pause(required(&r.id, "id")?).map_err(status_of)?;
    Ok(transfer_pb(t))
}

/// `ResumeTransfer`.
pub(super) fn resume(node: &Node, r: pb::ResumeTransferRequest) -> Result<pb::Transfer, Status> {
    let t = node.resume(required(&r.id, "id")?).map_err(status_of)?;
    Ok(transfer_pb(t))
}

/// `SetTransferLimit`: a transfer's own speed limit.
pub(super) fn set_limit(
    node: &Node,
    r: pb::SetTransferLimitRequest,
) -> Result<pb::Transfer, Status> {
    node.set_transfer_limit(required(&r.id, "id")?, r.max_speed)
        .map(transfer_pb)
        .map_err(status_of)
}

/// `ListHistory`.
pub(super) fn history(
    node: &Node,
    r: pb::ListHistoryRequest,
) -> Result<pb::ListHistoryResponse, Status> {
    let filter = history_filter(r)?;
    let entries = node
        .history(&filter)
        .map_err(status_of)?
        .into_iter()
        .map(history_pb)
        .collect();
    Ok(pb::ListHistoryResponse { entries })
}

/// `ClearHistory`.
pub(super) fn clear_history(
    node: &Node,
    _r: pb::ClearHistoryRequest,
) -> Result<pb::ClearHistoryResponse, Status> {
    let removed = node.clear_history().map_err(status_of)?;
    Ok(pb::ClearHistoryResponse { removed })
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
