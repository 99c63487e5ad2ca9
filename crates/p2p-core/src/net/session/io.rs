//! The two tasks of each connection of a session: the writer, which drains the session's
//! queue with vectored writes, and the reader, which answers pings, routes frames by transfer id
//! and reports new offers and the end of the session.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::route::{Route, route_capacity};
use super::{DRAIN_ON_CLOSE, IDLE_TIMEOUT, PING_INTERVAL, Session, SessionEvents};
use crate::net::wire::{self as codec, FrameReader, OutFrame, WireError};

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

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
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

/// Reads one connection of the session: `first` for the connection the session was made
/// on (its end ends the session and is reported), else a lane (its end closes the session,
/// which ends the first one's reader). Pongs go back on the same connection (`reply`), so that
/// every connection shows signs of life.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
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
