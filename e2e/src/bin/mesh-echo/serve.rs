//! `mesh-echo serve`: HTTP/1.1, HTTP/2 (prior knowledge) and gRPC on one port.
//!
//! Every connection is served by hyper-util's auto builder; each request is routed by its
//! `content-type`: `application/grpc*` goes to the tonic-generated `EchoServer` (see
//! [`crate::grpc`]), called as a tower `Service`, and everything else gets the HTTP echo: a
//! short text body naming the replica, the request and the headers it saw. Query parameters
//! shape the HTTP answer: `?status=503` sets the status, `?delay_ms=50` delays it.
//! `--fail-rate` makes an evenly spread fraction of answers (HTTP and gRPC alike) fail with
//! 503 / UNAVAILABLE, and `--delay-ms` delays every answer. `GET /__stats` reports how many
//! answers were given and how many of them failed (it is not counted itself).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

use crate::grpc;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on for HTTP/1.1, HTTP/2 and gRPC (port 0: any free port; the
    /// address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name reported in every response (which replica answered).
    #[arg(long, default_value = "echo")]
    name: String,
    /// Fraction of requests (0.0-1.0) answered with 503 (gRPC: UNAVAILABLE).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer HTTP requests with a fixed small body only (for benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Also serve a server-speaks-first TCP protocol on this address: the server greets with
    /// `hello from NAME`, then answers each line with `NAME echo: LINE`.
    #[arg(long)]
    tcp_listen: Option<SocketAddr>,
}

/// The state shared by every connection of one replica.
pub struct Replica {
    pub name: String,
    fail_rate: f64,
    pub delay: Duration,
    quiet: bool,
    /// Answers decided so far, for the deterministic `--fail-rate`.
    decided: AtomicU64,
    /// Answers given (HTTP and gRPC, not `/__stats`).
    requests: AtomicU64,
    /// Answers given that were not 2xx / not OK.
    failed: AtomicU64,
}

impl Replica {
    /// Whether the next answer is one of the `--fail-rate` failures. A deterministic, evenly
    /// spread fraction: answer n fails when the running count of owed failures steps up (1 in
    /// 5 for 0.2).
    pub fn next_fails(&self) -> bool {
        let n = self.decided.fetch_add(1, Ordering::Relaxed);
        self.fail_rate > 0.0
            && ((n + 1) as f64 * self.fail_rate).floor() > (n as f64 * self.fail_rate).floor()
    }

    /// Counts one answer for `/__stats`.
    pub fn record(&self, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stats_json(&self) -> String {
        serde_json::json!({
            "replica": self.name,
            "requests": self.requests.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

/// The body of every answer: the HTTP echo's own, or tonic's.
type AnswerBody = Either<Full<Bytes>, tonic::body::Body>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate must be between 0.0 and 1.0, got {}",
        args.fail_rate
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", args.listen))?;
    let tcp_listener = match args.tcp_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--tcp-listen)"))?;
            let bound = l
                .local_addr()
                .with_context(|| format!("cannot read the address bound for {addr}"))?;
            Some((l, bound))
        }
        None => None,
    };
    let replica = Arc::new(Replica {
        name: args.name,
        fail_rate: args.fail_rate,
        delay: Duration::from_millis(args.delay_ms),
        quiet: args.quiet,
        decided: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    eprintln!("mesh-echo {} listening on {local}", replica.name);
    if let Some((l, bound)) = tcp_listener {
        eprintln!("mesh-echo {} tcp listening on {bound}", replica.name);
        tokio::spawn(crate::tcp::serve(l, replica.name.clone()));
    }
    let grpc_server = grpc::server(replica.clone());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept on {local} failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let replica = replica.clone();
        let grpc_server = grpc_server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let replica = replica.clone();
                let grpc_server = grpc_server.clone();
                async move {
                    let rsp: Response<AnswerBody> = if grpc::is_grpc(req.headers()) {
                        req.extensions_mut().insert(grpc::Peer(peer));
                        match grpc_server.oneshot(req).await {
                            Ok(rsp) => rsp.map(Either::Right),
                            Err(never) => match never {},
                        }
                    } else {
                        answer(&replica, peer, req).await.map(Either::Left)
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The HTTP echo answer.
async fn answer(
    replica: &Replica,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() == http::Method::GET && req.uri().path() == "/__stats" {
        let mut rsp = Response::new(Full::new(Bytes::from(replica.stats_json())));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return rsp;
    }
    if replica.quiet {
        replica.record(true);
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let fails = replica.next_fails();
    let mut status = StatusCode::OK;
    let mut delay = replica.delay;
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "status" => {
                    if let Ok(s) = v.parse::<u16>().map(StatusCode::from_u16) {
                        status = s.unwrap_or(StatusCode::OK);
                    }
                }
                "delay_ms" => {
                    if let Ok(ms) = v.parse::<u64>() {
                        delay += Duration::from_millis(ms);
                    }
                }
                _ => {}
            }
        }
    }
    if fails {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut body = format!(
        "replica={} status={} method={} path={} version={:?} peer={}\n",
        replica.name,
        status.as_u16(),
        req.method(),
        req.uri().path(),
        req.version(),
        peer
    );
    for (k, v) in req.headers() {
        body.push_str(&format!(
            "header {}: {}\n",
            k,
            v.to_str().unwrap_or("<binary>")
        ));
    }
    let (_, incoming) = req.into_parts();
    let received = incoming
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    body.push_str(&format!("body-bytes {received}\n"));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(&replica.name) {
        rsp.headers_mut().insert("x-replica", v);
    }
    replica.record(status.is_success());
    rsp
}
