//! An incoming offer, from its `TransferInfo` to a decision: the checks every offer passes
//! (id, load, manifest), a resume or a new transfer, the device's receiving rule, the wait for
//! the user's `accept` or `reject` (at most [`OFFER_TIMEOUT`]), and the hand-over of an accepted
//! offer to the receive supervision (`incoming`). The offers waiting for a decision are this
//! file's state ([`Offers`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    AcceptPolicy, IncomingOffer, Node, NodeError, UntrustedPolicy, incoming, lock, now_ms,
};
use crate::net::device_id::DeviceId;
use crate::net::session::Session;
use crate::store::DeviceAccept;
use crate::transfer::manifest;
use crate::transfer::{Direction, NewTransfer, TransferEntry, TransferState};

/// How long an incoming offer waits for a decision before it is rejected as expired.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Incoming transfers (running or waiting) at once; more are rejected as busy.
const MAX_INCOMING_TRANSFERS: usize = 64;
/// Offers waiting for a decision at once; more are rejected as busy.
const MAX_WAITING_OFFERS: usize = 32;

/// What the user decided about an offer.
enum Decision {
    Accept(Option<PathBuf>),
    Reject(String),
}

/// An offer waiting for a decision, and where to send it.
struct PendingOffer {
    offer: IncomingOffer,
    decide: oneshot::Sender<Decision>,
}

/// The offers waiting for a decision, by transfer id.
#[derive(Default)]
pub(super) struct Offers {
    // Inserted by the task that waits for the decision; taken by `decide` (an RPC), or removed
    // by the waiting task when it stops waiting (expiry, cancel, session lost). A short std
    // lock, never held across an await.
    waiting: Mutex<HashMap<String, PendingOffer>>,
}

impl std::fmt::Debug for Offers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offers")
            .field("waiting", &lock(&self.waiting).len())
            .finish()
    }
}

impl Offers {
    fn len(&self) -> usize {
        lock(&self.waiting).len()
    }

    fn insert(&self, id: String, offer: PendingOffer) {
        lock(&self.waiting).insert(id, offer);
    }

    /// Takes offer `id` out of the waiting ones.
    fn take(&self, id: &str) -> Option<PendingOffer> {
        lock(&self.waiting).remove(id)
    }

    /// Withdraws offer `id`, if it waits (its waiting task sees its decision channel close).
    pub(super) fn withdraw(&self, id: &str) {
        lock(&self.waiting).remove(id);
    }

    /// The waiting offers, oldest first.
    fn list(&self) -> Vec<IncomingOffer> {
        let mut v: Vec<IncomingOffer> = lock(&self.waiting)
            .values()
            .map(|p| p.offer.clone())
            .collect();
        v.sort_by_key(|o| o.offered_at_ms);
        v
    }
}

impl Node {
    /// Handles a new `TransferInfo` from `session`, to its end; then closes its route.
    pub(super) async fn handle_offer(
        self,
        session: Arc<Session>,
        info: wire::TransferInfo,
        frames: mpsc::Receiver<Body>,
    ) {
        let id = info.transfer_id.clone();
        self.offer_inner(&session, info, frames).await;
        // `frames` went with offer_inner: this offer's route is closed now.
        session.unroute_ended(&id);
    }

