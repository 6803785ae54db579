//! What the real API server refuses before it stores an object, with its wording: object
//! names (DNS subdomains, DNS labels for Namespaces and Services, path segments for RBAC
//! kinds), EndpointSlice and Endpoints addresses (valid for their family, not unspecified,
//! loopback or link-local), and custom resources against their CRD version's
//! `openAPIV3Schema` (types, required, enum, pattern, bounds, lengths, item and property
//! counts, `nullable`, `x-kubernetes-int-or-string`), after pruning the fields the schema
//! does not declare (kept under `x-kubernetes-preserve-unknown-fields`).
//!
//! Errors are collected as [`FieldError`]s, which render like apimachinery's `field.Error`,
//! and become one 422 `Invalid` Status with a cause per error ([`invalid`]), as
//! `errors.NewInvalid` builds it.
//!
//! The schema checker is written here over `serde_json` rather than taken from a JSON Schema
//! crate: Kubernetes schemas are OpenAPI 3.0 with extensions (`nullable`, int-or-string,
//! preserve-unknown-fields), they prune instead of refusing unknown fields, and the messages
//! must be kube-openapi's, none of which a general-purpose validator provides.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resources::ResourceType;

/// apimachinery's `field.ErrorType`: the kind of a validation error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    TooLong,
    TooMany,
    TypeInvalid,
}

impl ErrorType {
    /// The Status cause `reason` (Go's `CauseType`).
    fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }
}

/// One field-level validation error, as apimachinery's `field.Error`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldError {
    pub(crate) kind: ErrorType,
    /// The field path, e.g. `endpoints[0].addresses[0]`.
    pub(crate) field: String,
    /// The offending value; `None` when the message leaves it out.
    value: Option<Value>,
    detail: String,
}

impl FieldError {
    fn new(kind: ErrorType, field: &str, value: Option<Value>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            field: field.to_string(),
            value,
            detail: detail.into(),
        }
    }

    pub(crate) fn required(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Required, field, None, detail)
    }

    fn invalid(field: &str, value: Value, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value), detail)
    }

    fn not_supported(field: &str, value: Value, supported: &[String]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        let detail = if quoted.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(ErrorType::NotSupported, field, Some(value), detail)
    }

    fn too_long(field: &str, max: u64) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self::new(
            ErrorType::TooLong,
            field,
            None,
            format!("may not be more than {max} {unit}"),
        )
    }

    fn too_many(field: &str, actual: usize, max: u64) -> Self {
        let unit = if max == 1 { "item" } else { "items" };
        Self::new(
            ErrorType::TooMany,
            field,
            Some(json!(actual)),
            format!("must have at most {max} {unit}"),
        )
    }

    /// The message without the field, as Go's `ErrorBody`.
    pub(crate) fn body(&self) -> String {
        let mut s = match (&self.value, self.kind) {
            (None, _) | (_, ErrorType::Required | ErrorType::TooLong) => {
                self.kind.text().to_string()
            }
            (Some(v), _) => format!("{}: {}", self.kind.text(), render_value(v)),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// `field: body`, as Go's `Error()`.
    pub(crate) fn message(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }
}

/// The 422 `Invalid` Status for `errors` about object `name` of `rt`'s kind, worded as
/// `errors.NewInvalid`: `Kind.group "name" is invalid: field: ...` (several errors in
/// brackets, duplicates once), with a cause per error.
pub(crate) fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> ApiError {
    let qualified = if rt.group.is_empty() {
        rt.kind.clone()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    let mut messages: Vec<String> = Vec::new();
    for e in errors {
        let m = e.message();
        if !messages.contains(&m) {
            messages.push(m);
        }
    }
    let aggregate = match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.kind.reason(), "message": e.body(), "field": e.field}))
        .collect();
    let mut details = json!({"kind": rt.kind, "causes": causes});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{qualified} {} is invalid: {aggregate}", go_quote(name)),
        details: Some(details),
    }
}

