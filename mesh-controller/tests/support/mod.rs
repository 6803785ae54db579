//! Shared helpers for the controller's integration tests: the real controller binary in local
//! mode, in-process mesh proxies, tiny upstream servers and a plain HTTP/1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The controller binary, running in local mode on fixed ports; killed on drop.
pub struct Controller {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Controller {
    pub fn start(dir: &Path, grpc: SocketAddr, admin: SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--source", "local", "--config-dir"])
            .arg(dir)
            .args([
                "--grpc-addr",
                &grpc.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("MESH_CONTROLLER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts");
        Self { child, grpc, admin }
    }

    /// The binary in Kubernetes mode, reaching the API through `kubeconfig`; `name` is its
    /// Lease holder identity.
    pub fn start_kubernetes(kubeconfig: &Path, name: &str) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--source", "kubernetes"])
            .args([
                "--grpc-addr",
                &grpc.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            // Two binaries run side by side; tests/webhook.rs covers the webhook.
            .env("MESH_CONTROLLER_WEBHOOK_ADDR", "off")
            .env("MESH_CONTROLLER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts");
        Self { child, grpc, admin }
    }

    pub fn start_fresh(dir: &Path) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start(dir, grpc, admin)
    }

    /// Waits until `/ready` answers 200.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http_get(self.admin, "localhost", "/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "controller not ready in 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = http_get(self.admin, "localhost", "/status")
            .await
            .expect("status");
        serde_json::from_str(&r.body).expect("status is JSON")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<Reply> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(Reply { status, body })
}

/// An upstream that answers every request with its name; counts requests.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(name)),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
            });
        }
    });
    Upstream { addr, hits, task }
}

/// An in-process mesh proxy using the controller at `controller`.
pub async fn proxy(controller: SocketAddr, workload: &str) -> mesh_proxy::app::Running {
    let raw = mesh_proxy::config::RawConfig {
        outbound_addr: Some("127.0.0.1:0".into()),
        inbound_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        controller_addr: Some(format!("http://{controller}")),
        workload: Some(workload.into()),
        connect_timeout: Some("500ms".into()),
        discovery_timeout: Some("5s".into()),
        shutdown_grace: Some("1s".into()),
        ..Default::default()
    };
    let cfg = mesh_proxy::config::Config::from_raw(&raw).expect("valid proxy config");
    mesh_proxy::app::start(cfg, None)
        .await
        .expect("proxy starts")
}

/// A gRPC discovery stream straight from the controller.
pub async fn destination(
    controller: SocketAddr,
    authority: &str,
) -> tonic::Streaming<pb::DestinationUpdate> {
    let mut client =
        pb::destination_client::DestinationClient::connect(format!("http://{controller}"))
            .await
            .expect("connect to controller");
    client
        .get(pb::GetDestination {
            authority: authority.into(),
            context: "ns:default/pod:test".into(),
        })
        .await
        .expect("stream")
        .into_inner()
}

/// Next message on a stream, within 5 s.
pub async fn next(
    s: &mut tonic::Streaming<pb::DestinationUpdate>,
) -> pb::destination_update::Update {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an update within 5s")
        .expect("stream ok")
        .expect("stream open")
        .update
        .expect("update set")
}

/// Writes a file atomically (write + rename), as a config tool should.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A Service selecting `app=<name>` workloads plus Workloads for each upstream.
pub fn service_yaml(name: &str, selector: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{{selector}}}\n  ports: [{{name: http, port: {port}, targetPort: http}}]\n---\n"
    )
}

pub fn workload_yaml(name: &str, labels: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  address: {}\n  ports: [{{name: http, port: {}}}]\n---\n",
        addr.ip(),
        addr.port()
    )
}
