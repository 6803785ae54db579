//! The admission webhook over real HTTPS: a TLS client that trusts only the webhook's CA
//! posts real AdmissionReviews; the patch applied to the pod must equal
//! `meshctl inject --manual` (the library) of the same pod. Also: pods that did not opt in,
//! malformed and oversized bodies, a serving certificate replaced in its Secret, metrics,
//! and injection defaults read from a watched ConfigMap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::Api;
use mesh_controller::args::{RunArgs, SecretRef};
use mesh_controller::webhook::args::WebhookAddr;
use mesh_fake_kube::FakeApiServer;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "mesh-controller.mesh-system.svc";

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A serving certificate for the webhook's Service name: (cert PEM, key PEM, DER).
    fn serving(&self) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec![HOST.to_string(), "127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn secret(cert: &str, key: &str) -> Value {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "mesh-webhook-tls", "namespace": "mesh-system"},
        "data": {"tls.crt": b(cert), "tls.key": b(key)}
    })
}

fn pod(ns: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": ns, "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]
        }
    })
}

fn review(object: &Value, ns: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0b7a8c3e-3f1d-4c8e-9a51-5f0b1c2d3e4f",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object, "dryRun": false
        }
    })
}

/// One HTTPS request to the webhook: status, body and the certificate the server showed.
async fn post(
    addr: SocketAddr,
    ca: &Ca,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>, Vec<u8>) {
    try_post(addr, ca, content_type, body).await.unwrap()
}

async fn try_post(
    addr: SocketAddr,
    ca: &Ca,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>, Vec<u8>), String> {
    post_as(HOST, addr, ca, content_type, body).await
}

