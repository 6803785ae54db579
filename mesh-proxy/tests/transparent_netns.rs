//! Transparent interception end to end: `mesh-proxy init` rules plus a running `mesh-proxy`
//! inside a network namespace ("pod"), with a peer namespace across a veth pair. The app in
//! the pod does not know about the proxy; SO_ORIGINAL_DST tells the proxy where each
//! connection was going. Root only: without root (or `ip`, `iptables`, `python3`, `setpriv`)
//! the test prints why it is skipped and passes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const PROXY_UID: &str = "2102";

struct Netns {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for tool in ["ip", "iptables", "python3", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is missing (scripts/test.sh installs it)"));
        }
    }
    None
}

/// Python one-liners used inside the namespaces.
const HTTP_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s saw %s %s\n" % (sys.argv[2], self.command, self.path)).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
"#;
const HTTP_GET: &str = r#"
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end="")
"#;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netns_out(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn app_traffic_is_intercepted_both_ways() {
    if let Some(why) = skip_reason() {
        println!("skipping transparent interception test: {why}");
        return;
    }
    let id = std::process::id() % 200 + 20;
    let (pod, peer) = (format!("mp-tp-pod-{id}"), format!("mp-tp-peer-{id}"));
    let (pod_ip, peer_ip) = (format!("10.251.{id}.1"), format!("10.251.{id}.2"));
    let mut env = Netns {
        names: vec![pod.clone(), peer.clone()],
        children: vec![],
    };
    let veth = format!("mptp{id}");
    sh(&["ip", "netns", "add", &pod]);
    sh(&["ip", "netns", "add", &peer]);
    sh(&[
        "ip",
        "link",
        "add",
        &format!("{veth}a"),
        "netns",
        &pod,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{veth}b"),
        "netns",
        &peer,
    ]);
    for (ns, dev, ip) in [
        (&pod, format!("{veth}a"), &pod_ip),
        (&peer, format!("{veth}b"), &peer_ip),
    ] {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &dev,
        ]);
        sh(&["ip", "-n", ns, "link", "set", &dev, "up"]);
    }

    // The peer serves HTTP on 8080; the pod's app serves HTTP on 9090.
    let spawn = |ns: &str, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns")
    };
    env.children.push(spawn(
        &peer,
        &["python3", "-c", HTTP_SERVER, &peer_ip, "peer", "8080"],
    ));
    env.children.push(spawn(
        &pod,
        &["python3", "-c", HTTP_SERVER, "0.0.0.0", "pod-app", "9090"],
    ));

    // Rules first, then the proxy running as its own UID (so its own traffic is not
    // redirected back to itself). No discovery: everything is passed through.
    sh(&[
        "ip",
        "netns",
        "exec",
        &pod,
        BIN,
        "init",
        "--proxy-uid",
        PROXY_UID,
    ]);
    env.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod,
                "setpriv",
                "--reuid",
                PROXY_UID,
                "--regid",
                PROXY_UID,
                "--clear-groups",
                BIN,
            ])
            .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:4191")
            .env("MESH_PROXY_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("proxy starts"),
    );
    let metrics = || {
        netns_out(
            &pod,
            &["python3", "-c", HTTP_GET, "http://127.0.0.1:4191/metrics"],
        )
        .1
    };
    wait_for("the proxy to be ready", || {
        netns_out(
            &pod,
            &["python3", "-c", HTTP_GET, "http://127.0.0.1:4191/ready"],
        )
        .0
    });

    // Outbound: the app calls the peer by address; the proxy sees the original destination.
    let url = format!("http://{peer_ip}:8080/out");
    let mut answer = String::new();
    wait_for("an outbound answer", || {
        let (ok, out) = netns_out(&pod, &["python3", "-c", HTTP_GET, &url]);
        answer = out;
        ok
    });
    assert_eq!(answer, "peer saw GET /out\n");
    let m = metrics();
    let line = format!("mesh_proxy_requests_total{{direction=\"outbound\",authority=\"{peer_ip}:8080\",route=\"passthrough\",status_code=\"200\",classification=\"success\",client_id=\"\",server_id=\"\"}} 1");
    assert!(
        m.contains(&line),
        "outbound request not seen by the proxy:\n{m}"
    );

    // Inbound: the peer calls the pod's app; the proxy's inbound side serves it.
    let url = format!("http://{pod_ip}:9090/in");
    wait_for("an inbound answer", || {
        netns_out(&peer, &["python3", "-c", HTTP_GET, &url]).0
    });
    let (_, answer) = netns_out(&peer, &["python3", "-c", HTTP_GET, &url]);
    assert_eq!(answer, "pod-app saw GET /in\n");
    let m = metrics();
    assert!(
        m.contains("mesh_proxy_requests_total{direction=\"inbound\",authority=\"127.0.0.1:9090\",route=\"inbound\",status_code=\"200\",classification=\"success\",client_id=\"\",server_id=\"\"}"),
        "inbound request not seen by the proxy:\n{m}"
    );
    drop(env);
}
