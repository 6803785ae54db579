//! Injection into one pod template (a Pod, or a workload's `spec.template`): checks, the
//! annotation, the sidecar, and their exact removal.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_yaml_ng::{Mapping, Value};

use crate::annotations::{self, Layers, PortNames, Wish, INJECT, PROXY_VERSION};
use crate::doc;
use crate::settings::Settings;
use crate::sidecar::{
    self, ADMIN_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER,
};
use crate::{InjectError, Outcome};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a host-network pod is not injected.
pub const HOST_NETWORK: &str =
    "hostNetwork: true: the pod shares the node's network, whose traffic the proxy must not capture";
/// Why an opted-out workload is not injected.
pub const DISABLED: &str =
    "annotated mesh.dev/inject: disabled (remove the annotation to inject it)";

/// What injection needs to know about a pod template.
pub struct Template {
    /// The template's own annotations, and their field path.
    pub annotations: BTreeMap<String, String>,
    pub annotations_path: String,
    pub host_network: bool,
    /// It already has the sidecar.
    pub injected: bool,
    /// The app containers' named ports.
    pub ports: PortNames,
}

/// Reads and checks a template: `spec` must be a valid PodSpec.
pub fn examine(template: &Mapping, at: &str) -> Result<Template, InjectError> {
    let annotations = doc::annotations(template.get("metadata"), &format!("{at}metadata"))?;
    let annotations_path = format!("{at}metadata.annotations");
    let spec_path = format!("{at}spec");
    let spec = match template.get("spec") {
        Some(s @ Value::Mapping(_)) => s.clone(),
        Some(_) => return Err(InjectError::new(spec_path, "is not a mapping")),
        None => {
            return Err(InjectError::new(
                spec_path,
                "is missing; a pod template needs a spec with containers",
            ))
        }
    };
    let spec: PodSpec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let field = e.path().to_string();
        let where_ = if field == "." || field.is_empty() {
            spec_path.clone()
        } else {
            format!("{spec_path}.{field}")
        };
        InjectError::new(
            where_,
            format!("{} (the pod template is not a valid PodSpec)", e.inner()),
        )
    })?;
    if spec.containers.is_empty() {
        return Err(InjectError::new(
            format!("{spec_path}.containers"),
            "is empty; a pod needs at least one container",
        ));
    }
    let all = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
    };
    let injected = all().any(|c| c.name == PROXY_CONTAINER);
    let mut ports = PortNames::new();
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name == PROXY_CONTAINER {
            continue;
        }
        for p in c.ports.iter().flatten() {
            let n = p.container_port;
            if !injected
                && [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT]
                    .iter()
                    .any(|q| i32::from(*q) == n)
            {
                return Err(InjectError::new(
                    format!("{spec_path}.containers[{i}].ports"),
                    format!(
                        "container '{}' uses port {n}, which the proxy needs ({INBOUND_PORT} inbound, {OUTBOUND_PORT} outbound, {ADMIN_PORT} admin); move the app to another port",
                        c.name
                    ),
                ));
            }
            if let (Some(name), Ok(port)) = (&p.name, u16::try_from(n)) {
                ports.insert(name.clone(), port);
            }
        }
    }
    if !injected {
        if let Some(c) = all().find(|c| c.name == INIT_CONTAINER) {
            return Err(InjectError::new(
                spec_path.clone(),
                format!(
                    "has a container named '{}' but no '{PROXY_CONTAINER}': the name is the mesh's; rename the container, or run meshctl uninject first if this is a half-removed sidecar",
                    c.name
                ),
            ));
        }
    }
    Ok(Template {
        annotations,
        annotations_path,
        host_network: spec.host_network == Some(true),
        injected,
        ports,
    })
}

/// Annotations from beyond the template, with where they were read (for errors).
pub type Layer<'a> = (&'a BTreeMap<String, String>, String);

