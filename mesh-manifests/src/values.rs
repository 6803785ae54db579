//! The install values: one table of keys ([`KEYS`]) with their type, default and help text,
//! shared by `meshctl install --set`/`-f`, the Helm chart's `values.yaml` and
//! `values.schema.json`, and the ConfigMap that records what was installed.
//!
//! [`Values`] holds the effective values as a JSON tree. Every way in (`--set`, a values
//! file, a stored `values.yaml`) goes through the same checks: an unknown key is an error
//! naming the nearest valid one, a value of the wrong type names the type expected.

use serde_json::{Map, Value};

/// What a key holds, and so what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Any string. An integer is accepted and kept as its text (`tag: 1` means `"1"`).
    Str,
    /// A DNS-1123 label (a namespace name).
    DnsLabel,
    /// A DNS subdomain (a cluster or trust domain).
    Domain,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// `true` or `false`.
    Bool,
    /// A Kubernetes resource quantity (`100m`, `64Mi`), or `""` where that means "none".
    Quantity { empty_ok: bool },
    /// A duration such as `24h`, `90m`, `30s`.
    Duration,
    /// PEM text (or `""`: filled in by `meshctl install`, required by the chart).
    Pem,
    /// An open map of string values (labels, annotations, a node selector).
    StringMap,
    /// A list copied as is (tolerations).
    List,
}

impl Kind {
    /// The type's name in error messages.
    pub fn describe(self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::DnsLabel => "a DNS label (lower-case letters, digits and '-', at most 63)".into(),
            Kind::Domain => "a DNS domain such as cluster.local".into(),
            Kind::Enum(options) => format!("one of {}", options.join(", ")),
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Bool => "true or false".into(),
            Kind::Quantity { empty_ok: true } => {
                "a Kubernetes quantity such as 100m or 64Mi, or \"\" for none".into()
            }
            Kind::Quantity { empty_ok: false } => {
                "a Kubernetes quantity such as 100m or 64Mi".into()
            }
            Kind::Duration => "a duration such as 24h, 90m or 30s".into(),
            Kind::Pem => "PEM text".into(),
            Kind::StringMap => "a mapping of names to strings".into(),
            Kind::List => "a list".into(),
        }
    }
}

/// One key of the values.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// Dotted path, e.g. `controller.replicas`.
    pub path: &'static str,
    pub kind: Kind,
    /// The default as YAML text (`"2"`, `"true"`, `"mesh-system"`, `"{}"`).
    pub default: &'static str,
    /// One line of help (the comment in the chart's values.yaml).
    pub help: &'static str,
}

/// What a non-string in an open map must be.
const QUOTE_IT: &str = "a string (quote it in YAML, or use --set-string)";

const LOG_HELP: &str = "log filter (tracing EnvFilter syntax), e.g. info or mesh_controller=debug";

