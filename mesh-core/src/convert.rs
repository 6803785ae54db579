//! Conversions between `mesh-proto` messages and the validated model.
//! Messages from the wire are untrusted: every conversion validates, and an error names the
//! field (`endpoints[3].address.ip`) so a controller bug can be found from a proxy's log.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use mesh_proto::v1 as pb;

use crate::route::ValueMatch;
use crate::{
    AppProtocol, BackendPolicy, BalancerKind, CircuitBreaker, Endpoint, HeaderMatch,
    HeaderModifier, HeaderValue, Identity, InvalidValue, PathMatch, Pattern, ProtocolHint,
    QueryParamMatch, RetryBudget, RetryOn, RetryPolicy, Route, RouteMatch, ServiceProfile,
    WeightedBackend,
};
use crate::{
    Authorization, Cidr, ClientMatch, DefaultPolicy, Egress, EgressMatch, InboundTls, PortPolicy,
    Rule, WorkloadPolicy,
};

pub fn addr_from_proto(a: &pb::TcpAddress) -> Result<SocketAddr, InvalidValue> {
    let ip = match a.ip.len() {
        4 => {
            let b: [u8; 4] = a.ip[..]
                .try_into()
                .map_err(|_| InvalidValue::new("ip", "bad length"))?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        16 => {
            let b: [u8; 16] = a.ip[..]
                .try_into()
                .map_err(|_| InvalidValue::new("ip", "bad length"))?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        n => {
            return Err(InvalidValue::new(
                "ip",
                format!("{n} bytes; an IP address has 4 or 16"),
            ))
        }
    };
    let port = u16::try_from(a.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| InvalidValue::new("port", format!("{} is not a TCP port", a.port)))?;
    Ok(SocketAddr::new(ip, port))
}

pub fn addr_to_proto(a: SocketAddr) -> pb::TcpAddress {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    pb::TcpAddress {
        ip,
        port: a.port() as u32,
    }
}

fn required<'a, T>(v: &'a Option<T>, field: &str) -> Result<&'a T, InvalidValue> {
    v.as_ref()
        .ok_or_else(|| InvalidValue::new(field, "is required"))
}

/// The model's protocol from its wire value; an unknown value is an error naming `field`.
pub fn protocol_from_proto(raw: i32, field: &str) -> Result<AppProtocol, InvalidValue> {
    match pb::Protocol::try_from(raw) {
        Ok(pb::Protocol::Detect) => Ok(AppProtocol::Detect),
        Ok(pb::Protocol::Http1) => Ok(AppProtocol::Http1),
        Ok(pb::Protocol::Http2) => Ok(AppProtocol::Http2),
        Ok(pb::Protocol::Grpc) => Ok(AppProtocol::Grpc),
        Ok(pb::Protocol::Opaque) => Ok(AppProtocol::Opaque),
        Err(_) => Err(InvalidValue::new(field, format!("unknown protocol {raw}"))),
    }
}

pub fn protocol_to_proto(p: AppProtocol) -> pb::Protocol {
    match p {
        AppProtocol::Detect => pb::Protocol::Detect,
        AppProtocol::Http1 => pb::Protocol::Http1,
        AppProtocol::Http2 => pb::Protocol::Http2,
        AppProtocol::Grpc => pb::Protocol::Grpc,
        AppProtocol::Opaque => pb::Protocol::Opaque,
    }
}

impl TryFrom<&pb::Endpoint> for Endpoint {
    type Error = InvalidValue;

    fn try_from(e: &pb::Endpoint) -> Result<Self, Self::Error> {
        let addr =
            addr_from_proto(required(&e.address, "address")?).map_err(|e| e.within("address"))?;
        let identity = if e.identity.is_empty() {
            None
        } else {
            Some(Identity::parse(&e.identity).map_err(|e| e.within("identity"))?)
        };
        let hint = match e.hint.as_ref().and_then(|h| h.kind.as_ref()) {
            None => ProtocolHint::Unknown,
            Some(pb::protocol_hint::Kind::Opaque(_)) => ProtocolHint::Opaque,
            Some(pb::protocol_hint::Kind::MeshedH2(m)) => ProtocolHint::MeshedH2 {
                inbound_port: match m.inbound_port {
                    0 => None,
                    p => Some(u16::try_from(p).map_err(|_| {
                        InvalidValue::new(
                            "hint.meshed_h2.inbound_port",
                            format!("{p} is not a TCP port"),
                        )
                    })?),
                },
            },
        };
        let protocol = protocol_from_proto(e.protocol, "protocol")?;
        Ok(Endpoint {
            addr,
            weight: e.weight.max(1),
            zone: (!e.zone.is_empty()).then(|| e.zone.clone()),
            identity,
            hint,
            labels: e
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            protocol,
        })
    }
}

