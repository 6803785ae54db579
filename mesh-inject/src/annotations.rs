//! The `mesh.dev/` annotations that shape injection, read from the pod template, the
//! workload and its namespace (the first that has one wins), and checked: a bad value is an
//! error naming the annotation, never a silently different sidecar.

use std::collections::BTreeMap;

use crate::settings::Settings;
use crate::InjectError;

/// `enabled` or `disabled`: whether the webhook injects (on a Pod, a pod template or a
/// Namespace).
pub const INJECT: &str = "mesh.dev/inject";
/// `true` / `false`: the proxy as a native sidecar.
pub const NATIVE_SIDECAR: &str = "mesh.dev/native-sidecar";
/// `enabled` / `disabled`: the mesh-init init container (disabled with a CNI plugin).
pub const INIT_CONTAINER: &str = "mesh.dev/init-container";
/// Inbound ports that bypass the proxy: numbers, ranges (`8000-8100`) or container port
/// names, comma-separated.
pub const SKIP_INBOUND_PORTS: &str = "mesh.dev/skip-inbound-ports";
/// Outbound destination ports that bypass the proxy (numbers or ranges).
pub const SKIP_OUTBOUND_PORTS: &str = "mesh.dev/skip-outbound-ports";
/// Outbound destination networks that bypass the proxy (IPv4 CIDRs).
pub const SKIP_OUTBOUND_CIDRS: &str = "mesh.dev/skip-outbound-cidrs";
/// Ports the proxy forwards as opaque TCP without protocol detection (replaces the proxy's
/// default list); numbers, ranges or container port names.
pub const OPAQUE_PORTS: &str = "mesh.dev/opaque-ports";
/// The proxy container's resources (Kubernetes quantities).
pub const PROXY_CPU_REQUEST: &str = "mesh.dev/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "mesh.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "mesh.dev/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "mesh.dev/proxy-memory-limit";
/// The proxy's log filter.
pub const PROXY_LOG_LEVEL: &str = "mesh.dev/proxy-log-level";
/// The proxy image.
pub const PROXY_IMAGE: &str = "mesh.dev/proxy-image";
/// Written by injection: the version of the injector that added the sidecar.
pub const PROXY_VERSION: &str = "mesh.dev/proxy-version";

/// Every annotation a user may set, for documentation and for "did you mean" checks.
pub const USER_ANNOTATIONS: &[&str] = &[
    INJECT,
    NATIVE_SIDECAR,
    INIT_CONTAINER,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    OPAQUE_PORTS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    PROXY_IMAGE,
];

/// Default requests of the proxy container: enough for a lightly loaded sidecar to be
/// scheduled honestly; no limits unless annotated.
pub const DEFAULT_CPU_REQUEST: &str = "10m";
pub const DEFAULT_MEMORY_REQUEST: &str = "20Mi";

/// Annotations in precedence order, each with the field path it was read from (for
/// errors): the first map that has a key wins.
pub struct Layers<'a>(pub Vec<(&'a BTreeMap<String, String>, String)>);

impl Layers<'_> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find_map(|(m, _)| m.get(key))
            .map(|s| s.trim())
    }

    /// Where the value of `key` came from.
    pub fn at(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(m, _)| m.contains_key(key))
            .map(|(_, p)| p.as_str())
            .unwrap_or("metadata.annotations")
    }
}

/// The pod's ports by name (from its app containers), for annotations that name ports.
pub type PortNames = BTreeMap<String, u16>;

/// The sidecar as the settings and annotations describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub image: String,
    pub native_sidecar: bool,
    pub init_container: bool,
    pub log_level: String,
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub skip_outbound_cidrs: Option<String>,
    pub opaque_ports: Option<String>,
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub memory_request: String,
    pub memory_limit: Option<String>,
}

/// Whether a pod wants the webhook's injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wish {
    Enabled,
    Disabled,
    Unset,
}

/// Reads `mesh.dev/inject` from the layers.
pub fn inject_wish(layers: &Layers<'_>) -> Result<Wish, InjectError> {
    match layers.get(INJECT) {
        None => Ok(Wish::Unset),
        Some("enabled") => Ok(Wish::Enabled),
        Some("disabled") => Ok(Wish::Disabled),
        Some(other) => Err(bad(
            layers.at(INJECT),
            INJECT,
            other,
            "write enabled or disabled",
        )),
    }
}

