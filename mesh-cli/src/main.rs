//! `meshctl`: the operator CLI. Not built yet: `install`, `inject` and `check` come with later
//! issues.

use clap::Parser;

/// Operator CLI of the mesh. NOT IMPLEMENTED YET: `install`, `inject` and `check` arrive with
/// later issues; today this binary only parses its arguments and exits with an error.
#[derive(Parser)]
#[command(name = "meshctl", version)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("meshctl has no commands yet (install, inject and check come in later releases)");
    std::process::exit(2);
}
