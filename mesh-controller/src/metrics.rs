//! The controller's Prometheus metrics (prefix `mesh_controller_`), served on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Why a Certify request got no certificate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A trust-anchor rotation phase (`idle`, `distributing`, `reissuing`, `retiring`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// What the admission webhook did with a request: `injected`, `skipped`, `error` (a pod it
/// could not inject: admitted without the proxy, with a warning) or `rejected` (not an
/// AdmissionReview, too large).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// What connected proxies hold: `connected`, `holding_bundle`, `on_current_issuer`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxiesLabel {
    pub state: &'static str,
}

/// Where this replica stands in leader election: `starting`, `leading`, `following`, `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    /// Open proxy streams per API (destination, inbound).
    pub streams_open: Family<ApiLabel, Gauge>,
    /// Messages sent to proxies per API.
    pub updates_sent: Family<ApiLabel, Counter>,
    /// Objects in the index per kind.
    pub objects: Family<KindLabel, Gauge>,
    /// Endpoints across all Services and ports.
    pub endpoints: Gauge,
    /// Changes received from the platform per kind.
    pub changes: Family<KindLabel, Counter>,
    /// Watch (re)starts and errors per kind (Kubernetes) or reload failures (local).
    pub watch_errors: Family<KindLabel, Counter>,
    /// Time from a change reaching the index to the new state being published to streams.
    pub index_lag: Histogram,
    /// Seconds since the Unix epoch when the last change was applied.
    pub last_change: Gauge,
    /// Config files rejected (local mode).
    pub invalid_files: Gauge,
    /// Leaf certificates signed.
    pub certificates_issued: Counter,
    /// Certify requests refused, per reason.
    pub certify_refused: Family<ReasonLabel, Counter>,
    /// 1 for the current trust-anchor rotation phase, 0 for the others.
    pub rotation_phase: Family<PhaseLabel, Gauge>,
    /// Proxies on Identity.Watch streams, and how many hold the bundle / a leaf from the
    /// current issuer.
    pub identity_proxies: Family<ProxiesLabel, Gauge>,
    /// Admission webhook requests per outcome.
    pub webhook_requests: Family<OutcomeLabel, Counter>,
    /// Time to answer an admission request.
    pub webhook_duration: Histogram,
    /// 1 for this replica's leader-election state, 0 for the others (Kubernetes mode).
    pub leader_state: Family<StateLabel, Gauge>,
    /// Failed leader-election rounds per reason (`NamespaceMissing`, `Forbidden`,
    /// `Unreachable`, `ApiError`).
    pub leader_election_errors: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_controller");
        let m = Self {
            streams_open: Family::default(),
            updates_sent: Family::default(),
            objects: Family::default(),
            endpoints: Gauge::default(),
            changes: Family::default(),
            watch_errors: Family::default(),
            index_lag: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            last_change: Gauge::default(),
            invalid_files: Gauge::default(),
            certificates_issued: Counter::default(),
            certify_refused: Family::default(),
            rotation_phase: Family::default(),
            identity_proxies: Family::default(),
            webhook_requests: Family::default(),
            webhook_duration: Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            leader_state: Family::default(),
            leader_election_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register("streams_open", "Open proxy streams", m.streams_open.clone());
        registry.register(
            "updates_sent",
            "Messages sent to proxies",
            m.updates_sent.clone(),
        );
        registry.register("index_objects", "Objects in the index", m.objects.clone());
        registry.register(
            "index_endpoints",
            "Endpoints across all Services",
            m.endpoints.clone(),
        );
        registry.register(
            "changes",
            "Changes received from the platform",
            m.changes.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors (Kubernetes) or rejected reloads (local mode)",
            m.watch_errors.clone(),
        );
        registry.register(
            "index_lag_seconds",
            "Time from a change reaching the index to its publication to proxy streams",
            m.index_lag.clone(),
        );
        registry.register(
            "last_change_timestamp_seconds",
            "When the index last applied a change",
            m.last_change.clone(),
        );
        registry.register(
            "invalid_files",
            "Local-mode files currently rejected",
            m.invalid_files.clone(),
        );
        registry.register(
            "certificates_issued",
            "Workload leaf certificates signed by Identity.Certify",
            m.certificates_issued.clone(),
        );
        registry.register(
            "certify_refused",
            "Identity.Certify requests refused, by reason",
            m.certify_refused.clone(),
        );
        registry.register(
            "identity_rotation_phase",
            "Trust-anchor rotation phase (1 for the current phase)",
            m.rotation_phase.clone(),
        );
        registry.register(
            "identity_proxies",
            "Proxies on Identity.Watch streams, and how many hold the current bundle and a leaf from the current issuer",
            m.identity_proxies.clone(),
        );
        registry.register(
            "webhook_requests",
            "Admission webhook requests by outcome (injected, skipped, error, rejected)",
            m.webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time to answer an admission webhook request",
            m.webhook_duration.clone(),
        );
        registry.register(
            "leader",
            "Leader election state of this replica (1 for the current state: starting, leading, following, error)",
            m.leader_state.clone(),
        );
        registry.register(
            "leader_election_errors",
            "Failed leader-election rounds by reason (NamespaceMissing, Forbidden, Unreachable, ApiError)",
            m.leader_election_errors.clone(),
        );
        Self { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
