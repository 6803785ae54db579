//! One scenario's mesh: a hub network namespace holding a Linux bridge and the controller (local
//! mode, on a temporary config directory), and "pods", each its own network namespace with a
//! veth pair to the bridge, running the test app (`mesh-echo`) and, when meshed, `mesh-proxy
//! init` rules plus `mesh-proxy` as its own UID, exactly as in a Kubernetes pod. Services get a
//! virtual IP that every pod's `/etc/hosts` names (`ip netns exec` mounts
//! `/etc/netns/<ns>/hosts`), so apps call `http://web/` and know nothing of the proxy.
//!
//! Identity is on, as in a production mesh: the harness runs `mesh-controller identity init` into
//! a directory of the scenario, starts the controller with `--identity-dir`, and gives every
//! meshed pod a join token for its own service account (named after the pod), so proxies talk
//! mTLS to each other and each app sees its callers' SPIFFE IDs.
//!
//! Everything is removed on drop, also when the test panics: processes (which also die with
//! the test thread), namespaces, `/etc/netns` entries and the temporary directory. Names carry
//! the test process id and a per-test number, so tests run in parallel without clashing, and
//! each test has its own private /24.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::http;
use super::report::{LoadResult, Report};
use super::sys::{self, DieWithParent};

/// UID the proxies run as (their own traffic is exempt from redirection).
pub const PROXY_UID: &str = "2102";
/// Namespace of every object the scenarios create.
pub const NS: &str = "e2e";
/// The app's HTTP (HTTP/1, HTTP/2, gRPC) port and its server-speaks-first TCP port.
pub const APP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 7000;
pub const ADMIN_PORT: u16 = 4191;
pub(super) const GRPC_PORT: u16 = 8086;
const CONTROLLER_ADMIN_PORT: u16 = 9990;
pub(super) const STARTUP: Duration = Duration::from_secs(20);
/// The mesh's trust domain (the controller's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The SPIFFE ID of pod `name` (its service account has the pod's name).
pub fn spiffe(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{name}")
}

static NEXT_TEST: AtomicU32 = AtomicU32::new(0);

/// The binaries under test, built once by cargo (`cargo test --workspace` builds them).
pub struct Bins {
    pub proxy: PathBuf,
    pub controller: PathBuf,
    pub echo: PathBuf,
    /// `meshctl` (for `meshctl inject --manual`).
    pub meshctl: PathBuf,
}

impl Bins {
    fn locate() -> Self {
        let echo = PathBuf::from(env!("CARGO_BIN_EXE_mesh-echo"));
        let dir = echo.parent().map(Path::to_path_buf).unwrap_or_default();
        let find = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.exists(),
                "{} is missing: build the binaries first with `cargo build --workspace --bins` \
                 (`cargo test --workspace` builds them too)",
                p.display()
            );
            p
        };
        Self {
            proxy: find("mesh-proxy"),
            controller: find("mesh-controller"),
            meshctl: find("meshctl"),
            echo,
        }
    }
}

/// A pod of the scenario.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The hub-side end of its veth pair (for cutting the network).
    pub hub_link: String,
}

/// How to start a pod.
#[derive(Clone, Debug)]
pub struct PodSpec {
    name: String,
    labels: Vec<(String, String)>,
    echo_args: Vec<String>,
    meshed: bool,
    register: bool,
    init_args: Vec<String>,
}

