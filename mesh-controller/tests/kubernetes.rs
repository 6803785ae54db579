//! The Kubernetes backend against the fake API server (`mesh-fake-kube`): real kube-rs
//! watches over HTTP, the real index and gRPC streams, status written back by the leader.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mesh_controller::RunArgs;
use mesh_fake_kube::FakeApiServer;
use mesh_proto::v1::destination_update::Update;
use serde_json::{json, Value};
use support::*;

/// Namespaces `shop` (the test objects) and `mesh-system` (the Lease), and the mesh's CRDs.
async fn install_crds(server: &FakeApiServer) {
    for ns in ["shop", "mesh-system"] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let api: Api<CustomResourceDefinition> = Api::all(server.client().await);
    for crd in mesh_crds::crds() {
        api.create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
    }
}

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port, "targetPort": 8080}]}
    })
}

fn slice(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true},
                "zone": "zone-a",
                "targetRef": {"kind": "Pod", "name": format!("{service}-{i}"), "namespace": "shop"}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

fn pod(name: &str, sa: &str, meshed: bool) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "app"})];
    if meshed {
        containers.push(json!({"name": "mesh-proxy", "image": "mesh-proxy"}));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": sa, "containers": containers}
    })
}

fn route(name: &str, weights: (i64, Value)) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{"backendRefs": [
                {"name": "web-v1", "port": 80, "weight": weights.0},
                {"name": "web-v2", "port": 80, "weight": weights.1}
            ]}]
        }
    })
}

