//! Generates the Rust types and the tonic client/server for `proto/echo.proto` (the gRPC
//! service of `mesh-echo`). The .proto file is parsed by `protox` (pure Rust), so no `protoc`
//! binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/echo.proto"];
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
