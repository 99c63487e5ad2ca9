//! Two real daemons talk through a TCP proxy in the test. Peer sessions run inside TLS 1.3, so
//! whatever the proxy sees is ciphertext, and whatever it alters breaks the record
//! authentication:
//!
//! - a proxy that flips one byte in the middle of a transfer makes the session fail; the
//!   sender dials again (through the same proxy, which relays the new connection untouched),
//!   resumes, and the file arrives intact, with no temporary file left;
//! - a proxy that records every byte in both directions finds no plaintext of the file (nor
//!   its name, nor the sender's device id), although the file was sent uncompressed.
//!
//! The proxy (`p2p_tests::proxy`) listens on 127.0.0.1 only. Chunk-level CRC re-sends are covered by `malicious_peer.rs`, where a peer sends
//! a wrong CRC on purpose (corruption on the wire no longer reaches that check).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p2p_proto::control::v1 as pb;
use p2p_tests::api;
use p2p_tests::files::{part_files, random_bytes, temp_file};
use p2p_tests::proxy::{Proxy, ProxyOptions};
use p2p_tests::{Daemon, DaemonOptions};
use sha2::{Digest, Sha256};

const FILE_SIZE: usize = 5 << 20;
/// Offset in the A→B byte stream of the byte the proxy flips: well inside the file's data
/// (the TLS and protocol handshakes take a few KiB).
const FLIP_AT: u64 = 2 << 20;

// ---------------------------------------------------------------------------------------
// Daemons

/// Starts A (sender) and B (receiver, `--accept auto`), makes them trust each other (so that
/// `auto` applies to A's offers), and starts a proxy to B.
async fn setup(opts: ProxyOptions) -> (Daemon, Daemon, Proxy) {
    let (a, b) =
        api::trusted_pair(DaemonOptions::default(), DaemonOptions::accepting("auto")).await;
    let proxy = Proxy::start(b.listen_addr(), opts).await;
    (a, b, proxy)
}

/// Sends `path` from `a` to `peer`, uncompressed with 1 MiB chunks, and follows it to its end.
async fn send_uncompressed(a: &Daemon, path: &Path, peer: SocketAddr) -> pb::Transfer {
    let options = Some(pb::SendOptions {
        compress: Some(false),
        chunk_size: 1 << 20,
        ..Default::default()
    });
    api::send_and_wait(
        a,
        &[path],
        &peer.to_string(),
        options,
        Duration::from_secs(30),
    )
    .await
}

/// B's transfers once none of them is active any more (or after 10 s).
async fn receiver_transfers(b: &Daemon) -> Vec<pb::Transfer> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = api::transfers(b).await;
        let running = list.iter().any(|t| {
            matches!(
                pb::TransferState::try_from(t.state).unwrap_or_default(),
                pb::TransferState::Offered
                    | pb::TransferState::WaitingAccept
                    | pb::TransferState::Running
            )
        });
        if !running || Instant::now() >= deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Both daemons see one ordinary session through the proxy, between the right devices.
async fn assert_normal_sessions(a: &Daemon, b: &Daemon, proxy: &Proxy) {
    let (a_id, b_id) = (a.device_id(), b.device_id());
    let a_sessions = api::sessions(a).await;
    let b_sessions = api::sessions(b).await;
    assert_eq!(a_sessions.len(), 1, "{a_sessions:?}");
    assert_eq!(a_sessions[0].peer_id, b_id);
    assert!(a_sessions[0].outgoing && a_sessions[0].trusted);
    assert_eq!(a_sessions[0].remote_address, proxy.addr.to_string());
    assert_eq!(b_sessions.len(), 1, "{b_sessions:?}");
    assert_eq!(b_sessions[0].peer_id, a_id);
    assert!(!b_sessions[0].outgoing && b_sessions[0].trusted);
}

// ---------------------------------------------------------------------------------------
// Tests