impl From<&Endpoint> for pb::Endpoint {
    fn from(e: &Endpoint) -> Self {
        pb::Endpoint {
            address: Some(addr_to_proto(e.addr)),
            weight: e.weight,
            zone: e.zone.clone().unwrap_or_default(),
            identity: e
                .identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            hint: match e.hint {
                ProtocolHint::Unknown => None,
                ProtocolHint::Opaque => Some(pb::ProtocolHint {
                    kind: Some(pb::protocol_hint::Kind::Opaque(
                        pb::protocol_hint::Opaque {},
                    )),
                }),
                ProtocolHint::MeshedH2 { inbound_port } => Some(pb::ProtocolHint {
                    kind: Some(pb::protocol_hint::Kind::MeshedH2(
                        pb::protocol_hint::MeshedH2 {
                            inbound_port: inbound_port.unwrap_or(0) as u32,
                        },
                    )),
                }),
            },
            labels: e
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            protocol: protocol_to_proto(e.protocol) as i32,
        }
    }
}

/// Converts a list of endpoint messages, naming the index of a bad one.
pub fn endpoints_from_proto(list: &[pb::Endpoint]) -> Result<Vec<Endpoint>, InvalidValue> {
    list.iter()
        .enumerate()
        .map(|(i, e)| Endpoint::try_from(e).map_err(|err| err.within(format!("endpoints[{i}]"))))
        .collect()
}

fn value_match(exact: Option<&String>, regex: Option<&String>) -> Result<ValueMatch, InvalidValue> {
    match (exact, regex) {
        (Some(e), _) => Ok(ValueMatch::Exact(e.clone())),
        (None, Some(r)) => Ok(ValueMatch::Regex(
            Pattern::new(r).map_err(|e| e.within("regex"))?,
        )),
        (None, None) => Err(InvalidValue::new("value", "needs `exact` or `regex`")),
    }
}

fn value_to_proto<T>(v: &ValueMatch, exact: fn(String) -> T, regex: fn(String) -> T) -> T {
    match v {
        ValueMatch::Exact(e) => exact(e.clone()),
        ValueMatch::Regex(r) => regex(r.as_str().to_string()),
    }
}

impl TryFrom<&pb::RouteMatch> for RouteMatch {
    type Error = InvalidValue;

    fn try_from(m: &pb::RouteMatch) -> Result<Self, Self::Error> {
        use pb::header_match::Value as H;
        use pb::path_match::Kind as P;
        use pb::query_param_match::Value as Q;
        let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
            None => None,
            Some(P::Exact(p)) => Some(PathMatch::Exact(p.clone())),
            Some(P::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
            Some(P::Regex(r)) => Some(PathMatch::Regex(
                Pattern::new(r).map_err(|e| e.within("path.regex"))?,
            )),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (exact, regex) = match &h.value {
                    Some(H::Exact(e)) => (Some(e), None),
                    Some(H::Regex(r)) => (None, Some(r)),
                    None => (None, None),
                };
                Ok(HeaderMatch {
                    name: h.name.to_ascii_lowercase(),
                    value: value_match(exact, regex)
                        .map_err(|e| e.within(format!("headers[{i}]")))?,
                })
            })
            .collect::<Result<_, InvalidValue>>()?;
        let query_params = m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (exact, regex) = match &q.value {
                    Some(Q::Exact(e)) => (Some(e), None),
                    Some(Q::Regex(r)) => (None, Some(r)),
                    None => (None, None),
                };
                Ok(QueryParamMatch {
                    name: q.name.clone(),
                    value: value_match(exact, regex)
                        .map_err(|e| e.within(format!("query_params[{i}]")))?,
                })
            })
            .collect::<Result<_, InvalidValue>>()?;
        Ok(RouteMatch {
            path,
            headers,
            method: (!m.method.is_empty()).then(|| m.method.clone()),
            query_params,
        })
    }
}

impl From<&RouteMatch> for pb::RouteMatch {
    fn from(m: &RouteMatch) -> Self {
        use pb::path_match::Kind as P;
        pb::RouteMatch {
            path: m.path.as_ref().map(|p| pb::PathMatch {
                kind: Some(match p {
                    PathMatch::Exact(s) => P::Exact(s.clone()),
                    PathMatch::Prefix(s) => P::Prefix(s.clone()),
                    PathMatch::Regex(r) => P::Regex(r.as_str().to_string()),
                }),
            }),
            headers: m
                .headers
                .iter()
                .map(|h| pb::HeaderMatch {
                    name: h.name.clone(),
                    value: Some(value_to_proto(
                        &h.value,
                        pb::header_match::Value::Exact,
                        pb::header_match::Value::Regex,
                    )),
                })
                .collect(),
            method: m.method.clone().unwrap_or_default(),
            query_params: m
                .query_params
                .iter()
                .map(|q| pb::QueryParamMatch {
                    name: q.name.clone(),
                    value: Some(value_to_proto(
                        &q.value,
                        pb::query_param_match::Value::Exact,
                        pb::query_param_match::Value::Regex,
                    )),
                })
                .collect(),
        }
    }
}

impl TryFrom<&pb::RetryPolicy> for RetryPolicy {
    type Error = InvalidValue;

