//! The gRPC servers proxies talk to: Destination (discovery) and Inbound (inbound policy, per
//! port with `Watch` or for all of a workload's declared ports with `WatchWorkload`).
//!
//! Each request opens a long-lived stream fed by one task: the first message is the full
//! state (or `not_found`), then only differences: endpoints removed, endpoints added or
//! changed, the profile when it changed. A name that is not a mesh Service gets `not_found`
//! and the stream stays open (the proxy passes such traffic through), so proxies do not
//! reconnect in a loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::convert::addr_to_proto;
use mesh_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::inbound::{InboundKey, InboundState, WorkloadKey, WorkloadPorts};
use crate::index::Index;
use crate::metrics::{ApiLabel, Metrics};
use crate::resolve;
use crate::services::PortState;

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// Counts a stream as open until dropped.
struct OpenStream {
    metrics: Arc<Metrics>,
    api: &'static str,
}

impl OpenStream {
    fn new(metrics: Arc<Metrics>, api: &'static str) -> Self {
        metrics.streams_open.get_or_create(&ApiLabel { api }).inc();
        Self { metrics, api }
    }

    fn sent(&self) {
        self.metrics
            .updates_sent
            .get_or_create(&ApiLabel { api: self.api })
            .inc();
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics
            .streams_open
            .get_or_create(&ApiLabel { api: self.api })
            .dec();
    }
}

/// The Destination API over the index.
#[derive(Clone)]
pub struct DestinationSvc {
    pub index: Arc<Index>,
}

fn update(u: pb::destination_update::Update) -> pb::DestinationUpdate {
    pb::DestinationUpdate { update: Some(u) }
}

/// The messages that take a proxy from `last` to `cur` (`first`: nothing sent yet).
pub fn diff(
    first: bool,
    last: Option<&PortState>,
    cur: Option<&PortState>,
) -> Vec<pb::DestinationUpdate> {
    use pb::destination_update::Update as U;
    match (last, cur) {
        (_, None) if first || last.is_some() => vec![update(U::NotFound(pb::NotFound {}))],
        (_, None) => Vec::new(),
        (None, Some(cur)) => vec![update(U::State(pb::ServiceState {
            profile: Some((&cur.profile).into()),
            endpoints: cur.endpoints.iter().map(Into::into).collect(),
        }))],
        (Some(last), Some(cur)) => {
            let mut out = Vec::new();
            if last.profile != cur.profile {
                out.push(update(U::Profile((&cur.profile).into())));
            }
            let before: HashMap<SocketAddr, &mesh_core::Endpoint> =
                last.endpoints.iter().map(|e| (e.addr, e)).collect();
            let now: HashMap<SocketAddr, &mesh_core::Endpoint> =
                cur.endpoints.iter().map(|e| (e.addr, e)).collect();
            let removed: Vec<pb::TcpAddress> = last
                .endpoints
                .iter()
                .filter(|e| !now.contains_key(&e.addr))
                .map(|e| addr_to_proto(e.addr))
                .collect();
            let added: Vec<pb::Endpoint> = cur
                .endpoints
                .iter()
                .filter(|e| before.get(&e.addr) != Some(e))
                .map(Into::into)
                .collect();
            if !removed.is_empty() {
                out.push(update(U::Remove(pb::EndpointsRemoved {
                    addresses: removed,
                })));
            }
            if !added.is_empty() {
                out.push(update(U::Add(pb::EndpointsAdded { endpoints: added })));
            }
            out
        }
    }
}

#[tonic::async_trait]
impl pb::destination_server::Destination for DestinationSvc {
    type GetStream = Stream<pb::DestinationUpdate>;

    async fn get(
        &self,
        req: Request<pb::GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let open = OpenStream::new(self.index.metrics.clone(), "destination");
        let target = resolve::target(
            &req.authority,
            &req.context,
            &self.index.naming().cluster_domain,
        );
        tracing::debug!(authority = %req.authority, context = %req.context, ?target, "destination stream");
        let Some(target) = target else {
            tokio::spawn(async move {
                let msg = diff(true, None, None);
                for m in msg {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                    open.sent();
                }
                tx.closed().await;
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let mut watch = self.index.watch_destination(target);
        tokio::spawn(async move {
            let mut last: Option<Arc<PortState>> = None;
            let mut first = true;
            loop {
                let cur = watch.borrow_and_update().clone();
                for m in diff(first, last.as_deref(), cur.as_deref()) {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                    open.sent();
                }
                last = cur;
                first = false;
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The Inbound API over the index.
#[derive(Clone)]
pub struct InboundSvc {
    pub index: Arc<Index>,
}

/// Streams the latest value of `watch` as messages: the current one at once, then one per
/// change (a slow client skips states), until the client goes away.
fn stream_latest<T, M>(
    mut watch: tokio::sync::watch::Receiver<T>,
    open: OpenStream,
    to_msg: fn(&T) -> M,
) -> Response<Stream<M>>
where
    T: Send + Sync + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let msg = to_msg(&watch.borrow_and_update());
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            open.sent();
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Response::new(ReceiverStream::new(rx))
}

fn inbound_msg(s: &InboundState) -> pb::InboundPolicy {
    s.into()
}

fn workload_msg(w: &WorkloadPorts) -> pb::WorkloadPolicy {
    w.into()
}

#[tonic::async_trait]
impl pb::inbound_server::Inbound for InboundSvc {
    type WatchStream = Stream<pb::InboundPolicy>;

    async fn watch(
        &self,
        req: Request<pb::InboundPort>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let key = InboundKey::parse(&req.workload, req.port).map_err(Status::invalid_argument)?;
        let open = OpenStream::new(self.index.metrics.clone(), "inbound");
        Ok(stream_latest(
            self.index.watch_inbound(key),
            open,
            inbound_msg,
        ))
    }

    type WatchWorkloadStream = Stream<pb::WorkloadPolicy>;

    async fn watch_workload(
        &self,
        req: Request<pb::InboundWorkload>,
    ) -> Result<Response<Self::WatchWorkloadStream>, Status> {
        let req = req.into_inner();
        let key = WorkloadKey::parse(&req.workload).map_err(Status::invalid_argument)?;
        let open = OpenStream::new(self.index.metrics.clone(), "inbound_workload");
        Ok(stream_latest(
            self.index.watch_workload(key),
            open,
            workload_msg,
        ))
    }
}

/// Serves both APIs on a bound listener until `shutdown` resolves.
pub async fn serve(
    index: Arc<Index>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_all(index, None, listener, shutdown).await
}

/// Serves the Destination and Inbound APIs and, when given, the Identity API.
pub async fn serve_all(
    index: Arc<Index>,
    identity: Option<Arc<crate::identity::IdentityState>>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .tcp_nodelay(true)
        .add_service(pb::destination_server::DestinationServer::new(
            DestinationSvc {
                index: index.clone(),
            },
        ))
        .add_service(pb::inbound_server::InboundServer::new(InboundSvc { index }))
        .add_optional_service(identity.map(|state| {
            pb::identity_server::IdentityServer::new(crate::identity::service::IdentitySvc {
                state,
            })
        }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
