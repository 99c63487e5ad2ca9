//! Runs the command named on the command line. Each prints a human summary, or with `--json`
//! JSON on stdout (one document, or one object per line for the progress of `send` and
//! `watch`).

use std::time::Duration;

use anyhow::Result;
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cli::{Cli, Command};
use crate::client::{self, answer};
use crate::progress::stdout_line;
use crate::{json, send, table, units, watch};

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// It did what it was asked.
    Done,
    /// The user pressed Ctrl-C while `send` followed a transfer; the transfer goes on.
    Interrupted,
}

/// Runs the command named on the command line.
///
/// # Errors
/// No daemon, a failed RPC, or a transfer that did not complete; see
/// [`client::exit_code`] for the exit codes.
pub(crate) async fn run(cli: Cli) -> Result<Finished> {
    let socket = client::socket_path(cli.socket.as_deref());
    let as_json = cli.json;

    // What can be checked without the daemon is checked first, so that a wrong path is
    // reported as such even when no daemon runs.
    let send_paths = match &cli.command {
        Command::Send(args) => send::local_paths(&args.paths)?,
        _ => Vec::new(),
    };
    let accept_dir = match &cli.command {
        Command::Accept { to: Some(dir), .. } => Some(send::absolute_text(dir)?),
        _ => None,
    };

    let mut api = client::connect(&socket).await?;
    match cli.command {
        Command::Status => {
            let s = answer(api.get_status(pb::GetStatusRequest {}).await)?;
            if as_json {
                print_json(&json::status(&s))?;
            } else {
                print!("{}", status_text(&s));
            }
        }
        Command::Shutdown => {
            answer(api.shutdown(pb::ShutdownRequest {}).await)?;
            if as_json {
                print_json(&json!({ "shutdown": true, "socket": socket.display().to_string() }))?;
            } else {
                stdout_line(&format!("p2pd at {} is shutting down", socket.display()))?;
            }
        }
        Command::Send(args) => return send::send(&mut api, &args, send_paths, as_json).await,
        Command::Transfers => {
            let list = answer(api.list_transfers(pb::ListTransfersRequest {}).await)?;
            if as_json {
                print_json(&Value::Array(
                    list.transfers.iter().map(json::transfer).collect(),
                ))?;
            } else {
                print!("{}", table::transfers(&list.transfers));
            }
        }
        Command::Watch { id } => watch::watch(&mut api, id.as_deref(), as_json).await?,
        Command::Cancel { id } => cancel(&mut api, &id, as_json).await?,
        Command::Incoming => {
            let list = answer(api.list_incoming(pb::ListIncomingRequest {}).await)?;
            if as_json {
                print_json(&Value::Array(list.offers.iter().map(json::offer).collect()))?;
            } else {
                print!("{}", table::incoming(&list.offers, table::now_ms()));
            }
        }
        Command::Accept { id, .. } => accept(&mut api, &id, accept_dir, as_json).await?,
        Command::Reject { id, reason } => reject(&mut api, &id, reason, as_json).await?,
        Command::Sessions => {
            let list = answer(api.list_sessions(pb::ListSessionsRequest {}).await)?;
            if as_json {
                print_json(&Value::Array(
                    list.sessions.iter().map(json::session).collect(),
                ))?;
            } else {
                print!("{}", table::sessions(&list.sessions, table::now_ms()));
            }
        }
        Command::Connect { peer } => {
            let s = answer(api.connect(pb::ConnectRequest { peer }).await)?;
            if as_json {
                print_json(&json::session(&s))?;
            } else {
                stdout_line(&format!(
                    "connected to {} ({}) at {}, p2pd {}",
                    s.peer_name, s.peer_id, s.peer_address, s.peer_version
                ))?;
            }
        }
        Command::Disconnect { peer } => {
            let request = pb::DisconnectRequest { peer: peer.clone() };
            answer(api.disconnect(request).await)?;
            if as_json {
                print_json(&json!({ "peer": peer, "disconnected": true }))?;
            } else {
                stdout_line(&format!("disconnected from {peer}"))?;
            }
        }
    }
    Ok(Finished::Done)
}

async fn cancel(api: &mut ControlServiceClient<Channel>, given: &str, as_json: bool) -> Result<()> {
    let id = client::resolve_transfer_id(api, given).await?;
    let request = pb::CancelTransferRequest { id: id.clone() };
    answer(api.cancel_transfer(request).await)?;
    if as_json {
        print_json(&json!({ "transfer_id": id, "cancelled": true }))
    } else {
        stdout_line(&format!("cancelled transfer {id}"))
    }
}

async fn accept(
    api: &mut ControlServiceClient<Channel>,
    given: &str,
    destination: Option<String>,
    as_json: bool,
) -> Result<()> {
    let id = client::resolve_offer_id(api, given).await?;
    let request = pb::AcceptIncomingRequest {
        transfer_id: id.clone(),
        destination: destination.clone().unwrap_or_default(),
    };
    answer(api.accept_incoming(request).await)?;
    if as_json {
        return print_json(&json!({
            "transfer_id": id,
            "accepted": true,
            "destination": destination.unwrap_or_default(),
        }));
    }
    let into = destination.map_or_else(
        || "the download directory".to_owned(),
        |dir| dir.to_string(),
    );
    stdout_line(&format!(
        "accepted transfer {id} into {into}; follow it with `p2pctl watch {id}`"
    ))
}

async fn reject(
    api: &mut ControlServiceClient<Channel>,
    given: &str,
    reason: Option<String>,
    as_json: bool,
) -> Result<()> {
    let id = client::resolve_offer_id(api, given).await?;
    let reason = reason.unwrap_or_default();
    let request = pb::RejectIncomingRequest {
        transfer_id: id.clone(),
        reason: reason.clone(),
    };
    answer(api.reject_incoming(request).await)?;
    if as_json {
        print_json(&json!({ "transfer_id": id, "rejected": true, "reason": reason }))
    } else {
        stdout_line(&format!("rejected transfer {id}"))
    }
}

/// One pretty-printed JSON document on stdout.
fn print_json(v: &Value) -> Result<()> {
    stdout_line(&format!("{v:#}"))
}

fn status_text(s: &pb::GetStatusResponse) -> String {
    format!(
        "p2pd {} running for {} (pid {})\n\
         device:     {} ({})\n\
         listening:  {}\n\
         sessions:   {}\n\
         transfers:  {} active\n\
         downloads:  {}\n\
         state:      {}\n\
         socket:     {}\n",
        s.version,
        units::duration_coarse(Duration::from_millis(s.uptime_ms)),
        s.pid,
        s.device_name,
        s.device_id,
        s.listen_address,
        s.session_count,
        s.active_transfer_count,
        s.download_dir,
        s.state_dir,
        s.socket_path,
    )
}
