//! Propagation benchmark of the control plane: how long a change to the mesh's objects takes
//! to reach every proxy stream that watches it.
//!
//! Two sources (`--source`):
//!
//! - `local` (the default): it generates a local-mode config directory (`--services`
//!   Services, each selecting `--endpoints-per-service` Workloads, one file per Service) and
//!   starts the release `mesh-controller` binary that sits next to this example on it. A
//!   change is a file renamed into the directory (adding or removing one Workload).
//! - `kubernetes`: it starts a fake Kubernetes API server (`mesh-fake-kube`) in this process,
//!   creates the mesh's CRDs, the Services and one EndpointSlice per Service (with
//!   `--endpoints-per-service` ready endpoints), and starts the controller binary with
//!   `--source kubernetes` and a `KUBECONFIG` for that server. A change is one upsert of a
//!   Service's EndpointSlice (adding or removing one endpoint).
//!
//! It then opens `--streams` discovery streams over `--connections` HTTP/2 connections (one
//! stream per Service, as if every proxy resolved one destination), and measures, from the
//! moment a change is made to the moment the stream of that Service receives the matching
//! `Add`/`Remove`:
//!
//! - `sequential`: one change at a time, waiting for the update before the next change;
//! - `burst`: `--burst` changes at once, each latency from its own change;
//! - `fan-out`: `--fanout-streams` more streams all on one Service, one change at a time; every
//!   stream's latency, and the time until the last of them saw the change.
//!
//! The addresses (10.x.y.z) are never contacted: only discovery is measured. Local mode waits
//! a moment after a file notification before it reloads (`DEBOUNCE` in `local.rs`), so every
//! latency includes that wait. Kubernetes mode has no debounce, but every latency includes the
//! fake API server's watch delivery (one thread, in this process: not a real kube-apiserver).
//! Controller memory (VmRSS, VmHWM) and CPU time come from `/proc/<pid>`.
//!
//! Run it through `bench/propagation.sh` (builds in release and saves the report), or:
//!
//! ```sh
//! cargo build --release -p mesh-controller --bins --examples
//! target/release/examples/propagation --help
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use mesh_core::convert::addr_from_proto;
use mesh_fake_kube::FakeApiServer;
use mesh_proto::v1 as pb;
use pb::destination_update::Update;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tonic::transport::{Channel, Endpoint};

/// Measures how fast mesh-controller propagates changes to discovery streams.
#[derive(Parser, Debug, Clone)]
#[command(name = "propagation")]
struct Args {
    /// Where the controller reads the objects from: a generated config directory (`local`) or
    /// a fake Kubernetes API server started in this process (`kubernetes`).
    #[arg(long, value_enum, default_value_t = SourceMode::Local)]
    source: SourceMode,
    /// Services generated (`svc-0000` ...).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints of each Service (Workloads it selects, or endpoints of its EndpointSlice).
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// Discovery streams, one per Service (stream i watches Service i mod --services).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// gRPC connections the streams are spread over (models that many proxies).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Sequential changes (one at a time).
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Pause after each sequential change was seen (ms).
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Changes made at once in a burst round (files renamed, or EndpointSlices upserted).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Burst rounds.
    #[arg(long, default_value_t = 3)]
    burst_rounds: usize,
    /// Extra streams all watching the same Service (svc-0000); 0 skips the fan-out case.
    #[arg(long, default_value_t = 1000)]
    fanout_streams: usize,
    /// Changes to that Service in the fan-out case (one at a time).
    #[arg(long, default_value_t = 10)]
    fanout_changes: usize,
    /// A change not seen within this many ms counts as missed.
    #[arg(long, default_value_t = 1000)]
    slo_ms: u64,
    /// How long to wait for a change before giving up on it (ms).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// The controller binary (default: `mesh-controller` in the directory above this example).
    #[arg(long)]
    controller: Option<PathBuf>,
    /// Where the controller's log goes (default: a file in the temporary directory, printed
    /// in part on failure).
    #[arg(long)]
    controller_log: Option<PathBuf>,
    /// Also write every sample to this file (TSV: phase, change, service, stream, seconds
    /// since the first change, latency in ms; `missed` for a change never seen).
    #[arg(long)]
    raw: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceMode {
    /// A generated local-mode config directory; a change renames a file into it.
    Local,
    /// A fake Kubernetes API server in this process; a change upserts an EndpointSlice.
    Kubernetes,
}

const NAMESPACE: &str = "default";
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn authority(i: usize) -> String {
    format!(
        "{}.{NAMESPACE}.svc.cluster.local:{SERVICE_PORT}",
        service_name(i)
    )
}

/// Address of Workload `j` of Service `i` (`j == eps` is the one the benchmark adds/removes).
fn workload_addr(i: usize, j: usize, eps: usize) -> SocketAddr {
    let n = (i * (eps + 1) + j + 1) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n);
    SocketAddr::new(ip.into(), TARGET_PORT)
}

