//! The end-to-end suite: the real mesh (controller in local mode, `mesh-proxy init` +
//! `mesh-proxy` in every pod, the `mesh-echo` app) in network namespaces, with real traffic
//! and real failures. mTLS is on in every scenario (a CA per scenario, a join token per pod);
//! scenarios 10 to 14 check it directly: the wire, authorization, renewal, rotation, and the
//! controller being down. Scenarios 15 and 16 run pods from the real `meshctl inject --manual`
//! output the way a kubelet does (`support/pod.rs`). One test per scenario; each prints a summary with its figures and
//! appends it to `target/tmp/e2e-summary.txt`. Root only: otherwise each test prints why it
//! is skipped and passes.
//!
//! Run one scenario alone (as root, after `cargo build --workspace --bins`):
//! `cargo test -p mesh-e2e --test netns -- s4_ --nocapture`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::mesh::{spiffe, APP_PORT, TCP_PORT};
use support::{LoadResult, Mesh, PodSpec, NS};

macro_rules! mesh {
    ($title:expr) => {
        mesh!($title, &[])
    };
    ($title:expr, $controller_args:expr) => {
        match Mesh::with_controller_args($title, $controller_args) {
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

/// Fetches `url` from pod `from` and says whether the app saw `mesh-client-id: <from's ID>`.
fn body_has_client_id(mesh: &Mesh, from: &str, url: &str) -> bool {
    let (ok, body) = mesh.exec(from, &["fetch", url], Duration::from_secs(10));
    assert!(ok, "GET {url} from {from} failed: {body}");
    body.contains(&format!("header mesh-client-id: {}", spiffe(from)))
}

fn metric(mesh: &Mesh, pod: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::http::metric(&mesh.metrics(pod), name, labels)
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
    let web_ip = mesh.service("web", &[("app", "web")]);
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
    let tcp_addr = SocketAddr::from((web_ip, TCP_PORT));
    let (undeclared_first, banner) = mesh
        .first_line("client", tcp_addr)
        .unwrap_or_else(|e| panic!("opaque TCP failed: {e}"));
    assert_eq!(banner, "hello from web-1");

    // Declared opaque (a Server on the app's named port), neither proxy waits for detection:
    // the client proxy learns it from the endpoints and says so in the transport header of
    // its mTLS connection, so the server proxy does not sniff either.
    mesh.write(
        "server-tcp.yaml",
        &format!(
            "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {{name: web-tcp, namespace: {}}}\nspec:\n  selector: {{app: web}}\n  port: tcp\n  protocol: Opaque\n",
            support::mesh::NS
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let declared_first = loop {
        let (first, banner) = mesh
            .first_line("client", tcp_addr)
            .unwrap_or_else(|e| panic!("opaque TCP failed: {e}"));
        assert_eq!(banner, "hello from web-1");
        // Well under one detection timeout (200 ms): neither proxy waited.
        if first < Duration::from_millis(100) {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "a declared opaque port still waits for detection: the first server byte came after {first:?} (undeclared: {undeclared_first:?}; the detection timeout is 200 ms)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let started = Instant::now();
    let (ok, out) = mesh.exec(
        "client",
        &["tcp", "web:7000", "--send", "ping"],
        Duration::from_secs(10),
    );
    let declared_ms = started.elapsed().as_millis();
    assert!(
        ok && out.contains("web-1 echo: ping"),
        "opaque TCP failed: {out}"
    );

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
    // Over mTLS: the server proxy knows the caller's identity, the client proxy the server's.
    let in_mtls = support::http::metric(
        &server,
        "mesh_proxy_requests_total",
        &[("direction", "inbound"), ("client_id", &spiffe("client"))],
    );
    assert!(
        in_mtls >= in_http,
        "server proxy saw {in_mtls} of {in_http} requests from client's identity:\n{server}"
    );
    let out_mtls = support::http::metric(
        &client,
        "mesh_proxy_requests_total",
        &[("direction", "outbound"), ("server_id", &spiffe("web-1"))],
    );
    assert!(
        out_mtls >= out_http,
        "client proxy sent {out_mtls} of {out_http} requests to web-1's identity:\n{client}"
    );
    let in_conns = support::http::metric(
        &server,
        "mesh_proxy_peer_connections_total",
        &[
            ("direction", "inbound"),
            ("peer_id", &spiffe("client")),
            ("tls", "true"),
        ],
    );
    assert!(
        in_conns >= 1.0,
        "web-1's proxy accepted no mTLS connection from client:\n{server}"
    );
    assert!(
        body_has_client_id(&mesh, "client", "http://web/who"),
        "the app did not see the caller's identity"
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
            "banner + echo in {tcp_ms} ms undeclared (first byte {} ms; detection timeout 200 ms), {declared_ms} ms with a Server declaring it Opaque (first byte {} ms)",
            undeclared_first.as_millis(),
            declared_first.as_millis()
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

/// Whether the machine has `tcpdump` for the capture scenario. Missing: the scenario says
/// so and passes, unless `MESH_TEST_REQUIRE_PEERS` is set (as `scripts/test.sh` does, after
/// installing it), where it fails.
fn have_tcpdump(title: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v tcpdump"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_none(),
            "e2e scenario '{title}' needs tcpdump: install it (`apt-get install tcpdump`; scripts/test.sh does)"
        );
        println!(
            "skipping e2e scenario '{title}': `tcpdump` is missing (scripts/test.sh installs it)"
        );
    }
    found
}

/// Scenario 10: Everything between two meshed pods is TLS. tcpdump on the hub's bridge captures
/// HTTP/1, HTTP/2, gRPC and opaque TCP through the mesh; every byte each pod sent the other is
/// in TLS records, and no plaintext HTTP or known payload crosses. A plaintext request from an
/// unmeshed pod in the same capture is seen in clear, so the check is not blind.
#[test]
fn s10_mtls_on_the_wire() {
    const TITLE: &str = "s10 mTLS on the wire: no plaintext between pods (tcpdump)";
    if support::sys::skip_reason().is_none() && !have_tcpdump(TITLE) {
        return;
    }
    let mut mesh = mesh!(TITLE);
    mesh.service("web", &[("app", "web")]);
    let web = mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    let client = mesh.add_pod(PodSpec::client("client"));
    let outsider = mesh.add_pod(PodSpec::client("outsider").unmeshed());
    // Before any traffic between the pods, so every connection is captured from its SYN.
    let pcap = mesh.start_capture("wire");

    let marker = "zq-plaintext-marker-8d41";
    mesh.warm("client", "http://web/", &["web-1"]);
    let url = format!("http://web/{marker}");
    for args in [
        vec!["fetch", url.as_str()],
        vec!["fetch", "--http2", url.as_str()],
        vec!["grpc", "http://web", "--message", marker],
        vec!["tcp", "web:7000", "--send", marker],
    ] {
        let (ok, out) = mesh.exec("client", &args, Duration::from_secs(10));
        assert!(ok && out.contains(marker), "{args:?} failed: {out}");
    }
    for proto in ["http1", "http2", "grpc"] {
        let r = mesh.load(
            "client",
            &url,
            &["--protocol", proto, "--requests", "100", "--rate", "100"],
        );
        assert_eq!(r.failed, 0, "{proto}: {}", r.failures());
        mesh.report.load(&format!("{proto} under capture"), &r, "");
    }
    for i in 0..5 {
        let (ok, out) = mesh.exec(
            "client",
            &["tcp", "web:7000", "--send", &format!("{marker}-{i}")],
            Duration::from_secs(10),
        );
        assert!(ok, "TCP echo failed: {out}");
    }
    // The control: an app outside the mesh calls web-1 directly, in plaintext.
    let direct = format!("http://{}:{APP_PORT}/{marker}-outsider", web.ip);
    let (ok, out) = mesh.exec("outsider", &["fetch", &direct], Duration::from_secs(10));
    assert!(ok, "plaintext call from outside the mesh failed: {out}");
    std::thread::sleep(Duration::from_millis(300));
    let tcpdump = mesh.stop_capture("wire");

    let data = std::fs::read(&pcap).unwrap_or_else(|e| panic!("{}: {e}", pcap.display()));
    let segments = support::pcap::parse(&data).unwrap_or_else(|e| panic!("{e}"));
    let flows = support::pcap::flows(&segments);
    let between = |f: &support::pcap::Flow, a: std::net::Ipv4Addr, b: std::net::Ipv4Addr| matches!((f.src, f.dst), (Some(s), Some(d)) if (*s.ip() == a && *d.ip() == b) || (*s.ip() == b && *d.ip() == a));
    let needles: [&[u8]; 4] = [
        b"HTTP/1.",
        b"PRI * HTTP/2.0",
        marker.as_bytes(),
        b"hello from web-1",
    ];
    let (mut mesh_flows, mut records, mut bytes, mut with_alpn, mut clients) = (0, 0, 0, 0, 0);
    let mut ports = std::collections::BTreeSet::new();
    for f in flows.iter().filter(|f| between(f, client.ip, web.ip)) {
        let (Some(src), Some(dst)) = (f.src, f.dst) else {
            continue;
        };
        for seg in segments.iter().filter(|s| s.src == src && s.dst == dst) {
            for n in needles {
                assert!(
                    !support::pcap::contains(&seg.payload, n),
                    "plaintext {:?} crossed the wire {src} -> {dst}: {:?}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(&seg.payload)
                );
            }
        }
        if f.bytes.is_empty() {
            continue;
        }
        assert!(
            f.from_start,
            "{src} -> {dst}: capture started mid-connection ({tcpdump})"
        );
        assert_eq!(
            f.gaps, 0,
            "{src} -> {dst}: the capture lost packets ({tcpdump})"
        );
        let r = support::pcap::tls_records(&f.bytes)
            .unwrap_or_else(|e| panic!("{src} -> {dst} is not all TLS: {e}"));
        assert_eq!(r.partial, 0, "{src} -> {dst}: a TLS record is cut short");
        if *src.ip() == client.ip {
            clients += 1;
            ports.insert(dst.port());
            if support::pcap::contains(&r.first_handshake, b"mesh.dev/transport.v1") {
                with_alpn += 1;
            }
        }
        mesh_flows += 1;
        records += r.total();
        bytes += f.bytes.len();
    }
    assert!(
        clients >= 2 && mesh_flows >= 4,
        "too few connections between client and web-1 were captured ({clients} from the client, {mesh_flows} in all; {tcpdump})"
    );
    assert_eq!(
        with_alpn, clients,
        "every connection the client proxy opened should offer ALPN mesh.dev/transport.v1"
    );
    // Both the HTTP and the TCP traffic went to web-1's intercepted ports over TLS.
    assert!(
        ports.contains(&APP_PORT) && ports.contains(&TCP_PORT),
        "expected mTLS connections to ports {APP_PORT} and {TCP_PORT}, saw {ports:?}"
    );
    let control: Vec<u8> = flows
        .iter()
        .filter(|f| between(f, outsider.ip, web.ip))
        .flat_map(|f| f.bytes.clone())
        .collect();
    assert!(
        support::pcap::contains(&control, b"HTTP/1.")
            && support::pcap::contains(&control, marker.as_bytes()),
        "the capture did not show the outsider's plaintext request: the wire check would be blind"
    );
    mesh.report.note(
        "captured between client and web-1",
        format!(
            "{mesh_flows} TCP streams, {bytes} bytes, {records} TLS records, all TLS (ALPN mesh.dev/transport.v1 on all {clients} client streams, ports {ports:?}); no HTTP/1, h2 preface or payload marker; the outsider's plaintext request is visible ({} bytes)",
            control.len()
        ),
    );
    mesh.pass();
}

fn server_yaml(name: &str, app: &str, port: &str) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: Server\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{app: {app}}}\n  port: {port}\n"
    )
}

/// Scenario 11: An AuthorizationPolicy lets only client-a's identity call `/api` on web: client-a
/// gets 200 there, client-b and an unmeshed caller 403, and nobody anything else. Denied
/// requests never reach the app and are counted by the server proxy.
#[test]
fn s11_authorization_by_identity() {
    let mut mesh = mesh!("s11 authorization: only client-a's identity may call /api");
    mesh.service("web", &[("app", "web")]);
    let web = mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client-a"));
    mesh.add_pod(PodSpec::client("client-b"));
    mesh.add_pod(PodSpec::client("outsider").unmeshed());
    mesh.warm("client-a", "http://web/", &["web-1"]);
    mesh.warm("client-b", "http://web/", &["web-1"]);

    mesh.write("server-web.yaml", &server_yaml("web-http", "web", "http"));
    mesh.write(
        "authz-web.yaml",
        &format!(
            "apiVersion: mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: web-api, namespace: {NS}}}\nspec:\n  targetRef: {{group: mesh.dev, kind: Server, name: web-http}}\n  rules:\n  - name: client-a-api\n    clients:\n      identities: [\"{}\"]\n    routes:\n    - path: {{prefix: /api}}\n",
            spiffe("client-a")
        ),
    );
    // The policy reaches web-1's proxy live.
    let started = Instant::now();
    support::sys::wait_for(
        "client-b to be denied on /api",
        Duration::from_secs(15),
        || {
            let r = mesh.load(
                "client-b",
                "http://web/api/orders",
                &["--requests", "1", "--rate", "10"],
            );
            (r.statuses.get("403") == Some(&1)).then_some(())
        },
    );
    let applied = started.elapsed();

    let denials = |mesh: &Mesh, reason: &str| {
        metric(
            mesh,
            "web-1",
            "mesh_proxy_authorization_denials_total",
            &[
                ("direction", "inbound"),
                ("action", "deny"),
                ("reason", reason),
            ],
        ) as u64
    };
    let app_before = mesh.app_requests("web-1");
    let unauthorized_before = denials(&mesh, "unauthorized");
    let unauthenticated_before = denials(&mesh, "unauthenticated");
    let load = ["--requests", "100", "--rate", "100"];

    let a = mesh.load("client-a", "http://web/api/orders", &load);
    mesh.report
        .load("client-a GET /api/orders", &a, a.failures());
    assert_eq!(a.statuses.get("200"), Some(&100), "{}", a.failures());
    assert!(
        body_has_client_id(&mesh, "client-a", "http://web/api/who"),
        "web-1's app did not see client-a's identity"
    );

    let b = mesh.load("client-b", "http://web/api/orders", &load);
    mesh.report
        .load("client-b GET /api/orders", &b, b.failures());
    assert_eq!(b.statuses.get("403"), Some(&100), "{}", b.failures());

    let other = mesh.load("client-a", "http://web/other", &load);
    mesh.report
        .load("client-a GET /other (no rule)", &other, other.failures());
    assert_eq!(
        other.statuses.get("403"),
        Some(&100),
        "{}",
        other.failures()
    );

    let direct = format!("http://{}:{APP_PORT}/api/orders", web.ip);
    let (ok, out) = mesh.exec("outsider", &["fetch", &direct], Duration::from_secs(10));
    assert!(
        !ok && out.contains("403"),
        "a plaintext caller got through: {out}"
    );

    let app = mesh.app_requests("web-1") - app_before;
    let unauthorized = denials(&mesh, "unauthorized") - unauthorized_before;
    let unauthenticated = denials(&mesh, "unauthenticated") - unauthenticated_before;
    let allowed = metric(
        &mesh,
        "web-1",
        "mesh_proxy_requests_total",
        &[
            ("direction", "inbound"),
            ("client_id", &spiffe("client-a")),
            ("status_code", "200"),
        ],
    );
    mesh.report.note(
        "web-1's proxy",
        format!(
            "policy applied {:.1} s after it was written; denied {unauthorized} unauthorized (client-b, client-a off-route), {unauthenticated} unauthenticated (plaintext); app answered {app}; {allowed} allowed from client-a",
            applied.as_secs_f64()
        ),
    );
    assert_eq!(
        unauthorized, 200,
        "client-b's 100 and client-a's 100 off-route requests should count as unauthorized denials"
    );
    assert_eq!(
        unauthenticated, 1,
        "the plaintext request should count as an unauthenticated denial"
    );
    // Only client-a's 100 allowed requests and its one fetch reached the app.
    assert_eq!(app, 101, "denied requests reached the app");
    assert!(
        allowed >= 101.0,
        "allowed requests not counted under client-a's identity"
    );
    mesh.pass();
}

/// The sum of `mesh_proxy_identity_certificate_requests_total{result}` of a pod's proxy.
fn cert_requests(mesh: &Mesh, pod: &str, result: &str) -> u64 {
    metric(
        mesh,
        pod,
        "mesh_proxy_identity_certificate_requests_total",
        &[("result", result)],
    ) as u64
}

/// Opens `n` new opaque TCP connections (each a new mTLS handshake between the proxies) from
/// `from` to `web:7000`, one every `every`; how many failed, with the first failure.
fn tcp_handshakes(mesh: &Mesh, from: &str, n: usize, every: Duration) -> (usize, String) {
    let mut failed = 0;
    let mut first = String::new();
    for i in 0..n {
        let (ok, out) = mesh.exec(
            from,
            &["tcp", "web:7000", "--send", &format!("conn-{i}")],
            Duration::from_secs(10),
        );
        if !ok || !out.contains(&format!("echo: conn-{i}")) {
            failed += 1;
            if first.is_empty() {
                first = out;
            }
        }
        std::thread::sleep(every);
    }
    (failed, first)
}

/// Scenario 12: Leaves live 5 s: under 20 s of load the proxies renew several times, no request
/// fails, and new connections keep handshaking with fresh certificates.
#[test]
fn s12_certificate_renewal_under_load() {
    let mut mesh = mesh!(
        "s12 certificate renewal under load (5 s leaves)",
        &["--identity-leaf-lifetime", "5s"]
    );
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-2", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1", "web-2"]);
    let pods = ["web-1", "web-2", "client"];
    let before: Vec<u64> = pods.iter().map(|p| cert_requests(&mesh, p, "ok")).collect();

    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1000", "--rate", "50"],
    );
    let (tcp_failed, first) = tcp_handshakes(&mesh, "client", 18, Duration::from_secs(1));
    let r = run.wait();
    let renewed: Vec<u64> = pods
        .iter()
        .zip(&before)
        .map(|(p, b)| cert_requests(&mesh, p, "ok") - b)
        .collect();
    let failed_requests: u64 = pods.iter().map(|p| cert_requests(&mesh, p, "failed")).sum();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    mesh.report.load(
        "1000 req at 50/s, 5 s leaves",
        &r,
        format!(
            "renewals {}; failed certificate requests {failed_requests}; 18 new TCP connections, {tcp_failed} failed",
            pods.iter()
                .zip(&renewed)
                .map(|(p, n)| format!("{p}=+{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    assert_eq!(
        r.failed,
        0,
        "requests failed during renewals: {}",
        r.failures()
    );
    assert_eq!(
        tcp_failed, 0,
        "new connections failed during renewals: {first}"
    );
    for (p, n) in pods.iter().zip(&renewed) {
        // 20 s of 5 s leaves: at least 3 renewals each (one per leaf's second half).
        assert!(
            *n >= 3,
            "{p}'s proxy renewed only {n} times in 20 s of 5 s leaves"
        );
        let expiry = metric(
            &mesh,
            p,
            "mesh_proxy_identity_certificate_expiry_timestamp_seconds",
            &[],
        );
        assert!(
            expiry > now,
            "{p}'s proxy holds an expired certificate (expiry {expiry}, now {now})"
        );
    }
    mesh.pass();
}

fn pem_certs(text: &str) -> Vec<String> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|c| c.split("-----END CERTIFICATE-----").next())
        .map(|c| c.split_whitespace().collect())
        .collect()
}

/// Scenario 13: `identity init --next` while load runs: the controller walks distributing ->
/// reissuing -> retiring -> idle, no request and no new connection fails, and afterwards every
/// proxy holds a leaf of the new issuer and the bundle holds only the new anchor.
#[test]
fn s13_trust_anchor_rotation_under_load() {
    let mut mesh = mesh!("s13 trust-anchor rotation under load");
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::server("web-2", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1", "web-2"]);
    let pods = ["web-1", "web-2", "client"];
    let anchors_file = mesh.identity.join("trust-anchors.pem");
    let old_pem = std::fs::read_to_string(&anchors_file)
        .unwrap_or_else(|e| panic!("{}: {e}", anchors_file.display()));
    let old = mesh.controller_status()["identity"].clone();
    assert_eq!(old["phase"], "idle", "{old}");
    let old_anchor = old["anchors"][0].clone();
    let bundles_before: Vec<f64> = pods
        .iter()
        .map(|p| {
            metric(
                &mesh,
                p,
                "mesh_proxy_identity_trust_bundle_updates_total",
                &[],
            )
        })
        .collect();

    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "1000", "--rate", "50"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let dir = mesh.identity.display().to_string();
    mesh.controller_cli(&["identity", "init", "--dir", &dir, "--next"]);
    let next_pem = std::fs::read_to_string(mesh.identity.join("next").join("trust-anchors.pem"))
        .unwrap_or_else(|e| panic!("identity init --next wrote no next/trust-anchors.pem: {e}"));
    let started = Instant::now();
    let mut phases: Vec<String> = Vec::new();
    let mut new_anchor = serde_json::Value::Null;
    let (mut conns, mut conn_failures, mut first_failure) = (0, 0, String::new());
    let mut last_conn = Instant::now();
    loop {
        let id = mesh.controller_status()["identity"].clone();
        let phase = id["phase"].as_str().unwrap_or("?").to_string();
        if let Some(a) = id["next"]["anchors"].get(0) {
            new_anchor = a.clone();
        }
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if phase == "idle" && phases.len() > 1 {
            break;
        }
        // The load (20 s, started 3 s before) must cover the whole rotation.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rotation did not finish in 15 s; phases seen {phases:?}; status {id}"
        );
        // A new mTLS connection in every phase, every half second.
        if last_conn.elapsed() >= Duration::from_millis(500) {
            let (failed, first) = tcp_handshakes(&mesh, "client", 1, Duration::ZERO);
            conns += 1;
            conn_failures += failed;
            if failed > 0 && first_failure.is_empty() {
                first_failure = first;
            }
            last_conn = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rotated_in = started.elapsed();
    let r = run.wait();
    let after = mesh.controller_status()["identity"].clone();
    let new_certs = pem_certs(&std::fs::read_to_string(&anchors_file).unwrap_or_default());
    mesh.report.load(
        "1000 req at 50/s, rotation at 3 s",
        &r,
        format!(
            "phases seen on /status {} in {:.1} s; {conns} new TCP connections during it, {conn_failures} failed",
            phases.join(" -> "),
            rotated_in.as_secs_f64()
        ),
    );
    assert_eq!(
        r.failed,
        0,
        "requests failed during the rotation: {}",
        r.failures()
    );
    assert_eq!(
        conn_failures, 0,
        "new connections failed during the rotation: {first_failure}"
    );
    // Phases only move forward, from the first one seen under way back to idle.
    let order = ["idle", "distributing", "reissuing", "retiring"];
    let under_way: Vec<usize> = phases
        .iter()
        .skip_while(|p| *p == "idle")
        .take_while(|p| *p != "idle")
        .map(|p| {
            order
                .iter()
                .position(|o| o == p)
                .unwrap_or_else(|| panic!("unknown phase {p}"))
        })
        .collect();
    assert!(
        !under_way.is_empty()
            && under_way.windows(2).all(|w| w[0] < w[1])
            && phases.last().map(String::as_str) == Some("idle")
            && phases
                .iter()
                .skip_while(|p| *p == "idle")
                .filter(|p| *p == "idle")
                .count()
                == 1,
        "phases did not walk forward to idle: {phases:?}"
    );
    assert!(
        phases.iter().any(|p| p == "reissuing"),
        "the reissuing phase (proxies renewing from the new issuer) was never seen: {phases:?}"
    );
    // Every phase, as the controller published it (its log), in order.
    let mut published: Vec<String> = Vec::new();
    for line in mesh.log("controller").lines() {
        if !line.contains("publishing the trust bundle and issuer") {
            continue;
        }
        let Some(p) = line
            .split("phase=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        if published.last().map(String::as_str) != Some(p) {
            published.push(p.to_string());
        }
    }
    assert_eq!(
        published,
        ["idle", "distributing", "reissuing", "retiring", "idle"],
        "the controller did not publish every phase in order"
    );
    assert!(
        new_anchor.is_string(),
        "/status never showed the next anchor"
    );
    assert_ne!(new_anchor, old_anchor);
    assert_eq!(
        after["anchors"],
        serde_json::json!([new_anchor]),
        "the bundle should hold only the new anchor: {after}"
    );
    assert!(
        after["next"].is_null(),
        "a next CA is still pending: {after}"
    );
    let n = pods.len() as u64;
    for state in ["connected", "holding_bundle", "on_current_issuer"] {
        assert_eq!(
            after["proxies"][state].as_u64(),
            Some(n),
            "{state}: every proxy should be on the new issuer and bundle: {after}"
        );
    }
    assert_eq!(
        new_certs,
        pem_certs(&next_pem),
        "{} should hold exactly the new anchor",
        anchors_file.display()
    );
    for c in pem_certs(&old_pem) {
        assert!(!new_certs.contains(&c), "the old anchor is still trusted");
    }
    for (p, b) in pods.iter().zip(&bundles_before) {
        let got = metric(
            &mesh,
            p,
            "mesh_proxy_identity_trust_bundle_updates_total",
            &[],
        ) - b;
        assert!(
            got >= 2.0,
            "{p}'s proxy applied {got} bundles (old+new, then new)"
        );
    }
    // A pod that joins now only knows the new anchor: it talks with everyone.
    mesh.add_pod(PodSpec::server("web-3", &[("app", "web")]));
    mesh.warm("client", "http://web/", &["web-1", "web-2", "web-3"]);
    let (failed, first) = tcp_handshakes(&mesh, "client", 5, Duration::ZERO);
    assert_eq!(failed, 0, "new connections after the rotation: {first}");
    mesh.report.note(
        "after the rotation",
        format!(
            "bundle = new anchor only; {n} of {n} proxies on the new issuer; a new pod joined and served"
        ),
    );
    mesh.pass();
}

/// Scenario 14: The controller SIGKILLed: with their current certificates (1 min leaves) the
/// proxies keep serving over mTLS for 10 s, new connections included; none falls back to
/// plaintext.
#[test]
fn s14_controller_down_mtls_continues() {
    let mut mesh = mesh!(
        "s14 controller down: mTLS continues on current certificates",
        &["--identity-leaf-lifetime", "1m"]
    );
    mesh.service("web", &[("app", "web")]);
    mesh.add_pod(PodSpec::server("web-1", &[("app", "web")]));
    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-1"]);
    // The client proxy resolves web:7000 too while the controller is up (without a
    // controller, a never-seen destination cannot be discovered).
    let (failed, first) = tcp_handshakes(&mesh, "client", 1, Duration::ZERO);
    assert_eq!(failed, 0, "TCP through the mesh failed: {first}");
    let inbound = |mesh: &Mesh, tls: &str| {
        metric(
            mesh,
            "web-1",
            "mesh_proxy_peer_connections_total",
            &[("direction", "inbound"), ("tls", tls)],
        )
    };
    let mtls_before = inbound(&mesh, "true");
    let plain_before = inbound(&mesh, "false");
    let id_requests = |mesh: &Mesh| {
        metric(
            mesh,
            "web-1",
            "mesh_proxy_requests_total",
            &[("direction", "inbound"), ("client_id", &spiffe("client"))],
        )
    };
    let requests_before = id_requests(&mesh);

    mesh.signal("controller", libc::SIGKILL);
    let down = Instant::now();
    let run = mesh.start_load(
        "client",
        "http://web/",
        &["--requests", "500", "--rate", "50"],
    );
    let (tcp_failed, first) = tcp_handshakes(&mesh, "client", 10, Duration::from_millis(800));
    let r = run.wait();
    let down_for = down.elapsed();
    let mtls = inbound(&mesh, "true") - mtls_before;
    let plain = inbound(&mesh, "false") - plain_before;
    let by_id = id_requests(&mesh) - requests_before;
    mesh.report.load(
        "500 req at 50/s, controller down",
        &r,
        format!(
            "down {:.1} s; 10 new TCP connections, {tcp_failed} failed; web-1 accepted {mtls} mTLS and {plain} plaintext connections, {by_id} requests from client's identity",
            down_for.as_secs_f64()
        ),
    );
    assert_eq!(
        r.failed,
        0,
        "requests failed with the controller down: {}",
        r.failures()
    );
    assert_eq!(
        tcp_failed, 0,
        "new connections failed with the controller down: {first}"
    );
    assert!(
        mtls >= 10.0,
        "only {mtls} new mTLS connections reached web-1"
    );
    assert_eq!(plain, 0.0, "connections fell back to plaintext");
    assert!(
        by_id >= r.ok as f64,
        "requests were not all mTLS: {by_id} of {}",
        r.ok
    );

    mesh.restart("controller");
    mesh.wait_controller_ready();
    let after = mesh.load(
        "client",
        "http://web/",
        &["--requests", "100", "--rate", "50"],
    );
    mesh.report.load("after the restart", &after, "");
    assert_eq!(after.failed, 0, "{}", after.failures());
    mesh.pass();
}

/// The Pod manifest a user writes for the echo app: no mesh in it.
fn app_manifest(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  labels: {{app: {app}}}
spec:
  serviceAccountName: {name}
  containers:
  - name: app
    image: mesh-echo
    command: [mesh-echo, serve, --listen, '0.0.0.0:{APP_PORT}', --tcp-listen, '0.0.0.0:{TCP_PORT}', --name, {name}]
    ports:
    - {{name: http, containerPort: {APP_PORT}}}
    - {{name: tcp, containerPort: {TCP_PORT}}}
    readinessProbe:
      httpGet: {{path: /__stats, port: http}}
      periodSeconds: 1
"
    )
}

/// Load from `client` to `http://web/` answered by the injected pod `server`, all over mTLS:
/// both proxies count the requests under each other's SPIFFE ID and the server's proxy
/// accepted mTLS connections from the client's identity.
fn mtls_load_to_injected(mesh: &mut Mesh, client: &str, server: &str, phase: &str) {
    let r = mesh.load(
        client,
        "http://web/",
        &["--requests", "300", "--rate", "100"],
    );
    let by_client_id = metric(
        mesh,
        server,
        "mesh_proxy_requests_total",
        &[("direction", "inbound"), ("client_id", &spiffe(client))],
    );
    let to_server_id = metric(
        mesh,
        client,
        "mesh_proxy_requests_total",
        &[("direction", "outbound"), ("server_id", &spiffe(server))],
    );
    let mtls_conns = metric(
        mesh,
        server,
        "mesh_proxy_peer_connections_total",
        &[
            ("direction", "inbound"),
            ("peer_id", &spiffe(client)),
            ("tls", "true"),
        ],
    );
    mesh.report.load(
        phase,
        &r,
        format!(
            "{server}'s proxy: {by_client_id} requests from {client}'s identity over {mtls_conns} mTLS connections; {client}'s proxy: {to_server_id} to {server}'s identity"
        ),
    );
    assert_eq!(r.failed, 0, "{}", r.failures());
    assert_eq!(
        r.replies_from(server),
        r.ok,
        "not every reply came from {server}"
    );
    assert!(
        by_client_id >= r.ok as f64,
        "only {by_client_id} of {} requests reached {server}'s proxy under {client}'s identity:\n{}",
        r.ok,
        mesh.metrics(server)
    );
    assert!(
        to_server_id >= r.ok as f64,
        "only {to_server_id} of {} requests went to {server}'s identity",
        r.ok
    );
    assert!(
        mtls_conns >= 1.0,
        "{server}'s proxy accepted no mTLS connection from {client}"
    );
    assert!(
        body_has_client_id(mesh, client, "http://web/who"),
        "the injected app did not see {client}'s identity"
    );
}

/// Scenario 15: A pod from the real `meshctl inject --manual` (native sidecar), run as a kubelet
/// runs it: mesh-init with only NET_ADMIN and NET_RAW, the sidecar as UID 2102 with the
/// downward API and a projected token, the app only after the sidecar's startupProbe. A meshed
/// client reaches it through a Service over mTLS; a plain GET from outside the mesh (like a
/// kubelet probe) passes its proxy's inbound; the Workload's strict Server applies to the
/// proxy that names itself as the pod.
#[test]
fn s15_injected_pod_native_sidecar() {
    let mut mesh = mesh!("s15 a pod from meshctl inject --manual (native sidecar)");
    mesh.service("web", &[("app", "web")]);
    mesh.write(
        "server-web-tcp.yaml",
        &format!("{}  tls: strict\n", server_yaml("web-tcp", "web", "tcp")),
    );
    let manifest = mesh.meshctl_inject(&app_manifest("web-inj", "web"), &[]);
    let spec = manifest.spec.as_ref().expect("spec");
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["mesh-init", "mesh-proxy"], "init containers");
    let sidecar = &spec.init_containers.as_ref().expect("init containers")[1];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert!(
        sidecar.startup_probe.is_some(),
        "the sidecar has no startupProbe"
    );
    let started = mesh.run_pod(&manifest);
    mesh.report.note("kubelet", started.timeline());
    // The native-sidecar guarantee, as the kubelet kept it.
    assert!(started.at("mesh-init exited 0") < started.at("mesh-proxy started"));
    assert!(started.at("mesh-proxy startupProbe passed") < started.at("app started"));
    let pod = started.pod.clone();

    mesh.add_pod(PodSpec::client("client"));
    let outsider = mesh.add_pod(PodSpec::client("outsider").unmeshed());
    mesh.warm("client", "http://web/", &["web-inj"]);
    mtls_load_to_injected(
        &mut mesh,
        "client",
        "web-inj",
        "300 req at 100/s to the injected pod",
    );
    let (ok, out) = mesh.exec(
        "client",
        &["tcp", "web:7000", "--send", "ping"],
        Duration::from_secs(10),
    );
    assert!(
        ok && out.contains("web-inj echo: ping"),
        "opaque TCP through the mesh to the injected pod failed: {out}"
    );

    // Outside the mesh, plaintext: the kubelet's probes take this path too.
    let plain_before = metric(
        &mesh,
        "web-inj",
        "mesh_proxy_peer_connections_total",
        &[("direction", "inbound"), ("tls", "false")],
    );
    let direct = format!("http://{}:{APP_PORT}/probe", pod.ip);
    let (ok, body) = mesh.exec("outsider", &["fetch", &direct], Duration::from_secs(10));
    assert!(
        ok && body.contains("replica=web-inj"),
        "a plain GET from outside the mesh failed: {body}"
    );
    assert!(
        body.contains("peer=127.0.0.1:"),
        "the plain GET did not pass the pod's proxy: {body}"
    );
    let plain = metric(
        &mesh,
        "web-inj",
        "mesh_proxy_peer_connections_total",
        &[("direction", "inbound"), ("tls", "false")],
    ) - plain_before;
    assert!(
        plain >= 1.0,
        "the injected proxy saw no plaintext connection"
    );
    // The strict Server selects the Workload's labels on its named port `tcp`: the proxy
    // naming itself `ns:e2e/pod:web-inj` got that policy and refuses plaintext there.
    let tcp_direct = format!("{}:{TCP_PORT}", pod.ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = mesh.exec(
            "outsider",
            &["tcp", &tcp_direct, "--send", "plain"],
            Duration::from_secs(10),
        );
        if !(ok && out.contains("web-inj echo: plain")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plaintext TCP to the strict port of the injected pod still passes: the pod's proxy did not get its Workload's policy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    mesh.report.note(
        "outside the mesh",
        format!(
            "plain GET {direct} answered through the proxy ({plain} plaintext connection(s)); plain TCP to the strict port {tcp_direct} refused (from {})",
            outsider.ip
        ),
    );
    mesh.pass();
}

/// Scenario 16: The same pod injected with `--native-sidecar=false`: the proxy is the first
/// regular container and its postStart hook (`mesh-proxy await-ready`) holds the app back until
/// the proxy is ready, as the kubelet runs hooks; traffic flows over mTLS.
#[test]
fn s16_injected_pod_fallback_sidecar() {
    let mut mesh = mesh!("s16 a pod from meshctl inject --manual --native-sidecar=false");
    mesh.service("web", &[("app", "web")]);
    let manifest =
        mesh.meshctl_inject(&app_manifest("web-inj", "web"), &["--native-sidecar=false"]);
    let spec = manifest.spec.as_ref().expect("spec");
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["mesh-proxy", "app"], "containers");
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("the proxy container has a postStart exec hook");
    assert_eq!(hook[..2], ["/usr/local/bin/mesh-proxy", "await-ready"]);
    let started = mesh.run_pod(&manifest);
    mesh.report.note("kubelet", started.timeline());
    assert!(
        started.at("mesh-proxy postStart hook returned 0") < started.at("app started"),
        "the app started before the proxy's hook returned"
    );
    assert_eq!(
        started.ready_when_hook_returned.get("mesh-proxy"),
        Some(&true),
        "await-ready returned before the proxy was ready"
    );

    mesh.add_pod(PodSpec::client("client"));
    mesh.warm("client", "http://web/", &["web-inj"]);
    mtls_load_to_injected(
        &mut mesh,
        "client",
        "web-inj",
        "300 req at 100/s to the injected pod",
    );
    mesh.pass();
}
