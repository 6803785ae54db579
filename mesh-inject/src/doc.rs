//! Small, order-preserving operations on YAML mappings: finding a field, creating one where
//! it is missing, and reading string maps, with errors that name the field.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use crate::InjectError;

/// `metadata.name` (or `generateName`, or `<unnamed>`) and `metadata.namespace`.
pub fn name_and_namespace(map: &Mapping) -> (String, Option<String>) {
    let meta = map.get("metadata").and_then(Value::as_mapping);
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = field("name")
        .or_else(|| field("generateName").map(|g| format!("{g}*")))
        .unwrap_or_else(|| "<unnamed>".into());
    (name, field("namespace"))
}

/// The `annotations` of a metadata value, as strings.
pub fn annotations(
    meta: Option<&Value>,
    path: &str,
) -> Result<BTreeMap<String, String>, InjectError> {
    let Some(meta) = meta else {
        return Ok(BTreeMap::new());
    };
    let Some(meta) = meta.as_mapping() else {
        return Err(InjectError::new(path, "is not a mapping"));
    };
    match meta.get("annotations") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Mapping(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    return Err(InjectError::new(
                        format!("{path}.annotations"),
                        "keys and values must be strings (quote numbers and booleans, e.g. \"true\")",
                    ));
                };
                out.insert(k.to_string(), v.to_string());
            }
            Ok(out)
        }
        Some(_) => Err(InjectError::new(
            format!("{path}.annotations"),
            "is not a mapping of strings",
        )),
    }
}

/// Follows `path` (mappings only) to the pod template; the template and its dotted path
/// with a trailing dot (`spec.template.`), or "" for a Pod.
pub fn descend<'a>(
    map: &'a mut Mapping,
    path: &[&str],
) -> Result<(&'a mut Mapping, String), InjectError> {
    let mut at = String::new();
    let mut cur = map;
    for key in path {
        at.push_str(key);
        cur = match cur.get_mut(*key) {
            Some(Value::Mapping(m)) => m,
            Some(_) => return Err(InjectError::new(at, "is not a mapping")),
            None => {
                return Err(InjectError::new(
                    at,
                    "is missing; a workload needs a pod template",
                ))
            }
        };
        at.push('.');
    }
    Ok((cur, at))
}

/// The mapping under `key`, created (empty, at the end) when missing or null.
pub fn map_entry<'a>(
    map: &'a mut Mapping,
    key: &str,
    path: &str,
) -> Result<&'a mut Mapping, InjectError> {
    if matches!(map.get(key), None | Some(Value::Null)) {
        map.insert(key.into(), Value::Mapping(Mapping::new()));
    }
    match map.get_mut(key) {
        Some(Value::Mapping(m)) => Ok(m),
        _ => Err(InjectError::new(format!("{path}{key}"), "is not a mapping")),
    }
}

/// The list under `key`, created (empty, at the end) when missing or null.
pub fn seq_entry<'a>(
    map: &'a mut Mapping,
    key: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    if matches!(map.get(key), None | Some(Value::Null)) {
        map.insert(key.into(), Value::Sequence(Vec::new()));
    }
    match map.get_mut(key) {
        Some(Value::Sequence(s)) => Ok(s),
        _ => Err(InjectError::new(format!("{path}{key}"), "is not a list")),
    }
}

/// Puts `key: value` first in `map` (for a template's new `metadata`).
pub fn insert_first(map: &mut Mapping, key: &str, value: Value) {
    let rest = std::mem::take(map);
    map.insert(key.into(), value);
    for (k, v) in rest {
        map.insert(k, v);
    }
}

/// The `name` of a list item, if it has one.
pub fn item_name(v: &Value) -> Option<&str> {
    v.as_mapping()?.get("name")?.as_str()
}

/// Removes the key when its value is an empty mapping or list.
pub fn drop_if_empty(map: &mut Mapping, key: &str) {
    let empty = match map.get(key) {
        Some(Value::Mapping(m)) => m.is_empty(),
        Some(Value::Sequence(s)) => s.is_empty(),
        _ => false,
    };
    if empty {
        map.shift_remove(key);
    }
}

/// Any serializable value as a [`Value`] (the k8s-openapi types we build), with `name`,
/// `image`, `command` and `args` first as people write them (the types serialize their
/// fields alphabetically).
pub fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serializing our own k8s-openapi structs into a YAML value cannot fail: they are plain
    // data with string keys.
    let mut v = serde_yaml_ng::to_value(v).unwrap_or(Value::Null);
    if let Value::Mapping(m) = &mut v {
        let rest = std::mem::take(m);
        for key in ["name", "image", "command", "args"] {
            if let Some(x) = rest.get(key) {
                m.insert(key.into(), x.clone());
            }
        }
        for (k, x) in rest {
            if !m.contains_key(&k) {
                m.insert(k, x);
            }
        }
    }
    v
}

/// Reads YAML 1.1 octal file modes (`defaultMode: 0400`, `mode: 0644`) as kubectl does: as
/// the integers they mean. YAML 1.2 readers see the strings "0400" and "0644", which the
/// API server refuses; only `defaultMode` and `mode` under the pod's volumes are touched.
pub fn octal_file_modes(template: &mut Mapping) {
    fn walk(v: &mut Value) {
        match v {
            Value::Mapping(m) => {
                for (k, x) in m.iter_mut() {
                    let is_mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
                    if let (true, Value::String(s)) = (is_mode, &*x) {
                        let octal = s.len() > 1
                            && s.starts_with('0')
                            && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                        if let (true, Ok(n)) = (octal, i64::from_str_radix(s, 8)) {
                            *x = Value::Number(n.into());
                        }
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Sequence(s) => s.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(Value::Mapping(spec)) = template.get_mut("spec") {
        if let Some(volumes) = spec.get_mut("volumes") {
            walk(volumes);
        }
    }
}

/// Inserts `key: value` just before `before` (at the end when `before` is absent).
pub fn insert_before(map: &mut Mapping, before: &str, key: &str, value: Value) {
    if !map.contains_key(before) {
        map.insert(key.into(), value);
        return;
    }
    let rest = std::mem::take(map);
    for (k, v) in rest {
        if k.as_str() == Some(before) {
            map.insert(key.into(), value.clone());
        }
        map.insert(k, v);
    }
}