/// One Service and its Workloads (`extra`: also the additional Workload `eps`).
fn service_file(i: usize, eps: usize, extra: bool) -> String {
    let name = service_name(i);
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: http}}]\n"
    );
    let count = if extra { eps + 1 } else { eps };
    for j in 0..count {
        let addr = workload_addr(i, j, eps);
        let _ = write!(
            s,
            "---\napiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}-{j:02}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}\nspec:\n  address: {}\n  ports: [{{name: http, port: {}}}]\n",
            addr.ip(),
            addr.port()
        );
    }
    s
}

/// Service `i` as a Kubernetes object (its endpoints come from its EndpointSlice).
fn k8s_service(i: usize) -> Value {
    let name = service_name(i);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT}]
        }
    })
}

/// The one EndpointSlice of Service `i`: `eps` ready endpoints (`extra`: also endpoint `eps`).
fn k8s_endpoint_slice(i: usize, eps: usize, extra: bool) -> Value {
    let name = service_name(i);
    let count = if extra { eps + 1 } else { eps };
    let endpoints: Vec<Value> = (0..count)
        .map(|j| {
            json!({
                "addresses": [workload_addr(i, j, eps).ip().to_string()],
                "conditions": {"ready": true}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-slice"),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": name}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}]
    })
}

/// The config directory (watched) and a staging directory on the same file system, so that a
/// change is one `rename` into the watched directory (no notification for the temp file).
struct Dirs {
    tmp: tempfile::TempDir,
    config: PathBuf,
    staging: PathBuf,
}

impl Dirs {
    fn new() -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("mesh-propagation-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let config = tmp.path().join("config");
        let staging = tmp.path().join("staging");
        std::fs::create_dir(&config)?;
        std::fs::create_dir(&staging)?;
        Ok(Self {
            tmp,
            config,
            staging,
        })
    }

    fn file_name(i: usize) -> String {
        format!("{}.yaml", service_name(i))
    }

    /// Writes the new content to the staging directory; `commit` renames it into place.
    fn stage(&self, i: usize, text: &str) -> anyhow::Result<PathBuf> {
        let p = self.staging.join(Self::file_name(i));
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(p)
    }

    fn commit(&self, staged: &Path, i: usize) -> anyhow::Result<()> {
        let to = self.config.join(Self::file_name(i));
        std::fs::rename(staged, &to).with_context(|| format!("cannot rename to {}", to.display()))
    }
}

