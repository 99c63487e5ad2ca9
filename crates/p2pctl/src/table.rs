//! The human tables of `transfers`, `history`, `incoming`, `sessions`, `devices`, `pending` and
//! `peers`:
//! left-aligned columns separated by two spaces, a header line in capitals.

use std::time::Duration;

use p2p_client::units;
use p2p_client::words::{
    accept_word, direction_short, history_status_word, peer_label, short_device_id, short_id,
    state_word,
};
use p2p_proto::control::v1 as pb;

/// Lays out `rows` under `headers`; the last column is not padded.
fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `yes`, `no`.
fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The `p2pctl transfers` table.
pub(crate) fn transfers(list: &[pb::Transfer]) -> String {
    if list.is_empty() {
        return "no transfers\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                short_id(&t.id).to_owned(),
                direction_short(t.direction).to_owned(),
                state_word(t.state).to_owned(),
                peer_label(t).to_owned(),
                format!(
                    "{} {}/{}",
                    units::percent(t.bytes_done, t.total_bytes),
                    units::bytes(t.bytes_done),
                    units::bytes(t.total_bytes)
                ),
                if t.bytes_per_second > 0 {
                    units::speed(t.bytes_per_second)
                } else {
                    "-".to_owned()
                },
                if t.max_speed > 0 {
                    units::speed(t.max_speed)
                } else {
                    "-".to_owned()
                },
                t.roots.join(", "),
            ]
        })
        .collect();
    render(
        &[
            "ID", "DIR", "STATE", "PEER", "PROGRESS", "SPEED", "LIMIT", "ROOTS",
        ],
        &rows,
    )
}

/// Widest roots cell of the history table, in characters; longer lists end in `…`.
const HISTORY_ROOTS_WIDTH: usize = 40;

/// The `p2pctl history` table (without a line for an empty list), newest first as the daemon
/// sends it; `now_ms` is the current time for the ended column.
pub(crate) fn history(list: &[pb::HistoryEntry], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                short_id(&e.id).to_owned(),
                if e.finished_at_ms == 0 {
                    "-".to_owned()
                } else {
                    units::ago(Duration::from_millis(
                        now_ms.saturating_sub(e.finished_at_ms),
                    ))
                },
                direction_short(e.direction).to_owned(),
                history_status_word(e.status).to_owned(),
                if e.peer_name.is_empty() {
                    or_dash(&e.peer_address)
                } else {
                    e.peer_name.clone()
                },
                format!("{}/{}", e.files_done, e.total_files),
                if e.bytes_done == e.total_bytes {
                    units::bytes(e.total_bytes)
                } else {
                    format!(
                        "{}/{}",
                        units::bytes(e.bytes_done),
                        units::bytes(e.total_bytes)
                    )
                },
                units::duration(Duration::from_millis(e.duration_ms)),
                if e.bytes_per_second > 0 {
                    units::speed(e.bytes_per_second)
                } else {
                    "-".to_owned()
                },
                history_roots(e),
                or_dash(&e.reason),
            ]
        })
        .collect();
    render(
        &[
            "ID", "ENDED", "DIR", "STATUS", "PEER", "FILES", "SIZE", "TIME", "SPEED", "ROOTS",
            "REASON",
        ],
        &rows,
    )
}

/// `photos, notes.txt`, or as many names as fit in [`HISTORY_ROOTS_WIDTH`] characters and
/// how many more there were: `a.txt, b.txt (+18 more)`; `-` for none.
fn history_roots(e: &pb::HistoryEntry) -> String {
    let total = e.root_count.max(e.roots.len() as u64);
    let more = |hidden: u64| {
        if hidden == 0 {
            String::new()
        } else {
            format!(" (+{hidden} more)")
        }
    };
    let mut text = String::new();
    let mut shown: u64 = 0;
    for name in &e.roots {
        let sep = if shown == 0 { "" } else { ", " };
        let width = text.chars().count() + sep.len() + name.chars().count();
        if shown > 0 && width + more(total - shown - 1).len() > HISTORY_ROOTS_WIDTH {
            break;
        }
        text.push_str(sep);
        text.push_str(name);
        shown += 1;
    }
    if text.chars().count() > HISTORY_ROOTS_WIDTH {
        text = text.chars().take(HISTORY_ROOTS_WIDTH - 1).collect();
        text.push('…');
    }
    text.push_str(&more(total - shown));
    or_dash(&text)
}

