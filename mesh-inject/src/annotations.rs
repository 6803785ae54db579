//! The `mesh.dev/` annotations that shape injection, read from the pod template, the
//! workload and its namespace (the first that has one wins), and checked: a bad value is an
//! error naming the annotation, never a silently different sidecar.

use std::collections::BTreeMap;

use crate::settings::{self, Settings};
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

/// Default requests of the proxy container ([`Settings`]' defaults): enough for a lightly
/// loaded sidecar to be scheduled honestly; no limits unless set or annotated.
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
    let value = |key: &str,
                 check: fn(&str) -> Result<(), &'static str>|
     -> Result<Option<String>, InjectError> {
        match layers.get(key) {
            None => Ok(None),
            Some(v) => match check(v) {
                Ok(()) => Ok(Some(v.to_string())),
                Err(hint) => Err(bad(layers.at(key), key, v, hint)),
            },
        }
    };
    let image =
        value(PROXY_IMAGE, settings::check_image)?.unwrap_or_else(|| settings.proxy_image.clone());
    let log_level = value(PROXY_LOG_LEVEL, settings::check_log_filter)?
        .unwrap_or_else(|| settings.proxy_log_level.clone());
    let (cpu_request, cpu_limit) = resources(
        layers,
        (PROXY_CPU_REQUEST, PROXY_CPU_LIMIT),
        value(PROXY_CPU_REQUEST, settings::check_cpu)?,
        value(PROXY_CPU_LIMIT, settings::check_cpu)?,
        (&settings.proxy_cpu_request, &settings.proxy_cpu_limit),
    )?;
    let (memory_request, memory_limit) = resources(
        layers,
        (PROXY_MEMORY_REQUEST, PROXY_MEMORY_LIMIT),
        value(PROXY_MEMORY_REQUEST, settings::check_memory)?,
        value(PROXY_MEMORY_LIMIT, settings::check_memory)?,
        (&settings.proxy_memory_request, &settings.proxy_memory_limit),
    )?;
    Ok(Resolved {
        image,
        native_sidecar: boolean(layers, NATIVE_SIDECAR, settings.native_sidecar)?,
        init_container: switch(layers, INIT_CONTAINER, settings.init_container)?,
        log_level,
        skip_inbound_ports: port_list(layers, SKIP_INBOUND_PORTS, ports)?,
        skip_outbound_ports: port_list(layers, SKIP_OUTBOUND_PORTS, &PortNames::new())?,
        skip_outbound_cidrs: cidr_list(layers)?,
        opaque_ports: port_list(layers, OPAQUE_PORTS, ports)?,
        cpu_request,
        cpu_limit,
        memory_request,
        memory_limit,
    })
}

/// One resource's request and limit: the annotations' over the settings'. An annotated
/// limit alone also sets the request, as Kubernetes does for a container. A request above
/// its limit is an error that names the annotation.
fn resources(
    layers: &Layers<'_>,
    (request_key, limit_key): (&str, &str),
    request: Option<String>,
    limit: Option<String>,
    (default_request, default_limit): (&String, &Option<String>),
) -> Result<(String, Option<String>), InjectError> {
    let annotated_request = request.is_some();
    let annotated_limit = limit.is_some();
    let request = request
        .or_else(|| limit.clone())
        .unwrap_or_else(|| default_request.clone());
    let limit = limit.or_else(|| default_limit.clone());
    if let Some(l) = &limit {
        if settings::exceeds(&request, l) {
            let hint = if annotated_limit {
                format!("it is more than the limit {l} ({limit_key}); lower it or raise the limit")
            } else {
                format!(
                    "it is more than the injection settings' limit {l}; lower it or also annotate {limit_key}"
                )
            };
            return Err(if annotated_request {
                bad(layers.at(request_key), request_key, &request, &hint)
            } else {
                InjectError::new(
                    "",
                    format!("the injection settings' request {request} is more than their limit {l}; correct the settings (flags or the mesh-config ConfigMap)"),
                )
            });
        }
    }
    Ok((request, limit))
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

/// The number a valid quantity stands for (`100m` is 0.1, `1Ki` is 1024), to compare a
/// request with its limit; `None` when it is not a quantity.
pub fn quantity_value(v: &str) -> Option<f64> {
    if !is_quantity(v) {
        return None;
    }
    let end = v
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map_or(v.len(), |(i, _)| i);
    let (number, suffix) = v.split_at(end);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => 10f64.powi(e[1..].parse::<i32>().ok()?),
    };
    Some(number * scale)
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
    fn quantity_values_compare() {
        for (q, v) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("1Ki", 1024.0),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("2k", 2000.0),
            ("1e3", 1000.0),
            ("+.5", 0.5),
        ] {
            let got = quantity_value(q).unwrap();
            assert!((got - v).abs() < 1e-9, "{q}: {got}");
        }
        assert_eq!(quantity_value("lots"), None);
        assert!(settings::exceeds("2", "500m"));
        assert!(!settings::exceeds("500m", "1"));
        assert!(!settings::exceeds("1Gi", "1Gi"));
    }

    #[test]
    fn the_settings_resources_apply_unless_annotated() {
        let s = Settings {
            proxy_cpu_request: "50m".into(),
            proxy_memory_request: "32Mi".into(),
            proxy_cpu_limit: Some("1".into()),
            proxy_memory_limit: Some("128Mi".into()),
            ..Settings::default()
        };
        let none = map(&[]);
        let r = resolve(&s, &Layers(vec![(&none, "x".into())]), &PortNames::new()).unwrap();
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("50m", Some("1"))
        );
        assert_eq!(
            (r.memory_request.as_str(), r.memory_limit.as_deref()),
            ("32Mi", Some("128Mi"))
        );
        let pod = map(&[(PROXY_CPU_REQUEST, "200m"), (PROXY_MEMORY_LIMIT, "64Mi")]);
        let r = resolve(&s, &Layers(vec![(&pod, "x".into())]), &PortNames::new()).unwrap();
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("200m", Some("1"))
        );
        assert_eq!(
            (r.memory_request.as_str(), r.memory_limit.as_deref()),
            ("64Mi", Some("64Mi")),
            "an annotated limit alone sets the request"
        );
    }

    #[test]
    fn a_request_above_its_limit_names_the_annotation() {
        let s = Settings {
            proxy_cpu_limit: Some("500m".into()),
            ..Settings::default()
        };
        let pod = map(&[(PROXY_CPU_REQUEST, "2")]);
        let e = resolve(&s, &Layers(vec![(&pod, "p".into())]), &PortNames::new()).unwrap_err();
        assert!(e.message.contains(PROXY_CPU_REQUEST), "{e}");
        assert!(
            e.message.contains("also annotate mesh.dev/proxy-cpu-limit"),
            "{e}"
        );
        assert_eq!(e.path, "p");
        let pod = map(&[(PROXY_MEMORY_REQUEST, "1Gi"), (PROXY_MEMORY_LIMIT, "64Mi")]);
        let e = resolve(
            &Settings::default(),
            &Layers(vec![(&pod, "p".into())]),
            &PortNames::new(),
        )
        .unwrap_err();
        assert!(e.message.contains("more than the limit 64Mi"), "{e}");
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
