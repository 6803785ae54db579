//! Connection limits and slow clients over real sockets: the listener's connection limit,
//! the limit on connections without a first request head, the header read timeout against
//! a client that sends its headers a byte at a time, and the per-endpoint connection limit.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the proxy closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A connection that sent a request line and nothing more: it waits for its head.
async fn stalled(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    s
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let up = upstream("app", Behaviour::Ok).await;
    let proxy = start_proxy(RawConfig {
        header_read_timeout: Some("1s".into()),
        ..raw_config()
    })
    .await;
    // 50 slowloris connections: request line at once, then a header byte every 100 ms.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = proxy.outbound_addr;
        tasks.push(tokio::spawn(async move {
            let mut s = stalled(addr).await;
            for b in
                b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if s.write_all(&[*b]).await.is_err() {
                    return true;
                }
                if closed_within(&mut s, Duration::from_millis(100)).await {
                    return true;
                }
            }
            false
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a slow client was still open after 6.5 s");
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_connections_refused_total{direction=\"outbound\",reason=\"header_read_timeout\""
        ),
        50.0
    );
    // A normal client on a keep-alive connection is not affected by the header timeout
    // between its requests.
    let client = h1_client();
    let host = up.addr.to_string();
    assert_eq!(
        get(&client, proxy.outbound_addr, &host, "/").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&client, proxy.outbound_addr, &host, "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn connections_without_a_request_are_capped() {
    let up = upstream("app", Behaviour::Ok).await;
    let proxy = start_proxy(RawConfig {
        max_pending_connections: Some("5".into()),
        header_read_timeout: Some("30s".into()),
        ..raw_config()
    })
    .await;
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(stalled(proxy.outbound_addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The sixth is closed at once; the five stay open.
    let mut sixth = stalled(proxy.outbound_addr).await;
    assert!(closed_within(&mut sixth, Duration::from_secs(2)).await);
    for s in &mut waiting {
        assert!(!closed_within(s, Duration::from_millis(50)).await);
    }
    // A connection that finished its head frees its place.
    let w = &mut waiting[0];
    w.write_all(format!("Host: {}\r\n\r\n", up.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = w.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut next = stalled(proxy.outbound_addr).await;
    assert!(!closed_within(&mut next, Duration::from_millis(300)).await);
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_connections_refused_total{direction=\"outbound\",reason=\"pending_limit\""
        ),
        1.0
    );
}

#[tokio::test]
async fn the_listener_connection_limit_closes_the_excess() {
    let up = upstream("app", Behaviour::Ok).await;
    let proxy = start_proxy(RawConfig {
        outbound_max_connections: Some("4".into()),
        ..raw_config()
    })
    .await;
    let client = h1_client();
    let host = up.addr.to_string();
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(proxy.outbound_addr).await.unwrap();
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    let mut fifth = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    assert!(closed_within(&mut fifth, Duration::from_secs(2)).await);
    drop(open);
    // Places free up as connections close.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let req = http::Request::get(format!("http://{}/", proxy.outbound_addr))
            .header(http::header::HOST, &host)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if let Ok(r) = client.request(req).await {
            ok = r.status() == StatusCode::OK;
            break;
        }
    }
    assert!(ok);
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metric(
            &m,
            "mesh_proxy_connections_refused_total{direction=\"outbound\",reason=\"listener_limit\""
        ) >= 1.0
    );
}

#[tokio::test]
async fn connections_per_endpoint_are_capped() {
    let up = upstream("slow", Behaviour::Delay(Duration::from_millis(500))).await;
    let proxy = start_proxy(RawConfig {
        max_connections_per_endpoint: Some("2".into()),
        ..raw_config()
    })
    .await;
    let host = up.addr.to_string();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let host = host.clone();
        let via = proxy.outbound_addr;
        tasks.push(tokio::spawn(async move {
            get(&h1_client(), via, &host, "/").await
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(a
                    .proxy_error
                    .unwrap_or_default()
                    .contains("connection limit"));
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (2, 4));
    assert_eq!(up.conns.load(std::sync::atomic::Ordering::Relaxed), 2);
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_connections_refused_total{direction=\"outbound\",reason=\"endpoint_limit\""
        ),
        4.0
    );
}