/// The fake API server the controller watches in Kubernetes mode, and the directory of its
/// kubeconfig.
struct Kube {
    server: FakeApiServer,
    tmp: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// Where the controller's objects live, and how a change is made to them.
enum World {
    Local(Dirs),
    Kubernetes(Kube),
}

/// A change prepared ahead (new file content staged, or the new object), made by
/// [`World::apply`].
enum Staged {
    File(PathBuf),
    Object(Value),
}

impl World {
    /// Generates `services` Services with `eps` endpoints each in the chosen source.
    async fn create(mode: SourceMode, services: usize, eps: usize) -> anyhow::Result<Self> {
        match mode {
            SourceMode::Local => {
                let dirs = Dirs::new()?;
                let t = Instant::now();
                for i in 0..services {
                    std::fs::write(
                        dirs.config.join(Dirs::file_name(i)),
                        service_file(i, eps, false),
                    )?;
                }
                eprintln!(
                    "generated {} files ({} services x {} endpoints) in {} in {:.0} ms",
                    services,
                    services,
                    eps,
                    dirs.config.display(),
                    ms(t.elapsed())
                );
                Ok(World::Local(dirs))
            }
            SourceMode::Kubernetes => {
                let t = Instant::now();
                // A real API server sends a bookmark about once a minute (the fake one every
                // second by default).
                let server = FakeApiServer::builder()
                    .bookmark_interval(Duration::from_secs(60))
                    .start();
                // `default` exists from the start; `mesh-system` holds the leader Lease.
                for ns in [NAMESPACE, "mesh-system"] {
                    server
                        .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                        .with_context(|| format!("cannot create namespace {ns}"))?;
                }
                let crds: Api<CustomResourceDefinition> = Api::all(server.client().await);
                for crd in mesh_crds::crds() {
                    let name = crd.metadata.name.clone().unwrap_or_default();
                    crds.create(&PostParams::default(), &crd)
                        .await
                        .with_context(|| format!("cannot create CRD {name}"))?;
                }
                for i in 0..services {
                    server
                        .upsert(k8s_service(i))
                        .with_context(|| format!("cannot create Service {}", service_name(i)))?;
                    server
                        .upsert(k8s_endpoint_slice(i, eps, false))
                        .with_context(|| {
                            format!("cannot create the EndpointSlice of {}", service_name(i))
                        })?;
                }
                let tmp = tempfile::Builder::new()
                    .prefix("mesh-propagation-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                let kubeconfig = tmp.path().join("kubeconfig");
                server
                    .write_kubeconfig(&kubeconfig)
                    .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
                eprintln!(
                    "created {} Services and {} EndpointSlices ({} endpoints each) in the fake API server at {} in {:.0} ms",
                    services,
                    services,
                    eps,
                    server.url(),
                    ms(t.elapsed())
                );
                Ok(World::Kubernetes(Kube {
                    server,
                    tmp,
                    kubeconfig,
                }))
            }
        }
    }

    /// The temporary directory (for the controller's log by default).
    fn tmp_dir(&self) -> &Path {
        match self {
            World::Local(d) => d.tmp.path(),
            World::Kubernetes(k) => k.tmp.path(),
        }
    }

    /// Points the controller command at this source.
    fn configure(&self, cmd: &mut Command) {
        match self {
            World::Local(d) => {
                cmd.args(["--source", "local", "--config-dir"])
                    .arg(&d.config);
            }
            World::Kubernetes(k) => {
                cmd.args(["--source", "kubernetes"])
                    .env("KUBECONFIG", &k.kubeconfig)
                    .env("POD_NAME", "propagation-bench");
            }
        }
    }

    /// Prepares Service `svc`'s new content: `eps` endpoints, plus the extra one if `extra`.
    fn stage(&self, svc: usize, eps: usize, extra: bool) -> anyhow::Result<Staged> {
        match self {
            World::Local(d) => Ok(Staged::File(d.stage(svc, &service_file(svc, eps, extra))?)),
            World::Kubernetes(_) => Ok(Staged::Object(k8s_endpoint_slice(svc, eps, extra))),
        }
    }

    /// Makes the change: renames the staged file into place, or upserts the EndpointSlice.
    fn apply(&self, staged: Staged, svc: usize) -> anyhow::Result<()> {
        match (self, staged) {
            (World::Local(d), Staged::File(p)) => d.commit(&p, svc),
            (World::Kubernetes(k), Staged::Object(o)) => {
                k.server.upsert(o).with_context(|| {
                    format!("cannot upsert the EndpointSlice of {}", service_name(svc))
                })?;
                Ok(())
            }
            _ => bail!("a change staged for another source"),
        }
    }
}

/// The controller process; killed when dropped (also on error or Ctrl-C).
struct ControllerProc {
    child: Child,
    log: PathBuf,
}

impl ControllerProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Errors out if the process has exited, with the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "the controller exited ({st}); end of its log {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn controller_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.controller {
        if !p.is_file() {
            bail!("--controller {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the directory above this example")?;
    let bin = dir.join("mesh-controller");
    if !bin.is_file() {
        bail!(
            "the controller binary {} is missing; build it with `cargo build --release -p mesh-controller --bins --examples` (or pass --controller PATH)",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One HTTP/1.1 GET on a new connection: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("read timeout")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP response from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `mesh_controller_index_lag_seconds` (sum, count) from `/metrics`.
async fn index_lag(admin: SocketAddr) -> Option<(f64, f64)> {
    let (_, body) = http_get(admin, "/metrics").await.ok()?;
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    Some((
        value("mesh_controller_index_lag_seconds_sum ")?,
        value("mesh_controller_index_lag_seconds_count ")?,
    ))
}

/// VmRSS and VmHWM in KiB.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn proc_mem(pid: u32) -> anyhow::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok(Mem {
        rss_kib: field("VmRSS:").unwrap_or(0),
        hwm_kib: field("VmHWM:").unwrap_or(0),
    })
}

/// utime + stime of a process, in seconds.
fn proc_cpu(pid: &str, ticks_per_s: f64) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is field 3, utime 14, stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_s)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Op {
    Add,
    Remove,
}

struct Hit {
    change: usize,
    stream: usize,
    at: Instant,
}

/// Expected updates and the ones that arrived, shared by every stream task.
#[derive(Default)]
struct TrackerState {
    /// (stream, operation, address) -> change id.
    expect: HashMap<(usize, Op, SocketAddr), usize>,
    hits: Vec<Hit>,
    /// Updates that matched no expected change (late ones included).
    unexpected: u64,
    errors: Vec<String>,
}

#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    done: Notify,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expect(&self, streams: &[usize], op: Op, addr: SocketAddr, change: usize) {
        let mut s = self.lock();
        for &st in streams {
            s.expect.insert((st, op, addr), change);
        }
    }

    fn seen(&self, stream: usize, op: Op, addrs: &[SocketAddr], at: Instant) {
        let mut s = self.lock();
        for a in addrs {
            match s.expect.remove(&(stream, op, *a)) {
                Some(change) => s.hits.push(Hit { change, stream, at }),
                None => s.unexpected += 1,
            }
        }
        if s.expect.is_empty() {
            self.done.notify_one();
        }
    }

    fn error(&self, msg: String) {
        let mut s = self.lock();
        s.errors.push(msg);
    }

    /// Waits until every expected update arrived or `deadline`; returns the (stream,
    /// change) pairs that did not (and forgets them).
    async fn wait(&self, deadline: Instant) -> Vec<(usize, usize)> {
        loop {
            let notified = self.done.notified();
            {
                let mut s = self.lock();
                if s.expect.is_empty() {
                    return Vec::new();
                }
                if Instant::now() >= deadline {
                    return s.expect.drain().map(|((st, _, _), c)| (st, c)).collect();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    fn take_hits(&self) -> Vec<Hit> {
        std::mem::take(&mut self.lock().hits)
    }
}

/// Opens one discovery stream, checks its initial state, then reports every Add/Remove.
async fn run_stream(
    channel: Channel,
    id: usize,
    svc: usize,
    expect_endpoints: usize,
    tracker: Arc<Tracker>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) {
    let mut client = pb::destination_client::DestinationClient::new(channel);
    let req = pb::GetDestination {
        authority: authority(svc),
        context: format!("ns:{NAMESPACE}/pod:bench-{id}"),
    };
    let mut stream = match client.get(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let _ = ready.send(Err(format!("stream {id}: get failed: {e}")));
            return;
        }
    };
    let first = match stream.message().await {
        Ok(Some(m)) => m.update,
        Ok(None) => {
            let _ = ready.send(Err(format!("stream {id}: closed before its initial state")));
            return;
        }
        Err(e) => {
            let _ = ready.send(Err(format!("stream {id}: {e}")));
            return;
        }
    };
    let initial = match first {
        Some(Update::State(st)) if st.endpoints.len() == expect_endpoints => Ok(()),
        Some(Update::State(st)) => Err(format!(
            "stream {id} ({}): initial state has {} endpoints, expected {expect_endpoints}",
            service_name(svc),
            st.endpoints.len()
        )),
        other => Err(format!(
            "stream {id} ({}): first message is not a state: {other:?}",
            service_name(svc)
        )),
    };
    let failed = initial.is_err();
    let _ = ready.send(initial);
    if failed {
        return;
    }
    drop(ready);
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                let at = Instant::now();
                match m.update {
                    Some(Update::Add(a)) => {
                        let addrs: Vec<SocketAddr> = a
                            .endpoints
                            .iter()
                            .filter_map(|e| e.address.as_ref())
                            .filter_map(|a| addr_from_proto(a).ok())
                            .collect();
                        tracker.seen(id, Op::Add, &addrs, at);
                    }
                    Some(Update::Remove(r)) => {
                        let addrs: Vec<SocketAddr> = r
                            .addresses
                            .iter()
                            .filter_map(|a| addr_from_proto(a).ok())
                            .collect();
                        tracker.seen(id, Op::Remove, &addrs, at);
                    }
                    other => {
                        tracker.lock().unexpected += 1;
                        note_unexpected(id, &other);
                    }
                }
            }
            Ok(None) => {
                tracker.error(format!("stream {id}: closed by the controller"));
                return;
            }
            Err(e) => {
                tracker.error(format!("stream {id}: {e}"));
                return;
            }
        }
    }
}

