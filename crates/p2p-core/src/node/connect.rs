//! Connecting to peers: the listener's accept loop (with its handshake limits), dialing (TCP,
//! TLS, the protocol handshake), the further connections (lanes) of a session, and the table of
//! live sessions that this file owns ([`Sessions`]) — with the bridge the sessions report to
//! ([`Events`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use super::errors::{DialError, TlsHandshakeError};
use super::{Inner, Node, NodeError, SessionInfo, lock};
use crate::error_chain;
use crate::net::device_id::DeviceId;
use crate::net::session::{self, LocalInfo, Session, SessionError, SessionEvents};
use crate::net::{tls, tune};
use crate::transfer::{MAX_CHUNK, MAX_WINDOW};

/// Time allowed to open a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes running at once on the listener; connections beyond are dropped at once.
const MAX_HANDSHAKES: usize = 64;
/// Handshakes running at once from one address, so one host cannot take every slot.
const MAX_HANDSHAKES_PER_IP: usize = 8;
/// How much encrypted data TLS may hold for the socket: a chunk's worth, so that it goes out
/// in a few large writes (rustls' default is 64 KiB).
const TLS_BUFFER: usize = 1 << 20;

/// The live sessions of the node, and the lock that serialises dialing.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    // Live sessions by local session id. Registered after their handshake; a session's reader
    // removes its entry when it ends (`Events::ended`), while RPCs, dialing and lane joins
    // read the table: a short std lock, never held across an await.
    map: Mutex<HashMap<u64, Arc<Session>>>,
    // Serialises dialing so that two sends to one peer share one new session (held across the
    // whole dial, hence tokio's mutex).
    dial: tokio::sync::Mutex<()>,
}

impl Sessions {
    /// Records a new session — unless it already ended: its tasks started before this insert,
    /// and their removal then ran first and would leave a dead entry behind.
    fn insert(&self, s: Arc<Session>) {
        let id = s.id;
        let closed = s.closed.clone();
        lock(&self.map).insert(id, s);
        if closed.is_cancelled() {
            lock(&self.map).remove(&id);
        }
    }

    fn remove(&self, id: u64) {
        lock(&self.map).remove(&id);
    }

    /// How many sessions are up.
    pub(super) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Every live session.
    pub(super) fn all(&self) -> Vec<Arc<Session>> {
        lock(&self.map).values().cloned().collect()
    }

    /// The devices with a session up.
    pub(super) fn connected_devices(&self) -> HashSet<DeviceId> {
        lock(&self.map).values().map(|s| s.peer.id).collect()
    }

    /// Closes every session with device `id`.
    pub(super) fn close_device(&self, id: &DeviceId) {
        for s in lock(&self.map).values().filter(|s| s.peer.id == *id) {
            s.close();
        }
    }

    /// The sessions whose peer id, listen address or remote address is `peer`.
    fn matching(&self, peer: &str) -> Vec<Arc<Session>> {
        lock(&self.map)
            .values()
            .filter(|s| {
                s.peer.device_id == peer
                    || s.peer.listen_addr.to_string() == peer
                    || s.remote.to_string() == peer
            })
            .cloned()
            .collect()
    }

    /// The session a connection presenting lane `token` from device `peer` joins: one the
    /// peer opened to us, still up.
    fn lane_of(&self, token: &[u8], peer: DeviceId) -> Option<Arc<Session>> {
        lock(&self.map)
            .values()
            .find(|s| {
                !s.outgoing
                    && s.peer.id == peer
                    && !s.closed.is_cancelled()
                    && same_secret(&s.lane_token, token)
            })
            .cloned()
    }

    /// A live session to reuse for `addrs`: one we opened to that address, or one the peer
    /// opened to us claiming that listen address — the latter only when the device is pinned,
    /// since a claimed port proves nothing (anyone can connect first and claim it).
    fn reusable(&self, addrs: &[SocketAddr], expected: Option<DeviceId>) -> Option<Arc<Session>> {
        lock(&self.map)
            .values()
            .find(|s| {
                !s.closed.is_cancelled()
                    && addrs.iter().any(|a| {
                        (s.outgoing && *a == s.remote)
                            || (*a == s.peer.listen_addr && expected == Some(s.peer.id))
                    })
            })
            .cloned()
    }
}

