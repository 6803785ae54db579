//! Wires the proxy together: discovery source, routing state, client, listeners, admin; and
//! runs it until shutdown, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, LogControl};
use crate::client::{Client, ClientSettings};
use crate::config::{Config, DiscoverySource};
use crate::destination::{Destinations, Resolve};
use crate::discovery::controller::ControllerResolver;
use crate::discovery::inbound_policy::InboundPolicies;
use crate::discovery::static_file::StaticResolver;
use crate::discovery::PassThrough;
use crate::inbound::Inbound;
use crate::loops::SelfAddrs;
use crate::metrics::{Direction, Metrics};
use crate::outbound::Outbound;
use crate::serve::{accept_loop, Ctx, ListenerLimits};

/// A running proxy.
pub struct Running {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    shutdown_tx: watch::Sender<bool>,
    done: JoinHandle<()>,
}

impl Running {
    /// Stops accepting and starts draining.
    pub fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// A receiver that turns true when shutdown starts (signal, /shutdown or [`Self::shutdown`]).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Waits until shutdown was requested and in-flight work drained (or the grace period
    /// ran out).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

async fn bind(addr: SocketAddr, what: &str, var: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the {what} listener (set {var} to a free address)")
    })
}

pub async fn start(cfg: Config, log: Option<LogControl>) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let mut inbound_policy = InboundPolicies::none();
    let mut identity = None;
    let trust_domain = cfg
        .identity
        .as_ref()
        .map_or("cluster.local".to_string(), |i| {
            i.identity.trust_domain().to_string()
        });
    let (resolver, ready): (Arc<dyn Resolve>, Arc<dyn Fn() -> bool + Send + Sync>) = match &cfg
        .discovery
    {
        DiscoverySource::None => (Arc::new(PassThrough), Arc::new(|| true)),
        DiscoverySource::StaticFile(path) => (
            StaticResolver::start(path.clone(), Duration::from_secs(1))
                .context("MESH_PROXY_STATIC_CONFIG is invalid")?,
            Arc::new(|| true),
        ),
        DiscoverySource::Controller(uri) => {
            let r = ControllerResolver::new(uri.clone(), cfg.workload.clone(), metrics.clone())?;
            inbound_policy = InboundPolicies::from_controller(
                r.channel(),
                cfg.workload.clone(),
                trust_domain.clone(),
            );
            if let Some(settings) = &cfg.identity {
                identity = Some(crate::identity::start(
                    r.channel(),
                    settings.clone(),
                    metrics.clone(),
                )?);
            }
            let probe = r.clone();
            let policies = inbound_policy.clone();
            let id = identity.clone();
            // Ready once the controller answered, the inbound ports' policy is known and,
            // with an identity, the first certificate and the trust bundle arrived.
            (
                r,
                Arc::new(move || {
                    probe.connected() && policies.loaded() && id.as_ref().is_none_or(|i| i.ready())
                }),
            )
        }
    };
    if matches!(cfg.discovery, DiscoverySource::None) {
        tracing::warn!(
            "no discovery source (neither MESH_PROXY_CONTROLLER_ADDR nor MESH_PROXY_STATIC_CONFIG is set): every request is passed through to the address it names"
        );
    }
    let dests = Arc::new(Destinations::new(resolver, metrics.clone()));

    let out_l = bind(cfg.outbound_addr, "outbound", "MESH_PROXY_OUTBOUND_ADDR").await?;
    let in_l = bind(cfg.inbound_addr, "inbound", "MESH_PROXY_INBOUND_ADDR").await?;
    let admin_l = bind(cfg.admin_addr, "admin", "MESH_PROXY_ADMIN_ADDR").await?;
    let outbound_addr = out_l.local_addr()?;
    let inbound_addr = in_l.local_addr()?;
    let admin_addr = admin_l.local_addr()?;

    // Never connect back into ourselves: the outbound side may reach only the inbound
    // listener (a workload calling itself), the inbound side none.
    let own = SelfAddrs::new(vec![outbound_addr, inbound_addr, admin_addr]);
    own.refresh_in_background();
    let settings = ClientSettings {
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.http_idle_timeout,
        h2: cfg.h2,
        max_connections_per_endpoint: cfg.max_connections_per_endpoint,
    };
    let mut out_client = Client::new(
        &settings,
        own.guard(&[1]),
        metrics.clone(),
        Direction::Outbound,
    );
    if let Some(id) = &identity {
        out_client = out_client.with_tls(id.creds.clone());
    }
    let out_client = Arc::new(out_client);
    let in_client = Arc::new(Client::new(
        &settings,
        own.guard(&[]),
        metrics.clone(),
        Direction::Inbound,
    ));
    let outbound = Arc::new(Outbound::new(
        dests.clone(),
        out_client,
        metrics.clone(),
        cfg.discovery_timeout,
        inbound_policy.clone(),
    ));
    let inbound = Arc::new(Inbound::new(
        in_client,
        metrics.clone(),
        cfg.inbound_forward,
        inbound_policy.clone(),
        identity.as_ref().map(|i| i.creds.identity()),
    ));
    let tls_server = identity.as_ref().map(|i| i.creds.server_config());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let grace = cfg.shutdown_grace;
    let limits = ListenerLimits::new(&cfg);
    let ctx = Arc::new(Ctx {
        limits,
        cfg,
        metrics: metrics.clone(),
        outbound,
        inbound,
        inbound_policy,
        tls_server,
        shutdown: shutdown_rx.clone(),
    });
    let tracker = Arc::new(());
    let live = Arc::downgrade(&tracker);
    tokio::spawn(crate::memory::trim_after_load(move || {
        live.strong_count().saturating_sub(1)
    }));
    tokio::spawn(accept_loop(
        out_l,
        Direction::Outbound,
        ctx.clone(),
        tracker.clone(),
    ));
    tokio::spawn(accept_loop(
        in_l,
        Direction::Inbound,
        ctx.clone(),
        tracker.clone(),
    ));
    drop(ctx);
    tokio::spawn(admin::serve(
        admin_l,
        Arc::new(Admin {
            metrics: metrics.clone(),
            dests,
            ready,
            log,
            identity: identity.as_ref().map(|i| i.creds.clone()),
            shutdown_tx: shutdown_tx.clone(),
        }),
    ));
    tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, "proxy started");

    let mut rx = shutdown_rx;
    let done = tokio::spawn(async move {
        let _ = rx.wait_for(|s| *s).await;
        tracing::info!(grace = ?grace, "shutting down: draining connections");
        let deadline = tokio::time::Instant::now() + grace;
        while Arc::strong_count(&tracker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = Arc::strong_count(&tracker) - 1;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "grace period over; closing remaining connections"
            );
        } else {
            tracing::info!("drained");
        }
    });
    Ok(Running {
        outbound_addr,
        inbound_addr,
        admin_addr,
        metrics,
        shutdown_tx,
        done,
    })
}
