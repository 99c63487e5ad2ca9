//! Everything between this device and another: who we are (identity, device ids), how we prove
//! it (TLS 1.3 with pinned device ids), how bytes are framed on the wire, the peer sessions that
//! carry transfers (handshake, routing, reader and writer tasks, keepalive, lanes), LAN discovery,
//! and the socket options every peer connection gets.
//!
//! - [`identity`]: the key pair, certificate and name, created once and kept in the state dir.
//! - [`device_id`]: device ids (SHA-256 of the public key) in Syncthing's format.
//! - [`tls`]: TLS 1.3 configurations and the verifier that pins device ids.
//! - [`wire`]: framing of the peer wire protocol (length prefix, limits, capability bits).
//! - `session`: peer sessions — handshake, reader and writer tasks, keepalive, routing.
//! - [`discovery`]: LAN discovery beacons and the table of peers heard.
//! - `tune`: TCP options of peer connections (send buffer, lanes wanted).

pub mod device_id;
pub mod discovery;
pub mod identity;
pub(crate) mod session;
pub mod tls;
pub(crate) mod tune;
pub mod wire;

pub use session::SessionError;
