//! A hostile peer: the test speaks the wire protocol by hand over TCP to a real `p2pd`
//! (`--accept auto`) and offers unsafe manifests, oversized frames, garbage, silence, a wrong
//! protocol version and bad chunks. The daemon must refuse each with a clear answer, write
//! nothing outside (or, for a refused transfer, inside) its download dir, leave no partial
//! file behind, and keep serving. A happy path through the same hand-written peer proves that
//! the peer itself speaks the protocol correctly, so the negative cases mean something.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p_core::wire::{self as codec, PROTOCOL_VERSION, WireError, caps};
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use p2p_proto::wire::v1::{self as wire, frame::Body};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// Longest wait for one expected frame.
const STEP: Duration = Duration::from_secs(5);
/// Largest frame the test peer reads.
const READ_MAX: usize = 64 << 20;
/// Chunk size of the hand-made transfers.
const CHUNK: u32 = 4096;

// ---------------------------------------------------------------------------------------
// Daemons and the control API

fn auto_accept() -> DaemonOptions {
    DaemonOptions {
        args: vec!["--accept".into(), "auto".into()],
        ..Default::default()
    }
}

async fn start(dirs: DaemonDirs, opts: DaemonOptions) -> Daemon {
    tokio::task::spawn_blocking(move || Daemon::start_with(dirs, opts))
        .await
        .expect("start daemon")
}

async fn control(d: &Daemon) -> ControlServiceClient<Channel> {
    let ch = tokio::time::timeout(STEP, p2p_proto::uds::connect(&d.dirs.socket))
        .await
        .expect("control connect timed out")
        .expect("control connect");
    ControlServiceClient::new(ch)
}

async fn listen_addr(d: &Daemon) -> SocketAddr {
    let s = control(d)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    s.listen_address
        .parse()
        .expect("listen_address is HOST:PORT")
}

/// `p2pctl status --json` still works (run off the reactor: it spawns and waits).
fn assert_status_answers(d: &Daemon) {
    let s = tokio::task::block_in_place(|| d.status());
    assert!(
        s["device_id"].as_str().is_some_and(|v| !v.is_empty()),
        "status after abuse: {s}\n--- p2pd stderr ---\n{}",
        d.stderr()
    );
}

async fn transfer(d: &Daemon, id: &str) -> pb::Transfer {
    let list = control(d)
        .await
        .list_transfers(pb::ListTransfersRequest {})
        .await
        .expect("ListTransfers")
        .into_inner();
    list.transfers
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("transfer {id} is not in ListTransfers"))
}