/// [`try_post`], verifying the server's certificate for `name` (a DNS name or an IP).
async fn post_as(
    name: &str,
    addr: SocketAddr,
    ca: &Ca,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS handshake with the webhook, verifying its name: {e}"))?;
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/inject")
        .header("content-type", content_type)
        .header("host", HOST)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Ok((status, body, peer))
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The `webhook` part of the controller's `/status`.
async fn webhook_status(admin: SocketAddr) -> Value {
    let rsp = admin_get(admin, "/status").await;
    let body = rsp.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str::<Value>(body).unwrap()["webhook"].clone()
}

/// Polls `/status` until `check` holds for the webhook's part (up to 15 s).
async fn wait_status(admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = webhook_status(admin).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}; /status webhook: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts a not-opted-in pod until the server shows `der` (up to 15 s).
async fn wait_for_cert(addr: SocketAddr, ca: &Ca, der: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, peer) = post(
            addr,
            ca,
            "application/json",
            serde_json::to_vec(&review(&pod("plain"), "plain")).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        if peer == der {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decodes the response's base64 JSON patch and applies it to `pod`.
fn apply_patch(response: &Value, pod: &Value) -> Value {
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_what_meshctl_inject_manual_writes() {
    let server = FakeApiServer::start();
    for (ns, annotations) in [
        (
            "shop",
            json!({"mesh.dev/inject": "enabled", "mesh.dev/proxy-log-level": "debug"}),
        ),
        ("plain", json!({})),
        ("mesh-system", json!({})),
    ] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "annotations": annotations}}))
            .unwrap();
    }
    let kube = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for crd in mesh_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ca = Ca::new();

    let mut args = RunArgs::for_tests(None);
    args.trust_domain = "example.org".into();
    args.webhook.webhook_addr = WebhookAddr(Some("127.0.0.1:0".parse().unwrap()));
    args.webhook.inject.inject_proxy_image = "registry.example/mesh-proxy:test".into();
    let settings = args.webhook.inject.settings(&args.trust_domain);
    assert_eq!(settings.trust_domain, "example.org");
    let running = mesh_controller::start_with(args, Some(kube)).await.unwrap();
    let addr = running.webhook_addr.expect("the webhook listens");

    // No Secret yet: handshakes are refused and /status says what to create.
    let s = wait_status(running.admin_addr, "the missing Secret is reported", |s| {
        s["problem"]
            .as_str()
            .is_some_and(|p| p.contains("mesh-system/mesh-webhook-tls does not exist"))
    })
    .await;
    assert_eq!(s["serving"], false);
    assert_eq!(
        s["certificateSource"],
        "Secret mesh-system/mesh-webhook-tls"
    );
    let body = serde_json::to_vec(&review(&pod("shop"), "shop")).unwrap();
    let e = try_post(addr, &ca, "application/json", body.clone())
        .await
        .unwrap_err();
    assert!(e.contains("TLS handshake"), "{e}");

    let (cert_a, key_a, der_a) = ca.serving();
    server.upsert(secret(&cert_a, &key_a)).unwrap();

    // The expected pod: the library's manual injection with the namespace's annotations.
    let mut expected: mesh_inject::Doc = serde_yaml_ng::to_value(pod("shop")).unwrap();
    let ctx = mesh_inject::Context {
        settings,
        namespaces: [(
            "shop".to_string(),
            [
                ("mesh.dev/inject".to_string(), "enabled".to_string()),
                ("mesh.dev/proxy-log-level".to_string(), "debug".to_string()),
            ]
            .into(),
        )]
        .into(),
        ..Default::default()
    };
    mesh_inject::inject(&mut expected, &ctx, mesh_inject::Mode::Manual).unwrap();
    let expected = serde_json::to_value(&expected).unwrap();

    // The certificate and the namespace reach the controller within a few seconds; until
    // then handshakes fail or the pod is not injected yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rsp = loop {
        let last = match try_post(addr, &ca, "application/json", body.clone()).await {
            Ok(r) => {
                let v: Value = serde_json::from_slice(&r.1).unwrap_or(Value::Null);
                if v["response"]["patch"].is_string() {
                    break (r, v);
                }
                String::from_utf8_lossy(&r.1).into_owned()
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "the webhook never injected the pod; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ((status, _, peer), v) = rsp;
    assert_eq!(status, 200);
    assert_eq!(peer, der_a, "the webhook serves the Secret's certificate");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0b7a8c3e-3f1d-4c8e-9a51-5f0b1c2d3e4f");
    let patched = apply_patch(&v["response"], &pod("shop"));
    assert_eq!(
        patched, expected,
        "the webhook's pod differs from meshctl inject --manual"
    );
    let proxy = &patched["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "mesh-proxy");
    assert_eq!(
        proxy["image"], "registry.example/mesh-proxy:test",
        "the webhook's settings apply"
    );
    let env = serde_json::to_string(&proxy["env"]).unwrap();
    assert!(
        env.contains("spiffe://example.org/"),
        "injected proxies use the controller's trust domain: {env}"
    );
    let s = webhook_status(running.admin_addr).await;
    assert_eq!(s["serving"], true, "{s}");
    assert!(s["problem"].is_null(), "{s}");

    // The certificate also names 127.0.0.1, verified as an IP address.
    let (status, _, _) = post_as("127.0.0.1", addr, &ca, "application/json", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Not opted in: admitted without a patch. Already injected: no patch either. A pod that
    // opts out while its namespace opts in: no patch.
    let mut disabled = pod("shop");
    disabled["metadata"]["annotations"] = json!({"mesh.dev/inject": "disabled"});
    for (object, ns) in [
        (pod("plain"), "plain"),
        (expected.clone(), "shop"),
        (disabled, "shop"),
    ] {
        let (status, body, _) = post(
            addr,
            &ca,
            "application/json",
            serde_json::to_vec(&review(&object, ns)).unwrap(),
        )
        .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"]["patch"].is_null(), "{v}");
        assert!(v["response"]["patchType"].is_null(), "{v}");
    }

    // A pod that cannot be injected is admitted, with a warning naming the problem; so is
    // an object that is not a Pod.
    let mut bad = pod("shop");
    bad["metadata"]["annotations"] = json!({"mesh.dev/proxy-cpu-limit": "lots"});
    let mut not_a_pod = review(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"}}),
        "shop",
    );
    not_a_pod["request"]["kind"]["kind"] = json!("ConfigMap");
    for (body, needle) in [
        (review(&bad, "shop"), "mesh.dev/proxy-cpu-limit"),
        (not_a_pod, "ConfigMap"),
    ] {
        let (status, body, _) = post(
            addr,
            &ca,
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"]["patch"].is_null());
        let warning = v["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains(needle), "{needle}: {v}");
    }

    // Malformed, wrong type, oversized: clear refusals, and the webhook keeps serving.
    let (status, body, _) = post(addr, &ca, "application/json", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not an admission.k8s.io/v1 AdmissionReview"));
    let (status, body, _) = post(
        addr,
        &ca,
        "application/json",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = post(addr, &ca, "text/plain", b"{}".to_vec()).await;
    assert_eq!(status, 415);
    let (status, body, _) = post(addr, &ca, "application/json", vec![b' '; 4 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = post(
        addr,
        &ca,
        "application/json",
        serde_json::to_vec(&review(&pod("plain"), "plain")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "still serving after the refusals");

    // A new certificate in the Secret is served to new connections.
    let (cert_b, key_b, der_b) = ca.serving();
    server.upsert(secret(&cert_b, &key_b)).unwrap();
    wait_for_cert(addr, &ca, &der_b).await;

    // A broken one (the key of another certificate) is refused; the last good one stays.
    let (cert_c, _, _) = ca.serving();
    server.upsert(secret(&cert_c, &key_b)).unwrap();
    let s = wait_status(running.admin_addr, "the broken Secret is reported", |s| {
        s["problem"]
            .as_str()
            .is_some_and(|p| p.contains("does not fit"))
    })
    .await;
    assert_eq!(s["serving"], true);
    let (_, _, peer) = post(
        addr,
        &ca,
        "application/json",
        serde_json::to_vec(&review(&pod("plain"), "plain")).unwrap(),
    )
    .await;
    assert_eq!(peer, der_b, "the last good certificate stays in use");

    let m = admin_get(running.admin_addr, "/metrics").await;
    for outcome in ["injected", "skipped", "error", "rejected"] {
        let line = format!("mesh_controller_webhook_requests_total{{outcome=\"{outcome}\"}}");
        assert!(m.contains(&line), "{line} missing from /metrics:\n{m}");
    }
    let rejected = m
        .lines()
        .find(|l| l.starts_with("mesh_controller_webhook_requests_total{outcome=\"rejected\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert_eq!(
        rejected,
        Some(4.0),
        "malformed, no request, text/plain, too large:\n{m}"
    );
    assert!(m.contains("mesh_controller_webhook_duration_seconds_count"));
    running.shutdown();
}

fn config_map(data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mesh-config", "namespace": "mesh-system"},
        "data": data
    })
}

/// The injection settings of a ConfigMap's data over `flags`, as the library reads them.
fn over(flags: &mesh_inject::Settings, data: &Value) -> mesh_inject::Settings {
    let data: std::collections::BTreeMap<String, String> =
        serde_json::from_value(data.clone()).unwrap();
    flags.with_config_map(&data).unwrap()
}

/// The pod `meshctl inject --manual` writes with `settings` (namespace `shop` opted in).
fn manual(settings: mesh_inject::Settings) -> Value {
    let mut doc: mesh_inject::Doc = serde_yaml_ng::to_value(pod("shop")).unwrap();
    let ctx = mesh_inject::Context {
        settings,
        namespaces: [(
            "shop".to_string(),
            [("mesh.dev/inject".to_string(), "enabled".to_string())].into(),
        )]
        .into(),
        ..Default::default()
    };
    mesh_inject::inject(&mut doc, &ctx, mesh_inject::Mode::Manual).unwrap();
    serde_json::to_value(&doc).unwrap()
}

/// The `mesh-proxy` container of a pod (native or fallback).
fn proxy_of(pod: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .find(|c| c["name"] == "mesh-proxy")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Admits the `shop` pod until the patched pod satisfies `check` (up to 20 s): handshakes
/// fail until the certificate is read, and settings changes take a moment to arrive.
async fn admit_until(
    addr: SocketAddr,
    ca: &Ca,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let body = serde_json::to_vec(&review(&pod("shop"), "shop")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match try_post(addr, ca, "application/json", body.clone()).await {
            Ok((_, rsp, _)) => {
                let v: Value = serde_json::from_slice(&rsp).unwrap_or(Value::Null);
                if v["response"]["patch"].is_string() {
                    let patched = apply_patch(&v["response"], &pod("shop"));
                    if check(&patched) {
                        return patched;
                    }
                    serde_json::to_string(&proxy_of(&patched)).unwrap()
                } else {
                    String::from_utf8_lossy(&rsp).into_owned()
                }
            }
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "{what}; last answer: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--inject-config`: the webhook injects with the ConfigMap's settings over the flags',
/// follows its changes, keeps the last good settings when a value is bad, and falls back to
/// the flags while it does not exist; `/status` says which is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_defaults_come_from_the_watched_config_map() {
    let server = FakeApiServer::start();
    for (ns, annotations) in [
        ("shop", json!({"mesh.dev/inject": "enabled"})),
        ("mesh-system", json!({})),
    ] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "annotations": annotations}}))
            .unwrap();
    }
    let kube = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for crd in mesh_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ca = Ca::new();
    let (cert, key, _) = ca.serving();
    server.upsert(secret(&cert, &key)).unwrap();
    let first = json!({
        "version": "0.1.0",
        "values.yaml": "proxy:\n  logLevel: debug\n",
        "proxy-image": "registry.example/mesh-proxy:cm1",
        "controller-addr": "http://mesh-controller.mesh-system.svc.cluster.local:8086",
        "native-sidecar": "true",
        "init-container": "false",
        "proxy-log-level": "debug",
        "proxy-cpu-request": "50m",
        "proxy-memory-request": "32Mi",
        "proxy-cpu-limit": "1",
        "proxy-memory-limit": "128Mi"
    });
    server.upsert(config_map(first.clone())).unwrap();

    let mut args = RunArgs::for_tests(None);
    args.webhook.webhook_addr = WebhookAddr(Some("127.0.0.1:0".parse().unwrap()));
    args.webhook.inject.inject_proxy_image = "registry.example/mesh-proxy:flags".into();
    args.webhook.inject.inject_config = Some(SecretRef {
        namespace: "mesh-system".into(),
        name: "mesh-config".into(),
    });
    let flags = args.webhook.inject.settings(&args.trust_domain);
    let running = mesh_controller::start_with(args, Some(kube)).await.unwrap();
    let addr = running.webhook_addr.expect("the webhook listens");
    let admin = running.admin_addr;

    // The ConfigMap's image, log level, resources and init-container setting.
    let patched = admit_until(addr, &ca, "the ConfigMap's settings never applied", |p| {
        proxy_of(p)["image"] == "registry.example/mesh-proxy:cm1"
    })
    .await;
    assert_eq!(patched, manual(over(&flags, &first)));
    let proxy = proxy_of(&patched);
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}})
    );
    let env = serde_json::to_string(&proxy["env"]).unwrap();
    assert!(
        env.contains(r#"{"name":"MESH_PROXY_LOG","value":"debug"}"#),
        "{env}"
    );
    assert!(env.contains("MESH_PROXY_WORKER_THREADS"), "{env}");
    let names: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["mesh-proxy"],
        "init-container: false leaves out mesh-init"
    );
    let s = wait_status(admin, "the ConfigMap is in use", |s| {
        s["injection"]["inUse"] == "configMap"
    })
    .await;
    assert_eq!(s["injection"]["configMap"], "mesh-system/mesh-config");
    assert!(s["injection"]["problem"].is_null(), "{s}");
    assert_eq!(
        s["injection"]["settings"]["proxy-image"],
        "registry.example/mesh-proxy:cm1"
    );
    let first_version = s["injection"]["resourceVersion"].clone();
    assert!(first_version.is_string(), "{s}");

    // A change applies to the next admission; a missing key keeps the flag's value, ""
    // removes a limit.
    let second = json!({
        "proxy-image": "registry.example/mesh-proxy:cm2",
        "proxy-log-level": "warn,mesh_proxy=info",
        "proxy-cpu-limit": "",
        "native-sidecar": "false"
    });
    server.upsert(config_map(second.clone())).unwrap();
    let patched = admit_until(addr, &ca, "the changed ConfigMap never applied", |p| {
        proxy_of(p)["image"] == "registry.example/mesh-proxy:cm2"
    })
    .await;
    assert_eq!(patched, manual(over(&flags, &second)));
    let proxy = proxy_of(&patched);
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "10m", "memory": "20Mi"}}),
        "the flags' requests and no limits: {proxy}"
    );
    assert_eq!(patched["spec"]["containers"][0]["name"], "mesh-proxy");
    let env = serde_json::to_string(&proxy["env"]).unwrap();
    assert!(!env.contains("MESH_PROXY_WORKER_THREADS"), "{env}");
    assert!(env.contains("warn,mesh_proxy=info"), "{env}");

    // A bad value refuses the whole new ConfigMap: the previous settings stay.
    server
        .upsert(config_map(json!({
            "proxy-image": "registry.example/mesh-proxy:cm3",
            "native-sidecar": "maybe",
            "proxy-memory-request": "lots"
        })))
        .unwrap();
    let s = wait_status(admin, "the bad ConfigMap is reported", |s| {
        s["injection"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("native-sidecar: 'maybe'"))
    })
    .await;
    let problem = s["injection"]["problem"].as_str().unwrap();
    assert!(
        problem.contains("proxy-memory-request: 'lots'"),
        "{problem}"
    );
    assert!(problem.contains("stay in use"), "{problem}");
    assert_eq!(s["injection"]["inUse"], "configMap");
    assert_eq!(
        s["injection"]["settings"]["proxy-image"],
        "registry.example/mesh-proxy:cm2"
    );
    assert_ne!(s["injection"]["resourceVersion"], first_version);
    let patched = admit_until(addr, &ca, "the webhook still injects", |_| true).await;
    assert_eq!(
        proxy_of(&patched)["image"],
        "registry.example/mesh-proxy:cm2",
        "the last good settings stay in use"
    );

    // Deleted: the flags' settings, and /status says the ConfigMap is missing.
    server
        .remove("v1", "configmaps", Some("mesh-system"), "mesh-config")
        .unwrap();
    let patched = admit_until(addr, &ca, "the flags never applied", |p| {
        proxy_of(p)["image"] == "registry.example/mesh-proxy:flags"
    })
    .await;
    assert_eq!(patched, manual(flags.clone()));
    let s = wait_status(admin, "the missing ConfigMap is reported", |s| {
        s["injection"]["inUse"] == "missing"
    })
    .await;
    let problem = s["injection"]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("ConfigMap mesh-system/mesh-config does not exist"),
        "{s}"
    );
    running.shutdown();
}

