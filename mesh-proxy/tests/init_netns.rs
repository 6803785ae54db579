//! Integration tests of `mesh-proxy init` against real iptables, each inside network namespaces
//! the test creates (and deletes again, even on panic) so nothing touches the host's rules.
//!
//! The namespace tests need root, `ip` and `iptables` (`apt-get install -y iptables iproute2`);
//! the traffic test also needs `python3` for its tiny listeners and clients. When something is
//! missing they print one line saying why they are skipped and pass. Topology of the traffic
//! test: the "pod" namespace (10.249.0.1/24 on a veth, where `init` runs) and a "peer" namespace
//! holding the other end (10.249.0.2 and 10.249.0.3); only these private addresses are used.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Listener / client helper run inside the namespaces.
/// `serve HOST PORT LABEL`: print "ready", then answer each connection with
/// "LABEL local=IP:PORT orig=IP:PORT" (orig from SO_ORIGINAL_DST, i.e. before REDIRECT).
/// `connect HOST PORT [UID]`: optionally drop to UID, connect, print the answer line.
const HELPER: &str = r#"
import os, socket, struct, sys
mode = sys.argv[1]
if mode == "serve":
    host, port, label = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
            p, a = struct.unpack_from("!2xH4s", raw)
            orig = "%s:%d" % (socket.inet_ntoa(a), p)
        except OSError:
            orig = "none"
        l = c.getsockname()
        c.sendall(("%s local=%s:%d orig=%s\n" % (label, l[0], l[1], orig)).encode())
        c.close()
else:
    host, port = sys.argv[2], int(sys.argv[3])
    "x".encode("idna")  # load the codec while the interpreter's files are still readable
    if len(sys.argv) > 4:
        uid = int(sys.argv[4])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    c = socket.create_connection((host, port), timeout=5)
    c.settimeout(5)
    print(c.makefile().readline().strip(), flush=True)
"#;

/// Runs a command to completion, killing it (and failing the test) after `timeout`.
fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{desc} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Whether `prog args…` can be started and exits 0.
fn works(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the namespace tests cannot run here, if they cannot.
fn netns_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (creates network namespaces and iptables rules)".into());
    }
    if !works("ip", &["-V"]) {
        return Some("`ip` not found; install it with `apt-get install -y iproute2`".into());
    }
    if !works("iptables", &["--version"]) {
        return Some("`iptables` not found; install it with `apt-get install -y iptables`".into());
    }
    None
}