fn bad(path: &str, annotation: &str, value: &str, hint: &str) -> InjectError {
    InjectError::new(
        path,
        format!("annotation {annotation}: '{value}' is not valid; {hint}"),
    )
}

fn boolean(layers: &Layers<'_>, key: &str, default: bool) -> Result<bool, InjectError> {
    match layers.get(key) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(bad(layers.at(key), key, v, "write true or false")),
    }
}

fn switch(layers: &Layers<'_>, key: &str, default: bool) -> Result<bool, InjectError> {
    match layers.get(key) {
        None => Ok(default),
        Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        Some(v) => Err(bad(layers.at(key), key, v, "write enabled or disabled")),
    }
}

/// Applies the annotations over the settings. `path` is where the annotations live (for
/// errors); `ports` names the pod's container ports.
pub fn resolve(
    settings: &Settings,
    layers: &Layers<'_>,
    ports: &PortNames,
) -> Result<Resolved, InjectError> {
    let image = match layers.get(PROXY_IMAGE) {
        None => settings.proxy_image.clone(),
        Some(v) if !v.is_empty() && !v.contains(char::is_whitespace) => v.to_string(),
        Some(v) => {
            return Err(bad(
                layers.at(PROXY_IMAGE),
                PROXY_IMAGE,
                v,
                "write an image reference such as registry.example/mesh-proxy:0.1.0",
            ))
        }
    };
    let log_level = match layers.get(PROXY_LOG_LEVEL) {
        None => settings.proxy_log_level.clone(),
        Some(v) if is_log_filter(v) => v.to_string(),
        Some(v) => {
            return Err(bad(
                layers.at(PROXY_LOG_LEVEL),
                PROXY_LOG_LEVEL,
                v,
                "write a level (error, warn, info, debug, trace) or a filter such as info,mesh_proxy=debug",
            ))
        }
    };
    let quantity = |key: &str, kind: Quantity| -> Result<Option<String>, InjectError> {
        match layers.get(key) {
            None => Ok(None),
            Some(v) if is_quantity(v) => Ok(Some(v.to_string())),
            Some(v) => Err(bad(layers.at(key), key, v, kind.hint())),
        }
    };
    let cpu_request = quantity(PROXY_CPU_REQUEST, Quantity::Cpu)?;
    let cpu_limit = quantity(PROXY_CPU_LIMIT, Quantity::Cpu)?;
    let memory_request = quantity(PROXY_MEMORY_REQUEST, Quantity::Memory)?;
    let memory_limit = quantity(PROXY_MEMORY_LIMIT, Quantity::Memory)?;
    Ok(Resolved {
        image,
        native_sidecar: boolean(layers, NATIVE_SIDECAR, settings.native_sidecar)?,
        init_container: switch(layers, INIT_CONTAINER, settings.init_container)?,
        log_level,
        skip_inbound_ports: port_list(layers, SKIP_INBOUND_PORTS, ports)?,
        skip_outbound_ports: port_list(layers, SKIP_OUTBOUND_PORTS, &PortNames::new())?,
        skip_outbound_cidrs: cidr_list(layers)?,
        opaque_ports: port_list(layers, OPAQUE_PORTS, ports)?,
        // A limit alone also sets the request, as Kubernetes does for a container.
        cpu_request: cpu_request
            .or_else(|| cpu_limit.clone())
            .unwrap_or_else(|| DEFAULT_CPU_REQUEST.into()),
        memory_request: memory_request
            .or_else(|| memory_limit.clone())
            .unwrap_or_else(|| DEFAULT_MEMORY_REQUEST.into()),
        cpu_limit,
        memory_limit,
    })
}

#[derive(Clone, Copy)]
enum Quantity {
    Cpu,
    Memory,
}

impl Quantity {
    fn hint(self) -> &'static str {
        match self {
            Quantity::Cpu => "write a Kubernetes quantity such as 100m or 1",
            Quantity::Memory => "write a Kubernetes quantity such as 64Mi or 1Gi",
        }
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`m`, `k`, `M`..`E`) or exponent (`e3`) suffix.
pub fn is_quantity(v: &str) -> bool {
    let v = v.strip_prefix(['+', '-']).unwrap_or(v);
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    number_ok && suffix_ok
}

fn is_log_filter(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | ',' | ':' | '.' | '-'))
}

