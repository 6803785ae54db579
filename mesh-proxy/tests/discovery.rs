//! Discovery from a (fake) controller over the real gRPC API: load balancing by latency,
//! endpoints added and removed under load without failures, the last state kept when the
//! controller goes away, pass-through for unknown destinations, readiness.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use mesh_proto::v1 as pb;
use support::*;

async fn proxy_with(ctrl: Arc<FakeController>) -> (mesh_proxy::app::Running, ControllerProcess) {
    let controller = start_controller(ctrl);
    let proxy = start_proxy(RawConfig {
        controller_addr: Some(format!("http://{}", controller.addr)),
        ..raw_config()
    })
    .await;
    (proxy, controller)
}

/// A controller that knows `web.test:80` with the single endpoint `a`, and a proxy using it.
async fn web_test_with(
    a: &Upstream,
) -> (
    Arc<FakeController>,
    mesh_proxy::app::Running,
    ControllerProcess,
) {
    let ctrl = Arc::new(FakeController::default());
    ctrl.set("web.test:80", state(vec![endpoint(a.addr)], None))
        .await;
    let (proxy, controller) = proxy_with(ctrl.clone()).await;
    (ctrl, proxy, controller)
}

#[tokio::test]
async fn slow_endpoint_gets_fewer_requests() {
    let fast = upstream("fast", Behaviour::Ok).await;
    let slow = upstream("slow", Behaviour::Delay(Duration::from_millis(40))).await;
    let ctrl = Arc::new(FakeController::default());
    ctrl.set(
        "web.test:80",
        state(vec![endpoint(fast.addr), endpoint(slow.addr)], None),
    )
    .await;
    let (proxy, _c) = proxy_with(ctrl).await;
    let client = h1_client();
    let via = proxy.outbound_addr;
    // 4 concurrent callers, 100 requests each.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(
                    get(&client, via, "web.test", "/").await.status,
                    StatusCode::OK
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (fast.hits(), slow.hits());
    println!("fast={f} slow={s}");
    assert_eq!(f + s, 400);
    assert!(
        s * 10 < f,
        "the slow endpoint should get far fewer requests: fast={f} slow={s}"
    );
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let a = upstream("a", Behaviour::Ok).await;
    let b = upstream("b", Behaviour::Ok).await;
    let ctrl = Arc::new(FakeController::default());
    let profile = pb::ServiceProfile::from(&mesh_core::ServiceProfile {
        routes: vec![],
        policy: mesh_core::BackendPolicy {
            balancer: mesh_core::BalancerKind::RoundRobin,
            ..Default::default()
        },
    });
    ctrl.set(
        "web.test:80",
        state(vec![endpoint(a.addr), endpoint(b.addr)], Some(profile)),
    )
    .await;
    let (proxy, _c) = proxy_with(ctrl).await;
    let client = h1_client();
    for _ in 0..100 {
        get(&client, proxy.outbound_addr, "web.test", "/").await;
    }
    assert_eq!((a.hits(), b.hits()), (50, 50));
}

