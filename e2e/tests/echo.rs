//! Tests of the `mesh-echo` binary itself, on loopback only: the HTTP/1.1, HTTP/2 and gRPC
//! echo, `--fail-rate` and `/__stats`, `load --json` for each protocol (counts, replicas,
//! statuses, refused connections, timeouts, the run's deadline, a reused connection closed by
//! the server), and the server-speaks-first TCP protocol. Every server listens on port 0 and
//! the test reads the bound address from its stderr; every child is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-echo");

/// A running `mesh-echo serve`, killed on drop.
struct Server {
    child: Child,
    http: SocketAddr,
    tcp: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(name: &str, extra: &[&str], with_tcp: bool) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if with_tcp {
            cmd.args(["--tcp-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd.spawn().expect("spawn mesh-echo serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut server = Server {
            child,
            http: "0.0.0.0:0".parse().expect("address"),
            tcp: None,
        };
        // Read the "listening on" lines in a thread (and keep draining stderr after them).
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let until = Instant::now() + Duration::from_secs(5);
        while server.http.port() == 0 || (with_tcp && server.tcp.is_none()) {
            let left = until.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("mesh-echo serve did not print its addresses within 5 s");
            let addr = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .expect("an address at the end of the line")
            };
            if line.contains(" tcp listening on ") {
                server.tcp = Some(addr());
            } else if line.contains(" listening on ") {
                server.http = addr();
            }
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// Runs `mesh-echo ARGS` to completion.
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mesh-echo")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `mesh-echo load ARGS --json` and parses its line; it must exit 0.
fn load_json(args: &[&str]) -> Value {
    let mut all = vec!["load"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run(&all);
    assert!(
        out.status.success(),
        "load --json exited {}: {}",
        out.status,
        stderr(&out)
    );
    serde_json::from_str(stdout(&out).trim()).expect("load --json prints one JSON line")
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

#[test]
fn http1_and_http2_echo() {
    let s = Server::start("h", &[], false);
    let out = run(&["fetch", &s.url("/some/path?x=1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let body = stdout(&out);
    assert!(
        body.starts_with(
            "replica=h status=200 method=GET path=/some/path version=HTTP/1.1 peer=127.0.0.1:"
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!("header host: {}\n", s.http)),
        "{body}"
    );

    let out = run(&["fetch", "--http2", &s.url("/two")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("replica=h status=200 method=GET path=/two version=HTTP/2.0"),
        "{}",
        stdout(&out)
    );

    // --via: connect elsewhere, keep the URL's authority as Host.
    let via = s.http.to_string();
    let out = run(&["fetch", "--via", &via, "http://echo.test:1234/v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("header host: echo.test:1234\n"),
        "{}",
        stdout(&out)
    );

    // A non-2xx answer: body printed, non-zero exit naming the URL.
    let url = s.url("/?status=503");
    let out = run(&["fetch", &url]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("status=503"), "{}", stdout(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));

    // A refused connection names the address.
    let port = closed_port();
    let out = run(&["fetch", &format!("http://127.0.0.1:{port}/")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn grpc_echo() {
    let s = Server::start("g", &[], false);
    let url = s.url("/hello");
    let out = run(&["grpc", &url, "--header", "x-test:yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or("");
    assert!(first.starts_with("replica=g peer=127.0.0.1:"), "{text}");
    assert!(first.ends_with(" message=/hello"), "{text}");
    assert!(text.contains("header x-test: yes\n"), "{text}");
    assert!(
        text.contains("header content-type: application/grpc\n"),
        "{text}"
    );

    let out = run(&["grpc", &url, "--message", "hi there"]);
    assert!(
        stdout(&out).contains("message=hi there"),
        "{}",
        stdout(&out)
    );

    // A code asks for that status: non-zero exit naming it and the replica.
    let out = run(&["grpc", &url, "--code", "5"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("NotFound (5)"), "{err}");
    assert!(err.contains("replica g"), "{err}");
}

#[test]
fn fail_rate_and_stats() {
    let s = Server::start("flaky", &["--fail-rate", "0.5"], false);
    let url = s.url("/");
    let v = load_json(&[&url, "--requests", "20", "--rate", "400"]);
    assert_eq!(n(&v, &["sent"]), 20, "{v}");
    assert_eq!(n(&v, &["ok"]), 10, "{v}");
    assert_eq!(n(&v, &["failed"]), 10, "{v}");
    assert_eq!(n(&v, &["statuses", "200"]), 10, "{v}");
    assert_eq!(n(&v, &["statuses", "503"]), 10, "{v}");
    assert_eq!(n(&v, &["replicas", "flaky"]), 20, "{v}");

    let v = load_json(&[
        &url,
        "--protocol",
        "grpc",
        "--requests",
        "10",
        "--rate",
        "400",
    ]);
    assert_eq!(n(&v, &["statuses", "grpc-0"]), 5, "{v}");
    assert_eq!(n(&v, &["statuses", "grpc-14"]), 5, "{v}");
    assert_eq!(n(&v, &["replicas", "flaky"]), 10, "{v}");

    // Without --json: the plain line, and exit 1 because some failed.
    let out = run(&["load", &url, "--requests", "4", "--rate", "400"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "sent=4 ok=2 failed=2 replicas: flaky=4\n");

    for _ in 0..2 {
        // /__stats is not counted itself.
        let out = run(&["fetch", &s.url("/__stats")]);
        assert!(out.status.success(), "{}", stderr(&out));
        let stats: Value = serde_json::from_str(stdout(&out).trim()).expect("stats JSON");
        assert_eq!(stats["replica"], "flaky");
        assert_eq!(n(&stats, &["requests"]), 34, "{stats}");
        assert_eq!(n(&stats, &["failed"]), 17, "{stats}");
    }
}

#[test]
fn load_json_each_protocol() {
    let s = Server::start("v1-a", &[], false);
    for protocol in ["http1", "http2", "grpc"] {
        let v = load_json(&[
            &s.url("/"),
            "--protocol",
            protocol,
            "--requests",
            "30",
            "--rate",
            "300",
            "--header",
            "x-test:1",
        ]);
        let key = if protocol == "grpc" { "grpc-0" } else { "200" };
        assert_eq!(n(&v, &["sent"]), 30, "{protocol}: {v}");
        assert_eq!(n(&v, &["ok"]), 30, "{protocol}: {v}");
        assert_eq!(n(&v, &["failed"]), 0, "{protocol}: {v}");
        assert_eq!(n(&v, &["statuses", key]), 30, "{protocol}: {v}");
        assert_eq!(
            v["replicas"],
            serde_json::json!({"v1-a": 30}),
            "{protocol}: {v}"
        );
        assert_eq!(v["errors"], serde_json::json!({}), "{protocol}: {v}");
        let lat = &v["latency_ms"];
        for p in ["p50", "p90", "p99", "max"] {
            assert!(lat[p].as_f64().is_some_and(|x| x > 0.0), "{protocol}: {v}");
        }
        assert!(
            lat["p50"].as_f64() <= lat["max"].as_f64(),
            "{protocol}: {v}"
        );
        assert!(
            v["elapsed_s"].as_f64().is_some_and(|e| e < 2.0),
            "{protocol}: {v}"
        );

        // --via with a name that only the URL knows: the authority travels, the socket
        // goes to the server.
        let via = s.http.to_string();
        let v = load_json(&[
            "http://web.test:8080/",
            "--via",
            &via,
            "--protocol",
            protocol,
            "--requests",
            "5",
            "--rate",
            "300",
        ]);
        assert_eq!(n(&v, &["ok"]), 5, "{protocol} --via: {v}");
    }

    // The plain line and exit 0 when everything succeeded.
    let out = run(&["load", &s.url("/"), "--requests", "5", "--rate", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "sent=5 ok=5 failed=0 replicas: v1-a=5\n");
}

#[test]
fn load_connect_refused() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    for protocol in ["http1", "http2", "grpc"] {
        let started = Instant::now();
        let v = load_json(&[
            &url,
            "--protocol",
            protocol,
            "--requests",
            "10",
            "--rate",
            "100",
            "--timeout",
            "1s",
        ]);
        // The deadline: requests/rate + timeout + 1 s.
        assert!(
            started.elapsed() < Duration::from_millis(2100),
            "{protocol}"
        );
        assert_eq!(n(&v, &["failed"]), 10, "{protocol}: {v}");
        assert_eq!(n(&v, &["statuses", "error"]), 10, "{protocol}: {v}");
        assert_eq!(n(&v, &["errors", "connect refused"]), 10, "{protocol}: {v}");
    }
    let out = run(&["load", &url, "--requests", "2", "--rate", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "sent=2 ok=0 failed=2 replicas: \n");
}

#[test]
fn load_timeout_and_deadline() {
    let s = Server::start("slow", &[], false);
    let url = s.url("/?delay_ms=2000");
    for protocol in ["http1", "http2", "grpc"] {
        let v = load_json(&[
            &url,
            "--protocol",
            protocol,
            "--requests",
            "3",
            "--rate",
            "100",
            "--timeout",
            "200ms",
        ]);
        assert_eq!(n(&v, &["failed"]), 3, "{protocol}: {v}");
        assert_eq!(n(&v, &["errors", "timeout"]), 3, "{protocol}: {v}");
        // Timed-out requests count in the latency, at about the timeout.
        let max = v["latency_ms"]["max"].as_f64().unwrap_or(0.0);
        assert!((200.0..500.0).contains(&max), "{protocol}: {v}");
        assert!(
            v["elapsed_s"].as_f64().is_some_and(|e| e < 0.6),
            "{protocol}: {v}"
        );
    }

    // One slot, so the requests time out one after the other (200 ms each); the run ends at
    // 10/100 + 0.2 + 1 = 1.3 s, before the last ones have had their turn: they count as
    // timeouts too.
    let v = load_json(&[
        &url,
        "--requests",
        "10",
        "--rate",
        "100",
        "--timeout",
        "200ms",
        "--concurrency",
        "1",
    ]);
    assert_eq!(n(&v, &["failed"]), 10, "{v}");
    assert_eq!(n(&v, &["errors", "timeout"]), 10, "{v}");
    assert_eq!(n(&v, &["queued"]), 9, "{v}");
    let elapsed = v["elapsed_s"].as_f64().unwrap_or(0.0);
    assert!((1.2..1.6).contains(&elapsed), "{v}");
}

/// A request on a kept-alive connection that the server closes instead of answering fails
/// and is counted; it is not retried on a new connection.
#[test]
fn load_reused_connection_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel::<usize>();
    std::thread::spawn(move || {
        // Accepts connections for 1.5 s, answering the first request of each and closing it
        // on the second.
        listener.set_nonblocking(true).expect("nonblocking");
        let until = Instant::now() + Duration::from_millis(1500);
        let mut accepted = 0;
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut s, _)) => {
                    accepted += 1;
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-replica: raw\r\n\r\nok\n",
                    );
                    let _ = s.read(&mut buf);
                    // Second request read: close without answering.
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = tx.send(accepted);
    });
    let v = load_json(&[
        &format!("http://{addr}/"),
        "--requests",
        "2",
        "--rate",
        "10",
    ]);
    assert_eq!(n(&v, &["ok"]), 1, "{v}");
    assert_eq!(n(&v, &["failed"]), 1, "{v}");
    assert_eq!(n(&v, &["errors", "closed"]), 1, "{v}");
    assert_eq!(v["replicas"], serde_json::json!({"raw": 1}), "{v}");
    assert_eq!(
        rx.recv().expect("accept count"),
        1,
        "one connection, no retry"
    );
}

#[test]
fn tcp_banner() {
    let s = Server::start("t", &[], true);
    let tcp = s.tcp.expect("tcp address").to_string();
    let out = run(&["tcp", &tcp, "--send", "hi there"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from t\nt echo: hi there\n");
    let out = run(&["tcp", &tcp]);
    assert_eq!(stdout(&out), "hello from t\nt echo: ping\n");

    // A server that closes at once: a clear error and a non-zero exit.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            drop(s);
        }
    });
    let out = run(&["tcp", &addr]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
    assert!(stderr(&out).contains("closed"), "{}", stderr(&out));

    let port = closed_port();
    let out = run(&["tcp", &format!("127.0.0.1:{port}")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
}