/// A comma-separated list of ports, ranges and (when `names` has them) container port names;
/// the result uses numbers only, in the order given, duplicates removed.
fn port_list(
    layers: &Layers<'_>,
    key: &str,
    names: &PortNames,
) -> Result<Option<String>, InjectError> {
    let Some(v) = layers.get(key) else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let item = if let Some((a, b)) = part.split_once('-') {
            match (port(a), port(b)) {
                (Some(a), Some(b)) if a <= b => format!("{a}-{b}"),
                _ => {
                    return Err(bad(
                        layers.at(key),
                        key,
                        v,
                        &format!("'{part}' is not a port range such as 8000-8100"),
                    ))
                }
            }
        } else if let Some(p) = port(part) {
            p.to_string()
        } else if let Some(p) = names.get(part) {
            p.to_string()
        } else {
            let hint = if names.is_empty() {
                format!("'{part}' is not a port number (1-65535)")
            } else {
                format!(
                    "'{part}' is neither a port number nor one of the pod's named ports ({})",
                    names.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(bad(layers.at(key), key, v, &hint));
        };
        if !out.contains(&item) {
            out.push(item);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(out.join(",")))
}

fn port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

fn cidr_list(layers: &Layers<'_>) -> Result<Option<String>, InjectError> {
    let Some(v) = layers.get(SKIP_OUTBOUND_CIDRS) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (addr, len) = part.split_once('/').unwrap_or((part, "32"));
        let ok = addr.parse::<std::net::Ipv4Addr>().is_ok()
            && len.parse::<u8>().map(|l| l <= 32).unwrap_or(false);
        if !ok {
            return Err(bad(
                layers.at(SKIP_OUTBOUND_CIDRS),
                SKIP_OUTBOUND_CIDRS,
                v,
                &format!("'{part}' is not an IPv4 network such as 10.0.0.0/8"),
            ));
        }
        out.push(part.to_string());
    }
    Ok((!out.is_empty()).then(|| out.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quantities() {
        for ok in ["1", "100m", "0.5", "64Mi", "1Gi", "1e3", "2k", "+1", ".5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1mb", "Mi", "1..2", "1e", "1 Gi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn the_first_layer_wins_and_names_resolve() {
        let pod = map(&[(SKIP_INBOUND_PORTS, "metrics, 9000-9010,8080")]);
        let ns = map(&[(SKIP_INBOUND_PORTS, "1"), (PROXY_LOG_LEVEL, "debug")]);
        let names = PortNames::from([("metrics".to_string(), 9090)]);
        let r = resolve(
            &Settings::default(),
            &Layers(vec![(&pod, "a".into()), (&ns, "b".into())]),
            &names,
        )
        .unwrap();
        assert_eq!(r.skip_inbound_ports.as_deref(), Some("9090,9000-9010,8080"));
        assert_eq!(r.log_level, "debug");
        assert_eq!(r.cpu_request, DEFAULT_CPU_REQUEST);
    }

    #[test]
    fn a_limit_alone_sets_the_request() {
        let pod = map(&[(PROXY_MEMORY_LIMIT, "128Mi")]);
        let r = resolve(
            &Settings::default(),
            &Layers(vec![(&pod, "x".into())]),
            &PortNames::new(),
        )
        .unwrap();
        assert_eq!(r.memory_request, "128Mi");
        assert_eq!(r.memory_limit.as_deref(), Some("128Mi"));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v) in [
            (SKIP_INBOUND_PORTS, "http"),
            (SKIP_OUTBOUND_PORTS, "70000"),
            (OPAQUE_PORTS, "9-1"),
            (SKIP_OUTBOUND_CIDRS, "10.0.0.0/40"),
            (PROXY_CPU_LIMIT, "lots"),
            (NATIVE_SIDECAR, "yes"),
            (INIT_CONTAINER, "off"),
            (PROXY_LOG_LEVEL, "info debug"),
            (PROXY_IMAGE, ""),
        ] {
            let pod = map(&[(k, v)]);
            let e = resolve(
                &Settings::default(),
                &Layers(vec![(&pod, "spec.template.metadata.annotations".into())]),
                &PortNames::new(),
            )
            .unwrap_err();
            assert!(e.message.contains(k), "{e}");
            assert_eq!(e.path, "spec.template.metadata.annotations");
        }
        let pod = map(&[(INJECT, "yes")]);
        assert!(inject_wish(&Layers(vec![(&pod, "p".into())])).is_err());
    }
}
