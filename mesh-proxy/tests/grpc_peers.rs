//! gRPC through the proxy against a real gRPC implementation (grpcio, from PyPI): a stream
//! that stays idle much longer than the server's keep-alive policy allows between PINGs
//! survives two proxies; and the proxy sends the app no PING (adaptive-window probes
//! included) on unary calls.
//!
//! Needs `python3` with `grpcio`; `scripts/test.sh` installs it and sets
//! `MESH_TEST_REQUIRE_PEERS=1`, which turns a missing peer into a failure instead of a skip.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc_peer.py")
}

/// Whether grpcio can be used; skips (or fails under MESH_TEST_REQUIRE_PEERS) otherwise.
fn grpcio_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_none(),
            "{test}: python3 with grpcio is required (pip install grpcio)"
        );
        eprintln!("{test}: skipped: python3 with grpcio is not installed (pip install grpcio)");
    }
    ok
}

/// The gRPC server process; killed when dropped.
struct Server {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

async fn grpc_server(min_ping_ms: u32, idle_s: f64) -> Server {
    let mut child = tokio::process::Command::new("python3")
        .arg(script())
        .args(["server", "--min-ping-ms", &min_ping_ms.to_string()])
        .args(["--idle", &idle_s.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the gRPC server starts")
        .unwrap()
        .unwrap();
    let port: u16 = line.strip_prefix("port ").unwrap().parse().unwrap();
    Server {
        _child: child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// Runs the grpcio client; returns (success, output).
async fn grpc_client(target: SocketAddr, authority: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("python3")
        .arg(script())
        .args([
            "client",
            "--target",
            &target.to_string(),
            "--authority",
            authority,
        ])
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Two proxies in front of `app`: returns (client proxy, server proxy, static dir guard).
async fn two_hops(
    app: SocketAddr,
    extra: &[(&str, &str)],
) -> (
    mesh_proxy::app::Running,
    mesh_proxy::app::Running,
    tempfile::TempDir,
) {
    let mut raw = raw_config();
    raw.inbound_forward = Some(app.to_string());
    for (k, v) in extra {
        set(&mut raw, k, v);
    }
    let server = start_proxy(raw).await;
    let (dir, path) = static_file(&format!(
        "services:\n  - authority: \"grpc.test:80\"\n    endpoints:\n      - addr: \"{}\"\n        hint: {{ kind: meshed_h2 }}\n",
        server.inbound_addr
    ));
    let mut raw = raw_config();
    raw.static_config = Some(path);
    for (k, v) in extra {
        set(&mut raw, k, v);
    }
    let client = start_proxy(raw).await;
    (client, server, dir)
}

fn set(raw: &mut RawConfig, key: &str, value: &str) {
    let v = Some(value.to_string());
    match key {
        "h2_keepalive_interval" => raw.h2_keepalive_interval = v,
        "app_h2_keepalive_interval" => raw.app_h2_keepalive_interval = v,
        other => panic!("unknown setting {other}"),
    }
}

#[tokio::test]
async fn an_idle_grpc_stream_outlives_the_servers_ping_policy() {
    if !grpcio_available("an_idle_grpc_stream_outlives_the_servers_ping_policy") {
        return;
    }
    // The server allows one PING per 2 s without data and closes on the first offence; the
    // stream is silent for 8 s. Between the proxies, PINGs go every 300 ms: ours to choose.
    let app = grpc_server(2000, 8.0).await;
    let (client, _server, _dir) = two_hops(app.addr, &[("h2_keepalive_interval", "300ms")]).await;
    let (ok, out) = grpc_client(client.outbound_addr, "grpc.test:80", &["--call", "idle"]).await;
    assert!(ok, "the idle stream failed through two proxies: {out}");

    // The same test catches a proxy that pings the app faster than it permits.
    let app = grpc_server(2000, 4.0).await;
    let frames = Arc::new(Mutex::new(Frames::default()));
    let relay = sniffer(app.addr, frames.clone()).await;
    let (client, _server, _dir) = two_hops(relay, &[("app_h2_keepalive_interval", "300ms")]).await;
    let (ok, out) = grpc_client(client.outbound_addr, "grpc.test:80", &["--call", "idle"]).await;
    assert!(
        !ok,
        "pinging the app every 300 ms should have broken the stream ({} PINGs)",
        frames.lock().unwrap().pings
    );
    assert!(out.contains("UNAVAILABLE"), "{out}");
}

/// What the app received from the proxy, frame by frame.
#[derive(Default)]
struct Frames {
    /// PINGs the proxy started (acknowledgements of the app's own PINGs not counted).
    pings: usize,
    /// Request HEADERS frames.
    headers: usize,
}

/// A relay in front of `app` that parses the HTTP/2 frames going to it.
async fn sniffer(app: SocketAddr, frames: Arc<Mutex<Frames>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((from, _)) = l.accept().await {
            let frames = frames.clone();
            tokio::spawn(async move {
                let _ = from.set_nodelay(true);
                let to = TcpStream::connect(app).await.unwrap();
                let _ = to.set_nodelay(true);
                let (mut fr, mut fw) = from.into_split();
                let (mut tr, mut tw) = to.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut tr, &mut fw).await;
                });
                let mut pending = Vec::new();
                let mut preface = 24;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match fr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if tw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    if preface > 0 {
                        let skip = preface.min(pending.len());
                        pending.drain(..skip);
                        preface -= skip;
                    }
                    // Frames completed by this read: (type, flags).
                    let mut in_read: Vec<(u8, u8)> = Vec::new();
                    while pending.len() >= 9 {
                        let len = (usize::from(pending[0]) << 16)
                            | (usize::from(pending[1]) << 8)
                            | usize::from(pending[2]);
                        if pending.len() < 9 + len {
                            break;
                        }
                        let kind = pending[3];
                        let flags = pending[4];
                        in_read.push((kind, flags));
                        pending.drain(..9 + len);
                    }
                    let mut f = frames.lock().unwrap();
                    for (kind, flags) in &in_read {
                        match kind {
                            // A PING the proxy started (not the ACK of the app's own PING).
                            0x6 if flags & 0x1 == 0 => f.pings += 1,
                            0x1 => f.headers += 1,
                            _ => {}
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn unary_grpc_calls_send_the_app_no_ping() {
    if !grpcio_available("unary_grpc_calls_send_the_app_no_ping") {
        return;
    }
    let app = grpc_server(300_000, 0.0).await;
    let frames = Arc::new(Mutex::new(Frames::default()));
    let relay = sniffer(app.addr, frames.clone()).await;
    let (client, _server, _dir) = two_hops(relay, &[]).await;
    let (ok, out) = grpc_client(
        client.outbound_addr,
        "grpc.test:80",
        &["--call", "unary", "--count", "200", "--size", "1000"],
    )
    .await;
    assert!(ok, "{out}");
    let f = frames.lock().unwrap();
    println!(
        "to the app: {} request HEADERS, {} PINGs",
        f.headers, f.pings
    );
    assert_eq!(f.headers, 200);
    assert_eq!(f.pings, 0, "the proxy pinged the app");
}
