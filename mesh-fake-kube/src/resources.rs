//! The kinds of object the server serves: [`ResourceType`], the built-in set, and the
//! registry that also learns kinds from CustomResourceDefinition objects.

use serde_json::{json, Value};

/// One served kind at one version, e.g. `apps/v1` `Deployment` (`deployments`).
///
/// Objects are stored per group and plural, not per version: a kind served at several
/// versions (a CRD with `v1alpha1` and `v1`) shares its objects between them, and a read
/// at a version only rewrites `apiVersion` (like a CRD with conversion strategy `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`v1`).
    pub group: String,
    /// Version within the group, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `HTTPRoute`.
    pub kind: String,
    /// Plural resource name used in URLs, e.g. `httproutes`.
    pub plural: String,
    /// Whether objects live in namespaces (`false` for cluster-scoped kinds).
    pub namespaced: bool,
    /// Whether the kind has a `/status` subresource. If so, writes to the main resource
    /// ignore `.status` and writes to `/status` change only `.status`.
    pub status_subresource: bool,
    /// Short names shown in discovery (e.g. `svc`); may be empty.
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A namespaced kind without a status subresource.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
            status_subresource: false,
            short_names: Vec::new(),
        }
    }

    /// The same kind, cluster-scoped.
    #[must_use]
    pub fn cluster_scoped(mut self) -> Self {
        self.namespaced = false;
        self
    }

    /// The same kind, with a `/status` subresource.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// The same kind, with these discovery short names.
    #[must_use]
    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| (*s).to_string()).collect();
        self
    }

    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource name qualified by its group, as in error messages
    /// (`services`, `httproutes.gateway.networking.k8s.io`).
    pub(crate) fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub(crate) fn key(&self) -> ResKey {
        ResKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    pub(crate) fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }
}

/// Where objects of a kind are stored: group and plural, independent of version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ResKey {
    pub(crate) group: String,
    pub(crate) plural: String,
}

/// A served type and where it came from.
#[derive(Clone, Debug)]
struct Entry {
    rt: ResourceType,
    /// Name of the CustomResourceDefinition object that registered it, if any.
    crd: Option<String>,
}

