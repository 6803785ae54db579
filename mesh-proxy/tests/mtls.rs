//! mTLS and authorization between real proxies over loopback: a fake controller with a
//! real CA (mesh-identity) certifies them, discovery names the server's identity, and the
//! server proxy's workload policy sets the mTLS mode and who may call.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::v1 as pb;
use mesh_proxy::app::Running;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";
const ORDERS_WORKLOAD: &str = "ns:shop/workload:orders";

/// A proxy with `identity`, fed by the controller at `ctrl`, forwarding inbound to `app`.
async fn meshed_proxy(
    ctrl: SocketAddr,
    identity: &str,
    workload: &str,
    app: Option<SocketAddr>,
) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, token_for(identity)).unwrap();
    let mut raw = raw_config();
    raw.controller_addr = Some(format!("http://{ctrl}"));
    raw.workload = Some(workload.into());
    raw.identity = Some(identity.into());
    raw.identity_token_file = Some(token.display().to_string());
    raw.inbound_forward = app.map(|a| a.to_string());
    let proxy = start_proxy(raw).await;
    wait_ready(proxy.admin_addr).await;
    (dir, proxy)
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        if admin_get(admin, "/ready").await.0 == http::StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy did not become ready (no certificate?)");
}

/// The endpoint of a meshed app behind `server` (explicit mode: its inbound listener).
fn meshed_endpoint(app: SocketAddr, server: &Running, identity: &str) -> pb::Endpoint {
    let mut e = endpoint(app);
    e.identity = identity.into();
    e.hint = Some(pb::ProtocolHint {
        kind: Some(pb::protocol_hint::Kind::MeshedH2(
            pb::protocol_hint::MeshedH2 {
                inbound_port: u32::from(server.inbound_addr.port()),
            },
        )),
    });
    e
}

struct Mesh {
    ctrl: Arc<FakeController>,
    _process: ControllerProcess,
    app: Upstream,
    server: Running,
    _dirs: Vec<tempfile::TempDir>,
}

/// A controller with a CA, the orders app behind its proxy, and `orders.shop:80` in
/// discovery pointing at it with the identity `server_identity_in_discovery`.
async fn mesh(lifetime: Duration, server_identity_in_discovery: &str) -> Mesh {
    let ctrl = Arc::new(FakeController::default());
    *ctrl.ca.lock().unwrap() = Some(TestCa::new(lifetime));
    let process = start_controller(ctrl.clone());
    let app = upstream("orders", Behaviour::Ok).await;
    let (dir, server) = meshed_proxy(process.addr, ORDERS, ORDERS_WORKLOAD, Some(app.addr)).await;
    ctrl.set(
        "orders.shop:80",
        state(
            vec![meshed_endpoint(
                app.addr,
                &server,
                server_identity_in_discovery,
            )],
            None,
        ),
    )
    .await;
    Mesh {
        ctrl,
        _process: process,
        app,
        server,
        _dirs: vec![dir],
    }
}

impl Mesh {
    async fn client(&mut self, identity: &str, workload: &str) -> Running {
        let (dir, proxy) = meshed_proxy(self._process.addr, identity, workload, None).await;
        self._dirs.push(dir);
        proxy
    }
}

fn policy(tls: pb::InboundTls, authorization: Option<pb::Authorization>) -> pb::WorkloadPolicy {
    pb::WorkloadPolicy {
        default_port: Some(pb::InboundPolicy {
            server: "shop/orders-http".into(),
            tls: tls as i32,
            authorization,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn route(method: &str, path: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Exact(path.into())),
        }),
        method: method.into(),
        ..Default::default()
    }
}

