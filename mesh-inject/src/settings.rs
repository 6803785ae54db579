//! Injection settings: what the injected sidecar looks like when no annotation says
//! otherwise. `meshctl inject` and the controller's webhook take them from the same flags
//! ([`SettingsArgs`], feature `clap`); the webhook also reads them from the `mesh-config`
//! ConfigMap ([`Settings::with_config_map`], keys in [`keys`]). Every value is checked as
//! the annotations that override it are ([`Settings::validate`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::annotations::{is_quantity, quantity_value};
pub use crate::annotations::{DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_REQUEST};

/// The proxy image's default tag: the version of this build.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("mesh-proxy:", env!("CARGO_PKG_VERSION"));
/// Where injected proxies reach the controller's gRPC APIs.
pub const DEFAULT_CONTROLLER_ADDR: &str =
    "http://mesh-controller.mesh-system.svc.cluster.local:8086";
/// The audience of the projected service-account token (the controller checks it with a
/// TokenReview for this audience).
pub const TOKEN_AUDIENCE: &str = "mesh.dev/identity";
/// Lifetime of the projected token: the shortest Kubernetes allows; the kubelet refreshes it
/// at 80% and the proxy re-reads it before each certificate request.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// How the sidecar is injected, before annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The proxy image (also runs `mesh-proxy init`).
    pub proxy_image: String,
    /// The controller's gRPC address, as proxies see it.
    pub controller_addr: String,
    /// SPIFFE trust domain of the workload identities.
    pub trust_domain: String,
    /// The proxy as a native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29+); otherwise the first regular container with a postStart hook.
    pub native_sidecar: bool,
    /// Add the `mesh-init` init container that installs the iptables rules; off when a CNI
    /// plugin sets up the redirection.
    pub init_container: bool,
    /// The proxy's log filter.
    pub proxy_log_level: String,
    /// The proxy container's CPU request (a Kubernetes quantity).
    pub proxy_cpu_request: String,
    /// The proxy container's memory request.
    pub proxy_memory_request: String,
    /// The proxy container's CPU limit; `None`: no limit.
    pub proxy_cpu_limit: Option<String>,
    /// The proxy container's memory limit; `None`: no limit.
    pub proxy_memory_limit: Option<String>,
    /// Audience of the projected token.
    pub token_audience: String,
    /// Lifetime of the projected token, in seconds (at least 600).
    pub token_expiration_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            controller_addr: DEFAULT_CONTROLLER_ADDR.into(),
            trust_domain: "cluster.local".into(),
            native_sidecar: true,
            init_container: true,
            proxy_log_level: "info".into(),
            proxy_cpu_request: DEFAULT_CPU_REQUEST.into(),
            proxy_memory_request: DEFAULT_MEMORY_REQUEST.into(),
            proxy_cpu_limit: None,
            proxy_memory_limit: None,
            token_audience: TOKEN_AUDIENCE.into(),
            token_expiration_seconds: TOKEN_EXPIRATION_SECONDS,
        }
    }
}

/// The injection keys of the `mesh-config` ConfigMap (all strings), which are also the
/// names of `meshctl inject`'s flags without `--`. Other keys of that ConfigMap are not
/// injection settings.
pub mod keys {
    pub const PROXY_IMAGE: &str = "proxy-image";
    pub const CONTROLLER_ADDR: &str = "controller-addr";
    /// `"true"` or `"false"`.
    pub const NATIVE_SIDECAR: &str = "native-sidecar";
    /// `"true"` or `"false"`.
    pub const INIT_CONTAINER: &str = "init-container";
    pub const PROXY_LOG_LEVEL: &str = "proxy-log-level";
    pub const PROXY_CPU_REQUEST: &str = "proxy-cpu-request";
    pub const PROXY_MEMORY_REQUEST: &str = "proxy-memory-request";
    /// `""`: no limit.
    pub const PROXY_CPU_LIMIT: &str = "proxy-cpu-limit";
    /// `""`: no limit.
    pub const PROXY_MEMORY_LIMIT: &str = "proxy-memory-limit";
    /// Every injection key.
    pub const ALL: &[&str] = &[
        PROXY_IMAGE,
        CONTROLLER_ADDR,
        NATIVE_SIDECAR,
        INIT_CONTAINER,
        PROXY_LOG_LEVEL,
        PROXY_CPU_REQUEST,
        PROXY_MEMORY_REQUEST,
        PROXY_CPU_LIMIT,
        PROXY_MEMORY_LIMIT,
    ];
}

