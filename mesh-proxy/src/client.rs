//! Connections from the proxy to endpoints, pooled per endpoint ([`Conns`]).
//!
//! HTTP/1: a small pool of keep-alive connections. A request takes an idle connection that
//! is ready (its previous response finished) or opens a new one, and the connection goes back
//! to the pool once the response headers arrived; it is picked again when the response body
//! is done. Connections idle longer than the idle timeout are closed. A request that a reused
//! connection could not send (closed by the server meanwhile) is sent on a fresh one.
//!
//! HTTP/2 (to another mesh proxy, or when the app spoke HTTP/2): one multiplexed connection
//! per endpoint. The request's `:authority` stays the service's, not the endpoint address.
//! Flow-control windows are fixed (no adaptive window: its BDP probe is a PING on every
//! exchange). Keep-alive PINGs follow [`H2Settings`]: between proxies as configured; to
//! applications only when configured, and never without an open stream unless configured,
//! as gRPC servers require (they close connections that ping more often than they permit).
//!
//! Every connection is checked against the proxy's own listeners ([`LoopGuard`]) and counts
//! towards its endpoint's connection limit ([`EndpointSlots`]) while it is open.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::Identity;
use mesh_identity::tls::Credentials;
use mesh_proto::v1::Protocol;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::config::H2Settings;
use crate::error::ProxyError;
use crate::limits::{EndpointSlot, EndpointSlots};
use crate::loops::LoopGuard;
use crate::metrics::{Direction, Metrics, TlsFailureLabels};
use crate::tls::{self, Io};

/// A failed send. `request` is given back when it never left the proxy (the connection
/// could not be made), so it can be sent to another endpoint.
pub struct SendError {
    pub error: ProxyError,
    pub request: Option<Request<ProxyBody>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            request: None,
        }
    }
}

/// Most idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Connection settings shared by all endpoints.
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2: H2Settings,
    pub max_connections_per_endpoint: usize,
}

/// Who is at the other end of an HTTP/2 connection: keep-alive differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Another mesh proxy.
    Proxy,
    /// An application (the local app, or a server outside the mesh).
    App,
}

/// Opens and pools the connections of one side of the proxy (outbound or inbound).
pub struct Client {
    connect_timeout: Duration,
    idle_timeout: Duration,
    h2: H2Settings,
    guard: LoopGuard,
    slots: EndpointSlots,
    metrics: Arc<Metrics>,
    direction: Direction,
    /// Outbound with an identity: mTLS to endpoints that have one.
    tls: Option<Credentials>,
}

/// mTLS to a meshed endpoint: the identity it must prove and its app port.
#[derive(Clone, Copy)]
pub struct TlsTo<'a> {
    pub identity: &'a Identity,
    pub port: u16,
}

