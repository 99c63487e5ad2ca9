//! Following the daemon's event streams: transfers (`WatchTransfers`, all or some, until they
//! end), the peers discovery finds (`WatchPeers`), and one transfer followed to its end with its
//! final state.

use p2p_proto::control::v1 as pb;

use crate::control::{ControlClient, RpcError, answer};
use crate::words::is_final;

/// The events of a `Watch*` stream, one at a time. The stream ends when the daemon ends it (it
/// does when it stops, and for `until_done` once the watched transfers have ended).
#[derive(Debug)]
pub struct Events<T> {
    stream: tonic::Streaming<T>,
}

impl<T> Events<T> {
    /// The next event, or `None` once the daemon has ended the stream.
    ///
    /// # Errors
    /// The status the stream ended with (the connection lost, the daemon's error).
    pub async fn next(&mut self) -> Result<Option<T>, RpcError> {
        self.stream.message().await.map_err(RpcError)
    }

    /// The gRPC stream itself, e.g. to use it as a `futures::Stream`.
    pub fn into_inner(self) -> tonic::Streaming<T> {
        self.stream
    }
}

/// Watches the transfers with the given `ids` (all of them when empty): the current state of
/// each first, then every change. With `until_done` the daemon ends the stream once every
/// watched transfer has ended.
///
/// # Errors
/// The daemon refused the watch.
pub async fn transfers(
    api: &mut ControlClient,
    ids: Vec<String>,
    until_done: bool,
) -> Result<Events<pb::TransferEvent>, RpcError> {
    let request = pb::WatchTransfersRequest { ids, until_done };
    let stream = answer(api.watch_transfers(request).await)?;
    Ok(Events { stream })
}

/// Watches the peers: the current ones as `appeared`, then one event per change.
///
/// # Errors
/// The daemon refused the watch.
pub async fn peers(api: &mut ControlClient) -> Result<Events<pb::PeerEvent>, RpcError> {
    let stream = answer(api.watch_peers(pb::WatchPeersRequest {}).await)?;
    Ok(Events { stream })
}

/// Follows transfer `id` until it ends, handing every event to `show`, and returns its final
/// state. If the stream ends before the transfer does, `GetTransfer` tells the state (shown
/// too); that state may still be unfinished if the daemon stopped reporting.
///
/// # Errors
/// A failed RPC, or an error of `show`.
pub async fn follow_transfer<E: From<RpcError>>(
    api: &mut ControlClient,
    id: &str,
    mut show: impl FnMut(&pb::TransferEvent) -> Result<(), E>,
) -> Result<pb::Transfer, E> {
    let mut events = transfers(api, vec![id.to_owned()], true).await?;
    let mut last: Option<pb::Transfer> = None;
    while let Some(event) = events.next().await? {
        show(&event)?;
        if let Some(t) = event.transfer.filter(|t| t.id == id) {
            let ended = is_final(t.state);
            last = Some(t);
            if ended {
                break;
            }
        }
    }
    match last {
        Some(t) if is_final(t.state) => Ok(t),
        _ => {
            let request = pb::GetTransferRequest { id: id.to_owned() };
            let t = answer(api.get_transfer(request).await)?;
            show(&pb::TransferEvent {
                transfer: Some(t.clone()),
            })?;
            Ok(t)
        }
    }
}
