//! `p2pctl watch`: following transfers over `WatchTransfers` (the stream helpers are
//! [`p2p_client::watch`]'s), one line or one JSON object per event.

use anyhow::{Result, bail};
use p2p_client::ControlClient;
use p2p_proto::control::v1 as pb;

use crate::client;
use crate::json;
use crate::progress::{self, RateLimiter};

/// `p2pctl watch [ID]`: one line per event (at most about one a second per transfer, but every
/// change of state), or NDJSON with `--json`. With an ID it fails unless the transfer completes.
///
/// # Errors
/// A failed RPC, stdout closed, or (with an ID) a transfer that did not complete.
pub(crate) async fn watch(api: &mut ControlClient, id: Option<&str>, json: bool) -> Result<()> {
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
        let t = p2p_client::watch::follow_transfer(api, &id, show).await?;
        if let Some(failure) = progress::failure_text(&t) {
            bail!(failure);
        }
        return Ok(());
    }
    let mut events = p2p_client::watch::transfers(api, Vec::new(), false).await?;
    while let Some(event) = events.next().await? {
        show(&event)?;
    }
    Ok(())
}