    fn try_from(r: &pb::RetryPolicy) -> Result<Self, Self::Error> {
        let defaults = RetryPolicy::default();
        let mut on = Vec::new();
        for (i, raw) in r.on.iter().enumerate() {
            on.push(match pb::RetryOn::try_from(*raw) {
                Ok(pb::RetryOn::RetryOn5xx) => RetryOn::ServerError,
                Ok(pb::RetryOn::GatewayError) => RetryOn::GatewayError,
                Ok(pb::RetryOn::ConnectFailure) => RetryOn::ConnectFailure,
                Ok(pb::RetryOn::Grpc) => RetryOn::Grpc,
                _ => {
                    return Err(InvalidValue::new(
                        format!("on[{i}]"),
                        format!("unknown condition {raw}"),
                    ))
                }
            });
        }
        let p = RetryPolicy {
            max_retries: r.max_retries,
            on: if on.is_empty() { defaults.on } else { on },
            grpc_codes: if r.grpc_codes.is_empty() {
                defaults.grpc_codes
            } else {
                r.grpc_codes.clone()
            },
            backoff_base: ms_or(r.backoff_base_ms, defaults.backoff_base),
            backoff_max: ms_or(r.backoff_max_ms, defaults.backoff_max),
            max_body_bytes: if r.max_body_bytes == 0 {
                defaults.max_body_bytes
            } else {
                r.max_body_bytes
            },
        };
        p.validate()?;
        Ok(p)
    }
}

fn ms_or(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms as u64)
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl From<&RetryPolicy> for pb::RetryPolicy {
    fn from(r: &RetryPolicy) -> Self {
        pb::RetryPolicy {
            max_retries: r.max_retries,
            on: r
                .on
                .iter()
                .map(|o| match o {
                    RetryOn::ServerError => pb::RetryOn::RetryOn5xx,
                    RetryOn::GatewayError => pb::RetryOn::GatewayError,
                    RetryOn::ConnectFailure => pb::RetryOn::ConnectFailure,
                    RetryOn::Grpc => pb::RetryOn::Grpc,
                } as i32)
                .collect(),
            grpc_codes: r.grpc_codes.clone(),
            backoff_base_ms: ms(r.backoff_base),
            backoff_max_ms: ms(r.backoff_max),
            max_body_bytes: r.max_body_bytes,
        }
    }
}

impl TryFrom<&pb::HeaderModifier> for HeaderModifier {
    type Error = InvalidValue;

    fn try_from(m: &pb::HeaderModifier) -> Result<Self, Self::Error> {
        let values = |list: &[pb::HeaderValue]| {
            list.iter()
                .map(|h| HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect()
        };
        let modifier = HeaderModifier {
            set: values(&m.set),
            add: values(&m.add),
            remove: m.remove.clone(),
        };
        modifier.validate()?;
        Ok(modifier)
    }
}

impl From<&HeaderModifier> for pb::HeaderModifier {
    fn from(m: &HeaderModifier) -> Self {
        let values = |list: &[HeaderValue]| {
            list.iter()
                .map(|h| pb::HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect()
        };
        pb::HeaderModifier {
            set: values(&m.set),
            add: values(&m.add),
            remove: m.remove.clone(),
        }
    }
}

impl TryFrom<&pb::Route> for Route {
    type Error = InvalidValue;

    fn try_from(r: &pb::Route) -> Result<Self, Self::Error> {
        let route = Route {
            name: r.name.clone(),
            matches: r
                .matches
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    RouteMatch::try_from(m).map_err(|e| e.within(format!("matches[{i}]")))
                })
                .collect::<Result<_, _>>()?,
            backends: r
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    Ok(WeightedBackend {
                        authority: b.authority.parse().map_err(|e: InvalidValue| {
                            e.within(format!("backends[{i}].authority"))
                        })?,
                        weight: b.weight,
                    })
                })
                .collect::<Result<_, InvalidValue>>()?,
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms as u64)),
            retry: r
                .retry
                .as_ref()
                .map(RetryPolicy::try_from)
                .transpose()
                .map_err(|e| e.within("retry"))?,
            retryable: r.retryable,
            request_headers: r
                .request_headers
                .as_ref()
                .map(HeaderModifier::try_from)
                .transpose()
                .map_err(|e| e.within("request_headers"))?
                .unwrap_or_default(),
        };
        route.validate()?;
        Ok(route)
    }
}

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> Self {
        pb::Route {
            name: r.name.clone(),
            matches: r.matches.iter().map(Into::into).collect(),
            backends: r
                .backends
                .iter()
                .map(|b| pb::WeightedBackend {
                    authority: b.authority.to_string(),
                    weight: b.weight,
                })
                .collect(),
            timeout_ms: r
                .timeout
                .map(ms)
                .unwrap_or(0)
                .max(u32::from(r.timeout.is_some())),
            retry: r.retry.as_ref().map(Into::into),
            retryable: r.retryable,
            request_headers: (!r.request_headers.is_empty())
                .then(|| pb::HeaderModifier::from(&r.request_headers)),
        }
    }
}

impl TryFrom<&pb::BackendPolicy> for BackendPolicy {
    type Error = InvalidValue;