/// Unexpected message kinds are counted; the first few are printed to stderr.
fn note_unexpected(id: usize, update: &Option<Update>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PRINTED: AtomicUsize = AtomicUsize::new(0);
    if PRINTED.fetch_add(1, Ordering::Relaxed) < 5 {
        let kind = match update {
            Some(Update::State(_)) => "state",
            Some(Update::Profile(_)) => "profile",
            Some(Update::NotFound(_)) => "not_found",
            _ => "empty",
        };
        eprintln!("note: stream {id} received an unexpected {kind} message");
    }
}

/// Latency statistics in milliseconds.
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    over_slo: usize,
}

fn stats(mut ms: Vec<f64>, slo_ms: f64, missing: usize) -> Stats {
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * ms.len() as f64).ceil() as usize;
        ms[rank.clamp(1, ms.len()) - 1]
    };
    Stats {
        n: ms.len() + missing,
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        max: ms.last().copied().unwrap_or(f64::NAN),
        over_slo: ms.iter().filter(|v| **v > slo_ms).count() + missing,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The benchmark's mutable world: objects, streams and the changes made so far.
struct Bench {
    args: Args,
    world: World,
    channels: Vec<Channel>,
    tracker: Arc<Tracker>,
    /// Whether Service i currently has its extra Workload.
    extra: Vec<bool>,
    /// Streams watching each Service.
    streams_of: Vec<Vec<usize>>,
    next_stream: usize,
    /// Time each change was made (rename or upsert; index = change id).
    t0: Vec<Instant>,
    /// Phase and Service of each change.
    what: Vec<(&'static str, usize)>,
    phase: &'static str,
    /// Samples for --raw, and the time they count from.
    raw: String,
    start: Instant,
}

impl Bench {
    /// Opens `n` streams on the given Services; returns the time until all had their state.
    async fn open_streams(&mut self, services: &[usize]) -> anyhow::Result<Duration> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        for &svc in services {
            let id = self.next_stream;
            self.next_stream += 1;
            self.streams_of[svc].push(id);
            let ch = self.channels[id % self.channels.len()].clone();
            let expect = self.args.endpoints_per_service + usize::from(self.extra[svc]);
            tokio::spawn(run_stream(
                ch,
                id,
                svc,
                expect,
                self.tracker.clone(),
                tx.clone(),
            ));
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for _ in 0..services.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => bail!("{e}"),
                Ok(None) => bail!("stream tasks ended before reporting their initial state"),
                Err(_) => bail!("streams did not all receive their initial state within 120 s"),
            }
        }
        Ok(started.elapsed())
    }

    /// Toggles Service i's extra endpoint (Workload or EndpointSlice entry): stages the change
    /// and registers the expectation; returns (staged change, change id). `commit` then
    /// records t0 and makes the change (rename or upsert).
    fn prepare(&mut self, svc: usize) -> anyhow::Result<(Staged, usize)> {
        let eps = self.args.endpoints_per_service;
        let add = !self.extra[svc];
        self.extra[svc] = add;
        let staged = self.world.stage(svc, eps, add)?;
        let change = self.t0.len();
        // Placeholder until the change is made; hits are turned into latencies only afterwards.
        self.t0.push(Instant::now());
        self.what.push((self.phase, svc));
        let op = if add { Op::Add } else { Op::Remove };
        self.tracker.expect(
            &self.streams_of[svc],
            op,
            workload_addr(svc, eps, eps),
            change,
        );
        Ok((staged, change))
    }

    fn commit(&mut self, staged: Staged, svc: usize, change: usize) -> anyhow::Result<()> {
        self.t0[change] = Instant::now();
        self.world.apply(staged, svc)
    }

    /// Waits for the changes made; returns how many expected updates never came.
    async fn wait(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_millis(self.args.timeout_ms);
        let missed = self.tracker.wait(deadline).await;
        for (stream, change) in &missed {
            let (phase, svc) = self.what[*change];
            let since = self.t0[*change].saturating_duration_since(self.start);
            let _ = writeln!(
                self.raw,
                "{phase}\t{change}\t{svc}\t{stream}\t{:.3}\tmissed",
                since.as_secs_f64()
            );
        }
        missed.len()
    }

    /// Latencies (ms) of the updates that arrived since the last call.
    fn latencies(&mut self) -> Vec<f64> {
        let mut out = Vec::new();
        for h in self.tracker.take_hits() {
            let t0 = self.t0[h.change];
            let l = ms(h.at.saturating_duration_since(t0));
            let (phase, svc) = self.what[h.change];
            let _ = writeln!(
                self.raw,
                "{phase}\t{}\t{svc}\t{}\t{:.3}\t{l:.3}",
                h.change,
                h.stream,
                t0.saturating_duration_since(self.start).as_secs_f64()
            );
            out.push(l);
        }
        out
    }
}

