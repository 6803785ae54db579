//! Generates the Rust types and tonic clients/servers for `proto/mesh/v1/*.proto`.
//! The .proto files are parsed by `protox` (pure Rust), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mesh/v1/common.proto",
        "proto/mesh/v1/destination.proto",
        "proto/mesh/v1/inbound.proto",
        "proto/mesh/v1/identity.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
