//! Accept loops of the inbound and outbound listeners: for each connection, recover the
//! original destination, detect the protocol (or skip detection on opaque ports), then serve
//! it as HTTP/1, HTTP/2 or opaque TCP. On shutdown, listeners stop accepting and open HTTP
//! connections are asked to finish (HTTP/1 closes after the current response, HTTP/2 sends
//! GOAWAY).
//!
//! Limits ([`crate::limits`]): a listener closes new connections at once past its connection
//! limit or past its limit of connections still waiting for a first request head; a
//! connection must deliver its first complete request head within the header read timeout
//! (from accept), or it is closed. Later requests on a keep-alive connection are bounded by
//! the idle timeout (hyper's header timer also counts the idle time between requests).
//! HTTP/2 keep-alive: the outbound listener's clients are the local app ([`Peer::App`]),
//! the inbound listener's are mostly other proxies ([`Peer::Proxy`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::client::Peer;
use crate::config::Config;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::discovery::inbound_policy::InboundPolicies;
use crate::inbound::Inbound;
use crate::inbound::InboundConn;
use crate::limits::Slots;
use crate::metrics::{ConnLabels, Direction, Metrics};
use crate::outbound::Outbound;
use crate::tcp;
use crate::tls::{self, Io, Sniffed};
use mesh_core::authz::InboundTls;
use mesh_core::AppProtocol;
use mesh_proto::v1 as pb;

/// Shared by every connection task.
pub struct Ctx {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub outbound: Arc<Outbound>,
    pub inbound: Arc<Inbound>,
    pub inbound_policy: Arc<InboundPolicies>,
    /// Inbound mTLS termination (the proxy has an identity).
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: ListenerLimits,
}

/// Per listener: open connections, and connections without a first request head yet.
pub struct ListenerLimits {
    pub outbound: Slots,
    pub outbound_pending: Slots,
    pub inbound: Slots,
    pub inbound_pending: Slots,
}

impl ListenerLimits {
    pub fn new(cfg: &Config) -> Self {
        Self {
            outbound: Slots::new(cfg.outbound_max_connections),
            outbound_pending: Slots::new(cfg.max_pending_connections),
            inbound: Slots::new(cfg.inbound_max_connections),
            inbound_pending: Slots::new(cfg.max_pending_connections),
        }
    }

    fn of(&self, direction: Direction) -> (&Slots, &Slots) {
        match direction {
            Direction::Outbound => (&self.outbound, &self.outbound_pending),
            Direction::Inbound => (&self.inbound, &self.inbound_pending),
        }
    }
}

/// The permits a connection holds: its place on the listener, and (until its first request
/// head, or until it is found opaque) its place among the pending ones.
struct Permits {
    _open: OwnedSemaphorePermit,
    pending: Option<OwnedSemaphorePermit>,
    /// When the first request head must have arrived.
    head_deadline: Instant,
}

/// Told by the first request of a connection that its head arrived.
#[derive(Default)]
struct FirstHead {
    seen: AtomicBool,
    notify: Notify,
}

