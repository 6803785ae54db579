//! The routing state of every destination the app has talked to: for each authority, whether
//! discovery knows it, its routes and policy, its balancer and its retry budget. Discovery
//! sources write here ([`Destination::apply`]); the request path only reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::{Authority, Endpoint, ServiceProfile};
use tokio::sync::watch;

use crate::balance::Balancer;
use crate::budget::RetryBudget;
use crate::error::ProxyError;
use crate::headers::HeaderOps;
use crate::metrics::{AuthorityLabels, Metrics, Str};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What discovery said about a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// No answer yet.
    Pending,
    /// Not a mesh service: pass through to the original destination.
    NotFound,
    Found,
}

/// A change from a discovery source.
#[derive(Debug)]
pub enum Update {
    State {
        profile: ServiceProfile,
        endpoints: Vec<Endpoint>,
    },
    Add(Vec<Endpoint>),
    Remove(Vec<SocketAddr>),
    Profile(ServiceProfile),
    NotFound,
}

/// A service profile with what the request path needs precomputed.
pub struct Profile {
    pub profile: ServiceProfile,
    /// Metric label of each route, by index.
    pub route_labels: Vec<Str>,
    /// Parsed request header modifier of each route, by index.
    pub request_headers: Vec<HeaderOps>,
}

impl Profile {
    fn new(profile: ServiceProfile) -> Self {
        let route_labels = profile
            .routes
            .iter()
            .map(|r| Str::from(r.name.as_str()))
            .collect();
        let request_headers = profile
            .routes
            .iter()
            .map(|r| HeaderOps::new(&r.request_headers))
            .collect();
        Self {
            profile,
            route_labels,
            request_headers,
        }
    }
}

pub struct Destination {
    pub authority: Authority,
    pub label: Str,
    status: watch::Sender<Resolution>,
    profile: ArcSwap<Profile>,
    pub balancer: Balancer,
    budget: ArcSwap<RetryBudget>,
    /// Where the balancer's ejections are counted (its series is created on first use).
    ejections: Family<AuthorityLabels, Counter>,
    /// The identity of the endpoints, for metrics: the one they share, `""` for none,
    /// `mixed` when they differ.
    server_id: ArcSwap<Str>,
}

impl Destination {
    /// A destination whose endpoint ejections are counted in `metrics`.
    pub fn new(authority: Authority, metrics: &Metrics) -> Self {
        let label = Str::from(authority.as_str());
        let profile = ServiceProfile::default();
        let budget = budget_for(&profile);
        Self {
            authority,
            label,
            status: watch::Sender::new(Resolution::Pending),
            profile: ArcSwap::from_pointee(Profile::new(profile)),
            balancer: Balancer::default(),
            budget: ArcSwap::from_pointee(budget),
            ejections: metrics.endpoint_ejections.clone(),
            server_id: ArcSwap::from_pointee(Str::from("")),
        }
    }

    pub fn resolution(&self) -> Resolution {
        *self.status.borrow()
    }

    /// Waits (up to `timeout`) for discovery's first answer.
    pub async fn resolved(&self, timeout: Duration) -> Result<Resolution, ProxyError> {
        let now = self.resolution();
        if now != Resolution::Pending {
            return Ok(now);
        }
        let mut rx = self.status.subscribe();
        let result =
            match tokio::time::timeout(timeout, rx.wait_for(|r| *r != Resolution::Pending)).await {
                Ok(Ok(r)) => Ok(*r),
                _ => Err(ProxyError::DiscoveryTimeout(self.authority.to_string())),
            };
        result
    }

    pub fn profile(&self) -> Arc<Profile> {
        self.profile.load_full()
    }

    pub fn budget(&self) -> Arc<RetryBudget> {
        self.budget.load_full()
    }

    /// The endpoints' identity label.
    pub fn server_id(&self) -> Str {
        Str::clone(&self.server_id.load())
    }

    fn update_server_id(&self) {
        let eps = self.balancer.snapshot();
        let mut ids = eps.iter().map(|e| e.endpoint.identity.as_ref());
        let first = ids.next().flatten();
        let same = eps.iter().all(|e| e.endpoint.identity.as_ref() == first);
        let label = match (first, same) {
            (_, false) => "mixed",
            (Some(id), true) => id.as_str(),
            (None, true) => "",
        };
        if self.server_id.load().0.as_ref() != label {
            self.server_id.store(Arc::new(Str::from(label)));
        }
    }

    pub fn apply(&self, update: Update) {
        self.apply_inner(update);
        self.update_server_id();
    }