/// A value as Go's `%v`/`%q` prints it in a field error.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Null => go_quote("null"),
        Value::Number(n) => render_number(n),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn render_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() => render_f64(f),
        _ => n.to_string(),
    }
}

/// A float as Go prints a schema bound or value: integral values without a fraction.
fn render_f64(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

/// Go's `strconv.Quote` for the strings that occur in practice.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------
// Object names
// ---------------------------------------------------------------------------------------

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

/// Which rule a kind's names follow on a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NameRule {
    /// `NameIsDNSSubdomain`: most kinds, custom resources included.
    Subdomain,
    /// `NameIsDNSLabel`: Namespaces.
    Label1123,
    /// `NameIsDNS1035Label`: Services.
    Label1035,
    /// `ValidateRBACName` (a path segment): Roles, ClusterRoles and their bindings.
    PathSegment,
}

fn name_rule(rt: &ResourceType) -> NameRule {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => NameRule::Label1123,
        ("", "Service") => NameRule::Label1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// A whole-string matcher for one of the name formats above (compiled once).
type Matcher = LazyLock<Result<Regex, regex::Error>>;

static DNS1123_LABEL: Matcher = LazyLock::new(|| anchored(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN: Matcher = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static DNS1035_LABEL: Matcher = LazyLock::new(|| anchored(DNS1035_LABEL_FMT));

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn full_match(matcher: &Matcher, value: &str) -> bool {
    matcher.as_ref().is_ok_and(|re| re.is_match(value))
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    // As Go's `RegexError`, down to the double space before "or".
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        examples.join(" or ")
    )
}

/// The messages of apimachinery's name validators for `value` (empty when it is valid).
fn name_messages(rule: NameRule, value: &str) -> Vec<String> {
    let max_len = |n: usize| format!("must be no more than {n} characters");
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if value.len() > 253 {
                errs.push(max_len(253));
            }
            if !full_match(&DNS1123_SUBDOMAIN, value) {
                errs.push(regex_error(
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                     characters, '-' or '.', and must start and end with an alphanumeric character",
                    DNS1123_SUBDOMAIN_FMT,
                    &["example.com"],
                ));
            }
        }
        NameRule::Label1123 => {
            if value.len() > 63 {
                errs.push(max_len(63));
            }
            if !full_match(&DNS1123_LABEL, value) {
                if full_match(&DNS1123_SUBDOMAIN, value) {
                    errs.push("must not contain dots".to_string());
                } else {
                    errs.push(regex_error(
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                         characters or '-', and must start and end with an alphanumeric character",
                        DNS1123_LABEL_FMT,
                        &["my-name", "123-abc"],
                    ));
                }
            }
        }
        NameRule::Label1035 => {
            if value.len() > 63 {
                errs.push(max_len(63));
            }
            if !full_match(&DNS1035_LABEL, value) {
                errs.push(regex_error(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', \
                     start with an alphabetic character, and end with an alphanumeric character",
                    DNS1035_LABEL_FMT,
                    &["my-name", "abc-123"],
                ));
            }
        }
        NameRule::PathSegment => {
            for bad in ["..", "."] {
                if value == bad {
                    errs.push(format!("may not be '{bad}'"));
                }
            }
            for bad in ["/", "%"] {
                if value.contains(bad) {
                    errs.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    errs
}

/// Errors in `metadata.name` (and `metadata.generateName`, the prefix it was made from) for
/// an object of `rt`'s kind, as `ValidateObjectMeta` reports them.
pub(crate) fn name_errors(
    rt: &ResourceType,
    name: &str,
    generate_name: Option<&str>,
) -> Vec<FieldError> {
    let rule = name_rule(rt);
    let mut errs = Vec::new();
    if let Some(prefix) = generate_name.filter(|p| !p.is_empty()) {
        // A prefix may end in '-' (`maskTrailingDash`).
        let masked = if prefix.len() > 1 && prefix.ends_with('-') {
            format!("{}a", &prefix[..prefix.len() - 2])
        } else {
            prefix.to_string()
        };
        for msg in name_messages(rule, &masked) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                json!(prefix),
                msg,
            ));
        }
    }
    for msg in name_messages(rule, name) {
        errs.push(FieldError::invalid("metadata.name", json!(name), msg));
    }
    errs
}

// ---------------------------------------------------------------------------------------
// Built-in kinds
// ---------------------------------------------------------------------------------------

/// Errors in the parts of a built-in object the fake server checks (EndpointSlice and
/// Endpoints addresses); none for other kinds.
pub(crate) fn builtin_errors(rt: &ResourceType, obj: &Map<String, Value>) -> Vec<FieldError> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice_errors(obj),
        ("", "Endpoints") => endpoints_errors(obj),
        _ => Vec::new(),
    }
}

