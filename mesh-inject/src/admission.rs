//! The admission webhook's decision for one Pod: inject it or say why not, and the RFC 6902
//! patch that turns the submitted pod into exactly what `meshctl inject --manual` writes.

use std::collections::BTreeMap;

use crate::annotations::{self, Layers, Wish};
use crate::pod::{self, DISABLED, HOST_NETWORK};
use crate::settings::Settings;
use crate::InjectError;

/// What the webhook answers for a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// The patch that injects the pod.
    Patch(json_patch::Patch),
    /// Not injected, and why.
    Skip(String),
}

/// Decides and injects a Pod at admission: injected when the pod or its namespace is
/// annotated `mesh.dev/inject: enabled` (the pod's own `disabled` wins), it has no sidecar
/// yet and it does not use the host's network.
pub fn admit_pod(
    pod: &serde_json::Value,
    namespace_annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Admission, InjectError> {
    if pod
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k != "Pod")
    {
        return Ok(Admission::Skip("not a Pod".into()));
    }
    let mut doc: crate::Doc = serde_yaml_ng::to_value(pod)
        .map_err(|e| InjectError::new("", format!("cannot be read: {e}")))?;
    let Some(template) = doc.as_mapping_mut() else {
        return Err(InjectError::new("", "the pod is not a JSON object"));
    };
    let t = pod::examine(template, "")?;
    let ns_layer = (
        namespace_annotations,
        "the namespace's metadata.annotations".to_string(),
    );
    let pod_layer = (&t.annotations, t.annotations_path.clone());
    let wish = annotations::inject_wish(&Layers(vec![pod_layer.clone(), ns_layer.clone()]))?;
    let pod_wish = annotations::inject_wish(&Layers(vec![pod_layer]))?;
    if t.injected {
        return Ok(Admission::Skip("already injected".into()));
    }
    match wish {
        Wish::Enabled => {}
        Wish::Disabled if pod_wish == Wish::Disabled => {
            return Ok(Admission::Skip(DISABLED.into()))
        }
        Wish::Disabled => {
            return Ok(Admission::Skip(
                "its namespace is annotated mesh.dev/inject: disabled".into(),
            ))
        }
        Wish::Unset => {
            return Ok(Admission::Skip(
                "neither the pod nor its namespace is annotated mesh.dev/inject: enabled".into(),
            ))
        }
    }
    if t.host_network {
        return Ok(Admission::Skip(HOST_NETWORK.into()));
    }
    let _ = pod::add_sidecar(template, "", &t, &[ns_layer], settings)?;
    let injected = serde_json::to_value(&doc)
        .map_err(|e| InjectError::new("", format!("cannot be written as JSON: {e}")))?;
    Ok(Admission::Patch(json_patch::diff(pod, &injected)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inject, Context, Mode};
    use serde_json::json;

    fn pod(annotations: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080, "name": "http"}]}]}
        })
    }

    #[test]
    fn the_patch_gives_the_manual_injection() {
        let p = pod(json!({}));
        let ns = BTreeMap::from([("mesh.dev/inject".to_string(), "enabled".to_string())]);
        let Admission::Patch(patch) = admit_pod(&p, &ns, &Settings::default()).unwrap() else {
            panic!("not injected");
        };
        let mut patched = p.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut doc: crate::Doc = serde_yaml_ng::to_value(&p).unwrap();
        let ctx = Context {
            namespaces: BTreeMap::from([("shop".to_string(), ns)]),
            ..Context::default()
        };
        inject(&mut doc, &ctx, Mode::Manual).unwrap();
        assert_eq!(patched, serde_json::to_value(&doc).unwrap());
    }

    #[test]
    fn only_opted_in_pods_are_injected() {
        let none = BTreeMap::new();
        let s = Settings::default();
        assert!(matches!(
            admit_pod(&pod(json!({})), &none, &s).unwrap(),
            Admission::Skip(_)
        ));
        assert!(matches!(
            admit_pod(&pod(json!({"mesh.dev/inject": "enabled"})), &none, &s).unwrap(),
            Admission::Patch(_)
        ));
        let ns = BTreeMap::from([("mesh.dev/inject".to_string(), "enabled".to_string())]);
        let Admission::Skip(why) =
            admit_pod(&pod(json!({"mesh.dev/inject": "disabled"})), &ns, &s).unwrap()
        else {
            panic!("injected although disabled");
        };
        assert!(why.contains("disabled"));
        let mut host = pod(json!({"mesh.dev/inject": "enabled"}));
        host["spec"]["hostNetwork"] = json!(true);
        assert!(
            matches!(admit_pod(&host, &none, &s).unwrap(), Admission::Skip(w) if w.contains("hostNetwork"))
        );
        assert!(admit_pod(&pod(json!({"mesh.dev/inject": "maybe"})), &none, &s).is_err());
        let broken = json!({"kind": "Pod", "metadata": {"annotations": {"mesh.dev/inject": "enabled"}}, "spec": {"containers": "app"}});
        let e = admit_pod(&broken, &none, &s).unwrap_err();
        assert_eq!(e.path, "spec.containers", "{e}");
    }
}
