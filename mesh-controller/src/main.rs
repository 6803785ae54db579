//! `mesh-controller` binary: `run` (the default) serves the mesh; `crds` prints the CRDs.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use mesh_controller::RunArgs;
use tracing_subscriber::EnvFilter;

/// The mesh control plane: watches Kubernetes or a directory of YAML objects and serves
/// discovery and inbound policy to mesh proxies.
#[derive(Parser)]
#[command(
    name = "mesh-controller",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `mesh_controller=debug`.
    #[arg(
        long,
        env = "MESH_CONTROLLER_LOG",
        default_value = "info",
        global = true
    )]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "MESH_CONTROLLER_LOG_JSON", global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the mesh (the default).
    Run(RunArgs),
    /// Print the mesh's CustomResourceDefinitions as YAML, for `kubectl apply -f -`.
    Crds,
}

fn main() {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log '{}' is not a valid filter: {e}", cli.log);
            std::process::exit(2);
        }
    };
    // Logs go to stdout; colours only when it is a terminal (not in a file or a pipe).
    let ansi = std::io::stdout().is_terminal();
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(std::io::stdout)
            .with_env_filter(filter)
            .init();
    }
    let args = match cli.cmd {
        Some(Cmd::Crds) => match mesh_crds::crds_yaml() {
            Ok(y) => {
                print!("{y}");
                return;
            }
            Err(e) => {
                eprintln!("error: cannot render the CRDs: {e}");
                std::process::exit(1);
            }
        },
        Some(Cmd::Run(a)) => a,
        None => cli.run,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let mut running = mesh_controller::start(args).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = running.wait() => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("SIGTERM; stopping"),
    }
    running.shutdown();
    Ok(())
}