/// The `p2pctl incoming` table; `now_ms` is the current time for the expiry column.
pub(crate) fn incoming(offers: &[pb::IncomingOffer], now_ms: u64) -> String {
    if offers.is_empty() {
        return "no offers wait for a decision\n".to_owned();
    }
    let rows: Vec<Vec<String>> = offers
        .iter()
        .map(|o| {
            vec![
                short_id(&o.transfer_id).to_owned(),
                if o.peer_name.is_empty() {
                    o.peer_address.clone()
                } else {
                    o.peer_name.clone()
                },
                yes_no(o.peer_trusted),
                o.roots.join(", "),
                o.total_files.to_string(),
                units::bytes(o.total_bytes),
                expires_in(o.expires_at_ms, now_ms),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "PEER",
            "TRUSTED",
            "ROOTS",
            "FILES",
            "SIZE",
            "EXPIRES IN",
        ],
        &rows,
    )
}

fn expires_in(expires_at_ms: u64, now_ms: u64) -> String {
    match expires_at_ms {
        0 => "-".to_owned(),
        at if at <= now_ms => "expired".to_owned(),
        at => units::duration_coarse(Duration::from_millis(at - now_ms)),
    }
}

/// The `p2pctl sessions` table; `now_ms` is the current time for the age column.
pub(crate) fn sessions(list: &[pb::Session], now_ms: u64) -> String {
    if list.is_empty() {
        return "no sessions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.peer_name.clone(),
                short_device_id(&s.peer_id).to_owned(),
                yes_no(s.trusted),
                s.peer_address.clone(),
                s.remote_address.clone(),
                if s.outgoing { "out" } else { "in" }.to_owned(),
                units::duration_coarse(Duration::from_millis(
                    now_ms.saturating_sub(s.established_at_ms),
                )),
                s.active_transfers.to_string(),
                s.peer_version.clone(),
            ]
        })
        .collect();
    render(
        &[
            "PEER",
            "ID",
            "TRUSTED",
            "ADDRESS",
            "REMOTE",
            "DIR",
            "UP",
            "TRANSFERS",
            "VERSION",
        ],
        &rows,
    )
}

/// The `p2pctl devices` and `p2pctl pending` table (without a line for an empty list); `now_ms`
/// is the current time for the last-seen column.
pub(crate) fn devices(list: &[pb::Device], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                or_dash(&d.name),
                short_device_id(&d.id).to_owned(),
                accept_word(d.accept).to_owned(),
                or_dash(&d.download_dir),
                yes_no(d.connected),
                last_seen(d, now_ms),
                or_dash(&d.last_address),
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "ID",
            "ACCEPT",
            "DOWNLOAD DIR",
            "CONNECTED",
            "LAST SEEN",
            "ADDRESS",
        ],
        &rows,
    )
}

