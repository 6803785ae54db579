//! Gateway API routes (the GAMMA mesh profile) turned into the proxy's routes.
//!
//! An `HTTPRoute` or `GRPCRoute` whose `parentRefs` name a Service applies to requests to
//! that Service. Each (rule, match) pair becomes one proxy route, ordered by Gateway API
//! precedence (exact path, then longest prefix, then method, then most header matches, then
//! most query matches, then the oldest route, then name, then rule order), because the proxy
//! takes the first route that matches. Problems are reported as conditions rather than
//! errors: a route that cannot be honoured is not applied (`Accepted: False`), a route with a
//! missing backend is applied without it (`ResolvedRefs: False`).

use std::cmp::Reverse;
use std::time::Duration;

use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRulesMatchesMethodType};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use kube::ResourceExt;
use mesh_core::{
    Authority, HeaderMatch, HeaderModifier, HeaderValue, PathMatch, Pattern, QueryParamMatch,
    Route, RouteMatch, WeightedBackend,
};

use crate::objects::{ObjKey, Objects};
use crate::status::Condition;
use mesh_core::route::ValueMatch;

/// A route's reference to a Service it attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub service: ObjKey,
    pub port: Option<u16>,
    /// The reference as written (for status `parentRef`).
    pub raw: serde_json::Value,
}

fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

macro_rules! parents_of {
    ($route:expr) => {{
        let route = $route;
        let ns = route.namespace().unwrap_or_else(|| "default".into());
        let mut out = Vec::new();
        for p in route.spec.parent_refs.iter().flatten() {
            if p.kind.as_deref() == Some("Service") && is_core_group(p.group.as_deref()) {
                out.push(ParentRef {
                    service: ObjKey::new(
                        p.namespace.clone().unwrap_or_else(|| ns.clone()),
                        p.name.clone(),
                    ),
                    port: p.port.and_then(|p| u16::try_from(p).ok()),
                    raw: serde_json::to_value(p).unwrap_or_default(),
                });
            }
        }
        out
    }};
}

/// The Service parents of an HTTPRoute.
pub fn http_parent_refs(r: &HttpRoute) -> Vec<ParentRef> {
    parents_of!(r)
}

/// The Service parents of a GRPCRoute.
pub fn grpc_parent_refs(r: &GrpcRoute) -> Vec<ParentRef> {
    parents_of!(r)
}

pub fn http_parents(r: &HttpRoute) -> Vec<ObjKey> {
    http_parent_refs(r).into_iter().map(|p| p.service).collect()
}

pub fn grpc_parents(r: &GrpcRoute) -> Vec<ObjKey> {
    grpc_parent_refs(r).into_iter().map(|p| p.service).collect()
}

/// Sort key implementing Gateway API match precedence (smaller sorts first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    queries: Reverse<usize>,
    created: String,
    route: ObjKey,
    rule: usize,
    matched: usize,
}

/// One proxy route from one (rule, match) of a Gateway API route.
#[derive(Clone, Debug)]
pub struct Entry {
    pub rank: Rank,
    pub route: Route,
}

/// What every match of one rule shares.
struct RuleParts<'a> {
    key: &'a ObjKey,
    created: &'a str,
    rule_name: Option<&'a str>,
    rule: usize,
    /// Number of matches in the rule (names get a `.N` suffix when there are several).
    matches: usize,
    backends: Vec<WeightedBackend>,
    timeout: Option<Duration>,
    headers: HeaderModifier,
}

impl RuleParts<'_> {
    /// The proxy route for match `matched` of the rule, ranked by Gateway API precedence,
    /// which follows from the match itself.
    fn entry(&self, matched: usize, m: RouteMatch) -> Entry {
        let (path_kind, path_len) = match &m.path {
            Some(PathMatch::Exact(p)) => (0, p.len()),
            Some(PathMatch::Prefix(p)) => (1, p.len()),
            Some(PathMatch::Regex(p)) => (2, p.as_str().len()),
            None => (1, 1),
        };
        Entry {
            rank: Rank {
                path_kind,
                path_len: Reverse(path_len),
                no_method: m.method.is_none(),
                headers: Reverse(m.headers.len()),
                queries: Reverse(m.query_params.len()),
                created: self.created.to_string(),
                route: self.key.clone(),
                rule: self.rule,
                matched,
            },
            route: Route {
                name: route_name(self.key, self.rule_name, self.rule, matched, self.matches),
                matches: vec![m],
                backends: self.backends.clone(),
                timeout: self.timeout,
                retry: None,
                retryable: false,
                request_headers: self.headers.clone(),
            },
        }
    }
}

