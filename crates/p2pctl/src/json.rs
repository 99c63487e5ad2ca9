//! `--json` rendering of the control API's messages: one function per message, field names as
//! in the proto, enums as lower-case words (`"send"`, `"waiting_accept"`), 64-bit counters as
//! JSON numbers. The words are those of [`p2p_client::words`], as in the human output.

use p2p_client::words::{
    accept_word, direction_word, history_status_word, peer_change_word, state_word,
};
use p2p_proto::control::v1 as pb;
use serde_json::{Value, json};

/// A transfer as JSON, every field of the proto message.
pub(crate) fn transfer(t: &pb::Transfer) -> Value {
    // Destructured so that a field added to the proto fails to compile here until it is shown.
    let pb::Transfer {
        id,
        direction,
        state,
        peer_id,
        peer_name,
        peer_address,
        roots,
        total_files,
        total_bytes,
        files_done,
        bytes_done,
        wire_bytes,
        current_file,
        current_file_bytes,
        current_file_size,
        bytes_per_second,
        started_at_ms,
        finished_at_ms,
        error,
        destination,
        chunks_resent,
        attempt,
        next_attempt_at_ms,
        resumed_bytes,
        max_speed,
    } = t;
    json!({
        "id": id,
        "direction": direction_word(*direction),
        "state": state_word(*state),
        "peer_id": peer_id,
        "peer_name": peer_name,
        "peer_address": peer_address,
        "roots": roots,
        "total_files": total_files,
        "total_bytes": total_bytes,
        "files_done": files_done,
        "bytes_done": bytes_done,
        "wire_bytes": wire_bytes,
        "current_file": current_file,
        "current_file_bytes": current_file_bytes,
        "current_file_size": current_file_size,
        "bytes_per_second": bytes_per_second,
        "started_at_ms": started_at_ms,
        "finished_at_ms": finished_at_ms,
        "error": error,
        "destination": destination,
        "chunks_resent": chunks_resent,
        "attempt": attempt,
        "next_attempt_at_ms": next_attempt_at_ms,
        "resumed_bytes": resumed_bytes,
        "max_speed": max_speed,
    })
}

/// A history entry as JSON, every field of the proto message.
pub(crate) fn history_entry(e: &pb::HistoryEntry) -> Value {
    let pb::HistoryEntry {
        id,
        direction,
        status,
        reason,
        peer_id,
        peer_name,
        peer_address,
        roots,
        root_count,
        total_files,
        files_done,
        total_bytes,
        bytes_done,
        started_at_ms,
        finished_at_ms,
        duration_ms,
        bytes_per_second,
    } = e;
    json!({
        "id": id,
        "direction": direction_word(*direction),
        "status": history_status_word(*status),
        "reason": reason,
        "peer_id": peer_id,
        "peer_name": peer_name,
        "peer_address": peer_address,
        "roots": roots,
        "root_count": root_count,
        "total_files": total_files,
        "files_done": files_done,
        "total_bytes": total_bytes,
        "bytes_done": bytes_done,
        "started_at_ms": started_at_ms,
        "finished_at_ms": finished_at_ms,
        "duration_ms": duration_ms,
        "bytes_per_second": bytes_per_second,
    })
}

/// A `TransferEvent` as JSON: `{"transfer": {…}}` (`null` if the daemon sent none).
pub(crate) fn transfer_event(e: &pb::TransferEvent) -> Value {
    let pb::TransferEvent { transfer: t } = e;
    json!({ "transfer": t.as_ref().map(transfer) })
}

/// An incoming offer as JSON, every field of the proto message.
pub(crate) fn offer(o: &pb::IncomingOffer) -> Value {
    let pb::IncomingOffer {
        transfer_id,
        peer_id,
        peer_name,
        peer_address,
        roots,
        total_files,
        total_bytes,
        offered_at_ms,
        expires_at_ms,
        peer_trusted,
    } = o;
    json!({
        "transfer_id": transfer_id,
        "peer_id": peer_id,
        "peer_name": peer_name,
        "peer_address": peer_address,
        "roots": roots,
        "total_files": total_files,
        "total_bytes": total_bytes,
        "offered_at_ms": offered_at_ms,
        "expires_at_ms": expires_at_ms,
        "peer_trusted": peer_trusted,
    })
}

/// A peer session as JSON, every field of the proto message.
pub(crate) fn session(s: &pb::Session) -> Value {
    let pb::Session {
        peer_id,
        peer_name,
        peer_address,
        remote_address,
        outgoing,
        established_at_ms,
        active_transfers,
        peer_version,
        trusted,
    } = s;
    json!({
        "peer_id": peer_id,
        "peer_name": peer_name,
        "peer_address": peer_address,
        "remote_address": remote_address,
        "outgoing": outgoing,
        "established_at_ms": established_at_ms,
        "active_transfers": active_transfers,
        "peer_version": peer_version,
        "trusted": trusted,
    })
}

