//! The mesh's own Kubernetes resource kinds, for what Gateway API does not cover.
//!
//! All kinds are in the API group `mesh.dev`, version `v1alpha1`, and namespaced:
//!
//! - [`Workload`]: one instance of an application outside Kubernetes' Pod model (a VM, a bare
//!   host, a process in local mode), selected by Services through its labels, like a Pod.
//! - [`Server`]: a port of the workloads that a label selector picks, with the protocol the
//!   proxy should expect there (so that detection can be skipped, or opaque TCP forced).
//! - [`AuthorizationPolicy`]: which clients may call which routes of a Server (or of every
//!   port of a namespace), enforced or in audit mode.
//! - [`EgressPolicy`]: what workloads may reach outside the mesh, by host name or CIDR.
//! - [`BackendPolicy`]: resilience for traffic *to* a Service (or to one route): load-balancer
//!   choice, retries, the retry budget, circuit breaking and a default request timeout.
//!
//! The same YAML objects work in local mode (files in a directory) and on a cluster. The CRD
//! manifests are generated from these types ([`crds`], [`crds_yaml`]) with OpenAPI schemas that
//! carry the validation a person can be told about at `kubectl apply` time (ranges, duration
//! patterns, enums). Deeper checks (an address must be an IP, durations must parse) are done by
//! the controller, which reports them as status conditions.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the mesh's own kinds.
pub const GROUP: &str = "mesh.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of the mesh's own kinds.
pub const API_VERSION: &str = "mesh.dev/v1alpha1";

/// Gateway API duration text, e.g. `250ms`, `2s`, `1m30s` (the pattern Gateway API uses).
const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// An application instance outside Kubernetes' Pod model: a VM, a bare host, or a process on
/// a laptop in local mode. A Service whose selector matches its labels gets it as an endpoint.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "Workload",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mwl",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.serviceAccount"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// IP address (v4 or v6) the workload is reached at.
    #[schemars(length(min = 2, max = 45))]
    pub address: String,
    /// Named ports, so that a Service's `targetPort` can name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadPort>,
    /// The identity the workload runs as (its SPIFFE ID is derived from the namespace and
    /// this name, as for a Pod's service account). Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Zone (failure domain), for zone-aware routing and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Whether the workload takes traffic; `false` keeps it out of every Service. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Present when the workload runs a mesh proxy: peers then send it HTTP/2 (over mTLS when the proxy has an identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<WorkloadProxy>,
}

/// A named port of a [`Workload`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct WorkloadPort {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// The mesh proxy in front of a [`Workload`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProxy {
    /// Where peers connect to reach the proxy, when the workload's traffic is *not*
    /// intercepted (no `mesh-proxy init`, e.g. several workloads sharing one host's network):
    /// peers then connect to this port directly and the proxy forwards to its
    /// `MESH_PROXY_INBOUND_FORWARD` address. Leave it out when `mesh-proxy init` intercepts the
    /// workload's traffic (as in a Pod): peers then connect to the app's own port and iptables
    /// hands the connection to the proxy, which thereby knows which app port it was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub inbound_port: Option<u16>,
}

/// A port on the workloads a label selector picks, and the protocol spoken there.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "Server",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "msrv",
    printcolumn = r#"{"name":"Port","type":"string","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Labels the Pods or Workloads must carry (all of them). Empty selects every workload in
    /// the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Port number, or the name of a container (or Workload) port.
    pub port: IntOrString,
    /// What the proxy should expect on this port. Default `Detect`.
    #[serde(default)]
    pub protocol: ServerProtocol,
    /// mTLS mode of the port: `permissive` (mTLS and plaintext), `strict` (mTLS only) or
    /// `disabled` (no TLS termination). Default: the workload's, namespace's or mesh's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<InboundTlsMode>,
}

/// mTLS mode of an inbound port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InboundTlsMode {
    /// mTLS from meshed clients and plaintext from the rest.
    Permissive,
    /// mTLS only: plaintext connections are refused.
    Strict,
    /// No TLS termination: mTLS connections reach the app as opaque bytes.
    Disabled,
}

/// Whether a policy is enforced or only reports what it would deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Traffic the policy does not allow is denied.
    #[default]
    Enforce,
    /// Nothing changes for traffic; what enforcement would deny is counted and logged as
    /// `would-deny`.
    Audit,
}

impl PolicyMode {
    fn is_enforce(&self) -> bool {
        *self == PolicyMode::Enforce
    }
}

