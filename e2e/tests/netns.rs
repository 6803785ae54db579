//! The end-to-end suite: the real mesh (controller in local mode, `mesh-proxy init` +
//! `mesh-proxy` in every pod, the `mesh-echo` app) in network namespaces, with real traffic
//! and real failures. One test per scenario; each prints a summary with its figures and
//! appends it to `target/tmp/e2e-summary.txt`. Root only: otherwise each test prints why it
//! is skipped and passes.
//!
//! Run one scenario alone (as root, after `cargo build --workspace --bins`):
//! `cargo test -p mesh-e2e --test netns -- s4_ --nocapture`.

mod support;

use std::time::{Duration, Instant};

use support::{LoadResult, Mesh, PodSpec, NS};

macro_rules! mesh {
    ($title:expr) => {
        match Mesh::new($title) {
            Some(m) => m,
            None => return,
        }
    };
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn spread(r: &LoadResult) -> String {
    r.replicas
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn retries_total(mesh: &Mesh, pod: &str) -> u64 {
    support::http::metric(
        &mesh.metrics(pod),
        "mesh_proxy_retries_total",
        &[("direction", "outbound")],
    ) as u64
}

fn policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{name: {service}, namespace: {NS}}}\nspec:\n  targetRef: {{kind: Service, name: {service}}}\n{spec}"
    )
}

fn split_route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web-split, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n  - backendRefs:\n    - {{name: web-v1, port: 80, weight: {v1}}}\n    - {{name: web-v2, port: 80, weight: {v2}}}\n"
    )
}

