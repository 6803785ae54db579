//! The pod `proxy` subresource: `GET /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path}`
//! (also `{name}`, `http:{name}:{port}`) forwards the request over plain HTTP/1.1 to the
//! address a test registered for that pod and port with
//! [`crate::FakeApiServer::route_pod_port`], and answers with what that address answered
//! (status, `Content-Type` and body). The Pod must exist (404 otherwise); a pod port without
//! a route, or an address that does not answer, gets 503 `ServiceUnavailable`, as from a real
//! API server that cannot reach the pod.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::error::ApiError;
use crate::server::Body;

/// How long a forwarded request may take, connect included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body forwarded.
const MAX_BODY: usize = 16 << 20;

/// Where `(namespace, pod, port)` is served.
#[derive(Debug, Default)]
pub(crate) struct PodRoutes {
    routes: HashMap<(String, String, u16), SocketAddr>,
}

impl PodRoutes {
    pub(crate) fn insert(&mut self, namespace: &str, pod: &str, port: u16, addr: SocketAddr) {
        self.routes
            .insert((namespace.to_string(), pod.to_string(), port), addr);
    }

    pub(crate) fn remove(&mut self, namespace: &str, pod: &str, port: u16) {
        self.routes
            .remove(&(namespace.to_string(), pod.to_string(), port));
    }

    pub(crate) fn get(&self, namespace: &str, pod: &str, port: u16) -> Option<SocketAddr> {
        self.routes
            .get(&(namespace.to_string(), pod.to_string(), port))
            .copied()
    }
}

/// The pod name and port of a proxy target: `name`, `name:port` or `http:name:port`
/// (port 80 when not given, as the API server does).
pub(crate) fn parse_target(target: &str) -> Result<(String, u16), ApiError> {
    let parts: Vec<&str> = target.split(':').collect();
    let (name, port) = match parts.as_slice() {
        [name] => (*name, None),
        [name, port] => (*name, Some(*port)),
        ["http" | "", name, port] => (*name, Some(*port)),
        ["https", ..] => {
            return Err(ApiError::bad_request(
                "fake-kube: the pod proxy speaks plain HTTP only (no https: targets)",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid pod proxy target {target:?}: give NAME, NAME:PORT or http:NAME:PORT"
            )))
        }
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse::<u16>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid pod proxy target {target:?}: the port must be a number (named ports are not supported)"
            ))
        })?,
    };
    Ok((name.to_string(), port))
}

fn unavailable(message: String) -> ApiError {
    ApiError {
        code: 503,
        reason: "ServiceUnavailable",
        message,
        details: None,
    }
}

/// Forwards `GET {path_and_query}` to `addr` (or answers 503 when there is no route).
pub(crate) async fn forward(
    method: &Method,
    addr: Option<SocketAddr>,
    pod: &str,
    port: u16,
    path_and_query: &str,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let Some(addr) = addr else {
        return Err(unavailable(format!(
            "error trying to reach service: pod {pod} port {port} has no route (register one \
             with FakeApiServer::route_pod_port)"
        )));
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, get(addr, path_and_query)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(unavailable(format!(
            "error trying to reach service: {addr}: {e}"
        ))),
        Err(_) => Err(unavailable(format!(
            "error trying to reach service: {addr}: no answer within {FORWARD_TIMEOUT:?}"
        ))),
    }
}

async fn get(addr: SocketAddr, path_and_query: &str) -> Result<Response<Body>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("fake-kube: pod proxy connection ended: {e}");
        }
    });
    let req = Request::get(path_and_query)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    let mut out = Response::new(Full::new(body).boxed());
    *out.status_mut() = if status.is_informational() {
        StatusCode::BAD_GATEWAY
    } else {
        status
    };
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("web-1:4191").unwrap(), ("web-1".into(), 4191));
        assert_eq!(parse_target("web-1").unwrap(), ("web-1".into(), 80));
        assert_eq!(
            parse_target("http:web-1:4191").unwrap(),
            ("web-1".into(), 4191)
        );
        assert_eq!(parse_target("web-1:admin").unwrap_err().code, 400);
        assert_eq!(parse_target("https:web-1:443").unwrap_err().code, 400);
    }

    #[test]
    fn routes() {
        let mut routes = PodRoutes::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        routes.insert("shop", "web-1", 4191, addr);
        assert_eq!(routes.get("shop", "web-1", 4191), Some(addr));
        assert_eq!(routes.get("shop", "web-1", 80), None);
        routes.remove("shop", "web-1", 4191);
        assert_eq!(routes.get("shop", "web-1", 4191), None);
    }
}
