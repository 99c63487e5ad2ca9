//! Two real daemons talk through a TCP proxy in the test that flips a byte inside a chunk's
//! payload. The receiver's CRC check must catch it and the sender must re-send the chunk, so
//! the file still arrives intact; if every copy of a chunk is corrupted, the transfer fails
//! with an error naming the chunk and nothing appears under the final name.
//!
//! The proxy parses the A→B direction frame by frame (4-byte big-endian length, then a
//! `p2p.wire.v1.Frame`), forwards every frame byte-exact except the targeted chunk, which it
//! decodes, alters and re-encodes with the same length. B→A is copied untouched. It listens
//! on 127.0.0.1 only, and every task it starts is aborted when it is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use p2p_proto::wire::v1::{Frame, frame::Body};
use p2p_tests::{Daemon, DaemonDirs, DaemonOptions};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;

const STEP: Duration = Duration::from_secs(5);
/// The chunk the proxy corrupts (of file #0).
const TARGET_CHUNK: u64 = 2;
/// Largest frame the proxy relays; anything above ends the relay.
const PROXY_MAX_FRAME: usize = 64 << 20;
const FILE_SIZE: usize = 5 << 20;

// ---------------------------------------------------------------------------------------
// The proxy

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corrupt {
    /// Only the first copy of the target chunk.
    Once,
    /// Every copy of the target chunk, re-sends included.
    Every,
}

struct Proxy {
    addr: SocketAddr,
    /// How many frames were altered.
    flipped: Arc<AtomicU32>,
    /// How many connections were relayed.
    connections: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every relay.
        self.task.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_proxy(target: SocketAddr, mode: Corrupt) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicU32::new(0));
    let connections = Arc::new(AtomicU32::new(0));
    let task = {
        let flipped = flipped.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::Relaxed);
                relays.spawn(relay(inbound, target, mode, flipped.clone()));
                // Reap finished relays so the set does not grow.
                while relays.try_join_next().is_some() {}
            }
        })
    };
    Proxy {
        addr,
        flipped,
        connections,
        task,
    }
}

async fn relay(inbound: TcpStream, target: SocketAddr, mode: Corrupt, flipped: Arc<AtomicU32>) {
    let Ok(Ok(outbound)) = tokio::time::timeout(STEP, TcpStream::connect(target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut a_rd, mut a_wr) = inbound.into_split();
    let (mut b_rd, mut b_wr) = outbound.into_split();
    // B → A: untouched.
    let mut back = AbortOnDrop(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut b_rd, &mut a_wr).await;
        let _ = a_wr.shutdown().await;
    }));
    // A → B: frame by frame.
    loop {
        let mut len = [0u8; 4];
        if a_rd.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > PROXY_MAX_FRAME {
            break;
        }
        let mut buf = vec![0u8; 4 + n];
        buf[..4].copy_from_slice(&len);
        if a_rd.read_exact(&mut buf[4..]).await.is_err() {
            break;
        }
        if let Some(altered) = corrupt(&buf[4..], mode, &flipped) {
            assert_eq!(altered.len(), n, "a flipped byte keeps the frame's length");
            buf[4..].copy_from_slice(&altered);
        }
        if b_wr.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = b_wr.shutdown().await;
    // Let B's last frames reach A, but not for ever.
    let _ = tokio::time::timeout(STEP, &mut back.0).await;
}

/// The altered frame, if this is the target chunk and it is to be corrupted.
fn corrupt(frame: &[u8], mode: Corrupt, flipped: &AtomicU32) -> Option<Vec<u8>> {
    let mut f = Frame::decode(frame).ok()?;
    let Some(Body::Chunk(c)) = f.body.as_mut() else {
        return None;
    };
    if c.file_index != 0 || c.chunk_index != TARGET_CHUNK || c.data.is_empty() {
        return None;
    }
    if mode == Corrupt::Once && flipped.load(Ordering::Relaxed) > 0 {
        return None;
    }
    let mut data = c.data.to_vec();
    let i = data.len() / 2;
    data[i] ^= 0x5a;
    c.data = data.into();
    flipped.fetch_add(1, Ordering::Relaxed);
    Some(f.encode_to_vec())
}

// ---------------------------------------------------------------------------------------
// Daemons

