//! Peer sessions: the handshake, and the reader and writer tasks of one connection.
//!
//! A session is symmetric once established: either side may offer transfers, and many
//! transfers in both directions share the connection. Frames for a transfer are routed by
//! transfer id to the task that owns it; a new `TransferInfo` goes to the node. The transport
//! is any `AsyncRead + AsyncWrite`, so a secure channel can wrap it without touching this code.
//!
//! - `handshake`: both sides of the handshake, and joining a connection to a session as a lane.
//! - `route`: where each transfer's frames go, and the bound on what a route holds.
//! - `io`: the reader and writer tasks of each connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::device_id::DeviceId;
use crate::net::wire::{self as codec, OutFrame, WireError};

mod handshake;
mod io;
mod route;

pub(crate) use handshake::{Accepted, accept, initiate, join};
use io::{read_loop, write_loop};
use route::Route;
pub(crate) use route::route_capacity;

/// Time allowed for the whole handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a ping is sent.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A session that receives nothing for this long is dead.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
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
pub(crate) struct LocalInfo {
    /// Our device id.
    pub(crate) device_id: String,
    /// Our name.
    pub(crate) name: String,
    /// Our peer listen port.
    pub(crate) listen_port: u16,
}

/// Where the tasks of sessions belong: the token whose cancellation ends every session (each
/// session's own token is a child of it), and the tracker that shutdown joins. Every reader and
/// writer task of a session, lanes included, is spawned on it.
#[derive(Debug, Clone)]
pub(crate) struct TaskScope {
    /// Cancelled when the node shuts down.
    pub(crate) shutdown: CancellationToken,
    /// The node's tracker.
    pub(crate) tracker: TaskTracker,
}

/// What a peer proved (its key) and told us (the rest) about itself.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// Its device id, proven by its TLS certificate's key.
    pub(crate) id: DeviceId,
    /// The same id as text.
    pub(crate) device_id: String,
    /// Its name.
    pub(crate) name: String,
    /// Its software version.
    pub(crate) version: String,
    /// Where it listens for peers.
    pub(crate) listen_addr: SocketAddr,
}

/// A live session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Local id of the session.
    pub(crate) id: u64,
    /// The peer.
    pub(crate) peer: PeerInfo,
    /// The connection's remote address.
    pub(crate) remote: SocketAddr,
    /// Whether we connected.
    pub(crate) outgoing: bool,
    /// When the handshake finished.
    pub(crate) established: SystemTime,
    /// Capabilities both sides have.
    pub(crate) caps: u32,
    /// Agreed limits.
    pub(crate) limits: wire::Config,
    /// The secret a further connection presents to join this session as a lane (empty when
    /// the session has no lanes).
    pub(crate) lane_token: Bytes,
    tx: mpsc::Sender<OutFrame>,
    // The writers of the lanes after the first (see `add_lane`); read per chunk producer.
    lanes: Mutex<Vec<mpsc::Sender<OutFrame>>>,
    // Frames of a transfer go to the task that owns it; the reader looks the id up per frame.
    routes: Mutex<HashMap<String, Route>>,
    // Numbers the attempts of transfers sent over this session (TransferInfo.attempt).
    attempts: AtomicU32,
    /// Cancelled when the session ends.
    pub(crate) closed: CancellationToken,
    /// Transfers using the session.
    pub(crate) active: AtomicU32,
    // Where the tasks of lanes that join later are spawned (see `add_lane`).
    tasks: TaskTracker,
}

