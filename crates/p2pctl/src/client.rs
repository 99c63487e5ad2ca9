//! The daemon as p2pctl reaches it: the connection, and failures turned into exit codes.
//! Connecting, RPC errors and short ids are [`p2p_client`]'s; this module adds what is
//! particular to a command-line program.

use std::path::Path;

pub(crate) use p2p_client::control::answer;
pub(crate) use p2p_client::ids::{resolve_offer_id, resolve_transfer_id};
use p2p_client::{ConnectError, ControlClient};

/// Exit code when no daemon is reachable.
pub(crate) const EXIT_NO_DAEMON: u8 = 3;

/// Exit code after Ctrl-C (128 + SIGINT, as a shell reports a process killed by it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// The daemon could not be reached: a [`ConnectError`] shown on one line with its causes
/// (`cannot connect to p2pd at PATH: transport error: …`), so that the command fails with
/// [`EXIT_NO_DAEMON`] and a single clear line.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub(crate) struct NoDaemon(anyhow::Error);

impl From<ConnectError> for NoDaemon {
    fn from(err: ConnectError) -> Self {
        Self(err.into())
    }
}

/// Connects to the control service.
///
/// # Errors
/// [`NoDaemon`] saying why the daemon could not be reached.
pub(crate) async fn connect(path: &Path) -> Result<ControlClient, NoDaemon> {
    Ok(p2p_client::connect(path).await?)
}

/// The process exit code for an error: [`EXIT_NO_DAEMON`] only when the control socket could
/// not be reached. A status an RPC returned is a failed command (1), even `UNAVAILABLE` — that
/// one means the *peer* is unreachable.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<NoDaemon>().is_some() {
        return EXIT_NO_DAEMON;
    }
    1
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use p2p_client::RpcError;

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
        let err = anyhow::Error::from(NoDaemon::from(ConnectError::NotRunning(PathBuf::from(
            "/x.sock",
        ))));
        assert_eq!(exit_code(&err), EXIT_NO_DAEMON);
        assert!(
            err.to_string()
                .starts_with("no p2pd daemon is running at /x.sock"),
            "{err}"
        );
        assert_eq!(err.chain().count(), 1, "one line, no numbered causes");
    }

    #[tokio::test]
    async fn a_failed_connect_is_one_line_with_its_causes() {
        // Too long for a socket address: the connect fails with neither "not found" nor
        // "refused", so the transport's causes follow the message, on the same line.
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        let ConnectError::Other { source, .. } = p2p_client::connect(&path).await.unwrap_err()
        else {
            panic!("not Other");
        };
        let mut causes = source.to_string();
        let mut cur = std::error::Error::source(&source);
        while let Some(c) = cur {
            causes.push_str(&format!(": {c}"));
            cur = c.source();
        }
        let err = anyhow::Error::from(connect(&path).await.unwrap_err());
        assert_eq!(
            err.to_string(),
            format!("cannot connect to p2pd at {}: {causes}", path.display())
        );
        assert!(causes.contains(": "), "the transport's causes: {causes}");
        assert_eq!(err.chain().count(), 1, "one line, no numbered causes");
        assert_eq!(exit_code(&err), EXIT_NO_DAEMON);
    }
}
