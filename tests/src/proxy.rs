//! A TCP proxy for fault tests, listening on 127.0.0.1 only: it relays every connection to
//! a target and can flip one byte, record what passes, cut every connection, stall, or delay
//! each piece it forwards. Every task it starts is aborted when it is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long the proxy waits for the target to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does besides relaying.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// Flip the byte at this offset of the client→target stream of the first connection.
    pub flip_once_at: Option<u64>,
    /// Record both directions of every connection.
    pub record: bool,
    /// Wait this long before forwarding each piece read (either direction).
    pub delay: Duration,
}

/// What a recording proxy saw, per direction, all connections appended.
#[derive(Debug, Default)]
pub struct Recording {
    /// Client → target.
    pub a_to_b: Vec<u8>,
    /// Target → client.
    pub b_to_a: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    flipped: AtomicU32,
    connections: AtomicU32,
    forwarded: AtomicU64,
    stalled: AtomicBool,
    recording: Mutex<Recording>,
}

/// A running proxy.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    // Bumped by `cut`: every relay started before ends.
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every relay.
        self.task.abort();
    }
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr, opts: ProxyOptions) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let (generation, _) = watch::channel(0u64);
        let task = {
            let shared = shared.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                let mut relays = JoinSet::new();
                while let Ok((inbound, _)) = listener.accept().await {
                    let n = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    let flip_at = opts.flip_once_at.filter(|_| n == 1);
                    relays.spawn(relay(
                        inbound,
                        target,
                        flip_at,
                        opts,
                        shared.clone(),
                        generation.subscribe(),
                    ));
                    // Reap finished relays so the set does not grow.
                    while relays.try_join_next().is_some() {}
                }
            })
        };
        Proxy {
            addr,
            shared,
            generation,
            task,
        }
    }

    /// Closes every connection relayed so far (both ends see it close); new ones are relayed
    /// as before.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While stalled, nothing is forwarded; connections stay open.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Bytes forwarded client → target, all connections.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Bytes altered so far.
    pub fn flipped(&self) -> u32 {
        self.shared.flipped.load(Ordering::Relaxed)
    }

    /// What a recording proxy saw.
    pub fn recording(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.shared.recording.lock().expect("recording lock")
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    flip_at: Option<u64>,
    opts: ProxyOptions,
    shared: Arc<Shared>,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(Ok(outbound)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (a_rd, a_wr) = inbound.into_split();
    let (b_rd, b_wr) = outbound.into_split();
    let a_to_b = pump(a_rd, b_wr, flip_at, opts, &shared, true);
    let b_to_a = pump(b_rd, a_wr, None, opts, &shared, false);
    // A cut drops both halves of both sockets: each end sees its connection close.
    tokio::select! {
        _ = async { tokio::join!(a_to_b, b_to_a) } => {}
        _ = generation.changed() => {}
    }
}

/// Copies `from` to `to` until either ends.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    flip_at: Option<u64>,
    opts: ProxyOptions,
    shared: &Shared,
    a_to_b: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip_at {
            if (offset..offset + n as u64).contains(&at) {
                buf[(at - offset) as usize] ^= 0x5a;
                shared.flipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if opts.record {
            let mut r = shared.recording.lock().expect("recording lock");
            let dir = if a_to_b { &mut r.a_to_b } else { &mut r.b_to_a };
            dir.extend_from_slice(&buf[..n]);
        }
        if !opts.delay.is_zero() {
            tokio::time::sleep(opts.delay).await;
        }
        while shared.stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        offset += n as u64;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if a_to_b {
            shared.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}
