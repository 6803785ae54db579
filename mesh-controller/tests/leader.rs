//! Leader election of the controller binary against the fake API server: a leader that gets
//! SIGTERM releases its Lease and the other replica takes over before the Lease's TTL runs
//! out; a missing Lease namespace is said once, shown on `/status` and in the metrics, and
//! leadership follows as soon as the namespace exists.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use mesh_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use support::{free_port, http_get};

/// The Lease's TTL (`LeaseTiming::default`).
const LEASE_TTL: Duration = Duration::from_secs(15);

/// The controller binary in Kubernetes mode, logging at info into a file; killed on drop.
struct Replica {
    child: Child,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl Replica {
    fn start(kubeconfig: &Path, dir: &Path, name: &str) -> Self {
        let grpc = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--source", "kubernetes"])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("MESH_CONTROLLER_WEBHOOK_ADDR", "off")
            .env("MESH_CONTROLLER_LOG", "mesh_controller=info")
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts");
        Self { child, admin, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn status(&self) -> Option<Value> {
        let r = http_get(self.admin, "localhost", "/status").await.ok()?;
        serde_json::from_str(&r.body).ok()
    }

    async fn metrics(&self) -> String {
        http_get(self.admin, "localhost", "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// SIGTERM, as the kubelet sends on a rolling update.
    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "SIGTERM delivered");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit in {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn namespace(server: &FakeApiServer, name: &str) {
    server
        .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .unwrap();
}

async fn install_crds(server: &FakeApiServer) {
    let api: Api<CustomResourceDefinition> = Api::all(server.client().await);
    for crd in mesh_crds::crds() {
        api.create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
    }
}

fn holder(server: &FakeApiServer) -> Option<String> {
    let lease = server.object(
        "coordination.k8s.io/v1",
        "leases",
        Some("mesh-system"),
        "mesh-controller",
    )?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

async fn until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_before_the_lease_expires() {
    let server = FakeApiServer::start();
    namespace(&server, "mesh-system");
    install_crds(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut a = Replica::start(&kubeconfig, dir.path(), "replica-a");
    let first = until("replica-a leads", Duration::from_secs(20), async || {
        holder(&server)
    })
    .await;
    assert_eq!(first, "replica-a");
    let b = Replica::start(&kubeconfig, dir.path(), "replica-b");
    until("replica-b follows", Duration::from_secs(20), async || {
        let s = b.status().await?;
        (s["leader"]["state"] == "following" && s["leader"]["holder"] == "replica-a").then_some(())
    })
    .await;
    assert_eq!(
        a.status().await.unwrap()["leader"]["state"],
        "leading",
        "{}",
        a.log()
    );

    let stopped = Instant::now();
    a.terminate();
    let took_over = until("replica-b takes the Lease", LEASE_TTL, async || {
        (holder(&server).as_deref() == Some("replica-b")).then(|| stopped.elapsed())
    })
    .await;
    println!(
        "failover after SIGTERM: {} ms (Lease TTL {} s)",
        took_over.as_millis(),
        LEASE_TTL.as_secs()
    );
    assert!(took_over < LEASE_TTL);
    let exit = a.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "replica-a exits cleanly: {exit:?}");
    let log = a.log();
    assert!(log.contains("released the Lease"), "{log}");
    let lease = server
        .object(
            "coordination.k8s.io/v1",
            "leases",
            Some("mesh-system"),
            "mesh-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15, "{lease:#}");
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1,
        "{lease:#}"
    );
    until(
        "replica-b reports leading",
        Duration::from_secs(10),
        async || (b.status().await?["leader"]["state"] == "leading").then_some(()),
    )
    .await;
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("mesh_controller_leader{state=\"leading\"} 1"),
        "{metrics}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lease_namespace_is_said_once_and_shown_until_it_exists() {
    let server = FakeApiServer::start();
    namespace(&server, "shop");
    install_crds(&server).await;
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}},
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "web"}, "retry": {"attempts": 3}},
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let r = Replica::start(&kubeconfig, dir.path(), "replica-a");

    let leader = until(
        "/status shows the error",
        Duration::from_secs(20),
        async || {
            let s = r.status().await?;
            (s["leader"]["reason"] == "NamespaceMissing").then(|| s["leader"].clone())
        },
    )
    .await;
    assert_eq!(leader["state"], "error", "{leader:#}");
    assert_eq!(leader["lease"], "mesh-system/mesh-controller", "{leader:#}");
    let message = leader["message"].as_str().unwrap();
    assert!(
        message.contains("kubectl create namespace mesh-system"),
        "{message}"
    );
    assert!(message.contains("meshctl install"), "{message}");
    // Several rounds (every 2 s) fail; the warning is logged once.
    until("three failed rounds", Duration::from_secs(20), async || {
        let m = r.metrics().await;
        m.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "mesh_controller_leader_election_errors_total{reason=\"NamespaceMissing\"} ",
                )
            })
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n >= 3)
    })
    .await;
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("mesh_controller_leader{state=\"error\"} 1"),
        "{metrics}"
    );
    let log = r.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("does not exist"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    // No status is written meanwhile.
    let p = server
        .object("mesh.dev/v1alpha1", "backendpolicies", Some("shop"), "web")
        .unwrap();
    assert!(p["status"]["conditions"].is_null(), "{p:#}");

    namespace(&server, "mesh-system");
    until("leading", Duration::from_secs(20), async || {
        let s = r.status().await?;
        (s["leader"]["state"] == "leading" && s["leader"]["reason"].is_null()).then_some(())
    })
    .await;
    let p = until("status written", Duration::from_secs(20), async || {
        let p = server.object("mesh.dev/v1alpha1", "backendpolicies", Some("shop"), "web")?;
        p["status"]["conditions"].is_array().then_some(p)
    })
    .await;
    assert_eq!(p["status"]["conditions"][0]["status"], "True", "{p:#}");
    assert!(r.log().contains("the Lease can be read and written again"));
}