/// A route object, converted.
#[derive(Clone, Debug)]
pub struct Converted {
    pub entries: Vec<Entry>,
    /// `Err((reason, message))` when the route cannot be applied at all.
    pub accepted: Result<(), (String, String)>,
    /// `Err((reason, message))` when some backendRef does not resolve.
    pub resolved: Result<(), (String, String)>,
}

impl Converted {
    /// The conditions of one parent entry of the route's status.
    pub fn conditions(&self, generation: Option<i64>) -> Vec<Condition> {
        let accepted = match &self.accepted {
            Ok(()) => Condition::ok("Accepted", "Accepted", "route applied", generation),
            Err((r, m)) => Condition::fail("Accepted", r, m, generation),
        };
        let resolved = match &self.resolved {
            Ok(()) => Condition::ok(
                "ResolvedRefs",
                "ResolvedRefs",
                "all backendRefs resolve",
                generation,
            ),
            Err((r, m)) => Condition::fail("ResolvedRefs", r, m, generation),
        };
        vec![accepted, resolved]
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("'{text}' is not a duration: {e}"))
}

/// Builds the backend list of a rule, checking that each Service exists in the route's
/// namespace.
fn backends<'a>(
    objs: &Objects,
    ns: &str,
    cluster_domain: &str,
    refs: impl Iterator<
        Item = (
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            Option<i32>,
            Option<i32>,
        ),
    >,
    where_: &str,
    resolved: &mut Result<(), (String, String)>,
) -> Result<Vec<WeightedBackend>, (String, String)> {
    let mut out = Vec::new();
    for (i, (group, kind, name, namespace, port, weight)) in refs.enumerate() {
        let field = format!("{where_}.backendRefs[{i}]");
        if !is_core_group(group) || kind.is_some_and(|k| k != "Service") {
            set_first(
                resolved,
                "InvalidKind",
                format!("{field}: only Services can be backends"),
            );
            continue;
        }
        let bns = namespace.unwrap_or(ns);
        if bns != ns {
            set_first(
                resolved,
                "RefNotPermitted",
                format!("{field}: backend in namespace '{bns}' (cross-namespace backends are not supported yet)"),
            );
            continue;
        }
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else {
            return Err((
                "UnsupportedValue".into(),
                format!("{field}.port: a Service backend needs a port"),
            ));
        };
        let weight = u32::try_from(weight.unwrap_or(1)).map_err(|_| {
            (
                "UnsupportedValue".to_string(),
                format!("{field}.weight: must not be negative"),
            )
        })?;
        if !objs.services.contains_key(&ObjKey::new(bns, name)) {
            set_first(
                resolved,
                "BackendNotFound",
                format!("{field}: Service {bns}/{name} does not exist"),
            );
        }
        let authority =
            Authority::parse(&format!("{name}.{bns}.svc.{cluster_domain}:{port}"), None)
                .map_err(|e| ("UnsupportedValue".to_string(), format!("{field}: {e}")))?;
        out.push(WeightedBackend { authority, weight });
    }
    Ok(out)
}

fn set_first(slot: &mut Result<(), (String, String)>, reason: &str, msg: String) {
    if slot.is_ok() {
        *slot = Err((reason.into(), msg));
    }
}

fn value_match(regex: bool, value: &str, field: &str) -> Result<ValueMatch, (String, String)> {
    if regex {
        Pattern::new(value)
            .map(ValueMatch::Regex)
            .map_err(|e| ("UnsupportedValue".into(), format!("{field}: {e}")))
    } else {
        Ok(ValueMatch::Exact(value.into()))
    }
}

fn header_modifier(
    set: impl Iterator<Item = (String, String)>,
    add: impl Iterator<Item = (String, String)>,
    remove: Vec<String>,
) -> HeaderModifier {
    let hv = |(name, value)| HeaderValue { name, value };
    HeaderModifier {
        set: set.map(hv).collect(),
        add: add.map(hv).collect(),
        remove,
    }
}

