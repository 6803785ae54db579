//! The webhook's settings: where it listens, where its serving certificate is, and what
//! the pods it injects look like (the same settings as `meshctl inject --manual`, and the
//! ConfigMap that replaces them).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::args::{parse_secret_ref, SecretRef};

/// Flags and `MESH_CONTROLLER_*` environment variables of the admission webhook.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address of the mutating admission webhook (HTTPS), or `off`. Served when a serving
    /// certificate is found (--webhook-secret on Kubernetes, or the --webhook-cert-file and
    /// --webhook-key-file pair).
    #[arg(
        long,
        help_heading = "Admission webhook",
        env = "MESH_CONTROLLER_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443",
        value_name = "IP:PORT|off",
        value_parser = parse_webhook_addr
    )]
    pub webhook_addr: WebhookAddr,
    /// Kubernetes: the kubernetes.io/tls Secret `namespace/name` with the webhook's serving
    /// certificate (`tls.crt`, `tls.key`). Watched: a renewed certificate is used for the
    /// next connections; a broken one is logged and the previous one stays.
    #[arg(
        long,
        help_heading = "Admission webhook",
        env = "MESH_CONTROLLER_WEBHOOK_SECRET",
        default_value = "mesh-system/mesh-webhook-tls",
        value_parser = parse_secret_ref
    )]
    pub webhook_secret: SecretRef,
    /// The serving certificate chain as a PEM file, instead of the Secret (any source;
    /// local mode serves the webhook only with these files). Re-read every 2 seconds.
    #[arg(
        long,
        help_heading = "Admission webhook",
        env = "MESH_CONTROLLER_WEBHOOK_CERT_FILE",
        requires = "webhook_key_file"
    )]
    pub webhook_cert_file: Option<PathBuf>,
    /// The serving certificate's private key as a PEM file.
    #[arg(
        long,
        help_heading = "Admission webhook",
        env = "MESH_CONTROLLER_WEBHOOK_KEY_FILE",
        requires = "webhook_cert_file"
    )]
    pub webhook_key_file: Option<PathBuf>,
    /// What the injected proxies look like.
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// The injection settings of the webhook: the flags of `meshctl inject --manual`, prefixed
/// `--inject-` (env `MESH_CONTROLLER_INJECT_*`). The trust domain is the controller's
/// `--trust-domain`, so injected proxies ask for identities the CA issues.
#[derive(Clone, Debug, clap::Args)]
pub struct InjectArgs {
    /// Image of the injected proxies (and of their mesh-init init container). Pods and
    /// namespaces override it with mesh.dev/proxy-image.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_IMAGE",
        default_value = mesh_inject::settings::DEFAULT_PROXY_IMAGE
    )]
    pub inject_proxy_image: String,
    /// The controller's gRPC address as injected proxies reach it.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_CONTROLLER_ADDR",
        default_value = mesh_inject::settings::DEFAULT_CONTROLLER_ADDR
    )]
    pub inject_controller_addr: String,
    /// Inject the proxy as a native sidecar (an init container with restartPolicy: Always;
    /// Kubernetes 1.29 and later); false: the proxy is the first container and a postStart
    /// hook waits for it. Pods and namespaces override it with mesh.dev/native-sidecar.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_NATIVE_SIDECAR",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub inject_native_sidecar: bool,
    /// Add the mesh-init init container (NET_ADMIN, NET_RAW) that installs the iptables
    /// rules; false where a CNI plugin redirects pod traffic. Pods and namespaces override it
    /// with mesh.dev/init-container.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_INIT_CONTAINER",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub inject_init_container: bool,
    /// Log filter of the injected proxies (e.g. info, or mesh_proxy=debug). Pods and
    /// namespaces override it with mesh.dev/proxy-log-level.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_LOG_LEVEL",
        default_value = "info"
    )]
    pub inject_proxy_log_level: String,
    /// CPU request of the injected proxies (a Kubernetes quantity). Pods and namespaces
    /// override it with mesh.dev/proxy-cpu-request.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_CPU_REQUEST",
        default_value = mesh_inject::settings::DEFAULT_CPU_REQUEST,
        value_name = "QUANTITY",
        value_parser = |s: &str| quantity(mesh_inject::settings::check_cpu, s, false)
    )]
    pub inject_proxy_cpu_request: String,
    /// Memory request of the injected proxies. Pods and namespaces override it with
    /// mesh.dev/proxy-memory-request.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_MEMORY_REQUEST",
        default_value = mesh_inject::settings::DEFAULT_MEMORY_REQUEST,
        value_name = "QUANTITY",
        value_parser = |s: &str| quantity(mesh_inject::settings::check_memory, s, false)
    )]
    pub inject_proxy_memory_request: String,
    /// CPU limit of the injected proxies (none by default; "" for none); it also sets their
    /// worker threads. Pods and namespaces override it with mesh.dev/proxy-cpu-limit.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_CPU_LIMIT",
        value_name = "QUANTITY",
        value_parser = |s: &str| quantity(mesh_inject::settings::check_cpu, s, true)
    )]
    pub inject_proxy_cpu_limit: Option<String>,
    /// Memory limit of the injected proxies (none by default; "" for none). Pods and
    /// namespaces override it with mesh.dev/proxy-memory-limit.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_PROXY_MEMORY_LIMIT",
        value_name = "QUANTITY",
        value_parser = |s: &str| quantity(mesh_inject::settings::check_memory, s, true)
    )]
    pub inject_proxy_memory_limit: Option<String>,
    /// Kubernetes: the ConfigMap `namespace/name` (`meshctl install` writes
    /// mesh-system/mesh-config) whose keys proxy-image, controller-addr, native-sidecar,
    /// init-container, proxy-log-level and proxy-{cpu,memory}-{request,limit} replace the
    /// --inject-* flags' values. Watched: a change applies to the next pods; a bad value
    /// keeps the last good settings; while it does not exist the flags' values apply.
    #[arg(
        long,
        help_heading = "Injection",
        env = "MESH_CONTROLLER_INJECT_CONFIG",
        value_name = "NAMESPACE/NAME",
        value_parser = parse_config_ref
    )]
    pub inject_config: Option<SecretRef>,
}

