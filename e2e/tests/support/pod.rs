//! A kubelet for the suite: runs a Pod manifest (what `meshctl inject --manual` printed) in a
//! pod network namespace of the [`Mesh`] the way the kubelet runs it, so the suite tests the
//! pod the injector produces rather than the harness's own idea of a meshed pod.
//!
//! What it does, as the kubelet does:
//! - init containers one after the other; one that exits non-zero fails the pod. A native
//!   sidecar (an init container with `restartPolicy: Always`) keeps running, and the next
//!   container starts only once its `startupProbe` has passed;
//! - then the containers in order, each after the previous one's `lifecycle.postStart` exec
//!   hook returned 0 (a failing hook fails the pod);
//! - the pod is ready when every `startupProbe` and `readinessProbe` passed; probes connect
//!   from the node (the hub namespace) to the pod IP, like the kubelet's;
//! - then a Workload file of the pod's name, labels, named ports and service account
//!   registers it (local mode has no Pod objects; the controller gives proxies naming
//!   themselves `ns:<ns>/pod:<name>` that Workload's policy).
//!
//! Each container runs as `env -i <its env> setpriv <its securityContext> <binary> <args>`:
//! the environment from the manifest only, with the downward API resolved (`fieldRef`) and
//! `$(VAR)` expanded as Kubernetes expands it; `runAsUser`/`runAsGroup`; exactly the
//! capabilities its `capabilities` leave (the container runtime's defaults minus `drop`, plus
//! `add`) as the inheritable, ambient and bounding sets; `allowPrivilegeEscalation: false` as
//! no_new_privs. Images map to the built binaries (`/usr/local/bin/mesh-proxy` and
//! `mesh-proxy` to mesh-proxy, `mesh-echo` to the echo app). Volumes are host directories:
//! a projected service-account token holds a local-mode join token for the pod's service
//! account bound to `ns:<ns>/pod:<name>` (owned by the container's user, mode 0600), an
//! `emptyDir` is empty; a path under a mount's `mountPath` in an env value or argument is
//! rewritten to the host directory (there is no mount namespace per container). Not
//! emulated: images' file systems (`readOnlyRootFilesystem`), seccomp, resources, liveness
//! probes and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod as PodManifest, PodSecurityContext, Probe, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::http;
use super::mesh::{Mesh, Pod, GRPC_PORT, NS, STARTUP};
use super::sys;

/// The capabilities a container runtime (containerd, CRI-O) gives a container whose
/// `securityContext` says nothing.
const DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `PATH` inside containers.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long an init container may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the kubelet did while starting a pod.
pub struct Started {
    pub pod: Pod,
    /// Each step, with the time since the kubelet began (`mesh-init exited 0`, `mesh-proxy
    /// startupProbe passed`, `app started`, ...).
    pub events: Vec<(Duration, String)>,
    /// For each container with a postStart hook: whether its own readinessProbe passed at the
    /// moment the hook returned (the hook's promise: the container is ready).
    pub ready_when_hook_returned: BTreeMap<String, bool>,
}

impl Started {
    /// When event `what` (its text's start) happened; panics when it did not.
    pub fn at(&self, what: &str) -> Duration {
        self.events
            .iter()
            .find(|(_, e)| e.starts_with(what))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no event '{what}' in {:?}", self.events))
    }

