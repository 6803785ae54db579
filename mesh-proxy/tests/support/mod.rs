//! Test support: a real proxy in-process on ephemeral ports, test upstream servers (HTTP/1,
//! HTTP/2, behaviours per request), clients, and a fake controller serving the Destination
//! API so that discovery updates can be pushed at will.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::v1 as pb;
use mesh_proxy::app::Running;
use mesh_proxy::config::Config;
pub use mesh_proxy::config::RawConfig;
use tokio::sync::mpsc;

pub fn raw_config() -> RawConfig {
    RawConfig {
        outbound_addr: Some("127.0.0.1:0".into()),
        inbound_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        detect_timeout: Some("100ms".into()),
        connect_timeout: Some("500ms".into()),
        discovery_timeout: Some("2s".into()),
        shutdown_grace: Some("5s".into()),
        ..Default::default()
    }
}

pub async fn start_proxy(raw: RawConfig) -> Running {
    let cfg = Config::from_raw(&raw).expect("valid test config");
    mesh_proxy::app::start(cfg, None)
        .await
        .expect("proxy starts")
}

/// Writes a static discovery file and returns its guard (keeps the directory alive).
pub fn static_file(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

/// What a test upstream does with a request.
#[derive(Clone, Copy)]
pub enum Behaviour {
    Ok,
    Delay(Duration),
    /// Answer 503 to every `n`th request (1 = always).
    FailEvery(u64),
    /// Answer every request with this status.
    Status(StatusCode),
}

/// HTTP version and Host of a request an upstream received.
pub type Seen = (http::Version, Option<String>);

/// A test upstream: answers HTTP/1 and HTTP/2 with `name` in the body and `x-replica`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicU64>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Versions and Host headers seen, for protocol assertions.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The headers of every request received, in order.
    pub headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> http::HeaderMap {
        self.headers
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

pub async fn upstream(name: &'static str, behaviour: Behaviour) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let accepted = conns.clone();
    let behaviour = Arc::new(Mutex::new(behaviour));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let headers = Arc::new(Mutex::new(Vec::new()));
    let (h, b, s, hd) = (
        hits.clone(),
        behaviour.clone(),
        seen.clone(),
        headers.clone(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (h, b, s, hd) = (h.clone(), b.clone(), s.clone(), hd.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (h, b, s, hd) = (h.clone(), b.clone(), s.clone(), hd.clone());
                    async move {
                        hd.lock().unwrap().push(req.headers().clone());
                        let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .or_else(|| req.uri().authority().map(|a| a.to_string()));
                        s.lock().unwrap().push((req.version(), host));
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let behaviour = *b.lock().unwrap();
                        let status = match behaviour {
                            Behaviour::Ok => StatusCode::OK,
                            Behaviour::Delay(d) => {
                                tokio::time::sleep(d).await;
                                StatusCode::OK
                            }
                            Behaviour::FailEvery(k) if n % k == 0 => {
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                            Behaviour::FailEvery(_) => StatusCode::OK,
                            Behaviour::Status(s) => s,
                        };
                        let mut rsp = Response::new(Full::new(Bytes::from(format!(
                            "{name} got {} bytes\n",
                            body.len()
                        ))));
                        *rsp.status_mut() = status;
                        rsp.headers_mut()
                            .insert("x-replica", http::HeaderValue::from_static(name));
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        conns,
        behaviour,
        seen,
        headers,
        task,
    }
}

pub type H1Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn h1_client() -> H1Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// One HTTP/2 (prior knowledge) GET to `uri` over a connection to `via`: the URI's
/// authority becomes `:authority`. Returns the status and `x-replica`.
pub async fn h2_get(via: SocketAddr, uri: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(via).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    let replica = rsp
        .headers()
        .get("x-replica")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (rsp.status(), replica)
}

/// A simple response: status, `x-replica`, body text, and the proxy error header if any.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub replica: String,
    pub body: String,
    pub proxy_error: Option<String>,
}

/// Sends `method path` through the proxy at `via` with `Host: host`.
pub async fn send(
    client: &H1Client,
    via: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: &'static str,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{via}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request finishes in time")
        .expect("request gets a response");
    let status = rsp.status();
    let replica = rsp
        .headers()
        .get("x-replica")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let proxy_error = rsp
        .headers()
        .get("mesh-proxy-error")
        .map(|v| v.to_str().unwrap().to_string());
    let body =
        String::from_utf8_lossy(&rsp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer {
        status,
        replica,
        body,
        proxy_error,
    }
}

pub async fn get(client: &H1Client, via: SocketAddr, host: &str, path: &str) -> Answer {
    send(client, via, host, "GET", path, "").await
}

/// A GET through the proxy at `via` with `Host: host` and extra headers (a name may repeat).
pub async fn get_with_headers(
    client: &H1Client,
    via: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut req = Request::builder()
        .uri(format!("http://{via}{path}"))
        .header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request finishes in time")
        .expect("request gets a response");
    let status = rsp.status();
    let _ = rsp.into_body().collect().await;
    status
}

/// Plain GET on the admin port.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let client = h1_client();
    let rsp = client
        .get(format!("http://{admin}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Value of the first metric line that starts with `prefix` (0 when absent).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- fake controller ----

type Tx = mpsc::Sender<Result<pb::DestinationUpdate, tonic::Status>>;
type PolicyTx = mpsc::Sender<Result<pb::WorkloadPolicy, tonic::Status>>;

#[derive(Default)]
pub struct FakeController {
    state: Mutex<HashMap<String, pb::DestinationUpdate>>,
    subs: Mutex<HashMap<String, Vec<Tx>>>,
    /// Declared protocol per inbound port, and the open inbound streams.
    inbound: Mutex<HashMap<u32, pb::Protocol>>,
    inbound_subs: Mutex<Vec<mpsc::Sender<Result<pb::InboundPolicy, tonic::Status>>>>,
    /// Whole workload policies by workload name (override `inbound`), and their streams.
    workload_policies: Mutex<HashMap<String, pb::WorkloadPolicy>>,
    workload_subs: Mutex<Vec<(String, PolicyTx)>>,
    /// The certificate authority behind `Identity.Certify` (none: UNAVAILABLE).
    pub ca: Mutex<Option<TestCa>>,
    /// Certify requests answered, by result.
    pub certified: AtomicU64,
    pub refused: AtomicU64,
}

/// A real CA for tests: anchors, an issuer signing leaves of `lifetime`.
#[derive(Clone)]
pub struct TestCa {
    pub anchors: Vec<mesh_identity::ca::Anchor>,
    pub issuer: mesh_identity::ca::Issuer,
    pub lifetime: Duration,
}

impl TestCa {
    pub fn new(lifetime: Duration) -> Self {
        let anchor =
            mesh_identity::ca::Anchor::generate("test anchor", Duration::from_secs(3600)).unwrap();
        let issuer =
            mesh_identity::ca::Issuer::generate(&anchor, "test issuer", Duration::from_secs(3600))
                .unwrap();
        Self {
            anchors: vec![anchor],
            issuer,
            lifetime,
        }
    }

    fn update(&self) -> pb::IdentityUpdate {
        pb::IdentityUpdate {
            bundle: Some(pb::TrustBundle {
                version: 1,
                anchors_der: self.anchors.iter().map(|a| a.cert_der().to_vec()).collect(),
            }),
            issuer_sha256: self.issuer.sha256().to_vec(),
            renew_jitter_ms: 0,
        }
    }
}

/// The token the fake controller accepts as proof of `identity`.
pub fn token_for(identity: &str) -> String {
    format!("test-token:{identity}")
}

pub fn endpoint(addr: SocketAddr) -> pb::Endpoint {
    pb::Endpoint::from(&mesh_core::Endpoint::new(addr))
}

pub fn state(
    endpoints: Vec<pb::Endpoint>,
    profile: Option<pb::ServiceProfile>,
) -> pb::DestinationUpdate {
    pb::DestinationUpdate {
        update: Some(pb::destination_update::Update::State(pb::ServiceState {
            profile,
            endpoints,
        })),
    }
}

impl FakeController {
    /// Sets the full state of `authority` and sends it to its subscribers.
    pub async fn set(&self, authority: &str, update: pb::DestinationUpdate) {
        self.state
            .lock()
            .unwrap()
            .insert(authority.to_string(), update.clone());
        self.push(authority, update).await;
    }

    /// Sends an incremental update to the subscribers of `authority`.
    pub async fn push(&self, authority: &str, update: pb::DestinationUpdate) {
        let subs = self
            .subs
            .lock()
            .unwrap()
            .get(authority)
            .cloned()
            .unwrap_or_default();
        for tx in subs {
            let _ = tx.send(Ok(update.clone())).await;
        }
    }

    /// Ends the streams of `authority` with an error status (sent in gRPC trailers).
    pub async fn fail(&self, authority: &str, status: tonic::Status) {
        let subs = self
            .subs
            .lock()
            .unwrap()
            .remove(authority)
            .unwrap_or_default();
        for tx in subs {
            let _ = tx.send(Err(status.clone())).await;
        }
    }

    /// Declares the protocol of an inbound port (served to proxies that watch it from now on).
    pub fn set_inbound(&self, port: u16, protocol: pb::Protocol) {
        self.inbound.lock().unwrap().insert(port as u32, protocol);
    }

    /// Sets the whole policy of `workload` and sends it to its open streams.
    pub async fn set_workload_policy(&self, workload: &str, policy: pb::WorkloadPolicy) {
        self.workload_policies
            .lock()
            .unwrap()
            .insert(workload.to_string(), policy.clone());
        let subs: Vec<_> = self
            .workload_subs
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == workload)
            .map(|(_, tx)| tx.clone())
            .collect();
        for tx in subs {
            let _ = tx.send(Ok(policy.clone())).await;
        }
    }

    pub fn subscribers(&self, authority: &str) -> usize {
        self.subs
            .lock()
            .unwrap()
            .get(authority)
            .map_or(0, |v| v.iter().filter(|t| !t.is_closed()).count())
    }
}

/// The gRPC face of a [`FakeController`].
pub struct ControllerSvc(pub Arc<FakeController>);

#[tonic::async_trait]
impl pb::destination_server::Destination for ControllerSvc {
    type GetStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::DestinationUpdate, tonic::Status>>;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        let authority = req.into_inner().authority;
        let (tx, rx) = mpsc::channel(16);
        let first = self
            .0
            .state
            .lock()
            .unwrap()
            .get(&authority)
            .cloned()
            .unwrap_or(pb::DestinationUpdate {
                update: Some(pb::destination_update::Update::NotFound(pb::NotFound {})),
            });
        tx.send(Ok(first)).await.ok();
        self.0
            .subs
            .lock()
            .unwrap()
            .entry(authority)
            .or_default()
            .push(tx);
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

#[tonic::async_trait]
impl pb::inbound_server::Inbound for ControllerSvc {
    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::InboundPolicy, tonic::Status>>;

    async fn watch(
        &self,
        req: tonic::Request<pb::InboundPort>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let port = req.into_inner().port;
        let protocol = self
            .0
            .inbound
            .lock()
            .unwrap()
            .get(&port)
            .copied()
            .unwrap_or(pb::Protocol::Detect);
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(pb::InboundPolicy {
            server: format!("port-{port}"),
            protocol: protocol as i32,
            ..Default::default()
        }))
        .await
        .ok();
        self.0.inbound_subs.lock().unwrap().push(tx);
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    type WatchWorkloadStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::WorkloadPolicy, tonic::Status>>;

    async fn watch_workload(
        &self,
        req: tonic::Request<pb::InboundWorkload>,
    ) -> Result<tonic::Response<Self::WatchWorkloadStream>, tonic::Status> {
        let workload = req.into_inner().workload;
        let set = self
            .0
            .workload_policies
            .lock()
            .unwrap()
            .get(&workload)
            .cloned();
        if let Some(policy) = set {
            let (tx, rx) = mpsc::channel(4);
            tx.send(Ok(policy)).await.ok();
            self.0.workload_subs.lock().unwrap().push((workload, tx));
            return Ok(tonic::Response::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ));
        }
        let ports = self
            .0
            .inbound
            .lock()
            .unwrap()
            .iter()
            .map(|(port, protocol)| {
                let policy = pb::InboundPolicy {
                    server: format!("port-{port}"),
                    protocol: *protocol as i32,
                    ..Default::default()
                };
                (*port, policy)
            })
            .collect();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(pb::WorkloadPolicy {
            ports,
            ..Default::default()
        }))
        .await
        .ok();
        self.0.workload_subs.lock().unwrap().push((workload, tx));
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for ControllerSvc {
    async fn certify(
        &self,
        req: tonic::Request<pb::CertifyRequest>,
    ) -> Result<tonic::Response<pb::CertifyResponse>, tonic::Status> {
        let r = req.into_inner();
        let Some(ca) = self.0.ca.lock().unwrap().clone() else {
            return Err(tonic::Status::unavailable("no CA in this test"));
        };
        if r.token != token_for(&r.identity) {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(tonic::Status::unauthenticated("wrong token"));
        }
        let identity = mesh_core::Identity::parse(&r.identity)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let leaf = ca
            .issuer
            .sign_csr(&r.csr_der, &identity, ca.lifetime)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        self.0.certified.fetch_add(1, Ordering::Relaxed);
        let valid_until_unix = leaf
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok(tonic::Response::new(pb::CertifyResponse {
            leaf_der: leaf.cert_der.to_vec(),
            intermediates_der: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix,
        }))
    }

    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::IdentityUpdate, tonic::Status>>;

    async fn watch(
        &self,
        _req: tonic::Request<tonic::Streaming<pb::IdentityReport>>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let Some(ca) = self.0.ca.lock().unwrap().clone() else {
            return Err(tonic::Status::unavailable("no CA in this test"));
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(ca.update())).await.ok();
        // Keep the stream open for the proxy's life.
        tokio::spawn(async move {
            tx.closed().await;
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// A fake controller served on its own runtime, so that dropping it kills every connection
/// and stream at once, as a crashed controller would.
pub struct ControllerProcess {
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl ControllerProcess {
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves the fake controller on `addr` (port 0 for an ephemeral one).
pub fn start_controller_at(ctrl: Arc<FakeController>, addr: SocketAddr) -> ControllerProcess {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // std sets SO_REUSEADDR on Unix, so a restarted controller can take the same port.
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(
                ControllerSvc(ctrl.clone()),
            ))
            .add_service(pb::inbound_server::InboundServer::new(ControllerSvc(
                ctrl.clone(),
            )))
            .add_service(pb::identity_server::IdentityServer::new(ControllerSvc(
                ctrl,
            )))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    ControllerProcess { addr, rt: Some(rt) }
}

pub fn start_controller(ctrl: Arc<FakeController>) -> ControllerProcess {
    start_controller_at(ctrl, "127.0.0.1:0".parse().unwrap())
}
