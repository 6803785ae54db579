//! Per-request load balancing over a service's endpoints.
//!
//! The default is Linkerd's algorithm: power of two random choices, comparing each
//! endpoint's peak-EWMA latency multiplied by its in-flight requests (and divided by its
//! weight). Round-robin is the alternative. The endpoint list is swapped atomically when
//! discovery changes it; requests in flight keep their `Arc<EndpointHandle>`, so an endpoint
//! that leaves the set finishes what it was doing.
//!
//! With a [`CircuitBreaker`] in the service's policy, endpoints that fail several requests in
//! a row are ejected: left out of picks for a while (see [`Balancer::record_failure`]). The
//! request path pays for this only while some endpoint is ejected; otherwise a pick reads
//! one more atomic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_core::{BalancerKind, CircuitBreaker, Endpoint, ProtocolHint};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;

use crate::client::Conns;

/// Latency assumed for an endpoint that has not answered yet, when the service has no other
/// endpoint to compare with (Linkerd's default). An endpoint that joins a service with
/// endpoints starts at their (lower) median estimate instead (see [`Balancer::set`]).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the latency estimate forgets old observations.
const DECAY: Duration = Duration::from_secs(10);
/// Latency charged for an attempt that failed (refused connection, reset): a failing endpoint
/// must look slow, not fast, or P2C would favour it for failing quickly.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Origin of the nanosecond timestamps that ejection state keeps in atomics.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `now` as nanoseconds since [`EPOCH`].
fn nanos(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Random draws P2C makes among the endpoints that are not ejected before it scans for one.
const DRAWS: usize = 8;

/// Circuit-breaking state of one endpoint. Changed by outcomes (without a lock) and by
/// ejections (under the balancer's ejection lock).
#[derive(Default)]
struct Outlier {
    /// Failures since the last success.
    failures: AtomicU32,
    /// End of the current or last ejection, in ns since [`EPOCH`]; 0 when never ejected.
    ejected_until: AtomicU64,
    /// The ejection multiplier: the n-th ejection lasts n base ejections.
    ejections: AtomicU32,
}

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
    outlier: Outlier,
}

impl EndpointHandle {
    pub fn new(endpoint: Endpoint) -> Self {
        Self::with_rtt(endpoint, DEFAULT_RTT.as_nanos() as f64)
    }