/// Polls the transfer until it reaches a final state (bounded).
async fn transfer_final(d: &Daemon, id: &str) -> pb::Transfer {
    let deadline = Instant::now() + STEP;
    loop {
        let t = transfer(d, id).await;
        let state = pb::TransferState::try_from(t.state).unwrap_or_default();
        if matches!(
            state,
            pb::TransferState::Completed
                | pb::TransferState::Failed
                | pb::TransferState::Cancelled
                | pb::TransferState::Rejected
        ) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "transfer {id} did not end: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every path below `dir` (relative, sorted), hidden files included; empty if `dir` is missing.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn part_files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|p| p.ends_with(".p2pd-part"))
        .collect()
}

/// Waits (bounded) until no `.p2pd-part` file is left, then asserts it.
async fn assert_no_part_files(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !part_files(dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        part_files(dir),
        Vec::<String>::new(),
        "{what}: temporary files left behind"
    );
}

/// Deterministic pseudo-random bytes (xorshift), so no RNG crate is needed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
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

// ---------------------------------------------------------------------------------------
// The hand-written peer

struct Peer {
    stream: TcpStream,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Peer { stream }
    }

    /// Connects and runs the initiator's handshake; returns the agreed limits.
    async fn handshake(addr: SocketAddr) -> (Self, wire::Config) {
        let proposal = wire::Config {
            chunk_size: 1 << 20,
            compress: true,
            level: 3,
            windowed: true,
            window_size: 64,
        };
        let (p, agreed) = Peer::handshake_with(addr, proposal).await;
        assert_eq!(agreed, proposal);
        (p, agreed)
    }

    /// The handshake with another Config proposal.
    async fn handshake_with(addr: SocketAddr, proposal: wire::Config) -> (Self, wire::Config) {
        let mut p = Peer::connect(addr).await;
        p.send(Body::Hello(hello(PROTOCOL_VERSION))).await;
        let ack = match p.recv().await {
            Body::HelloAck(a) => a,
            other => panic!("expected HelloAck, got {other:?}"),
        };
        assert_eq!(ack.protocol_version, PROTOCOL_VERSION);
        assert!(!ack.device_id.is_empty());
        assert_eq!(ack.capabilities, caps::SUPPORTED);
        p.send(Body::Config(proposal)).await;
        let agreed = match p.recv().await {
            Body::ConfigAck(c) => c.agreed.expect("ConfigAck carries the agreed values"),
            other => panic!("expected ConfigAck, got {other:?}"),
        };
        (p, agreed)
    }

    async fn send(&mut self, body: Body) {
        self.write_raw(&codec::encode(body)).await;
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// The next frame that is not a Ping (Pings are answered).
    async fn try_recv(&mut self, within: Duration) -> Result<Body, WireError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r =
                tokio::time::timeout_at(deadline, codec::read_frame(&mut self.stream, READ_MAX))
                    .await
                    .unwrap_or_else(|_| panic!("no frame from the daemon within {within:?}"));
            match r? {
                Body::Ping(p) => self.send(Body::Pong(wire::Pong { nonce: p.nonce })).await,
                other => return Ok(other),
            }
        }
    }

    async fn recv(&mut self) -> Body {
        self.try_recv(STEP).await.expect("read a frame")
    }

    /// Reads until the daemon closes the connection; returns what it sent before (Pings left
    /// out). Panics if it stays open for `within`.
    async fn expect_closed(&mut self, within: Duration) -> Vec<Body> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let r =
                tokio::time::timeout_at(deadline, codec::read_frame(&mut self.stream, READ_MAX))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "the daemon kept the connection open for {within:?}; it sent {got:?}"
                        )
                    });
            match r {
                Ok(Body::Ping(_)) => {}
                Ok(b) => got.push(b),
                Err(WireError::Closed | WireError::Io(_)) => return got,
                Err(e) => panic!("unexpected bytes from the daemon: {e}"),
            }
        }
    }

    /// Waits for the daemon's decision on an offer.
    async fn decision(&mut self, id: &str) -> Body {
        loop {
            match self.recv().await {
                b @ (Body::Ready(_) | Body::Reject(_)) => {
                    let got = match &b {
                        Body::Ready(r) => &r.transfer_id,
                        Body::Reject(r) => &r.transfer_id,
                        _ => unreachable!(),
                    };
                    assert_eq!(got, id, "decision for another transfer: {b:?}");
                    return b;
                }
                Body::Pong(_) => {}
                other => panic!("expected Ready or Reject for {id}, got {other:?}"),
            }
        }
    }
}

fn hello(version: u32) -> wire::Hello {
    wire::Hello {
        device_id: "mallory-0000-test".into(),
        name: "mallory".into(),
        protocol_version: version,
        capabilities: caps::SUPPORTED,
        listen_port: 1,
        software_version: "test-peer".into(),
    }
}

fn offer(id: &str, roots: &[&str], files: &[(&str, u64)], dirs: &[&str]) -> wire::TransferInfo {
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
    }
}

fn chunk(id: &str, file_index: u32, chunk_index: u64, data: &[u8]) -> Body {
    Body::Chunk(wire::Chunk {
        transfer_id: id.into(),
        file_index,
        chunk_index,
        flags: 0,
        crc32: crc32fast::hash(data),
        data: Bytes::copy_from_slice(data),
    })
}

fn file_done(id: &str, file_index: u32, sha256: &[u8]) -> Body {
    Body::FileDone(wire::FileDone {
        transfer_id: id.into(),
        file_index,
        sha256: Bytes::copy_from_slice(sha256),
    })
}