async fn start_controller(server: &FakeApiServer) -> mesh_controller::Running {
    let ctl = mesh_controller::start_with(RunArgs::for_tests(None), Some(server.client().await))
        .await
        .expect("controller starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctl.index.is_ready() {
        assert!(Instant::now() < deadline, "controller not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctl
}

fn backends(update: &Update) -> Vec<(String, u32)> {
    let profile = match update {
        Update::State(s) => s.profile.clone().unwrap(),
        Update::Profile(p) => p.clone(),
        other => panic!("expected a profile, got {other:?}"),
    };
    profile
        .routes
        .iter()
        .flat_map(|r| r.backends.iter().map(|b| (b.authority.clone(), b.weight)))
        .collect()
}

async fn wait_status(
    server: &FakeApiServer,
    api_version: &str,
    plural: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(obj) = server.object(api_version, plural, Some("shop"), name) {
            if check(&obj) {
                return obj;
            }
            if Instant::now() > deadline {
                panic!("status of {plural}/{name} never matched: {obj:#}");
            }
        }
        assert!(Instant::now() < deadline, "{plural}/{name} missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The route once our controller has written its status.
async fn route_status(server: &FakeApiServer, name: &str) -> Value {
    wait_status(
        server,
        "gateway.networking.k8s.io/v1",
        "httproutes",
        name,
        |o| route_condition(o, "Accepted").is_some(),
    )
    .await
}

fn route_condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "mesh.dev/controller")?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_scale_and_route_changes_reach_the_stream() {
    let server = FakeApiServer::start();
    install_crds(&server).await;
    server.upsert(service("web", 80)).unwrap();
    server.upsert(pod("web-0", "web-sa", true)).unwrap();
    server.upsert(pod("web-1", "web-sa", false)).unwrap();
    server
        .upsert(slice("web-abc", "web", &["10.0.0.1", "10.0.0.2"]))
        .unwrap();
    let ctl = start_controller(&server).await;

    let mut s = destination(ctl.grpc_addr, "web.shop.svc.cluster.local:80").await;
    match next(&mut s).await {
        Update::State(st) => {
            assert_eq!(st.endpoints.len(), 2);
            let e0 = &st.endpoints[0];
            assert_eq!(e0.address.as_ref().unwrap().port, 8080);
            assert_eq!(e0.zone, "zone-a");
            assert_eq!(e0.identity, "spiffe://cluster.local/ns/shop/sa/web-sa");
            assert!(
                e0.hint.as_ref().is_some_and(|h| h.kind.is_some()),
                "web-0 is meshed"
            );
            assert!(
                st.endpoints[1]
                    .hint
                    .as_ref()
                    .is_none_or(|h| h.kind.is_none()),
                "web-1 is not"
            );
        }
        other => panic!("expected the state, got {other:?}"),
    }
    // The cluster IP resolves too.
    let mut by_ip = destination(ctl.grpc_addr, "10.96.0.10:80").await;
    assert!(matches!(next(&mut by_ip).await, Update::State(_)));

    // Scale up: a second slice appears.
    server
        .upsert(slice("web-def", "web", &["10.0.0.3"]))
        .unwrap();
    match next(&mut s).await {
        Update::Add(a) => assert_eq!(a.endpoints.len(), 1),
        other => panic!("expected an add, got {other:?}"),
    }
    // Scale down: one endpoint turns not ready, then a slice goes away.
    let mut one = slice("web-abc", "web", &["10.0.0.1", "10.0.0.2"]);
    one["endpoints"][1]["conditions"]["ready"] = json!(false);
    server.upsert(one).unwrap();
    match next(&mut s).await {
        Update::Remove(r) => assert_eq!(r.addresses.len(), 1),
        other => panic!("expected a remove, got {other:?}"),
    }
    server
        .remove(
            "discovery.k8s.io/v1",
            "endpointslices",
            Some("shop"),
            "web-def",
        )
        .unwrap();
    assert!(matches!(next(&mut s).await, Update::Remove(_)));

    // A route splits traffic; a weight change reaches the stream.
    server.upsert(service("web-v1", 80)).unwrap();
    server.upsert(service("web-v2", 80)).unwrap();
    server.upsert(route("split", (90, json!(10)))).unwrap();
    let u = next(&mut s).await;
    assert_eq!(
        backends(&u),
        vec![
            ("web-v1.shop.svc.cluster.local:80".to_string(), 90),
            ("web-v2.shop.svc.cluster.local:80".to_string(), 10)
        ]
    );
    let routes: Api<gateway_api::httproutes::HttpRoute> =
        Api::namespaced(server.client().await, "shop");
    routes
        .patch(
            "split",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [{"backendRefs": [
                {"name": "web-v1", "port": 80, "weight": 0},
                {"name": "web-v2", "port": 80, "weight": 100}
            ]}]}})),
        )
        .await
        .unwrap();
    let u = next(&mut s).await;
    assert_eq!(backends(&u)[1].1, 100);

    // The leader wrote the route's status.
    let obj = route_status(&server, "split").await;
    assert_eq!(
        route_condition(&obj, "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        route_condition(&obj, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into()))
    );
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_reported_and_do_not_disturb_the_rest() {
    let server = FakeApiServer::start();
    install_crds(&server).await;
    for name in ["web", "web-v1", "web-v2"] {
        server.upsert(service(name, 80)).unwrap();
    }
    server.upsert(route("good", (50, json!(50)))).unwrap();
    // Unsupported filter: the route is valid Gateway API but cannot be honoured.
    let mut unsupported = route("mirror", (1, json!(1)));
    unsupported["spec"]["rules"][0]["filters"] = json!([{
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "web-v2", "port": 80}}
    }]);
    server.upsert(unsupported).unwrap();
    // Malformed: a string where an integer belongs (stored as is by the fake server, as a
    // real one would if validation were off). It must be skipped, not stall the watch.
    server
        .upsert(route("malformed", (1, json!("lots"))))
        .unwrap();
    // A policy with a bad duration (which the CRD's schema refuses today: stored as if from
    // before it did), and one whose target does not exist.
    server
        .upsert_unvalidated(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendPolicy",
            "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "web"}, "timeout": "soon"}
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendPolicy",
            "metadata": {"name": "orphan", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "nope"}, "loadBalancer": "RoundRobin"}
        }))
        .unwrap();
    let ctl = start_controller(&server).await;

    let mut s = destination(ctl.grpc_addr, "web.shop:80").await;
    let u = next(&mut s).await;
    assert_eq!(backends(&u).len(), 2, "only the good route applies: {u:?}");

    let mirror = route_status(&server, "mirror").await;
    let (status, reason) = route_condition(&mirror, "Accepted").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedValue")
    );
    let good = route_status(&server, "good").await;
    assert_eq!(route_condition(&good, "Accepted").unwrap().0, "True");

    let cond = |o: &Value| -> Option<(String, String, String)> {
        let c = o["status"]["conditions"].as_array()?.first()?.clone();
        Some((
            c["status"].as_str()?.into(),
            c["reason"].as_str()?.into(),
            c["message"].as_str()?.into(),
        ))
    };
    let bad = wait_status(
        &server,
        "mesh.dev/v1alpha1",
        "backendpolicies",
        "bad",
        |o| cond(o).is_some(),
    )
    .await;
    let (st, reason, msg) = cond(&bad).unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(msg.contains("spec.timeout"), "{msg}");
    let orphan = wait_status(
        &server,
        "mesh.dev/v1alpha1",
        "backendpolicies",
        "orphan",
        |o| cond(o).is_some(),
    )
    .await;
    assert_eq!(cond(&orphan).unwrap().1, "TargetNotFound");

    // The malformed route was counted and the watch goes on: a later change still arrives.
    let metrics = http_get(ctl.admin_addr, "localhost", "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("mesh_controller_watch_errors_total{kind=\"HTTPRoute\"} 1"),
        "{metrics}"
    );
    server.upsert(route("good", (30, json!(70)))).unwrap();
    let u = next(&mut s).await;
    assert_eq!(backends(&u)[1].1, 70);
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_the_connection_drops_and_relist_after_expiry() {
    let server = FakeApiServer::start();
    install_crds(&server).await;
    server.upsert(service("web", 80)).unwrap();
    server
        .upsert(slice("web-abc", "web", &["10.0.0.1"]))
        .unwrap();
    let ctl = start_controller(&server).await;
    let mut s = destination(ctl.grpc_addr, "web.shop:80").await;
    assert!(matches!(next(&mut s).await, Update::State(_)));

    // Wait for the slice watch to be open, then drop every watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.open_watches() < 8 {
        assert!(Instant::now() < deadline, "watches never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.contains("endpointslices") && !r.contains("watch="))
        .count();
    server.drop_watches();
    server
        .upsert(slice("web-def", "web", &["10.0.0.2"]))
        .unwrap();
    assert!(matches!(next(&mut s).await, Update::Add(_)));
    let requests = server.requests();
    let lists_after = requests
        .iter()
        .filter(|r| r.contains("endpointslices") && !r.contains("watch="))
        .count();
    assert_eq!(lists_before, lists_after, "resumed without listing again");
    let resumed = requests
        .iter()
        .filter(|r| {
            r.contains("endpointslices") && r.contains("watch=") && r.contains("resourceVersion=")
        })
        .count();
    assert!(
        resumed >= 2,
        "the watch resumed from a resourceVersion: {requests:#?}"
    );

    // History compacted while disconnected: 410, list again, converge (the delete that
    // happened meanwhile is seen through the new list).
    server.compact();
    server.drop_watches();
    server
        .remove(
            "discovery.k8s.io/v1",
            "endpointslices",
            Some("shop"),
            "web-abc",
        )
        .unwrap();
    server.compact();
    match next(&mut s).await {
        Update::Remove(r) => assert_eq!(r.addresses.len(), 1),
        other => panic!("expected a remove, got {other:?}"),
    }
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controller_binaries_serve_side_by_side_and_one_leads() {
    let server = FakeApiServer::start();
    install_crds(&server).await;
    server.upsert(service("web", 80)).unwrap();
    server
        .upsert(slice("web-abc", "web", &["10.0.0.1"]))
        .unwrap();
    server.upsert(service("web-v1", 80)).unwrap();
    server.upsert(service("web-v2", 80)).unwrap();
    server.upsert(route("split", (90, json!(10)))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let a = Controller::start_kubernetes(&kubeconfig, "replica-a");
    let b = Controller::start_kubernetes(&kubeconfig, "replica-b");
    a.ready().await;
    b.ready().await;
    // Both serve proxies from their own watches.
    for ctl in [&a, &b] {
        let mut s = destination(ctl.grpc, "web.shop.svc.cluster.local:80").await;
        assert!(matches!(next(&mut s).await, Update::State(st) if st.endpoints.len() == 1));
    }
    // One of them holds the Lease and writes status.
    let obj = route_status(&server, "split").await;
    assert_eq!(route_condition(&obj, "Accepted").unwrap().0, "True");
    let lease = server
        .object(
            "coordination.k8s.io/v1",
            "leases",
            Some("mesh-system"),
            "mesh-controller",
        )
        .expect("the leader took the Lease");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        holder == "replica-a" || holder == "replica-b",
        "holder {holder}"
    );
    // Only the leader patched the route's status.
    let patches = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH") && r.contains("httproutes/split/status"))
        .count();
    assert!(patches >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_named_container_port_makes_the_endpoints_opaque() {
    let server = FakeApiServer::start();
    install_crds(&server).await;
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
            "spec": {"containers": [
                {"name": "mysql", "image": "mariadb", "ports": [{"name": "mysql", "containerPort": 13306}]},
                {"name": "mesh-proxy", "image": "mesh-proxy"}
            ]}
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "db"},
                     "ports": [{"name": "mysql", "port": 3306, "targetPort": "mysql"}]}
        }))
        .unwrap();
    // As the EndpointSlice controller writes it: the targetPort resolved to the Pod's port.
    server
        .upsert(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "shop"}}],
            "ports": [{"name": "mysql", "port": 13306, "protocol": "TCP"}]
        }))
        .unwrap();
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "Server",
            "metadata": {"name": "mysql", "namespace": "shop"},
            "spec": {"selector": {"app": "db"}, "port": "mysql", "protocol": "Opaque"}
        }))
        .unwrap();
    let ctl = start_controller(&server).await;

    let opaque = mesh_proto::v1::Protocol::Opaque as i32;
    let mut s = destination(ctl.grpc_addr, "db.shop.svc.cluster.local:3306").await;
    match next(&mut s).await {
        Update::State(st) => {
            assert_eq!(st.endpoints.len(), 1);
            assert_eq!(st.endpoints[0].address.as_ref().unwrap().port, 13306);
            assert_eq!(st.endpoints[0].protocol, opaque);
        }
        other => panic!("expected the state, got {other:?}"),
    }
    // The server side agrees, port by port and for the whole workload.
    let mut client =
        mesh_proto::v1::inbound_client::InboundClient::connect(format!("http://{}", ctl.grpc_addr))
            .await
            .unwrap();
    let mut w = client
        .watch_workload(mesh_proto::v1::InboundWorkload {
            workload: "ns:shop/pod:db-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = w.message().await.unwrap().unwrap();
    assert_eq!(first.ports.len(), 1);
    assert_eq!(first.ports[&13306].protocol, opaque);
    assert_eq!(first.ports[&13306].server, "shop/mysql");

    // The Server goes: the endpoint is re-sent, to be detected.
    server
        .remove("mesh.dev/v1alpha1", "servers", Some("shop"), "mysql")
        .unwrap();
    match next(&mut s).await {
        Update::Add(a) => {
            assert_eq!(a.endpoints.len(), 1);
            assert_eq!(
                a.endpoints[0].protocol,
                mesh_proto::v1::Protocol::Detect as i32
            );
        }
        other => panic!("expected an add, got {other:?}"),
    }
    ctl.shutdown();
}
