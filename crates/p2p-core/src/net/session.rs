//! Peer sessions: the handshake, and the reader and writer tasks of one connection.
//!
//! A session is symmetric once established: either side may offer transfers, and many
//! transfers in both directions share the connection. Frames for a transfer are routed by
//! transfer id to the task that owns it; a new `TransferInfo` goes to the node. The transport
//! is any `AsyncRead + AsyncWrite`, so a secure channel can wrap it without touching this code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::device_id::DeviceId;
use crate::net::wire::{self as codec, FrameReader, OutFrame, WireError, caps};
use crate::transfer::{MAX_CHUNK, MAX_IN_FLIGHT_BYTES, MAX_WINDOW, SMALL_FILE, SMALL_FILE_WINDOW};

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

/// What a peer proved (its key) and told us (the rest) about itself.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its device id, proven by its TLS certificate's key.
    pub id: DeviceId,
    /// The same id as text.
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
    /// The secret a further connection presents to join this session as a lane (empty when
    /// the session has no lanes).
    pub lane_token: Bytes,
    tx: mpsc::Sender<OutFrame>,
    // The writers of the lanes after the first (see `add_lane`); read per chunk producer.
    lanes: Mutex<Vec<mpsc::Sender<OutFrame>>>,
    // Frames of a transfer go to the task that owns it; the reader looks the id up per frame.
    routes: Mutex<HashMap<String, Route>>,
    // Numbers the attempts of transfers sent over this session (TransferInfo.attempt).
    attempts: AtomicU32,
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
            .send(codec::encode(body).into())
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Refuses an offer. Best effort: a session that ended has no one left to tell.
    pub async fn reject(&self, transfer_id: &str, reason: impl Into<String>) {
        let _ = self
            .send(Body::Reject(wire::Reject {
                transfer_id: transfer_id.to_owned(),
                reason: reason.into(),
            }))
            .await;
    }

    /// Tells the peer that a transfer stops — for good, or `resumable` (it may be offered
    /// again). Best effort, as [`Session::reject`].
    pub async fn cancel(&self, transfer_id: &str, reason: impl Into<String>, resumable: bool) {
        let _ = self
            .send(Body::Cancel(wire::Cancel {
                transfer_id: transfer_id.to_owned(),
                reason: reason.into(),
                resumable,
                failed: false,
            }))
            .await;
    }

    /// Tells the peer that a transfer failed here, for good. Best effort, as
    /// [`Session::reject`].
    pub async fn fail(&self, transfer_id: &str, reason: impl Into<String>) {
        let _ = self
            .send(Body::Cancel(wire::Cancel {
                transfer_id: transfer_id.to_owned(),
                reason: reason.into(),
                resumable: false,
                failed: true,
            }))
            .await;
    }

    /// A handle to the writer queue, for blocking producers.
    pub fn writer(&self) -> mpsc::Sender<OutFrame> {
        self.tx.clone()
    }

    /// The writer queues of every lane, the first lane's first: large chunk frames may go on
    /// any of them, everything else goes on the first.
    pub fn lane_writers(&self) -> Vec<mpsc::Sender<OutFrame>> {
        let lanes = match self.lanes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::iter::once(self.tx.clone())
            .chain(lanes.iter().cloned())
            .collect()
    }

    /// How many connections (lanes) the session runs over.
    pub fn lane_count(&self) -> usize {
        match self.lanes.lock() {
            Ok(g) => g.len() + 1,
            Err(p) => p.into_inner().len() + 1,
        }
    }

    /// Adds a connection that joined the session (its handshake done) as one more lane: its
    /// frames are routed like the first connection's, frames may be written to it, and when
    /// it ends the session ends.
    pub fn add_lane<R, W>(self: &Arc<Self>, rd: R, wr: W, events: Arc<dyn SessionEvents>)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        {
            let mut lanes = match self.lanes.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            lanes.push(tx.clone());
        }
        tracing::debug!(session = self.id, lanes = self.lane_count(), "lane joined");
        tokio::spawn(write_loop(wr, rx, self.closed.clone(), self.id));
        tokio::spawn(read_loop(rd, self.clone(), events, tx, false));
    }

    /// Routes the frames of `transfer_id` to `tx` (the sending side of a transfer).
    pub fn route(&self, transfer_id: &str, tx: mpsc::Sender<Body>) {
        self.lock_routes()
            .insert(transfer_id.to_owned(), Route::new(0, tx));
    }

    /// A number for a new attempt at sending a transfer over this session, distinct from the
    /// earlier ones (its chunks carry it, so that the receiver can tell stale ones).
    pub fn next_attempt(&self) -> u32 {
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Stops routing `transfer_id`.
    pub fn unroute(&self, transfer_id: &str) {
        self.lock_routes().remove(transfer_id);
    }

    /// Stops routing `transfer_id` if nothing receives its frames any more — so that the
    /// end of an offer's handling does not take the route of a newer offer of the same
    /// transfer, which may have replaced it once the old one was closed.
    pub fn unroute_ended(&self, transfer_id: &str) {
        let mut routes = self.lock_routes();
        if routes.get(transfer_id).is_some_and(|r| r.tx.is_closed()) {
            routes.remove(transfer_id);
        }
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
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

/// Where a transfer's frames go, and (receiving side) which attempt's chunks it takes.
#[derive(Debug, Clone)]
struct Route {
    attempt: u32,
    tx: mpsc::Sender<Body>,
    // Payload bytes of this transfer's large chunks alive on the receiver (see `LARGE_HELD_MAX`).
    large_held: Arc<AtomicUsize>,
}

impl Route {
    fn new(attempt: u32, tx: mpsc::Sender<Body>) -> Self {
        Route {
            attempt,
            tx,
            large_held: Arc::default(),
        }
    }

    /// Counts a large chunk's payload against the route for as long as it lives (queued for
    /// the receiving thread, held out of order, being written); false if that would exceed
    /// what an honest sender can have in flight.
    fn hold(&self, c: &mut wire::Chunk) -> bool {
        let len = c.data.len();
        if len as u64 <= SMALL_FILE {
            return true;
        }
        if self.large_held.fetch_add(len, Ordering::Relaxed) + len > LARGE_HELD_MAX {
            self.large_held.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        c.data = Bytes::from_owner(Held {
            data: std::mem::take(&mut c.data),
            held: self.large_held.clone(),
        });
        true
    }
}

/// The most payload of large chunks (more than `SMALL_FILE` bytes) a transfer may have alive
/// on the receiver: an honest sender keeps `window × chunk_size` within `MAX_IN_FLIGHT_BYTES`;
/// one chunk more is in the receiving thread's hands, and the chunks it acknowledged but the
/// hashing thread has yet to hash (`filehash::HASH_QUEUE` queued, one being hashed) live on
/// beyond the window. The route's frame count alone would not bound it: its slots for small
/// files could otherwise be filled with chunks of 16 MiB.
const LARGE_HELD_MAX: usize = MAX_IN_FLIGHT_BYTES as usize
    + (2 + crate::transfer::place::filehash::HASH_QUEUE) * MAX_CHUNK as usize;

/// A chunk's payload, counted in its route's `large_held` until dropped.
struct Held {
    data: Bytes,
    held: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.data.len(), Ordering::Relaxed);
    }
}

/// Receives what a session's reader cannot route: new offers, and the end of the session.
pub trait SessionEvents: Send + Sync + 'static {
    /// A peer offers a transfer; its later frames arrive on `frames` (already routed).
    fn offer(&self, session: Arc<Session>, info: wire::TransferInfo, frames: mpsc::Receiver<Body>);
    /// A `Cancel` for a transfer that runs on no session (an interrupted one).
    fn stray_cancel(&self, session: &Arc<Session>, cancel: &wire::Cancel);
    /// The peer broke a transfer's window: its route is about to be dropped, and the
    /// transfer must fail with `reason` rather than wait for a resume.
    fn overrun(&self, _session: &Arc<Session>, _transfer_id: &str, _reason: &str) {}
    /// The session `token` names as its lane token, if it is one with `peer`.
    fn lane_of(&self, token: &[u8], peer: DeviceId) -> Option<Arc<Session>>;
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
        join_token: Bytes::new(),
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: Body) -> Result<(), SessionError> {
    w.write_all(&codec::encode(body))
        .await
        .map_err(SessionError::Write)?;
    w.flush().await.map_err(SessionError::Write)
}

