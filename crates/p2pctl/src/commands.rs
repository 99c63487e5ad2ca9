//! Runs the command named on the command line. Each prints a human summary, or with `--json`
//! JSON on stdout (one document, or one object per line for the progress of `send` and
//! `watch`).

use std::time::Duration;

use anyhow::Result;
use p2p_client::ControlClient;
use p2p_client::units;
use p2p_client::words::short_device_id;
use p2p_proto::control::v1 as pb;
use serde_json::{Value, json};

use crate::cli::{AcceptRule, Cli, Command, DirectionArg, HistoryAction, HistoryArgs, TrustArgs};
use crate::client::{self, answer};
use crate::progress::stdout_line;

use crate::{json, peers, send, table, watch};

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
    let socket = p2p_client::paths::socket_path(cli.socket.as_deref());
    let as_json = cli.json;

    // What can be checked without the daemon is checked first, so that a wrong path is
    // reported as such even when no daemon runs. `local_dir`: the directory of `accept --to`
    // or `trust --download-dir`, made absolute here (the daemon has another working directory).
    let send_paths = match &cli.command {
        Command::Send(args) => send::local_paths(&args.paths)?,
        _ => Vec::new(),
    };
    let local_dir = match &cli.command {
        Command::Accept { to: Some(dir), .. } => Some(send::absolute_text(dir)?),
        Command::Trust(TrustArgs {
            download_dir: Some(dir),
            ..
        }) => Some(send::absolute_text(dir)?),
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
        Command::Id => {
            let s = answer(api.get_status(pb::GetStatusRequest {}).await)?;
            if as_json {
                print_json(&json!({ "device_id": s.device_id, "device_name": s.device_name }))?;
            } else {
                stdout_line(&s.device_id)?;
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
        Command::History(args) => history(&mut api, &args, as_json).await?,
        Command::Watch { id } => watch::watch(&mut api, id.as_deref(), as_json).await?,
        Command::Cancel { id } => cancel(&mut api, &id, as_json).await?,
        Command::Pause { id } => pause_or_resume(&mut api, &id, true, as_json).await?,
        Command::Resume { id } => pause_or_resume(&mut api, &id, false, as_json).await?,
        Command::Limit { id, rate } => limit(&mut api, &id, rate, as_json).await?,
        Command::Incoming => {
            let list = answer(api.list_incoming(pb::ListIncomingRequest {}).await)?;
            if as_json {
                print_json(&Value::Array(list.offers.iter().map(json::offer).collect()))?;
            } else {
                print!("{}", table::incoming(&list.offers, table::now_ms()));
            }
        }
        Command::Accept { id, .. } => accept(&mut api, &id, local_dir, as_json).await?,
        Command::Reject { id, reason } => reject(&mut api, &id, reason, as_json).await?,
        Command::Peers { watch: true } => peers::watch(&mut api, as_json).await?,
        Command::Peers { watch: false } => {
            let list = answer(api.list_peers(pb::ListPeersRequest {}).await)?;
            if as_json {
                print_json(&Value::Array(list.peers.iter().map(json::peer).collect()))?;
            } else {
                print!("{}", peers::list_text(&list.peers, table::now_ms()));
            }
        }
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
                stdout_line(&connected_text(&s))?;
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
        Command::Devices => {
            let list = answer(api.list_devices(pb::ListDevicesRequest {}).await)?;
            print_devices(&list.devices, as_json, DeviceList::Trusted)?;
        }
        Command::Pending => {
            let list = answer(api.list_pending(pb::ListPendingRequest {}).await)?;
            print_devices(&list.devices, as_json, DeviceList::Pending)?;
        }
        Command::Trust(args) => {
            let request = trust_request(&args, local_dir);
            let d = answer(api.trust_device(request).await)?;
            if as_json {
                print_json(&json::device(&d))?;
            } else {
                stdout_line(&trusted_text(&d))?;
            }
        }
        Command::Untrust { id } => {
            let request = pb::UntrustDeviceRequest { id };
            let pb::UntrustDeviceResponse { id } = answer(api.untrust_device(request).await)?;
            if as_json {
                print_json(&json!({ "id": id, "untrusted": true }))?;
            } else {
                stdout_line(&format!("untrusted {id}"))?;
            }
        }
    }
    Ok(Finished::Done)
}

/// Which list of devices is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceList {
    Trusted,
    Pending,
}