/// A setting with a bad value: its key (see [`keys`]), the value and what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: '{value}' is not valid; {hint}")]
pub struct SettingError {
    pub key: &'static str,
    pub value: String,
    pub hint: String,
}

/// Every bad setting found at once; displays as `key: ...; key: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingErrors(pub Vec<SettingError>);

impl fmt::Display for SettingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingErrors {}

/// Checks an image reference; `Err` says what to write instead.
pub fn check_image(v: &str) -> Result<(), &'static str> {
    if !v.is_empty() && !v.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err("write an image reference such as registry.example/mesh-proxy:0.1.0")
    }
}

/// Checks a proxy log filter (`MESH_PROXY_LOG`).
pub fn check_log_filter(v: &str) -> Result<(), &'static str> {
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | ',' | ':' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err("write a level (error, warn, info, debug, trace) or a filter such as info,mesh_proxy=debug")
    }
}

/// Checks a CPU quantity.
pub fn check_cpu(v: &str) -> Result<(), &'static str> {
    if is_quantity(v) {
        Ok(())
    } else {
        Err("write a Kubernetes quantity such as 100m or 1")
    }
}

/// Checks a memory quantity.
pub fn check_memory(v: &str) -> Result<(), &'static str> {
    if is_quantity(v) {
        Ok(())
    } else {
        Err("write a Kubernetes quantity such as 64Mi or 1Gi")
    }
}

/// Checks the controller's address as proxies reach it (`MESH_PROXY_CONTROLLER_ADDR`).
pub fn check_controller_addr(v: &str) -> Result<(), &'static str> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !v.contains(char::is_whitespace) => Ok(()),
        _ => Err("write the controller's gRPC URL such as http://mesh-controller.mesh-system.svc.cluster.local:8086"),
    }
}

/// `"true"` or `"false"`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Whether `request` is more than `limit` (both valid quantities).
pub(crate) fn exceeds(request: &str, limit: &str) -> bool {
    match (quantity_value(request), quantity_value(limit)) {
        (Some(r), Some(l)) => r > l,
        _ => false,
    }
}

