//! `mesh-controller`: the mesh's control plane. Not built yet: the control-plane issue adds the
//! Kubernetes and local-mode backends and the discovery, inbound-policy and identity servers.

use clap::Parser;

/// The mesh control plane. NOT IMPLEMENTED YET: this binary only parses its arguments and
/// exits with an error. Until it lands, run `mesh-proxy` with a static config file
/// (`MESH_PROXY_STATIC_CONFIG`).
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!(
        "mesh-controller is not implemented yet; run mesh-proxy with a static config (see README)"
    );
    std::process::exit(2);
}
