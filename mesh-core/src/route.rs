//! HTTP routes: matching a request, choosing among weighted backends, per-route policy.
//! The shape follows Gateway API's HTTPRoute rules (path, header, method and query matches;
//! weighted backendRefs; timeouts) so the same objects work in local mode and on Kubernetes.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use crate::policy::duration_text;
use crate::{Authority, BackendPolicy, InvalidValue, RetryPolicy};

/// A compiled regular expression that serialises as its source text. Matches are anchored:
/// the whole value must match, as in Gateway API.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, InvalidValue> {
        let regex = regex::Regex::new(&format!("^(?:{source})$"))
            .map_err(|e| InvalidValue::new("", format!("invalid regex '{source}': {e}")))?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// How a request path is matched. Written as `{ prefix: /api }`, `{ exact: /x }` or
/// `{ regex: "/v[0-9]+/.*" }`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "OneOf", into = "OneOf")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix: `/api` matches `/api` and `/api/v1`, not `/apis`.
    Prefix(String),
    Regex(Pattern),
}

impl PathMatch {
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || (path.starts_with(p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) if !p.starts_with('/') => Err(
                InvalidValue::new("", format!("path '{p}' must start with '/'")),
            ),
            _ => Ok(()),
        }
    }
}

/// The text form of a match: exactly one of the fields is set.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OneOf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<Pattern>,
}

impl TryFrom<OneOf> for PathMatch {
    type Error = String;
    fn try_from(o: OneOf) -> Result<Self, String> {
        match (o.exact, o.prefix, o.regex) {
            (Some(e), None, None) => Ok(PathMatch::Exact(e)),
            (None, Some(p), None) => Ok(PathMatch::Prefix(p)),
            (None, None, Some(r)) => Ok(PathMatch::Regex(r)),
            _ => Err("a path match needs exactly one of `exact`, `prefix` or `regex`".into()),
        }
    }
}

impl From<PathMatch> for OneOf {
    fn from(p: PathMatch) -> Self {
        match p {
            PathMatch::Exact(e) => OneOf {
                exact: Some(e),
                ..Default::default()
            },
            PathMatch::Prefix(p) => OneOf {
                prefix: Some(p),
                ..Default::default()
            },
            PathMatch::Regex(r) => OneOf {
                regex: Some(r),
                ..Default::default()
            },
        }
    }
}

/// The text form of a value match: `exact` or `regex`.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ValueOneOf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<Pattern>,
}

impl TryFrom<ValueOneOf> for ValueMatch {
    type Error = String;
    fn try_from(o: ValueOneOf) -> Result<Self, String> {
        match (o.exact, o.regex) {
            (Some(e), None) => Ok(ValueMatch::Exact(e)),
            (None, Some(r)) => Ok(ValueMatch::Regex(r)),
            _ => Err("a value match needs exactly one of `exact` or `regex`".into()),
        }
    }
}

impl From<ValueMatch> for ValueOneOf {
    fn from(v: ValueMatch) -> Self {
        match v {
            ValueMatch::Exact(e) => ValueOneOf {
                exact: Some(e),
                regex: None,
            },
            ValueMatch::Regex(r) => ValueOneOf {
                exact: None,
                regex: Some(r),
            },
        }
    }
}

/// An exact or regex match on a text value.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ValueOneOf", into = "ValueOneOf")]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

impl ValueMatch {
    pub fn is_match(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// A header must be present with a matching value. Header names are case-insensitive.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: ValueMatch,
}

/// A query parameter must be present with a matching value.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryParamMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: ValueMatch,
}

/// All conditions must hold for the match to accept a request.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