/// A deterministic pseudo-random sequence (xorshift), so runs pick the same Services.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

struct Row {
    name: String,
    stats: Stats,
}

async fn run(args: Args) -> anyhow::Result<String> {
    if args.services == 0 || args.endpoints_per_service == 0 || args.streams == 0 {
        bail!("--services, --endpoints-per-service and --streams must be at least 1");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.services * (args.endpoints_per_service + 1) >= (1 << 24) - 1 {
        bail!("too many endpoints for 10.0.0.0/8");
    }
    let bin = controller_binary(&args)?;
    let ticks = clock_ticks();
    let slo = args.slo_ms as f64;
    let eps = args.endpoints_per_service;

    // 1. The objects: a config directory, or a fake API server.
    let world = World::create(args.source, args.services, eps).await?;

    // 2. The controller.
    let grpc = free_addr()?;
    let admin = free_addr()?;
    let log = args
        .controller_log
        .clone()
        .unwrap_or_else(|| world.tmp_dir().join("controller.log"));
    let log_file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create the controller log {}", log.display()))?;
    let started = Instant::now();
    let mut cmd = Command::new(&bin);
    world.configure(&mut cmd);
    let child = cmd
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .env(
            "MESH_CONTROLLER_LOG",
            std::env::var("MESH_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        // The controller logs to stdout; errors before logging starts go to stderr.
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut ctl = ControllerProc { child, log };
    let pid = ctl.pid();
    loop {
        ctl.check_alive()?;
        if let Ok((200, _)) = http_get(admin, "/ready").await {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the controller was not ready within 120 s; end of its log:\n{}",
                log_tail(&ctl.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_time = started.elapsed();
    let (_, status) = http_get(admin, "/status").await?;
    let status: serde_json::Value = serde_json::from_str(&status).context("/status is not JSON")?;
    let (n_svc, n_eps) = (
        status["services"].as_u64().unwrap_or(0),
        status["endpoints"].as_u64().unwrap_or(0),
    );
    if n_svc != args.services as u64 || n_eps != (args.services * eps) as u64 {
        bail!(
            "the controller indexed {n_svc} services / {n_eps} endpoints, expected {} / {}",
            args.services,
            args.services * eps
        );
    }
    let mem_loaded = proc_mem(pid)?;
    eprintln!(
        "controller ready in {:.0} ms ({n_svc} services, {n_eps} endpoints)",
        ms(ready_time)
    );

    // 3. The streams.
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let ch = Endpoint::from_shared(format!("http://{grpc}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("cannot connect to the controller's gRPC port")?;
        channels.push(ch);
    }
    let mut b = Bench {
        world,
        channels,
        tracker: Arc::default(),
        extra: vec![false; args.services],
        streams_of: vec![Vec::new(); args.services],
        next_stream: 0,
        t0: Vec::new(),
        what: Vec::new(),
        phase: "",
        raw: String::new(),
        start: Instant::now(),
        args: args.clone(),
    };
    let main_svcs: Vec<usize> = (0..args.streams).map(|i| i % args.services).collect();
    let open_time = b.open_streams(&main_svcs).await?;
    ctl.check_alive()?;
    let mem_streams = proc_mem(pid)?;
    eprintln!(
        "{} streams over {} connections have their initial state after {:.0} ms",
        args.streams,
        args.connections,
        ms(open_time)
    );
    let watched = args.streams.min(args.services);

    // Idle: streams open, nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_secs = 3.0;
    let c0 = proc_cpu(&pid.to_string(), ticks)?;
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle_cpu = proc_cpu(&pid.to_string(), ticks)? - c0;
    let idle_unexpected = b.tracker.lock().unexpected;

    // 4. Propagation.
    let lag_before = index_lag(admin).await;
    let cpu_before = proc_cpu(&pid.to_string(), ticks)?;
    let self_cpu_before = proc_cpu("self", ticks)?;
    let measure_start = Instant::now();
    b.start = measure_start;
    let mut rows = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let gap = Duration::from_millis(args.gap_ms);

    // Sequential.
    b.phase = "sequential";
    let mut missing = 0;
    for _ in 0..args.changes {
        let svc = rng.next(watched);
        let (staged, change) = b.prepare(svc)?;
        b.commit(staged, svc, change)?;
        missing += b.wait().await;
        tokio::time::sleep(gap).await;
    }
    let lat: Vec<f64> = b.latencies();
    let unit = match args.source {
        SourceMode::Local => ("1 file", "files"),
        SourceMode::Kubernetes => ("1 slice upsert", "upserts"),
    };
    rows.push(Row {
        name: format!("sequential, {}", unit.0),
        stats: stats(lat, slo, missing),
    });
    ctl.check_alive()?;
    eprintln!("sequential changes done");

    // Bursts.
    if args.burst > 0 && args.burst_rounds > 0 {
        b.phase = "burst";
        let n = args.burst.min(watched);
        let mut missing = 0;
        for round in 0..args.burst_rounds {
            let offset = rng.next(watched);
            let svcs: Vec<usize> = (0..n)
                .map(|k| (offset + k * watched / n) % watched)
                .collect();
            let mut staged = Vec::with_capacity(n);
            for &svc in &svcs {
                staged.push((svc, b.prepare(svc)?));
            }
            for (svc, (change_staged, change)) in staged {
                b.commit(change_staged, svc, change)?;
            }
            missing += b.wait().await;
            if round + 1 < args.burst_rounds {
                tokio::time::sleep(gap.max(Duration::from_millis(200))).await;
            }
        }
        let lat: Vec<f64> = b.latencies();
        rows.push(Row {
            name: format!("burst, {n} {} at once", unit.1),
            stats: stats(lat, slo, missing),
        });
        ctl.check_alive()?;
        eprintln!("burst rounds done");
    }
    let mut cpu_after = proc_cpu(&pid.to_string(), ticks)?;
    let mut self_cpu_after = proc_cpu("self", ticks)?;
    let mut measure_time = measure_start.elapsed();
    let mem_changes = proc_mem(pid)?;

    // Fan-out.
    let mut fanout_setup = None;
    if args.fanout_streams > 0 && args.fanout_changes > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let svc = 0;
        let open = b.open_streams(&vec![svc; args.fanout_streams]).await?;
        let mem = proc_mem(pid)?;
        // The main set's stream on this Service watches it too.
        let watchers = b.streams_of[svc].len();
        eprintln!(
            "{} more streams on {} open after {:.0} ms",
            args.fanout_streams,
            service_name(svc),
            ms(open)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c0 = proc_cpu(&pid.to_string(), ticks)?;
        let s0 = proc_cpu("self", ticks)?;
        let f_start = Instant::now();
        b.phase = "fanout";
        let mut missing = 0;
        let mut per_stream = Vec::new();
        let mut last_seen = Vec::new();
        let mut never = 0;
        for _ in 0..args.fanout_changes {
            let (staged, change) = b.prepare(svc)?;
            b.commit(staged, svc, change)?;
            let miss = b.wait().await;
            missing += miss;
            let lat: Vec<f64> = b.latencies();
            if miss > 0 {
                never += 1;
            } else {
                last_seen.push(lat.iter().copied().fold(0.0, f64::max));
            }
            per_stream.extend(lat);
            tokio::time::sleep(gap.max(Duration::from_millis(100))).await;
        }
        cpu_after += proc_cpu(&pid.to_string(), ticks)? - c0;
        self_cpu_after += proc_cpu("self", ticks)? - s0;
        measure_time += f_start.elapsed();
        rows.push(Row {
            name: format!("fan-out, per stream ({watchers} on 1 svc)"),
            stats: stats(per_stream, slo, missing),
        });
        rows.push(Row {
            name: "fan-out, last of all streams (per change)".into(),
            stats: stats(last_seen, slo, never),
        });
        ctl.check_alive()?;
        eprintln!("fan-out changes done");
        fanout_setup = Some((args.fanout_streams, open, mem));
    }
    let lag_after = index_lag(admin).await;
    let mem_end = proc_mem(pid)?;
    ctl.check_alive()?;

    if let Some(p) = &args.raw {
        let text = format!(
            "phase\tchange\tservice\tstream\tt0_s\tlatency_ms\n{}",
            b.raw
        );
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }

    // 5. Report.
    let (unexpected, errors) = {
        let s = b.tracker.lock();
        (s.unexpected, s.errors.clone())
    };
    // Stop the controller before the config directory or the fake API server goes (with `b`),
    // so that it does not report the Services as deleted to the streams still open.
    drop(ctl);
    let mut out = String::new();
    let w = &mut out;
    match args.source {
        SourceMode::Local => {
            let _ = writeln!(w, "mesh-controller propagation benchmark (local mode)");
            let _ = writeln!(
                w,
                "config: {} services x {} endpoints = {} endpoints, one file per service; {} streams over {} gRPC connections",
                args.services,
                eps,
                args.services * eps,
                args.streams,
                args.connections
            );
            let _ = writeln!(
                w,
                "latency = rename of the file into the config dir -> the matching Add/Remove read from the stream;"
            );
            let _ = writeln!(
                w,
                "it includes local mode's debounce after a file notification (DEBOUNCE in mesh-controller/src/local.rs)."
            );
        }
        SourceMode::Kubernetes => {
            let _ = writeln!(
                w,
                "mesh-controller propagation benchmark (kubernetes mode, fake API server)"
            );
            let _ = writeln!(
                w,
                "config: {} services x {} endpoints = {} endpoints, one EndpointSlice per service; {} streams over {} gRPC connections",
                args.services,
                eps,
                args.services * eps,
                args.streams,
                args.connections
            );
            let _ = writeln!(
                w,
                "latency = upsert of the EndpointSlice into the fake API server -> the matching Add/Remove read from the stream;"
            );
            let _ = writeln!(
                w,
                "it includes the fake API server's watch delivery (mesh-fake-kube: one thread in the benchmark process,"
            );
            let _ = writeln!(
                w,
                "not a real kube-apiserver) and the controller's kube-rs watch; there is no debounce in this mode."
            );
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "setup");
    let _ = writeln!(
        w,
        "  controller start -> /ready                  {:>8.0} ms",
        ms(ready_time)
    );
    let _ = writeln!(
        w,
        "  open {:>5} streams -> all initial states    {:>8.0} ms",
        args.streams,
        ms(open_time)
    );
    if let Some((n, open, _)) = &fanout_setup {
        let _ = writeln!(
            w,
            "  open {:>5} fan-out streams -> all states    {:>8.0} ms",
            n,
            ms(*open)
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "propagation (ms)                           samples     p50     p90     p99     max  >{}ms",
        args.slo_ms
    );
    for r in &rows {
        let s = &r.stats;
        let _ = writeln!(
            w,
            "  {:<40} {:>7} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>5}",
            r.name, s.n, s.p50, s.p90, s.p99, s.max, s.over_slo
        );
    }
    let _ = writeln!(
        w,
        "  (sequential: {} changes, one at a time, {} ms apart; burst: {} rounds; fan-out: {} changes)",
        args.changes, args.gap_ms, args.burst_rounds, args.fanout_changes
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "controller memory (MiB)                     VmRSS   VmHWM"
    );
    let mem_row = |w: &mut String, name: &str, m: Mem| {
        let _ = writeln!(
            w,
            "  {:<40} {:>7.1} {:>7.1}",
            name,
            mib(m.rss_kib),
            mib(m.hwm_kib)
        );
    };
    mem_row(w, "loaded (ready, no streams)", mem_loaded);
    mem_row(w, &format!("{} streams open", args.streams), mem_streams);
    mem_row(w, "after sequential and burst changes", mem_changes);
    if let Some((n, _, m)) = &fanout_setup {
        mem_row(w, &format!("+ {n} fan-out streams open"), *m);
    }
    mem_row(w, "end", mem_end);
    let _ = writeln!(w);
    let cpu = cpu_after - cpu_before;
    let self_cpu = self_cpu_after - self_cpu_before;
    let wall = measure_time.as_secs_f64();
    let _ = writeln!(
        w,
        "controller CPU (utime+stime) during the measurement: {:.2} s in {:.1} s wall ({:.1} % of one core)",
        cpu,
        wall,
        100.0 * cpu / wall
    );
    let _ = writeln!(
        w,
        "controller CPU while idle (streams open, no change):  {:.2} s in {:.1} s ({:.1} % of one core)",
        idle_cpu,
        idle_secs,
        100.0 * idle_cpu / idle_secs
    );
    let _ = writeln!(
        w,
        "benchmark client CPU during the measurement:          {:.2} s ({:.1} % of one core){}",
        self_cpu,
        100.0 * self_cpu / wall,
        if args.source == SourceMode::Kubernetes {
            ", fake API server included"
        } else {
            ""
        }
    );
    if let (Some((s0, c0)), Some((s1, c1))) = (lag_before, lag_after) {
        let n = c1 - c0;
        if n > 0.0 {
            let _ = writeln!(
                w,
                "index recomputation (index_lag_seconds): {:.0} batches, mean {:.2} ms",
                n,
                (s1 - s0) / n * 1000.0
            );
        }
    }
    let _ = writeln!(
        w,
        "unexpected updates: {unexpected} (while idle: {idle_unexpected}); stream errors: {}",
        errors.len()
    );
    for e in errors.iter().take(5) {
        let _ = writeln!(w, "  {e}");
    }
    let worst_p99 = rows
        .iter()
        .filter(|r| !r.name.starts_with("fan-out, last"))
        .map(|r| r.stats.p99)
        .fold(0.0, f64::max);
    let missed: usize = rows.iter().map(|r| r.stats.over_slo).sum();
    let _ = writeln!(
        w,
        "target p99 < 100 ms: {} (worst p99 {:.1} ms); changes not seen within {} ms: {}",
        if worst_p99 < 100.0 { "met" } else { "NOT met" },
        worst_p99,
        args.slo_ms,
        missed
    );
    Ok(out)
}

fn main() {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                // Returning drops everything `run` holds: the controller is killed and the
                // temporary directory removed, also on Ctrl-C.
                tokio::select! {
                    r = run(args) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            })
        });
    match result {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
