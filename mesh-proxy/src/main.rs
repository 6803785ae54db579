//! Entry point of the `mesh-proxy` binary: `mesh-proxy [run]` serves traffic, `mesh-proxy init`
//! installs the iptables rules that send a pod's traffic through the proxy, `mesh-proxy
//! await-ready` waits until a running proxy is ready.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use mesh_proxy::admin::LogControl;
use mesh_proxy::config::{Config, LogFormat, RawConfig};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "The mesh's sidecar proxy",
    long_about = "The mesh's sidecar proxy. Without a subcommand it runs the proxy, configured by the flags below or their MESH_PROXY_* environment variables."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    config: RawConfig,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Install (or with --remove, delete) the iptables rules that redirect the pod's TCP
    /// traffic through the proxy. Idempotent; run as root (or with CAP_NET_ADMIN).
    Init(mesh_proxy::init::InitArgs),
    /// Wait until the proxy's admin port says it is ready (GET /ready answers 200), then
    /// exit 0; exit 1 after --timeout. The postStart hook of sidecars injected without
    /// native sidecar support.
    AwaitReady(mesh_proxy::await_ready::AwaitArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Init(args)) => mesh_proxy::init::run(&args),
        Some(Cmd::AwaitReady(args)) => mesh_proxy::await_ready::run(&args),
        Some(Cmd::Run) | None => run(cli.config),
    };
    if let Err(e) = result {
        eprintln!("mesh-proxy: {e:#}");
        std::process::exit(1);
    }
}

fn run(raw: RawConfig) -> anyhow::Result<()> {
    let cfg = Config::from_raw(&raw)?;
    let log = init_logging(&cfg);
    // A sidecar usually gets one core: then a single-threaded runtime serves every connection
    // from one event loop, without the multi-threaded scheduler's cross-thread bookkeeping.
    let rt = if cfg.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .enable_all()
            .thread_name("mesh-proxy")
            .build()?
    };
    tracing::debug!(workers = cfg.worker_threads, "runtime configured");
    rt.block_on(async move {
        let running = mesh_proxy::app::start(cfg, Some(log)).await?;
        let mut signal = running.shutdown_signal();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            _ = signal.wait_for(|s| *s) => tracing::info!("shutdown requested on the admin port"),
        }
        running.shutdown();
        running.wait().await;
        Ok::<_, anyhow::Error>(())
    })?;
    // Background tasks (idle pooled connections, discovery streams) end with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

fn init_logging(cfg: &Config) -> LogControl {
    let filter = EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only for a person at a terminal, not in files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    match cfg.log_format {
        LogFormat::Plain => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi),
            )
            .init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
    }
    Arc::new(move |new: Option<&str>| {
        if let Some(f) = new {
            let parsed = EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            handle.reload(parsed).map_err(|e| e.to_string())?;
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string())
    })
}
