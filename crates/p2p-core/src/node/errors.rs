//! The errors of node operations: [`NodeError`], one variant per failure with its cause as
//! `source`, and its [`ErrorKind`] — the class a caller maps to its own codes (the control
//! service to gRPC status codes).
//!
//! Messages are the ones users see, through `error_chain`: where a variant only carries a
//! cause that already says everything (a store failure, a bad option), it is `transparent`.

use std::path::PathBuf;
use std::time::Duration;

use crate::net::device_id::DeviceId;
use crate::net::discovery::DiscoveryError;
use crate::net::session::SessionError;
use crate::net::tls::TlsSetupError;
use crate::store::StoreError;
use crate::store::devices::ResolveError;
use crate::store::history::FilterError;
use crate::transfer::TransferState;
use crate::transfer::manifest::ManifestError;
use crate::transfer::options::OptionsError;
use crate::transfer::ratelimit::RateTooLow;

/// The class of a [`NodeError`]: what the caller did wrong, or what went wrong here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What the call names does not exist (transfer, offer, session, device, path).
    NotFound,
    /// An argument is not acceptable, whatever the state.
    InvalidArgument,
    /// The call does not fit the current state (a transfer that ended, an incoming one).
    FailedPrecondition,
    /// The peer cannot be reached now; trying again later may work.
    Unavailable,
    /// This node failed (state store, I/O, a task): not the caller's doing.
    Internal,
}

