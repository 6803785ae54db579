//! Connections from the proxy to endpoints.
//!
//! HTTP/1 uses hyper-util's pooled client (keep-alive reuse, idle expiry), keyed by endpoint
//! address. HTTP/2 (to another mesh proxy, or when the app spoke HTTP/2) uses one multiplexed
//! connection per endpoint, held in that endpoint's [`H2Slot`]: hyper's pooled client would
//! rewrite `:authority` to the endpoint's address, and we must keep the service's authority.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::ProxyBody;
use crate::error::ProxyError;

pub struct Client {
    h1: hyper_util::client::legacy::Client<HttpConnector, ProxyBody>,
    connect_timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let h1 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .set_host(false)
            .build(connector);
        Self {
            h1,
            connect_timeout,
        }
    }

    /// Sends an HTTP/1 request. The URI must be absolute and name the endpoint to connect to;
    /// the Host header (the service's authority) is sent unchanged.
    pub async fn send_h1(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.h1.request(req).await.map_err(|e| {
            if e.is_connect() {
                ProxyError::Connect {
                    addr,
                    source: e.into(),
                }
            } else {
                ProxyError::Upstream {
                    addr,
                    source: e.into(),
                }
            }
        })
    }

    /// Sends an HTTP/1 request to a host name (pass-through in explicit mode).
    pub async fn send_h1_named(
        &self,
        target: &str,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.h1
            .request(req)
            .await
            .map_err(|e| ProxyError::ConnectName {
                target: target.to_string(),
                source: e.into(),
            })
    }

    /// Sends an HTTP/2 request over the endpoint's shared connection, connecting first if
    /// there is none (or it closed).
    pub async fn send_h2(
        &self,
        slot: &H2Slot,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match slot.get() {
            Some(s) => s,
            None => {
                let s = self.connect_h2(addr).await?;
                slot.put(s)
            }
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::Upstream {
                addr,
                source: e.into(),
            })
    }

    async fn connect_h2(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ProxyError::Connect {
                addr,
                source: format!("timed out after {:?}", self.connect_timeout).into(),
            })?
            .map_err(|e| ProxyError::Connect {
                addr,
                source: e.into(),
            })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect {
                addr,
                source: e.into(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection closed");
            }
        });
        Ok(sender)
    }
}

/// The HTTP/2 connection of one endpoint, shared by every request to it.
#[derive(Default)]
pub struct H2Slot(Mutex<Option<http2::SendRequest<ProxyBody>>>);

impl H2Slot {
    fn get(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let guard = self.0.lock().ok()?;
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Stores a new connection unless another task stored a live one meanwhile; returns the
    /// one to use.
    fn put(&self, s: http2::SendRequest<ProxyBody>) -> http2::SendRequest<ProxyBody> {
        match self.0.lock() {
            Ok(mut guard) => match guard.as_ref().filter(|c| !c.is_closed()) {
                Some(existing) => existing.clone(),
                None => {
                    *guard = Some(s.clone());
                    s
                }
            },
            Err(_) => s,
        }
    }
}
