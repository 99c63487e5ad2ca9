//! Peer sessions: the handshake, and the reader and writer tasks of one connection.
//!
//! A session is symmetric once established: either side may offer transfers, and many
//! transfers in both directions share the connection. Frames for a transfer are routed by
//! transfer id to the task that owns it; a new `TransferInfo` goes to the node. The transport
//! is any `AsyncRead + AsyncWrite`, so a secure channel can wrap it without touching this code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transfer::{MAX_CHUNK, MAX_WINDOW};
use crate::wire::{self as codec, WireError, caps};

/// Time allowed for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a ping is sent.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A session that receives nothing for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a closing session may spend writing what was queued before the close.
const DRAIN_ON_CLOSE: Duration = Duration::from_secs(1);
/// Frames queued for the writer before producers wait.
const WRITE_QUEUE: usize = 256;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Errors of a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or decoding a frame failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Writing failed.
    #[error("cannot write to peer")]
    Write(#[source] std::io::Error),
    /// The handshake took too long.
    #[error("handshake with peer timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer speaks another protocol version.
    #[error("incompatible protocol version: peer speaks {peer}, this p2pd speaks {ours}")]
    VersionMismatch {
        /// The peer's version.
        peer: u32,
        /// Ours.
        ours: u32,
    },
    /// The peer sent something that does not belong at this point.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer reported an error and closed.
    #[error("peer reported an error: {0}")]
    Remote(String),
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// What we tell a peer about ourselves.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    /// Our device id.
    pub device_id: String,
    /// Our name.
    pub name: String,
    /// Our peer listen port.
    pub listen_port: u16,
}

/// What a peer told us about itself.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its device id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Its software version.
    pub version: String,
    /// Where it listens for peers.
    pub listen_addr: SocketAddr,
}

/// A live session.
#[derive(Debug)]
pub struct Session {
    /// Local id of the session.
    pub id: u64,
    /// The peer.
    pub peer: PeerInfo,
    /// The connection's remote address.
    pub remote: SocketAddr,
    /// Whether we connected.
    pub outgoing: bool,
    /// When the handshake finished.
    pub established: SystemTime,
    /// Capabilities both sides have.
    pub caps: u32,
    /// Agreed limits.
    pub limits: wire::Config,
    tx: mpsc::Sender<Bytes>,
    // Frames of a transfer go to the task that owns it; the reader looks the id up per frame.
    routes: Mutex<HashMap<String, mpsc::Sender<Body>>>,
    /// Cancelled when the session ends.
    pub closed: CancellationToken,
    /// Transfers using the session.
    pub active: AtomicU32,
}

