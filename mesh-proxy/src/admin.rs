//! The admin listener, modelled on Linkerd's :4191:
//! - `GET /live`: the process is up.
//! - `GET /ready`: 200 once discovery is up (503 before, and while shutting down).
//! - `GET /metrics`: Prometheus text.
//! - `GET /config`: the routing state (destinations, routes, endpoints with their load and
//!   circuit-breaker state) as JSON.
//! - `GET /log-level`, `PUT /log-level` (body: a tracing filter such as `debug` or
//!   `info,mesh_proxy=trace`): read or change the log filter at runtime.
//! - `GET /identity`: the certificate in use as JSON
//!   (`mesh_core::identity::ProxyIdentityStatus`); 404 while there is none (identity off,
//!   or not issued yet).
//! - `POST /shutdown`: graceful shutdown, for jobs that finish. Accepted from loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use mesh_identity::tls::Credentials;

use crate::destination::{Destinations, Resolution};
use crate::metrics::Metrics;

/// Reads (with `None`) or replaces the log filter; returns the filter now in force.
pub type LogControl = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub dests: Arc<Destinations>,
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub log: Option<LogControl>,
    /// The proxy's certificate, when identity is on.
    pub identity: Option<Credentials>,
    pub shutdown_tx: watch::Sender<bool>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    // The admin port keeps answering while the proxy drains (so /ready says 503) and stops
    // with the process.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if *self.shutdown_tx.borrow() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if (self.ready)() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: discovery is not up yet\n",
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let mut rsp = text(StatusCode::OK, self.metrics.encode());
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                rsp
            }
            (&Method::GET, "/config") => {
                let body = serde_json::to_vec_pretty(&self.config_dump()).unwrap_or_default();
                let mut rsp = text(StatusCode::OK, body);
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                rsp
            }
            (&Method::GET, "/identity") => match &self.identity {
                None => text(
                    StatusCode::NOT_FOUND,
                    "no identity: identity is off (MESH_PROXY_IDENTITY is not set)\n",
                ),
                Some(creds) => match crate::identity::status(creds) {
                    Ok(status) => {
                        let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
                        let mut rsp = text(StatusCode::OK, body);
                        rsp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        rsp
                    }
                    Err(why) => text(StatusCode::NOT_FOUND, format!("{why}\n")),
                },
            },
            (&Method::GET, "/log-level") => match &self.log {
                Some(log) => match log(None) {
                    Ok(f) => text(StatusCode::OK, format!("{f}\n")),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                },
                None => text(StatusCode::NOT_FOUND, "log level control is not enabled\n"),
            },
            (&Method::PUT, "/log-level") => {
                let Some(log) = &self.log else {
                    return text(StatusCode::NOT_FOUND, "log level control is not enabled\n");
                };
                let body = match Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "body must be a log filter of at most 4 KiB\n",
                        )
                    }
                };
                let filter = String::from_utf8_lossy(&body).trim().to_string();
                match log(Some(&filter)) {
                    Ok(f) => text(StatusCode::OK, format!("{f}\n")),
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        format!("'{filter}' is not a valid log filter: {e}; write e.g. debug or info,mesh_proxy=trace\n"),
                    ),
                }
            }
            (&Method::POST, "/shutdown") => {
                if !peer.ip().is_loopback() {
                    return text(
                        StatusCode::FORBIDDEN,
                        "shutdown is accepted from loopback only\n",
                    );
                }
                self.shutdown_tx.send_replace(true);
                text(StatusCode::OK, "shutting down\n")
            }
            (
                _,
                "/live" | "/ready" | "/metrics" | "/config" | "/identity" | "/log-level"
                | "/shutdown",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /config /identity /log-level /shutdown\n",
            ),
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for d in self.dests.all() {
            let resolution = match d.resolution() {
                Resolution::Pending => "pending",
                Resolution::NotFound => "not_found",
                Resolution::Found => "found",
            };
            let now = std::time::Instant::now();
            let endpoints: Vec<serde_json::Value> = d
                .balancer
                .snapshot()
                .iter()
                .map(|h| {
                    let ejected_for = h.ejected_for(now);
                    serde_json::json!({
                        "endpoint": h.endpoint,
                        "in_flight": h.in_flight(),
                        "latency_ewma_ms": (h.ewma_ms() * 1000.0).round() / 1000.0,
                        "consecutive_failures": h.consecutive_failures(),
                        "ejected": ejected_for.is_some(),
                        "ejected_for_ms": ejected_for.map(|t| t.as_millis() as u64),
                    })
                })
                .collect();
            out.insert(
                d.authority.to_string(),
                serde_json::json!({
                    "resolution": resolution,
                    "balancer": d.balancer.kind(),
                    "profile": d.profile().profile,
                    "endpoints": endpoints,
                }),
            );
        }
        serde_json::json!({ "destinations": out })
    }
}
