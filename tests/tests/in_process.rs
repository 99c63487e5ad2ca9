//! The in-process tier: nodes and their gRPC API (`p2pd::serve`) in the test's runtime, on
//! temporary sockets — status, a folder sent from one node to another through `Send`, and no
//! task left behind once the nodes are shut down.

use std::path::Path;
use std::time::Duration;

use p2p_core::AcceptPolicy;
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use p2p_tests::api::state;
use p2p_tests::files::{random_file, sha256_file};
use p2p_tests::inprocess::{
    self, InProcessNode, alive_tasks, settle_tasks, trust_each_other, wait_done,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The bound of each test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The bound of one transfer.
const TRANSFER: Duration = Duration::from_secs(60);

/// Runs `body` under [`TEST_TIMEOUT`].
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {TEST_TIMEOUT:?}"));
}

async fn receiver(name: &str) -> InProcessNode {
    InProcessNode::start_with(name, |s| s.accept = AcceptPolicy::Auto)
        .await
        .expect("start node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_health_over_the_in_process_api() {
    bounded(async {
        let n = InProcessNode::start("alpha").await.expect("start node");
        let mut c = n.client().await.expect("client");
        let s = c
            .get_status(pb::GetStatusRequest {})
            .await
            .expect("GetStatus")
            .into_inner();
        assert_eq!(s.device_id, n.device_id());
        assert_eq!(s.device_name, "alpha");
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.listen_address, n.peer_addr().to_string());
        assert_eq!(s.socket_path, n.socket.display().to_string());
        assert_eq!(s.state_dir, n.state_dir.display().to_string());
        assert_eq!(s.download_dir, n.download_dir.display().to_string());
        assert_eq!((s.session_count, s.active_transfer_count), (0, 0));

        let health = HealthClient::new(p2p_proto::uds::connect(&n.socket).await.unwrap())
            .check(HealthCheckRequest {
                service: "p2p.control.v1.ControlService".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);

        // A core error comes back as its status code.
        let missing = c
            .get_transfer(pb::GetTransferRequest { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
        drop(c);
        n.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_sent_through_send_arrives_intact() {
    bounded(async {
        let (a, b) = tokio::join!(
            async { InProcessNode::start("alpha").await.expect("start node") },
            receiver("beta")
        );
        trust_each_other(&a, &b).await.expect("trust");

        let tree = a.root.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        std::fs::write(tree.join("hello.txt"), b"hello, in-process world\n").unwrap();
        random_file(&tree.join("sub/random.bin"), (256 << 10) + 3, 7);
        random_file(&tree.join("sub/deeper/one.bin"), 1, 8);
        std::fs::write(tree.join("sub/empty"), b"").unwrap();
        let files = [
            "hello.txt",
            "sub/random.bin",
            "sub/deeper/one.bin",
            "sub/empty",
        ];

        let mut ca = a.client().await.expect("client of a");
        let id = ca
            .send(pb::SendRequest {
                paths: vec![tree.display().to_string()],
                peer: b.peer_addr().to_string(),
                options: None,
            })
            .await
            .expect("Send")
            .into_inner()
            .transfer_id;
        let sent = wait_done(&mut ca, &id, TRANSFER)
            .await
            .expect("sender's end");
        assert_eq!(state(&sent), pb::TransferState::Completed, "{sent:?}");
        assert_eq!(sent.total_files, files.len() as u64);

        let mut cb = b.client().await.expect("client of b");
        let received = wait_done(&mut cb, &id, TRANSFER)
            .await
            .expect("receiver's end");
        assert_eq!(
            state(&received),
            pb::TransferState::Completed,
            "{received:?}"
        );
        for f in files {
            let got = b.download_dir.join("tree").join(f);
            assert_eq!(sha256_file(&got), sha256_file(&tree.join(f)), "{f}");
        }

        drop((ca, cb));
        let (ra, rb) = tokio::join!(a.shutdown(), b.shutdown());
        ra.expect("shutdown of a");
        rb.expect("shutdown of b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_outlives_the_shutdown() {
    bounded(async {
        let before = alive_tasks();
        let (a, b) = tokio::join!(
            async { InProcessNode::start("alpha").await.expect("start node") },
            receiver("beta")
        );
        trust_each_other(&a, &b).await.expect("trust");
        let mut ca = a.client().await.expect("client of a");

        // A session, a transfer over it, and two watch streams left open through shutdown.
        let session = ca
            .connect(pb::ConnectRequest {
                peer: b.peer_addr().to_string(),
            })
            .await
            .expect("Connect")
            .into_inner();
        assert_eq!(session.peer_id, b.device_id());
        let file = a.root.path().join("small.bin");
        random_file(&file, 100 << 10, 3);
        let id = send(&mut ca, &file, &b).await;
        let t = wait_done(&mut ca, &id, TRANSFER).await.expect("transfer");
        assert_eq!(state(&t), pb::TransferState::Completed, "{t:?}");
        let mut transfers = ca
            .watch_transfers(pb::WatchTransfersRequest::default())
            .await
            .expect("WatchTransfers")
            .into_inner();
        let mut peers = ca
            .watch_peers(pb::WatchPeersRequest {})
            .await
            .expect("WatchPeers")
            .into_inner();
        // The forwarder runs: the finished transfer is in its initial snapshot.
        let first = transfers.next().await.expect("an event").expect("ok");
        assert_eq!(first.transfer.map(|t| t.id), Some(id));
        assert!(alive_tasks() > before);

        let (ra, rb) = tokio::join!(a.shutdown(), b.shutdown());
        ra.expect("shutdown of a");
        rb.expect("shutdown of b");
        // The open streams ended with the server.
        for ended in [drain(&mut transfers).await, drain(&mut peers).await] {
            assert!(ended, "a watch stream outlived the shutdown");
        }
        drop((transfers, peers, ca));

        let left = settle_tasks(before, Duration::from_secs(10)).await;
        assert_eq!(
            left, before,
            "tasks alive after shutdown: {left}, before start: {before}"
        );
    })
    .await;
}

/// Sends `file` from the node behind `c` to `to`.
async fn send(c: &mut ControlServiceClient<Channel>, file: &Path, to: &InProcessNode) -> String {
    c.send(pb::SendRequest {
        paths: vec![file.display().to_string()],
        peer: to.peer_addr().to_string(),
        options: None,
    })
    .await
    .expect("Send")
    .into_inner()
    .transfer_id
}

/// Reads a stream to its end (bounded); whether it ended.
async fn drain<T>(s: &mut tonic::Streaming<T>) -> bool {
    tokio::time::timeout(inprocess::SERVER_DRAIN, async {
        while let Some(Ok(_)) = s.next().await {}
    })
    .await
    .is_ok()
}
