//! gRPC: the `mesh.echo.v1.Echo` service generated from `proto/echo.proto`, its server side
//! (called by `serve` for `application/grpc*` requests), the client channel used by `load`
//! and `grpc`, and the `mesh-echo grpc URL` one-shot command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::HeaderMap;
use hyper_util::rt::TokioIo;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::client::{self, Failure, Target};
use crate::serve::Replica;

/// Code generated from `proto/echo.proto` (`package mesh.echo.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mesh.echo.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::EchoServer;
use pb::{EchoReply, EchoRequest};

/// The TCP peer of the connection a request arrived on, put in the request's extensions by
/// the connection handler.
#[derive(Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The Echo service of one replica.
pub struct EchoService {
    replica: Arc<Replica>,
}

/// The tower Service that answers gRPC requests for `replica`.
pub fn server(replica: Arc<Replica>) -> EchoServer<EchoService> {
    EchoServer::new(EchoService { replica })
}

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let replica = &self.replica;
        let fails = replica.next_fails();
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.to_string())
            .unwrap_or_default();
        let headers = metadata_strings(request.metadata());
        let msg = request.into_inner();
        let delay = replica.delay + Duration::from_millis(u64::from(msg.delay_ms));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let code = if fails {
            Code::Unavailable
        } else {
            Code::from_i32(msg.code)
        };
        let mut metadata = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(replica.name.as_str()) {
            metadata.insert("x-replica", v);
        }
        replica.record(code == Code::Ok);
        if code != Code::Ok {
            let why = if fails { "--fail-rate" } else { "asked for" };
            return Err(Status::with_metadata(
                code,
                format!("{} answers {code:?} ({why})", replica.name),
                metadata,
            ));
        }
        let mut rsp = tonic::Response::new(EchoReply {
            replica: replica.name.clone(),
            message: msg.message,
            headers: headers.into_iter().collect(),
            peer,
        });
        *rsp.metadata_mut() = metadata;
        Ok(rsp)
    }
}

/// Metadata as text: binary values shown as `<binary>`, repeated keys joined by `, `.
fn metadata_strings(md: &MetadataMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::<String, String>::new();
    for kv in md.iter() {
        let (k, v) = match kv {
            KeyAndValueRef::Ascii(k, v) => (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").to_string(),
            ),
            KeyAndValueRef::Binary(k, _) => (k.as_str().to_string(), "<binary>".to_string()),
        };
        out.entry(k)
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// A lazily connecting channel to `target`: `:authority` is the URL's, the socket goes to
/// `target.connect` (the URL's host or `--via`), resolved with the system resolver on every
/// new connection.
pub fn channel(target: &Target) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
        .with_context(|| format!("'{}' is not a valid gRPC target", target.url))?;
    let addr = target.connect.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let addr = addr.clone();
        async move {
            let stream = client::connect(&addr, None).await?;
            Ok::<_, Failure>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A finished gRPC call: the status and the replica named by `x-replica` or the reply.
pub struct GrpcAnswer {
    pub code: Code,
    pub replica: Option<String>,
    pub reply: Result<EchoReply, Status>,
}

/// Calls `Echo.Echo`; a status the server (or a proxy) answered with is an answer, a status
/// tonic made up from a transport error is a [`Failure`].
pub async fn call(
    channel: Channel,
    request: EchoRequest,
    headers: &HeaderMap,
    what: &str,
) -> Result<GrpcAnswer, Failure> {
    let mut req = tonic::Request::new(request);
    *req.metadata_mut() = MetadataMap::from_headers(headers.clone());
    match EchoClient::new(channel).echo(req).await {
        Ok(rsp) => {
            let replica = replica_of(rsp.metadata());
            let reply = rsp.into_inner();
            let replica = replica.or_else(|| Some(reply.replica.clone()).filter(|r| !r.is_empty()));
            Ok(GrpcAnswer {
                code: Code::Ok,
                replica,
                reply: Ok(reply),
            })
        }
        Err(status) => {
            if let Some(source) = std::error::Error::source(&status) {
                return Err(Failure::from_error(what, source));
            }
            Ok(GrpcAnswer {
                code: status.code(),
                replica: replica_of(status.metadata()),
                reply: Err(status),
            })
        }
    }
}

fn replica_of(md: &MetadataMap) -> Option<String> {
    md.get("x-replica")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The request `load` and `grpc` send for a URL: the message is the URL's path, and the
/// query parameters `delay_ms` and `code` fill the fields of the same names.
pub fn request_for(target: &Target) -> EchoRequest {
    let mut req = EchoRequest {
        message: target.path.clone(),
        delay_ms: 0,
        code: 0,
    };
    for pair in target.query.as_deref().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "delay_ms" => req.delay_ms = v.parse().unwrap_or(req.delay_ms),
            "code" => req.code = v.parse().unwrap_or(req.code),
            _ => {}
        }
    }
    req
}

#[derive(clap::Args)]
pub struct Args {
    /// URL of the server (http:// only); `:authority` comes from it.
    url: String,
    /// The message to echo (default: the URL's path).
    #[arg(long)]
    message: Option<String>,
    /// The gRPC status code the server should answer with (0 = OK; default: the URL's
    /// `?code=`, else 0).
    #[arg(long)]
    code: Option<i32>,
    /// Delay the server adds before answering, in milliseconds (default: the URL's
    /// `?delay_ms=`, else 0).
    #[arg(long)]
    delay_ms: Option<u32>,
    /// Metadata to send, `NAME:VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = client::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Connect to this address (`host:port`) instead of the URL's host.
    #[arg(long)]
    via: Option<String>,
    /// Give up after this long (e.g. `500ms`, `10s`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = Target::parse(&args.url, args.via.as_deref())?;
    let channel = channel(&target)?;
    let mut request = request_for(&target);
    if let Some(m) = args.message {
        request.message = m;
    }
    if let Some(code) = args.code {
        request.code = code;
    }
    if let Some(delay_ms) = args.delay_ms {
        request.delay_ms = delay_ms;
    }
    let what = target.describe("gRPC Echo.Echo to");
    let headers = client::header_map(&args.headers);
    let answer =
        match tokio::time::timeout(args.timeout, call(channel, request, &headers, &what)).await {
            Ok(r) => r.map_err(|f| anyhow::anyhow!("{f}"))?,
            Err(_) => anyhow::bail!("{what} timed out after {:?}", args.timeout),
        };
    match answer.reply {
        Ok(reply) => {
            println!(
                "replica={} peer={} message={}",
                reply.replica, reply.peer, reply.message
            );
            let headers: BTreeMap<_, _> = reply.headers.into_iter().collect();
            for (k, v) in headers {
                println!("header {k}: {v}");
            }
            Ok(())
        }
        Err(status) => anyhow::bail!(
            "{what} answered {:?} ({}): {} (replica {})",
            status.code(),
            status.code() as i32,
            status.message(),
            answer.replica.as_deref().unwrap_or("?")
        ),
    }
}
