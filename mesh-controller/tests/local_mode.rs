//! Local mode end to end: the real controller binary reading a directory, real proxies
//! (in-process `mesh-proxy`), real upstream servers and real traffic over 127.0.0.1.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::v1::destination_update::Update;
use support::*;

fn route_yaml(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-split}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - backendRefs:
    - {{name: web-v1, port: 80, weight: {v1}}}
    - {{name: web-v2, port: 80, weight: {v2}}}
"#
    )
}

fn services(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    let mut s = service_yaml("web", "app: web", 80);
    s += &service_yaml("web-v1", "app: web, version: v1", 80);
    s += &service_yaml("web-v2", "app: web, version: v2", 80);
    s += &workload_yaml("web-a", "app: web, version: v1", a);
    s += &workload_yaml("web-b", "app: web, version: v2", b);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_stream_follows_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "web.yaml",
        &(service_yaml("web", "app: web", 80)
            + &workload_yaml("web-1", "app: web", "127.0.0.1:1001".parse().unwrap())),
    );
    let ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;

    let mut s = destination(ctl.grpc, "web.default.svc.cluster.local:80").await;
    match next(&mut s).await {
        Update::State(st) => {
            assert_eq!(st.endpoints.len(), 1);
            assert_eq!(st.endpoints[0].address.as_ref().unwrap().port, 1001);
            // No proxy in front of it: no identity, so clients do not attempt mTLS.
            assert!(
                st.endpoints[0].identity.is_empty(),
                "{:?}",
                st.endpoints[0].identity
            );
        }
        other => panic!("expected the full state first, got {other:?}"),
    }
    // Short names resolve in the proxy's namespace, too.
    let mut short = destination(ctl.grpc, "web:80").await;
    assert!(matches!(next(&mut short).await, Update::State(_)));
    let mut missing = destination(ctl.grpc, "nope:80").await;
    assert!(matches!(next(&mut missing).await, Update::NotFound(_)));

    // A workload registers by file: an incremental add, within a second.
    let t = Instant::now();
    write(
        dir.path(),
        "web-2.yaml",
        &workload_yaml("web-2", "app: web", "127.0.0.1:1002".parse().unwrap()),
    );
    match next(&mut s).await {
        Update::Add(a) => {
            assert_eq!(a.endpoints.len(), 1);
            assert_eq!(a.endpoints[0].address.as_ref().unwrap().port, 1002);
        }
        other => panic!("expected an add, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // It leaves by deleting its file.
    std::fs::remove_file(dir.path().join("web-2.yaml")).unwrap();
    match next(&mut s).await {
        Update::Remove(r) => assert_eq!(r.addresses[0].port, 1002),
        other => panic!("expected a remove, got {other:?}"),
    }

    // A route and a policy change the profile.
    write(
        dir.path(),
        "policy.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec:\n  targetRef: {kind: Service, name: web}\n  loadBalancer: RoundRobin\n  timeout: 2s\n  retry: {attempts: 3}\n",
    );
    match next(&mut s).await {
        Update::Profile(p) => {
            let policy = p.policy.unwrap();
            assert_eq!(policy.balancer, mesh_proto::v1::Balancer::RoundRobin as i32);
            assert_eq!(
                p.routes.len(),
                1,
                "the default route carries retry and timeout"
            );
            assert_eq!(p.routes[0].timeout_ms, 2000);
            assert_eq!(p.routes[0].retry.as_ref().unwrap().max_retries, 3);
        }
        other => panic!("expected a profile, got {other:?}"),
    }
    // The missing Service appears: the waiting stream gets its state.
    write(
        dir.path(),
        "nope.yaml",
        &service_yaml("nope", "app: web", 80),
    );
    assert!(matches!(next(&mut missing).await, Update::State(_)));

    let metrics = http_get(ctl.admin, "localhost", "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("mesh_controller_streams_open{api=\"destination\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_controller_index_objects{kind=\"Workload\"} 1"),
        "{metrics}"
    );
}

/// Sends requests through `proxy` at a steady pace until `stop`; counts answers per body.
async fn load(
    outbound: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        match http_get(outbound, "web:80", "/").await {
            Ok(r) if r.status == 200 => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                eprintln!("failed request: {} {}", r.status, r.body);
                failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("failed request: {e}");
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Concurrent request loops through a proxy, counting answers until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(outbound: std::net::SocketAddr, loops: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let loops = (0..loops)
            .map(|_| tokio::spawn(load(outbound, stop.clone(), ok.clone(), failed.clone())))
            .collect();
        Self {
            stop,
            ok,
            failed,
            loops,
        }
    }

    /// Stops the loops and returns (ok, failed).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.loops {
            l.await.unwrap();
        }
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        eprintln!("requests: {ok} ok, {failed} failed");
        (ok, failed)
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_route_moves_live_traffic_without_failures_and_a_broken_file_changes_nothing() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &services(v1.addr, v2.addr));
    write(dir.path(), "route.yaml", &route_yaml(100, 0));
    let ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;
    let client = proxy(ctl.grpc, "ns:default/workload:client").await;

    let traffic = Load::start(client.outbound_addr, 4);
    wait_for("traffic to v1", || v1.hits.load(Ordering::Relaxed) >= 50).await;
    assert_eq!(v2.hits.load(Ordering::Relaxed), 0, "weight 0 gets nothing");

    // Flip the split: all traffic moves to v2, no request fails.
    write(dir.path(), "route.yaml", &route_yaml(0, 100));
    wait_for("traffic to v2", || v2.hits.load(Ordering::Relaxed) >= 50).await;
    let v1_after = v1.hits.load(Ordering::Relaxed);

    // A broken edit is reported with the file and field and changes nothing.
    write(
        dir.path(),
        "route.yaml",
        &route_yaml(0, 100).replace("weight: 100", "weight: lots"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let st = ctl.status().await;
        if st["rejectedFiles"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
        {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (file, error) = status["rejectedFiles"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(file.ends_with("route.yaml"), "{file}");
    let error = error.as_str().unwrap();
    assert!(
        error.contains("spec.rules[0].backendRefs[1].weight"),
        "error names the field: {error}"
    );
    let v2_before = v2.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        v2.hits.load(Ordering::Relaxed) > v2_before + 20,
        "traffic still flows to v2"
    );
    assert!(
        v1.hits.load(Ordering::Relaxed) <= v1_after + 4,
        "the old split stays in force"
    );

    let (ok, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "no request may fail while routes change");
    assert!(ok > 200);
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_routing_without_the_controller_and_resume_when_it_returns() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &services(v1.addr, v2.addr));
    write(dir.path(), "route.yaml", &route_yaml(100, 0));
    let mut ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;
    let (grpc, admin) = (ctl.grpc, ctl.admin);
    let client = proxy(grpc, "ns:default/workload:client").await;

    let traffic = Load::start(client.outbound_addr, 4);
    wait_for("traffic to v1", || v1.hits.load(Ordering::Relaxed) >= 50).await;

    // SIGKILL the controller: traffic keeps flowing on the last state.
    ctl.kill();
    let before = v1.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        v1.hits.load(Ordering::Relaxed) > before + 50,
        "traffic continues"
    );

    // Change the config while it is down, then restart it on the same port.
    write(dir.path(), "route.yaml", &route_yaml(0, 100));
    let ctl2 = Controller::start(dir.path(), grpc, admin);
    ctl2.ready().await;
    wait_for("streams to resume with the new split", || {
        v2.hits.load(Ordering::Relaxed) >= 50
    })
    .await;

    let (_, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "losing the controller must not fail requests");
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_arguments_are_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .args([
            "--config-dir",
            "/nonexistent/mesh",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config-dir /nonexistent/mesh is not a directory"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("backendpolicies.mesh.dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policy_follows_server_objects() {
    use mesh_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "db.yaml",
        &workload_yaml("db-1", "app: db", "127.0.0.1:5432".parse().unwrap()),
    );
    let ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;
    let mut client = pb::inbound_client::InboundClient::connect(format!("http://{}", ctl.grpc))
        .await
        .unwrap();
    let mut s = client
        .watch(pb::InboundPort {
            workload: "ns:default/workload:db-1".into(),
            port: 5432,
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.protocol, pb::Protocol::Detect as i32);
    assert_eq!(first.server, "");

    // A Server selecting the workload's named port makes it opaque.
    write(
        dir.path(),
        "server.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: postgres}\nspec: {selector: {app: db}, port: http, protocol: Opaque}\n",
    );
    let next = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an update within 5s")
        .unwrap()
        .unwrap();
    assert_eq!(next.protocol, pb::Protocol::Opaque as i32);
    assert_eq!(next.server, "default/postgres");

    // A workload name that is not ns:<ns>/<kind>:<name> is refused with a reason.
    let err = client
        .watch(pb::InboundPort {
            workload: "db-1".into(),
            port: 5432,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("ns:<namespace>"),
        "{}",
        err.message()
    );
}

/// Next message on any stream, within 5 s.
async fn next_msg<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a message within 5s")
        .expect("stream ok")
        .expect("stream open")
}

/// (port, protocol) of each endpoint in a full state or an add.
fn endpoint_protocols(u: &Update) -> Vec<(u32, i32)> {
    let list = match u {
        Update::State(st) => &st.endpoints,
        Update::Add(a) => &a.endpoints,
        other => panic!("expected endpoints, got {other:?}"),
    };
    list.iter()
        .map(|e| (e.address.as_ref().map_or(0, |a| a.port), e.protocol))
        .collect()
}

const DB_SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: mysql, port: 3306, targetPort: 13306}]
---
apiVersion: v1
kind: Service
metadata: {name: db-named}
spec:
  selector: {app: db}
  ports: [{name: mysql, port: 3307, targetPort: mysql}]
---
apiVersion: v1
kind: Service
metadata: {name: cache}
spec:
  selector: {app: cache}
  ports: [{name: redis, port: 6379, targetPort: 16379, appProtocol: tcp}]
---
apiVersion: mesh.dev/v1alpha1
kind: Workload
metadata: {name: db-1, labels: {app: db}}
spec:
  address: 127.0.0.1
  ports: [{name: mysql, port: 13306}]
---
apiVersion: mesh.dev/v1alpha1
kind: Workload
metadata: {name: cache-1, labels: {app: cache}}
spec:
  address: 127.0.0.2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_carry_the_protocol_a_server_or_app_protocol_declares_through_target_ports() {
    use mesh_proto::v1::Protocol;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", DB_SERVICES);
    // The Server names the workload port (13306), not the Service ports (3306, 3307).
    write(
        dir.path(),
        "server.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: mysql}\nspec: {selector: {app: db}, port: 13306, protocol: Opaque}\n",
    );
    let ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;

    let opaque = Protocol::Opaque as i32;
    let detect = Protocol::Detect as i32;
    // targetPort a number other than the port, and targetPort a name of the Workload's port.
    let mut by_number = destination(ctl.grpc, "db.default.svc.cluster.local:3306").await;
    assert_eq!(
        endpoint_protocols(&next(&mut by_number).await),
        vec![(13306, opaque)]
    );
    let mut by_name = destination(ctl.grpc, "db-named:3307").await;
    assert_eq!(
        endpoint_protocols(&next(&mut by_name).await),
        vec![(13306, opaque)]
    );
    // appProtocol: tcp, no Server at all.
    let mut cache = destination(ctl.grpc, "cache:6379").await;
    assert_eq!(
        endpoint_protocols(&next(&mut cache).await),
        vec![(16379, opaque)]
    );

    // The Server goes: both Services' endpoints are re-sent, now to be detected.
    std::fs::remove_file(dir.path().join("server.yaml")).unwrap();
    assert_eq!(
        endpoint_protocols(&next(&mut by_number).await),
        vec![(13306, detect)]
    );
    assert_eq!(
        endpoint_protocols(&next(&mut by_name).await),
        vec![(13306, detect)]
    );
    // It comes back by port name, saying HTTP/2; the appProtocol of `cache` changes.
    write(
        dir.path(),
        "server.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: mysql}\nspec: {selector: {app: db}, port: mysql, protocol: HTTP/2}\n",
    );
    assert_eq!(
        endpoint_protocols(&next(&mut by_number).await),
        vec![(13306, Protocol::Http2 as i32)]
    );
    write(
        dir.path(),
        "services.yaml",
        &DB_SERVICES.replace("appProtocol: tcp", "appProtocol: kubernetes.io/h2c"),
    );
    assert_eq!(
        endpoint_protocols(&next(&mut cache).await),
        vec![(16379, Protocol::Http2 as i32)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_workload_streams_every_declared_port() {
    use mesh_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    // The Service's appProtocol declares the workload port its named targetPort maps to.
    write(
        dir.path(),
        "db.yaml",
        &DB_SERVICES.replace(
            "targetPort: mysql}",
            "targetPort: mysql, appProtocol: MySQL}",
        ),
    );
    let ctl = Controller::start_fresh(dir.path());
    ctl.ready().await;
    let mut client = pb::inbound_client::InboundClient::connect(format!("http://{}", ctl.grpc))
        .await
        .unwrap();
    let ports = |m: &pb::WorkloadPolicy| {
        let mut v: Vec<(u32, String, i32)> = m
            .ports
            .iter()
            .map(|(p, pol)| (*p, pol.server.clone(), pol.protocol))
            .collect();
        v.sort();
        v
    };
    let mut s = client
        .watch_workload(pb::InboundWorkload {
            workload: "ns:default/workload:db-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let opaque = pb::Protocol::Opaque as i32;
    assert_eq!(
        ports(&next_msg(&mut s).await),
        vec![(13306, String::new(), opaque)]
    );

    // A Server adds its port; removing it removes the port again.
    write(
        dir.path(),
        "server.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {name: admin}\nspec: {selector: {app: db}, port: 9000, protocol: HTTP/1}\n",
    );
    assert_eq!(
        ports(&next_msg(&mut s).await),
        vec![
            (
                9000,
                "default/admin".to_string(),
                pb::Protocol::Http1 as i32
            ),
            (13306, String::new(), opaque)
        ]
    );
    std::fs::remove_file(dir.path().join("server.yaml")).unwrap();
    assert_eq!(
        ports(&next_msg(&mut s).await),
        vec![(13306, String::new(), opaque)]
    );

    // A workload the controller does not know yet: an empty map, then its ports once it
    // registers.
    let mut later = client
        .watch_workload(pb::InboundWorkload {
            workload: "ns:default/workload:db-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ports(&next_msg(&mut later).await), vec![]);
    write(
        dir.path(),
        "db-2.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {name: db-2, labels: {app: db}}\nspec:\n  address: 127.0.0.3\n  ports: [{name: mysql, port: 23306}]\n",
    );
    assert_eq!(
        ports(&next_msg(&mut later).await),
        vec![(23306, String::new(), opaque)]
    );

    let err = client
        .watch_workload(pb::InboundWorkload {
            workload: "db-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