fn print_devices(list: &[pb::Device], as_json: bool, which: DeviceList) -> Result<()> {
    if as_json {
        print_json(&Value::Array(list.iter().map(json::device).collect()))
    } else {
        print!("{}", devices_text(list, which, table::now_ms()));
        Ok(())
    }
}

/// The human output of `devices` and `pending`.
fn devices_text(list: &[pb::Device], which: DeviceList, now_ms: u64) -> String {
    match (which, list.first()) {
        (DeviceList::Trusted, None) => "no trusted devices; run `p2pctl id` on the other machine, \
             then `p2pctl trust ID` here\n"
            .to_owned(),
        (DeviceList::Pending, None) => "no pending devices\n".to_owned(),
        (DeviceList::Trusted, Some(_)) => table::devices(list, now_ms),
        (DeviceList::Pending, Some(first)) => format!(
            "{}\ntrust one with `p2pctl trust ID` (ID: the full id or a unique beginning, e.g. {})\n",
            table::devices(list, now_ms),
            short_device_id(&first.id),
        ),
    }
}

fn trust_request(args: &TrustArgs, download_dir: Option<String>) -> pb::TrustDeviceRequest {
    let accept = match args.accept {
        None | Some(AcceptRule::Default) => pb::DeviceAccept::Default,
        Some(AcceptRule::Auto) => pb::DeviceAccept::Auto,
        Some(AcceptRule::Ask) => pb::DeviceAccept::Ask,
        Some(AcceptRule::Reject) => pb::DeviceAccept::Reject,
    };
    pb::TrustDeviceRequest {
        id: args.id.clone(),
        name: args.name.clone().unwrap_or_default(),
        accept: accept as i32,
        download_dir: download_dir.unwrap_or_default(),
    }
}

/// `trusted beta (P56IOI7-…)`, or `trusted P56IOI7-…` for a device without a name.
fn trusted_text(d: &pb::Device) -> String {
    if d.name.is_empty() {
        format!("trusted {}", d.id)
    } else {
        format!("trusted {} ({})", d.name, d.id)
    }
}

/// `connected to beta (P56IOI7-…) at 192.0.2.8:14567, p2pd 0.1.0, trusted`.
fn connected_text(s: &pb::Session) -> String {
    let trust = if s.trusted {
        "trusted".to_owned()
    } else {
        format!(
            "not trusted (`p2pctl trust {}` trusts it)",
            short_device_id(&s.peer_id)
        )
    };
    format!(
        "connected to {} ({}) at {}, p2pd {}, {trust}",
        s.peer_name, s.peer_id, s.peer_address, s.peer_version
    )
}

/// `p2pctl history`: lists the history, or clears it.
async fn history(api: &mut ControlClient, args: &HistoryArgs, as_json: bool) -> Result<()> {
    if let Some(HistoryAction::Clear) = args.action {
        let pb::ClearHistoryResponse { removed } =
            answer(api.clear_history(pb::ClearHistoryRequest {}).await)?;
        return if as_json {
            print_json(&json!({ "removed": removed }))
        } else {
            stdout_line(&cleared_text(removed))
        };
    }
    let now = table::now_ms();
    let list = answer(api.list_history(history_request(args, now)).await)?;
    if as_json {
        print_json(&Value::Array(
            list.entries.iter().map(json::history_entry).collect(),
        ))
    } else {
        print!("{}", history_text(&list.entries, args, now));
        Ok(())
    }
}