    async fn offer_inner(
        &self,
        session: &Arc<Session>,
        info: wire::TransferInfo,
        frames: mpsc::Receiver<Body>,
    ) {
        let id = info.transfer_id.clone();
        let reject = |reason: String| session.reject(&id, reason);
        // Ids are UUIDs in their canonical form (lowercase, hyphenated): short, printable,
        // never equal to a short id the user types, and one spelling per transfer (temporary
        // file names carry it).
        if !uuid::Uuid::parse_str(&id).is_ok_and(|u| u.hyphenated().to_string() == id) {
            reject("the transfer id is not a UUID in its canonical form".into()).await;
            return;
        }
        let active = self.inner.transfers.active_receives();
        if active >= MAX_INCOMING_TRANSFERS {
            reject(format!(
                "receiver busy: {active} incoming transfers already running or waiting"
            ))
            .await;
            return;
        }
        let total_bytes: u64 = info
            .files
            .iter()
            .map(|f| f.size)
            .fold(0, u64::saturating_add);
        // Validation is linear but may walk a million entries: keep it off the reactor.
        let (limits_chunk, limits_window) = (session.limits.chunk_size, session.limits.window_size);
        let (info, verdict) = match tokio::task::spawn_blocking(move || {
            let v = manifest::validate(&info, limits_chunk, limits_window);
            (info, v)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                reject(format!("receiver error: {e}")).await;
                return;
            }
        };
        let (info, frames) = if verdict.is_ok() && info.resume {
            match self.resume_offer(session, info, frames).await {
                Ok(()) => return,
                Err(back) => back,
            }
        } else {
            (info, frames)
        };
        let new = NewTransfer {
            id: id.clone(),
            direction: Direction::Receive,
            state: TransferState::WaitingAccept,
            peer_id: session.peer.device_id.clone(),
            peer_name: session.peer.name.clone(),
            peer_address: session.peer.listen_addr.to_string(),
            roots: if verdict.is_ok() {
                info.roots.clone()
            } else {
                Vec::new()
            },
            total_files: info.files.len() as u64,
            total_bytes,
            destination: String::new(),
            started: None,
            max_speed: 0,
        };
        let token = CancellationToken::new();
        let entry = match self.inner.transfers.insert_new(new, token) {
            Some(e) => e,
            None => {
                let existing = self.inner.transfers.get(&id).filter(|e| {
                    e.direction == Direction::Receive
                        && e.snapshot().peer_id == session.peer.device_id
                });
                let Some(e) = existing.filter(|_| verdict.is_ok()) else {
                    let reason = match &verdict {
                        Err(v) => v.to_string(),
                        Ok(()) => "a transfer with this id already exists".into(),
                    };
                    reject(reason).await;
                    return;
                };
                match e.state() {
                    // Offered before, interrupted before anyone accepted it: it waits again.
                    TransferState::Interrupted => {
                        e.set_state(TransferState::WaitingAccept, "");
                        e
                    }
                    s if s.is_final() => {
                        let error = e.snapshot().error;
                        reject(if error.is_empty() {
                            format!("the transfer already ended here ({s:?})")
                        } else {
                            error
                        })
                        .await;
                        return;
                    }
                    // Still waiting or running on a session this side has not seen end yet
                    // (the sender noticed first): withdraw it, and let the sender come back.
                    _ => {
                        self.inner.offers.withdraw(&id);
                        self.inner.receiving.stop(&id);
                        session
                            .cancel(
                                &id,
                                "the previous attempt of this transfer is still stopping",
                                true,
                            )
                            .await;
                        return;
                    }
                }
            }
        };
        if let Err(e) = verdict {
            tracing::warn!(transfer = %id, peer = %session.peer.device_id, cause = %e, "rejected an unsafe offer");
            entry.set_state(TransferState::Rejected, e.to_string());
            reject(e.to_string()).await;
            return;
        }
        session
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.receive(session, &entry, info, frames).await;
        session
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The receiving rule for offers of device `peer`: its own rule, else the daemon's
    /// policy (untrusted devices never get `auto`); its download dir; whether it is trusted.
    fn rule_for(&self, peer: &DeviceId) -> (DeviceAccept, Option<PathBuf>, bool) {
        let settings = self.settings();
        let device = self
            .inner
            .store
            .get(peer)
            .ok()
            .flatten()
            .filter(|d| d.trusted);
        match &device {
            Some(d) => (
                d.accept.unwrap_or(match settings.accept {
                    AcceptPolicy::Auto => DeviceAccept::Auto,
                    AcceptPolicy::Ask => DeviceAccept::Ask,
                }),
                d.download_dir.clone(),
                true,
            ),
            None => match settings.accept_untrusted {
                UntrustedPolicy::Ask => (DeviceAccept::Ask, None, false),
                UntrustedPolicy::Reject => (DeviceAccept::Reject, None, false),
            },
        }
    }

    fn refusal_text(&self, trusted: bool) -> String {
        if trusted {
            format!(
                "device {} refuses transfers from this device",
                self.inner.identity.device_id
            )
        } else {
            format!(
                "device {} does not accept transfers from untrusted devices",
                self.inner.identity.device_id
            )
        }
    }

    /// Why offers of device `peer` are refused now, if they are.
    pub(super) fn refusal(&self, peer: &DeviceId) -> Option<String> {
        let (rule, _, trusted) = self.rule_for(peer);
        (rule == DeviceAccept::Reject).then(|| self.refusal_text(trusted))
    }

    /// Decides a new offer by the device's rule — at once, or after waiting for the user — and
    /// runs an accepted one.
    async fn receive(
        &self,
        session: &Arc<Session>,
        entry: &Arc<TransferEntry>,
        info: wire::TransferInfo,
        mut route_rx: mpsc::Receiver<Body>,
    ) {
        let id = info.transfer_id.clone();
        let send_reject = |reason: String| session.reject(&id, reason);
        let (rule, device_dir, trusted) = self.rule_for(&session.peer.id);
        let decision = match rule {
            DeviceAccept::Auto => Decision::Accept(device_dir.clone()),
            DeviceAccept::Reject => Decision::Reject(self.refusal_text(trusted)),
            DeviceAccept::Ask if self.inner.offers.len() >= MAX_WAITING_OFFERS => Decision::Reject(
                format!("receiver busy: {MAX_WAITING_OFFERS} offers already wait for a decision"),
            ),
            DeviceAccept::Ask => {
                let (tx, rx) = oneshot::channel();
                let offer = IncomingOffer {
                    peer_trusted: trusted,
                    transfer_id: id.clone(),
                    peer_id: session.peer.device_id.clone(),
                    peer_name: session.peer.name.clone(),
                    peer_address: session.peer.listen_addr.to_string(),
                    roots: info.roots.clone(),
                    total_files: info.files.len() as u64,
                    total_bytes: info.total_bytes,
                    offered_at_ms: now_ms(),
                    expires_at_ms: now_ms() + OFFER_TIMEOUT.as_millis() as u64,
                };
                tracing::info!(transfer = %id, peer = %session.peer.device_id, "offer waits for accept or reject");
                self.inner
                    .offers
                    .insert(id.clone(), PendingOffer { offer, decide: tx });
                let decided = tokio::select! {
                    d = rx => d.ok(),
                    _ = tokio::time::sleep(OFFER_TIMEOUT) => Some(Decision::Reject("offer expired".into())),
                    _ = entry.cancel.cancelled() => Some(Decision::Reject("cancelled by receiver".into())),
                    _ = session.closed.cancelled() => None,
                    f = route_rx.recv() => match f {
                        Some(Body::Cancel(c)) => {
                            self.inner.offers.withdraw(&id);
                            // A pause or a restart of the sender withdraws the offer for now:
                            // when it comes back, the offer waits again.
                            let state = if c.resumable {
                                TransferState::Interrupted
                            } else {
                                TransferState::Cancelled
                            };
                            entry.set_state(state, c.reason);
                            return;
                        }
                        // Chunks (or anything else) before Ready break the protocol: no
                        // session was lost, and the offer is not kept for a resume.
                        Some(other) => {
                            self.inner.offers.withdraw(&id);
                            let reason = format!(
                                "peer sent {} before the offer was accepted",
                                crate::net::wire::body_name(&other)
                            );
                            tracing::warn!(transfer = %id, peer = %session.peer.device_id, "{reason}");
                            entry.set_state(TransferState::Failed, reason.clone());
                            session.fail(&id, reason).await;
                            session.unroute(&id);
                            return;
                        }
                        None => None,
                    },
                };
                self.inner.offers.withdraw(&id);
                match decided {
                    Some(d) => d,
                    None => {
                        // The sender offers it again when it reconnects; it waits again then.
                        entry.set_state(TransferState::Interrupted, "session to peer lost");
                        return;
                    }
                }
            }
        };
        let dest_dir = match decision {
            Decision::Reject(reason) => {
                entry.set_state(TransferState::Rejected, reason.clone());
                send_reject(reason).await;
                return;
            }
            Decision::Accept(dir) => dir
                .or(device_dir)
                .unwrap_or_else(|| self.settings().download_dir),
        };
        let Some(claim) = self.try_claim(&id) else {
            entry.set_state(
                TransferState::Interrupted,
                "another attempt is still stopping",
            );
            session
                .cancel(
                    &id,
                    "another attempt of this transfer is still stopping",
                    true,
                )
                .await;
            return;
        };
        self.run_receive(
            session,
            entry,
            info,
            route_rx,
            incoming::Plan::Fresh(dest_dir),
            claim,
        )
        .await;
    }

    /// Offers waiting for a decision.
    pub fn incoming(&self) -> Vec<IncomingOffer> {
        self.inner.offers.list()
    }

    /// Accepts a waiting offer, into `dest` or the download dir.
    ///
    /// # Errors
    /// [`NodeError::NoOffer`] if no such offer waits, [`NodeError::OfferGone`] if it stopped
    /// waiting just now; [`NodeError::NotAbsolute`] for a relative `dest`.
    pub fn accept(&self, id: &str, dest: Option<PathBuf>) -> Result<(), NodeError> {
        if let Some(d) = &dest {
            if !d.is_absolute() {
                return Err(NodeError::NotAbsolute {
                    what: "destination",
                    path: d.clone(),
                });
            }
        }
        self.decide(id, Decision::Accept(dest))
    }

    /// Rejects a waiting offer; the sender is told `reason`.
    ///
    /// # Errors
    /// [`NodeError::NoOffer`] if no such offer waits, [`NodeError::OfferGone`] if it stopped
    /// waiting just now.
    pub fn reject(&self, id: &str, reason: &str) -> Result<(), NodeError> {
        let reason = if reason.is_empty() {
            "rejected by receiver"
        } else {
            reason
        };
        self.decide(id, Decision::Reject(reason.to_owned()))
    }

    fn decide(&self, id: &str, d: Decision) -> Result<(), NodeError> {
        let pending = self
            .inner
            .offers
            .take(id)
            .ok_or_else(|| NodeError::NoOffer(id.to_owned()))?;
        pending
            .decide
            .send(d)
            .map_err(|_| NodeError::OfferGone(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::tests::{node_with, settings};
    use super::super::{ErrorKind, NodeSettings};
    use super::*;
    use crate::net::session::{self, LocalInfo, SessionEvents};
    use crate::transfer::SendOptions;
    use crate::transfer::manifest::LocalManifest;

    /// The sending side of a bare session: it offers nothing to the node, only frames.
    struct Sender;

    impl SessionEvents for Sender {
        fn offer(&self, _: Arc<Session>, _: wire::TransferInfo, _: mpsc::Receiver<Body>) {}
        fn stray_cancel(&self, _: &Arc<Session>, _: &wire::Cancel) {}
        fn lane_of(&self, _: &[u8], _: DeviceId) -> Option<Arc<Session>> {
            None
        }
        fn ended(&self, _: &Arc<Session>, _: &str) {}
    }

    /// A session from a sender of our own to `node`, over an in-memory pipe: no socket, so
    /// that a paused clock only moves when everything waits for a timer.
    async fn session_to(node: &Node, parent: &CancellationToken) -> Arc<Session> {
        let id = DeviceId::from_spki(b"sender");
        let local = LocalInfo {
            device_id: id.to_string(),
            name: "sender".into(),
            listen_port: 1,
        };
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let proposal = wire::Config {
            chunk_size: crate::transfer::DEFAULT_CHUNK,
            compress: true,
            level: crate::transfer::DEFAULT_LEVEL,
            windowed: true,
            window_size: crate::transfer::DEFAULT_WINDOW,
        };
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let node_id = node.identity().device_id;
        let node_info = node.local_info();
        let scope = session::TaskScope {
            shutdown: parent.clone(),
            tracker: tokio_util::task::TaskTracker::new(),
        };
        let node_scope = node.task_scope();
        let (sender, accepted) = tokio::join!(
            session::initiate(
                ours,
                remote,
                node_id,
                &local,
                proposal,
                Arc::new(Sender),
                &scope
            ),
            session::accept(theirs, remote, id, &node_info, node.events(), &node_scope)
        );
        let session::Accepted::Session(s) = accepted.unwrap() else {
            panic!("a lane instead of a session");
        };
        node.register(s);
        sender.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_offer_nobody_decides_is_rejected_as_expired_after_offer_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_with(
            dir.path(),
            NodeSettings {
                accept: AcceptPolicy::Ask,
                ..settings(dir.path())
            },
        );
        let parent = CancellationToken::new();
        let sender = session_to(&node, &parent).await;

        let src = dir.path().join("offered.txt");
        std::fs::write(&src, b"wait for me").unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let info = LocalManifest::build(&[src])
            .unwrap()
            .offer(&id, SendOptions::default(), false);
        let (tx, mut answers) = mpsc::channel(8);
        sender.route(&id, tx);
        sender.send(Body::TransferInfo(info)).await.unwrap();

        // The offer waits (the sender is not trusted: it is asked about whatever the policy).
        let mut offers = Vec::new();
        for _ in 0..1000 {
            offers = node.incoming();
            if !offers.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let [offer] = offers.as_slice() else {
            panic!("one offer waits: {offers:?}");
        };
        assert_eq!(offer.transfer_id, id);
        assert!(!offer.peer_trusted);
        assert_eq!(
            offer.expires_at_ms - offer.offered_at_ms,
            OFFER_TIMEOUT.as_millis() as u64
        );

        // A second before the timeout it still waits, and the sender has heard nothing.
        tokio::time::sleep(OFFER_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(node.incoming().len(), 1);
        assert_eq!(
            node.transfer(&id).unwrap().state,
            TransferState::WaitingAccept
        );
        assert!(answers.try_recv().is_err());

        // Then it is rejected as expired, here and to the sender.
        let answer = tokio::time::timeout(Duration::from_secs(2), answers.recv())
            .await
            .expect("an answer within the timeout")
            .expect("the route is open");
        match answer {
            Body::Reject(r) => assert_eq!(
                (r.transfer_id, r.reason.as_str()),
                (id.clone(), "offer expired")
            ),
            other => panic!("expected Reject, got {other:?}"),
        }
        assert!(node.incoming().is_empty());
        let t = node.transfer(&id).unwrap();
        assert_eq!(
            (t.state, t.error.as_str()),
            (TransferState::Rejected, "offer expired")
        );
        let late = node.accept(&id, None).unwrap_err();
        assert_eq!(late.kind(), ErrorKind::NotFound, "{late}");

        sender.close();
        parent.cancel();
        assert!(node.shutdown(Duration::from_secs(5)).await);
    }
}
