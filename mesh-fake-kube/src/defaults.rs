//! Kind-specific behaviour of the real API server that tests tend to rely on: namespace
//! labels and phase, Service cluster IPs and port defaults, Pod phase, Secret `stringData`,
//! and CustomResourceDefinition validation and status.
//!
//! Everything else is stored as sent: there is no general defaulting (validation is in
//! `validation`).

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resources::{types_from_crd, ResourceType};
use crate::util::base64_encode;

/// State the hooks need from the store.
#[derive(Debug)]
pub(crate) struct Allocator {
    /// Next host number to hand out in 10.96.0.0/12.
    next_service_ip: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        // 10.96.0.1 is the `kubernetes` Service on a real cluster; start after it.
        Self {
            next_service_ip: 10,
        }
    }
}

impl Allocator {
    fn cluster_ip(&mut self) -> String {
        let n = self.next_service_ip;
        self.next_service_ip += 1;
        // 10.96.0.0/12 has 2^20 addresses; wrap well before leaving it.
        let host = n % (1 << 20);
        format!(
            "10.{}.{}.{}",
            96 + (host >> 16),
            (host >> 8) & 0xff,
            host & 0xff
        )
    }
}

/// Fills in what the real server adds on create; may reject the object (422).
pub(crate) fn on_create(
    alloc: &mut Allocator,
    rt: &ResourceType,
    obj: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = name_of(obj);
            labels_mut(obj).insert("kubernetes.io/metadata.name".into(), json!(name));
            let spec = object_mut(obj, "spec");
            spec.entry("finalizers").or_insert(json!(["kubernetes"]));
            obj.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "Service") => {
            let spec = object_mut(obj, "spec");
            let ty = spec
                .entry("type")
                .or_insert(json!("ClusterIP"))
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ty != "ExternalName" {
                let needs_ip = !matches!(spec.get("clusterIP").and_then(Value::as_str), Some(s) if !s.is_empty());
                if needs_ip {
                    spec.insert("clusterIP".into(), json!(alloc.cluster_ip()));
                }
                if let Some(ip) = spec.get("clusterIP").cloned() {
                    spec.entry("clusterIPs").or_insert(json!([ip]));
                }
                spec.entry("sessionAffinity").or_insert(json!("None"));
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
                spec.entry("internalTrafficPolicy")
                    .or_insert(json!("Cluster"));
            }
            default_service_ports(spec);
            obj.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("", "Pod") => {
            obj.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "Secret") => {
            secret_string_data(obj);
            obj.entry("type").or_insert(json!("Opaque"));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            crd_status(rt, obj, None)?;
        }
        _ => {}
    }
    Ok(())
}

/// Keeps what the real server keeps on update; may reject the change (422).
pub(crate) fn on_update(
    rt: &ResourceType,
    old: &Map<String, Value>,
    new: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = name_of(new);
            labels_mut(new).insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        ("", "Service") => {
            let old_ip = old.get("spec").and_then(|s| s.get("clusterIP")).cloned();
            let old_ips = old.get("spec").and_then(|s| s.get("clusterIPs")).cloned();
            let spec = object_mut(new, "spec");
            match (old_ip, spec.get("clusterIP").cloned()) {
                (Some(old), None) => {
                    spec.insert("clusterIP".into(), old);
                    if let Some(ips) = old_ips {
                        spec.entry("clusterIPs").or_insert(ips);
                    }
                }
                (Some(old), Some(new_ip)) if old != new_ip && new_ip != json!("") => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &name_of(new),
                        "spec.clusterIPs[0]: Invalid value: field is immutable",
                    ));
                }
                _ => {}
            }
            default_service_ports(object_mut(new, "spec"));
        }
        ("", "Secret") => secret_string_data(new),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd_status(rt, new, Some(old))?,
        _ => {}
    }
    Ok(())
}

fn default_service_ports(spec: &mut Map<String, Value>) {
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert(json!("TCP"));
            if let Some(p) = port.get("port").cloned() {
                port.entry("targetPort").or_insert(p);
            }
        }
    }
}

/// Folds `stringData` into base64 `data`, as the real server does on every write.
fn secret_string_data(obj: &mut Map<String, Value>) {
    if let Some(Value::Object(string_data)) = obj.remove("stringData") {
        let data = object_mut(obj, "data");
        for (k, v) in string_data {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            data.insert(k, json!(base64_encode(text.as_bytes())));
        }
    }
}

