//! Injection settings: what the injected sidecar looks like when no annotation says
//! otherwise. `meshctl inject` and the controller's webhook take them from the same flags
//! ([`SettingsArgs`], feature `clap`).

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
            token_audience: TOKEN_AUDIENCE.into(),
            token_expiration_seconds: TOKEN_EXPIRATION_SECONDS,
        }
    }
}

/// The settings as flags (and `MESH_INJECT_*` environment variables).
#[cfg(feature = "clap")]
#[derive(clap::Args, Clone, Debug)]
pub struct SettingsArgs {
    /// Image of the injected proxy (and of its `mesh-init` init container). The annotation
    /// mesh.dev/proxy-image overrides it per workload.
    #[arg(long, env = "MESH_INJECT_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The controller's gRPC address as the injected proxies reach it.
    #[arg(long, env = "MESH_INJECT_CONTROLLER_ADDR", default_value = DEFAULT_CONTROLLER_ADDR)]
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
    #[arg(long, env = "MESH_INJECT_PROXY_LOG_LEVEL", default_value = "info")]
    pub proxy_log_level: String,
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
            ..Settings::default()
        }
    }
}
