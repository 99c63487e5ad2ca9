//! The one mapping from core errors to gRPC status codes.

use p2p_core::NodeError;
use tonic::Status;

/// The one mapping from core errors to gRPC status codes.
pub(super) fn status_of(e: NodeError) -> Status {
    let msg = e.to_string();
    match e {
        NodeError::PathNotFound(_) | NodeError::NotFound(_) => Status::not_found(msg),
        NodeError::InvalidArgument(_) => Status::invalid_argument(msg),
        NodeError::Unreachable { .. } => Status::unavailable(msg),
        NodeError::FailedPrecondition(_) => Status::failed_precondition(msg),
        NodeError::Io(_) => Status::failed_precondition(msg),
        NodeError::ListenerAddr(_) | NodeError::Setup(_) => Status::internal(msg),
    }
}
