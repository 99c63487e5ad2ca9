//! The session handshake on both sides — `Hello`/`HelloAck`, then `Config`/`ConfigAck` — and the
//! join of a further connection to a session as a lane. Every step is bounded by
//! [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT); a refusal is reported to the peer before the
//! connection closes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    HANDSHAKE_TIMEOUT, LocalInfo, PeerInfo, Session, SessionError, SessionEvents, TaskScope, start,
};
use crate::net::device_id::DeviceId;
use crate::net::wire::{self as codec, caps};
use crate::transfer::{MAX_CHUNK, MAX_WINDOW};

pub(super) fn hello(local: &LocalInfo) -> wire::Hello {
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

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: Body,
) -> Result<(), SessionError> {
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

/// The peer as its certificate proved it (`proven`) and as it described itself in its `Hello`
/// or `HelloAck` (name and version cleaned for display; it listens on `port` at the address it
/// connected from or was reached at).
fn peer_info(
    proven: DeviceId,
    name: &str,
    version: &str,
    remote: SocketAddr,
    port: u32,
) -> Result<PeerInfo, SessionError> {
    let port = u16::try_from(port)
        .map_err(|_| SessionError::Protocol(format!("listen port {port} out of range")))?;
    Ok(PeerInfo {
        id: proven,
        device_id: proven.to_string(),
        name: clean_name(name),
        version: clean_name(version),
        listen_addr: SocketAddr::new(remote.ip(), port),
    })
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
pub(crate) async fn initiate<S>(
    stream: S,
    remote: SocketAddr,
    proven: DeviceId,
    local: &LocalInfo,
    proposal: wire::Config,
    events: Arc<dyn SessionEvents>,
    scope: &TaskScope,
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
        let peer = peer_info(
            proven,
            &ack.name,
            &ack.software_version,
            remote,
            ack.listen_port,
        )?;
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
        rd, wr, peer, remote, true, caps, limits, token, events, scope,
    ))
}

/// Length of a lane token.
pub(super) const LANE_TOKEN_LEN: usize = 16;

/// Joins `session` (one we initiated) with a further connection to the same peer, already
/// secured by TLS pinned to the same device, as one more lane.
///
/// # Errors
/// [`SessionError`] if the session has no lanes, or the join handshake fails or times out.
pub(crate) async fn join<S>(
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
pub(crate) const MAX_PEER_NAME: usize = 64;

/// A peer's name as shown to the user: control characters (terminal escapes) replaced, length
/// capped.
pub(crate) fn clean_name(name: &str) -> String {
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
pub(crate) enum Accepted {
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
pub(crate) async fn accept<S>(
    stream: S,
    remote: SocketAddr,
    proven: DeviceId,
    local: &LocalInfo,
    events: Arc<dyn SessionEvents>,
    scope: &TaskScope,
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
        let peer = peer_info(proven, &h.name, &h.software_version, remote, h.listen_port)?;
        Ok(Handshake::New(peer, caps, agreed, token))
    };
    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(match done {
        Handshake::New(peer, caps, limits, token) => Accepted::Session(start(
            rd, wr, peer, remote, false, caps, limits, token, events, scope,
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