/// The `ListHistory` request for the flags; `now_ms` turns `--since AGE` into a time.
fn history_request(args: &HistoryArgs, now_ms: u64) -> pb::ListHistoryRequest {
    let statuses = [
        (args.completed, pb::HistoryStatus::Completed),
        (args.failed, pb::HistoryStatus::Failed),
        (args.cancelled, pb::HistoryStatus::Cancelled),
        (args.rejected, pb::HistoryStatus::Rejected),
    ]
    .into_iter()
    .filter(|(wanted, _)| *wanted)
    .map(|(_, status)| status as i32)
    .collect();
    pb::ListHistoryRequest {
        limit: args.limit,
        direction: match args.direction {
            None => pb::Direction::Unspecified,
            Some(DirectionArg::Send) => pb::Direction::Send,
            Some(DirectionArg::Receive) => pb::Direction::Receive,
        } as i32,
        statuses,
        peer: args.peer.clone().unwrap_or_default(),
        // An age older than the epoch is no bound at all (0).
        since_ms: args.since.map_or(0, |age| {
            now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
        }),
    }
}

/// The human output of `history`: the table, a line when it is empty, and a hint when the
/// limit may have cut it.
fn history_text(list: &[pb::HistoryEntry], args: &HistoryArgs, now_ms: u64) -> String {
    let filtered = args.direction.is_some()
        || args.completed
        || args.failed
        || args.cancelled
        || args.rejected
        || args.peer.is_some()
        || args.since.is_some();
    if list.is_empty() {
        return if filtered {
            "no transfer in history matches\n".to_owned()
        } else {
            "no transfers in history\n".to_owned()
        };
    }
    let mut text = table::history(list, now_ms);
    if list.len() == args.limit as usize {
        text.push_str(&format!(
            "\nthe newest {} shown; `p2pctl history -n N` shows up to N\n",
            list.len()
        ));
    }
    text
}

/// `history cleared: 3 transfers removed`.
fn cleared_text(removed: u64) -> String {
    match removed {
        0 => "history was already empty".to_owned(),
        1 => "history cleared: 1 transfer removed".to_owned(),
        n => format!("history cleared: {n} transfers removed"),
    }
}

async fn cancel(api: &mut ControlClient, given: &str, as_json: bool) -> Result<()> {
    let id = client::resolve_transfer_id(api, given).await?;
    let request = pb::CancelTransferRequest { id: id.clone() };
    answer(api.cancel_transfer(request).await)?;
    if as_json {
        print_json(&json!({ "transfer_id": id, "cancelled": true }))
    } else {
        stdout_line(&format!("cancelled transfer {id}"))
    }
}

async fn pause_or_resume(
    api: &mut ControlClient,
    given: &str,
    pause: bool,
    as_json: bool,
) -> Result<()> {
    let id = client::resolve_transfer_id(api, given).await?;
    let t = if pause {
        answer(
            api.pause_transfer(pb::PauseTransferRequest { id: id.clone() })
                .await,
        )?
    } else {
        answer(
            api.resume_transfer(pb::ResumeTransferRequest { id: id.clone() })
                .await,
        )?
    };
    if as_json {
        print_json(&json::transfer(&t))
    } else if pause {
        stdout_line(&format!("paused transfer {id}"))
    } else {
        stdout_line(&format!("resumed transfer {id}"))
    }
}

async fn limit(api: &mut ControlClient, given: &str, rate: u64, as_json: bool) -> Result<()> {
    let id = client::resolve_transfer_id(api, given).await?;
    let request = pb::SetTransferLimitRequest {
        id,
        max_speed: rate,
    };
    let t = answer(api.set_transfer_limit(request).await)?;
    if as_json {
        print_json(&json::transfer(&t))
    } else {
        stdout_line(&limit_text(&t))
    }
}

/// `transfer 5a26d75f-…: speed limit 5.0 MiB/s` or `…: no speed limit of its own`.
fn limit_text(t: &pb::Transfer) -> String {
    if t.max_speed == 0 {
        format!("transfer {}: no speed limit of its own", t.id)
    } else {
        format!(
            "transfer {}: speed limit {}",
            t.id,
            units::speed(t.max_speed)
        )
    }
}

