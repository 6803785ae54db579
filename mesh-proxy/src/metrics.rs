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
        Self {
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
