//! Loop prevention. A request that names the proxy itself (`Host: 127.0.0.1:4140` sent to
//! the outbound listener, or a redirected connection to one of the proxy's own ports) would
//! be forwarded back into the proxy, again and again, until file descriptors run out. Two
//! guards stop that:
//!
//! - [`SelfAddrs`]: the proxy never connects to its own listeners. A listener bound to
//!   `0.0.0.0` (or `::`) is reachable on every local address, so the local interface
//!   addresses are part of the check. The outbound side may still reach its own *inbound*
//!   listener (a workload calling its own service in explicit mode goes out and comes back
//!   in, then on to the app); the inbound side reaches none of them.
//! - [`HopMarker`]: loops that cross proxies (A forwards to B's outbound listener, which
//!   forwards back to A) are caught by a header each proxy's outbound side adds with its own
//!   random id (`mesh-hops: <id>, <id>`); a proxy that finds its own id, or more than
//!   [`MAX_HOPS`] ids, answers 508. The inbound side removes the header before the app sees
//!   the request.
//!
//! Both checks happen when a connection is opened or a request arrives; neither allocates per
//! request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;

/// The header that carries the ids of the proxies a request went through.
pub const HOPS: HeaderName = HeaderName::from_static("mesh-hops");

/// More proxies than this on one request's path is taken as a loop.
pub const MAX_HOPS: usize = 16;

/// How often the local interface addresses are read again (they change on VMs and laptops).
const REFRESH: Duration = Duration::from_secs(30);

/// The proxy's own listening addresses, to never connect to.
pub struct SelfAddrs {
    listeners: Vec<SocketAddr>,
    local_ips: ArcSwap<Vec<IpAddr>>,
}

impl SelfAddrs {
    /// `listeners` are the bound addresses (with their real ports).
    pub fn new(listeners: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            listeners,
            local_ips: ArcSwap::from_pointee(local_ips()),
        })
    }

    /// Keeps the list of local addresses current while the proxy runs.
    pub fn refresh_in_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(this) = weak.upgrade() else { return };
                this.local_ips.store(Arc::new(local_ips()));
            }
        });
    }

    /// Whether connecting to `addr` would reach one of `listeners` (a subset of ours).
    fn reaches(&self, listeners: &[SocketAddr], addr: SocketAddr) -> bool {
        listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip()
                    || addr.ip().is_unspecified()
                    || (l.ip().is_unspecified() && self.is_local(addr.ip())))
        })
    }

    /// Whether `ip` is an address of this host.
    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.local_ips.load().contains(&ip)
    }

    /// A guard for one side of the proxy: `allowed` listeners (by index into the list given
    /// to [`SelfAddrs::new`]) may be reached, the others not.
    pub fn guard(self: &Arc<Self>, allowed: &[usize]) -> LoopGuard {
        let forbidden = self
            .listeners
            .iter()
            .enumerate()
            .filter(|(i, _)| !allowed.contains(i))
            .map(|(_, a)| *a)
            .collect();
        LoopGuard {
            addrs: self.clone(),
            forbidden,
        }
    }
}

/// Refuses connections to some of the proxy's own listeners.
#[derive(Clone)]
pub struct LoopGuard {
    addrs: Arc<SelfAddrs>,
    forbidden: Vec<SocketAddr>,
}

impl LoopGuard {
    pub fn check(&self, addr: SocketAddr) -> Result<(), ProxyError> {
        if self.addrs.reaches(&self.forbidden, addr) {
            return Err(ProxyError::Loop(LoopKind::OwnListener(addr)));
        }
        Ok(())
    }
}

/// Why a request was taken as a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// Its target is one of the proxy's own listeners.
    OwnListener(SocketAddr),
    /// It already went through this proxy.
    SeenBefore,
    /// It went through more than [`MAX_HOPS`] proxies.
    TooManyHops,
}