/// A device (trusted or pending) as JSON, every field of the proto message.
pub(crate) fn device(d: &pb::Device) -> Value {
    let pb::Device {
        id,
        name,
        trusted,
        accept,
        download_dir,
        first_seen_ms,
        last_seen_ms,
        last_address,
        connected,
    } = d;
    json!({
        "id": id,
        "name": name,
        "trusted": trusted,
        "accept": accept_word(*accept),
        "download_dir": download_dir,
        "first_seen_ms": first_seen_ms,
        "last_seen_ms": last_seen_ms,
        "last_address": last_address,
        "connected": connected,
    })
}

/// A peer found by discovery (or a static one) as JSON, every field of the proto message.
pub(crate) fn peer(p: &pb::Peer) -> Value {
    let pb::Peer {
        device_id,
        name,
        address,
        protocol_version,
        compatible,
        last_seen_ms,
        source,
        trusted,
    } = p;
    json!({
        "device_id": device_id,
        "name": name,
        "address": address,
        "protocol_version": protocol_version,
        "compatible": compatible,
        "last_seen_ms": last_seen_ms,
        "source": source,
        "trusted": trusted,
    })
}

/// A `PeerEvent` as JSON: `{"change": "appeared", "peer": {…}}` (`null` if the daemon sent no
/// peer).
pub(crate) fn peer_event(e: &pb::PeerEvent) -> Value {
    let pb::PeerEvent { change, peer: p } = e;
    json!({ "change": peer_change_word(*change), "peer": p.as_ref().map(peer) })
}

