//! The proxy's HTTP path over real sockets: HTTP/1.1, HTTP/2, gRPC, two proxy hops, traffic
//! split, retries and the retry budget, timeouts, malformed requests and the admin port.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use support::*;

fn one_service(authority: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("      - addr: \"{a}\"\n"))
        .collect();
    format!(
        "services:\n  - authority: \"{authority}\"\n    endpoints:\n{}{extra}",
        eps.concat()
    )
}

/// A proxy whose static config holds one service.
async fn proxy_for(
    authority: &str,
    addrs: &[SocketAddr],
    extra: &str,
) -> (tempfile::TempDir, mesh_proxy::app::Running) {
    let (dir, path) = static_file(&one_service(authority, addrs, extra));
    let proxy = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    (dir, proxy)
}

#[tokio::test]
async fn http1_and_http2_through_one_proxy() {
    let up = upstream("a", Behaviour::Ok).await;
    let (_dir, proxy) = proxy_for("web.test:80", &[up.addr], "").await;

    let a = send(
        &h1_client(),
        proxy.outbound_addr,
        "web.test",
        "POST",
        "/x",
        "hello",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "a got 5 bytes\n");

    let (status, replica) = h2_get(proxy.outbound_addr, "http://web.test:80/h2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replica, "a");
    // Sequential HTTP/1 requests reuse one pooled connection.
    for _ in 0..20 {
        assert_eq!(
            get(&h1_client(), proxy.outbound_addr, "web.test", "/")
                .await
                .status,
            StatusCode::OK
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, Version::HTTP_11);
    assert_eq!(seen[0].1.as_deref(), Some("web.test"));
    assert_eq!(
        seen[1].0,
        Version::HTTP_2,
        "HTTP/2 from the app stays HTTP/2"
    );
    assert_eq!(
        up.conns.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one pooled HTTP/1 connection and one HTTP/2 connection"
    );

    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "mesh_proxy_requests_total{direction=\"outbound\",authority=\"web.test:80\",route=\"default\",status_code=\"200\",classification=\"success\",client_id=\"\",server_id=\"\"}"),
        22.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn two_hops_carry_http1_over_http2() {
    let app = upstream("server-app", Behaviour::Ok).await;
    let server = start_proxy(RawConfig {
        inbound_forward: Some(app.addr.to_string()),
        ..raw_config()
    })
    .await;
    let extra = "";
    let yaml = format!(
        "services:\n  - authority: \"web.test:80\"\n    endpoints:\n      - addr: \"{}\"\n        hint: {{ kind: meshed_h2, inbound_port: {} }}\n{extra}",
        app.addr,
        server.inbound_addr.port()
    );
    let (_dir, path) = static_file(&yaml);
    let client = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    let c = h1_client();
    for _ in 0..20 {
        let a = send(
            &c,
            client.outbound_addr,
            "web.test",
            "PUT",
            "/hop",
            "payload",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body, "server-app got 7 bytes\n");
    }
    // The app sees HTTP/1.1 with the original Host, and the server proxy counted the
    // requests inbound over a single HTTP/2 connection.
    let seen = app.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(v, h)| *v == Version::HTTP_11 && h.as_deref() == Some("web.test")),
        "{seen:?}"
    );
    let (_, m) = admin_get(server.admin_addr, "/metrics").await;
    assert_eq!(
        metric(&m, "mesh_proxy_requests_total{direction=\"inbound\""),
        20.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_connections_total{direction=\"inbound\",protocol=\"h2\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn retries_recover_a_flaky_endpoint() {
    let up = upstream("flaky", Behaviour::FailEvery(2)).await;
    let extra = "    routes:\n      - name: all\n        retry: { max_retries: 2, on: [gateway_error], backoff_base: 1ms, backoff_max: 5ms }\n";
    let (_dir, proxy) = proxy_for("flaky.test:80", &[up.addr], extra).await;
    let c = h1_client();
    for _ in 0..50 {
        // A body is replayed on the retry.
        let a = send(&c, proxy.outbound_addr, "flaky.test", "PUT", "/", "body!").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "flaky got 5 bytes\n");
    }
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    let retries = metric(&m, "mesh_proxy_retries_total{");
    assert!(
        retries >= 40.0,
        "every other request needed a retry: {retries}\n{m}"
    );
    // POST is not idempotent and the route is not marked retryable: never retried, with or
    // without a body. The endpoint fails every other request, so of two POSTs one fails.
    for body in ["x", ""] {
        let before = up.hits();
        let a = send(&c, proxy.outbound_addr, "flaky.test", "POST", "/", body).await;
        let b = send(&c, proxy.outbound_addr, "flaky.test", "POST", "/", body).await;
        assert_eq!(up.hits() - before, 2, "a POST was retried");
        assert!(
            a.status == StatusCode::SERVICE_UNAVAILABLE
                || b.status == StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

#[tokio::test]
async fn retry_budget_caps_load_on_a_dead_endpoint() {
    let up = upstream("dead", Behaviour::FailEvery(1)).await;
    let extra = "    routes:\n      - name: all\n        retry: { max_retries: 3, on: [5xx], backoff_base: 1ms, backoff_max: 2ms }\n    policy: { retry_budget: { ratio: 0.2, min_retries_per_second: 1, ttl: 10s } }\n";
    let (_dir, proxy) = proxy_for("dead.test:80", &[up.addr], extra).await;
    let c = h1_client();
    let n = 300;
    for _ in 0..n {
        let a = get(&c, proxy.outbound_addr, "dead.test", "/").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let total = up.hits();
    let extra_load = total - n;
    // Without a budget, 3 retries each would mean 900 extra requests. The budget allows
    // 20% of originals plus the per-second floor (at most ~10 s * 1 over this test).
    println!(
        "originals={n} upstream_requests={total} extra={extra_load} ({:.1}%)",
        100.0 * extra_load as f64 / n as f64
    );
    assert!(
        extra_load as f64 <= 0.2 * n as f64 + 12.0,
        "retries exceeded the budget: {extra_load}"
    );
    assert!(
        extra_load >= 30,
        "retries should still happen within the budget: {extra_load}"
    );
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metric(&m, "mesh_proxy_retry_budget_exhausted_total{") > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn route_timeout_returns_504_from_the_proxy() {
    let up = upstream("slow", Behaviour::Delay(Duration::from_secs(3))).await;
    let extra = "    routes:\n      - name: slow\n        timeout: 200ms\n";
    let (_dir, proxy) = proxy_for("slow.test:80", &[up.addr], extra).await;
    let start = Instant::now();
    let a = get(&h1_client(), proxy.outbound_addr, "slow.test", "/").await;
    let took = start.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let why = a.proxy_error.expect("504 names the proxy as its source");
    assert!(why.contains("timed out after 200ms"), "{why}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn traffic_split_follows_weights_and_changes_live() {
    let v1 = upstream("v1", Behaviour::Ok).await;
    let v2 = upstream("v2", Behaviour::Ok).await;
    let yaml = |w1: u32, w2: u32| {
        format!(
            "services:\n  - authority: \"web.test:80\"\n    routes:\n      - name: split\n        backends: [ {{ authority: \"web-v1.test:80\", weight: {w1} }}, {{ authority: \"web-v2.test:80\", weight: {w2} }} ]\n  - authority: \"web-v1.test:80\"\n    endpoints: [ {{ addr: \"{}\" }} ]\n  - authority: \"web-v2.test:80\"\n    endpoints: [ {{ addr: \"{}\" }} ]\n",
            v1.addr, v2.addr
        )
    };
    let (dir, path) = static_file(&yaml(80, 20));
    let proxy = start_proxy(RawConfig {
        static_config: Some(path.clone()),
        ..raw_config()
    })
    .await;
    let c = h1_client();
    for _ in 0..500 {
        assert_eq!(
            get(&c, proxy.outbound_addr, "web.test", "/").await.status,
            StatusCode::OK
        );
    }
    let share = v1.hits() as f64 / 500.0;
    assert!((0.72..=0.88).contains(&share), "v1 share {share}");
    // Move everything to v2 by editing the file; no request fails meanwhile.
    std::fs::write(&path, yaml(0, 1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = v1.hits();
    loop {
        assert_eq!(
            get(&c, proxy.outbound_addr, "web.test", "/").await.status,
            StatusCode::OK
        );
        let (_, cfg) = admin_get(proxy.admin_addr, "/config").await;
        if cfg.contains("\"weight\": 0") {
            break;
        }
        assert!(Instant::now() < deadline, "file change not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v1_after = v1.hits();
    for _ in 0..100 {
        assert_eq!(
            get(&c, proxy.outbound_addr, "web.test", "/").await.replica,
            "v2"
        );
    }
    assert_eq!(v1.hits(), v1_after);
    assert!(v1_after >= before);
    // A broken edit is rejected and the last good state stays.
    std::fs::write(&path, "services: [ { authority: nope } ]").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        get(&c, proxy.outbound_addr, "web.test", "/").await.replica,
        "v2"
    );
    drop(dir);
}

#[tokio::test]
async fn grpc_unary_and_streaming_through_the_proxy() {
    use mesh_proto::v1 as pb;
    // The upstream is a real gRPC server (the fake controller: server streaming) plus an
    // Identity service (unary).
    struct Ident;
    #[tonic::async_trait]
    impl pb::identity_server::Identity for Ident {
        async fn certify(
            &self,
            req: tonic::Request<pb::CertifyRequest>,
        ) -> Result<tonic::Response<pb::CertifyResponse>, tonic::Status> {
            let r = req.into_inner();
            if r.identity.is_empty() {
                return Err(tonic::Status::invalid_argument("identity is required"));
            }
            Ok(tonic::Response::new(pb::CertifyResponse {
                leaf_der: r.csr_der,
                intermediates_der: vec![],
                valid_until_unix: 42,
            }))
        }
        type WatchStream =
            tokio_stream::wrappers::ReceiverStream<Result<pb::IdentityUpdate, tonic::Status>>;
        async fn watch(
            &self,
            _req: tonic::Request<tonic::Streaming<pb::IdentityReport>>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not used by this test"))
        }
    }
    let ctrl = Arc::new(FakeController::default());
    ctrl.set(
        "x.test:1",
        state(vec![endpoint("10.0.0.1:80".parse().unwrap())], None),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let c2 = ctrl.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(
                ControllerSvc(c2),
            ))
            .add_service(pb::identity_server::IdentityServer::new(Ident))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let (_dir, proxy) = proxy_for("grpc.test:50051", &[grpc_addr], "").await;
    // The client dials the proxy; the origin (authority) names the service.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound_addr))
            .unwrap()
            .origin("http://grpc.test:50051".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let mut ident = pb::identity_client::IdentityClient::new(channel.clone());
    let rsp = ident
        .certify(pb::CertifyRequest {
            identity: "spiffe://test/x".into(),
            token: String::new(),
            csr_der: vec![1, 2, 3],
            workload: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.leaf_der, vec![1, 2, 3]);
    let err = ident
        .certify(pb::CertifyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut dst = pb::destination_client::DestinationClient::new(channel);
    let mut stream = dst
        .get(pb::GetDestination {
            authority: "x.test:1".into(),
            context: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "first streamed message"
    );
    ctrl.push("x.test:1", state(vec![], None)).await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        second.is_some(),
        "a later message arrives through the proxy while the stream stays open"
    );

    // The stream then fails: its status comes in trailers, after a 200 OK header.
    ctrl.fail("x.test:1", tonic::Status::unavailable("going away"))
        .await;
    let err = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // One success (Certify), two failures: InvalidArgument (status in headers) and the
    // stream (status in trailers), all with HTTP status 200.
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    let base = "mesh_proxy_requests_total{direction=\"outbound\",authority=\"grpc.test:50051\",route=\"default\",status_code=\"200\",classification=";
    assert_eq!(
        metric(
            &m,
            &format!("{base}\"success\",client_id=\"\",server_id=\"\"}}")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("{base}\"failure\",client_id=\"\",server_id=\"\"}}")
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_proxy_lives_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("a", Behaviour::Ok).await;
    let (_dir, proxy) = proxy_for("web.test:80", &[up.addr], "").await;
    let c = h1_client();
    // A Host that is not an authority.
    let a = get(&c, proxy.outbound_addr, "bad host:99999", "/").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.proxy_error.unwrap().contains("Host header"));
    // Broken HTTP/1 framing: hyper answers 400 and closes the connection.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: web.test\r\nContent-Length: nope\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\x00\x01\x02\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x09\x00\x00\x00\x00\x00garbage!!",
    ] {
        let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    // No Host at all, explicit mode: nothing to route to.
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.0 400"), "{text}");
    assert!(text.contains("mesh-proxy-error"), "{text}");
    // Still serving.
    assert_eq!(
        get(&c, proxy.outbound_addr, "web.test", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let up = upstream("a", Behaviour::Ok).await;
    let (_dir, proxy) = proxy_for("web.test:80", &[up.addr], "").await;
    assert_eq!(admin_get(proxy.admin_addr, "/live").await.0, StatusCode::OK);
    assert_eq!(
        admin_get(proxy.admin_addr, "/ready").await.0,
        StatusCode::OK
    );
    get(&h1_client(), proxy.outbound_addr, "web.test", "/").await;
    let (s, cfg) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["destinations"]["web.test:80"]["resolution"], "found");
    assert_eq!(
        v["destinations"]["web.test:80"]["endpoints"][0]["endpoint"]["addr"],
        up.addr.to_string()
    );
    assert_eq!(
        admin_get(proxy.admin_addr, "/nope").await.0,
        StatusCode::NOT_FOUND
    );
    // Without a log handle (in-process tests) log control says so; the binary test covers it.
    assert_eq!(
        admin_get(proxy.admin_addr, "/log-level").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("a", Behaviour::Ok).await;
    let (_dir, path) = static_file(&one_service("web.test:80", &[up.addr], ""));
    let proxy = start_proxy(RawConfig {
        static_config: Some(path),
        http_idle_timeout: Some("300ms".into()),
        ..raw_config()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive connection left idle: the proxy closes it after the idle timeout.
    let start = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("idle keep-alive connection closed by the proxy")
        .ok();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

/// An app that accepts `Upgrade: echo` and then echoes bytes on the upgraded connection.
async fn upgrade_echo_server() -> SocketAddr {
    use http_body_util::Full;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let upgraded = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(u) = upgraded.await {
                                let mut io = hyper_util::rt::TokioIo::new(u);
                                let mut buf = [0u8; 64];
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let mut rsp = http::Response::new(Full::new(bytes::Bytes::new()));
                        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        rsp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        rsp.headers_mut().insert("upgrade", "echo".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(rsp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn protocol_upgrades_pass_through_two_proxies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = upgrade_echo_server().await;
    let server = start_proxy(RawConfig {
        inbound_forward: Some(app.to_string()),
        ..raw_config()
    })
    .await;
    let yaml = format!(
        "services:\n  - authority: \"ws.test:80\"\n    endpoints:\n      - addr: \"{app}\"\n        hint: {{ kind: meshed_h2, inbound_port: {} }}\n    routes: [ {{ name: all, timeout: 1s }} ]\n",
        server.inbound_addr.port()
    );
    let (_dir, path) = static_file(&yaml);
    let client = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(client.outbound_addr)
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The upgraded stream outlives the route's 1 s request timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}
