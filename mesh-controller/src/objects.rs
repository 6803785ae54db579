//! The watched objects, whatever platform they come from, and the store that holds them.
//!
//! Both backends (Kubernetes watches and the local YAML directory) turn what they read into
//! [`Object`]s and send [`Change`]s; the index applies them to one [`Objects`] store. Pods are
//! reduced to the few fields the mesh needs ([`PodInfo`]) so that a large cluster does not cost
//! the controller a copy of every Pod spec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use mesh_crds::{AuthorizationPolicy, BackendPolicy, EgressPolicy, Server, Workload};

use crate::inbound::WorkloadKind;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Name of the proxy container (or native-sidecar init container) in a meshed Pod: the one
/// injection writes.
pub use mesh_inject::PROXY_CONTAINER;

/// Namespace and name of an object (cluster-scoped objects have an empty namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Kubernetes object; a missing namespace means `default`.
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.namespace().unwrap_or_else(|| "default".into()),
            name: obj.name_any(),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds the controller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Workload,
    Server,
    BackendPolicy,
    HttpRoute,
    GrpcRoute,
    Namespace,
    AuthorizationPolicy,
    EgressPolicy,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Workload,
        Kind::Server,
        Kind::BackendPolicy,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::Namespace,
        Kind::AuthorizationPolicy,
        Kind::EgressPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Workload => "Workload",
            Kind::Server => "Server",
            Kind::BackendPolicy => "BackendPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::Namespace => "Namespace",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::EgressPolicy => "EgressPolicy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the mesh needs to know about a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjKey,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Whether the Pod runs the mesh proxy (its traffic is then intercepted by iptables).
    pub meshed: bool,
    /// Named container ports, for `targetPort` and Server port names.
    pub ports: BTreeMap<String, u16>,
    /// The Pod's `mesh.dev/...` annotations (inbound policy defaults).
    pub annotations: BTreeMap<String, String>,
}

/// Prefix of the annotations the mesh reads on Namespaces, Pods and Workloads.
pub const ANNOTATION_PREFIX: &str = "mesh.dev/";

/// The `mesh.dev/...` annotations of an object.
pub fn mesh_annotations(all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the mesh needs to know about a Namespace: its name and `mesh.dev/...` annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> Self {
        Self {
            name: ns.name_any(),
            annotations: mesh_annotations(ns.annotations()),
        }
    }

    /// Namespaces are cluster-scoped: their key has an empty namespace.
    pub fn key(&self) -> ObjKey {
        ObjKey::new("", self.name.clone())
    }
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let inits = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default();
        let meshed = containers
            .iter()
            .chain(inits.iter())
            .any(|c| c.name == PROXY_CONTAINER);
        let mut ports = BTreeMap::new();
        for c in containers.iter().filter(|c| c.name != PROXY_CONTAINER) {
            for p in c.ports.iter().flatten() {
                if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                    ports.insert(name.clone(), port);
                }
            }
        }
        Self {
            key: ObjKey::of(pod),
            labels: pod.labels().clone(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            meshed,
            ports,
            annotations: mesh_annotations(pod.annotations()),
        }
    }
}