/// Scenario 1: The app calls `http://web/` and `web:7000` by name; iptables sends it through its proxy
/// to the server's proxy and app, for HTTP/1, HTTP/2, gRPC and a server-speaks-first protocol.
#[test]
fn s1_transparent_interception() {
    let mut mesh = mesh!("s1 transparent interception (HTTP/1, HTTP/2, gRPC, opaque TCP)");
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1"]);

    // HTTP/1.1: the server app sees the request from its own proxy (loopback peer), as
    // HTTP/1.1 again after the HTTP/2 hop between the proxies.
    let (ok, body) = mesh.exec(
        "client",
        &["fetch", "http://web/hello"],
        Duration::from_secs(10),
    );
    assert!(ok, "HTTP/1 request failed: {body}");
    assert!(body.contains("replica=web-1"), "{body}");
    assert!(body.contains("path=/hello"), "{body}");
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    assert!(
        body.contains("peer=127.0.0.1:"),
        "the app was reached directly: {body}"
    );

    let (ok, body) = mesh.exec(
        "client",
        &["fetch", "--http2", "http://web/h2"],
        Duration::from_secs(10),
    );
    assert!(ok, "HTTP/2 request failed: {body}");
    assert!(
        body.contains("replica=web-1") && body.contains("version=HTTP/2.0"),
        "{body}"
    );
    assert!(body.contains("peer=127.0.0.1:"), "{body}");

    let (ok, body) = mesh.exec(
        "client",
        &["grpc", "http://web", "--message", "hi"],
        Duration::from_secs(10),
    );
    assert!(ok, "gRPC call failed: {body}");
    assert!(
        body.contains("replica=web-1") && body.contains("message=hi"),
        "{body}"
    );
    assert!(body.contains("peer=127.0.0.1:"), "{body}");

    // Server speaks first: nothing to detect from the client; the bytes pass untouched.
    let started = Instant::now();
    let (ok, out) = mesh.exec(
        "client",
        &["tcp", "web:7000", "--send", "ping"],
        Duration::from_secs(10),
    );
    let tcp_ms = started.elapsed().as_millis();
    assert!(ok, "opaque TCP failed: {out}");
    assert!(out.contains("hello from web-1"), "{out}");
    assert!(out.contains("web-1 echo: ping"), "{out}");

    // Declared opaque (a Server on the app's named port), neither proxy waits for detection:
    // the client proxy learns it from the endpoints, the server proxy from its inbound policy.
    mesh.write(
        "server-tcp.yaml",
        &format!(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {{name: web-tcp, namespace: {}}}\nspec:\n  selector: {{app: web}}\n  port: tcp\n  protocol: Opaque\n",
            support::mesh::NS
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let declared_ms = loop {
        let started = Instant::now();
        let (ok, out) = mesh.exec(
            "client",
            &["tcp", "web:7000", "--send", "ping"],
            Duration::from_secs(10),
        );
        let took = started.elapsed().as_millis();
        assert!(
            ok && out.contains("web-1 echo: ping"),
            "opaque TCP failed: {out}"
        );
        if took < 150 {
            break took;
        }
        assert!(
            Instant::now() < deadline,
            "a declared opaque port still waits for detection ({took} ms; undeclared {tcp_ms} ms)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // Both proxies saw the traffic.
    let client = mesh.metrics("client");
    let server = mesh.metrics("web-1");
    let out_http = support::http::metric(
        &client,
        "mesh_proxy_requests_total",
        &[("direction", "outbound"), ("status_code", "200")],
    );
    let in_http = support::http::metric(
        &server,
        "mesh_proxy_requests_total",
        &[("direction", "inbound"), ("status_code", "200")],
    );
    assert!(
        out_http >= 3.0,
        "client proxy saw {out_http} requests:\n{client}"
    );
    assert!(
        in_http >= 3.0,
        "server proxy saw {in_http} requests:\n{server}"
    );
    for (who, m) in [("client", &client), ("web-1", &server)] {
        let opaque = support::http::metric(m, "mesh_proxy_tcp_connections_total", &[])
            + support::http::metric(m, "mesh_proxy_connections_total", &[("protocol", "opaque")]);
        assert!(
            opaque >= 1.0,
            "{who}'s proxy saw no opaque connection:\n{m}"
        );
    }

    for proto in ["http1", "http2", "grpc"] {
        let r = mesh.load(
            "client",
            "http://web/load",
            &["--protocol", proto, "--requests", "300", "--rate", "150"],
        );
        assert_eq!(r.failed, 0, "{proto}: {}", r.failures());
        mesh.report
            .load(&format!("{proto} through 2 proxies"), &r, "");
    }
    mesh.report.note(
        "opaque TCP (server speaks first)",
        format!(
            "banner + echo in {tcp_ms} ms undeclared (detection timeout 200 ms per proxy), {declared_ms} ms with a Server declaring it Opaque"
        ),
    );
    mesh.pass();
}

/// Scenario 2: Peak-EWMA balancing across 3 replicas: the slow one gets a minority.
#[test]
fn s2_load_balancing_slow_replica() {
    let mut mesh = mesh!("s2 load balancing: 3 replicas, one slow (+50 ms)");
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-2", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-3-slow", &[("app", "web")]).echo(&["--delay-ms", "50"]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1", "web-2", "web-3-slow"]);

    let r = mesh.load(
        "client",
        "http://web/",
        &["--requests", "1500", "--rate", "150"],
    );
    let slow = r.replies_from("web-3-slow");
    mesh.report.load(
        "1500 req at 150/s",
        &r,
        format!("slow got {:.1}%: {}", pct(slow, r.ok), spread(&r)),
    );
    assert_eq!(r.failed, 0, "{}", r.failures());
    assert!(
        pct(slow, r.ok) < 15.0,
        "the slow replica got {slow} of {} requests: {}",
        r.ok,
        spread(&r)
    );
    for fast in ["web-1", "web-2"] {
        assert!(r.replies_from(fast) > r.ok / 4, "{}", spread(&r));
    }
    mesh.pass();
}

/// Scenario 3: A rolling restart during constant-rate load: each replica is replaced by a new one
/// (started and registered, then the old one deregistered and sent SIGTERM, as a kubelet
/// does). No request fails.
#[test]
fn s3_endpoint_churn_rolling_restart() {
    let mut mesh = mesh!("s3 endpoint churn: rolling restart of 3 replicas under load");
    let labels = [("app", "web")];
    mesh.service("web", &labels);
    for i in 1..=3 {
        mesh.add_pod(PodSpec::server(&format!("old-{i}"), &labels));
    }
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["old-1", "old-2", "old-3"]);

    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "2400", "--rate", "150"],
    );
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..=3 {
        mesh.add_pod(PodSpec::server(&format!("new-{i}"), &labels));
        std::thread::sleep(Duration::from_millis(500));
        // Terminating: out of the endpoints and SIGTERM at the same moment.
        mesh.remove(&format!("workload-old-{i}.yaml"));
        mesh.signal(&format!("old-{i}/proxy"), libc::SIGTERM);
        mesh.wait_exit(&format!("old-{i}/proxy"), Duration::from_secs(10));
        mesh.delete_pod(&format!("old-{i}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = run.wait();
    mesh.report
        .load("2400 req at 150/s, 3 replaced", &r, spread(&r));
    assert_eq!(
        r.failed,
        0,
        "failed during the rolling restart: {}",
        r.failures()
    );
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "300", "--rate", "150"],
    );
    mesh.report
        .load("after the restart", &after, spread(&after));
    assert_eq!(after.failed, 0, "{}", after.failures());
    assert_eq!(after.replies_from("old"), 0, "{}", spread(&after));
    // Every new replica took traffic (P2C over near-equal latencies favours one at low load,
    // so this is over the whole run, not the last 2 s).
    for i in 1..=3 {
        let name = format!("new-{i}");
        assert!(
            r.replies_from(&name) + after.replies_from(&name) > 0,
            "{name} never answered: {} / {}",
            spread(&r),
            spread(&after)
        );
    }
    mesh.pass();
}

/// Scenario 4: A flaky replica (20% 503) is hidden by retries within the retry budget; a replica
/// failing 100% gets at most the budget's worth of extra requests.
#[test]
fn s4_flaky_replica_retries_within_budget() {
    let mut mesh = mesh!("s4 flaky replica: retries and retry budget");
    mesh.service("web", &[("app", "web")]);
    mesh.service("down", &[("app", "down")]);
    let retry = "  retry: {attempts: 3, on: [5xx], backoff: 5ms, maxBackoff: 50ms}\n  retryBudget: {ratio: 0.2, minRetriesPerSecond: 10, ttl: 10s}\n";
    mesh.write("policy-web.yaml", &policy("web", retry));
    mesh.write("policy-down.yaml", &policy("down", retry));
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-2", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-3-flaky", &[("app", "web")]).echo(&["--fail-rate", "0.2"]));
    mesh.add_pod(PodSpec::server("down-1", &[("app", "down")]).echo(&["--fail-rate", "1.0"]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1", "web-2", "web-3-flaky"]);

    let before = retries_total(&mesh, "client");
    let r = mesh.load(
        "client",
        "http://web/",
        &["--requests", "3000", "--rate", "200"],
    );
    let retries = retries_total(&mesh, "client") - before;
    let budget = (0.2 * r.sent as f64 + 10.0 * r.elapsed_s.max(10.0)) * 1.05;
    mesh.report.load(
        "20% flaky replica, 3000 req",
        &r,
        format!(
            "success {:.2}%, retries {retries} ({:.1}% of requests; budget {budget:.0}); {}",
            pct(r.ok, r.sent),
            pct(retries, r.sent),
            spread(&r)
        ),
    );
    assert!(
        pct(r.ok, r.sent) > 99.9,
        "success rate {:.2}%: {}",
        pct(r.ok, r.sent),
        r.failures()
    );
    assert!(retries > 0, "no retries were made");
    assert!(
        retries as f64 <= budget,
        "{retries} retries exceed the budget {budget}"
    );

    // Total outage of a one-replica service: extra load bounded by the budget.
    let before_app = mesh.app_requests("down-1");
    let before = retries_total(&mesh, "client");
    let r = mesh.load(
        "client",
        "http://down/",
        &["--requests", "1000", "--rate", "100"],
    );
    let reached = mesh.app_requests("down-1") - before_app;
    let retries = retries_total(&mesh, "client") - before;
    let extra = reached.saturating_sub(r.sent);
    // 20% of the requests plus 10/s over the run (at least one 10 s window), 5% slack for
    // the window's slot granularity.
    let budget = (0.2 * r.sent as f64 + 10.0 * r.elapsed_s.max(10.0)) * 1.05;
    mesh.report.load(
        "replica failing 100%, 1000 req",
        &r,
        format!(
            "app got {reached} requests: {extra} extra ({:.1}%; proxy retries {retries}; budget {budget:.0}; without one {})",
            pct(extra, r.sent),
            3 * r.sent
        ),
    );
    assert_eq!(r.ok, 0, "the failing replica cannot succeed");
    assert!(extra > 0, "no retries reached the failing replica");
    assert!(
        (extra as f64) <= budget,
        "{extra} extra requests exceed the budget {budget} (retries counted by the proxy: {retries})"
    );
    mesh.pass();
}

/// Scenario 5: A replica SIGKILLed, then another cut off the network, mid-load: traffic shifts to the
/// healthy replicas; failures are bounded and reported.
#[test]
fn s5_replica_killed_and_network_cut() {
    let mut mesh = mesh!("s5 replica killed (SIGKILL) and network cut mid-load");
    mesh.service("web", &[("app", "web")]);
    mesh.write(
        "policy-web.yaml",
        &policy(
            "web",
            "  timeout: 1s\n  retry: {attempts: 2, on: [gateway-error, connect-failure], backoff: 5ms, maxBackoff: 50ms}\n",
        ),
    );
    for i in 1..=4 {
        mesh.add_pod(PodSpec::server(&format!("web-{i}"), &[("app", "web")]));
    }
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm(
        "client",
        "http://web/",
        &["web-1", "web-2", "web-3", "web-4"],
    );

    // SIGKILL the whole pod (app and proxy) 3 s into a 10 s load.
    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1500", "--rate", "150"],
    );
    std::thread::sleep(Duration::from_secs(3));
    mesh.signal("web-2/proxy", libc::SIGKILL);
    mesh.signal("web-2/app", libc::SIGKILL);
    let r = run.wait();
    mesh.report.load(
        "web-2 SIGKILLed at 3 s",
        &r,
        format!("{} {}", r.failures(), spread(&r)),
    );
    assert!(
        r.failed <= 15,
        "more than 1% failed after a kill: {}",
        r.failures()
    );
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "300", "--rate", "150"],
    );
    mesh.report.load("after the kill", &after, spread(&after));
    assert_eq!(after.failed, 0, "{}", after.failures());
    assert_eq!(after.replies_from("web-2"), 0, "{}", spread(&after));

    // Cut web-3's link: packets vanish, nothing is refused.
    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1500", "--rate", "150"],
    );
    std::thread::sleep(Duration::from_secs(3));
    mesh.cut("web-3");
    let r = run.wait();
    mesh.report.load(
        "web-3 cut off at 3 s",
        &r,
        format!("{} {}", r.failures(), spread(&r)),
    );
    assert!(
        r.failed <= 75,
        "more than 5% failed after a cut: {}",
        r.failures()
    );
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "300", "--rate", "150"],
    );
    mesh.report.load(
        "after the cut",
        &after,
        format!("{} {}", after.failures(), spread(&after)),
    );
    assert!(
        after.failed <= 6,
        "more than 2% failed after the cut: {}",
        after.failures()
    );
    assert!(
        after.replies_from("web-1") + after.replies_from("web-4") >= after.ok,
        "{}",
        spread(&after)
    );
    mesh.pass();
}

