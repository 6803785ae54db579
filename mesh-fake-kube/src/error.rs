//! Errors as the API server reports them: `Status` objects with a reason and an HTTP code,
//! which kube-rs turns into `kube::Error::Api`.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// A failed API request, rendered as a `meta.k8s.io/v1` `Status` object.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code, also the Status `code`.
    pub code: u16,
    /// Machine-readable reason, e.g. `NotFound`, `Conflict`.
    pub reason: &'static str,
    /// Human-readable message, worded like the real API server's where it matters.
    pub message: String,
    /// Status `details` (`name`, `group`, `kind`), if any.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    /// 404 for a named object.
    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified_plural()),
        )
        .with_details(rt, name)
    }

    /// 404 for a URL that names no known resource.
    pub(crate) fn no_such_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 on create of an existing object.
    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified_plural()),
        )
        .with_details(rt, name)
    }

    /// 409 on a write with a stale `resourceVersion`.
    pub(crate) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified_plural()
            ),
        )
        .with_details(rt, name)
    }

    /// 409 when a delete precondition does not hold.
    pub(crate) fn precondition_failed(rt: &ResourceType, name: &str, what: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {what}",
                rt.qualified_plural()
            ),
        )
        .with_details(rt, name)
    }

    /// 400 for a malformed request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 for an object (or options) that fails validation.
    pub(crate) fn invalid(kind: &str, name: &str, message: impl Into<String>) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", message.into()),
        )
    }

    /// 410 for a resourceVersion older than the retained history.
    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 405 for a verb the path does not support.
    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 for a patch or body content type the server does not understand.
    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json \
                 (got {content_type:?})"
            ),
        )
    }

    /// 404 for a namespaced write into a namespace that does not exist.
    pub(crate) fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
            .with_details(&ResourceType::new("", "v1", "Namespace", "namespaces"), ns)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shape() {
        let rt = ResourceType::new("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
        let s = ApiError::not_found(&rt, "web").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["status"], "Failure");
        assert_eq!(
            s["message"],
            "httproutes.gateway.networking.k8s.io \"web\" not found"
        );
        assert_eq!(s["details"]["kind"], "httproutes");
    }
}