/// One watched object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Pod(Arc<PodInfo>),
    Workload(Arc<Workload>),
    Server(Arc<Server>),
    BackendPolicy(Arc<BackendPolicy>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    Namespace(Arc<NamespaceInfo>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    EgressPolicy(Arc<EgressPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Workload(_) => Kind::Workload,
            Object::Server(_) => Kind::Server,
            Object::BackendPolicy(_) => Kind::BackendPolicy,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::Namespace(_) => Kind::Namespace,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::EgressPolicy(_) => Kind::EgressPolicy,
        }
    }

    /// Equal content; the same allocation (a re-sent unchanged object) is decided without a
    /// deep comparison.
    pub fn same(&self, other: &Object) -> bool {
        let ptr = match (self, other) {
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b),
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b),
            (Object::Pod(a), Object::Pod(b)) => Arc::ptr_eq(a, b),
            (Object::Workload(a), Object::Workload(b)) => Arc::ptr_eq(a, b),
            (Object::Server(a), Object::Server(b)) => Arc::ptr_eq(a, b),
            (Object::BackendPolicy(a), Object::BackendPolicy(b)) => Arc::ptr_eq(a, b),
            (Object::HttpRoute(a), Object::HttpRoute(b)) => Arc::ptr_eq(a, b),
            (Object::GrpcRoute(a), Object::GrpcRoute(b)) => Arc::ptr_eq(a, b),
            (Object::Namespace(a), Object::Namespace(b)) => Arc::ptr_eq(a, b),
            (Object::AuthorizationPolicy(a), Object::AuthorizationPolicy(b)) => Arc::ptr_eq(a, b),
            (Object::EgressPolicy(a), Object::EgressPolicy(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        ptr || self == other
    }

    pub fn key(&self) -> ObjKey {
        match self {
            Object::Service(o) => ObjKey::of(o.as_ref()),
            Object::EndpointSlice(o) => ObjKey::of(o.as_ref()),
            Object::Pod(o) => o.key.clone(),
            Object::Workload(o) => ObjKey::of(o.as_ref()),
            Object::Server(o) => ObjKey::of(o.as_ref()),
            Object::BackendPolicy(o) => ObjKey::of(o.as_ref()),
            Object::HttpRoute(o) => ObjKey::of(o.as_ref()),
            Object::GrpcRoute(o) => ObjKey::of(o.as_ref()),
            Object::Namespace(o) => o.key(),
            Object::AuthorizationPolicy(o) => ObjKey::of(o.as_ref()),
            Object::EgressPolicy(o) => ObjKey::of(o.as_ref()),
        }
    }
}

/// A change reported by a backend.
#[derive(Debug)]
pub enum Change {
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Kind, ObjKey),
    /// The complete current set of one kind (after a (re)list or a directory reload):
    /// objects not in it are deleted.
    Reset(Kind, Vec<Object>),
}

/// Every watched object, by kind and key.
#[derive(Default)]
pub struct Objects {
    pub services: BTreeMap<ObjKey, Arc<Service>>,
    pub slices: BTreeMap<ObjKey, Arc<EndpointSlice>>,
    /// EndpointSlices of each Service.
    pub slices_by_service: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    /// EndpointSlices whose endpoints name each Pod (`targetRef`), so that a Pod change
    /// (service account, proxy injection) reaches the Services it serves.
    pub slices_by_pod: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    pub pods: BTreeMap<ObjKey, Arc<PodInfo>>,
    pub workloads: BTreeMap<ObjKey, Arc<Workload>>,
    /// Workloads by (namespace, label key, label value), for Service selectors.
    pub workloads_by_label: BTreeMap<(String, String, String), BTreeSet<ObjKey>>,
    pub servers: BTreeMap<ObjKey, Arc<Server>>,
    pub policies: BTreeMap<ObjKey, Arc<BackendPolicy>>,
    pub http_routes: BTreeMap<ObjKey, Arc<HttpRoute>>,
    pub grpc_routes: BTreeMap<ObjKey, Arc<GrpcRoute>>,
    /// Namespaces, keyed with an empty namespace and their name.
    pub namespaces: BTreeMap<ObjKey, Arc<NamespaceInfo>>,
    pub authorizations: BTreeMap<ObjKey, Arc<AuthorizationPolicy>>,
    pub egresses: BTreeMap<ObjKey, Arc<EgressPolicy>>,
}

