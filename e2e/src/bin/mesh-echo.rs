//! `mesh-echo`: the sample workload used by the README demo, the benchmark and the test suites.
//!
//! `mesh-echo serve` answers HTTP/1.1 and HTTP/2 (prior knowledge) on one port with a short
//! text body naming the replica, the request and the headers it saw. Query parameters shape
//! the answer: `?status=503` sets the status, `?delay_ms=50` delays it, and `--fail-rate`
//! makes a fraction of answers 503 (a flaky replica).
//! `mesh-echo load` sends a bounded number of requests at a fixed rate and prints a summary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
#[command(
    name = "mesh-echo",
    version,
    about = "Sample HTTP echo workload and load generator for the mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 and HTTP/2 echo responses.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Name reported in every response (which replica answered).
        #[arg(long, default_value = "echo")]
        name: String,
        /// Fraction of requests (0.0-1.0) answered with 503.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Delay added to every response, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Answer with a fixed small body only (for benchmarks).
        #[arg(long)]
        quiet: bool,
    },
    /// GET a URL once and print the body (for scripts on machines without curl).
    Fetch { url: String },
    /// Send requests at a fixed rate and print a summary line.
    Load {
        /// URL to request (http:// only). The Host header comes from the URL.
        url: String,
        /// Connect to this address instead of the URL's host (e.g. a proxy's outbound port).
        #[arg(long)]
        via: Option<SocketAddr>,
        /// Requests to send (bounded).
        #[arg(long, default_value_t = 100)]
        requests: u64,
        /// Requests per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Print each response body's first line.
        #[arg(long)]
        verbose: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            listen,
            name,
            fail_rate,
            delay_ms,
            quiet,
        } => serve(listen, name, fail_rate, delay_ms, quiet).await,
        Cmd::Fetch { url } => fetch(url).await,
        Cmd::Load {
            url,
            via,
            requests,
            rate,
            verbose,
        } => load(url, via, requests, rate, verbose).await,
    }
}

struct Echo {
    name: String,
    fail_rate: f64,
    delay: Duration,
    quiet: bool,
    counter: AtomicU64,
}

async fn serve(
    listen: SocketAddr,
    name: String,
    fail_rate: f64,
    delay_ms: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&fail_rate),
        "--fail-rate must be between 0.0 and 1.0, got {fail_rate}"
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let echo = Arc::new(Echo {
        name,
        fail_rate,
        delay: Duration::from_millis(delay_ms),
        quiet,
        counter: AtomicU64::new(0),
    });
    eprintln!("mesh-echo {} listening on {listen}", echo.name);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let echo = echo.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let echo = echo.clone();
                async move { Ok::<_, Infallible>(answer(&echo, peer, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    echo: &Echo,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if echo.quiet {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let n = echo.counter.fetch_add(1, Ordering::Relaxed);
    let mut status = StatusCode::OK;
    let mut delay = echo.delay;
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
    // A deterministic, evenly spread fraction of failures: request n fails when the running
    // count of owed failures steps up (1 in 5 for 0.2).
    if echo.fail_rate > 0.0
        && ((n + 1) as f64 * echo.fail_rate).floor() > (n as f64 * echo.fail_rate).floor()
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut body = format!(
        "replica={} status={} method={} path={} version={:?} peer={}\n",
        echo.name,
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
    if let Ok(v) = http::HeaderValue::from_str(&echo.name) {
        rsp.headers_mut().insert("x-replica", v);
    }
    rsp
}

async fn fetch(url: String) -> anyhow::Result<()> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a valid URL"))?;
    let authority = uri.authority().context("the URL has no host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .body(Full::new(Bytes::new()))?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

async fn load(
    url: String,
    via: Option<SocketAddr>,
    requests: u64,
    rate: u64,
    verbose: bool,
) -> anyhow::Result<()> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a valid URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported, got '{url}'"
    );
    let authority = uri
        .authority()
        .context("the URL has no host")?
        .as_str()
        .to_string();
    let target = match via {
        Some(a) => a.to_string(),
        None => authority.clone(),
    };
    anyhow::ensure!(rate > 0, "--rate must be at least 1");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let stream = tokio::net::TcpStream::connect(&target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut replicas = std::collections::BTreeMap::<String, u64>::new();
    let start = Instant::now();
    for i in 0..requests {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        if sender.ready().await.is_err() {
            let stream = tokio::net::TcpStream::connect(&target).await?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender = s;
        }
        let req = Request::get(path.as_str())
            .header(http::header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()))?;
        match sender.send_request(req).await {
            Ok(rsp) => {
                let status = rsp.status();
                let replica = rsp
                    .headers()
                    .get("x-replica")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                let body = rsp.into_body().collect().await?.to_bytes();
                if status.is_success() {
                    ok += 1;
                } else {
                    failed += 1;
                }
                *replicas.entry(replica).or_default() += 1;
                if verbose {
                    let text = String::from_utf8_lossy(&body);
                    println!("{} {}", status.as_u16(), text.lines().next().unwrap_or(""));
                }
            }
            Err(e) => {
                failed += 1;
                if verbose {
                    println!("error {e}");
                }
            }
        }
    }
    let spread: Vec<String> = replicas.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "sent={requests} ok={ok} failed={failed} replicas: {}",
        spread.join(" ")
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
