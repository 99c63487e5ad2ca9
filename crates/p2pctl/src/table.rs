//! The human tables of `transfers`, `incoming` and `sessions`: left-aligned columns separated by
//! two spaces, a header line in capitals.

use std::time::Duration;

use p2p_proto::control::v1 as pb;

use crate::json;
use crate::progress::{direction_short, peer, short_id};
use crate::units;

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
                json::state_word(t.state).to_owned(),
                peer(t).to_owned(),
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
                t.roots.join(", "),
            ]
        })
        .collect();
    render(
        &["ID", "DIR", "STATE", "PEER", "PROGRESS", "SPEED", "ROOTS"],
        &rows,
    )
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
                o.roots.join(", "),
                o.total_files.to_string(),
                units::bytes(o.total_bytes),
                expires_in(o.expires_at_ms, now_ms),
            ]
        })
        .collect();
    render(
        &["ID", "PEER", "ROOTS", "FILES", "SIZE", "EXPIRES IN"],
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
                short_id(&s.peer_id).to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::sample_transfer;

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
            "8.2 MiB/s",
            "photos, notes.txt",
        ] {
            assert!(row.contains(part), "{part} in {row}");
        }
        assert_eq!(transfers(&[]), "no transfers\n");
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
            text.contains("abcdef01  laptop  x      3      2.0 KiB  4m 10s"),
            "{text}"
        );
        assert!(incoming(&[offer], 2_000_000).contains("expired"));
    }

    #[test]
    fn sessions_show_direction_and_age() {
        let s = pb::Session {
            peer_name: "laptop".into(),
            peer_id: "0011223344556677".into(),
            outgoing: true,
            established_at_ms: 1_000,
            active_transfers: 2,
            ..Default::default()
        };
        let text = sessions(&[s], 13_000);
        assert!(text.contains("laptop  00112233"), "{text}");
        assert!(text.contains("out  12s  2"), "{text}");
    }
}