async fn start(opts: DaemonOptions) -> Daemon {
    tokio::task::spawn_blocking(move || Daemon::start_with(DaemonDirs::new(), opts))
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

async fn status(d: &Daemon) -> pb::GetStatusResponse {
    control(d)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

/// Starts A (sender) and B (receiver, `--accept auto`) and a proxy to B.
async fn setup(mode: Corrupt) -> (Daemon, Daemon, Proxy) {
    let (a, b) = tokio::join!(
        start(DaemonOptions::default()),
        start(DaemonOptions {
            args: vec!["--accept".into(), "auto".into()],
            ..Default::default()
        })
    );
    let b_addr: SocketAddr = status(&b).await.listen_address.parse().unwrap();
    let proxy = start_proxy(b_addr, mode).await;
    (a, b, proxy)
}

fn random_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Sends `path` from `a` to `peer` with 1 MiB chunks and follows it to its end.
async fn send_and_wait(a: &Daemon, path: &Path, peer: SocketAddr) -> pb::Transfer {
    let mut c = control(a).await;
    let id = c
        .send(pb::SendRequest {
            paths: vec![path.display().to_string()],
            peer: peer.to_string(),
            options: Some(pb::SendOptions {
                chunk_size: 1 << 20,
                ..Default::default()
            }),
        })
        .await
        .expect("Send")
        .into_inner()
        .transfer_id;
    let mut stream = c
        .watch_transfers(pb::WatchTransfersRequest {
            ids: vec![id],
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
    .expect("the transfer did not end within 20 s")
    .expect("at least one event")
}

/// B's receiving transfers, polled until all have ended (bounded).
async fn receiver_transfers(b: &Daemon) -> Vec<pb::Transfer> {
    let deadline = Instant::now() + STEP;
    loop {
        let list = control(b)
            .await
            .list_transfers(pb::ListTransfersRequest {})
            .await
            .expect("ListTransfers")
            .into_inner()
            .transfers;
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

fn part_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".p2pd-part"))
                .collect()
        })
        .unwrap_or_default()
}

/// Both daemons see one ordinary session through the proxy.
async fn assert_normal_sessions(a: &Daemon, b: &Daemon, proxy: &Proxy) {
    let (a_id, b_id) = (status(a).await.device_id, status(b).await.device_id);
    let a_sessions = control(a)
        .await
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let b_sessions = control(b)
        .await
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(a_sessions.len(), 1, "{a_sessions:?}");
    assert_eq!(a_sessions[0].peer_id, b_id);
    assert!(a_sessions[0].outgoing);
    assert_eq!(a_sessions[0].remote_address, proxy.addr.to_string());
    assert_eq!(b_sessions.len(), 1, "{b_sessions:?}");
    assert_eq!(b_sessions[0].peer_id, a_id);
    assert!(!b_sessions[0].outgoing);
    assert_eq!(proxy.connections.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_chunk_is_detected_and_resent() {
    let (a, b, proxy) = setup(Corrupt::Once).await;
    let src = tempfile::tempdir().unwrap();
    let (path, data) = random_file(src.path(), "random.bin", FILE_SIZE);

    let t = send_and_wait(&a, &path, proxy.addr).await;
    assert_eq!(
        t.state,
        pb::TransferState::Completed as i32,
        "{t:?}\n--- sender ---\n{}\n--- receiver ---\n{}",
        a.stderr(),
        b.stderr()
    );
    assert_eq!(
        proxy.flipped.load(Ordering::Relaxed),
        1,
        "the proxy altered one frame"
    );
    assert!(t.chunks_resent >= 1, "the corrupt chunk was re-sent: {t:?}");

    let got = std::fs::read(b.dirs.download_dir.join("random.bin")).expect("received file");
    assert_eq!(got.len(), data.len());
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&data),
        "received file's SHA-256"
    );
    let theirs = receiver_transfers(&b).await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0].state, pb::TransferState::Completed as i32);
    assert!(part_files(&b.dirs.download_dir).is_empty());
    assert_normal_sessions(&a, &b, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_every_time_fails_the_transfer() {
    let (a, b, proxy) = setup(Corrupt::Every).await;
    let src = tempfile::tempdir().unwrap();
    let (path, _) = random_file(src.path(), "random.bin", FILE_SIZE);

    let t = send_and_wait(&a, &path, proxy.addr).await;
    assert_eq!(t.state, pb::TransferState::Failed as i32, "{t:?}");
    assert!(
        t.error.contains(&format!("chunk {TARGET_CHUNK}")),
        "the error names the chunk: {:?}",
        t.error
    );
    let flipped = proxy.flipped.load(Ordering::Relaxed);
    assert!(flipped >= 2, "every copy was corrupted ({flipped})");
    assert_eq!(u64::from(flipped), t.chunks_resent + 1, "{t:?}");

    // The receiver ended too, and nothing is left under the final name or as a temp file.
    let theirs = receiver_transfers(&b).await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert!(
        matches!(
            pb::TransferState::try_from(theirs[0].state).unwrap_or_default(),
            pb::TransferState::Failed | pb::TransferState::Cancelled
        ),
        "{:?}",
        theirs[0]
    );
    let dl = &b.dirs.download_dir;
    assert!(
        !dl.join("random.bin").exists(),
        "no file under the final name"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !part_files(dl).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(part_files(dl), Vec::<String>::new(), "temporary files left");
    assert_normal_sessions(&a, &b, &proxy).await;
}
