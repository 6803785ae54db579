//! The `mesh-proxy` binary as an operator runs it: configuration errors, runtime log level,
//! `/shutdown`, and graceful drain on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_proxy(static_config: &str) -> Proc {
    let (o, i, a) = (free_port(), free_port(), free_port());
    let child = Command::new(BIN)
        .env("MESH_PROXY_OUTBOUND_ADDR", format!("127.0.0.1:{o}"))
        .env("MESH_PROXY_INBOUND_ADDR", format!("127.0.0.1:{i}"))
        .env("MESH_PROXY_ADMIN_ADDR", format!("127.0.0.1:{a}"))
        .env("MESH_PROXY_STATIC_CONFIG", static_config)
        .env("MESH_PROXY_SHUTDOWN_GRACE", "5s")
        // The single-threaded runtime a one-core sidecar gets.
        .env("MESH_PROXY_WORKER_THREADS", "1")
        .env("MESH_PROXY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let p = Proc {
        child,
        outbound: format!("127.0.0.1:{o}").parse().unwrap(),
        admin: format!("127.0.0.1:{a}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(rsp) = h1_client()
            .get(format!("http://{}/ready", p.admin).parse().unwrap())
            .await
        {
            if rsp.status() == StatusCode::OK {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "proxy did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn every_bad_setting_is_reported_and_the_proxy_exits() {
    let out = Command::new(BIN)
        .env("MESH_PROXY_OUTBOUND_ADDR", "localhost")
        .env("MESH_PROXY_CONNECT_TIMEOUT", "soon")
        .env("MESH_PROXY_OPAQUE_PORTS", "25,smtp")
        .env("MESH_PROXY_WORKER_THREADS", "0")
        .env("MESH_PROXY_STATIC_CONFIG", "/nonexistent/mesh.yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "MESH_PROXY_OUTBOUND_ADDR='localhost'",
        "MESH_PROXY_CONNECT_TIMEOUT='soon'",
        "'smtp' is not a port",
        "MESH_PROXY_WORKER_THREADS='0'",
        "MESH_PROXY_STATIC_CONFIG='/nonexistent/mesh.yaml'",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

#[test]
fn invalid_static_config_names_file_and_field() {
    let (_dir, path) =
        static_file("services:\n  - authority: web:80\n    policy: { balancer: fastest }\n");
    let out = Command::new(BIN)
        .env("MESH_PROXY_STATIC_CONFIG", &path)
        .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh.yaml") && err.contains("fastest"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_at_runtime_and_shutdown_endpoint_stops_the_proxy() {
    let (_dir, path) = static_file("services: []\n");
    let mut p = spawn_proxy(&path).await;
    let client = h1_client();
    let put = |body: &'static str| {
        http::Request::put(format!("http://{}/log-level", p.admin))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    assert_eq!(
        client
            .request(put("debug,hyper=info"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let now = admin_get(p.admin, "/log-level").await.1;
    assert!(now.contains("hyper=info") && now.contains("debug"), "{now}");
    assert_eq!(
        client.request(put("not a [filter")).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let rsp = client
        .request(
            http::Request::post(format!("http://{}/shutdown", p.admin))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let status = tokio::task::block_in_place(|| wait_exit(&mut p.child, Duration::from_secs(10)));
    assert!(status.expect("exits after /shutdown").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let up = upstream("slow", Behaviour::Delay(Duration::from_millis(800))).await;
    let (_dir, path) = static_file(&format!(
        "services:\n  - authority: web.test:80\n    endpoints: [ {{ addr: \"{}\" }} ]\n",
        up.addr
    ));
    let mut p = spawn_proxy(&path).await;
    let client = h1_client();
    let outbound = p.outbound;
    let in_flight = tokio::spawn(async move { get(&client, outbound, "web.test", "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once draining started.
    assert!(
        tokio::net::TcpStream::connect(p.outbound).await.is_err(),
        "still accepting after SIGTERM"
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the in-flight request completed"
    );
    let status = tokio::task::block_in_place(|| wait_exit(&mut p.child, Duration::from_secs(10)));
    assert!(status.expect("exits after draining").success());
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_down_after_a_connection_burst() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("slow", Behaviour::Delay(Duration::from_millis(1500))).await;
    let (_dir, path) = static_file("services: []\n");
    let p = spawn_proxy(&path).await;
    let pid = p.child.id();
    let base = rss_kb(pid);
    // 2,000 requests in flight at once, three times over.
    let mut peak = 0;
    for _ in 0..3 {
        let mut conns = Vec::new();
        for _ in 0..2000 {
            let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", up.addr).as_bytes())
                .await
                .unwrap();
            conns.push(s);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        peak = peak.max(rss_kb(pid));
        for s in &mut conns {
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
        }
    }
    // The proxy gives the memory back within a few seconds of the load's end.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = rss_kb(pid);
    while now > base + (peak - base) / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = rss_kb(pid);
    }
    println!("RSS: idle {base} kB, peak {peak} kB, after the burst {now} kB");
    assert!(
        peak > base + 20_000,
        "the burst did not use memory: {base} -> {peak} kB"
    );
    assert!(
        now <= base + (peak - base) / 3,
        "RSS stayed at {now} kB after the burst (idle {base} kB, peak {peak} kB)"
    );
}
