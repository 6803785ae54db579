//! The inbound side: requests arriving for the local app, from other proxies (HTTP/2 over
//! mTLS) or from clients outside the mesh. Redirected connections go to 127.0.0.1 on their
//! original port; explicit ones to the configured app address (on the port a meshed client
//! names). HTTP/1 requests that another proxy carried over HTTP/2 (`mesh-orig-proto`) are
//! turned back into HTTP/1 for the app.
//!
//! Every request and opaque connection is checked against the port's authorization policy
//! (read per request, so policy changes apply at once). The app learns who called from the
//! `mesh-client-id` header: the client's SPIFFE ID when it came over mTLS, and never a
//! value that arrived from outside (the proxy removes it first).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use mesh_core::authz::Client as AuthzClient;
use mesh_core::{Endpoint, Identity};

use crate::balance::EndpointHandle;
use crate::body::ProxyBody;
use crate::client::Client;
use crate::discovery::inbound_policy::InboundPolicies;
use crate::error::ProxyError;
use crate::forward::{self, ORIG_PROTO};
use crate::loops::HOPS;
use crate::metrics::{Direction, Metrics, Str};
use crate::outbound::record;

/// The header that tells the app its caller's identity.
pub const CLIENT_ID: http::HeaderName = http::HeaderName::from_static("mesh-client-id");

/// What the inbound side knows about one accepted connection.
pub struct InboundConn {
    /// The app port the client meant.
    pub port: u16,
    /// Where its traffic goes (`None`: nowhere known; explicit mode without
    /// MESH_PROXY_INBOUND_FORWARD).
    pub target: Option<SocketAddr>,
    pub peer: IpAddr,
    /// The client's verified identity (mTLS with a certificate).
    pub client: Option<Identity>,
    client_label: Str,
    client_header: Option<http::HeaderValue>,
}

pub struct Inbound {
    client: Arc<Client>,
    metrics: Arc<Metrics>,
    forward_to: Option<SocketAddr>,
    targets: Mutex<HashMap<SocketAddr, (Arc<EndpointHandle>, Str)>>,
    route: Str,
    unknown: Str,
    policies: Arc<InboundPolicies>,
    own_id: Str,
    no_id: Str,
}

impl Inbound {
    pub fn new(
        client: Arc<Client>,
        metrics: Arc<Metrics>,
        forward_to: Option<SocketAddr>,
        policies: Arc<InboundPolicies>,
        own_id: Option<&Identity>,
    ) -> Self {
        Self {
            client,
            metrics,
            forward_to,
            targets: Mutex::new(HashMap::new()),
            route: Str::from("inbound"),
            unknown: Str::from("unknown"),
            policies,
            own_id: Str::from(own_id.map_or("", |i| i.as_str())),
            no_id: Str::from(""),
        }
    }

    /// Describes an accepted connection for `port` (the app port).
    pub fn conn(
        &self,
        port: u16,
        orig_dst: Option<SocketAddr>,
        peer: SocketAddr,
        client: Option<Identity>,
    ) -> InboundConn {
        let target = match orig_dst {
            Some(_) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            // Explicit mode: the app's address, on the port a meshed client named.
            None => self
                .forward_to
                .map(|f| SocketAddr::new(f.ip(), if port == 0 { f.port() } else { port })),
        };
        let client_label = client
            .as_ref()
            .map_or_else(|| self.no_id.clone(), |c| Str::from(c.as_str()));
        let client_header = client
            .as_ref()
            .and_then(|c| http::HeaderValue::from_str(c.as_str()).ok());
        InboundConn {
            port,
            target,
            peer: peer.ip(),
            client,
            client_label,
            client_header,
        }
    }

    /// Checks an opaque connection against the port's policy (counted and logged when
    /// denied).
    pub fn allow_connection(&self, conn: &InboundConn) -> bool {
        let policy = self.policies.port(conn.port);
        let who = AuthzClient {
            identity: conn.client.as_ref(),
            addr: conn.peer,
        };
        let verdict = policy.authorization.check_connection(&who);
        crate::authz::report(
            &self.metrics,
            Direction::Inbound,
            &Str::from(policy.server.as_str()),
            None,
            &verdict,
            || describe(conn, "TCP connection"),
        )
    }