impl std::fmt::Display for LoopKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoopKind::OwnListener(a) => write!(
                f,
                "the request's destination {a} is this proxy's own listener; name the service in the Host header"
            ),
            LoopKind::SeenBefore => write!(f, "the request already went through this proxy"),
            LoopKind::TooManyHops => {
                write!(f, "the request went through more than {MAX_HOPS} proxies")
            }
        }
    }
}

/// This proxy's hop id, and the check-and-append of the [`HOPS`] header.
pub struct HopMarker {
    id: HeaderValue,
}

impl HopMarker {
    /// A marker with a random id.
    pub fn random() -> Self {
        let id: u64 = rand::random();
        let text: &'static str = Box::leak(format!("{id:016x}").into_boxed_str());
        Self {
            id: HeaderValue::from_static(text),
        }
    }

    /// Refuses a request that already went through this proxy (or too many), then adds this
    /// proxy's id.
    pub fn check_and_mark(&self, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        let mut hops = 0;
        for v in headers.get_all(HOPS) {
            for id in v.as_bytes().split(|b| *b == b',') {
                let id = id.trim_ascii();
                if id.is_empty() {
                    continue;
                }
                if id == self.id.as_bytes() {
                    return Err(ProxyError::Loop(LoopKind::SeenBefore));
                }
                hops += 1;
            }
        }
        if hops >= MAX_HOPS {
            return Err(ProxyError::Loop(LoopKind::TooManyHops));
        }
        headers.append(HOPS, self.id.clone());
        Ok(())
    }
}

/// The addresses of this host's interfaces (empty when they cannot be read).
fn local_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs;
    // each ifa_addr is checked for null and read according to its sa_family.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_listeners_are_refused() {
        let addrs = SelfAddrs::new(vec![
            a("127.0.0.1:4140"),
            a("0.0.0.0:4143"),
            a("0.0.0.0:4191"),
        ]);
        let outbound = addrs.guard(&[1]);
        let inbound = addrs.guard(&[]);
        assert!(outbound.check(a("127.0.0.1:4140")).is_err());
        assert!(outbound.check(a("0.0.0.0:4140")).is_err());
        assert!(outbound.check(a("127.0.0.1:4191")).is_err());
        assert!(
            outbound.check(a("127.0.0.5:4191")).is_err(),
            "0.0.0.0 covers 127/8"
        );
        // The outbound side may reach its own inbound listener; the inbound side may not.
        assert!(outbound.check(a("127.0.0.1:4143")).is_ok());
        assert!(inbound.check(a("127.0.0.1:4143")).is_err());
        // Other ports and other hosts are fine.
        assert!(outbound.check(a("127.0.0.1:8080")).is_ok());
        assert!(
            outbound.check(a("127.0.0.2:4140")).is_ok(),
            "bound to 127.0.0.1 only"
        );
        assert!(outbound.check(a("192.0.2.1:4191")).is_ok());
        // A local interface address reaches listeners bound to 0.0.0.0.
        if let Some(ip) = local_ips().into_iter().find(|ip| !ip.is_loopback()) {
            assert!(inbound.check(SocketAddr::new(ip, 4143)).is_err());
        }
    }

    #[test]
    fn hop_marker_catches_its_own_id_and_long_paths() {
        let a = HopMarker::random();
        let b = HopMarker::random();
        let mut h = HeaderMap::new();
        a.check_and_mark(&mut h).unwrap();
        b.check_and_mark(&mut h).unwrap();
        assert_eq!(h.get_all(HOPS).iter().count(), 2);
        assert!(matches!(
            a.check_and_mark(&mut h),
            Err(ProxyError::Loop(LoopKind::SeenBefore))
        ));
        let mut long = HeaderMap::new();
        let ids = (0..MAX_HOPS)
            .map(|i| format!("{i:016x}"))
            .collect::<Vec<_>>();
        long.insert(HOPS, HeaderValue::from_str(&ids.join(", ")).unwrap());
        assert!(matches!(
            a.check_and_mark(&mut long),
            Err(ProxyError::Loop(LoopKind::TooManyHops))
        ));
    }
}