/// The `p2pctl peers` table (without a line for an empty list), in the daemon's order; `now_ms`
/// is the current time for the last-seen column.
pub(crate) fn peers(list: &[pb::Peer], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                or_dash(&p.name),
                short_device_id(&p.device_id).to_owned(),
                or_dash(&p.address),
                protocol_version(p),
                yes_no(p.trusted),
                or_dash(&p.source),
                if p.last_seen_ms == 0 {
                    "-".to_owned()
                } else {
                    units::ago(Duration::from_millis(now_ms.saturating_sub(p.last_seen_ms)))
                },
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "ID",
            "ADDRESS",
            "VERSION",
            "TRUSTED",
            "SOURCE",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// A peer's protocol version, `2 (incompatible)` when this daemon cannot talk to it.
pub(crate) fn protocol_version(p: &pb::Peer) -> String {
    if p.compatible {
        p.protocol_version.to_string()
    } else {
        format!("{} (incompatible)", p.protocol_version)
    }
}

/// The text, or `-` for an empty one.
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// `now` while connected, `never` without a time, else how long ago.
fn last_seen(d: &pb::Device, now_ms: u64) -> String {
    if d.connected {
        "now".to_owned()
    } else if d.last_seen_ms == 0 {
        "never".to_owned()
    } else {
        units::ago(Duration::from_millis(now_ms.saturating_sub(d.last_seen_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::{
        DEVICE_ID, sample_device, sample_history_entry, sample_peer, sample_transfer,
    };

    #[test]
    fn columns_line_up() {
        let text = render(
            &["A", "BB", "C"],
            &[
                vec!["long cell".into(), "x".into(), "last".into()],
                vec!["y".into(), String::new(), String::new()],
            ],
        );
        assert_eq!(text, "A          BB  C\nlong cell  x   last\ny\n");
    }

    #[test]
    fn the_transfers_table_shows_short_ids_and_progress() {
        let text = transfers(&[sample_transfer()]);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("ID        DIR   STATE"));
        let row = lines.next().unwrap();
        for part in [
            "01234567 ",
            "send",
            "running",
            "kitchen-pc",
            "30% 12.0 MiB/40.0 MiB",
            "8.2 MiB/s  10.0 MiB/s  photos, notes.txt",
        ] {
            assert!(row.contains(part), "{part} in {row}");
        }
        let unlimited = pb::Transfer {
            max_speed: 0,
            ..sample_transfer()
        };
        assert!(transfers(&[unlimited]).contains("8.2 MiB/s  -      photos"));
        assert_eq!(transfers(&[]), "no transfers\n");
    }

    #[test]
    fn the_history_table_shows_outcome_size_time_and_reason() {
        let now = 1_700_000_002_000 + 180_000; // three minutes after the sample ended
        let done = pb::HistoryEntry {
            id: "0123456789abcdef".into(),
            direction: pb::Direction::Send as i32,
            status: pb::HistoryStatus::Completed as i32,
            reason: String::new(),
            files_done: 4,
            bytes_done: 4 << 20,
            bytes_per_second: 2 << 20,
            roots: (0..20).map(|i| format!("file-{i:02}.txt")).collect(),
            root_count: 25,
            ..sample_history_entry()
        };
        let text = history(&[done, sample_history_entry()], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "ID        ENDED   DIR   STATUS     PEER        FILES  SIZE             TIME   \
             SPEED        ROOTS                                REASON"
        );
        for part in [
            "01234567  3m ago  send  completed  kitchen-pc  4/4    4.0 MiB",
            "2.0 s",
            "2.0 MiB/s",
            "file-00.txt, file-01.txt (+23 more)  -",
        ] {
            assert!(lines[1].contains(part), "{part} in {}", lines[1]);
        }
        for part in [
            "fedcba98  3m ago  recv  failed",
            "1/4",
            "1.0 MiB/4.0 MiB",
            "512.0 KiB/s",
            "photos",
            "cannot prepare destination /srv/in: Not a directory",
        ] {
            assert!(lines[2].contains(part), "{part} in {}", lines[2]);
        }
        let few = pb::HistoryEntry {
            roots: vec!["a".into(), "b".into()],
            root_count: 5,
            ..sample_history_entry()
        };
        assert_eq!(history_roots(&few), "a, b (+3 more)");
        let none = pb::HistoryEntry {
            roots: vec![],
            root_count: 0,
            ..sample_history_entry()
        };
        assert_eq!(history_roots(&none), "-");
        let long = pb::HistoryEntry {
            roots: vec!["x".repeat(50), "y".into()],
            root_count: 2,
            ..sample_history_entry()
        };
        assert_eq!(
            history_roots(&long),
            format!("{}… (+1 more)", "x".repeat(HISTORY_ROOTS_WIDTH - 1))
        );
    }

    #[test]
    fn offers_show_when_they_expire() {
        let offer = pb::IncomingOffer {
            transfer_id: "abcdef0123456789".into(),
            peer_name: "laptop".into(),
            roots: vec!["x".into()],
            total_files: 3,
            total_bytes: 2048,
            expires_at_ms: 1_000_000 + 250_000,
            ..Default::default()
        };
        let text = incoming(std::slice::from_ref(&offer), 1_000_000);
        assert!(
            text.starts_with("ID        PEER    TRUSTED  ROOTS"),
            "{text}"
        );
        assert!(
            text.contains("abcdef01  laptop  no       x      3      2.0 KiB  4m 10s"),
            "{text}"
        );
        let trusted = pb::IncomingOffer {
            peer_trusted: true,
            ..offer.clone()
        };
        assert!(
            incoming(&[trusted], 1_000_000).contains("laptop  yes      x"),
            "{text}"
        );
        assert!(incoming(&[offer], 2_000_000).contains("expired"));
    }

    #[test]
    fn sessions_show_direction_and_age() {
        let s = pb::Session {
            peer_name: "laptop".into(),
            peer_id: DEVICE_ID.into(),
            outgoing: true,
            established_at_ms: 1_000,
            active_transfers: 2,
            ..Default::default()
        };
        let text = sessions(std::slice::from_ref(&s), 13_000);
        assert!(
            text.starts_with("PEER    ID       TRUSTED  ADDRESS"),
            "{text}"
        );
        assert!(text.contains("laptop  P56IOI7  no "), "{text}");
        assert!(text.contains("out  12s  2"), "{text}");
        let s = pb::Session { trusted: true, ..s };
        assert!(sessions(&[s], 13_000).contains("laptop  P56IOI7  yes"));
    }

    #[test]
    fn the_devices_table_shows_rule_dir_and_when_last_seen() {
        let now = 1_700_000_360_000; // three minutes after the sample's last_seen_ms
        let text = devices(&[sample_device()], now);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "NAME  ID       ACCEPT  DOWNLOAD DIR  CONNECTED  LAST SEEN  ADDRESS"
        );
        assert_eq!(
            lines.next().unwrap(),
            "beta  P56IOI7  auto    /srv/in/beta  yes        now        192.0.2.8:14567"
        );
        assert_eq!(lines.next(), None);

        let gone = pb::Device {
            connected: false,
            ..sample_device()
        };
        assert!(devices(&[gone], now).contains("no         3m ago"));
        let pending = pb::Device {
            id: DEVICE_ID.into(),
            ..Default::default()
        };
        let text = devices(&[pending], now);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("-     P56IOI7  default  -             no         never      -"),
            "{text}"
        );
    }

    #[test]
    fn the_peers_table_shows_version_trust_source_and_when_last_heard() {
        let now = 1_700_000_360_000; // two seconds after the sample's last_seen_ms
        let old = pb::Peer {
            name: "attic".into(),
            device_id: "MFZWI3D-BONSGYC".into(),
            address: "[fe80::1%2]:14567".into(),
            protocol_version: 2,
            compatible: false,
            trusted: false,
            source: "static".into(),
            last_seen_ms: now - 4 * 60_000,
        };
        let text = peers(&[sample_peer(), old], now);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "NAME        ID       ADDRESS            VERSION           TRUSTED  SOURCE     LAST SEEN"
        );
        assert_eq!(
            lines.next().unwrap(),
            "kitchen-pc  P56IOI7  10.0.0.2:14567     1                 yes      broadcast  2s ago"
        );
        assert_eq!(
            lines.next().unwrap(),
            "attic       MFZWI3D  [fe80::1%2]:14567  2 (incompatible)  no       static     4m ago"
        );
        assert_eq!(lines.next(), None);

        let blank = pb::Peer {
            device_id: DEVICE_ID.into(),
            ..Default::default()
        };
        let text = peers(&[blank], now);
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "-     P56IOI7  -        0 (incompatible)  no       -       -"
        );
    }
}
