//! Inbound policy and authorization: how a proxy treats each port of its workload (protocol,
//! mTLS mode, who may call it) and what the workload may reach outside the mesh (egress).
//!
//! Decisions are pure functions of the policy, the client (its verified identity, if any, and
//! its address) and, for HTTP, the request; they never allocate.
//!
//! # Evaluation
//!
//! A port's [`Authorization`] has a [`DefaultPolicy`] and a list of [`Rule`]s. A rule matches
//! a client when any of its [`ClientMatch`]es does, and a request when, besides, it has no
//! routes or one of its routes matches. Then:
//!
//! - When **no enforced rule** targets the port, the default policy decides.
//! - When **enforced rules** target the port, only they allow: a client (or request) that no
//!   enforced rule matches is denied, whatever the default (as Linkerd does: a port a policy
//!   speaks about is closed to everyone else).
//! - **Audit** never changes what passes. A rule in audit mode and an `audit-*` default are a
//!   dry run: the proxy computes what would happen if they were enforced, and when that would
//!   deny what actually passes the verdict is [`Verdict::WouldDeny`] (traffic passes, and is
//!   counted and logged). Concretely, the actual decision is taken with the enforced rules
//!   only (or, without any, with the default, where `audit-<p>` allows everything); the
//!   hypothetical one with every rule enforced (or, without any rule, with the default `<p>`).
//!
//! `cluster-authenticated` and namespace matches use the mesh's trust domain: an identity is
//! in namespace `ns` when it starts with `spiffe://<trust-domain>/ns/<ns>/`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::{AppProtocol, Identity, InvalidValue, RouteMatch};

/// How the inbound side treats plaintext and mTLS connections on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InboundTls {
    /// mTLS from meshed clients and plaintext from the rest, both accepted.
    #[default]
    Permissive,
    /// Only mTLS with a certificate of the mesh; plaintext is refused.
    Strict,
    /// No TLS termination: mTLS connections reach the app as opaque bytes.
    Disabled,
}

impl InboundTls {
    pub const ALL: [InboundTls; 3] = [
        InboundTls::Permissive,
        InboundTls::Strict,
        InboundTls::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InboundTls::Permissive => "permissive",
            InboundTls::Strict => "strict",
            InboundTls::Disabled => "disabled",
        }
    }
}

impl fmt::Display for InboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboundTls {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                InvalidValue::new(
                    "",
                    format!("'{s}' is not an inbound TLS mode; use permissive, strict or disabled"),
                )
            })
    }
}

