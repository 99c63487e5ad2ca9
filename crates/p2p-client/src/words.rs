//! How the control API's values are named for people: enums as lower-case words (`"send"`,
//! `"waiting_accept"`) — the same words in p2pctl's tables, its `--json` output and any other
//! front end —, which states are final, and the short forms of transfer and device ids.

use p2p_proto::control::v1 as pb;

/// `"send"`, `"receive"`; `"unknown"` for a value this client does not know.
pub fn direction_word(direction: i32) -> &'static str {
    match pb::Direction::try_from(direction) {
        Ok(pb::Direction::Send) => "send",
        Ok(pb::Direction::Receive) => "receive",
        Ok(pb::Direction::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// `send`, `recv`: [`direction_word`] cut for a narrow column.
pub fn direction_short(direction: i32) -> &'static str {
    match direction_word(direction) {
        "receive" => "recv",
        word => word,
    }
}

/// `"offered"`, `"waiting_accept"`, `"running"`, `"completed"`, `"failed"`, `"cancelled"`,
/// `"rejected"`, `"paused"`, `"retrying"`, `"interrupted"`; `"unknown"` for a value this client
/// does not know.
pub fn state_word(state: i32) -> &'static str {
    match pb::TransferState::try_from(state) {
        Ok(pb::TransferState::Unspecified) => "unspecified",
        Ok(pb::TransferState::Offered) => "offered",
        Ok(pb::TransferState::WaitingAccept) => "waiting_accept",
        Ok(pb::TransferState::Running) => "running",
        Ok(pb::TransferState::Completed) => "completed",
        Ok(pb::TransferState::Failed) => "failed",
        Ok(pb::TransferState::Cancelled) => "cancelled",
        Ok(pb::TransferState::Rejected) => "rejected",
        Ok(pb::TransferState::Paused) => "paused",
        Ok(pb::TransferState::Retrying) => "retrying",
        Ok(pb::TransferState::Interrupted) => "interrupted",
        Err(_) => "unknown",
    }
}

/// Whether a transfer in this state has ended (completed, failed, cancelled or rejected).
pub fn is_final(state: i32) -> bool {
    matches!(
        pb::TransferState::try_from(state),
        Ok(pb::TransferState::Completed
            | pb::TransferState::Failed
            | pb::TransferState::Cancelled
            | pb::TransferState::Rejected)
    )
}

/// How a transfer in history ended: `"completed"`, `"failed"`, `"cancelled"`, `"rejected"`;
/// `"unknown"` for a value this client does not know.
pub fn history_status_word(status: i32) -> &'static str {
    match pb::HistoryStatus::try_from(status) {
        Ok(pb::HistoryStatus::Unspecified) => "unspecified",
        Ok(pb::HistoryStatus::Completed) => "completed",
        Ok(pb::HistoryStatus::Failed) => "failed",
        Ok(pb::HistoryStatus::Cancelled) => "cancelled",
        Ok(pb::HistoryStatus::Rejected) => "rejected",
        Err(_) => "unknown",
    }
}

/// A device's receiving rule: `"default"`, `"auto"`, `"ask"`, `"reject"`; `"unknown"` for a
/// value this client does not know.
pub fn accept_word(accept: i32) -> &'static str {
    match pb::DeviceAccept::try_from(accept) {
        Ok(pb::DeviceAccept::Default) => "default",
        Ok(pb::DeviceAccept::Auto) => "auto",
        Ok(pb::DeviceAccept::Ask) => "ask",
        Ok(pb::DeviceAccept::Reject) => "reject",
        Err(_) => "unknown",
    }
}

/// A change of a peer: `"appeared"`, `"changed"`, `"lost"`; `"unknown"` for a value this
/// client does not know.
pub fn peer_change_word(change: i32) -> &'static str {
    match pb::PeerChange::try_from(change) {
        Ok(pb::PeerChange::Unspecified) => "unspecified",
        Ok(pb::PeerChange::Appeared) => "appeared",
        Ok(pb::PeerChange::Changed) => "changed",
        Ok(pb::PeerChange::Lost) => "lost",
        Err(_) => "unknown",
    }
}