/// Compares a secret without an early exit (no timing hint of how much of it matched).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    !a.is_empty() && a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Handshakes in progress by remote address.
type IpCounts = Mutex<HashMap<IpAddr, usize>>;

fn release_ip(counts: &IpCounts, ip: IpAddr) {
    let mut m = lock(counts);
    if let Some(n) = m.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            m.remove(&ip);
        }
    }
}

/// Gives back a per-address handshake slot when dropped.
struct IpSlot<'a>(&'a IpCounts, IpAddr);

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        release_ip(self.0, self.1);
    }
}

/// Why an incoming connection did not become a session (it is only logged).
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("TLS handshake failed")]
    Tls(#[source] TlsHandshakeError),
    #[error(transparent)]
    Certificate(rustls::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// The node as the sessions see it: a weak handle, so sessions do not keep the node alive.
struct Events(Weak<Inner>);

impl SessionEvents for Events {
    fn offer(&self, session: Arc<Session>, info: wire::TransferInfo, frames: mpsc::Receiver<Body>) {
        if let Some(inner) = self.0.upgrade() {
            let node = Node { inner };
            let span = tracing::info_span!(
                "offer",
                transfer = %info.transfer_id,
                peer = %session.peer.id.short()
            );
            node.clone().spawn(span, async move {
                node.handle_offer(session, info, frames).await
            });
        }
    }

    fn stray_cancel(&self, session: &Arc<Session>, cancel: &wire::Cancel) {
        if let Some(inner) = self.0.upgrade() {
            Node { inner }.stray_cancel(session, cancel);
        }
    }

    fn overrun(&self, session: &Arc<Session>, transfer_id: &str, reason: &str) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if let Some(entry) = inner.transfers.get(transfer_id) {
            if entry.snapshot().peer_id == session.peer.device_id {
                let _ = entry
                    .peer_fault
                    .set(format!("peer broke the protocol: {reason}"));
            }
        }
    }

    fn lane_of(&self, token: &[u8], peer: DeviceId) -> Option<Arc<Session>> {
        self.0.upgrade()?.sessions.lane_of(token, peer)
    }

    fn ended(&self, session: &Arc<Session>, _reason: &str) {
        if let Some(inner) = self.0.upgrade() {
            inner.sessions.remove(session.id);
        }
    }
}

impl Node {
    /// What this node tells peers about itself in a handshake.
    pub(super) fn local_info(&self) -> LocalInfo {
        LocalInfo {
            device_id: self.inner.identity.device_id.to_string(),
            name: self.settings().name,
            listen_port: self.inner.listen_addr.port(),
        }
    }

    /// Where session tasks are spawned: under the node's shutdown token and tracker.
    pub(super) fn task_scope(&self) -> session::TaskScope {
        session::TaskScope {
            shutdown: self.inner.shutdown.clone(),
            tracker: self.inner.tasks.clone(),
        }
    }

    /// The handle the node's sessions report to.
    pub(super) fn events(&self) -> Arc<dyn SessionEvents> {
        Arc::new(Events(Arc::downgrade(&self.inner)))
    }

    /// Accepts peer connections until shutdown; each runs its TLS and protocol handshake in a
    /// task of its own, within the handshake limits.
    pub(super) async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let pending_by_ip: Arc<IpCounts> = Arc::default();
        loop {
            let accepted = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Never wait for a slot: a flood of idle connections must not stall the listener.
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "too many handshakes at once; dropping connection");
                continue;
            };
            let ip = remote.ip();
            let per_ip = {
                let mut m = lock(&pending_by_ip);
                let n = m.entry(ip).or_insert(0);
                *n += 1;
                *n
            };
            if per_ip > MAX_HANDSHAKES_PER_IP {
                release_ip(&pending_by_ip, ip);
                tracing::warn!(%remote, "too many handshakes from one address; dropping connection");
                continue;
            }
            let node = self.clone();
            let pending_by_ip = pending_by_ip.clone();
            self.spawn(tracing::info_span!("handshake", %remote), async move {
                let _permit = permit;
                let _ip_slot = IpSlot(&pending_by_ip, ip);
                tune::tune(&stream);
                // One deadline for TLS and the protocol handshake together: a silent or slow
                // client is dropped within HANDSHAKE_TIMEOUT whatever it stalls on.
                let handshake = async {
                    let mut tls = node
                        .inner
                        .tls_acceptor
                        .accept(buffered(stream))
                        .await
                        .map_err(|e| AcceptError::Tls(e.into()))?;
                    tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER));
                    let proven = tls::peer_id(tls.get_ref().1).map_err(AcceptError::Certificate)?;
                    let accepted = session::accept(
                        tls,
                        remote,
                        proven,
                        &node.local_info(),
                        node.events(),
                        &node.task_scope(),
                    )
                    .await?;
                    Ok::<_, AcceptError>(accepted)
                };
                match tokio::time::timeout(session::HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(session::Accepted::Session(s))) => node.register(s),
                    Ok(Ok(session::Accepted::Lane(s))) => {
                        tracing::debug!(%remote, session = s.id, "connection joined a session as a lane")
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, cause = %error_chain(&e), "incoming peer handshake failed")
                    }
                    Err(_) => tracing::info!(%remote, "incoming peer handshake timed out"),
                }
            });
        }
    }

    /// Opens a session to `peer` — `HOST:PORT`, `DEVICE-ID@HOST:PORT` to require that device,
    /// or the name or id prefix of a peer found by discovery (which then must prove the id its
    /// beacons announced) — or returns the live one with that address. Without an explicit id, a trusted
    /// device last seen at that address is required; an unknown address is learnt on first
    /// contact.
    ///
    /// # Errors
    /// [`NodeError::BadAddress`], [`NodeError::NoAddress`], [`NodeError::PeerLookup`] or
    /// [`NodeError::DeviceLookup`] for a peer that does not parse or resolve;
    /// [`NodeError::Unreachable`] when the connection or handshake fails (including a peer
    /// that is not the device expected); [`NodeError::TlsSetup`].
    pub(crate) async fn connect(&self, peer: &str) -> Result<Arc<Session>, NodeError> {
        let target = self.resolve_target(peer)?;
        let peer = target.as_str();
        let (explicit, hostport) = match peer.rsplit_once('@') {
            Some((id, hp)) => (Some(self.resolve_device(id)?), hp),
            None => (None, peer),
        };
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(hostport).await {
            Ok(a) => a.collect(),
            Err(source) => {
                return Err(NodeError::BadAddress {
                    peer: hostport.to_owned(),
                    source,
                });
            }
        };
        if addrs.is_empty() {
            return Err(NodeError::NoAddress(hostport.to_owned()));
        }
        let unreachable = |source: DialError| NodeError::Unreachable {
            peer: peer.to_owned(),
            source,
        };
        let expected = match explicit {
            Some(id) => Some(id),
            None => addrs
                .iter()
                .find_map(|a| self.inner.store.trusted_at(&a.to_string()).ok().flatten()),
        };
        let _dialing = self.inner.sessions.dial.lock().await;
        if let Some(s) = self.inner.sessions.reusable(&addrs, expected) {
            return match expected {
                Some(want) if want != s.peer.id => Err(unreachable(DialError::WrongDevice {
                    found: s.peer.id,
                    expected: want,
                })),
                _ => Ok(s),
            };
        }
        let connector =
            tokio_rustls::TlsConnector::from(tls::client_config(&self.inner.identity, expected)?);
        let mut last = None;
        for addr in addrs {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = Some(DialError::Connect(e));
                    continue;
                }
                Err(_) => {
                    last = Some(DialError::ConnectTimeout(CONNECT_TIMEOUT));
                    continue;
                }
            };
            tune::tune(&stream);
            let proposal = wire::Config {
                chunk_size: MAX_CHUNK,
                compress: true,
                level: crate::transfer::DEFAULT_LEVEL,
                windowed: true,
                window_size: MAX_WINDOW,
            };
            let handshake = async {
                let (tls, proven) = connect_tls(&connector, stream).await?;
                session::initiate(
                    tls,
                    addr,
                    proven,
                    &self.local_info(),
                    proposal,
                    self.events(),
                    &self.task_scope(),
                )
                .await
                .map_err(DialError::Session)
            };
            let s = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| unreachable(DialError::HandshakeTimeout(session::HANDSHAKE_TIMEOUT)))?
                .map_err(unreachable)?;
            self.register(s.clone());
            self.open_lanes(addr, &s);
            return Ok(s);
        }
        Err(match last {
            Some(e) => unreachable(e),
            None => NodeError::NoAddress(hostport.to_owned()),
        })
    }

    /// Opens the further connections (lanes) of a new outgoing session, in the background:
    /// one connection's send buffer may be too small for a long, fast path (see `tune`), so a
    /// session gets as many as it takes to have `SESSION_SNDBUF` in all (at most `MAX_LANES`).
    /// A lane that cannot be opened is only logged: the session works with fewer.
    fn open_lanes(&self, addr: SocketAddr, s: &Arc<Session>) {
        let extra = tune::lanes_wanted().saturating_sub(1);
        if s.lane_token.is_empty() || extra == 0 {
            return;
        }
        let node = self.clone();
        let s = s.clone();
        let span = tracing::info_span!("lanes", session = s.id);
        self.spawn(span, async move {
            let config = match tls::client_config(&node.inner.identity, Some(s.peer.id)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(cause = %error_chain(&e), "no TLS configuration for lanes");
                    return;
                }
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            for _ in 0..extra {
                if s.closed.is_cancelled() {
                    return;
                }
                let lane = async {
                    let stream = TcpStream::connect(addr).await.map_err(DialError::Connect)?;
                    tune::tune(&stream);
                    let (tls, proven) = connect_tls(&connector, stream).await?;
                    session::join(tls, proven, &node.local_info(), &s, node.events()).await?;
                    Ok::<_, DialError>(())
                };
                let joined = tokio::select! {
                    r = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, lane) => r,
                    _ = s.closed.cancelled() => return,
                };
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(session = s.id, cause = %error_chain(&e), "cannot open a lane");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(session = s.id, "opening a lane timed out");
                        return;
                    }
                }
            }
        });
    }

    /// Records a new session and its device.
    pub(super) fn register(&self, s: Arc<Session>) {
        if let Err(e) =
            self.inner
                .store
                .seen(&s.peer.id, &s.peer.name, &s.peer.listen_addr.to_string())
        {
            tracing::warn!(cause = %e, "cannot record the peer in the state store");
        }
        let trusted = self.is_trusted(&s.peer.id);
        tracing::info!(peer = %s.peer.id, name = %s.peer.name, trusted, "peer session up");
        self.inner.sessions.insert(s);
    }

    /// Live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .inner
            .sessions
            .all()
            .iter()
            .map(|s| SessionInfo::of(s, self.is_trusted(&s.peer.id)))
            .collect();
        v.sort_by_key(|s| s.established_at_ms);
        v
    }

    /// Opens (or reuses) a session, for `Connect`.
    ///
    /// # Errors
    /// [`NodeError::BadAddress`], [`NodeError::NoAddress`],
    /// [`NodeError::PeerLookup`] or [`NodeError::DeviceLookup`] for a peer that does not parse or
    /// resolve; [`NodeError::Unreachable`] when the connection or handshake fails;
    /// [`NodeError::TlsSetup`].
    pub async fn open_session(&self, peer: &str) -> Result<SessionInfo, NodeError> {
        self.connect(peer)
            .await
            .map(|s| SessionInfo::of(&s, self.is_trusted(&s.peer.id)))
    }

    /// Closes the sessions whose peer id, listen address or remote address is `peer`.
    ///
    /// # Errors
    /// [`NodeError::NoSession`] if none matches.
    pub fn disconnect(&self, peer: &str) -> Result<u32, NodeError> {
        let sessions = self.inner.sessions.matching(peer);
        if sessions.is_empty() {
            return Err(NodeError::NoSession(peer.to_owned()));
        }
        for s in &sessions {
            s.close();
        }
        Ok(sessions.len() as u32)
    }
}

/// The TLS client side of a peer connection, and the device its certificate proves.
async fn connect_tls(
    connector: &tokio_rustls::TlsConnector,
    stream: TcpStream,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::io::BufReader<TcpStream>>,
        crate::DeviceId,
    ),
    DialError,
> {
    let mut tls = connector
        .connect(tls::server_name(), buffered(stream))
        .await
        .map_err(|e| DialError::Tls(e.into()))?;
    tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER));
    let proven = tls::peer_id(tls.get_ref().1).map_err(DialError::Certificate)?;
    Ok((tls, proven))
}

/// TLS reads its records a few KiB at a time; a buffer under it turns that into one socket
/// read per 256 KiB.
fn buffered(stream: TcpStream) -> tokio::io::BufReader<TcpStream> {
    tokio::io::BufReader::with_capacity(256 << 10, stream)
}