/// Receives one ChunkAck for `id` and checks it is OK for `chunk_index`.
async fn expect_ack_ok(p: &mut Peer, id: &str, chunk_index: u64) {
    match p.recv().await {
        Body::ChunkAck(a) => {
            assert_eq!(a.transfer_id, id);
            assert_eq!(a.chunk_index, chunk_index);
            assert_eq!(a.status, wire::ChunkStatus::Ok as i32, "{a:?}");
        }
        other => panic!("expected ChunkAck for chunk {chunk_index}, got {other:?}"),
    }
}

/// Sends one file named `name` with `data` through the raw protocol, in order, and checks
/// every answer up to CompleteAck.
async fn raw_send_file(p: &mut Peer, id: &str, name: &str, data: &[u8]) {
    p.send(Body::TransferInfo(offer(
        id,
        &[name],
        &[(name, data.len() as u64)],
        &[],
    )))
    .await;
    assert!(
        matches!(p.decision(id).await, Body::Ready(_)),
        "a valid offer is accepted"
    );
    for (i, c) in data.chunks(CHUNK as usize).enumerate() {
        p.send(chunk(id, 0, i as u64, c)).await;
    }
    for i in 0..data.len().div_ceil(CHUNK as usize) {
        expect_ack_ok(p, id, i as u64).await;
    }
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

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_through_the_raw_protocol() {
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;
    let (mut p, _) = Peer::handshake(addr).await;

    // Three chunks, the last one short.
    let data = pseudo_random(2 * CHUNK as usize + 1808, 7);
    raw_send_file(&mut p, "raw-happy-1", "hello.bin", &data).await;
    let got = std::fs::read(d.dirs.download_dir.join("hello.bin")).expect("file in place");
    assert!(got == data, "content differs");
    let t = transfer_final(&d, "raw-happy-1").await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.direction, pb::Direction::Receive as i32);
    assert_eq!(t.bytes_done, data.len() as u64);
    assert_eq!(t.peer_id, "mallory-0000-test");

    // An empty file, and a second transfer over the same session.
    raw_send_file(&mut p, "raw-happy-2", "empty.txt", b"").await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_manifests_are_rejected_and_nothing_is_written() {
    // The download dir sits one level below a directory the test owns, so that anything
    // escaping by `..` lands where the test looks.
    let mut dirs = DaemonDirs::new();
    dirs.download_dir = dirs.root.path().join("jail/downloads");
    std::fs::create_dir_all(&dirs.download_dir).unwrap();
    let jail = dirs.root.path().join("jail");
    let d = start(dirs, auto_accept()).await;
    let root_before = tree(d.dirs.root.path())
        .into_iter()
        .filter(|p| !p.starts_with("state") && !p.starts_with("run"))
        .collect::<BTreeSet<_>>();
    let addr = listen_addr(&d).await;
    let (mut p, _) = Peer::handshake(addr).await;

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
    for (id, roots, files, dirs) in &cases {
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

        let t = transfer_final(&d, id).await;
        assert_eq!(t.state, pb::TransferState::Rejected as i32, "{id}: {t:?}");
        assert_eq!(t.direction, pb::Direction::Receive as i32, "{id}");
        assert_eq!(t.error, reason, "{id}: ListTransfers shows the reason");
    }
    // The session survived every rejection.
    p.send(Body::Ping(wire::Ping { nonce: 7 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 7),
        other => panic!("expected Pong, got {other:?}"),
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tree(&d.dirs.download_dir),
        BTreeSet::new(),
        "nothing is written inside the download dir"
    );
    assert_eq!(
        tree(&jail),
        BTreeSet::from(["downloads".to_string()]),
        "nothing is written next to the download dir"
    );
    let root_after = tree(d.dirs.root.path())
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
    let (a, b) = tokio::join!(
        start(DaemonDirs::new(), auto_accept()),
        start(DaemonDirs::new(), DaemonOptions::default())
    );
    let addr = listen_addr(&a).await;
    let peak_before = proc_kib(a.pid, "VmPeak");

    // On an established session (the limit is 32 MiB there), then during the handshake (1 MiB).
    for len in [0xFFFF_FFF0u32, 64 << 20] {
        let (mut p, _) = Peer::handshake(addr).await;
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

        let mut p = Peer::connect(addr).await;
        p.write_raw(&len.to_be_bytes()).await;
        let got = p.expect_closed(STEP).await;
        assert!(
            got.iter().all(|f| matches!(f, Body::Error(_))),
            "length {len:#x} instead of Hello: {got:?}"
        );
    }
    if let (Some(before), Some(after)) = (peak_before, proc_kib(a.pid, "VmPeak")) {
        // A 4 GiB buffer (even a lazily zeroed one) would show in the address space.
        assert!(
            after < before + (1 << 20),
            "p2pd's peak virtual memory grew from {before} KiB to {after} KiB"
        );
    }

    // Still serving: status, and a normal transfer from another real daemon.
    assert_status_answers(&a);
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("after-abuse.txt");
    std::fs::write(&src, b"still here\n").unwrap();
    let mut bc = control(&b).await;
    let id = bc
        .send(pb::SendRequest {
            paths: vec![src.display().to_string()],
            peer: addr.to_string(),
            options: None,
        })
        .await
        .expect("Send")
        .into_inner()
        .transfer_id;
    let mut stream = bc
        .watch_transfers(pb::WatchTransfersRequest {
            ids: vec![id.clone()],
            until_done: true,
        })
        .await
        .expect("WatchTransfers")
        .into_inner();
    let last = tokio::time::timeout(Duration::from_secs(15), async {
        let mut last = None;
        while let Some(ev) = stream.message().await.expect("watch stream") {
            last = ev.transfer;
        }
        last
    })
    .await
    .expect("transfer did not end in time")
    .expect("at least one event");
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
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;

    // Silent clients: one sends nothing, one stops in the middle of a frame. Both must be
    // dropped by the handshake timeout (10 s), and must not block anyone else meanwhile.
    let silent = |partial: Vec<u8>| {
        tokio::spawn(async move {
            let mut p = Peer::connect(addr).await;
            p.write_raw(&partial).await;
            let started = Instant::now();
            let got = p.expect_closed(Duration::from_secs(15)).await;
            (started.elapsed(), got)
        })
    };
    let quiet = silent(Vec::new());
    let half = silent({
        let mut v = 100u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0x0a; 10]);
        v
    });

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
        let mut p = Peer::connect(addr).await;
        p.write_raw(bytes).await;
        let got = p.expect_closed(STEP).await;
        assert!(
            got.iter().all(|f| matches!(f, Body::Error(_))),
            "{what}: {got:?}"
        );
    }
    // A hello, then garbage in place of the Config.
    let mut p = Peer::connect(addr).await;
    p.send(Body::Hello(hello(PROTOCOL_VERSION))).await;
    assert!(matches!(p.recv().await, Body::HelloAck(_)));
    p.write_raw(&[0, 0, 0, 3, 0xde, 0xad, 0xbe]).await;
    p.expect_closed(STEP).await;

    // While the silent ones hang on, a real peer still gets through.
    let (mut p, _) = Peer::handshake(addr).await;
    assert_status_answers(&d);

    for (what, h) in [("silent", quiet), ("half a frame", half)] {
        let (elapsed, got) = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("silent client task")
            .expect("silent client task panicked");
        assert!(
            got.iter().all(|f| matches!(f, Body::Error(_))),
            "{what}: {got:?}"
        );
        eprintln!("{what}: dropped after {elapsed:?}");
    }

    // The earlier good session and the daemon are fine.
    p.send(Body::Ping(wire::Ping { nonce: 3 })).await;
    match p.recv().await {
        Body::Pong(pong) => assert_eq!(pong.nonce, 3),
        other => panic!("expected Pong, got {other:?}"),
    }
    raw_send_file(&mut p, "after-garbage", "ok.txt", b"fine\n").await;
    assert_eq!(
        std::fs::read(d.dirs.download_dir.join("ok.txt")).unwrap(),
        b"fine\n"
    );
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_answered_with_an_error() {
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;
    let mut p = Peer::connect(addr).await;
    p.send(Body::Hello(hello(999))).await;
    let got = p.expect_closed(STEP).await;
    match got.as_slice() {
        [Body::Error(e)] => {
            assert_eq!(e.code, wire::ErrorCode::VersionMismatch as i32, "{e:?}");
            assert!(
                e.message.contains("version") && e.message.contains("999"),
                "the message names the version: {:?}",
                e.message
            );
        }
        other => panic!("expected exactly one Error frame, then EOF; got {other:?}"),
    }
    // Still serving.
    let _ = Peer::handshake(addr).await;
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
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr).await;

    let size = CHUNK as usize + 100;
    let data = pseudo_random(size, 99);
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
        let id = format!("bad-{n}-{bad:?}");
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
        assert_eq!(part_files(&dl).len(), 1, "{bad:?}: {:?}", tree(&dl));

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
        let t = transfer_final(&d, &id).await;
        assert_eq!(t.state, pb::TransferState::Failed as i32, "{bad:?}: {t:?}");
        assert!(!t.error.is_empty(), "{bad:?}: no error recorded");
        eprintln!("{bad:?}: {told:?}; transfer error: {}", t.error);

        assert!(
            !dl.join(&name).exists(),
            "{bad:?}: a file appeared under the final name"
        );
        assert_no_part_files(&dl, &format!("{bad:?}")).await;
    }
    assert_eq!(tree(&dl), BTreeSet::new(), "the download dir is empty");

    // The session and the daemon keep serving.
    raw_send_file(&mut p, "after-bad-chunks", "good.bin", &data).await;
    assert!(std::fs::read(dl.join("good.bin")).unwrap() == data);
    assert_status_answers(&d);
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
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;
    let (mut p, agreed) = Peer::handshake_with(
        addr,
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
    let mut info = offer("ooo-too-much", &["big.bin"], &[("big.bin", size)], &[]);
    info.chunk_size = BIG;
    info.window = 64;
    p.send(Body::TransferInfo(info)).await;
    assert!(
        matches!(p.decision("ooo-too-much").await, Body::Reject(_)),
        "1 GiB in flight is refused"
    );
    let mut info = offer("ooo-memory", &["big.bin"], &[("big.bin", size)], &[]);
    info.chunk_size = BIG;
    info.window = 8;
    p.send(Body::TransferInfo(info)).await;
    assert!(matches!(p.decision("ooo-memory").await, Body::Ready(_)));

    let data = Bytes::from(zstd_zeros(BIG as usize));
    let before = proc_kib(d.pid, "VmRSS").expect("VmRSS");
    for i in 1..=SENT {
        p.send(Body::Chunk(wire::Chunk {
            transfer_id: "ooo-memory".into(),
            file_index: 0,
            chunk_index: i,
            flags: wire::ChunkFlag::Compressed as i32 as u32,
            crc32: crc32fast::hash(&data),
            data: data.clone(),
        }))
        .await;
    }
    // Every chunk acknowledged, or the transfer given up.
    let mut acks = 0;
    while acks < SENT {
        match p.try_recv(Duration::from_secs(20)).await {
            Ok(Body::ChunkAck(_)) => acks += 1,
            Ok(Body::Cancel(_) | Body::Error(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let after = proc_kib(d.pid, "VmRSS").expect("VmRSS");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 256,
        "p2pd's resident memory grew by {grown_mib} MiB for {SENT} chunks of {} bytes on the wire \
         ({acks} acknowledged)",
        data.len()
    );
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_real_peers() {
    let a = start(DaemonDirs::new(), auto_accept()).await;
    let b = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&a).await;
    // 70 silent connections from another loopback address hold handshake slots until they time
    // out; the listener must keep accepting, and a peer from elsewhere must get through.
    let mut idle = Vec::new();
    for _ in 0..70 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr)).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 60, "opened {} idle connections", idle.len());
    let started = std::time::Instant::now();
    let mut c = p2p_tests::api::client(&b).await;
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        c.connect(p2p_proto::control::v1::ConnectRequest {
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
    assert_eq!(s.into_inner().peer_address, addr.to_string());
    drop(idle);
}