/// The global limit as `status` shows it.
fn global_limit_text(max_speed: u64) -> String {
    if max_speed == 0 {
        "none".to_owned()
    } else {
        format!("{} for all outgoing transfers", units::speed(max_speed))
    }
}

async fn accept(
    api: &mut ControlClient,
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
    api: &mut ControlClient,
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
         limit:      {}\n\
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
        global_limit_text(s.max_speed),
        s.download_dir,
        s.state_dir,
        s.socket_path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::{DEVICE_ID, sample_device};

    #[test]
    fn status_shows_the_full_device_id() {
        let s = pb::GetStatusResponse {
            device_id: DEVICE_ID.to_owned(),
            device_name: "alpha".to_owned(),
            version: "0.1.0".to_owned(),
            uptime_ms: 250_000,
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(text.starts_with("p2pd 0.1.0 running for 4m 10s"), "{text}");
        assert!(
            text.contains(&format!("device:     alpha ({DEVICE_ID})")),
            "{text}"
        );
        assert!(text.contains("\nlimit:      none\n"), "{text}");
        let limited = pb::GetStatusResponse {
            max_speed: 10 << 20,
            ..s
        };
        assert!(
            status_text(&limited).contains("\nlimit:      10.0 MiB/s for all outgoing transfers\n")
        );
    }

    #[test]
    fn limit_says_the_new_limit() {
        let t = pb::Transfer {
            id: "5a26d75f".to_owned(),
            max_speed: 5 << 20,
            ..Default::default()
        };
        assert_eq!(limit_text(&t), "transfer 5a26d75f: speed limit 5.0 MiB/s");
        let t = pb::Transfer { max_speed: 0, ..t };
        assert_eq!(
            limit_text(&t),
            "transfer 5a26d75f: no speed limit of its own"
        );
    }

    #[test]
    fn trust_requests_carry_the_rule_and_the_absolute_dir() {
        let args = TrustArgs {
            id: "P56IOI7".to_owned(),
            name: Some("beta".to_owned()),
            accept: Some(AcceptRule::Reject),
            download_dir: Some("in".into()),
        };
        assert_eq!(
            trust_request(&args, Some("/home/me/in".to_owned())),
            pb::TrustDeviceRequest {
                id: "P56IOI7".to_owned(),
                name: "beta".to_owned(),
                accept: pb::DeviceAccept::Reject as i32,
                download_dir: "/home/me/in".to_owned(),
            }
        );
        assert_eq!(
            trust_request(&bare_args(), None),
            pb::TrustDeviceRequest {
                id: "X".to_owned(),
                ..Default::default()
            }
        );
        for (rule, want) in [
            (AcceptRule::Default, pb::DeviceAccept::Default),
            (AcceptRule::Auto, pb::DeviceAccept::Auto),
            (AcceptRule::Ask, pb::DeviceAccept::Ask),
        ] {
            let args = TrustArgs {
                accept: Some(rule),
                ..bare_args()
            };
            assert_eq!(trust_request(&args, None).accept, want as i32);
        }
    }

    fn bare_args() -> TrustArgs {
        TrustArgs {
            id: "X".to_owned(),
            name: None,
            accept: None,
            download_dir: None,
        }
    }

    #[test]
    fn trusting_prints_one_line_with_the_full_id() {
        assert_eq!(
            trusted_text(&sample_device()),
            format!("trusted beta ({DEVICE_ID})")
        );
        let unnamed = pb::Device {
            name: String::new(),
            ..sample_device()
        };
        assert_eq!(trusted_text(&unnamed), format!("trusted {DEVICE_ID}"));
    }

    #[test]
    fn device_lists_say_when_empty_and_how_to_trust() {
        let now = 1_700_000_360_000;
        assert!(devices_text(&[], DeviceList::Trusted, now).starts_with("no trusted devices"));
        assert_eq!(
            devices_text(&[], DeviceList::Pending, now),
            "no pending devices\n"
        );
        let trusted = devices_text(&[sample_device()], DeviceList::Trusted, now);
        assert!(trusted.starts_with("NAME  ID"), "{trusted}");
        assert!(!trusted.contains("p2pctl trust"), "{trusted}");
        let pending = devices_text(&[sample_device()], DeviceList::Pending, now);
        assert!(pending.starts_with("NAME  ID"), "{pending}");
        assert!(
            pending.ends_with(
                "\ntrust one with `p2pctl trust ID` (ID: the full id or a unique beginning, e.g. P56IOI7)\n"
            ),
            "{pending}"
        );
    }

    fn history_args(argv: &[&str]) -> HistoryArgs {
        let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let Command::History(args) = cli.command else {
            panic!("not history: {argv:?}");
        };
        args
    }

    #[test]
    fn history_requests_carry_the_filters() {
        let now = 1_700_000_000_000;
        assert_eq!(
            history_request(&history_args(&["p2pctl", "history"]), now),
            pb::ListHistoryRequest {
                limit: 20,
                ..Default::default()
            }
        );
        let args = history_args(&[
            "p2pctl",
            "history",
            "-n",
            "3",
            "--direction",
            "send",
            "--completed",
            "--rejected",
            "--peer",
            "P56IOI7",
            "--since",
            "1h",
        ]);
        assert_eq!(
            history_request(&args, now),
            pb::ListHistoryRequest {
                limit: 3,
                direction: pb::Direction::Send as i32,
                statuses: vec![
                    pb::HistoryStatus::Completed as i32,
                    pb::HistoryStatus::Rejected as i32
                ],
                peer: "P56IOI7".to_owned(),
                since_ms: now - 3_600_000,
            }
        );
        let args = history_args(&["p2pctl", "history", "--since", "9999w"]);
        assert_eq!(history_request(&args, 5).since_ms, 0);
    }

    #[test]
    fn history_text_says_when_empty_and_when_cut() {
        let now = 1_700_000_200_000;
        let plain = history_args(&["p2pctl", "history"]);
        assert_eq!(history_text(&[], &plain, now), "no transfers in history\n");
        let failed = history_args(&["p2pctl", "history", "--failed"]);
        assert_eq!(
            history_text(&[], &failed, now),
            "no transfer in history matches\n"
        );
        let one = history_args(&["p2pctl", "history", "-n", "1"]);
        let entry = crate::json::tests::sample_history_entry();
        let text = history_text(std::slice::from_ref(&entry), &one, now);
        assert!(text.starts_with("ID  "), "{text}");
        assert!(
            text.ends_with("\nthe newest 1 shown; `p2pctl history -n N` shows up to N\n"),
            "{text}"
        );
        assert!(!history_text(&[entry], &plain, now).contains("newest"));
        assert_eq!(cleared_text(0), "history was already empty");
        assert_eq!(cleared_text(1), "history cleared: 1 transfer removed");
        assert_eq!(cleared_text(7), "history cleared: 7 transfers removed");
    }

    #[test]
    fn connecting_says_whether_the_peer_is_trusted() {
        let s = pb::Session {
            peer_id: DEVICE_ID.to_owned(),
            peer_name: "beta".to_owned(),
            peer_address: "192.0.2.8:14567".to_owned(),
            peer_version: "0.1.0".to_owned(),
            trusted: true,
            ..Default::default()
        };
        assert_eq!(
            connected_text(&s),
            format!("connected to beta ({DEVICE_ID}) at 192.0.2.8:14567, p2pd 0.1.0, trusted")
        );
        let s = pb::Session {
            trusted: false,
            ..s
        };
        assert!(
            connected_text(&s).ends_with(", not trusted (`p2pctl trust P56IOI7` trusts it)"),
            "{}",
            connected_text(&s)
        );
    }
}