/// Every key, in the order of the chart's values.yaml.
pub const KEYS: &[Key] = &[
    Key { path: "namespace", kind: Kind::DnsLabel, default: "mesh-system", help: "the mesh's namespace (created by the install)" },
    Key { path: "clusterDomain", kind: Kind::Domain, default: "cluster.local", help: "the cluster's DNS domain (<svc>.<ns>.svc.<domain>)" },
    Key { path: "trustDomain", kind: Kind::Domain, default: "cluster.local", help: "the SPIFFE trust domain of workload identities" },
    Key { path: "imagePullPolicy", kind: Kind::Enum(&["IfNotPresent", "Always", "Never"]), default: "IfNotPresent", help: "pull policy of the controller's image" },
    Key { path: "gatewayAPI.installCRDs", kind: Kind::Bool, default: "true", help: "install the Gateway API HTTPRoute and GRPCRoute CRDs (v1.5.1, standard channel); false when the cluster already has them" },
    Key { path: "controller.image.repository", kind: Kind::Str, default: "mesh-controller", help: "the controller's image" },
    Key { path: "controller.image.tag", kind: Kind::Str, default: "", help: "its tag; \"\" = the mesh's version" },
    Key { path: "controller.replicas", kind: Kind::Int { min: 1, max: 100 }, default: "2", help: "controller replicas (one writes status, elected by a Lease; all serve proxies)" },
    Key { path: "controller.logLevel", kind: Kind::Str, default: "info", help: LOG_HELP },
    Key { path: "controller.resources.cpuRequest", kind: Kind::Quantity { empty_ok: false }, default: "100m", help: "CPU request" },
    Key { path: "controller.resources.memoryRequest", kind: Kind::Quantity { empty_ok: false }, default: "64Mi", help: "memory request" },
    Key { path: "controller.resources.cpuLimit", kind: Kind::Quantity { empty_ok: true }, default: "", help: "CPU limit; \"\" = none" },
    Key { path: "controller.resources.memoryLimit", kind: Kind::Quantity { empty_ok: true }, default: "256Mi", help: "memory limit; \"\" = none" },
    Key { path: "controller.nodeSelector", kind: Kind::StringMap, default: "{}", help: "node labels the controller's pods must match" },
    Key { path: "controller.tolerations", kind: Kind::List, default: "[]", help: "tolerations of the controller's pods (copied as is)" },
    Key { path: "controller.podAnnotations", kind: Kind::StringMap, default: "{}", help: "annotations of the controller's pods" },
    Key { path: "controller.podDisruptionBudget.minAvailable", kind: Kind::Int { min: 0, max: 100 }, default: "1", help: "controller pods kept up during voluntary disruptions (node drains)" },
    Key { path: "proxy.image.repository", kind: Kind::Str, default: "mesh-proxy", help: "the injected proxy's image (also runs mesh-init)" },
    Key { path: "proxy.image.tag", kind: Kind::Str, default: "", help: "its tag; \"\" = the mesh's version" },
    Key { path: "proxy.logLevel", kind: Kind::Str, default: "info", help: "log filter of injected proxies" },
    Key { path: "proxy.nativeSidecar", kind: Kind::Bool, default: "true", help: "inject the proxy as a native sidecar (Kubernetes 1.29+); false: the first container" },
    Key { path: "proxy.initContainer", kind: Kind::Bool, default: "true", help: "add the mesh-init container (iptables; needs NET_ADMIN and NET_RAW); false where a CNI plugin redirects traffic" },
    Key { path: "proxy.resources.cpuRequest", kind: Kind::Quantity { empty_ok: false }, default: "10m", help: "CPU request of injected proxies" },
    Key { path: "proxy.resources.memoryRequest", kind: Kind::Quantity { empty_ok: false }, default: "20Mi", help: "memory request of injected proxies" },
    Key { path: "proxy.resources.cpuLimit", kind: Kind::Quantity { empty_ok: true }, default: "", help: "CPU limit of injected proxies; \"\" = none" },
    Key { path: "proxy.resources.memoryLimit", kind: Kind::Quantity { empty_ok: true }, default: "", help: "memory limit of injected proxies; \"\" = none" },
    Key { path: "webhook.failurePolicy", kind: Kind::Enum(&["Ignore", "Fail"]), default: "Ignore", help: "when the injector cannot answer: Ignore (admit the pod without a proxy) or Fail (refuse it)" },
    Key { path: "webhook.timeoutSeconds", kind: Kind::Int { min: 1, max: 30 }, default: "5", help: "how long the API server waits for the injector" },
    Key { path: "identity.leafLifetime", kind: Kind::Duration, default: "24h", help: "lifetime of proxies' certificates" },
    Key { path: "certificates.trustAnchorsPEM", kind: Kind::Pem, default: "", help: "trust anchor certificates (PEM bundle)" },
    Key { path: "certificates.issuerCrtPEM", kind: Kind::Pem, default: "", help: "issuer certificate, signed by a trust anchor" },
    Key { path: "certificates.issuerKeyPEM", kind: Kind::Pem, default: "", help: "issuer private key (PKCS#8)" },
    Key { path: "certificates.webhookCrtPEM", kind: Kind::Pem, default: "", help: "the injector's serving certificate (SANs mesh-controller.<namespace>.svc[.<clusterDomain>])" },
    Key { path: "certificates.webhookKeyPEM", kind: Kind::Pem, default: "", help: "its private key" },
    Key { path: "certificates.webhookCaPEM", kind: Kind::Pem, default: "", help: "the CA that signed the serving certificate (the webhook's caBundle)" },
];