/// The elements of an array field, or none.
fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn endpoint_slice_errors(obj: &Map<String, Value>) -> Vec<FieldError> {
    const SUPPORTED: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
    let mut errs = Vec::new();
    let address_type = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    if address_type.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !SUPPORTED.contains(&address_type) {
        let supported: Vec<String> = SUPPORTED.iter().map(|s| s.to_string()).collect();
        errs.push(FieldError::not_supported(
            "addressType",
            json!(address_type),
            &supported,
        ));
    }
    for (i, endpoint) in items(obj.get("endpoints")).iter().enumerate() {
        let path = format!("endpoints[{i}].addresses");
        let addresses = items(endpoint.get("addresses"));
        if addresses.is_empty() {
            errs.push(FieldError::required(
                &path,
                "must contain at least 1 address",
            ));
        } else if addresses.len() > 100 {
            errs.push(FieldError::too_many(&path, addresses.len(), 100));
        }
        for (j, address) in addresses.iter().enumerate() {
            let field = format!("{path}[{j}]");
            let text = address.as_str().unwrap_or_default();
            let ip = match address_type {
                "IPv4" => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
                "IPv6" => text
                    .parse::<Ipv6Addr>()
                    .ok()
                    .filter(|ip| ip.to_ipv4_mapped().is_none())
                    .map(IpAddr::V6),
                // FQDN addresses (and those of an unknown type) are not checked.
                _ => continue,
            };
            match ip {
                Some(ip) => errs.extend(special_ip_errors(&field, text, ip)),
                None => errs.push(FieldError::invalid(
                    &field,
                    json!(text),
                    format!("must be a valid {address_type} address"),
                )),
            }
        }
    }
    errs
}

fn endpoints_errors(obj: &Map<String, Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, subset) in items(obj.get("subsets")).iter().enumerate() {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, address) in items(subset.get(list)).iter().enumerate() {
                let field = format!("subsets[{i}].{list}[{j}].ip");
                let text = address
                    .get("ip")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match text.parse::<IpAddr>() {
                    Ok(ip) => errs.extend(special_ip_errors(&field, text, ip)),
                    Err(_) => errs.push(FieldError::invalid(
                        &field,
                        json!(text),
                        "must be a valid IP address",
                    )),
                }
            }
        }
    }
    errs
}