/// Scenario 6: A 90/10 split between two versions via an HTTPRoute, then 0/100 live under load.
#[test]
fn s6_traffic_split_and_live_shift() {
    let mut mesh = mesh!("s6 traffic split 90/10, then 0/100 live");
    mesh.service("web", &[("app", "web")]);
    mesh.service("web-v1", &[("app", "web"), ("version", "v1")]);
    mesh.service("web-v2", &[("app", "web"), ("version", "v2")]);
    mesh.write("route.yaml", &split_route(90, 10));
    for name in ["v1-a", "v1-b"] {
        mesh.add_pod(PodSpec::server(name, &[("app", "web"), ("version", "v1")]));
    }
    mesh.add_pod(PodSpec::server(
        "v2-a",
        &[("app", "web"), ("version", "v2")],
    ));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["v1-a", "v1-b", "v2-a"]);

    let r = mesh.load(
        "client",
        "http://web/",
        &["--requests", "2000", "--rate", "250"],
    );
    let v2 = pct(r.replies_from("v2"), r.ok);
    mesh.report.load(
        "90/10, 2000 req",
        &r,
        format!("v2 share {v2:.1}%: {}", spread(&r)),
    );
    assert_eq!(r.failed, 0, "{}", r.failures());
    assert!(
        (7.0..=13.0).contains(&v2),
        "v2 got {v2:.1}%, expected 10 ± 3: {}",
        spread(&r)
    );

    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1500", "--rate", "150"],
    );
    std::thread::sleep(Duration::from_secs(3));
    mesh.write("route.yaml", &split_route(0, 100));
    let r = run.wait();
    mesh.report.load("0/100 written at 3 s", &r, spread(&r));
    assert_eq!(r.failed, 0, "failed during the shift: {}", r.failures());
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "500", "--rate", "250"],
    );
    mesh.report.load("after the shift", &after, spread(&after));
    assert_eq!(after.failed, 0, "{}", after.failures());
    assert_eq!(after.replies_from("v2"), after.ok, "{}", spread(&after));
    mesh.pass();
}

