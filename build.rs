//! Generates the gRPC code from `proto/` with the pure-Rust `protox` compiler:
//! no `protoc` on the build path.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["trustmesh/admin/v1/admin.proto", "trustmesh/agent/v1/agent.proto"], ["proto"])?;
    // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (src/proto/codec.rs).
    let codec = "crate::proto::codec::InputCodec";
    tonic_prost_build::configure().build_client(true).build_server(true).codec_path(codec).compile_fds(fds)?;
    // The SPIFFE Workload API (no proto package). Its `google.protobuf.Struct`
    // is generated here too, so the crate needs no `prost-types` dependency.
    // `X509SVID` carries a private key: its `Debug` is written by hand (redacted).
    let fds = protox::compile(["spiffe/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .codec_path(codec)
        .skip_debug([".X509SVID"])
        .compile_fds(fds)?;
    Ok(())
}
