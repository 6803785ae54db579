//! The HTTP client side shared by `fetch` and `load`: target parsing, name resolution and
//! connecting, the HTTP/1.1 keep-alive pool, the shared HTTP/2 connection, and the short
//! stable error kinds that failures are counted by.
//!
//! The HTTP/1.1 pool is written here rather than taken from hyper-util's legacy client so
//! that every step is visible and honest: a name is resolved with `tokio::net::lookup_host`
//! once per new connection, `--via` only changes where the socket connects (the `Host` header
//! keeps the URL's authority), and a request that fails on a reused connection is reported as
//! it happened instead of being retried on a fresh one (the legacy client retries requests
//! it considers "canceled" by default and hides how connections are chosen).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where requests go: the URL's authority (sent as `Host` / `:authority`) and the address the
/// sockets connect to (the URL's `host:port`, or `--via`).
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given, for messages.
    pub url: String,
    /// `host[:port]` from the URL, sent as `Host` / `:authority`.
    pub authority: String,
    /// The path of the URL, without the query.
    pub path: String,
    /// The query of the URL, if any.
    pub query: Option<String>,
    /// The path and query of the URL (`/` when empty).
    pub path_and_query: String,
    /// `host:port` to resolve and connect to.
    pub connect: String,
    /// Whether `connect` came from `--via`.
    pub via: bool,
}

impl Target {
    /// Parses an `http://` URL; `via` replaces the address connected to.
    pub fn parse(url: &str, via: Option<&str>) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("'{url}' is not a valid URL: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "only http:// URLs are supported, got '{url}'"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("the URL '{url}' has no host"))?;
        let connect = match via {
            Some(v) => v.to_string(),
            None => format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
        };
        Ok(Target {
            url: url.to_string(),
            authority: authority.as_str().to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            connect,
            via: via.is_some(),
        })
    }

    /// `VERB URL`, and `via ADDR` when connecting elsewhere, for messages.
    pub fn describe(&self, verb: &str) -> String {
        if self.via {
            format!("{verb} {} via {}", self.url, self.connect)
        } else {
            format!("{verb} {}", self.url)
        }
    }
}

/// A request that did not get an answer, with its short stable kind (`connect refused`,
/// `connect timeout`, `reset`, `closed`, `timeout`, `other: ...`) and the full story.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl StdError for Failure {}

impl Failure {
    pub fn timeout(detail: String) -> Failure {
        Failure {
            kind: "timeout".into(),
            detail,
        }
    }

    /// The same failure, with what was being done in front of its story.
    pub fn context(self, what: &str) -> Failure {
        Failure {
            kind: self.kind,
            detail: format!("{what}: {}", self.detail),
        }
    }

    /// A failure of `what` caused by `err`, classified by the error chain.
    pub fn from_error(what: &str, err: &(dyn StdError + 'static)) -> Failure {
        let cause = chain(err);
        let kind = classify(err).unwrap_or_else(|| other(&cause));
        Failure {
            kind,
            detail: format!("{what}: {cause}"),
        }
    }
}

/// `other: <first 60 chars>`.
fn other(detail: &str) -> String {
    format!("other: {}", detail.chars().take(60).collect::<String>())
}

/// An error and its sources, joined by `: `.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// The stable kind of a transport error, from the most specific cause found in its chain.
pub fn classify(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut hyper_kind = None;
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(f) = e.downcast_ref::<Failure>() {
            return Some(f.kind.clone());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(kind) = io_kind(io) {
                return Some(kind.into());
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if let Some(io) = h2.get_io() {
                if let Some(kind) = io_kind(io) {
                    return Some(kind.into());
                }
            }
            if h2.is_reset() {
                return Some("reset".into());
            }
            if h2.is_go_away() {
                return Some("closed".into());
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                hyper_kind.get_or_insert("timeout");
            } else if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                hyper_kind.get_or_insert("closed");
            }
        }
        source = e.source();
    }
    hyper_kind.map(str::to_string)
}

fn io_kind(io: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused => Some("connect refused"),
        ConnectionReset | ConnectionAborted | BrokenPipe => Some("reset"),
        UnexpectedEof => Some("closed"),
        TimedOut => Some("timeout"),
        _ => None,
    }
}

/// Resolves `addr` (`host:port`) with the system resolver and connects to the first address
/// that accepts, giving up at `deadline` (`connect timeout`).
pub async fn connect(addr: &str, deadline: Option<Instant>) -> Result<TcpStream, Failure> {
    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| Failure::from_error(&format!("cannot resolve {addr}"), &e))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => {
                    let to = if addr == a.to_string() {
                        format!("cannot connect to {addr}")
                    } else {
                        format!("cannot connect to {addr} ({a})")
                    };
                    let mut f = Failure::from_error(&to, &e);
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        f.kind = "connect timeout".into();
                    }
                    last = Some(f);
                }
            }
        }
        Err(last.unwrap_or_else(|| Failure {
            kind: other(&format!("{addr} resolved to no address")),
            detail: format!("{addr} resolved to no address"),
        }))
    };
    match deadline {
        None => attempt.await,
        Some(d) => match tokio::time::timeout_at(d, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                kind: "connect timeout".into(),
                detail: format!("connecting to {addr} timed out"),
            }),
        },
    }
}

/// A finished HTTP exchange.
pub struct HttpAnswer {
    pub status: StatusCode,
    /// The `x-replica` response header.
    pub replica: Option<String>,
    pub body: Bytes,
}

/// The HTTP versions the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    Http1,
    Http2,
}