/// All served types, in registration order (which is also discovery order).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// A registry serving only the built-in kinds (for unit tests).
    #[cfg(test)]
    pub(crate) fn builtin() -> Self {
        let mut r = Self::default();
        for rt in builtin_types() {
            r.register(rt, None);
        }
        r
    }

    /// Adds or replaces (same group, version, plural) a served type.
    pub(crate) fn register(&mut self, rt: ResourceType, crd: Option<String>) {
        if let Some(e) = self.entries.iter_mut().find(|e| {
            e.rt.group == rt.group && e.rt.version == rt.version && e.rt.plural == rt.plural
        }) {
            *e = Entry { rt, crd };
        } else {
            self.entries.push(Entry { rt, crd });
        }
    }

    /// Removes the types a CRD registered; returns them.
    pub(crate) fn unregister_crd(&mut self, crd: &str) -> Vec<ResourceType> {
        let (gone, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.crd.as_deref() == Some(crd));
        self.entries = kept;
        gone.into_iter().map(|e: Entry| e.rt).collect()
    }

    pub(crate) fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.entries
            .iter()
            .map(|e| &e.rt)
            .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
    }

    /// Finds a type by apiVersion (`v1`, `apps/v1`) and kind.
    pub(crate) fn lookup_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.entries
            .iter()
            .map(|e| &e.rt)
            .find(|rt| rt.api_version() == api_version && rt.kind == kind)
    }

    /// Finds a type by apiVersion and plural.
    pub(crate) fn lookup_api_version(
        &self,
        api_version: &str,
        plural: &str,
    ) -> Option<&ResourceType> {
        self.entries
            .iter()
            .map(|e| &e.rt)
            .find(|rt| rt.api_version() == api_version && rt.plural == plural)
    }

    /// Whether any version of this group and plural is still served.
    pub(crate) fn serves_key(&self, key: &ResKey) -> bool {
        self.entries
            .iter()
            .any(|e| e.rt.group == key.group && e.rt.plural == key.plural)
    }

    pub(crate) fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.entries.iter().map(|e| &e.rt)
    }

    /// Non-core groups in first-registration order.
    pub(crate) fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for rt in self.types() {
            if !rt.group.is_empty() && !groups.contains(&rt.group) {
                groups.push(rt.group.clone());
            }
        }
        groups
    }

    /// Versions served for a group, most preferred first (Kubernetes version priority).
    pub(crate) fn versions(&self, group: &str) -> Vec<String> {
        let mut versions: Vec<String> = Vec::new();
        for rt in self.types().filter(|rt| rt.group == group) {
            if !versions.contains(&rt.version) {
                versions.push(rt.version.clone());
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        versions
    }
}

/// Sort key for Kubernetes version priority: GA above beta above alpha above anything else,
/// then higher major, then higher minor (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1`).
fn version_priority(v: &str) -> (u8, u64, u64, std::cmp::Reverse<String>) {
    let other = (0, 0, 0, std::cmp::Reverse(v.to_string()));
    let Some(rest) = v.strip_prefix('v') else {
        return other;
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return other;
    };
    let tail = &rest[digits..];
    let (level, minor_str) = if tail.is_empty() {
        return (3, major, 0, std::cmp::Reverse(String::new()));
    } else if let Some(m) = tail.strip_prefix("beta") {
        (2, m)
    } else if let Some(m) = tail.strip_prefix("alpha") {
        (1, m)
    } else {
        return other;
    };
    match minor_str.parse::<u64>() {
        Ok(minor) => (level, major, minor, std::cmp::Reverse(String::new())),
        Err(_) => other,
    }
}

/// The kinds every fresh server serves. Gateway API kinds are registered through CRD
/// objects (see [`builtin_crds`]) so that they show up as CRDs, as on a real cluster.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    let core = |kind: &str, plural: &str| ResourceType::new("", "v1", kind, plural);
    let apps =
        |kind: &str, plural: &str| ResourceType::new("apps", "v1", kind, plural).with_status();
    vec![
        core("Namespace", "namespaces")
            .cluster_scoped()
            .with_status()
            .with_short_names(&["ns"]),
        core("Node", "nodes")
            .cluster_scoped()
            .with_status()
            .with_short_names(&["no"]),
        core("Service", "services")
            .with_status()
            .with_short_names(&["svc"]),
        core("Pod", "pods").with_status().with_short_names(&["po"]),
        core("ServiceAccount", "serviceaccounts").with_short_names(&["sa"]),
        core("Endpoints", "endpoints").with_short_names(&["ep"]),
        core("ConfigMap", "configmaps").with_short_names(&["cm"]),
        core("Secret", "secrets"),
        core("Event", "events").with_short_names(&["ev"]),
        apps("Deployment", "deployments").with_short_names(&["deploy"]),
        apps("ReplicaSet", "replicasets").with_short_names(&["rs"]),
        apps("StatefulSet", "statefulsets").with_short_names(&["sts"]),
        apps("DaemonSet", "daemonsets").with_short_names(&["ds"]),
        ResourceType::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        ResourceType::new("coordination.k8s.io", "v1", "Lease", "leases"),
        // What `meshctl install` writes: RBAC and the controller's PodDisruptionBudget.
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
        )
        .cluster_scoped(),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
        )
        .cluster_scoped(),
        ResourceType::new("rbac.authorization.k8s.io", "v1", "Role", "roles"),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
        ),
        ResourceType::new(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        )
        .with_status()
        .with_short_names(&["pdb"]),
        // kube-runtime's event `Recorder` writes these.
        ResourceType::new("events.k8s.io", "v1", "Event", "events").with_short_names(&["ev"]),
        ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        )
        .cluster_scoped()
        .with_status()
        .with_short_names(&["crd", "crds"]),
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        )
        .cluster_scoped(),
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        )
        .cluster_scoped(),
    ]
}

