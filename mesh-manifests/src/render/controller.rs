//! The control plane's objects: Namespace, ServiceAccount, the `mesh-config` ConfigMap, the
//! two Secrets, the Service, the Deployment, its PodDisruptionBudget and the webhook
//! configuration.

use serde_json::{json, Map, Value};

use super::rbac::{CONFIG_MAP, CONTROLLER, IDENTITY_SECRET, WEBHOOK_SECRET};
use super::{part_of, RenderError, Src};
use crate::VERSION;

/// The controller's gRPC port (proxies' discovery, policy and identity).
pub const GRPC_PORT: u16 = 8086;
/// The controller's admin port (`/live`, `/ready`, `/metrics`, `/status`).
pub const ADMIN_PORT: u16 = 9990;
/// The webhook's HTTPS port in the pod (the Service serves it on 443).
pub const WEBHOOK_PORT: u16 = 9443;
/// The user and group the controller runs as (no root; the "nonroot" user of distroless).
const RUN_AS: u32 = 65532;

fn meta(src: &Src, name: &str) -> Value {
    json!({"name": name, "namespace": src.s("namespace"), "labels": part_of()})
}

pub(crate) fn namespace(src: &Src) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": src.s("namespace"), "labels": part_of()},
    })
}

pub(crate) fn service_account(src: &Src) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(src, CONTROLLER),
    })
}

/// The injection defaults the webhook reads, and the record of what was installed.
pub(crate) fn config_map(src: &Src) -> Result<Value, RenderError> {
    let mut m = meta(src, CONFIG_MAP);
    m["annotations"] = json!({"mesh.dev/version": VERSION});
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": m,
        "data": {
            "version": VERSION,
            "values.yaml": src.values_yaml(),
            "proxy-image": format!(
                "{}:{}",
                src.s("proxy.image.repository"),
                src.tag("proxy.image.tag")
            ),
            "controller-addr": format!(
                "http://{CONTROLLER}.{}.svc.{}:{GRPC_PORT}",
                src.s("namespace"),
                src.s("clusterDomain")
            ),
            "native-sidecar": src.s("proxy.nativeSidecar"),
            "init-container": src.s("proxy.initContainer"),
            "proxy-log-level": src.s("proxy.logLevel"),
            "proxy-cpu-request": src.s("proxy.resources.cpuRequest"),
            "proxy-memory-request": src.s("proxy.resources.memoryRequest"),
            "proxy-cpu-limit": src.s("proxy.resources.cpuLimit"),
            "proxy-memory-limit": src.s("proxy.resources.memoryLimit"),
        },
    }))
}

/// Where each certificate value is stored: (value path, Secret, key). `meshctl install`
/// reads an installation's certificates back through the same table.
pub const SECRET_DATA: [(&str, &str, &str); 6] = [
    (
        "certificates.trustAnchorsPEM",
        IDENTITY_SECRET,
        "trust-anchors.pem",
    ),
    ("certificates.issuerCrtPEM", IDENTITY_SECRET, "issuer.crt"),
    ("certificates.issuerKeyPEM", IDENTITY_SECRET, "issuer.key"),
    ("certificates.webhookCrtPEM", WEBHOOK_SECRET, "tls.crt"),
    ("certificates.webhookKeyPEM", WEBHOOK_SECRET, "tls.key"),
    ("certificates.webhookCaPEM", WEBHOOK_SECRET, "ca.crt"),
];

/// The `data` of the Secret `secret`: its certificate values, base64-encoded.
fn secret_data(src: &Src, secret: &str) -> Result<Value, RenderError> {
    let mut data = serde_json::Map::new();
    for (path, _, key) in SECRET_DATA.iter().filter(|(_, s, _)| *s == secret) {
        data.insert((*key).to_string(), Value::String(src.pem_b64(path)?));
    }
    Ok(Value::Object(data))
}

/// The CA: trust anchors, issuer certificate and key.
pub(crate) fn identity_secret(src: &Src) -> Result<Value, RenderError> {
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(src, IDENTITY_SECRET),
        "type": "Opaque",
        "data": secret_data(src, IDENTITY_SECRET)?,
    }))
}

/// The webhook's serving certificate.
pub(crate) fn webhook_secret(src: &Src) -> Result<Value, RenderError> {
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(src, WEBHOOK_SECRET),
        "type": "kubernetes.io/tls",
        "data": secret_data(src, WEBHOOK_SECRET)?,
    }))
}

fn selector() -> Value {
    json!({"app.kubernetes.io/name": CONTROLLER})
}

fn pod_labels() -> Value {
    json!({
        "app.kubernetes.io/name": CONTROLLER,
        "app.kubernetes.io/part-of": "mesh",
        "app.kubernetes.io/version": VERSION,
    })
}

pub(crate) fn service(src: &Src) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(src, CONTROLLER),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"},
                {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"},
            ],
        },
    })
}