/// Which clients may call which routes of a Server (or of every port of a namespace).
///
/// When at least one enforced policy targets a port, only the rules of the policies that
/// target it allow anything there: the port's default policy no longer applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mauthz",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// What the policy protects: a `Server` (its port on the workloads it selects) or the
    /// policy's own `Namespace` (every port of every workload in it).
    pub target_ref: PolicyTargetRef,
    /// `enforce` (default) or `audit`.
    #[serde(default, skip_serializing_if = "PolicyMode::is_enforce")]
    pub mode: PolicyMode,
    /// Each rule allows its clients to call its routes (all routes when it lists none).
    #[serde(default)]
    pub rules: Vec<AuthorizationRuleSpec>,
}

/// The target of an [`AuthorizationPolicy`], in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct PolicyTargetRef {
    /// `mesh.dev` for a Server, empty (or `core`) for a Namespace. Optional.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `Server` or `Namespace`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One rule: these clients may call these routes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRuleSpec {
    /// Name in metrics and logs (`<namespace>/<policy>/<name>`). Default: `rule-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Who: a client matching any entry is admitted.
    pub clients: ClientsSpec,
    /// What: any of these routes; empty allows every request on the port, and opaque TCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<AuthorizationRouteSpec>,
}

/// Clients of a rule. A client matching any listed entry is admitted (the fields add up).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientsSpec {
    /// SPIFFE IDs, exact (`spiffe://cluster.local/ns/shop/sa/web`) or a prefix ending in `*`
    /// (`spiffe://cluster.local/ns/shop/*`); `*` alone is every authenticated client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Service accounts (a shorthand for their SPIFFE IDs in the mesh's trust domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Every workload identity of these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Any client with a valid mesh certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authenticated: bool,
    /// Any client at all, with or without a certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// Clients whose source address is in one of these CIDRs (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

/// A service account, by name and namespace (default: the policy's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A route of a rule: every condition given must hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRouteSpec {
    /// The request path: exactly one of `exact`, `prefix` (element-wise: `/api` matches
    /// `/api/v1`, not `/apis`) or `regex` (the whole path must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// Upper-case HTTP method (`GET`). For gRPC every call is `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers that must be present with a matching value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

/// A path match: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct PathMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header match: the name and exactly one of `exact` or `regex`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct HeaderMatchSpec {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What the selected workloads may reach outside the mesh (destinations discovery does not
/// know, which the proxy otherwise passes through).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "EgressPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "megress",
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.defaultAction"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// Labels the Pods or Workloads must carry (all of them). Empty selects every workload of
    /// the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_selector: BTreeMap<String, String>,
    /// What happens to destinations that match neither `allow` nor `deny`. Default `Allow`.
    #[serde(default)]
    pub default_action: EgressAction,
    /// Destinations allowed (checked after `deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<EgressDestination>,
    /// Destinations denied (checked first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<EgressDestination>,
    /// `enforce` (default) or `audit`.
    #[serde(default, skip_serializing_if = "PolicyMode::is_enforce")]
    pub mode: PolicyMode,
}

/// Default action of an [`EgressPolicy`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum EgressAction {
    #[default]
    Allow,
    Deny,
}

/// A destination outside the mesh: exactly one of `host` or `network`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct EgressDestination {
    /// A host name (`api.example.com`) or a suffix (`*.example.com`), matched against the
    /// `Host` (or `:authority`) of HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A CIDR of destination addresses (`203.0.113.0/24`); the only match for opaque TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// Protocol of a [`Server`] port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServerProtocol {
    /// Sniff the first bytes (HTTP/1, HTTP/2, else opaque TCP after a short wait).
    #[default]
    Detect,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    /// Opaque TCP: no detection, no HTTP features (for server-speaks-first protocols).
    Opaque,
}

/// Resilience for traffic to a Service, or to the rules of one route.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "BackendPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mbp",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// What the policy applies to: a `Service` (every request to it), or an `HTTPRoute` or
    /// `GRPCRoute` (requests matched by that route; only `retry` and `timeout` apply there).
    pub target_ref: TargetRef,
    /// Load-balancing algorithm. Default `PeakEWMA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Retry failed requests. Only safe requests are retried (idempotent methods, unless
    /// `retryable` is set) and only within the retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Cap on retries as a share of requests. Default ratio 0.2, 10 retries/s, over 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Eject endpoints that fail several times in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Request timeout for routes that set none (covers retries). Gateway API duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// A reference to the object a policy applies to, in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct TargetRef {
    /// API group: empty (or `core`) for a Service, `gateway.networking.k8s.io` for routes.
    #[serde(default)]
    pub group: String,
    /// `Service`, `HTTPRoute` or `GRPCRoute`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Load-balancing algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × load (Linkerd's algorithm).
    #[default]
    PeakEWMA,
    RoundRobin,
}