/// The `RequestHeaderModifier` of a rule (HTTPRoute and GRPCRoute filters have the same
/// shape but different generated types); any other filter makes the route unsupported.
macro_rules! rule_headers {
    ($rule:expr, $where_:expr) => {{
        let mut headers = Ok(HeaderModifier::default());
        for (fi, f) in $rule.filters.iter().flatten().enumerate() {
            match &f.request_header_modifier {
                Some(m) => {
                    let modifier = header_modifier(
                        m.set.iter().flatten().map(|h| (h.name.clone(), h.value.clone())),
                        m.add.iter().flatten().map(|h| (h.name.clone(), h.value.clone())),
                        m.remove.clone().unwrap_or_default(),
                    );
                    // Named as in the route (`set[0].value`), not as in the proxy's model.
                    if let Err(e) = modifier.validate() {
                        headers = Err((
                            "UnsupportedValue".to_string(),
                            format!("{}.filters[{fi}].requestHeaderModifier.{e}", $where_),
                        ));
                        break;
                    }
                    headers = Ok(modifier);
                }
                None => {
                    headers = Err((
                        "UnsupportedValue".to_string(),
                        format!(
                            "{}.filters[{fi}]: filter type {:?} is not supported (only RequestHeaderModifier)",
                            $where_, f.r#type
                        ),
                    ));
                    break;
                }
            }
        }
        headers
    }};
}

/// The weighted backends of a rule (same field names in both route kinds).
macro_rules! rule_backends {
    ($rule:expr, $objs:expr, $ns:expr, $domain:expr, $where_:expr, $resolved:expr) => {
        backends(
            $objs,
            $ns,
            $domain,
            $rule.backend_refs.iter().flatten().map(|b| {
                (
                    b.group.as_deref(),
                    b.kind.as_deref(),
                    b.name.as_str(),
                    b.namespace.as_deref(),
                    b.port,
                    b.weight,
                )
            }),
            $where_,
            $resolved,
        )
    };
}

fn route_name(
    key: &ObjKey,
    rule_name: Option<&str>,
    rule: usize,
    matched: usize,
    n: usize,
) -> String {
    let rule = rule_name
        .map(str::to_string)
        .unwrap_or_else(|| rule.to_string());
    if n > 1 {
        format!("{}/{}/{rule}.{matched}", key.namespace, key.name)
    } else {
        format!("{}/{}/{rule}", key.namespace, key.name)
    }
}

fn timestamp(meta: &kube::api::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// Converts an HTTPRoute.
pub fn convert_http(r: &HttpRoute, objs: &Objects, cluster_domain: &str) -> Converted {
    let key = ObjKey::of(r);
    let created = timestamp(&r.metadata);
    let mut resolved = Ok(());
    let mut entries = Vec::new();
    let result: Result<(), (String, String)> = (|| {
        for (ri, rule) in r.spec.rules.iter().flatten().enumerate() {
            let where_ = format!("spec.rules[{ri}]");
            let headers = rule_headers!(rule, where_)?;
            if rule
                .backend_refs
                .iter()
                .flatten()
                .any(|b| b.filters.as_ref().is_some_and(|f| !f.is_empty()))
            {
                return Err((
                    "UnsupportedValue".into(),
                    format!("{where_}.backendRefs[].filters are not supported"),
                ));
            }
            let backends = rule_backends!(
                rule,
                objs,
                &key.namespace,
                cluster_domain,
                &where_,
                &mut resolved
            )?;
            let timeout = match rule.timeouts.as_ref().and_then(|t| t.request.as_deref()) {
                Some(t) => Some(parse_duration(t).map_err(|e| {
                    (
                        "UnsupportedValue".to_string(),
                        format!("{where_}.timeouts.request: {e}"),
                    )
                })?)
                .filter(|d| !d.is_zero()),
                None => None,
            };
            let default_match = [Default::default()];
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m,
                _ => &default_match[..],
            };
            let parts = RuleParts {
                key: &key,
                created: &created,
                rule_name: rule.name.as_deref(),
                rule: ri,
                matches: matches.len(),
                backends,
                timeout,
                headers,
            };
            for (mi, m) in matches.iter().enumerate() {
                let mwhere = format!("{where_}.matches[{mi}]");
                let path = match &m.path {
                    None => None,
                    Some(p) => {
                        let v = p.value.clone().unwrap_or_else(|| "/".into());
                        match p
                            .r#type
                            .clone()
                            .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
                        {
                            HttpRouteRulesMatchesPathType::Exact => Some(PathMatch::Exact(v)),
                            HttpRouteRulesMatchesPathType::PathPrefix => Some(PathMatch::Prefix(v)),
                            HttpRouteRulesMatchesPathType::RegularExpression => {
                                let pat = Pattern::new(&v).map_err(|e| {
                                    (
                                        "UnsupportedValue".to_string(),
                                        format!("{mwhere}.path: {e}"),
                                    )
                                })?;
                                Some(PathMatch::Regex(pat))
                            }
                        }
                    }
                };
                let mut hm = Vec::new();
                for (hi, h) in m.headers.iter().flatten().enumerate() {
                    let regex =
                        h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression);
                    hm.push(HeaderMatch {
                        name: h.name.to_ascii_lowercase(),
                        value: value_match(regex, &h.value, &format!("{mwhere}.headers[{hi}]"))?,
                    });
                }
                let mut qm = Vec::new();
                for (qi, q) in m.query_params.iter().flatten().enumerate() {
                    let regex =
                        q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression);
                    qm.push(QueryParamMatch {
                        name: q.name.clone(),
                        value: value_match(
                            regex,
                            &q.value,
                            &format!("{mwhere}.queryParams[{qi}]"),
                        )?,
                    });
                }
                let method = m.method.as_ref().map(|m| {
                    serde_json::to_value(m)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                });
                entries.push(parts.entry(
                    mi,
                    RouteMatch {
                        path,
                        headers: hm,
                        method,
                        query_params: qm,
                    },
                ));
            }
        }
        Ok(())
    })();
    finish(entries, result, resolved)
}