/// Help of the groups, for the chart's values.yaml.
pub const GROUPS: &[(&str, &str)] = &[
    ("gatewayAPI", "Gateway API CRDs the mesh relies on"),
    ("controller", "the control plane (mesh-controller)"),
    ("controller.image", "image"),
    ("controller.resources", "resources of each controller pod"),
    ("controller.podDisruptionBudget", "PodDisruptionBudget"),
    ("proxy", "defaults of injected proxies, read by the injector from the mesh-config ConfigMap"),
    ("proxy.image", "image"),
    ("proxy.resources", "resources of each injected proxy"),
    ("webhook", "the mutating admission webhook that injects proxies"),
    ("identity", "workload identity (mTLS)"),
    (
        "certificates",
        "PEM text. meshctl install fills empty ones (generated, or from --identity-* files); the Helm chart requires all six",
    ),
];

/// The key at `path`.
pub fn key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// A value that cannot be taken, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesError {
    #[error("{}unknown value {key}{}", origin_prefix(.origin), suggestion_text(.suggestion))]
    Unknown {
        key: String,
        suggestion: Option<String>,
        origin: Option<String>,
    },
    #[error("{}value {key}: expected {expected}, got {found}", origin_prefix(.origin))]
    WrongType {
        key: String,
        expected: String,
        found: String,
        origin: Option<String>,
    },
    #[error("{}{message}", origin_prefix(.origin))]
    Syntax {
        message: String,
        origin: Option<String>,
    },
}

fn origin_prefix(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default()
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => " (the keys are listed in charts/mesh/values.yaml)".into(),
    }
}

/// The effective values, a JSON tree with every key of [`KEYS`].
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    tree: Value,
}

impl Values {
    /// The defaults of every key.
    pub fn defaults() -> Values {
        let mut tree = Value::Object(Map::new());
        for k in KEYS {
            put(&mut tree, k.path, default_of(k));
        }
        Values { tree }
    }

    /// Applies `--set` text: `a.b=c`, several separated by commas (`\,` is a literal
    /// comma). Like Helm, `true`/`false` are booleans, integers are integers, `null`
    /// restores the default and anything else is a string. A key inside an open map
    /// (`controller.nodeSelector.disktype=ssd`) sets that entry.
    pub fn set(&mut self, expr: &str) -> Result<(), ValuesError> {
        for part in split_unescaped(expr, ',') {
            let Some((path, text)) = part.split_once('=') else {
                return Err(ValuesError::Syntax {
                    message: format!("--set {part}: expected key=value"),
                    origin: None,
                });
            };
            let path = path.trim();
            let typed = helm_typed(text);
            self.assign(path, typed, None)?;
        }
        Ok(())
    }

    /// Sets `path` to the string `value` as is (`--set-string`, `--set-file`, PEMs).
    pub fn set_string(&mut self, path: &str, value: &str) -> Result<(), ValuesError> {
        self.assign(path, Value::String(value.to_string()), None)
    }

    /// Merges a values file (`-f`) over the current values. `origin` names the file in
    /// errors.
    pub fn merge_yaml(&mut self, text: &str, origin: &str) -> Result<(), ValuesError> {
        let doc = parse_mapping(text, origin)?;
        self.merge_tree("", &doc, origin, None)
    }