impl FirstHead {
    fn arrived(&self) {
        if !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
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
                let head_deadline = Instant::now() + ctx.cfg.header_read_timeout;
                let (open, pending) = ctx.limits.of(direction);
                let Some(open) = open.try_take() else {
                    ctx.metrics.refused(direction, "listener_limit");
                    tracing::debug!(%peer, "connection limit reached; closing");
                    continue;
                };
                let Some(pending) = pending.try_take() else {
                    ctx.metrics.refused(direction, "pending_limit");
                    tracing::debug!(%peer, "too many connections without a request; closing");
                    continue;
                };
                let permits = Permits {
                    _open: open,
                    pending: Some(pending),
                    head_deadline,
                };
                let ctx = ctx.clone();
                let tracker = tracker.clone();
                crate::memory::note_open(Arc::strong_count(&tracker) - 1);
                tokio::spawn(async move {
                    let _tracker = tracker;
                    serve_connection(stream, peer, direction, ctx, permits).await;
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
    permits: Permits,
) {
    let _ = stream.set_nodelay(true);
    let orig_dst = crate::orig_dst::original_dst(&stream);
    // The port the client meant: the original destination, or inbound the app's port.
    let port = match direction {
        Direction::Inbound => ctx.inbound.target(orig_dst).map(|a| a.port()),
        Direction::Outbound => orig_dst.map(|a| a.port()),
    };
    let mut prefix = bytes::BytesMut::new();
    let mut silent = false;
    if direction == Direction::Inbound {
        let policy = ctx.inbound_policy.port(port.unwrap_or(0));
        if ctx.tls_server.is_none() && policy.tls == InboundTls::Strict {
            // Strict means mTLS only, and this proxy has no identity to terminate it with.
            ctx.metrics.tls_failed(direction, "no_identity");
            tracing::debug!(%peer, port, "strict mTLS port but this proxy has no identity (MESH_PROXY_IDENTITY); closing");
            return;
        }
        if let (Some(config), false) = (&ctx.tls_server, policy.tls == InboundTls::Disabled) {
            // Meshed clients speak first (a ClientHello); silence is plaintext.
            prefix.reserve(1024);
            match tls::sniff(&mut stream, &mut prefix, ctx.cfg.detect_timeout).await {
                Ok(Sniffed::Mesh) => {
                    let accepted =
                        tls::accept(config.clone(), stream, prefix, ctx.cfg.header_read_timeout)
                            .await;
                    match accepted {
                        Ok(a) => serve_meshed(a, peer, orig_dst, ctx, permits).await,
                        Err(e) => {
                            ctx.metrics.tls_failed(direction, inbound_tls_reason(&e));
                            tracing::debug!(%peer, error = %e, "inbound mTLS handshake failed");
                        }
                    }
                    return;
                }
                Ok(_) if policy.tls == InboundTls::Strict => {
                    ctx.metrics.tls_failed(direction, "plaintext_refused");
                    tracing::debug!(%peer, port, "plaintext connection to a strict mTLS port; closing");
                    return;
                }
                Ok(_) => silent = prefix.is_empty(),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection failed before its first bytes");
                    return;
                }
            }
        }
    }
    let mut opaque_port = silent
        || port.is_some_and(|p| {
            ctx.cfg.opaque_ports.binary_search(&p).is_ok()
                || (direction == Direction::Inbound
                    && ctx.inbound_policy.protocol(p) == AppProtocol::Opaque)
        });
    // Outbound, the destination's endpoints may declare their protocol (a Server or the
    // Service's appProtocol): an opaque one is not detected on this side either.
    if let (false, Direction::Outbound, Some(orig)) = (opaque_port, direction, orig_dst) {
        if let Some(dest) = ctx.outbound.tcp_destination(orig).await {
            let eps = dest.balancer.snapshot();
            opaque_port = !eps.is_empty() && eps.iter().all(|e| e.is_opaque());
        }
    }
    let (protocol, prefix) = if opaque_port {
        (Protocol::Opaque, prefix)
    } else {
        match detect::detect_from(&mut stream, prefix, ctx.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed during detection");
                return;
            }
        }
    };
    let conn = match direction {
        Direction::Inbound => Some(Arc::new(ctx.inbound.conn(
            port.unwrap_or(0),
            orig_dst,
            peer,
            None,
        ))),
        Direction::Outbound => None,
    };
    if direction == Direction::Inbound {
        ctx.metrics.peer_connection(direction, None, false);
    }
    serve_as(
        Io::Plain(stream),
        prefix,
        protocol,
        peer,
        orig_dst,
        direction,
        conn,
        ctx,
        permits,
    )
    .await;
}

fn inbound_tls_reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        "timeout"
    } else {
        "handshake"
    }
}