/// Converts a GRPCRoute: a method match becomes a path match on `/service/method`.
pub fn convert_grpc(r: &GrpcRoute, objs: &Objects, cluster_domain: &str) -> Converted {
    let key = ObjKey::of(r);
    let created = timestamp(&r.metadata);
    let mut resolved = Ok(());
    let mut entries = Vec::new();
    let result: Result<(), (String, String)> = (|| {
        for (ri, rule) in r.spec.rules.iter().flatten().enumerate() {
            let where_ = format!("spec.rules[{ri}]");
            let headers = rule_headers!(rule, where_)?;
            let backends = rule_backends!(
                rule,
                objs,
                &key.namespace,
                cluster_domain,
                &where_,
                &mut resolved
            )?;
            let default_match = [Default::default()];
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m,
                _ => &default_match[..],
            };
            let parts = RuleParts {
                key: &key,
                created: &created,
                rule_name: rule.name.as_deref(),
                rule: ri,
                matches: matches.len(),
                backends,
                timeout: None,
                headers,
            };
            for (mi, m) in matches.iter().enumerate() {
                let mwhere = format!("{where_}.matches[{mi}]");
                let path = match &m.method {
                    None => None,
                    Some(meth) => {
                        let regex =
                            meth.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression);
                        let service = meth.service.as_deref().unwrap_or("");
                        let method = meth.method.as_deref().unwrap_or("");
                        match (regex, service.is_empty(), method.is_empty()) {
                            (false, false, false) => {
                                Some(PathMatch::Exact(format!("/{service}/{method}")))
                            }
                            (false, false, true) => Some(PathMatch::Prefix(format!("/{service}/"))),
                            (false, true, false) => {
                                let p = format!("/[^/]+/{}", regex_escape(method));
                                let pat = Pattern::new(&p).map_err(|e| {
                                    (
                                        "UnsupportedValue".to_string(),
                                        format!("{mwhere}.method: {e}"),
                                    )
                                })?;
                                Some(PathMatch::Regex(pat))
                            }
                            (true, _, _) => {
                                let s = if service.is_empty() { "[^/]+" } else { service };
                                let m = if method.is_empty() { "[^/]+" } else { method };
                                let p = format!("/{s}/{m}");
                                let pat = Pattern::new(&p).map_err(|e| {
                                    (
                                        "UnsupportedValue".to_string(),
                                        format!("{mwhere}.method: {e}"),
                                    )
                                })?;
                                Some(PathMatch::Regex(pat))
                            }
                            (false, true, true) => {
                                return Err((
                                    "UnsupportedValue".into(),
                                    format!("{mwhere}.method: needs a service or a method"),
                                ))
                            }
                        }
                    }
                };
                let mut hm = Vec::new();
                for (hi, h) in m.headers.iter().flatten().enumerate() {
                    let regex = serde_json::to_value(&h.r#type)
                        .ok()
                        .and_then(|v| v.as_str().map(|s| s == "RegularExpression"))
                        .unwrap_or(false);
                    hm.push(HeaderMatch {
                        name: h.name.to_ascii_lowercase(),
                        value: value_match(regex, &h.value, &format!("{mwhere}.headers[{hi}]"))?,
                    });
                }
                entries.push(parts.entry(
                    mi,
                    RouteMatch {
                        path,
                        headers: hm,
                        method: None,
                        query_params: Vec::new(),
                    },
                ));
            }
        }
        Ok(())
    })();
    finish(entries, result, resolved)
}

