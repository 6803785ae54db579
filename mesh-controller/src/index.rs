//! The one in-memory index every proxy stream reads from.
//!
//! A single task ([`Index::run`]) owns the watched objects. It takes changes from the
//! backends in batches (everything queued at once, so a burst costs one recomputation),
//! recomputes only the Services, namespaces and conditions the batch touched, and publishes
//! the results through `tokio::sync::watch` channels: one per (Service, port) or (cluster IP,
//! port) that some proxy asked for, one per watched workload port and one per watched workload
//! (the map of its declared ports). Streams read the latest
//! value when they are ready, so a slow proxy never holds up the index, and intermediate
//! states it missed are skipped. The lock around the channel table is never held across an
//! `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tokio::sync::{mpsc, watch};

use crate::inbound::authorization::{Defaults, PolicyMemory};
use crate::inbound::{
    self, InboundKey, InboundState, Member, MeshPolicy, NamespaceInbound, WorkloadKey,
    WorkloadKind, WorkloadPorts,
};
use crate::metrics::{KindLabel, Metrics};
use crate::objects::{Change, Dirty, Kind, ObjKey, Objects};
use crate::policies::{self, Resolved};
use crate::resolve::Target;
use crate::routes::{self, Converted};
use crate::services::{self, Naming, PortState, RouteTable, ServiceView};
use crate::status::{self, ObjectStatus, StatusEntry, StatusReport};

/// What a destination stream watches: the port's state, `None` when there is no such Service
/// port.
pub type DestinationRx = watch::Receiver<Option<Arc<PortState>>>;

/// Input of the index.
#[derive(Debug)]
pub enum Input {
    Change(Change),
    /// Changes that belong together (one reload of the local directory): applied and
    /// published as one.
    Batch(Vec<Change>),
    /// The backend has sent its complete initial state: the controller is ready.
    Synced,
}

impl From<Change> for Input {
    fn from(c: Change) -> Self {
        Input::Change(c)
    }
}

#[derive(Default)]
struct Shared {
    views: HashMap<ObjKey, Arc<ServiceView>>,
    by_ip: HashMap<IpAddr, ObjKey>,
    destinations: HashMap<Target, watch::Sender<Option<Arc<PortState>>>>,
    namespaces: HashMap<String, NamespaceInbound>,
    inbound: HashMap<InboundKey, watch::Sender<InboundState>>,
    workloads: HashMap<WorkloadKey, watch::Sender<WorkloadPorts>>,
    /// Each Namespace's `mesh.dev/` annotations (the admission webhook's defaults).
    namespace_annotations: HashMap<String, BTreeMap<String, String>>,
}

impl Shared {
    fn lookup(&self, target: &Target) -> Option<Arc<PortState>> {
        let (key, port) = match target {
            Target::Name(key, port) => (key, *port),
            Target::Addr(addr) => (self.by_ip.get(&addr.ip())?, addr.port()),
        };
        self.views.get(key)?.ports.get(&port).cloned()
    }

    fn inbound_state(&self, key: &InboundKey, mesh: &MeshPolicy) -> InboundState {
        match self.namespaces.get(&key.namespace) {
            Some(ns) => ns.state(key, mesh),
            None => NamespaceInbound::default().state(key, mesh),
        }
    }

    fn workload_state(&self, key: &WorkloadKey, mesh: &MeshPolicy) -> WorkloadPorts {
        match self.namespaces.get(&key.namespace) {
            Some(ns) => ns.workload_state(key, mesh),
            None => NamespaceInbound::default().workload_state(key, mesh),
        }
    }
}

/// Replaces a channel's value when it differs (receivers wake only on a real change).
fn publish<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|cur| {
        if *cur == value {
            false
        } else {
            *cur = value;
            true
        }
    });
}

/// The shared index: subscribe from gRPC handlers, feed from backends through [`Index::run`].
pub struct Index {
    shared: Mutex<Shared>,
    pub metrics: Arc<Metrics>,
    naming: Naming,
    mesh: MeshPolicy,
    ready: watch::Sender<bool>,
    status: watch::Sender<Arc<StatusReport>>,
}

