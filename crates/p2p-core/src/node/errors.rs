//! The errors of node operations.

use std::path::PathBuf;

/// Errors of node operations, each mapped to one gRPC status by the control service.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The peer listener's address could not be read.
    #[error("cannot read the peer listener's address")]
    ListenerAddr(#[source] std::io::Error),
    /// The state store or TLS could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A path to send does not exist.
    #[error("no such file or directory: {0}")]
    PathNotFound(PathBuf),
    /// An argument is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The peer cannot be reached or the handshake failed.
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable {
        /// The address given.
        peer: String,
        /// Why.
        reason: String,
    },
    /// No such transfer, offer or session.
    #[error("{0}")]
    NotFound(String),
    /// The operation does not fit the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Reading the files to send failed.
    #[error("{0}")]
    Io(String),
}