    /// The values of an installed mesh (its ConfigMap's `values.yaml`) merged over the
    /// defaults, for an upgrade. Keys this version does not know are dropped and returned
    /// (dotted paths), so that the caller can say so.
    pub fn from_installed(values_yaml: &str) -> Result<(Values, Vec<String>), ValuesError> {
        let origin = "the installed values (ConfigMap mesh-config, key values.yaml)";
        let doc = parse_mapping(values_yaml, origin)?;
        let mut values = Values::defaults();
        let mut dropped = Vec::new();
        values.merge_tree("", &doc, origin, Some(&mut dropped))?;
        Ok((values, dropped))
    }

    /// The value at a dotted path (a key, a group, or an entry of an open map).
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(&self.tree, |node, seg| node.as_object()?.get(seg))
    }

    /// The string at `path`, `""` when it is not a string (for keys known to be strings).
    pub(crate) fn str(&self, path: &str) -> &str {
        self.get(path).and_then(Value::as_str).unwrap_or("")
    }

    /// Every value.
    pub fn to_json(&self) -> Value {
        self.tree.clone()
    }

    /// Every value but `certificates` (what the ConfigMap records: no keys in ConfigMaps).
    pub fn without_certificates(&self) -> Value {
        let mut tree = self.tree.clone();
        if let Some(map) = tree.as_object_mut() {
            map.remove("certificates");
        }
        tree
    }

    fn assign(
        &mut self,
        path: &str,
        value: Value,
        origin: Option<&str>,
    ) -> Result<(), ValuesError> {
        if let Some(k) = key(path) {
            let value = match value {
                Value::Null => default_of(k),
                v => coerce(k, v, origin)?,
            };
            put(&mut self.tree, k.path, value);
            return Ok(());
        }
        // An entry of an open map.
        if let Some(k) = KEYS.iter().find(|k| {
            k.kind == Kind::StringMap
                && path
                    .strip_prefix(k.path)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        }) {
            let entry = &path[k.path.len() + 1..];
            let map = ensure_object(&mut self.tree, k.path);
            match value {
                Value::Null => {
                    map.remove(entry);
                }
                Value::String(s) => {
                    map.insert(entry.to_string(), Value::String(s));
                }
                Value::Number(n) => {
                    map.insert(entry.to_string(), Value::String(n.to_string()));
                }
                other => {
                    return Err(ValuesError::WrongType {
                        key: path.to_string(),
                        expected: QUOTE_IT.into(),
                        found: describe_value(&other),
                        origin: origin.map(str::to_string),
                    })
                }
            }
            return Ok(());
        }
        if is_group(path) {
            return Err(ValuesError::WrongType {
                key: path.to_string(),
                expected: format!("a mapping of its keys ({})", children_of(path).join(", ")),
                found: describe_value(&value),
                origin: origin.map(str::to_string),
            });
        }
        Err(unknown(path, origin))
    }

    /// Merges `doc` (a mapping at `prefix`) into the values. With `dropped`, unknown keys
    /// are collected there instead of failing.
    fn merge_tree(
        &mut self,
        prefix: &str,
        doc: &Map<String, Value>,
        origin: &str,
        mut dropped: Option<&mut Vec<String>>,
    ) -> Result<(), ValuesError> {
        for (name, value) in doc {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if let Some(k) = key(&path) {
                match (k.kind, value) {
                    // Helm merges maps key by key.
                    (Kind::StringMap, Value::Object(entries)) => {
                        for (entry, v) in entries {
                            self.assign(&format!("{path}.{entry}"), v.clone(), Some(origin))?;
                        }
                    }
                    _ => self.assign(&path, value.clone(), Some(origin))?,
                }
            } else if is_group(&path) {
                match value {
                    Value::Object(children) => {
                        self.merge_tree(&path, children, origin, dropped.as_deref_mut())?
                    }
                    Value::Null => {}
                    other => {
                        return Err(ValuesError::WrongType {
                            key: path.clone(),
                            expected: format!(
                                "a mapping of its keys ({})",
                                children_of(&path).join(", ")
                            ),
                            found: describe_value(other),
                            origin: Some(origin.to_string()),
                        })
                    }
                }
            } else if let Some(dropped) = dropped.as_deref_mut() {
                dropped.push(path);
            } else {
                return Err(unknown(&path, Some(origin)));
            }
        }
        Ok(())
    }
}

