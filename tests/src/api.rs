//! The control API over gRPC, as tests call it: a client per daemon, sends and the waits that
//! follow a transfer to a state or to its end, offers (accept, reject), cancel, sessions,
//! peers, history, device trust, and a trusting pair of daemons to start from. Each helper
//! panics with the call and its status on an RPC error; the `try_` ones return the result.

use std::path::Path;
use std::time::Duration;

use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::daemon::{Daemon, DaemonDirs, DaemonOptions};

/// Default wait for a transfer to end.
pub const T: Duration = Duration::from_secs(60);
/// A short wait.
pub const SHORT: Duration = Duration::from_secs(10);
/// How long one unary call may take where a test bounds it ([`peers`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A control client for `d` (connected within 5 s).
pub async fn client(d: &Daemon) -> ControlServiceClient<Channel> {
    let ch = tokio::time::timeout(
        Duration::from_secs(5),
        p2p_proto::uds::connect(&d.dirs.socket),
    )
    .await
    .expect("control connect timed out")
    .expect("connect to control socket");
    ControlServiceClient::new(ch)
}

/// `GetStatus` of `d` over gRPC.
pub async fn status(d: &Daemon) -> pb::GetStatusResponse {
    client(d)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

// ---------------------------------------------------------------------------------------
// Two daemons

/// Starts two daemons at once, with `a` and `b` as options, and makes them trust each other
/// (so that `--accept auto` applies between them).
pub async fn trusted_pair(a: DaemonOptions, b: DaemonOptions) -> (Daemon, Daemon) {
    let (a, b) = tokio::join!(
        Daemon::launch(DaemonDirs::new(), a),
        Daemon::launch(DaemonDirs::new(), b)
    );
    trust_each_other(&a, &b).await;
    (a, b)
}

// ---------------------------------------------------------------------------------------
// Sending and following transfers

/// Starts a send and returns its id (panics on an RPC error).
pub async fn send(
    from: &Daemon,
    paths: &[&Path],
    to: &str,
    options: Option<pb::SendOptions>,
) -> String {
    try_send(from, paths, to, options)
        .await
        .expect("Send RPC")
        .transfer_id
}

/// Starts a send and returns the RPC result.
pub async fn try_send(
    from: &Daemon,
    paths: &[&Path],
    to: &str,
    options: Option<pb::SendOptions>,
) -> Result<pb::SendResponse, tonic::Status> {
    let req = pb::SendRequest {
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        peer: to.to_owned(),
        options,
    };
    client(from)
        .await
        .send(req)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `paths` from `from` to `to` and follows the transfer to its end (at most
/// `timeout`); returns its final record.
pub async fn send_and_wait(
    from: &Daemon,
    paths: &[&Path],
    to: &str,
    options: Option<pb::SendOptions>,
    timeout: Duration,
) -> pb::Transfer {
    let id = send(from, paths, to, options).await;
    wait_done(from, &id, timeout).await
}

/// Waits (at most `timeout`) until transfer `id` on `d` ends; returns its final record.
pub async fn wait_done(d: &Daemon, id: &str, timeout: Duration) -> pb::Transfer {
    let mut c = client(d).await;
    let req = pb::WatchTransfersRequest {
        ids: vec![id.to_owned()],
        until_done: true,
    };
    let fut = async {
        let mut stream = c
            .watch_transfers(req)
            .await
            .expect("WatchTransfers")
            .into_inner();
        let mut last = None;
        while let Some(ev) = stream.next().await {
            last = ev.expect("event").transfer;
        }
        last.expect("at least one event")
    };
    let t = tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| panic!("transfer {id} did not end within {timeout:?}"));
    assert!(is_final(&t), "stream ended before the transfer did: {t:?}");
    t
}

/// `GetTransfer` of `id` on `d` (panics if there is none).
pub async fn transfer(d: &Daemon, id: &str) -> pb::Transfer {
    client(d)
        .await
        .get_transfer(pb::GetTransferRequest { id: id.to_owned() })
        .await
        .unwrap_or_else(|e| panic!("GetTransfer {id}: {e}"))
        .into_inner()
}

/// `ListTransfers` of `d`.
pub async fn transfers(d: &Daemon) -> Vec<pb::Transfer> {
    client(d)
        .await
        .list_transfers(pb::ListTransfersRequest {})
        .await
        .expect("ListTransfers")
        .into_inner()
        .transfers
}

/// Waits until `pred` holds for transfer `id` (polling GetTransfer), at most `timeout`.
pub async fn wait_for(
    d: &Daemon,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Transfer) -> bool,
) -> pb::Transfer {
    let mut c = client(d).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(t) = c
            .get_transfer(pb::GetTransferRequest { id: id.to_owned() })
            .await
        {
            let t = t.into_inner();
            if pred(&t) {
                return t;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition on transfer {id} not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until transfer `id` on `d` is in `want` (or has ended), at most `timeout`, and
/// checks it is `want`.
pub async fn wait_state(
    d: &Daemon,
    id: &str,
    want: pb::TransferState,
    timeout: Duration,
) -> pb::Transfer {
    let t = wait_for(d, id, timeout, |t| state(t) == want || is_final(t)).await;
    assert_eq!(state(&t), want, "{t:?}\n--- daemon ---\n{}", d.stderr());
    t
}

/// Checks that a transfer completed; on failure shows both daemons' logs.
pub fn assert_completed(t: &pb::Transfer, a: &Daemon, b: &Daemon) {
    assert_eq!(
        state(t),
        pb::TransferState::Completed,
        "{t:?}\n--- A ---\n{}\n--- B ---\n{}",
        a.stderr(),
        b.stderr()
    );
}

/// Checks that a transfer completed; on failure shows its state and error.
pub fn expect_completed(t: &pb::Transfer) {
    assert_eq!(
        state(t),
        pb::TransferState::Completed,
        "transfer ended {:?}: {}",
        state(t),
        t.error
    );
}

/// Whether a transfer has ended.
pub fn is_final(t: &pb::Transfer) -> bool {
    matches!(
        pb::TransferState::try_from(t.state),
        Ok(pb::TransferState::Completed
            | pb::TransferState::Failed
            | pb::TransferState::Cancelled
            | pb::TransferState::Rejected)
    )
}

/// The state of a transfer as an enum.
pub fn state(t: &pb::Transfer) -> pb::TransferState {
    pb::TransferState::try_from(t.state).unwrap_or(pb::TransferState::Unspecified)
}

// ---------------------------------------------------------------------------------------
// Offers

/// The incoming offers waiting on `d`.
pub async fn incoming(d: &Daemon) -> Vec<pb::IncomingOffer> {
    client(d)
        .await
        .list_incoming(pb::ListIncomingRequest {})
        .await
        .expect("ListIncoming")
        .into_inner()
        .offers
}

/// Waits until an incoming offer is listed on `d`, returns it.
pub async fn wait_offer(d: &Daemon, timeout: Duration) -> pb::IncomingOffer {
    let mut c = client(d).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let offers = c
            .list_incoming(pb::ListIncomingRequest {})
            .await
            .expect("ListIncoming")
            .into_inner()
            .offers;
        if let Some(o) = offers.into_iter().next() {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no offer within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts the incoming offer `id` on `d`, into `destination` (the default download dir
/// if `None`); panics on an RPC error.
pub async fn accept(d: &Daemon, id: &str, destination: Option<&Path>) {
    try_accept(d, id, destination)
        .await
        .unwrap_or_else(|e| panic!("AcceptIncoming {id}: {e}"));
}

/// Accepts the incoming offer `id` on `d` (see [`accept`]); the RPC's result.
pub async fn try_accept(
    d: &Daemon,
    id: &str,
    destination: Option<&Path>,
) -> Result<(), tonic::Status> {
    client(d)
        .await
        .accept_incoming(pb::AcceptIncomingRequest {
            transfer_id: id.to_owned(),
            destination: destination
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        })
        .await
        .map(|_| ())
}

/// Rejects the incoming offer `id` on `d` with `reason`; panics on an RPC error.
pub async fn reject(d: &Daemon, id: &str, reason: &str) {
    client(d)
        .await
        .reject_incoming(pb::RejectIncomingRequest {
            transfer_id: id.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("RejectIncoming {id}: {e}"));
}

/// Cancels transfer `id` on `d`; panics on an RPC error.
pub async fn cancel(d: &Daemon, id: &str) {
    try_cancel(d, id)
        .await
        .unwrap_or_else(|e| panic!("CancelTransfer {id}: {e}"));
}

/// Cancels transfer `id` on `d`; the RPC's result.
pub async fn try_cancel(d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    client(d)
        .await
        .cancel_transfer(pb::CancelTransferRequest { id: id.to_owned() })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Sessions, peers, history

/// Opens (or reuses) a session from `d` to `peer`; panics on an RPC error.
pub async fn connect(d: &Daemon, peer: &str) -> pb::Session {
    client(d)
        .await
        .connect(pb::ConnectRequest {
            peer: peer.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("Connect to {peer}: {e}"))
        .into_inner()
}

/// `ListSessions` of `d`.
pub async fn sessions(d: &Daemon) -> Vec<pb::Session> {
    client(d)
        .await
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions
}

/// Waits (at most `timeout`) until `d` has `n` sessions; returns them.
pub async fn wait_sessions(d: &Daemon, n: usize, timeout: Duration) -> Vec<pb::Session> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = sessions(d).await;
        if s.len() == n {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} sessions: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ListPeers` of `d`, which must answer within [`CALL_TIMEOUT`].
pub async fn peers(d: &Daemon) -> Vec<pb::Peer> {
    let mut c = client(d).await;
    tokio::time::timeout(CALL_TIMEOUT, c.list_peers(pb::ListPeersRequest {}))
        .await
        .unwrap_or_else(|_| panic!("ListPeers took over {CALL_TIMEOUT:?}"))
        .expect("ListPeers")
        .into_inner()
        .peers
}

/// `ListHistory` of `d`.
pub async fn history(d: &Daemon, req: pb::ListHistoryRequest) -> Vec<pb::HistoryEntry> {
    client(d)
        .await
        .list_history(req)
        .await
        .expect("ListHistory")
        .into_inner()
        .entries
}

// ---------------------------------------------------------------------------------------
// Devices

/// Makes `d` trust the device `id` with the daemon's default receiving rule; checks the
/// answer names it trusted.
pub async fn trust(d: &Daemon, id: &str) -> pb::Device {
    trust_with(d, id, pb::DeviceAccept::Default, None).await
}

/// Makes `d` trust the device `id` with a receiving rule (and download dir) of its own;
/// checks the answer names it trusted.
pub async fn trust_with(
    d: &Daemon,
    id: &str,
    accept: pb::DeviceAccept,
    download_dir: Option<&Path>,
) -> pb::Device {
    let dev = client(d)
        .await
        .trust_device(pb::TrustDeviceRequest {
            id: id.to_owned(),
            name: String::new(),
            accept: accept as i32,
            download_dir: download_dir
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        })
        .await
        .expect("TrustDevice")
        .into_inner();
    assert!(dev.trusted && dev.id == id, "{dev:?}");
    dev
}

/// Makes `a` and `b` trust each other (so `--accept auto` applies between them).
pub async fn trust_each_other(a: &Daemon, b: &Daemon) {
    trust(a, b.device_id()).await;
    trust(b, a.device_id()).await;
}

/// `ListPending` of `d`: devices that connected but are not trusted.
pub async fn pending(d: &Daemon) -> Vec<pb::Device> {
    client(d)
        .await
        .list_pending(pb::ListPendingRequest {})
        .await
        .expect("ListPending")
        .into_inner()
        .devices
}

/// Whether `s` has the device id format: 8 groups of 7 base32 characters (Syncthing's).
pub fn is_device_id_format(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 8
        && groups.iter().all(|g| {
            g.len() == 7
                && g.bytes()
                    .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
        })
}