impl Session {
    /// Queues a frame for the writer.
    ///
    /// # Errors
    /// [`SessionError::Closed`] if the session ended.
    pub async fn send(&self, body: Body) -> Result<(), SessionError> {
        self.tx
            .send(codec::encode(body))
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// A handle to the writer queue, for blocking producers.
    pub fn writer(&self) -> mpsc::Sender<Bytes> {
        self.tx.clone()
    }

    /// Routes the frames of `transfer_id` to `tx`.
    pub fn route(&self, transfer_id: &str, tx: mpsc::Sender<Body>) {
        self.lock_routes().insert(transfer_id.to_owned(), tx);
    }

    /// Stops routing `transfer_id`.
    pub fn unroute(&self, transfer_id: &str) {
        self.lock_routes().remove(transfer_id);
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Body>>> {
        match self.routes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Closes the session.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// Receives what a session's reader cannot route: new offers, and the end of the session.
pub trait SessionEvents: Send + Sync + 'static {
    /// A peer offers a transfer.
    fn offer(&self, session: Arc<Session>, info: wire::TransferInfo);
    /// The session ended.
    fn ended(&self, session: &Arc<Session>, reason: &str);
}

fn hello(local: &LocalInfo) -> wire::Hello {
    wire::Hello {
        device_id: local.device_id.clone(),
        name: local.name.clone(),
        protocol_version: codec::PROTOCOL_VERSION,
        capabilities: caps::SUPPORTED,
        listen_port: u32::from(local.listen_port),
        software_version: crate::VERSION.to_owned(),
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: Body) -> Result<(), SessionError> {
    w.write_all(&codec::encode(body))
        .await
        .map_err(SessionError::Write)?;
    w.flush().await.map_err(SessionError::Write)
}

fn peer_listen(remote: SocketAddr, port: u32) -> Result<SocketAddr, SessionError> {
    let port = u16::try_from(port)
        .map_err(|_| SessionError::Protocol(format!("listen port {port} out of range")))?;
    Ok(SocketAddr::new(remote.ip(), port))
}

/// Runs the initiator's side of the handshake and starts the session's tasks.
///
/// # Errors
/// [`SessionError`] if the handshake fails or times out.
pub async fn initiate<S>(
    stream: S,
    remote: SocketAddr,
    local: &LocalInfo,
    proposal: wire::Config,
    events: Arc<dyn SessionEvents>,
    parent: &CancellationToken,
) -> Result<Arc<Session>, SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let fut = async {
        write_frame(&mut wr, Body::Hello(hello(local))).await?;
        let ack = match codec::read_frame(&mut rd, codec::HANDSHAKE_MAX_FRAME).await? {
            Body::HelloAck(a) => a,
            Body::Error(e) if e.code == ErrorCode::VersionMismatch as i32 => {
                return Err(SessionError::Remote(e.message));
            }
            Body::Error(e) => return Err(SessionError::Remote(e.message)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected HelloAck, got {}",
                    codec::body_name(&other)
                )));
            }
        };
        if ack.protocol_version != codec::PROTOCOL_VERSION {
            return Err(SessionError::VersionMismatch {
                peer: ack.protocol_version,
                ours: codec::PROTOCOL_VERSION,
            });
        }
        write_frame(&mut wr, Body::Config(proposal)).await?;
        let agreed = match codec::read_frame(&mut rd, codec::HANDSHAKE_MAX_FRAME).await? {
            Body::ConfigAck(c) => c
                .agreed
                .ok_or_else(|| SessionError::Protocol("ConfigAck without values".into()))?,
            Body::Error(e) => return Err(SessionError::Remote(e.message)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected ConfigAck, got {}",
                    codec::body_name(&other)
                )));
            }
        };
        check_agreed(&agreed)?;
        let peer = PeerInfo {
            device_id: ack.device_id,
            name: ack.name,
            version: ack.software_version,
            listen_addr: peer_listen(remote, ack.listen_port)?,
        };
        Ok((peer, ack.capabilities & caps::SUPPORTED, agreed))
    };
    let (peer, caps, limits) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(start(
        rd, wr, peer, remote, true, caps, limits, events, parent,
    ))
}

fn check_agreed(c: &wire::Config) -> Result<(), SessionError> {
    if c.chunk_size < crate::transfer::MIN_CHUNK
        || c.chunk_size > MAX_CHUNK
        || c.window_size == 0
        || c.window_size > MAX_WINDOW
    {
        return Err(SessionError::Protocol(format!(
            "agreed limits out of range (chunk {}, window {})",
            c.chunk_size, c.window_size
        )));
    }
    Ok(())
}