/// What happens on a port that no enforced rule targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DefaultPolicy {
    /// Every client, with or without a certificate.
    #[default]
    AllUnauthenticated,
    /// Clients with a valid mesh certificate.
    AllAuthenticated,
    /// Clients with a valid mesh certificate of this mesh's trust domain.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Allow everything; report what `all-authenticated` would deny.
    AuditAllAuthenticated,
    /// Allow everything; report what `cluster-authenticated` would deny.
    AuditClusterAuthenticated,
    /// Allow everything; report what `deny` would deny.
    AuditDeny,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 7] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::AuditAllAuthenticated,
        DefaultPolicy::AuditClusterAuthenticated,
        DefaultPolicy::AuditDeny,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::AuditAllAuthenticated => "audit-all-authenticated",
            DefaultPolicy::AuditClusterAuthenticated => "audit-cluster-authenticated",
            DefaultPolicy::AuditDeny => "audit-deny",
        }
    }

    /// Whether this is an `audit-*` policy (it never denies).
    pub fn is_audit(self) -> bool {
        self != self.enforced()
    }

    /// The policy an `audit-*` policy reports on (itself for the others).
    pub fn enforced(self) -> DefaultPolicy {
        match self {
            DefaultPolicy::AuditAllAuthenticated => DefaultPolicy::AllAuthenticated,
            DefaultPolicy::AuditClusterAuthenticated => DefaultPolicy::ClusterAuthenticated,
            DefaultPolicy::AuditDeny => DefaultPolicy::Deny,
            p => p,
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultPolicy {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                InvalidValue::new(
                    "",
                    format!(
                        "'{s}' is not a default policy; use one of all-unauthenticated, \
                         all-authenticated, cluster-authenticated, deny, \
                         audit-all-authenticated, audit-cluster-authenticated, audit-deny"
                    ),
                )
            })
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 (or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| {
            InvalidValue::new(
                "",
                format!("'{s}' is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32: {why}"),
            )
        };
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?,
        };
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Which clients a rule admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMatch {
    /// An exact SPIFFE ID, or a prefix ending in `*` (`spiffe://cluster.local/ns/shop/*`;
    /// `*` alone is every authenticated client).
    Identity(String),
    /// Every identity of a namespace in the mesh's trust domain.
    Namespace(String),
    /// Any client with a valid mesh certificate.
    Authenticated,
    /// Any client, with or without a certificate.
    Unauthenticated,
    /// Clients whose source address is in this network (with or without a certificate).
    Network(Cidr),
}

impl ClientMatch {
    fn is_match(&self, client: &Client, cluster_prefix: &str) -> bool {
        match self {
            ClientMatch::Identity(pattern) => client.identity.is_some_and(|id| {
                let id = id.as_str();
                match pattern.strip_suffix('*') {
                    Some(prefix) => id.starts_with(prefix),
                    None => id == pattern,
                }
            }),
            ClientMatch::Namespace(ns) => client
                .identity
                .is_some_and(|id| in_namespace(id.as_str(), cluster_prefix, ns)),
            ClientMatch::Authenticated => client.identity.is_some(),
            ClientMatch::Unauthenticated => true,
            ClientMatch::Network(net) => net.contains(client.addr),
        }
    }
}

fn in_namespace(id: &str, cluster_prefix: &str, ns: &str) -> bool {
    id.strip_prefix(cluster_prefix)
        .and_then(|r| r.strip_prefix("ns/"))
        .and_then(|r| r.strip_prefix(ns))
        .is_some_and(|r| r.starts_with('/'))
}

/// One authorization rule: these clients may call these routes (or, without routes, anything
/// on the port, TCP connections included).
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `<namespace>/<policy>[/<rule>]`, for metrics and logs.
    pub name: Arc<str>,
    /// Any of these clients (empty: none).
    pub clients: Vec<ClientMatch>,
    /// Any of these routes (empty: every request, and TCP connections).
    pub routes: Vec<RouteMatch>,
    /// A dry run: what it would deny is reported, nothing more (see the module doc).
    pub audit: bool,
}

impl Rule {
    fn clients_match(&self, client: &Client, cluster_prefix: &str) -> bool {
        self.clients
            .iter()
            .any(|c| c.is_match(client, cluster_prefix))
    }

    /// Validates what a rule from a message or a file may get wrong.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.name.is_empty() {
            return Err(InvalidValue::new("name", "a rule needs a name"));
        }
        for (i, c) in self.clients.iter().enumerate() {
            match c {
                ClientMatch::Identity(p) => {
                    let exact = p.strip_suffix('*').is_none();
                    if exact {
                        Identity::parse(p)
                            .map_err(|e| e.within(format!("clients[{i}].identity")))?;
                    } else if !(p == "*" || p.starts_with("spiffe://")) {
                        return Err(InvalidValue::new(
                            format!("clients[{i}].identity"),
                            format!(
                                "'{p}' must be a SPIFFE ID, a prefix of one ending in '*', or '*'"
                            ),
                        ));
                    }
                }
                ClientMatch::Namespace(ns) if ns.is_empty() || ns.contains('/') => {
                    return Err(InvalidValue::new(
                        format!("clients[{i}].namespace"),
                        format!("'{ns}' is not a namespace name"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The client of a connection or request, as the inbound proxy knows it.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The verified identity of its certificate (mTLS); `None` for plaintext.
    pub identity: Option<&'a Identity>,
    /// Its source address.
    pub addr: IpAddr,
}

/// Why something was (or would be) denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The client has no identity and nothing admits unauthenticated clients.
    Unauthenticated,
    /// The client (its identity, trust domain, address or route) is not admitted.
    Unauthorized,
    /// The default policy (or an egress policy's default) is `deny`.
    DefaultDeny,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::Unauthorized => "unauthorized",
            DenyReason::DefaultDeny => "default-deny",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What denied: the policy (a rule-set summary, a rule name or `default:<policy>`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub policy: Arc<str>,
    pub reason: DenyReason,
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Denial),
    /// Allowed, but a policy in audit mode would deny it: count and log it as `would-deny`.
    WouldDeny(Denial),
}

impl Verdict {
    /// Whether the traffic passes (`Allow` or `WouldDeny`).
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Deny(_))
    }
}

/// Who may call a port.
#[derive(Clone, Debug, PartialEq)]
pub struct Authorization {
    default: DefaultPolicy,
    rules: Vec<Rule>,
    trust_domain: Arc<str>,
    /// `spiffe://<trust-domain>/`.
    cluster_prefix: Arc<str>,
    /// `default:<policy>`, the policy of default denials.
    default_name: Arc<str>,
    /// The policies of the rules (`ns/policy`, comma-separated), for denials no rule explains.
    rules_name: Arc<str>,
    /// Rules with routes exist (HTTP requests are then checked one by one).
    per_request: bool,
    /// Some rule is enforced (not audit): then the default no longer applies.
    enforced_rules: bool,
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization::new(
            DefaultPolicy::AllUnauthenticated,
            Vec::new(),
            "cluster.local",
        )
    }
}

/// The policy part (`ns/policy`) of a rule name `ns/policy[/rule]`.
fn policy_of(rule: &str) -> &str {
    let mut parts = rule.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(ns), Some(p)) => &rule[..ns.len() + 1 + p.len()],
        _ => rule,
    }
}