impl Index {
    /// An index with the default mesh-wide policy (permissive mTLS, all-unauthenticated).
    pub fn new(naming: Naming, metrics: Arc<Metrics>) -> Arc<Self> {
        let mesh = MeshPolicy {
            trust_domain: naming.trust_domain.clone(),
            ..MeshPolicy::default()
        };
        Self::with_policy(naming, metrics, mesh)
    }

    /// An index whose ports default to `mesh` (its trust domain is `mesh.trust_domain`).
    pub fn with_policy(naming: Naming, metrics: Arc<Metrics>, mesh: MeshPolicy) -> Arc<Self> {
        Arc::new(Self {
            shared: Mutex::new(Shared::default()),
            metrics,
            naming,
            mesh,
            ready: watch::channel(false).0,
            status: watch::channel(Arc::new(StatusReport::new())).0,
        })
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// The mesh-wide inbound policy defaults.
    pub fn mesh_policy(&self) -> &MeshPolicy {
        &self.mesh
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock only means another thread panicked mid-update; the data is still a
        // consistent map of channels, so keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the backend's initial state has been indexed.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Status conditions of routes and policies, updated after every batch.
    pub fn status(&self) -> watch::Receiver<Arc<StatusReport>> {
        self.status.subscribe()
    }

    /// Watches one Service port.
    pub fn watch_destination(&self, target: Target) -> DestinationRx {
        let mut s = self.lock();
        if let Some(tx) = s.destinations.get(&target) {
            return tx.subscribe();
        }
        let value = s.lookup(&target);
        let (tx, rx) = watch::channel(value);
        s.destinations.insert(target, tx);
        rx
    }

    /// Watches one workload port's inbound policy.
    pub fn watch_inbound(&self, key: InboundKey) -> watch::Receiver<InboundState> {
        let mut s = self.lock();
        if let Some(tx) = s.inbound.get(&key) {
            return tx.subscribe();
        }
        let value = s.inbound_state(&key, &self.mesh);
        let (tx, rx) = watch::channel(value);
        s.inbound.insert(key, tx);
        rx
    }

    /// Watches every declared port of one workload.
    pub fn watch_workload(&self, key: WorkloadKey) -> watch::Receiver<WorkloadPorts> {
        let mut s = self.lock();
        if let Some(tx) = s.workloads.get(&key) {
            return tx.subscribe();
        }
        let value = s.workload_state(&key, &self.mesh);
        let (tx, rx) = watch::channel(value);
        s.workloads.insert(key, tx);
        rx
    }

    /// The annotations of a Namespace (empty when it is unknown): the admission webhook's
    /// defaults for the pods in it.
    pub fn namespace_annotations(&self, namespace: &str) -> BTreeMap<String, String> {
        self.lock()
            .namespace_annotations
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Numbers for the admin page: services, endpoints, watched destinations.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let s = self.lock();
        let endpoints = s.views.values().map(|v| v.endpoint_count()).sum();
        (s.views.len(), endpoints, s.destinations.len())
    }

    /// Applies changes from the backends until every sender is gone.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Input>) {
        let mut objs = Objects::default();
        let mut state = Derived::default();
        let mut gc = tokio::time::interval(Duration::from_secs(30));
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => m,
                    None => return,
                },
                _ = gc.tick() => {
                    self.collect_garbage();
                    continue;
                }
            };
            let started = Instant::now();
            let mut dirty = Dirty::default();
            let mut synced = false;
            let mut next = Some(first);
            let mut n = 0;
            while let Some(input) = next.take() {
                match input {
                    Input::Synced => synced = true,
                    Input::Change(c) => self.apply(&mut objs, c, &mut dirty),
                    Input::Batch(list) => {
                        for c in list {
                            self.apply(&mut objs, c, &mut dirty);
                        }
                    }
                }
                n += 1;
                if n < 50_000 {
                    next = rx.try_recv().ok();
                }
            }
            if !dirty.is_empty() {
                self.recompute(&objs, dirty, &mut state);
                self.metrics
                    .index_lag
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.last_change.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or_default(),
                );
            }
            for kind in Kind::ALL {
                self.metrics
                    .objects
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .set(objs.count(kind) as i64);
            }
            if synced && !self.is_ready() {
                tracing::info!("initial state indexed; ready");
                self.ready.send_replace(true);
            }
        }
    }

    fn apply(&self, objs: &mut Objects, c: Change, dirty: &mut Dirty) {
        let kind = match &c {
            Change::Apply(o) => o.kind(),
            Change::Delete(k, _) | Change::Reset(k, _) => *k,
        };
        self.metrics
            .changes
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
        objs.apply(c, dirty);
    }

    /// Drops channels nobody watches any more.
    fn collect_garbage(&self) {
        let mut s = self.lock();
        s.destinations.retain(|_, tx| tx.receiver_count() > 0);
        s.inbound.retain(|_, tx| tx.receiver_count() > 0);
        s.workloads.retain(|_, tx| tx.receiver_count() > 0);
    }

    fn recompute(&self, objs: &Objects, mut dirty: Dirty, state: &mut Derived) {
        if dirty.conditions {
            state.refresh_routes(objs, &self.naming, &mut dirty);
        }
        // Compute outside the lock; publish under it.
        let views: Vec<(ObjKey, Option<Arc<ServiceView>>)> = dirty
            .services
            .iter()
            .map(|k| {
                let v = services::compute(objs, k, &state.table, &state.policies, &self.naming)
                    .map(Arc::new);
                (k.clone(), v)
            })
            .collect();
        let servers: Vec<(String, Vec<Arc<mesh_crds::Server>>)> = dirty
            .inbound_servers
            .iter()
            .map(|ns| (ns.clone(), NamespaceInbound::servers_of(objs, ns)))
            .collect();
        let declared: Vec<(String, Vec<inbound::DeclaredService>)> = dirty
            .inbound_services
            .iter()
            .map(|ns| (ns.clone(), NamespaceInbound::services_of(objs, ns)))
            .collect();
        let members: Vec<(&(WorkloadKind, ObjKey), Option<Member>)> = dirty
            .inbound_members
            .iter()
            .map(|m| (m, Member::of(objs, m.0, &m.1)))
            .collect();
        let mut policies_changed = false;
        for ((kind, key), member) in &members {
            // A pod without a Pod object borrows its Workload (`Member::of`), whose problems
            // are reported on the Workload.
            let borrowed = *kind == WorkloadKind::Pod && !objs.pods.contains_key(key);
            let problems = member
                .as_ref()
                .filter(|_| !borrowed)
                .map(|m| m.problems())
                .unwrap_or_default();
            let k = match kind {
                WorkloadKind::Pod => Kind::Pod,
                WorkloadKind::Workload => Kind::Workload,
            };
            policies_changed |= state.set_annotation_problems(k, key, problems);
        }
        let mut ns_policies = Vec::new();
        for ns in &dirty.inbound_policies {
            policies_changed |= state.memory.refresh(objs, ns, &self.mesh.trust_domain);
            let defaults = objs
                .namespaces
                .get(&ObjKey::new("", ns.clone()))
                .map(|n| Defaults::from_annotations(&n.annotations))
                .unwrap_or_default();
            policies_changed |= state.set_annotation_problems(
                Kind::Namespace,
                &ObjKey::new("", ns.clone()),
                &defaults.problems,
            );
            let annotations = objs
                .namespaces
                .get(&ObjKey::new("", ns.clone()))
                .map(|n| n.annotations.clone());
            ns_policies.push((
                ns.clone(),
                state.memory.authz_of(ns),
                state.memory.egress_of(ns),
                defaults,
                annotations,
            ));
        }
        let mut s = self.lock();
        for (key, view) in views {
            let old = match &view {
                Some(v) => s.views.insert(key.clone(), v.clone()),
                None => s.views.remove(&key),
            };
            let mut targets: BTreeSet<u16> = BTreeSet::new();
            let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
            for v in old.iter().chain(view.iter()) {
                targets.extend(v.ports.keys());
                ips.extend(v.cluster_ips.iter());
            }
            if let Some(old) = &old {
                for ip in &old.cluster_ips {
                    if s.by_ip.get(ip) == Some(&key) {
                        s.by_ip.remove(ip);
                    }
                }
            }
            if let Some(v) = &view {
                for ip in &v.cluster_ips {
                    s.by_ip.insert(*ip, key.clone());
                }
            }
            for port in targets {
                let mut ts = vec![Target::Name(key.clone(), port)];
                ts.extend(
                    ips.iter()
                        .map(|ip| Target::Addr(SocketAddr::new(*ip, port))),
                );
                for t in ts {
                    let value = s.lookup(&t);
                    if let Some(tx) = s.destinations.get(&t) {
                        publish(tx, value);
                    }
                }
            }
        }
        for (ns, list) in servers {
            s.namespaces.entry(ns).or_default().set_servers(list);
        }
        for (ns, list) in declared {
            s.namespaces.entry(ns).or_default().set_services(list);
        }
        for ((kind, key), member) in members {
            s.namespaces
                .entry(key.namespace.clone())
                .or_default()
                .set_member(*kind, &key.name, member);
        }
        for (ns, authz, egress, defaults, annotations) in ns_policies {
            match annotations {
                Some(a) => s.namespace_annotations.insert(ns.clone(), a),
                None => s.namespace_annotations.remove(&ns),
            };
            let n = s.namespaces.entry(ns).or_default();
            n.set_policies(authz, egress);
            n.set_defaults(defaults);
        }
        if !dirty.inbound_servers.is_empty()
            || !dirty.inbound_services.is_empty()
            || !dirty.inbound_members.is_empty()
            || !dirty.inbound_policies.is_empty()
        {
            let mesh = &self.mesh;
            let Shared {
                inbound,
                workloads,
                namespaces,
                ..
            } = &*s;
            let touched = |namespace: &str, kind: WorkloadKind, name: &str| {
                dirty.inbound_servers.contains(namespace)
                    || dirty.inbound_services.contains(namespace)
                    || dirty.inbound_policies.contains(namespace)
                    || dirty
                        .inbound_members
                        .contains(&(kind, ObjKey::new(namespace, name)))
            };
            for (key, tx) in inbound.iter() {
                if touched(&key.namespace, key.kind, &key.name) {
                    let value = match namespaces.get(&key.namespace) {
                        Some(n) => n.state(key, mesh),
                        None => NamespaceInbound::default().state(key, mesh),
                    };
                    publish(tx, value);
                }
            }
            for (key, tx) in workloads.iter() {
                if touched(&key.namespace, key.kind, &key.name) {
                    let value = match namespaces.get(&key.namespace) {
                        Some(n) => n.workload_state(key, mesh),
                        None => NamespaceInbound::default().workload_state(key, mesh),
                    };
                    publish(tx, value);
                }
            }
        }
        let endpoints: usize = s.views.values().map(|v| v.endpoint_count()).sum();
        drop(s);
        self.metrics.endpoints.set(endpoints as i64);
        let workloads_changed = state.refresh_workloads(objs, &dirty.workloads);
        if dirty.conditions {
            state.conditions = state.report(objs);
        }
        if dirty.conditions || workloads_changed || policies_changed {
            let mut report = state.conditions.clone();
            report.extend(
                state
                    .workloads
                    .iter()
                    .map(|(k, st)| ((Kind::Workload, k.clone()), st.clone())),
            );
            report.extend(state.memory.statuses(objs));
            for (k, st) in &state.annotations {
                match report.get_mut(k) {
                    Some(existing) => match existing.entries.first_mut() {
                        Some(e) => e
                            .conditions
                            .extend(st.entries.iter().flat_map(|e| e.conditions.clone())),
                        None => existing.entries = st.entries.clone(),
                    },
                    None => {
                        report.insert(k.clone(), st.clone());
                    }
                }
            }
            let previous = self.status.borrow().clone();
            status::stamp(&mut report, &previous, &status::now_rfc3339());
            if report != *previous {
                self.status.send_replace(Arc::new(report));
            }
        }
    }
}

