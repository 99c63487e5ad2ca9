//! The one mapping from core errors to gRPC status codes.

use p2p_core::{ErrorKind, NodeError};
use tonic::Status;

/// The one mapping from core errors to gRPC status codes: the error's kind gives the code, its
/// chain of causes the message.
pub(super) fn status_of(e: NodeError) -> Status {
    let msg = p2p_core::error_chain(&e);
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::Internal => Status::internal(msg),
    }
}
