//! The MutatingWebhookConfiguration that sends pod creations to the controller's injector.
//! It is built so that the webhook can never block the cluster: failures are ignored by
//! default, the timeout is short, and kube-system and the mesh's own namespace are never
//! sent to it.

use base64::Engine as _;
use serde_json::json;

use crate::Doc;

/// The path the controller serves AdmissionReviews on.
pub const WEBHOOK_PATH: &str = "/inject";
/// Namespaces label whose value `disabled` keeps a namespace away from the webhook entirely.
pub const WEBHOOK_NAMESPACE_LABEL: &str = "mesh.dev/admission-webhook";

/// What the API server does when the webhook cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit the pod without a sidecar (the default: the mesh never blocks the cluster).
    #[default]
    Ignore,
    /// Refuse the pod (no pod of an injected namespace runs without its proxy).
    Fail,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

/// Where the webhook is and how the API server calls it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Name of the MutatingWebhookConfiguration.
    pub name: String,
    /// The mesh's namespace (where the controller's Service is; never injected).
    pub namespace: String,
    /// The controller's Service.
    pub service: String,
    pub port: u16,
    pub path: String,
    /// PEM of the CA that signed the webhook's serving certificate.
    pub ca_bundle_pem: Option<String>,
    pub failure_policy: FailurePolicy,
    /// 1 to 30 seconds.
    pub timeout_seconds: u8,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: "mesh-proxy-injector".into(),
            namespace: "mesh-system".into(),
            service: "mesh-controller".into(),
            port: 443,
            path: WEBHOOK_PATH.into(),
            ca_bundle_pem: None,
            failure_policy: FailurePolicy::Ignore,
            timeout_seconds: 5,
        }
    }
}

/// The `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration.
pub fn webhook_configuration(cfg: &WebhookConfig) -> Doc {
    let mut client = json!({
        "service": {
            "name": cfg.service,
            "namespace": cfg.namespace,
            "path": cfg.path,
            "port": cfg.port,
        }
    });
    if let Some(pem) = &cfg.ca_bundle_pem {
        client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let v = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": cfg.name,
            "labels": {"app.kubernetes.io/part-of": "mesh"},
        },
        "webhooks": [{
            "name": "inject.mesh.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": client,
            "failurePolicy": cfg.failure_policy.as_str(),
            "matchPolicy": "Equivalent",
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["kube-system", cfg.namespace],
                    },
                    {
                        "key": WEBHOOK_NAMESPACE_LABEL,
                        "operator": "NotIn",
                        "values": ["disabled"],
                    },
                ],
            },
            "reinvocationPolicy": "Never",
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "sideEffects": "None",
            "timeoutSeconds": cfg.timeout_seconds.clamp(1, 30),
        }],
    });
    serde_yaml_ng::to_value(v).unwrap_or(Doc::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_blocks_by_default_and_skips_system_namespaces() {
        let d = webhook_configuration(&WebhookConfig {
            ca_bundle_pem: Some("PEM".into()),
            timeout_seconds: 99,
            ..WebhookConfig::default()
        });
        let w = &d["webhooks"][0];
        assert_eq!(w["failurePolicy"].as_str(), Some("Ignore"));
        assert_eq!(w["timeoutSeconds"].as_u64(), Some(30));
        assert_eq!(w["clientConfig"]["caBundle"].as_str(), Some("UEVN"));
        let values = &w["namespaceSelector"]["matchExpressions"][0]["values"];
        assert_eq!(values[0].as_str(), Some("kube-system"));
        assert_eq!(values[1].as_str(), Some("mesh-system"));
    }
}
