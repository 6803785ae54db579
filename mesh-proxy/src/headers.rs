//! A route's request header modifier (Gateway API `RequestHeaderModifier`), parsed once when
//! a profile is applied so that the request path only inserts ready-made names and values.
//!
//! The operations run in one pass, in this order: `remove` deletes, `set` replaces every
//! value, `add` appends. (They are independent in Gateway API; the order only matters for a
//! name listed in two of them, where it gives Envoy's result: removals first.)

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::HeaderModifier;

/// The parsed form of a [`HeaderModifier`].
#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Parses a validated modifier. Entries that do not parse (impossible after validation)
    /// are skipped; a name repeated within `set` or within `add` keeps its first entry.
    pub fn new(m: &HeaderModifier) -> Self {
        let pairs = |list: &[mesh_core::HeaderValue]| {
            let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(list.len());
            for h in list {
                let (Some(name), Some(value)) = (name(&h.name), value(&h.value)) else {
                    continue;
                };
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, value));
                }
            }
            out
        };
        let mut remove: Vec<HeaderName> = Vec::with_capacity(m.remove.len());
        for n in m.remove.iter().filter_map(|n| name(n)) {
            if !remove.contains(&n) {
                remove.push(n);
            }
        }
        Self {
            remove,
            set: pairs(&m.set),
            add: pairs(&m.add),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the operations to a request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A header name whose clones share one buffer: a custom name is backed by `Bytes`, and
/// cloning it once here turns that buffer into a shared one, so the clone made for each
/// request is a reference count increment, not a copy.
fn name(s: &str) -> Option<HeaderName> {
    let n = HeaderName::from_bytes(s.as_bytes()).ok()?;
    drop(n.clone());
    Some(n)
}

/// A header value backed by shared `Bytes` (see [`name`]).
fn value(s: &str) -> Option<HeaderValue> {
    let bytes = Bytes::copy_from_slice(s.as_bytes());
    drop(bytes.clone());
    HeaderValue::from_maybe_shared(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modifier(yaml: &str) -> HeaderModifier {
        let m: HeaderModifier = serde_yaml_ng::from_str(yaml).unwrap();
        m.validate().unwrap();
        m
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn set_replaces_add_appends_remove_deletes() {
        let ops = HeaderOps::new(&modifier(
            r#"
set: [ { name: X-Env, value: prod }, { name: x-env, value: ignored }, { name: x-new, value: "1" } ]
add: [ { name: x-via, value: mesh } ]
remove: [ X-Debug, x-absent, x-debug ]
"#,
        ));
        let mut h = HeaderMap::new();
        h.append("x-env", HeaderValue::from_static("dev"));
        h.append("x-env", HeaderValue::from_static("test"));
        h.append("x-via", HeaderValue::from_static("client"));
        h.append("x-debug", HeaderValue::from_static("1"));
        h.append("x-debug", HeaderValue::from_static("2"));
        h.append("x-other", HeaderValue::from_static("kept"));
        ops.apply(&mut h);
        assert_eq!(values(&h, "x-env"), vec!["prod"], "first `set` entry wins");
        assert_eq!(values(&h, "x-new"), vec!["1"]);
        assert_eq!(values(&h, "x-via"), vec!["client", "mesh"]);
        assert!(h.get("x-debug").is_none());
        assert_eq!(values(&h, "x-other"), vec!["kept"]);
        // Applying to the next request gives the same result.
        let mut h2 = HeaderMap::new();
        ops.apply(&mut h2);
        assert_eq!(values(&h2, "x-env"), vec!["prod"]);
        assert_eq!(values(&h2, "x-via"), vec!["mesh"]);
    }

    #[test]
    fn a_name_in_remove_and_add_ends_with_the_added_value() {
        let ops = HeaderOps::new(&modifier(
            "add: [ { name: x-a, value: new } ]\nremove: [ x-a ]\n",
        ));
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        ops.apply(&mut h);
        assert_eq!(values(&h, "x-a"), vec!["new"]);
        assert!(HeaderOps::new(&HeaderModifier::default()).is_empty());
    }
}
