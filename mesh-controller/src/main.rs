//! `mesh-controller` binary: `run` (the default) serves the mesh; `crds` prints the CRDs;
//! `identity init` and `identity join-token` prepare the CA and join tokens for local mode.

use std::io::IsTerminal;
use std::path::PathBuf;

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
    Run(Box<RunArgs>),
    /// Print the mesh's CustomResourceDefinitions as YAML, for `kubectl apply -f -`.
    Crds,
    /// Prepare the certificate authority and join tokens (local mode).
    #[command(subcommand)]
    Identity(IdentityCmd),
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Write a fresh trust anchor and issuer into a directory (for --identity-dir); with
    /// --next, write `next/` instead, which starts a trust-anchor rotation.
    Init {
        /// The identity directory.
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain of the mesh.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Overwrite existing files.
        #[arg(long, conflicts_with = "next")]
        force: bool,
        /// Write `DIR/next/` (a new anchor and issuer) for a rotation.
        #[arg(long)]
        next: bool,
    },
    /// Create a join token for a workload identity; prints it once and stores only its hash
    /// in DIR/join-tokens.yaml.
    JoinToken {
        /// The identity directory.
        #[arg(long)]
        dir: PathBuf,
        /// Namespace of the identity.
        #[arg(long)]
        namespace: String,
        /// Service account of the identity.
        #[arg(long)]
        service_account: String,
        /// Only this workload may use the token (e.g. `ns:shop/pod:web-1`).
        #[arg(long)]
        workload: Option<String>,
    },
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
        Some(Cmd::Identity(cmd)) => match identity(cmd) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
        Some(Cmd::Run(a)) => *a,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn identity(cmd: IdentityCmd) -> anyhow::Result<()> {
    use anyhow::Context;
    use mesh_controller::identity::proof::{
        read_join_tokens, write_join_tokens, JoinTokenEntry, JOIN_TOKENS_FILE,
    };
    match cmd {
        IdentityCmd::Init {
            dir,
            trust_domain,
            force,
            next,
        } => {
            let (written, what) = if next {
                let d =
                    mesh_identity::files::init_next(&dir, &trust_domain).with_context(|| {
                        format!("cannot write the next CA into {}/next", dir.display())
                    })?;
                (d, format!("{}/next", dir.display()))
            } else {
                let d = mesh_identity::files::init(&dir, &trust_domain, force)
                    .with_context(|| format!("cannot write the CA into {}", dir.display()))?;
                (d, dir.display().to_string())
            };
            println!(
                "wrote a trust anchor and an issuer for trust domain {trust_domain} into {what}:"
            );
            for a in &written.anchors {
                println!(
                    "  trust anchor  sha256 {}  valid until {}",
                    hex(&a.sha256()),
                    humantime::format_rfc3339_seconds(a.not_after())
                );
            }
            println!(
                "  issuer        sha256 {}  valid until {}",
                hex(&written.issuer.sha256()),
                humantime::format_rfc3339_seconds(written.issuer.not_after())
            );
            if next {
                println!("a controller running with --identity-dir {} rotates to it now; follow the phase in its /status", dir.display());
            } else {
                println!("start the controller with --identity-dir {} and create join tokens with `mesh-controller identity join-token --dir {} --namespace NS --service-account SA`", dir.display(), dir.display());
            }
            Ok(())
        }
        IdentityCmd::JoinToken {
            dir,
            namespace,
            service_account,
            workload,
        } => {
            if !dir.is_dir() {
                anyhow::bail!(
                    "{} is not a directory; create the CA first with `mesh-controller identity init --dir {}`",
                    dir.display(),
                    dir.display()
                );
            }
            // The identity must be a valid SPIFFE path (checked for any trust domain).
            mesh_identity::spiffe_id(
                mesh_identity::DEFAULT_TRUST_DOMAIN,
                &namespace,
                &service_account,
            )
            .with_context(|| {
                format!("namespace '{namespace}' / service account '{service_account}'")
            })?;
            if workload.as_deref() == Some("") {
                anyhow::bail!("--workload must not be empty (leave it out for any workload)");
            }
            let path = dir.join(JOIN_TOKENS_FILE);
            let mut entries = read_join_tokens(&path)?;
            let token = mesh_identity::token::generate();
            entries.push(JoinTokenEntry {
                namespace: namespace.clone(),
                service_account: service_account.clone(),
                workload,
                sha256: mesh_identity::token::hash(&token),
            });
            write_join_tokens(&path, &entries)?;
            eprintln!(
                "join token for namespace {namespace}, service account {service_account} (stored hashed in {}; it is shown only now):",
                path.display()
            );
            println!("{token}");
            Ok(())
        }
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
    running.stop().await;
    Ok(())
}
