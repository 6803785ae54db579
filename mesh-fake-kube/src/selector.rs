//! Label and field selectors, as in the `labelSelector` and `fieldSelector` query parameters.
//!
//! Label selectors support the full grammar of `k8s.io/apimachinery/pkg/labels`: equality
//! (`a=b`, `a==b`, `a!=b`), sets (`a in (x,y)`, `a notin (x)`), existence (`a`, `!a`),
//! numeric comparison (`a>1`, `a<5`), joined by commas (AND).
//!
//! Field selectors support `=`, `==` and `!=` on `metadata.name` and `metadata.namespace`
//! for every kind, plus the few extra fields the real API server supports for some built-in
//! kinds (see [`field_supported`]). Other fields are rejected with 400, like the real server.

use serde_json::Value;

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

impl LabelSelector {
    /// Parses a selector; the error is a message for a 400 response.
    pub(crate) fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for term in split_top_level(input) {
            requirements.push(parse_requirement(term.trim()).map_err(|e| {
                format!("unable to parse requirement: {e} (in label selector {input:?})")
            })?);
        }
        Ok(Self { requirements })
    }

    /// Whether an object with these labels (`metadata.labels`, possibly absent) is selected.
    pub(crate) fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| {
            let value = get(&r.key);
            match &r.op {
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|x| set.iter().any(|s| s == x)),
                Op::NotIn(set) => value.is_none_or(|x| set.iter().all(|s| s != x)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::Gt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    /// Whether a whole object is selected by its `metadata.labels`.
    pub(crate) fn matches_object(&self, object: &Value) -> bool {
        self.requirements.is_empty()
            || self.matches(
                object
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object),
            )
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if term.is_empty() {
        return Err("found '', expected: identifier".into());
    }
    if let Some(rest) = term.strip_prefix('!') {
        let key = rest.trim();
        validate_key(key)?;
        return Ok(Requirement {
            key: key.into(),
            op: Op::DoesNotExist,
        });
    }
    let key_end = term
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        .unwrap_or(term.len());
    let key = &term[..key_end];
    validate_key(key)?;
    let rest = term[key_end..].trim_start();
    let op = if rest.is_empty() {
        Op::Exists
    } else if let Some(v) = rest.strip_prefix("!=") {
        Op::NotEq(value(v)?)
    } else if let Some(v) = rest.strip_prefix("==") {
        Op::Eq(value(v)?)
    } else if let Some(v) = rest.strip_prefix('=') {
        Op::Eq(value(v)?)
    } else if let Some(v) = rest.strip_prefix('>') {
        Op::Gt(integer(v)?)
    } else if let Some(v) = rest.strip_prefix('<') {
        Op::Lt(integer(v)?)
    } else if let Some(v) = keyword(rest, "notin") {
        Op::NotIn(set(v)?)
    } else if let Some(v) = keyword(rest, "in") {
        Op::In(set(v)?)
    } else {
        return Err(format!("unexpected {rest:?} after key {key:?}"));
    };
    Ok(Requirement {
        key: key.into(),
        op,
    })
}

/// `rest` without a leading operator word, if the word is followed by a space or `(`.
fn keyword<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    (after.starts_with(char::is_whitespace) || after.starts_with('(')).then_some(after)
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    validate_value(v)?;
    Ok(v.into())
}

fn integer(v: &str) -> Result<i64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an integer", v.trim()))
}

fn set(v: &str) -> Result<Vec<String>, String> {
    let v = v.trim();
    let inner = v
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values, found {v:?}"))?;
    inner.split(',').map(value).collect()
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!("invalid label key {key:?}: bad prefix"));
        }
    }
    if name.is_empty() {
        return Err(format!(
            "invalid label key {key:?}: name part must be non-empty"
        ));
    }
    validate_value(name).map_err(|_| format!("invalid label key {key:?}"))
}

/// A label value: empty, or at most 63 characters (alphanumerics, `-`, `_`, `.`;
/// alphanumeric at both ends).
fn validate_value(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label value: {v:?}"))
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq)]
struct FieldRequirement {
    field: String,
    equal: bool,
    value: String,
}

impl FieldSelector {
    /// Parses a selector and checks every field is supported for `kind` (see
    /// [`field_supported`]); the error is a message for a 400 response.
    pub(crate) fn parse(input: &str, kind: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        for term in split_unescaped(input, ',') {
            let (field, equal, raw) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let field = field.trim().to_string();
            if !field_supported(kind, &field) {
                return Err(format!(
                    "field label not supported: {field} (for kind {kind}; this fake API \
                     server supports metadata.name, metadata.namespace and a few per-kind fields)"
                ));
            }
            requirements.push(FieldRequirement {
                field,
                equal,
                value: unescape(raw.trim()),
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the object is selected.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) == r.equal
        })
    }
}