/// Scenario 7: A route timeout answers 504 in time; requests on other routes are unaffected.
#[test]
fn s7_route_timeout() {
    let mut mesh = mesh!("s7 route timeout (500 ms on /slow)");
    mesh.service("web", &[("app", "web")]);
    mesh.write(
        "route.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]\n    timeouts: {{request: 500ms}}\n    backendRefs: [{{name: web, port: 80}}]\n  - backendRefs: [{{name: web, port: 80}}]\n"
        ),
    );
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1"]);

    let r = mesh.load(
        "client",
        "http://web/slow?delay_ms=3000",
        &["--requests", "40", "--rate", "20", "--timeout", "10s"],
    );
    mesh.report
        .load("/slow answering after 3 s", &r, r.failures());
    assert_eq!(r.statuses.get("504").copied(), Some(40), "{}", r.failures());
    assert!(
        r.latency_ms.p50 >= 450.0 && r.latency_ms.max < 1500.0,
        "504 not in time: {:?}",
        r.latency_ms
    );
    let r = mesh.load(
        "client",
        "http://web/other?delay_ms=700",
        &["--requests", "40", "--rate", "20"],
    );
    mesh.report.load("/other answering after 700 ms", &r, "");
    assert_eq!(r.failed, 0, "{}", r.failures());
    mesh.pass();
}

