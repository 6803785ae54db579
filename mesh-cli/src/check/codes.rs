//! The checks `meshctl check` runs: each has a stable code (`MESH1xxx`), the section it is
//! in, and the line it prints. `docs/checks.md` has a heading per code with its cause and fix
//! (a test keeps the two in step).

use clap::ValueEnum;

/// A section of checks (`--category NAME`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// The kubeconfig, the API server and its version (always run first).
    KubernetesApi,
    /// Before `meshctl install`: permissions, conflicts, Pod Security, native sidecars.
    PreInstall,
    /// The CRDs and the controller.
    Install,
    /// The admission webhook: configuration, endpoints, certificate.
    Webhook,
    /// The trust anchors and the issuer in the identity Secret.
    Identity,
    /// The control plane's version against this meshctl's.
    Version,
    /// The proxies of meshed pods (`--proxy`).
    Proxies,
}

impl Category {
    /// Every category, in the order sections are printed.
    pub const ALL: [Category; 7] = [
        Category::KubernetesApi,
        Category::PreInstall,
        Category::Install,
        Category::Webhook,
        Category::Identity,
        Category::Version,
        Category::Proxies,
    ];

    /// The name `--category` takes and the section title.
    pub fn name(self) -> &'static str {
        match self {
            Category::KubernetesApi => "kubernetes-api",
            Category::PreInstall => "pre-install",
            Category::Install => "install",
            Category::Webhook => "webhook",
            Category::Identity => "identity",
            Category::Version => "version",
            Category::Proxies => "proxies",
        }
    }
}

/// One check: its code, section and the line it prints.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub code: &'static str,
    pub category: Category,
    pub description: &'static str,
}

const fn check(code: &'static str, category: Category, description: &'static str) -> Check {
    Check {
        code,
        category,
        description,
    }
}

use Category::*;

pub const CLIENT: Check = check(
    "MESH1001",
    KubernetesApi,
    "can build a client from the kubeconfig",
);
pub const API_REACHABLE: Check = check("MESH1002", KubernetesApi, "can reach the Kubernetes API");
pub const SERVER_VERSION: Check =
    check("MESH1003", KubernetesApi, "Kubernetes version is supported");

pub const PERMISSIONS: Check = check(
    "MESH1101",
    PreInstall,
    "can create the objects meshctl install writes",
);
pub const NOT_INSTALLED: Check = check("MESH1102", PreInstall, "the mesh is not installed yet");
pub const OTHER_MESH: Check = check("MESH1103", PreInstall, "no other mesh's proxy injector");
pub const NET_ADMIN: Check = check(
    "MESH1104",
    PreInstall,
    "pods may use NET_ADMIN and NET_RAW (mesh-init)",
);
pub const NATIVE_SIDECARS: Check = check(
    "MESH1105",
    PreInstall,
    "native sidecar containers are available",
);

pub const CRDS_EXIST: Check = check("MESH1201", Install, "the mesh CRDs exist");
pub const CRDS_CURRENT: Check = check("MESH1202", Install, "the mesh CRDs are current");
pub const GATEWAY_CRDS: Check = check(
    "MESH1203",
    Install,
    "the Gateway API CRDs exist (HTTPRoute, GRPCRoute)",
);
pub const CONTROLLER_DEPLOYMENT: Check =
    check("MESH1204", Install, "the controller Deployment exists");
pub const CONTROLLER_READY: Check = check(
    "MESH1205",
    Install,
    "the controller pods are running and ready",
);
pub const LEADER: Check = check("MESH1206", Install, "a controller leader is elected");

pub const WEBHOOK_CONFIG: Check = check("MESH1301", Webhook, "the webhook configuration exists");
pub const WEBHOOK_ENDPOINTS: Check = check(
    "MESH1302",
    Webhook,
    "the webhook Service has ready endpoints",
);
pub const WEBHOOK_CERT_VALID: Check =
    check("MESH1303", Webhook, "the webhook certificate is valid");
pub const WEBHOOK_CERT_NAME: Check = check(
    "MESH1304",
    Webhook,
    "the webhook certificate names the webhook Service",
);
pub const WEBHOOK_CA_BUNDLE: Check = check(
    "MESH1305",
    Webhook,
    "the webhook certificate is signed by the caBundle",
);

pub const IDENTITY_SECRET: Check = check(
    "MESH1401",
    Identity,
    "the identity Secret holds trust anchors and an issuer",
);
pub const ISSUER_CHAIN: Check = check(
    "MESH1402",
    Identity,
    "the issuer is signed by a trust anchor",
);
pub const ANCHORS_VALID: Check = check("MESH1403", Identity, "the trust anchors are valid");
pub const ISSUER_VALID: Check = check("MESH1404", Identity, "the issuer certificate is valid");
pub const ROTATION: Check = check("MESH1405", Identity, "trust anchor rotation");

pub const CONFIG: Check = check(
    "MESH1501",
    Version,
    "the control plane configuration exists",
);
pub const CONTROL_PLANE_VERSION: Check = check(
    "MESH1502",
    Version,
    "the control plane runs this meshctl's version",
);

pub const PROXIES_READY: Check = check("MESH1601", Proxies, "the proxies are ready");
pub const PROXIES_VERSION: Check = check(
    "MESH1602",
    Proxies,
    "the proxies run this meshctl's version",
);
pub const PROXIES_CERTS: Check = check(
    "MESH1603",
    Proxies,
    "the proxies' certificates are valid and chain to the trust anchors",
);

/// Every check, in code order.
pub const ALL: &[&Check] = &[
    &CLIENT,
    &API_REACHABLE,
    &SERVER_VERSION,
    &PERMISSIONS,
    &NOT_INSTALLED,
    &OTHER_MESH,
    &NET_ADMIN,
    &NATIVE_SIDECARS,
    &CRDS_EXIST,
    &CRDS_CURRENT,
    &GATEWAY_CRDS,
    &CONTROLLER_DEPLOYMENT,
    &CONTROLLER_READY,
    &LEADER,
    &WEBHOOK_CONFIG,
    &WEBHOOK_ENDPOINTS,
    &WEBHOOK_CERT_VALID,
    &WEBHOOK_CERT_NAME,
    &WEBHOOK_CA_BUNDLE,
    &IDENTITY_SECRET,
    &ISSUER_CHAIN,
    &ANCHORS_VALID,
    &ISSUER_VALID,
    &ROTATION,
    &CONFIG,
    &CONTROL_PLANE_VERSION,
    &PROXIES_READY,
    &PROXIES_VERSION,
    &PROXIES_CERTS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_ordered_and_in_their_category() {
        for pair in ALL.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} then {}",
                pair[0].code,
                pair[1].code
            );
        }
        for c in ALL {
            let block = match c.category {
                KubernetesApi => "MESH10",
                PreInstall => "MESH11",
                Install => "MESH12",
                Webhook => "MESH13",
                Identity => "MESH14",
                Version => "MESH15",
                Proxies => "MESH16",
            };
            assert!(
                c.code.starts_with(block),
                "{} is in {:?}",
                c.code,
                c.category
            );
        }
    }
}