fn finish(
    entries: Vec<Entry>,
    result: Result<(), (String, String)>,
    resolved: Result<(), (String, String)>,
) -> Converted {
    match result {
        Ok(()) => {
            // A rule whose backends all weigh 0 would be rejected by the proxy's validation.
            if let Some(e) = entries.iter().find(|e| {
                !e.route.backends.is_empty() && e.route.backends.iter().all(|b| b.weight == 0)
            }) {
                return Converted {
                    entries: Vec::new(),
                    accepted: Err((
                        "UnsupportedValue".into(),
                        format!("route {}: every backendRef has weight 0", e.route.name),
                    )),
                    resolved,
                };
            }
            if let Some((e, err)) = entries
                .iter()
                .find_map(|e| e.route.validate().err().map(|err| (e, err)))
            {
                return Converted {
                    entries: Vec::new(),
                    accepted: Err((
                        "UnsupportedValue".into(),
                        format!("route {}: {err}", e.route.name),
                    )),
                    resolved,
                };
            }
            Converted {
                entries,
                accepted: Ok(()),
                resolved,
            }
        }
        Err(e) => Converted {
            entries: Vec::new(),
            accepted: Err(e),
            resolved,
        },
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The name of a route kind and object, for messages.
pub fn describe<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{} {}", K::kind(&()), ObjKey::of(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(yaml: &str) -> HttpRoute {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn matches_sort_by_gateway_api_precedence() {
        let r = http(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: a}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules:
  - name: catch-all
    backendRefs: [{name: web, port: 80}]
  - name: short
    matches: [{path: {type: PathPrefix, value: /api}}]
  - name: long
    matches: [{path: {type: PathPrefix, value: /api/v2}}]
  - name: headers
    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "1"}]}]
  - name: exact
    matches: [{path: {type: Exact, value: /api}}]
"#,
        );
        let conv = convert_http(&r, &Objects::default(), "cluster.local");
        assert!(conv.accepted.is_ok());
        assert_eq!(
            conv.resolved.as_ref().unwrap_err().0,
            "BackendNotFound",
            "Service a/web is not in the store"
        );
        let mut entries = conv.entries;
        entries.sort_by(|x, y| x.rank.cmp(&y.rank));
        let names: Vec<&str> = entries.iter().map(|e| e.route.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a/r/exact",
                "a/r/long",
                "a/r/headers",
                "a/r/short",
                "a/r/catch-all"
            ]
        );
        assert_eq!(entries[2].route.matches[0].headers[0].name, "x-canary");
    }

    #[test]
    fn grpc_methods_become_paths_and_unsupported_filters_reject() {
        let r: GrpcRoute = serde_yaml_ng::from_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: a}
spec:
  parentRefs: [{kind: Service, group: "", name: api}]
  rules:
  - matches: [{method: {service: pkg.Svc, method: Get}}, {method: {service: pkg.Other}}]
"#,
        )
        .unwrap();
        let conv = convert_grpc(&r, &Objects::default(), "cluster.local");
        let paths: Vec<_> = conv
            .entries
            .iter()
            .map(|e| e.route.matches[0].path.clone().unwrap())
            .collect();
        assert_eq!(paths[0], PathMatch::Exact("/pkg.Svc/Get".into()));
        assert_eq!(paths[1], PathMatch::Prefix("/pkg.Other/".into()));

        let r = http(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]
"#,
        );
        let conv = convert_http(&r, &Objects::default(), "cluster.local");
        let (reason, msg) = conv.accepted.unwrap_err();
        assert_eq!(reason, "UnsupportedValue");
        assert!(msg.contains("spec.rules[0].filters[0]"), "{msg}");
    }
}