    /// The client that connects to the app.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where a connection's traffic goes: the app's port on localhost.
    pub fn target(&self, orig_dst: Option<SocketAddr>) -> Option<SocketAddr> {
        match orig_dst {
            Some(o) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, o.port()))),
            None => self.forward_to,
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> (Arc<EndpointHandle>, Str) {
        let make = || {
            (
                Arc::new(EndpointHandle::new(Endpoint::new(addr))),
                Str::from(addr.to_string().as_str()),
            )
        };
        match self.targets.lock() {
            Ok(mut map) => map.entry(addr).or_insert_with(make).clone(),
            Err(_) => make(),
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<InboundConn>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let policy = self.policies.port(conn.port);
        let who = AuthzClient {
            identity: conn.client.as_ref(),
            addr: conn.peer,
        };
        let verdict = policy.authorization.check_request(&who, &req);
        if !matches!(verdict, mesh_core::authz::Verdict::Allow) {
            let server = Str::from(policy.server.as_str());
            let allowed = crate::authz::report(
                &self.metrics,
                Direction::Inbound,
                &server,
                None,
                &verdict,
                || describe(&conn, &format!("{} {}", req.method(), req.uri().path())),
            );
            if !allowed {
                let rsp = crate::authz::denied(
                    crate::authz::is_grpc(&req),
                    "forbidden: the authorization policy of this port denies the request",
                );
                return record(
                    &self.metrics,
                    Direction::Inbound,
                    self.unknown.clone(),
                    self.route.clone(),
                    conn.client_label.clone(),
                    self.own_id.clone(),
                    rsp,
                    start,
                );
            }
        }
        // Only this proxy says who called.
        let headers = req.headers_mut();
        headers.remove(CLIENT_ID);
        if let Some(v) = &conn.client_header {
            headers.insert(CLIENT_ID, v.clone());
        }
        let Some(target) = conn.target else {
            let rsp = ProxyError::BadRequest(
                "inbound traffic has no target: set MESH_PROXY_INBOUND_FORWARD",
            )
            .into_response();
            return record(
                &self.metrics,
                Direction::Inbound,
                self.unknown.clone(),
                self.route.clone(),
                conn.client_label.clone(),
                self.own_id.clone(),
                rsp,
                start,
            );
        };
        let (ep, label) = self.endpoint(target);
        let rsp = match forward::check_host(&req) {
            Ok(()) => self.forward(req, target, &ep).await,
            Err(e) => e.into_response(),
        };
        record(
            &self.metrics,
            Direction::Inbound,
            label,
            self.route.clone(),
            conn.client_label.clone(),
            self.own_id.clone(),
            rsp,
            start,
        )
    }

    /// Sends one request to the app: upgrades on their own connection, HTTP/1 carried over
    /// HTTP/2 turned back into HTTP/1, errors turned into proxy responses.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        target: SocketAddr,
        ep: &Arc<EndpointHandle>,
    ) -> Response<ProxyBody> {
        // The loop marker is between proxies; the app never sees it.
        req.headers_mut().remove(HOPS);
        if let Some(protocol) = forward::upgrade_protocol(&req) {
            return forward::upgrade(&self.client, target, None, req, protocol)
                .await
                .unwrap_or_else(ProxyError::into_response);
        }
        let (mut parts, body) = req.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        if parts.headers.remove(ORIG_PROTO).is_some() {
            // Back to HTTP/1 for the app; the authority travels in the Host header.
            parts.version = Version::HTTP_11;
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        let req = Request::from_parts(parts, ProxyBody::Incoming(body));
        let in_flight = ep.start();
        match forward::send(&self.client, ep, req).await {
            Ok(rsp) => {
                in_flight.complete();
                rsp.map(ProxyBody::Incoming)
            }
            Err(e) => {
                in_flight.fail();
                tracing::debug!(error = %e.error, "inbound request failed");
                e.error.into_response()
            }
        }
    }
}

fn describe(conn: &InboundConn, what: &str) -> String {
    format!(
        "{what} to port {} from {} ({})",
        conn.port,
        conn.client.as_ref().map_or("no identity", |c| c.as_str()),
        conn.peer
    )
}
