//! Accept loops of the inbound and outbound listeners: for each connection, recover the
//! original destination, detect the protocol (or skip detection on opaque ports), then serve
//! it as HTTP/1, HTTP/2 or opaque TCP. On shutdown, listeners stop accepting and open HTTP
//! connections are asked to finish (HTTP/1 closes after the current response, HTTP/2 sends
//! GOAWAY).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::config::Config;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::discovery::inbound_policy::InboundPolicies;
use crate::inbound::Inbound;
use crate::metrics::{ConnLabels, Direction, Metrics};
use crate::outbound::Outbound;
use crate::tcp;

/// Shared by every connection task.
pub struct Ctx {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub outbound: Arc<Outbound>,
    pub inbound: Arc<Inbound>,
    pub inbound_policy: InboundPolicies,
    pub shutdown: watch::Receiver<bool>,
}

/// Counts live connection tasks, so shutdown can wait for them to drain.
pub type Tracker = Arc<()>;

pub async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    ctx: Arc<Ctx>,
    tracker: Tracker,
) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = signalled(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    let _tracker = tracker;
                    serve_connection(stream, peer, direction, ctx).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    ctx: Arc<Ctx>,
) {
    let _ = stream.set_nodelay(true);
    let orig_dst = crate::orig_dst::original_dst(&stream);
    // The port the client meant: the original destination, or inbound the app's port.
    let port = match direction {
        Direction::Inbound => ctx.inbound.target(orig_dst).map(|a| a.port()),
        Direction::Outbound => orig_dst.map(|a| a.port()),
    };
    let opaque_port = port.is_some_and(|p| {
        ctx.cfg.opaque_ports.binary_search(&p).is_ok()
            || (direction == Direction::Inbound
                && ctx.inbound_policy.protocol(p) == mesh_proto::v1::Protocol::Opaque)
    });
    let (protocol, prefix) = if opaque_port {
        (Protocol::Opaque, bytes::BytesMut::new())
    } else {
        match detect::detect(&mut stream, ctx.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed during detection");
                return;
            }
        }
    };
    let labels = ConnLabels {
        direction,
        protocol: protocol.as_str(),
    };
    ctx.metrics.connections.get_or_create(&labels).inc();
    let open = ctx.metrics.open_connections.get_or_create(&labels).clone();
    open.inc();
    tracing::trace!(%peer, ?orig_dst, protocol = protocol.as_str(), "accepted");
    match protocol {
        Protocol::Opaque => serve_opaque(stream, prefix, orig_dst, direction, &ctx, &labels).await,
        Protocol::Http1 | Protocol::Http2 => {
            let io = PrefixedIo::new(prefix, stream);
            match direction {
                Direction::Outbound => {
                    let outbound = ctx.outbound.clone();
                    let handler = move |req| outbound.clone().handle(req, orig_dst);
                    serve_http(io, protocol, handler, &ctx).await
                }
                Direction::Inbound => {
                    let inbound = ctx.inbound.clone();
                    let handler = move |req| inbound.clone().handle(req, orig_dst);
                    serve_http(io, protocol, handler, &ctx).await
                }
            }
        }
    }
    open.dec();
}

async fn serve_opaque(
    stream: TcpStream,
    prefix: bytes::BytesMut,
    orig_dst: Option<SocketAddr>,
    direction: Direction,
    ctx: &Ctx,
    labels: &ConnLabels,
) {
    let target = match direction {
        Direction::Inbound => ctx.inbound.target(orig_dst),
        Direction::Outbound => match orig_dst {
            Some(orig) => match ctx.outbound.tcp_destination(orig).await {
                Some(dest) => dest
                    .balancer
                    .pick()
                    .map(|ep| ep.connect_addr)
                    .or(Some(orig)),
                None => Some(orig),
            },
            None => None,
        },
    };
    let Some(target) = target else {
        tracing::debug!("opaque connection with no original destination; closing");
        return;
    };
    if let Err(e) = tcp::forward(
        stream,
        prefix,
        target,
        ctx.cfg.connect_timeout,
        ctx.cfg.tcp_idle_timeout,
        &ctx.metrics,
        labels,
    )
    .await
    {
        tracing::debug!(%target, error = %e, "opaque connection ended");
    }
}

async fn serve_http<H, F>(io: PrefixedIo<TcpStream>, protocol: Protocol, handler: H, ctx: &Ctx)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let svc = hyper::service::service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(io);
    let mut shutdown = ctx.shutdown.clone();
    let result = if protocol == Protocol::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .adaptive_window(true)
            .max_concurrent_streams(1024)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = signalled(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ctx.cfg.http_idle_timeout)
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = signalled(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Resolves when shutdown starts (or the sender is gone). Returns nothing, so no borrow of
/// the watch value is held across later awaits.
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
