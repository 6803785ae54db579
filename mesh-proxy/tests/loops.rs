//! Loop prevention and Host validation over real sockets: a request that names the proxy's
//! own listener, two proxies that forward to each other, the hop marker kept from the app,
//! and requests with two Host headers or a Host that disagrees with the request target.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns what the proxy answered (until it closes or goes quiet).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn accepted(metrics: &str) -> f64 {
    metric(
        metrics,
        "mesh_proxy_connections_total{direction=\"outbound\"",
    )
}

#[tokio::test]
async fn a_request_naming_the_proxy_itself_is_refused_not_looped() {
    let proxy = start_proxy(raw_config()).await;
    let client = h1_client();
    for target in [proxy.outbound_addr, proxy.admin_addr] {
        let a = get(&client, proxy.outbound_addr, &target.to_string(), "/").await;
        assert_eq!(a.status, StatusCode::LOOP_DETECTED, "{target}: {a:?}");
        let reason = a.proxy_error.clone().unwrap_or_default();
        assert!(reason.contains("loop detected"), "{reason}");
        assert!(reason.contains("own listener"), "{reason}");
    }
    // The same through the unspecified address and a name that resolves to loopback.
    let port = proxy.outbound_addr.port();
    for host in [format!("0.0.0.0:{port}"), format!("localhost:{port}")] {
        let a = get(&client, proxy.outbound_addr, &host, "/").await;
        assert_eq!(a.status, StatusCode::LOOP_DETECTED, "{host}: {a:?}");
    }
    // One client connection per request at most: nothing looped back in.
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(accepted(&m) <= 4.0, "accepted {} connections", accepted(&m));
    assert!(
        metric(
            &m,
            "mesh_proxy_connections_refused_total{direction=\"outbound\",reason=\"loop\""
        ) >= 4.0
    );
}

#[tokio::test]
async fn the_inbound_side_never_forwards_to_the_proxy_itself() {
    // Inbound traffic forwarded to the proxy's own outbound port would loop too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start_proxy(RawConfig {
        outbound_addr: Some(taken.to_string()),
        inbound_forward: Some(taken.to_string()),
        ..raw_config()
    })
    .await;
    let a = get(&h1_client(), proxy.inbound_addr, "web.test", "/").await;
    assert_eq!(a.status, StatusCode::LOOP_DETECTED, "{a:?}");
}

#[tokio::test]
async fn a_loop_across_two_proxies_is_caught_by_the_hop_marker() {
    // A sends loop.test to B's outbound listener and B sends it back to A's.
    let (dir_a, path_a) = static_file("services: []\n");
    let a = start_proxy(RawConfig {
        static_config: Some(path_a.clone()),
        ..raw_config()
    })
    .await;
    let (_dir_b, path_b) = static_file(&format!(
        "services:\n  - authority: \"loop.test:80\"\n    endpoints: [ {{ addr: \"{}\" }} ]\n",
        a.outbound_addr
    ));
    let b = start_proxy(RawConfig {
        static_config: Some(path_b),
        ..raw_config()
    })
    .await;
    std::fs::write(
        &path_a,
        format!(
            "services:\n  - authority: \"loop.test:80\"\n    endpoints: [ {{ addr: \"{}\" }} ]\n",
            b.outbound_addr
        ),
    )
    .unwrap();
    // The file is polled every second.
    let client = h1_client();
    let mut last = None;
    for _ in 0..50 {
        let r = get(&client, a.outbound_addr, "loop.test", "/").await;
        if r.status == StatusCode::LOOP_DETECTED {
            last = Some(r);
            break;
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = last.unwrap();
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{r:?}");
    assert!(
        r.proxy_error
            .as_deref()
            .unwrap_or("")
            .contains("already went through this proxy"),
        "{r:?}"
    );
    let (_, ma) = admin_get(a.admin_addr, "/metrics").await;
    let (_, mb) = admin_get(b.admin_addr, "/metrics").await;
    assert!(
        accepted(&ma) < 60.0 && accepted(&mb) < 60.0,
        "a storm: {} / {}",
        accepted(&ma),
        accepted(&mb)
    );
    drop(dir_a);
}

#[tokio::test]
async fn the_app_never_sees_the_hop_marker() {
    let up = upstream("app", Behaviour::Ok).await;
    let server = start_proxy(RawConfig {
        inbound_forward: Some(up.addr.to_string()),
        ..raw_config()
    })
    .await;
    let (_dir, path) = static_file(&format!(
        "services:\n  - authority: \"web.test:80\"\n    endpoints:\n      - addr: \"{}\"\n        hint: {{ kind: meshed_h2 }}\n",
        server.inbound_addr
    ));
    let client = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    let a = get(&h1_client(), client.outbound_addr, "web.test", "/").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let headers = up.last_headers();
    assert!(headers.get("mesh-hops").is_none(), "{headers:?}");
    // Without the mesh, the marker goes to a pass-through destination as it is (so that a
    // forwarder outside the mesh cannot hide a loop), and exactly once per proxy.
    let direct = start_proxy(raw_config()).await;
    let a = get(
        &h1_client(),
        direct.outbound_addr,
        &up.addr.to_string(),
        "/",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last_headers().get_all("mesh-hops").iter().count(), 1);
}

#[tokio::test]
async fn two_host_headers_or_a_disagreeing_host_get_400() {
    let up = upstream("app", Behaviour::Ok).await;
    let proxy = start_proxy(raw_config()).await;
    let ok = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", up.addr);
    assert!(raw(proxy.outbound_addr, ok.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    let cases = [
        format!("GET / HTTP/1.1\r\nHost: {0}\r\nHost: {0}\r\n\r\n", up.addr),
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nHost: 127.0.0.1:{}\r\n\r\n",
            up.addr,
            proxy.outbound_addr.port()
        ),
        format!(
            "GET http://{}/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
            up.addr
        ),
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
    ];
    for req in &cases {
        let rsp = raw(proxy.outbound_addr, req.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{req:?} -> {rsp}");
        assert!(
            rsp.to_ascii_lowercase()
                .contains("mesh-proxy-error: bad request"),
            "{rsp}"
        );
    }
    // The inbound side checks too.
    let inbound = start_proxy(RawConfig {
        inbound_forward: Some(up.addr.to_string()),
        ..raw_config()
    })
    .await;
    let rsp = raw(inbound.inbound_addr, cases[0].as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert_eq!(up.hits(), 1, "only the valid request reached the app");
}
