//! What one Service looks like to a proxy: per port, its endpoints and its profile (routes
//! and backend policy).
//!
//! Endpoints come from the Service's EndpointSlices (Kubernetes, or files in local mode) and
//! from the Workloads its selector matches. An endpoint counts while it is ready (a missing
//! `ready` condition means ready, as in Kubernetes). A Pod or Workload that runs the mesh
//! proxy gets the `meshed_h2` hint (with the proxy's inbound port only for a Workload that
//! names one, i.e. is not intercepted), and every endpoint carries the SPIFFE identity of
//! its service account.
//!
//! Every endpoint also carries the protocol its port declares, so that a client proxy can
//! skip detection too: the Server that selects the endpoint's Pod or Workload and covers the
//! port the endpoint is reached on (the Service port's `targetPort`, resolved as for the
//! endpoint's address), else the Service port's `appProtocol` (see [`crate::inbound`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::ResourceExt;
use mesh_core::{
    AppProtocol, BackendPolicy, Endpoint, Identity, ProtocolHint, Route, ServiceProfile,
};
use mesh_crds::Server;

use crate::inbound::{self, NamespaceInbound};
use crate::objects::{ObjKey, Objects};
use crate::policies::{Resolved, Settings};
use crate::routes::Entry;

/// Names the controller needs to build authorities and identities.
#[derive(Clone, Debug)]
pub struct Naming {
    /// Kubernetes cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

impl Naming {
    pub fn identity(&self, namespace: &str, service_account: &str) -> Option<Identity> {
        Identity::parse(&format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        ))
        .ok()
    }
}

/// One port of a Service as proxies see it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PortState {
    /// Sorted by address.
    pub endpoints: Vec<Endpoint>,
    pub profile: ServiceProfile,
}

/// A Service as proxies see it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServiceView {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: BTreeMap<u16, Arc<PortState>>,
}

impl ServiceView {
    pub fn endpoint_count(&self) -> usize {
        self.ports.values().map(|p| p.endpoints.len()).sum()
    }
}

/// Route entries attached to each Service (already sorted by precedence), with the port the
/// parentRef names.
pub type RouteTable = BTreeMap<ObjKey, Vec<(Option<u16>, Arc<(String, ObjKey)>, Entry)>>;

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn same_port_name(a: Option<&str>, b: Option<&str>) -> bool {
    a.unwrap_or("") == b.unwrap_or("")
}

/// Computes the view of one Service; `None` when it does not exist (or is an ExternalName).
pub fn compute(
    objs: &Objects,
    key: &ObjKey,
    routes: &RouteTable,
    policies: &Resolved,
    naming: &Naming,
) -> Option<ServiceView> {
    let svc = objs.services.get(key)?;
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let policy = policies
        .by_target
        .get(&("Service".to_string(), key.clone()))
        .cloned();
    let mut ports = BTreeMap::new();
    for sp in spec.ports.iter().flatten() {
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let endpoints = endpoints(
            objs,
            key,
            svc,
            sp,
            spec.ports.as_ref().map_or(0, Vec::len),
            naming,
        );
        let profile = profile(key, port, routes, policies, policy.as_deref());
        ports.insert(port, Arc::new(PortState { endpoints, profile }));
    }
    Some(ServiceView {
        cluster_ips: cluster_ips(svc),
        ports,
    })
}