    /// The events as one line, for reports.
    pub fn timeline(&self) -> String {
        self.events
            .iter()
            .map(|(t, e)| format!("{} ms {e}", t.as_millis()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One container, ready to start: its argv (`env -i ... setpriv ... binary args`).
struct Prepared {
    name: String,
    argv: Vec<String>,
    /// `env -i VARS setpriv FLAGS`: the prefix that runs any command (hooks) in its context.
    context: Vec<String>,
}

impl Mesh {
    /// Runs `meshctl inject --manual --controller-addr http://<hub>:8086 ARGS -` on
    /// `manifest` (stdin) and parses the Pod it prints. Panics with meshctl's output when it
    /// fails or injects nothing.
    pub fn meshctl_inject(&self, manifest: &str, args: &[&str]) -> PodManifest {
        use std::io::Write;
        let addr = format!("http://{}:{GRPC_PORT}", self.hub_ip());
        let mut child = Command::new(&self.bins.meshctl)
            .args(["inject", "--manual", "--controller-addr", &addr])
            .args(args)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bins.meshctl.display()));
        let mut stdin = child.stdin.take().expect("meshctl's stdin");
        stdin
            .write_all(manifest.as_bytes())
            .expect("write the manifest to meshctl");
        drop(stdin);
        let out = child.wait_with_output().expect("wait for meshctl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "meshctl inject {args:?} failed ({}):\n{stdout}{stderr}",
            out.status
        );
        assert!(
            stderr.contains("\" injected"),
            "meshctl inject {args:?} injected nothing:\n{stderr}"
        );
        serde_yaml_ng::from_str(&stdout).unwrap_or_else(|e| {
            panic!("meshctl inject printed no Pod ({e}):\n{stdout}");
        })
    }

    /// Starts `manifest` like a kubelet (see the module doc) and registers it with a Workload
    /// file once it is ready. Processes are named `<pod>/<container>`.
    pub fn run_pod(&mut self, manifest: &PodManifest) -> Started {
        let began = Instant::now();
        let mut events = Vec::new();
        let mut event = |what: String| events.push((began.elapsed(), what));
        let name = manifest
            .metadata
            .name
            .clone()
            .expect("the Pod manifest has a metadata.name");
        let namespace = manifest.metadata.namespace.as_deref().unwrap_or("default");
        assert_eq!(
            namespace, NS,
            "the harness runs pods of namespace {NS} only; the manifest says {namespace}"
        );
        assert!(!self.pods.contains_key(&name), "pod {name} exists");
        let spec = manifest.spec.clone().expect("the Pod manifest has a spec");
        let pod = self.pod_network(&name);
        self.pods.insert(name.clone(), pod.clone());

        let service_account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let volumes = self.volumes(manifest, &pod, &service_account);
        let init = spec.init_containers.clone().unwrap_or_default();
        let containers = spec.containers.clone();
        let pod_sc = spec.security_context.clone();
        let mut probes: Vec<(String, Probe)> = Vec::new();
        let mut ready_when_hook_returned = BTreeMap::new();

        for c in &init {
            let p = self.prepare(manifest, &pod, c, pod_sc.as_ref(), &volumes);
            if c.restart_policy.as_deref() == Some("Always") {
                // A native sidecar: it keeps running; the next container waits for its
                // startupProbe.
                self.spawn(
                    &format!("{name}/{}", p.name),
                    &pod.ns,
                    p.argv.clone(),
                    Vec::new(),
                );
                event(format!("{} started (native sidecar)", c.name));
                self.post_start(&pod, c, &p, &mut event, &mut ready_when_hook_returned);
                if let Some(probe) = &c.startup_probe {
                    self.wait_probe(&pod, c, "startupProbe", probe, &p, startup_deadline(probe));
                    event(format!("{} startupProbe passed", c.name));
                }
                if let Some(probe) = &c.readiness_probe {
                    probes.push((c.name.clone(), probe.clone()));
                }
            } else {
                let out = sys::run_unchecked(
                    Command::new("ip")
                        .args(["netns", "exec", &pod.ns])
                        .args(&p.argv),
                    INIT_TIMEOUT,
                );
                assert!(
                    out.status.success(),
                    "init container {} of pod {name} failed ({}): {:?}\n{}{}",
                    c.name,
                    out.status,
                    p.argv,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                event(format!("{} exited 0", c.name));
            }
        }
        for c in &containers {
            let p = self.prepare(manifest, &pod, c, pod_sc.as_ref(), &volumes);
            self.spawn(
                &format!("{name}/{}", p.name),
                &pod.ns,
                p.argv.clone(),
                Vec::new(),
            );
            event(format!("{} started", c.name));
            self.post_start(&pod, c, &p, &mut event, &mut ready_when_hook_returned);
            if let Some(probe) = &c.startup_probe {
                probes.push((c.name.clone(), probe.clone()));
            }
            if let Some(probe) = &c.readiness_probe {
                probes.push((c.name.clone(), probe.clone()));
            }
        }
        for (container, probe) in &probes {
            let c = init
                .iter()
                .chain(&containers)
                .find(|c| &c.name == container)
                .expect("a probe's container");
            let p = self.prepare(manifest, &pod, c, pod_sc.as_ref(), &volumes);
            self.wait_probe(&pod, c, "readinessProbe", probe, &p, STARTUP);
            event(format!("{container} ready"));
        }

        self.write(
            &format!("workload-{name}.yaml"),
            &workload_yaml(manifest, &pod, &service_account),
        );
        event("registered (Workload)".into());
        Started {
            pod,
            events,
            ready_when_hook_returned,
        }
    }

    /// Runs a container's `lifecycle.postStart.exec` hook to completion, as the kubelet does
    /// before it starts the next container.
    fn post_start(
        &self,
        pod: &Pod,
        c: &Container,
        p: &Prepared,
        event: &mut impl FnMut(String),
        ready_when_hook_returned: &mut BTreeMap<String, bool>,
    ) {
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let exec = hook.exec.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: only exec postStart hooks are supported by the harness",
                c.name
            )
        });
        let command: Vec<String> = exec
            .command
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| if i == 0 { self.binary(c, a) } else { a.clone() })
            .collect();
        let out = sys::run_unchecked(
            Command::new("ip")
                .args(["netns", "exec", &pod.ns])
                .args(&p.context)
                .args(&command),
            Duration::from_secs(150),
        );
        assert!(
            out.status.success(),
            "the postStart hook of {} failed ({}), so the kubelet kills the container: {command:?}\n{}{}",
            c.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        event(format!("{} postStart hook returned 0", c.name));
        if let Some(probe) = &c.readiness_probe {
            let ready = self.probe_once(pod, c, probe, p).is_ok();
            ready_when_hook_returned.insert(c.name.clone(), ready);
        }
    }

