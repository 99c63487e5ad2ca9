//! A hostile peer: the test holds a device identity of its own ("mallory"), opens TLS 1.3 with
//! it like any device would, and then speaks the wire protocol by hand to a real `p2pd`
//! (`--accept auto`, trusting mallory). It offers unsafe manifests, oversized frames, garbage,
//! silence, a wrong protocol version, a Hello claiming another device and bad chunks. The
//! daemon must refuse each with a clear answer, write nothing outside (or, for a refused
//! transfer, inside) its download dir, leave no partial file behind, and keep serving. A happy
//! path through the same hand-written peer proves that the peer itself speaks the protocol
//! correctly, so the negative cases mean something.
//!
//! TLS authenticates every record, so a corrupt chunk can no longer come from the network; a
//! peer can still send one on purpose, and the receiver's CRC check and the sender's re-send
//! are exercised here from both sides: mallory sends a chunk with a wrong CRC32 to a daemon,
//! and mallory, receiving from a daemon, reports a chunk as corrupt once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p_core::net::wire::{self as codec, PROTOCOL_VERSION, caps};
use p2p_proto::control::v1 as pb;
use p2p_proto::wire::v1::{self as wire, frame::Body};
use p2p_tests::api::{self, incoming, wait_offer};
use p2p_tests::files::{part_files, paths_under, random_bytes, temp_file, wait_no_part_files};
use p2p_tests::hostile::frames::{
    expect_ack, expect_ack_ok, finish_file, raw_send_accepted, raw_send_file, send_rest,
};
use p2p_tests::hostile::peer::assert_tls_refusal;
use p2p_tests::hostile::{CHUNK, Device, Peer, STEP, chunk, file_done, offer, one_file_offer, tid};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// How long a refused or failed transfer may take to remove its temporary files.
const PARTS_GONE_WITHIN: Duration = Duration::from_secs(3);
/// How long a send from a daemon to mallory may take.
const SEND_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Daemons and the control API

/// `p2pctl status --json` still works.
fn assert_status_answers(d: &Daemon) {
    let s = d.status();
    assert!(
        s["device_id"].as_str().is_some_and(|v| !v.is_empty()),
        "status after abuse: {s}\n--- p2pd stderr ---\n{}",
        d.stderr()
    );
}

/// A `/proc/PID/status` value in KiB (`VmPeak`, `VmRSS`).
fn proc_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A zstd frame of `len` zero bytes made of RLE blocks (4 bytes per 128 KiB), built by hand
/// so that the test needs no zstd crate: a few hundred bytes on the wire for 16 MiB.
fn zstd_zeros(len: usize) -> Vec<u8> {
    // Magic, then a header descriptor: 4-byte content size, single segment (no window
    // descriptor), no checksum, no dictionary.
    let mut v = vec![0x28, 0xB5, 0x2F, 0xFD, 0xA0];
    v.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
    let mut left = len;
    while left > 0 {
        let n = left.min(128 << 10);
        left -= n;
        // Block header (3 bytes LE): last-block bit, type 1 = RLE, size = repeat count.
        let header = u32::from(left == 0) | (1 << 1) | ((n as u32) << 3);
        v.extend_from_slice(&header.to_le_bytes()[..3]);
        v.push(0);
    }
    v
}

