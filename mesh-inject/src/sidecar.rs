//! The containers and volumes injection adds: the `mesh-init` init container, the
//! `mesh-proxy` sidecar (native or fallback) and the projected identity token. Built with
//! the k8s-openapi types, so every field is one the API server knows.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations::Resolved;
use crate::settings::Settings;

/// Name of the sidecar container.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Name of the init container that installs the iptables rules.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The projected service-account token volume (the proof of identity).
pub const TOKEN_VOLUME: &str = "mesh-identity-token";
/// Scratch space for iptables' lock file (`/run/xtables.lock`): the root filesystem is
/// read-only.
pub const XTABLES_VOLUME: &str = "mesh-init-xtables-lock";
/// Volumes injection adds (and uninject removes).
pub const VOLUMES: &[&str] = &[TOKEN_VOLUME, XTABLES_VOLUME];

/// Where the proxy binary lives in the proxy image.
pub const PROXY_BINARY: &str = "/usr/local/bin/mesh-proxy";
/// Where the token volume is mounted in the proxy container.
pub const TOKEN_DIR: &str = "/var/run/secrets/mesh.dev/identity";
/// The UID (and GID) the proxy runs as; its own traffic is never redirected.
pub const PROXY_UID: i64 = 2102;
/// The proxy's listeners (the `mesh-proxy` defaults).
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
/// How long a fallback sidecar's postStart hook waits for the proxy to be ready.
pub const AWAIT_READY_TIMEOUT: &str = "120s";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field.into(),
            }),
            ..Default::default()
        }),
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, Option<&String>)]) -> Option<BTreeMap<String, Quantity>> {
    let m: BTreeMap<String, Quantity> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), Quantity(v.clone()))))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// The `mesh-init` init container: `mesh-proxy init` as root with NET_ADMIN and NET_RAW and
/// nothing else.
pub fn init_container(r: &Resolved) -> Container {
    let mut args = vec![
        "--inbound-port".to_string(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        ADMIN_PORT.to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
    ];
    for (flag, v) in [
        ("--skip-inbound-ports", &r.skip_inbound_ports),
        ("--skip-outbound-ports", &r.skip_outbound_ports),
        ("--skip-outbound-cidrs", &r.skip_outbound_cidrs),
    ] {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(r.image.clone()),
        command: Some(vec![PROXY_BINARY.into(), "init".into()]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: quantities(&[
                ("cpu", Some(&"10m".to_string())),
                ("memory", Some(&"10Mi".to_string())),
            ]),
            limits: quantities(&[
                ("cpu", Some(&"100m".to_string())),
                ("memory", Some(&"50Mi".to_string())),
            ]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The proxy container. Native: meant for `initContainers`, with `restartPolicy: Always`
/// and a startup probe (the next containers start once it is ready). Fallback: meant as the
/// first of `containers`, with a postStart hook that returns once the proxy is ready.
pub fn proxy_container(settings: &Settings, r: &Resolved) -> Container {
    let mut env_vars = vec![
        field_env("MESH_POD_NAME", "metadata.name"),
        field_env("MESH_POD_NAMESPACE", "metadata.namespace"),
        field_env("MESH_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env(
            "MESH_PROXY_CONTROLLER_ADDR",
            settings.controller_addr.clone(),
        ),
        env(
            "MESH_PROXY_WORKLOAD",
            "ns:$(MESH_POD_NAMESPACE)/pod:$(MESH_POD_NAME)",
        ),
        env(
            "MESH_PROXY_IDENTITY",
            format!(
                "spiffe://{}/ns/$(MESH_POD_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)",
                settings.trust_domain
            ),
        ),
        env(
            "MESH_PROXY_IDENTITY_TOKEN_FILE",
            format!("{TOKEN_DIR}/token"),
        ),
        env("MESH_PROXY_LOG", r.log_level.clone()),
    ];
    if let Some(p) = &r.opaque_ports {
        env_vars.push(env("MESH_PROXY_OPAQUE_PORTS", p.clone()));
    }
    if r.cpu_limit.is_some() {
        // One worker thread per whole CPU of the limit (rounded up by the divisor), rather
        // than one per CPU of the node.
        env_vars.push(EnvVar {
            name: "MESH_PROXY_WORKER_THREADS".into(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(PROXY_CONTAINER.into()),
                    divisor: Some(Quantity("1".into())),
                    resource: "limits.cpu".into(),
                }),
                ..Default::default()
            }),
        });
    }
    let mut c = Container {
        name: PROXY_CONTAINER.into(),
        image: Some(r.image.clone()),
        command: Some(vec![PROXY_BINARY.into()]),
        env: Some(env_vars),
        ports: Some(vec![
            ContainerPort {
                container_port: INBOUND_PORT.into(),
                name: Some("mesh-inbound".into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                container_port: ADMIN_PORT.into(),
                name: Some("mesh-admin".into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/ready", 10, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities(&[
                ("cpu", Some(&r.cpu_request)),
                ("memory", Some(&r.memory_request)),
            ]),
            limits: quantities(&[
                ("cpu", r.cpu_limit.as_ref()),
                ("memory", r.memory_limit.as_ref()),
            ]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    if r.native_sidecar {
        c.restart_policy = Some("Always".into());
        // Up to two minutes for the first certificate and discovery answer.
        c.startup_probe = Some(http_probe("/ready", 1, 120));
    } else {
        c.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        PROXY_BINARY.into(),
                        "await-ready".into(),
                        "--timeout".into(),
                        AWAIT_READY_TIMEOUT.into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    c
}

/// The projected token the proxy proves its identity with.
pub fn token_volume(settings: &Settings) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: None,
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(settings.token_audience.clone()),
                    expiration_seconds: Some(settings.token_expiration_seconds),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

/// The init container's writable `/run`.
pub fn xtables_volume() -> Volume {
    Volume {
        name: XTABLES_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}