    /// Host directories for the pod's volumes (name -> directory).
    fn volumes(
        &self,
        manifest: &PodManifest,
        pod: &Pod,
        service_account: &str,
    ) -> BTreeMap<String, PathBuf> {
        let spec = manifest.spec.as_ref().expect("the Pod manifest has a spec");
        let root = self.dir.join("volumes").join(&pod.name);
        let mut dirs = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let dir = root.join(&v.name);
            std::fs::create_dir_all(&dir).expect("create a volume directory");
            if v.empty_dir.is_some() {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .expect("open the emptyDir");
            } else if let Some(projected) = &v.projected {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .expect("make the volume searchable");
                // The token file belongs to the user of the containers that mount it.
                let owner = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                    .find(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name))
                    .and_then(|c| run_as(c, spec.security_context.as_ref()).0);
                for source in projected.sources.iter().flatten() {
                    let sat = source.service_account_token.as_ref().unwrap_or_else(|| {
                        panic!(
                            "volume {}: the harness projects serviceAccountToken sources only",
                            v.name
                        )
                    });
                    let workload = format!("ns:{NS}/pod:{}", pod.name);
                    let token = self.make_join_token(service_account, &workload);
                    let file = dir.join(&sat.path);
                    std::fs::write(&file, token).expect("write the projected token");
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .expect("restrict the projected token");
                    if let Some(uid) = owner {
                        let uid = u32::try_from(uid).expect("runAsUser is a UID");
                        std::os::unix::fs::chown(&file, Some(uid), None)
                            .expect("chown the projected token");
                    }
                }
            } else {
                panic!(
                    "volume {}: the harness supports emptyDir and projected service-account tokens only",
                    v.name
                );
            }
            dirs.insert(v.name.clone(), dir);
        }
        dirs
    }

    /// The host path of image binary `argv0` of container `c`.
    fn binary(&self, c: &Container, argv0: &str) -> String {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        let known = match base {
            "mesh-proxy" => &self.bins.proxy,
            "mesh-echo" => &self.bins.echo,
            _ => panic!(
                "container {}: the harness has no binary for {argv0} (image {:?}); images map mesh-proxy and mesh-echo",
                c.name, c.image
            ),
        };
        // The proxy image's binary lives at /usr/local/bin/mesh-proxy; a relative name is
        // looked up on PATH, where both images have their binary.
        assert!(
            !argv0.contains('/') || argv0 == format!("/usr/local/bin/{base}"),
            "container {}: {argv0} is not where the image has its binary (/usr/local/bin/{base})",
            c.name
        );
        known.display().to_string()
    }

    /// A container's command line, environment and security context as argv.
    fn prepare(
        &self,
        manifest: &PodManifest,
        pod: &Pod,
        c: &Container,
        pod_sc: Option<&PodSecurityContext>,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Prepared {
        let mounts: Vec<(String, String)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let dir = volumes.get(&m.name).unwrap_or_else(|| {
                    panic!("container {} mounts unknown volume {}", c.name, m.name)
                });
                (m.mount_path.clone(), dir.display().to_string())
            })
            .collect();
        let remap = |s: String| {
            for (mount, dir) in &mounts {
                if s == *mount {
                    return dir.clone();
                }
                if let Some(rest) = s.strip_prefix(&format!("{}/", mount.trim_end_matches('/'))) {
                    return format!("{dir}/{rest}");
                }
            }
            s
        };
        let env = resolve_env(manifest, pod, self.hub_ip().into(), c.env.as_deref());
        let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

        let mut command: Vec<String> = match &c.command {
            Some(cmd) if !cmd.is_empty() => cmd.clone(),
            // The image's entrypoint: each image runs its binary.
            _ => {
                let image = c.image.as_deref().unwrap_or_default();
                let name = image.split(':').next().unwrap_or(image);
                vec![name.rsplit('/').next().unwrap_or(name).to_string()]
            }
        };
        command.extend(c.args.iter().flatten().cloned());
        let mut command: Vec<String> = command
            .into_iter()
            .map(|a| remap(expand(&a, &lookup)))
            .collect();
        command[0] = self.binary(c, &command[0]);

        let mut context = vec![
            "env".to_string(),
            "-i".into(),
            format!("PATH={PATH}"),
            format!("HOSTNAME={}", pod.name),
        ];
        context.extend(env.into_iter().map(|(k, v)| format!("{k}={}", remap(v))));
        context.push("setpriv".into());
        context.extend(setpriv(c, pod_sc));
        let mut argv = context.clone();
        argv.extend(command);
        Prepared {
            name: c.name.clone(),
            argv,
            context,
        }
    }

    /// Waits until `probe` of container `c` passes, polling every 100 ms (the kubelet's
    /// `periodSeconds` only paces it), until `deadline` after the start.
    fn wait_probe(
        &self,
        pod: &Pod,
        c: &Container,
        kind: &str,
        probe: &Probe,
        p: &Prepared,
        deadline: Duration,
    ) {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        std::thread::sleep(delay);
        let until = Instant::now() + deadline;
        let mut last = String::new();
        while Instant::now() < until {
            match self.probe_once(pod, c, probe, p) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the {kind} of container {} in pod {} did not pass within {deadline:?}: {last}",
            c.name, pod.name
        );
    }

    /// One try of a probe, from the node (the hub namespace) as the kubelet probes.
    fn probe_once(
        &self,
        pod: &Pod,
        c: &Container,
        probe: &Probe,
        p: &Prepared,
    ) -> Result<(), String> {
        let port_of = |port: &IntOrString| -> u16 {
            match port {
                IntOrString::Int(n) => u16::try_from(*n).expect("a probe port is a TCP port"),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .and_then(|cp| u16::try_from(cp.container_port).ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "container {} has no port named {name} for its probe",
                            c.name
                        )
                    }),
            }
        };
        let host = |h: Option<&String>| -> IpAddr {
            h.map(|h| h.parse().expect("a probe host is an IP address"))
                .unwrap_or(IpAddr::V4(pod.ip))
        };
        if let Some(get) = &probe.http_get {
            assert!(
                get.scheme.as_deref().unwrap_or("HTTP") == "HTTP",
                "container {}: the harness probes over HTTP only",
                c.name
            );
            let addr = SocketAddr::new(host(get.host.as_ref()), port_of(&get.port));
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            let hub = self.hub.clone();
            let shown = format!("GET http://{addr}{path}");
            return match sys::in_netns(&hub, move || http::get(addr, &path)) {
                Ok((status, _)) if (200..400).contains(&status) => Ok(()),
                Ok((status, body)) => Err(format!("{shown}: {status} {body}")),
                Err(e) => Err(format!("{shown}: {e}")),
            };
        }
        if let Some(tcp) = &probe.tcp_socket {
            let addr = SocketAddr::new(host(tcp.host.as_ref()), port_of(&tcp.port));
            let hub = self.hub.clone();
            return sys::in_netns(&hub, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"))
            });
        }
        if let Some(exec) = &probe.exec {
            let out = sys::run_unchecked(
                Command::new("ip")
                    .args(["netns", "exec", &pod.ns])
                    .args(&p.context)
                    .args(exec.command.iter().flatten()),
                Duration::from_secs(10),
            );
            return if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "exec {:?}: {}: {}",
                    exec.command,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            };
        }
        panic!(
            "container {}: a probe with no httpGet, tcpSocket or exec",
            c.name
        )
    }
}

