//! Circuit breaking (outlier ejection) over real sockets: an endpoint that keeps failing is
//! ejected and gets (almost) no traffic for the ejection time, then comes back; the
//! `max_ejected_percent` cap keeps endpoints in when all fail; ejection never fails a
//! request by itself; the state shows in `/config` and `/metrics`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use mesh_proto::v1 as pb;
use support::*;

/// A static file with `web.test:80` on `addrs` and the given policy (YAML flow mapping).
fn service(addrs: &[SocketAddr], policy: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr: \"{a}\" }}"))
        .collect();
    format!(
        "services:\n  - authority: \"web.test:80\"\n    endpoints: [ {} ]\n    policy: {policy}\n",
        eps.join(", ")
    )
}

async fn static_proxy(yaml: &str) -> (tempfile::TempDir, mesh_proxy::app::Running) {
    let (dir, path) = static_file(yaml);
    let proxy = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    (dir, proxy)
}

/// Sends `n` sequential GETs to `web.test`; returns how many got each status.
async fn load(proxy: &mesh_proxy::app::Running, n: usize) -> (usize, usize) {
    let c = h1_client();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..n {
        let a = get(&c, proxy.outbound_addr, "web.test", "/").await;
        assert!(
            a.proxy_error.is_none(),
            "ejection must never fail a request by itself: {:?}",
            a.proxy_error
        );
        if a.status == StatusCode::OK {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

/// The endpoints of `web.test:80` in `/config` that are ejected.
async fn ejected(proxy: &mesh_proxy::app::Running) -> Vec<String> {
    let (_, cfg) = admin_get(proxy.admin_addr, "/config").await;
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["destinations"]["web.test:80"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .map(|e| e["endpoint"]["addr"].as_str().unwrap().to_string())
        .collect()
}

async fn ejections_total(proxy: &mesh_proxy::app::Running) -> f64 {
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    metric(
        &m,
        "mesh_proxy_endpoint_ejections_total{authority=\"web.test:80\"}",
    )
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_starved() {
    let good1 = upstream("good1", Behaviour::Ok).await;
    let good2 = upstream("good2", Behaviour::Ok).await;
    let bad = upstream("bad", Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let addrs = [good1.addr, good2.addr, bad.addr];
    let n = 300;

    // Without a circuit breaker (and no retries), round-robin sends the failing endpoint
    // its full third.
    let (_d0, plain) = static_proxy(&service(&addrs, "{ balancer: round_robin }")).await;
    let before = bad.hits();
    let (_, failed) = load(&plain, n).await;
    let without = bad.hits() - before;
    assert_eq!(without, 100, "round-robin without ejection");
    assert_eq!(failed, 100);

    // With one, after 3 failures in a row it is ejected (for 30 s, longer than this test)
    // and gets none of the next 300 requests.
    for balancer in ["round_robin", "p2c_peak_ewma"] {
        let policy = format!(
            "{{ balancer: {balancer}, circuit_breaker: {{ consecutive_failures: 3, base_ejection: 30s }} }}"
        );
        let (_d, proxy) = static_proxy(&service(&addrs, &policy)).await;
        let before = bad.hits();
        // P2C may take a while to draw it three times, if it looked slow at first.
        let mut sent = 0;
        while bad.hits() - before < 3 {
            load(&proxy, 1).await;
            sent += 1;
            assert!(
                sent < 2000,
                "{balancer}: the failing endpoint got no traffic"
            );
        }
        assert_eq!(ejected(&proxy).await, vec![bad.addr.to_string()]);
        let (ok, failed) = load(&proxy, n).await;
        let with = bad.hits() - before;
        println!(
            "{balancer}: failing endpoint got {with} of {} with ejection, {without} of {n} without",
            sent + n
        );
        assert_eq!(
            with, 3,
            "{balancer}: the ejected endpoint still got requests"
        );
        assert_eq!((ok, failed), (n, 0));
        assert_eq!(ejected(&proxy).await, vec![bad.addr.to_string()]);
        assert_eq!(ejections_total(&proxy).await, 1.0);
    }
    assert_eq!(ejections_total(&plain).await, 0.0);
}

#[tokio::test]
async fn max_ejected_percent_keeps_endpoints_in_when_all_fail() {
    let ups = [
        upstream("a", Behaviour::Status(StatusCode::SERVICE_UNAVAILABLE)).await,
        upstream("b", Behaviour::Status(StatusCode::SERVICE_UNAVAILABLE)).await,
        upstream("c", Behaviour::Status(StatusCode::SERVICE_UNAVAILABLE)).await,
    ];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();

    // At most 50% of 3 endpoints: one is ejected, the other two keep serving (failures).
    let (_d, proxy) = static_proxy(&service(
        &addrs,
        "{ balancer: round_robin, circuit_breaker: { consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 50 } }",
    ))
    .await;
    let (ok, failed) = load(&proxy, 150).await;
    assert_eq!(
        (ok, failed),
        (0, 150),
        "every answer is the endpoints' own 503"
    );
    let out = ejected(&proxy).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(ejections_total(&proxy).await, 1.0);
    let hits: Vec<u64> = ups.iter().map(|u| u.hits()).collect();
    let starved = hits.iter().filter(|h| **h <= 2).count();
    assert_eq!(starved, 1, "{hits:?}");
    assert!(
        hits.iter().filter(|h| **h >= 70).count() == 2,
        "the two kept in share the load: {hits:?}"
    );

    // At 100% all three go out; requests still reach them (ejection never refuses one).
    let before: u64 = ups.iter().map(|u| u.hits()).sum();
    let (_d2, proxy) = static_proxy(&service(
        &addrs,
        "{ circuit_breaker: { consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 100 } }",
    ))
    .await;
    let (ok, failed) = load(&proxy, 60).await;
    assert_eq!((ok, failed), (0, 60));
    assert_eq!(ups.iter().map(|u| u.hits()).sum::<u64>() - before, 60);
    assert_eq!(ejected(&proxy).await.len(), 3);
    assert_eq!(ejections_total(&proxy).await, 3.0);
}

#[tokio::test]
async fn ejected_endpoint_returns_after_the_ejection_time_via_the_controller() {
    let good = upstream("good", Behaviour::Ok).await;
    let flaky = upstream("flaky", Behaviour::Status(StatusCode::BAD_GATEWAY)).await;
    // Refuses connections: connect failures count too.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ctrl = Arc::new(FakeController::default());
    let policy = mesh_core::BackendPolicy {
        balancer: mesh_core::BalancerKind::RoundRobin,
        circuit_breaker: Some(mesh_core::CircuitBreaker {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(700),
            max_ejection: Duration::from_secs(10),
            max_ejected_percent: 70,
        }),
        ..Default::default()
    };
    let profile = pb::ServiceProfile::from(&mesh_core::ServiceProfile {
        routes: vec![],
        policy,
    });
    assert!(profile.policy.as_ref().unwrap().circuit_breaker.is_some());
    ctrl.set(
        "web.test:80",
        state(
            vec![endpoint(good.addr), endpoint(flaky.addr), endpoint(dead)],
            Some(profile),
        ),
    )
    .await;
    let controller = start_controller(ctrl);
    let proxy = start_proxy(RawConfig {
        controller_addr: Some(format!("http://{}", controller.addr)),
        ..raw_config()
    })
    .await;

    // Both bad endpoints are ejected within a few requests. (Connect failures are sent on
    // to another endpoint, so the client sees only the flaky one's 502s.)
    let start = Instant::now();
    let (_, failed) = load(&proxy, 30).await;
    assert!(failed <= 2, "{failed}");
    let mut out = ejected(&proxy).await;
    out.sort();
    let mut expected = vec![flaky.addr.to_string(), dead.to_string()];
    expected.sort();
    assert_eq!(out, expected);
    let flaky_during = flaky.hits();
    assert_eq!(flaky_during, 2);
    let (ok, _) = load(&proxy, 20).await;
    assert_eq!(
        ok, 20,
        "only the good endpoint is used while the others are out"
    );

    // The flaky endpoint recovers; after the ejection time both are back, with no probing.
    flaky.set(Behaviour::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ejected(&proxy).await.is_empty() {
        assert!(Instant::now() < deadline, "the ejection never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "back after {:?}, before the ejection time",
        start.elapsed()
    );
    let (ok, failed) = load(&proxy, 30).await;
    assert!(
        flaky.hits() > flaky_during,
        "the flaky endpoint never came back"
    );
    // The dead one comes back too, fails twice more and goes out for twice as long; its
    // failures are sent on to live endpoints, so no request fails.
    assert_eq!((ok, failed), (30, 0));
    let (_, cfg) = admin_get(proxy.admin_addr, "/config").await;
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let dest = &v["destinations"]["web.test:80"];
    assert_eq!(
        dest["profile"]["policy"]["circuit_breaker"]["base_ejection"],
        "700ms"
    );
    let dead_state = dest["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"]["addr"] == dead.to_string())
        .unwrap();
    assert_eq!(dead_state["ejected"], true, "{dead_state}");
    let remaining = dead_state["ejected_for_ms"].as_u64().unwrap();
    assert!(
        remaining > 700,
        "second ejection lasts 1.4s: {remaining}ms left"
    );
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "mesh_proxy_endpoint_ejections_total{authority=\"web.test:80\"}"
        ),
        3.0,
        "{m}"
    );
}

/// A gRPC server whose `Destination.Get` streams answer 200 and then end with `status` in
/// the trailers (OK after one message, or the error with none), counting calls.
struct TrailerStatus {
    status: Option<tonic::Code>,
    calls: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl pb::destination_server::Destination for TrailerStatus {
    type GetStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::DestinationUpdate, tonic::Status>>;

    async fn get(
        &self,
        _: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let item = match self.status {
            None => Ok(pb::DestinationUpdate {
                update: Some(pb::destination_update::Update::NotFound(pb::NotFound {})),
            }),
            Some(code) => Err(tonic::Status::new(code, "failing")),
        };
        tx.send(item).await.ok();
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

async fn grpc_server(
    status: Option<tonic::Code>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let svc = TrailerStatus {
        status,
        calls: calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (addr, calls)
}

#[tokio::test]
async fn grpc_failures_in_trailers_eject_and_client_errors_do_not() {
    use std::sync::atomic::Ordering::SeqCst;
    let (good, good_calls) = grpc_server(None).await;
    let (bad, bad_calls) = grpc_server(Some(tonic::Code::Unavailable)).await;
    let (client_error, client_error_calls) = grpc_server(Some(tonic::Code::NotFound)).await;
    let yaml = format!(
        "services:\n  - authority: \"grpc.test:50051\"\n    endpoints: [ {{ addr: \"{good}\" }}, {{ addr: \"{bad}\" }}, {{ addr: \"{client_error}\" }} ]\n    policy: {{ balancer: round_robin, circuit_breaker: {{ consecutive_failures: 2, max_ejected_percent: 100 }} }}\n"
    );
    let (_d, proxy) = static_proxy(&yaml).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound_addr))
            .unwrap()
            .origin("http://grpc.test:50051".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let mut client = pb::destination_client::DestinationClient::new(channel);
    let (mut ok, mut unavailable, mut not_found) = (0, 0, 0);
    for _ in 0..60 {
        let mut stream = client
            .get(pb::GetDestination::default())
            .await
            .expect("the status comes in trailers, after a 200")
            .into_inner();
        // Read to the end: the status arrives with the trailers.
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    ok += 1;
                    break;
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    unavailable += 1;
                    break;
                }
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
                    not_found += 1;
                    break;
                }
            }
        }
    }
    let calls = (
        good_calls.load(SeqCst),
        bad_calls.load(SeqCst),
        client_error_calls.load(SeqCst),
    );
    println!("ok={ok} unavailable={unavailable} not_found={not_found} calls={calls:?}");
    assert_eq!(
        bad_calls.load(SeqCst),
        2,
        "UNAVAILABLE twice in a row ejects"
    );
    assert_eq!(unavailable, 2);
    assert_eq!(calls.0 + calls.2, 58);
    assert_eq!(
        client_error_calls.load(SeqCst),
        29,
        "NOT_FOUND says nothing about health"
    );
    let (_, cfg) = admin_get(proxy.admin_addr, "/config").await;
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let out: Vec<&str> = v["destinations"]["grpc.test:50051"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .map(|e| e["endpoint"]["addr"].as_str().unwrap())
        .collect();
    assert_eq!(out, vec![bad.to_string()]);
    // The request metrics still classify by the trailers.
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    let base = "mesh_proxy_requests_total{direction=\"outbound\",authority=\"grpc.test:50051\",route=\"default\",status_code=\"200\",classification=";
    assert_eq!(
        metric(
            &m,
            &format!("{base}\"success\",client_id=\"\",server_id=\"\"}}")
        ),
        ok as f64,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("{base}\"failure\",client_id=\"\",server_id=\"\"}}")
        ),
        (unavailable + not_found) as f64,
        "{m}"
    );
}