impl Authorization {
    pub fn new(default: DefaultPolicy, rules: Vec<Rule>, trust_domain: &str) -> Self {
        let mut policies: Vec<&str> = Vec::new();
        for r in &rules {
            let p = policy_of(&r.name);
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        let rules_name: Arc<str> = policies.join(",").into();
        Self {
            default,
            per_request: rules.iter().any(|r| !r.routes.is_empty()),
            enforced_rules: rules.iter().any(|r| !r.audit),
            rules_name,
            rules,
            trust_domain: trust_domain.into(),
            cluster_prefix: format!("spiffe://{trust_domain}/").into(),
            default_name: format!("default:{default}").into(),
        }
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether any rule has routes (then HTTP requests are checked one by one with
    /// [`Self::check_request`]; connections still go through [`Self::check_connection`] when
    /// they are opaque TCP).
    pub fn per_request(&self) -> bool {
        self.per_request
    }

    /// A connection (opaque TCP, or HTTP before any request): allowed when a rule without
    /// routes matches the client, or no enforced rule targets the port and the default
    /// allows it.
    pub fn check_connection(&self, client: &Client) -> Verdict {
        self.decide(client, |r| r.routes.is_empty())
    }

    /// One HTTP request: allowed when a rule matches the client and, if it has routes, one of
    /// them matches the request; or no enforced rule targets the port and the default allows.
    pub fn check_request<B>(&self, client: &Client, req: &http::Request<B>) -> Verdict {
        self.check_http(client, req.method(), req.uri(), req.headers())
    }

    /// [`Self::check_request`] on the parts of a request.
    pub fn check_parts(&self, client: &Client, parts: &http::request::Parts) -> Verdict {
        self.check_http(client, &parts.method, &parts.uri, &parts.headers)
    }

    /// [`Self::check_request`] on a request's method, URI and headers.
    pub fn check_http(
        &self,
        client: &Client,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Verdict {
        self.decide(client, |r| {
            r.routes.is_empty() || r.routes.iter().any(|m| m.is_match(method, uri, headers))
        })
    }

    fn decide(&self, client: &Client, route_ok: impl Fn(&Rule) -> bool) -> Verdict {
        let prefix = &*self.cluster_prefix;
        let matches = |r: &Rule| r.clients_match(client, prefix) && route_ok(r);
        // The actual decision: enforced rules, or the default (audit defaults allow).
        let actual = if self.enforced_rules {
            if self.rules.iter().any(|r| !r.audit && matches(r)) {
                None
            } else {
                Some(self.no_rule_denial(client))
            }
        } else if self.default.is_audit() {
            None
        } else {
            self.default_denial(client, self.default)
        };
        if let Some(d) = actual {
            return Verdict::Deny(d);
        }
        // What enforcing every audit rule (or the audit default) would do.
        let has_audit_rules = self.rules.iter().any(|r| r.audit);
        let hypothetical = if has_audit_rules {
            (!self.rules.iter().any(&matches)).then(|| self.no_rule_denial(client))
        } else if self.rules.is_empty() && self.default.is_audit() {
            self.default_denial(client, self.default.enforced())
        } else {
            None
        };
        match hypothetical {
            Some(d) => Verdict::WouldDeny(d),
            None => Verdict::Allow,
        }
    }

    fn no_rule_denial(&self, client: &Client) -> Denial {
        Denial {
            policy: self.rules_name.clone(),
            reason: if client.identity.is_some() {
                DenyReason::Unauthorized
            } else {
                DenyReason::Unauthenticated
            },
        }
    }

    fn default_denial(&self, client: &Client, policy: DefaultPolicy) -> Option<Denial> {
        let reason = match policy.enforced() {
            DefaultPolicy::AllUnauthenticated => return None,
            DefaultPolicy::AllAuthenticated => match client.identity {
                Some(_) => return None,
                None => DenyReason::Unauthenticated,
            },
            DefaultPolicy::ClusterAuthenticated => match client.identity {
                Some(id) if id.as_str().starts_with(&*self.cluster_prefix) => return None,
                Some(_) => DenyReason::Unauthorized,
                None => DenyReason::Unauthenticated,
            },
            _ => DenyReason::DefaultDeny,
        };
        Some(Denial {
            policy: self.default_name.clone(),
            reason,
        })
    }
}

/// The policy of one port.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PortPolicy {
    /// `namespace/name` of the Server that declares the port, empty for none.
    pub server: String,
    pub protocol: AppProtocol,
    pub tls: InboundTls,
    pub authorization: Authorization,
}

/// The policy of every port of a workload, and its egress.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkloadPolicy {
    /// Ports that a Server (or a selecting Service's `appProtocol`) declares.
    pub ports: HashMap<u16, PortPolicy>,
    /// Every other port.
    pub default_port: PortPolicy,
    /// What the workload may reach outside the mesh; `None`: everything.
    pub egress: Option<Egress>,
}

impl WorkloadPolicy {
    /// The policy of a port (the default port's when the port is not declared).
    pub fn port(&self, port: u16) -> &PortPolicy {
        self.ports.get(&port).unwrap_or(&self.default_port)
    }
}

/// A destination outside the mesh, by host name or address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressMatch {
    /// A host name (`api.example.com`, case-insensitive) or a suffix (`*.example.com`: any
    /// name below it, not the name itself).
    Host(String),
    Network(Cidr),
}

impl EgressMatch {
    fn is_match(&self, host: Option<&str>, addr: IpAddr) -> bool {
        match self {
            EgressMatch::Network(net) => net.contains(addr),
            EgressMatch::Host(pattern) => host.is_some_and(|h| {
                let h = host_name(h);
                match pattern.strip_prefix("*.") {
                    Some(suffix) => {
                        let (h, suffix) = (h.as_bytes(), suffix.as_bytes());
                        h.len() > suffix.len() + 1
                            && h[h.len() - suffix.len() - 1] == b'.'
                            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    }
                    None => h.eq_ignore_ascii_case(pattern),
                }
            }),
        }
    }
}

/// The name part of a `Host` value: without a port and a trailing dot.
fn host_name(h: &str) -> &str {
    let h = if h.starts_with('[') {
        h
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// What a workload may reach outside the mesh. A destination is checked against `deny`
/// first, then `allow`; what matches neither gets `default_allow`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    /// `<namespace>/<policy>`, for metrics and logs.
    pub name: Arc<str>,
    pub default_allow: bool,
    pub allow: Vec<EgressMatch>,
    pub deny: Vec<EgressMatch>,
    /// Report what would be denied, deny nothing.
    pub audit: bool,
}

impl Egress {
    /// Checks a destination the proxy does not know from discovery: `host` from the request's
    /// `Host`/`:authority` (TCP connections have none and match only networks).
    pub fn check(&self, host: Option<&str>, addr: IpAddr) -> Verdict {
        let reason = if self.deny.iter().any(|m| m.is_match(host, addr)) {
            DenyReason::Unauthorized
        } else if self.allow.iter().any(|m| m.is_match(host, addr)) || self.default_allow {
            return Verdict::Allow;
        } else {
            DenyReason::DefaultDeny
        };
        let d = Denial {
            policy: self.name.clone(),
            reason,
        };
        if self.audit {
            Verdict::WouldDeny(d)
        } else {
            Verdict::Deny(d)
        }
    }

    /// Validates host patterns.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (list, field) in [(&self.allow, "allow"), (&self.deny, "deny")] {
            for (i, m) in list.iter().enumerate() {
                if let EgressMatch::Host(h) = m {
                    let name = h.strip_prefix("*.").unwrap_or(h);
                    let ok = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !ok {
                        return Err(InvalidValue::new(
                            format!("{field}[{i}].host"),
                            format!("'{h}' is not a host name or a '*.' suffix of one"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TD: &str = "cluster.local";

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(name: &str, clients: Vec<ClientMatch>, routes: Vec<RouteMatch>) -> Rule {
        Rule {
            name: name.into(),
            clients,
            routes,
            audit: false,
        }
    }

    fn route(method: &str, path: &str) -> RouteMatch {
        RouteMatch {
            method: Some(method.into()),
            path: Some(crate::PathMatch::Exact(path.into())),
            ..Default::default()
        }
    }

    fn req(method: &str, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    /// The shop example: only web may POST /api/orders; everyone authenticated GET /health.
    fn shop() -> Authorization {
        Authorization::new(
            DefaultPolicy::AllUnauthenticated,
            vec![
                rule(
                    "shop/orders-api/create",
                    vec![ClientMatch::Identity(
                        "spiffe://cluster.local/ns/shop/sa/web".into(),
                    )],
                    vec![route("POST", "/api/orders")],
                ),
                rule(
                    "shop/orders-api/health",
                    vec![ClientMatch::Authenticated],
                    vec![route("GET", "/health")],
                ),
            ],
            TD,
        )
    }

    #[test]
    fn shop_example() {
        let a = shop();
        assert!(a.per_request());
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let other = id("spiffe://cluster.local/ns/shop/sa/batch");
        let c = |i| Client {
            identity: i,
            addr: ip("10.0.0.1"),
        };
        assert_eq!(
            a.check_request(&c(Some(&web)), &req("POST", "/api/orders")),
            Verdict::Allow
        );
        let denied = a.check_request(&c(Some(&other)), &req("POST", "/api/orders"));
        assert_eq!(
            denied,
            Verdict::Deny(Denial {
                policy: "shop/orders-api".into(),
                reason: DenyReason::Unauthorized
            })
        );
        assert_eq!(
            a.check_request(&c(Some(&other)), &req("GET", "/health")),
            Verdict::Allow
        );
        let anon = a.check_request(&c(None), &req("GET", "/health"));
        assert!(matches!(
            anon,
            Verdict::Deny(Denial {
                reason: DenyReason::Unauthenticated,
                ..
            })
        ));
        // Web may not GET /api/orders: no rule says so, and the default no longer applies.
        assert!(!a
            .check_request(&c(Some(&web)), &req("GET", "/api/orders"))
            .passes());
        // No rule without routes: opaque connections are denied.
        assert!(!a.check_connection(&c(Some(&web))).passes());
    }

    #[test]
    fn defaults() {
        let td_id = id("spiffe://cluster.local/ns/a/sa/x");
        let foreign = id("spiffe://other.org/ns/a/sa/x");
        let addr = ip("10.1.1.1");
        let check = |p: DefaultPolicy, identity: Option<&Identity>| {
            Authorization::new(p, vec![], TD).check_connection(&Client { identity, addr })
        };
        use DefaultPolicy::*;
        assert_eq!(check(AllUnauthenticated, None), Verdict::Allow);
        assert_eq!(check(AllAuthenticated, Some(&foreign)), Verdict::Allow);
        assert_eq!(
            check(AllAuthenticated, None),
            Verdict::Deny(Denial {
                policy: "default:all-authenticated".into(),
                reason: DenyReason::Unauthenticated
            })
        );
        assert_eq!(check(ClusterAuthenticated, Some(&td_id)), Verdict::Allow);
        assert!(matches!(
            check(ClusterAuthenticated, Some(&foreign)),
            Verdict::Deny(Denial {
                reason: DenyReason::Unauthorized,
                ..
            })
        ));
        assert!(matches!(
            check(Deny, Some(&td_id)),
            Verdict::Deny(Denial {
                reason: DenyReason::DefaultDeny,
                ..
            })
        ));
        assert_eq!(
            check(AuditDeny, Some(&td_id)),
            Verdict::WouldDeny(Denial {
                policy: "default:audit-deny".into(),
                reason: DenyReason::DefaultDeny
            })
        );
        assert_eq!(check(AuditAllAuthenticated, Some(&td_id)), Verdict::Allow);
        assert!(matches!(
            check(AuditClusterAuthenticated, None),
            Verdict::WouldDeny(Denial {
                reason: DenyReason::Unauthenticated,
                ..
            })
        ));
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>().unwrap(), p);
        }
        assert!("allow".parse::<DefaultPolicy>().is_err());
        for t in InboundTls::ALL {
            assert_eq!(t.to_string().parse::<InboundTls>().unwrap(), t);
        }
        assert!("STRICT".parse::<InboundTls>().is_err());
    }

    #[test]
    fn rules_replace_the_default_and_audit_is_a_dry_run() {
        let ns_rule = |audit| Rule {
            audit,
            ..rule("a/p/r", vec![ClientMatch::Namespace("shop".into())], vec![])
        };
        let shop_id = id("spiffe://cluster.local/ns/shop/sa/web");
        let shopping = id("spiffe://cluster.local/ns/shopping/sa/web");
        let c = |i| Client {
            identity: i,
            addr: ip("10.0.0.1"),
        };
        // Enforced rule, allow-all default: only the rule allows.
        let a = Authorization::new(DefaultPolicy::AllUnauthenticated, vec![ns_rule(false)], TD);
        assert_eq!(a.check_connection(&c(Some(&shop_id))), Verdict::Allow);
        assert!(
            !a.check_connection(&c(Some(&shopping))).passes(),
            "namespace is not a prefix"
        );
        assert!(!a.check_connection(&c(None)).passes());
        // The same rule in audit mode: the default still decides, the rule reports.
        let a = Authorization::new(DefaultPolicy::AllUnauthenticated, vec![ns_rule(true)], TD);
        assert_eq!(a.check_connection(&c(Some(&shop_id))), Verdict::Allow);
        assert!(matches!(
            a.check_connection(&c(None)),
            Verdict::WouldDeny(_)
        ));
        // An audit rule never opens what the default denies.
        let a = Authorization::new(DefaultPolicy::Deny, vec![ns_rule(true)], TD);
        assert!(matches!(
            a.check_connection(&c(Some(&shop_id))),
            Verdict::Deny(_)
        ));
        // Audit plus enforced: the enforced rules decide.
        let other = rule(
            "a/q/r",
            vec![ClientMatch::Network(Cidr::parse("10.0.0.0/24").unwrap())],
            vec![],
        );
        let a = Authorization::new(
            DefaultPolicy::AllUnauthenticated,
            vec![ns_rule(true), other],
            TD,
        );
        assert_eq!(a.check_connection(&c(None)), Verdict::Allow);
        assert_eq!(
            a.check_connection(&Client {
                identity: None,
                addr: ip("10.9.0.1")
            }),
            Verdict::Deny(Denial {
                policy: "a/p,a/q".into(),
                reason: DenyReason::Unauthenticated
            })
        );
        assert!(!a
            .check_connection(&Client {
                identity: Some(&shop_id),
                addr: ip("10.9.0.1")
            })
            .passes());
    }

    #[test]
    fn identity_patterns() {
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let c = Client {
            identity: Some(&web),
            addr: ip("::1"),
        };
        let m = |p: &str| ClientMatch::Identity(p.into()).is_match(&c, "spiffe://cluster.local/");
        assert!(m("spiffe://cluster.local/ns/shop/sa/web"));
        assert!(m("spiffe://cluster.local/ns/shop/*"));
        assert!(m("*"));
        assert!(!m("spiffe://cluster.local/ns/shop/sa/we"));
        assert!(!m("spiffe://cluster.local/ns/other/*"));
        let bad = rule("a/b", vec![ClientMatch::Identity("web".into())], vec![]);
        assert_eq!(bad.validate().unwrap_err().field, "clients[0].identity");
    }

    #[test]
    fn cidrs() {
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(
            n.contains(ip("::ffff:10.1.0.9")),
            "v4-mapped addresses are v4"
        );
        assert_eq!(
            Cidr::parse("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("2001:db8::1")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::1")));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "", "::/129", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn egress() {
        let e = Egress {
            name: "shop/egress".into(),
            default_allow: false,
            allow: vec![
                EgressMatch::Host("*.example.com".into()),
                EgressMatch::Network(Cidr::parse("203.0.113.0/24").unwrap()),
            ],
            deny: vec![EgressMatch::Host("bad.example.com".into())],
            audit: false,
        };
        let a = ip("198.51.100.1");
        assert_eq!(e.check(Some("api.example.com"), a), Verdict::Allow);
        assert_eq!(e.check(Some("API.Example.com:443"), a), Verdict::Allow);
        assert!(!e.check(Some("example.com"), a).passes());
        assert!(!e.check(Some("notexample.com"), a).passes());
        assert!(
            !e.check(Some("é.example.co"), a).passes(),
            "non-ASCII names never panic"
        );
        assert!(matches!(
            e.check(Some("bad.example.com"), a),
            Verdict::Deny(Denial {
                reason: DenyReason::Unauthorized,
                ..
            })
        ));
        assert_eq!(e.check(None, ip("203.0.113.9")), Verdict::Allow);
        assert!(matches!(
            e.check(None, a),
            Verdict::Deny(Denial {
                reason: DenyReason::DefaultDeny,
                ..
            })
        ));
        let audit = Egress {
            audit: true,
            ..e.clone()
        };
        assert!(matches!(audit.check(None, a), Verdict::WouldDeny(_)));
        assert!(e.validate().is_ok());
        let bad = Egress {
            allow: vec![EgressMatch::Host("a b".into())],
            ..e
        };
        assert_eq!(bad.validate().unwrap_err().field, "allow[0].host");
    }

    #[test]
    fn workload_ports_fall_back_to_the_default() {
        let mut w = WorkloadPolicy::default();
        w.ports.insert(
            8080,
            PortPolicy {
                tls: InboundTls::Strict,
                ..Default::default()
            },
        );
        assert_eq!(w.port(8080).tls, InboundTls::Strict);
        assert_eq!(w.port(9090).tls, InboundTls::Permissive);
    }

    fn any_client_match() -> impl Strategy<Value = ClientMatch> {
        prop_oneof![
            "[a-c]{1,2}"
                .prop_map(|s| ClientMatch::Identity(format!("spiffe://cluster.local/ns/{s}/sa/x"))),
            "[a-c]{1,2}".prop_map(ClientMatch::Namespace),
            Just(ClientMatch::Authenticated),
            Just(ClientMatch::Unauthenticated),
            (0u8..=32)
                .prop_map(|p| ClientMatch::Network(Cidr::parse(&format!("10.0.0.0/{p}")).unwrap())),
        ]
    }

    proptest! {
        /// Audit never changes what passes: marking every rule audit gives the verdict of
        /// the default alone, and an audit rule added to enforced ones changes nothing but
        /// Allow into WouldDeny.
        #[test]
        fn audit_never_changes_what_passes(
            clients in proptest::collection::vec(proptest::collection::vec(any_client_match(), 0..3), 0..4),
            default in 0usize..7,
            ns in "[a-c]{1,2}",
            authenticated in any::<bool>(),
            addr in any::<[u8; 4]>(),
        ) {
            let default = DefaultPolicy::ALL[default];
            let identity = id(&format!("spiffe://cluster.local/ns/{ns}/sa/x"));
            let client = Client { identity: authenticated.then_some(&identity), addr: IpAddr::from(addr) };
            let rules = |audit: bool| clients.iter().enumerate().map(|(i, c)| Rule {
                name: format!("n/p{i}").into(), clients: c.clone(), routes: vec![], audit,
            }).collect::<Vec<_>>();
            let alone = Authorization::new(default, vec![], TD).check_connection(&client);
            let audited = Authorization::new(default, rules(true), TD).check_connection(&client);
            prop_assert_eq!(alone.passes(), audited.passes());
            let enforced = Authorization::new(default, rules(false), TD).check_connection(&client);
            let mut mixed_rules = rules(false);
            mixed_rules.extend(rules(true));
            let mixed = Authorization::new(default, mixed_rules, TD).check_connection(&client);
            prop_assert_eq!(enforced.passes(), mixed.passes());
            if !clients.is_empty() && !enforced.passes() {
                prop_assert!(!matches!(enforced, Verdict::Allow));
            }
        }

        #[test]
        fn cidr_contains_its_own_addresses(a in any::<[u8; 4]>(), prefix in 0u8..=32) {
            let s = format!("{}/{prefix}", IpAddr::from(a));
            let n = Cidr::parse(&s).unwrap();
            prop_assert!(n.contains(IpAddr::from(a)));
            prop_assert_eq!(Cidr::parse(&n.to_string()).unwrap(), n);
        }
    }
}
