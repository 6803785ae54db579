//! Per-request load balancing over a service's endpoints.
//!
//! The default is Linkerd's algorithm: power of two random choices, comparing each
//! endpoint's peak-EWMA latency multiplied by its in-flight requests (and divided by its
//! weight). Round-robin is the alternative. The endpoint list is swapped atomically when
//! discovery changes it; requests in flight keep their `Arc<EndpointHandle>`, so an endpoint
//! that leaves the set finishes what it was doing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_core::{BalancerKind, Endpoint, ProtocolHint};
use rand::Rng;

use crate::client::Conns;

/// Latency assumed for an endpoint that has not answered yet (Linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the latency estimate forgets old observations.
const DECAY: Duration = Duration::from_secs(10);
/// Latency charged for an attempt that failed (refused connection, reset): a failing endpoint
/// must look slow, not fast, or P2C would favour it for failing quickly.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Peak-EWMA latency estimate: jumps up to any slower observation at once, decays towards
/// faster ones (and towards zero while idle, so idle endpoints get probed again).
struct PeakEwma {
    rtt_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        self.rtt_ns * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        if rtt > self.rtt_ns {
            self.rtt_ns = rtt;
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            self.rtt_ns = self.rtt_ns * w + rtt * (1.0 - w);
        }
        self.updated = now;
    }
}

/// One endpoint as the proxy uses it: its address and hints, load statistics and its
/// HTTP/2 connection.
pub struct EndpointHandle {
    pub endpoint: Endpoint,
    /// Address to connect to (the meshed inbound port when the endpoint has one).
    pub connect_addr: SocketAddr,
    /// `connect_addr` as a URI authority, made once.
    pub uri_authority: http::uri::Authority,
    pub conns: Conns,
    in_flight: AtomicU32,
    ewma: Mutex<PeakEwma>,
}

impl EndpointHandle {
    pub fn new(endpoint: Endpoint) -> Self {
        let connect_addr = endpoint.connect_addr();
        let uri_authority = http::uri::Authority::try_from(connect_addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Self {
            endpoint,
            connect_addr,
            uri_authority,
            conns: Conns::default(),
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(PeakEwma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                updated: Instant::now(),
            }),
        }
    }

    /// Whether another mesh proxy fronts this endpoint (requests go over HTTP/2).
    pub fn is_meshed(&self) -> bool {
        matches!(self.endpoint.hint, ProtocolHint::MeshedH2 { .. })
    }

    fn cost(&self, now: Instant) -> f64 {
        let rtt = self.ewma.lock().map(|e| e.decayed(now)).unwrap_or(f64::MAX);
        let pending = self.in_flight.load(Ordering::Relaxed) as f64;
        rtt * (pending + 1.0) / self.endpoint.weight.max(1) as f64
    }

    /// Marks a request as started; the guard records its latency when it completes.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            handle: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma_ms(&self) -> f64 {
        self.ewma
            .lock()
            .map(|e| e.decayed(Instant::now()) / 1e6)
            .unwrap_or(0.0)
    }
}

/// An in-flight request on an endpoint.
pub struct InFlight {
    handle: Arc<EndpointHandle>,
    started: Instant,
    done: bool,
}

impl InFlight {
    /// The response headers arrived: record the latency.
    pub fn complete(mut self) {
        self.finish(Duration::ZERO);
    }

    /// The attempt failed without a response: record at least [`FAILURE_PENALTY`].
    pub fn fail(mut self) {
        self.finish(FAILURE_PENALTY);
    }

    fn finish(&mut self, at_least: Duration) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).max(at_least);
        if let Ok(mut e) = self.handle.ewma.lock() {
            e.observe(rtt, now);
        }
        self.handle.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    /// A cancelled request (the client went away) counts as slow as the time it took.
    fn drop(&mut self) {
        self.finish(Duration::ZERO);
    }
}

/// The balancer of one service.
pub struct Balancer {
    kind: AtomicU8,
    endpoints: ArcSwap<Vec<Arc<EndpointHandle>>>,
    next: AtomicUsize,
}

