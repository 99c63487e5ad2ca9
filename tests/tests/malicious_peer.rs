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
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p_core::net::identity::Identity;
use p2p_core::net::tls;
use p2p_core::net::wire::{self as codec, PROTOCOL_VERSION, WireError, caps};
use p2p_proto::control::v1 as pb;
use p2p_proto::wire::v1::{self as wire, frame::Body};
use p2p_tests::api::{control, incoming, status, wait_offer};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for one expected frame (or state). Generous: some come only after the
/// daemon synced files, which a loaded CI disk may take seconds for; waits end as soon as
/// the frame is there.
const STEP: Duration = Duration::from_secs(20);
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

async fn listen_addr(d: &Daemon) -> SocketAddr {
    status(d)
        .await
        .listen_address
        .parse()
        .expect("listen_address is HOST:PORT")
}

/// Makes `d` trust the device `id` (with the daemon's default receiving rule).
async fn trust(d: &Daemon, id: &str) {
    let dev = control(d)
        .await
        .trust_device(pb::TrustDeviceRequest {
            id: id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("TrustDevice")
        .into_inner();
    assert!(dev.trusted && dev.id == id, "{dev:?}");
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

fn is_final(t: &pb::Transfer) -> bool {
    matches!(
        pb::TransferState::try_from(t.state).unwrap_or_default(),
        pb::TransferState::Completed
            | pb::TransferState::Failed
            | pb::TransferState::Cancelled
            | pb::TransferState::Rejected
    )
}

/// Polls the transfer until it reaches a final state (bounded by `within`).
async fn transfer_final_within(d: &Daemon, id: &str, within: Duration) -> pb::Transfer {
    let deadline = Instant::now() + within;
    loop {
        let t = transfer(d, id).await;
        if is_final(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "transfer {id} did not end: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn transfer_final(d: &Daemon, id: &str) -> pb::Transfer {
    transfer_final_within(d, id, STEP).await
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
// The test's own device

/// Mallory: a device identity (key and certificate) in a temporary state dir.
struct Mallory {
    identity: Identity,
    _dir: tempfile::TempDir,
}

impl Mallory {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity::load_or_create(dir.path()).expect("test identity");
        Mallory {
            identity,
            _dir: dir,
        }
    }

    fn id(&self) -> String {
        self.identity.device_id.to_string()
    }

    fn hello(&self, version: u32) -> wire::Hello {
        wire::Hello {
            device_id: self.id(),
            name: "mallory".into(),
            protocol_version: version,
            capabilities: caps::SUPPORTED,
            listen_port: 1,
            software_version: "test-peer".into(),
            ..Default::default()
        }
    }
}

/// A daemon with `--accept auto` that trusts mallory (so `auto` applies to its offers).
async fn daemon_trusting(m: &Mallory, dirs: DaemonDirs) -> (Daemon, SocketAddr) {
    let d = start(dirs, auto_accept()).await;
    trust(&d, &m.id()).await;
    let addr = listen_addr(&d).await;
    (d, addr)
}

// ---------------------------------------------------------------------------------------
// The hand-written peer

/// A byte stream: plain TCP, or TLS over it, either side.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Peer {
    stream: Box<dyn Io>,
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

impl Peer {
    /// Plain TCP, no TLS (for what a device that does not speak TLS would send).
    async fn plain(addr: SocketAddr) -> Self {
        Peer {
            stream: Box::new(tcp(addr).await),
        }
    }

    /// TCP and a TLS 1.3 handshake with mallory's identity; nothing of the wire protocol yet.
    async fn tls(addr: SocketAddr, m: &Mallory) -> Self {
        Peer::tls_as(addr, &m.identity).await
    }

    async fn tls_as(addr: SocketAddr, identity: &Identity) -> Self {
        let connector = tokio_rustls::TlsConnector::from(
            tls::client_config(identity, None).expect("client config"),
        );
        let stream =
            tokio::time::timeout(STEP, connector.connect(tls::server_name(), tcp(addr).await))
                .await
                .expect("TLS handshake timed out")
                .expect("TLS handshake");
        Peer {
            stream: Box::new(stream),
        }
    }

    /// Connects and runs the initiator's handshake; returns the agreed limits.
    async fn handshake(addr: SocketAddr, m: &Mallory) -> (Self, wire::Config) {
        let proposal = wire::Config {
            chunk_size: 1 << 20,
            compress: true,
            level: 3,
            windowed: true,
            window_size: 64,
        };
        let (p, agreed) = Peer::handshake_with(addr, m, proposal).await;
        assert_eq!(agreed, proposal);
        (p, agreed)
    }

    /// The handshake with another Config proposal.
    async fn handshake_with(
        addr: SocketAddr,
        m: &Mallory,
        proposal: wire::Config,
    ) -> (Self, wire::Config) {
        let mut p = Peer::tls(addr, m).await;
        p.send(Body::Hello(m.hello(PROTOCOL_VERSION))).await;
        let ack = match p.recv().await {
            Body::HelloAck(a) => a,
            other => panic!("expected HelloAck, got {other:?}"),
        };
        assert_eq!(ack.protocol_version, PROTOCOL_VERSION);
        assert!(
            ack.device_id.parse::<p2p_core::DeviceId>().is_ok(),
            "{ack:?}"
        );
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
        tokio::time::timeout(STEP, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .expect("write timed out")
        .expect("write");
    }

    /// The next frame that is not a Ping (Pings are answered), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Result<Body, WireError>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r =
                tokio::time::timeout_at(deadline, codec::read_frame(&mut self.stream, READ_MAX))
                    .await
                    .ok()?;
            match r {
                Ok(Body::Ping(p)) => self.send(Body::Pong(wire::Pong { nonce: p.nonce })).await,
                other => return Some(other),
            }
        }
    }

    async fn try_recv(&mut self, within: Duration) -> Result<Body, WireError> {
        self.next(within)
            .await
            .unwrap_or_else(|| panic!("no frame from the daemon within {within:?}"))
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

    /// Reads raw bytes until the daemon closes the connection (a plain TCP peer); panics if it
    /// stays open for `within`.
    async fn raw_until_closed(&mut self, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let r = tokio::time::timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "the daemon kept a plain TCP connection open for {within:?}; it sent {got:?}"
        );
        got
    }

    /// Waits for the daemon's decision on an offer (a resumable Cancel means "try again").
    async fn decision(&mut self, id: &str) -> Body {
        loop {
            match self.recv().await {
                b @ (Body::Ready(_) | Body::Reject(_) | Body::Cancel(_)) => {
                    let got = match &b {
                        Body::Ready(r) => &r.transfer_id,
                        Body::Reject(r) => &r.transfer_id,
                        Body::Cancel(c) => &c.transfer_id,
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

/// What a plain TCP client gets for bytes that are not a TLS handshake: nothing, or a TLS
/// alert record (content type 21) — never a frame of the wire protocol.
fn assert_tls_refusal(what: &str, got: &[u8]) {
    assert!(
        got.is_empty() || (got[0] == 0x15 && got.len() >= 7),
        "{what}: expected nothing or a TLS alert, got {got:?}"
    );
}

/// A transfer id (a UUID, as the receiver requires) derived from a readable label.
fn tid(label: &str) -> String {
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
        ..Default::default()
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
        ..Default::default()
    })
}

fn file_done(id: &str, file_index: u32, sha256: &[u8]) -> Body {
    Body::FileDone(wire::FileDone {
        transfer_id: id.into(),
        file_index,
        sha256: Bytes::copy_from_slice(sha256),
    })
}

/// Receives one ChunkAck for `id` and checks its chunk and status.
async fn expect_ack(p: &mut Peer, id: &str, chunk_index: u64, status: wire::ChunkStatus) {
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

async fn expect_ack_ok(p: &mut Peer, id: &str, chunk_index: u64) {
    expect_ack(p, id, chunk_index, wire::ChunkStatus::Ok).await;
}

/// FileDone for file #0, then Complete, each answered as it must be.
async fn finish_file(p: &mut Peer, id: &str, data: &[u8]) {
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
async fn raw_send_accepted(p: &mut Peer, id: &str, data: &[u8]) {
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
async fn send_rest(p: &mut Peer, id: &str, data: &[u8], first: usize) {
    for (i, c) in data.chunks(CHUNK as usize).enumerate().skip(first) {
        p.send(chunk(id, 0, i as u64, c)).await;
        expect_ack_ok(p, id, i as u64).await;
    }
    finish_file(p, id, data).await;
}

fn one_file_offer(id: &str, name: &str, data: &[u8]) -> Body {
    Body::TransferInfo(offer(id, &[name], &[(name, data.len() as u64)], &[]))
}

/// Sends one file named `name` with `data` through the raw protocol, in order, and checks
/// every answer up to CompleteAck.
async fn raw_send_file(p: &mut Peer, id: &str, name: &str, data: &[u8]) {
    p.send(one_file_offer(id, name, data)).await;
    let decision = p.decision(id).await;
    assert!(
        matches!(decision, Body::Ready(_)),
        "a valid offer is accepted: {decision:?}"
    );
    raw_send_accepted(p, id, data).await;
}

/// Sends `path` from `from` to `peer` over the control API and waits for the end (bounded).
async fn send_and_wait(
    from: &Daemon,
    path: &Path,
    peer: &str,
    options: Option<pb::SendOptions>,
) -> pb::Transfer {
    let mut c = control(from).await;
    let id = c
        .send(pb::SendRequest {
            paths: vec![path.display().to_string()],
            peer: peer.to_owned(),
            options,
        })
        .await
        .expect("Send")
        .into_inner()
        .transfer_id;
    let mut stream = c
        .watch_transfers(pb::WatchTransfersRequest {
            ids: vec![id.clone()],
            until_done: true,
        })
        .await
        .expect("WatchTransfers")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut last = None;
        while let Some(ev) = stream.message().await.expect("watch stream") {
            last = ev.transfer;
        }
        last
    })
    .await
    .expect("transfer did not end in time")
    .expect("at least one event")
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_through_the_raw_protocol() {
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let (mut p, _) = Peer::handshake(addr, &m).await;

    // Three chunks, the last one short.
    let data = pseudo_random(2 * CHUNK as usize + 1808, 7);
    raw_send_file(&mut p, &tid("raw-happy-1"), "hello.bin", &data).await;
    let got = std::fs::read(d.dirs.download_dir.join("hello.bin")).expect("file in place");
    assert!(got == data, "content differs");
    let t = transfer_final(&d, &tid("raw-happy-1")).await;
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
    let sessions = control(&d)
        .await
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].peer_id, m.id());
    assert!(sessions[0].trusted, "{sessions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_offer_waits_even_with_accept_auto() {
    let m = Mallory::new();
    // `--accept auto`, but mallory is not trusted.
    let d = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&d).await;
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let id = &tid("untrusted-1");
    let data = pseudo_random(CHUNK as usize + 10, 3);
    p.send(one_file_offer(id, "waits.bin", &data)).await;
    assert!(
        p.next(Duration::from_millis(1500)).await.is_none(),
        "an untrusted device's offer got an answer without a decision"
    );
    // Listed once validated and recorded (bounded wait; the silence above is no measure).
    assert_eq!(wait_offer(&d, STEP).await.transfer_id, *id);
    let offers = control(&d)
        .await
        .list_incoming(pb::ListIncomingRequest {})
        .await
        .expect("ListIncoming")
        .into_inner()
        .offers;
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].transfer_id, *id);
    assert_eq!(offers[0].peer_id, m.id());
    assert!(!offers[0].peer_trusted, "{offers:?}");
    let t = transfer(&d, id).await;
    assert_eq!(t.state, pb::TransferState::WaitingAccept as i32, "{t:?}");
    assert!(!d.dirs.download_dir.join("waits.bin").exists());
    let pending = control(&d)
        .await
        .list_pending(pb::ListPendingRequest {})
        .await
        .expect("ListPending")
        .into_inner()
        .devices;
    assert!(
        pending.iter().any(|dev| dev.id == m.id() && !dev.trusted),
        "mallory is a pending device: {pending:?}"
    );

    // An explicit accept lets it through.
    control(&d)
        .await
        .accept_incoming(pb::AcceptIncomingRequest {
            transfer_id: id.clone(),
            destination: String::new(),
        })
        .await
        .expect("AcceptIncoming");
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    raw_send_accepted(&mut p, id, &data).await;
    assert!(std::fs::read(d.dirs.download_dir.join("waits.bin")).unwrap() == data);

    // Once trusted, `--accept auto` applies on the same session.
    trust(&d, &m.id()).await;
    raw_send_file(&mut p, &tid("trusted-now"), "auto.bin", &data).await;
    assert!(std::fs::read(d.dirs.download_dir.join("auto.bin")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_manifests_are_rejected_and_nothing_is_written() {
    // The download dir sits one level below a directory the test owns, so that anything
    // escaping by `..` lands where the test looks.
    let m = Mallory::new();
    let mut dirs = DaemonDirs::new();
    dirs.download_dir = dirs.root.path().join("jail/downloads");
    std::fs::create_dir_all(&dirs.download_dir).unwrap();
    let jail = dirs.root.path().join("jail");
    let (d, addr) = daemon_trusting(&m, dirs).await;
    let root_before = tree(d.dirs.root.path())
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

        let t = transfer_final(&d, id).await;
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
    let m = Mallory::new();
    let ((a, addr), b) = tokio::join!(
        daemon_trusting(&m, DaemonDirs::new()),
        start(DaemonDirs::new(), DaemonOptions::default())
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
    trust(&a, &status(&b).await.device_id).await;
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("after-abuse.txt");
    std::fs::write(&src, b"still here\n").unwrap();
    let last = send_and_wait(&b, &src, &addr.to_string(), None).await;
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
    let m = Mallory::new();
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
        ("random bytes", pseudo_random(300, 5)),
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
    let m = Mallory::new();
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
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let d_id = status(&d).await.device_id;
    // Another real, trusted device id; the daemon's own; and something that is no id at all.
    let other = Mallory::new();
    trust(&d, &other.id()).await;
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
    let sessions = control(&d)
        .await
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
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
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;

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
    raw_send_file(&mut p, &tid("after-bad-chunks"), "good.bin", &data).await;
    assert!(std::fs::read(dl.join("good.bin")).unwrap() == data);
    assert_status_answers(&d);
}

/// Polls the transfer until it is `Interrupted` (bounded).
async fn transfer_interrupted(d: &Daemon, id: &str) -> pb::Transfer {
    let deadline = Instant::now() + STEP;
    loop {
        let t = transfer(d, id).await;
        if t.state == pb::TransferState::Interrupted as i32 {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "transfer {id} was not interrupted: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_mid_transfer_can_resume_what_it_started() {
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = &tid("vanish");
    let data = pseudo_random(3 * CHUNK as usize + 5, 17);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK as usize).collect();
    p.send(one_file_offer(id, "half.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    p.send(chunk(id, 0, 0, chunks[0])).await;
    expect_ack_ok(&mut p, id, 0).await;
    assert_eq!(part_files(&dl).len(), 1, "{:?}", tree(&dl));
    // Gone without a word (no Cancel, no TLS close_notify): the receiver keeps what it has,
    // under the hidden temporary name only.
    drop(p);
    let t = transfer_interrupted(&d, id).await;
    assert!(t.error.contains("session"), "{t:?}");
    assert!(!dl.join("half.bin").exists());
    assert_eq!(part_files(&dl).len(), 1, "{:?}", tree(&dl));
    assert_status_answers(&d);

    // Back with a resume offer that does not match what was accepted: refused.
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let other = pseudo_random(data.len() + 1, 18);
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
    let t = transfer_final(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.resumed_bytes, u64::from(CHUNK), "{t:?}");
    assert!(std::fs::read(dl.join("half.bin")).unwrap() == data);
    assert_no_part_files(&dl, "resumed transfer").await;

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
    assert!(!dl.join("half (1).bin").exists(), "{:?}", tree(&dl));

    // The same after the receiver restarted: history remembers.
    drop(p);
    let dirs = tokio::task::spawn_blocking(move || d.into_dirs())
        .await
        .unwrap();
    let (d, addr) = daemon_trusting(&m, dirs).await;
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
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;
    let id = &tid("stopped");
    let data = pseudo_random(3 * CHUNK as usize + 5, 19);
    let first = &data[..CHUNK as usize];
    p.send(one_file_offer(id, "kept.bin", &data)).await;
    assert!(matches!(p.decision(id).await, Body::Ready(_)));
    p.send(chunk(id, 0, 0, first)).await;
    expect_ack_ok(&mut p, id, 0).await;
    drop(p);
    transfer_interrupted(&d, id).await;

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
    let t = transfer(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Interrupted as i32, "{t:?}");
    assert_eq!(part_files(&dl).len(), 1, "{:?}", tree(&dl));

    p.send(cancel(false, "changed my mind")).await;
    let t = transfer_final(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Cancelled as i32, "{t:?}");
    assert!(t.error.contains("changed my mind"), "{t:?}");
    assert_no_part_files(&dl, "cancelled by the sender").await;
    assert!(!dl.join("kept.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resume_replaces_the_first_attempt_after_it_stopped() {
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let id = &tid("twice");
    let data = pseudo_random(4 * CHUNK as usize, 23);
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
    transfer_interrupted(&d, id).await;

    // The newcomer, trying again, takes over from the chunk the first one left.
    q.send(resume()).await;
    let have = match q.decision(id).await {
        Body::Ready(r) => r.have,
        other => panic!("expected Ready, got {other:?}"),
    };
    assert_eq!(have.len(), 1, "{have:?}");
    send_rest(&mut q, id, &data, 1).await;
    let t = transfer_final(&d, id).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert!(std::fs::read(dl.join("twice.bin")).unwrap() == data);
    assert_no_part_files(&dl, "replaced attempt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_with_a_wrong_crc_is_asked_for_again() {
    // TLS makes corruption on the wire a connection error, so the receiver's CRC path can only
    // be reached by a peer that sends a wrong CRC32 itself. The receiver answers
    // CRC_MISMATCH, writes nothing of it, holds the chunks after the gap unacknowledged, and
    // takes the re-sent chunk.
    let m = Mallory::new();
    let (d, addr) = daemon_trusting(&m, DaemonDirs::new()).await;
    let dl = d.dirs.download_dir.clone();
    let (mut p, _) = Peer::handshake(addr, &m).await;

    let id = &tid("crc-retry");
    let data = pseudo_random(3 * CHUNK as usize + 77, 11);
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
    let t = transfer(&d, id).await;
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
    let t = transfer_final(&d, id).await;
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
    let m = Mallory::new();
    let a = start(DaemonDirs::new(), DaemonOptions::default()).await;
    let a_id = status(&a).await.device_id;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m_addr = listener.local_addr().unwrap();

    let src = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 * CS + 100, 21);
    let path = src.path().join("to-mallory.bin");
    std::fs::write(&path, &data).unwrap();

    let mallory = {
        let identity = m.identity.clone();
        let a_id = a_id.clone();
        let expected = data.clone();
        tokio::spawn(async move {
            let (mut p, proven) = accept_as_mallory(&listener, &identity).await;
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
    let t = send_and_wait(
        &a,
        &path,
        &format!("{}@{m_addr}", m.id()),
        Some(pb::SendOptions {
            compress: Some(false),
            chunk_size: CS as u32,
            window: 4,
            ..Default::default()
        }),
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
/// Mallory as the listening side: accepts the daemon's connection and TLS; returns the peer
/// and the device id the daemon proved.
async fn accept_as_mallory(listener: &TcpListener, identity: &Identity) -> (Peer, String) {
    let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("the daemon connects")
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(identity).unwrap());
    let stream = tokio::time::timeout(STEP, acceptor.accept(tcp))
        .await
        .expect("TLS accept timed out")
        .expect("TLS accept");
    let proven = tls::peer_id(stream.get_ref().1).unwrap().to_string();
    let p = Peer {
        stream: Box::new(stream),
    };
    (p, proven)
}

/// Answers the daemon's Hello with mallory's HelloAck: the capabilities both have, less
/// `withheld`. Returns the Hello.
async fn hello_as_mallory(
    p: &mut Peer,
    identity: &Identity,
    listen_port: u16,
    withheld: u32,
) -> wire::Hello {
    let hello = match p.recv().await {
        Body::Hello(h) => h,
        other => panic!("expected Hello, got {other:?}"),
    };
    p.send(Body::HelloAck(wire::HelloAck {
        device_id: identity.device_id.to_string(),
        name: "mallory".into(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: hello.capabilities & caps::SUPPORTED & !withheld,
        listen_port: u32::from(listen_port),
        software_version: "test-peer".into(),
        ..Default::default()
    }))
    .await;
    hello
}

#[allow(clippy::too_many_arguments)]
async fn receive_as_mallory(
    p: &mut Peer,
    identity: &Identity,
    sender_id: &str,
    listen_port: u16,
    expected: &[u8],
    cs: usize,
    nack: u64,
    stale_before_ready: bool,
) -> BTreeMap<u64, u32> {
    let hello = hello_as_mallory(p, identity, listen_port, 0).await;
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
    let m = Mallory::new();
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
    let m = Mallory::new();
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
    let t = transfer_final(&d, &id).await;
    if ended == "all placed" {
        assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    } else {
        // Cut off for breaking the protocol: failed here too, not waiting for a resume.
        assert_eq!(t.state, pb::TransferState::Failed as i32, "{t:?}");
        assert!(t.error.contains("in flight"), "{t:?}");
    }
    assert_no_part_files(&d.dirs.download_dir, "small-file flood").await;
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
    let m = Mallory::new();
    let a = start(DaemonDirs::new(), DaemonOptions::default()).await;
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
        let (mut p, _) = accept_as_mallory(&listener, &identity).await;
        let withheld = if small_files_cap {
            0
        } else {
            caps::SMALL_FILES
        };
        hello_as_mallory(&mut p, &identity, m_addr.port(), withheld).await;
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
    let t = send_and_wait(
        &a,
        &folder,
        &format!("{}@{m_addr}", m.id()),
        Some(pb::SendOptions {
            compress: Some(false),
            window: 2,
            ..Default::default()
        }),
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
    let m = Mallory::new();
    let d = start(DaemonDirs::new(), DaemonOptions::default()).await;
    let addr = listen_addr(&d).await;
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
    let t = transfer_final(&d, &id).await;
    assert_eq!(t.state, pb::TransferState::Failed as i32, "{t:?}");
    assert!(incoming(&d).await.is_empty());
    assert!(part_files(&d.dirs.download_dir).is_empty());
    assert!(!d.dirs.download_dir.join("early.bin").exists());
    assert_status_answers(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_real_peers() {
    let a = start(DaemonDirs::new(), auto_accept()).await;
    let b = start(DaemonDirs::new(), auto_accept()).await;
    let addr = listen_addr(&a).await;
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
    let mut c = control(&b).await;
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
    assert_eq!(s.peer_id, status(&a).await.device_id);
    drop(idle);
}
