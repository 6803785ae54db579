//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: "may I do this?" for the
//! caller. Everything is allowed unless a test denied it with
//! [`crate::FakeApiServer::deny_access`] (a verb on a resource of a group, optionally only for
//! a subresource), the way a real cluster's RBAC would deny it.

use serde_json::{json, Value};

use crate::error::ApiError;

/// One denied (verb, group, resource) triple; `*` in any field matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    verb: String,
    group: String,
    resource: String,
}

impl Rule {
    fn matches(&self, verb: &str, group: &str, resource: &str) -> bool {
        let field = |rule: &str, value: &str| rule == "*" || rule == value;
        field(&self.verb, verb) && field(&self.group, group) && field(&self.resource, resource)
    }
}

/// The access reviews' answers: what tests denied.
#[derive(Debug, Default)]
pub(crate) struct Access {
    denied: Vec<Rule>,
}

impl Access {
    /// Denies `verb` on `resource` (plural, optionally `plural/subresource`) of `group`
    /// (`""` for the core group); `*` matches any value.
    pub(crate) fn deny(&mut self, verb: &str, group: &str, resource: &str) {
        let rule = Rule {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
        };
        if !self.denied.contains(&rule) {
            self.denied.push(rule);
        }
    }

    /// Allows everything again.
    pub(crate) fn allow_all(&mut self) {
        self.denied.clear();
    }

    /// The SelfSubjectAccessReview answering the review `body`.
    pub(crate) fn review(&self, body: &Value) -> Result<Value, ApiError> {
        let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
        let allowed = if let Some(attrs) = spec.get("resourceAttributes") {
            let s = |key: &str| attrs.get(key).and_then(Value::as_str).unwrap_or_default();
            let resource = match s("subresource") {
                "" => s("resource").to_string(),
                sub => format!("{}/{sub}", s("resource")),
            };
            let verb = s("verb");
            if verb.is_empty() {
                return Err(ApiError::invalid(
                    "SelfSubjectAccessReview",
                    "",
                    "spec.resourceAttributes.verb: Required value",
                ));
            }
            !self
                .denied
                .iter()
                .any(|r| r.matches(verb, s("group"), &resource))
        } else if spec.get("nonResourceAttributes").is_some() {
            true
        } else {
            return Err(ApiError::invalid(
                "SelfSubjectAccessReview",
                "",
                "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        };
        let mut status = json!({"allowed": allowed});
        if !allowed {
            status["reason"] = json!("denied by a test (FakeApiServer::deny_access)");
        }
        Ok(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(access: &Access, verb: &str, group: &str, resource: &str) -> bool {
        let body = json!({"spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource}}});
        access.review(&body).unwrap()["status"]["allowed"] == json!(true)
    }

    #[test]
    fn allows_unless_denied() {
        let mut access = Access::default();
        assert!(review(
            &access,
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles"
        ));
        access.deny("create", "rbac.authorization.k8s.io", "clusterroles");
        assert!(!review(
            &access,
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles"
        ));
        assert!(review(
            &access,
            "get",
            "rbac.authorization.k8s.io",
            "clusterroles"
        ));
        assert!(review(&access, "create", "", "namespaces"));
        access.deny("*", "", "namespaces");
        assert!(!review(&access, "delete", "", "namespaces"));
        access.allow_all();
        assert!(review(&access, "delete", "", "namespaces"));
        assert_eq!(access.review(&json!({"spec": {}})).unwrap_err().code, 422);
        let non_resource =
            json!({"spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}});
        assert_eq!(
            access.review(&non_resource).unwrap()["status"]["allowed"],
            json!(true)
        );
    }
}
