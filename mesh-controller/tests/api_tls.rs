//! A Kubernetes API server whose certificate the controller refuses: the log names the
//! reason (the rustls/webpki error), not only "client error (Connect)". The server is a
//! real TLS listener in the test (tokio-rustls) presenting rcgen certificates.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::free_port;
use tokio::net::TcpListener;

/// A TLS server presenting `cert`; it completes no request (the client refuses it first).
async fn tls_server(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> std::net::SocketAddr {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The handshake fails on the client's side; nothing to serve.
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

fn kubeconfig(path: &Path, addr: std::net::SocketAddr, ca_pem: &str) {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    std::fs::write(
        path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: tls
  cluster:
    server: https://{addr}
    certificate-authority-data: {ca}
users:
- name: tls
  user:
    token: test
contexts:
- name: tls
  context:
    cluster: tls
    user: tls
current-context: tls
"
        ),
    )
    .unwrap();
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the controller against the kubeconfig until its log has the watches' outage warning
/// holding `needle`; that line.
fn outage_line(dir: &Path, kubeconfig: &Path, needle: &str) -> String {
    let log = dir.join("controller.log");
    let out = std::fs::File::create(&log).unwrap();
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--source", "kubernetes"])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "tls-test")
            .env("MESH_CONTROLLER_WEBHOOK_ADDR", "off")
            .env("MESH_CONTROLLER_LOG", "mesh_controller=info")
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("lost the Kubernetes API") && l.contains(needle))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within 20s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_used_as_the_server_certificate_is_named_in_the_log() {
    // Self-signed with CA:TRUE, as some clusters' API servers present (kubectl accepts it).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let addr = tls_server(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kubeconfig(&path, addr, &cert.pem());
    let line = outage_line(dir.path(), &path, "CaUsedAsEndEntity");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
    // One warning for the outage, not one per kind and retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("lost the Kubernetes API"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_for_another_name_is_named_in_the_log() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["api.example.com".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let addr = tls_server(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kubeconfig(&path, addr, &ca.pem());
    let line = outage_line(dir.path(), &path, "not valid for name");
    assert!(line.contains("api.example.com"), "{line}");
}
