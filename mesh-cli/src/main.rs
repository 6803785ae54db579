//! `meshctl`: the operator CLI. It has no commands yet: `install`, `inject` and `check` are not
//! supported yet.

use clap::Parser;

/// Operator CLI of the mesh. meshctl has no commands yet.
///
/// install, inject and check are not supported yet: meshctl only answers --help and --version,
/// and exits with an error otherwise. To run the mesh on Kubernetes, apply the CRDs with
/// `mesh-controller crds | kubectl apply -f -` and run `mesh-controller --source kubernetes`
/// (see the README).
#[derive(Parser)]
#[command(name = "meshctl", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!(
        "meshctl has no commands yet: install, inject and check are not supported yet (see meshctl --help)"
    );
    std::process::exit(2);
}
