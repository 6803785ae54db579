//! The controller's settings, from flags or `MESH_CONTROLLER_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

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
        }
    }
}