/// A daemon with `--accept auto` that trusts mallory (so `auto` applies to its offers).
async fn daemon_trusting(m: &Device, dirs: DaemonDirs) -> (Daemon, SocketAddr) {
    let d = Daemon::launch(dirs, DaemonOptions::accepting("auto")).await;
    api::trust(&d, &m.id()).await;
    let addr = d.listen_addr();
    (d, addr)
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_through_the_raw_protocol() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let (mut p, _) = Peer::handshake(addr, &m).await;

    // Three chunks, the last one short.
    let data = random_bytes(2 * CHUNK as usize + 1808, 7);
    raw_send_file(&mut p, &tid("raw-happy-1"), "hello.bin", &data).await;
    let got = std::fs::read(d.dirs.download_dir.join("hello.bin")).expect("file in place");
    assert!(got == data, "content differs");
    let t = api::wait_done(&d, &tid("raw-happy-1"), STEP).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.direction, pb::Direction::Receive as i32);
    assert_eq!(t.bytes_done, data.len() as u64);
    assert_eq!(
        t.peer_id,
        m.id(),
        "the peer is known by the id its key proves"
    );

    // An empty file, and a second transfer over the same session.
    raw_send_file(&mut p, &tid("raw-happy-2"), "empty.txt", b"").await;
    assert_eq!(
        std::fs::read(d.dirs.download_dir.join("empty.txt")).unwrap(),
        b""
    );
    assert!(part_files(&d.dirs.download_dir).is_empty());

    // Keepalive is answered.
    p.send(Body::Ping(wire::Ping { nonce: 42 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }

    // The daemon lists the session as one with a trusted device.
    let sessions = api::sessions(&d).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].peer_id, m.id());
    assert!(sessions[0].trusted, "{sessions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_offer_waits_even_with_accept_auto() {
    let m = Device::new();
    // `--accept auto`, but mallory is not trusted.
    let d = p2p_tests::start(&["--accept", "auto"]).await;
    let addr = d.listen_addr();
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let id = &tid("untrusted-1");
    let data = random_bytes(CHUNK as usize + 10, 3);
    p.send(one_file_offer(id, "waits.bin", &data)).await;
    assert!(
        p.next(Duration::from_millis(1500)).await.is_none(),
        "an untrusted device's offer got an answer without a decision"
    );
    // Listed once validated and recorded (bounded wait; the silence above is no measure).
    assert_eq!(wait_offer(&d, STEP).await.transfer_id, *id);
    let offers = incoming(&d).await;
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].transfer_id, *id);
    assert_eq!(offers[0].peer_id, m.id());
    assert!(!offers[0].peer_trusted, "{offers:?}");
    let t = api::transfer(&d, id).await;
    assert_eq!(t.state, pb::TransferState::WaitingAccept as i32, "{t:?}");
    assert!(!d.dirs.download_dir.join("waits.bin").exists());
    let pending = api::pending(&d).await;
    assert!(
        pending.iter().any(|dev| dev.id == m.id() && !dev.trusted),
        "mallory is a pending device: {pending:?}"
    );

    // An explicit accept lets it through.
    api::accept(&d, id, None).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    raw_send_accepted(&mut p, id, &data).await;
    assert!(std::fs::read(d.dirs.download_dir.join("waits.bin")).unwrap() == data);

    // Once trusted, `--accept auto` applies on the same session.
    api::trust(&d, &m.id()).await;
    raw_send_file(&mut p, &tid("trusted-now"), "auto.bin", &data).await;
    assert!(std::fs::read(d.dirs.download_dir.join("auto.bin")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_manifests_are_rejected_and_nothing_is_written() {
    // The download dir sits one level below a directory the test owns, so that anything
    // escaping by `..` lands where the test looks.
    let m = Device::new();
    let mut dirs = DaemonDirs::new();
    dirs.download_dir = dirs.root.path().join("jail/downloads");
    std::fs::create_dir_all(&dirs.download_dir).unwrap();
    let jail = dirs.root.path().join("jail");
    let (d, addr) = daemon_trusting(&m, dirs).await;
    let root_before = paths_under(d.dirs.root.path())
        .into_iter()
        .filter(|p| !p.starts_with("state") && !p.starts_with("run"))
        .collect::<BTreeSet<_>>();
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let abs = jail.join("abs");
    let abs = abs.to_str().unwrap();
    // (id, roots, files, dirs)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("evil-dotdot", vec![".."], vec!["../escape"], vec![]),
        (
            "evil-inner-dotdot",
            vec!["a"],
            vec!["a/../../escape"],
            vec!["a"],
        ),
        ("evil-absolute", vec!["abs"], vec![abs], vec![]),
        (
            "evil-root-slash",
            vec!["x/escape"],
            vec!["x/escape"],
            vec![],
        ),
        ("evil-root-absolute", vec![abs], vec![abs], vec![]),
        (
            "evil-backslash",
            vec!["..\\escape"],
            vec!["..\\escape"],
            vec![],
        ),
        (
            "evil-dir-dotdot",
            vec!["a"],
            vec!["a/f"],
            vec!["a", "a/../../escape-dir"],
        ),
        (
            "evil-undeclared-root",
            vec!["a"],
            vec!["b/escape"],
            vec!["a"],
        ),
    ];
    for (label, roots, files, dirs) in &cases {
        let id = &tid(label);
        let files: Vec<(&str, u64)> = files.iter().map(|f| (*f, 5)).collect();
        p.send(Body::TransferInfo(offer(id, roots, &files, dirs)))
            .await;
        let reason = match p.decision(id).await {
            Body::Reject(r) => r.reason,
            other => panic!("{id}: an unsafe manifest was accepted: {other:?}"),
        };
        assert!(!reason.is_empty(), "{id}: reject without a reason");
        // A malicious peer sends data anyway: it must go nowhere.
        p.send(chunk(id, 0, 0, b"pwned")).await;
        p.send(file_done(id, 0, &Sha256::digest(b"pwned"))).await;
        p.send(Body::Complete(wire::Complete {
            transfer_id: id.to_string(),
        }))
        .await;

        let t = api::wait_done(&d, id, STEP).await;
        assert_eq!(t.state, pb::TransferState::Rejected as i32, "{id}: {t:?}");
        assert_eq!(t.direction, pb::Direction::Receive as i32, "{id}");
        assert_eq!(t.error, reason, "{id}: ListTransfers shows the reason");
    }
    // Transfer ids are UUIDs; anything else is refused before it is looked at.
    for bad_id in ["../../etc", "not-a-uuid", ""] {
        p.send(Body::TransferInfo(offer(bad_id, &["x"], &[("x", 5)], &[])))
            .await;
        match p.decision(bad_id).await {
            Body::Reject(r) => assert!(!r.reason.is_empty(), "{bad_id:?}"),
            other => panic!("{bad_id:?}: accepted: {other:?}"),
        }
    }
    // The session survived every rejection.
    p.send(Body::Ping(wire::Ping { nonce: 7 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 7),
        other => panic!("expected Pong, got {other:?}"),
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        paths_under(&d.dirs.download_dir),
        BTreeSet::new(),
        "nothing is written inside the download dir"
    );
    assert_eq!(
        paths_under(&jail),
        BTreeSet::from(["downloads".to_string()]),
        "nothing is written next to the download dir"
    );
    let root_after = paths_under(d.dirs.root.path())
        .into_iter()
        .filter(|p| !p.starts_with("state") && !p.starts_with("run"))
        .collect::<BTreeSet<_>>();
    assert_eq!(
        root_after, root_before,
        "nothing appears in the test's root"
    );
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_drop_the_session_without_allocating() {
    let m = Device::new();
    let ((a, addr), b) = tokio::join!(
        daemon_trusting(&m, DaemonDirs::new()),
        p2p_tests::start(&[])
    );
    let peak_before = proc_kib(a.pid, "VmPeak");

    // Inside TLS: on an established session (the limit is 32 MiB there), then during the
    // protocol handshake (1 MiB).
    for len in [0xFFFF_FFF0u32, 64 << 20] {
        let (mut p, _) = Peer::handshake(addr, &m).await;
        p.write_raw(&len.to_be_bytes()).await;
        let started = Instant::now();
        let got = p.expect_closed(STEP).await;
        for f in &got {
            match f {
                Body::Error(e) => assert_eq!(e.code, wire::ErrorCode::Protocol as i32, "{e:?}"),
                other => panic!("length {len:#x}: expected Error or EOF, got {other:?}"),
            }
        }
        eprintln!(
            "length {len:#x}: closed after {:?} with {got:?}",
            started.elapsed()
        );

        let mut p = Peer::tls(addr, &m).await;
        p.write_raw(&len.to_be_bytes()).await;
        let got = p.expect_closed(STEP).await;
        assert!(
            got.iter().all(|f| matches!(f, Body::Error(_))),
            "length {len:#x} instead of Hello: {got:?}"
        );

        // The same length prefix where a TLS ClientHello belongs.
        let mut p = Peer::plain(addr).await;
        p.write_raw(&len.to_be_bytes()).await;
        let got = p.raw_until_closed(STEP).await;
        assert_tls_refusal(&format!("length {len:#x} without TLS"), &got);
    }
    if let (Some(before), Some(after)) = (peak_before, proc_kib(a.pid, "VmPeak")) {
        // A 4 GiB buffer (even a lazily zeroed one) would show in the address space.
        assert!(
            after < before + (1 << 20),
            "p2pd's peak virtual memory grew from {before} KiB to {after} KiB"
        );
    }

    // Still serving: status, and a normal transfer from another real daemon it trusts.
    assert_status_answers(&a);
    api::trust(&a, b.device_id()).await;
    let (_src_dir, src) = temp_file("after-abuse.txt", b"still here\n");
    let last = api::send_and_wait(&b, &[&src], &addr.to_string(), None, SEND_WITHIN).await;
    assert_eq!(
        last.state,
        pb::TransferState::Completed as i32,
        "{last:?}\n--- receiver stderr ---\n{}",
        a.stderr()
    );
    assert_eq!(
        std::fs::read(a.dirs.download_dir.join("after-abuse.txt")).unwrap(),
        b"still here\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_clients_are_dropped() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;

    // Silent clients: after the TLS handshake one sends nothing, one stops in the middle of a
    // frame; below TLS one sends nothing and one stops in the middle of a TLS record. All
    // must be dropped by the handshake deadline (10 s, TLS and protocol together), and must
    // not block anyone else meanwhile.
    let silent_tls = |partial: Vec<u8>| {
        let identity = m.identity.clone();
        tokio::spawn(async move {
            let mut p = Peer::tls_as(addr, &identity).await;
            if !partial.is_empty() {
                p.write_raw(&partial).await;
            }
            let started = Instant::now();
            let got = p.expect_closed(Duration::from_secs(15)).await;
            assert!(got.iter().all(|f| matches!(f, Body::Error(_))), "{got:?}");
            started.elapsed()
        })
    };
    let silent_tcp = |partial: Vec<u8>| {
        tokio::spawn(async move {
            let mut p = Peer::plain(addr).await;
            if !partial.is_empty() {
                p.write_raw(&partial).await;
            }
            let started = Instant::now();
            let got = p.raw_until_closed(Duration::from_secs(15)).await;
            assert_tls_refusal("silent TCP client", &got);
            started.elapsed()
        })
    };
    let silent = vec![
        ("TLS, then silent", silent_tls(Vec::new())),
        (
            "TLS, then half a frame",
            silent_tls({
                let mut v = 100u32.to_be_bytes().to_vec();
                v.extend_from_slice(&[0x0a; 10]);
                v
            }),
        ),
        ("TCP, silent", silent_tcp(Vec::new())),
        // A handshake record header announcing 512 bytes, and 5 of them.
        (
            "TCP, half a TLS record",
            silent_tcp(vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03,
            ]),
        ),
    ];

    // Garbage below TLS: refused by the TLS layer, never answered with a frame.
    let plain_hello = codec::encode(Body::Hello(m.hello(1))).to_vec();
    let raw_garbage: Vec<(&str, Vec<u8>)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: p2pd\r\n\r\n".to_vec()),
        ("a plaintext Hello (protocol version 1)", plain_hello),
        ("random bytes", random_bytes(300, 5)),
    ];
    for (what, bytes) in &raw_garbage {
        let mut p = Peer::plain(addr).await;
        p.write_raw(bytes).await;
        let got = p.raw_until_closed(STEP).await;
        assert_tls_refusal(what, &got);
    }

    // Garbage inside TLS: answered with an Error frame at most, then closed.
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: p2pd\r\n\r\n".to_vec()),
        ("undecodable", {
            let mut v = 16u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0xff; 16]);
            v
        }),
        ("empty frame", 0u32.to_be_bytes().to_vec()),
        (
            "not a hello",
            codec::encode(Body::Ping(wire::Ping { nonce: 1 })).to_vec(),
        ),
        ("config first", {
            codec::encode(Body::Config(wire::Config {
                chunk_size: 1 << 20,
                ..Default::default()
            }))
            .to_vec()
        }),
    ];
    for (what, bytes) in &garbage {
        let mut p = Peer::tls(addr, &m).await;
        p.write_raw(bytes).await;
        let got = p.expect_closed(STEP).await;
        assert!(
            got.iter().all(|f| matches!(f, Body::Error(_))),
            "{what}: {got:?}"
        );
    }
    // A hello, then garbage in place of the Config.
    let mut p = Peer::tls(addr, &m).await;
    p.send(Body::Hello(m.hello(PROTOCOL_VERSION))).await;
    assert!(matches!(p.recv().await, Body::HelloAck(_)));
    p.write_raw(&[0, 0, 0, 3, 0xde, 0xad, 0xbe]).await;
    p.expect_closed(STEP).await;

    // While the silent ones hang on, a real peer still gets through.
    let (mut p, _) = Peer::handshake(addr, &m).await;
    assert_status_answers(&d);

    for (what, h) in silent {
        let elapsed = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("silent client task")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: dropped after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(12), "{what}: {elapsed:?}");
    }

    // The earlier good session and the daemon are fine.
    p.send(Body::Ping(wire::Ping { nonce: 3 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 3),
        other => panic!("expected Pong, got {other:?}"),
    }
    raw_send_file(&mut p, &tid("after-garbage"), "ok.txt", b"fine\n").await;
    assert_eq!(
        std::fs::read(d.dirs.download_dir.join("ok.txt")).unwrap(),
        b"fine\n"
    );
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_answered_with_an_error() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let mut p = Peer::tls(addr, &m).await;
    p.send(Body::Hello(m.hello(999))).await;
    let got = p.expect_closed(STEP).await;
    match got.as_slice() {
        [Body::Error(e)] => {
            assert_eq!(e.code, wire::ErrorCode::VersionMismatch as i32, "{e:?}");
            assert!(
                e.message.contains("version")
                    && e.message.contains("999")
                    && e.message.contains(&PROTOCOL_VERSION.to_string()),
                "the message names both versions: {:?}",
                e.message
            );
        }
        other => panic!("expected exactly one Error frame, then EOF; got {other:?}"),
    }
    // Still serving.
    let _ = Peer::handshake(addr, &m).await;
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_another_device_is_refused() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let d_id = d.device_id().to_owned();
    // Another real, trusted device id; the daemon's own; and something that is no id at all.
    let other = Device::new();
    api::trust(&d, &other.id()).await;
    for claim in [other.id(), d_id, "mallory-0000-test".to_owned()] {
        let mut p = Peer::tls(addr, &m).await;
        let mut hello = m.hello(PROTOCOL_VERSION);
        hello.device_id = claim.clone();
        p.send(Body::Hello(hello)).await;
        let got = p.expect_closed(STEP).await;
        match got.as_slice() {
            [Body::Error(e)] => {
                assert_eq!(e.code, wire::ErrorCode::Protocol as i32, "{e:?}");
                assert!(
                    e.message.contains("claims to be device") && e.message.contains(&m.id()),
                    "the message names the proven id: {:?}",
                    e.message
                );
            }
            other => panic!("claim {claim:?}: expected one Error frame, then EOF; got {other:?}"),
        }
    }
    let sessions = api::sessions(&d).await;
    assert!(sessions.is_empty(), "{sessions:?}");
    let _ = Peer::handshake(addr, &m).await;
    assert_status_answers(&d);
}

