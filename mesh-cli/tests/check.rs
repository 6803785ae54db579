//! `meshctl check` through the real binary against mesh-fake-kube: a healthy install
//! (rendered by `mesh_manifests`, plus what a cluster adds: ready controller pods, the
//! leader Lease, the webhook's EndpointSlice) passes; each failure mode gives its line, code,
//! hint and exit code; `--pre`, `--proxy`, `--category`, `--wait`, `-o json`; and every code
//! in the source is documented in docs/checks.md.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use mesh_fake_kube::FakeApiServer;
use mesh_manifests::{CertFiles, Values};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{json, Value};
use support::{meshctl, Run};

const NS: &str = "mesh-system";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const DAY: Duration = Duration::from_secs(86_400);

/// A fake cluster, empty or with the mesh installed.
struct Cluster {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    values: Values,
}

impl Cluster {
    fn empty() -> Self {
        let server = FakeApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            server,
            dir,
            kubeconfig,
            values: Values::defaults(),
        }
    }

    /// The mesh installed from `mesh_manifests::render` (generated certificates) with the
    /// controller running, and then `identity` (key, PEM) written over keys of the identity
    /// Secret (material `meshctl install` would refuse).
    fn installed_with(identity: &[(&str, String)]) -> Self {
        let mut cluster = Self::empty();
        mesh_manifests::fill(&mut cluster.values, &CertFiles::default()).unwrap();
        for object in mesh_manifests::render(&cluster.values).unwrap() {
            cluster.server.upsert(object).unwrap();
        }
        for i in 0..2 {
            cluster.server.upsert(controller_pod(i, true)).unwrap();
        }
        cluster
            .server
            .upsert(lease("mesh-controller-0", SystemTime::now()))
            .unwrap();
        cluster.server.upsert(endpoint_slice()).unwrap();
        for (key, pem) in identity {
            cluster.set_secret_key("mesh-identity", key, pem);
        }
        cluster
    }

    fn installed() -> Self {
        Self::installed_with(&[])
    }

    /// `meshctl check ARGS --kubeconfig KUBECONFIG`.
    fn check(&self, args: &[&str]) -> Run {
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        let args = [&["check"], args, &["--kubeconfig", kubeconfig]].concat();
        meshctl(self.dir.path(), &args, "")
    }

    fn value(&self, key: &str) -> String {
        self.values
            .get(&format!("certificates.{key}"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    fn get(&self, api_version: &str, plural: &str, ns: Option<&str>, name: &str) -> Value {
        self.server.object(api_version, plural, ns, name).unwrap()
    }

    /// Replaces key `key` of Secret `name` in the mesh namespace.
    fn set_secret_key(&self, name: &str, key: &str, text: &str) {
        let mut secret = self.get("v1", "secrets", Some(NS), name);
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        self.server.upsert(secret).unwrap();
    }

    /// The issuer as an rcgen signer.
    fn issuer(&self) -> rcgen::Issuer<'static, KeyPair> {
        let key = KeyPair::from_pem(&self.value("issuerKeyPEM")).unwrap();
        rcgen::Issuer::from_ca_cert_pem(&self.value("issuerCrtPEM"), key).unwrap()
    }
}

fn controller_pod(i: usize, ready: bool) -> Value {
    let ready = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("mesh-controller-{i}"), "namespace": NS,
                     "labels": {"app.kubernetes.io/name": "mesh-controller",
                                "app.kubernetes.io/part-of": "mesh"}},
        "spec": {"containers": [{"name": "controller", "image": format!("mesh-controller:{VERSION}")}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": ready,
                                   "reason": if ready == "True" { "" } else { "ContainersNotReady" }}],
                   "containerStatuses": [{"name": "controller", "ready": ready == "True",
                                          "restartCount": 0, "image": "mesh-controller",
                                          "imageID": "", "started": true}]},
    })
}

fn lease(holder: &str, renewed: SystemTime) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mesh-controller", "namespace": NS},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": humantime::format_rfc3339_micros(renewed).to_string()},
    })
}

