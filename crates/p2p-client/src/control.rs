//! Connecting to the daemon's control socket, and reading the answers of its RPCs: a failed
//! connect as a [`ConnectError`] that says what to do, a failed call as an [`RpcError`] that
//! reads as the status code in words and the daemon's message.

use std::path::{Path, PathBuf};

use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

/// A client of the control API over the daemon's Unix socket.
pub type ControlClient = ControlServiceClient<Channel>;

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the socket.
    #[error(
        "no p2pd daemon is running at {0} (start one with `p2pd`, or `p2pd --daemon` to run it in the background)"
    )]
    NotRunning(PathBuf),
    /// The socket exists but we may not use it.
    #[error("permission denied on {0}: the daemon belongs to another user")]
    PermissionDenied(PathBuf),
    /// Any other failure.
    #[error("cannot connect to p2pd at {path}")]
    Other {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the control service on the socket at `path` (see [`crate::paths::socket_path`]).
/// The connection is made at once, so a missing daemon is reported here rather than on the
/// first call.
///
/// # Errors
/// [`ConnectError::NotRunning`] when no socket exists or nothing listens on it,
/// [`ConnectError::PermissionDenied`] when the socket belongs to another user, else
/// [`ConnectError::Other`] with the transport's error.
pub async fn connect(path: &Path) -> Result<ControlClient, ConnectError> {
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
                    source: e,
                },
            },
        ),
    }
}

/// A control RPC answered with an error status. Shown as the code in words and the daemon's
/// message: `not found: no such file /x`.
#[derive(Debug, thiserror::Error)]
#[error("{}", status_text(.0))]
pub struct RpcError(pub tonic::Status);

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

/// The answer of a unary RPC, or its status as an [`RpcError`].
///
/// # Errors
/// The status the daemon (or the transport, mid-call) returned.
pub fn answer<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, RpcError> {
    result.map(tonic::Response::into_inner).map_err(RpcError)
}

fn status_text(status: &tonic::Status) -> String {
    let code = code_words(status.code());
    match status.message().trim() {
        "" => code.to_owned(),
        message => format!("{code}: {message}"),
    }
}

/// The status code in lower-case words.
fn code_words(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by this daemon",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_as_code_words_and_message() {
        let err = RpcError(tonic::Status::not_found("no such file /x"));
        assert_eq!(err.to_string(), "not found: no such file /x");
        let err = RpcError(tonic::Status::unavailable("  "));
        assert_eq!(err.to_string(), "unavailable");
        let err = RpcError(tonic::Status::unimplemented(""));
        assert_eq!(err.to_string(), "not implemented by this daemon");
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let err = ConnectError::NotRunning(PathBuf::from("/x.sock"));
        assert_eq!(
            err.to_string(),
            "no p2pd daemon is running at /x.sock (start one with `p2pd`, or `p2pd --daemon` to run it in the background)"
        );
        let err = ConnectError::PermissionDenied(PathBuf::from("/x.sock"));
        assert!(err.to_string().contains("another user"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_socket_means_no_daemon() {
        let path = Path::new("/nonexistent-p2pd-dir/p2pd.sock");
        let err = connect(path).await.unwrap_err();
        assert!(
            matches!(&err, ConnectError::NotRunning(p) if p == path),
            "{err:?}"
        );
    }
}