impl Session {
    /// The span of the session's tasks: its local id and the peer's short device id.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("session", id = self.id, peer = %self.peer.id.short())
    }

    /// Queues a frame for the writer.
    ///
    /// # Errors
    /// [`SessionError::Closed`] if the session ended.
    pub(crate) async fn send(&self, body: Body) -> Result<(), SessionError> {
        self.tx
            .send(codec::encode(body).into())
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Refuses an offer. Best effort: a session that ended has no one left to tell.
    pub(crate) async fn reject(&self, transfer_id: &str, reason: impl Into<String>) {
        let _ = self
            .send(Body::Reject(wire::Reject {
                transfer_id: transfer_id.to_owned(),
                reason: reason.into(),
            }))
            .await;
    }

    /// Tells the peer that a transfer stops — for good, or `resumable` (it may be offered
    /// again). Best effort, as [`Session::reject`].
    pub(crate) async fn cancel(
        &self,
        transfer_id: &str,
        reason: impl Into<String>,
        resumable: bool,
    ) {
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
    pub(crate) async fn fail(&self, transfer_id: &str, reason: impl Into<String>) {
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
    pub(crate) fn writer(&self) -> mpsc::Sender<OutFrame> {
        self.tx.clone()
    }

    /// The writer queues of every lane, the first lane's first: large chunk frames may go on
    /// any of them, everything else goes on the first.
    pub(crate) fn lane_writers(&self) -> Vec<mpsc::Sender<OutFrame>> {
        let lanes = match self.lanes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::iter::once(self.tx.clone())
            .chain(lanes.iter().cloned())
            .collect()
    }

    /// How many connections (lanes) the session runs over.
    pub(crate) fn lane_count(&self) -> usize {
        match self.lanes.lock() {
            Ok(g) => g.len() + 1,
            Err(p) => p.into_inner().len() + 1,
        }
    }

    /// Adds a connection that joined the session (its handshake done) as one more lane: its
    /// frames are routed like the first connection's, frames may be written to it, and when
    /// it ends the session ends.
    pub(crate) fn add_lane<R, W>(self: &Arc<Self>, rd: R, wr: W, events: Arc<dyn SessionEvents>)
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
        let span = self.span();
        self.tasks
            .spawn(write_loop(wr, rx, self.closed.clone(), self.id).instrument(span.clone()));
        self.tasks
            .spawn(read_loop(rd, self.clone(), events, tx, false).instrument(span));
    }

    /// Routes the frames of `transfer_id` to `tx` (the sending side of a transfer).
    pub(crate) fn route(&self, transfer_id: &str, tx: mpsc::Sender<Body>) {
        self.lock_routes()
            .insert(transfer_id.to_owned(), Route::new(0, tx));
    }

    /// A number for a new attempt at sending a transfer over this session, distinct from the
    /// earlier ones (its chunks carry it, so that the receiver can tell stale ones).
    pub(crate) fn next_attempt(&self) -> u32 {
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Stops routing `transfer_id`.
    pub(crate) fn unroute(&self, transfer_id: &str) {
        self.lock_routes().remove(transfer_id);
    }

    /// Stops routing `transfer_id` if nothing receives its frames any more — so that the
    /// end of an offer's handling does not take the route of a newer offer of the same
    /// transfer, which may have replaced it once the old one was closed.
    pub(crate) fn unroute_ended(&self, transfer_id: &str) {
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
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }
}

/// Receives what a session's reader cannot route: new offers, and the end of the session.
pub(crate) trait SessionEvents: Send + Sync + 'static {
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
    scope: &TaskScope,
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
        closed: scope.shutdown.child_token(),
        active: AtomicU32::new(0),
        tasks: scope.tracker.clone(),
    });
    tracing::info!(
        session = session.id,
        peer = %session.peer.device_id,
        name = %session.peer.name,
        %remote,
        outgoing,
        "session established"
    );
    let span = session.span();
    scope
        .tracker
        .spawn(write_loop(wr, rx, session.closed.clone(), session.id).instrument(span.clone()));
    scope
        .tracker
        .spawn(read_loop(rd, session.clone(), events, tx, true).instrument(span));
    session
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::handshake::{LANE_TOKEN_LEN, hello, write_frame};
    use super::*;

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

    /// Session tasks under `token`, on a tracker of their own.
    fn scope(token: &CancellationToken) -> TaskScope {
        TaskScope {
            shutdown: token.clone(),
            tracker: TaskTracker::new(),
        }
    }

    /// A session between a (initiator) and b, and b's events.
    async fn pair(scope: &TaskScope) -> (Arc<Session>, Arc<Session>, Arc<Events>, Arc<Events>) {
        let ((ida, la), (idb, lb)) = (device("a"), device("b"));
        let (ea, eb) = (Arc::new(Events::default()), Arc::new(Events::default()));
        let (ioa, iob) = tokio::io::duplex(1 << 20);
        let (a, b) = tokio::join!(
            initiate(ioa, REMOTE, idb, &la, proposal(), ea.clone(), scope),
            accept(iob, REMOTE, ida, &lb, eb.clone(), scope)
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
        let tasks = scope(&token);
        let (a, b, ea, eb) = pair(&tasks).await;
        assert_eq!(a.lane_token.len(), LANE_TOKEN_LEN);
        assert_eq!(a.lane_token, b.lane_token);
        let ((ida, la), (idb, lb)) = (device("a"), device("b"));
        let (ioa, iob) = tokio::io::duplex(1 << 20);
        let (joined, accepted) = tokio::join!(
            join(ioa, idb, &la, &a, ea.clone()),
            accept(iob, REMOTE, ida, &lb, eb.clone(), &tasks)
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
        let (a, _b, _ea, eb) = pair(&scope(&token)).await;
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
            let r = accept(iob, REMOTE, proven, &lb, eb.clone(), &scope(&token)).await;
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
        let (a, b, _ea, eb) = pair(&scope(&token)).await;
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

    /// Every reader and writer task of a session and of its lanes is on the scope's tracker,
    /// and all of them end once the shutdown token is cancelled.
    #[tokio::test]
    async fn no_session_task_outlives_the_shutdown() {
        let token = CancellationToken::new();
        let tasks = scope(&token);
        let (a, b, ea, eb) = pair(&tasks).await;
        let ((ida, la), (idb, lb)) = (device("a"), device("b"));
        let (ioa, iob) = tokio::io::duplex(1 << 20);
        let (joined, accepted) = tokio::join!(
            join(ioa, idb, &la, &a, ea.clone()),
            accept(iob, REMOTE, ida, &lb, eb.clone(), &tasks)
        );
        joined.unwrap();
        assert!(matches!(accepted.unwrap(), Accepted::Lane(_)));
        // Two sessions of two connections each: a reader and a writer per connection.
        assert_eq!(tasks.tracker.len(), 8);
        drop((a, b));
        token.cancel();
        tasks.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.tracker.wait())
            .await
            .expect("session tasks still running 10 s after shutdown");
        assert!(tasks.tracker.is_empty());
    }
}
