//! [`serve`]: the control services of one node on any stream of Unix connections — the
//! daemon's control socket, or a temporary socket in a test; [`ControlServer`] does the same in
//! two steps (build, then run).
//!
//! Every call passes the caller check first: the peer credentials of the Unix connection
//! (SO_PEERCRED) must name the daemon's own user or root, whatever the socket's mode.

use std::path::PathBuf;

use p2p_core::Node;
use p2p_proto::control::v1::control_service_server::ControlServiceServer;
use tokio::net::UnixStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::control::ControlApi;
use crate::control::watch::Watchers;
use crate::tasks::Tasks;

/// Errors of serving the control API.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the file descriptor sets.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("control server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the control API of `node` on the connections of `incoming` until `shutdown` is
/// cancelled: the control service (`p2p.control.v1.ControlService`), `grpc.health.v1.Health`
/// (serving) and server reflection v1 and v1alpha. `socket_path` is the socket that `GetStatus`
/// reports.
///
/// Any stream of Unix connections will do, e.g. a bound [`tokio::net::UnixListener`] wrapped in
/// [`tokio_stream::wrappers::UnixListenerStream`]; connections may wait in the listener's
/// backlog before this runs, so bind first and spawn after, without sleeping in between.
/// A call whose peer credentials name another user than this process's (or root) is refused
/// with `PERMISSION_DENIED`. Errors of single connections are logged by the server and do not
/// stop it.
///
/// Once `shutdown` is cancelled the server stops accepting connections and drains the calls
/// in flight; `Watch*` streams end then too (and when the node's own shutdown token is
/// cancelled). `serve` returns when the connections are closed and every task it spawned (the
/// `Watch*` forwarders) has ended; callers bound that wait with a timeout of their own.
///
/// # Errors
/// [`ServeError::Reflection`] if the reflection service cannot be built (nothing is served
/// then), [`ServeError::Transport`] if the server fails.
pub async fn serve<S, E>(
    node: Node,
    socket_path: PathBuf,
    incoming: S,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: Stream<Item = Result<UnixStream, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ControlServer::new(node, socket_path)?
        .run(incoming, shutdown)
        .await
}

/// The control services of one node, built and not yet serving: [`serve`] in two steps, so that
/// the daemon can fail at start-up — before it reports itself ready — if they cannot be built.
#[derive(Debug)]
pub struct ControlServer {
    node: Node,
    socket_path: PathBuf,
    // Server reflection v1 and v1alpha, built from the compiled-in descriptor sets.
    reflection: tonic::service::Routes,
}

impl ControlServer {
    /// Builds the services of `node`; `socket_path` is the socket that `GetStatus` reports.
    ///
    /// # Errors
    /// [`ServeError::Reflection`] if the reflection service cannot be built from the file
    /// descriptor sets.
    pub fn new(node: Node, socket_path: PathBuf) -> Result<Self, ServeError> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(p2p_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServeError::Reflection)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(p2p_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(ServeError::Reflection)?;
        Ok(ControlServer {
            node,
            socket_path,
            reflection: tonic::service::Routes::new(reflection_v1).add_service(reflection_v1alpha),
        })
    }

    /// Serves until `shutdown` is cancelled, as [`serve`] describes.
    ///
    /// # Errors
    /// [`ServeError::Transport`] if the server fails.
    pub async fn run<S, E>(self, incoming: S, shutdown: CancellationToken) -> Result<(), ServeError>
    where
        S: Stream<Item = Result<UnixStream, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<ControlServiceServer<ControlApi>>()
            .await;
        let tasks = Tasks::new();
        let watchers = Watchers::new(tasks.clone(), shutdown.clone(), &self.node);
        let stop = shutdown.clone();
        let result = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(check_caller))
            .add_routes(self.reflection)
            .add_service(ControlServiceServer::new(ControlApi::new(
                self.node,
                self.socket_path,
                watchers,
            )))
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await })
            .await;
        // No call is running any more, so no forwarder can be added; those left have seen the
        // shutdown or lost their client.
        tasks.join().await;
        result.map_err(ServeError::Transport)
    }
}

/// Refuses calls from any user but the daemon's own (and root), whatever the socket's mode:
/// the peer credentials of the Unix socket connection (SO_PEERCRED) say who is calling.
#[allow(clippy::result_large_err)]
fn check_caller(req: Request<()>) -> Result<Request<()>, Status> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let caller = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    match caller {
        Some(uid) if uid == me || uid == 0 => Ok(req),
        Some(uid) => {
            tracing::warn!(uid, "refused a control call from another user");
            Err(Status::permission_denied(format!(
                "uid {uid} may not control this p2pd (it belongs to uid {me})"
            )))
        }
        None => Err(Status::permission_denied(
            "cannot tell which user is calling",
        )),
    }
}