/// Bad `--inject-*` values and `--inject-config` in local mode stop the controller at start,
/// naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_injection_flags_stop_the_start() {
    let config = tempfile::tempdir().unwrap();
    let args = || {
        let mut a = RunArgs::for_tests(Some(config.path().to_path_buf()));
        a.webhook.webhook_addr = WebhookAddr(Some("127.0.0.1:0".parse().unwrap()));
        a
    };
    let mut bad = args();
    bad.webhook.inject.inject_proxy_log_level = "info debug".into();
    bad.webhook.inject.inject_proxy_cpu_request = "2".into();
    bad.webhook.inject.inject_proxy_cpu_limit = Some("1".into());
    let e = mesh_controller::start(bad)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains(
            "--inject-proxy-log-level (MESH_CONTROLLER_INJECT_PROXY_LOG_LEVEL): 'info debug'"
        ),
        "{e}"
    );
    assert!(e.contains("--inject-proxy-cpu-request"), "{e}");
    let mut local = args();
    local.webhook.inject.inject_config = Some(SecretRef {
        namespace: "mesh-system".into(),
        name: "mesh-config".into(),
    });
    let e = mesh_controller::start(local)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("--inject-config mesh-system/mesh-config"), "{e}");
    assert!(e.contains("local mode"), "{e}");
}

