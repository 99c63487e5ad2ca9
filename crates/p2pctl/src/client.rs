//! Connecting to the daemon, and turning failures into one-line messages and exit codes.

use std::path::{Path, PathBuf};

use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

/// Exit code when no daemon is reachable.
pub(crate) const EXIT_NO_DAEMON: u8 = 3;

/// Exit code after Ctrl-C (128 + SIGINT, as a shell reports a process killed by it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

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
                    message: p2p_core::error_chain(&e),
                },
            },
        ),
    }
}

/// A control RPC answered with an error status. Shown as the code in words and the daemon's
/// message: `not found: no such file /x`.
#[derive(Debug, thiserror::Error)]
#[error("{}", status_text(.0))]
pub(crate) struct RpcError(pub(crate) tonic::Status);

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        Self(status)
    }
}

/// The answer of a unary RPC, or its status as an [`RpcError`].
///
/// # Errors
/// The status the daemon (or the transport, mid-call) returned.
pub(crate) fn answer<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, RpcError> {
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

/// The process exit code for an error: [`EXIT_NO_DAEMON`] only when the control socket could
/// not be reached. A status an RPC returned is a failed command (1), even `UNAVAILABLE` — that
/// one means the *peer* is unreachable.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConnectError>().is_some() {
        return EXIT_NO_DAEMON;
    }
    1
}

/// Resolves a transfer id given on the command line: the full id, or a prefix of exactly one
/// known transfer's id. An unknown id is passed on as given, so the daemon's `NOT_FOUND`
/// reports it; so is any id when the list cannot be had.
///
/// # Errors
/// The prefix matches more than one transfer.
pub(crate) async fn resolve_transfer_id(
    api: &mut ControlServiceClient<Channel>,
    given: &str,
) -> Result<String, AmbiguousId> {
    let Ok(list) = answer(
        api.list_transfers(p2p_proto::control::v1::ListTransfersRequest {})
            .await,
    ) else {
        return Ok(given.to_owned());
    };
    pick_id(given, list.transfers.iter().map(|t| t.id.as_str()))
}

/// Like [`resolve_transfer_id`], among the offers waiting for a decision.
///
/// # Errors
/// The prefix matches more than one offer.
pub(crate) async fn resolve_offer_id(
    api: &mut ControlServiceClient<Channel>,
    given: &str,
) -> Result<String, AmbiguousId> {
    let Ok(list) = answer(
        api.list_incoming(p2p_proto::control::v1::ListIncomingRequest {})
            .await,
    ) else {
        return Ok(given.to_owned());
    };
    pick_id(given, list.offers.iter().map(|o| o.transfer_id.as_str()))
}

/// A shortened id matches several.
#[derive(Debug, thiserror::Error)]
#[error("{given:?} matches {} transfers: {}; give more of the id", .candidates.len(), .candidates.join(", "))]
pub(crate) struct AmbiguousId {
    given: String,
    candidates: Vec<String>,
}

fn pick_id<'a>(
    given: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Result<String, AmbiguousId> {
    if known.clone().any(|id| id == given) {
        return Ok(given.to_owned());
    }
    let mut candidates: Vec<String> = known
        .filter(|id| id.starts_with(given))
        .map(str::to_owned)
        .collect();
    match candidates.len() {
        0 => Ok(given.to_owned()),
        1 => Ok(candidates.remove(0)),
        _ => {
            candidates.sort();
            candidates.dedup();
            Err(AmbiguousId {
                given: given.to_owned(),
                candidates,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_as_code_words_and_message() {
        let err = anyhow::Error::from(RpcError(tonic::Status::not_found("no such file /x")));
        assert_eq!(err.to_string(), "not found: no such file /x");
        assert_eq!(exit_code(&err), 1);
        let err = anyhow::Error::from(RpcError(tonic::Status::unavailable(
            "cannot reach peer 127.0.0.1:1: connection refused",
        )));
        assert_eq!(
            err.to_string(),
            "unavailable: cannot reach peer 127.0.0.1:1: connection refused"
        );
        assert_eq!(
            exit_code(&err),
            1,
            "an unreachable peer is not a missing daemon"
        );
        let err = RpcError(tonic::Status::unimplemented(""));
        assert_eq!(err.to_string(), "not implemented by this daemon");
    }

    #[test]
    fn only_a_failed_connect_means_no_daemon() {
        let err = anyhow::Error::from(ConnectError::NotRunning(PathBuf::from("/x.sock")));
        assert_eq!(exit_code(&err), EXIT_NO_DAEMON);
    }

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let known = ["abcd1234", "abcd9999", "ffff0000"];
        assert_eq!(pick_id("ffff", known.into_iter()).unwrap(), "ffff0000");
        assert_eq!(pick_id("abcd1234", known.into_iter()).unwrap(), "abcd1234");
        assert_eq!(pick_id("zzz", known.into_iter()).unwrap(), "zzz");
        let err = pick_id("abcd", known.into_iter()).unwrap_err().to_string();
        assert!(
            err.contains("abcd1234") && err.contains("abcd9999") && err.contains("2 transfers"),
            "{err}"
        );
        // An exact id wins even when it is also the prefix of another.
        assert_eq!(
            pick_id("ab", ["ab", "abc"].into_iter()).unwrap(),
            "ab".to_owned()
        );
    }
}