impl Settings {
    /// Checks every value the way the annotations that override it are checked, and that
    /// no request is more than its limit. Lists every bad setting.
    pub fn validate(&self) -> Result<(), SettingErrors> {
        let mut errors = Vec::new();
        let mut check = |key: &'static str, value: &str, r: Result<(), &'static str>| {
            if let Err(hint) = r {
                errors.push(SettingError {
                    key,
                    value: value.to_string(),
                    hint: hint.to_string(),
                });
            }
        };
        check(
            keys::PROXY_IMAGE,
            &self.proxy_image,
            check_image(&self.proxy_image),
        );
        check(
            keys::CONTROLLER_ADDR,
            &self.controller_addr,
            check_controller_addr(&self.controller_addr),
        );
        check(
            keys::PROXY_LOG_LEVEL,
            &self.proxy_log_level,
            check_log_filter(&self.proxy_log_level),
        );
        check(
            keys::PROXY_CPU_REQUEST,
            &self.proxy_cpu_request,
            check_cpu(&self.proxy_cpu_request),
        );
        check(
            keys::PROXY_MEMORY_REQUEST,
            &self.proxy_memory_request,
            check_memory(&self.proxy_memory_request),
        );
        if let Some(l) = &self.proxy_cpu_limit {
            check(keys::PROXY_CPU_LIMIT, l, check_cpu(l));
        }
        if let Some(l) = &self.proxy_memory_limit {
            check(keys::PROXY_MEMORY_LIMIT, l, check_memory(l));
        }
        for (key, request, limit_key, limit) in [
            (
                keys::PROXY_CPU_REQUEST,
                &self.proxy_cpu_request,
                keys::PROXY_CPU_LIMIT,
                &self.proxy_cpu_limit,
            ),
            (
                keys::PROXY_MEMORY_REQUEST,
                &self.proxy_memory_request,
                keys::PROXY_MEMORY_LIMIT,
                &self.proxy_memory_limit,
            ),
        ] {
            if let Some(limit) = limit {
                if exceeds(request, limit) {
                    errors.push(SettingError {
                        key,
                        value: request.clone(),
                        hint: format!(
                            "it is more than {limit_key} {limit}; lower it or raise the limit"
                        ),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SettingErrors(errors))
        }
    }

    /// These settings with the injection keys of a `mesh-config` ConfigMap's data over them
    /// (values trimmed; a missing key keeps the value it has here; other keys are ignored),
    /// checked with [`Settings::validate`]. Any bad value rejects the whole ConfigMap.
    pub fn with_config_map(&self, data: &BTreeMap<String, String>) -> Result<Self, SettingErrors> {
        let mut s = self.clone();
        let mut errors = Vec::new();
        for (key, raw) in data {
            let v = raw.trim();
            let mut boolean = |key: &'static str, slot: &mut bool| match parse_bool(v) {
                Some(b) => *slot = b,
                None => errors.push(SettingError {
                    key,
                    value: v.to_string(),
                    hint: "write \"true\" or \"false\"".into(),
                }),
            };
            let limit = |v: &str| (!v.is_empty()).then(|| v.to_string());
            match key.as_str() {
                keys::PROXY_IMAGE => s.proxy_image = v.to_string(),
                keys::CONTROLLER_ADDR => s.controller_addr = v.to_string(),
                keys::NATIVE_SIDECAR => boolean(keys::NATIVE_SIDECAR, &mut s.native_sidecar),
                keys::INIT_CONTAINER => boolean(keys::INIT_CONTAINER, &mut s.init_container),
                keys::PROXY_LOG_LEVEL => s.proxy_log_level = v.to_string(),
                keys::PROXY_CPU_REQUEST => s.proxy_cpu_request = v.to_string(),
                keys::PROXY_MEMORY_REQUEST => s.proxy_memory_request = v.to_string(),
                keys::PROXY_CPU_LIMIT => s.proxy_cpu_limit = limit(v),
                keys::PROXY_MEMORY_LIMIT => s.proxy_memory_limit = limit(v),
                _ => {}
            }
        }
        if let Err(SettingErrors(more)) = s.validate() {
            errors.extend(more);
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(SettingErrors(errors))
        }
    }

    /// The injection keys of the `mesh-config` ConfigMap for these settings (limits that
    /// are not set as `""`); [`Settings::with_config_map`] reads them back.
    pub fn config_map_data(&self) -> BTreeMap<String, String> {
        let limit = |l: &Option<String>| l.clone().unwrap_or_default();
        [
            (keys::PROXY_IMAGE, self.proxy_image.clone()),
            (keys::CONTROLLER_ADDR, self.controller_addr.clone()),
            (keys::NATIVE_SIDECAR, self.native_sidecar.to_string()),
            (keys::INIT_CONTAINER, self.init_container.to_string()),
            (keys::PROXY_LOG_LEVEL, self.proxy_log_level.clone()),
            (keys::PROXY_CPU_REQUEST, self.proxy_cpu_request.clone()),
            (
                keys::PROXY_MEMORY_REQUEST,
                self.proxy_memory_request.clone(),
            ),
            (keys::PROXY_CPU_LIMIT, limit(&self.proxy_cpu_limit)),
            (keys::PROXY_MEMORY_LIMIT, limit(&self.proxy_memory_limit)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(feature = "clap")]
fn flag(check: fn(&str) -> Result<(), &'static str>, s: &str) -> Result<String, String> {
    let v = s.trim();
    check(v)
        .map(|()| v.to_string())
        .map_err(|hint| format!("'{s}' is not valid; {hint}"))
}

#[cfg(feature = "clap")]
fn parse_cpu(s: &str) -> Result<String, String> {
    flag(check_cpu, s)
}

#[cfg(feature = "clap")]
fn parse_memory(s: &str) -> Result<String, String> {
    flag(check_memory, s)
}

/// A limit flag: a quantity, or `""` for none.
#[cfg(feature = "clap")]
fn parse_cpu_limit(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    flag(check_cpu, s)
}

#[cfg(feature = "clap")]
fn parse_memory_limit(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    flag(check_memory, s)
}

/// The settings as flags (and `MESH_INJECT_*` environment variables).
#[cfg(feature = "clap")]
#[derive(clap::Args, Clone, Debug)]
pub struct SettingsArgs {
    /// Image of the injected proxy (and of its `mesh-init` init container). The annotation
    /// mesh.dev/proxy-image overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_IMAGE",
        default_value = DEFAULT_PROXY_IMAGE,
        value_parser = |s: &str| flag(check_image, s)
    )]
    pub proxy_image: String,
    /// The controller's gRPC address as the injected proxies reach it.
    #[arg(
        long,
        env = "MESH_INJECT_CONTROLLER_ADDR",
        default_value = DEFAULT_CONTROLLER_ADDR,
        value_parser = |s: &str| flag(check_controller_addr, s)
    )]
    pub controller_addr: String,
    /// SPIFFE trust domain of the injected proxies' identities
    /// (spiffe://<trust-domain>/ns/<namespace>/sa/<service account>).
    #[arg(
        long,
        env = "MESH_INJECT_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// Inject the proxy as a native sidecar (an init container with restartPolicy: Always;
    /// Kubernetes 1.29 and later): the app starts after the proxy is ready and Jobs finish.
    /// With false, the proxy is the first regular container and a postStart hook waits for
    /// it. The annotation mesh.dev/native-sidecar overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_NATIVE_SIDECAR",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub native_sidecar: bool,
    /// Add the mesh-init init container (NET_ADMIN, NET_RAW) that installs the iptables
    /// rules. Set false where a CNI plugin redirects the pod's traffic instead. The
    /// annotation mesh.dev/init-container overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_INIT_CONTAINER",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub init_container: bool,
    /// Log filter of the injected proxies (e.g. info, or mesh_proxy=debug). The annotation
    /// mesh.dev/proxy-log-level overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_LOG_LEVEL",
        default_value = "info",
        value_parser = |s: &str| flag(check_log_filter, s)
    )]
    pub proxy_log_level: String,
    /// CPU request of the injected proxies (a Kubernetes quantity). The annotation
    /// mesh.dev/proxy-cpu-request overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_CPU_REQUEST",
        default_value = DEFAULT_CPU_REQUEST,
        value_name = "QUANTITY",
        value_parser = parse_cpu
    )]
    pub proxy_cpu_request: String,
    /// Memory request of the injected proxies. The annotation mesh.dev/proxy-memory-request
    /// overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_MEMORY_REQUEST",
        default_value = DEFAULT_MEMORY_REQUEST,
        value_name = "QUANTITY",
        value_parser = parse_memory
    )]
    pub proxy_memory_request: String,
    /// CPU limit of the injected proxies (none by default; "" for none); it also sets their
    /// worker threads. The annotation mesh.dev/proxy-cpu-limit overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_CPU_LIMIT",
        value_name = "QUANTITY",
        value_parser = parse_cpu_limit
    )]
    pub proxy_cpu_limit: Option<String>,
    /// Memory limit of the injected proxies (none by default; "" for none). The annotation
    /// mesh.dev/proxy-memory-limit overrides it per workload.
    #[arg(
        long,
        env = "MESH_INJECT_PROXY_MEMORY_LIMIT",
        value_name = "QUANTITY",
        value_parser = parse_memory_limit
    )]
    pub proxy_memory_limit: Option<String>,
}