impl RouteMatch {
    /// Whether the request (its method, URI and headers) satisfies every condition.
    pub fn is_match(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bool {
        if let Some(m) = &self.method {
            if m != method.as_str() {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.is_match(uri.path()) {
                return false;
            }
        }
        for h in &self.headers {
            let found = headers
                .get_all(h.name.as_str())
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| h.value.is_match(v)));
            if !found {
                return false;
            }
        }
        for q in &self.query_params {
            let query = uri.query().unwrap_or("");
            let found = query.split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == q.name && q.value.is_match(v)
            });
            if !found {
                return false;
            }
        }
        true
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        if let Some(p) = &self.path {
            p.validate().map_err(|e| e.within("path"))?;
        }
        if let Some(m) = &self.method {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(InvalidValue::new(
                    "method",
                    format!("'{m}' is not an upper-case HTTP method such as GET"),
                ));
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() || h.name.is_empty() {
                return Err(InvalidValue::new(
                    format!("headers[{i}].name"),
                    format!("'{}' is not a valid header name", h.name),
                ));
            }
        }
        for (i, q) in self.query_params.iter().enumerate() {
            if q.name.is_empty() {
                return Err(InvalidValue::new(
                    format!("query_params[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// A backend of a route and its share of traffic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub authority: Authority,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A header name and value, for [`HeaderModifier`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderValue {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Headers that a [`HeaderModifier`] may not touch: the hop-by-hop headers (they describe
/// one connection, and the proxy manages them), `host` (it names the destination),
/// `content-length` (it frames the body) and the mesh's own `mesh-orig-proto`.
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "mesh-orig-proto",
];

/// Changes to a request's headers on a route (Gateway API `RequestHeaderModifier`):
/// `set` replaces any values of the header, `add` appends a value, `remove` deletes the
/// header. Names are case-insensitive; when a name appears twice in `set` or in `add`, the
/// first entry counts and the others are ignored (as Gateway API specifies).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (list, values) in [("set", &self.set), ("add", &self.add)] {
            for (i, h) in values.iter().enumerate() {
                validate_modified_name(&h.name)
                    .map_err(|e| e.within(format!("{list}[{i}].name")))?;
                if http::HeaderValue::from_bytes(h.value.as_bytes()).is_err() {
                    return Err(InvalidValue::new(
                        format!("{list}[{i}].value"),
                        format!(
                            "{:?} is not a valid header value (no control characters such as CR or LF)",
                            h.value
                        ),
                    ));
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            validate_modified_name(name).map_err(|e| e.within(format!("remove[{i}]")))?;
        }
        Ok(())
    }
}

fn validate_modified_name(name: &str) -> Result<(), InvalidValue> {
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(InvalidValue::new(
            "",
            format!("'{name}' is not a valid header name"),
        ));
    }
    if let Some(r) = RESERVED_HEADERS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(InvalidValue::new(
            "",
            format!("the '{r}' header is managed by the proxy and cannot be modified"),
        ));
    }
    Ok(())
}

/// A route: which requests it takes, where they go, and the policy on the way.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// Any match accepts the request; none means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Traffic split; empty means the destination's own endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Requests on this route may be retried whatever their method.
    #[serde(default)]
    pub retryable: bool,
    /// Changes to the request's headers before it is forwarded.
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
}

impl Route {
    pub fn is_match(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.is_match(method, uri, headers))
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        if self.name.is_empty() {
            return Err(InvalidValue::new("name", "a route needs a name"));
        }
        for (i, m) in self.matches.iter().enumerate() {
            m.validate()
                .map_err(|e| e.within(format!("matches[{i}]")))?;
        }
        if !self.backends.is_empty() && self.backends.iter().all(|b| b.weight == 0) {
            return Err(InvalidValue::new(
                "backends",
                "every backend has weight 0; at least one needs a positive weight",
            ));
        }
        let total: u64 = self.backends.iter().map(|b| b.weight as u64).sum();
        if total > u32::MAX as u64 {
            return Err(InvalidValue::new(
                "backends",
                "the weights add up to more than 2^32",
            ));
        }
        if let Some(t) = self.timeout {
            if t.is_zero() {
                return Err(InvalidValue::new(
                    "timeout",
                    "must be positive; omit it for none",
                ));
            }
        }
        if let Some(r) = &self.retry {
            r.validate().map_err(|e| e.within("retry"))?;
        }
        self.request_headers
            .validate()
            .map_err(|e| e.within("request_headers"))
    }

    /// Picks a backend by weight given a uniformly random `roll`. `None` when the route has no
    /// backends (the destination itself is the backend).
    pub fn pick_backend(&self, roll: u32) -> Option<&WeightedBackend> {
        let total: u64 = self.backends.iter().map(|b| b.weight as u64).sum();
        if total == 0 {
            return None;
        }
        let mut point = roll as u64 % total;
        for b in &self.backends {
            if point < b.weight as u64 {
                return Some(b);
            }
            point -= b.weight as u64;
        }
        None
    }
}