/// `ValidateNonSpecialIP`: endpoints may not be unspecified, loopback or link-local.
fn special_ip_errors(field: &str, text: &str, ip: IpAddr) -> Vec<FieldError> {
    let (unspecified, loopback, link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (
            v4.is_unspecified(),
            v4.is_loopback(),
            v4.is_link_local(),
            v4.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            match v6.to_ipv4_mapped() {
                Some(v4) => (
                    v4.is_unspecified(),
                    v4.is_loopback(),
                    v4.is_link_local(),
                    v4.octets()[..3] == [224, 0, 0],
                ),
                None => (
                    v6.is_unspecified(),
                    v6.is_loopback(),
                    s[0] & 0xffc0 == 0xfe80,
                    s[0] & 0xff0f == 0xff02,
                ),
            }
        }
    };
    let mut errs = Vec::new();
    let mut add = |detail: String| errs.push(FieldError::invalid(field, json!(text), detail));
    if unspecified {
        add(format!("may not be unspecified ({text})"));
    }
    if loopback {
        add("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    if link_local {
        add("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if link_local_multicast {
        add("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
    errs
}

// ---------------------------------------------------------------------------------------
// Custom resources: OpenAPI v3 schemas
// ---------------------------------------------------------------------------------------

/// Prunes `obj` (a custom resource) to the fields `schema` declares, drops `null`s of
/// fields that are not `nullable`, and returns what breaks the schema. `apiVersion`, `kind`
/// and `metadata` at the root are left alone.
pub(crate) fn schema_errors(schema: &Value, obj: &mut Map<String, Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    prune_object(schema, obj, true);
    check_object(schema, obj, "", true, &mut errs);
    errs
}

/// [`schema_errors`] for a write to the `/status` subresource: only `.status` is pruned and
/// checked, as a real server validates status writes against the status schema alone.
pub(crate) fn status_errors(schema: &Value, obj: &mut Map<String, Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(status) = obj.get_mut("status") else {
        return errs;
    };
    match property_schema(schema, "status") {
        Ok(sub) => {
            if status.is_null() && !flag(sub, "nullable") {
                obj.remove("status");
            } else {
                prune_value(sub, status);
                check_value(sub, status, "status", &mut errs);
            }
        }
        Err(allowed) => {
            if !allowed && !flag(schema, "x-kubernetes-preserve-unknown-fields") {
                obj.remove("status");
            }
        }
    }
    errs
}

/// Drops the schema errors a real server ratchets on update (`CRDValidationRatcheting`, on
/// by default since Kubernetes 1.30): those about a value the update leaves as it was in
/// `old`, so that an object stored under a looser schema can still be updated elsewhere.
/// For a missing required field, the value is the object that lacks it.
pub(crate) fn ratchet(
    errors: Vec<FieldError>,
    old: &Value,
    new: &Map<String, Value>,
) -> Vec<FieldError> {
    let new = Value::Object(new.clone());
    errors
        .into_iter()
        .filter(|e| {
            let node = if e.kind == ErrorType::Required {
                parent_path(&e.field)
            } else {
                e.field.as_str()
            };
            match (value_at(old, node), value_at(&new, node)) {
                (Some(before), Some(after)) => before != after,
                _ => true,
            }
        })
        .collect()
}

/// `spec.ports[0].name` → `spec.ports[0]`; `spec` → `` (the root).
fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The value at a field path as the errors name it (`spec.ports[0].name`; `` is the root).
fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    if path.is_empty() {
        return Some(v);
    }
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            v = v.get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// The schema for property `key` of an object described by `schema`: a declared property,
/// else `additionalProperties` (`Err(true)`: anything, unpruned; `Err(false)`: not allowed).
fn property_schema<'a>(schema: &'a Value, key: &str) -> Result<&'a Value, bool> {
    if let Some(p) = schema.get("properties").and_then(|p| p.get(key)) {
        return Ok(p);
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(b)) => Err(*b),
        Some(s @ Value::Object(_)) => Ok(s),
        _ => Err(false),
    }
}

/// Structural pruning of one object and everything below it.
fn prune_object(schema: &Value, obj: &mut Map<String, Value>, root: bool) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    obj.retain(|key, value| {
        if (root || embedded) && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            return true;
        }
        match property_schema(schema, key) {
            Ok(sub) => {
                if value.is_null() && !flag(sub, "nullable") {
                    return false;
                }
                prune_value(sub, value);
                true
            }
            Err(allowed) => allowed || preserve,
        }
    });
}

