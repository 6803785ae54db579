//! The innermost step of a request: pick an endpoint with the destination's balancer and
//! send one attempt to it, adapting the request to how that endpoint is spoken to.
//!
//! To another mesh proxy the request goes over HTTP/2; an HTTP/1 request is carried there
//! with an `mesh-orig-proto` header, and the receiving proxy turns it back into HTTP/1 for
//! its app.
//!
//! With circuit breaking on, each attempt's outcome is reported to the balancer (see
//! [`health`]): a failure is no connection, no response, a 5xx, or a gRPC status that means
//! the server failed; a gRPC status in trailers is reported when the trailers arrive.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::balance::EndpointHandle;
use crate::body::{GrpcBody, ProxyBody};
use crate::client::{Client, Peer, SendError};
use crate::destination::Destination;
use crate::error::ProxyError;

/// Carries the protocol an upgraded request originally used (`HTTP/1.1`).
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("mesh-orig-proto");
const HTTP_11: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// Endpoints tried for a request whose connection attempts fail.
const CONNECT_ATTEMPTS: u32 = 3;

pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

/// Sends one attempt to one endpoint of `dest`.
#[derive(Clone)]
pub struct Forward {
    pub dest: Arc<Destination>,
    pub client: Arc<Client>,
}

impl tower::Service<Request<ProxyBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let dest = self.dest.clone();
        let client = self.client.clone();
        Box::pin(async move {
            let mut req = req;
            let mut attempt = 0;
            loop {
                let Some(ep) = dest.balancer.pick() else {
                    return Err(ProxyError::NoEndpoints(dest.authority.to_string()));
                };
                let in_flight = ep.start();
                match send(&client, &ep, req).await {
                    Ok(rsp) => {
                        in_flight.complete();
                        if !dest.balancer.is_breaking() {
                            return Ok(rsp.map(ProxyBody::Incoming));
                        }
                        return Ok(match health(&rsp) {
                            Health::Success => {
                                dest.balancer.record_success(&ep);
                                rsp.map(ProxyBody::Incoming)
                            }
                            Health::Failure => {
                                dest.balancer.record_failure(&ep, Instant::now());
                                rsp.map(ProxyBody::Incoming)
                            }
                            Health::InTrailers => {
                                let report = EndpointReport { dest, ep };
                                rsp.map(|b| {
                                    ProxyBody::Grpc(Box::new(GrpcBody::for_endpoint(b, report)))
                                })
                            }
                        });
                    }
                    Err(SendError { error, request }) => {
                        in_flight.fail();
                        if dest.balancer.is_breaking() {
                            dest.balancer.record_failure(&ep, Instant::now());
                        }
                        attempt += 1;
                        // A request that never left (no connection) goes to another endpoint:
                        // the failed one now looks slow to the balancer. Always safe, so no
                        // route policy is needed; bounded so an outage costs little.
                        match request {
                            Some(r) if attempt < CONNECT_ATTEMPTS => {
                                tracing::debug!(error = %error, "connect failed; trying another endpoint");
                                req = r;
                            }
                            _ => return Err(error),
                        }
                    }
                }
            }
        })
    }
}

/// What a response says about its endpoint's health.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    Success,
    Failure,
    /// A gRPC response whose status will come in its trailers.
    InTrailers,
}

/// Classifies a response for circuit breaking: any 5xx is a failure; so is a gRPC status
/// (in the headers) that [`grpc_server_fault`] names.
pub fn health<B>(rsp: &Response<B>) -> Health {
    if rsp.status().is_server_error() {
        return Health::Failure;
    }
    match rsp.headers().get("grpc-status") {
        Some(s) if grpc_server_fault(s.as_bytes()) => Health::Failure,
        Some(_) => Health::Success,
        None if rsp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")) =>
        {
            Health::InTrailers
        }
        None => Health::Success,
    }
}