#[cfg(feature = "clap")]
impl SettingsArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            proxy_image: self.proxy_image.clone(),
            controller_addr: self.controller_addr.clone(),
            trust_domain: self.trust_domain.clone(),
            native_sidecar: self.native_sidecar,
            init_container: self.init_container,
            proxy_log_level: self.proxy_log_level.clone(),
            proxy_cpu_request: self.proxy_cpu_request.clone(),
            proxy_memory_request: self.proxy_memory_request.clone(),
            proxy_cpu_limit: none_if_empty(&self.proxy_cpu_limit),
            proxy_memory_limit: none_if_empty(&self.proxy_memory_limit),
            ..Settings::default()
        }
    }
}

/// A limit flag's value: `None` when unset or `""`.
pub fn none_if_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_defaults_are_valid_and_round_trip_through_a_config_map() {
        let s = Settings::default();
        s.validate().unwrap();
        let d = s.config_map_data();
        assert_eq!(d.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut all = keys::ALL.to_vec();
            all.sort();
            all
        });
        assert_eq!(d[keys::PROXY_CPU_LIMIT], "");
        assert_eq!(s.with_config_map(&d).unwrap(), s);
    }

    #[test]
    fn a_config_map_overrides_what_it_names_and_ignores_other_keys() {
        let flags = Settings {
            proxy_cpu_limit: Some("2".into()),
            trust_domain: "example.org".into(),
            ..Settings::default()
        };
        let s = flags
            .with_config_map(&data(&[
                ("version", "0.1.0"),
                ("values.yaml", "proxy: {}\n"),
                (keys::PROXY_IMAGE, " registry.example/mesh-proxy:1\n"),
                (keys::NATIVE_SIDECAR, "false"),
                (keys::PROXY_LOG_LEVEL, "debug"),
                (keys::PROXY_MEMORY_REQUEST, "32Mi"),
                (keys::PROXY_MEMORY_LIMIT, "256Mi"),
                (keys::PROXY_CPU_LIMIT, ""),
            ]))
            .unwrap();
        assert_eq!(
            s,
            Settings {
                proxy_image: "registry.example/mesh-proxy:1".into(),
                native_sidecar: false,
                proxy_log_level: "debug".into(),
                proxy_memory_request: "32Mi".into(),
                proxy_memory_limit: Some("256Mi".into()),
                proxy_cpu_limit: None,
                ..flags.clone()
            }
        );
        assert_eq!(flags.with_config_map(&BTreeMap::new()).unwrap(), flags);
    }

    #[test]
    fn every_bad_value_is_named() {
        let e = Settings::default()
            .with_config_map(&data(&[
                (keys::NATIVE_SIDECAR, "maybe"),
                (keys::INIT_CONTAINER, "yes"),
                (keys::PROXY_CPU_REQUEST, "lots"),
                (keys::PROXY_MEMORY_LIMIT, "1 Gi"),
                (keys::PROXY_IMAGE, ""),
                (keys::CONTROLLER_ADDR, "mesh-controller:8086"),
                (keys::PROXY_LOG_LEVEL, "info debug"),
            ]))
            .unwrap_err();
        let named: Vec<&str> = e.0.iter().map(|e| e.key).collect();
        for key in [
            keys::NATIVE_SIDECAR,
            keys::INIT_CONTAINER,
            keys::PROXY_CPU_REQUEST,
            keys::PROXY_MEMORY_LIMIT,
            keys::PROXY_IMAGE,
            keys::CONTROLLER_ADDR,
            keys::PROXY_LOG_LEVEL,
        ] {
            assert!(named.contains(&key), "{key} not in {e}");
        }
        let text = e.to_string();
        assert!(
            text.contains("native-sidecar: 'maybe' is not valid; write \"true\" or \"false\""),
            "{text}"
        );
    }

    #[test]
    fn a_request_above_its_limit_is_refused() {
        let e = Settings::default()
            .with_config_map(&data(&[
                (keys::PROXY_CPU_REQUEST, "2"),
                (keys::PROXY_CPU_LIMIT, "1"),
            ]))
            .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, keys::PROXY_CPU_REQUEST);
        assert!(e.to_string().contains("more than proxy-cpu-limit 1"), "{e}");
    }

    #[cfg(feature = "clap")]
    #[test]
    fn resource_flags_are_checked_and_an_empty_limit_is_none() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s: SettingsArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--proxy-cpu-request",
            "50m",
            "--proxy-memory-limit",
            "128Mi",
            "--proxy-cpu-limit",
            "",
        ])
        .unwrap();
        let s = cli.s.settings();
        assert_eq!(s.proxy_cpu_request, "50m");
        assert_eq!(s.proxy_memory_request, DEFAULT_MEMORY_REQUEST);
        assert_eq!(s.proxy_cpu_limit, None);
        assert_eq!(s.proxy_memory_limit.as_deref(), Some("128Mi"));
        let defaults = Cli::try_parse_from(["x"]).unwrap().s.settings();
        assert_eq!(defaults, Settings::default());
        let e = Cli::try_parse_from(["x", "--proxy-memory-request", "lots"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("64Mi"), "{e}");
    }
}