fn endpoint_slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "mesh-controller-x7k2p", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "mesh-controller"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.7"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "mesh-controller-0", "namespace": NS}}],
        "ports": [{"name": "webhook", "port": 9443, "protocol": "TCP"},
                  {"name": "grpc", "port": 8086, "protocol": "TCP"}],
    })
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// A CA certificate (anchor or issuer) valid from `from` to `until`, self-signed or signed
/// by `signer`; returns (certificate PEM, key PEM).
fn ca(
    name: &str,
    from: SystemTime,
    until: SystemTime,
    signer: Option<&rcgen::Issuer<'_, KeyPair>>,
) -> (String, String, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(match signer {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(from);
    params.not_after = offset(until);
    let key = KeyPair::generate().unwrap();
    let cert = match signer {
        None => params.self_signed(&key).unwrap(),
        Some(s) => params.signed_by(&key, s).unwrap(),
    };
    let key_pem = key.serialize_pem();
    (cert.pem(), key_pem, key)
}

fn signer(cert_pem: &str, key: KeyPair) -> rcgen::Issuer<'static, KeyPair> {
    rcgen::Issuer::from_ca_cert_pem(cert_pem, key).unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// The lines of the section `name` of a text report.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("{name}\n{}\n", "-".repeat(name.len()));
    let Some(start) = out.find(&header) else {
        return Vec::new();
    };
    out[start + header.len()..]
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .collect()
}

/// Asserts that the report has a line `mark description` followed (within its block) by the
/// hint of `code` that contains `hint`.
fn assert_line(run: &Run, mark: &str, description: &str, code: &str, hint: &str) {
    let out = &run.stdout;
    let line = format!("{mark} {description}");
    let start = out
        .find(&line)
        .unwrap_or_else(|| panic!("no line {line:?} in:\n{out}"));
    let block: String = out[start..]
        .lines()
        .take_while(|l| !l.is_empty())
        .take(12)
        .collect::<Vec<_>>()
        .join("\n");
    let see = format!("see docs/checks.md#{}: ", code.to_ascii_lowercase());
    let hint_line = block
        .lines()
        .find(|l| l.trim_start().starts_with(&see))
        .unwrap_or_else(|| panic!("no hint {see:?} after {line:?} in:\n{out}"));
    assert!(
        hint_line.contains(hint),
        "the hint of {code} does not say {hint:?}: {hint_line}"
    );
}

#[test]
fn healthy_install_passes() {
    let cluster = Cluster::installed();
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for name in [
        "kubernetes-api",
        "install",
        "webhook",
        "identity",
        "version",
    ] {
        let lines = section(&run.stdout, name);
        assert!(!lines.is_empty(), "no section {name}:\n{}", run.stdout);
        for line in lines {
            assert!(line.starts_with("[ok] "), "not ok: {line}\n{}", run.stdout);
        }
    }
    assert!(!run.stdout.contains("proxies\n"), "{}", run.stdout);
    assert!(run
        .stdout
        .contains("[ok] a controller leader is elected: mesh-controller-0"));
    assert!(run.stdout.contains("[ok] trust anchor rotation: idle"));
    assert!(
        run.stdout.ends_with("Status check results are [ok]\n"),
        "{}",
        run.stdout
    );

    let json = cluster.check(&["-o", "json"]);
    assert_eq!(json.code, Some(0));
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["failures"], 0);
    let names: Vec<&str> = v["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kubernetes-api",
            "install",
            "webhook",
            "identity",
            "version"
        ]
    );
    for category in v["categories"].as_array().unwrap() {
        for check in category["checks"].as_array().unwrap() {
            assert_eq!(check["status"], "ok", "{check}");
            assert!(check["code"].as_str().unwrap().starts_with("MESH1"));
            assert_eq!(check["category"], category["name"]);
            assert!(check["description"].as_str().is_some_and(|d| !d.is_empty()));
            assert_eq!(check["hint"], "");
        }
    }
}

