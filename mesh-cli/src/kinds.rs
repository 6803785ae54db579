//! The Kubernetes kinds `meshctl install` writes, with their REST resource names, so that
//! objects rendered as JSON can be applied, read and deleted without a discovery round trip.

use kube::api::{ApiResource, DynamicObject};
use kube::Api;
use serde_json::Value;

/// One kind the mesh installs.
#[derive(Debug)]
pub struct Kind {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Every kind `meshctl install` renders, in the order objects are applied.
pub const KINDS: &[Kind] = &[
    kind(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    kind("v1", "Namespace", "namespaces", false),
    kind("v1", "ServiceAccount", "serviceaccounts", true),
    kind(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    kind(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    kind("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    kind(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    kind("v1", "ConfigMap", "configmaps", true),
    kind("v1", "Secret", "secrets", true),
    kind("v1", "Service", "services", true),
    kind("apps/v1", "Deployment", "deployments", true),
    kind(
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    kind(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
];

const fn kind(
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        api_version,
        kind,
        plural,
        namespaced,
    }
}

/// The label every object of the mesh carries.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "mesh");

impl Kind {
    /// The kind of a rendered object.
    pub fn of(obj: &Value) -> Option<&'static Kind> {
        let api_version = obj.get("apiVersion")?.as_str()?;
        let kind = obj.get("kind")?.as_str()?;
        KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
    }

    pub fn resource(&self) -> ApiResource {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: self.api_version.into(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// The API for objects of this kind (in `namespace` when the kind is namespaced).
    pub fn api(&self, client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(client.clone(), namespace, &self.resource())
        } else {
            Api::all_with(client.clone(), &self.resource())
        }
    }

    /// `kind "name"` (and ` in namespace "ns"`), as kubectl names objects.
    pub fn subject(&self, namespace: &str, name: &str) -> String {
        let kind = self.kind.to_ascii_lowercase();
        if self.namespaced {
            format!("{kind} \"{name}\" in namespace \"{namespace}\"")
        } else {
            format!("{kind} \"{name}\"")
        }
    }
}

/// The name and namespace of a rendered object.
pub fn name_of(obj: &Value) -> (&str, &str) {
    let meta = obj.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    (get("name"), get("namespace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_api_version_and_kind() {
        let obj = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        let k = Kind::of(&obj).unwrap();
        assert_eq!(k.plural, "deployments");
        assert_eq!(k.resource().group, "apps");
        let core = Kind::of(&serde_json::json!({"apiVersion": "v1", "kind": "Secret"})).unwrap();
        assert_eq!(core.resource().group, "");
        assert!(Kind::of(&serde_json::json!({"apiVersion": "v1", "kind": "Pod"})).is_none());
    }
}
