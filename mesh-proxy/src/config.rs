//! Proxy configuration: read once from flags and `MESH_PROXY_*` environment variables (the
//! sidecar style), validated into a typed [`Config`]. Validation collects every bad value
//! and reports them all, so a broken pod spec is fixed in one round.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::detect::DEFAULT_OPAQUE_PORTS;

/// Raw settings as given; every field is text so that all of them can be checked at once.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RawConfig {
    /// Listener for traffic from the local app (transparent via iptables, or explicit with a
    /// Host header naming the service).
    #[arg(
        long,
        env = "MESH_PROXY_OUTBOUND_ADDR",
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_addr: Option<String>,
    /// Listener for traffic to the local app (from other proxies and clients).
    #[arg(long, env = "MESH_PROXY_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: Option<String>,
    /// Admin listener: /live, /ready, /metrics, /config, /log-level, /shutdown.
    #[arg(long, env = "MESH_PROXY_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: Option<String>,
    /// Where inbound traffic goes when it was not redirected by iptables (the app's address,
    /// e.g. 127.0.0.1:8080). Redirected traffic goes to 127.0.0.1:<original port>.
    #[arg(long, env = "MESH_PROXY_INBOUND_FORWARD")]
    pub inbound_forward: Option<String>,
    /// The controller's discovery API, e.g. http://127.0.0.1:8086.
    #[arg(long, env = "MESH_PROXY_CONTROLLER_ADDR")]
    pub controller_addr: Option<String>,
    /// A YAML file of services (endpoints, routes, policy) to use instead of a controller.
    /// Re-read when it changes.
    #[arg(long, env = "MESH_PROXY_STATIC_CONFIG")]
    pub static_config: Option<String>,
    /// Who this proxy serves, sent to the controller (e.g. ns:default/pod:web-1).
    #[arg(long, env = "MESH_PROXY_WORKLOAD", default_value = "")]
    pub workload: Option<String>,
    /// Comma-separated ports forwarded as opaque TCP without protocol detection (replaces
    /// the default list of server-speaks-first ports).
    #[arg(long, env = "MESH_PROXY_OPAQUE_PORTS")]
    pub opaque_ports: Option<String>,
    /// How long to wait for a client's first bytes before treating the connection as opaque.
    #[arg(long, env = "MESH_PROXY_DETECT_TIMEOUT", default_value = "200ms")]
    pub detect_timeout: Option<String>,
    /// Timeout for connecting to an endpoint.
    #[arg(long, env = "MESH_PROXY_CONNECT_TIMEOUT", default_value = "1s")]
    pub connect_timeout: Option<String>,
    /// Idle time after which pooled HTTP connections and idle client keep-alive connections
    /// are closed.
    #[arg(long, env = "MESH_PROXY_HTTP_IDLE_TIMEOUT", default_value = "90s")]
    pub http_idle_timeout: Option<String>,
    /// Idle time after which an opaque TCP connection with no traffic either way is closed.
    #[arg(long, env = "MESH_PROXY_TCP_IDLE_TIMEOUT", default_value = "1h")]
    pub tcp_idle_timeout: Option<String>,
    /// How long a request waits for the first discovery answer about its destination.
    #[arg(long, env = "MESH_PROXY_DISCOVERY_TIMEOUT", default_value = "3s")]
    pub discovery_timeout: Option<String>,
    /// On SIGTERM, how long in-flight requests may take to finish before the proxy exits.
    #[arg(long, env = "MESH_PROXY_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: Option<String>,
    /// Log filter (tracing EnvFilter syntax), changeable at runtime on /log-level.
    #[arg(long, env = "MESH_PROXY_LOG", default_value = "info")]
    pub log: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = "MESH_PROXY_LOG_FORMAT", default_value = "plain")]
    pub log_format: Option<String>,
    /// How long a client may take to send a request's headers: from accepting the connection
    /// to its first complete request head. Slower connections are closed.
    #[arg(long, env = "MESH_PROXY_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: Option<String>,
    /// Most connections per listener that have not yet sent a complete first request head
    /// (or been found opaque); more are closed at once.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_PENDING_CONNECTIONS",
        default_value = "1000"
    )]
    pub max_pending_connections: Option<String>,
    /// Most open connections on the outbound listener; more are closed at once.
    #[arg(
        long,
        env = "MESH_PROXY_OUTBOUND_MAX_CONNECTIONS",
        default_value = "10000"
    )]
    pub outbound_max_connections: Option<String>,
    /// Most open connections on the inbound listener; more are closed at once.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND_MAX_CONNECTIONS",
        default_value = "10000"
    )]
    pub inbound_max_connections: Option<String>,
    /// Most connections the proxy opens to one endpoint address (pooled HTTP/1, HTTP/2,
    /// upgrades and opaque TCP together); a request that would need another one gets 503.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_CONNECTIONS_PER_ENDPOINT",
        default_value = "1000"
    )]
    pub max_connections_per_endpoint: Option<String>,
    /// HTTP/2 keep-alive PING interval on connections between mesh proxies (both ends are
    /// ours), or `off`.
    #[arg(long, env = "MESH_PROXY_H2_KEEPALIVE_INTERVAL", default_value = "20s")]
    pub h2_keepalive_interval: Option<String>,
    /// How long a keep-alive PING may wait for its acknowledgement before the connection is
    /// closed.
    #[arg(long, env = "MESH_PROXY_H2_KEEPALIVE_TIMEOUT", default_value = "10s")]
    pub h2_keepalive_timeout: Option<String>,
    /// HTTP/2 keep-alive PING interval on connections with applications (the local app's
    /// connections to the outbound listener, the proxy's connections to the app and to
    /// endpoints outside the mesh), or `off`. gRPC servers allow one PING every 5 minutes by
    /// default and close connections that send more; set this only as slow as your servers
    /// permit.
    #[arg(
        long,
        env = "MESH_PROXY_APP_H2_KEEPALIVE_INTERVAL",
        default_value = "off"
    )]
    pub app_h2_keepalive_interval: Option<String>,
    /// Also send keep-alive PINGs to applications when no stream is open (gRPC's
    /// `permit_without_calls`, which servers refuse by default).
    #[arg(
        long,
        env = "MESH_PROXY_APP_H2_KEEPALIVE_WHILE_IDLE",
        default_value = "false"
    )]
    pub app_h2_keepalive_while_idle: Option<String>,
    /// Runtime worker threads: `auto` (the CPUs this process may run on) or a number. With
    /// one, the proxy runs a single-threaded runtime (no work-stealing overhead).
    #[arg(long, env = "MESH_PROXY_WORKER_THREADS", default_value = "auto")]
    pub worker_threads: Option<String>,
    /// The workload's identity, a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>). Set,
    /// the proxy obtains a certificate from the controller and speaks mTLS with other
    /// proxies; unset, it speaks plaintext only.
    #[arg(long, env = "MESH_PROXY_IDENTITY")]
    pub identity: Option<String>,
    /// File with the proof of identity: the projected service-account token (Kubernetes)
    /// or the join token (local mode). Re-read before each certificate request.
    #[arg(long, env = "MESH_PROXY_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Clone, Debug)]
