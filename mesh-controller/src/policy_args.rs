//! Mesh-wide defaults of inbound policy: the mTLS mode and the default authorization
//! policy of ports that neither a `Server`, nor their namespace, nor their workload set.

use mesh_core::{DefaultPolicy, InboundTls};

use crate::inbound::MeshPolicy;

/// The mesh-wide defaults, from flags or `MESH_CONTROLLER_*` environment variables.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Default authorization policy of every port: all-unauthenticated, all-authenticated,
    /// cluster-authenticated, deny, audit-all-authenticated, audit-cluster-authenticated or
    /// audit-deny. Namespaces, Pods and Workloads override it with the annotation
    /// `mesh.dev/default-policy`.
    #[arg(
        long,
        env = "MESH_CONTROLLER_DEFAULT_POLICY",
        default_value = "all-unauthenticated"
    )]
    pub default_policy: DefaultPolicy,
    /// Default inbound mTLS mode of every port: permissive, strict or disabled. Namespaces,
    /// Pods and Workloads override it with the annotation `mesh.dev/inbound-tls`, Servers
    /// with `spec.tls`.
    #[arg(
        long,
        env = "MESH_CONTROLLER_DEFAULT_INBOUND_TLS",
        default_value = "permissive"
    )]
    pub default_inbound_tls: InboundTls,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            default_inbound_tls: InboundTls::Permissive,
        }
    }
}

impl PolicyArgs {
    /// The defaults for the index, in the mesh's trust domain.
    pub fn mesh_policy(&self, trust_domain: &str) -> MeshPolicy {
        MeshPolicy {
            default_policy: self.default_policy,
            tls: self.default_inbound_tls,
            trust_domain: trust_domain.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    #[test]
    fn flags_parse_and_bad_values_name_the_choices() {
        let cli = Cli::try_parse_from([
            "x",
            "--default-policy",
            "audit-deny",
            "--default-inbound-tls",
            "strict",
        ])
        .unwrap();
        assert_eq!(cli.policy.default_policy, DefaultPolicy::AuditDeny);
        assert_eq!(cli.policy.default_inbound_tls, InboundTls::Strict);
        let p = cli.policy.mesh_policy("example.org");
        assert_eq!(p.trust_domain, "example.org");
        let err = Cli::try_parse_from(["x", "--default-policy", "open"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cluster-authenticated"), "{err}");
    }
}