#[test]
fn missing_crd_fails() {
    let cluster = Cluster::installed();
    cluster
        .server
        .remove(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            "servers.mesh.dev",
        )
        .unwrap();
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the mesh CRDs exist",
        "MESH1201",
        "meshctl install --apply",
    );
    assert!(
        run.stdout.contains("    missing: servers.mesh.dev\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("[ok] the mesh CRDs are current: the 4 present\n"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("Status check results are [FAIL]: 1 failed, 0 warnings"));
}

#[test]
fn outdated_crd_fails() {
    let cluster = Cluster::installed();
    let mut crd = cluster.get(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        None,
        "workloads.mesh.dev",
    );
    crd["metadata"]["annotations"]["mesh.dev/version"] = json!("0.0.1");
    cluster.server.upsert(crd).unwrap();
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the mesh CRDs are current",
        "MESH1202",
        "run meshctl upgrade",
    );
    assert!(
        run.stdout
            .contains("workloads.mesh.dev: it is from version 0.0.1"),
        "{}",
        run.stdout
    );

    // A schema that differs with the right annotation is outdated too.
    let cluster = Cluster::installed();
    let mut crd = cluster.get(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        None,
        "servers.mesh.dev",
    );
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = json!("old");
    cluster.server.upsert(crd).unwrap();
    let run = cluster.check(&["--category", "install"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("the schema of version v1alpha1 differs"),
        "{}",
        run.stdout
    );
}

#[test]
fn controller_not_ready_fails() {
    let cluster = Cluster::installed();
    for i in 0..2 {
        cluster.server.upsert(controller_pod(i, false)).unwrap();
    }
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the controller pods are running and ready",
        "MESH1205",
        "kubectl -n mesh-system describe pods -l app.kubernetes.io/name=mesh-controller",
    );
    assert!(
        run.stdout
            .contains("    mesh-controller-0: not ready (ContainersNotReady)"),
        "{}",
        run.stdout
    );
    // The Lease's holder is not ready either.
    assert_line(
        &run,
        "[FAIL]",
        "a controller leader is elected",
        "MESH1206",
        "Lease mesh-system/mesh-controller",
    );

    // One of two ready: a warning.
    cluster.server.upsert(controller_pod(0, true)).unwrap();
    let run = cluster.check(&["--category", "install"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_line(
        &run,
        "[warn]",
        "the controller pods are running and ready",
        "MESH1205",
        "describe pods",
    );
}

#[test]
fn stale_lease_fails() {
    let cluster = Cluster::installed();
    cluster
        .server
        .upsert(lease("mesh-controller-0", now() - Duration::from_secs(120)))
        .unwrap();
    let run = cluster.check(&["--category", "install"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "a controller leader is elected",
        "MESH1206",
        "logs deploy/mesh-controller",
    );
    assert!(
        run.stdout
            .contains("the Lease of mesh-controller-0 expired"),
        "{}",
        run.stdout
    );
}

#[test]
fn webhook_certificate_not_matching_the_ca_bundle_fails() {
    let cluster = Cluster::installed();
    let (other_ca, _, _) = ca("someone else's CA", now() - DAY, now() + 365 * DAY, None);
    let mut config = cluster.get(
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        None,
        "mesh-proxy-injector",
    );
    config["webhooks"][0]["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(&other_ca));
    cluster.server.upsert(config).unwrap();
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the webhook certificate is signed by the caBundle",
        "MESH1305",
        "meshctl upgrade --apply",
    );
    assert!(
        run.stdout.contains("CN=someone else's CA"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("[ok] the webhook certificate is valid"));
    assert!(run.stdout.contains(
        "[ok] the webhook certificate names the webhook Service: mesh-controller.mesh-system.svc"
    ));
}

#[test]
fn webhook_without_endpoints_fails() {
    let cluster = Cluster::installed();
    let mut slice = endpoint_slice();
    slice["endpoints"][0]["conditions"]["ready"] = json!(false);
    cluster.server.upsert(slice).unwrap();
    let run = cluster.check(&["--category", "webhook"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the webhook Service has ready endpoints",
        "MESH1302",
        "get endpointslices",
    );
}

#[test]
fn expired_issuer_fails() {
    let (anchor, _, anchor_key) = ca("root", now() - 400 * DAY, now() + 3650 * DAY, None);
    let root = signer(&anchor, anchor_key);
    let (issuer, issuer_key, _) = ca(
        "old issuer",
        now() - 400 * DAY,
        now() - 2 * DAY,
        Some(&root),
    );
    let cluster = Cluster::installed_with(&[
        ("trust-anchors.pem", anchor),
        ("issuer.crt", issuer),
        ("issuer.key", issuer_key),
    ]);
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the issuer certificate is valid",
        "MESH1404",
        "sign a new issuer with the trust anchor's key",
    );
    assert!(
        run.stdout.contains("'CN=old issuer' expired"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("[ok] the issuer is signed by a trust anchor: by 'CN=root'"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("[ok] the trust anchors are valid"));
}

#[test]
fn issuer_not_signed_by_the_anchor_fails() {
    let cluster = Cluster::installed();
    let (other_root, _, other_key) = ca("other root", now() - DAY, now() + 3650 * DAY, None);
    let other = signer(&other_root, other_key);
    let (issuer, issuer_key, _) = ca(
        "foreign issuer",
        now() - DAY,
        now() + 365 * DAY,
        Some(&other),
    );
    cluster.set_secret_key("mesh-identity", "issuer.crt", &issuer);
    cluster.set_secret_key("mesh-identity", "issuer.key", &issuer_key);
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "the issuer is signed by a trust anchor",
        "MESH1402",
        "sign the issuer with one of the trust anchors",
    );
    assert!(
        run.stdout
            .contains("'CN=foreign issuer' does not chain to any trust anchor"),
        "{}",
        run.stdout
    );
}

#[test]
fn anchor_expiring_in_30_days_warns() {
    let (anchor, anchor_key_pem, anchor_key) =
        ca("short root", now() - DAY, now() + 30 * DAY, None);
    let root = signer(&anchor, anchor_key);
    let (issuer, issuer_key, _) = ca("issuer", now() - DAY, now() + 29 * DAY, Some(&root));
    let _ = anchor_key_pem;
    let cluster = Cluster::installed_with(&[
        ("trust-anchors.pem", anchor),
        ("issuer.crt", issuer),
        ("issuer.key", issuer_key),
    ]);
    let run = cluster.check(&[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_line(
        &run,
        "[warn]",
        "the trust anchors are valid",
        "MESH1403",
        "rotate to it before this one expires",
    );
    assert!(
        run.stdout.contains("'CN=short root' expires"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("(in 29 days): less than 60 days left"),
        "{}",
        run.stdout
    );
    assert_line(
        &run,
        "[warn]",
        "the issuer certificate is valid",
        "MESH1404",
        "sign a new issuer",
    );
    assert!(
        run.stdout
            .contains("Status check results are [ok] (2 warnings)"),
        "{}",
        run.stdout
    );
}

#[test]
fn rotation_in_progress_warns() {
    let cluster = Cluster::installed();
    let next = mesh_identity::ca::Anchor::generate("next root", 3650 * DAY).unwrap();
    let next_issuer = mesh_identity::ca::Issuer::generate(&next, "next issuer", 365 * DAY).unwrap();
    cluster.set_secret_key("mesh-identity", "next.trust-anchors.pem", &next.cert_pem());
    cluster.set_secret_key("mesh-identity", "next.issuer.crt", &next_issuer.cert_pem());
    cluster.set_secret_key("mesh-identity", "next.issuer.key", &next_issuer.key_pem());
    let mut secret = cluster.get("v1", "secrets", Some(NS), "mesh-identity");
    secret["metadata"]["annotations"]["mesh.dev/identity-rotation"] = json!(format!(
        "reissuing {}",
        mesh_identity::hex(&next_issuer.sha256())
    ));
    cluster.server.upsert(secret).unwrap();
    let run = cluster.check(&["--category", "identity"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_line(
        &run,
        "[warn]",
        "trust anchor rotation",
        "MESH1405",
        "wait for it",
    );
    assert!(
        run.stdout
            .contains("a trust anchor rotation is in progress: phase reissuing"),
        "{}",
        run.stdout
    );
}

/// A meshed pod with its proxy's admin `/identity` served by a thread of this test.
struct FakeProxy {
    addr: SocketAddr,
}

impl FakeProxy {
    /// Serves `body` (with `status`) for every request.
    fn serve(status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let reason = if status == 200 { "OK" } else { "Not Found" };
                let kind = if status == 200 {
                    "application/json"
                } else {
                    "text/plain"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { addr }
    }
}

/// A leaf for `identity` signed by `issuer`, valid until `until`: the /identity JSON.
fn identity_json(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    issuer_pem: &str,
    identity: &str,
    until: SystemTime,
) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = offset(now() - Duration::from_secs(3600));
    params.not_after = offset(until);
    let key = KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, issuer).unwrap();
    serde_json::to_string(&mesh_core::identity::ProxyIdentityStatus {
        identity: identity.to_string(),
        not_after: humantime::format_rfc3339_seconds(until).to_string(),
        certificate_chain_pem: format!("{}{}", leaf.pem(), issuer_pem),
        version: VERSION.to_string(),
    })
    .unwrap()
}

fn meshed_pod(ns: &str, name: &str, version: &str, proxy_ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "annotations": {"mesh.dev/proxy-version": version}},
        "spec": {"initContainers": [{"name": "mesh-proxy", "image": format!("mesh-proxy:{version}"),
                                     "restartPolicy": "Always"}],
                 "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": if proxy_ready { "True" } else { "False" }}],
                   "initContainerStatuses": [{"name": "mesh-proxy", "ready": proxy_ready, "restartCount": 0,
                                              "image": "mesh-proxy", "imageID": ""}],
                   "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                                          "image": "app:1", "imageID": ""}]},
    })
}

impl Cluster {
    /// A meshed pod in `ns` whose proxy answers /identity with a leaf of the mesh's issuer.
    fn add_proxy(&self, ns: &str, name: &str, version: &str) -> FakeProxy {
        self.server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
        self.server
            .upsert(meshed_pod(ns, name, version, true))
            .unwrap();
        let body = identity_json(
            &self.issuer(),
            &self.value("issuerCrtPEM"),
            &format!("spiffe://cluster.local/ns/{ns}/sa/default"),
            now() + DAY,
        );
        let proxy = FakeProxy::serve(200, body);
        self.server.route_pod_port(ns, name, 4191, proxy.addr);
        proxy
    }
}

#[test]
fn current_proxies_pass() {
    let cluster = Cluster::installed();
    let _a = cluster.add_proxy("shop", "web-1", VERSION);
    let _b = cluster.add_proxy("shop", "web-2", VERSION);
    let run = cluster.check(&["--proxy", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let lines = section(&run.stdout, "proxies");
    assert_eq!(
        lines,
        [
            "[ok] the proxies are ready: 2 of 2 ready",
            &format!("[ok] the proxies run this meshctl's version: {VERSION}") as &str,
            "[ok] the proxies' certificates are valid and chain to the trust anchors: 2 checked",
        ],
        "{}",
        run.stdout
    );
    // The certificate came through the API server's pod proxy.
    assert!(cluster
        .server
        .requests()
        .iter()
        .any(|r| r == "GET /api/v1/namespaces/shop/pods/web-1:4191/proxy/identity"));
}

#[test]
fn proxy_with_an_old_version_fails() {
    let cluster = Cluster::installed();
    let _a = cluster.add_proxy("shop", "web-1", "0.0.9");
    let _b = cluster.add_proxy("other", "api-1", VERSION);
    let run = cluster.check(&["--proxy"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_line(
        &run,
        "[FAIL]",
        "the proxies run this meshctl's version",
        "MESH1602",
        "restart the workloads after meshctl upgrade",
    );
    assert!(
        run.stdout.contains("    shop/web-1: 0.0.9\n"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("other/api-1: "), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("[ok] the proxies are ready: 2 of 2 ready"),
        "{}",
        run.stdout
    );
}

#[test]
fn proxy_problems_fail() {
    let cluster = Cluster::installed();
    // Not ready.
    cluster
        .server
        .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    cluster
        .server
        .upsert(meshed_pod("shop", "starting", VERSION, false))
        .unwrap();
    // A leaf from another CA.
    let (root, _, root_key) = ca("rogue root", now() - DAY, now() + 365 * DAY, None);
    let rogue = signer(&root, root_key);
    cluster
        .server
        .upsert(meshed_pod("shop", "rogue", VERSION, true))
        .unwrap();
    let rogue_proxy = FakeProxy::serve(
        200,
        identity_json(
            &rogue,
            &root,
            "spiffe://cluster.local/ns/shop/sa/default",
            now() + DAY,
        ),
    );
    cluster
        .server
        .route_pod_port("shop", "rogue", 4191, rogue_proxy.addr);
    // No identity yet.
    cluster
        .server
        .upsert(meshed_pod("shop", "fresh", VERSION, true))
        .unwrap();
    let fresh = FakeProxy::serve(404, "no identity yet: waiting for the controller".into());
    cluster
        .server
        .route_pod_port("shop", "fresh", 4191, fresh.addr);
    // A certificate for another identity.
    cluster
        .server
        .upsert(meshed_pod("shop", "impostor", VERSION, true))
        .unwrap();
    let impostor = FakeProxy::serve(
        200,
        identity_json(
            &cluster.issuer(),
            &cluster.value("issuerCrtPEM"),
            "spiffe://cluster.local/ns/bank/sa/teller",
            now() + DAY,
        ),
    );
    cluster
        .server
        .route_pod_port("shop", "impostor", 4191, impostor.addr);
    // Not reachable through the pod proxy (503 at once: meshctl does not retry it).
    cluster
        .server
        .upsert(meshed_pod("shop", "unreachable", VERSION, true))
        .unwrap();
    // A fine one.
    let _ok = cluster.add_proxy("shop", "fine", VERSION);

    let run = cluster.check(&["--category", "proxies", "-n", "shop"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_line(
        &run,
        "[FAIL]",
        "the proxies are ready",
        "MESH1601",
        "logs NAME -c mesh-proxy",
    );
    assert!(
        run.stdout
            .contains("    shop/starting: container mesh-proxy is not ready"),
        "{}",
        run.stdout
    );
    assert_line(
        &run,
        "[FAIL]",
        "the proxies' certificates are valid and chain to the trust anchors",
        "MESH1603",
        "renews its certificate",
    );
    assert!(run.stdout.contains("shop/rogue: its certificate (spiffe://cluster.local/ns/shop/sa/default) does not verify"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("shop/fresh: the proxy has no certificate yet: no identity yet"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("shop/unreachable: cannot read its /identity through the API server's pod proxy: ServiceUnavailable (503)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("shop/impostor: its certificate is for spiffe://cluster.local/ns/bank/sa/teller, but the pod runs as spiffe://cluster.local/ns/shop/sa/default"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("shop/fine:"), "{}", run.stdout);
}

#[test]
fn kubeconfig_pointing_nowhere_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    let run = meshctl(
        dir.path(),
        &["check", "--kubeconfig", kubeconfig.to_str().unwrap()],
        "",
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_line(
        &run,
        "[FAIL]",
        "can reach the Kubernetes API",
        "MESH1002",
        "check that the cluster is running",
    );
    assert!(
        run.stdout.contains(&format!(
            "cannot reach the API server at http://127.0.0.1:{port}/: tcp connect error"
        )),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("the other checks need the Kubernetes API and did not run"));
    assert_eq!(section(&run.stdout, "install"), Vec::<&str>::new());

    // A kubeconfig that is not there.
    let run = meshctl(
        dir.path(),
        &["check", "--kubeconfig", "/nonexistent/kubeconfig"],
        "",
    );
    assert_eq!(run.code, Some(1));
    assert_line(
        &run,
        "[FAIL]",
        "can build a client from the kubeconfig",
        "MESH1001",
        "--kubeconfig FILE",
    );
    assert!(
        run.stdout
            .contains("/nonexistent/kubeconfig is not a usable kubeconfig"),
        "{}",
        run.stdout
    );
}

#[test]
fn api_server_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Connections complete in the backlog, but nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let run = meshctl(
        dir.path(),
        &["check", "--kubeconfig", kubeconfig.to_str().unwrap()],
        "",
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("GET /version: no answer within 5s"),
        "{}",
        run.stdout
    );
    drop(listener);
}

#[test]
fn pre_on_an_empty_cluster_passes() {
    let cluster = Cluster::empty();
    let run = cluster.check(&["--pre"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let lines = section(&run.stdout, "pre-install");
    assert_eq!(lines.len(), 5, "{}", run.stdout);
    for line in lines {
        assert!(line.starts_with("[ok] "), "{line}");
    }
    assert!(
        run.stdout
            .contains("[ok] Kubernetes version is supported: 1.32"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("\ninstall\n"));
}

#[test]
fn pre_with_denied_access_fails() {
    let cluster = Cluster::empty();
    cluster
        .server
        .deny_access("create", "rbac.authorization.k8s.io", "clusterroles");
    let run = cluster.check(&["--pre"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_line(
        &run,
        "[FAIL]",
        "can create the objects meshctl install writes",
        "MESH1101",
        "cluster-admin",
    );
    assert!(
        run.stdout
            .contains("you may not: create clusterroles.rbac.authorization.k8s.io (denied"),
        "{}",
        run.stdout
    );
    cluster.server.deny_access("create", "apps", "deployments");
    let run = cluster.check(&["--pre"]);
    assert!(
        run.stdout
            .contains("; create deployments.apps in namespace mesh-system (denied"),
        "{}",
        run.stdout
    );
}

#[test]
fn pre_warns_about_existing_installs_other_meshes_and_pod_security() {
    let cluster = Cluster::installed();
    cluster.server.set_server_version(1, 28);
    cluster
        .server
        .upsert(json!({"apiVersion": "admissionregistration.k8s.io/v1",
                       "kind": "MutatingWebhookConfiguration",
                       "metadata": {"name": "istio-sidecar-injector"}, "webhooks": []}))
        .unwrap();
    cluster
        .server
        .upsert(json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "locked",
                                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
        .unwrap();
    let run = cluster.check(&["--pre"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_line(
        &run,
        "[FAIL]",
        "Kubernetes version is supported",
        "MESH1003",
        "upgrade the cluster",
    );
    assert_line(
        &run,
        "[warn]",
        "the mesh is not installed yet",
        "MESH1102",
        "use meshctl upgrade",
    );
    assert_line(
        &run,
        "[warn]",
        "no other mesh's proxy injector",
        "MESH1103",
        "one mesh only",
    );
    assert!(
        run.stdout.contains("istio-sidecar-injector (Istio)"),
        "{}",
        run.stdout
    );
    assert_line(
        &run,
        "[warn]",
        "pods may use NET_ADMIN and NET_RAW (mesh-init)",
        "MESH1104",
        "proxy.initContainer=false",
    );
    assert!(
        run.stdout.contains("namespace(s) locked (restricted)"),
        "{}",
        run.stdout
    );
    assert_line(
        &run,
        "[warn]",
        "native sidecar containers are available",
        "MESH1105",
        "proxy.nativeSidecar=false",
    );

    cluster.server.set_server_version(1, 30);
    let run = cluster.check(&["--category", "kubernetes-api"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_line(
        &run,
        "[warn]",
        "Kubernetes version is supported",
        "MESH1003",
        "1.32 or newer",
    );
}

#[test]
fn category_filter() {
    let cluster = Cluster::installed();
    let run = cluster.check(&["--category", "identity", "--category", "version"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let json = cluster.check(&["--category", "identity", "-o", "json"]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let names: Vec<&str> = v["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kubernetes-api", "identity"]);
    assert!(run.stdout.contains("\nidentity\n--------\n"));
    assert!(run.stdout.contains("\nversion\n-------\n"));
    assert!(!run.stdout.contains("\ninstall\n"));
    assert!(!run.stdout.contains("\nwebhook\n"));

    let run = cluster.check(&["--category", "nope"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("invalid value 'nope'"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("kubernetes-api, pre-install, install, webhook, identity, version, proxies"),
        "{}",
        run.stderr
    );
    let run = cluster.check(&["--category", "identity", "--pre"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("--category picks the sections itself"),
        "{}",
        run.stderr
    );
    let run = cluster.check(&["-n", "shop"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("add --proxy"), "{}", run.stderr);
}

#[test]
fn wait_retries_until_fixed() {
    let cluster = Cluster::installed();
    cluster
        .server
        .remove(
            "coordination.k8s.io/v1",
            "leases",
            Some(NS),
            "mesh-controller",
        )
        .unwrap();
    let run = cluster.check(&["--category", "install", "--wait", "1s"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("waiting: 1 check(s) failing (MESH1206)"),
        "{}",
        run.stderr
    );
    assert_line(
        &run,
        "[FAIL]",
        "a controller leader is elected",
        "MESH1206",
        "Lease",
    );

    let server = &cluster.server;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            server
                .upsert(lease("mesh-controller-1", SystemTime::now()))
                .unwrap();
        });
        let run = cluster.check(&["--category", "install", "--wait", "30s"]);
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout
                .contains("[ok] a controller leader is elected: mesh-controller-1"),
            "{}",
            run.stdout
        );
        assert_eq!(
            run.stdout.matches("\ninstall\n").count(),
            1,
            "only the last run is printed"
        );
    });
}

#[test]
fn every_code_is_documented() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/check/codes.rs")).unwrap();
    let docs = std::fs::read_to_string(root.join("../docs/checks.md")).unwrap();
    let codes = |text: &str, prefix: &str| -> std::collections::BTreeSet<String> {
        text.match_indices(prefix)
            .filter_map(|(i, _)| {
                let code = &text[i + prefix.len()..];
                let digits: String = code.chars().take_while(char::is_ascii_digit).collect();
                (digits.len() == 4).then(|| format!("MESH{digits}"))
            })
            .collect()
    };
    let in_source = codes(&source, "\"MESH");
    let documented = codes(&docs, "### MESH");
    assert!(in_source.len() >= 29, "{in_source:?}");
    assert_eq!(
        in_source, documented,
        "docs/checks.md headings vs src/check/codes.rs"
    );
    for code in &in_source {
        // The hints link to docs/checks.md#mesh1xxx.
        let anchor = format!("<a id=\"{}\"></a>\n### {code}: ", code.to_ascii_lowercase());
        assert!(
            docs.contains(&anchor),
            "docs/checks.md has no anchor for {code}"
        );
    }
    // Every other source file uses codes only through codes.rs.
    for entry in std::fs::read_dir(root.join("src/check")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "codes.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for code in codes(&text, "MESH") {
            assert!(
                in_source.contains(&code),
                "{} names {code}, which codes.rs does not define",
                path.display()
            );
        }
    }
}

/// `meshctl check ARGS` on a pseudo-terminal (util-linux `script`), or `None` without it.
fn on_terminal(cluster: &Cluster, args: &str) -> Option<String> {
    let command = format!(
        "{} check --category version --kubeconfig {} {args}",
        env!("CARGO_BIN_EXE_meshctl"),
        cluster.kubeconfig.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .output();
    match out {
        Ok(out) => {
            assert!(out.status.success(), "{out:?}");
            Some(String::from_utf8(out.stdout).unwrap())
        }
        Err(e) if std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_some() => {
            panic!("script (util-linux) is needed for this test: {e}")
        }
        Err(e) => {
            eprintln!("skipping: script (util-linux) cannot run: {e}");
            None
        }
    }
}

#[test]
fn symbols_and_colours_on_a_terminal() {
    let cluster = Cluster::installed();
    let Some(fancy) = on_terminal(&cluster, "") else {
        return;
    };
    assert!(
        fancy.contains("\x1b[32m✔\x1b[0m the control plane configuration exists"),
        "{fancy:?}"
    );
    assert!(
        fancy.contains("Status check results are \x1b[32m✔\x1b[0m"),
        "{fancy:?}"
    );
    let plain = on_terminal(&cluster, "--no-color").unwrap();
    assert!(
        plain.contains("[ok] the control plane configuration exists"),
        "{plain:?}"
    );
    assert!(!plain.contains('\x1b'), "{plain:?}");
}