/// Runs the acceptor's side of the handshake and starts the session's tasks.
///
/// # Errors
/// [`SessionError`] if the handshake fails or times out; a version mismatch is reported to
/// the peer before returning.
pub async fn accept<S>(
    stream: S,
    remote: SocketAddr,
    local: &LocalInfo,
    events: Arc<dyn SessionEvents>,
    parent: &CancellationToken,
) -> Result<Arc<Session>, SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let fut = async {
        let h = match codec::read_frame(&mut rd, codec::HANDSHAKE_MAX_FRAME).await? {
            Body::Hello(h) => h,
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected Hello, got {}",
                    codec::body_name(&other)
                )));
            }
        };
        if h.protocol_version != codec::PROTOCOL_VERSION {
            let err = SessionError::VersionMismatch {
                peer: h.protocol_version,
                ours: codec::PROTOCOL_VERSION,
            };
            let _ = write_frame(
                &mut wr,
                Body::Error(wire::Error {
                    code: ErrorCode::VersionMismatch as i32,
                    message: err.to_string(),
                }),
            )
            .await;
            return Err(err);
        }
        let caps = h.capabilities & caps::SUPPORTED;
        let mut ack = hello(local);
        ack.capabilities = caps;
        write_frame(
            &mut wr,
            Body::HelloAck(wire::HelloAck {
                device_id: ack.device_id,
                name: ack.name,
                protocol_version: ack.protocol_version,
                capabilities: ack.capabilities,
                listen_port: ack.listen_port,
                software_version: ack.software_version,
            }),
        )
        .await?;
        let proposal = match codec::read_frame(&mut rd, codec::HANDSHAKE_MAX_FRAME).await? {
            Body::Config(c) => c,
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected Config, got {}",
                    codec::body_name(&other)
                )));
            }
        };
        let agreed = wire::Config {
            chunk_size: proposal
                .chunk_size
                .clamp(crate::transfer::MIN_CHUNK, MAX_CHUNK),
            compress: proposal.compress && caps & caps::COMPRESSION != 0,
            level: proposal.level,
            windowed: proposal.windowed && caps & caps::WINDOWED != 0,
            window_size: if proposal.windowed && caps & caps::WINDOWED != 0 {
                proposal.window_size.clamp(1, MAX_WINDOW)
            } else {
                1
            },
        };
        write_frame(
            &mut wr,
            Body::ConfigAck(wire::ConfigAck {
                agreed: Some(agreed),
            }),
        )
        .await?;
        let peer = PeerInfo {
            device_id: h.device_id,
            name: h.name,
            version: h.software_version,
            listen_addr: peer_listen(remote, h.listen_port)?,
        };
        Ok((peer, caps, agreed))
    };
    let (peer, caps, limits) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(start(
        rd, wr, peer, remote, false, caps, limits, events, parent,
    ))
}