/// Tells the peer why its handshake is refused (best effort: it may be gone already) and
/// hands the error back for the caller to return.
async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: ErrorCode,
    err: SessionError,
) -> SessionError {
    let _ = write_frame(
        w,
        Body::Error(wire::Error {
            code: code as i32,
            message: err.to_string(),
        }),
    )
    .await;
    err
}

fn peer_listen(remote: SocketAddr, port: u32) -> Result<SocketAddr, SessionError> {
    let port = u16::try_from(port)
        .map_err(|_| SessionError::Protocol(format!("listen port {port} out of range")))?;
    Ok(SocketAddr::new(remote.ip(), port))
}

/// Reads the acceptor's answer to our Hello: a HelloAck of our protocol version, or its error.
async fn read_hello_ack<R: AsyncRead + Unpin>(rd: &mut R) -> Result<wire::HelloAck, SessionError> {
    let ack = match codec::read_frame(rd, codec::HANDSHAKE_MAX_FRAME).await? {
        Body::HelloAck(a) => a,
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
    Ok(ack)
}

/// Runs the initiator's side of the handshake and starts the session's tasks.
///
/// # Errors
/// [`SessionError`] if the handshake fails or times out.
pub async fn initiate<S>(
    stream: S,
    remote: SocketAddr,
    proven: DeviceId,
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
        let ack = read_hello_ack(&mut rd).await?;
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
        check_claim(&ack.device_id, proven)?;
        let peer = PeerInfo {
            id: proven,
            device_id: proven.to_string(),
            name: clean_name(&ack.name),
            version: clean_name(&ack.software_version),
            listen_addr: peer_listen(remote, ack.listen_port)?,
        };
        let caps = ack.capabilities & caps::SUPPORTED;
        // Lanes only with the capability and a token of the right size.
        let token = if caps & caps::LANES != 0 && ack.lane_token.len() == LANE_TOKEN_LEN {
            ack.lane_token
        } else {
            Bytes::new()
        };
        Ok((peer, caps, agreed, token))
    };
    let (peer, caps, limits, token) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(start(
        rd, wr, peer, remote, true, caps, limits, token, events, parent,
    ))
}