/// What is derived from routes and policies, kept between batches.
#[derive(Default)]
struct Derived {
    http: BTreeMap<ObjKey, Converted>,
    grpc: BTreeMap<ObjKey, Converted>,
    table: RouteTable,
    policies: Resolved,
    /// Conditions of routes and policies (recomputed when they or Services change).
    conditions: StatusReport,
    /// Conditions of Workloads that are, or were, invalid (updated per changed Workload, so
    /// that thousands of valid Workloads cost nothing here).
    workloads: BTreeMap<ObjKey, ObjectStatus>,
    /// Authorization and egress policies: the versions in force and their conditions.
    memory: PolicyMemory,
    /// Namespaces, Pods and Workloads whose policy annotations are invalid.
    annotations: BTreeMap<(Kind, ObjKey), ObjectStatus>,
}

impl Derived {
    /// Records the annotation problems of an object; true when that changed the report.
    fn set_annotation_problems(&mut self, kind: Kind, key: &ObjKey, problems: &[String]) -> bool {
        let id = (kind, key.clone());
        if problems.is_empty() {
            return self.annotations.remove(&id).is_some();
        }
        let st = ObjectStatus {
            kind: kind.as_str().into(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            entries: vec![StatusEntry {
                parent_ref: None,
                conditions: vec![status::Condition::fail(
                    "PolicyDefaultsAccepted",
                    "InvalidAnnotation",
                    &problems.join("; "),
                    None,
                )],
            }],
        };
        if self.annotations.get(&id) == Some(&st) {
            return false;
        }
        self.annotations.insert(id, st);
        true
    }

    /// Reconverts routes and policies and marks the Services whose profile changed.
    fn refresh_routes(&mut self, objs: &Objects, naming: &Naming, dirty: &mut Dirty) {
        self.http = objs
            .http_routes
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    routes::convert_http(r, objs, &naming.cluster_domain),
                )
            })
            .collect();
        self.grpc = objs
            .grpc_routes
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    routes::convert_grpc(r, objs, &naming.cluster_domain),
                )
            })
            .collect();
        let mut table: RouteTable = BTreeMap::new();
        let attach = |table: &mut RouteTable,
                      kind: &str,
                      key: &ObjKey,
                      conv: &Converted,
                      parents: Vec<routes::ParentRef>| {
            if conv.accepted.is_err() {
                return;
            }
            let id = Arc::new((kind.to_string(), key.clone()));
            for p in parents {
                // Only routes in the Service's own namespace (producer routes) apply.
                if p.service.namespace != key.namespace {
                    continue;
                }
                let list = table.entry(p.service.clone()).or_default();
                for e in &conv.entries {
                    list.push((p.port, id.clone(), e.clone()));
                }
            }
        };
        for (k, conv) in &self.http {
            if let Some(r) = objs.http_routes.get(k) {
                attach(
                    &mut table,
                    "HTTPRoute",
                    k,
                    conv,
                    routes::http_parent_refs(r),
                );
            }
        }
        for (k, conv) in &self.grpc {
            if let Some(r) = objs.grpc_routes.get(k) {
                attach(
                    &mut table,
                    "GRPCRoute",
                    k,
                    conv,
                    routes::grpc_parent_refs(r),
                );
            }
        }
        for list in table.values_mut() {
            list.sort_by(|a, b| a.2.rank.cmp(&b.2.rank));
        }
        let policies = policies::resolve(objs);
        // Services whose routes changed.
        let keys: BTreeSet<&ObjKey> = table.keys().chain(self.table.keys()).collect();
        for k in keys {
            let same = match (table.get(k), self.table.get(k)) {
                (Some(a), Some(b)) => {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b.iter())
                            .all(|(x, y)| x.0 == y.0 && x.1 == y.1 && x.2.route == y.2.route)
                }
                (None, None) => true,
                _ => false,
            };
            if !same {
                dirty.services.insert(k.clone());
            }
        }
        // Services whose policy (or whose routes' policies) changed.
        let targets: BTreeSet<&(String, ObjKey)> = policies
            .by_target
            .keys()
            .chain(self.policies.by_target.keys())
            .collect();
        for t in targets {
            if policies.by_target.get(t) == self.policies.by_target.get(t) {
                continue;
            }
            match t.0.as_str() {
                "Service" => {
                    dirty.services.insert(t.1.clone());
                }
                _ => {
                    for (svc, list) in table.iter().chain(self.table.iter()) {
                        if list.iter().any(|(_, id, _)| id.as_ref() == t) {
                            dirty.services.insert(svc.clone());
                        }
                    }
                }
            }
        }
        self.table = table;
        self.policies = policies;
    }

    /// Updates the conditions of changed Workloads; true when any changed.
    fn refresh_workloads(&mut self, objs: &Objects, dirty: &BTreeSet<ObjKey>) -> bool {
        let mut changed = false;
        for k in dirty {
            let Some(w) = objs.workloads.get(k) else {
                changed |= self.workloads.remove(k).is_some();
                continue;
            };
            let cond = match w.spec.address.parse::<IpAddr>() {
                Ok(_) if !self.workloads.contains_key(k) => continue,
                Ok(_) => status::Condition::ok(
                    "Accepted",
                    "Accepted",
                    "workload indexed",
                    w.metadata.generation,
                ),
                Err(_) => status::Condition::fail(
                    "Accepted",
                    "InvalidAddress",
                    &format!(
                        "spec.address '{}' is not an IP address; Workloads are reached by IP",
                        w.spec.address
                    ),
                    w.metadata.generation,
                ),
            };
            let st = ObjectStatus {
                kind: "Workload".into(),
                namespace: k.namespace.clone(),
                name: w.name_any(),
                entries: vec![StatusEntry {
                    parent_ref: None,
                    conditions: vec![cond],
                }],
            };
            if self.workloads.get(k) != Some(&st) {
                self.workloads.insert(k.clone(), st);
                changed = true;
            }
        }
        changed
    }

    /// Conditions of every route and policy.
    fn report(&self, objs: &Objects) -> StatusReport {
        let mut report = StatusReport::new();
        let mut route_status = |kind: Kind,
                                key: &ObjKey,
                                generation: Option<i64>,
                                conv: &Converted,
                                parents: Vec<routes::ParentRef>| {
            let entries = parents
                .into_iter()
                .map(|p| {
                    let mut conditions = conv.conditions(generation);
                    if p.service.namespace != key.namespace {
                        conditions[0] = status::Condition::fail(
                            "Accepted",
                            "NotAllowedByParent",
                            "routes for a Service in another namespace (consumer routes) are not supported yet; put the route in the Service's namespace",
                            generation,
                        );
                    } else if !objs.services.contains_key(&p.service) {
                        conditions[0] = status::Condition::fail(
                            "Accepted",
                            "NoMatchingParent",
                            &format!("Service {} does not exist", p.service),
                            generation,
                        );
                    }
                    StatusEntry {
                        parent_ref: Some(p.raw),
                        conditions,
                    }
                })
                .collect();
            report.insert(
                (kind, key.clone()),
                ObjectStatus {
                    kind: kind.as_str().into(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    entries,
                },
            );
        };
        for (k, conv) in &self.http {
            if let Some(r) = objs.http_routes.get(k) {
                route_status(
                    Kind::HttpRoute,
                    k,
                    r.metadata.generation,
                    conv,
                    routes::http_parent_refs(r),
                );
            }
        }
        for (k, conv) in &self.grpc {
            if let Some(r) = objs.grpc_routes.get(k) {
                route_status(
                    Kind::GrpcRoute,
                    k,
                    r.metadata.generation,
                    conv,
                    routes::grpc_parent_refs(r),
                );
            }
        }
        for (k, conditions) in &self.policies.conditions {
            report.insert(
                (Kind::BackendPolicy, k.clone()),
                ObjectStatus {
                    kind: "BackendPolicy".into(),
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    entries: vec![StatusEntry {
                        parent_ref: None,
                        conditions: conditions.clone(),
                    }],
                },
            );
        }
        report
    }
}