/// CustomResourceDefinition objects created at start-up: the standard-channel Gateway API
/// kinds the mesh uses, with schemas that preserve unknown fields and check nothing.
pub(crate) fn builtin_crds() -> Vec<Value> {
    let gw = "gateway.networking.k8s.io";
    [
        ("HTTPRoute", "httproutes", true, &["v1"][..], vec![]),
        ("GRPCRoute", "grpcroutes", true, &["v1"][..], vec![]),
        ("Gateway", "gateways", true, &["v1"][..], vec!["gtw"]),
        ("GatewayClass", "gatewayclasses", false, &["v1"][..], vec!["gc"]),
        ("ReferenceGrant", "referencegrants", true, &["v1beta1"][..], vec!["refgrant"]),
    ]
    .into_iter()
    .map(|(kind, plural, namespaced, versions, short)| {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                json!({
                    "name": v,
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    "subresources": if kind == "ReferenceGrant" { json!({}) } else { json!({"status": {}}) },
                })
            })
            .collect();
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": format!("{plural}.{gw}"),
                "annotations": {"gateway.networking.k8s.io/bundle-version": "v1.3.0"},
            },
            "spec": {
                "group": gw,
                "names": {
                    "kind": kind,
                    "listKind": format!("{kind}List"),
                    "plural": plural,
                    "singular": kind.to_ascii_lowercase(),
                    "shortNames": short,
                },
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "versions": versions,
            },
        })
    })
    .collect()
}

/// The types a CustomResourceDefinition object declares (one per served version), or a
/// validation message naming the offending field.
pub(crate) fn types_from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = str_field(spec, "/group")?;
    let plural = str_field(spec, "/names/plural")?;
    let kind = str_field(spec, "/names/kind")?;
    let expected = format!("{plural}.{group}");
    if name != expected {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
            ))
        }
    };
    let short_names: Vec<String> = spec
        .pointer("/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        )?;
    let storage_count = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage_count != 1 {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("spec.versions[{i}].name: Required value"))?;
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        out.push(ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            status_subresource: v.pointer("/subresources/status").is_some(),
            short_names: short_names.clone(),
        });
    }
    Ok(out)
}

fn str_field<'a>(v: &'a Value, pointer: &str) -> Result<&'a str, String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("spec{}: Required value", pointer.replace('/', ".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2", "foo", "v10"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            v,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn builtin_crds_parse() {
        for crd in builtin_crds() {
            let types = types_from_crd(&crd).unwrap();
            assert_eq!(types.len(), 1);
        }
    }

    #[test]
    fn crd_validation() {
        let mut crd = builtin_crds().remove(0);
        assert!(types_from_crd(&crd).is_ok());
        crd["metadata"]["name"] = json!("wrong");
        assert!(types_from_crd(&crd).unwrap_err().contains("metadata.name"));
        crd["metadata"]["name"] = json!("httproutes.gateway.networking.k8s.io");
        crd["spec"]["scope"] = json!("Global");
        assert!(types_from_crd(&crd).unwrap_err().contains("spec.scope"));
    }

    #[test]
    fn registry_versions_and_unregister() {
        let mut r = Registry::default();
        r.register(
            ResourceType::new("x.io", "v1alpha1", "Foo", "foos"),
            Some("foos.x.io".into()),
        );
        r.register(
            ResourceType::new("x.io", "v1", "Foo", "foos"),
            Some("foos.x.io".into()),
        );
        assert_eq!(r.versions("x.io"), ["v1", "v1alpha1"]);
        assert_eq!(r.groups(), ["x.io"]);
        assert!(r.lookup("x.io", "v1", "foos").is_some());
        assert!(r.lookup_kind("x.io/v1alpha1", "Foo").is_some());
        assert_eq!(r.unregister_crd("foos.x.io").len(), 2);
        assert!(r.lookup("x.io", "v1", "foos").is_none());
    }
}