#[allow(clippy::too_many_arguments)]
fn start<R, W>(
    rd: R,
    wr: W,
    peer: PeerInfo,
    remote: SocketAddr,
    outgoing: bool,
    caps: u32,
    limits: wire::Config,
    events: Arc<dyn SessionEvents>,
    parent: &CancellationToken,
) -> Arc<Session>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let session = Arc::new(Session {
        id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        remote,
        outgoing,
        established: SystemTime::now(),
        caps,
        limits,
        tx,
        routes: Mutex::new(HashMap::new()),
        closed: parent.child_token(),
        active: AtomicU32::new(0),
    });
    tracing::info!(
        session = session.id,
        peer = %session.peer.device_id,
        name = %session.peer.name,
        %remote,
        outgoing,
        "session established"
    );
    tokio::spawn(write_loop(wr, rx, session.closed.clone(), session.id));
    tokio::spawn(read_loop(rd, session.clone(), events));
    session
}

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    closed: CancellationToken,
    id: u64,
) {
    let mut w = BufWriter::with_capacity(256 << 10, wr);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut nonce = 0u64;
    let result: Result<(), std::io::Error> = async {
        loop {
            tokio::select! {
                _ = closed.cancelled() => {
                    // Whatever was queued before the close (a final Error or Cancel) still
                    // goes out, if the peer takes it within a short time.
                    let _ = tokio::time::timeout(DRAIN_ON_CLOSE, async {
                        while let Ok(b) = rx.try_recv() {
                            w.write_all(&b).await?;
                        }
                        w.flush().await
                    })
                    .await;
                    break;
                }
                msg = rx.recv() => {
                    let Some(b) = msg else { break };
                    w.write_all(&b).await?;
                    // Drain what is already queued before one flush.
                    while let Ok(b) = rx.try_recv() {
                        w.write_all(&b).await?;
                    }
                    w.flush().await?;
                }
                _ = ping.tick() => {
                    nonce += 1;
                    w.write_all(&codec::encode(Body::Ping(wire::Ping { nonce }))).await?;
                    w.flush().await?;
                }
            }
        }
        let _ = w.flush().await;
        let _ = w.shutdown().await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(session = id, cause = %e, "write failed");
    }
    closed.cancel();
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    session: Arc<Session>,
    events: Arc<dyn SessionEvents>,
) {
    let chunk_max = session.limits.chunk_size as usize + codec::CHUNK_OVERHEAD;
    let reason = loop {
        let frame = tokio::select! {
            _ = session.closed.cancelled() => break "closed".to_owned(),
            r = tokio::time::timeout(IDLE_TIMEOUT, codec::read_frame_limited(&mut rd, chunk_max, codec::CONTROL_MAX_FRAME)) => r,
        };
        let body = match frame {
            Err(_) => break format!("peer silent for {IDLE_TIMEOUT:?}"),
            Ok(Err(WireError::Closed)) => break "peer closed the connection".to_owned(),
            Ok(Err(e)) => {
                let msg = format!("{e}");
                if matches!(
                    e,
                    WireError::TooLarge { .. } | WireError::Decode(_) | WireError::Empty
                ) {
                    let _ = session
                        .send(Body::Error(wire::Error {
                            code: ErrorCode::Protocol as i32,
                            message: msg.clone(),
                        }))
                        .await;
                }
                break msg;
            }
            Ok(Ok(b)) => b,
        };
        match body {
            Body::Ping(p) => {
                let _ = session
                    .send(Body::Pong(wire::Pong { nonce: p.nonce }))
                    .await;
            }
            Body::Pong(_) => {}
            Body::TransferInfo(info) => events.offer(session.clone(), info),
            Body::Error(e) => break format!("peer reported an error: {}", e.message),
            Body::Hello(_) | Body::HelloAck(_) | Body::Config(_) | Body::ConfigAck(_) => {
                let msg = "handshake frame on an established session".to_owned();
                let _ = session
                    .send(Body::Error(wire::Error {
                        code: ErrorCode::Protocol as i32,
                        message: msg.clone(),
                    }))
                    .await;
                break msg;
            }
            other => {
                let Some(id) = transfer_id(&other) else {
                    continue;
                };
                let route = session.lock_routes().get(id).cloned();
                match route {
                    Some(tx) => {
                        let id = id.to_owned();
                        if tx.send(other).await.is_err() {
                            session.unroute(&id);
                        }
                    }
                    None => tracing::debug!(
                        session = session.id,
                        frame = codec::body_name(&other),
                        transfer = id,
                        "frame for an unknown transfer"
                    ),
                }
            }
        }
    };
    tracing::info!(session = session.id, peer = %session.peer.device_id, %reason, "session ended");
    session.closed.cancel();
    // Dropping the routes closes every transfer's channel: their owners see the session end.
    session.lock_routes().clear();
    events.ended(&session, &reason);
}

fn transfer_id(b: &Body) -> Option<&str> {
    Some(match b {
        Body::Ready(m) => &m.transfer_id,
        Body::Reject(m) => &m.transfer_id,
        Body::Chunk(m) => &m.transfer_id,
        Body::ChunkAck(m) => &m.transfer_id,
        Body::FileDone(m) => &m.transfer_id,
        Body::FileResult(m) => &m.transfer_id,
        Body::Complete(m) => &m.transfer_id,
        Body::CompleteAck(m) => &m.transfer_id,
        Body::Cancel(m) => &m.transfer_id,
        _ => return None,
    })
}
