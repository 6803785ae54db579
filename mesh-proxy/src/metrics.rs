//! The proxy's golden metrics, exported in Prometheus text format on the admin port.
//!
//! Label values that repeat on every request (authority, route) are `Arc<str>` handed out by
//! the routing state, so recording a request clones reference counts instead of strings.

use std::fmt::Write;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A shared, immutable label value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Str(pub Arc<str>);

impl EncodeLabelValue for Str {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(Arc::from(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// Outcome class of a response: failure for 5xx, a non-zero gRPC status, or no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Success,
    Failure,
}

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Class::Success => "success",
            Class::Failure => "failure",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: Str,
    pub route: Str,
    pub status_code: u16,
    pub classification: Class,
    /// The calling workload's identity (`""`: plaintext or no identity).
    pub client_id: Str,
    /// The called workload's identity (`""`: not meshed or unknown).
    pub server_id: Str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub authority: Str,
    pub route: Str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthorityLabels {
    pub authority: Str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    /// `listener_limit`, `pending_limit`, `header_read_timeout`, `endpoint_limit` or `loop`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub direction: Direction,
    /// Outbound: `identity_mismatch`, `invalid_certificate`, `timeout`, `handshake`, `no_certificate`.
    /// Inbound: `plaintext_refused`, `no_client_certificate`, `no_identity` (a strict port on
    /// a proxy without an identity), `handshake`, `timeout`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    pub direction: Direction,
    /// The server (port policy) or, outbound, the egress policy.
    pub server: Str,
    /// The rule (`<ns>/<policy>/<rule>`) or `default:<policy>` that decided.
    pub policy: Str,
    /// The route of the request (`""` for TCP connections): `METHOD path`... kept to the
    /// path's first segment for bounded cardinality.
    pub route: Str,
    /// `unauthenticated`, `unauthorized`, `default_deny` or `egress`.
    pub reason: &'static str,
    /// `deny` (enforced) or `would-deny` (audit).
    pub action: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<RouteLabels, Counter>,
    pub budget_exhausted: Family<RouteLabels, Counter>,
    pub open_connections: Family<ConnLabels, Gauge>,
    pub connections: Family<ConnLabels, Counter>,
    pub tcp_read_bytes: Family<ConnLabels, Counter>,
    pub tcp_write_bytes: Family<ConnLabels, Counter>,
    pub discovery_updates: Counter,
    pub discovery_errors: Counter,
    pub endpoint_ejections: Family<AuthorityLabels, Counter>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub identity_renewals: Family<ResultLabels, Counter>,
    pub identity_expiry: Gauge,
    pub identity_bundle_updates: Counter,
    pub tls_failures: Family<TlsFailureLabels, Counter>,
    pub tls_connections: Family<TlsConnLabels, Counter>,
    pub authz_denials: Family<AuthzLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsConnLabels {
    pub direction: Direction,
    /// Outbound: the server's identity; inbound: the client's (`""`: plaintext client).
    pub peer_id: Str,
    /// `true` for mTLS.
    pub tls: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by direction, authority, route, status code and classification",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "response_latency_seconds",
            "Time from request to response headers, including retries",
            latency.clone(),
        );
        let retries = Family::<RouteLabels, Counter>::default();
        registry.register("retries", "Retried requests", retries.clone());
        let budget_exhausted = Family::<RouteLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was exhausted",
            budget_exhausted.clone(),
        );
        let open_connections = Family::<ConnLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Currently open client connections by direction and detected protocol",
            open_connections.clone(),
        );
        let connections = Family::<ConnLabels, Counter>::default();
        registry.register(
            "connections",
            "Accepted client connections by direction and detected protocol",
            connections.clone(),
        );
        let tcp_read_bytes = Family::<ConnLabels, Counter>::default();
        registry.register(
            "tcp_read_bytes",
            "Bytes read from clients on opaque TCP connections",
            tcp_read_bytes.clone(),
        );
        let tcp_write_bytes = Family::<ConnLabels, Counter>::default();
        registry.register(
            "tcp_write_bytes",
            "Bytes written to clients on opaque TCP connections",
            tcp_write_bytes.clone(),
        );
        let discovery_updates = Counter::default();
        registry.register(
            "discovery_updates",
            "Discovery updates applied",
            discovery_updates.clone(),
        );
        let discovery_errors = Counter::default();
        registry.register(
            "discovery_errors",
            "Discovery streams that failed or were rejected",
            discovery_errors.clone(),
        );
        let endpoint_ejections = Family::<AuthorityLabels, Counter>::default();
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected from load balancing by the circuit breaker",
            endpoint_ejections.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections and requests refused by a limit or as a loop, by direction and reason",
            connections_refused.clone(),
        );
        let identity_renewals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "identity_certificate_requests",
            "Certificate requests to the controller (first certificate and renewals), by result",
            identity_renewals.clone(),
        );
        let identity_expiry = Gauge::default();
        registry.register(
            "identity_certificate_expiry_timestamp_seconds",
            "Expiry of the proxy's current certificate, seconds since the Unix epoch (0: none yet)",
            identity_expiry.clone(),
        );
        let identity_bundle_updates = Counter::default();
        registry.register(
            "identity_trust_bundle_updates",
            "Trust bundles received from the controller and applied",
            identity_bundle_updates.clone(),
        );
        let tls_failures = Family::<TlsFailureLabels, Counter>::default();
        registry.register(
            "tls_failures",
            "mTLS connections that failed or were refused, by direction and reason",
            tls_failures.clone(),
        );
        let tls_connections = Family::<TlsConnLabels, Counter>::default();
        registry.register(
            "peer_connections",
            "Connections to (outbound) or from (inbound) other proxies and apps, by peer identity and whether they were mTLS",
            tls_connections.clone(),
        );
        let authz_denials = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authorization_denials",
            "Requests and connections denied (action=deny) or that audit mode would deny (action=would-deny)",
            authz_denials.clone(),
        );
        Self {
            identity_renewals,
            identity_expiry,
            identity_bundle_updates,
            tls_failures,
            tls_connections,
            authz_denials,
            registry,
            requests,
            latency,
            retries,
            budget_exhausted,
            open_connections,
            connections,
            tcp_read_bytes,
            tcp_write_bytes,
            discovery_updates,
            discovery_errors,
            endpoint_ejections,
            connections_refused,
        }
    }

    /// Counts one refusal.
    pub fn refused(&self, direction: Direction, reason: &'static str) {
        self.connections_refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }

    /// Counts one failed or refused mTLS connection.
    pub fn tls_failed(&self, direction: Direction, reason: &'static str) {
        self.tls_failures
            .get_or_create(&TlsFailureLabels { direction, reason })
            .inc();
    }

    /// Counts one connection with a peer, by its identity (`None`: no certificate).
    pub fn peer_connection(
        &self,
        direction: Direction,
        peer: Option<&mesh_core::Identity>,
        tls: bool,
    ) {
        let peer_id = match peer {
            Some(id) => Str::from(id.as_str()),
            None => Str::from(""),
        };
        self.tls_connections
            .get_or_create(&TlsConnLabels {
                direction,
                peer_id,
                tls: if tls { "true" } else { "false" },
            })
            .inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}