fn endpoints(
    objs: &Objects,
    key: &ObjKey,
    svc: &Service,
    sp: &ServicePort,
    port_count: usize,
    naming: &Naming,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    let declared = inbound::app_protocol(sp.app_protocol.as_deref());
    // Servers per namespace of the endpoints' workloads (nearly always the Service's).
    let mut servers: HashMap<String, Vec<Arc<Server>>> = HashMap::new();
    let mut server_protocol = |namespace: &str,
                               labels: &BTreeMap<String, String>,
                               named: &dyn Fn(&str) -> Option<u16>,
                               port: u16|
     -> Option<AppProtocol> {
        let list = servers
            .entry(namespace.to_string())
            .or_insert_with(|| NamespaceInbound::servers_of(objs, namespace));
        inbound::server_for(list, labels, named, port)
            .map(|s| inbound::server_protocol(s.spec.protocol))
    };
    for slice_key in objs.slices_by_service.get(key).into_iter().flatten() {
        let Some(slice) = objs.slices.get(slice_key) else {
            continue;
        };
        let ports = slice.ports.as_deref().unwrap_or_default();
        let matched = ports
            .iter()
            .find(|p| same_port_name(p.name.as_deref(), sp.name.as_deref()))
            .or_else(|| (ports.len() == 1 && port_count == 1).then(|| &ports[0]));
        let Some(port) = matched
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        // The slice's port is the Service's targetPort already resolved (by name through
        // each Pod's container ports) by whoever wrote the slice.
        let slice_declared = match declared {
            AppProtocol::Detect => {
                inbound::app_protocol(matched.and_then(|p| p.app_protocol.as_deref()))
            }
            d => d,
        };
        for ep in &slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| {
                    let ns = t.namespace.clone().unwrap_or_else(|| key.namespace.clone());
                    objs.pods
                        .get(&ObjKey::new(ns, t.name.clone().unwrap_or_default()))
                });
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                let mut e = Endpoint::new(SocketAddr::new(ip, port));
                e.zone = ep.zone.clone();
                e.protocol = slice_declared;
                if let Some(pod) = pod {
                    if let Some(p) = server_protocol(
                        &pod.key.namespace,
                        &pod.labels,
                        &|n| pod.ports.get(n).copied(),
                        port,
                    ) {
                        e.protocol = p;
                    }
                    // A meshed Pod's traffic is intercepted: peers connect to the app's
                    // port and iptables hands the connection to its proxy, which learns
                    // the port from the original destination. Only a proxy can prove the
                    // identity, so only meshed endpoints carry one (clients use mTLS then).
                    if pod.meshed {
                        e.hint = ProtocolHint::MeshedH2 { inbound_port: None };
                        e.identity = naming.identity(&pod.key.namespace, &pod.service_account);
                    }
                }
                out.insert(e.addr, e);
            }
        }
    }
    // Workloads (VMs, local processes) selected by the Service's labels.
    for (wkey, w) in objs.selected_workloads(svc, &key.namespace) {
        if w.spec.ready == Some(false) {
            continue;
        }
        let Ok(ip) = w.spec.address.parse::<IpAddr>() else {
            continue;
        };
        let named = |name: &str| w.spec.ports.iter().find(|p| p.name == name).map(|p| p.port);
        let Some(port) = inbound::target_port(sp, named) else {
            continue;
        };
        let mut e = Endpoint::new(SocketAddr::new(ip, port));
        e.zone = w.spec.zone.clone();
        e.protocol = server_protocol(&wkey.namespace, w.labels(), &named, port).unwrap_or(declared);
        if let Some(proxy) = &w.spec.proxy {
            e.hint = ProtocolHint::MeshedH2 {
                inbound_port: proxy.inbound_port,
            };
            e.identity = naming.identity(
                &wkey.namespace,
                w.spec.service_account.as_deref().unwrap_or("default"),
            );
        }
        out.insert(e.addr, e);
    }
    out.into_values().collect()
}

fn profile(
    key: &ObjKey,
    port: u16,
    routes: &RouteTable,
    policies: &Resolved,
    service_policy: Option<&Settings>,
) -> ServiceProfile {
    let mut list: Vec<Route> = Vec::new();
    for (parent_port, route, entry) in routes.get(key).into_iter().flatten() {
        if parent_port.is_some_and(|p| p != port) {
            continue;
        }
        let mut r = entry.route.clone();
        let route_policy = policies.by_target.get(route.as_ref());
        if let Some(s) = route_policy.map(|p| p.as_ref()).or(service_policy) {
            r.retry = s.retry.clone();
            r.retryable = s.retryable;
            if r.timeout.is_none() {
                r.timeout = s.timeout;
            }
        }
        list.push(r);
    }
    let mut policy = BackendPolicy::default();
    if let Some(s) = service_policy {
        if let Some(b) = s.balancer {
            policy.balancer = b;
        }
        if let Some(b) = s.budget {
            policy.retry_budget = b;
        }
        policy.circuit_breaker = s.circuit_breaker;
        // Requests no route matches still get the Service's retry and timeout.
        if s.retry.is_some() || s.timeout.is_some() {
            list.push(Route {
                name: "default".into(),
                matches: Vec::new(),
                backends: Vec::new(),
                timeout: s.timeout,
                retry: s.retry.clone(),
                retryable: s.retryable,
                request_headers: Default::default(),
            });
        }
    }
    ServiceProfile {
        routes: list,
        policy,
    }
}