/// A resource flag: a quantity (or, for a limit, `""` for none).
fn quantity(
    check: fn(&str) -> Result<(), &'static str>,
    s: &str,
    limit: bool,
) -> Result<String, String> {
    let v = s.trim();
    if limit && v.is_empty() {
        return Ok(String::new());
    }
    check(v)
        .map(|()| v.to_string())
        .map_err(|hint| format!("'{s}' is not valid; {hint}"))
}

/// `--inject-config`: `namespace/name`.
fn parse_config_ref(s: &str) -> Result<SecretRef, String> {
    parse_secret_ref(s)
        .map_err(|_| format!("'{s}' is not namespace/name (e.g. mesh-system/mesh-config)"))
}

impl InjectArgs {
    /// What injected pods look like by the flags alone (the ConfigMap of `--inject-config`
    /// goes over them); identities use the controller's trust domain.
    pub fn settings(&self, trust_domain: &str) -> mesh_inject::Settings {
        mesh_inject::Settings {
            proxy_image: self.inject_proxy_image.clone(),
            controller_addr: self.inject_controller_addr.clone(),
            trust_domain: trust_domain.to_string(),
            native_sidecar: self.inject_native_sidecar,
            init_container: self.inject_init_container,
            proxy_log_level: self.inject_proxy_log_level.clone(),
            proxy_cpu_request: self.inject_proxy_cpu_request.clone(),
            proxy_memory_request: self.inject_proxy_memory_request.clone(),
            proxy_cpu_limit: mesh_inject::settings::none_if_empty(&self.inject_proxy_cpu_limit),
            proxy_memory_limit: mesh_inject::settings::none_if_empty(
                &self.inject_proxy_memory_limit,
            ),
            ..mesh_inject::Settings::default()
        }
    }
}

impl Default for InjectArgs {
    /// The library's defaults.
    fn default() -> Self {
        let s = mesh_inject::Settings::default();
        Self {
            inject_proxy_image: s.proxy_image,
            inject_controller_addr: s.controller_addr,
            inject_native_sidecar: s.native_sidecar,
            inject_init_container: s.init_container,
            inject_proxy_log_level: s.proxy_log_level,
            inject_proxy_cpu_request: s.proxy_cpu_request,
            inject_proxy_memory_request: s.proxy_memory_request,
            inject_proxy_cpu_limit: s.proxy_cpu_limit,
            inject_proxy_memory_limit: s.proxy_memory_limit,
            inject_config: None,
        }
    }
}

/// `--webhook-addr`: an address, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookAddr(pub Option<SocketAddr>);

fn parse_webhook_addr(s: &str) -> Result<WebhookAddr, String> {
    match s.trim() {
        "off" => Ok(WebhookAddr(None)),
        a => a.parse().map(|a| WebhookAddr(Some(a))).map_err(|_| {
            format!("'{s}' is not an address; write IP:PORT (e.g. 0.0.0.0:9443) or off")
        }),
    }
}

impl Default for WebhookArgs {
    /// The webhook off (what `RunArgs::for_tests` uses), otherwise the flags' defaults.
    fn default() -> Self {
        Self {
            webhook_addr: WebhookAddr(None),
            webhook_secret: SecretRef {
                namespace: "mesh-system".into(),
                name: "mesh-webhook-tls".into(),
            },
            webhook_cert_file: None,
            webhook_key_file: None,
            inject: InjectArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_or_off() {
        assert_eq!(parse_webhook_addr("off"), Ok(WebhookAddr(None)));
        assert_eq!(
            parse_webhook_addr("127.0.0.1:9443"),
            Ok(WebhookAddr(Some("127.0.0.1:9443".parse().unwrap())))
        );
        let e = parse_webhook_addr("9443").unwrap_err();
        assert!(e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn resource_flags_are_checked_and_the_config_map_is_named() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            inject: InjectArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--inject-config",
            "mesh-system/mesh-config",
            "--inject-proxy-memory-limit",
            "256Mi",
            "--inject-proxy-cpu-limit",
            "",
        ])
        .unwrap();
        assert_eq!(
            cli.inject
                .inject_config
                .as_ref()
                .map(|c| c.to_string())
                .as_deref(),
            Some("mesh-system/mesh-config")
        );
        let s = cli.inject.settings("cluster.local");
        assert_eq!(s.proxy_memory_limit.as_deref(), Some("256Mi"));
        assert_eq!(s.proxy_cpu_limit, None);
        for bad in [
            ["--inject-proxy-cpu-request", "lots"],
            ["--inject-config", "mesh-config"],
        ] {
            let e = Cli::try_parse_from(["x", bad[0], bad[1]])
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("e.g.") || e.contains("such as"), "{e}");
        }
    }

    #[test]
    fn the_defaults_are_the_librarys() {
        let s = InjectArgs::default().settings("example.org");
        assert_eq!(
            s,
            mesh_inject::Settings {
                trust_domain: "example.org".into(),
                ..mesh_inject::Settings::default()
            }
        );
    }
}