/// What a change touched, so that only that is recomputed.
#[derive(Default, Debug)]
pub struct Dirty {
    pub services: BTreeSet<ObjKey>,
    /// Namespaces whose inbound policies (Servers, Pod/Workload labels) may have changed.
    pub inbound_servers: BTreeSet<String>,
    /// Namespaces whose Services (their selectors and `appProtocol`s, which inbound policy
    /// falls back to) may have changed.
    pub inbound_services: BTreeSet<String>,
    /// Pods and Workloads whose labels or ports may have changed (for inbound policy).
    pub inbound_members: BTreeSet<(WorkloadKind, ObjKey)>,
    /// Routes or policies changed: their status conditions need recomputing.
    pub conditions: bool,
    /// Workloads whose condition (address validity) needs recomputing.
    pub workloads: BTreeSet<ObjKey>,
    /// Namespaces whose authorization and egress policies or defaults (annotations) may
    /// have changed.
    pub inbound_policies: BTreeSet<String>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.inbound_servers.is_empty()
            && self.inbound_services.is_empty()
            && self.inbound_members.is_empty()
            && !self.conditions
            && self.workloads.is_empty()
            && self.inbound_policies.is_empty()
    }
}

/// The Pods an EndpointSlice's endpoints point at.
fn slice_pods(s: &EndpointSlice) -> impl Iterator<Item = ObjKey> + '_ {
    let ns = s.namespace().unwrap_or_else(|| "default".into());
    s.endpoints.iter().filter_map(move |e| {
        let t = e.target_ref.as_ref()?;
        if t.kind.as_deref() != Some("Pod") {
            return None;
        }
        Some(ObjKey::new(
            t.namespace.clone().unwrap_or_else(|| ns.clone()),
            t.name.clone()?,
        ))
    })
}

fn slice_service(s: &EndpointSlice) -> Option<ObjKey> {
    let name = s.labels().get(SERVICE_NAME_LABEL)?;
    Some(ObjKey::new(
        s.namespace().unwrap_or_else(|| "default".into()),
        name.clone(),
    ))
}