/// The peer of a transfer as people know it: its name, else its address.
pub fn peer_label(t: &pb::Transfer) -> &str {
    if t.peer_name.is_empty() {
        &t.peer_address
    } else {
        &t.peer_name
    }
}

/// The first 8 characters of a transfer id, as tables show it. The daemon takes any unique
/// beginning of an id back (see [`crate::ids`]).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(i, _)| &id[..i])
}

/// The short form of a device id tables show: its first group of 7 characters
/// (`P56IOI7` of `P56IOI7-MZJNU2Y-…`); at most 7 characters of an id without groups.
pub fn short_device_id(id: &str) -> &str {
    let group = id.split('-').next().unwrap_or(id);
    group
        .char_indices()
        .nth(7)
        .map_or(group, |(i, _)| &group[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_words() {
        assert_eq!(direction_word(pb::Direction::Receive as i32), "receive");
        assert_eq!(direction_word(99), "unknown");
        assert_eq!(
            state_word(pb::TransferState::WaitingAccept as i32),
            "waiting_accept"
        );
        assert_eq!(state_word(pb::TransferState::Completed as i32), "completed");
        assert_eq!(state_word(-1), "unknown");
        assert!(is_final(pb::TransferState::Rejected as i32));
        assert!(!is_final(pb::TransferState::Offered as i32));
        assert!(!is_final(42));
    }

    #[test]
    fn history_status_words() {
        assert_eq!(
            history_status_word(pb::HistoryStatus::Failed as i32),
            "failed"
        );
        assert_eq!(
            history_status_word(pb::HistoryStatus::Completed as i32),
            "completed"
        );
        assert_eq!(
            history_status_word(pb::HistoryStatus::Cancelled as i32),
            "cancelled"
        );
        assert_eq!(
            history_status_word(pb::HistoryStatus::Rejected as i32),
            "rejected"
        );
        assert_eq!(history_status_word(0), "unspecified");
        assert_eq!(history_status_word(12), "unknown");
    }

    #[test]
    fn accept_words() {
        assert_eq!(accept_word(pb::DeviceAccept::Default as i32), "default");
        assert_eq!(accept_word(pb::DeviceAccept::Auto as i32), "auto");
        assert_eq!(accept_word(pb::DeviceAccept::Ask as i32), "ask");
        assert_eq!(accept_word(pb::DeviceAccept::Reject as i32), "reject");
        assert_eq!(accept_word(7), "unknown");
    }

    #[test]
    fn peer_change_words() {
        assert_eq!(
            peer_change_word(pb::PeerChange::Appeared as i32),
            "appeared"
        );
        assert_eq!(peer_change_word(pb::PeerChange::Changed as i32), "changed");
        assert_eq!(peer_change_word(pb::PeerChange::Lost as i32), "lost");
        assert_eq!(peer_change_word(9), "unknown");
    }

    #[test]
    fn directions_shorten_for_columns() {
        assert_eq!(direction_short(pb::Direction::Send as i32), "send");
        assert_eq!(direction_short(pb::Direction::Receive as i32), "recv");
        assert_eq!(direction_short(99), "unknown");
    }

    #[test]
    fn a_transfer_peer_is_its_name_else_its_address() {
        let named = pb::Transfer {
            peer_name: "kitchen-pc".to_owned(),
            peer_address: "192.0.2.7:14567".to_owned(),
            ..Default::default()
        };
        assert_eq!(peer_label(&named), "kitchen-pc");
        let anonymous = pb::Transfer {
            peer_name: String::new(),
            ..named
        };
        assert_eq!(peer_label(&anonymous), "192.0.2.7:14567");
    }

    #[test]
    fn short_ids_cut_at_eight_characters() {
        assert_eq!(short_id("0123456789"), "01234567");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("ééééééééé"), "éééééééé");
    }

    #[test]
    fn device_ids_shorten_to_their_first_group() {
        const DEVICE_ID: &str = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2";
        assert_eq!(short_device_id(DEVICE_ID), "P56IOI7");
        assert_eq!(short_device_id("P56IOI7"), "P56IOI7");
        assert_eq!(short_device_id("0011223344556677"), "0011223");
        assert_eq!(short_device_id("ab-cd"), "ab");
        assert_eq!(short_device_id(""), "");
    }
}
