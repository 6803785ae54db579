//! `mesh-proxy await-ready`: waits until the proxy's admin port answers `GET /ready` with
//! 200. It is the postStart hook of a sidecar injected without native sidecar support: the
//! kubelet starts the app container only after the hook returns, so the app never runs
//! before its proxy. A blocking one-request-per-try client is all this needs (no runtime).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Flags of `mesh-proxy await-ready`.
#[derive(Debug, Clone, clap::Args)]
pub struct AwaitArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:4191", value_name = "ADDR")]
    pub admin_addr: String,
    /// How long to wait before giving up (exit code 1).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How often to ask.
const INTERVAL: Duration = Duration::from_millis(200);
/// Connect and read timeout of one try.
const TRY_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls until ready; the error says what it waited for and the last answer.
pub fn run(args: &AwaitArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = args
        .admin_addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--admin-addr '{}' is not an address; write IP:PORT, e.g. 127.0.0.1:4191",
                args.admin_addr
            )
        })?;
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match probe(addr) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("it answered {status}"),
            Err(e) => format!("{e}"),
        };
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the proxy was not ready after {} (GET http://{addr}/ready; last try: {last}); see the mesh-proxy container's log",
                humantime::format_duration(args.timeout)
            );
        }
        std::thread::sleep(INTERVAL);
    }
}

/// One `GET /ready`: the status code.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, TRY_TIMEOUT)?;
    s.set_read_timeout(Some(TRY_TIMEOUT))?;
    s.set_write_timeout(Some(TRY_TIMEOUT))?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let line = std::str::from_utf8(&head[..n]).unwrap_or("");
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A listener that answers 503 `not_before` times, then 200.
    fn admin(not_before: u32) -> (SocketAddr, Arc<AtomicU32>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let k = s.fetch_add(1, Ordering::SeqCst);
                let status = if k < not_before {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(c, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (addr, seen)
    }

    #[test]
    fn returns_once_ready() {
        let (addr, seen) = admin(3);
        run(&AwaitArgs {
            admin_addr: addr.to_string(),
            timeout: Duration::from_secs(10),
        })
        .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn gives_up_with_the_last_answer() {
        let (addr, _) = admin(u32::MAX);
        let e = run(&AwaitArgs {
            admin_addr: addr.to_string(),
            timeout: Duration::from_millis(500),
        })
        .unwrap_err();
        assert!(e.to_string().contains("answered 503"), "{e}");
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = run(&AwaitArgs {
            admin_addr: free.to_string(),
            timeout: Duration::from_millis(300),
        })
        .unwrap_err();
        assert!(e.to_string().contains("not ready"), "{e}");
    }
}