/// gRPC statuses that count as the server failing: those Envoy maps to a 5xx HTTP status
/// for outlier detection (2 UNKNOWN, 4 DEADLINE_EXCEEDED, 12 UNIMPLEMENTED, 13 INTERNAL,
/// 14 UNAVAILABLE, 15 DATA_LOSS). Client-side statuses (NOT_FOUND, INVALID_ARGUMENT, ...)
/// say nothing about the endpoint.
pub fn grpc_server_fault(status: &[u8]) -> bool {
    matches!(status, b"2" | b"4" | b"12" | b"13" | b"14" | b"15")
}

/// Reports the status of a gRPC response that comes in trailers to its endpoint's circuit
/// breaker, when the trailers arrive.
pub struct EndpointReport {
    dest: Arc<Destination>,
    ep: Arc<EndpointHandle>,
}

impl EndpointReport {
    pub fn grpc_status(self, status: &[u8]) {
        if grpc_server_fault(status) {
            self.failure();
        } else {
            self.dest.balancer.record_success(&self.ep);
        }
    }

    /// The response stream broke before its status.
    pub fn failure(self) {
        self.dest.balancer.record_failure(&self.ep, Instant::now());
    }
}

/// The request's authority: from the URI (HTTP/2, absolute-form) or the Host header.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// Refuses, with 400, a request with more than one Host header, a Host header that names
/// another authority than the request target, or (HTTP/1.1) no Host at all (RFC 9112 §3.2,
/// RFC 9113 §8.3.1): the proxy routes by the authority, so an ambiguous one is never guessed.
pub fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "more than one Host header (RFC 9112 section 3.2); send exactly one",
        ));
    }
    match (req.uri().authority(), host) {
        (Some(target), Some(host)) if !same_authority(req.uri(), target, host.as_bytes()) => {
            Err(ProxyError::BadRequest(
                "the Host header names another authority than the request target; send one authority",
            ))
        }
        (None, None) if req.version() == Version::HTTP_11 => Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)",
        )),
        _ => Ok(()),
    }
}

/// `target` and `host` name the same authority: equal ignoring case, and a port that is the
/// scheme's default may be left out on either side.
fn same_authority(uri: &Uri, target: &Authority, host: &[u8]) -> bool {
    let default: &[u8] = if uri.scheme() == Some(&Scheme::HTTPS) {
        b":443"
    } else {
        b":80"
    };
    let t = target.as_str().as_bytes();
    let t = t.strip_suffix(default).unwrap_or(t);
    let h = host.strip_suffix(default).unwrap_or(host);
    t.eq_ignore_ascii_case(h)
}

/// Sends `req` to `ep`, over HTTP/2 when the endpoint is meshed or the request is HTTP/2,
/// else over the pooled HTTP/1 client.
pub async fn send(
    client: &Client,
    ep: &EndpointHandle,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendError> {
    let meshed = ep.is_meshed();
    if meshed || req.version() == Version::HTTP_2 {
        if req.version() != Version::HTTP_2 {
            req.headers_mut().insert(ORIG_PROTO, HTTP_11);
            *req.version_mut() = Version::HTTP_2;
        }
        // HTTP/2 carries the service's authority in :authority, taken from the URI.
        if req.uri().authority().is_none() {
            let authority = req
                .headers()
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| ep.uri_authority.clone());
            set_uri(&mut req, authority)?;
        }
        req.headers_mut().remove(HOST);
        let peer = if meshed { Peer::Proxy } else { Peer::App };
        client
            .send_h2(&ep.conns, ep.connect_addr, peer, ep.tls(), req)
            .await
    } else {
        if !req.headers().contains_key(HOST) {
            if let Some(a) = req.uri().authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(HOST, v);
                }
            }
        }
        to_origin_form(req.uri_mut());
        client
            .send_h1(&ep.conns, ep.connect_addr, ep.tls(), req)
            .await
    }
}

/// Makes the request URI absolute with the given authority, keeping path and query.
pub fn set_uri<B>(req: &mut Request<B>, authority: Authority) -> Result<(), ProxyError> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request URI"))?;
    Ok(())
}