/// The deadline of a startupProbe: its failureThreshold tries, periodSeconds apart.
fn startup_deadline(probe: &Probe) -> Duration {
    let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
    let failures = probe.failure_threshold.unwrap_or(3).max(1) as u64;
    Duration::from_secs(period * failures)
}

/// The container's environment, in order: values with `$(VAR)` expanded against the
/// variables before them, `fieldRef`s resolved from the pod.
fn resolve_env(
    manifest: &PodManifest,
    pod: &Pod,
    node_ip: IpAddr,
    env: Option<&[EnvVar]>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in env.into_iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            let field = from.field_ref.as_ref().unwrap_or_else(|| {
                panic!(
                    "env {}: the harness resolves fieldRef only (no secrets, config maps or resources)",
                    var.name
                )
            });
            field_value(manifest, pod, node_ip, &field.field_path)
        } else {
            let before = |k: &str| {
                out.iter()
                    .rev()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            };
            expand(var.value.as_deref().unwrap_or_default(), &before)
        };
        out.retain(|(n, _)| n != &var.name);
        out.push((var.name.clone(), value));
    }
    out
}

/// The downward API: the value of a `fieldRef.fieldPath`.
fn field_value(manifest: &PodManifest, pod: &Pod, node_ip: IpAddr, path: &str) -> String {
    let meta = &manifest.metadata;
    let spec = manifest.spec.as_ref();
    let indexed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta
            .uid
            .clone()
            .unwrap_or_else(|| format!("uid-{}", pod.ns)),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "spec.nodeName" => "e2e-node".into(),
        "status.podIP" | "status.podIPs" => pod.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        _ => indexed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| indexed("metadata.annotations['", meta.annotations.as_ref()))
            .unwrap_or_else(|| panic!("fieldRef {path} is not one the harness resolves")),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, `$$` is a literal `$`.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The user and group a container runs as (its own securityContext over the pod's).
fn run_as(c: &Container, pod_sc: Option<&PodSecurityContext>) -> (Option<i64>, Option<i64>) {
    let sc = c.security_context.as_ref();
    (
        sc.and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|p| p.run_as_user)),
        sc.and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|p| p.run_as_group)),
    )
}

