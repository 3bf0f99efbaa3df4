//! Compiles `proto/strata/v1/broker.proto` with protox, a pure-Rust protobuf
//! compiler, so a machine with nothing but cargo can build strata (no system
//! `protoc`). The file descriptor set is also written out for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/strata/v1/broker.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("strata_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    // The codec reserves each message's size before encoding (see
    // src/listener/grpc/codec.rs).
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::listener::grpc::codec::StrataCodec")
        .compile_fds(fds)?;
    Ok(())
}
