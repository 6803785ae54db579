//! Authorization, inbound mTLS mode and egress, end to end through the controller: objects
//! in a local-mode directory (or the fake Kubernetes API), the real index, and the real gRPC
//! `Inbound.WatchWorkload` stream, whose messages are converted back into the model and
//! evaluated the way the proxy evaluates them.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_controller::inbound::MeshPolicy;
use mesh_controller::index::Index;
use mesh_controller::objects::Kind;
use mesh_controller::RunArgs;
use mesh_core::convert::workload_policy_from_proto;
use mesh_core::{Client, DefaultPolicy, DenyReason, Identity, InboundTls, Verdict, WorkloadPolicy};
use mesh_proto::v1 as pb;

const TD: &str = "cluster.local";

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, so that the controller never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

const ORDERS: &str = r#"
apiVersion: mesh.dev/v1alpha1
kind: Workload
metadata: {name: orders-1, namespace: shop, labels: {app: orders}}
spec: {address: 127.0.0.1, serviceAccount: orders}
---
apiVersion: mesh.dev/v1alpha1
kind: Server
metadata: {name: orders-http, namespace: shop}
spec: {selector: {app: orders}, port: 8080, protocol: HTTP/1, tls: strict}
"#;

const SHOP_POLICY: &str = r#"
apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  targetRef: {group: mesh.dev, kind: Server, name: orders-http}
  rules:
  - name: web-creates-orders
    clients:
      identities: [spiffe://cluster.local/ns/shop/sa/web]
    routes:
    - path: {exact: /api/orders}
      method: POST
  - name: health
    clients: {authenticated: true}
    routes:
    - path: {exact: /health}
      method: GET
"#;

async fn start_local(dir: &Path) -> mesh_controller::Running {
    let ctl = mesh_controller::start(RunArgs::for_tests(Some(dir.to_path_buf())))
        .await
        .expect("controller starts");
    wait_ready(&ctl.index).await;
    ctl
}

async fn wait_ready(index: &Index) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !index.is_ready() {
        assert!(Instant::now() < deadline, "controller not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watch(addr: std::net::SocketAddr, workload: &str) -> tonic::Streaming<pb::WorkloadPolicy> {
    let mut client = pb::inbound_client::InboundClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .watch_workload(pb::InboundWorkload {
            workload: workload.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(s: &mut tonic::Streaming<pb::WorkloadPolicy>) -> WorkloadPolicy {
    let msg = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a policy within 5s")
        .expect("stream ok")
        .expect("stream open");
    workload_policy_from_proto(&msg, TD).expect("the controller sends valid policy")
}

/// The next policy that satisfies `check` (intermediate states may be skipped or seen).
async fn next_until(
    s: &mut tonic::Streaming<pb::WorkloadPolicy>,
    check: impl Fn(&WorkloadPolicy) -> bool,
) -> WorkloadPolicy {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = next(s).await;
        if check(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "policy never matched: {p:#?}");
    }
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn client(identity: Option<&Identity>) -> Client<'_> {
    Client {
        identity,
        addr: IpAddr::from([10, 0, 0, 7]),
    }
}

fn req(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap()
}

/// The condition of one object on the index's status report.
async fn condition(
    index: &Index,
    kind: Kind,
    ns: &str,
    name: &str,
    want: &str,
) -> (String, String) {
    let mut rx = index.status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = rx
            .borrow_and_update()
            .iter()
            .find(|((k, key), _)| *k == kind && key.namespace == ns && key.name == name)
            .and_then(|(_, st)| st.entries.first()?.conditions.first().cloned());
        if let Some(c) = &found {
            if c.status == want {
                return (c.reason.clone(), c.message.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{kind} {ns}/{name} never got status {want}: {found:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_example_compiles_to_the_expected_rules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "orders.yaml", ORDERS);
    write(dir.path(), "policy.yaml", SHOP_POLICY);
    let ctl = start_local(dir.path()).await;
    let mut s = watch(ctl.grpc_addr, "ns:shop/workload:orders-1").await;
    let p = next_until(&mut s, |p| {
        p.ports
            .get(&8080)
            .is_some_and(|p| !p.authorization.rules().is_empty())
    })
    .await;

    let port = p.port(8080);
    assert_eq!(port.server, "shop/orders-http");
    assert_eq!(port.protocol, mesh_core::AppProtocol::Http1);
    assert_eq!(port.tls, InboundTls::Strict);
    let names: Vec<&str> = port
        .authorization
        .rules()
        .iter()
        .map(|r| &*r.name)
        .collect();
    assert_eq!(
        names,
        [
            "shop/orders-api/web-creates-orders",
            "shop/orders-api/health"
        ]
    );
    assert!(port.authorization.per_request());

    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let batch = id("spiffe://cluster.local/ns/shop/sa/batch");
    let a = &port.authorization;
    assert_eq!(
        a.check_request(&client(Some(&web)), &req("POST", "/api/orders")),
        Verdict::Allow
    );
    match a.check_request(&client(Some(&batch)), &req("POST", "/api/orders")) {
        Verdict::Deny(d) => {
            assert_eq!(d.reason, DenyReason::Unauthorized);
            assert_eq!(&*d.policy, "shop/orders-api");
        }
        other => panic!("batch must be denied, got {other:?}"),
    }
    assert_eq!(
        a.check_request(&client(Some(&batch)), &req("GET", "/health")),
        Verdict::Allow
    );
    assert!(matches!(
        a.check_request(&client(None), &req("GET", "/health")),
        Verdict::Deny(d) if d.reason == DenyReason::Unauthenticated
    ));
    assert!(!a
        .check_request(&client(Some(&web)), &req("DELETE", "/api/orders"))
        .passes());

    // Other ports keep the mesh defaults; the policy's condition says it was accepted.
    assert_eq!(p.port(9999).tls, InboundTls::Permissive);
    assert_eq!(
        p.port(9999).authorization.check_connection(&client(None)),
        Verdict::Allow
    );
    condition(
        &ctl.index,
        Kind::AuthorizationPolicy,
        "shop",
        "orders-api",
        "True",
    )
    .await;

    // Audit mode: everything passes, what enforcement would deny is reported.
    write(
        dir.path(),
        "policy.yaml",
        &SHOP_POLICY.replace("  rules:\n", "  mode: audit\n  rules:\n"),
    );
    let p = next_until(&mut s, |p| {
        p.port(8080).authorization.rules().iter().all(|r| r.audit)
    })
    .await;
    let a = &p.port(8080).authorization;
    assert!(matches!(
        a.check_request(&client(Some(&batch)), &req("POST", "/api/orders")),
        Verdict::WouldDeny(d) if d.reason == DenyReason::Unauthorized
    ));
    assert_eq!(
        a.check_request(&client(Some(&web)), &req("POST", "/api/orders")),
        Verdict::Allow
    );

    // Deleting the policy reopens the port to its default.
    std::fs::remove_file(dir.path().join("policy.yaml")).unwrap();
    let p = next_until(&mut s, |p| p.port(8080).authorization.rules().is_empty()).await;
    assert_eq!(
        p.port(8080)
            .authorization
            .check_request(&client(None), &req("POST", "/api/orders")),
        Verdict::Allow
    );
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_workload_and_mesh_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {mesh.dev/default-policy: deny, mesh.dev/inbound-tls: strict}\n",
    );
    write(dir.path(), "orders.yaml", ORDERS);
    // The index with mesh-wide defaults, the local source and the gRPC API, as the
    // controller assembles them.
    let metrics = Arc::new(mesh_controller::metrics::Metrics::new());
    let index = Index::with_policy(
        mesh_controller::services::Naming::default(),
        metrics.clone(),
        MeshPolicy {
            default_policy: DefaultPolicy::ClusterAuthenticated,
            tls: InboundTls::Permissive,
            trust_domain: TD.into(),
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let run = tokio::spawn(index.clone().run(rx));
    let src = mesh_controller::local::LocalSource::new(
        dir.path().into(),
        metrics,
        "cluster.local".into(),
    );
    let source = tokio::spawn(src.run(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mesh_controller::grpc::serve(
        index.clone(),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_ready(&index).await;

    // A namespace without a Namespace object: the mesh default, at once, for a workload
    // nobody registered.
    let mut other = watch(addr, "ns:other/pod:ghost-1").await;
    let p = next(&mut other).await;
    assert!(p.ports.is_empty());
    assert_eq!(p.default_port.tls, InboundTls::Permissive);
    assert_eq!(
        p.default_port.authorization.default_policy(),
        DefaultPolicy::ClusterAuthenticated
    );
    let foreign = id("spiffe://other.org/ns/a/sa/b");
    assert!(!p
        .default_port
        .authorization
        .check_connection(&client(Some(&foreign)))
        .passes());

    // The namespace's annotations apply to its ports, the Server's tls to its own port.
    let mut unknown = watch(addr, "ns:shop/pod:ghost-2").await;
    let p = next(&mut unknown).await;
    assert_eq!(p.default_port.tls, InboundTls::Strict);
    assert_eq!(
        p.default_port.authorization.default_policy(),
        DefaultPolicy::Deny
    );
    let mut orders = watch(addr, "ns:shop/workload:orders-1").await;
    let p = next(&mut orders).await;
    assert_eq!(p.port(8080).tls, InboundTls::Strict);
    assert_eq!(
        p.port(8080).authorization.default_policy(),
        DefaultPolicy::Deny
    );

    // A workload's annotations override the namespace's, live.
    write(
        dir.path(),
        "orders.yaml",
        &ORDERS.replace(
            "labels: {app: orders}}",
            "labels: {app: orders}, annotations: {mesh.dev/default-policy: audit-deny, mesh.dev/inbound-tls: disabled}}",
        ),
    );
    let p = next_until(&mut orders, |p| p.default_port.tls == InboundTls::Disabled).await;
    assert_eq!(
        p.default_port.authorization.default_policy(),
        DefaultPolicy::AuditDeny
    );
    assert!(matches!(
        p.default_port.authorization.check_connection(&client(None)),
        Verdict::WouldDeny(_)
    ));
    assert_eq!(
        p.port(8080).tls,
        InboundTls::Strict,
        "the Server's tls wins"
    );

    // Changing the Namespace's annotations reaches watchers live; a bad value fails closed
    // and is reported.
    write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {mesh.dev/default-policy: allow-everyone}\n",
    );
    let p = next_until(&mut unknown, |p| {
        p.default_port.tls == InboundTls::Permissive
    })
    .await;
    assert_eq!(
        p.default_port.authorization.default_policy(),
        DefaultPolicy::Deny
    );
    let (reason, message) = condition(&index, Kind::Namespace, "", "shop", "False").await;
    assert_eq!(reason, "InvalidAnnotation");
    assert!(message.contains("allow-everyone"), "{message}");

    // Open streams would hold a graceful shutdown: stop at once.
    drop((other, unknown, orders));
    let _ = stop_tx.send(());
    server.abort();
    source.abort();
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_valid_policy_and_a_never_valid_one_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "orders.yaml", ORDERS);
    write(dir.path(), "policy.yaml", SHOP_POLICY);
    let ctl = start_local(dir.path()).await;
    let mut s = watch(ctl.grpc_addr, "ns:shop/workload:orders-1").await;
    let valid = next_until(&mut s, |p| p.port(8080).authorization.rules().len() == 2).await;

    // An edit with a bad CIDR: the condition names the field, the policy stays as it was.
    write(
        dir.path(),
        "policy.yaml",
        &SHOP_POLICY.replace(
            "clients: {authenticated: true}",
            "clients: {authenticated: true, networks: [10.0.0.0/99]}",
        ),
    );
    let (reason, message) = condition(
        &ctl.index,
        Kind::AuthorizationPolicy,
        "shop",
        "orders-api",
        "False",
    )
    .await;
    assert_eq!(reason, "Invalid");
    assert!(
        message.starts_with("spec.rules[1].clients.networks[0]: "),
        "{message}"
    );
    assert!(
        message.contains("last valid version stays in force"),
        "{message}"
    );
    let mut fresh = watch(ctl.grpc_addr, "ns:shop/workload:orders-1").await;
    assert_eq!(
        next(&mut fresh).await,
        valid,
        "the last valid policy stays in force"
    );

    // A policy that never was valid makes its target deny what no valid rule allows.
    write(
        dir.path(),
        "admin.yaml",
        r#"
apiVersion: mesh.dev/v1alpha1
kind: Server
metadata: {name: orders-admin, namespace: shop}
spec: {selector: {app: orders}, port: 9000}
---
apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: admin-only, namespace: shop}
spec:
  targetRef: {kind: Server, name: orders-admin}
  rules:
  - clients: {identities: [admin]}
"#,
    );
    let p = next_until(&mut s, |p| p.ports.contains_key(&9000)).await;
    let admin = id("spiffe://cluster.local/ns/shop/sa/admin");
    let a = &p.port(9000).authorization;
    assert!(matches!(
        a.check_connection(&client(Some(&admin))),
        Verdict::Deny(d) if &*d.policy == "shop/admin-only"
    ));
    let (_, message) = condition(
        &ctl.index,
        Kind::AuthorizationPolicy,
        "shop",
        "admin-only",
        "False",
    )
    .await;
    assert!(
        message.starts_with("spec.rules[0].clients.identities[0]: "),
        "{message}"
    );

    // Fixing it applies it.
    write(
        dir.path(),
        "admin.yaml",
        &std::fs::read_to_string(dir.path().join("admin.yaml"))
            .unwrap()
            .replace("[admin]", "[spiffe://cluster.local/ns/shop/sa/admin]"),
    );
    let p = next_until(&mut s, |p| {
        p.port(9000)
            .authorization
            .check_connection(&client(Some(&admin)))
            == Verdict::Allow
    })
    .await;
    assert!(!p
        .port(9000)
        .authorization
        .check_connection(&client(None))
        .passes());
    condition(
        &ctl.index,
        Kind::AuthorizationPolicy,
        "shop",
        "admin-only",
        "True",
    )
    .await;
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_policies_and_egress() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "orders.yaml", ORDERS);
    write(
        dir.path(),
        "policies.yaml",
        r#"
apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: same-namespace, namespace: shop}
spec:
  targetRef: {kind: Namespace, name: shop}
  rules:
  - name: shop
    clients: {namespaces: [shop], networks: [192.0.2.0/24]}
---
apiVersion: mesh.dev/v1alpha1
kind: EgressPolicy
metadata: {name: orders-out, namespace: shop}
spec:
  workloadSelector: {app: orders}
  defaultAction: Deny
  allow:
  - host: "*.payments.example"
  - network: 203.0.113.0/24
  deny:
  - host: fraud.payments.example
"#,
    );
    let ctl = start_local(dir.path()).await;
    let mut s = watch(ctl.grpc_addr, "ns:shop/workload:orders-1").await;
    let p = next_until(&mut s, |p| p.egress.is_some()).await;

    // The namespace-wide rule covers the declared port and every other port.
    let shop = id("spiffe://cluster.local/ns/shop/sa/web");
    let elsewhere = id("spiffe://cluster.local/ns/web/sa/web");
    for port in [8080, 12345] {
        let a = &p.port(port).authorization;
        assert_eq!(
            a.check_connection(&client(Some(&shop))),
            Verdict::Allow,
            "{port}"
        );
        assert!(
            !a.check_connection(&client(Some(&elsewhere))).passes(),
            "{port}"
        );
        let lan = Client {
            identity: None,
            addr: IpAddr::from([192, 0, 2, 9]),
        };
        assert_eq!(a.check_connection(&lan), Verdict::Allow, "{port}");
    }

    let e = p.egress.as_ref().unwrap();
    assert_eq!(&*e.name, "shop/orders-out");
    let far = IpAddr::from([198, 51, 100, 1]);
    assert_eq!(e.check(Some("api.payments.example"), far), Verdict::Allow);
    assert!(!e.check(Some("fraud.payments.example"), far).passes());
    assert!(!e.check(Some("example.org"), far).passes());
    assert_eq!(
        e.check(None, IpAddr::from([203, 0, 113, 5])),
        Verdict::Allow
    );

    // A workload the EgressPolicy does not select has no egress restriction.
    let mut other = watch(ctl.grpc_addr, "ns:shop/pod:web-1").await;
    assert!(next(&mut other).await.egress.is_none());

    // An invalid edit keeps the last valid egress; audit mode reports instead of denying.
    let text = std::fs::read_to_string(dir.path().join("policies.yaml")).unwrap();
    write(
        dir.path(),
        "policies.yaml",
        &text.replace("network: 203.0.113.0/24", "network: 203.0.113.0/xx"),
    );
    let (_, message) = condition(
        &ctl.index,
        Kind::EgressPolicy,
        "shop",
        "orders-out",
        "False",
    )
    .await;
    assert!(message.starts_with("spec.allow[1].network: "), "{message}");
    let mut fresh = watch(ctl.grpc_addr, "ns:shop/workload:orders-1").await;
    assert_eq!(next(&mut fresh).await.egress, p.egress);
    write(
        dir.path(),
        "policies.yaml",
        &text.replace(
            "  defaultAction: Deny\n",
            "  defaultAction: Deny\n  mode: audit\n",
        ),
    );
    let p = next_until(&mut s, |p| p.egress.as_ref().is_some_and(|e| e.audit)).await;
    assert!(matches!(
        p.egress.as_ref().unwrap().check(Some("example.org"), far),
        Verdict::WouldDeny(d) if d.reason == DenyReason::DefaultDeny
    ));
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_policies_apply_and_get_status() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    use serde_json::json;

    let server = mesh_fake_kube::FakeApiServer::start();
    server
        .upsert(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "shop", "annotations": {"mesh.dev/inbound-tls": "strict"}}}),
        )
        .unwrap();
    server
        .upsert(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh-system"}}),
        )
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(server.client().await);
    for crd in mesh_crds::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
    }
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orders-0", "namespace": "shop", "labels": {"app": "orders"}},
            "spec": {"serviceAccountName": "orders", "containers": [
                {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "mesh-proxy", "image": "mesh-proxy"}
            ]}
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "Server",
            "metadata": {"name": "orders-http", "namespace": "shop"},
            "spec": {"selector": {"app": "orders"}, "port": "http", "protocol": "HTTP/1"}
        }))
        .unwrap();
    let policy: serde_json::Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(SHOP_POLICY).unwrap())
            .unwrap();
    server.upsert(policy.clone()).unwrap();

    let ctl = mesh_controller::start_with(RunArgs::for_tests(None), Some(server.client().await))
        .await
        .expect("controller starts");
    wait_ready(&ctl.index).await;
    let mut s = watch(ctl.grpc_addr, "ns:shop/pod:orders-0").await;
    let p = next_until(&mut s, |p| p.port(8080).authorization.rules().len() == 2).await;
    assert_eq!(p.port(8080).server, "shop/orders-http");
    assert_eq!(
        p.port(8080).tls,
        InboundTls::Strict,
        "from the Namespace's annotation"
    );
    assert_eq!(p.default_port.tls, InboundTls::Strict);
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        p.port(8080)
            .authorization
            .check_request(&client(Some(&web)), &req("POST", "/api/orders")),
        Verdict::Allow
    );

    // The leader writes the Accepted condition on the object.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let obj = server.object(
            "mesh.dev/v1alpha1",
            "authorizationpolicies",
            Some("shop"),
            "orders-api",
        );
        let accepted = obj.as_ref().and_then(|o| {
            o.pointer("/status/conditions/0/status")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
        if accepted.as_deref() == Some("True") {
            break;
        }
        assert!(Instant::now() < deadline, "no Accepted condition: {obj:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A live edit narrowing the policy reaches the stream.
    let mut narrowed = policy;
    narrowed["spec"]["rules"] = json!([{
        "name": "web-only",
        "clients": {"serviceAccounts": [{"name": "web"}]}
    }]);
    server.upsert(narrowed).unwrap();
    let p = next_until(&mut s, |p| p.port(8080).authorization.rules().len() == 1).await;
    let batch = id("spiffe://cluster.local/ns/shop/sa/batch");
    assert!(!p
        .port(8080)
        .authorization
        .check_connection(&client(Some(&batch)))
        .passes());
    assert_eq!(
        p.port(8080)
            .authorization
            .check_connection(&client(Some(&web))),
        Verdict::Allow
    );
    ctl.shutdown();
}