/// Length of a lane token.
const LANE_TOKEN_LEN: usize = 16;

/// Joins `session` (one we initiated) with a further connection to the same peer, already
/// secured by TLS pinned to the same device, as one more lane.
///
/// # Errors
/// [`SessionError`] if the session has no lanes, or the join handshake fails or times out.
pub async fn join<S>(
    stream: S,
    proven: DeviceId,
    local: &LocalInfo,
    session: &Arc<Session>,
    events: Arc<dyn SessionEvents>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if session.lane_token.is_empty() || !session.outgoing {
        return Err(SessionError::Protocol("the session has no lanes".into()));
    }
    if proven != session.peer.id {
        return Err(SessionError::Protocol(format!(
            "lane peer is device {proven} but the session's is {}",
            session.peer.id
        )));
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let fut = async {
        let mut h = hello(local);
        h.join_token = session.lane_token.clone();
        write_frame(&mut wr, Body::Hello(h)).await?;
        let ack = read_hello_ack(&mut rd).await?;
        check_claim(&ack.device_id, proven)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    session.add_lane(rd, wr, events);
    Ok(())
}

/// Longest peer name kept, in characters.
pub const MAX_PEER_NAME: usize = 64;

/// A peer's name as shown to the user: control characters (terminal escapes) replaced, length
/// capped.
pub fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_PEER_NAME)
        .collect();
    if cleaned.trim().is_empty() {
        "unnamed".to_owned()
    } else {
        cleaned
    }
}