/// Whether the real API server supports this field in field selectors for this kind
/// (`metadata.name` and `metadata.namespace` everywhere, plus the fields listed in the
/// built-in types' field label conversion functions that tests are likely to use).
pub(crate) fn field_supported(kind: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match kind {
        "Pod" => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        "Secret" => field == "type",
        "Namespace" => field == "status.phase",
        "Node" => field == "spec.unschedulable",
        "Event" => matches!(
            field,
            "involvedObject.kind"
                | "involvedObject.namespace"
                | "involvedObject.name"
                | "involvedObject.uid"
                | "involvedObject.apiVersion"
                | "involvedObject.resourceVersion"
                | "involvedObject.fieldPath"
                | "reason"
                | "reportingComponent"
                | "source"
                | "type"
        ),
        _ => false,
    }
}

/// The string form of a dotted field of the object (`""` if absent), as field selectors see it.
fn field_value(object: &Value, field: &str) -> String {
    let mut cur = object;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(map) if field == "source" => map
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    }
}

/// Splits on `sep` unless it is escaped with a backslash; escapes are kept for [`unescape`].
fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// Splits at the first `op` that is not preceded by a backslash escape.
fn split_once_unescaped<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((&term[..i], &term[i + op.len()..]));
        }
        i += 1;
    }
    None
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn equality() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        assert!(sel("app=web").matches(Some(&l)));
        assert!(sel("app==web").matches(Some(&l)));
        assert!(sel("app = web").matches(Some(&l)));
        assert!(!sel("app=db").matches(Some(&l)));
        assert!(sel("app!=db").matches(Some(&l)));
        assert!(!sel("app!=web").matches(Some(&l)));
        assert!(sel("missing!=x").matches(Some(&l)));
        assert!(!sel("missing=x").matches(Some(&l)));
        assert!(sel("app=web,tier=front").matches(Some(&l)));
        assert!(!sel("app=web,tier=back").matches(Some(&l)));
        assert!(sel("").matches(None));
        assert!(!sel("app=web").matches(None));
        assert!(sel("app!=web").matches(None));
    }

    #[test]
    fn sets_and_existence() {
        let l = labels(json!({"app": "web", "env": "prod"}));
        assert!(sel("env in (prod, staging)").matches(Some(&l)));
        assert!(sel("env in (prod)").matches(Some(&l)));
        assert!(!sel("env in (dev,staging)").matches(Some(&l)));
        assert!(!sel("missing in (a)").matches(Some(&l)));
        assert!(sel("env notin (dev)").matches(Some(&l)));
        assert!(!sel("env notin (dev,prod)").matches(Some(&l)));
        assert!(sel("missing notin (a)").matches(Some(&l)));
        assert!(sel("app").matches(Some(&l)));
        assert!(!sel("missing").matches(Some(&l)));
        assert!(sel("!missing").matches(Some(&l)));
        assert!(!sel("!app").matches(Some(&l)));
        assert!(sel("env in (prod,staging),app,!missing,app!=db").matches(Some(&l)));
        assert!(sel("example.com/role in (a),app")
            .matches(Some(&labels(json!({"example.com/role": "a", "app": "x"})))));
    }

    #[test]
    fn numeric_comparison() {
        let l = labels(json!({"n": "5"}));
        assert!(sel("n>4").matches(Some(&l)));
        assert!(!sel("n>5").matches(Some(&l)));
        assert!(sel("n<6").matches(Some(&l)));
        assert!(!sel("missing<6").matches(Some(&l)));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "a=b,", ",a", "a in b", "a in (b", "a=b c", "=b", "a>x", "a=-b", "!", "a b", "/a=b",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn object_matching() {
        let obj = json!({"metadata": {"name": "x", "labels": {"app": "web"}}});
        assert!(sel("app=web").matches_object(&obj));
        assert!(!sel("app=db").matches_object(&obj));
        assert!(sel("app!=db").matches_object(&json!({"metadata": {"name": "x"}})));
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "web", "namespace": "prod"}, "status": {"phase": "Running"}});
        let f = |s: &str| FieldSelector::parse(s, "Pod").unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(f("metadata.name=web").matches(&obj));
        assert!(f("metadata.name==web").matches(&obj));
        assert!(!f("metadata.name=db").matches(&obj));
        assert!(f("metadata.name!=db").matches(&obj));
        assert!(f("metadata.name=web,metadata.namespace=prod").matches(&obj));
        assert!(!f("metadata.name=web,metadata.namespace!=prod").matches(&obj));
        assert!(f("status.phase=Running").matches(&obj));
        assert!(f("").matches(&obj));
        let cluster = json!({"metadata": {"name": "n"}});
        assert!(f("metadata.namespace=").matches(&cluster));
    }

    #[test]
    fn field_selector_escapes_and_errors() {
        let obj = json!({"metadata": {"name": "a,b=c"}});
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c", "ConfigMap").unwrap();
        assert!(s.matches(&obj));
        assert!(FieldSelector::parse("spec.foo=x", "ConfigMap").is_err());
        assert!(FieldSelector::parse("status.phase=x", "ConfigMap").is_err());
        assert!(FieldSelector::parse("metadata.name", "ConfigMap").is_err());
    }
}