/// Routes and backend policy of one service.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceProfile {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    pub policy: BackendPolicy,
}

impl ServiceProfile {
    /// The index of the first route that accepts the request.
    pub fn route_index(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.is_match(method, uri, headers))
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        let mut names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            r.validate().map_err(|e| e.within(format!("routes[{i}]")))?;
            if !names.insert(r.name.as_str()) {
                return Err(InvalidValue::new(
                    format!("routes[{i}].name"),
                    format!("route name '{}' is used twice", r.name),
                ));
            }
        }
        self.policy.validate().map_err(|e| e.within("policy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (http::Method, http::Uri, http::HeaderMap) {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), h)
    }

    #[test]
    fn prefix_is_element_wise() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.is_match("/api"));
        assert!(p.is_match("/api/v1"));
        assert!(!p.is_match("/apis"));
        assert!(PathMatch::Prefix("/".into()).is_match("/anything"));
        assert!(PathMatch::Prefix("/api/".into()).is_match("/api/x"));
    }

    #[test]
    fn route_matches_all_conditions() {
        let yaml = r#"
name: canary
matches:
  - path: { prefix: /api }
    method: GET
    headers: [ { name: X-Canary, exact: "yes" } ]
    query_params: [ { name: v, regex: "[0-9]+" } ]
  - path: { exact: /health }
backends: [ { authority: "web-v2:80", weight: 3 }, { authority: "web-v1:80" } ]
timeout: 2s
retry: { max_retries: 1 }
"#;
        let r: Route = serde_yaml_ng::from_str(yaml).unwrap();
        r.validate().unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        let (m, u, h) = req("GET", "/api/x?v=12", &[("x-canary", "yes")]);
        assert!(r.is_match(&m, &u, &h));
        let (m, u, h) = req("GET", "/api/x?v=1a", &[("x-canary", "yes")]);
        assert!(!r.is_match(&m, &u, &h));
        let (m, u, h) = req("POST", "/api/x?v=1", &[("x-canary", "yes")]);
        assert!(!r.is_match(&m, &u, &h));
        let (m, u, h) = req("DELETE", "/health", &[]);
        assert!(r.is_match(&m, &u, &h));
        assert_eq!(r.pick_backend(0).unwrap().authority.as_str(), "web-v2:80");
        assert_eq!(r.pick_backend(3).unwrap().authority.as_str(), "web-v1:80");
    }

    #[test]
    fn first_matching_route_wins() {
        let p: ServiceProfile = serde_yaml_ng::from_str(
            "routes:\n  - { name: api, matches: [ { path: { prefix: /api } } ] }\n  - { name: rest }\n",
        )
        .unwrap();
        let (m, u, h) = req("GET", "/api/x", &[]);
        assert_eq!(p.route_index(&m, &u, &h), Some(0));
        let (m, u, h) = req("GET", "/other", &[]);
        assert_eq!(p.route_index(&m, &u, &h), Some(1));
        assert_eq!(ServiceProfile::default().route_index(&m, &u, &h), None);
    }

    #[test]
    fn invalid_routes_name_the_field() {
        let r: Route =
            serde_yaml_ng::from_str("name: a\nmatches: [{ path: { exact: nope } }]\n").unwrap();
        assert_eq!(r.validate().unwrap_err().field, "matches[0].path");
        let err =
            serde_yaml_ng::from_str::<Route>("name: a\nmatches: [{ path: { regex: '(' } }]\n")
                .unwrap_err();
        assert!(err.to_string().contains("invalid regex"), "{err}");
        let p: ServiceProfile =
            serde_yaml_ng::from_str("routes: [ { name: a }, { name: a } ]\n").unwrap();
        assert_eq!(p.validate().unwrap_err().field, "routes[1].name");
    }

    #[test]
    fn header_modifier_reads_from_yaml_and_validates() {
        let r: Route = serde_yaml_ng::from_str(
            r#"
name: r
request_headers:
  set: [ { name: X-Env, value: prod } ]
  add: [ { name: x-via, value: mesh }, { name: x-empty } ]
  remove: [ x-debug, Cookie ]
"#,
        )
        .unwrap();
        r.validate().unwrap();
        assert_eq!(
            r.request_headers.set,
            vec![HeaderValue {
                name: "X-Env".into(),
                value: "prod".into()
            }]
        );
        assert_eq!(r.request_headers.add[1].value, "");
        assert_eq!(r.request_headers.remove, vec!["x-debug", "Cookie"]);
        // Empty modifiers are left out of the serialised form.
        let plain: Route = serde_yaml_ng::from_str("name: r\n").unwrap();
        assert!(plain.request_headers.is_empty());
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("request_headers"));
        assert!(
            serde_yaml_ng::from_str::<Route>("name: r\nrequest_headers: { replace: [] }\n")
                .is_err()
        );

        let bad = |yaml: &str| {
            let r: Route = serde_yaml_ng::from_str(yaml).unwrap();
            let e = r.validate().unwrap_err();
            (e.field, e.reason)
        };
        let (field, reason) =
            bad("name: r\nrequest_headers: { set: [ { name: 'x y', value: v } ] }\n");
        assert_eq!(field, "request_headers.set[0].name");
        assert!(reason.contains("not a valid header name"), "{reason}");
        let (field, _) = bad("name: r\nrequest_headers: { add: [ { value: v } ] }\n");
        assert_eq!(field, "request_headers.add[0].name");
        let (field, _) =
            bad("name: r\nrequest_headers: { add: [ { name: x, value: \"a\\nb\" } ] }\n");
        assert_eq!(field, "request_headers.add[0].value");
        for reserved in [
            "Host",
            "connection",
            "Transfer-Encoding",
            "content-length",
            "te",
        ] {
            let (field, reason) = bad(&format!(
                "name: r\nrequest_headers: {{ remove: [ ok, {reserved} ] }}\n"
            ));
            assert_eq!(field, "request_headers.remove[1]");
            assert!(reason.contains("managed by the proxy"), "{reason}");
        }
    }

    proptest! {
        /// Over every roll, each backend gets exactly its weight's share.
        #[test]
        fn split_follows_weights(weights in proptest::collection::vec(0u32..20, 1..6)) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let route = Route {
                name: "r".into(),
                matches: vec![],
                backends: weights.iter().enumerate().map(|(i, w)| WeightedBackend {
                    authority: format!("b{i}:80").parse().unwrap(),
                    weight: *w,
                }).collect(),
                timeout: None,
                retry: None,
                retryable: false,
                request_headers: HeaderModifier::default(),
            };
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for roll in 0..total {
                let b = route.pick_backend(roll).unwrap();
                let i = route.backends.iter().position(|x| x == b).unwrap();
                counts[i] += 1;
            }
            prop_assert_eq!(counts, weights);
        }

        #[test]
        fn matching_never_panics(path in "/[ -~]{0,30}", prefix in "/[a-z/]{0,10}") {
            let m = PathMatch::Prefix(prefix.clone());
            let hit = m.is_match(&path);
            if path == prefix { prop_assert!(hit); }
        }
    }
}