/// The id a peer claims in its Hello must be the one its certificate proves.
fn check_claim(claimed: &str, proven: DeviceId) -> Result<(), SessionError> {
    match claimed.parse::<DeviceId>() {
        Ok(id) if id == proven => Ok(()),
        _ => Err(SessionError::Protocol(format!(
            "peer claims to be device {claimed:?} but its certificate is device {proven}"
        ))),
    }
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

/// What an accepted connection became.
#[derive(Debug)]
pub enum Accepted {
    /// A new session.
    Session(Arc<Session>),
    /// One more lane of an existing session.
    Lane(Arc<Session>),
}

/// Runs the acceptor's side of the handshake and starts the session's tasks — or, for a
/// connection that presents a session's lane token, adds it to that session as a lane.
///
/// # Errors
/// [`SessionError`] if the handshake fails or times out; a version mismatch is reported to
/// the peer before returning.
pub async fn accept<S>(
    stream: S,
    remote: SocketAddr,
    proven: DeviceId,
    local: &LocalInfo,
    events: Arc<dyn SessionEvents>,
    parent: &CancellationToken,
) -> Result<Accepted, SessionError>
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
            return Err(refuse(&mut wr, ErrorCode::VersionMismatch, err).await);
        }
        if let Err(e) = check_claim(&h.device_id, proven) {
            return Err(refuse(&mut wr, ErrorCode::Protocol, e).await);
        }
        let caps = h.capabilities & caps::SUPPORTED;
        let mut ack = hello(local);
        ack.capabilities = caps;
        if !h.join_token.is_empty() {
            // A further connection of a session of this peer: the token must name one, and
            // the connection must prove the same device.
            let Some(session) = events.lane_of(&h.join_token, proven) else {
                let err = SessionError::Protocol("no such session to join".into());
                return Err(refuse(&mut wr, ErrorCode::Protocol, err).await);
            };
            write_frame(
                &mut wr,
                Body::HelloAck(wire::HelloAck {
                    device_id: ack.device_id,
                    name: ack.name,
                    protocol_version: ack.protocol_version,
                    capabilities: session.caps,
                    listen_port: ack.listen_port,
                    software_version: ack.software_version,
                    lane_token: Bytes::new(),
                }),
            )
            .await?;
            return Ok(Handshake::Join(session));
        }
        let token = if caps & caps::LANES != 0 {
            Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes())
        } else {
            Bytes::new()
        };
        write_frame(
            &mut wr,
            Body::HelloAck(wire::HelloAck {
                device_id: ack.device_id,
                name: ack.name,
                protocol_version: ack.protocol_version,
                capabilities: ack.capabilities,
                listen_port: ack.listen_port,
                software_version: ack.software_version,
                lane_token: token.clone(),
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
            id: proven,
            device_id: proven.to_string(),
            name: clean_name(&h.name),
            version: clean_name(&h.software_version),
            listen_addr: peer_listen(remote, h.listen_port)?,
        };
        Ok(Handshake::New(peer, caps, agreed, token))
    };
    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(match done {
        Handshake::New(peer, caps, limits, token) => Accepted::Session(start(
            rd, wr, peer, remote, false, caps, limits, token, events, parent,
        )),
        Handshake::Join(session) => {
            session.add_lane(rd, wr, events);
            Accepted::Lane(session)
        }
    })
}

/// How the acceptor's handshake ended.
enum Handshake {
    New(PeerInfo, u32, wire::Config, Bytes),
    Join(Arc<Session>),
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
    lane_token: Bytes,
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
        lane_token,
        tx: tx.clone(),
        lanes: Mutex::new(Vec::new()),
        routes: Mutex::new(HashMap::new()),
        attempts: AtomicU32::new(0),
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
    tokio::spawn(read_loop(rd, session.clone(), events, tx, true));
    session
}

/// Most frames the writer hands to one vectored write.
const WRITE_SLICES: usize = 64;