/// A network namespace that is deleted when dropped (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    /// Creates a uniquely named namespace with `lo` up; `Err` says why it could not.
    fn new(tag: &str) -> Result<Netns, String> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mpinit-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let out = run_timeout(
            Command::new("ip").args(["netns", "add", &name]),
            CMD_TIMEOUT,
        );
        if !out.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}",
                text(&out.stderr).trim()
            ));
        }
        let ns = Netns { name };
        ok(&mut ns.cmd(&["ip", "link", "set", "lo", "up"]));
        Ok(ns)
    }

    /// `ip netns exec NAME argv…`
    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `mesh-proxy init args…` inside the namespace.
    fn init(&self, args: &[&str]) -> Output {
        let mut argv = vec![BIN, "init"];
        argv.extend_from_slice(args);
        run_timeout(&mut self.cmd(&argv), CMD_TIMEOUT)
    }

    fn init_ok(&self, args: &[&str]) -> String {
        let out = self.init(args);
        assert!(
            out.status.success(),
            "mesh-proxy init {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `iptables -t nat -S` inside the namespace.
    fn nat_rules(&self) -> String {
        ok(&mut self.cmd(&["iptables", "-t", "nat", "-S"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let gone = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !gone.is_ok_and(|s| s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A background process that is killed when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Only the lines about our chains (the built-in policies differ between backends).
fn mesh_lines(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| l.contains("MESH_PROXY"))
        .map(str::to_string)
        .collect()
}

const INIT_FLAGS: [&str; 6] = [
    "--skip-inbound-ports",
    "2222",
    "--skip-outbound-ports",
    "5432",
    "--skip-outbound-cidrs",
    "10.249.0.3",
];

/// What `iptables -t nat -S` shows after `init` with [`INIT_FLAGS`].
const EXPECTED: [&str; 14] = [
    "-N MESH_PROXY_INBOUND",
    "-N MESH_PROXY_OUTPUT",
    "-A PREROUTING -j MESH_PROXY_INBOUND",
    "-A OUTPUT -j MESH_PROXY_OUTPUT",
    "-A MESH_PROXY_INBOUND -p tcp -m tcp --dport 4143 -j RETURN",
    "-A MESH_PROXY_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
    "-A MESH_PROXY_INBOUND -p tcp -m tcp --dport 2222 -j RETURN",
    "-A MESH_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 4143",
    "-A MESH_PROXY_OUTPUT -m owner --uid-owner 2102 -j RETURN",
    "-A MESH_PROXY_OUTPUT -o lo -j RETURN",
    "-A MESH_PROXY_OUTPUT -d 127.0.0.0/8 -j RETURN",
    "-A MESH_PROXY_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
    "-A MESH_PROXY_OUTPUT -d 10.249.0.3/32 -j RETURN",
    "-A MESH_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
];

fn expected() -> Vec<String> {
    EXPECTED.iter().map(|l| l.to_string()).collect()
}

#[test]
fn installs_idempotently_and_removes_cleanly() {
    if let Some(why) = netns_skip_reason() {
        println!("skipping installs_idempotently_and_removes_cleanly: {why}");
        return;
    }
    let ns = match Netns::new("rules") {
        Ok(ns) => ns,
        Err(why) => {
            println!("skipping installs_idempotently_and_removes_cleanly: {why}");
            return;
        }
    };
    let pristine = ns.nat_rules();
    assert!(mesh_lines(&pristine).is_empty(), "{pristine}");

    // 1. The chains, rules and jumps are there, in order, and nothing else mentions our chains.
    let said = ns.init_ok(&INIT_FLAGS);
    assert!(said.contains("installed"), "{said}");
    let once = ns.nat_rules();
    assert_eq!(mesh_lines(&once), expected(), "full listing:\n{once}");

    // 2. A second run leaves exactly the same rule set.
    ns.init_ok(&INIT_FLAGS);
    let twice = ns.nat_rules();
    assert_eq!(twice, once, "second init changed the rules");

    // Changed settings replace the rules rather than adding to them.
    ns.init_ok(&["--outbound-port", "15001"]);
    let changed = mesh_lines(&ns.nat_rules());
    assert!(changed.contains(&"-A MESH_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 15001".into()));
    assert!(!changed
        .iter()
        .any(|l| l.contains("4140") || l.contains("5432")));
    assert_eq!(
        changed
            .iter()
            .filter(|l| l.starts_with("-A OUTPUT"))
            .count(),
        1
    );

    // 4. --remove deletes everything, and removing again is fine.
    ns.init_ok(&["--remove"]);
    assert_eq!(ns.nat_rules(), pristine, "--remove left rules behind");
    let again = ns.init(&["--remove"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(ns.nat_rules(), pristine);
}

/// Starts a helper listener in `ns` and waits (bounded) until it is accepting.
fn listen(ns: &Netns, python: &str, host: &str, port: u16, label: &str) -> Bg {
    let port_s = port.to_string();
    let mut child = ns
        .cmd(&[python, "-c", HELPER, "serve", host, &port_s, label])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start listener {label}: {e}"));
    let stdout = child.stdout.take();
    let bg = Bg(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        if let Some(s) = stdout {
            let _ = BufReader::new(s).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.trim() == "ready" => bg,
        Ok(line) => panic!("listener {label} on {host}:{port} failed to start: {line:?}"),
        Err(_) => panic!("listener {label} on {host}:{port} not ready within {READY_TIMEOUT:?}"),
    }
}

/// Connects from `ns` (optionally as `uid`) and returns the listener's answer line.
fn connect(ns: &Netns, python: &str, host: &str, port: u16, uid: Option<u32>) -> String {
    let port_s = port.to_string();
    let uid_s = uid.map(|u| u.to_string());
    let mut argv = vec![python, "-c", HELPER, "connect", host, &port_s];
    if let Some(u) = &uid_s {
        argv.push(u);
    }
    let out = run_timeout(&mut ns.cmd(&argv), CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "connect to {host}:{port} as uid {uid:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

#[test]
fn redirects_real_traffic() {
    if let Some(why) = netns_skip_reason() {
        println!("skipping redirects_real_traffic: {why}");
        return;
    }
    let python = match Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        Ok(o) if o.status.success() => text(&o.stdout).trim().to_string(),
        _ => {
            println!("skipping redirects_real_traffic: `python3` not found (used for helpers)");
            return;
        }
    };
    let py = python.as_str();
    let (pod, peer) = match (Netns::new("pod"), Netns::new("peer")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(why), _) | (_, Err(why)) => {
            println!("skipping redirects_real_traffic: {why}");
            return;
        }
    };
    // veth pair: "va" in the pod, "vb" in the peer; created from inside the pod namespace so
    // the names never clash with other tests or the host.
    ok(&mut pod.cmd(&[
        "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &peer.name,
    ]));
    ok(&mut pod.cmd(&["ip", "addr", "add", "10.249.0.1/24", "dev", "va"]));
    ok(&mut pod.cmd(&["ip", "link", "set", "va", "up"]));
    ok(&mut peer.cmd(&["ip", "addr", "add", "10.249.0.2/24", "dev", "vb"]));
    ok(&mut peer.cmd(&["ip", "addr", "add", "10.249.0.3/24", "dev", "vb"]));
    ok(&mut peer.cmd(&["ip", "link", "set", "vb", "up"]));

    // Declared after the namespaces, so they are killed before the namespaces are deleted.
    let _listeners = [
        listen(&pod, py, "127.0.0.1", 4140, "outbound"),
        listen(&pod, py, "0.0.0.0", 4143, "inbound"),
        listen(&pod, py, "0.0.0.0", 2222, "pod-app"),
        listen(&peer, py, "0.0.0.0", 8080, "peer"),
        listen(&peer, py, "0.0.0.0", 5432, "peer"),
    ];

    // Before init, traffic goes where it is addressed.
    assert!(connect(&pod, py, "10.249.0.2", 8080, None).starts_with("peer "));

    pod.init_ok(&INIT_FLAGS);

    // Outbound from the app (root, or any UID but the proxy's) lands on the outbound port, and
    // the proxy can still recover the original destination.
    let redirected = "outbound local=127.0.0.1:4140 orig=10.249.0.2:8080";
    assert_eq!(connect(&pod, py, "10.249.0.2", 8080, None), redirected);
    assert_eq!(
        connect(&pod, py, "10.249.0.2", 8080, Some(1000)),
        redirected
    );
    // The proxy's own connections are not redirected (no loop).
    assert_eq!(
        connect(&pod, py, "10.249.0.2", 8080, Some(2102)),
        "peer local=10.249.0.2:8080 orig=none"
    );
    // Skipped port, skipped network and loopback go straight through.
    assert!(connect(&pod, py, "10.249.0.2", 5432, None).starts_with("peer local=10.249.0.2:5432"));
    assert!(connect(&pod, py, "10.249.0.3", 8080, None).starts_with("peer local=10.249.0.3:8080"));
    assert!(connect(&pod, py, "127.0.0.1", 2222, None).starts_with("pod-app local=127.0.0.1:2222"));

    // Inbound to the pod lands on the inbound port, except skipped ports.
    assert_eq!(
        connect(&peer, py, "10.249.0.1", 8080, None),
        "inbound local=10.249.0.1:4143 orig=10.249.0.1:8080"
    );
    assert!(
        connect(&peer, py, "10.249.0.1", 2222, None).starts_with("pod-app local=10.249.0.1:2222")
    );

    // After --remove nothing is redirected any more.
    pod.init_ok(&["--remove"]);
    assert!(connect(&pod, py, "10.249.0.2", 8080, None).starts_with("peer local=10.249.0.2:8080"));
    assert!(connect(&peer, py, "10.249.0.1", 2222, None).starts_with("pod-app "));
}

#[test]
fn reports_every_bad_value_at_once() {
    let out = run_timeout(
        Command::new(BIN).args([
            "init",
            "--inbound-port",
            "99999",
            "--proxy-uid",
            "proxy",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,10.0.0.0/99",
        ]),
        CMD_TIMEOUT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(3 problems)"), "{err}");
    for needle in [
        "--inbound-port (env MESH_PROXY_INIT_INBOUND_PORT) = \"99999\"",
        "--proxy-uid (env MESH_PROXY_INIT_PROXY_UID) = \"proxy\"",
        "--skip-outbound-cidrs (env MESH_PROXY_INIT_SKIP_OUTBOUND_CIDRS) = \"10.0.0.0/99\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn dry_run_reads_env_and_needs_no_privileges() {
    let out = run_timeout(
        Command::new(BIN)
            .arg("init")
            .env("MESH_PROXY_INIT_DRY_RUN", "true")
            .env("MESH_PROXY_INIT_OUTBOUND_PORT", "15001")
            .env(
                "MESH_PROXY_INIT_SKIP_OUTBOUND_CIDRS",
                "10.0.0.0/8, 192.168.0.0/16",
            )
            .env("MESH_PROXY_INIT_IPTABLES_CMD", "/nonexistent/iptables"),
        CMD_TIMEOUT,
    );
    let script = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for needle in [
        "/nonexistent/iptables -t nat -A MESH_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n",
        "/nonexistent/iptables -t nat -A MESH_PROXY_OUTPUT -d 192.168.0.0/16 -j RETURN\n",
    ] {
        assert!(script.contains(needle), "missing {needle:?} in:\n{script}");
    }

    // Without --dry-run the missing binary is reported with the fix.
    let out = run_timeout(
        Command::new(BIN).args(["init", "--iptables-cmd", "/nonexistent/iptables"]),
        CMD_TIMEOUT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("apt-get install -y iptables"), "{err}");
}
