//! The inbound side: requests arriving for the local app, from other proxies (HTTP/2) or
//! from clients outside the mesh. Redirected connections go to 127.0.0.1 on their original
//! port; explicit ones to the configured app address. HTTP/1 requests that another proxy
//! carried over HTTP/2 (`mesh-orig-proto`) are turned back into HTTP/1 for the app.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use mesh_core::Endpoint;

use crate::balance::EndpointHandle;
use crate::body::ProxyBody;
use crate::client::Client;
use crate::error::ProxyError;
use crate::forward::{self, ORIG_PROTO};
use crate::loops::HOPS;
use crate::metrics::{Direction, Metrics, Str};
use crate::outbound::record;

pub struct Inbound {
    client: Arc<Client>,
    metrics: Arc<Metrics>,
    forward_to: Option<SocketAddr>,
    targets: Mutex<HashMap<SocketAddr, (Arc<EndpointHandle>, Str)>>,
    route: Str,
    unknown: Str,
}

impl Inbound {
    pub fn new(client: Arc<Client>, metrics: Arc<Metrics>, forward_to: Option<SocketAddr>) -> Self {
        Self {
            client,
            metrics,
            forward_to,
            targets: Mutex::new(HashMap::new()),
            route: Str::from("inbound"),
            unknown: Str::from("unknown"),
        }
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
        req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let Some(target) = self.target(orig_dst) else {
            let rsp = ProxyError::BadRequest(
                "inbound traffic has no target: set MESH_PROXY_INBOUND_FORWARD",
            )
            .into_response();
            return record(
                &self.metrics,
                Direction::Inbound,
                self.unknown.clone(),
                self.route.clone(),
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
            return forward::upgrade(&self.client, target, req, protocol)
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
