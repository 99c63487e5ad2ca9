//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and feeds the descriptors to
//! tonic-prost-build. `compile_fds` does not write the descriptor set, so it is written here for
//! server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto");
    let files = ["p2p/control/v1/control.proto", "p2p/wire/v1/wire.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(f).display());
    }
    let fds = protox::compile(files, [&proto_root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("p2p_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect` constructor would clash with the `Connect` RPC; clients are
        // built over a channel (see `uds::connect`) anyway.
        .build_transport(false)
        // Chunk payloads decode as slices of the received frame, without a copy.
        .bytes(".p2p.wire.v1")
        .compile_fds(fds)?;
    Ok(())
}