/// Local mode with certificate files: served from the files, replaced when they change, a
/// broken file keeps the last good certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_when_they_change() {
    let config = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert_file = certs.path().join("tls.crt");
    let key_file = certs.path().join("tls.key");
    let ca = Ca::new();
    let (cert_a, key_a, der_a) = ca.serving();
    std::fs::write(&cert_file, &cert_a).unwrap();
    std::fs::write(&key_file, &key_a).unwrap();

    let mut args = RunArgs::for_tests(Some(config.path().to_path_buf()));
    args.webhook.webhook_addr = WebhookAddr(Some("127.0.0.1:0".parse().unwrap()));
    args.webhook.webhook_cert_file = Some(cert_file.clone());
    args.webhook.webhook_key_file = Some(key_file.clone());
    let settings = args.webhook.inject.settings(&args.trust_domain);
    let running = mesh_controller::start(args).await.unwrap();
    let addr = running.webhook_addr.expect("the webhook listens");

    // A pod that opts in itself (local mode has no Namespace here).
    let mut opted = pod("default");
    opted["metadata"]["annotations"] = json!({"mesh.dev/inject": "enabled"});
    let body = serde_json::to_vec(&review(&opted, "default")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (status, rsp, peer) = loop {
        match try_post(addr, &ca, "application/json", body.clone()).await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200);
    assert_eq!(peer, der_a);
    let v: Value = serde_json::from_slice(&rsp).unwrap();
    let mut expected: mesh_inject::Doc = serde_yaml_ng::to_value(&opted).unwrap();
    let ctx = mesh_inject::Context {
        settings,
        ..Default::default()
    };
    mesh_inject::inject(&mut expected, &ctx, mesh_inject::Mode::Manual).unwrap();
    assert_eq!(
        apply_patch(&v["response"], &opted),
        serde_json::to_value(&expected).unwrap()
    );

    // Replaced files: the new certificate for new connections.
    let (cert_b, key_b, der_b) = ca.serving();
    std::fs::write(&key_file, &key_b).unwrap();
    std::fs::write(&cert_file, &cert_b).unwrap();
    wait_for_cert(addr, &ca, &der_b).await;

    // A file that is not PEM: reported, and the last good certificate stays.
    std::fs::write(&cert_file, "garbage").unwrap();
    let s = wait_status(running.admin_addr, "the broken file is reported", |s| {
        s["problem"]
            .as_str()
            .is_some_and(|p| p.contains("CERTIFICATE"))
    })
    .await;
    assert_eq!(s["serving"], true);
    let (_, _, peer) = post(addr, &ca, "application/json", body.clone()).await;
    assert_eq!(peer, der_b);
    running.shutdown();
}

/// The MutatingWebhookConfiguration in docs/controller.md is the library's.
#[test]
fn the_documented_webhook_configuration_is_the_librarys() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/controller.md"),
    )
    .unwrap();
    let block = doc
        .split("```yaml mutating-webhook-configuration\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/controller.md shows the MutatingWebhookConfiguration");
    let documented: serde_json::Value = serde_yaml_ng::from_str(block).unwrap();
    let library = mesh_inject::webhook_configuration(&mesh_inject::WebhookConfig {
        ca_bundle_pem: Some("PEM".into()),
        ..Default::default()
    });
    let mut library = serde_json::to_value(&library).unwrap();
    library["webhooks"][0]["clientConfig"]["caBundle"] = json!("<base64 of the CA PEM>");
    assert_eq!(documented, library);
}
