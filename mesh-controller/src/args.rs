//! The controller's settings, from flags or `MESH_CONTROLLER_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the controller reads the mesh's objects from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// A directory of Kubernetes-style YAML objects (VMs, bare hosts, laptops, CI).
    Local,
    /// The Kubernetes API (in-cluster config, or KUBECONFIG).
    Kubernetes,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Where objects come from.
    #[arg(
        long,
        env = "MESH_CONTROLLER_SOURCE",
        value_enum,
        default_value = "local"
    )]
    pub source: Source,
    /// Local mode: the directory of YAML objects (watched for changes).
    #[arg(long, env = "MESH_CONTROLLER_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Address of the gRPC APIs proxies connect to.
    #[arg(
        long,
        env = "MESH_CONTROLLER_GRPC_ADDR",
        default_value = "0.0.0.0:8086"
    )]
    pub grpc_addr: SocketAddr,
    /// Address of the admin server (/live, /ready, /metrics, /status).
    #[arg(
        long,
        env = "MESH_CONTROLLER_ADMIN_ADDR",
        default_value = "0.0.0.0:9990"
    )]
    pub admin_addr: SocketAddr,
    /// Kubernetes cluster domain used in Service names (`<svc>.<ns>.svc.<domain>`).
    #[arg(
        long,
        env = "MESH_CONTROLLER_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// SPIFFE trust domain of workload identities.
    #[arg(
        long,
        env = "MESH_CONTROLLER_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// Kubernetes: namespace of the Lease that elects the replica writing status.
    #[arg(
        long,
        env = "MESH_CONTROLLER_LEASE_NAMESPACE",
        default_value = "mesh-system"
    )]
    pub lease_namespace: String,
    /// Kubernetes: name of that Lease.
    #[arg(
        long,
        env = "MESH_CONTROLLER_LEASE_NAME",
        default_value = "mesh-controller"
    )]
    pub lease_name: String,
    /// Identity: a directory made by `mesh-controller identity init` (trust anchors, issuer,
    /// join tokens). Unset in local mode: identity is off (no certificates are issued).
    #[arg(long, env = "MESH_CONTROLLER_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Identity on Kubernetes (when --identity-dir is unset): the Secret `namespace/name`
    /// holding `trust-anchors.pem`, `issuer.crt`, `issuer.key` (and `next.*` for a rotation).
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_SECRET",
        default_value = "mesh-system/mesh-identity",
        value_parser = parse_secret_ref
    )]
    pub identity_secret: SecretRef,
    /// Lifetime of the leaf certificates proxies get (e.g. `24h`, `10m`, `5s`).
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_LEAF_LIFETIME",
        default_value = "24h",
        value_parser = parse_lifetime
    )]
    pub identity_leaf_lifetime: Duration,
    /// Kubernetes: the audience service-account tokens must be issued for.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_TOKEN_AUDIENCE",
        default_value = "mesh.dev/identity"
    )]
    pub identity_token_audience: String,
    /// Most a proxy waits (randomly) before renewing when the issuer changes, so that
    /// proxies do not all renew in the same instant.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_RENEW_JITTER",
        default_value = "2s",
        value_parser = humantime::parse_duration
    )]
    pub identity_renew_jitter: Duration,
    /// Trust-anchor rotation waits this long after the controller starts before it moves to
    /// a next phase, so that proxies reconnect and report what they hold first.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_ROTATION_GRACE",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub identity_rotation_grace: Duration,
    /// Mesh-wide inbound policy defaults.
    #[command(flatten)]
    pub policy: crate::policy_args::PolicyArgs,
    /// The mutating admission webhook that injects the proxy.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

impl RunArgs {
    /// Settings for tests: local mode on `dir` (Kubernetes when `None`), ephemeral ports on
    /// 127.0.0.1.
    pub fn for_tests(dir: Option<PathBuf>) -> Self {
        Self {
            source: if dir.is_some() {
                Source::Local
            } else {
                Source::Kubernetes
            },
            config_dir: dir,
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            admin_addr: ([127, 0, 0, 1], 0).into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            lease_namespace: "mesh-system".into(),
            lease_name: "mesh-controller".into(),
            policy: crate::policy_args::PolicyArgs::default(),
            identity_dir: None,
            identity_secret: SecretRef {
                namespace: "mesh-system".into(),
                name: "mesh-identity".into(),
            },
            identity_leaf_lifetime: Duration::from_secs(24 * 3600),
            identity_token_audience: "mesh.dev/identity".into(),
            identity_renew_jitter: Duration::from_secs(2),
            identity_rotation_grace: Duration::ZERO,
            webhook: crate::webhook::WebhookArgs::default(),
        }
    }
}

/// A Kubernetes object reference `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `namespace/name`.
pub fn parse_secret_ref(s: &str) -> Result<SecretRef, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(SecretRef {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!(
            "'{s}' is not namespace/name (e.g. mesh-system/mesh-identity)"
        )),
    }
}

/// Parses a leaf lifetime: a humantime duration of at least one second.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 24h, 30m or 5s"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("'{s}' is shorter than one second"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs() {
        assert_eq!(
            parse_secret_ref("mesh-system/mesh-identity").unwrap(),
            SecretRef {
                namespace: "mesh-system".into(),
                name: "mesh-identity".into()
            }
        );
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_lifetime("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_lifetime("10ms").is_err());
        assert!(parse_lifetime("soon").is_err());
    }
}