/// A transfer of one two-chunk file that goes wrong in a given way after its first chunk.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// The last chunk carries more bytes than the file's announced size leaves.
    OversizedLastChunk,
    /// A chunk index past the end of the file.
    ChunkBeyondEnd,
    /// A chunk for a file index that is not in the manifest.
    UnknownFile,
    /// Every chunk right, then a FileDone with a wrong SHA-256.
    WrongSha,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_cancel_the_transfer_and_leave_nothing_behind() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let size = CHUNK as usize + 100;
    let data = random_bytes(size, 99);
    let (first, rest) = data.split_at(CHUNK as usize);
    for (n, bad) in [
        Bad::OversizedLastChunk,
        Bad::ChunkBeyondEnd,
        Bad::UnknownFile,
        Bad::WrongSha,
    ]
    .into_iter()
    .enumerate()
    {
        let id = tid(&format!("bad-{n}-{bad:?}"));
        let name = format!("victim-{n}.bin");
        p.send(Body::TransferInfo(offer(
            &id,
            &[&name],
            &[(&name, size as u64)],
            &[],
        )))
        .await;
        assert!(matches!(p.decision(&id).await, Body::Ready(_)), "{bad:?}");
        p.send(chunk(&id, 0, 0, first)).await;
        expect_ack_ok(&mut p, &id, 0).await;
        // The first chunk is on disk in a temporary file: the clean-up check below is real.
        assert_eq!(part_files(&dl).len(), 1, "{bad:?}: {:?}", paths_under(&dl));

        match bad {
            Bad::OversizedLastChunk => {
                let mut long = rest.to_vec();
                long.extend_from_slice(&[0u8; 200]);
                p.send(chunk(&id, 0, 1, &long)).await;
            }
            Bad::ChunkBeyondEnd => p.send(chunk(&id, 0, 2, rest)).await,
            Bad::UnknownFile => p.send(chunk(&id, 1, 0, rest)).await,
            Bad::WrongSha => {
                p.send(chunk(&id, 0, 1, rest)).await;
                expect_ack_ok(&mut p, &id, 1).await;
                p.send(file_done(&id, 0, &[0u8; 32])).await;
            }
        }
        // The daemon gives up on the transfer: a FileResult{ok: false} and/or a Cancel.
        let mut told = Vec::new();
        loop {
            match p.recv().await {
                Body::FileResult(r) => {
                    assert_eq!(r.transfer_id, id);
                    assert!(!r.ok, "{bad:?}: a bad file was accepted: {r:?}");
                    told.push(format!("FileResult: {}", r.error));
                }
                Body::Cancel(c) => {
                    assert_eq!(c.transfer_id, id);
                    assert!(!c.reason.is_empty());
                    told.push(format!("Cancel: {}", c.reason));
                    break;
                }
                other => panic!("{bad:?}: expected FileResult or Cancel, got {other:?}"),
            }
        }
        if matches!(bad, Bad::WrongSha) {
            assert!(
                told[0].starts_with("FileResult") && told[0].contains("SHA-256"),
                "{told:?}"
            );
        }
        let t = api::wait_done(&d, &id, STEP).await;
        assert_eq!(t.state, pb::TransferState::Failed as i32, "{bad:?}: {t:?}");
        assert!(!t.error.is_empty(), "{bad:?}: no error recorded");
        eprintln!("{bad:?}: {told:?}; transfer error: {}", t.error);

        assert!(
            !dl.join(&name).exists(),
            "{bad:?}: a file appeared under the final name"
        );
        wait_no_part_files(&dl, PARTS_GONE_WITHIN).await;
    }
    assert_eq!(
        paths_under(&dl),
        BTreeSet::new(),
        "the download dir is empty"
    );

    // The session and the daemon keep serving.
    raw_send_file(&mut p, &tid("after-bad-chunks"), "good.bin", &data).await;
    assert!(std::fs::read(dl.join("good.bin")).unwrap() == data);
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_mid_transfer_can_resume_what_it_started() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = &tid("vanish");
    let data = random_bytes(3 * CHUNK as usize + 5, 17);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK as usize).collect();
    p.send(one_file_offer(id, "half.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    p.send(chunk(id, 0, 0, chunks[0])).await;
    expect_ack_ok(&mut p, id, 0).await;
    assert_eq!(part_files(&dl).len(), 1, "{:?}", paths_under(&dl));
    // Gone without a word (no Cancel, no TLS close_notify): the receiver keeps what it has,
    // under the hidden temporary name only.
    drop(p);
    let t = api::wait_state(&d, id, pb::TransferState::Interrupted, STEP).await;
    assert!(t.error.contains("session"), "{t:?}");
    assert!(!dl.join("half.bin").exists());
    assert_eq!(part_files(&dl).len(), 1, "{:?}", paths_under(&dl));
    assert_status_answers(&d);

    // Back with a resume offer that does not match what was accepted: refused.
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let other = random_bytes(data.len() + 1, 18);
    let Body::TransferInfo(mut changed) = one_file_offer(id, "half.bin", &other) else {
        unreachable!()
    };
    changed.resume = true;
    p.send(Body::TransferInfo(changed)).await;
    match p.decision(id).await {
        Body::Reject(r) => assert!(r.reason.contains("does not match"), "{r:?}"),
        other => panic!("expected Reject, got {other:?}"),
    }

    // The same offer with `resume`: Ready says chunk 0 is held; the rest completes the file,
    // verified end to end.
    let Body::TransferInfo(mut again) = one_file_offer(id, "half.bin", &data) else {
        unreachable!()
    };
    again.resume = true;
    p.send(Body::TransferInfo(again)).await;
    let have = match p.decision(id).await {
        Body::Ready(r) => r.have,
        other => panic!("expected Ready, got {other:?}"),
    };
    assert_eq!(have.len(), 1, "{have:?}");
    assert_eq!(have[0].file_index, 0);
    assert!(!have[0].complete);
    assert_eq!(have[0].chunks.as_ref(), &[0b0000_0001u8], "{have:?}");
    send_rest(&mut p, id, &data, 1).await;
    let t = api::wait_done(&d, id, STEP).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.resumed_bytes, u64::from(CHUNK), "{t:?}");
    assert!(std::fs::read(dl.join("half.bin")).unwrap() == data);
    wait_no_part_files(&dl, PARTS_GONE_WITHIN).await;

    // A sender that did not hear the end (a lost CompleteAck) resumes again: the receiver
    // says every file is complete and confirms Complete — nothing is received twice.
    let late_resume = |data: &[u8]| {
        let Body::TransferInfo(mut late) = one_file_offer(id, "half.bin", data) else {
            unreachable!()
        };
        late.resume = true;
        Body::TransferInfo(late)
    };
    p.send(late_resume(&data)).await;
    match p.decision(id).await {
        Body::Ready(r) => {
            assert_eq!(r.have.len(), 1, "{r:?}");
            assert!(r.have[0].complete, "{r:?}");
        }
        other => panic!("expected Ready, got {other:?}"),
    }
    p.send(Body::Complete(wire::Complete {
        transfer_id: id.clone(),
    }))
    .await;
    assert!(matches!(p.recv().await, Body::CompleteAck(_)));
    assert!(!dl.join("half (1).bin").exists(), "{:?}", paths_under(&dl));

    // The same after the receiver restarted: history remembers.
    drop(p);
    let (d, addr) = daemon_trusting(&m, d.into_dirs()).await;
    let (mut p, _) = Peer::handshake(addr, &m).await;
    p.send(late_resume(&data)).await;
    assert!(
        matches!(p.decision(id).await, Body::Ready(r) if r.have.iter().all(|h| h.complete)),
        "a completed transfer is confirmed after a restart"
    );
    assert_status_answers(&d);
}

