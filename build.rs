//! Generates the gRPC code from `proto/` with the pure-Rust `protox` compiler:
//! no `protoc` on the build path.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["trustmesh/admin/v1/admin.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