/// A TCP relay to the fake API server that can be cut (open connections closed, new ones
/// refused) and restored, like an API server restart.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_api_server_is_logged_once_and_so_is_the_resumption() {
    let server = FakeApiServer::start();
    namespace(&server, "mesh-system");
    install_crds(&server).await;
    let relay = Relay::start(server.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        server
            .kubeconfig_yaml()
            .replace(&server.url(), &format!("http://{}", relay.addr)),
    )
    .unwrap();
    let r = Replica::start(&kubeconfig, dir.path(), "replica-a");
    until("ready", Duration::from_secs(20), async || {
        let s = r.status().await?;
        (s["ready"] == true && s["leader"]["state"] == "leading").then_some(())
    })
    .await;

    relay.cut();
    // Long enough for several retries of every watch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.restore();
    until("resumption logged", Duration::from_secs(20), async || {
        r.log()
            .contains("the Kubernetes API answers again")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = r.log();
    let lost = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("lost the Kubernetes API"))
        .count();
    let resumed = log
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("the Kubernetes API answers again"))
        .count();
    assert_eq!((lost, resumed), (1, 1), "{log}");
    // Watches work again: a new Service reaches the index.
    let before = r.status().await.unwrap()["services"].as_u64().unwrap();
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "after", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap();
    until(
        "the new Service is indexed",
        Duration::from_secs(20),
        async || (r.status().await?["services"].as_u64()? > before).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_leading_before_another_takes_over() {
    let server = FakeApiServer::start();
    namespace(&server, "mesh-system");
    install_crds(&server).await;
    let relay = Relay::start(server.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let through_relay = dir.path().join("kubeconfig-relay");
    std::fs::write(
        &through_relay,
        server
            .kubeconfig_yaml()
            .replace(&server.url(), &format!("http://{}", relay.addr)),
    )
    .unwrap();
    let direct = dir.path().join("kubeconfig");
    server.write_kubeconfig(&direct).unwrap();
    let a = Replica::start(&through_relay, dir.path(), "replica-a");
    until("replica-a leads", Duration::from_secs(20), async || {
        (holder(&server).as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = Replica::start(&direct, dir.path(), "replica-b");
    until("replica-b follows", Duration::from_secs(20), async || {
        (b.status().await?["leader"]["state"] == "following").then_some(())
    })
    .await;

    let cut = Instant::now();
    relay.cut();
    let stopped = until("replica-a stops leading", LEASE_TTL, async || {
        (a.status().await?["leader"]["state"] == "error").then(|| cut.elapsed())
    })
    .await;
    // It cannot release the Lease (no API), so replica-b waits for it to expire; replica-a
    // must have stopped writing status by then.
    let took_over = until(
        "replica-b takes the expired Lease",
        LEASE_TTL + Duration::from_secs(10),
        async || (holder(&server).as_deref() == Some("replica-b")).then(|| cut.elapsed()),
    )
    .await;
    println!(
        "cut off: replica-a stopped leading after {} ms, replica-b took over after {} ms",
        stopped.as_millis(),
        took_over.as_millis()
    );
    assert!(stopped < took_over, "two leaders at once");
    let log = a.log();
    assert!(
        log.contains("could not renew the Lease for 10s; stopped writing status"),
        "{log}"
    );
    let leader = a.status().await.unwrap()["leader"].clone();
    assert_eq!(leader["reason"], "Unreachable", "{leader:#}");

    // Back in touch, replica-a follows the new leader.
    relay.restore();
    until("replica-a follows", Duration::from_secs(20), async || {
        let s = a.status().await?;
        (s["leader"]["state"] == "following" && s["leader"]["holder"] == "replica-b").then_some(())
    })
    .await;
    assert_eq!(holder(&server).as_deref(), Some("replica-b"));
}