/// `setpriv` flags for a container's security context.
fn setpriv(c: &Container, pod_sc: Option<&PodSecurityContext>) -> Vec<String> {
    let sc: Option<&SecurityContext> = c.security_context.as_ref();
    let (uid, gid) = run_as(c, pod_sc);
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    assert!(
        !non_root || uid.unwrap_or(0) != 0,
        "container {} has runAsNonRoot but would run as root: the kubelet refuses to start it",
        c.name
    );
    let mut flags = vec![
        format!("--reuid={}", uid.unwrap_or(0)),
        format!("--regid={}", gid.unwrap_or(0)),
        "--clear-groups".to_string(),
    ];
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let caps: BTreeSet<String> = if privileged {
        BTreeSet::from(["ALL".to_string()])
    } else {
        let spec = sc.and_then(|s| s.capabilities.as_ref());
        let norm = |c: &String| c.trim_start_matches("CAP_").to_ascii_uppercase();
        let drop: BTreeSet<String> = spec
            .and_then(|s| s.drop.as_ref())
            .into_iter()
            .flatten()
            .map(norm)
            .collect();
        let add: BTreeSet<String> = spec
            .and_then(|s| s.add.as_ref())
            .into_iter()
            .flatten()
            .map(norm)
            .collect();
        let mut caps: BTreeSet<String> = if drop.contains("ALL") {
            BTreeSet::new()
        } else {
            DEFAULT_CAPS
                .iter()
                .map(|c| c.to_string())
                .filter(|c| !drop.contains(c))
                .collect()
        };
        caps.extend(add);
        caps
    };
    let set = if caps.contains("ALL") {
        "+all".to_string()
    } else {
        std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
            .collect::<Vec<_>>()
            .join(",")
    };
    flags.push(format!("--inh-caps={set}"));
    flags.push(format!("--ambient-caps={set}"));
    flags.push(format!("--bounding-set={set}"));
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        flags.push("--no-new-privs".into());
    }
    flags
}

/// The Workload that registers a pod in local mode: its labels, address, named container
/// ports and service account, and `proxy: {}` when it runs the mesh proxy.
fn workload_yaml(manifest: &PodManifest, pod: &Pod, service_account: &str) -> String {
    let spec = manifest.spec.as_ref().expect("the Pod manifest has a spec");
    let labels: Vec<String> = manifest
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let all = || {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
    };
    let ports: Vec<String> = all()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.name
                .as_ref()
                .map(|n| format!("{{name: {n}, port: {}}}", p.container_port))
        })
        .collect();
    let proxy = if all().any(|c| c.name == "mesh-proxy") {
        "  proxy: {}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: {NS}, labels: {{{}}}}}\nspec:\n  address: {}\n  ports: [{}]\n  serviceAccount: {service_account}\n{proxy}",
        pod.name,
        labels.join(", "),
        pod.ip,
        ports.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let vars = |k: &str| match k {
            "NS" => Some("e2e".to_string()),
            "POD" => Some("web-1".to_string()),
            _ => None,
        };
        assert_eq!(expand("ns:$(NS)/pod:$(POD)", &vars), "ns:e2e/pod:web-1");
        assert_eq!(expand("$(MISSING)-x", &vars), "$(MISSING)-x");
        assert_eq!(expand("$$(NS) $$ $x $(", &vars), "$(NS) $ $x $(");
    }
}
