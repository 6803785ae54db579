//! `mesh-controller`: the mesh's control plane.
//!
//! It watches the platform (Kubernetes through kube-rs, or a directory of YAML objects in
//! local mode), keeps one in-memory [`index`] of Services, endpoints, routes and policies, and
//! serves it to every proxy over the streaming gRPC APIs of `mesh-proto` ([`grpc`]). It is
//! never on the request path: proxies keep the last state they received when it goes away.
//!
//! Modules, in the order data flows: [`kubernetes`] / [`local`] (sources) → [`objects`] (the
//! store) → [`routes`], [`policies`], [`services`], [`inbound`] (what proxies see) →
//! [`index`] (publication) → [`grpc`] (streams); [`status`] conditions go back to the
//! platform; [`admin`] and [`metrics`] are for operators.

pub mod admin;
pub mod args;
pub mod grpc;
pub mod identity;
pub mod inbound;
pub mod index;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod named;
pub mod objects;
pub mod policies;
pub mod policy_args;
pub mod resolve;
pub mod routes;
pub mod services;
pub mod status;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

pub use args::{RunArgs, Source};
use index::Index;
use services::Naming;

/// A started controller.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The admission webhook's HTTPS address, when it is on.
    pub webhook_addr: Option<SocketAddr>,
    pub index: Arc<Index>,
    /// The CA (off when no identity material is configured).
    pub identity: Arc<identity::IdentityState>,
    shutdown: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kubernetes mode: tells the leader election to release the Lease, and its task.
    election: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    source: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits for the source to stop (it only stops on a fatal error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        match (&mut self.source).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the source task failed: {e}")),
        }
    }

    /// Stops gracefully: a leader stops writing status and releases its Lease (so that
    /// another replica takes over at once, not when the Lease expires), then everything
    /// stops as in [`Running::shutdown`]. Bounded: gives up on the release after 3 s.
    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.election.take() {
            let _ = stop.send(true);
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(3), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.shutdown();
    }

    /// Stops serving and every task at once (the Lease, if held, is left to expire).
    pub fn shutdown(mut self) {
        if let Some((_, task)) = self.election.take() {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
        self.source.abort();
    }
}

/// Binds the listeners and starts the source, the index, the gRPC and admin servers.
pub async fn start(args: RunArgs) -> anyhow::Result<Running> {
    start_with(args, None).await
}

/// [`start`], with a given Kubernetes client instead of the in-cluster config or KUBECONFIG.
pub async fn start_with(args: RunArgs, client: Option<kube::Client>) -> anyhow::Result<Running> {
    let metrics = Arc::new(metrics::Metrics::new());
    let naming = Naming {
        cluster_domain: args.cluster_domain.clone(),
        trust_domain: args.trust_domain.clone(),
    };
    let index = Index::with_policy(
        naming,
        metrics.clone(),
        args.policy.mesh_policy(&args.trust_domain),
    );
    let (tx, rx) = mpsc::channel(4096);
    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut tasks = vec![tokio::spawn(index.clone().run(rx))];
    let mut kube_client = None;
    let mut election = None;
    let mut leader_status = None;
    let (files, source_name, source) = match args.source {
        Source::Local => {
            let dir = args.config_dir.clone().context(
                "local mode needs --config-dir (MESH_CONTROLLER_CONFIG_DIR): the directory of YAML objects",
            )?;
            if !dir.is_dir() {
                anyhow::bail!(
                    "--config-dir {} is not a directory; create it (it may be empty) or point at your objects",
                    dir.display()
                );
            }
            let src = local::LocalSource::new(dir, metrics.clone(), args.cluster_domain.clone());
            let files = src.errors();
            let status = index.status();
            tasks.push(tokio::spawn(log_conditions(status)));
            (Some(files), "local", tokio::spawn(src.run(tx)))
        }
        Source::Kubernetes => {
            let client = match client {
                Some(c) => c,
                None => kubernetes::client_from_environment().await?,
            };
            kube_client = Some(client.clone());
            kubernetes::spawn_watches(client.clone(), tx, metrics.clone());
            let (leader_tx, leader_rx) = watch::channel(false);
            let identity = kubernetes::holder_identity();
            let (status_tx, status_rx) = watch::channel(kubernetes::LeaderStatus::starting(
                &args.lease_namespace,
                &args.lease_name,
                &identity,
            ));
            let (election_stop, election_stop_rx) = watch::channel(false);
            let elect = kubernetes::Election {
                client: client.clone(),
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity,
                timing: kubernetes::LeaseTiming::default(),
                metrics: metrics.clone(),
            };
            election = Some((
                election_stop,
                tokio::spawn(elect.run(leader_tx, status_tx, election_stop_rx)),
            ));
            leader_status = Some(status_rx);
            tasks.push(tokio::spawn(kubernetes::write_statuses(
                client,
                index.status(),
                leader_rx,
            )));
            (
                None,
                "kubernetes",
                tokio::spawn(async { std::future::pending::<anyhow::Result<()>>().await }),
            )
        }
    };
    let webhook =
        webhook::start(&args, index.clone(), metrics.clone(), kube_client.clone()).await?;
    let webhook_addr = webhook.as_ref().map(|w| w.addr);
    let webhook_status = webhook.map(|w| {
        tasks.extend(w.tasks);
        w.status
    });
    let (identity, identity_tasks) = identity::setup(&args, kube_client, metrics.clone());
    tasks.extend(identity_tasks);
    let admin = admin::Admin {
        index: index.clone(),
        files,
        source: source_name,
        identity: identity.clone(),
        webhook: webhook_status,
        leader: leader_status,
    };
    tasks.push(tokio::spawn(admin.serve(admin_listener)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let grpc_index = index.clone();
    let grpc_identity = identity.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = grpc::serve_all(grpc_index, Some(grpc_identity), grpc_listener, stop).await
        {
            tracing::error!("gRPC server failed: {e}");
        }
    }));
    tracing::info!(%grpc_addr, %admin_addr, source = source_name, "mesh-controller started");
    Ok(Running {
        grpc_addr,
        admin_addr,
        webhook_addr,
        index,
        identity,
        shutdown: Some(stop_tx),
        tasks,
        election,
        source,
    })
}

/// Local mode has no API to write status to: log each object whose conditions turn bad or
/// good again.
async fn log_conditions(mut rx: watch::Receiver<Arc<status::StatusReport>>) {
    let mut last: Arc<status::StatusReport> = Arc::default();
    loop {
        let cur = rx.borrow_and_update().clone();
        for (k, st) in cur.iter() {
            let before = last.get(k).map(|s| s.has_problem());
            match (before, st.problem()) {
                (Some(true), None) => {
                    tracing::info!(kind = %k.0, object = %k.1, "accepted");
                }
                (_, Some(c)) if last.get(k) != Some(st) => {
                    tracing::warn!(kind = %k.0, object = %k.1, condition = %c.type_, reason = %c.reason, "{}", c.message);
                }
                _ => {}
            }
        }
        last = cur;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
