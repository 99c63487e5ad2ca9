//! Connecting to the daemon, and turning failures into one-line messages and exit codes.

use std::path::{Path, PathBuf};

use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

/// Exit code when no daemon is reachable.
pub(crate) const EXIT_NO_DAEMON: u8 = 3;

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Nothing listens on the socket.
    #[error(
        "no p2pd daemon is running at {0} (start one with `p2pd`, or `p2pd --daemon` to run it in the background)"
    )]
    NotRunning(PathBuf),
    /// The socket exists but we may not use it.
    #[error("permission denied on {0}: the daemon belongs to another user")]
    PermissionDenied(PathBuf),
    /// Any other failure.
    #[error("cannot connect to p2pd at {path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// The socket to use: `--socket`/`P2PD_SOCKET`, else the default.
pub(crate) fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(p2p_core::paths::default_socket_path)
}

/// Connects to the control service.
pub(crate) async fn connect(path: &Path) -> Result<ControlServiceClient<Channel>, ConnectError> {
    match p2p_proto::uds::connect(path).await {
        Ok(channel) => Ok(ControlServiceClient::new(channel)),
        Err(e) => Err(
            match p2p_proto::uds::io_cause(&e).map(std::io::Error::kind) {
                Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                    ConnectError::NotRunning(path.to_path_buf())
                }
                Some(std::io::ErrorKind::PermissionDenied) => {
                    ConnectError::PermissionDenied(path.to_path_buf())
                }
                _ => ConnectError::Other {
                    path: path.to_path_buf(),
                    message: error_chain(&e),
                },
            },
        ),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.join(": ")
}

/// The process exit code for an error.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConnectError>().is_some() {
        return EXIT_NO_DAEMON;
    }
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        if status.code() == tonic::Code::Unavailable {
            return EXIT_NO_DAEMON;
        }
    }
    1
}