/// An mTLS connection from another proxy: no detection, the transport header says what it
/// carries and for which port.
async fn serve_meshed(
    accepted: tls::Accepted,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    ctx: Arc<Ctx>,
    permits: Permits,
) {
    let tls::Accepted {
        io,
        client,
        port,
        protocol,
    } = accepted;
    let policy = ctx.inbound_policy.port(port);
    if client.is_none() && policy.tls == InboundTls::Strict {
        ctx.metrics
            .tls_failed(Direction::Inbound, "no_client_certificate");
        tracing::debug!(%peer, port, "mTLS without a client certificate on a strict port; closing");
        return;
    }
    ctx.metrics
        .peer_connection(Direction::Inbound, client.as_ref(), true);
    let conn = Arc::new(ctx.inbound.conn(port, orig_dst, peer, client));
    let (protocol, prefix, io) = match protocol {
        pb::Protocol::Http1 => (Protocol::Http1, bytes::BytesMut::new(), io),
        pb::Protocol::Http2 | pb::Protocol::Grpc => (Protocol::Http2, bytes::BytesMut::new(), io),
        pb::Protocol::Opaque => (Protocol::Opaque, bytes::BytesMut::new(), io),
        pb::Protocol::Detect => {
            let mut io = io;
            match detect::detect(&mut io, ctx.cfg.detect_timeout).await {
                Ok((p, prefix)) => (p, prefix, io),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection failed during detection");
                    return;
                }
            }
        }
    };
    serve_as(
        io,
        prefix,
        protocol,
        peer,
        orig_dst,
        Direction::Inbound,
        Some(conn),
        ctx,
        permits,
    )
    .await;
}

/// Serves a connection whose protocol is known.
#[allow(clippy::too_many_arguments)]
async fn serve_as(
    io: Io,
    prefix: bytes::BytesMut,
    protocol: Protocol,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    direction: Direction,
    conn: Option<Arc<InboundConn>>,
    ctx: Arc<Ctx>,
    permits: Permits,
) {
    let labels = ConnLabels {
        direction,
        protocol: protocol.as_str(),
    };
    ctx.metrics.connections.get_or_create(&labels).inc();
    let open = ctx.metrics.open_connections.get_or_create(&labels).clone();
    open.inc();
    tracing::trace!(%peer, ?orig_dst, protocol = protocol.as_str(), "accepted");
    match protocol {
        Protocol::Opaque => {
            let mut permits = permits;
            permits.pending = None;
            serve_opaque(io, prefix, orig_dst, direction, conn, &ctx, &labels).await;
            drop(permits);
        }
        Protocol::Http1 | Protocol::Http2 => {
            let io = PrefixedIo::new(prefix, io);
            match (direction, conn) {
                (Direction::Inbound, Some(conn)) => {
                    let inbound = ctx.inbound.clone();
                    let handler = move |req| inbound.clone().handle(req, conn.clone());
                    serve_http(io, protocol, handler, &ctx, direction, permits).await
                }
                _ => {
                    let outbound = ctx.outbound.clone();
                    let handler = move |req| outbound.clone().handle(req, orig_dst);
                    serve_http(io, protocol, handler, &ctx, direction, permits).await
                }
            }
        }
    }
    open.dec();
}