pub enum DiscoverySource {
    /// No discovery: everything is passed through to its original destination.
    None,
    Controller(http::Uri),
    StaticFile(PathBuf),
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub inbound_forward: Option<SocketAddr>,
    pub discovery: DiscoverySource,
    pub workload: String,
    pub opaque_ports: Vec<u16>,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub discovery_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log: String,
    pub log_format: LogFormat,
    pub worker_threads: usize,
    pub header_read_timeout: Duration,
    pub max_pending_connections: usize,
    pub outbound_max_connections: usize,
    pub inbound_max_connections: usize,
    pub max_connections_per_endpoint: usize,
    pub h2: H2Settings,
    /// mTLS identity; `None`: plaintext only.
    pub identity: Option<crate::identity::IdentitySettings>,
}

/// HTTP/2 keep-alive, per kind of peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Settings {
    /// Between mesh proxies.
    pub proxy_keepalive: Option<Duration>,
    /// With applications: off unless configured.
    pub app_keepalive: Option<Duration>,
    pub app_keepalive_while_idle: bool,
    pub keepalive_timeout: Duration,
}

impl H2Settings {
    /// Keep-alive interval and whether to ping without open streams, towards `peer`.
    pub fn keepalive(&self, peer: crate::client::Peer) -> (Option<Duration>, bool) {
        match peer {
            crate::client::Peer::Proxy => (self.proxy_keepalive, true),
            crate::client::Peer::App => (self.app_keepalive, self.app_keepalive_while_idle),
        }
    }
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            proxy_keepalive: Some(Duration::from_secs(20)),
            app_keepalive: None,
            app_keepalive_while_idle: false,
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

struct Checker {
    errors: Vec<String>,
}

impl Checker {
    fn addr(&mut self, name: &str, v: &Option<String>) -> Option<SocketAddr> {
        let v = v.as_deref()?.trim();
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.errors.push(format!(
                    "{name}='{v}' is not an address; write IP:PORT, e.g. 127.0.0.1:4140"
                ));
                None
            }
        }
    }

    fn duration(&mut self, name: &str, v: &Option<String>, max: Duration) -> Option<Duration> {
        let v = v.as_deref()?.trim();
        match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => {
                self.errors
                    .push(format!("{name}='{v}' must be longer than zero"));
                None
            }
            Ok(d) if d > max => {
                self.errors.push(format!(
                    "{name}='{v}' is longer than the maximum of {}",
                    humantime::format_duration(max)
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.errors.push(format!(
                    "{name}='{v}' is not a duration ({e}); write e.g. 200ms, 3s, 1h"
                ));
                None
            }
        }
    }

    /// A duration, or `off` for none.
    fn optional_duration(
        &mut self,
        name: &str,
        v: &Option<String>,
        max: Duration,
    ) -> Option<Option<Duration>> {
        match v.as_deref().map(str::trim) {
            None => None,
            Some("off") => Some(None),
            Some(_) => self.duration(name, v, max).map(Some),
        }
    }

    fn count(&mut self, name: &str, v: &Option<String>, max: usize) -> Option<usize> {
        let v = v.as_deref()?.trim();
        match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                self.errors
                    .push(format!("{name}='{v}' must be a number from 1 to {max}"));
                None
            }
        }
    }

    fn boolean(&mut self, name: &str, v: &Option<String>) -> Option<bool> {
        match v.as_deref()?.trim() {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.errors
                    .push(format!("{name}='{other}' must be true or false"));
                None
            }
        }
    }

    fn ports(&mut self, name: &str, v: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The same syntax as `mesh-proxy init`'s port lists: `25`, `8000-8100`.
            match crate::init::parse_port_range(part) {
                Ok(r) if r.last - r.first < 4096 => out.extend(r.first..=r.last),
                Ok(_) => self.errors.push(format!(
                    "{name}: '{part}' is not a port or port range of at most 4096 ports"
                )),
                Err(e) => self
                    .errors
                    .push(format!("{name}: '{part}' is not a port or port range: {e}")),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A duration used only when the raw value is absent (tests build `RawConfig` by hand).
fn or(d: Option<Duration>, default: Duration) -> Duration {
    d.unwrap_or(default)
}

impl Config {
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigErrors> {
        let mut c = Checker { errors: Vec::new() };
        let hour = Duration::from_secs(3600);
        let outbound_addr = c.addr("MESH_PROXY_OUTBOUND_ADDR", &raw.outbound_addr);
        let inbound_addr = c.addr("MESH_PROXY_INBOUND_ADDR", &raw.inbound_addr);
        let admin_addr = c.addr("MESH_PROXY_ADMIN_ADDR", &raw.admin_addr);
        let inbound_forward = c.addr("MESH_PROXY_INBOUND_FORWARD", &raw.inbound_forward);
        let detect_timeout = c.duration(
            "MESH_PROXY_DETECT_TIMEOUT",
            &raw.detect_timeout,
            Duration::from_secs(30),
        );
        let connect_timeout = c.duration(
            "MESH_PROXY_CONNECT_TIMEOUT",
            &raw.connect_timeout,
            Duration::from_secs(60),
        );
        let http_idle_timeout = c.duration(
            "MESH_PROXY_HTTP_IDLE_TIMEOUT",
            &raw.http_idle_timeout,
            24 * hour,
        );
        let tcp_idle_timeout = c.duration(
            "MESH_PROXY_TCP_IDLE_TIMEOUT",
            &raw.tcp_idle_timeout,
            24 * hour,
        );
        let discovery_timeout = c.duration(
            "MESH_PROXY_DISCOVERY_TIMEOUT",
            &raw.discovery_timeout,
            Duration::from_secs(60),
        );
        let shutdown_grace = c.duration("MESH_PROXY_SHUTDOWN_GRACE", &raw.shutdown_grace, hour);
        let opaque_ports = match raw.opaque_ports.as_deref() {
            Some(v) => c.ports("MESH_PROXY_OPAQUE_PORTS", v),
            None => DEFAULT_OPAQUE_PORTS.to_vec(),
        };
        let ctrl = raw
            .controller_addr
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let file = raw
            .static_config
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let discovery = match (ctrl, file) {
            (Some(_), Some(_)) => {
                c.errors.push(
                    "MESH_PROXY_CONTROLLER_ADDR and MESH_PROXY_STATIC_CONFIG are both set; choose one discovery source".into(),
                );
                DiscoverySource::None
            }
            (Some(u), None) => match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http")) && uri.authority().is_some() =>
                {
                    DiscoverySource::Controller(uri)
                }
                _ => {
                    c.errors.push(format!(
                        "MESH_PROXY_CONTROLLER_ADDR='{u}' is not a URL like http://127.0.0.1:8086"
                    ));
                    DiscoverySource::None
                }
            },
            (None, Some(f)) => {
                let path = PathBuf::from(f);
                if !path.is_file() {
                    c.errors.push(format!(
                        "MESH_PROXY_STATIC_CONFIG='{f}' is not a readable file"
                    ));
                }
                DiscoverySource::StaticFile(path)
            }
            (None, None) => DiscoverySource::None,
        };
        let log = raw.log.clone().unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            c.errors.push(format!(
                "MESH_PROXY_LOG='{log}' is not a valid log filter: {e}"
            ));
        }
        let log_format = match raw.log_format.as_deref().unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                c.errors.push(format!(
                    "MESH_PROXY_LOG_FORMAT='{other}' must be plain or json"
                ));
                LogFormat::Plain
            }
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_threads = match raw.worker_threads.as_deref().map(str::trim) {
            None | Some("auto") => cpus,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if (1..=512).contains(&n) => n,
                _ => {
                    c.errors.push(format!(
                        "MESH_PROXY_WORKER_THREADS='{n}' must be auto or a number from 1 to 512"
                    ));
                    1
                }
            },
        };
        let header_read_timeout = c.duration(
            "MESH_PROXY_HEADER_READ_TIMEOUT",
            &raw.header_read_timeout,
            hour,
        );
        let max_pending_connections = c.count(
            "MESH_PROXY_MAX_PENDING_CONNECTIONS",
            &raw.max_pending_connections,
            1 << 20,
        );
        let outbound_max_connections = c.count(
            "MESH_PROXY_OUTBOUND_MAX_CONNECTIONS",
            &raw.outbound_max_connections,
            1 << 20,
        );
        let inbound_max_connections = c.count(
            "MESH_PROXY_INBOUND_MAX_CONNECTIONS",
            &raw.inbound_max_connections,
            1 << 20,
        );
        let max_connections_per_endpoint = c.count(
            "MESH_PROXY_MAX_CONNECTIONS_PER_ENDPOINT",
            &raw.max_connections_per_endpoint,
            1 << 20,
        );
        let h2_default = H2Settings::default();
        let proxy_keepalive = c.optional_duration(
            "MESH_PROXY_H2_KEEPALIVE_INTERVAL",
            &raw.h2_keepalive_interval,
            hour,
        );
        let keepalive_timeout = c.duration(
            "MESH_PROXY_H2_KEEPALIVE_TIMEOUT",
            &raw.h2_keepalive_timeout,
            hour,
        );
        let app_keepalive = c.optional_duration(
            "MESH_PROXY_APP_H2_KEEPALIVE_INTERVAL",
            &raw.app_h2_keepalive_interval,
            24 * hour,
        );
        let app_keepalive_while_idle = c.boolean(
            "MESH_PROXY_APP_H2_KEEPALIVE_WHILE_IDLE",
            &raw.app_h2_keepalive_while_idle,
        );
        let workload = raw.workload.as_deref().unwrap_or("").trim().to_string();
        if let Err(e) = check_workload(&workload) {
            c.errors.push(e);
        }
        let identity = match raw.identity.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id) => match mesh_core::Identity::parse(id) {
                Err(e) => {
                    c.errors.push(format!(
                        "MESH_PROXY_IDENTITY='{id}': {e}; use spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
                    ));
                    None
                }
                Ok(identity) => {
                    if !matches!(discovery, DiscoverySource::Controller(_)) {
                        c.errors.push(
                            "MESH_PROXY_IDENTITY needs a controller to certify it: set MESH_PROXY_CONTROLLER_ADDR (or unset MESH_PROXY_IDENTITY for plaintext)".into(),
                        );
                    }
                    match raw.identity_token_file.as_deref().map(str::trim) {
                        None | Some("") => {
                            c.errors.push(
                                "MESH_PROXY_IDENTITY is set but MESH_PROXY_IDENTITY_TOKEN_FILE is not: name the file with the service-account or join token".into(),
                            );
                            None
                        }
                        Some(f) => Some(crate::identity::IdentitySettings {
                            identity,
                            token_file: PathBuf::from(f),
                            workload: workload.clone(),
                        }),
                    }
                }
            },
        };
        let listeners = [
            ("outbound", outbound_addr),
            ("inbound", inbound_addr),
            ("admin", admin_addr),
        ];
        for (i, (a, x)) in listeners.iter().enumerate() {
            for (b, y) in &listeners[i + 1..] {
                if let (Some(x), Some(y)) = (x, y) {
                    if x.port() != 0
                        && x.port() == y.port()
                        && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
                    {
                        c.errors.push(format!(
                            "the {a} and {b} listeners both use {x}; give each its own port"
                        ));
                    }
                }
            }
        }
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let (Some(outbound_addr), Some(inbound_addr), Some(admin_addr)) =
            (outbound_addr, inbound_addr, admin_addr)
        else {
            return Err(ConfigErrors(vec![
                "the outbound, inbound and admin addresses are required".into(),
            ]));
        };
        Ok(Config {
            outbound_addr,
            inbound_addr,
            admin_addr,
            inbound_forward,
            discovery,
            workload,
            opaque_ports,
            detect_timeout: or(detect_timeout, Duration::from_millis(200)),
            connect_timeout: or(connect_timeout, Duration::from_secs(1)),
            http_idle_timeout: or(http_idle_timeout, Duration::from_secs(90)),
            tcp_idle_timeout: or(tcp_idle_timeout, hour),
            discovery_timeout: or(discovery_timeout, Duration::from_secs(3)),
            shutdown_grace: or(shutdown_grace, Duration::from_secs(30)),
            log,
            log_format,
            worker_threads,
            header_read_timeout: or(header_read_timeout, Duration::from_secs(10)),
            max_pending_connections: max_pending_connections.unwrap_or(1000),
            outbound_max_connections: outbound_max_connections.unwrap_or(10_000),
            inbound_max_connections: inbound_max_connections.unwrap_or(10_000),
            max_connections_per_endpoint: max_connections_per_endpoint.unwrap_or(1000),
            h2: H2Settings {
                proxy_keepalive: proxy_keepalive.unwrap_or(h2_default.proxy_keepalive),
                app_keepalive: app_keepalive.unwrap_or(h2_default.app_keepalive),
                app_keepalive_while_idle: app_keepalive_while_idle
                    .unwrap_or(h2_default.app_keepalive_while_idle),
                keepalive_timeout: or(keepalive_timeout, h2_default.keepalive_timeout),
            },
            identity,
        })
    }
}