    fn try_from(p: &pb::BackendPolicy) -> Result<Self, Self::Error> {
        let balancer = match pb::Balancer::try_from(p.balancer) {
            Ok(pb::Balancer::Unspecified | pb::Balancer::P2cPeakEwma) => BalancerKind::P2cPeakEwma,
            Ok(pb::Balancer::RoundRobin) => BalancerKind::RoundRobin,
            Err(_) => {
                return Err(InvalidValue::new(
                    "balancer",
                    format!("unknown balancer {}", p.balancer),
                ))
            }
        };
        let defaults = RetryBudget::default();
        let retry_budget = match &p.retry_budget {
            None => defaults,
            Some(b) => RetryBudget {
                ratio: b.ratio,
                min_retries_per_second: b.min_retries_per_second,
                ttl: ms_or(b.ttl_ms, defaults.ttl),
            },
        };
        let policy = BackendPolicy {
            balancer,
            retry_budget,
            circuit_breaker: p
                .circuit_breaker
                .as_ref()
                .map(CircuitBreaker::try_from)
                .transpose()
                .map_err(|e| e.within("circuit_breaker"))?,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl From<&BackendPolicy> for pb::BackendPolicy {
    fn from(p: &BackendPolicy) -> Self {
        pb::BackendPolicy {
            balancer: match p.balancer {
                BalancerKind::P2cPeakEwma => pb::Balancer::P2cPeakEwma,
                BalancerKind::RoundRobin => pb::Balancer::RoundRobin,
            } as i32,
            retry_budget: Some(pb::RetryBudget {
                ratio: p.retry_budget.ratio,
                min_retries_per_second: p.retry_budget.min_retries_per_second,
                ttl_ms: ms(p.retry_budget.ttl),
            }),
            circuit_breaker: p.circuit_breaker.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<&pb::CircuitBreaker> for CircuitBreaker {
    type Error = InvalidValue;

    /// Zero `consecutive_failures`, `base_ejection_ms` and `max_ejection_ms` take the
    /// defaults; `max_ejected_percent` is taken as given.
    fn try_from(c: &pb::CircuitBreaker) -> Result<Self, Self::Error> {
        let defaults = CircuitBreaker::default();
        let cb = CircuitBreaker {
            consecutive_failures: if c.consecutive_failures == 0 {
                defaults.consecutive_failures
            } else {
                c.consecutive_failures
            },
            base_ejection: ms_or(c.base_ejection_ms, defaults.base_ejection),
            max_ejection: ms_or(c.max_ejection_ms, defaults.max_ejection),
            max_ejected_percent: c.max_ejected_percent,
        };
        cb.validate()?;
        Ok(cb)
    }
}

impl From<&CircuitBreaker> for pb::CircuitBreaker {
    fn from(c: &CircuitBreaker) -> Self {
        pb::CircuitBreaker {
            consecutive_failures: c.consecutive_failures,
            // Never 0, which would mean the default.
            base_ejection_ms: ms(c.base_ejection).max(1),
            max_ejection_ms: ms(c.max_ejection).max(1),
            max_ejected_percent: c.max_ejected_percent,
        }
    }
}

impl TryFrom<&pb::ServiceProfile> for ServiceProfile {
    type Error = InvalidValue;

    fn try_from(p: &pb::ServiceProfile) -> Result<Self, Self::Error> {
        let profile = ServiceProfile {
            routes: p
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route::try_from(r).map_err(|e| e.within(format!("routes[{i}]"))))
                .collect::<Result<_, _>>()?,
            policy: p
                .policy
                .as_ref()
                .map(BackendPolicy::try_from)
                .transpose()
                .map_err(|e| e.within("policy"))?
                .unwrap_or_default(),
        };
        profile.validate()?;
        Ok(profile)
    }
}

impl From<&ServiceProfile> for pb::ServiceProfile {
    fn from(p: &ServiceProfile) -> Self {
        pb::ServiceProfile {
            routes: p.routes.iter().map(Into::into).collect(),
            policy: Some((&p.policy).into()),
        }
    }
}

/// The model's inbound TLS mode from its wire value (unspecified: permissive).
pub fn inbound_tls_from_proto(raw: i32, field: &str) -> Result<InboundTls, InvalidValue> {
    match pb::InboundTls::try_from(raw) {
        Ok(pb::InboundTls::Unspecified | pb::InboundTls::Permissive) => Ok(InboundTls::Permissive),
        Ok(pb::InboundTls::Strict) => Ok(InboundTls::Strict),
        Ok(pb::InboundTls::Disabled) => Ok(InboundTls::Disabled),
        Err(_) => Err(InvalidValue::new(
            field,
            format!("unknown inbound TLS mode {raw}"),
        )),
    }
}

pub fn inbound_tls_to_proto(t: InboundTls) -> pb::InboundTls {
    match t {
        InboundTls::Permissive => pb::InboundTls::Permissive,
        InboundTls::Strict => pb::InboundTls::Strict,
        InboundTls::Disabled => pb::InboundTls::Disabled,
    }
}

/// The model's default policy from its wire value (unspecified: all-unauthenticated).
pub fn default_policy_from_proto(raw: i32, field: &str) -> Result<DefaultPolicy, InvalidValue> {
    use pb::DefaultPolicy as P;
    Ok(match P::try_from(raw) {
        Ok(P::Unspecified | P::AllUnauthenticated) => DefaultPolicy::AllUnauthenticated,
        Ok(P::AllAuthenticated) => DefaultPolicy::AllAuthenticated,
        Ok(P::ClusterAuthenticated) => DefaultPolicy::ClusterAuthenticated,
        Ok(P::Deny) => DefaultPolicy::Deny,
        Ok(P::AuditAllAuthenticated) => DefaultPolicy::AuditAllAuthenticated,
        Ok(P::AuditClusterAuthenticated) => DefaultPolicy::AuditClusterAuthenticated,
        Ok(P::AuditDeny) => DefaultPolicy::AuditDeny,
        Err(_) => {
            return Err(InvalidValue::new(
                field,
                format!("unknown default policy {raw}"),
            ))
        }
    })
}

pub fn default_policy_to_proto(p: DefaultPolicy) -> pb::DefaultPolicy {
    use pb::DefaultPolicy as P;
    match p {
        DefaultPolicy::AllUnauthenticated => P::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated => P::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated => P::ClusterAuthenticated,
        DefaultPolicy::Deny => P::Deny,
        DefaultPolicy::AuditAllAuthenticated => P::AuditAllAuthenticated,
        DefaultPolicy::AuditClusterAuthenticated => P::AuditClusterAuthenticated,
        DefaultPolicy::AuditDeny => P::AuditDeny,
    }
}

fn client_from_proto(c: &pb::ClientMatch) -> Result<ClientMatch, InvalidValue> {
    use pb::client_match::Kind as K;
    Ok(match &c.kind {
        Some(K::Identity(s)) => ClientMatch::Identity(s.clone()),
        Some(K::Namespace(s)) => ClientMatch::Namespace(s.clone()),
        Some(K::Authenticated(_)) => ClientMatch::Authenticated,
        Some(K::Unauthenticated(_)) => ClientMatch::Unauthenticated,
        Some(K::Network(s)) => {
            ClientMatch::Network(Cidr::parse(s).map_err(|e| e.within("network"))?)
        }
        None => {
            return Err(InvalidValue::new(
                "kind",
                "is required (identity, namespace, authenticated, unauthenticated or network)",
            ))
        }
    })
}

fn client_to_proto(c: &ClientMatch) -> pb::ClientMatch {
    use pb::client_match::Kind as K;
    pb::ClientMatch {
        kind: Some(match c {
            ClientMatch::Identity(s) => K::Identity(s.clone()),
            ClientMatch::Namespace(s) => K::Namespace(s.clone()),
            ClientMatch::Authenticated => K::Authenticated(pb::Empty {}),
            ClientMatch::Unauthenticated => K::Unauthenticated(pb::Empty {}),
            ClientMatch::Network(n) => K::Network(n.to_string()),
        }),
    }
}

/// An authorization from its message; `trust_domain` is the mesh's (for
/// `cluster-authenticated` and namespace matches). Absent: all-unauthenticated.
pub fn authorization_from_proto(
    a: Option<&pb::Authorization>,
    trust_domain: &str,
) -> Result<Authorization, InvalidValue> {
    let Some(a) = a else {
        return Ok(Authorization::new(
            DefaultPolicy::AllUnauthenticated,
            Vec::new(),
            trust_domain,
        ));
    };
    let default = default_policy_from_proto(a.default_policy, "default_policy")?;
    let rules = a
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let within = |e: InvalidValue| e.within(format!("rules[{i}]"));
            let clients = r
                .clients
                .iter()
                .enumerate()
                .map(|(j, c)| client_from_proto(c).map_err(|e| e.within(format!("clients[{j}]"))))
                .collect::<Result<_, _>>()
                .map_err(within)?;
            let routes = r
                .routes
                .iter()
                .enumerate()
                .map(|(j, m)| RouteMatch::try_from(m).map_err(|e| e.within(format!("routes[{j}]"))))
                .collect::<Result<_, _>>()
                .map_err(within)?;
            let rule = Rule {
                name: r.name.as_str().into(),
                clients,
                routes,
                audit: r.audit,
            };
            rule.validate().map_err(within)?;
            Ok(rule)
        })
        .collect::<Result<_, InvalidValue>>()?;
    Ok(Authorization::new(default, rules, trust_domain))
}

impl From<&Authorization> for pb::Authorization {
    fn from(a: &Authorization) -> Self {
        pb::Authorization {
            default_policy: default_policy_to_proto(a.default_policy()) as i32,
            rules: a
                .rules()
                .iter()
                .map(|r| pb::AuthorizationRule {
                    name: r.name.to_string(),
                    clients: r.clients.iter().map(client_to_proto).collect(),
                    routes: r.routes.iter().map(Into::into).collect(),
                    audit: r.audit,
                })
                .collect(),
        }
    }
}

/// A port's policy from its message.
pub fn port_policy_from_proto(
    p: &pb::InboundPolicy,
    trust_domain: &str,
) -> Result<PortPolicy, InvalidValue> {
    Ok(PortPolicy {
        server: p.server.clone(),
        protocol: protocol_from_proto(p.protocol, "protocol")?,
        tls: inbound_tls_from_proto(p.tls, "tls")?,
        authorization: authorization_from_proto(p.authorization.as_ref(), trust_domain)
            .map_err(|e| e.within("authorization"))?,
    })
}

impl From<&PortPolicy> for pb::InboundPolicy {
    fn from(p: &PortPolicy) -> Self {
        pb::InboundPolicy {
            server: p.server.clone(),
            protocol: protocol_to_proto(p.protocol) as i32,
            tls: inbound_tls_to_proto(p.tls) as i32,
            authorization: Some((&p.authorization).into()),
        }
    }
}

fn egress_match_from_proto(m: &pb::EgressMatch) -> Result<EgressMatch, InvalidValue> {
    use pb::egress_match::Kind as K;
    match &m.kind {
        Some(K::Host(h)) => Ok(EgressMatch::Host(h.to_ascii_lowercase())),
        Some(K::Network(n)) => Ok(EgressMatch::Network(
            Cidr::parse(n).map_err(|e| e.within("network"))?,
        )),
        None => Err(InvalidValue::new("kind", "is required (host or network)")),
    }
}

fn egress_match_to_proto(m: &EgressMatch) -> pb::EgressMatch {
    use pb::egress_match::Kind as K;
    pb::EgressMatch {
        kind: Some(match m {
            EgressMatch::Host(h) => K::Host(h.clone()),
            EgressMatch::Network(n) => K::Network(n.to_string()),
        }),
    }
}

impl TryFrom<&pb::Egress> for Egress {
    type Error = InvalidValue;

    fn try_from(e: &pb::Egress) -> Result<Self, Self::Error> {
        let list = |l: &[pb::EgressMatch], field: &str| {
            l.iter()
                .enumerate()
                .map(|(i, m)| {
                    egress_match_from_proto(m).map_err(|e| e.within(format!("{field}[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let egress = Egress {
            name: e.name.as_str().into(),
            default_allow: e.default_allow,
            allow: list(&e.allow, "allow")?,
            deny: list(&e.deny, "deny")?,
            audit: e.audit,
        };
        egress.validate()?;
        Ok(egress)
    }
}

impl From<&Egress> for pb::Egress {
    fn from(e: &Egress) -> Self {
        pb::Egress {
            default_allow: e.default_allow,
            allow: e.allow.iter().map(egress_match_to_proto).collect(),
            deny: e.deny.iter().map(egress_match_to_proto).collect(),
            audit: e.audit,
            name: e.name.to_string(),
        }
    }
}

/// A workload's policy from its message; errors name the field (`ports[8080].tls`).
/// `trust_domain` is the mesh's. An absent `default_port` is the detect / permissive /
/// all-unauthenticated default.
pub fn workload_policy_from_proto(
    p: &pb::WorkloadPolicy,
    trust_domain: &str,
) -> Result<WorkloadPolicy, InvalidValue> {
    let mut ports = std::collections::HashMap::with_capacity(p.ports.len());
    for (port, policy) in &p.ports {
        let field = format!("ports[{port}]");
        let n = u16::try_from(*port)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| InvalidValue::new(field.clone(), "is not a TCP port"))?;
        ports.insert(
            n,
            port_policy_from_proto(policy, trust_domain).map_err(|e| e.within(&field))?,
        );
    }
    let default_port = match &p.default_port {
        Some(d) => port_policy_from_proto(d, trust_domain).map_err(|e| e.within("default_port"))?,
        None => PortPolicy {
            authorization: authorization_from_proto(None, trust_domain)?,
            ..Default::default()
        },
    };
    let egress = p
        .egress
        .as_ref()
        .map(|e| Egress::try_from(e).map_err(|e| e.within("egress")))
        .transpose()?;
    Ok(WorkloadPolicy {
        ports,
        default_port,
        egress,
    })
}

impl From<&WorkloadPolicy> for pb::WorkloadPolicy {
    fn from(w: &WorkloadPolicy) -> Self {
        pb::WorkloadPolicy {
            ports: w
                .ports
                .iter()
                .map(|(port, p)| (u32::from(*port), p.into()))
                .collect(),
            default_port: Some((&w.default_port).into()),
            egress: w.egress.as_ref().map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_endpoint_names_the_field() {
        let e = pb::Endpoint {
            address: Some(pb::TcpAddress {
                ip: vec![1, 2, 3],
                port: 80,
            }),
            ..Default::default()
        };
        let err = endpoints_from_proto(&[e]).unwrap_err();
        assert_eq!(err.field, "endpoints[0].address.ip");
        let e = pb::Endpoint::default();
        assert_eq!(Endpoint::try_from(&e).unwrap_err().field, "address");
        let e = pb::Endpoint {
            address: Some(addr_to_proto(SocketAddr::from(([10, 0, 0, 1], 80)))),
            protocol: 99,
            ..Default::default()
        };
        let err = endpoints_from_proto(&[e]).unwrap_err();
        assert_eq!(err.field, "endpoints[0].protocol");
    }

    #[test]
    fn absent_protocol_is_detect() {
        let e = pb::Endpoint {
            address: Some(addr_to_proto(SocketAddr::from(([10, 0, 0, 1], 80)))),
            ..Default::default()
        };
        assert_eq!(
            Endpoint::try_from(&e).unwrap().protocol,
            AppProtocol::Detect
        );
    }

    #[test]
    fn profile_round_trips_through_proto() {
        let yaml = r#"
routes:
  - name: api
    matches: [ { path: { prefix: /api }, method: GET, headers: [ { name: x-v, regex: "v[0-9]" } ] } ]
    backends: [ { authority: "a:80", weight: 9 }, { authority: "b:80", weight: 1 } ]
    timeout: 1500ms
    retry: { max_retries: 3, on: [5xx, grpc], grpc_codes: [4, 14] }
    retryable: true
    request_headers:
      set: [ { name: x-env, value: prod }, { name: X-Empty } ]
      add: [ { name: x-via, value: "mesh, proxy" } ]
      remove: [ x-debug ]
  - name: rest
policy:
  balancer: round_robin
  retry_budget: { ratio: 0.5, min_retries_per_second: 3, ttl: 5s }
  circuit_breaker: { consecutive_failures: 3, base_ejection: 1500ms, max_ejection: 1m, max_ejected_percent: 0 }
"#;
        let p: ServiceProfile = serde_yaml_ng::from_str(yaml).unwrap();
        p.validate().unwrap();
        let msg = pb::ServiceProfile::from(&p);
        let back = ServiceProfile::try_from(&msg).unwrap();
        assert_eq!(p, back);
    }

    #[test]
    fn invalid_route_from_wire_is_rejected() {
        let msg = pb::ServiceProfile {
            routes: vec![pb::Route {
                name: "r".into(),
                backends: vec![pb::WeightedBackend {
                    authority: "no port".into(),
                    weight: 1,
                }],
                ..Default::default()
            }],
            policy: None,
        };
        let err = ServiceProfile::try_from(&msg).unwrap_err();
        assert_eq!(err.field, "routes[0].backends[0].authority");
    }

    #[test]
    fn absent_fields_take_defaults() {
        let msg = pb::ServiceProfile {
            routes: vec![pb::Route {
                name: "r".into(),
                ..Default::default()
            }],
            policy: Some(pb::BackendPolicy {
                circuit_breaker: Some(pb::CircuitBreaker {
                    max_ejected_percent: 30,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let p = ServiceProfile::try_from(&msg).unwrap();
        assert!(p.routes[0].request_headers.is_empty());
        assert_eq!(
            p.policy.circuit_breaker,
            Some(CircuitBreaker {
                max_ejected_percent: 30,
                ..CircuitBreaker::default()
            })
        );
        // No circuit breaker message: off. An empty modifier is not sent at all.
        let p = ServiceProfile::try_from(&pb::ServiceProfile {
            routes: vec![],
            policy: Some(pb::BackendPolicy::default()),
        })
        .unwrap();
        assert_eq!(p.policy.circuit_breaker, None);
        let route = Route::try_from(&msg.routes[0]).unwrap();
        assert_eq!(pb::Route::from(&route).request_headers, None);
    }

    #[test]
    fn invalid_header_modifier_and_circuit_breaker_name_the_field() {
        let msg = pb::ServiceProfile {
            routes: vec![pb::Route {
                name: "r".into(),
                request_headers: Some(pb::HeaderModifier {
                    set: vec![pb::HeaderValue {
                        name: "x-ok".into(),
                        value: "fine".into(),
                    }],
                    add: vec![pb::HeaderValue {
                        name: "x-bad".into(),
                        value: "line\r\nbreak".into(),
                    }],
                    remove: vec![],
                }),
                ..Default::default()
            }],
            policy: None,
        };
        let err = ServiceProfile::try_from(&msg).unwrap_err();
        assert_eq!(err.field, "routes[0].request_headers.add[0].value");
        let msg = pb::Route {
            name: "r".into(),
            request_headers: Some(pb::HeaderModifier {
                remove: vec!["ok".into(), "bad name".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Route::try_from(&msg).unwrap_err();
        assert_eq!(err.field, "request_headers.remove[1]");
        let msg = pb::BackendPolicy {
            circuit_breaker: Some(pb::CircuitBreaker {
                base_ejection_ms: 60_000,
                max_ejection_ms: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = BackendPolicy::try_from(&msg).unwrap_err();
        assert_eq!(err.field, "circuit_breaker.max_ejection");
        let msg = pb::BackendPolicy {
            circuit_breaker: Some(pb::CircuitBreaker {
                max_ejected_percent: 101,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = BackendPolicy::try_from(&msg).unwrap_err();
        assert_eq!(err.field, "circuit_breaker.max_ejected_percent");
    }

    proptest! {
        #[test]
        fn circuit_breaker_round_trips(failures in 1u32..100, base_ms in 1u64..100_000, extra_ms in 0u64..1_000_000, percent in 0u32..=100) {
            let cb = CircuitBreaker {
                consecutive_failures: failures,
                base_ejection: Duration::from_millis(base_ms),
                max_ejection: Duration::from_millis(base_ms + extra_ms),
                max_ejected_percent: percent,
            };
            cb.validate().unwrap();
            let back = CircuitBreaker::try_from(&pb::CircuitBreaker::from(&cb)).unwrap();
            prop_assert_eq!(cb, back);
        }

        #[test]
        fn endpoint_round_trips(a in any::<[u8; 4]>(), port in 1u16.., weight in 1u32..1000, meshed in any::<Option<u16>>(), protocol in 0usize..5) {
            let mut e = Endpoint::new(SocketAddr::from((a, port)));
            e.weight = weight;
            e.protocol = [
                AppProtocol::Detect,
                AppProtocol::Http1,
                AppProtocol::Http2,
                AppProtocol::Grpc,
                AppProtocol::Opaque,
            ][protocol];
            if let Some(p) = meshed {
                e.hint = ProtocolHint::MeshedH2 { inbound_port: (p != 0).then_some(p) };
            }
            let back = Endpoint::try_from(&pb::Endpoint::from(&e)).unwrap();
            prop_assert_eq!(e, back);
        }

        #[test]
        fn arbitrary_addresses_never_panic(ip in proptest::collection::vec(any::<u8>(), 0..20), port in any::<u32>()) {
            let _ = addr_from_proto(&pb::TcpAddress { ip, port });
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    fn shop_policy() -> WorkloadPolicy {
        let rules = vec![
            Rule {
                name: "shop/orders/create".into(),
                clients: vec![
                    ClientMatch::Identity("spiffe://cluster.local/ns/shop/sa/web".into()),
                    ClientMatch::Namespace("ops".into()),
                    ClientMatch::Network(Cidr::parse("10.0.0.0/8").unwrap()),
                ],
                routes: vec![RouteMatch {
                    method: Some("POST".into()),
                    path: Some(PathMatch::Exact("/api/orders".into())),
                    ..Default::default()
                }],
                audit: false,
            },
            Rule {
                name: "shop/orders/health".into(),
                clients: vec![ClientMatch::Authenticated, ClientMatch::Unauthenticated],
                routes: vec![],
                audit: true,
            },
        ];
        let mut ports = std::collections::HashMap::new();
        ports.insert(
            8080,
            PortPolicy {
                server: "shop/orders".into(),
                protocol: AppProtocol::Http1,
                tls: InboundTls::Strict,
                authorization: Authorization::new(DefaultPolicy::Deny, rules, "cluster.local"),
            },
        );
        WorkloadPolicy {
            ports,
            default_port: PortPolicy {
                authorization: Authorization::new(
                    DefaultPolicy::AuditClusterAuthenticated,
                    vec![],
                    "cluster.local",
                ),
                tls: InboundTls::Disabled,
                ..Default::default()
            },
            egress: Some(Egress {
                name: "shop/out".into(),
                default_allow: false,
                allow: vec![EgressMatch::Host("*.example.com".into())],
                deny: vec![EgressMatch::Network(Cidr::parse("192.0.2.0/24").unwrap())],
                audit: true,
            }),
        }
    }

    #[test]
    fn workload_policy_round_trips() {
        let w = shop_policy();
        let msg = pb::WorkloadPolicy::from(&w);
        assert_eq!(
            workload_policy_from_proto(&msg, "cluster.local").unwrap(),
            w
        );
    }

    #[test]
    fn empty_message_is_the_open_default() {
        let w =
            workload_policy_from_proto(&pb::WorkloadPolicy::default(), "cluster.local").unwrap();
        assert_eq!(w, WorkloadPolicy::default());
        assert!(w.egress.is_none());
        // The protocol-only messages of earlier controllers still convert.
        let mut msg = pb::WorkloadPolicy::default();
        msg.ports.insert(
            5432,
            pb::InboundPolicy {
                protocol: pb::Protocol::Opaque as i32,
                ..Default::default()
            },
        );
        let w = workload_policy_from_proto(&msg, "cluster.local").unwrap();
        assert_eq!(w.port(5432).protocol, AppProtocol::Opaque);
        assert_eq!(w.port(5432).tls, InboundTls::Permissive);
        assert_eq!(
            w.port(5432).authorization.default_policy(),
            DefaultPolicy::AllUnauthenticated
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        let p = msg.ports.get_mut(&8080).unwrap();
        p.authorization.as_mut().unwrap().rules[0].clients[2] = pb::ClientMatch {
            kind: Some(pb::client_match::Kind::Network("10.0.0.0/99".into())),
        };
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(
            e.field,
            "ports[8080].authorization.rules[0].clients[2].network"
        );

        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        msg.ports.get_mut(&8080).unwrap().tls = 42;
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(e.field, "ports[8080].tls");

        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        msg.default_port
            .as_mut()
            .unwrap()
            .authorization
            .as_mut()
            .unwrap()
            .default_policy = 99;
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(e.field, "default_port.authorization.default_policy");

        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        msg.egress
            .as_mut()
            .unwrap()
            .allow
            .push(pb::EgressMatch { kind: None });
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(e.field, "egress.allow[1].kind");

        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        msg.ports.insert(0, pb::InboundPolicy::default());
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(e.field, "ports[0]");

        let mut msg = pb::WorkloadPolicy::from(&shop_policy());
        let rule = &mut msg
            .ports
            .get_mut(&8080)
            .unwrap()
            .authorization
            .as_mut()
            .unwrap()
            .rules[0];
        rule.clients[0] = pb::ClientMatch {
            kind: Some(pb::client_match::Kind::Identity("web".into())),
        };
        let e = workload_policy_from_proto(&msg, "cluster.local").unwrap_err();
        assert_eq!(
            e.field,
            "ports[8080].authorization.rules[0].clients[0].identity"
        );
    }
}