fn prune_value(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(obj) => prune_object(schema, obj, false),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune_value(item_schema, item);
                }
            } else if !flag(schema, "x-kubernetes-preserve-unknown-fields") {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.clear();
                }
            }
        }
        _ => {}
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The JSON type of a value, as kube-openapi names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The types a schema allows (none: any).
fn schema_types(schema: &Value) -> Vec<&str> {
    if flag(schema, "x-kubernetes-int-or-string") {
        return vec!["integer", "string"];
    }
    schema
        .get("type")
        .and_then(Value::as_str)
        .map(|t| vec![t])
        .unwrap_or_default()
}

fn type_matches(types: &[&str], v: &Value) -> bool {
    let actual = type_name(v);
    types.contains(&actual)
        || (actual == "number"
            && types.contains(&"integer")
            && v.as_f64().is_some_and(|f| f.fract() == 0.0))
        || (actual == "integer" && types.contains(&"number"))
}

fn check_object(
    schema: &Value,
    obj: &Map<String, Value>,
    path: &str,
    root: bool,
    errs: &mut Vec<FieldError>,
) {
    for key in items(schema.get("required"))
        .iter()
        .filter_map(Value::as_str)
    {
        if !obj.contains_key(key) {
            errs.push(FieldError::required(&child(path, key), ""));
        }
    }
    let count = obj.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
        if count > max {
            errs.push(FieldError::too_many(path, obj.len(), max));
        }
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
        if count < min {
            errs.push(FieldError::invalid(
                path,
                json!(count),
                format!("{path} in body should have at least {min} properties"),
            ));
        }
    }
    for (key, value) in obj {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Ok(sub) = property_schema(schema, key) {
            check_value(sub, value, &child(path, key), errs);
        }
    }
}