/// An HTTP client for one target: a keep-alive pool (HTTP/1.1) or one multiplexed connection
/// (HTTP/2 prior knowledge).
pub struct HttpClient {
    target: Target,
    conns: Conns,
}

enum Conns {
    /// Idle keep-alive connections; a request takes one (or opens a new one) and puts it back
    /// once the response body has been read.
    Http1(Mutex<Vec<http1::SendRequest<Full<Bytes>>>>),
    /// The shared connection, replaced on the next request after it breaks.
    Http2(tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>),
}

impl HttpClient {
    pub fn new(target: Target, version: Version) -> HttpClient {
        let conns = match version {
            Version::Http1 => Conns::Http1(Mutex::new(Vec::new())),
            Version::Http2 => Conns::Http2(tokio::sync::Mutex::new(None)),
        };
        HttpClient { target, conns }
    }

    /// GETs the target's URL with `headers` added, giving up at `deadline`: a connection not
    /// established by then is a `connect timeout`, anything later a `timeout`.
    pub async fn get(&self, headers: &HeaderMap, deadline: Instant) -> Result<HttpAnswer, Failure> {
        match tokio::time::timeout_at(deadline, self.get_inner(headers, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::timeout(format!(
                "{} timed out",
                self.target.describe("GET")
            ))),
        }
    }

    async fn get_inner(
        &self,
        headers: &HeaderMap,
        deadline: Instant,
    ) -> Result<HttpAnswer, Failure> {
        let t = &self.target;
        let what = t.describe("GET");
        match &self.conns {
            Conns::Http1(idle) => {
                let mut sender = match take_idle(idle).await {
                    Some(s) => s,
                    None => {
                        let stream = connect(&t.connect, Some(deadline))
                            .await
                            .map_err(|f| f.context(&what))?;
                        let (s, conn) = http1::handshake(TokioIo::new(stream))
                            .await
                            .map_err(|e| Failure::from_error(&what, &e))?;
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        s
                    }
                };
                let mut req = Request::get(t.path_and_query.as_str())
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| Failure::from_error(&what, &e))?;
                let host = HeaderValue::from_str(&t.authority)
                    .map_err(|e| Failure::from_error(&what, &e))?;
                req.headers_mut().insert(http::header::HOST, host);
                add_headers(req.headers_mut(), headers);
                let rsp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| Failure::from_error(&what, &e))?;
                let answer = read_answer(rsp, &what).await?;
                if !sender.is_closed() {
                    idle.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
                }
                Ok(answer)
            }
            Conns::Http2(shared) => {
                let mut sender =
                    match tokio::time::timeout_at(deadline, self.h2_sender(shared, deadline)).await
                    {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(Failure {
                                kind: "connect timeout".into(),
                                detail: format!("{what}: connecting timed out"),
                            })
                        }
                    };
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(t.authority.as_str())
                    .path_and_query(t.path_and_query.as_str())
                    .build()
                    .map_err(|e| Failure::from_error(&what, &e))?;
                let mut req = Request::get(uri)
                    .version(http::Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| Failure::from_error(&what, &e))?;
                add_headers(req.headers_mut(), headers);
                sender
                    .ready()
                    .await
                    .map_err(|e| Failure::from_error(&what, &e))?;
                let rsp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| Failure::from_error(&what, &e))?;
                read_answer(rsp, &what).await
            }
        }
    }

    /// The shared HTTP/2 connection, opened if there is none or the last one broke.
    async fn h2_sender(
        &self,
        shared: &tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
        deadline: Instant,
    ) -> Result<http2::SendRequest<Full<Bytes>>, Failure> {
        let mut slot = shared.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        *slot = None;
        let t = &self.target;
        let stream = connect(&t.connect, Some(deadline))
            .await
            .map_err(|f| f.context(&t.describe("GET")))?;
        let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| {
                Failure::from_error(&format!("HTTP/2 handshake with {}", t.connect), &e)
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(s.clone());
        Ok(s)
    }
}

/// An idle HTTP/1.1 connection that is still open and ready, if there is one. Connections the
/// server is known to have closed are dropped here; one it closes just now is found out by
/// the request, which then fails (and is counted) rather than being retried.
async fn take_idle(
    idle: &Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
) -> Option<http1::SendRequest<Full<Bytes>>> {
    loop {
        let mut s = idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        if s.is_closed() {
            continue;
        }
        if s.ready().await.is_ok() {
            return Some(s);
        }
    }
}

/// Adds the `--header` values, replacing any value the request already had for that name.
fn add_headers(dst: &mut HeaderMap, extra: &HeaderMap) {
    for name in extra.keys() {
        dst.remove(name);
    }
    for (name, value) in extra {
        dst.append(name.clone(), value.clone());
    }
}

async fn read_answer(
    rsp: http::Response<hyper::body::Incoming>,
    what: &str,
) -> Result<HttpAnswer, Failure> {
    let status = rsp.status();
    let replica = rsp
        .headers()
        .get("x-replica")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::from_error(&format!("{what}: reading the body"), &e))?
        .to_bytes();
    Ok(HttpAnswer {
        status,
        replica,
        body,
    })
}

/// Parses `NAME:VALUE` (`--header`).
pub fn parse_header(s: &str) -> Result<(http::HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not NAME:VALUE"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("'{}' is not a valid header name: {e}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|e| format!("'{}' is not a valid header value: {e}", value.trim()))?;
    Ok((name, value))
}

/// The `--header` values as a map.
pub fn header_map(headers: &[(http::HeaderName, HeaderValue)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(k.clone(), v.clone());
    }
    map
}
