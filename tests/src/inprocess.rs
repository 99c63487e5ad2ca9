//! The in-process tier: a `p2p_core::Node` and its gRPC control API (`p2pd::serve`) running in
//! the test's own tokio runtime, on a temporary Unix socket — no processes, no binaries.
//!
//! Start-up binds everything first (the peer listener on 127.0.0.1:0, the control socket) and
//! spawns after, so a client connects at once without sleeping: its connection waits in the
//! socket's backlog until the server accepts it. Shutdown is explicit ([`InProcessNode::shutdown`]:
//! cancel, join the server, stop the node, each bounded); a node dropped without it is
//! cancelled and left to the end of the runtime. [`alive_tasks`] and [`settle_tasks`] let a
//! test check that nothing it started outlived the shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p2p_core::{AcceptPolicy, Identity, Node, NodeSettings, UntrustedPolicy};
use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long the control server may take to drain at shutdown.
pub const SERVER_DRAIN: Duration = Duration::from_secs(5);
/// How long the node's tasks may take to stop at shutdown.
pub const NODE_STOP: Duration = Duration::from_secs(5);

/// A node and its control API in this process, in temporary directories.
#[derive(Debug)]
pub struct InProcessNode {
    /// The node itself, for calls the API does not offer.
    pub node: Node,
    /// Temporary root of the directories below, removed on drop.
    pub root: tempfile::TempDir,
    /// The control socket.
    pub socket: PathBuf,
    /// The state dir (identity, store).
    pub state_dir: PathBuf,
    /// Where received files go.
    pub download_dir: PathBuf,
    /// Root token of the node and the server, as in the daemon.
    shutdown: CancellationToken,
    /// The server task; taken by `shutdown`.
    server: Option<JoinHandle<Result<(), p2pd::ServeError>>>,
}

impl InProcessNode {
    /// Starts a node that asks before receiving (the daemon's defaults).
    ///
    /// # Errors
    /// A directory, the identity, a listener or the node cannot be set up.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_with(name, |_| {}).await
    }

    /// Starts a node named `name` whose settings `configure` may change first.
    ///
    /// # Errors
    /// A directory, the identity, a listener or the node cannot be set up.
    pub async fn start_with(name: &str, configure: impl FnOnce(&mut NodeSettings)) -> Result<Self> {
        // Short: a Unix socket path has a length limit.
        let root = tempfile::Builder::new()
            .prefix("p2pi")
            .tempdir_in("/tmp")
            .context("temporary dir")?;
        let state_dir = root.path().join("state");
        let download_dir = root.path().join("downloads");
        let socket = root.path().join("p2pd.sock");
        let identity = Identity::load_or_create(&state_dir).context("identity")?;
        let mut settings = NodeSettings {
            name: name.to_owned(),
            download_dir: download_dir.clone(),
            accept: AcceptPolicy::Ask,
            accept_untrusted: UntrustedPolicy::Ask,
            max_attempts: 0,
            max_speed: 0,
        };
        configure(&mut settings);

        // Both listeners are bound before anything runs.
        let peer = std::net::TcpListener::bind("127.0.0.1:0").context("peer listener")?;
        peer.set_nonblocking(true)
            .context("peer listener non-blocking")?;
        let control = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("bind {}", socket.display()))?;

        let shutdown = CancellationToken::new();
        let node = Node::start(identity, settings, &state_dir, peer, shutdown.clone())
            .context("start node")?;
        let server = tokio::spawn(p2pd::serve(
            node.clone(),
            socket.clone(),
            tokio_stream::wrappers::UnixListenerStream::new(control),
            shutdown.clone(),
        ));
        Ok(InProcessNode {
            node,
            root,
            socket,
            state_dir,
            download_dir,
            shutdown,
            server: Some(server),
        })
    }

    /// A control client connected to this node's socket (within 5 s).
    ///
    /// # Errors
    /// The connection failed or timed out.
    pub async fn client(&self) -> Result<ControlServiceClient<Channel>> {
        let channel = tokio::time::timeout(
            Duration::from_secs(5),
            p2p_proto::uds::connect(&self.socket),
        )
        .await
        .context("control connect timed out")?
        .context("connect to the control socket")?;
        Ok(ControlServiceClient::new(channel))
    }

    /// The peer listen address (`127.0.0.1:PORT`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.node.listen_addr()
    }

    /// The node's device id.
    pub fn device_id(&self) -> String {
        self.node.identity().device_id.to_string()
    }

    /// Stops the server and the node: cancels the root token, waits for the server to drain
    /// (at most [`SERVER_DRAIN`]; it joins its own tasks first), then stops the node (at most
    /// [`NODE_STOP`]). Drop every client of this node first: an open channel keeps its
    /// connection, and so the server, busy until the drain times out.
    ///
    /// # Errors
    /// The server failed or did not drain in time, or the node's tasks did not stop in time.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().context("shut down twice")?;
        let served = tokio::time::timeout(SERVER_DRAIN, server).await;
        let stopped = self.node.shutdown(NODE_STOP).await;
        match served {
            Err(_) => bail!("the control server did not drain within {SERVER_DRAIN:?}"),
            Ok(Err(join)) => bail!("the control server task failed: {join}"),
            Ok(Ok(r)) => r.context("the control server failed")?,
        }
        if !stopped {
            bail!("the node's tasks did not stop within {NODE_STOP:?}");
        }
        Ok(())
    }
}

impl Drop for InProcessNode {
    /// A node not shut down explicitly (a test that failed) is cancelled; its tasks end with
    /// the runtime.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Makes `a` and `b` trust each other through their control APIs.
///
/// # Errors
/// A `TrustDevice` call failed.
pub async fn trust_each_other(a: &InProcessNode, b: &InProcessNode) -> Result<()> {
    for (node, other) in [(a, b.device_id()), (b, a.device_id())] {
        node.client()
            .await?
            .trust_device(pb::TrustDeviceRequest {
                id: other,
                ..Default::default()
            })
            .await
            .context("TrustDevice")?;
    }
    Ok(())
}

/// Tasks alive in the current tokio runtime (spawned and not yet ended; blocking tasks are
/// not counted).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits, at most `timeout`, until no more than `baseline` tasks are alive in the current
/// runtime, and returns how many are. Tasks that end just after the join that ended their
/// work (a connection's last write) get the time to do so; a leaked task does not end.
pub async fn settle_tasks(baseline: usize, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let alive = alive_tasks();
        if alive <= baseline || tokio::time::Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits, at most `timeout`, until transfer `id` ends (a `WatchTransfers` stream with
/// `until_done`), and returns its last record.
///
/// # Errors
/// The call failed, the stream ended before the transfer did, or the time ran out.
pub async fn wait_done(
    client: &mut ControlServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> Result<pb::Transfer> {
    use tokio_stream::StreamExt;
    let watch = async {
        let mut stream = client
            .watch_transfers(pb::WatchTransfersRequest {
                ids: vec![id.to_owned()],
                until_done: true,
            })
            .await
            .context("WatchTransfers")?
            .into_inner();
        let mut last = None;
        while let Some(event) = stream.next().await {
            last = event.context("transfer event")?.transfer;
        }
        last.context("no event at all")
    };
    let t = tokio::time::timeout(timeout, watch)
        .await
        .with_context(|| format!("transfer {id} did not end within {timeout:?}"))??;
    if !crate::api::is_final(&t) {
        bail!("the stream ended before the transfer did: {t:?}");
    }
    Ok(t)
}
