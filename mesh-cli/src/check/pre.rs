//! `pre-install` (MESH11xx): before `meshctl install`. Permission to create what install
//! writes (SelfSubjectAccessReviews), no installation of the mesh or of another mesh's
//! injector, namespaces whose Pod Security level refuses the capabilities `mesh-init` needs,
//! and native sidecar support from the server version.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};

use super::cluster::{self, api_error, timed};
use super::report::Outcome;
use super::{codes, Ctx, WEBHOOK_CONFIGURATION};

/// What `meshctl install` creates: (group, resource, namespaced).
const CREATES: &[(&str, &str, bool)] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("", "namespaces", false),
    ("", "serviceaccounts", true),
    ("", "configmaps", true),
    ("", "secrets", true),
    ("", "services", true),
    ("apps", "deployments", true),
    ("rbac.authorization.k8s.io", "roles", true),
    ("rbac.authorization.k8s.io", "rolebindings", true),
    ("policy", "poddisruptionbudgets", true),
];

/// Name prefixes of other meshes' injector webhook configurations.
const OTHER_INJECTORS: &[(&str, &str)] = &[
    ("linkerd-proxy-injector", "Linkerd"),
    ("istio-sidecar-injector", "Istio"),
    ("istio-revision-tag-", "Istio"),
    ("kuma-admission-mutating-webhook-configuration", "Kuma"),
    ("consul-connect-injector", "Consul"),
];

/// The Pod Security admission label, and the levels that refuse NET_ADMIN/NET_RAW.
const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) {
    out.push(permissions(ctx).await);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    match cluster::list(
        &configs,
        "mutating webhook configurations",
        &ListParams::default(),
    )
    .await
    {
        Ok(items) => {
            let names: Vec<String> = items
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            out.push(not_installed(ctx, &names));
            out.push(other_mesh(&names));
        }
        Err(e) => {
            let hint = "check that your user may list mutatingwebhookconfigurations";
            out.push(Outcome::error(&codes::NOT_INSTALLED, e.clone(), hint));
            out.push(Outcome::error(&codes::OTHER_MESH, e, hint));
        }
    }
    out.push(net_admin(ctx).await);
    out.push(native_sidecars(ctx.server_version));
}

async fn permissions(ctx: &Ctx) -> Outcome {
    let api: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let mut denied = Vec::new();
    for (group, resource, namespaced) in CREATES {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    verb: Some("create".into()),
                    namespace: namespaced.then(|| ctx.mesh_ns.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let answer = timed(
            "a SelfSubjectAccessReview",
            api.create(&PostParams::default(), &review),
        )
        .await;
        match answer {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(r) => {
                let reason = r
                    .status
                    .and_then(|s| s.reason)
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                let scope = if *namespaced {
                    format!(" in namespace {}", ctx.mesh_ns)
                } else {
                    String::new()
                };
                denied.push(format!("create {what}{scope}{reason}"));
            }
            Err(e) => {
                return Outcome::error(
                    &codes::PERMISSIONS,
                    format!(
                        "cannot ask the API server what you may do: {}",
                        api_error(&e)
                    ),
                    "check that the API server serves authorization.k8s.io/v1 \
                     SelfSubjectAccessReviews and that your credentials are valid",
                )
            }
        }
    }
    if denied.is_empty() {
        Outcome::ok(&codes::PERMISSIONS, "")
    } else {
        Outcome::error(
            &codes::PERMISSIONS,
            format!("you may not: {}", denied.join("; ")),
            "install as a user with cluster-admin rights (meshctl install writes CRDs, RBAC and a \
             webhook configuration), or have an administrator grant these permissions",
        )
    }
}

fn not_installed(ctx: &Ctx, webhook_configs: &[String]) -> Outcome {
    if webhook_configs.iter().any(|n| n == WEBHOOK_CONFIGURATION) {
        Outcome::warning(
            &codes::NOT_INSTALLED,
            format!(
                "the mesh is already installed: mutating webhook configuration \
                 {WEBHOOK_CONFIGURATION} exists"
            ),
            format!(
                "use meshctl upgrade to change an installation, and meshctl check (without \
                 --pre) to check it; the mesh namespace checked is {}",
                ctx.mesh_ns
            ),
        )
    } else {
        Outcome::ok(&codes::NOT_INSTALLED, "")
    }
}

fn other_mesh(webhook_configs: &[String]) -> Outcome {
    let found: Vec<String> = webhook_configs
        .iter()
        .filter_map(|name| {
            OTHER_INJECTORS
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
                .map(|(_, mesh)| format!("{name} ({mesh})"))
        })
        .collect();
    if found.is_empty() {
        return Outcome::ok(&codes::OTHER_MESH, "");
    }
    Outcome::warning(
        &codes::OTHER_MESH,
        format!(
            "another mesh's proxy injector is installed: {}; pods of a namespace enabled for \
             both meshes would get two proxies",
            found.join(", ")
        ),
        "enable each namespace for one mesh only (mesh.dev/inject: enabled where the other \
         mesh's injection is off), or uninstall the other mesh first",
    )
}

async fn net_admin(ctx: &Ctx) -> Outcome {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let namespaces = match cluster::list(&api, "namespaces", &ListParams::default()).await {
        Ok(n) => n,
        Err(e) => {
            return Outcome::error(
                &codes::NET_ADMIN,
                e,
                "check that your user may list namespaces",
            )
        }
    };
    let refusing: Vec<String> = namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            if name == ctx.mesh_ns || name == "kube-system" {
                return None;
            }
            let level = ns.metadata.labels.as_ref()?.get(PSA_ENFORCE)?;
            matches!(level.as_str(), "baseline" | "restricted").then(|| format!("{name} ({level})"))
        })
        .collect();
    if refusing.is_empty() {
        return Outcome::ok(&codes::NET_ADMIN, "");
    }
    Outcome::warning(
        &codes::NET_ADMIN,
        format!(
            "Pod Security refuses NET_ADMIN and NET_RAW in namespace(s) {}: meshed pods there \
             cannot start mesh-init, which sets up the traffic redirect with iptables",
            refusing.join(", ")
        ),
        format!(
            "mesh these namespaces only after labeling them {PSA_ENFORCE}=privileged, or install \
             with --set proxy.initContainer=false where a CNI plugin sets up the redirect (the \
             mesh does not ship one)"
        ),
    )
}

/// MESH1105 from the server version: native sidecars are on by default from 1.29 (alpha
/// behind the `SidecarContainers` feature gate in 1.28).
pub fn native_sidecars(version: (u32, u32)) -> Outcome {
    let v = format!("{}.{}", version.0, version.1);
    if version >= (1, 29) {
        Outcome::ok(&codes::NATIVE_SIDECARS, format!("Kubernetes {v}"))
    } else {
        let gate = if version == (1, 28) {
            " (in 1.28 only with the SidecarContainers feature gate, which is off by default)"
        } else {
            ""
        };
        Outcome::warning(
            &codes::NATIVE_SIDECARS,
            format!("Kubernetes {v} has no native sidecar containers{gate}"),
            "install with --set proxy.nativeSidecar=false (the proxy then runs as the first \
             regular container), or upgrade the cluster",
        )
    }
}