#[tokio::test]
async fn endpoints_change_live_without_failed_requests() {
    let a = upstream("a", Behaviour::Ok).await;
    let b = upstream("b", Behaviour::Ok).await;
    let (ctrl, proxy, _c) = web_test_with(&a).await;
    let via = proxy.outbound_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let client = h1_client();
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = get(&client, via, "web.test", "/").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Scale up: b joins.
    let add = pb::DestinationUpdate {
        update: Some(pb::destination_update::Update::Add(pb::EndpointsAdded {
            endpoints: vec![endpoint(b.addr)],
        })),
    };
    ctrl.push("web.test:80", add).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.hits() == 0 {
        assert!(Instant::now() < deadline, "b never received traffic");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Scale down: a leaves (still running, as a terminating pod would be).
    let remove = pb::DestinationUpdate {
        update: Some(pb::destination_update::Update::Remove(
            pb::EndpointsRemoved {
                addresses: vec![mesh_core::convert::addr_to_proto(a.addr)],
            },
        )),
    };
    ctrl.push("web.test:80", remove).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_after_removal = a.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    println!(
        "sent={} failed={} a={} b={}",
        sent.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
        a.hits(),
        b.hits()
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(sent.load(Ordering::SeqCst) > 100);
    assert_eq!(
        a.hits(),
        a_after_removal,
        "a got traffic after it was removed"
    );
}

#[tokio::test]
async fn controller_loss_keeps_last_state_and_restart_resumes() {
    let a = upstream("a", Behaviour::Ok).await;
    let (_ctrl, proxy, mut controller) = web_test_with(&a).await;
    // Ready once the controller answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_get(proxy.admin_addr, "/ready").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = h1_client();
    assert_eq!(
        get(&client, proxy.outbound_addr, "web.test", "/")
            .await
            .replica,
        "a"
    );
    // Unknown to the controller and an IP literal: passed through to that address.
    let other = upstream("direct", Behaviour::Ok).await;
    let r = get(&client, proxy.outbound_addr, &other.addr.to_string(), "/").await;
    assert_eq!(r.replica, "direct");
    // The controller dies: traffic keeps flowing with the last state.
    let addr = controller.addr;
    controller.kill();
    for _ in 0..50 {
        let r = get(&client, proxy.outbound_addr, "web.test", "/").await;
        assert_eq!(r.replica, "a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new controller with a new state comes up on the same address: streams resume and
    // the new state takes over.
    let b = upstream("b", Behaviour::Ok).await;
    let ctrl2 = Arc::new(FakeController::default());
    ctrl2
        .set("web.test:80", state(vec![endpoint(b.addr)], None))
        .await;
    let _controller2 = start_controller_at(ctrl2, addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&client, proxy.outbound_addr, "web.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        if r.replica == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "discovery did not resume after the controller restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn not_ready_without_a_controller() {
    // Nothing listens on this port: discovery never comes up.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = start_proxy(RawConfig {
        controller_addr: Some(format!("http://{addr}")),
        discovery_timeout: Some("300ms".into()),
        ..raw_config()
    })
    .await;
    assert_eq!(
        admin_get(proxy.admin_addr, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = get(&h1_client(), proxy.outbound_addr, "web.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.proxy_error.unwrap().contains("discovery"));
}

#[tokio::test]
async fn invalid_updates_are_ignored() {
    let a = upstream("a", Behaviour::Ok).await;
    let (ctrl, proxy, _c) = web_test_with(&a).await;
    let client = h1_client();
    assert_eq!(
        get(&client, proxy.outbound_addr, "web.test", "/")
            .await
            .replica,
        "a"
    );
    // An endpoint with a 3-byte IP: rejected, the last good state stays.
    let bad = state(
        vec![pb::Endpoint {
            address: Some(pb::TcpAddress {
                ip: vec![1, 2, 3],
                port: 80,
            }),
            ..Default::default()
        }],
        None,
    );
    ctrl.push("web.test:80", bad).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(&client, proxy.outbound_addr, "web.test", "/")
            .await
            .replica,
        "a"
    );
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metric(&m, "mesh_proxy_discovery_errors_total") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn refused_connections_fail_over_to_live_endpoints() {
    let live = upstream("live", Behaviour::Ok).await;
    // Nothing listens here: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ctrl = Arc::new(FakeController::default());
    ctrl.set(
        "web.test:80",
        state(vec![endpoint(dead), endpoint(live.addr)], None),
    )
    .await;
    let (proxy, _c) = proxy_with(ctrl.clone()).await;
    let client = h1_client();
    // Even POST (never retried after it was sent) is safe to send elsewhere when no
    // connection could be made: no request fails.
    for _ in 0..50 {
        let r = send(
            &client,
            proxy.outbound_addr,
            "web.test",
            "POST",
            "/",
            "data",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.proxy_error);
    }
    assert_eq!(live.hits(), 50);
    // With only dead endpoints the client gets a 502 naming the failure.
    ctrl.set("web.test:80", state(vec![endpoint(dead)], None))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&client, proxy.outbound_addr, "web.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.proxy_error.unwrap().contains("could not connect"));
}