/// Errors of node operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The peer listener's address could not be read.
    #[error("cannot read the peer listener's address")]
    ListenerAddr(#[source] std::io::Error),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    /// Discovery could not start.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A path to send does not exist.
    #[error("no such file or directory: {0}")]
    PathNotFound(PathBuf),
    /// A path to send could not be read.
    #[error("cannot read {path}")]
    ReadPath {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The paths to send are not usable together (no name, duplicate names, special file).
    #[error(transparent)]
    Sources(ManifestError),
    /// A path that must be absolute is not.
    #[error("{what} {path} is not absolute")]
    NotAbsolute {
        /// Which path: "path", "destination", "download dir".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The options of a send are out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A speed limit is below the minimum.
    #[error(transparent)]
    Rate(#[from] RateTooLow),
    /// A history filter value is not acceptable.
    #[error(transparent)]
    HistoryFilter(#[from] FilterError),
    /// The peer to send to cannot take folders.
    #[error("the peer does not accept folders")]
    NoFolders,
    /// Recording a new outgoing transfer failed.
    #[error("cannot record the transfer")]
    RecordTransfer(#[source] StoreError),
    /// A blocking task of the node failed (it panicked or was cancelled).
    #[error("{what} failed")]
    Task {
        /// What it was doing: "reading the files", "recording the transfer".
        what: &'static str,
        /// How it failed.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A peer address that does not parse or resolve.
    #[error("peer {peer:?} is not a usable HOST:PORT")]
    BadAddress {
        /// The `HOST:PORT` given.
        peer: String,
        /// Why it does not resolve.
        #[source]
        source: std::io::Error,
    },
    /// A peer address that resolves to nothing.
    #[error("peer {0:?} resolves to no address")]
    NoAddress(String),
    /// A peer name that names no single discovered peer, or an incompatible one.
    #[error(transparent)]
    PeerLookup(#[from] PeerLookupError),
    /// The peer cannot be reached, or is not the device expected.
    #[error("cannot reach peer {peer}")]
    Unreachable {
        /// The peer, as dialed.
        peer: String,
        /// Why.
        #[source]
        source: DialError,
    },
    /// A device id that names no single known device.
    #[error(transparent)]
    DeviceLookup(#[from] ResolveError),
    /// This device's own id where another device is meant.
    #[error("that is this device's own id")]
    OwnDevice,
    /// A device that is not known.
    #[error("device {0} is not known")]
    UnknownDevice(DeviceId),
    /// A device trusted a moment ago is not in the store.
    #[error("trusted device vanished")]
    DeviceVanished(DeviceId),
    /// No transfer has this id.
    #[error("no transfer {0}")]
    NoTransfer(String),
    /// The transfer has ended.
    #[error("transfer {id} has already ended ({state:?})")]
    TransferEnded {
        /// The transfer.
        id: String,
        /// How it ended.
        state: TransferState,
    },
    /// The transfer is incoming, and the operation applies on the sending side.
    #[error("transfer {id} is incoming: {instead}")]
    Incoming {
        /// The transfer.
        id: String,
        /// What to do instead.
        instead: &'static str,
    },
    /// Pausing a paused transfer.
    #[error("transfer {0} is already paused")]
    AlreadyPaused(String),
    /// Resuming a transfer that is neither paused nor waiting to retry.
    #[error("transfer {id} is not paused or waiting to retry ({state:?})")]
    NotPaused {
        /// The transfer.
        id: String,
        /// Its state.
        state: TransferState,
    },
    /// No offer with this id waits for a decision.
    #[error("no offer {0} is waiting")]
    NoOffer(String),
    /// The offer stopped waiting while it was being decided.
    #[error("offer {0} is no longer waiting")]
    OfferGone(String),
    /// No session matches.
    #[error("no session with {0}")]
    NoSession(String),
}

impl NodeError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use NodeError as E;
        match self {
            E::PathNotFound(_)
            | E::UnknownDevice(_)
            | E::NoTransfer(_)
            | E::NoOffer(_)
            | E::NoSession(_) => ErrorKind::NotFound,
            E::Sources(_)
            | E::NotAbsolute { .. }
            | E::Options(_)
            | E::Rate(_)
            | E::HistoryFilter(_)
            | E::NoFolders
            | E::BadAddress { .. }
            | E::NoAddress(_)
            | E::PeerLookup(_)
            | E::DeviceLookup(_)
            | E::OwnDevice => ErrorKind::InvalidArgument,
            E::TransferEnded { .. }
            | E::Incoming { .. }
            | E::AlreadyPaused(_)
            | E::NotPaused { .. }
            | E::OfferGone(_) => ErrorKind::FailedPrecondition,
            E::Unreachable { .. } => ErrorKind::Unavailable,
            E::ListenerAddr(_)
            | E::Store(_)
            | E::TlsSetup(_)
            | E::Discovery(_)
            | E::ReadPath { .. }
            | E::RecordTransfer(_)
            | E::Task { .. }
            | E::DeviceVanished(_) => ErrorKind::Internal,
        }
    }
}

/// Why dialing a peer failed: the cause of [`NodeError::Unreachable`].
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The TCP connection failed.
    #[error(transparent)]
    Connect(std::io::Error),
    /// The TCP connection was not answered in time.
    #[error("no answer within {0:?}")]
    ConnectTimeout(Duration),
    /// TLS failed (the reason is rustls', or the verifier's, such as a pinned id not matching).
    #[error(transparent)]
    Tls(#[from] TlsHandshakeError),
    /// The peer's certificate proves no device id.
    #[error(transparent)]
    Certificate(rustls::Error),
    /// The protocol handshake failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// TLS and the protocol handshake together took too long.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The live session at that address is with another device than the one required.
    #[error("peer is device {found} but expected {expected}")]
    WrongDevice {
        /// The device the session is with.
        found: DeviceId,
        /// The device required.
        expected: DeviceId,
    },
}

/// A failed TLS handshake. It shows the reason inside — a verifier's message, or rustls' —
/// without rustls' "unexpected error:" wrapping.
#[derive(Debug)]
pub struct TlsHandshakeError(std::io::Error);

impl TlsHandshakeError {
    /// The I/O error the TLS stream failed with.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for TlsHandshakeError {
    fn from(e: std::io::Error) -> Self {
        TlsHandshakeError(e)
    }
}

impl std::fmt::Display for TlsHandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self
            .0
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::General(msg)) => f.write_str(msg),
            Some(other) => other.fmt(f),
            None => self.0.fmt(f),
        }
    }
}

impl std::error::Error for TlsHandshakeError {}

/// A peer name (or id prefix) that does not name one usable discovered peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerLookupError {
    /// No peer is known at all.
    #[error(
        "no peer named {0:?}: no peers are known (give HOST:PORT, or check that discovery reaches them)"
    )]
    NoPeers(String),
    /// No known peer has that name or id prefix.
    #[error("no peer named {name:?}; known peers: {}", .known.join(", "))]
    NoMatch {
        /// What was given.
        name: String,
        /// The known peers, described.
        known: Vec<String>,
    },
    /// Several do.
    #[error("{name:?} matches several peers: {}; use the device id or HOST:PORT", .matches.join(", "))]
    Ambiguous {
        /// What was given.
        name: String,
        /// The peers it matches, described.
        matches: Vec<String>,
    },
    /// The one match speaks another protocol version.
    #[error("peer {peer} speaks protocol version {version}, this p2pd speaks {ours}")]
    Incompatible {
        /// The peer, described.
        peer: String,
        /// Its protocol version.
        version: u32,
        /// Ours.
        ours: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain;

    #[test]
    fn messages_read_as_before_and_kinds_class_them() {
        let unreachable = NodeError::Unreachable {
            peer: "127.0.0.1:9".into(),
            source: DialError::ConnectTimeout(Duration::from_secs(10)),
        };
        assert_eq!(
            error_chain(&unreachable),
            "cannot reach peer 127.0.0.1:9: no answer within 10s"
        );
        assert_eq!(unreachable.kind(), ErrorKind::Unavailable);

        let refused = NodeError::Unreachable {
            peer: "h:1".into(),
            source: DialError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            error_chain(&refused),
            "cannot reach peer h:1: connection refused"
        );

        let wrong = NodeError::Unreachable {
            peer: "h:1".into(),
            source: DialError::WrongDevice {
                found: DeviceId::from_spki(b"a"),
                expected: DeviceId::from_spki(b"b"),
            },
        };
        assert!(error_chain(&wrong).contains(&format!(
            "peer is device {} but expected {}",
            DeviceId::from_spki(b"a"),
            DeviceId::from_spki(b"b")
        )));

        let general = std::io::Error::other(rustls::Error::General("claims to be device X".into()));
        let tls = DialError::from(TlsHandshakeError::from(general));
        assert_eq!(tls.to_string(), "claims to be device X");

        let ended = NodeError::TransferEnded {
            id: "t".into(),
            state: TransferState::Completed,
        };
        assert_eq!(
            ended.to_string(),
            "transfer t has already ended (Completed)"
        );
        assert_eq!(ended.kind(), ErrorKind::FailedPrecondition);

        let read = NodeError::ReadPath {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(error_chain(&read), "cannot read /x: permission denied");
        assert_eq!(read.kind(), ErrorKind::Internal, "an I/O failure is ours");

        let relative = NodeError::NotAbsolute {
            what: "destination",
            path: "rel".into(),
        };
        assert_eq!(relative.to_string(), "destination rel is not absolute");
        assert_eq!(relative.kind(), ErrorKind::InvalidArgument);

        assert_eq!(
            NodeError::NoTransfer("t".into()).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            NodeError::from(OptionsError::Window(0)).kind(),
            ErrorKind::InvalidArgument
        );
    }
}