/// Scenario 8: The controller SIGKILLed under load: traffic flows on the last known state; a change
/// made while it is down applies once it is back.
#[test]
fn s8_controller_killed_under_load() {
    let mut mesh = mesh!("s8 controller killed under load, then restarted");
    mesh.service("web", &[("app", "web")]);
    mesh.service("web-v1", &[("app", "web"), ("version", "v1")]);
    mesh.service("web-v2", &[("app", "web"), ("version", "v2")]);
    mesh.write("route.yaml", &split_route(100, 0));
    mesh.add_pod(PodSpec::server(
        "v1-a",
        &[("app", "web"), ("version", "v1")],
    ));
    mesh.add_pod(PodSpec::server(
        "v2-a",
        &[("app", "web"), ("version", "v2")],
    ));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["v1-a"]);

    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1500", "--rate", "150"],
    );
    std::thread::sleep(Duration::from_secs(2));
    mesh.signal("controller", libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(1));
    mesh.write("route.yaml", &split_route(0, 100));
    let r = run.wait();
    mesh.report.load("controller killed at 2 s", &r, spread(&r));
    assert_eq!(r.failed, 0, "{}", r.failures());
    assert_eq!(
        r.replies_from("v2"),
        0,
        "the change applied without a controller?"
    );

    let started = Instant::now();
    mesh.restart("controller");
    mesh.wait_controller_ready();
    mesh.warm("client", "http://web/", &["v2-a"]);
    let caught_up = started.elapsed();
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "300", "--rate", "150"],
    );
    mesh.report.load(
        "after the restart",
        &after,
        format!(
            "new split seen {:.1} s after restart: {}",
            caught_up.as_secs_f64(),
            spread(&after)
        ),
    );
    assert_eq!(after.failed, 0, "{}", after.failures());
    assert_eq!(after.replies_from("v2"), after.ok, "{}", spread(&after));
    mesh.pass();
}