/// Writes the queued byte strings in order, several per call (`write_vectored`): small frames
/// share a TLS record and a chunk's payload goes from its own buffer into the record, with no
/// copy in between.
async fn write_queue<W: AsyncWrite + Unpin>(
    w: &mut W,
    queue: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !queue.is_empty() {
        let n = {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slot, b) in slices.iter_mut().zip(queue.iter()) {
                *slot = IoSlice::new(b);
                count += 1;
            }
            w.write_vectored(&slices[..count]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

fn push_frame(queue: &mut VecDeque<Bytes>, f: OutFrame) {
    if !f.head.is_empty() {
        queue.push_back(f.head);
    }
    if !f.payload.is_empty() {
        queue.push_back(f.payload);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<OutFrame>,
    closed: CancellationToken,
    id: u64,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut nonce = 0u64;
    let mut queue = VecDeque::new();
    let result: Result<(), std::io::Error> = async {
        loop {
            let first = tokio::select! {
                _ = closed.cancelled() => {
                    // Whatever was queued before the close (a final Error or Cancel) still
                    // goes out, if the peer takes it within a short time.
                    let _ = tokio::time::timeout(DRAIN_ON_CLOSE, async {
                        while let Ok(f) = rx.try_recv() {
                            push_frame(&mut queue, f);
                        }
                        write_queue(&mut w, &mut queue).await?;
                        w.flush().await
                    })
                    .await;
                    break;
                }
                msg = rx.recv() => match msg {
                    Some(f) => f,
                    None => break,
                },
                _ = ping.tick() => {
                    nonce += 1;
                    codec::encode(Body::Ping(wire::Ping { nonce })).into()
                }
            };
            // The writes themselves race the close: a peer that stops reading must not keep
            // this task (and its queued frames) alive after the session has ended.
            let batch = async {
                push_frame(&mut queue, first);
                // What is already queued goes out with it, before one flush.
                while let Ok(f) = rx.try_recv() {
                    push_frame(&mut queue, f);
                }
                write_queue(&mut w, &mut queue).await?;
                w.flush().await
            };
            tokio::select! {
                r = batch => r?,
                _ = closed.cancelled() => break,
            }
        }
        let _ = tokio::time::timeout(DRAIN_ON_CLOSE, async {
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        })
        .await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(session = id, cause = %e, "write failed");
    }
    closed.cancel();
}

/// Frames a transfer may have queued for its owner beyond its window (FileDone, Complete,
/// Cancel and the like).
pub const ROUTE_SLACK: usize = 16;

/// Capacity of a transfer's frame channel: a peer that keeps to the window never fills it.
/// Small files have a window of their own, and each may have two frames on the way (its chunk
/// and `FileDone`; its chunk's acknowledgement and `FileResult`).
pub fn route_capacity(window: u32) -> usize {
    (window.clamp(1, MAX_WINDOW) as usize) + 2 * SMALL_FILE_WINDOW as usize + ROUTE_SLACK
}

/// Reads one connection of the session: `first` for the connection the session was made
/// on (its end ends the session and is reported), else a lane (its end closes the session,
/// which ends the first one's reader). Pongs go back on the same connection (`reply`), so that
/// every connection shows signs of life.
async fn read_loop<R: AsyncRead + Unpin>(
    rd: R,
    session: Arc<Session>,
    events: Arc<dyn SessionEvents>,
    reply: mpsc::Sender<OutFrame>,
    first: bool,
) {
    let chunk_max = session.limits.chunk_size as usize + codec::CHUNK_OVERHEAD;
    let mut rd = FrameReader::new(rd, IDLE_TIMEOUT);
    // The reader never waits on anyone: frames go to bounded per-transfer channels with
    // try_send (a full channel means the peer broke its window), and replies are queued with
    // try_send too. A blocked reader could deadlock the session with the peer's.
    let protocol_error = |msg: String| {
        let _ = session.tx.try_send(
            codec::encode(Body::Error(wire::Error {
                code: ErrorCode::Protocol as i32,
                message: msg.clone(),
            }))
            .into(),
        );
        msg
    };
    let reason = loop {
        let frame = tokio::select! {
            _ = session.closed.cancelled() => break "closed".to_owned(),
            r = rd.next(chunk_max, codec::CONTROL_MAX_FRAME) => r,
        };
        let body = match frame {
            Err(WireError::Idle) => break format!("peer silent for {IDLE_TIMEOUT:?}"),
            Err(WireError::Closed) => break "peer closed the connection".to_owned(),
            Err(e @ (WireError::TooLarge { .. } | WireError::Decode(_) | WireError::Empty)) => {
                break protocol_error(e.to_string());
            }
            Err(e) => break e.to_string(),
            Ok(b) => b,
        };
        match body {
            Body::Ping(p) => {
                // A full queue already carries plenty of proof of life.
                let _ =
                    reply.try_send(codec::encode(Body::Pong(wire::Pong { nonce: p.nonce })).into());
            }
            Body::Pong(_) => {}
            Body::TransferInfo(info) => {
                let id = info.transfer_id.clone();
                let (tx, rx) = mpsc::channel(route_capacity(info.window));
                {
                    let mut routes = session.lock_routes();
                    // A closed route's worker has ended (the attempt is only being wound
                    // down): the new offer takes its place.
                    if routes.get(&id).is_some_and(|r| !r.tx.is_closed()) {
                        drop(routes);
                        // A resume while the previous attempt is still being wound down here
                        // (a quick pause and resume): the sender may try again shortly.
                        let reply = if info.resume {
                            Body::Cancel(wire::Cancel {
                                transfer_id: id,
                                reason: "the previous attempt of this transfer is still stopping"
                                    .into(),
                                resumable: true,
                                failed: false,
                            })
                        } else {
                            Body::Reject(wire::Reject {
                                transfer_id: id,
                                reason: "a transfer with this id is already running".into(),
                            })
                        };
                        let _ = session.tx.try_send(codec::encode(reply).into());
                        continue;
                    }
                    // Routed before the offer is handled, so that an early Cancel is not lost.
                    routes.insert(id, Route::new(info.attempt, tx));
                }
                events.offer(session.clone(), info, rx);
            }
            Body::Error(e) => break format!("peer reported an error: {}", e.message),
            Body::Hello(_) | Body::HelloAck(_) | Body::Config(_) | Body::ConfigAck(_) => {
                break protocol_error("handshake frame on an established session".to_owned());
            }
            mut other => {
                let Some(id) = transfer_id(&other) else {
                    continue;
                };
                let id = id.to_owned();
                let route = session.lock_routes().get(&id).cloned();
                let mut crowded = false;
                if let (Some(r), Body::Chunk(c)) = (&route, &mut other) {
                    if c.attempt != r.attempt {
                        // Sent by an earlier attempt on another lane, overtaken by the new
                        // offer: not part of the transfer as it runs now.
                        tracing::debug!(session = session.id, transfer = %id, attempt = c.attempt, "chunk of an earlier attempt dropped");
                        continue;
                    }
                    crowded = !r.hold(c);
                }
                match route {
                    Some(r) => match if crowded {
                        Err(mpsc::error::TrySendError::Full(other))
                    } else {
                        r.tx.try_send(other)
                    } {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(frame)) => {
                            session.unroute(&id);
                            // The transfer's worker just ended here (it is being wound down):
                            // a Cancel for it still counts.
                            if let Body::Cancel(c) = &frame {
                                events.stray_cancel(&session, c);
                            }
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Dropping the route ends that transfer; the others go on.
                            tracing::warn!(session = session.id, transfer = %id, "peer exceeded the transfer's window; dropping the transfer");
                            let reason = if crowded {
                                "more chunk data in flight than the window allows"
                            } else {
                                "too many frames in flight"
                            };
                            // Before the route goes: its worker, seeing its frames end,
                            // must find why.
                            events.overrun(&session, &id, reason);
                            session.unroute(&id);
                            let _ = session.tx.try_send(
                                codec::encode(Body::Cancel(wire::Cancel {
                                    transfer_id: id,
                                    reason: reason.into(),
                                    resumable: false,
                                    failed: true,
                                }))
                                .into(),
                            );
                        }
                    },
                    None => match &other {
                        Body::Cancel(c) => events.stray_cancel(&session, c),
                        _ => tracing::debug!(
                            session = session.id,
                            frame = codec::body_name(&other),
                            transfer = %id,
                            "frame for an unknown transfer"
                        ),
                    },
                }
            }
        }
    };
    if !first {
        tracing::info!(session = session.id, peer = %session.peer.device_id, %reason, "session lane ended");
        session.closed.cancel();
        return;
    }
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    /// Large chunks count against their route for as long as they live, up to what an honest
    /// sender can have in flight; small ones do not count.
    #[test]
    fn a_route_holds_large_chunks_up_to_a_bound_in_bytes() {
        let (tx, _rx) = mpsc::channel(4);
        let route = Route::new(1, tx);
        let chunk = |len: usize| wire::Chunk {
            data: Bytes::from(vec![7u8; len]),
            ..Default::default()
        };
        let big = MAX_CHUNK as usize;
        let mut held = Vec::new();
        while held.len() * big + big <= LARGE_HELD_MAX {
            let mut c = chunk(big);
            assert!(route.hold(&mut c), "within the bound: {} held", held.len());
            assert_eq!(c.data.len(), big, "the payload is untouched");
            held.push(c);
        }
        assert!(!route.hold(&mut chunk(big)), "beyond the bound");
        let mut small = chunk(SMALL_FILE as usize);
        assert!(route.hold(&mut small), "small chunks do not count");
        // A chunk the receiver is done with frees its bytes (clones of its payload included).
        let copy = held[0].data.clone();
        drop(held.remove(0));
        assert!(
            !route.hold(&mut chunk(big)),
            "a copy of the payload still lives"
        );
        drop(copy);
        assert!(route.hold(&mut chunk(big)));
        assert_eq!(
            route.large_held.load(Ordering::Relaxed),
            held.len() * big,
            "the chunk just held was dropped again"
        );
    }

    /// Sessions and offers, as a node would keep them.
    #[derive(Default)]
    struct Events {
        sessions: Mutex<Vec<Arc<Session>>>,
        offers: Mutex<Vec<mpsc::Receiver<Body>>>,
        offered: tokio::sync::Notify,
    }

    impl SessionEvents for Events {
        fn offer(&self, _s: Arc<Session>, _info: wire::TransferInfo, frames: mpsc::Receiver<Body>) {
            self.offers.lock().unwrap().push(frames);
            self.offered.notify_one();
        }
        fn stray_cancel(&self, _s: &Arc<Session>, _c: &wire::Cancel) {}
        fn lane_of(&self, token: &[u8], peer: DeviceId) -> Option<Arc<Session>> {
            self.sessions
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.peer.id == peer && s.lane_token == token)
                .cloned()
        }
        fn ended(&self, _s: &Arc<Session>, _reason: &str) {}
    }

    fn device(name: &str) -> (DeviceId, LocalInfo) {
        let id = DeviceId::from_spki(name.as_bytes());
        let local = LocalInfo {
            device_id: id.to_string(),
            name: name.into(),
            listen_port: 1,
        };
        (id, local)
    }

    const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);

    fn proposal() -> wire::Config {
        wire::Config {
            chunk_size: 1 << 20,
            compress: true,
            level: 3,
            windowed: true,
            window_size: 64,
        }
    }

    /// A session between a (initiator) and b, and b's events.
    async fn pair(
        token: &CancellationToken,
    ) -> (Arc<Session>, Arc<Session>, Arc<Events>, Arc<Events>) {
        let ((ida, la), (idb, lb)) = (device("a"), device("b"));
        let (ea, eb) = (Arc::new(Events::default()), Arc::new(Events::default()));
        let (ioa, iob) = tokio::io::duplex(1 << 20);
        let (a, b) = tokio::join!(
            initiate(ioa, REMOTE, idb, &la, proposal(), ea.clone(), token),
            accept(iob, REMOTE, ida, &lb, eb.clone(), token)
        );
        let Accepted::Session(b) = b.unwrap() else {
            panic!("a lane instead of a session")
        };
        eb.sessions.lock().unwrap().push(b.clone());
        (a.unwrap(), b, ea, eb)
    }

    #[tokio::test]
    async fn a_lane_joins_with_the_token_and_stale_chunks_are_dropped() {
        let token = CancellationToken::new();
        let (a, b, ea, eb) = pair(&token).await;
        assert_eq!(a.lane_token.len(), LANE_TOKEN_LEN);
        assert_eq!(a.lane_token, b.lane_token);
        let ((ida, la), (idb, lb)) = (device("a"), device("b"));
        let (ioa, iob) = tokio::io::duplex(1 << 20);
        let (joined, accepted) = tokio::join!(
            join(ioa, idb, &la, &a, ea.clone()),
            accept(iob, REMOTE, ida, &lb, eb.clone(), &token)
        );
        joined.unwrap();
        assert!(matches!(accepted.unwrap(), Accepted::Lane(s) if Arc::ptr_eq(&s, &b)));
        assert_eq!((a.lane_count(), b.lane_count()), (2, 2));

        // An offer for attempt 2, then on the second lane a chunk of attempt 1 (sent before
        // the offer, overtaken by it) and one of attempt 2: only the latter is routed.
        a.send(Body::TransferInfo(wire::TransferInfo {
            transfer_id: "t".into(),
            window: 8,
            attempt: 2,
            ..Default::default()
        }))
        .await
        .unwrap();
        eb.offered.notified().await;
        let mut frames = eb.offers.lock().unwrap().pop().unwrap();
        let lane = a.lane_writers()[1].clone();
        for (attempt, chunk_index) in [(1, 7), (2, 8)] {
            let data = Bytes::from_static(b"payload");
            let crc = crc32fast::hash(&data);
            lane.send(codec::encode_chunk(
                "t",
                attempt,
                0,
                chunk_index,
                0,
                crc,
                data,
            ))
            .await
            .unwrap();
        }
        match frames.recv().await {
            Some(Body::Chunk(c)) => assert_eq!((c.attempt, c.chunk_index), (2, 8)),
            other => panic!("expected the attempt-2 chunk, got {other:?}"),
        }
        // Either lane ending ends the session.
        drop(frames);
        b.lane_writers()[1]
            .send(codec::encode(Body::Error(wire::Error::default())).into())
            .await
            .unwrap();
        a.closed.cancelled().await;
        token.cancel();
    }

    #[tokio::test]
    async fn a_lane_needs_the_token_and_the_same_device() {
        let token = CancellationToken::new();
        let (a, _b, _ea, eb) = pair(&token).await;
        let (ida, la) = device("a");
        let (idc, _) = device("c");
        let (_, lb) = device("b");
        // A wrong token from the right device, the right token from another device.
        for (proven, join_token) in [
            (ida, Bytes::from_static(&[7; LANE_TOKEN_LEN])),
            (idc, a.lane_token.clone()),
        ] {
            let (mut ioa, iob) = tokio::io::duplex(1 << 20);
            let mut h = hello(&la);
            h.join_token = join_token;
            if proven == idc {
                h.device_id = idc.to_string();
            }
            write_frame(&mut ioa, Body::Hello(h)).await.unwrap();
            let r = accept(iob, REMOTE, proven, &lb, eb.clone(), &token).await;
            assert!(
                matches!(r, Err(SessionError::Protocol(_))),
                "joined with {proven}: {r:?}"
            );
            match codec::read_frame(&mut ioa, codec::HANDSHAKE_MAX_FRAME).await {
                Ok(Body::Error(_)) => {}
                other => panic!("expected an Error, got {other:?}"),
            }
        }
        assert_eq!(a.lane_count(), 1);
        token.cancel();
    }

    /// A resume offer for a transfer whose route is still open is told to come back; once the
    /// old offer's frames are gone, the new offer takes the route, and the old offer's end
    /// does not take it away.
    #[tokio::test]
    async fn a_resume_replaces_a_route_whose_worker_has_ended() {
        async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
            tokio::time::timeout(std::time::Duration::from_secs(10), f)
                .await
                .expect("no answer within 10 s")
        }
        let token = CancellationToken::new();
        let (a, b, _ea, eb) = pair(&token).await;
        let (replies_tx, mut replies) = mpsc::channel(8);
        a.route("t", replies_tx);
        let offer = || {
            Body::TransferInfo(wire::TransferInfo {
                transfer_id: "t".into(),
                window: 8,
                attempt: 1,
                resume: true,
                ..Default::default()
            })
        };
        a.send(offer()).await.unwrap();
        within(eb.offered.notified()).await;
        let old = eb.offers.lock().unwrap().pop().unwrap();

        a.send(offer()).await.unwrap();
        match within(replies.recv()).await {
            Some(Body::Cancel(c)) => {
                assert!(c.resumable && c.reason.contains("still stopping"), "{c:?}")
            }
            other => panic!("expected a resumable Cancel, got {other:?}"),
        }
        b.unroute_ended("t");
        assert!(b.lock_routes().contains_key("t"), "an open route stays");

        drop(old);
        a.send(offer()).await.unwrap();
        within(eb.offered.notified()).await;
        let mut new = eb.offers.lock().unwrap().pop().unwrap();
        b.unroute_ended("t");
        let data = Bytes::from_static(b"payload");
        let crc = crc32fast::hash(&data);
        a.writer()
            .send(codec::encode_chunk("t", 1, 0, 3, 0, crc, data))
            .await
            .unwrap();
        match within(new.recv()).await {
            Some(Body::Chunk(c)) => assert_eq!(c.chunk_index, 3),
            other => panic!("the new offer lost its route: {other:?}"),
        }
        drop(new);
        b.unroute_ended("t");
        assert!(b.lock_routes().is_empty());
        token.cancel();
    }
}
