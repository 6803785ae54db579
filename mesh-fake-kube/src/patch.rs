//! PATCH bodies: RFC 7386 JSON merge patch, "strategic" merge patch (treated as a JSON merge
//! patch), RFC 6902 JSON patch, and server-side apply (merged over the live object).

use serde_json::Value;

use crate::error::ApiError;

/// The patch flavours, chosen by the request's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`: applied as a JSON merge patch after dropping
    /// `$`-directives, so lists are replaced instead of merged by key.
    StrategicMerge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/apply-patch+yaml`: server-side apply, without field ownership.
    Apply,
}

impl PatchType {
    /// The patch type for a `Content-Type` header value (parameters ignored).
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A decoded patch body, ready to apply.
#[derive(Debug)]
pub(crate) enum Patch {
    /// A merge patch (also used for strategic merge and apply).
    Merge(Value),
    /// An RFC 6902 operation list.
    Json(json_patch::Patch),
}

/// Decodes a patch body; errors are 400s.
pub(crate) fn decode(patch_type: PatchType, body: &[u8]) -> Result<Patch, ApiError> {
    match patch_type {
        PatchType::Merge | PatchType::StrategicMerge => {
            let mut v: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            if patch_type == PatchType::StrategicMerge {
                strip_directives(&mut v);
            }
            Ok(Patch::Merge(v))
        }
        PatchType::Json => serde_json::from_slice::<json_patch::Patch>(body)
            .map(Patch::Json)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}"))),
        PatchType::Apply => {
            let v: Value = serde_yaml_ng::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("error decoding YAML apply patch: {e}"))
            })?;
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding apply patch: the object must be a map",
                ));
            }
            Ok(Patch::Merge(v))
        }
    }
}

/// Applies a decoded patch to `doc` in place; a JSON patch that cannot be applied (a failed
/// `test`, a missing path) is a 422.
pub(crate) fn apply(
    doc: &mut Value,
    patch: &Patch,
    kind: &str,
    name: &str,
) -> Result<(), ApiError> {
    match patch {
        Patch::Merge(p) => {
            json_patch::merge(doc, p);
            Ok(())
        }
        Patch::Json(p) => json_patch::patch(doc, p)
            .map_err(|e| ApiError::invalid(kind, name, format!("the JSON patch failed: {e}"))),
    }
}

/// Removes strategic-merge-patch directives (`$patch`, `$retainKeys`,
/// `$setElementOrder/...`, `$deleteFromPrimitiveList/...`), which mean nothing to a JSON
/// merge patch.
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_patch_replaces_and_deletes() {
        let mut doc = json!({"spec": {"a": 1, "b": [1, 2], "c": "x"}});
        let p = decode(
            PatchType::Merge,
            br#"{"spec": {"a": 2, "b": [3], "c": null}}"#,
        )
        .unwrap();
        apply(&mut doc, &p, "K", "n").unwrap();
        assert_eq!(doc, json!({"spec": {"a": 2, "b": [3]}}));
    }

    #[test]
    fn strategic_merge_drops_directives() {
        let mut doc = json!({"spec": {"ports": [{"port": 80}]}});
        let body = br#"{"$setElementOrder/ports": [{"port": 81}], "spec": {"ports": [{"port": 81, "$patch": "replace"}]}}"#;
        let p = decode(PatchType::StrategicMerge, body).unwrap();
        apply(&mut doc, &p, "K", "n").unwrap();
        assert_eq!(doc, json!({"spec": {"ports": [{"port": 81}]}}));
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let mut doc = json!({"spec": {"a": 1}});
        let p = decode(
            PatchType::Json,
            br#"[{"op": "add", "path": "/spec/b", "value": 2}, {"op": "remove", "path": "/spec/a"}]"#,
        )
        .unwrap();
        apply(&mut doc, &p, "K", "n").unwrap();
        assert_eq!(doc, json!({"spec": {"b": 2}}));
        let failing = decode(
            PatchType::Json,
            br#"[{"op": "test", "path": "/spec/b", "value": 3}]"#,
        )
        .unwrap();
        assert_eq!(apply(&mut doc, &failing, "K", "n").unwrap_err().code, 422);
        assert_eq!(decode(PatchType::Json, b"{}").unwrap_err().code, 400);
    }

    #[test]
    fn apply_accepts_yaml_and_json() {
        let p = decode(
            PatchType::Apply,
            b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: b\n",
        )
        .unwrap();
        let mut doc = json!({"data": {"c": "d"}});
        apply(&mut doc, &p, "K", "n").unwrap();
        assert_eq!(doc["data"], json!({"a": "b", "c": "d"}));
        assert!(decode(PatchType::Apply, br#"{"kind": "ConfigMap"}"#).is_ok());
        assert_eq!(
            decode(PatchType::Apply, b"- a\n- b\n").unwrap_err().code,
            400
        );
        assert_eq!(decode(PatchType::Merge, b"[1]").unwrap_err().code, 400);
        assert_eq!(decode(PatchType::Merge, b"{").unwrap_err().code, 400);
    }
}