/// `requests` and, when any is set, `limits`.
fn resources(src: &Src, prefix: &str) -> Value {
    let p = |k: &str| format!("{prefix}.{k}");
    let mut out = Map::new();
    out.insert(
        "requests".into(),
        json!({"cpu": src.s(&p("cpuRequest")), "memory": src.s(&p("memoryRequest"))}),
    );
    let (cpu, mem) = (p("cpuLimit"), p("memoryLimit"));
    if let Some(limits) = src.key_if_any("limits", &[&cpu, &mem]) {
        let mut l = Map::new();
        if let Some(k) = src.key_if_any("cpu", &[&cpu]) {
            l.insert(k, Value::String(src.s(&cpu)));
        }
        if let Some(k) = src.key_if_any("memory", &[&mem]) {
            l.insert(k, Value::String(src.s(&mem)));
        }
        out.insert(limits, Value::Object(l));
    }
    Value::Object(out)
}

fn probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": "admin"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    })
}

pub(crate) fn deployment(src: &Src) -> Value {
    let ns = src.s("namespace");
    let mut m = meta(src, CONTROLLER);
    m["labels"] = pod_labels();
    m["annotations"] = json!({"mesh.dev/version": VERSION});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": m,
        "spec": {
            "replicas": src.int("controller.replicas"),
            "selector": {"matchLabels": selector()},
            "template": {
                "metadata": {
                    "labels": pod_labels(),
                    "annotations": src.raw("controller.podAnnotations"),
                },
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": src.raw("controller.nodeSelector"),
                    "tolerations": src.raw("controller.tolerations"),
                    "affinity": {
                        "podAntiAffinity": {
                            // Preferred, not required: a one-node cluster still runs both.
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "labelSelector": {"matchLabels": selector()},
                                    "topologyKey": "kubernetes.io/hostname",
                                },
                            }],
                        },
                    },
                    "containers": [{
                        "name": "controller",
                        "image": format!(
                            "{}:{}",
                            src.s("controller.image.repository"),
                            src.tag("controller.image.tag")
                        ),
                        "imagePullPolicy": src.s("imagePullPolicy"),
                        "args": [
                            "run",
                            "--source=kubernetes",
                            format!("--trust-domain={}", src.s("trustDomain")),
                            format!("--cluster-domain={}", src.s("clusterDomain")),
                            format!("--identity-secret={ns}/{IDENTITY_SECRET}"),
                            format!("--identity-leaf-lifetime={}", src.s("identity.leafLifetime")),
                            format!("--webhook-secret={ns}/{WEBHOOK_SECRET}"),
                            format!("--lease-namespace={ns}"),
                            format!("--lease-name={CONTROLLER}"),
                            format!("--log={}", src.s("controller.logLevel")),
                        ],
                        "env": [
                            {
                                "name": "MESH_CONTROLLER_INJECT_CONFIG",
                                "value": format!("{ns}/{CONFIG_MAP}"),
                            },
                            {
                                // The Lease holder's name.
                                "name": "POD_NAME",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                        ],
                        "ports": [
                            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
                            {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": probe("/ready", 5, 3),
                        "livenessProbe": probe("/live", 10, 6),
                        "resources": resources(src, "controller.resources"),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                    }],
                },
            },
        },
    })
}

pub(crate) fn pod_disruption_budget(src: &Src) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(src, CONTROLLER),
        "spec": {
            "minAvailable": src.int("controller.podDisruptionBudget.minAvailable"),
            "selector": {"matchLabels": selector()},
        },
    })
}

/// The MutatingWebhookConfiguration of `mesh_inject`, with the values' policy, timeout and
/// caBundle.
pub(crate) fn webhook(src: &Src) -> Result<Value, RenderError> {
    let cfg = mesh_inject::WebhookConfig {
        name: super::WEBHOOK_CONFIGURATION.into(),
        namespace: src.s("namespace"),
        service: CONTROLLER.into(),
        ..mesh_inject::WebhookConfig::default()
    };
    let doc = mesh_inject::webhook_configuration(&cfg);
    let mut v: Value = serde_json::to_value(&doc).map_err(|e| RenderError::Invalid {
        key: "webhook".into(),
        reason: format!("the webhook configuration cannot be written as JSON: {e}"),
    })?;
    let hook = v
        .get_mut("webhooks")
        .and_then(|w| w.get_mut(0))
        .ok_or_else(|| RenderError::Invalid {
            key: "webhook".into(),
            reason: "the webhook configuration has no webhook".into(),
        })?;
    hook["failurePolicy"] = Value::String(src.s("webhook.failurePolicy"));
    hook["timeoutSeconds"] = src.int("webhook.timeoutSeconds");
    hook["clientConfig"]["caBundle"] = Value::String(src.pem_b64("certificates.webhookCaPEM")?);
    Ok(v)
}
