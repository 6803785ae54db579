//! The controller's CA over real gRPC: `Identity.Certify` with local join tokens (made by the
//! real `mesh-controller identity` CLI) and with Kubernetes service-account tokens checked by
//! TokenReview against `mesh-fake-kube`; refusals with their status codes; `Identity.Watch`
//! and a full trust-anchor rotation driven by two fake proxies (gRPC clients doing what a
//! proxy does: report the bundle they hold, re-certify when the issuer changes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use mesh_controller::RunArgs;
use mesh_core::Identity;
use mesh_fake_kube::FakeApiServer;
use mesh_identity::leaf::LeafKey;
use mesh_proto::v1 as pb;
use pb::identity_client::IdentityClient;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

/// Runs the real binary; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .args(args)
        .output()
        .expect("the controller binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn init_ca(dir: &Path) {
    let (ok, out, err) = cli(&["identity", "init", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "identity init failed: {out}{err}");
    assert!(
        out.contains("trust anchor") && out.contains("issuer"),
        "{out}"
    );
}

fn join_token(dir: &Path, ns: &str, sa: &str, workload: Option<&str>) -> String {
    let mut args = vec![
        "identity",
        "join-token",
        "--dir",
        dir.to_str().unwrap(),
        "--namespace",
        ns,
        "--service-account",
        sa,
    ];
    if let Some(w) = workload {
        args.extend(["--workload", w]);
    }
    let (ok, out, err) = cli(&args);
    assert!(ok, "identity join-token failed: {out}{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("mjt_"), "{token}");
    token
}

/// A controller in-process in local mode on an empty config dir.
struct Local {
    running: mesh_controller::Running,
    _config: tempfile::TempDir,
}

async fn start_local(identity_dir: Option<PathBuf>) -> Local {
    start_local_with(identity_dir, Duration::ZERO).await
}

async fn start_local_with(identity_dir: Option<PathBuf>, grace: Duration) -> Local {
    let config = tempfile::tempdir().unwrap();
    let mut args = RunArgs::for_tests(Some(config.path().to_path_buf()));
    args.identity_dir = identity_dir;
    args.identity_leaf_lifetime = Duration::from_secs(600);
    args.identity_renew_jitter = Duration::from_millis(100);
    args.identity_rotation_grace = grace;
    let running = mesh_controller::start(args)
        .await
        .expect("controller starts");
    Local {
        running,
        _config: config,
    }
}

async fn client(addr: SocketAddr) -> IdentityClient<Channel> {
    IdentityClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
}

fn request(identity: &str, token: &str, csr: Vec<u8>) -> pb::CertifyRequest {
    pb::CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        csr_der: csr,
        workload: String::new(),
    }
}

fn csr(identity: &str) -> Vec<u8> {
    LeafKey::generate().unwrap().csr_der(&id(identity)).unwrap()
}

/// Verifies that the leaf chains to one of `anchors` through the intermediates, for client
/// and server use, and names `identity`.
fn assert_chains(rsp: &pb::CertifyResponse, anchors: &[CertificateDer<'static>], identity: &str) {
    let leaf = CertificateDer::from(rsp.leaf_der.clone());
    let inter: Vec<CertificateDer<'static>> = rsp
        .intermediates_der
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let tas: Vec<_> = anchors
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &tas,
            &inter,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("the leaf chains to the trust anchor");
    }
    assert_eq!(
        mesh_identity::leaf::identity_of(&leaf).map(|i| i.to_string()),
        Some(identity.to_string())
    );
    assert!(rsp.valid_until_unix > 0);
}

fn anchors_of(dir: &Path) -> Vec<CertificateDer<'static>> {
    mesh_identity::files::load(dir)
        .unwrap()
        .anchors
        .iter()
        .map(|a| a.cert_der().clone())
        .collect()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

async fn status(admin: SocketAddr) -> Value {
    serde_json::from_str(&http_get(admin, "/status").await).expect("/status is JSON")
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn cli_errors_are_clear_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, _, err) = cli(&[
        "identity",
        "join-token",
        "--dir",
        &format!("{d}/missing"),
        "--namespace",
        "shop",
        "--service-account",
        "web",
    ]);
    assert!(!ok);
    assert!(err.contains("identity init"), "{err}");
    init_ca(dir.path());
    let before = std::fs::read(dir.path().join("issuer.crt")).unwrap();
    let (ok, _, err) = cli(&["identity", "init", "--dir", d]);
    assert!(!ok, "a second init without --force must fail");
    assert!(!err.is_empty());
    assert_eq!(
        std::fs::read(dir.path().join("issuer.crt")).unwrap(),
        before
    );
    let (ok, _, err) = cli(&[
        "identity",
        "join-token",
        "--dir",
        d,
        "--namespace",
        "shop",
        "--service-account",
        "a/b",
    ]);
    assert!(!ok);
    assert!(err.contains("a/b"), "{err}");
    assert!(!dir.path().join("join-tokens.yaml").exists());
    // Two tokens: both listed, hashed only.
    let t1 = join_token(dir.path(), "shop", "web", None);
    let t2 = join_token(dir.path(), "shop", "db", Some("ns:shop/pod:db-0"));
    let file = std::fs::read_to_string(dir.path().join("join-tokens.yaml")).unwrap();
    assert!(!file.contains(&t1) && !file.contains(&t2), "{file}");
    assert!(file.contains("serviceAccount: db") && file.contains("ns:shop/pod:db-0"));
    assert_eq!(file.matches("sha256: sha256:").count(), 2, "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_join_token_gets_a_certificate_and_the_rest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path());
    let web = join_token(dir.path(), "shop", "web", None);
    let c = start_local(Some(dir.path().to_path_buf())).await;
    let mut ic = client(c.running.grpc_addr).await;
    let anchors = anchors_of(dir.path());

    let rsp = ic
        .certify(request(WEB, &web, csr(WEB)))
        .await
        .expect("certificate issued")
        .into_inner();
    assert_chains(&rsp, &anchors, WEB);

    let code = |r: Result<tonic::Response<pb::CertifyResponse>, tonic::Status>| match r {
        Ok(_) => panic!("a certificate was issued"),
        Err(s) => {
            assert!(!s.message().is_empty());
            (s.code(), s.message().to_string())
        }
    };
    // Wrong token.
    let (c1, m1) = code(ic.certify(request(WEB, "mjt_wrong", csr(WEB))).await);
    assert_eq!(c1, Code::Unauthenticated, "{m1}");
    assert!(!m1.contains("mjt_wrong"), "the token is never echoed: {m1}");
    // No token.
    let (c2, _) = code(ic.certify(request(WEB, "", csr(WEB))).await);
    assert_eq!(c2, Code::Unauthenticated);
    // A token for another service account.
    let (c3, m3) = code(ic.certify(request(DB, &web, csr(DB))).await);
    assert_eq!(c3, Code::PermissionDenied, "{m3}");
    assert!(m3.contains(WEB), "{m3}");
    // A CSR for another identity than the one proven.
    let (c4, m4) = code(ic.certify(request(WEB, &web, csr(DB))).await);
    assert_eq!(c4, Code::InvalidArgument, "{m4}");
    // Garbage CSR bytes.
    let (c5, m5) = code(ic.certify(request(WEB, &web, b"not a csr".to_vec())).await);
    assert_eq!(c5, Code::InvalidArgument, "{m5}");
    let (c6, _) = code(ic.certify(request(WEB, &web, Vec::new())).await);
    assert_eq!(c6, Code::InvalidArgument);
    // Not a SPIFFE ID / another trust domain.
    let (c7, _) = code(ic.certify(request("web", &web, csr(WEB))).await);
    assert_eq!(c7, Code::InvalidArgument);
    let other_td = "spiffe://other.org/ns/shop/sa/web";
    let (c8, m8) = code(ic.certify(request(other_td, &web, csr(other_td))).await);
    assert_eq!(c8, Code::InvalidArgument);
    assert!(m8.contains("trust domain"), "{m8}");

    // A token bound to a workload, and a token created while the controller runs.
    let db = join_token(dir.path(), "shop", "db", Some("ns:shop/pod:db-0"));
    let mut req = request(DB, &db, csr(DB));
    req.workload = "ns:shop/pod:db-1".into();
    let (c9, _) = code(ic.certify(req.clone()).await);
    assert_eq!(c9, Code::PermissionDenied);
    req.workload = "ns:shop/pod:db-0".into();
    let rsp = ic
        .certify(req)
        .await
        .expect("the new token works")
        .into_inner();
    assert_chains(&rsp, &anchors, DB);

    // The controller still serves after all that.
    ic.certify(request(WEB, &web, csr(WEB))).await.unwrap();
    let m = metrics(c.running.admin_addr).await;
    assert!(
        m.contains("mesh_controller_certificates_issued_total 3"),
        "{m}"
    );
    for reason in [
        "unknown_token",
        "no_proof",
        "wrong_identity",
        "csr_identity",
        "bad_csr",
        "bad_identity",
        "foreign_trust_domain",
        "wrong_workload",
    ] {
        assert!(
            m.contains(&format!(
                "mesh_controller_certify_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{m}"
        );
    }
    c.running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_identity_dir_identity_is_unavailable() {
    let c = start_local(None).await;
    let mut ic = client(c.running.grpc_addr).await;
    let err = ic
        .certify(request(WEB, "mjt_x", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("--identity-dir"),
        "{}",
        err.message()
    );
    let (_tx, rx) = mpsc::channel::<pb::IdentityReport>(1);
    let err = ic
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let st = status(c.running.admin_addr).await;
    assert_eq!(st["identity"]["enabled"], false, "{st}");
    let m = metrics(c.running.admin_addr).await;
    assert!(
        m.contains("mesh_controller_certify_refused_total{reason=\"identity_off\"} 1"),
        "{m}"
    );
    c.running.shutdown();
}

/// The identity Secret for `dir`'s CA.
fn secret_from(dir: &Path) -> Value {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mesh-identity", "namespace": "mesh-system"},
        "type": "Opaque",
        "stringData": {
            "trust-anchors.pem": read("trust-anchors.pem"),
            "issuer.crt": read("issuer.crt"),
            "issuer.key": read("issuer.key"),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_are_checked_with_token_review() {
    let server = FakeApiServer::start();
    for ns in ["shop", "mesh-system"] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let kube = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for crd in mesh_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let mut args = RunArgs::for_tests(None);
    args.identity_leaf_lifetime = Duration::from_secs(600);
    let running = mesh_controller::start_with(args, Some(kube))
        .await
        .expect("controller starts");
    let mut ic = client(running.grpc_addr).await;
    let aud = "mesh.dev/identity";
    let token = server.issue_token("shop", "web", &[aud], Duration::from_secs(600));

    // No Secret yet: identity is off, and says which Secret it waits for.
    eventually(
        "UNAVAILABLE naming the Secret",
        Duration::from_secs(10),
        || {
            let mut ic = ic.clone();
            let token = token.clone();
            async move {
                match ic.certify(request(WEB, &token, csr(WEB))).await {
                    Err(s) => {
                        s.code() == Code::Unavailable
                            && s.message().contains("mesh-system/mesh-identity")
                    }
                    Ok(_) => panic!("a certificate without a CA"),
                }
            }
        },
    )
    .await;

    let ca = tempfile::tempdir().unwrap();
    init_ca(ca.path());
    server.upsert(secret_from(ca.path())).unwrap();
    let anchors = anchors_of(ca.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    let issued = loop {
        match ic.certify(request(WEB, &token, csr(WEB))).await {
            Ok(r) => break r.into_inner(),
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no certificate after the Secret was created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_chains(&issued, &anchors, WEB);

    // A valid token for another service account.
    let err = ic.certify(request(DB, &token, csr(DB))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An expired token.
    let expired = server.issue_token("shop", "web", &[aud], Duration::ZERO);
    let err = ic
        .certify(request(WEB, &expired, csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{}", err.message());
    // A token for another audience (e.g. the API server's).
    let other = server.issue_token(
        "shop",
        "web",
        &["https://kubernetes.default.svc"],
        Duration::from_secs(600),
    );
    let err = ic
        .certify(request(WEB, &other, csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // An unknown token.
    let err = ic
        .certify(request(WEB, "not-a-token", csr(WEB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Every review asked for the mesh's audience.
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")));
    let m = metrics(running.admin_addr).await;
    assert!(
        m.contains("mesh_controller_certificates_issued_total 1"),
        "{m}"
    );
    assert!(m.contains("reason=\"expired_token\""), "{m}");
    assert!(m.contains("reason=\"wrong_audience\""), "{m}");
    running.shutdown();
}

/// What a fake proxy saw and did.
#[derive(Clone, Debug, Default)]
struct ProxyView {
    bundle_version: u64,
    anchors: Vec<Vec<u8>>,
    leaf: Option<pb::CertifyResponse>,
    leaf_issuer: Vec<u8>,
    /// Anchor counts of every bundle received, in order.
    bundles_seen: Vec<usize>,
    renewals: usize,
}

/// A gRPC client doing what a proxy does on the Identity API: certify, watch, report what
/// it holds after every update, renew when the issuer changes. While `paused` is true it
/// does not apply updates (as a slow proxy).
struct FakeProxy {
    view: watch::Receiver<ProxyView>,
    paused: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    async fn start(addr: SocketAddr, identity: &'static str, token: String) -> FakeProxy {
        let (view_tx, view) = watch::channel(ProxyView::default());
        let (paused, mut paused_rx) = watch::channel(false);
        let mut ic = client(addr).await;
        let task = tokio::spawn(async move {
            let certify = |ic: &mut IdentityClient<Channel>| {
                let mut ic = ic.clone();
                let token = token.clone();
                async move {
                    ic.certify(pb::CertifyRequest {
                        identity: identity.into(),
                        token,
                        csr_der: csr(identity),
                        workload: format!("ns:shop/pod:{identity}"),
                    })
                    .await
                    .expect("the fake proxy gets a certificate")
                    .into_inner()
                }
            };
            let leaf = certify(&mut ic).await;
            let mut v = ProxyView {
                leaf_issuer: mesh_identity::sha256(&leaf.intermediates_der[0]).to_vec(),
                leaf: Some(leaf),
                ..ProxyView::default()
            };
            view_tx.send_replace(v.clone());
            let (rtx, rrx) = mpsc::channel(16);
            let report = |v: &ProxyView| pb::IdentityReport {
                identity: identity.into(),
                workload: format!("ns:shop/pod:{identity}"),
                bundle_version: v.bundle_version,
                leaf_issuer_sha256: v.leaf_issuer.clone(),
            };
            rtx.send(report(&v)).await.unwrap();
            let mut updates = ic
                .watch(tokio_stream::wrappers::ReceiverStream::new(rrx))
                .await
                .expect("watch opens")
                .into_inner();
            while let Ok(Some(u)) = updates.message().await {
                while *paused_rx.borrow_and_update() {
                    if paused_rx.changed().await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                let bundle = u.bundle.unwrap_or_default();
                v.bundle_version = bundle.version;
                v.bundles_seen.push(bundle.anchors_der.len());
                v.anchors = bundle.anchors_der;
                if !u.issuer_sha256.is_empty() && u.issuer_sha256 != v.leaf_issuer {
                    let leaf = certify(&mut ic).await;
                    v.leaf_issuer = mesh_identity::sha256(&leaf.intermediates_der[0]).to_vec();
                    assert_eq!(
                        v.leaf_issuer, u.issuer_sha256,
                        "signed by the issuer announced"
                    );
                    v.leaf = Some(leaf);
                    v.renewals += 1;
                }
                view_tx.send_replace(v.clone());
                if rtx.send(report(&v)).await.is_err() {
                    return;
                }
            }
        });
        FakeProxy { view, paused, task }
    }

    fn view(&self) -> ProxyView {
        self.view.borrow().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_rotation_through_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path());
    let token_web = join_token(dir.path(), "shop", "web", None);
    let token_db = join_token(dir.path(), "shop", "db", None);
    let old_anchors = anchors_of(dir.path());
    let c = start_local(Some(dir.path().to_path_buf())).await;
    let admin = c.running.admin_addr;

    // The first update comes at once.
    let mut ic = client(c.running.grpc_addr).await;
    let (keep, rrx) = mpsc::channel::<pb::IdentityReport>(1);
    let started = Instant::now();
    let mut stream = ic
        .watch(tokio_stream::wrappers::ReceiverStream::new(rrx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the first update comes at once")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let bundle = first.bundle.unwrap();
    assert_eq!(bundle.anchors_der, vec![old_anchors[0].to_vec()]);
    assert_ne!(bundle.version, 0);
    assert_eq!(first.renew_jitter_ms, 100);
    let idle_version = bundle.version;
    // A stream that ends is forgotten.
    drop((stream, keep));

    let a = FakeProxy::start(c.running.grpc_addr, WEB, token_web).await;
    let b = FakeProxy::start(c.running.grpc_addr, DB, token_db).await;
    eventually(
        "both proxies hold the bundle",
        Duration::from_secs(10),
        || async move {
            let st = status(admin).await;
            st["identity"]["phase"] == "idle"
                && st["identity"]["proxies"]["connected"] == 2
                && st["identity"]["proxies"]["holding_bundle"] == 2
                && st["identity"]["proxies"]["on_current_issuer"] == 2
        },
    )
    .await;
    let st = status(admin).await;
    assert_eq!(st["identity"]["bundle_version"], idle_version, "{st}");
    let old_issuer = st["identity"]["issuer"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    // Proxy b is slow: the rotation must wait for it in `distributing`.
    b.paused.send_replace(true);
    let (ok, out, err) = cli(&[
        "identity",
        "init",
        "--dir",
        dir.path().to_str().unwrap(),
        "--next",
    ]);
    assert!(ok, "init --next: {out}{err}");
    let next_anchor = mesh_identity::files::load_next(dir.path())
        .unwrap()
        .expect("next/ written")
        .anchors[0]
        .cert_der()
        .clone();
    let mut phases: Vec<String> = Vec::new();
    fn record(phases: &mut Vec<String>, st: &Value) {
        let p = st["identity"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if phases.last() != Some(&p) {
            phases.push(p);
        }
    }
    eventually(
        "distributing, with a holding the new bundle",
        Duration::from_secs(10),
        || async move {
            let st = status(admin).await;
            st["identity"]["phase"] == "distributing"
                && st["identity"]["proxies"]["holding_bundle"] == 1
        },
    )
    .await;
    record(&mut phases, &status(admin).await);
    assert_eq!(a.view().anchors.len(), 2, "a holds both anchors");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = status(admin).await;
    assert_eq!(st["identity"]["phase"], "distributing", "waits for b: {st}");
    assert_eq!(b.view().bundles_seen, vec![1], "b applied nothing yet");
    b.paused.send_replace(false);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(admin).await;
        record(&mut phases, &st);
        if st["identity"]["phase"] == "idle" && st["identity"]["next"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not finish: {st} after {phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        phases,
        ["distributing", "reissuing", "retiring", "idle"],
        "every phase shows in /status"
    );

    // The files were promoted: the next anchor is the only anchor now.
    assert_eq!(anchors_of(dir.path()), vec![next_anchor.clone()]);
    assert!(mesh_identity::files::load_next(dir.path())
        .unwrap()
        .is_none());
    let st = status(admin).await;
    assert_ne!(st["identity"]["issuer"]["sha256"], old_issuer.as_str());
    for p in [&a, &b] {
        let v = p.view();
        assert_eq!(v.renewals, 1, "{v:?}");
        assert_eq!(v.anchors, vec![next_anchor.to_vec()]);
        assert_eq!(v.bundles_seen.last(), Some(&1));
        assert!(v.bundles_seen.contains(&2), "{v:?}");
        assert_chains(
            v.leaf.as_ref().unwrap(),
            std::slice::from_ref(&next_anchor),
            if std::ptr::eq(p, &a) { WEB } else { DB },
        );
    }
    eventually(
        "both proxies on the new issuer",
        Duration::from_secs(10),
        || async move {
            let st = status(admin).await;
            st["identity"]["proxies"]["holding_bundle"] == 2
                && st["identity"]["proxies"]["on_current_issuer"] == 2
        },
    )
    .await;
    let m = metrics(admin).await;
    assert!(
        m.contains("mesh_controller_identity_rotation_phase{phase=\"idle\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mesh_controller_identity_proxies{state=\"connected\"} 2"),
        "{m}"
    );
    // A new certificate chains to the new anchor only.
    let token = join_token(dir.path(), "shop", "web", None);
    let rsp = ic
        .certify(request(WEB, &token, csr(WEB)))
        .await
        .unwrap()
        .into_inner();
    assert_chains(&rsp, &[next_anchor], WEB);
    a.task.abort();
    b.task.abort();
    c.running.shutdown();
}

/// The first update on a new Watch stream.
async fn first_update(addr: SocketAddr) -> pb::IdentityUpdate {
    let mut ic = client(addr).await;
    let (_keep, rrx) = mpsc::channel::<pb::IdentityReport>(1);
    let mut stream = ic
        .watch(tokio_stream::wrappers::ReceiverStream::new(rrx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update at once")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_the_rotation_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path());
    let (ok, out, err) = cli(&[
        "identity",
        "init",
        "--dir",
        dir.path().to_str().unwrap(),
        "--next",
    ]);
    assert!(ok, "{out}{err}");
    let next = mesh_identity::files::load_next(dir.path())
        .unwrap()
        .unwrap();
    let next_issuer = mesh_identity::hex(&next.issuer.sha256());
    // A marker for another issuer is stale: the rotation starts from the beginning.
    std::fs::write(
        dir.path().join("rotation-phase"),
        format!("retiring {}", "00".repeat(32)),
    )
    .unwrap();
    // Hold the rotation in `distributing` with a proxy that connects within the start-up
    // grace and never reports.
    let grace = Duration::from_secs(2);
    let c = start_local_with(Some(dir.path().to_path_buf()), grace).await;
    let mut ic = client(c.running.grpc_addr).await;
    let (silent_tx, silent_rx) = mpsc::channel::<pb::IdentityReport>(1);
    let _silent = ic
        .watch(tokio_stream::wrappers::ReceiverStream::new(silent_rx))
        .await
        .unwrap();
    let u = first_update(c.running.grpc_addr).await;
    assert_eq!(
        u.bundle.unwrap().anchors_der.len(),
        2,
        "distributing: both anchor sets"
    );
    assert_ne!(
        u.issuer_sha256,
        next.issuer.sha256().to_vec(),
        "still signing with the current issuer"
    );
    let st = status(c.running.admin_addr).await;
    assert_eq!(st["identity"]["phase"], "distributing", "{st}");
    drop(silent_tx);
    c.running.shutdown();

    // The controller stopped in `retiring` (as its marker says): it resumes there and does
    // not go back to signing with the old issuer or to the bundle with both anchors.
    std::fs::write(
        dir.path().join("rotation-phase"),
        format!("retiring {next_issuer}"),
    )
    .unwrap();
    let c = start_local_with(Some(dir.path().to_path_buf()), grace).await;
    let mut ic = client(c.running.grpc_addr).await;
    let (silent_tx, silent_rx) = mpsc::channel::<pb::IdentityReport>(1);
    let _silent = ic
        .watch(tokio_stream::wrappers::ReceiverStream::new(silent_rx))
        .await
        .unwrap();
    let u = first_update(c.running.grpc_addr).await;
    assert_eq!(
        u.bundle.unwrap().anchors_der,
        vec![next.anchors[0].cert_der().to_vec()],
        "retiring: the next anchors only"
    );
    assert_eq!(u.issuer_sha256, next.issuer.sha256().to_vec());
    assert_eq!(
        status(c.running.admin_addr).await["identity"]["phase"],
        "retiring"
    );
    // Once the silent stream goes, nothing holds the rotation: it finishes.
    drop(silent_tx);
    drop(_silent);
    let admin = c.running.admin_addr;
    eventually(
        "the rotation finishes",
        Duration::from_secs(15),
        || async move {
            let st = status(admin).await;
            st["identity"]["phase"] == "idle" && st["identity"]["next"].is_null()
        },
    )
    .await;
    assert_eq!(
        anchors_of(dir.path()),
        vec![next.anchors[0].cert_der().clone()]
    );
    assert!(!dir.path().join("rotation-phase").exists());
    c.running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_rotation_moves_the_secret_keys() {
    let server = FakeApiServer::start();
    for ns in ["shop", "mesh-system"] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let kube = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for crd in mesh_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ca = tempfile::tempdir().unwrap();
    init_ca(ca.path());
    server.upsert(secret_from(ca.path())).unwrap();
    let mut args = RunArgs::for_tests(None);
    args.identity_renew_jitter = Duration::from_millis(50);
    let running = mesh_controller::start_with(args, Some(kube.clone()))
        .await
        .expect("controller starts");
    let admin = running.admin_addr;
    eventually("identity on", Duration::from_secs(10), || async move {
        status(admin).await["identity"]["enabled"] == true
    })
    .await;
    let token = server.issue_token(
        "shop",
        "web",
        &["mesh.dev/identity"],
        Duration::from_secs(600),
    );
    let proxy = FakeProxy::start(running.grpc_addr, WEB, token).await;
    eventually(
        "the proxy holds the bundle",
        Duration::from_secs(10),
        || async move { status(admin).await["identity"]["proxies"]["holding_bundle"] == 1 },
    )
    .await;

    // The operator adds the next.* keys.
    let next = tempfile::tempdir().unwrap();
    init_ca(next.path());
    let read = |f: &str| std::fs::read_to_string(next.path().join(f)).unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(kube.clone(), "mesh-system");
    let patch = json!({"stringData": {
        "next.trust-anchors.pem": read("trust-anchors.pem"),
        "next.issuer.crt": read("issuer.crt"),
        "next.issuer.key": read("issuer.key"),
    }});
    secrets
        .patch(
            "mesh-identity",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let mut phases = vec!["idle".to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(admin).await;
        let p = st["identity"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if phases.last() != Some(&p) {
            phases.push(p);
        }
        if phases.len() > 1 && st["identity"]["phase"] == "idle" && st["identity"]["next"].is_null()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not finish: {st} after {phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        phases,
        ["idle", "distributing", "reissuing", "retiring", "idle"]
    );
    let secret = server
        .object("v1", "secrets", Some("mesh-system"), "mesh-identity")
        .unwrap();
    let data = secret["data"].as_object().unwrap();
    let mut keys: Vec<&String> = data.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["issuer.crt", "issuer.key", "trust-anchors.pem"],
        "next.* keys moved"
    );
    assert!(secret["metadata"]["annotations"]
        .get("mesh.dev/identity-rotation")
        .is_none());
    let next_anchor = anchors_of(next.path());
    let v = proxy.view();
    assert_eq!(v.anchors, vec![next_anchor[0].to_vec()]);
    assert_chains(v.leaf.as_ref().unwrap(), &next_anchor, WEB);
    proxy.task.abort();
    running.shutdown();
}

#[test]
fn the_join_token_file_example_in_the_docs_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/identity.md")).unwrap();
    let mut checked = 0;
    for block in text.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        if !yaml.starts_with("- namespace:") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-tokens.yaml");
        std::fs::write(&path, yaml).unwrap();
        let entries = mesh_controller::identity::proof::read_join_tokens(&path)
            .unwrap_or_else(|e| panic!("the join-tokens.yaml example is invalid: {e:#}\n{yaml}"));
        assert!(entries
            .iter()
            .all(|e| e.sha256.len() == "sha256:".len() + 64));
        checked += 1;
    }
    assert_eq!(checked, 1, "the docs show one join-tokens.yaml example");
}