/// A (trusting B) sends a 5 MiB file to B (`--accept auto`, trusting A) through a proxy that
/// flips one byte at 2 MiB of the first connection: TLS refuses the altered record and the
/// session ends; the sender dials the proxy again, resumes, and the file arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_breaks_the_session_and_the_transfer_resumes_intact() {
    let (a, b, proxy) = setup(ProxyOptions {
        flip_once_at: Some(FLIP_AT),
        ..Default::default()
    })
    .await;
    let data = random_bytes(FILE_SIZE, 0x9e37_79b9_7f4a_7c15);
    let (_src, path) = temp_file("random.bin", &data);
    let dl = &b.dirs.download_dir;

    let t = send_uncompressed(&a, &path, proxy.addr).await;
    assert_eq!(proxy.flipped(), 1, "the proxy altered one byte");
    assert_eq!(
        t.state,
        pb::TransferState::Completed as i32,
        "the transfer resumes after the broken session: {t:?}\n--- sender ---\n{}\n--- receiver ---\n{}",
        a.stderr(),
        b.stderr()
    );
    assert!(t.attempt >= 2, "a second attempt was needed: {t:?}");
    assert!(
        proxy.connections() >= 2,
        "the sender dialed the proxy again"
    );
    // The receiver held part of the file durably and the rest was not all sent again.
    assert!(
        t.wire_bytes < 2 * data.len() as u64,
        "resumed, not restarted: {t:?}"
    );

    let theirs = receiver_transfers(&b).await;
    assert_eq!(theirs.len(), 1, "one transfer, resumed: {theirs:?}");
    assert_eq!(
        theirs[0].state,
        pb::TransferState::Completed as i32,
        "{:?}\n--- receiver ---\n{}",
        theirs[0],
        b.stderr()
    );
    let got = std::fs::read(dl.join("random.bin")).expect("received file");
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&data),
        "received file's SHA-256"
    );
    assert!(
        !dl.join("random (1).bin").exists(),
        "resumed into the same name"
    );
    assert_eq!(
        part_files(dl),
        Vec::<PathBuf>::new(),
        "temporary files left"
    );
    assert_normal_sessions(&a, &b, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_on_the_path_that_records_the_bytes_finds_no_plaintext_of_the_file() {
    const MARKER: &[u8] = b"P2PD-PLAINTEXT-MARKER-";
    const NAME: &str = "p2pd-secret-file-name-7f3a.bin";
    let (a, b, proxy) = setup(ProxyOptions {
        record: true,
        ..Default::default()
    })
    .await;
    let a_id = a.device_id();

    // Runs of the marker between incompressible filler, 2 MiB in all, sent uncompressed.
    let mut data = Vec::new();
    for i in 0..8u64 {
        data.extend_from_slice(&random_bytes(200 << 10, i + 1));
        for _ in 0..2000 {
            data.extend_from_slice(MARKER);
        }
    }
    assert!(contains(&data, MARKER));
    let (_src, path) = temp_file(NAME, &data);

    let t = send_uncompressed(&a, &path, proxy.addr).await;
    assert_eq!(
        t.state,
        pb::TransferState::Completed as i32,
        "{t:?}\n--- sender ---\n{}\n--- receiver ---\n{}",
        a.stderr(),
        b.stderr()
    );
    assert!(
        std::fs::read(b.dirs.download_dir.join(NAME)).unwrap() == data,
        "received file differs"
    );
    assert_normal_sessions(&a, &b, &proxy).await;

    let rec = proxy.recording();
    // The proxy did carry the transfer: every byte of the file went through it.
    assert!(
        rec.a_to_b.len() >= data.len(),
        "recorded {} bytes A→B for a file of {}",
        rec.a_to_b.len(),
        data.len()
    );
    // Both directions start with a TLS handshake record.
    assert_eq!(
        rec.a_to_b.first(),
        Some(&0x16),
        "A→B starts with a ClientHello"
    );
    assert_eq!(
        rec.b_to_a.first(),
        Some(&0x16),
        "B→A starts with a ServerHello"
    );
    for (dir, bytes) in [("A→B", &rec.a_to_b), ("B→A", &rec.b_to_a)] {
        assert!(
            !contains(bytes, MARKER),
            "{dir}: the file's content is visible"
        );
        assert!(
            !contains(bytes, NAME.as_bytes()),
            "{dir}: the file's name is visible"
        );
        assert!(
            !contains(bytes, a_id.as_bytes()),
            "{dir}: the sender's Hello is visible"
        );
    }
}