/// Validates a CRD and sets the status a real server reports once it is established.
/// A CRD's status: its accepted names, stored versions and conditions. On update (`old`), a
/// condition that keeps its status keeps its `lastTransitionTime`, as on a real server, so
/// re-applying an unchanged CRD is a no-op.
fn crd_status(
    rt: &ResourceType,
    obj: &mut Map<String, Value>,
    old: Option<&Map<String, Value>>,
) -> Result<(), ApiError> {
    let value = Value::Object(obj.clone());
    types_from_crd(&value).map_err(|e| ApiError::invalid(&rt.kind, &name_of(obj), e))?;
    let names = value.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if let Some(a) = accepted.as_object_mut() {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        a.entry("listKind").or_insert(json!(format!("{kind}List")));
        a.entry("singular")
            .or_insert(json!(kind.to_ascii_lowercase()));
    }
    let stored: Vec<Value> = value
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let now = crate::util::now_rfc3339();
    let since = |ty: &str| {
        old.and_then(|o| o.get("status"))
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == ty && c["status"] == "True")
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let condition = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastTransitionTime": since(ty)});
    obj.insert(
        "status".into(),
        json!({
            "acceptedNames": accepted,
            "storedVersions": stored,
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
        }),
    );
    Ok(())
}

fn name_of(obj: &Map<String, Value>) -> String {
    obj.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The object at `obj[key]`, replacing anything that is not an object.
pub(crate) fn object_mut<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> &'a mut Map<String, Value> {
    let slot = obj.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        // Just made sure it is an object.
        _ => unreachable!("slot was replaced by an object"),
    }
}

fn labels_mut(obj: &mut Map<String, Value>) -> &mut Map<String, Value> {
    object_mut(object_mut(obj, "metadata"), "labels")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn services_get_cluster_ips_and_port_defaults() {
        let rt = ResourceType::new("", "v1", "Service", "services");
        let mut alloc = Allocator::default();
        let mut svc = map(json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}));
        on_create(&mut alloc, &rt, &mut svc).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        let mut headless = map(json!({"metadata": {"name": "b"}, "spec": {"clusterIP": "None"}}));
        on_create(&mut alloc, &rt, &mut headless).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");

        let mut updated =
            map(json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 81}]}}));
        on_update(&rt, &svc, &mut updated).unwrap();
        assert_eq!(updated["spec"]["clusterIP"], "10.96.0.10");
        let mut changed =
            map(json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.99"}}));
        assert_eq!(on_update(&rt, &svc, &mut changed).unwrap_err().code, 422);
    }

    #[test]
    fn secrets_fold_string_data() {
        let rt = ResourceType::new("", "v1", "Secret", "secrets");
        let mut s = map(json!({"metadata": {"name": "s"}, "stringData": {"k": "hello world"}}));
        on_create(&mut Allocator::default(), &rt, &mut s).unwrap();
        assert_eq!(s["data"]["k"], "aGVsbG8gd29ybGQ=");
        assert_eq!(s["type"], "Opaque");
        assert!(!s.contains_key("stringData"));
    }

    #[test]
    fn an_unchanged_crd_keeps_its_condition_times() {
        let rt = ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        )
        .cluster_scoped();
        let crd = json!({
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"kind": "Thing", "plural": "things"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
        });
        let mut old = map(crd.clone());
        on_create(&mut Allocator::default(), &rt, &mut old).unwrap();
        // An old transition time, as if the CRD was created long ago.
        old.get_mut("status").unwrap()["conditions"][1]["lastTransitionTime"] =
            json!("2020-01-01T00:00:00Z");
        let mut new = map(crd);
        on_update(&rt, &old, &mut new).unwrap();
        assert_eq!(
            new["status"]["conditions"][1]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(new["status"]["conditions"][1]["type"], "Established");
    }

    #[test]
    fn allocator_stays_in_range() {
        let mut a = Allocator {
            next_service_ip: (1 << 20) - 1,
        };
        assert_eq!(a.cluster_ip(), "10.111.255.255");
        assert_eq!(a.cluster_ip(), "10.96.0.0");
    }
}
