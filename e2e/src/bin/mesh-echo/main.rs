//! `mesh-echo`: the sample workload used by the README demo, the benchmark and the test suites.
//!
//! It behaves like an ordinary app: it resolves `host:port` itself (system resolver,
//! /etc/hosts) and knows nothing of proxies, so it can run behind transparent proxies.
//!
//! - `serve`: one port answers HTTP/1.1, HTTP/2 (prior knowledge) and gRPC (`mesh.echo.v1.Echo`)
//!   with what the request looked like and which replica answered; `GET /__stats` counts the
//!   answers; `--tcp-listen` adds a server-speaks-first line protocol ([`serve`], [`tcp`]).
//! - `load`: a bounded open-loop load generator over HTTP/1.1, HTTP/2 or gRPC ([`load`]).
//! - `fetch`, `grpc`, `tcp`: one-shot clients for scripts and tests ([`fetch`], [`grpc`],
//!   [`tcp`]).

mod client;
mod fetch;
mod grpc;
mod load;
mod serve;
mod tcp;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mesh-echo",
    version,
    about = "Sample HTTP/gRPC/TCP echo workload and load generator for the mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1, HTTP/2 and gRPC echo answers on one port (and optionally a TCP banner
    /// protocol on another).
    Serve(serve::Args),
    /// GET a URL once and print the body (for scripts on machines without curl).
    Fetch(fetch::Args),
    /// Send a bounded number of requests at a fixed rate (open loop) and print a summary.
    Load(load::Args),
    /// Make one gRPC `Echo.Echo` call and print the reply.
    Grpc(grpc::Args),
    /// Connect to a server-speaks-first TCP service, print its greeting, send one line and
    /// print the answer.
    Tcp(tcp::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve(args) => serve::run(args).await,
        Cmd::Fetch(args) => fetch::run(args).await,
        Cmd::Load(args) => load::run(args).await,
        Cmd::Grpc(args) => grpc::run(args).await,
        Cmd::Tcp(args) => tcp::run(args).await,
    }
}
