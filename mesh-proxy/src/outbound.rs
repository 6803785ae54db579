//! The outbound side: requests from the local app to other services.
//!
//! For each request: find the destination (Host/:authority, else the original destination
//! address), wait for discovery's first answer, pick the route, pick a backend of the route's
//! traffic split, then send through the per-route stack
//! `timeout -> retry (budgeted) -> balance + forward`. Destinations discovery does not know
//! are passed through to their original address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::Endpoint;
use rand::Rng;
use tower::{Layer, ServiceExt};

use crate::balance::EndpointHandle;
use crate::body::{GrpcBody, ProxyBody, ReplayBody};
use crate::client::Client;
use crate::destination::{Destination, Destinations, Resolution};
use crate::discovery::inbound_policy::InboundPolicies;
use crate::error::ProxyError;
use crate::forward::{self, Forward};
use crate::loops::HopMarker;
use crate::metrics::{Class, Direction, Metrics, RequestLabels, RouteLabels, Str};
use crate::retry::{self, RetryLayer};
use crate::timeout::TimeoutLayer;

pub struct Outbound {
    pub dests: Arc<Destinations>,
    pub client: Arc<Client>,
    pub metrics: Arc<Metrics>,
    pub discovery_timeout: Duration,
    passthrough: Mutex<HashMap<SocketAddr, Arc<EndpointHandle>>>,
    hops: HopMarker,
    default_route: Str,
    passthrough_route: Str,
    unknown: Str,
    /// This proxy's identity, for metrics (`""` without one).
    own_id: Str,
    no_id: Str,
    /// Egress policy (from the workload's inbound policy stream).
    policies: Arc<InboundPolicies>,
}

/// What the router decided, for metrics.
struct Routed {
    authority: Str,
    route: Str,
    server_id: Option<Str>,
}

impl Outbound {
    pub fn new(
        dests: Arc<Destinations>,
        client: Arc<Client>,
        metrics: Arc<Metrics>,
        discovery_timeout: Duration,
        policies: Arc<InboundPolicies>,
    ) -> Self {
        let own_id = client
            .credentials()
            .map_or_else(|| Str::from(""), |c| Str::from(c.identity().as_str()));
        Self {
            own_id,
            no_id: Str::from(""),
            policies,
            dests,
            client,
            metrics,
            discovery_timeout,
            passthrough: Mutex::new(HashMap::new()),
            hops: HopMarker::random(),
            default_route: Str::from("default"),
            passthrough_route: Str::from("passthrough"),
            unknown: Str::from("unknown"),
        }
    }

