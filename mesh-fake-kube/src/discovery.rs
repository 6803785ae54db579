//! Discovery documents: `/version`, `/api` (`APIVersions`), `/apis` (`APIGroupList`),
//! `/apis/{group}` (`APIGroup`), `/api/v1` and `/apis/{group}/{version}`
//! (`APIResourceList`), and the aggregated form (`apidiscovery.k8s.io/v2`
//! `APIGroupDiscoveryList`) served at `/api` and `/apis` when the client asks for it.
//!
//! kube-rs `Discovery::run` and `discovery::pinned_kind` use the legacy documents;
//! `Discovery::run_aggregated` uses the aggregated ones.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::resources::{Registry, ResourceType};

/// The `Accept` parameter by which a client asks for aggregated discovery.
pub(crate) const AGGREGATED_MARKER: &str = "as=APIGroupDiscoveryList";

/// `Content-Type` of an aggregated discovery response.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The Kubernetes version `/version` reports unless a test sets another
/// ([`crate::FakeApiServer::set_server_version`]): 1.32, the oldest the mesh supports.
pub(crate) const DEFAULT_VERSION: (u32, u32) = (1, 32);

/// `/version`: reports Kubernetes `major.minor` (`gitVersion` `v{major}.{minor}.0-fake`).
pub(crate) fn version(major: u32, minor: u32) -> Value {
    json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0-fake"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

fn group_json(registry: &Registry, group: &str) -> Option<Value> {
    let versions = registry.versions(group);
    let preferred = versions.first()?;
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(preferred),
    }))
}

/// `/apis`.
pub(crate) fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .filter_map(|g| group_json(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub(crate) fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let mut g = group_json(registry, group)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn served_at<'a>(
    registry: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a ResourceType> {
    registry
        .types()
        .filter(move |rt| rt.group == group && rt.version == version)
}

/// `/api/v1` or `/apis/{group}/{version}`; `None` if nothing is served there.
pub(crate) fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for rt in served_at(registry, group, version) {
        let mut main = json!({
            "name": rt.plural,
            "singularName": rt.singular(),
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": VERBS,
        });
        if !rt.short_names.is_empty() {
            main["shortNames"] = json!(rt.short_names);
        }
        resources.push(main);
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn aggregated_group(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = if group.is_empty() {
        vec!["v1".to_string()]
    } else {
        registry.versions(group)
    }
    .into_iter()
    .map(|version| {
        let resources: Vec<Value> = served_at(registry, group, &version)
            .map(|rt| {
                let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
                let subresources: Vec<Value> = if rt.status_subresource {
                    vec![json!({"subresource": "status", "responseKind": gvk, "verbs": STATUS_VERBS})]
                } else {
                    Vec::new()
                };
                json!({
                    "resource": rt.plural,
                    "responseKind": gvk,
                    "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": rt.singular(),
                    "verbs": VERBS,
                    "shortNames": rt.short_names,
                    "subresources": subresources,
                })
            })
            .collect();
        json!({"version": version, "resources": resources, "freshness": "Current"})
    })
    .collect();
    json!({"metadata": {"name": group}, "versions": versions})
}

/// Aggregated discovery for `/api` (`core == true`) or `/apis`.
pub(crate) fn aggregated(registry: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(registry, "")]
    } else {
        registry
            .groups()
            .iter()
            .map(|g| aggregated_group(registry, g))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::builtin()
    }

    #[test]
    fn core_resource_list_has_status_subresources() {
        let list = resource_list(&registry(), "", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"services"));
        assert!(names.contains(&"services/status"));
        assert!(!names.contains(&"configmaps/status"));
    }

    #[test]
    fn groups() {
        let r = registry();
        let groups = api_group_list(&r);
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "discovery.k8s.io"
                && g["preferredVersion"]["groupVersion"] == "discovery.k8s.io/v1"));
        assert!(resource_list(&r, "apps", "v2").is_none());
        assert!(api_group(&r, "nope").is_none());
        assert_eq!(api_group(&r, "apps").unwrap()["kind"], "APIGroup");
        let agg = aggregated(&r, false);
        assert!(agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps"));
    }
}