/// HTTP/1 requests go out in origin form (`/path?query`), whatever form they arrived in.
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *uri = Uri::from(pq);
    }
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the
/// request, and HTTP/2 forbids them.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    if let Some(conn) = headers.remove(CONNECTION) {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',').map(str::trim) {
                if !name.eq_ignore_ascii_case("te") {
                    headers.remove(name);
                }
            }
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` with an
/// `Upgrade` header, e.g. WebSocket), if it does.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    use http::header::{CONNECTION, UPGRADE};
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req.headers().get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| req.headers().get(UPGRADE).cloned()).flatten()
}

/// Forwards an upgrade request (WebSocket and the like) over a dedicated HTTP/1.1
/// connection to `addr`. When the endpoint switches protocols (101), the two upgraded
/// connections are joined and bytes are copied both ways until either side closes.
pub async fn upgrade(
    client: &Client,
    addr: SocketAddr,
    tls: Option<crate::client::TlsTo<'_>>,
    mut req: Request<Incoming>,
    protocol: HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    use http::header::{CONNECTION, UPGRADE};
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, protocol);
    to_origin_form(&mut parts.uri);
    let req = Request::from_parts(parts, ProxyBody::Incoming(body));
    let (stream, slot) = client
        .connect(addr, tls, mesh_proto::v1::Protocol::Http1)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect {
                addr,
                source: e.into(),
            })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut rsp = sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            source: e.into(),
        })?;
    if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let server_upgrade = hyper::upgrade::on(&mut rsp);
        tokio::spawn(async move {
            let _slot = slot;
            match (client_upgrade.await, server_upgrade.await) {
                (Ok(c), Ok(s)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut s = hyper_util::rt::TokioIo::new(s);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        tracing::debug!(%addr, error = %e, "upgraded connection ended");
                    }
                }
                (c, s) => tracing::debug!(
                    %addr,
                    client_ok = c.is_ok(),
                    server_ok = s.is_ok(),
                    "protocol upgrade failed"
                ),
            }
        });
    }
    Ok(rsp.map(ProxyBody::Incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_must_be_single_and_agree_with_the_target() {
        let v11 = Version::HTTP_11;
        assert!(check_host(&req(v11, "/", &["web:8080"])).is_ok());
        assert!(check_host(&req(v11, "/", &["web:8080", "web:8080"])).is_err());
        assert!(check_host(&req(v11, "/", &["a", "b"])).is_err());
        assert!(check_host(&req(v11, "/", &[])).is_err());
        assert!(check_host(&req(Version::HTTP_10, "/", &[])).is_ok());
        assert!(check_host(&req(v11, "http://web:8080/x", &["web:8080"])).is_ok());
        assert!(check_host(&req(v11, "http://Web/x", &["web:80"])).is_ok());
        assert!(check_host(&req(v11, "http://web:80/x", &["WEB"])).is_ok());
        assert!(check_host(&req(v11, "http://web:8080/x", &[])).is_ok());
        assert!(check_host(&req(v11, "http://web:8080/x", &["other:8080"])).is_err());
        assert!(check_host(&req(Version::HTTP_2, "http://web:8080/x", &["evil"])).is_err());
        assert!(check_host(&req(Version::HTTP_2, "http://web:8080/x", &[])).is_ok());
    }

    fn rsp(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn health_classifies_5xx_and_server_side_grpc_statuses() {
        assert_eq!(health(&rsp(200, &[])), Health::Success);
        assert_eq!(health(&rsp(404, &[])), Health::Success);
        assert_eq!(health(&rsp(429, &[])), Health::Success);
        for s in [500, 502, 503, 504, 501, 599] {
            assert_eq!(health(&rsp(s, &[])), Health::Failure, "{s}");
        }
        let grpc = ("content-type", "application/grpc+proto");
        assert_eq!(health(&rsp(200, &[grpc])), Health::InTrailers);
        assert_eq!(health(&rsp(503, &[grpc])), Health::Failure);
        for code in ["2", "4", "12", "13", "14", "15"] {
            let r = rsp(200, &[grpc, ("grpc-status", code)]);
            assert_eq!(health(&r), Health::Failure, "grpc-status {code}");
        }
        for code in ["0", "1", "3", "5", "7", "8", "16", "garbage"] {
            let r = rsp(200, &[grpc, ("grpc-status", code)]);
            assert_eq!(health(&r), Health::Success, "grpc-status {code}");
        }
    }
}