/// The daemon's status as JSON, every field of the proto message.
pub(crate) fn status(s: &pb::GetStatusResponse) -> Value {
    let pb::GetStatusResponse {
        device_id,
        device_name,
        version,
        uptime_ms,
        listen_address,
        session_count,
        active_transfer_count,
        pid,
        state_dir,
        download_dir,
        socket_path,
        max_speed,
    } = s;
    json!({
        "device_id": device_id,
        "device_name": device_name,
        "version": version,
        "uptime_ms": uptime_ms,
        "listen_address": listen_address,
        "session_count": session_count,
        "active_transfer_count": active_transfer_count,
        "pid": pid,
        "state_dir": state_dir,
        "download_dir": download_dir,
        "socket_path": socket_path,
        "max_speed": max_speed,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A full device id in the daemon's format.
    pub(crate) const DEVICE_ID: &str =
        "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2";

    /// A trusted, connected device with its own rule and directory.
    pub(crate) fn sample_device() -> pb::Device {
        pb::Device {
            id: DEVICE_ID.to_owned(),
            name: "beta".to_owned(),
            trusted: true,
            accept: pb::DeviceAccept::Auto as i32,
            download_dir: "/srv/in/beta".to_owned(),
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_180_000,
            last_address: "192.0.2.8:14567".to_owned(),
            connected: true,
        }
    }

    /// A compatible, trusted peer heard by broadcast.
    pub(crate) fn sample_peer() -> pb::Peer {
        pb::Peer {
            device_id: DEVICE_ID.to_owned(),
            name: "kitchen-pc".to_owned(),
            address: "10.0.0.2:14567".to_owned(),
            protocol_version: 1,
            compatible: true,
            last_seen_ms: 1_700_000_358_000,
            source: "broadcast".to_owned(),
            trusted: true,
        }
    }

    /// A failed receive in history, shared by the rendering tests of other modules.
    pub(crate) fn sample_history_entry() -> pb::HistoryEntry {
        pb::HistoryEntry {
            id: "fedcba9876543210".to_owned(),
            direction: pb::Direction::Receive as i32,
            status: pb::HistoryStatus::Failed as i32,
            reason: "cannot prepare destination /srv/in: Not a directory".to_owned(),
            peer_id: DEVICE_ID.to_owned(),
            peer_name: "kitchen-pc".to_owned(),
            peer_address: "192.0.2.7:14567".to_owned(),
            roots: vec!["photos".to_owned()],
            root_count: 1,
            total_files: 4,
            files_done: 1,
            total_bytes: 4 << 20,
            bytes_done: 1 << 20,
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_002_000,
            duration_ms: 2000,
            bytes_per_second: 524_288,
        }
    }

    /// A running two-file transfer, shared by the rendering tests of other modules.
    pub(crate) fn sample_transfer() -> pb::Transfer {
        pb::Transfer {
            id: "0123456789abcdef".to_owned(),
            direction: pb::Direction::Send as i32,
            state: pb::TransferState::Running as i32,
            peer_id: "peer-uuid".to_owned(),
            peer_name: "kitchen-pc".to_owned(),
            peer_address: "192.0.2.7:14567".to_owned(),
            roots: vec!["photos".to_owned(), "notes.txt".to_owned()],
            total_files: 10,
            total_bytes: 40 << 20,
            files_done: 3,
            bytes_done: 12 << 20,
            wire_bytes: 9 << 20,
            current_file: "photos/a.jpg".to_owned(),
            current_file_bytes: 1 << 19,
            current_file_size: 1 << 20,
            bytes_per_second: 8_598_323,
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 0,
            error: String::new(),
            destination: String::new(),
            chunks_resent: 2,
            attempt: 1,
            next_attempt_at_ms: 0,
            resumed_bytes: 0,
            max_speed: 10 << 20,
        }
    }

    #[test]
    fn a_transfer_renders_every_field_with_words_for_enums() {
        let v = transfer(&sample_transfer());
        assert_eq!(
            v,
            json!({
                "id": "0123456789abcdef",
                "direction": "send",
                "state": "running",
                "peer_id": "peer-uuid",
                "peer_name": "kitchen-pc",
                "peer_address": "192.0.2.7:14567",
                "roots": ["photos", "notes.txt"],
                "total_files": 10,
                "total_bytes": 41_943_040,
                "files_done": 3,
                "bytes_done": 12_582_912,
                "wire_bytes": 9_437_184,
                "current_file": "photos/a.jpg",
                "current_file_bytes": 524_288,
                "current_file_size": 1_048_576,
                "bytes_per_second": 8_598_323,
                "started_at_ms": 1_700_000_000_000_u64,
                "finished_at_ms": 0,
                "error": "",
                "destination": "",
                "chunks_resent": 2,
                "attempt": 1,
                "next_attempt_at_ms": 0,
                "resumed_bytes": 0,
                "max_speed": 10_485_760,
            })
        );
        assert_eq!(
            transfer_event(&pb::TransferEvent {
                transfer: Some(sample_transfer())
            })["transfer"]["state"],
            "running"
        );
    }

    #[test]
    fn a_history_entry_renders_every_field_with_words_for_enums() {
        assert_eq!(
            history_entry(&sample_history_entry()),
            json!({
                "id": "fedcba9876543210",
                "direction": "receive",
                "status": "failed",
                "reason": "cannot prepare destination /srv/in: Not a directory",
                "peer_id": DEVICE_ID,
                "peer_name": "kitchen-pc",
                "peer_address": "192.0.2.7:14567",
                "roots": ["photos"],
                "root_count": 1,
                "total_files": 4,
                "files_done": 1,
                "total_bytes": 4_194_304,
                "bytes_done": 1_048_576,
                "started_at_ms": 1_700_000_000_000_u64,
                "finished_at_ms": 1_700_000_002_000_u64,
                "duration_ms": 2000,
                "bytes_per_second": 524_288,
            })
        );
    }

    #[test]
    fn a_device_renders_every_field_with_a_word_for_its_rule() {
        assert_eq!(
            device(&sample_device()),
            json!({
                "id": DEVICE_ID,
                "name": "beta",
                "trusted": true,
                "accept": "auto",
                "download_dir": "/srv/in/beta",
                "first_seen_ms": 1_700_000_000_000_u64,
                "last_seen_ms": 1_700_000_180_000_u64,
                "last_address": "192.0.2.8:14567",
                "connected": true,
            })
        );
        let pending = device(&pb::Device {
            id: DEVICE_ID.to_owned(),
            ..Default::default()
        });
        assert_eq!(pending["accept"], "default");
        assert_eq!(pending["trusted"], false);
        assert_eq!(pending["connected"], false);
    }

    #[test]
    fn offers_and_sessions_render() {
        let o = offer(&pb::IncomingOffer {
            transfer_id: "t1".to_owned(),
            total_files: 2,
            ..Default::default()
        });
        assert_eq!(o["transfer_id"], "t1");
        assert_eq!(o["total_files"], 2);
        assert_eq!(o["peer_trusted"], false);
        let s = session(&pb::Session {
            peer_name: "laptop".to_owned(),
            outgoing: true,
            trusted: true,
            ..Default::default()
        });
        assert_eq!(s["peer_name"], "laptop");
        assert_eq!(s["outgoing"], true);
        assert_eq!(s["trusted"], true);
    }

    #[test]
    fn a_peer_renders_every_field() {
        assert_eq!(
            peer(&sample_peer()),
            json!({
                "device_id": DEVICE_ID,
                "name": "kitchen-pc",
                "address": "10.0.0.2:14567",
                "protocol_version": 1,
                "compatible": true,
                "last_seen_ms": 1_700_000_358_000_u64,
                "source": "broadcast",
                "trusted": true,
            })
        );
    }

    #[test]
    fn a_peer_event_names_its_change() {
        let event = pb::PeerEvent {
            change: pb::PeerChange::Lost as i32,
            peer: Some(sample_peer()),
        };
        let v = peer_event(&event);
        assert_eq!(v["change"], "lost");
        assert_eq!(v["peer"], peer(&sample_peer()));
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        let bare = peer_event(&pb::PeerEvent::default());
        assert_eq!(bare, json!({ "change": "unspecified", "peer": null }));
    }
}