/// Whether `path` is a group of keys (`controller`, `controller.resources`).
fn is_group(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The names directly under a group.
fn children_of(path: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        if let Some(rest) = k.path.strip_prefix(path).and_then(|r| r.strip_prefix('.')) {
            let child = rest.split('.').next().unwrap_or(rest);
            if !out.contains(&child) {
                out.push(child);
            }
        }
    }
    out
}

fn unknown(path: &str, origin: Option<&str>) -> ValuesError {
    ValuesError::Unknown {
        key: path.to_string(),
        suggestion: suggest(path),
        origin: origin.map(str::to_string),
    }
}

/// The valid key nearest to `path`: a key ending in `path` (`replicas` ->
/// `controller.replicas`), else the closest by edit distance when it is close enough.
pub fn suggest(path: &str) -> Option<String> {
    let lower = path.to_ascii_lowercase();
    let mut candidates: Vec<String> = KEYS.iter().map(|k| k.path.to_string()).collect();
    candidates.extend(GROUPS.iter().map(|(g, _)| g.to_string()));
    if let Some(c) = candidates
        .iter()
        .find(|c| c.to_ascii_lowercase().ends_with(&format!(".{lower}")))
    {
        return Some(c.clone());
    }
    let (best, dist) = candidates
        .iter()
        .map(|c| (c, strsim::levenshtein(&lower, &c.to_ascii_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    let limit = (path.len() / 3).max(2);
    (dist <= limit).then(|| best.clone())
}

fn default_of(k: &Key) -> Value {
    match k.kind {
        Kind::Int { .. } => k
            .default
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::Null),
        Kind::Bool => Value::Bool(k.default == "true"),
        Kind::StringMap => Value::Object(Map::new()),
        Kind::List => Value::Array(Vec::new()),
        _ => Value::String(k.default.to_string()),
    }
}

/// Checks `value` against the key's kind; integers given for string keys become their text.
fn coerce(k: &Key, value: Value, origin: Option<&str>) -> Result<Value, ValuesError> {
    let wrong = |found: &Value| ValuesError::WrongType {
        key: k.path.to_string(),
        expected: k.kind.describe(),
        found: describe_value(found),
        origin: origin.map(str::to_string),
    };
    let invalid = |text: &str| ValuesError::WrongType {
        key: k.path.to_string(),
        expected: k.kind.describe(),
        found: format!("{text:?}"),
        origin: origin.map(str::to_string),
    };
    let text = match (&k.kind, &value) {
        (Kind::Int { min, max }, Value::Number(n)) => {
            return match n.as_i64() {
                Some(i) if (*min..=*max).contains(&i) => Ok(Value::from(i)),
                _ => Err(wrong(&value)),
            }
        }
        (Kind::Int { .. }, _) => return Err(wrong(&value)),
        (Kind::Bool, Value::Bool(_)) => return Ok(value),
        (Kind::Bool, _) => return Err(wrong(&value)),
        (Kind::StringMap, Value::Object(map)) => {
            let mut out = Map::new();
            for (name, v) in map {
                match v {
                    Value::String(_) => out.insert(name.clone(), v.clone()),
                    Value::Number(n) => out.insert(name.clone(), Value::String(n.to_string())),
                    other => {
                        return Err(ValuesError::WrongType {
                            key: format!("{}.{name}", k.path),
                            expected: QUOTE_IT.into(),
                            found: describe_value(other),
                            origin: origin.map(str::to_string),
                        })
                    }
                };
            }
            return Ok(Value::Object(out));
        }
        (Kind::StringMap, _) => return Err(wrong(&value)),
        (Kind::List, Value::Array(_)) => return Ok(value),
        (Kind::List, _) => return Err(wrong(&value)),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(wrong(&value)),
    };
    let ok = match k.kind {
        Kind::Str | Kind::Pem => true,
        Kind::DnsLabel => is_dns_label(&text),
        Kind::Domain => !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label),
        Kind::Enum(options) => options.contains(&text.as_str()),
        Kind::Quantity { empty_ok } => (empty_ok && text.is_empty()) || is_quantity(&text),
        Kind::Duration => is_duration(&text),
        Kind::Int { .. } | Kind::Bool | Kind::StringMap | Kind::List => true,
    };
    if ok {
        Ok(Value::String(text))
    } else {
        Err(invalid(&text))
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Helm's `--set` typing.
fn helm_typed(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match text.parse::<i64>() {
            // Helm parses decimal integers (ParseInt); "+1" stays text here, so that a
            // quantity such as "+1" keeps its spelling.
            Ok(i) if !text.starts_with('+') => Value::from(i),
            _ => Value::String(text.to_string()),
        },
    }
}

/// Splits at `sep` not preceded by a backslash; `\,` becomes `,`.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&sep) {
            if let (Some(last), Some(next)) = (parts.last_mut(), chars.next()) {
                last.push(next);
            }
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn parse_mapping(text: &str, origin: &str) -> Result<Map<String, Value>, ValuesError> {
    let syntax = |message: String| ValuesError::Syntax {
        message,
        origin: Some(origin.to_string()),
    };
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        syntax(format!("{at}not valid YAML: {e}"))
    })?;
    let json: Value = match yaml {
        serde_yaml_ng::Value::Null => return Ok(Map::new()),
        serde_yaml_ng::Value::Mapping(_) => serde_json::to_value(&yaml).map_err(|e| {
            syntax(format!(
                "cannot read the values (keys must be strings, numbers finite): {e}"
            ))
        })?,
        other => {
            let found = match other {
                serde_yaml_ng::Value::Sequence(_) => "a list",
                serde_yaml_ng::Value::String(_) => "a string",
                _ => "a single value",
            };
            return Err(syntax(format!(
                "line 1: expected a mapping of values (key: value lines), found {found}"
            )));
        }
    };
    match json {
        Value::Object(map) => Ok(map),
        _ => Err(syntax("line 1: expected a mapping of values".into())),
    }
}

