//! A hostile peer: a device of the test's own ([`Device`], a real identity in a temporary
//! directory) that speaks the wire protocol by hand, so a test can do anything a misbehaving
//! device could — and, through the same code, the right thing, which proves the negative cases
//! mean something.
//!
//! - [`peer`]: [`Peer`], a connection as a client (plain TCP, TLS with a device's identity or
//!   any client configuration, the Hello/HelloAck/Config handshake) or as the listening side,
//!   that sends and reads raw frames and bytes with bounded waits;
//! - [`frames`]: frames built by hand (offers, chunks, FileDone) and the protocol's sequences
//!   for a one-file transfer, every answer checked;
//! - [`tls`]: TLS client configurations that misbehave (accept any server, present a
//!   certificate with a key that is not its own) and a TLS 1.2 ClientHello built by hand.

pub mod frames;
pub mod peer;
pub mod tls;

use std::time::Duration;

use p2p_core::net::identity::Identity;
use p2p_core::net::wire::caps;
use p2p_proto::wire::v1 as wire;

pub use frames::{CHUNK, chunk, file_done, offer, one_file_offer, tid};
pub use peer::Peer;

/// Longest wait for one expected frame, connection or handshake. Generous: some frames come
/// only after the daemon synced files, which a loaded CI disk may take seconds for; waits end as
/// soon as the frame is there.
pub const STEP: Duration = Duration::from_secs(20);

/// A device of the test's own: an identity (key and certificate) in a temporary state dir.
#[derive(Debug)]
pub struct Device {
    /// Its identity.
    pub identity: Identity,
    _dir: tempfile::TempDir,
}

impl Device {
    /// A fresh device.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity::load_or_create(dir.path()).expect("test identity");
        Device {
            identity,
            _dir: dir,
        }
    }

    /// Its device id.
    pub fn id(&self) -> String {
        self.identity.device_id.to_string()
    }

    /// A Hello from this device at protocol `version`.
    pub fn hello(&self, version: u32) -> wire::Hello {
        hello_claiming(&self.id(), version)
    }
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

/// A Hello claiming to be device `id` (whoever sends it), with every capability this build
/// has.
pub fn hello_claiming(id: &str, version: u32) -> wire::Hello {
    wire::Hello {
        device_id: id.to_owned(),
        name: "mallory".into(),
        protocol_version: version,
        capabilities: caps::SUPPORTED,
        listen_port: 1,
        software_version: "test-peer".into(),
        ..Default::default()
    }
}