/// A sender's Cancel for a transfer that is stopped here (no attempt runs): a pause keeps
/// everything for a resume; a final one ends the transfer and removes what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_keeps_a_stopped_transfer_and_a_cancel_ends_it() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = &tid("stopped");
    let data = random_bytes(3 * CHUNK as usize + 5, 19);
    let first = &data[..CHUNK as usize];
    p.send(one_file_offer(id, "kept.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    p.send(chunk(id, 0, 0, first)).await;
    expect_ack_ok(&mut p, id, 0).await;
    drop(p);
    api::wait_state(&d, id, pb::TransferState::Interrupted, STEP).await;

    let (mut p, _) = Peer::handshake(addr, &m).await;
    let cancel = |resumable: bool, reason: &str| {
        Body::Cancel(wire::Cancel {
            transfer_id: id.clone(),
            reason: reason.into(),
            resumable,
            failed: false,
        })
    };
    p.send(cancel(true, "paused")).await;
    // The daemon reads a session's frames in order: once the Pong is back, the pause was seen.
    p.send(Body::Ping(wire::Ping { nonce: 7 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 7),
        other => panic!("expected Pong, got {other:?}"),
    }
    let t = api::transfer(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Interrupted as i32, "{t:?}");
    assert_eq!(part_files(&dl).len(), 1, "{:?}", paths_under(&dl));

    p.send(cancel(false, "changed my mind")).await;
    let t = api::wait_done(&d, id, STEP).await;
    assert_eq!(t.state, pb::TransferState::Cancelled as i32, "{t:?}");
    assert!(t.error.contains("changed my mind"), "{t:?}");
    wait_no_part_files(&dl, PARTS_GONE_WITHIN).await;
    assert!(!dl.join("kept.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resume_replaces_the_first_attempt_after_it_stopped() {
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let id = &tid("twice");
    let data = random_bytes(4 * CHUNK as usize, 23);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK as usize).collect();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    p.send(one_file_offer(id, "twice.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    p.send(chunk(id, 0, 0, chunks[0])).await;
    expect_ack_ok(&mut p, id, 0).await;

    // A resume on a second session while the first attempt still runs: the first is asked
    // to stop (it keeps what it has) and the newcomer is told to try again shortly.
    let resume = || {
        let Body::TransferInfo(mut again) = one_file_offer(id, "twice.bin", &data) else {
            unreachable!()
        };
        again.resume = true;
        Body::TransferInfo(again)
    };
    let (mut q, _) = Peer::handshake(addr, &m).await;
    q.send(resume()).await;
    match q.decision(id).await {
        Body::Cancel(c) => assert!(c.resumable && c.reason.contains("still stopping"), "{c:?}"),
        other => panic!("expected a resumable Cancel, got {other:?}"),
    }
    match p.recv().await {
        Body::Cancel(c) => assert!(c.resumable, "the first attempt is told to resume: {c:?}"),
        other => panic!("expected Cancel, got {other:?}"),
    }
    api::wait_state(&d, id, pb::TransferState::Interrupted, STEP).await;

    // The newcomer, trying again, takes over from the chunk the first one left.
    q.send(resume()).await;
    let have = match q.decision(id).await {
        Body::Ready(r) => r.have,
        other => panic!("expected Ready, got {other:?}"),
    };
    assert_eq!(have.len(), 1, "{have:?}");
    send_rest(&mut q, id, &data, 1).await;
    let t = api::wait_done(&d, id, STEP).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert!(std::fs::read(dl.join("twice.bin")).unwrap() == data);
    wait_no_part_files(&dl, PARTS_GONE_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_with_a_wrong_crc_is_asked_for_again() {
    // TLS makes corruption on the wire a connection error, so the receiver's CRC path can only
    // be reached by a peer that sends a wrong CRC32 itself. The receiver answers
    // CRC_MISMATCH, writes nothing of it, holds the chunks after the gap unacknowledged, and
    // takes the re-sent chunk.
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let id = &tid("crc-retry");
    let data = random_bytes(3 * CHUNK as usize + 77, 11);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK as usize).collect();
    p.send(one_file_offer(id, "crc.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));

    p.send(chunk(id, 0, 0, chunks[0])).await;
    expect_ack_ok(&mut p, id, 0).await;
    // Chunk 1 with a CRC that does not match its data.
    let Body::Chunk(mut bad) = chunk(id, 0, 1, chunks[1]) else {
        unreachable!()
    };
    bad.crc32 ^= 0x0040_0000;
    p.send(Body::Chunk(bad)).await;
    expect_ack(&mut p, id, 1, wire::ChunkStatus::CrcMismatch).await;
    // The next chunks arrive before the re-send; they are held, not acknowledged.
    p.send(chunk(id, 0, 2, chunks[2])).await;
    p.send(chunk(id, 0, 3, chunks[3])).await;
    assert!(
        p.next(Duration::from_millis(500)).await.is_none(),
        "chunks after a gap are acknowledged only once written"
    );
    let t = api::transfer(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Running as i32, "{t:?}");
    assert_eq!(
        t.bytes_done,
        u64::from(CHUNK),
        "only chunk 0 is written: {t:?}"
    );

    // The re-send closes the gap: all three are acknowledged in order.
    p.send(chunk(id, 0, 1, chunks[1])).await;
    for i in 1..=3 {
        expect_ack_ok(&mut p, id, i).await;
    }
    finish_file(&mut p, id, &data).await;
    let t = api::wait_done(&d, id, STEP).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.bytes_done, data.len() as u64);
    assert!(
        std::fs::read(dl.join("crc.bin")).unwrap() == data,
        "content differs"
    );
    assert!(part_files(&dl).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sender_resends_a_chunk_the_receiver_reports_corrupt() {
    // Mallory listens as a device; a real daemon sends a file to it. Mallory reports one chunk
    // as corrupt (CRC_MISMATCH) once; the sender must re-send exactly that chunk, unchanged,
    // and complete with chunks_resent = 1.
    send_to_mallory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reports_of_an_earlier_attempt_before_ready_are_ignored() {
    // A receiver's syncer may still report files of an attempt that stopped (a pause) when
    // the sender offers again on the same session: acknowledgements and file results that
    // come before the answer to the new offer belong to the old attempt and must not end it.
    send_to_mallory(true).await;
}

/// A real daemon sends a file to Mallory, who reports one chunk corrupt once and, with
/// `stale_before_ready`, first answers the offer with an old attempt's ChunkAck, FileResult
/// and CompleteAck before Ready.
async fn send_to_mallory(stale_before_ready: bool) {
    const CS: usize = 64 << 10;
    const NACKED: u64 = 2;
    let m = Device::new();
    let a = p2p_tests::start(&[]).await;
    let a_id = a.device_id().to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m_addr = listener.local_addr().unwrap();

    let data = random_bytes(5 * CS + 100, 21);
    let (_src, path) = temp_file("to-mallory.bin", &data);

    let mallory = {
        let identity = m.identity.clone();
        let a_id = a_id.clone();
        let expected = data.clone();
        tokio::spawn(async move {
            let (mut p, proven) = Peer::accept(&listener, &identity).await;
            assert_eq!(proven, a_id, "the sender proves its own id");
            receive_as_mallory(
                &mut p,
                &identity,
                &a_id,
                m_addr.port(),
                &expected,
                CS,
                NACKED,
                stale_before_ready,
            )
            .await
        })
    };

    // Pinned to mallory's id, as a user would after reading it off the other device.
    let t = api::send_and_wait(
        &a,
        &[&path],
        &format!("{}@{m_addr}", m.id()),
        Some(pb::SendOptions {
            compress: Some(false),
            chunk_size: CS as u32,
            window: 4,
            ..Default::default()
        }),
        SEND_WITHIN,
    )
    .await;
    let arrivals = tokio::time::timeout(STEP, mallory)
        .await
        .expect("mallory finished")
        .expect("mallory's side of the transfer");
    assert_eq!(
        t.state,
        pb::TransferState::Completed as i32,
        "{t:?}\n--- sender stderr ---\n{}",
        a.stderr()
    );
    assert_eq!(t.chunks_resent, 1, "{t:?}");
    assert_eq!(t.peer_id, m.id());
    assert_eq!(t.bytes_done, data.len() as u64);
    let chunks = data.len().div_ceil(CS) as u64;
    for i in 0..chunks {
        let want = if i == NACKED { 2 } else { 1 };
        assert_eq!(
            arrivals.get(&i),
            Some(&want),
            "arrivals of chunk {i}: {arrivals:?}"
        );
    }
}

/// Mallory's receiving side: the acceptor's handshake, Ready for the offer, every chunk
/// checked and acknowledged — except the first copy of chunk `nack`, reported corrupt — and
/// the file verified. With `stale_before_ready`, an earlier attempt's reports come first.
/// Returns how often each chunk arrived.
#[allow(clippy::too_many_arguments)]
async fn receive_as_mallory(
    p: &mut Peer,
    identity: &p2p_core::net::identity::Identity,
    sender_id: &str,
    listen_port: u16,
    expected: &[u8],
    cs: usize,
    nack: u64,
    stale_before_ready: bool,
) -> BTreeMap<u64, u32> {
    let hello = p.answer_hello(identity, listen_port, 0).await;
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.device_id, sender_id, "the Hello names the proven id");
    let proposal = match p.recv().await {
        Body::Config(c) => c,
        other => panic!("expected Config, got {other:?}"),
    };
    let agreed = wire::Config {
        chunk_size: cs as u32,
        compress: false,
        level: proposal.level,
        windowed: true,
        window_size: 16,
    };
    p.send(Body::ConfigAck(wire::ConfigAck {
        agreed: Some(agreed),
    }))
    .await;
    let info = match p.recv().await {
        Body::TransferInfo(i) => i,
        other => panic!("expected TransferInfo, got {other:?}"),
    };
    assert_eq!(info.files.len(), 1, "{info:?}");
    assert_eq!(info.files[0].size, expected.len() as u64);
    assert_eq!(info.chunk_size as usize, cs);
    let id = info.transfer_id.clone();
    if stale_before_ready {
        p.send(Body::ChunkAck(wire::ChunkAck {
            transfer_id: id.clone(),
            file_index: 0,
            chunk_index: 0,
            status: wire::ChunkStatus::Ok as i32,
        }))
        .await;
        p.send(Body::FileResult(wire::FileResult {
            transfer_id: id.clone(),
            file_index: 0,
            ok: true,
            error: String::new(),
        }))
        .await;
        p.send(Body::CompleteAck(wire::CompleteAck {
            transfer_id: id.clone(),
        }))
        .await;
    }
    p.send(Body::Ready(wire::Ready {
        transfer_id: id.clone(),
        have: Vec::new(),
    }))
    .await;

    let total = expected.len().div_ceil(cs) as u64;
    let mut got: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut arrivals: BTreeMap<u64, u32> = BTreeMap::new();
    let mut first_copy: Option<Bytes> = None;
    let mut sha: Option<Vec<u8>> = None;
    let mut result_sent = false;
    loop {
        match p.recv().await {
            Body::Chunk(c) => {
                assert_eq!(c.transfer_id, id);
                assert_eq!(c.file_index, 0);
                assert_eq!(c.flags, 0, "compression was not agreed");
                assert_eq!(
                    crc32fast::hash(&c.data),
                    c.crc32,
                    "the sender's CRC is right"
                );
                *arrivals.entry(c.chunk_index).or_default() += 1;
                let status = if c.chunk_index == nack && first_copy.is_none() {
                    first_copy = Some(c.data.clone());
                    wire::ChunkStatus::CrcMismatch
                } else {
                    if c.chunk_index == nack {
                        assert_eq!(
                            first_copy.as_ref(),
                            Some(&c.data),
                            "the re-sent chunk is the same chunk"
                        );
                    }
                    got.insert(c.chunk_index, c.data.clone());
                    wire::ChunkStatus::Ok
                };
                p.send(Body::ChunkAck(wire::ChunkAck {
                    transfer_id: id.clone(),
                    file_index: 0,
                    chunk_index: c.chunk_index,
                    status: status as i32,
                }))
                .await;
            }
            Body::FileDone(f) => {
                assert_eq!(f.file_index, 0);
                sha = Some(f.sha256.to_vec());
            }
            Body::Complete(c) => {
                assert!(result_sent, "Complete before the file was confirmed");
                p.send(Body::CompleteAck(wire::CompleteAck {
                    transfer_id: c.transfer_id,
                }))
                .await;
                return arrivals;
            }
            Body::Pong(_) => {}
            other => panic!("unexpected frame from the sender: {other:?}"),
        }
        // The file is confirmed once every chunk and its FileDone are in, in whatever order
        // they came (FileDone may overtake the re-sent chunk).
        if !result_sent && got.len() as u64 == total {
            if let Some(sha) = &sha {
                let data: Vec<u8> = got.values().flat_map(|b| b.iter().copied()).collect();
                assert!(data == expected, "the received file differs");
                assert_eq!(sha.as_slice(), Sha256::digest(&data).as_slice());
                p.send(Body::FileResult(wire::FileResult {
                    transfer_id: id.clone(),
                    file_index: 0,
                    ok: true,
                    error: String::new(),
                }))
                .await;
                result_sent = true;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_chunks_do_not_buffer_unbounded_memory() {
    // 16 MiB chunks of zeros compress to ~530 bytes each. Sending chunks 1..=40 of a big file
    // but never chunk 0 must not make the daemon hold 40 decompressed chunks (640 MiB): it
    // may write them at their offsets, or give up on the transfer, but its memory stays
    // bounded. An offer with more than 128 MiB in flight (chunk size × window) is refused;
    // within that, chunks held out of order are not acknowledged, and a chunk a window or
    // more ahead fails the transfer.
    const BIG: u32 = 16 << 20;
    const SENT: u64 = 40;
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let (mut p, agreed) = Peer::handshake_with(
        addr,
        &m,
        wire::Config {
            chunk_size: BIG,
            compress: true,
            level: 3,
            windowed: true,
            window_size: 64,
        },
    )
    .await;
    assert_eq!(agreed.chunk_size, BIG);
    let size = 64 * u64::from(BIG);
    let mut info = offer(
        &tid("ooo-too-much"),
        &["big.bin"],
        &[("big.bin", size)],
        &[],
    );
    info.chunk_size = BIG;
    info.window = 64;
    p.send(Body::TransferInfo(info)).await;
    assert!(
        matches!(p.decision(&tid("ooo-too-much")).await, Body::Reject(_)),
        "1 GiB in flight is refused"
    );
    let mut info = offer(&tid("ooo-memory"), &["big.bin"], &[("big.bin", size)], &[]);
    info.chunk_size = BIG;
    info.window = 8;
    p.send(Body::TransferInfo(info)).await;
    assert!(matches!(
        p.decision(&tid("ooo-memory")).await,
        Body::Ready(_)
    ));

    let data = Bytes::from(zstd_zeros(BIG as usize));
    let before = proc_kib(d.pid, "VmRSS").expect("VmRSS");
    for i in 1..=SENT {
        p.send(Body::Chunk(wire::Chunk {
            transfer_id: tid("ooo-memory"),
            file_index: 0,
            chunk_index: i,
            flags: wire::ChunkFlag::Compressed as i32 as u32,
            crc32: crc32fast::hash(&data),
            data: data.clone(),
            ..Default::default()
        }))
        .await;
    }
    // Every chunk acknowledged, or the transfer given up.
    let mut acks = 0;
    let mut given_up = false;
    while acks < SENT {
        match p.next(Duration::from_secs(20)).await {
            Some(Ok(Body::ChunkAck(_))) => acks += 1,
            Some(Ok(Body::Cancel(_) | Body::Error(_)) | Err(_)) | None => {
                given_up = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    let after = proc_kib(d.pid, "VmRSS").expect("VmRSS");
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("{acks} acknowledged, given up: {given_up}, RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 256,
        "p2pd's resident memory grew by {grown_mib} MiB for {SENT} chunks of {} bytes on the wire \
         ({acks} acknowledged)",
        data.len()
    );
    assert_status_answers(&d);
}

/// Sends files of one chunk as fast as it can — each its chunk and FileDone — without
/// reading anything.
async fn blast_small_files(p: &mut Peer, id: &str, count: usize) {
    let mut bytes = Vec::new();
    for i in 0..count {
        let data = format!("file {i}");
        bytes.extend_from_slice(&codec::encode(chunk(id, i as u32, 0, data.as_bytes())));
        bytes.extend_from_slice(&codec::encode(file_done(
            id,
            i as u32,
            &Sha256::digest(data.as_bytes()),
        )));
    }
    p.write_raw(&bytes).await;
}

fn small_files_offer(id: &str, root: &str, count: usize, window: u32) -> wire::TransferInfo {
    let names: Vec<(String, u64)> = (0..count)
        .map(|i| (format!("{root}/f{i}"), format!("file {i}").len() as u64))
        .collect();
    let files: Vec<(&str, u64)> = names.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let mut info = offer(id, &[root], &files, &[root]);
    info.window = window;
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_have_a_window_of_their_own() {
    // Small files (one chunk of at most 64 KiB) may be 256 in flight whatever the chunk
    // window: a sender that sends 256 of them at once under `--window 1` keeps to the rules,
    // and every one is placed.
    const SMALL_FILE_WINDOW: usize = 256;
    let m = Device::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = tid("small-window");
    p.send(Body::TransferInfo(small_files_offer(
        &id,
        "burst",
        SMALL_FILE_WINDOW,
        1,
    )))
    .await;
    assert!(matches!(p.decision(&id).await, Body::Ready(_)));
    blast_small_files(&mut p, &id, SMALL_FILE_WINDOW).await;
    let mut placed = BTreeSet::new();
    while placed.len() < SMALL_FILE_WINDOW {
        match p.recv().await {
            Body::ChunkAck(a) => assert_eq!(a.status, wire::ChunkStatus::Ok as i32, "{a:?}"),
            Body::FileResult(r) => {
                assert!(r.ok, "{r:?}");
                assert!(placed.insert(r.file_index), "reported twice: {r:?}");
            }
            other => panic!("expected ChunkAck or FileResult, got {other:?}"),
        }
    }
    p.send(Body::Complete(wire::Complete {
        transfer_id: id.clone(),
    }))
    .await;
    loop {
        match p.recv().await {
            Body::CompleteAck(_) => break,
            Body::ChunkAck(_) => {}
            other => panic!("expected CompleteAck, got {other:?}"),
        }
    }
    let dir = d.dirs.download_dir.join("burst");
    for i in 0..SMALL_FILE_WINDOW {
        let got = std::fs::read(dir.join(format!("f{i}"))).expect("file in place");
        assert_eq!(got, format!("file {i}").as_bytes());
    }

    // Far beyond it, sent by a peer that does not read either: the daemon places them all or
    // gives up on that transfer — it neither hangs nor leaves partial files, and keeps serving.
    let id = tid("small-flood");
    p.send(Body::TransferInfo(small_files_offer(&id, "flood", 5000, 1)))
        .await;
    assert!(matches!(p.decision(&id).await, Body::Ready(_)));
    blast_small_files(&mut p, &id, 5000).await;
    let mut ok = 0;
    let ended = loop {
        match p.next(Duration::from_secs(20)).await {
            Some(Ok(Body::FileResult(r))) if r.ok => {
                ok += 1;
                if ok == 5000 {
                    break "all placed".to_owned();
                }
            }
            Some(Ok(Body::Cancel(c))) => {
                assert!(c.failed, "{c:?}");
                break c.reason;
            }
            Some(Ok(Body::ChunkAck(_))) => {}
            other => panic!("expected FileResults or a Cancel, got {other:?}"),
        }
    };
    // Files the daemon had queued before it gave up may still be reported.
    while let Some(frame) = p.next(Duration::from_secs(1)).await {
        match frame {
            Ok(Body::FileResult(r)) if r.transfer_id == id => ok += usize::from(r.ok),
            Ok(Body::ChunkAck(a)) if a.transfer_id == id => {}
            other => panic!("after the flood: {other:?}"),
        }
    }
    eprintln!("flood of 5000 small files: {ok} placed, then: {ended}");
    assert!(
        ended == "all placed" || ended.contains("window") || ended.contains("in flight"),
        "{ended}"
    );
    if ended == "all placed" {
        p.send(Body::Complete(wire::Complete {
            transfer_id: id.clone(),
        }))
        .await;
        assert!(matches!(p.recv().await, Body::CompleteAck(_)));
    }
    let t = api::wait_done(&d, &id, STEP).await;
    if ended == "all placed" {
        assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    } else {
        // Cut off for breaking the protocol: failed here too, not waiting for a resume.
        assert_eq!(t.state, pb::TransferState::Failed as i32, "{t:?}");
        assert!(t.error.contains("in flight"), "{t:?}");
    }
    wait_no_part_files(&d.dirs.download_dir, PARTS_GONE_WITHIN).await;
    for e in std::fs::read_dir(d.dirs.download_dir.join("flood")).unwrap() {
        let e = e.unwrap();
        let i: usize = e.file_name().to_string_lossy()[1..].parse().unwrap();
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert_status_answers(&d);
    raw_send_file(&mut p, &tid("small-after"), "after.txt", b"still serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_file_window_is_used_only_with_a_peer_that_has_it() {
    // A daemon sends a folder of 12 small files to mallory under window 2. Mallory answers
    // nothing until the sender stops, then everything, over and over: the most frames the
    // sender had unanswered shows which window it kept to — the chunk window (a small file's
    // chunk and FileDone take a permit each) for a peer without CAPABILITY_SMALL_FILES, the
    // small-file window (all 12 files at once) for one with it.
    assert_eq!(small_files_to_mallory(false).await, 2);
    assert_eq!(small_files_to_mallory(true).await, 24);
}

/// Runs the transfer described above; returns the most frames (chunks and FileDones) the
/// sender had unanswered at a time.
async fn small_files_to_mallory(small_files_cap: bool) -> usize {
    const FILES: usize = 12;
    let m = Device::new();
    let a = p2p_tests::start(&[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m_addr = listener.local_addr().unwrap();
    let src = tempfile::tempdir().unwrap();
    let folder = src.path().join("smalls");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..FILES {
        std::fs::write(folder.join(format!("s{i:02}")), format!("small {i}")).unwrap();
    }
    let identity = m.identity.clone();
    let mallory = tokio::spawn(async move {
        let (mut p, _) = Peer::accept(&listener, &identity).await;
        let withheld = if small_files_cap {
            0
        } else {
            caps::SMALL_FILES
        };
        p.answer_hello(&identity, m_addr.port(), withheld).await;
        let proposal = match p.recv().await {
            Body::Config(c) => c,
            other => panic!("expected Config, got {other:?}"),
        };
        p.send(Body::ConfigAck(wire::ConfigAck {
            agreed: Some(wire::Config {
                compress: false,
                windowed: true,
                window_size: 2,
                ..proposal
            }),
        }))
        .await;
        let info = match p.recv().await {
            Body::TransferInfo(i) => i,
            other => panic!("expected TransferInfo, got {other:?}"),
        };
        assert_eq!(info.files.len(), FILES, "{info:?}");
        let id = info.transfer_id.clone();
        p.send(Body::Ready(wire::Ready {
            transfer_id: id.clone(),
            have: Vec::new(),
        }))
        .await;
        let mut most = 0;
        let mut unanswered: Vec<Body> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(Instant::now() < deadline, "the transfer did not end");
            // A quiet second means the sender waits for answers (a shorter one could be a
            // loaded machine's pause in the middle of a burst).
            match p.next(Duration::from_secs(1)).await {
                Some(Ok(f @ (Body::Chunk(_) | Body::FileDone(_)))) => unanswered.push(f),
                Some(Ok(Body::Complete(c))) => {
                    p.send(Body::CompleteAck(wire::CompleteAck {
                        transfer_id: c.transfer_id,
                    }))
                    .await;
                    return most;
                }
                Some(other) => panic!("unexpected from the sender: {other:?}"),
                // Nothing out: a pause of the sender's, not a wait for answers.
                None if unanswered.is_empty() => {}
                None => {
                    // The sender waits for answers: give them all.
                    most = most.max(unanswered.len());
                    for f in unanswered.drain(..) {
                        let answer = match f {
                            Body::Chunk(c) => Body::ChunkAck(wire::ChunkAck {
                                transfer_id: id.clone(),
                                file_index: c.file_index,
                                chunk_index: c.chunk_index,
                                status: wire::ChunkStatus::Ok as i32,
                            }),
                            Body::FileDone(d) => Body::FileResult(wire::FileResult {
                                transfer_id: id.clone(),
                                file_index: d.file_index,
                                ok: true,
                                error: String::new(),
                            }),
                            _ => unreachable!(),
                        };
                        p.send(answer).await;
                    }
                }
            }
        }
    });
    let t = api::send_and_wait(
        &a,
        &[&folder],
        &format!("{}@{m_addr}", m.id()),
        Some(pb::SendOptions {
            compress: Some(false),
            window: 2,
            ..Default::default()
        }),
        SEND_WITHIN,
    )
    .await;
    assert_eq!(
        t.state,
        pb::TransferState::Completed as i32,
        "{t:?}\n--- sender stderr ---\n{}",
        a.stderr()
    );
    tokio::time::timeout(STEP, mallory)
        .await
        .expect("mallory finished")
        .expect("mallory's side of the transfer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_before_the_offer_is_accepted_fails_the_offer() {
    // The offer waits for the user (mallory is not trusted); a chunk for it now breaks the
    // protocol: the offer fails on both sides at once, is no longer listed, and is not kept
    // for a resume as a lost session would be.
    let m = Device::new();
    let d = p2p_tests::start(&[]).await;
    let addr = d.listen_addr();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = tid("chunk-too-early");
    p.send(one_file_offer(&id, "early.bin", b"too early")).await;
    // Once the daemon lists the offer, the chunk meets a waiting offer.
    assert_eq!(wait_offer(&d, STEP).await.transfer_id, id);
    p.send(chunk(&id, 0, 0, b"too early")).await;
    match p.recv().await {
        Body::Cancel(c) => {
            assert_eq!(c.transfer_id, id);
            assert!(c.failed && !c.resumable, "{c:?}");
            assert!(c.reason.contains("before the offer was accepted"), "{c:?}");
        }
        other => panic!("expected a Cancel, got {other:?}"),
    }
    let t = api::wait_done(&d, &id, STEP).await;
    assert_eq!(t.state, pb::TransferState::Failed as i32, "{t:?}");
    assert!(incoming(&d).await.is_empty());
    assert!(part_files(&d.dirs.download_dir).is_empty());
    assert!(!d.dirs.download_dir.join("early.bin").exists());
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_real_peers() {
    let a = p2p_tests::start(&["--accept", "auto"]).await;
    let b = p2p_tests::start(&["--accept", "auto"]).await;
    let addr = a.listen_addr();
    // 70 silent connections from another loopback address hold handshake slots (they never
    // start TLS) until they time out; the listener must keep accepting, and a peer from
    // elsewhere must get through.
    let mut idle = Vec::new();
    for _ in 0..70 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr)).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 60, "opened {} idle connections", idle.len());
    let started = Instant::now();
    let mut c = api::client(&b).await;
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        c.connect(pb::ConnectRequest {
            peer: addr.to_string(),
        }),
    )
    .await
    .expect("a real peer is not locked out")
    .expect("connect");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "handshake took {:?}",
        started.elapsed()
    );
    let s = s.into_inner();
    assert_eq!(s.peer_address, addr.to_string());
    assert_eq!(s.peer_id, api::status(&a).await.device_id);
    drop(idle);
}
