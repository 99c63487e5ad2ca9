//! Generated types for p2pd's protobuf schemas (`proto/` at the workspace root).
//!
//! - [`control::v1`]: the gRPC control API served on the daemon's Unix socket.
//! - [`wire::v1`]: the peer wire protocol (p2pd ⇄ p2pd).
//! - [`uds`]: a client channel over the daemon's Unix socket.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every schema, for server reflection.

/// The encoded `FileDescriptorSet` of every schema in `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2p_descriptor.bin"));

/// The peer wire protocol (`p2p.wire.v1`).
pub mod wire {
    /// Version 1 of the wire protocol.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("p2p.wire.v1");
    }
}

/// The control API (`p2p.control.v1`).
pub mod control {
    /// Version 1 of the control API.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("p2p.control.v1");
    }
}

pub mod uds;

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_lists_the_control_service() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("descriptor set written by build.rs decodes");
        let services: Vec<String> = fds
            .file
            .iter()
            .filter(|f| f.package() == "p2p.control.v1")
            .flat_map(|f| f.service.iter().map(|s| s.name().to_owned()))
            .collect();
        assert_eq!(services, vec!["ControlService".to_owned()]);
    }
}
