//! Protocol detection and opaque TCP: server-speaks-first protocols never stall, configured
//! opaque ports skip detection, other bytes pass through untouched.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that speaks first (like SMTP or MySQL): sends a banner, then echoes.
async fn banner_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 banner ready\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn time_to_banner(proxy_inbound: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy_inbound).await.unwrap();
    let mut buf = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut buf))
        .await
        .expect("banner arrives")
        .unwrap();
    assert_eq!(&buf, b"220 banner ready\r\n");
    let took = start.elapsed();
    // The connection then carries bytes both ways.
    s.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO x\r\n");
    took
}

#[tokio::test]
async fn silent_client_on_unknown_port_falls_back_to_opaque_quickly() {
    let server = banner_server().await;
    // The shipped default detection timeout.
    let proxy = start_proxy(RawConfig {
        inbound_forward: Some(server.to_string()),
        detect_timeout: Some("200ms".into()),
        ..raw_config()
    })
    .await;
    let took = time_to_banner(proxy.inbound_addr).await;
    println!("server-speaks-first stall on an unknown port: {took:?} (Linkerd: 10s)");
    assert!(
        took >= Duration::from_millis(200),
        "waited for the client first: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "stalled {took:?}");
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_connections_total{direction=\"inbound\",protocol=\"opaque\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_tcp_write_bytes_total{direction=\"inbound\",protocol=\"opaque\"}"
        ),
        26.0,
        "{m}"
    );
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let server = banner_server().await;
    let proxy = start_proxy(RawConfig {
        inbound_forward: Some(server.to_string()),
        // A long detection timeout that must not apply: the port is listed as opaque.
        detect_timeout: Some("10s".into()),
        opaque_ports: Some(format!("25,{}", server.port())),
        ..raw_config()
    })
    .await;
    let took = time_to_banner(proxy.inbound_addr).await;
    println!("server-speaks-first on an opaque port: {took:?}");
    assert!(took < Duration::from_secs(1), "stalled {took:?}");
}

#[tokio::test]
async fn binary_protocols_pass_through_untouched() {
    // An echo server for a client-speaks-first binary protocol (a Redis-style command).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = start_proxy(RawConfig {
        inbound_forward: Some(addr.to_string()),
        detect_timeout: Some("10s".into()),
        ..raw_config()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.inbound_addr)
        .await
        .unwrap();
    let start = Instant::now();
    let mut payload = b"*1\r\n$4\r\nPING\r\n".to_vec();
    payload.extend((0..=255u8).cycle().take(100_000));
    s.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "binary data was classified at once"
    );
    // Half-close: the client finishes sending, the proxy passes the EOF on.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn idle_opaque_connections_are_closed() {
    let server = banner_server().await;
    let proxy = start_proxy(RawConfig {
        inbound_forward: Some(server.to_string()),
        opaque_ports: Some(server.port().to_string()),
        tcp_idle_timeout: Some("300ms".into()),
        ..raw_config()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.inbound_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 18];
    s.read_exact(&mut buf).await.unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the idle connection")
        .ok();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn controller_declared_opaque_ports_skip_detection() {
    use mesh_proto::v1 as pb;
    use std::sync::Arc;
    let server = banner_server().await;
    let ctrl = Arc::new(FakeController::default());
    ctrl.set_inbound(server.port(), pb::Protocol::Opaque);
    let controller = start_controller(ctrl);
    let proxy = start_proxy(RawConfig {
        controller_addr: Some(format!("http://{}", controller.addr)),
        workload: Some("ns:test/workload:banner".into()),
        inbound_forward: Some(server.to_string()),
        detect_timeout: Some("1s".into()),
        ..raw_config()
    })
    .await;
    // /ready waits for the workload's inbound policy...
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_get(proxy.admin_addr, "/ready").await.0 != http::StatusCode::OK {
        assert!(Instant::now() < deadline, "the proxy never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...so even the first connection skips the 1 s detection wait.
    let first = time_to_banner(proxy.inbound_addr).await;
    let second = time_to_banner(proxy.inbound_addr).await;
    println!("first connection {first:?}, second {second:?}");
    assert!(
        first < Duration::from_millis(500),
        "first connection waited {first:?}"
    );
    assert!(second < Duration::from_millis(500), "{second:?}");
}