    /// Serves one request from the app. Never fails: errors become proxy responses.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut routed = None;
        let rsp = match self.route(req, orig_dst, &mut routed).await {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(error = %e, "outbound request failed");
                e.into_response()
            }
        };
        let routed = routed.unwrap_or_else(|| Routed {
            authority: self.unknown.clone(),
            route: self.default_route.clone(),
            server_id: None,
        });
        record(
            &self.metrics,
            Direction::Outbound,
            routed.authority,
            routed.route,
            self.own_id.clone(),
            routed.server_id.unwrap_or_else(|| self.no_id.clone()),
            rsp,
            start,
        )
    }

    async fn route(
        &self,
        mut req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
        routed: &mut Option<Routed>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        forward::check_host(&req)?;
        if let Err(e) = self.hops.check_and_mark(req.headers_mut()) {
            self.metrics.refused(Direction::Outbound, "loop");
            return Err(e);
        }
        let default_port = orig_dst.map_or(80, |a| a.port());
        let host_dest =
            match forward::request_authority(&req) {
                Some(host) => Some(self.dests.for_host(host, default_port).map_err(|_| {
                    ProxyError::BadRequest("the Host header is not a valid authority")
                })?),
                None => None,
            };
        let mut dest = None;
        if let Some(d) = host_dest {
            if d.resolved(self.discovery_timeout).await? == Resolution::Found {
                dest = Some(d);
            }
        }
        if dest.is_none() {
            if let Some(orig) = orig_dst {
                let d = self.dests.for_addr(orig);
                if d.resolved(self.discovery_timeout).await? == Resolution::Found {
                    dest = Some(d);
                }
            }
        }
        let Some(dest) = dest else {
            return self.pass_through(req, orig_dst, routed).await;
        };

        let profile = dest.profile();
        let route_idx = profile
            .profile
            .route_index(req.method(), req.uri(), req.headers());
        let route = route_idx.map(|i| &profile.profile.routes[i]);
        let route_label = route_idx.map_or_else(
            || self.default_route.clone(),
            |i| profile.route_labels[i].clone(),
        );
        *routed = Some(Routed {
            authority: dest.label.clone(),
            route: route_label.clone(),
            server_id: Some(dest.server_id()),
        });
        // The route's header modifier, parsed when the profile arrived.
        if let Some(ops) = route_idx.and_then(|i| profile.request_headers.get(i)) {
            ops.apply(req.headers_mut());
        }

        // Traffic split: the route's weighted backends, else the destination itself.
        let backend = match route.and_then(|r| r.pick_backend(rand::rng().random())) {
            Some(b) if b.authority != dest.authority => {
                let d = self.dests.get(&b.authority);
                match d.resolved(self.discovery_timeout).await? {
                    Resolution::Found => d,
                    _ => return Err(ProxyError::NoEndpoints(b.authority.to_string())),
                }
            }
            _ => dest.clone(),
        };

        if let Some(protocol) = forward::upgrade_protocol(&req) {
            let ep = backend
                .balancer
                .pick()
                .ok_or_else(|| ProxyError::NoEndpoints(backend.authority.to_string()))?;
            return forward::upgrade(&self.client, ep.connect_addr, ep.tls(), req, protocol).await;
        }

        let policy_ref = match route_idx {
            Some(i) if profile.profile.routes[i].retry.is_some() => {
                retry::PolicyRef::Route(profile.clone(), i)
            }
            _ => retry::PolicyRef::Default,
        };
        let policy = policy_ref.get();
        let retryable = route.is_some_and(|r| r.retryable);
        let timeout = route.and_then(|r| r.timeout);

        let (mut parts, body) = req.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        let safe = policy.max_retries > 0 && retry::is_safe(&parts.method, retryable);
        let body = if body_is_empty(&body) {
            ProxyBody::empty()
        } else if safe
            && http_body::Body::size_hint(&body)
                .upper()
                .is_none_or(|n| n <= policy.max_body_bytes as u64)
        {
            ProxyBody::Replay(ReplayBody::new(body, policy.max_body_bytes as usize))
        } else {
            ProxyBody::Incoming(body)
        };
        let req = Request::from_parts(parts, body);

        let stack = TimeoutLayer(timeout).layer(
            RetryLayer {
                policy: policy_ref.clone(),
                safe,
                budget: dest.budget(),
                metrics: self.metrics.clone(),
                labels: RouteLabels {
                    direction: Direction::Outbound,
                    authority: dest.label.clone(),
                    route: route_label,
                },
            }
            .layer(Forward {
                dest: backend,
                client: self.client.clone(),
            }),
        );
        stack.oneshot(req).await
    }

    /// Forwards to the original destination, untouched by routing.
    async fn pass_through(
        &self,
        req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
        routed: &mut Option<Routed>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(orig) = orig_dst {
            let host = forward::request_authority(&req).map(crate::authz::host_of);
            if !self.allow_egress(host, orig) {
                return Err(ProxyError::Forbidden(
                    "egress policy denies this destination",
                ));
            }
        }
        let upgrade = forward::upgrade_protocol(&req);
        if let (Some(protocol), Some(orig)) = (upgrade.clone(), orig_dst) {
            *routed = Some(Routed {
                authority: self.dests.for_addr(orig).label.clone(),
                route: self.passthrough_route.clone(),
                server_id: None,
            });
            return forward::upgrade(&self.client, orig, None, req, protocol).await;
        }
        let (mut parts, body) = req.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, ProxyBody::Incoming(body));
        match orig_dst {
            Some(orig) => {
                let ep = self.passthrough_endpoint(orig);
                *routed = Some(Routed {
                    authority: self.dests.for_addr(orig).label.clone(),
                    route: self.passthrough_route.clone(),
                    server_id: None,
                });
                let rsp = forward::send(&self.client, &ep, req)
                    .await
                    .map_err(|e| e.error)?;
                Ok(rsp.map(ProxyBody::Incoming))
            }
            None => {
                // Explicit mode with a name discovery does not know: resolve it with DNS
                // and forward to the first address (HTTP/1 and HTTP/2 alike).
                let dest = self
                    .dests
                    .for_host(
                        forward::request_authority(&req).ok_or(ProxyError::NoDestination)?,
                        80,
                    )
                    .map_err(|_| {
                        ProxyError::BadRequest("the Host header is not a valid authority")
                    })?;
                *routed = Some(Routed {
                    authority: dest.label.clone(),
                    route: self.passthrough_route.clone(),
                    server_id: None,
                });
                let name = dest.authority.as_str();
                let host = Some(dest.authority.host());
                let addr = match dest.authority.socket_addr() {
                    Some(a) => a,
                    None => tokio::net::lookup_host(name)
                        .await
                        .ok()
                        .and_then(|mut addrs| addrs.next())
                        .ok_or_else(|| ProxyError::ConnectName {
                            target: name.to_string(),
                            source: "the name does not resolve (DNS)".into(),
                        })?,
                };
                if !self.allow_egress(host, addr) {
                    return Err(ProxyError::Forbidden(
                        "egress policy denies this destination",
                    ));
                }
                let ep = self.passthrough_endpoint(addr);
                let rsp = forward::send(&self.client, &ep, req)
                    .await
                    .map_err(|e| e.error)?;
                Ok(rsp.map(ProxyBody::Incoming))
            }
        }
    }

    /// Whether the workload's egress policy lets it reach `addr` (named `host`) outside the
    /// mesh. Denials and audit-mode would-be denials are counted and logged.
    pub fn allow_egress(&self, host: Option<&str>, addr: SocketAddr) -> bool {
        let policy = self.policies.workload();
        let Some(egress) = policy.egress.as_ref() else {
            return true;
        };
        let verdict = egress.check(host, addr.ip());
        crate::authz::report(
            &self.metrics,
            Direction::Outbound,
            &self.policies.egress_label(),
            None,
            &verdict,
            || format!("egress to {} ({addr})", host.unwrap_or("-")),
        )
    }

    fn passthrough_endpoint(&self, addr: SocketAddr) -> Arc<EndpointHandle> {
        let Ok(mut map) = self.passthrough.lock() else {
            return Arc::new(EndpointHandle::new(Endpoint::new(addr)));
        };
        if map.len() > 10_000 {
            map.clear();
        }
        map.entry(addr)
            .or_insert_with(|| Arc::new(EndpointHandle::new(Endpoint::new(addr))))
            .clone()
    }

    /// The destination an opaque TCP connection to `orig` goes to, when discovery knows it.
    pub async fn tcp_destination(&self, orig: SocketAddr) -> Option<Arc<Destination>> {
        let d = self.dests.for_addr(orig);
        match d.resolved(self.discovery_timeout).await {
            Ok(Resolution::Found) => Some(d),
            _ => None,
        }
    }
}

