//! Frames built by hand — offers, chunks, FileDone — and the sender's sequences of a one-file
//! transfer (chunks, acknowledgements, FileDone, Complete), every answer of the daemon checked.

use bytes::Bytes;
use p2p_proto::wire::v1::{self as wire, frame::Body};
use sha2::{Digest, Sha256};

use super::Peer;

/// Chunk size of the hand-made transfers.
pub const CHUNK: u32 = 4096;

/// A transfer id (a UUID, as the receiver requires) derived from a readable label.
pub fn tid(label: &str) -> String {
    let h = Sha256::digest(label.as_bytes());
    let x: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// An offer of `files` (path, size) under `roots`, with `dirs`; a folder transfer if `dirs`
/// is not empty. Chunks of [`CHUNK`], window 8, no resume.
pub fn offer(id: &str, roots: &[&str], files: &[(&str, u64)], dirs: &[&str]) -> wire::TransferInfo {
    wire::TransferInfo {
        transfer_id: id.into(),
        mode: if dirs.is_empty() {
            wire::TransferMode::File as i32
        } else {
            wire::TransferMode::Folder as i32
        },
        roots: roots.iter().map(|s| s.to_string()).collect(),
        files: files
            .iter()
            .map(|(p, size)| wire::FileEntry {
                path: p.to_string(),
                size: *size,
                mode: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
            })
            .collect(),
        dirs: dirs.iter().map(|s| s.to_string()).collect(),
        chunk_size: CHUNK,
        window: 8,
        resume: false,
        total_bytes: files.iter().map(|(_, s)| s).sum(),
        ..Default::default()
    }
}

/// The offer of one file `name` holding `data`.
pub fn one_file_offer(id: &str, name: &str, data: &[u8]) -> Body {
    Body::TransferInfo(offer(id, &[name], &[(name, data.len() as u64)], &[]))
}

/// Chunk `chunk_index` of file `file_index`, uncompressed, with the right CRC32.
pub fn chunk(id: &str, file_index: u32, chunk_index: u64, data: &[u8]) -> Body {
    Body::Chunk(wire::Chunk {
        transfer_id: id.into(),
        file_index,
        chunk_index,
        flags: 0,
        crc32: crc32fast::hash(data),
        data: Bytes::copy_from_slice(data),
        ..Default::default()
    })
}

/// FileDone of file `file_index` with the SHA-256 `sha256`.
pub fn file_done(id: &str, file_index: u32, sha256: &[u8]) -> Body {
    Body::FileDone(wire::FileDone {
        transfer_id: id.into(),
        file_index,
        sha256: Bytes::copy_from_slice(sha256),
    })
}

/// Receives one ChunkAck for file #0 of `id` and checks its chunk and status.
pub async fn expect_ack(p: &mut Peer, id: &str, chunk_index: u64, status: wire::ChunkStatus) {
    match p.recv().await {
        Body::ChunkAck(a) => {
            assert_eq!(a.transfer_id, id);
            assert_eq!(a.file_index, 0);
            assert_eq!(a.chunk_index, chunk_index, "{a:?}");
            assert_eq!(a.status, status as i32, "{a:?}");
        }
        other => panic!("expected ChunkAck for chunk {chunk_index}, got {other:?}"),
    }
}

/// [`expect_ack`] with status OK.
pub async fn expect_ack_ok(p: &mut Peer, id: &str, chunk_index: u64) {
    expect_ack(p, id, chunk_index, wire::ChunkStatus::Ok).await;
}

/// FileDone for file #0, then Complete, each answered as it must be.
pub async fn finish_file(p: &mut Peer, id: &str, data: &[u8]) {
    p.send(file_done(id, 0, &Sha256::digest(data))).await;
    match p.recv().await {
        Body::FileResult(r) => assert!(r.ok && r.file_index == 0, "{r:?}"),
        other => panic!("expected FileResult, got {other:?}"),
    }
    p.send(Body::Complete(wire::Complete {
        transfer_id: id.into(),
    }))
    .await;
    match p.recv().await {
        Body::CompleteAck(a) => assert_eq!(a.transfer_id, id),
        other => panic!("expected CompleteAck, got {other:?}"),
    }
}

/// Sends the chunks of an accepted one-file transfer, in order, and the rest up to
/// CompleteAck, checking every answer.
pub async fn raw_send_accepted(p: &mut Peer, id: &str, data: &[u8]) {
    for (i, c) in data.chunks(CHUNK as usize).enumerate() {
        p.send(chunk(id, 0, i as u64, c)).await;
    }
    for i in 0..data.len().div_ceil(CHUNK as usize) {
        expect_ack_ok(p, id, i as u64).await;
    }
    finish_file(p, id, data).await;
}

/// Sends the chunks of a one-file transfer from `first` on, each acknowledged before the next,
/// and the rest up to CompleteAck (a resume that continues after what the receiver holds).
pub async fn send_rest(p: &mut Peer, id: &str, data: &[u8], first: usize) {
    for (i, c) in data.chunks(CHUNK as usize).enumerate().skip(first) {
        p.send(chunk(id, 0, i as u64, c)).await;
        expect_ack_ok(p, id, i as u64).await;
    }
    finish_file(p, id, data).await;
}

/// Sends one file named `name` with `data` through the raw protocol, in order, and checks
/// every answer up to CompleteAck.
pub async fn raw_send_file(p: &mut Peer, id: &str, name: &str, data: &[u8]) {
    p.send(one_file_offer(id, name, data)).await;
    let decision = p.decision(id).await;
    assert!(
        matches!(decision, Body::Ready(_)),
        "a valid offer is accepted: {decision:?}"
    );
    raw_send_accepted(p, id, data).await;
}