impl Objects {
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::Pod => self.pods.len(),
            Kind::Workload => self.workloads.len(),
            Kind::Server => self.servers.len(),
            Kind::BackendPolicy => self.policies.len(),
            Kind::HttpRoute => self.http_routes.len(),
            Kind::GrpcRoute => self.grpc_routes.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::AuthorizationPolicy => self.authorizations.len(),
            Kind::EgressPolicy => self.egresses.len(),
        }
    }

    fn keys(&self, kind: Kind) -> Vec<ObjKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Workload => self.workloads.keys().cloned().collect(),
            Kind::Server => self.servers.keys().cloned().collect(),
            Kind::BackendPolicy => self.policies.keys().cloned().collect(),
            Kind::HttpRoute => self.http_routes.keys().cloned().collect(),
            Kind::GrpcRoute => self.grpc_routes.keys().cloned().collect(),
            Kind::Namespace => self.namespaces.keys().cloned().collect(),
            Kind::AuthorizationPolicy => self.authorizations.keys().cloned().collect(),
            Kind::EgressPolicy => self.egresses.keys().cloned().collect(),
        }
    }

    fn get(&self, kind: Kind, key: &ObjKey) -> Option<Object> {
        Some(match kind {
            Kind::Service => Object::Service(self.services.get(key)?.clone()),
            Kind::EndpointSlice => Object::EndpointSlice(self.slices.get(key)?.clone()),
            Kind::Pod => Object::Pod(self.pods.get(key)?.clone()),
            Kind::Workload => Object::Workload(self.workloads.get(key)?.clone()),
            Kind::Server => Object::Server(self.servers.get(key)?.clone()),
            Kind::BackendPolicy => Object::BackendPolicy(self.policies.get(key)?.clone()),
            Kind::HttpRoute => Object::HttpRoute(self.http_routes.get(key)?.clone()),
            Kind::GrpcRoute => Object::GrpcRoute(self.grpc_routes.get(key)?.clone()),
            Kind::Namespace => Object::Namespace(self.namespaces.get(key)?.clone()),
            Kind::AuthorizationPolicy => {
                Object::AuthorizationPolicy(self.authorizations.get(key)?.clone())
            }
            Kind::EgressPolicy => Object::EgressPolicy(self.egresses.get(key)?.clone()),
        })
    }

    /// Applies one change and records what it touched.
    pub fn apply(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Apply(obj) => self.upsert(obj, dirty),
            Change::Delete(kind, key) => self.remove(kind, &key, dirty),
            Change::Reset(kind, objs) => {
                let keep: BTreeSet<ObjKey> = objs.iter().map(Object::key).collect();
                for key in self.keys(kind) {
                    if !keep.contains(&key) {
                        self.remove(kind, &key, dirty);
                    }
                }
                for obj in objs {
                    self.upsert(obj, dirty);
                }
            }
        }
    }

    fn upsert(&mut self, obj: Object, dirty: &mut Dirty) {
        let key = obj.key();
        if let Some(old) = self.get(obj.kind(), &key) {
            if old.same(&obj) {
                return;
            }
            // Whatever the old version touched is touched too (labels, parents, targets).
            self.touch(&old, dirty);
        }
        self.touch(&obj, dirty);
        match obj {
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                if let Some(old) = self.slices.get(&key).cloned() {
                    self.unlink_slice(&old, &key);
                }
                if let Some(svc) = slice_service(&o) {
                    self.slices_by_service
                        .entry(svc)
                        .or_default()
                        .insert(key.clone());
                }
                for pod in slice_pods(&o) {
                    self.slices_by_pod
                        .entry(pod)
                        .or_default()
                        .insert(key.clone());
                }
                self.slices.insert(key, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key, o);
            }
            Object::Workload(o) => {
                if let Some(old) = self.workloads.get(&key).cloned() {
                    self.unindex_workload(&key, &old);
                }
                for (k, v) in o.labels() {
                    self.workloads_by_label
                        .entry((key.namespace.clone(), k.clone(), v.clone()))
                        .or_default()
                        .insert(key.clone());
                }
                self.workloads.insert(key, o);
            }
            Object::Server(o) => {
                self.servers.insert(key, o);
            }
            Object::BackendPolicy(o) => {
                self.policies.insert(key, o);
            }
            Object::HttpRoute(o) => {
                self.http_routes.insert(key, o);
            }
            Object::GrpcRoute(o) => {
                self.grpc_routes.insert(key, o);
            }
            Object::Namespace(o) => {
                self.namespaces.insert(key, o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorizations.insert(key, o);
            }
            Object::EgressPolicy(o) => {
                self.egresses.insert(key, o);
            }
        }
    }

    fn unindex_workload(&mut self, key: &ObjKey, old: &Workload) {
        for (k, v) in old.labels() {
            let label = (key.namespace.clone(), k.clone(), v.clone());
            if let Some(set) = self.workloads_by_label.get_mut(&label) {
                set.remove(key);
                if set.is_empty() {
                    self.workloads_by_label.remove(&label);
                }
            }
        }
    }

    /// The Workloads a Service's selector picks (none without a selector), through the label
    /// index: the shortest posting list of the selector's labels, then a full check.
    pub fn selected_workloads<'a>(
        &'a self,
        svc: &'a Service,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Workload>)> + 'a {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
        let shortest = selector.and_then(|sel| {
            sel.iter()
                .map(|(k, v)| {
                    self.workloads_by_label
                        .get(&(namespace.to_string(), k.clone(), v.clone()))
                })
                .try_fold(None::<&BTreeSet<ObjKey>>, |best, set| {
                    let set = set?;
                    Some(Some(match best {
                        Some(b) if b.len() <= set.len() => b,
                        _ => set,
                    }))
                })
                .flatten()
        });
        shortest
            .into_iter()
            .flatten()
            .filter_map(|k| self.workloads.get_key_value(k))
            .filter(move |(_, w)| selects(svc, w.labels()))
    }

    fn unlink_slice(&mut self, old: &EndpointSlice, slice: &ObjKey) {
        fn unlink(map: &mut BTreeMap<ObjKey, BTreeSet<ObjKey>>, k: &ObjKey, slice: &ObjKey) {
            if let Some(set) = map.get_mut(k) {
                set.remove(slice);
                if set.is_empty() {
                    map.remove(k);
                }
            }
        }
        if let Some(svc) = slice_service(old) {
            unlink(&mut self.slices_by_service, &svc, slice);
        }
        for pod in slice_pods(old) {
            unlink(&mut self.slices_by_pod, &pod, slice);
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjKey, dirty: &mut Dirty) {
        let Some(old) = self.get(kind, key) else {
            return;
        };
        self.touch(&old, dirty);
        match kind {
            Kind::Service => {
                self.services.remove(key);
            }
            Kind::EndpointSlice => {
                if let Some(old) = self.slices.remove(key) {
                    self.unlink_slice(&old, key);
                }
            }
            Kind::Pod => {
                self.pods.remove(key);
            }
            Kind::Workload => {
                if let Some(old) = self.workloads.remove(key) {
                    self.unindex_workload(key, &old);
                }
            }
            Kind::Server => {
                self.servers.remove(key);
            }
            Kind::BackendPolicy => {
                self.policies.remove(key);
            }
            Kind::HttpRoute => {
                self.http_routes.remove(key);
            }
            Kind::GrpcRoute => {
                self.grpc_routes.remove(key);
            }
            Kind::Namespace => {
                self.namespaces.remove(key);
            }
            Kind::AuthorizationPolicy => {
                self.authorizations.remove(key);
            }
            Kind::EgressPolicy => {
                self.egresses.remove(key);
            }
        }
    }

    /// Marks what depends on `obj`.
    fn touch(&self, obj: &Object, dirty: &mut Dirty) {
        match obj {
            Object::Service(s) => {
                let key = ObjKey::of(s.as_ref());
                // Inbound policy falls back to the `appProtocol` of selecting Services.
                dirty.inbound_services.insert(key.namespace.clone());
                dirty.services.insert(key);
                // Routes' ResolvedRefs depend on which Services exist.
                dirty.conditions = true;
            }
            Object::EndpointSlice(s) => {
                if let Some(svc) = slice_service(s) {
                    dirty.services.insert(svc);
                }
            }
            Object::Pod(p) => {
                self.touch_selecting(&p.key.namespace, &p.labels, dirty);
                for slice in self.slices_by_pod.get(&p.key).into_iter().flatten() {
                    if let Some(svc) = self.slices.get(slice).and_then(|s| slice_service(s)) {
                        dirty.services.insert(svc);
                    }
                }
                dirty
                    .inbound_members
                    .insert((WorkloadKind::Pod, p.key.clone()));
            }
            Object::Workload(w) => {
                let key = ObjKey::of(w.as_ref());
                self.touch_selecting(&key.namespace, w.labels(), dirty);
                dirty
                    .inbound_members
                    .insert((WorkloadKind::Workload, key.clone()));
                // A proxy naming itself as the pod of that name gets the Workload when no
                // Pod exists (local mode, see `inbound::Member::of`).
                dirty
                    .inbound_members
                    .insert((WorkloadKind::Pod, key.clone()));
                // Workloads carry an Accepted condition (address validity).
                dirty.workloads.insert(key);
            }
            Object::Server(s) => {
                let namespace = ObjKey::of(s.as_ref()).namespace;
                // Endpoints carry the protocol their Server declares: every Service of the
                // namespace may have endpoints the Server selects.
                let start = ObjKey::new(namespace.clone(), "");
                dirty.services.extend(
                    self.services
                        .range(start..)
                        .take_while(|(k, _)| k.namespace == namespace)
                        .map(|(k, _)| k.clone()),
                );
                // Policies' conditions say whether the Server they target exists.
                dirty.inbound_policies.insert(namespace.clone());
                dirty.inbound_servers.insert(namespace);
            }
            Object::BackendPolicy(p) => {
                let key = ObjKey::of(p.as_ref());
                let t = &p.spec.target_ref;
                match t.kind.as_str() {
                    "Service" => {
                        dirty
                            .services
                            .insert(ObjKey::new(key.namespace.clone(), t.name.clone()));
                    }
                    "HTTPRoute" => {
                        let rk = ObjKey::new(key.namespace.clone(), t.name.clone());
                        if let Some(r) = self.http_routes.get(&rk) {
                            dirty.services.extend(crate::routes::http_parents(r));
                        }
                    }
                    "GRPCRoute" => {
                        let rk = ObjKey::new(key.namespace.clone(), t.name.clone());
                        if let Some(r) = self.grpc_routes.get(&rk) {
                            dirty.services.extend(crate::routes::grpc_parents(r));
                        }
                    }
                    _ => {}
                }
                dirty.conditions = true;
            }
            Object::HttpRoute(r) => {
                dirty.services.extend(crate::routes::http_parents(r));
                dirty.conditions = true;
            }
            Object::GrpcRoute(r) => {
                dirty.services.extend(crate::routes::grpc_parents(r));
                dirty.conditions = true;
            }
            Object::Namespace(n) => {
                dirty.inbound_policies.insert(n.name.clone());
            }
            Object::AuthorizationPolicy(p) => {
                dirty
                    .inbound_policies
                    .insert(ObjKey::of(p.as_ref()).namespace);
            }
            Object::EgressPolicy(p) => {
                dirty
                    .inbound_policies
                    .insert(ObjKey::of(p.as_ref()).namespace);
            }
        }
    }

    /// Marks the Services in `namespace` whose selector matches `labels`.
    fn touch_selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        dirty: &mut Dirty,
    ) {
        let start = ObjKey::new(namespace, "");
        for (key, svc) in self.services.range(start..) {
            if key.namespace != namespace {
                break;
            }
            if selects(svc, labels) {
                dirty.services.insert(key.clone());
            }
        }
    }
}

