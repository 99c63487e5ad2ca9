//! Following transfers over `WatchTransfers`: the `watch` command, and following one transfer
//! to its end (also for `send`).

use anyhow::{Result, bail};
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

use crate::client::{self, RpcError};
use crate::json;
use crate::progress::{self, RateLimiter};

/// Follows transfer `id` until it ends, handing every event to `show`, and returns its final
/// state. If the stream ends before the transfer does, `GetTransfer` tells the state (shown
/// too); that state may still be unfinished if the daemon stopped reporting.
///
/// # Errors
/// A failed RPC, or an error of `show`.
pub(crate) async fn follow_one(
    api: &mut ControlServiceClient<Channel>,
    id: &str,
    mut show: impl FnMut(&pb::TransferEvent) -> Result<()>,
) -> Result<pb::Transfer> {
    let request = pb::WatchTransfersRequest {
        ids: vec![id.to_owned()],
        until_done: true,
    };
    let mut stream = client::answer(api.watch_transfers(request).await)?;
    let mut last: Option<pb::Transfer> = None;
    while let Some(event) = stream.message().await.map_err(RpcError)? {
        show(&event)?;
        if let Some(t) = event.transfer.filter(|t| t.id == id) {
            let ended = json::is_final(t.state);
            last = Some(t);
            if ended {
                break;
            }
        }
    }
    match last {
        Some(t) if json::is_final(t.state) => Ok(t),
        _ => {
            let request = pb::GetTransferRequest { id: id.to_owned() };
            let t = client::answer(api.get_transfer(request).await)?;
            show(&pb::TransferEvent {
                transfer: Some(t.clone()),
            })?;
            Ok(t)
        }
    }
}

/// `p2pctl watch [ID]`: one line per event (at most about one a second per transfer, but every
/// change of state), or NDJSON with `--json`. With an ID it fails unless the transfer completes.
///
/// # Errors
/// A failed RPC, stdout closed, or (with an ID) a transfer that did not complete.
pub(crate) async fn watch(
    api: &mut ControlServiceClient<Channel>,
    id: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut limiter = RateLimiter::new(std::time::Duration::from_secs(1));
    let mut show = |event: &pb::TransferEvent| -> Result<()> {
        if json {
            return progress::stdout_line(&json::transfer_event(event).to_string());
        }
        match &event.transfer {
            Some(t) if limiter.allow(&t.id, t.state, std::time::Instant::now()) => {
                progress::stdout_line(&progress::event_line(t))
            }
            _ => Ok(()),
        }
    };
    if let Some(given) = id {
        let id = client::resolve_transfer_id(api, given).await?;
        let t = follow_one(api, &id, show).await?;
        if let Some(failure) = progress::failure_text(&t) {
            bail!(failure);
        }
        return Ok(());
    }
    let request = pb::WatchTransfersRequest {
        ids: Vec::new(),
        until_done: false,
    };
    let mut stream = client::answer(api.watch_transfers(request).await)?;
    while let Some(event) = stream.message().await.map_err(RpcError)? {
        show(&event)?;
    }
    Ok(())
}