/// When and how to retry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first attempt. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<u32>,
    /// What is retried: `5xx`, `gateway-error` (502, 503, 504), `connect-failure`, `grpc`
    /// (the codes in `grpcCodes`). Default `5xx` and `connect-failure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    /// gRPC status codes retried when `on` has `grpc`. Default 14 (UNAVAILABLE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<u32>,
    /// First backoff (doubling, with jitter). Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub backoff: Option<String>,
    /// Longest backoff. Default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_backoff: Option<String>,
    /// Retry whatever the method (for non-idempotent requests you know are safe to repeat).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

/// A retry condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "grpc")]
    Grpc,
}

/// Retry budget: retries may add at most `ratio` of recent requests, plus a floor per second.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Share of requests that may be retries, 0 to 1. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: Option<f64>,
    /// Retries allowed per second whatever the ratio. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
    /// Window the ratio is computed over. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub ttl: Option<String>,
}

/// Circuit breaking by consecutive failures (outlier ejection).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Failures in a row (5xx, gateway errors, connect failures) that eject an endpoint.
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; it grows with each ejection of the same endpoint. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,
    /// Longest ejection. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_ejection_time: Option<String>,
    /// At most this share of a service's endpoints is ejected at once. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejected_percent: Option<u32>,
}

/// Status the controller writes on the mesh's kinds: conditions such as `Accepted`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// Every CRD of the mesh, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Workload::crd(),
        Server::crd(),
        BackendPolicy::crd(),
        AuthorizationPolicy::crd(),
        EgressPolicy::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::from("# Generated by `mesh-controller crds`; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_carry_validation() {
        let yaml = crds_yaml().unwrap();
        assert!(yaml.contains("name: backendpolicies.mesh.dev"));
        assert!(yaml.contains("name: workloads.mesh.dev"));
        assert!(yaml.contains("name: servers.mesh.dev"));
        assert!(yaml.contains("name: authorizationpolicies.mesh.dev"));
        assert!(yaml.contains("name: egresspolicies.mesh.dev"));
        assert!(
            yaml.contains(DURATION_PATTERN),
            "duration pattern in schema"
        );
        assert!(yaml.contains("x-kubernetes-int-or-string"), "{yaml}");
        assert!(yaml.contains("maximum: 65535"));
    }

    #[test]
    fn objects_parse_from_yaml() {
        let p: BackendPolicy = serde_yaml_ng::from_str(
            r#"
apiVersion: mesh.dev/v1alpha1
kind: BackendPolicy
metadata: {name: web, namespace: demo}
spec:
  targetRef: {kind: Service, name: web}
  loadBalancer: RoundRobin
  retry: {attempts: 3, on: [5xx, connect-failure], backoff: 10ms}
  circuitBreaker: {consecutiveFailures: 3}
"#,
        )
        .unwrap();
        assert_eq!(p.spec.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(p.spec.retry.as_ref().unwrap().attempts, Some(3));
        let s: Server = serde_yaml_ng::from_str(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: db}\nspec: {port: 5432, protocol: Opaque}\n",
        )
        .unwrap();
        assert_eq!(s.spec.port, IntOrString::Int(5432));
        assert_eq!(s.spec.protocol, ServerProtocol::Opaque);
        let bad = serde_yaml_ng::from_str::<Server>(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: db}\nspec: {port: 1, protocol: SMTP}\n",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn authorization_and_egress_parse_from_yaml() {
        let p: AuthorizationPolicy = serde_yaml_ng::from_str(
            r#"
apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {kind: Server, name: orders-http}
  mode: audit
  rules:
  - name: create
    clients:
      identities: [spiffe://cluster.local/ns/shop/sa/web]
      serviceAccounts: [{name: admin, namespace: ops}]
    routes:
    - path: {exact: /api/orders}
      method: POST
      headers: [{name: x-tenant, exact: a}]
  - clients: {authenticated: true, networks: [10.0.0.0/8]}
"#,
        )
        .unwrap();
        assert_eq!(p.spec.mode, PolicyMode::Audit);
        assert_eq!(p.spec.rules.len(), 2);
        assert_eq!(p.spec.rules[0].clients.service_accounts[0].name, "admin");
        assert!(p.spec.rules[1].clients.authenticated);
        let e: EgressPolicy = serde_yaml_ng::from_str(
            "apiVersion: mesh.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: out}\nspec: {defaultAction: Deny, allow: [{host: '*.example.com'}]}\n",
        )
        .unwrap();
        assert_eq!(e.spec.default_action, EgressAction::Deny);
        assert_eq!(e.spec.mode, PolicyMode::Enforce);
        let s: Server = serde_yaml_ng::from_str(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: db}\nspec: {port: 5432, tls: strict}\n",
        )
        .unwrap();
        assert_eq!(s.spec.tls, Some(InboundTlsMode::Strict));
        assert!(serde_yaml_ng::from_str::<Server>(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: db}\nspec: {port: 1, tls: Strict}\n"
        )
        .is_err());
    }
}