async fn serve_opaque(
    stream: Io,
    prefix: bytes::BytesMut,
    orig_dst: Option<SocketAddr>,
    direction: Direction,
    conn: Option<Arc<InboundConn>>,
    ctx: &Ctx,
    labels: &ConnLabels,
) {
    // The endpoint picked outbound (for its identity), or the app's address inbound.
    let mut endpoint = None;
    let target = match (direction, &conn) {
        (Direction::Inbound, Some(conn)) => {
            if !ctx.inbound.allow_connection(conn) {
                return;
            }
            conn.target
        }
        (Direction::Inbound, None) => None,
        (Direction::Outbound, _) => match orig_dst {
            Some(orig) => match ctx.outbound.tcp_destination(orig).await {
                Some(dest) => match dest.balancer.pick() {
                    Some(ep) => {
                        let addr = ep.connect_addr;
                        endpoint = Some(ep);
                        Some(addr)
                    }
                    None => Some(orig),
                },
                None => {
                    if !ctx.outbound.allow_egress(None, orig) {
                        return;
                    }
                    Some(orig)
                }
            },
            None => None,
        },
    };
    let Some(target) = target else {
        tracing::debug!(
            "opaque connection with no original destination; closing (explicit mode carries only HTTP)"
        );
        return;
    };
    let client = match direction {
        Direction::Inbound => ctx.inbound.client(),
        Direction::Outbound => &ctx.outbound.client,
    };
    let tls = endpoint.as_ref().and_then(|e| e.tls());
    let (server, _slot) = match client.connect(target, tls, pb::Protocol::Opaque).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%target, error = %e, "opaque connection refused");
            return;
        }
    };
    if let Err(e) = tcp::forward(
        stream,
        prefix,
        server,
        ctx.cfg.tcp_idle_timeout,
        &ctx.metrics,
        labels,
    )
    .await
    {
        tracing::debug!(%target, error = %e, "opaque connection ended");
    }
}

async fn serve_http<H, F>(
    io: PrefixedIo<Io>,
    protocol: Protocol,
    handler: H,
    ctx: &Ctx,
    direction: Direction,
    permits: Permits,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let first = Arc::new(FirstHead::default());
    let seen = first.clone();
    let handler = Arc::new(handler);
    let svc = hyper::service::service_fn(move |req| {
        seen.arrived();
        // The request's future is large (routing, retries, the client): boxed once here, it
        // is not copied again each time hyper moves it into a task (a fifth of the HTTP/2
        // proxy's CPU was such copies).
        let fut = Box::pin(handler(req));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(io);
    let result = if protocol == Protocol::Http2 {
        // The outbound listener's clients are the local app; the inbound one's other proxies.
        let peer = match direction {
            Direction::Outbound => Peer::App,
            Direction::Inbound => Peer::Proxy,
        };
        let (interval, _) = ctx.cfg.h2.keepalive(peer);
        // The client proved it speaks HTTP/2 with its preface; a gRPC channel may stay open
        // without a call for long, so neither the head deadline nor the pending cap applies.
        let mut permits = permits;
        permits.pending = None;
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(ctx.cfg.h2.keepalive_timeout)
            .max_concurrent_streams(1024)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        run(conn, |c| c.graceful_shutdown(), &first, permits, ctx).await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ctx.cfg.http_idle_timeout)
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        run(conn, |c| c.graceful_shutdown(), &first, permits, ctx).await
    };
    match result {
        Some(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
        Some(Ok(())) => {}
        None => {
            ctx.metrics.refused(direction, "header_read_timeout");
            tracing::debug!("no request head within the header read timeout; closing");
        }
    }
}

/// Drives a server connection to its end: gracefully on shutdown, and closed (`None`) when
/// its first request head does not arrive in time.
async fn run<C>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    first: &FirstHead,
    mut permits: Permits,
    ctx: &Ctx,
) -> Option<Result<(), hyper::Error>>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut shutdown = ctx.shutdown.clone();
    let mut shutting_down = false;
    let deadline = tokio::time::sleep_until(permits.head_deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => return Some(r),
            () = first.notify.notified(), if permits.pending.is_some() => {
                permits.pending = None;
            }
            () = &mut deadline, if permits.pending.is_some() => return None,
            () = signalled(&mut shutdown), if !shutting_down => {
                shutting_down = true;
                graceful(conn.as_mut());
            }
        }
    }
}

/// Resolves when shutdown starts (or the sender is gone). Returns nothing, so no borrow of
/// the watch value is held across later awaits.
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