/// Checks the workload name the proxy sends to the controller: empty, or
/// `ns:<namespace>/pod:<name>` or `ns:<namespace>/workload:<name>`.
fn check_workload(w: &str) -> Result<(), String> {
    if w.is_empty() {
        return Ok(());
    }
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let ok = match w.split_once('/') {
        Some((ns, who)) => {
            let ns_ok = ns.strip_prefix("ns:").is_some_and(label);
            let who_ok = who
                .strip_prefix("pod:")
                .or_else(|| who.strip_prefix("workload:"))
                .is_some_and(label);
            ns_ok && who_ok
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "MESH_PROXY_WORKLOAD='{w}' is not of the form ns:<namespace>/pod:<name> or ns:<namespace>/workload:<name> (lower-case names, e.g. ns:default/pod:web-1)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawConfig {
        RawConfig {
            outbound_addr: Some("127.0.0.1:4140".into()),
            inbound_addr: Some("0.0.0.0:4143".into()),
            admin_addr: Some("0.0.0.0:4191".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_raw(&base()).unwrap();
        assert_eq!(c.opaque_ports, DEFAULT_OPAQUE_PORTS.to_vec());
        assert_eq!(c.detect_timeout, Duration::from_millis(200));
    }

    #[test]
    fn reports_every_bad_value() {
        let raw = RawConfig {
            outbound_addr: Some("nope".into()),
            detect_timeout: Some("fast".into()),
            opaque_ports: Some("25,x,70000,10-5".into()),
            controller_addr: Some("grpc://x".into()),
            log_format: Some("xml".into()),
            ..base()
        };
        let errs = Config::from_raw(&raw).unwrap_err().0;
        assert_eq!(errs.len(), 7, "{errs:#?}");
        let text = errs.join("\n");
        for needle in [
            "MESH_PROXY_OUTBOUND_ADDR='nope'",
            "MESH_PROXY_DETECT_TIMEOUT='fast'",
            "'x' is not a port",
            "'70000' is not a port",
            "'10-5' is not a port",
            "MESH_PROXY_CONTROLLER_ADDR",
            "MESH_PROXY_LOG_FORMAT",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn workload_names_are_checked() {
        for good in ["", "ns:demo/workload:client", "ns:default/pod:web-1.x"] {
            assert!(check_workload(good).is_ok(), "{good}");
        }
        for bad in [
            "client",
            "ns:demo",
            "demo/workload:a",
            "ns:demo/pod:",
            "ns:Demo/pod:a",
            "ns:a/svc:b",
        ] {
            let raw = RawConfig {
                workload: Some(bad.into()),
                ..base()
            };
            let errs = Config::from_raw(&raw).unwrap_err().0;
            assert!(errs[0].contains("MESH_PROXY_WORKLOAD"), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn keepalive_settings() {
        let c = Config::from_raw(&base()).unwrap();
        assert_eq!(c.h2, H2Settings::default());
        assert_eq!(c.h2.app_keepalive, None);
        let raw = RawConfig {
            h2_keepalive_interval: Some("off".into()),
            app_h2_keepalive_interval: Some("5m".into()),
            app_h2_keepalive_while_idle: Some("true".into()),
            ..base()
        };
        let c = Config::from_raw(&raw).unwrap();
        assert_eq!(c.h2.proxy_keepalive, None);
        assert_eq!(c.h2.app_keepalive, Some(Duration::from_secs(300)));
        assert!(c.h2.app_keepalive_while_idle);
        let raw = RawConfig {
            app_h2_keepalive_while_idle: Some("yes".into()),
            max_connections_per_endpoint: Some("0".into()),
            ..base()
        };
        let errs = Config::from_raw(&raw).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn port_clash_is_reported() {
        let raw = RawConfig {
            admin_addr: Some("127.0.0.1:4143".into()),
            ..base()
        };
        let errs = Config::from_raw(&raw).unwrap_err().0;
        assert!(errs[0].contains("inbound and admin"), "{errs:?}");
    }
}