impl Default for Balancer {
    fn default() -> Self {
        Self {
            kind: AtomicU8::new(0),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer {
    pub fn set_kind(&self, kind: BalancerKind) {
        let v = match kind {
            BalancerKind::P2cPeakEwma => 0,
            BalancerKind::RoundRobin => 1,
        };
        self.kind.store(v, Ordering::Relaxed);
    }

    pub fn kind(&self) -> BalancerKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => BalancerKind::RoundRobin,
            _ => BalancerKind::P2cPeakEwma,
        }
    }

    /// Picks the endpoint for one request.
    pub fn pick(&self) -> Option<Arc<EndpointHandle>> {
        let eps = self.endpoints.load();
        match eps.len() {
            0 => None,
            1 => Some(eps[0].clone()),
            n => match self.kind() {
                BalancerKind::RoundRobin => {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                    Some(eps[i].clone())
                }
                BalancerKind::P2cPeakEwma => {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    let mut b = rng.random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let now = Instant::now();
                    let (ea, eb) = (&eps[a], &eps[b]);
                    Some(if ea.cost(now) <= eb.cost(now) {
                        ea.clone()
                    } else {
                        eb.clone()
                    })
                }
            },
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<EndpointHandle>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set. Endpoints that stay (same address and attributes) keep
    /// their statistics and connections.
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        let current = self.endpoints.load();
        let by_addr: HashMap<SocketAddr, &Arc<EndpointHandle>> =
            current.iter().map(|h| (h.endpoint.addr, h)).collect();
        let mut next = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            match by_addr.get(&ep.addr) {
                Some(h) if h.endpoint == ep => next.push((*h).clone()),
                _ => next.push(Arc::new(EndpointHandle::new(ep))),
            }
        }
        next.sort_by_key(|h| h.endpoint.addr);
        next.dedup_by_key(|h| h.endpoint.addr);
        self.endpoints.store(Arc::new(next));
    }

    /// Adds endpoints or updates those with the same address.
    pub fn upsert(&self, endpoints: Vec<Endpoint>) {
        let mut all: Vec<Endpoint> = self
            .endpoints
            .load()
            .iter()
            .filter(|h| !endpoints.iter().any(|e| e.addr == h.endpoint.addr))
            .map(|h| h.endpoint.clone())
            .collect();
        all.extend(endpoints);
        self.set(all);
    }

    pub fn remove(&self, addrs: &[SocketAddr]) {
        let next: Vec<Arc<EndpointHandle>> = self
            .endpoints
            .load()
            .iter()
            .filter(|h| !addrs.contains(&h.endpoint.addr))
            .cloned()
            .collect();
        self.endpoints.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn p2c_avoids_slow_and_busy_endpoints() {
        let b = Balancer::default();
        b.set(vec![ep(1), ep(2)]);
        let eps = b.snapshot();
        // Endpoint 1 answered slowly once: P2C with two endpoints always compares both.
        {
            let mut e = eps[0].ewma.lock().unwrap();
            e.rtt_ns = 500e6;
            e.updated = Instant::now();
        }
        for _ in 0..100 {
            assert_eq!(b.pick().unwrap().endpoint.addr.port(), 2);
        }
        // Many requests in flight on endpoint 2 make it costlier than the slow one.
        let guards: Vec<_> = (0..100).map(|_| eps[1].start()).collect();
        assert_eq!(b.pick().unwrap().endpoint.addr.port(), 1);
        drop(guards);
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::default();
        b.set_kind(BalancerKind::RoundRobin);
        b.set(vec![ep(1), ep(2), ep(3)]);
        let ports: Vec<u16> = (0..6)
            .map(|_| b.pick().unwrap().endpoint.addr.port())
            .collect();
        assert_eq!(ports, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn updates_keep_surviving_handles() {
        let b = Balancer::default();
        b.set(vec![ep(1), ep(2)]);
        let before = b.snapshot();
        let held = before[0].clone();
        b.upsert(vec![ep(3)]);
        b.remove(&[ep(2).addr]);
        let after = b.snapshot();
        assert_eq!(after.len(), 2);
        assert!(Arc::ptr_eq(&after[0], &held), "endpoint 1 keeps its handle");
        // A removed endpoint's in-flight guard still completes.
        let g = before[1].start();
        g.complete();
        assert_eq!(before[1].in_flight(), 0);
    }

    #[test]
    fn failures_make_an_endpoint_look_slow() {
        let b = Balancer::default();
        b.set(vec![ep(1), ep(2)]);
        let eps = b.snapshot();
        eps[0].start().fail();
        eps[1].start().complete();
        for _ in 0..50 {
            assert_eq!(b.pick().unwrap().endpoint.addr.port(), 2);
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays() {
        let now = Instant::now();
        let mut e = PeakEwma {
            rtt_ns: 1e6,
            updated: now,
        };
        e.observe(Duration::from_millis(100), now);
        assert_eq!(e.rtt_ns, 100e6);
        e.observe(Duration::from_millis(1), now + Duration::from_secs(10));
        assert!(e.rtt_ns < 50e6 && e.rtt_ns > 1e6, "{}", e.rtt_ns);
        assert!(e.decayed(now + Duration::from_secs(100)) < e.rtt_ns);
    }
}