fn layers<'a>(t: &'a Template, more: &[Layer<'a>]) -> Layers<'a> {
    let mut v = vec![(&t.annotations, t.annotations_path.clone())];
    v.extend(more.iter().cloned());
    Layers(v)
}

fn set_annotation(
    template: &mut Mapping,
    at: &str,
    key: &str,
    value: &str,
) -> Result<(), InjectError> {
    if !matches!(template.get("metadata"), Some(Value::Mapping(_))) {
        doc::insert_first(template, "metadata", Value::Mapping(Mapping::new()));
    }
    let meta = doc::map_entry(template, "metadata", at)?;
    let annotations = doc::map_entry(meta, "annotations", &format!("{at}metadata."))?;
    annotations.insert(key.into(), value.into());
    Ok(())
}

/// The template's workload-level opt-out (its own annotations, or the workload's).
fn opted_out(t: &Template, more: &[Layer<'_>]) -> Result<bool, InjectError> {
    // Only the object's own annotations count here (the namespace's layer is last): a
    // namespace-wide `disabled` does not stop an explicit `meshctl inject`.
    let mut own = layers(t, more);
    own.0.truncate(more.len());
    Ok(annotations::inject_wish(&own)? == Wish::Disabled)
}

/// `more`: the workload's annotations, then the namespace's (last).
pub fn annotate(
    template: &mut Mapping,
    at: &str,
    more: &[Layer<'_>],
    settings: &Settings,
) -> Result<Outcome, InjectError> {
    let t = examine(template, at)?;
    if t.injected || t.annotations.get(INJECT).map(|v| v.trim()) == Some("enabled") {
        return Ok(Outcome::AlreadyInjected);
    }
    if opted_out(&t, more)? {
        return Ok(Outcome::Skipped(DISABLED.into()));
    }
    if t.host_network {
        return Ok(Outcome::Skipped(HOST_NETWORK.into()));
    }
    // The annotations are checked now, not only when the webhook reads them.
    annotations::resolve(settings, &layers(&t, more), &t.ports)?;
    set_annotation(template, at, INJECT, "enabled")?;
    Ok(Outcome::Annotated)
}

/// Adds the sidecar. `more`: the workload's annotations, then the namespace's (last).
/// With it, whether the proxy is a native sidecar.
pub fn inject_template(
    template: &mut Mapping,
    at: &str,
    more: &[Layer<'_>],
    settings: &Settings,
) -> Result<(Outcome, Option<bool>), InjectError> {
    let t = examine(template, at)?;
    if t.injected {
        return Ok((Outcome::AlreadyInjected, None));
    }
    if opted_out(&t, more)? {
        return Ok((Outcome::Skipped(DISABLED.into()), None));
    }
    if t.host_network {
        return Ok((Outcome::Skipped(HOST_NETWORK.into()), None));
    }
    let r = add_sidecar(template, at, &t, more, settings)?;
    Ok((Outcome::Injected, Some(r.native_sidecar)))
}

/// Adds the sidecar to an examined, injectable template.
pub fn add_sidecar(
    template: &mut Mapping,
    at: &str,
    t: &Template,
    more: &[Layer<'_>],
    settings: &Settings,
) -> Result<annotations::Resolved, InjectError> {
    let r = annotations::resolve(settings, &layers(t, more), &t.ports)?;
    let spec_path = format!("{at}spec.");
    let spec = doc::map_entry(template, "spec", at)?;
    let proxy = doc::to_value(&sidecar::proxy_container(settings, &r));
    if !matches!(spec.get("initContainers"), Some(Value::Sequence(_))) {
        doc::insert_before(
            spec,
            "containers",
            "initContainers",
            Value::Sequence(Vec::new()),
        );
    }
    {
        let inits = doc::seq_entry(spec, "initContainers", &spec_path)?;
        if r.native_sidecar {
            // mesh-init first, so that every later init container's traffic is the pod's;
            // the native sidecar right after it, so that those init containers already
            // have a proxy.
            inits.insert(0, proxy.clone());
            if r.init_container {
                inits.insert(0, doc::to_value(&sidecar::init_container(&r)));
            }
        } else if r.init_container {
            // Without native sidecars no proxy runs during the init phase: mesh-init goes
            // last, so that the pod's own init containers still reach the network (outside
            // the mesh) instead of being redirected to a proxy that is not there yet.
            inits.push(doc::to_value(&sidecar::init_container(&r)));
        }
    }
    doc::drop_if_empty(spec, "initContainers");
    if !r.native_sidecar {
        let containers = doc::seq_entry(spec, "containers", &spec_path)?;
        containers.insert(0, proxy);
    }
    let volumes = doc::seq_entry(spec, "volumes", &spec_path)?;
    volumes.push(doc::to_value(&sidecar::token_volume(settings)));
    if r.init_container {
        volumes.push(doc::to_value(&sidecar::xtables_volume()));
    }
    set_annotation(template, at, PROXY_VERSION, VERSION)?;
    Ok(r)
}

/// Removes the sidecar, its volumes and the annotations injection writes.
pub fn uninject_template(template: &mut Mapping, at: &str) -> Result<Outcome, InjectError> {
    let mut changed = false;
    if let Some(Value::Mapping(meta)) = template.get_mut("metadata") {
        if let Some(Value::Mapping(a)) = meta.get_mut("annotations") {
            changed |= a.shift_remove(PROXY_VERSION).is_some();
            if a.get(INJECT).and_then(Value::as_str).map(str::trim) == Some("enabled") {
                a.shift_remove(INJECT);
                changed = true;
            }
        }
        if changed {
            doc::drop_if_empty(meta, "annotations");
        }
    }
    if changed {
        doc::drop_if_empty(template, "metadata");
    }
    let spec_path = format!("{at}spec.");
    if let Some(Value::Mapping(spec)) = template.get_mut("spec") {
        for (key, names) in [
            ("initContainers", &[INIT_CONTAINER, PROXY_CONTAINER][..]),
            ("containers", &[PROXY_CONTAINER][..]),
            ("volumes", sidecar::VOLUMES),
        ] {
            match spec.get_mut(key) {
                Some(Value::Sequence(items)) => {
                    let before = items.len();
                    items.retain(|c| !doc::item_name(c).is_some_and(|n| names.contains(&n)));
                    if items.len() != before {
                        changed = true;
                        if key != "containers" {
                            doc::drop_if_empty(spec, key);
                        }
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(InjectError::new(
                        format!("{spec_path}{key}"),
                        "is not a list",
                    ))
                }
            }
        }
    }
    Ok(if changed {
        Outcome::Uninjected
    } else {
        Outcome::NotInjected
    })
}

/// Annotates a Namespace so that the webhook injects every pod created in it.
pub fn annotate_namespace(map: &mut Mapping) -> Result<Outcome, InjectError> {
    let current = doc::annotations(map.get("metadata"), "metadata")?;
    if current.get(INJECT).map(|v| v.trim()) == Some("enabled") {
        return Ok(Outcome::AlreadyInjected);
    }
    set_annotation(map, "", INJECT, "enabled")?;
    Ok(Outcome::Annotated)
}

/// Removes a Namespace's `mesh.dev/inject: enabled`.
pub fn unannotate_namespace(map: &mut Mapping) -> Result<Outcome, InjectError> {
    if let Some(Value::Mapping(meta)) = map.get_mut("metadata") {
        if let Some(Value::Mapping(a)) = meta.get_mut("annotations") {
            if a.get(INJECT).and_then(Value::as_str).map(str::trim) == Some("enabled") {
                a.shift_remove(INJECT);
                doc::drop_if_empty(meta, "annotations");
                return Ok(Outcome::Uninjected);
            }
        }
    }
    Ok(Outcome::NotInjected)
}
