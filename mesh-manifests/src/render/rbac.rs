//! The controller's RBAC, least privilege: one table of rules, each with the reason the
//! controller needs it. The same table builds the ClusterRole and the Role and gives the
//! comment written above each rule ([`rule_comment`]).

use serde_json::{json, Value};

use super::{part_of, Src};

/// The Secret holding the trust anchors and the issuer.
pub const IDENTITY_SECRET: &str = "mesh-identity";
/// The Secret holding the webhook's serving certificate.
pub const WEBHOOK_SECRET: &str = "mesh-webhook-tls";
/// The ConfigMap with the injection defaults and the installed values.
pub const CONFIG_MAP: &str = "mesh-config";
/// The controller's name: ServiceAccount, roles, bindings, Deployment, Service, Lease.
pub const CONTROLLER: &str = "mesh-controller";

/// One RBAC rule and why the controller needs it.
pub struct Rule {
    /// Cluster-wide (ClusterRole) or in the mesh's namespace (Role).
    pub cluster: bool,
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub resource_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

/// Every permission the controller has.
pub const RULES: &[Rule] = &[
    Rule {
        cluster: true,
        api_groups: &[""],
        resources: &["services", "pods", "namespaces"],
        resource_names: &[],
        verbs: &["get", "list", "watch"],
        why: "Discovery and policy: Services and their ports, Pods (labels, service account, \
              injected proxy, named ports) and Namespaces (their policy and injection \
              annotations), cluster-wide.",
    },
    Rule {
        cluster: true,
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        resource_names: &[],
        verbs: &["get", "list", "watch"],
        why: "Discovery: the endpoints of every Service.",
    },
    Rule {
        cluster: true,
        api_groups: &["gateway.networking.k8s.io"],
        resources: &["httproutes", "grpcroutes"],
        resource_names: &[],
        verbs: &["get", "list", "watch"],
        why: "Routing: HTTPRoutes and GRPCRoutes attached to Services.",
    },
    Rule {
        cluster: true,
        api_groups: &["gateway.networking.k8s.io"],
        resources: &["httproutes/status", "grpcroutes/status"],
        resource_names: &[],
        verbs: &["get", "patch"],
        why: "The leader writes the routes' Accepted and ResolvedRefs conditions (status only).",
    },
    Rule {
        cluster: true,
        api_groups: &["mesh.dev"],
        resources: &[
            "workloads",
            "servers",
            "backendpolicies",
            "authorizationpolicies",
            "egresspolicies",
        ],
        resource_names: &[],
        verbs: &["get", "list", "watch"],
        why: "The mesh's own kinds: workloads outside Pods, ports' protocols, resilience, \
              authorization and egress policies.",
    },
    Rule {
        cluster: true,
        api_groups: &["mesh.dev"],
        resources: &[
            "workloads/status",
            "backendpolicies/status",
            "authorizationpolicies/status",
            "egresspolicies/status",
        ],
        resource_names: &[],
        verbs: &["get", "patch"],
        why: "The leader writes the conditions of the mesh's kinds (status only).",
    },
    Rule {
        cluster: true,
        api_groups: &["authentication.k8s.io"],
        resources: &["tokenreviews"],
        resource_names: &[],
        verbs: &["create"],
        why: "Identity: proxies prove their service account with its token, which the \
              controller checks with a TokenReview before signing a certificate.",
    },
    Rule {
        cluster: false,
        api_groups: &[""],
        resources: &["secrets"],
        resource_names: &[IDENTITY_SECRET],
        verbs: &["get", "list", "watch", "patch"],
        why: "Identity: the trust anchors and issuer the CA signs with, this one Secret only; \
              patch ends a trust-anchor rotation.",
    },
    Rule {
        cluster: false,
        api_groups: &[""],
        resources: &["secrets"],
        resource_names: &[WEBHOOK_SECRET],
        verbs: &["get", "list", "watch"],
        why: "Injection: the webhook's serving certificate, this one Secret only, watched \
              for renewals.",
    },
    Rule {
        cluster: false,
        api_groups: &[""],
        resources: &["configmaps"],
        resource_names: &[CONFIG_MAP],
        verbs: &["get", "list", "watch"],
        why: "Injection: the proxy defaults (image, resources, log level) the webhook \
              injects, this one ConfigMap only.",
    },
    Rule {
        cluster: false,
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        resource_names: &[],
        verbs: &["create"],
        why: "Leader election: create the Lease on first start (create cannot be limited to \
              a name).",
    },
    Rule {
        cluster: false,
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        resource_names: &[CONTROLLER],
        verbs: &["get", "patch"],
        why: "Leader election: read and renew the controller's Lease, this one only; the \
              holder is the one replica that writes status.",
    },
];

fn rule_json(r: &Rule) -> Value {
    let mut v = json!({
        "apiGroups": r.api_groups,
        "resources": r.resources,
        "verbs": r.verbs,
    });
    if !r.resource_names.is_empty() {
        v["resourceNames"] = json!(r.resource_names);
    }
    v
}

/// Why the controller needs `rule` (a rendered rule), for the comment above it.
pub(crate) fn rule_comment(rule: &Value) -> Option<&'static str> {
    RULES.iter().find(|r| &rule_json(r) == rule).map(|r| r.why)
}

/// ClusterRole, ClusterRoleBinding, Role, RoleBinding.
pub(crate) fn objects(src: &Src) -> Vec<Value> {
    let ns = src.s("namespace");
    let rules = |cluster: bool| -> Vec<Value> {
        RULES
            .iter()
            .filter(|r| r.cluster == cluster)
            .map(rule_json)
            .collect()
    };
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": CONTROLLER,
        "namespace": ns,
    }]);
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CONTROLLER, "labels": part_of()},
            "rules": rules(true),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER, "labels": part_of()},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": CONTROLLER,
            },
            "subjects": subject,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": part_of()},
            "rules": rules(false),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": part_of()},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": CONTROLLER,
            },
            "subjects": subject,
        }),
    ]
}