/// Only `web` may POST /api/orders; every authenticated client may GET /health. Enforced
/// rules replace the default policy; audit rules only report what they would deny.
fn shop_rules(audit: bool) -> pb::Authorization {
    pb::Authorization {
        default_policy: pb::DefaultPolicy::AllUnauthenticated as i32,
        rules: vec![
            pb::AuthorizationRule {
                name: "shop/orders-api/web".into(),
                clients: vec![pb::ClientMatch {
                    kind: Some(pb::client_match::Kind::Identity(WEB.into())),
                }],
                routes: vec![route("POST", "/api/orders")],
                audit,
            },
            pb::AuthorizationRule {
                name: "shop/orders-api/health".into(),
                clients: vec![pb::ClientMatch {
                    kind: Some(pb::client_match::Kind::Authenticated(pb::Empty {})),
                }],
                routes: vec![route("GET", "/health")],
                audit,
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_calls_are_mtls_and_the_app_learns_the_caller() {
    let mut m = mesh(Duration::from_secs(3600), ORDERS).await;
    let web = m.client(WEB, "ns:shop/workload:web").await;
    let client = h1_client();
    // The app cannot claim an identity: its header is replaced by the proxy's.
    let status = get_with_headers(
        &client,
        web.outbound_addr,
        "orders.shop",
        "/api/orders",
        &[("mesh-client-id", "spiffe://cluster.local/ns/x/sa/forged")],
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(m.app.last_headers()["mesh-client-id"], WEB);

    let (_, server_metrics) = admin_get(m.server.admin_addr, "/metrics").await;
    let mtls = format!(
        "mesh_proxy_peer_connections_total{{direction=\"inbound\",peer_id=\"{WEB}\",tls=\"true\"}}"
    );
    assert!(metric(&server_metrics, &mtls) >= 1.0, "{server_metrics}");
    assert!(
        server_metrics.contains(&format!("client_id=\"{WEB}\",server_id=\"{ORDERS}\"")),
        "{server_metrics}"
    );
    let (_, client_metrics) = admin_get(web.admin_addr, "/metrics").await;
    let out = format!(
        "mesh_proxy_peer_connections_total{{direction=\"outbound\",peer_id=\"{ORDERS}\",tls=\"true\"}}"
    );
    assert!(metric(&client_metrics, &out) >= 1.0, "{client_metrics}");
    assert!(
        client_metrics.contains(&format!("client_id=\"{WEB}\",server_id=\"{ORDERS}\"")),
        "{client_metrics}"
    );
    assert!(
        metric(
            &client_metrics,
            "mesh_proxy_identity_certificate_expiry_timestamp_seconds"
        ) > 0.0
    );

    // A plaintext client (outside the mesh) reaches a permissive port without an identity.
    let (status, _) = h2_or_h1_direct(m.server.inbound_addr, "/api/orders").await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(m.app.last_headers().get("mesh-client-id").is_none());
}

/// One plaintext HTTP/1 GET straight to `addr`.
async fn h2_or_h1_direct(addr: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let client = h1_client();
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(format!("http://{addr}{path}").parse().unwrap()),
    )
    .await
    .expect("in time");
    match rsp {
        Ok(r) => {
            let s = r.status();
            let b = r.into_body().collect().await.unwrap().to_bytes();
            (s, String::from_utf8_lossy(&b).into_owned())
        }
        Err(e) => (http::StatusCode::from_u16(599).unwrap(), e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_port_refuses_plaintext_but_serves_meshed_clients() {
    let mut m = mesh(Duration::from_secs(3600), ORDERS).await;
    m.ctrl
        .set_workload_policy(ORDERS_WORKLOAD, policy(pb::InboundTls::Strict, None))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = m.app.hits();
    let (status, _) = h2_or_h1_direct(m.server.inbound_addr, "/").await;
    assert_eq!(
        status.as_u16(),
        599,
        "plaintext must be refused on a strict port"
    );
    assert_eq!(m.app.hits(), hits);
    let (_, metrics) = admin_get(m.server.admin_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "mesh_proxy_tls_failures_total{direction=\"inbound\",reason=\"plaintext_refused\"}"
        ) >= 1.0,
        "{metrics}"
    );

    let web = m.client(WEB, "ns:shop/workload:web").await;
    let a = get(&h1_client(), web.outbound_addr, "orders.shop", "/").await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_is_refused_by_the_client_proxy() {
    // Discovery says the endpoint is `other`; the proxy in front of it proves `orders`.
    let mut m = mesh(Duration::from_secs(3600), OTHER).await;
    let web = m.client(WEB, "ns:shop/workload:web").await;
    let a = get(&h1_client(), web.outbound_addr, "orders.shop", "/").await;
    assert_eq!(a.status, http::StatusCode::BAD_GATEWAY, "{a:?}");
    assert_eq!(m.app.hits(), 0);
    let (_, metrics) = admin_get(web.admin_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "mesh_proxy_tls_failures_total{direction=\"outbound\",reason=\"identity_mismatch\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// Speaks to the server proxy's inbound port as a proxy would, with `certified` as the
/// client certificate (verifying the server against `ca`'s anchors), and sends one
/// HTTP/1 GET for `app_port`. Returns the response's first line, or the error.
async fn raw_meshed_get(
    inbound: SocketAddr,
    ca: &TestCa,
    client_identity: &str,
    certified: Option<Arc<rustls::sign::CertifiedKey>>,
    app_port: u16,
) -> Result<String, String> {
    let creds =
        mesh_identity::tls::Credentials::new(mesh_core::Identity::parse(client_identity).unwrap());
    creds
        .set_bundle(1, ca.anchors.iter().map(|a| a.cert_der().clone()).collect())
        .unwrap();
    if let Some(c) = certified {
        creds.set_certified(c);
    }
    let expected = mesh_core::Identity::parse(ORDERS).unwrap();
    let stream = tokio::net::TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(creds.client_config(&expected));
    let mut tls = connector
        .connect(mesh_identity::tls::server_name(), stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut out = mesh_proxy::tls::encode_header(app_port, pb::Protocol::Http1).to_vec();
    out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
    tls.write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) if buf.is_empty() => Err(format!("read: {e}")),
        _ if buf.is_empty() => Err("closed".into()),
        _ => Ok(String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()),
    }
}

fn certify(
    issuer: &mesh_identity::ca::Issuer,
    identity: &str,
    lifetime: Duration,
) -> Arc<rustls::sign::CertifiedKey> {
    let id = mesh_core::Identity::parse(identity).unwrap();
    let key = mesh_identity::leaf::LeafKey::generate().unwrap();
    let leaf = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), &id, lifetime)
        .unwrap();
    key.certified(
        leaf.cert_der.to_vec(),
        leaf.chain.iter().map(|c| c.to_vec()).collect(),
        &id,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_another_anchor_or_expired_are_refused() {
    let m = mesh(Duration::from_secs(3600), ORDERS).await;
    m.ctrl
        .set_workload_policy(ORDERS_WORKLOAD, policy(pb::InboundTls::Strict, None))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ca = m.ctrl.ca.lock().unwrap().clone().unwrap();
    let port = m.app.addr.port();

    // The harness works: a certificate of this mesh gets an answer.
    let good = certify(&ca.issuer, WEB, Duration::from_secs(600));
    let line = raw_meshed_get(m.server.inbound_addr, &ca, WEB, Some(good), port).await;
    assert_eq!(line.as_deref(), Ok("HTTP/1.1 200 OK"), "{line:?}");
    let hits = m.app.hits();

    // Signed under another trust anchor.
    let rogue = TestCa::new(Duration::from_secs(600));
    let foreign = certify(&rogue.issuer, WEB, Duration::from_secs(600));
    let r = raw_meshed_get(m.server.inbound_addr, &ca, WEB, Some(foreign), port).await;
    assert!(r.is_err(), "a foreign certificate got {r:?}");

    // Expired.
    let short = certify(&ca.issuer, WEB, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = raw_meshed_get(m.server.inbound_addr, &ca, WEB, Some(short), port).await;
    assert!(r.is_err(), "an expired certificate got {r:?}");

    // No certificate at all on a strict port.
    let r = raw_meshed_get(m.server.inbound_addr, &ca, WEB, None, port).await;
    assert!(r.is_err(), "no certificate got {r:?}");
    assert_eq!(m.app.hits(), hits, "nothing refused reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_one_identity_and_denies_another() {
    let mut m = mesh(Duration::from_secs(3600), ORDERS).await;
    m.ctrl
        .set_workload_policy(
            ORDERS_WORKLOAD,
            policy(pb::InboundTls::Permissive, Some(shop_rules(false))),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let web = m.client(WEB, "ns:shop/workload:web").await;
    let other = m.client(OTHER, "ns:shop/workload:other").await;
    let c = h1_client();

    let a = send(
        &c,
        web.outbound_addr,
        "orders.shop",
        "POST",
        "/api/orders",
        "{}",
    )
    .await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    let a = send(
        &c,
        other.outbound_addr,
        "orders.shop",
        "POST",
        "/api/orders",
        "{}",
    )
    .await;
    assert_eq!(a.status, http::StatusCode::FORBIDDEN, "{a:?}");
    let a = get(&c, other.outbound_addr, "orders.shop", "/health").await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    // Plaintext clients are not authenticated: even /health is denied.
    let (status, _) = h2_or_h1_direct(m.server.inbound_addr, "/health").await;
    assert_eq!(status, http::StatusCode::FORBIDDEN);

    // gRPC: PERMISSION_DENIED in a trailers-only response.
    let (status, grpc) = grpc_call(other.outbound_addr, "orders.shop:80").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(grpc.as_deref(), Some("7"));

    let (_, metrics) = admin_get(m.server.admin_addr, "/metrics").await;
    let denied: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("mesh_proxy_authorization_denials_total{")
                && l.contains("action=\"deny\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(denied >= 3.0, "{metrics}");

    // Audit mode: the same request passes and is counted as would-deny. The change is live.
    m.ctrl
        .set_workload_policy(
            ORDERS_WORKLOAD,
            policy(pb::InboundTls::Permissive, Some(shop_rules(true))),
        )
        .await;
    let mut passed = false;
    for _ in 0..40 {
        let a = send(
            &c,
            other.outbound_addr,
            "orders.shop",
            "POST",
            "/api/orders",
            "{}",
        )
        .await;
        if a.status == http::StatusCode::OK {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(passed, "audit mode must let the request pass");
    let (_, metrics) = admin_get(m.server.admin_addr, "/metrics").await;
    assert!(metrics.contains("action=\"would-deny\""), "{metrics}");

    // Enforced again; then a policy the proxy cannot read (a bad CIDR) is rejected and the
    // last good one stays: still denied, never opened.
    m.ctrl
        .set_workload_policy(
            ORDERS_WORKLOAD,
            policy(pb::InboundTls::Permissive, Some(shop_rules(false))),
        )
        .await;
    // Were it accepted, it would let everyone POST.
    let mut bad = shop_rules(false);
    bad.rules[0].clients = vec![
        pb::ClientMatch {
            kind: Some(pb::client_match::Kind::Unauthenticated(pb::Empty {})),
        },
        pb::ClientMatch {
            kind: Some(pb::client_match::Kind::Network("10.0.0.0/99".into())),
        },
    ];
    m.ctrl
        .set_workload_policy(
            ORDERS_WORKLOAD,
            policy(pb::InboundTls::Permissive, Some(bad)),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = send(
        &c,
        other.outbound_addr,
        "orders.shop",
        "POST",
        "/api/orders",
        "{}",
    )
    .await;
    assert_eq!(a.status, http::StatusCode::FORBIDDEN, "{a:?}");
}

/// A unary gRPC-shaped call (content type application/grpc) through `via`; returns the
/// HTTP status and the grpc-status (headers or trailers).
async fn grpc_call(via: SocketAddr, authority: &str) -> (http::StatusCode, Option<String>) {
    let stream = tokio::net::TcpStream::connect(via).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{authority}/shop.Orders/Create"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    let status = rsp.status();
    let mut grpc = rsp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let collected = rsp.into_body().collect().await.unwrap();
    if grpc.is_none() {
        grpc = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string());
    }
    (status, grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_without_dropping_requests() {
    let mut m = mesh(Duration::from_secs(2), ORDERS).await;
    let web = m.client(WEB, "ns:shop/workload:web").await;
    let identity = |body: String| -> mesh_core::identity::ProxyIdentityStatus {
        serde_json::from_str(&body).unwrap()
    };
    let before = identity(admin_get(web.admin_addr, "/identity").await.1);
    let c = h1_client();
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let a = get(&c, web.outbound_addr, "orders.shop", "/").await;
        assert_eq!(a.status, http::StatusCode::OK, "request {n} failed: {a:?}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = admin_get(web.admin_addr, "/metrics").await;
    let ok = metric(
        &metrics,
        "mesh_proxy_identity_certificate_requests_total{result=\"ok\"}",
    );
    assert!(ok >= 3.0, "2 s certificates renewed only {ok} times in 6 s");
    let after = identity(admin_get(web.admin_addr, "/identity").await.1);
    assert_ne!(
        before.certificate_chain_pem, after.certificate_chain_pem,
        "/identity shows the renewed certificate"
    );
    assert!(
        humantime::parse_rfc3339(&after.not_after).unwrap()
            > humantime::parse_rfc3339(&before.not_after).unwrap()
    );
    assert!(m.ctrl.certified.load(Ordering::Relaxed) >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_certificate_and_a_bad_token_gets_none() {
    // Without identity, /identity says so.
    let plain = start_proxy(raw_config()).await;
    let (status, body) = admin_get(plain.admin_addr, "/identity").await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    assert!(body.starts_with("no identity: identity is off"), "{body}");

    let ctrl = Arc::new(FakeController::default());
    let process = start_controller(ctrl.clone());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "not-the-token").unwrap();
    let mut raw = raw_config();
    raw.controller_addr = Some(format!("http://{}", process.addr));
    raw.workload = Some("ns:shop/workload:web".into());
    raw.identity = Some(WEB.into());
    raw.identity_token_file = Some(token.display().to_string());
    let proxy = start_proxy(raw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        admin_get(proxy.admin_addr, "/ready").await.0,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "no CA yet"
    );
    let (status, body) = admin_get(proxy.admin_addr, "/identity").await;
    assert_eq!(status, http::StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.starts_with("no identity: the controller has not issued"),
        "{body}"
    );
    assert!(body.contains(WEB), "{body}");
    let ca = TestCa::new(Duration::from_secs(600));
    *ctrl.ca.lock().unwrap() = Some(ca.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        admin_get(proxy.admin_addr, "/ready").await.0,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "a wrong token gets no certificate"
    );
    assert!(ctrl.refused.load(Ordering::Relaxed) >= 1);
    // The token file is re-read: the right token brings the first certificate.
    std::fs::write(&token, token_for(WEB)).unwrap();
    wait_ready(proxy.admin_addr).await;

    // /identity shows it: the leaf for the proxy's identity, then the issuer.
    let (status, body) = admin_get(proxy.admin_addr, "/identity").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let id: mesh_core::identity::ProxyIdentityStatus = serde_json::from_str(&body).unwrap();
    assert_eq!(id.identity, WEB);
    assert_eq!(id.version, env!("CARGO_PKG_VERSION"));
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(id.certificate_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 2, "{}", id.certificate_chain_pem);
    assert_eq!(
        mesh_identity::leaf::identity_of(&chain[0]).map(|i| i.to_string()),
        Some(WEB.to_string())
    );
    assert_eq!(&chain[1], ca.issuer.cert_der());
    let not_after = humantime::parse_rfc3339(&id.not_after).unwrap();
    assert!(id.not_after.ends_with('Z'), "UTC: {}", id.not_after);
    assert_eq!(
        not_after,
        mesh_identity::leaf::not_after(&chain[0]).unwrap(),
        "not_after is the leaf's"
    );
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(500) && left <= Duration::from_secs(600),
        "a 600 s certificate: {left:?} left"
    );
}