    /// A handle whose latency estimate starts at `rtt_ns`.
    fn with_rtt(endpoint: Endpoint, rtt_ns: f64) -> Self {
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
                rtt_ns,
                updated: Instant::now(),
            }),
            outlier: Outlier::default(),
        }
    }

    /// mTLS to this endpoint: when discovery names its identity (a proxy fronts it).
    pub fn tls(&self) -> Option<crate::client::TlsTo<'_>> {
        self.endpoint
            .identity
            .as_ref()
            .map(|identity| crate::client::TlsTo {
                identity,
                port: self.endpoint.addr.port(),
            })
    }

    /// Whether another mesh proxy fronts this endpoint (requests go over HTTP/2).
    pub fn is_meshed(&self) -> bool {
        matches!(self.endpoint.hint, ProtocolHint::MeshedH2 { .. })
    }

    /// Whether connections to this endpoint are opaque TCP: its hint says so, or its port
    /// declares the opaque protocol.
    pub fn is_opaque(&self) -> bool {
        matches!(self.endpoint.hint, ProtocolHint::Opaque)
            || self.endpoint.protocol == mesh_core::AppProtocol::Opaque
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

    fn ejected_at(&self, now_ns: u64) -> bool {
        self.outlier.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    /// How much longer the endpoint stays ejected at `now`; `None` when it is not ejected.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.outlier.ejected_until.load(Ordering::Relaxed);
        let now = nanos(now);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Failures since the last success (reset when the endpoint is ejected).
    pub fn consecutive_failures(&self) -> u32 {
        self.outlier.failures.load(Ordering::Relaxed)
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
    /// The service's circuit breaker; `None` when off.
    breaker: ArcSwapOption<CircuitBreaker>,
    /// Whether `breaker` is set, for the request path's cheapest check.
    breaking: AtomicBool,
    /// The latest end of any endpoint's ejection (ns since [`EPOCH`]); 0 when none is
    /// ejected. While it is past, picks do not look at ejection at all.
    ejected_until: AtomicU64,
    /// Serialises ejection decisions (rare; never held across an await) so that the
    /// `max_ejected_percent` cap holds under concurrent failures.
    ejecting: Mutex<()>,
    /// `mesh_proxy_endpoint_ejections_total` of this service, once it has a breaker.
    ejections: OnceLock<Counter>,
}

impl Default for Balancer {
    fn default() -> Self {
        LazyLock::force(&EPOCH);
        Self {
            kind: AtomicU8::new(0),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            breaker: ArcSwapOption::empty(),
            breaking: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejecting: Mutex::new(()),
            ejections: OnceLock::new(),
        }
    }
}

impl Balancer {
    /// Counts ejections in `counter` from now on (the first counter given stays).
    pub fn set_ejection_counter(&self, counter: Counter) {
        let _ = self.ejections.set(counter);
    }

    pub fn has_ejection_counter(&self) -> bool {
        self.ejections.get().is_some()
    }

    /// Turns circuit breaking on (with these settings) or off. Turning it off, or changing
    /// it, readmits every ejected endpoint and clears failure counts.
    pub fn set_circuit_breaker(&self, cb: Option<CircuitBreaker>) {
        if self.breaker.load().as_deref() == cb.as_ref() {
            return;
        }
        let Ok(_guard) = self.ejecting.lock() else {
            return;
        };
        self.breaking.store(cb.is_some(), Ordering::Relaxed);
        self.breaker.store(cb.map(Arc::new));
        self.ejected_until.store(0, Ordering::Relaxed);
        for ep in self.endpoints.load().iter() {
            ep.outlier.failures.store(0, Ordering::Relaxed);
            ep.outlier.ejected_until.store(0, Ordering::Relaxed);
            ep.outlier.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Whether circuit breaking is on: outcomes need to be reported.
    pub fn is_breaking(&self) -> bool {
        self.breaking.load(Ordering::Relaxed)
    }

    pub fn circuit_breaker(&self) -> Option<CircuitBreaker> {
        self.breaker.load().as_deref().copied()
    }

    /// A request to `ep` succeeded: its run of failures is over.
    pub fn record_success(&self, ep: &EndpointHandle) {
        // Read first: under load most endpoints have no failures, and a load keeps the
        // cache line shared between cores.
        if ep.outlier.failures.load(Ordering::Relaxed) != 0 {
            ep.outlier.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to `ep` failed (no connection, no response, or a failure response). When
    /// this is the endpoint's `consecutive_failures`-th failure in a row it is ejected, for
    /// `base_ejection` times the number of its ejections (at most `max_ejection`), unless
    /// more than `max_ejected_percent` of the endpoints would then be out; it then stays in,
    /// and its next failure tries again. Failures of requests that were sent before the
    /// endpoint was ejected do not count. Returns whether the endpoint was ejected.
    pub fn record_failure(&self, ep: &EndpointHandle, now: Instant) -> bool {
        let cfg = self.breaker.load();
        let Some(cb) = cfg.as_deref() else {
            return false;
        };
        let now_ns = nanos(now);
        if ep.ejected_at(now_ns) {
            return false;
        }
        let failures = ep
            .outlier
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < cb.consecutive_failures {
            return false;
        }
        self.eject(ep, cb, now_ns)
    }

    fn eject(&self, ep: &EndpointHandle, cb: &CircuitBreaker, now_ns: u64) -> bool {
        let Ok(_guard) = self.ejecting.lock() else {
            return false;
        };
        // Another request may have ejected it, or a success reset it, meanwhile.
        let failures = ep.outlier.failures.load(Ordering::Relaxed);
        if ep.ejected_at(now_ns) || failures < cb.consecutive_failures {
            return false;
        }
        let eps = self.endpoints.load();
        if !eps.iter().any(|e| std::ptr::eq(&**e, ep)) {
            // No longer in the set: nothing to eject it from.
            return false;
        }
        let ejected = eps.iter().filter(|e| e.ejected_at(now_ns)).count();
        if (ejected + 1) * 100 > cb.max_ejected_percent as usize * eps.len() {
            tracing::debug!(
                endpoint = %ep.endpoint.addr,
                ejected,
                endpoints = eps.len(),
                "endpoint keeps failing but stays in: max_ejected_percent reached"
            );
            return false;
        }
        // The multiplier forgets one ejection for every base ejection time the endpoint
        // has spent back in the set since its last one (as Envoy's does).
        let base = duration_nanos(cb.base_ejection).max(1);
        let last_until = ep.outlier.ejected_until.load(Ordering::Relaxed);
        let mut n = ep.outlier.ejections.load(Ordering::Relaxed);
        if last_until != 0 {
            let healthy = now_ns.saturating_sub(last_until) / base;
            n = n.saturating_sub(u32::try_from(healthy).unwrap_or(u32::MAX));
        }
        n = n.saturating_add(1);
        let time = cb.ejection_time(n);
        let until = now_ns.saturating_add(duration_nanos(time)).max(1);
        ep.outlier.ejections.store(n, Ordering::Relaxed);
        ep.outlier.ejected_until.store(until, Ordering::Relaxed);
        ep.outlier.failures.store(0, Ordering::Relaxed);
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
        if let Some(c) = self.ejections.get() {
            c.inc();
        }
        tracing::info!(
            endpoint = %ep.endpoint.addr,
            failures,
            ejection = n,
            duration = %humantime::format_duration(time),
            "endpoint ejected after consecutive failures"
        );
        true
    }

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

    /// Picks the endpoint for one request. Ejected endpoints are skipped while any other
    /// is available; when every endpoint is ejected, all are candidates again (ejection
    /// never fails a request by itself).
    pub fn pick(&self) -> Option<Arc<EndpointHandle>> {
        self.pick_with(Instant::now)
    }

    /// [`Self::pick`] with a clock, which is read only while some endpoint is ejected.
    fn pick_with(&self, clock: impl FnOnce() -> Instant) -> Option<Arc<EndpointHandle>> {
        let eps = self.endpoints.load();
        let n = eps.len();
        if n <= 1 {
            return eps.first().cloned();
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 {
            let now_ns = nanos(clock());
            if until > now_ns {
                if let Some(ep) = self.pick_skipping_ejected(&eps, now_ns) {
                    return Some(ep);
                }
            } else {
                // Every ejection is over; later picks skip this check. (A concurrent new
                // ejection raised the value, so the exchange fails and it stays.)
                let _ = self.ejected_until.compare_exchange(
                    until,
                    0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        match self.kind() {
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
                Some(cheaper(&eps[a], &eps[b]))
            }
        }
    }

    /// A pick among the endpoints that are not ejected; `None` when every one is.
    fn pick_skipping_ejected(
        &self,
        eps: &[Arc<EndpointHandle>],
        now_ns: u64,
    ) -> Option<Arc<EndpointHandle>> {
        let n = eps.len();
        let available = |i: usize| !eps[i].ejected_at(now_ns);
        match self.kind() {
            BalancerKind::RoundRobin => (0..n)
                .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % n)
                .find(|i| available(*i))
                .map(|i| eps[i].clone()),
            BalancerKind::P2cPeakEwma => {
                let mut rng = rand::rng();
                let a = draw(&mut rng, n, None, available)?;
                Some(match draw(&mut rng, n, Some(a), available) {
                    Some(b) => cheaper(&eps[a], &eps[b]),
                    None => eps[a].clone(),
                })
            }
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
    ///
    /// A new endpoint's latency estimate starts at the lower median of the current
    /// endpoints' estimates: a fixed default (30 ms) would starve a new replica of a fast
    /// service for half a minute, until the estimate decays below its peers' (a rolling
    /// restart would leave the new replicas idle), and would flood a new replica of a slow
    /// service; a mean would be dragged up by one failing endpoint (charged 1 s per failure).
    /// Its first responses correct the estimate either way.
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        let current = self.endpoints.load();
        let by_addr: HashMap<SocketAddr, &Arc<EndpointHandle>> =
            current.iter().map(|h| (h.endpoint.addr, h)).collect();
        let start_rtt = {
            let now = Instant::now();
            let mut estimates: Vec<f64> = current
                .iter()
                .filter_map(|h| h.ewma.lock().ok().map(|e| e.decayed(now)))
                .collect();
            estimates.sort_by(f64::total_cmp);
            match estimates.len() {
                0 => DEFAULT_RTT.as_nanos() as f64,
                n => estimates[(n - 1) / 2],
            }
        };
        let mut next = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            match by_addr.get(&ep.addr) {
                Some(h) if h.endpoint == ep => next.push((*h).clone()),
                _ => next.push(Arc::new(EndpointHandle::with_rtt(ep, start_rtt))),
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

/// P2C's choice between two endpoints: the lower cost.
fn cheaper(a: &Arc<EndpointHandle>, b: &Arc<EndpointHandle>) -> Arc<EndpointHandle> {
    let now = Instant::now();
    if a.cost(now) <= b.cost(now) {
        a.clone()
    } else {
        b.clone()
    }
}

/// A uniformly random index of `0..n` other than `exclude` for which `ok` holds: random
/// draws first (the ejected are a minority, usually), then a scan from a random start.
fn draw(
    rng: &mut impl Rng,
    n: usize,
    exclude: Option<usize>,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let fits = |i: usize| Some(i) != exclude && ok(i);
    (0..DRAWS)
        .map(|_| rng.random_range(0..n))
        .find(|i| fits(*i))
        .or_else(|| {
            let start = rng.random_range(0..n);
            (0..n).map(|k| (start + k) % n).find(|i| fits(*i))
        })
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

    fn ejections(b: &Balancer) -> u64 {
        b.ejections.get().map_or(0, |c| c.get())
    }

    fn breaker(failures: u32, base_s: u64, max_s: u64, percent: u32) -> Balancer {
        let b = Balancer::default();
        b.set_ejection_counter(Counter::default());
        b.set(vec![ep(1), ep(2), ep(3)]);
        b.set_circuit_breaker(Some(CircuitBreaker {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(base_s),
            max_ejection: Duration::from_secs(max_s),
            max_ejected_percent: percent,
        }));
        b
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The ports picked at `now`, over many picks.
    fn picked(b: &Balancer, now: Instant) -> std::collections::BTreeMap<u16, u32> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..300 {
            let p = b.pick_with(|| now).unwrap().endpoint.addr.port();
            *seen.entry(p).or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn consecutive_failures_eject_until_the_ejection_time_is_over() {
        for kind in [BalancerKind::P2cPeakEwma, BalancerKind::RoundRobin] {
            let b = breaker(3, 10, 60, 50);
            b.set_kind(kind);
            let eps = b.snapshot();
            // The fastest endpoint, so that P2C prefers it whenever it is drawn.
            eps[0].ewma.lock().unwrap().rtt_ns = 1.0;
            let t0 = Instant::now();
            // Two failures, a success, two failures: never three in a row.
            assert!(!b.record_failure(&eps[0], t0));
            assert!(!b.record_failure(&eps[0], t0));
            b.record_success(&eps[0]);
            assert_eq!(eps[0].consecutive_failures(), 0);
            assert!(!b.record_failure(&eps[0], t0));
            assert!(!b.record_failure(&eps[0], t0));
            assert!(picked(&b, t0)[&1] >= 100, "{kind:?}");
            // The third in a row ejects it for the base ejection time.
            assert!(b.record_failure(&eps[0], t0));
            assert_eq!(ejections(&b), 1);
            assert_eq!(eps[0].consecutive_failures(), 0);
            assert_eq!(eps[0].ejected_for(t0), Some(secs(10)));
            let during = picked(&b, t0 + secs(9));
            assert!(!during.contains_key(&1), "{kind:?}: {during:?}");
            if kind == BalancerKind::RoundRobin {
                assert_eq!(during[&2], 150, "{during:?}");
                assert_eq!(during[&3], 150, "{during:?}");
            }
            // Back after it, with no probing needed.
            let after = t0 + secs(10);
            assert_eq!(eps[0].ejected_for(after), None);
            assert!(picked(&b, after)[&1] > 50, "{kind:?}");
        }
    }

    #[test]
    fn ejections_grow_with_repeats_up_to_the_max_and_are_forgotten_over_time() {
        let b = breaker(1, 10, 35, 50);
        let e = b.snapshot()[0].clone();
        let mut t = Instant::now();
        // Ejected again as soon as each ejection ends: 10s, 20s, 30s, then the 35s cap.
        for expected in [10, 20, 30, 35, 35] {
            assert!(b.record_failure(&e, t));
            assert_eq!(e.ejected_for(t), Some(secs(expected)));
            t += secs(expected);
        }
        // 40 s back in the set (four base ejection times) forget four of five ejections.
        t += secs(40);
        assert!(b.record_failure(&e, t));
        assert_eq!(e.ejected_for(t), Some(secs(20)));
        // A long healthy spell forgets them all.
        t += secs(20 + 3600);
        assert!(b.record_failure(&e, t));
        assert_eq!(e.ejected_for(t), Some(secs(10)));
    }

    #[test]
    fn failures_while_ejected_do_not_count() {
        let b = breaker(2, 10, 60, 50);
        let e = b.snapshot()[1].clone();
        let t0 = Instant::now();
        b.record_failure(&e, t0);
        assert!(b.record_failure(&e, t0));
        // Requests sent before the ejection fail later: ignored.
        for _ in 0..5 {
            assert!(!b.record_failure(&e, t0 + secs(1)));
        }
        assert_eq!(e.consecutive_failures(), 0);
        // Back in the set, it takes the full threshold again.
        let back = t0 + secs(11);
        assert!(!b.record_failure(&e, back));
        assert!(b.record_failure(&e, back));
        assert_eq!(ejections(&b), 2);
    }

    #[test]
    fn max_ejected_percent_keeps_endpoints_in() {
        // 3 endpoints, at most 50% out: one may be ejected, a second would make 67%.
        let b = breaker(1, 10, 60, 50);
        b.set_kind(BalancerKind::RoundRobin);
        let eps = b.snapshot();
        let t0 = Instant::now();
        assert!(b.record_failure(&eps[0], t0));
        assert!(!b.record_failure(&eps[1], t0));
        assert!(!b.record_failure(&eps[2], t0));
        assert_eq!(ejections(&b), 1);
        let seen = picked(&b, t0);
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        // The endpoint held in keeps trying: once the first is back, the next failure
        // ejects it.
        let later = t0 + secs(10);
        assert!(b.record_failure(&eps[1], later));
        assert!(!picked(&b, later).contains_key(&2));

        // With 100%, every endpoint may go; picks then use all of them.
        let b = breaker(1, 10, 60, 100);
        b.set_kind(BalancerKind::RoundRobin);
        let eps = b.snapshot();
        for e in eps.iter() {
            assert!(b.record_failure(e, t0));
        }
        assert_eq!(picked(&b, t0).len(), 3, "all ejected: pick among all");
        // With 0%, none.
        let b = breaker(1, 10, 60, 0);
        assert!(!b.record_failure(&b.snapshot()[0], t0));
    }

    #[test]
    fn without_a_breaker_nothing_is_ejected_and_turning_it_off_readmits() {
        let b = Balancer::default();
        b.set(vec![ep(1), ep(2)]);
        let eps = b.snapshot();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!b.record_failure(&eps[0], t0));
        }
        let b = breaker(1, 30, 60, 50);
        b.set_kind(BalancerKind::RoundRobin);
        let eps = b.snapshot();
        let now = Instant::now();
        assert!(b.record_failure(&eps[0], now));
        assert!(!picked(&b, now).contains_key(&1));
        b.set_circuit_breaker(None);
        assert_eq!(eps[0].ejected_for(now), None);
        assert!(picked(&b, now).contains_key(&1));
        assert!(!b.record_failure(&eps[0], now));
    }

    #[test]
    fn removed_endpoints_are_not_ejected() {
        let b = breaker(1, 10, 60, 50);
        let gone = b.snapshot()[0].clone();
        b.remove(&[gone.endpoint.addr]);
        assert!(!b.record_failure(&gone, Instant::now()));
        assert_eq!(ejections(&b), 0);
    }

    #[test]
    fn new_endpoints_start_at_the_median_estimate_of_their_peers() {
        let b = Balancer::default();
        b.set(vec![ep(1), ep(2), ep(3)]);
        let now = Instant::now();
        for h in b.snapshot().iter() {
            let mut e = h.ewma.lock().unwrap();
            // Two fast endpoints and a failing one; the failing one must not drag the start up.
            e.rtt_ns = match h.endpoint.addr.port() {
                1 => 1e6,
                2 => 3e6,
                _ => 1e9,
            };
            e.updated = now;
        }
        b.upsert(vec![ep(4)]);
        let eps = b.snapshot();
        let new = eps.iter().find(|h| h.endpoint.addr.port() == 4).unwrap();
        let ms = new.ewma_ms();
        assert!((2.9..=3.0).contains(&ms), "new endpoint starts at {ms} ms");
        // Alone, an endpoint starts at the default.
        let lone = Balancer::default();
        lone.set(vec![ep(1)]);
        assert!(lone.snapshot()[0].ewma_ms() > 29.0);
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