/// The connections of one endpoint.
#[derive(Default)]
pub struct Conns {
    h1: Mutex<Vec<(http1::SendRequest<ProxyBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl Client {
    pub fn new(
        settings: &ClientSettings,
        guard: LoopGuard,
        metrics: Arc<Metrics>,
        direction: Direction,
    ) -> Self {
        Self {
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            h2: settings.h2,
            guard,
            slots: EndpointSlots::new(settings.max_connections_per_endpoint),
            metrics,
            direction,
            tls: None,
        }
    }

    /// Connections to endpoints with an identity use mTLS with these credentials.
    pub fn with_tls(mut self, creds: Credentials) -> Self {
        self.tls = Some(creds);
        self
    }

    /// The credentials of this client, when it speaks mTLS.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.tls.as_ref()
    }

    /// Opens a connection to `addr`: TCP, then mTLS carrying `protocol` when `tls` names the
    /// endpoint's identity and this client has credentials. The connect timeout covers both.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<TlsTo<'_>>,
        protocol: Protocol,
    ) -> Result<(Io, EndpointSlot), ProxyError> {
        let (stream, slot) = self.connect_tcp(addr).await?;
        let (Some(to), Some(creds)) = (tls, self.tls.as_ref()) else {
            return Ok((Io::Plain(stream), slot));
        };
        if !creds.is_ready() {
            self.tls_failed("no_certificate");
            return Err(ProxyError::Connect {
                addr,
                source: "this proxy has no certificate yet (see its log and /ready)".into(),
            });
        }
        let handshake = tls::connect(creds, stream, to.identity, to.port, protocol);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(io)) => {
                self.metrics
                    .peer_connection(self.direction, Some(to.identity), true);
                Ok((io, slot))
            }
            Ok(Err(e)) => {
                let reason = tls::failure_reason(&e);
                self.tls_failed(reason);
                Err(ProxyError::Connect {
                    addr,
                    source: format!("mTLS with {} failed: {e}", to.identity).into(),
                })
            }
            Err(_) => {
                self.tls_failed("timeout");
                Err(ProxyError::Connect {
                    addr,
                    source: format!(
                        "mTLS handshake with {} timed out after {:?}",
                        to.identity, self.connect_timeout
                    )
                    .into(),
                })
            }
        }
    }

    fn tls_failed(&self, reason: &'static str) {
        self.metrics
            .tls_failures
            .get_or_create(&TlsFailureLabels {
                direction: self.direction,
                reason,
            })
            .inc();
    }

    /// Opens a TCP connection to `addr`, unless it is one of the proxy's own listeners or the
    /// endpoint's connection limit is reached. The slot must live as long as the connection.
    async fn connect_tcp(&self, addr: SocketAddr) -> Result<(TcpStream, EndpointSlot), ProxyError> {
        if let Err(e) = self.guard.check(addr) {
            self.metrics.refused(self.direction, "loop");
            return Err(e);
        }
        let slot = match self.slots.take(addr) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.refused(self.direction, "endpoint_limit");
                return Err(e);
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::Connect {
                addr,
                source: format!("timed out after {:?}", self.connect_timeout).into(),
            })?
            .map_err(|e| ProxyError::Connect {
                addr,
                source: e.into(),
            })?;
        // Requests and responses are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        Ok((stream, slot))
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
        tls: Option<TlsTo<'_>>,
    ) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
        let (stream, slot) = self.connect(addr, tls, Protocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| handshake_failed(addr, e))?;
        drive(addr, conn, slot);
        Ok(sender)
    }

    /// Takes an idle connection that can send now; drops closed and expired ones.
    fn take_h1(&self, conns: &Conns) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = conns.h1.lock().ok()?;
        let now = Instant::now();
        let mut i = idle.len();
        let mut found = None;
        while i > 0 {
            i -= 1;
            let (s, since) = &idle[i];
            if s.is_closed() || now.saturating_duration_since(*since) > self.idle_timeout {
                idle.swap_remove(i);
            } else if found.is_none() && s.is_ready() {
                found = Some(idle.swap_remove(i).0);
            }
        }
        found
    }

    fn put_h1(&self, conns: &Conns, sender: http1::SendRequest<ProxyBody>) {
        if let Ok(mut idle) = conns.h1.lock() {
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push((sender, Instant::now()));
            }
        }
    }

    /// Sends an HTTP/1 request (origin-form URI, `Host` set) to `addr`.
    pub async fn send_h1(
        &self,
        conns: &Conns,
        addr: SocketAddr,
        tls: Option<TlsTo<'_>>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut req = req;
        if let Some(mut sender) = self.take_h1(conns) {
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    self.put_h1(conns, sender);
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the server closed the idle connection. Use a fresh one.
                    Some(r) => req = r,
                    None => {
                        return Err(ProxyError::Upstream {
                            addr,
                            source: e.into_error().into(),
                        }
                        .into())
                    }
                },
            }
        }
        let mut sender = match self.connect_h1(addr, tls).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError {
                    error,
                    request: Some(req),
                })
            }
        };
        match sender.send_request(req).await {
            Ok(rsp) => {
                self.put_h1(conns, sender);
                Ok(rsp)
            }
            Err(e) => Err(ProxyError::Upstream {
                addr,
                source: e.into(),
            }
            .into()),
        }
    }

    /// Sends an HTTP/2 request over the endpoint's shared connection, connecting first if
    /// there is none (or it closed).
    pub async fn send_h2(
        &self,
        conns: &Conns,
        addr: SocketAddr,
        peer: Peer,
        tls: Option<TlsTo<'_>>,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let existing = conns
            .h2
            .lock()
            .ok()
            .and_then(|g| g.as_ref().filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = match self.connect_h2(addr, peer, tls).await {
                    Ok(s) => s,
                    Err(error) => {
                        return Err(SendError {
                            error,
                            request: Some(req),
                        })
                    }
                };
                match conns.h2.lock() {
                    // Another request may have connected meanwhile: use one connection.
                    Ok(mut slot) => match slot.as_ref().filter(|c| !c.is_closed()) {
                        Some(live) => live.clone(),
                        None => {
                            *slot = Some(s.clone());
                            s
                        }
                    },
                    Err(_) => s,
                }
            }
        };
        sender.send_request(req).await.map_err(|e| {
            SendError::from(if e.is_canceled() {
                // The connection went away (GOAWAY, reset) before the request was sent:
                // as safe to retry as a failed connect.
                ProxyError::Connect {
                    addr,
                    source: e.into(),
                }
            } else {
                ProxyError::Upstream {
                    addr,
                    source: e.into(),
                }
            })
        })
    }

    async fn connect_h2(
        &self,
        addr: SocketAddr,
        peer: Peer,
        tls: Option<TlsTo<'_>>,
    ) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
        let (stream, slot) = self.connect(addr, tls, Protocol::Http2).await?;
        let (interval, while_idle) = self.h2.keepalive(peer);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(self.h2.keepalive_timeout)
            .keep_alive_while_idle(while_idle)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| handshake_failed(addr, e))?;
        drive(addr, conn, slot);
        Ok(sender)
    }
}

fn handshake_failed(addr: SocketAddr, e: hyper::Error) -> ProxyError {
    ProxyError::Connect {
        addr,
        source: e.into(),
    }
}

/// Runs a client connection's IO in its own task until it closes; its endpoint slot is
/// freed then.
fn drive<C>(addr: SocketAddr, conn: C, slot: EndpointSlot)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "connection to endpoint closed");
        }
    });
}
