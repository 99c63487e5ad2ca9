//! `p2pctl peers [--watch]`: the peers LAN discovery found (and the static ones that are up),
//! listed once or followed over `WatchPeers`.

use anyhow::Result;
use p2p_client::ControlClient;
use p2p_client::words::{peer_change_word, short_device_id};
use p2p_proto::control::v1 as pb;

use crate::progress::stdout_line;
use crate::{json, table};

/// The human output of `p2pctl peers`: the table, or a line saying why it may be empty.
pub(crate) fn list_text(list: &[pb::Peer], now_ms: u64) -> String {
    if list.is_empty() {
        return "no peers found; discovery finds p2pd daemons on the same LAN (elsewhere, e.g. \
                over a VPN, start p2pd with `--peer-addr HOST:PORT`)\n"
            .to_owned();
    }
    table::peers(list, now_ms)
}

/// One line of `p2pctl peers --watch`: `appeared kitchen-pc (P56IOI7) at 10.0.0.2:14567`, with
/// `, protocol version 2 (incompatible)` after a peer this daemon cannot use. `None` for an
/// event without a peer.
pub(crate) fn event_line(e: &pb::PeerEvent) -> Option<String> {
    let p = e.peer.as_ref()?;
    let id = short_device_id(&p.device_id);
    let who = if p.name.is_empty() {
        id.to_owned()
    } else {
        format!("{} ({id})", p.name)
    };
    let mut line = format!("{} {who} at {}", peer_change_word(e.change), p.address);
    let lost = e.change == pb::PeerChange::Lost as i32;
    if !p.compatible && !lost {
        line.push_str(&format!(
            ", protocol version {} (incompatible)",
            p.protocol_version
        ));
    }
    Some(line)
}

/// `p2pctl peers --watch`: the current peers as `appeared`, then one line (or with `--json` one
/// `{"change": …, "peer": {…}}` object) per change, until the daemon ends the stream — it does
/// when it stops — or Ctrl-C ends the process.
///
/// # Errors
/// A failed RPC, the connection lost, or stdout closed.
pub(crate) async fn watch(api: &mut ControlClient, as_json: bool) -> Result<()> {
    let mut events = p2p_client::watch::peers(api).await?;
    while let Some(event) = events.next().await? {
        if as_json {
            stdout_line(&json::peer_event(&event).to_string())?;
        } else if let Some(line) = event_line(&event) {
            stdout_line(&line)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::sample_peer;

    fn event(change: pb::PeerChange, peer: pb::Peer) -> pb::PeerEvent {
        pb::PeerEvent {
            change: change as i32,
            peer: Some(peer),
        }
    }

    #[test]
    fn an_empty_list_says_where_discovery_looks() {
        let text = list_text(&[], 0);
        assert!(text.starts_with("no peers found"), "{text}");
        assert!(text.contains("same LAN"), "{text}");
        assert!(text.contains("--peer-addr"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        let now = 1_700_000_360_000;
        assert!(list_text(&[sample_peer()], now).starts_with("NAME "));
    }

    #[test]
    fn each_change_is_one_line_with_name_short_id_and_address() {
        let p = sample_peer();
        assert_eq!(
            event_line(&event(pb::PeerChange::Appeared, p.clone())).unwrap(),
            "appeared kitchen-pc (P56IOI7) at 10.0.0.2:14567"
        );
        let moved = pb::Peer {
            address: "10.0.0.3:14567".into(),
            ..p.clone()
        };
        assert_eq!(
            event_line(&event(pb::PeerChange::Changed, moved)).unwrap(),
            "changed kitchen-pc (P56IOI7) at 10.0.0.3:14567"
        );
        assert_eq!(
            event_line(&event(pb::PeerChange::Lost, p.clone())).unwrap(),
            "lost kitchen-pc (P56IOI7) at 10.0.0.2:14567"
        );
    }

    #[test]
    fn incompatible_and_nameless_peers_read_clearly() {
        let old = pb::Peer {
            name: String::new(),
            protocol_version: 2,
            compatible: false,
            ..sample_peer()
        };
        assert_eq!(
            event_line(&event(pb::PeerChange::Appeared, old.clone())).unwrap(),
            "appeared P56IOI7 at 10.0.0.2:14567, protocol version 2 (incompatible)"
        );
        assert_eq!(
            event_line(&event(pb::PeerChange::Lost, old)).unwrap(),
            "lost P56IOI7 at 10.0.0.2:14567"
        );
        assert_eq!(event_line(&pb::PeerEvent::default()), None);
    }
}