/// Scenario 9: The client pod's proxy SIGKILLed: in-flight requests fail at once (no hang), inbound
/// traffic to the pod is refused (fail closed) except on a port excluded from interception,
/// and once the proxy is back both work again.
#[test]
fn s9_proxy_restart_fails_cleanly() {
    let mut mesh = mesh!("s9 proxy restarted: in-flight fail fast, inbound fails closed");
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    let client = mesh.add_pod(PodSpec::client("client").init(&["--skip-inbound-ports", "7000"]));
    mesh.add_pod(PodSpec::client("outsider").unmeshed());
    mesh.warm("client", "http://web/", &["web-1"]);

    // 40 requests that each take 2 s; the proxy dies 1.5 s in.
    let run = mesh.start_load(
        "client",
        "http://web/?delay_ms=2000",
        &["--requests", "40", "--rate", "20", "--timeout", "20s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    mesh.signal("client/proxy", libc::SIGKILL);
    let killed_at = Instant::now();
    let r = run.wait();
    let done_after = killed_at.elapsed();
    mesh.report.load(
        "proxy SIGKILLed with 30 in flight",
        &r,
        format!(
            "all done {:.2} s after the kill: {}",
            done_after.as_secs_f64(),
            r.failures()
        ),
    );
    assert!(
        r.failed >= 20,
        "requests in flight did not fail: {}",
        r.failures()
    );
    assert!(
        r.latency_ms.max < 5000.0 && done_after < Duration::from_secs(3),
        "requests hung after the proxy died: {:?}, done {done_after:?} after the kill",
        r.latency_ms
    );

    // Inbound while the proxy is down: refused on the intercepted port, served on 7000.
    let before = mesh.app_requests("client");
    let url = format!("http://{}:8080/in", client.ip);
    let (ok, out) = mesh.exec("outsider", &["fetch", &url], Duration::from_secs(10));
    assert!(!ok, "inbound was served without the proxy: {out}");
    assert_eq!(
        mesh.app_requests("client"),
        before,
        "the app saw the request"
    );
    let tcp = format!("{}:7000", client.ip);
    let (ok, out) = mesh.exec("outsider", &["tcp", &tcp], Duration::from_secs(10));
    assert!(
        ok && out.contains("hello from client"),
        "skipped port not served: {out}"
    );
    mesh.report.note(
        "inbound with the proxy down",
        "port 8080 refused (app untouched); --skip-inbound-ports 7000 served",
    );

    let restarted = Instant::now();
    mesh.restart("client/proxy");
    let c = mesh.pod("client").clone();
    mesh.wait_proxy_ready(&c);
    let ready_ms = restarted.elapsed().as_millis();
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "200", "--rate", "100"],
    );
    mesh.report.load(
        "after restart",
        &after,
        format!("proxy ready {ready_ms} ms after start"),
    );
    assert_eq!(after.failed, 0, "{}", after.failures());
    let (ok, out) = mesh.exec("outsider", &["fetch", &url], Duration::from_secs(10));
    assert!(
        ok && out.contains("replica=client"),
        "inbound not served after restart: {out}"
    );
    mesh.pass();
}