impl PodSpec {
    /// A meshed pod serving the app, registered as a Workload with these labels.
    pub fn server(name: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            echo_args: Vec::new(),
            meshed: true,
            register: true,
            init_args: Vec::new(),
        }
    }

    /// A meshed pod that calls others (it serves the app too, but is in no Service).
    pub fn client(name: &str) -> Self {
        Self {
            register: false,
            ..Self::server(name, &[])
        }
    }

    /// Extra `mesh-echo serve` flags (`--delay-ms 50`, `--fail-rate 0.2`).
    pub fn echo(mut self, args: &[&str]) -> Self {
        self.echo_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Extra `mesh-proxy init` flags.
    pub fn init(mut self, args: &[&str]) -> Self {
        self.init_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// No proxy and no iptables rules: an app outside the mesh.
    pub fn unmeshed(mut self) -> Self {
        self.meshed = false;
        self
    }
}

struct Proc {
    child: Child,
    ns: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// A running load (`mesh-echo load --json` in a pod); killed on drop if not waited for.
pub struct LoadRun {
    child: Option<Child>,
    desc: String,
    deadline: Instant,
}

impl LoadRun {
    /// Waits for the load to finish (bounded by its own deadline) and parses its summary.
    pub fn wait(mut self) -> LoadResult {
        let Some(child) = self.child.take() else {
            panic!("load already waited for");
        };
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let left = self.deadline.saturating_duration_since(Instant::now());
        let out = match rx.recv_timeout(left) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("{}: {e}", self.desc),
            Err(_) => {
                // SAFETY: kill has no memory-safety preconditions; pid is our child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!("{} did not finish by its deadline", self.desc);
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        match line.map(serde_json::from_str::<LoadResult>) {
            Some(Ok(r)) => r,
            _ => panic!(
                "{} printed no summary ({}):\n{stdout}{}",
                self.desc,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One scenario's mesh. See the module doc.
pub struct Mesh {
    pub bins: Bins,
    pub report: Report,
    tag: String,
    prefix: [u8; 3],
    pub(super) hub: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The controller's identity directory (`identity init`; `--identity-dir`).
    pub identity: PathBuf,
    tokens: PathBuf,
    controller_args: Vec<String>,
    logs: PathBuf,
    services: Vec<(String, Ipv4Addr)>,
    pub(super) pods: BTreeMap<String, Pod>,
    procs: BTreeMap<String, Proc>,
    namespaces: Vec<String>,
    next_pod: u8,
    passed: bool,
}

impl Mesh {
    /// Creates the hub namespace and bridge, makes a CA, and starts the controller on an empty
    /// config directory. `None` (after printing why) when the machine cannot run the suite.
    pub fn new(title: &str) -> Option<Self> {
        Self::with_controller_args(title, &[])
    }

    /// [`Mesh::new`], with extra `mesh-controller` flags (`--identity-leaf-lifetime 5s`).
    pub fn with_controller_args(title: &str, controller_args: &[&str]) -> Option<Self> {
        if let Some(why) = sys::skip_reason() {
            println!("skipping e2e scenario '{title}': {why}");
            return None;
        }
        sys::sweep_stale();
        let pid = std::process::id();
        let n = NEXT_TEST.fetch_add(1, Ordering::Relaxed);
        let tag = format!("me2e-{pid}-{n}");
        // A private /24 per test: 10.(100 + pid % 100).(n).0
        let prefix = [10, 100 + (pid % 100) as u8, n as u8];
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let config = dir.join("config");
        let logs = dir.join("logs");
        let identity = dir.join("identity");
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&config).expect("create the config directory");
        std::fs::create_dir_all(&logs).expect("create the log directory");
        std::fs::create_dir_all(&tokens).expect("create the token directory");
        // The proxies (UID 2102) read their token files from here.
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o755))
            .expect("make the token directory searchable");
        let hub = format!("{tag}-hub");
        let mut mesh = Self {
            bins: Bins::locate(),
            report: Report::new(title),
            tag,
            prefix,
            hub: hub.clone(),
            dir,
            config,
            identity,
            tokens,
            controller_args: controller_args.iter().map(|a| a.to_string()).collect(),
            logs,
            services: Vec::new(),
            pods: BTreeMap::new(),
            procs: BTreeMap::new(),
            namespaces: Vec::new(),
            next_pod: 0,
            passed: false,
        };
        sys::ip(&["netns", "add", &hub]);
        mesh.namespaces.push(hub.clone());
        sys::ip(&["-n", &hub, "link", "set", "lo", "up"]);
        sys::ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        let cidr = format!("{}/24", mesh.hub_ip());
        sys::ip(&["-n", &hub, "addr", "add", &cidr, "dev", "br0"]);
        sys::ip(&["-n", &hub, "link", "set", "br0", "up"]);
        let dir = mesh.identity.display().to_string();
        mesh.controller_cli(&["identity", "init", "--dir", &dir]);
        mesh.start_controller();
        Some(mesh)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }

    /// The hub's address on the bridge (the controller listens here).
    pub fn hub_ip(&self) -> Ipv4Addr {
        self.addr(1)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod named {name}"))
    }

    // ---- config ---------------------------------------------------------------------------

    /// Writes `file` in the controller's config directory atomically (write, then rename).
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config.join(file)).expect("rename config");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.config.join(file)).expect("remove config");
    }

    /// Declares Service `name` (HTTP port 80 -> the app's port, TCP port 7000) selecting
    /// `selector`, with a virtual IP that pods created afterwards resolve `name` to.
    pub fn service(&mut self, name: &str, selector: &[(&str, &str)]) -> Ipv4Addr {
        let ip = self.addr(200 + self.services.len() as u8);
        let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        self.write(
            &format!("service-{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterIP: {ip}\n  selector: {{{}}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n  - {{name: tcp, port: {TCP_PORT}, targetPort: tcp}}\n",
                sel.join(", ")
            ),
        );
        self.services.push((name.to_string(), ip));
        ip
    }

    fn workload_yaml(&self, pod: &Pod, labels: &[(String, String)]) -> String {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!(
            "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: {NS}, labels: {{{}}}}}\nspec:\n  address: {}\n  ports: [{{name: http, port: {APP_PORT}}}, {{name: tcp, port: {TCP_PORT}}}]\n  serviceAccount: {}\n  proxy: {{}}\n",
            pod.name,
            l.join(", "),
            pod.ip,
            pod.name
        )
    }

    // ---- processes ------------------------------------------------------------------------

    pub(super) fn spawn(
        &mut self,
        key: &str,
        ns: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
    ) {
        let log = self.logs.join(format!("{}.log", key.replace('/', ".")));
        let child = Self::start(ns, &argv, &env, &log);
        self.procs.insert(
            key.to_string(),
            Proc {
                child,
                ns: ns.to_string(),
                argv,
                env,
                log,
            },
        );
    }

    fn start(ns: &str, argv: &[String], env: &[(String, String)], log: &Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .die_with_parent()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?} in {ns}: {e}"))
    }

    /// Sends `sig` to process `key` (`<pod>/app`, `<pod>/proxy`, `controller`) and, for
    /// SIGKILL, waits until it is gone.
    pub fn signal(&mut self, key: &str, sig: libc::c_int) {
        let p = self
            .procs
            .get_mut(key)
            .unwrap_or_else(|| panic!("no process {key}"));
        sys::signal(&p.child, sig);
        if sig == libc::SIGKILL {
            let _ = p.child.wait();
        }
    }

    /// Waits (bounded) until process `key` has exited; its exit status.
    pub fn wait_exit(&mut self, key: &str, timeout: Duration) -> std::process::ExitStatus {
        let p = self
            .procs
            .get_mut(key)
            .unwrap_or_else(|| panic!("no process {key}"));
        sys::wait_for(&format!("{key} to exit"), timeout, || {
            p.child.try_wait().ok().flatten()
        })
    }

    /// Starts process `key` again with the same command line (after it was killed).
    pub fn restart(&mut self, key: &str) {
        let p = self
            .procs
            .get_mut(key)
            .unwrap_or_else(|| panic!("no process {key}"));
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.child = Self::start(&p.ns, &p.argv, &p.env, &p.log);
    }

    // ---- controller -----------------------------------------------------------------------

    fn start_controller(&mut self) {
        let mut argv = vec![
            self.bins.controller.display().to_string(),
            "--source".into(),
            "local".into(),
            "--config-dir".into(),
            self.config.display().to_string(),
            "--grpc-addr".into(),
            format!("{}:{GRPC_PORT}", self.hub_ip()),
            "--admin-addr".into(),
            format!("{}:{CONTROLLER_ADMIN_PORT}", self.hub_ip()),
            "--identity-dir".into(),
            self.identity.display().to_string(),
        ];
        argv.extend(self.controller_args.iter().cloned());
        let env = vec![("MESH_CONTROLLER_LOG".to_string(), "info".to_string())];
        let hub = self.hub.clone();
        self.spawn("controller", &hub, argv, env);
        self.wait_controller_ready();
    }

    /// Runs `mesh-controller ARGS` (a CLI command such as `identity init`) to completion on
    /// the host; its standard output. Panics with its output when it fails.
    pub fn controller_cli(&self, args: &[&str]) -> String {
        let out = sys::run(
            Command::new(&self.bins.controller).args(args),
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The controller's admin `/status` JSON.
    pub fn controller_status(&self) -> serde_json::Value {
        let admin = SocketAddr::from((self.hub_ip(), CONTROLLER_ADMIN_PORT));
        let hub = self.hub.clone();
        match sys::in_netns(&hub, move || http::get(admin, "/status")) {
            Ok((200, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("controller /status is not JSON ({e}): {body}")),
            other => panic!("controller /status: {other:?}"),
        }
    }

    /// Creates a join token for pod `name`'s identity (service account `name`, bound to its
    /// workload) and writes it to a file only the proxy's UID can read; the file's path.
    fn join_token(&self, name: &str) -> PathBuf {
        let token = self.make_join_token(name, &format!("ns:{NS}/workload:{name}"));
        let path = self.tokens.join(format!("{name}.token"));
        std::fs::write(&path, token).expect("write the join token");
        let uid: u32 = PROXY_UID.parse().expect("PROXY_UID is a number");
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown the join token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
            .expect("restrict the join token");
        path
    }

    /// `mesh-controller identity join-token` for service account `service_account` of the
    /// scenario's namespace, bound to `workload` (`ns:e2e/pod:<name>`); the token.
    pub(super) fn make_join_token(&self, service_account: &str, workload: &str) -> String {
        let dir = self.identity.display().to_string();
        let out = self.controller_cli(&[
            "identity",
            "join-token",
            "--dir",
            &dir,
            "--namespace",
            NS,
            "--service-account",
            service_account,
            "--workload",
            workload,
        ]);
        let token = out.trim();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "`identity join-token` printed no single token: {out:?}"
        );
        token.to_string()
    }

    pub fn wait_controller_ready(&self) {
        let admin = SocketAddr::from((self.hub_ip(), CONTROLLER_ADMIN_PORT));
        let hub = self.hub.clone();
        sys::wait_for("the controller to be ready", STARTUP, || {
            let hub = hub.clone();
            sys::in_netns(&hub, move || http::get(admin, "/ready"))
                .ok()
                .filter(|(s, _)| *s == 200)
        });
    }

    // ---- pods -----------------------------------------------------------------------------

    /// Creates a pod: namespace, veth to the bridge, address, `/etc/hosts`; for a meshed pod
    /// `mesh-proxy init` and the proxy (waiting until it is ready); the app; and for a server
    /// its Workload file.
    pub fn add_pod(&mut self, spec: PodSpec) -> Pod {
        assert!(
            !self.pods.contains_key(&spec.name),
            "pod {} exists",
            spec.name
        );
        let pod = self.pod_network(&spec.name);
        let ns = pod.ns.clone();

        if spec.meshed {
            let mut init = vec![
                self.bins.proxy.display().to_string(),
                "init".into(),
                "--proxy-uid".into(),
                PROXY_UID.into(),
            ];
            init.extend(spec.init_args.iter().cloned());
            sys::run(
                Command::new("ip").args(["netns", "exec", &ns]).args(&init),
                Duration::from_secs(20),
            );
            self.start_proxy(&pod);
        }
        let mut app = vec![
            self.bins.echo.display().to_string(),
            "serve".into(),
            "--listen".into(),
            format!("0.0.0.0:{APP_PORT}"),
            "--tcp-listen".into(),
            format!("0.0.0.0:{TCP_PORT}"),
            "--name".into(),
            spec.name.clone(),
        ];
        app.extend(spec.echo_args.iter().cloned());
        self.spawn(&format!("{}/app", spec.name), &ns, app, Vec::new());
        let name = spec.name.clone();
        let p = pod.clone();
        sys::wait_for(&format!("app of {name} to listen"), STARTUP, || {
            let addr = SocketAddr::from(([127, 0, 0, 1], APP_PORT));
            sys::in_netns(&p.ns, move || http::get(addr, "/__stats")).ok()
        });
        if spec.register {
            self.write(
                &format!("workload-{}.yaml", spec.name),
                &self.workload_yaml(&pod, &spec.labels),
            );
        }
        self.pods.insert(spec.name.clone(), pod.clone());
        pod
    }

    /// A pod's network: its namespace, a veth pair to the bridge, its address and an
    /// `/etc/hosts` naming the Services declared so far. Nothing runs in it yet.
    pub(super) fn pod_network(&mut self, name: &str) -> Pod {
        let k = self.next_pod;
        self.next_pod += 1;
        let ns = format!("{}-{}", self.tag, name);
        let pod_link = format!("m{}p{k}", self.prefix[2]);
        let hub_link = format!("m{}h{k}", self.prefix[2]);
        let pod = Pod {
            name: name.to_string(),
            ns: ns.clone(),
            ip: self.addr(10 + k),
            hub_link: hub_link.clone(),
        };
        sys::ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sys::ip(&[
            "link", "add", &pod_link, "netns", &ns, "type", "veth", "peer", "name", &hub_link,
            "netns", &self.hub,
        ]);
        sys::ip(&["-n", &self.hub, "link", "set", &hub_link, "master", "br0"]);
        sys::ip(&["-n", &self.hub, "link", "set", &hub_link, "up"]);
        sys::ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let cidr = format!("{}/24", pod.ip);
        sys::ip(&["-n", &ns, "addr", "add", &cidr, "dev", &pod_link]);
        sys::ip(&["-n", &ns, "link", "set", &pod_link, "up"]);

        // Name resolution for the app: the Services' virtual IPs.
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).expect("create /etc/netns entry");
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for (name, ip) in &self.services {
            hosts.push_str(&format!(
                "{ip} {name} {name}.{NS} {name}.{NS}.svc {name}.{NS}.svc.cluster.local\n"
            ));
        }
        std::fs::write(etc.join("hosts"), hosts).expect("write hosts");
        pod
    }

    fn start_proxy(&mut self, pod: &Pod) {
        let token = self.join_token(&pod.name);
        let argv = vec![
            "setpriv".into(),
            "--reuid".into(),
            PROXY_UID.into(),
            "--regid".into(),
            PROXY_UID.into(),
            "--clear-groups".into(),
            self.bins.proxy.display().to_string(),
        ];
        let env = [
            (
                "MESH_PROXY_CONTROLLER_ADDR",
                format!("http://{}:{GRPC_PORT}", self.hub_ip()),
            ),
            (
                "MESH_PROXY_WORKLOAD",
                format!("ns:{NS}/workload:{}", pod.name),
            ),
            ("MESH_PROXY_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
            ("MESH_PROXY_LOG", "info".into()),
            ("MESH_PROXY_WORKER_THREADS", "1".into()),
            ("MESH_PROXY_SHUTDOWN_GRACE", "5s".into()),
            ("MESH_PROXY_IDENTITY", spiffe(&pod.name)),
            (
                "MESH_PROXY_IDENTITY_TOKEN_FILE",
                token.display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v));
        self.spawn(&format!("{}/proxy", pod.name), &pod.ns, argv, env.to_vec());
        self.wait_proxy_ready(pod);
    }

    /// Waits until the pod's proxy answers `/ready` (it has heard from the controller and
    /// holds its first certificate).
    pub fn wait_proxy_ready(&self, pod: &Pod) {
        let p = pod.clone();
        sys::wait_for(
            &format!("proxy of {} to be ready", pod.name),
            STARTUP,
            || {
                let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
                sys::in_netns(&p.ns, move || http::get(addr, "/ready"))
                    .ok()
                    .filter(|(s, _)| *s == 200)
            },
        );
    }

    /// Removes a pod entirely: its Workload file, processes (SIGKILL) and namespace.
    pub fn delete_pod(&mut self, name: &str) {
        let file = self.config.join(format!("workload-{name}.yaml"));
        let _ = std::fs::remove_file(file);
        // Its processes: `<name>/app` and `<name>/proxy`, or one per container of a pod run
        // from a manifest.
        let prefix = format!("{name}/");
        let keys: Vec<String> = self
            .procs
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in keys {
            if let Some(mut p) = self.procs.remove(&key) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        if let Some(pod) = self.pods.remove(name) {
            let _ = Command::new("ip").args(["netns", "del", &pod.ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", pod.ns));
            self.namespaces.retain(|n| n != &pod.ns);
        }
    }

    // ---- faults ---------------------------------------------------------------------------

    /// Cuts a pod off the network: its link on the bridge goes down, so packets to and from
    /// it are dropped silently (no reset, no refusal).
    pub fn cut(&self, pod: &str) {
        let link = self.pod(pod).hub_link.clone();
        sys::ip(&["-n", &self.hub, "link", "set", &link, "down"]);
    }

    // ---- observing ------------------------------------------------------------------------

    /// GET a path on a pod's loopback (not redirected: e.g. the proxy's admin port).
    pub fn get_local(&self, pod: &str, port: u16, path: &str) -> Result<(u16, String), String> {
        let ns = self.pod(pod).ns.clone();
        let path = path.to_string();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        sys::in_netns(&ns, move || http::get(addr, &path))
    }

    /// Connects from pod `pod` to `addr` (intercepted like the app's own connections) and
    /// reads the first line the server sends: how long the first byte took from the start of
    /// the connect, and the line.
    pub fn first_line(&self, pod: &str, addr: SocketAddr) -> Result<(Duration, String), String> {
        let ns = self.pod(pod).ns.clone();
        sys::in_netns(&ns, move || {
            use std::io::Read;
            let timeout = Duration::from_secs(5);
            let started = Instant::now();
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut line = Vec::new();
            let mut first = None;
            let mut buf = [0u8; 256];
            while !line.contains(&b'\n') {
                let n = s.read(&mut buf).map_err(|e| format!("read {addr}: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "{addr} closed after {:?}",
                        String::from_utf8_lossy(&line)
                    ));
                }
                first.get_or_insert_with(|| started.elapsed());
                line.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.lines().next().unwrap_or_default().to_string();
            Ok((first.unwrap_or_default(), text))
        })
    }

    /// Starts `tcpdump` on the hub's bridge (every pod's traffic crosses it), writing every
    /// TCP packet whole to `<dir>/<name>.pcap`; returns once it is capturing.
    pub fn start_capture(&mut self, name: &str) -> PathBuf {
        let file = self.dir.join(format!("{name}.pcap"));
        let argv = [
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "--immediate-mode",
            "-B",
            "65536",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([file.display().to_string(), "tcp".into()])
        .collect();
        let key = format!("capture/{name}");
        let hub = self.hub.clone();
        self.spawn(&key, &hub, argv, Vec::new());
        sys::wait_for("tcpdump to start capturing", STARTUP, || {
            self.log(&key).contains("listening on").then_some(())
        });
        file
    }

    /// Stops capture `name` (SIGINT, so tcpdump flushes its file); tcpdump's own summary
    /// (packets captured, dropped by the kernel).
    pub fn stop_capture(&mut self, name: &str) -> String {
        let key = format!("capture/{name}");
        self.signal(&key, libc::SIGINT);
        self.wait_exit(&key, Duration::from_secs(10));
        self.log(&key)
    }

    /// What process `key` has written to its log so far.
    pub fn log(&self, key: &str) -> String {
        let p = self
            .procs
            .get(key)
            .unwrap_or_else(|| panic!("no process {key}"));
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// A pod proxy's Prometheus metrics.
    pub fn metrics(&self, pod: &str) -> String {
        match self.get_local(pod, ADMIN_PORT, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("metrics of {pod}: {other:?}"),
        }
    }

    /// How many requests the pod's app answered (its own count, `/__stats`).
    pub fn app_requests(&self, pod: &str) -> u64 {
        let (_, body) = self
            .get_local(pod, APP_PORT, "/__stats")
            .unwrap_or_else(|e| panic!("stats of {pod}: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats of {pod}: {e}: {body}"));
        v["requests"].as_u64().unwrap_or(0)
    }

    /// Runs `mesh-echo ARGS` in a pod to completion (bounded); exit success and output.
    pub fn exec(&self, pod: &str, args: &[&str], timeout: Duration) -> (bool, String) {
        let ns = self.pod(pod).ns.clone();
        let out = sys::run_unchecked(
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&self.bins.echo)
                .args(args),
            timeout,
        );
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Starts `mesh-echo load URL ARGS --json` in pod `from`; `secs` bounds it (with margin).
    pub fn start_load(&self, from: &str, url: &str, args: &[&str]) -> LoadRun {
        let ns = self.pod(from).ns.clone();
        let requests: f64 = flag(args, "--requests").unwrap_or(100.0);
        let rate: f64 = flag(args, "--rate").unwrap_or(50.0);
        let deadline = Instant::now() + Duration::from_secs_f64(requests / rate + 20.0);
        let desc = format!("load {url} {args:?} from {from}");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&self.bins.echo)
            .args(["load", url, "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .die_with_parent()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        LoadRun {
            child: Some(child),
            desc,
            deadline,
        }
    }

    /// Runs a load to completion.
    pub fn load(&self, from: &str, url: &str, args: &[&str]) -> LoadResult {
        self.start_load(from, url, args).wait()
    }

    /// Sends short bursts until every replica in `replicas` has answered (discovery has
    /// caught up), failing after 20 s.
    pub fn warm(&self, from: &str, url: &str, replicas: &[&str]) {
        let mut last = LoadResult::default();
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            last = self.load(from, url, &["--requests", "30", "--rate", "300"]);
            if replicas.iter().all(|r| last.replicas.contains_key(*r)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("replicas {replicas:?} never all answered {url} from {from}; last: {last:?}");
    }

    /// Marks the scenario passed (its summary says so; logs are not dumped).
    pub fn pass(mut self) {
        self.passed = true;
    }

    fn dump_logs(&self) {
        for (key, p) in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            eprintln!(
                "--- {key} (last {} lines of {})",
                tail.len(),
                p.log.display()
            );
            for l in tail {
                eprintln!("    {l}");
            }
        }
    }
}

fn flag(args: &[&str], name: &str) -> Option<f64> {
    let i = args.iter().position(|a| *a == name)?;
    args.get(i + 1)?.parse().ok()
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let outcome = if self.passed { "passed" } else { "FAILED" };
        self.report.publish(outcome);
        if !self.passed {
            self.dump_logs();
        }
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