/// Whether a Service's selector picks an object with these labels (an empty or missing
/// selector picks nothing, as in Kubernetes).
pub fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    match svc.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use kube::api::ObjectMeta;

    fn svc(ns: &str, name: &str, selector: &[(&str, &str)]) -> Object {
        Object::Service(Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }))
    }

    fn slice(ns: &str, name: &str, service: &str) -> Object {
        Object::EndpointSlice(Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }))
    }

    #[test]
    fn slices_mark_their_service_and_reset_deletes_the_rest() {
        let mut objs = Objects::default();
        let mut d = Dirty::default();
        objs.apply(Change::Apply(svc("a", "web", &[("app", "web")])), &mut d);
        objs.apply(Change::Apply(slice("a", "web-1", "web")), &mut d);
        assert_eq!(objs.slices_by_service[&ObjKey::new("a", "web")].len(), 1);

        let mut d = Dirty::default();
        objs.apply(Change::Apply(slice("a", "web-1", "web")), &mut d);
        assert!(d.is_empty(), "unchanged object marks nothing: {d:?}");

        let mut d = Dirty::default();
        objs.apply(Change::Reset(Kind::EndpointSlice, vec![]), &mut d);
        assert!(d.services.contains(&ObjKey::new("a", "web")));
        assert!(objs.slices.is_empty());
        assert!(objs.slices_by_service.is_empty());
        assert!(objs.slices_by_pod.is_empty());
    }

    #[test]
    fn pods_mark_selecting_services_in_their_namespace_only() {
        let mut objs = Objects::default();
        let mut d = Dirty::default();
        objs.apply(Change::Apply(svc("a", "web", &[("app", "web")])), &mut d);
        objs.apply(Change::Apply(svc("a", "db", &[("app", "db")])), &mut d);
        objs.apply(Change::Apply(svc("b", "web", &[("app", "web")])), &mut d);
        let pod = PodInfo {
            key: ObjKey::new("a", "web-1"),
            labels: [("app".to_string(), "web".to_string())].into(),
            service_account: "web".into(),
            meshed: false,
            ports: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        let mut d = Dirty::default();
        objs.apply(Change::Apply(Object::Pod(Arc::new(pod))), &mut d);
        assert_eq!(
            d.services.into_iter().collect::<Vec<_>>(),
            vec![ObjKey::new("a", "web")]
        );
    }
}