fn body_is_empty(b: &Incoming) -> bool {
    http_body::Body::is_end_stream(b) || http_body::Body::size_hint(b).exact() == Some(0)
}

/// Records the golden metrics of one request. A gRPC response whose status is not in its
/// headers is counted when its trailers arrive (its body is wrapped for that).
#[allow(clippy::too_many_arguments)]
pub fn record(
    metrics: &Arc<Metrics>,
    direction: Direction,
    authority: Str,
    route: Str,
    client_id: Str,
    server_id: Str,
    rsp: Response<ProxyBody>,
    start: Instant,
) -> Response<ProxyBody> {
    let status = rsp.status();
    let grpc_status = rsp.headers().get("grpc-status");
    let grpc_failed = grpc_status.is_some_and(|v| v.as_bytes() != b"0");
    let status_in_trailers = grpc_status.is_none()
        && rsp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let classification = if status.is_server_error() || grpc_failed {
        Class::Failure
    } else {
        Class::Success
    };
    let route_labels = RouteLabels {
        direction,
        authority,
        route,
    };
    metrics
        .latency
        .get_or_create(&route_labels)
        .observe(start.elapsed().as_secs_f64());
    let labels = RequestLabels {
        direction,
        authority: route_labels.authority,
        route: route_labels.route,
        status_code: status.as_u16(),
        classification,
        client_id,
        server_id,
    };
    if status_in_trailers {
        let (parts, body) = rsp.into_parts();
        let body = match body {
            ProxyBody::Incoming(inner) => {
                ProxyBody::Grpc(Box::new(GrpcBody::new(inner, metrics.clone(), labels)))
            }
            // Already waiting for the status, for the circuit breaker.
            ProxyBody::Grpc(mut g) => {
                g.count_in(metrics.clone(), labels);
                ProxyBody::Grpc(g)
            }
            other => {
                metrics.requests.get_or_create(&labels).inc();
                other
            }
        };
        return Response::from_parts(parts, body);
    }
    metrics.requests.get_or_create(&labels).inc();
    rsp
}