    fn apply_inner(&self, update: Update) {
        match update {
            Update::State { profile, endpoints } => {
                self.set_profile(profile);
                self.balancer.set(endpoints);
                self.status.send_replace(Resolution::Found);
            }
            Update::Add(eps) => {
                self.balancer.upsert(eps);
                self.status.send_replace(Resolution::Found);
            }
            Update::Remove(addrs) => self.balancer.remove(&addrs),
            Update::Profile(p) => {
                self.set_profile(p);
                self.status.send_replace(Resolution::Found);
            }
            Update::NotFound => {
                self.balancer.set(Vec::new());
                self.set_profile(ServiceProfile::default());
                self.status.send_replace(Resolution::NotFound);
            }
        }
    }

    fn set_profile(&self, profile: ServiceProfile) {
        let old = self.profile.load();
        if old.profile.policy != profile.policy {
            self.budget.store(Arc::new(budget_for(&profile)));
        }
        self.balancer.set_kind(profile.policy.balancer);
        if profile.policy.circuit_breaker.is_some() && !self.balancer.has_ejection_counter() {
            let labels = AuthorityLabels {
                authority: self.label.clone(),
            };
            self.balancer
                .set_ejection_counter(self.ejections.get_or_create(&labels).clone());
        }
        self.balancer
            .set_circuit_breaker(profile.policy.circuit_breaker);
        self.profile.store(Arc::new(Profile::new(profile)));
    }
}

fn budget_for(profile: &ServiceProfile) -> RetryBudget {
    let b = profile.policy.retry_budget;
    RetryBudget::new(b.ttl, b.min_retries_per_second, b.ratio)
}

/// Starts discovery of a destination; implemented by every discovery source.
pub trait Resolve: Send + Sync + 'static {
    fn subscribe(&self, dest: Arc<Destination>);
}

/// The cache of destinations, created on first use.
pub struct Destinations {
    /// By normalised authority text.
    map: RwLock<HashMap<String, Arc<Destination>>>,
    /// By the Host text a request used when it is not the normalised form (`Web` or `web`
    /// for `web:80`), with the default port it was resolved with.
    aliases: RwLock<HashMap<String, (u16, Arc<Destination>)>>,
    /// By original destination address (transparent mode).
    by_addr: RwLock<HashMap<SocketAddr, Arc<Destination>>>,
    resolver: Arc<dyn Resolve>,
    metrics: Arc<Metrics>,
}

/// Bound on remembered destinations, so that an app dialling many addresses cannot grow the
/// proxy without limit. Past it, new destinations are resolved but not cached.
const MAX_DESTINATIONS: usize = 10_000;

impl Destinations {
    pub fn new(resolver: Arc<dyn Resolve>, metrics: Arc<Metrics>) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            aliases: RwLock::new(HashMap::new()),
            by_addr: RwLock::new(HashMap::new()),
            resolver,
            metrics,
        }
    }

    /// The destination a Host header names; a host without a port gets `default_port`.
    /// Repeated lookups of the same text allocate nothing.
    pub fn for_host(
        &self,
        host: &str,
        default_port: u16,
    ) -> Result<Arc<Destination>, mesh_core::InvalidValue> {
        if let Some(d) = self.lookup(host) {
            return Ok(d);
        }
        if let Some((port, d)) = self.aliases.read().ok().and_then(|a| a.get(host).cloned()) {
            if port == default_port {
                return Ok(d);
            }
        }
        let authority = Authority::parse(host, Some(default_port))?;
        let dest = self.get(&authority);
        if let Ok(mut aliases) = self.aliases.write() {
            if aliases.len() < MAX_DESTINATIONS {
                aliases.insert(host.to_string(), (default_port, dest.clone()));
            }
        }
        Ok(dest)
    }

    /// The destination of an original destination address.
    pub fn for_addr(&self, addr: SocketAddr) -> Arc<Destination> {
        if let Some(d) = self.by_addr.read().ok().and_then(|m| m.get(&addr).cloned()) {
            return d;
        }
        let dest = self.get(&Authority::from(addr));
        if let Ok(mut m) = self.by_addr.write() {
            if m.len() < MAX_DESTINATIONS {
                m.insert(addr, dest.clone());
            }
        }
        dest
    }

    /// The destination for a normalised authority.
    pub fn get(&self, authority: &Authority) -> Arc<Destination> {
        if let Some(d) = self.lookup(authority.as_str()) {
            return d;
        }
        let dest = Arc::new(Destination::new(authority.clone(), &self.metrics));
        {
            let Ok(mut map) = self.map.write() else {
                self.resolver.subscribe(dest.clone());
                return dest;
            };
            if let Some(d) = map.get(authority.as_str()) {
                return d.clone();
            }
            if map.len() < MAX_DESTINATIONS {
                map.insert(authority.to_string(), dest.clone());
            }
        }
        self.resolver.subscribe(dest.clone());
        dest
    }

    /// A cached destination by its exact authority text, without allocating.
    pub fn lookup(&self, authority: &str) -> Option<Arc<Destination>> {
        self.map.read().ok()?.get(authority).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Destination>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.authority.cmp(&b.authority));
        v
    }
}