fn put(tree: &mut Value, path: &str, value: Value) {
    let map = match path.rsplit_once('.') {
        Some((parent, _)) => ensure_object(tree, parent),
        None => object_of(tree),
    };
    let last = path.rsplit('.').next().unwrap_or(path);
    map.insert(last.to_string(), value);
}

/// The object at `path`, created (or replacing a non-object) on the way.
fn ensure_object<'a>(tree: &'a mut Value, path: &str) -> &'a mut Map<String, Value> {
    let mut node = tree;
    for seg in path.split('.') {
        node = object_of(node)
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    object_of(node)
}

/// `v` as an object, made one first if it is not.
fn object_of(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object just above"),
    }
}

/// A DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`n u m k M G T P E`) or exponent (`e3`) suffix.
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

/// A duration as the controller reads it (humantime: `24h`, `1h30m`, `90s`), at least 1 s.
pub fn is_duration(s: &str) -> bool {
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        if !matches!(&rest[..u], "h" | "m" | "s" | "d") {
            return false;
        }
        rest = &rest[u..];
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_every_key() {
        let v = Values::defaults();
        for k in KEYS {
            assert!(v.get(k.path).is_some(), "{}", k.path);
        }
        assert_eq!(v.get("controller.replicas"), Some(&Value::from(2)));
        assert_eq!(v.get("proxy.nativeSidecar"), Some(&Value::Bool(true)));
    }

    #[test]
    fn set_types_like_helm() {
        let mut v = Values::defaults();
        v.set("controller.replicas=3,proxy.nativeSidecar=false,controller.image.tag=1")
            .unwrap();
        assert_eq!(v.get("controller.replicas"), Some(&Value::from(3)));
        assert_eq!(v.get("proxy.nativeSidecar"), Some(&Value::Bool(false)));
        assert_eq!(v.get("controller.image.tag"), Some(&Value::from("1")));
        v.set("controller.nodeSelector.disktype=ssd").unwrap();
        assert_eq!(
            v.get("controller.nodeSelector.disktype"),
            Some(&Value::from("ssd"))
        );
        v.set("controller.podAnnotations.a=x\\,y").unwrap();
        assert_eq!(
            v.get("controller.podAnnotations.a"),
            Some(&Value::from("x,y"))
        );
        v.set("controller.replicas=null").unwrap();
        assert_eq!(v.get("controller.replicas"), Some(&Value::from(2)));
    }

    #[test]
    fn unknown_keys_suggest() {
        let mut v = Values::defaults();
        let e = v.set("controler.replicas=3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown value controler.replicas (did you mean controller.replicas?)"
        );
        let e = v.set("replicas=3").unwrap_err();
        assert!(
            e.to_string().contains("did you mean controller.replicas?"),
            "{e}"
        );
        let e = v.set("zzzzzz=1").unwrap_err();
        assert!(e.to_string().contains("unknown value zzzzzz ("), "{e}");
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let mut v = Values::defaults();
        let e = v.set("controller.replicas=many").unwrap_err();
        assert_eq!(
            e.to_string(),
            "value controller.replicas: expected an integer from 1 to 100, got the string \"many\""
        );
        let e = v.set("webhook.failurePolicy=Maybe").unwrap_err();
        assert!(e.to_string().contains("one of Ignore, Fail"), "{e}");
        let e = v.set("controller.resources.cpuRequest=lots").unwrap_err();
        assert!(e.to_string().contains("quantity"), "{e}");
        let e = v.set("controller=1").unwrap_err();
        assert!(e.to_string().contains("a mapping of its keys"), "{e}");
        let e = v.set("controller.tolerations=x").unwrap_err();
        assert!(e.to_string().contains("expected a list"), "{e}");
    }

    #[test]
    fn quantities_and_durations() {
        for q in ["100m", "64Mi", "1", "0.5", "1e3", "2Gi", "+1"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "m", "1.2.3", "10mb", "1e", "abc"] {
            assert!(!is_quantity(q), "{q}");
        }
        assert!(
            is_duration("24h") && is_duration("1h30m") && !is_duration("24") && !is_duration("")
        );
    }

    #[test]
    fn files_merge_and_report_file_and_line() {
        let mut v = Values::defaults();
        v.merge_yaml(
            "controller:\n  replicas: 4\n  nodeSelector: {a: b}\n  resources: {cpuLimit: 1}\n",
            "my.yaml",
        )
        .unwrap();
        assert_eq!(v.get("controller.replicas"), Some(&Value::from(4)));
        assert_eq!(v.get("controller.nodeSelector.a"), Some(&Value::from("b")));
        assert_eq!(
            v.get("controller.resources.cpuLimit"),
            Some(&Value::from("1"))
        );
        let e = v
            .merge_yaml("controller:\n  replica: 4\n", "my.yaml")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "my.yaml: unknown value controller.replica (did you mean controller.replicas?)"
        );
        let e = v.merge_yaml("a: [\n", "bad.yaml").unwrap_err();
        assert!(e.to_string().starts_with("bad.yaml: line 2"), "{e}");
        let e = v.merge_yaml("- a\n", "list.yaml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("list.yaml: line 1: expected a mapping"),
            "{e}"
        );
    }

    #[test]
    fn installed_values_drop_unknown_keys() {
        let (v, dropped) =
            Values::from_installed("controller:\n  replicas: 3\n  old: x\ngone: 1\n").unwrap();
        assert_eq!(v.get("controller.replicas"), Some(&Value::from(3)));
        assert_eq!(
            dropped,
            vec!["controller.old".to_string(), "gone".to_string()]
        );
        assert!(v.without_certificates().get("certificates").is_none());
    }
}
