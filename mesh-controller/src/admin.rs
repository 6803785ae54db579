//! The controller's admin HTTP server: `/live`, `/ready`, `/metrics` and `/status`.
//!
//! `/status` is a JSON report for people and for `meshctl check`: readiness, index sizes,
//! local-mode files that were rejected (with the reason), the conditions of every route,
//! policy and workload, and the CA (`identity`: phase of a trust-anchor rotation, bundle,
//! issuer, and how many connected proxies hold the bundle and a leaf from the issuer), and
//! the admission webhook (`webhook`: its address and whether it has a serving certificate),
//! and, on Kubernetes, leader election (`leader`: state, Lease, holder, and why it fails).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::identity::IdentityState;
use crate::index::Index;
use crate::local::FileErrors;

#[derive(Clone)]
pub struct Admin {
    pub index: Arc<Index>,
    pub files: Option<FileErrors>,
    pub source: &'static str,
    pub identity: Arc<IdentityState>,
    /// The admission webhook, when it is on.
    pub webhook: Option<crate::webhook::WebhookStatus>,
    /// Kubernetes mode: this replica's place in leader election.
    pub leader: Option<tokio::sync::watch::Receiver<crate::kubernetes::LeaderStatus>>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        rsp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    rsp
}

impl Admin {
    fn status_json(&self) -> serde_json::Value {
        let (services, endpoints, watched) = self.index.sizes();
        let files: serde_json::Map<String, serde_json::Value> = self
            .files
            .as_ref()
            .map(|f| {
                f.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(p, e)| {
                        (
                            p.display().to_string(),
                            serde_json::Value::String(e.clone()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let report = self.index.status().borrow().clone();
        let objects: Vec<_> = report.values().collect();
        serde_json::json!({
            "source": self.source,
            "ready": self.index.is_ready(),
            "services": services,
            "endpoints": endpoints,
            "watchedDestinations": watched,
            "rejectedFiles": files,
            "objects": objects,
            "identity": self.identity.status_json(),
            "webhook": self.webhook.as_ref().map(|w| w.status_json()),
            "leader": self.leader.as_ref().map(|l| l.borrow().clone()),
        })
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
        }
        match req.uri().path() {
            "/live" => reply(StatusCode::OK, "text/plain", "live\n"),
            "/ready" if self.index.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
            "/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: the initial state has not been read yet\n",
            ),
            "/metrics" => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.index.metrics.encode(),
            ),
            "/status" => {
                let body = serde_json::to_vec_pretty(&self.status_json()).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /live, /ready, /metrics or /status\n",
            ),
        }
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let rsp = this.handle(&req);
                    async move { Ok::<_, Infallible>(rsp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    }
}