fn check_value(schema: &Value, value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let types = schema_types(schema);
    if value.is_null() {
        if !types.is_empty() && !flag(schema, "nullable") {
            errs.push(type_error(path, &types.join(","), "null"));
        }
        return;
    }
    if !types.is_empty() && !type_matches(&types, value) {
        // kube-openapi names the format instead of the type for non-string, non-array data
        // when the schema has a format.
        match schema.get("format").and_then(Value::as_str) {
            Some(format) if !format.is_empty() && !value.is_string() && !value.is_array() => {
                let data_format = match type_name(value) {
                    "integer" => "int64",
                    "number" => "double",
                    _ => "",
                };
                errs.push(type_error(path, format, data_format));
            }
            _ => errs.push(type_error(path, &types.join(","), type_name(value))),
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let supported: Vec<String> = allowed
                .iter()
                .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                .collect();
            errs.push(FieldError::not_supported(path, value.clone(), &supported));
        }
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errs),
        Value::Number(n) => check_number(schema, n, path, errs),
        Value::Array(list) => {
            let len = list.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    errs.push(FieldError::invalid(
                        path,
                        json!(len),
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    errs.push(FieldError::too_many(path, list.len(), max));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in list.iter().enumerate() {
                    check_value(item_schema, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(obj) => check_object(schema, obj, path, false, errs),
        Value::Bool(_) | Value::Null => {}
    }
}

fn type_error(path: &str, expected: &str, actual: &str) -> FieldError {
    FieldError::new(
        ErrorType::TypeInvalid,
        path,
        Some(json!(actual)),
        format!(
            "{path} in body must be of type {expected}: {}",
            go_quote(actual)
        ),
    )
}

fn check_string(schema: &Value, s: &str, path: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if chars > max {
            errs.push(FieldError::too_long(path, max));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if chars < min {
            errs.push(FieldError::invalid(
                path,
                json!(s),
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern the regex engine cannot compile is not checked (a real server refuses
        // such a CRD in the first place).
        if Regex::new(pattern).is_ok_and(|re| !re.is_match(s)) {
            errs.push(FieldError::invalid(
                path,
                json!(s),
                format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, path: &str, errs: &mut Vec<FieldError>) {
    let Some(x) = n.as_f64() else { return };
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if x < min || (exclusive && x == min) {
            let op = if exclusive { "" } else { " or equal to" };
            errs.push(FieldError::invalid(
                path,
                Value::Number(n.clone()),
                format!(
                    "{path} in body should be greater than{op} {}",
                    render_f64(min)
                ),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if x > max || (exclusive && x == max) {
            let op = if exclusive { "" } else { " or equal to" };
            errs.push(FieldError::invalid(
                path,
                Value::Number(n.clone()),
                format!("{path} in body should be less than{op} {}", render_f64(max)),
            ));
        }
    }
    if let Some(factor) = bound("multipleOf").filter(|f| *f > 0.0) {
        let q = x / factor;
        if (q - q.round()).abs() > 1e-9 {
            errs.push(FieldError::invalid(
                path,
                Value::Number(n.clone()),
                format!(
                    "{path} in body should be a multiple of {}",
                    render_f64(factor)
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn slice_type() -> ResourceType {
        ResourceType::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
    }

    #[test]
    fn endpoint_slice_addresses() {
        let slice = map(json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1", "127.0.0.1"]},
                {"addresses": ["0.0.0.0", "169.254.1.1", "224.0.0.5", "::1", "1.2.3"]},
                {"addresses": []},
            ],
        }));
        let errs = builtin_errors(&slice_type(), &slice);
        let messages: Vec<String> = errs.iter().map(FieldError::message).collect();
        assert_eq!(
            messages,
            [
                "endpoints[0].addresses[1]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "endpoints[1].addresses[0]: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
                "endpoints[1].addresses[1]: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
                "endpoints[1].addresses[2]: Invalid value: \"224.0.0.5\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
                "endpoints[1].addresses[3]: Invalid value: \"::1\": must be a valid IPv4 address",
                "endpoints[1].addresses[4]: Invalid value: \"1.2.3\": must be a valid IPv4 address",
                "endpoints[2].addresses: Required value: must contain at least 1 address",
            ]
        );
        let v6 = map(json!({
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::1", "::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1", "::"]}],
        }));
        let errs = builtin_errors(&slice_type(), &v6);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "endpoints[0].addresses[1]",
                "endpoints[0].addresses[2]",
                "endpoints[0].addresses[3]",
                "endpoints[0].addresses[4]",
                "endpoints[0].addresses[5]",
            ]
        );
        let bad_type = map(json!({"addressType": "IP", "endpoints": []}));
        assert_eq!(
            builtin_errors(&slice_type(), &bad_type)[0].message(),
            "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
        );
    }

    #[test]
    fn endpoints_addresses() {
        let rt = ResourceType::new("", "v1", "Endpoints", "endpoints");
        let ep = map(json!({"subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "127.0.0.2"}],
            "notReadyAddresses": [{"ip": "nope"}],
        }]}));
        let messages: Vec<String> = builtin_errors(&rt, &ep)
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            messages,
            [
                "subsets[0].addresses[1].ip: Invalid value: \"127.0.0.2\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "subsets[0].notReadyAddresses[0].ip: Invalid value: \"nope\": must be a valid IP address",
            ]
        );
    }

    #[test]
    fn names() {
        let cm = ResourceType::new("", "v1", "ConfigMap", "configmaps");
        let svc = ResourceType::new("", "v1", "Service", "services");
        let ns = ResourceType::new("", "v1", "Namespace", "namespaces").cluster_scoped();
        let role = ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
        );
        assert!(name_errors(&cm, "a.b-c", None).is_empty());
        assert!(name_errors(&svc, "web-1", None).is_empty());
        assert!(name_errors(&role, "system:auth-delegator", None).is_empty());
        assert_eq!(
            name_errors(&cm, "Web", None)[0].message(),
            "metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            name_errors(&svc, "1web", None)[0].body(),
            "Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        );
        assert_eq!(
            name_errors(&ns, "a.b", None)[0].body(),
            "Invalid value: \"a.b\": must not contain dots"
        );
        let long = "a".repeat(64);
        assert_eq!(
            name_errors(&ns, &long, None)[0].detail,
            "must be no more than 63 characters"
        );
        assert!(name_errors(&cm, "web-abcde", Some("web-")).is_empty());
        let errs = name_errors(&cm, "Web-abcde", Some("Web-"));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "metadata.generateName");
        assert_eq!(
            name_errors(&role, "a/b", None)[0].detail,
            "may not contain '/'"
        );
    }

    #[test]
    fn status_shape() {
        let errs = builtin_errors(
            &slice_type(),
            &map(json!({"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1", "::"]}]})),
        );
        let e = invalid(&slice_type(), "web-abc", &errs[..1]).to_status();
        assert_eq!(e["code"], 422);
        assert_eq!(e["reason"], "Invalid");
        assert_eq!(
            e["message"],
            "EndpointSlice.discovery.k8s.io \"web-abc\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        assert_eq!(
            e["details"],
            json!({"name": "web-abc", "group": "discovery.k8s.io", "kind": "EndpointSlice", "causes": [{
                "reason": "FieldValueInvalid",
                "message": "Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "field": "endpoints[0].addresses[0]",
            }]})
        );
        let two = invalid(&slice_type(), "web-abc", &errs).message;
        assert!(two.starts_with("EndpointSlice.discovery.k8s.io \"web-abc\" is invalid: [endpoints[0].addresses[0]: "), "{two}");
        assert!(
            two.ends_with(
                "endpoints[0].addresses[1]: Invalid value: \"::\": must be a valid IPv4 address]"
            ),
            "{two}"
        );
    }

    fn workload_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["address"],
                    "properties": {
                        "address": {"type": "string", "minLength": 2, "maxLength": 5},
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "port": {"type": "integer", "format": "uint16", "minimum": 1.0, "maximum": 65535.0, "nullable": true},
                        "ratio": {"type": "number", "exclusiveMinimum": true, "minimum": 0.0},
                        "ttl": {"type": "string", "pattern": "^[0-9]+s$"},
                        "target": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                 "properties": {"n": {"type": "integer"}}},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    fn messages(schema: &Value, obj: Value) -> (Vec<String>, Map<String, Value>) {
        let mut obj = map(obj);
        let errs = schema_errors(schema, &mut obj);
        (errs.iter().map(FieldError::message).collect(), obj)
    }

    #[test]
    fn schema_accepts_and_prunes() {
        let (errs, obj) = messages(
            &workload_schema(),
            json!({
                "apiVersion": "mesh.dev/v1", "kind": "Workload", "metadata": {"name": "w", "x": 1},
                "spec": {
                    "address": "10.0", "mode": "A", "port": null, "ratio": 0.5, "ttl": "5s",
                    "target": "http", "tags": ["a"], "labels": {"k": "v"}, "unknown": 1,
                    "free": {"anything": [1], "n": 2},
                    "items": [{"a": "x", "b": "y"}],
                },
                "status": {"ready": true, "extra": {}},
                "junk": true,
            }),
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            Value::Object(obj),
            json!({
                "apiVersion": "mesh.dev/v1", "kind": "Workload", "metadata": {"name": "w", "x": 1},
                "spec": {
                    "address": "10.0", "mode": "A", "port": null, "ratio": 0.5, "ttl": "5s",
                    "target": "http", "tags": ["a"], "labels": {"k": "v"},
                    "free": {"anything": [1], "n": 2},
                    "items": [{"a": "x"}],
                },
                "status": {"ready": true},
            })
        );
        let (errs, _) = messages(
            &workload_schema(),
            json!({"spec": {"address": "ab", "target": 8080, "port": 3.0}}),
        );
        assert!(errs.is_empty(), "{errs:?}");
        // A null for a field that is not nullable is dropped, then found missing.
        let (errs, _) = messages(&workload_schema(), json!({"spec": {"address": null}}));
        assert_eq!(errs, ["spec.address: Required value"]);
    }

    #[test]
    fn schema_refusals() {
        let (errs, _) = messages(
            &workload_schema(),
            json!({"spec": {
                "address": "", "mode": "X", "port": 0, "ratio": 0.0, "ttl": "5m",
                "target": true, "tags": [], "labels": {"k": 1},
            }}),
        );
        assert_eq!(
            errs,
            [
                "spec.address: Invalid value: \"\": spec.address in body should be at least 2 chars long",
                "spec.labels.k: Invalid value: \"integer\": spec.labels.k in body must be of type string: \"integer\"",
                "spec.mode: Unsupported value: \"X\": supported values: \"A\", \"B\"",
                "spec.port: Invalid value: 0: spec.port in body should be greater than or equal to 1",
                "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0",
                "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
                "spec.target: Invalid value: \"boolean\": spec.target in body must be of type integer,string: \"boolean\"",
                "spec.ttl: Invalid value: \"5m\": spec.ttl in body should match '^[0-9]+s$'",
            ]
        );
        let (errs, _) = messages(
            &workload_schema(),
            json!({"spec": {"address": "toolong", "port": "80", "tags": ["a", "b", null], "free": {"n": "x"}}}),
        );
        assert_eq!(
            errs,
            [
                "spec.address: Too long: may not be more than 5 bytes",
                "spec.free.n: Invalid value: \"string\": spec.free.n in body must be of type integer: \"string\"",
                "spec.port: Invalid value: \"string\": spec.port in body must be of type integer: \"string\"",
                "spec.tags: Too many: 3: must have at most 2 items",
                "spec.tags[2]: Invalid value: \"null\": spec.tags[2] in body must be of type string: \"null\"",
            ]
        );
        let (errs, _) = messages(
            &workload_schema(),
            json!({"spec": {"address": "ab", "port": true}}),
        );
        assert_eq!(
            errs,
            ["spec.port: Invalid value: \"\": spec.port in body must be of type uint16: \"\""]
        );
        let (errs, _) = messages(&workload_schema(), json!({"metadata": {"name": "w"}}));
        assert!(errs.is_empty(), "spec is not required: {errs:?}");
        let (errs, _) = messages(&workload_schema(), json!({"spec": {}}));
        assert_eq!(errs, ["spec.address: Required value"]);
    }

    #[test]
    fn ratcheting_keeps_only_errors_about_changed_values() {
        let schema = workload_schema();
        let old = json!({"spec": {"address": "x", "tags": ["a", "b", "c"], "mode": "A"}});
        let mut new = map(json!({"spec": {"address": "x", "tags": ["a", "b", "c"], "mode": "X"}}));
        let errors = schema_errors(&schema, &mut new);
        assert_eq!(errors.len(), 3);
        let kept: Vec<String> = ratchet(errors, &old, &new)
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            kept,
            ["spec.mode: Unsupported value: \"X\": supported values: \"A\", \"B\""]
        );
        // A required field missing before and after: the object lacking it is unchanged.
        let old = json!({"spec": {"port": 1}});
        let mut same = map(old.clone());
        assert!(ratchet(schema_errors(&schema, &mut same), &old, &same).is_empty());
        let mut changed = map(json!({"spec": {"port": 2}}));
        assert_eq!(
            ratchet(schema_errors(&schema, &mut changed), &old, &changed).len(),
            1
        );
        assert_eq!(
            value_at(&json!({"a": {"b": [0, {"c": 5}]}}), "a.b[1].c"),
            Some(&json!(5))
        );
        assert_eq!(parent_path("spec.ports[0]"), "spec.ports");
        assert_eq!(parent_path("spec"), "");
    }

    #[test]
    fn lenient_schema_keeps_everything() {
        let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let body = json!({"spec": {"anything": [1, {"x": null}]}, "status": {"y": 1}});
        let (errs, obj) = messages(&schema, body.clone());
        assert!(errs.is_empty());
        assert_eq!(Value::Object(obj), body);
    }
}
