//! Inbound policy: what a proxy should expect on the ports of its workload, and the protocol
//! each port declares (which discovery also hands to client proxies, see [`crate::services`]).
//!
//! A proxy names its workload in the form `ns:<namespace>/pod:<name>` (Kubernetes) or
//! `ns:<namespace>/workload:<name>` (a Workload object). The protocol of a workload port is
//! decided, in order:
//!
//! 1. by the Servers in that namespace whose selector matches the workload's labels and whose
//!    port matches (by number, or by the name of a container or Workload port); with several,
//!    the first by name wins, whatever protocol it says (`Detect` included: a Server is the
//!    more specific statement);
//! 2. else by the `appProtocol` of a port of a Service in the namespace that selects the
//!    workload and whose `targetPort` maps to that port ([`target_port`], the same mapping
//!    discovery uses for endpoint ports); the first by Service name then port order that
//!    declares something ([`app_protocol`]) wins;
//! 3. else the proxy detects the protocol.
//!
//! Each port also gets its mTLS mode (the Server's `tls`, else the default) and its
//! authorization: the rules of the AuthorizationPolicies that target its Server or the
//! namespace, over the default policy. Defaults come from the workload's annotations
//! (`mesh.dev/default-policy`, `mesh.dev/inbound-tls` on the Pod or Workload), else the
//! Namespace's, else the mesh's ([`MeshPolicy`], from the controller's flags). Ports nothing
//! declares share [`WorkloadPolicy::default_port`]: detection, the default mTLS mode, and the
//! namespace-wide rules over the default policy. See [`authorization`] for how policies
//! compile and fail closed.

pub mod authorization;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mesh_core::{
    AppProtocol, Authorization, DefaultPolicy, InboundTls, PortPolicy, Rule, WorkloadPolicy,
};
use mesh_crds::{InboundTlsMode, Server, ServerProtocol};

use crate::objects::{ObjKey, Objects};
use authorization::{AuthTarget, CompiledAuthz, CompiledEgress, Defaults};

/// The mesh-wide defaults and the trust domain, which every port's policy builds on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPolicy {
    pub default_policy: DefaultPolicy,
    pub tls: InboundTls,
    pub trust_domain: String,
}

impl Default for MeshPolicy {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            tls: InboundTls::Permissive,
            trust_domain: "cluster.local".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Pod,
    Workload,
}

/// One workload, as a proxy names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
}

impl WorkloadKey {
    /// Parses `ns:<namespace>/pod:<name>` or `ns:<namespace>/workload:<name>`.
    pub fn parse(workload: &str) -> Result<Self, String> {
        let mut namespace = None;
        let mut who = None;
        for part in workload.split('/') {
            match part.split_once(':') {
                Some(("ns", ns)) if !ns.is_empty() => namespace = Some(ns),
                Some(("pod", n)) if !n.is_empty() => who = Some((WorkloadKind::Pod, n)),
                Some(("workload", n)) if !n.is_empty() => who = Some((WorkloadKind::Workload, n)),
                _ => {}
            }
        }
        match (namespace, who) {
            (Some(ns), Some((kind, name))) => Ok(Self {
                namespace: ns.into(),
                kind,
                name: name.into(),
            }),
            _ => Err(format!(
                "workload '{workload}' is not of the form ns:<namespace>/pod:<name> or ns:<namespace>/workload:<name>"
            )),
        }
    }

    pub fn port(&self, port: u16) -> InboundKey {
        InboundKey {
            namespace: self.namespace.clone(),
            kind: self.kind,
            name: self.name.clone(),
            port,
        }
    }

    /// The key of the Pod or Workload object.
    pub fn object(&self) -> ObjKey {
        ObjKey::new(self.namespace.clone(), self.name.clone())
    }
}

/// One watched workload port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    pub port: u16,
}

impl InboundKey {
    /// Parses the proxy's workload name and port.
    pub fn parse(workload: &str, port: u32) -> Result<Self, String> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {port} is not a TCP port"))?;
        Ok(WorkloadKey::parse(workload)?.port(port))
    }
}

/// What the proxy is told about a port: `server` is the `namespace/name` of the Server that
/// applies, empty when none does (also when the protocol comes from a Service's
/// `appProtocol`).
pub type InboundState = PortPolicy;

/// The policy of every port of one workload.
pub type WorkloadPorts = WorkloadPolicy;

/// The model's mTLS mode for a Server's.
pub fn server_tls(t: InboundTlsMode) -> InboundTls {
    match t {
        InboundTlsMode::Permissive => InboundTls::Permissive,
        InboundTlsMode::Strict => InboundTls::Strict,
        InboundTlsMode::Disabled => InboundTls::Disabled,
    }
}

/// The model's protocol for a Server's.
pub fn server_protocol(p: ServerProtocol) -> AppProtocol {
    match p {
        ServerProtocol::Detect => AppProtocol::Detect,
        ServerProtocol::Http1 => AppProtocol::Http1,
        ServerProtocol::Http2 => AppProtocol::Http2,
        ServerProtocol::Grpc => AppProtocol::Grpc,
        ServerProtocol::Opaque => AppProtocol::Opaque,
    }
}

/// The protocol a Service port's `appProtocol` declares (case-insensitive): opaque TCP for
/// `tcp`, `mesh.dev/opaque` and the server-speaks-first protocols, HTTP/1, HTTP/2 (h2c) or
/// gRPC for their names; anything else (or nothing) declares nothing.
pub fn app_protocol(value: Option<&str>) -> AppProtocol {
    let Some(v) = value else {
        return AppProtocol::Detect;
    };
    match v.to_ascii_lowercase().as_str() {
        "tcp" | "mesh.dev/opaque" | "mysql" | "mariadb" | "postgresql" | "redis" | "mongodb"
        | "smtp" => AppProtocol::Opaque,
        "http" | "kubernetes.io/http" => AppProtocol::Http1,
        "kubernetes.io/h2c" | "http2" | "h2c" => AppProtocol::Http2,
        "grpc" => AppProtocol::Grpc,
        _ => AppProtocol::Detect,
    }
}

/// The workload port a Service port sends to: `targetPort` as a number, or as the name of a
/// container (or Workload) port looked up with `named`; without `targetPort`, the Service
/// port itself. `None` when it names no port of this workload.
pub fn target_port(sp: &ServicePort, named: impl Fn(&str) -> Option<u16>) -> Option<u16> {
    let port = match &sp.target_port {
        None => u16::try_from(sp.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => named(name),
    };
    port.filter(|p| *p > 0)
}

/// The first Server (of `servers`, sorted by name) that selects a workload with `labels` and
/// covers its `port` (by number, or by a port name that `named` maps to it).
pub fn server_for<'a>(
    servers: &'a [Arc<Server>],
    labels: &BTreeMap<String, String>,
    named: impl Fn(&str) -> Option<u16>,
    port: u16,
) -> Option<&'a Arc<Server>> {
    servers.iter().find(|s| {
        let port_matches = match &s.spec.port {
            IntOrString::Int(n) => i64::from(*n) == i64::from(port),
            IntOrString::String(name) => named(name) == Some(port),
        };
        port_matches
            && s.spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    })
}

/// The labels, named ports and policy defaults of one Pod or Workload.
#[derive(Debug, Default, PartialEq)]
pub struct Member {
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    defaults: Defaults,
}

impl Member {
    /// The current Pod or Workload, if it exists. A proxy that names itself as a pod
    /// (`ns:<ns>/pod:<name>`, as injected proxies do) while no Pod of that name exists gets
    /// the Workload of the same namespace and name: in local mode, where there are no Pod
    /// objects, a Workload file registers the pod.
    pub fn of(objs: &Objects, kind: WorkloadKind, key: &ObjKey) -> Option<Self> {
        match kind {
            WorkloadKind::Pod => match objs.pods.get(key) {
                Some(p) => Some(Member {
                    labels: p.labels.clone(),
                    ports: p.ports.clone(),
                    defaults: Defaults::from_annotations(&p.annotations),
                }),
                None => Self::of(objs, WorkloadKind::Workload, key),
            },
            WorkloadKind::Workload => objs.workloads.get(key).map(|w| Member {
                labels: w.labels().clone(),
                ports: w
                    .spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.port))
                    .collect(),
                defaults: Defaults::from_annotations(w.annotations()),
            }),
        }
    }

    fn named(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }

    /// What is wrong with its annotations.
    pub fn problems(&self) -> &[String] {
        &self.defaults.problems
    }
}

/// The part of a Service inbound policy needs: its selector and the ports that declare an
/// `appProtocol`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredService {
    selector: BTreeMap<String, String>,
    /// Each port that declares a protocol, in the Service's order.
    ports: Vec<(ServicePort, AppProtocol)>,
}

impl DeclaredService {
    fn of(svc: &Service) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let selector = spec.selector.clone().filter(|s| !s.is_empty())?;
        let ports: Vec<(ServicePort, AppProtocol)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.clone(), app_protocol(p.app_protocol.as_deref())))
            .filter(|(_, proto)| !proto.is_detect())
            .collect();
        (!ports.is_empty()).then_some(Self { selector, ports })
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The inbound-relevant objects of one namespace, updated in place: the Servers when one
/// changes, the Services that declare an `appProtocol` when a Service changes, one member
/// when its Pod or Workload changes.
#[derive(Debug, Default)]
pub struct NamespaceInbound {
    servers: Vec<Arc<Server>>,
    services: Vec<DeclaredService>,
    members: HashMap<(WorkloadKind, String), Member>,
    /// AuthorizationPolicies in force, by name.
    authz: Vec<Arc<CompiledAuthz>>,
    /// EgressPolicies in force, by name.
    egress: Vec<CompiledEgress>,
    /// The Namespace's annotations.
    defaults: Defaults,
}

impl NamespaceInbound {
    /// The Servers of a namespace, by name.
    pub fn servers_of(objs: &Objects, namespace: &str) -> Vec<Arc<Server>> {
        let start = ObjKey::new(namespace, "");
        objs.servers
            .range(start..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The Services of a namespace that select workloads and declare an `appProtocol`, by
    /// name.
    pub fn services_of(objs: &Objects, namespace: &str) -> Vec<DeclaredService> {
        let start = ObjKey::new(namespace, "");
        objs.services
            .range(start..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter_map(|(_, s)| DeclaredService::of(s))
            .collect()
    }

    pub fn set_servers(&mut self, servers: Vec<Arc<Server>>) {
        self.servers = servers;
    }

    pub fn set_services(&mut self, services: Vec<DeclaredService>) {
        self.services = services;
    }

    pub fn set_policies(&mut self, authz: Vec<Arc<CompiledAuthz>>, egress: Vec<CompiledEgress>) {
        self.authz = authz;
        self.egress = egress;
    }

    pub fn set_defaults(&mut self, defaults: Defaults) {
        self.defaults = defaults;
    }

    pub fn set_member(&mut self, kind: WorkloadKind, name: &str, member: Option<Member>) {
        match member {
            Some(m) => {
                self.members.insert((kind, name.to_string()), m);
            }
            None => {
                self.members.remove(&(kind, name.to_string()));
            }
        }
    }

    fn member(&self, kind: WorkloadKind, name: &str) -> Option<&Member> {
        self.members.get(&(kind, name.to_string()))
    }

    /// The policy of one port of a workload.
    pub fn state(&self, key: &InboundKey, mesh: &MeshPolicy) -> InboundState {
        let empty = Member::default();
        let member = self.member(key.kind, &key.name).unwrap_or(&empty);
        let ctx = self.context(member, mesh);
        self.port_state(&key.namespace, member, key.port, &ctx)
            .unwrap_or_else(|| self.default_port(&ctx))
    }

    /// The defaults and namespace-wide rules that apply to a member.
    fn context<'a>(&'a self, member: &Member, mesh: &'a MeshPolicy) -> PortContext<'a> {
        PortContext {
            policy: member
                .defaults
                .policy
                .or(self.defaults.policy)
                .unwrap_or(mesh.default_policy),
            tls: member
                .defaults
                .tls
                .or(self.defaults.tls)
                .unwrap_or(mesh.tls),
            namespace_rules: self
                .authz
                .iter()
                .filter(|a| a.target == AuthTarget::Namespace)
                .flat_map(|a| a.rules.iter())
                .collect(),
            trust_domain: &mesh.trust_domain,
        }
    }

    fn authorization(&self, ctx: &PortContext, server: Option<&str>) -> Authorization {
        let mut rules: Vec<Rule> = Vec::new();
        if let Some(name) = server {
            for a in &self.authz {
                if matches!(&a.target, AuthTarget::Server(s) if s == name) {
                    rules.extend(a.rules.iter().cloned());
                }
            }
        }
        rules.extend(ctx.namespace_rules.iter().map(|r| (*r).clone()));
        Authorization::new(ctx.policy, rules, ctx.trust_domain)
    }

    fn default_port(&self, ctx: &PortContext) -> PortPolicy {
        PortPolicy {
            server: String::new(),
            protocol: AppProtocol::Detect,
            tls: ctx.tls,
            authorization: self.authorization(ctx, None),
        }
    }

    /// The policy of a port something declares (a Server, or a Service's `appProtocol`).
    fn port_state(
        &self,
        namespace: &str,
        member: &Member,
        port: u16,
        ctx: &PortContext,
    ) -> Option<PortPolicy> {
        if let Some(s) = server_for(&self.servers, &member.labels, |n| member.named(n), port) {
            let name = s.name_any();
            return Some(PortPolicy {
                server: format!("{namespace}/{name}"),
                protocol: server_protocol(s.spec.protocol),
                tls: s.spec.tls.map(server_tls).unwrap_or(ctx.tls),
                authorization: self.authorization(ctx, Some(&name)),
            });
        }
        for svc in self.services.iter().filter(|s| s.selects(&member.labels)) {
            for (sp, proto) in &svc.ports {
                if target_port(sp, |n| member.named(n)) == Some(port) {
                    return Some(PortPolicy {
                        server: String::new(),
                        protocol: *proto,
                        tls: ctx.tls,
                        authorization: self.authorization(ctx, None),
                    });
                }
            }
        }
        None
    }

    /// The policy of every port of a workload: the declared ones, the default for the rest,
    /// and its egress. A workload the index does not know (yet) has no labels, annotations
    /// or named ports: only Servers that select everything by port number apply to it, and
    /// the namespace's and mesh's defaults.
    pub fn workload_state(&self, key: &WorkloadKey, mesh: &MeshPolicy) -> WorkloadPorts {
        let empty = Member::default();
        let member = self.member(key.kind, &key.name).unwrap_or(&empty);
        let ctx = self.context(member, mesh);
        let mut candidates: BTreeSet<u16> = BTreeSet::new();
        for s in &self.servers {
            if !s
                .spec
                .selector
                .iter()
                .all(|(k, v)| member.labels.get(k) == Some(v))
            {
                continue;
            }
            let port = match &s.spec.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => member.named(name),
            };
            candidates.extend(port.filter(|p| *p > 0));
        }
        for svc in self.services.iter().filter(|s| s.selects(&member.labels)) {
            for (sp, _) in &svc.ports {
                candidates.extend(target_port(sp, |n| member.named(n)));
            }
        }
        let ports = candidates
            .into_iter()
            .filter_map(|port| {
                self.port_state(&key.namespace, member, port, &ctx)
                    .map(|st| (port, st))
            })
            .collect();
        // The first EgressPolicy (by name) that selects the workload applies.
        let egress = self
            .egress
            .iter()
            .find(|e| {
                e.selector
                    .iter()
                    .all(|(k, v)| member.labels.get(k) == Some(v))
            })
            .map(|e| e.egress.clone());
        WorkloadPolicy {
            ports,
            default_port: self.default_port(&ctx),
            egress,
        }
    }
}

/// What every port of one member shares.
struct PortContext<'a> {
    policy: DefaultPolicy,
    tls: InboundTls,
    namespace_rules: Vec<&'a Rule>,
    trust_domain: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_names() {
        let k = InboundKey::parse("ns:shop/pod:web-1", 8080).unwrap();
        assert_eq!(k.kind, WorkloadKind::Pod);
        assert_eq!(
            (k.namespace.as_str(), k.name.as_str(), k.port),
            ("shop", "web-1", 8080)
        );
        let k = InboundKey::parse("ns:shop/workload:vm-1", 80).unwrap();
        assert_eq!(k.kind, WorkloadKind::Workload);
        assert!(InboundKey::parse("web-1", 80).is_err());
        assert!(InboundKey::parse("ns:shop/pod:web", 70000).is_err());
        let w = WorkloadKey::parse("ns:shop/workload:vm-1").unwrap();
        assert_eq!(
            w.port(80),
            InboundKey::parse("ns:shop/workload:vm-1", 80).unwrap()
        );
        assert!(WorkloadKey::parse("ns:shop").is_err());
    }

    #[test]
    fn app_protocol_values() {
        for v in [
            "tcp",
            "TCP",
            "mesh.dev/opaque",
            "mysql",
            "MariaDB",
            "postgresql",
            "redis",
            "mongodb",
            "smtp",
        ] {
            assert_eq!(app_protocol(Some(v)), AppProtocol::Opaque, "{v}");
        }
        for v in ["http", "kubernetes.io/http", "HTTP"] {
            assert_eq!(app_protocol(Some(v)), AppProtocol::Http1, "{v}");
        }
        for v in ["kubernetes.io/h2c", "http2", "h2c"] {
            assert_eq!(app_protocol(Some(v)), AppProtocol::Http2, "{v}");
        }
        assert_eq!(app_protocol(Some("gRPC")), AppProtocol::Grpc);
        for v in [Some("kubernetes.io/ws"), Some("https"), Some(""), None] {
            assert_eq!(app_protocol(v), AppProtocol::Detect, "{v:?}");
        }
    }

    fn server(
        name: &str,
        selector: &[(&str, &str)],
        port: IntOrString,
        p: ServerProtocol,
    ) -> Arc<Server> {
        let mut s = Server::new(
            name,
            mesh_crds::ServerSpec {
                selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                port,
                protocol: p,
                tls: None,
            },
        );
        s.metadata.namespace = Some("shop".into());
        Arc::new(s)
    }

    fn service(selector: &[(&str, &str)], ports: Vec<ServicePort>) -> Service {
        Service {
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(port: i32, target: Option<IntOrString>, app: Option<&str>) -> ServicePort {
        ServicePort {
            port,
            target_port: target,
            app_protocol: app.map(Into::into),
            ..Default::default()
        }
    }

    fn db_namespace() -> NamespaceInbound {
        let mut ns = NamespaceInbound::default();
        ns.set_member(
            WorkloadKind::Workload,
            "db-1",
            Some(Member {
                labels: [("app".to_string(), "db".to_string())].into(),
                ports: [("mysql".to_string(), 13306), ("admin".to_string(), 9000)].into(),
                defaults: Defaults::default(),
            }),
        );
        ns
    }

    #[test]
    fn target_ports_map_by_number_name_or_default() {
        let named = |n: &str| (n == "mysql").then_some(13306);
        assert_eq!(target_port(&port(3306, None, None), named), Some(3306));
        assert_eq!(
            target_port(&port(3306, Some(IntOrString::Int(13306)), None), named),
            Some(13306)
        );
        assert_eq!(
            target_port(
                &port(3306, Some(IntOrString::String("mysql".into())), None),
                named
            ),
            Some(13306)
        );
        assert_eq!(
            target_port(
                &port(3306, Some(IntOrString::String("other".into())), None),
                named
            ),
            None
        );
        assert_eq!(
            target_port(&port(3306, Some(IntOrString::Int(0)), None), named),
            None
        );
    }

    #[test]
    fn app_protocol_is_the_fallback_through_the_target_port_and_a_server_wins() {
        let mut ns = db_namespace();
        let mesh = MeshPolicy::default();
        let key = WorkloadKey::parse("ns:shop/workload:db-1").unwrap();
        assert!(ns.workload_state(&key, &mesh).ports.is_empty());
        // Port 3306 sends to the named port 13306, which is what the proxy sees.
        let svc = service(
            &[("app", "db")],
            vec![
                port(
                    3306,
                    Some(IntOrString::String("mysql".into())),
                    Some("mysql"),
                ),
                port(80, Some(IntOrString::Int(8080)), Some("kubernetes.io/ws")),
            ],
        );
        ns.set_services(DeclaredService::of(&svc).into_iter().collect());
        assert_eq!(ns.state(&key.port(3306), &mesh), InboundState::default());
        let st = ns.state(&key.port(13306), &mesh);
        assert_eq!((st.server.as_str(), st.protocol), ("", AppProtocol::Opaque));
        assert_eq!(
            ns.workload_state(&key, &mesh)
                .ports
                .into_iter()
                .collect::<Vec<_>>(),
            vec![(13306, st.clone())]
        );
        // A Server on the same port says something else: it is more specific, it wins, even
        // with Detect.
        ns.set_servers(vec![server(
            "mysql",
            &[("app", "db")],
            IntOrString::String("mysql".into()),
            ServerProtocol::Detect,
        )]);
        let st = ns.state(&key.port(13306), &mesh);
        assert_eq!(
            (st.server.as_str(), st.protocol),
            ("shop/mysql", AppProtocol::Detect)
        );
        // A Server on another port adds that port; one that selects other labels adds nothing.
        ns.set_servers(vec![
            server(
                "admin",
                &[("app", "db")],
                IntOrString::Int(9000),
                ServerProtocol::Http1,
            ),
            server(
                "web",
                &[("app", "web")],
                IntOrString::Int(80),
                ServerProtocol::Opaque,
            ),
        ]);
        let ports = ns.workload_state(&key, &mesh).ports;
        assert_eq!(
            ports.keys().copied().collect::<BTreeSet<_>>(),
            [9000, 13306].into()
        );
        assert_eq!(ports[&9000].protocol, AppProtocol::Http1);
        assert_eq!(ports[&13306].protocol, AppProtocol::Opaque);
        // A Service that does not select the workload declares nothing for it.
        ns.set_servers(vec![]);
        let other = service(&[("app", "web")], vec![port(13306, None, Some("tcp"))]);
        ns.set_services(DeclaredService::of(&other).into_iter().collect());
        assert!(ns.workload_state(&key, &mesh).ports.is_empty());
    }

    #[test]
    fn a_pod_without_a_pod_object_gets_the_workload_of_its_name() {
        use crate::objects::{Change, Dirty, Kind, Object, PodInfo};
        let mut objs = Objects::default();
        let mut w = mesh_crds::Workload::new(
            "web-1",
            mesh_crds::WorkloadSpec {
                address: "10.0.0.5".into(),
                ports: vec![mesh_crds::WorkloadPort {
                    name: "http".into(),
                    port: 8080,
                }],
                ..Default::default()
            },
        );
        w.metadata.namespace = Some("shop".into());
        w.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let mut d = Dirty::default();
        objs.apply(Change::Apply(Object::Workload(Arc::new(w))), &mut d);
        let key = ObjKey::new("shop", "web-1");
        // The Workload's change reaches proxies that name themselves either way.
        assert!(d
            .inbound_members
            .contains(&(WorkloadKind::Pod, key.clone())));
        assert!(d
            .inbound_members
            .contains(&(WorkloadKind::Workload, key.clone())));

        let as_pod = Member::of(&objs, WorkloadKind::Pod, &key).unwrap();
        assert_eq!(
            as_pod,
            Member::of(&objs, WorkloadKind::Workload, &key).unwrap()
        );
        assert_eq!(as_pod.labels["app"], "web");
        assert_eq!(as_pod.named("http"), Some(8080));
        assert!(Member::of(&objs, WorkloadKind::Pod, &ObjKey::new("shop", "web-2")).is_none());

        // The pod's inbound policy is the Workload's: a Server selecting app=web by port name.
        let mut ns = NamespaceInbound::default();
        ns.set_member(WorkloadKind::Pod, "web-1", Some(as_pod));
        ns.set_servers(vec![server(
            "web",
            &[("app", "web")],
            IntOrString::String("http".into()),
            ServerProtocol::Http1,
        )]);
        let mesh = MeshPolicy::default();
        let pod = WorkloadKey::parse("ns:shop/pod:web-1").unwrap();
        let ports = ns.workload_state(&pod, &mesh).ports;
        assert_eq!(ports[&8080].server, "shop/web");
        assert_eq!(ports[&8080].protocol, AppProtocol::Http1);

        // A real Pod of that name wins over the Workload.
        let p = PodInfo {
            key: key.clone(),
            labels: [("app".to_string(), "api".to_string())].into(),
            service_account: "api".into(),
            meshed: true,
            ports: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        objs.apply(Change::Apply(Object::Pod(Arc::new(p))), &mut d);
        let as_pod = Member::of(&objs, WorkloadKind::Pod, &key).unwrap();
        assert_eq!(as_pod.labels["app"], "api");
        // Deleting the Workload leaves the Pod; deleting both leaves nothing.
        objs.apply(Change::Delete(Kind::Workload, key.clone()), &mut d);
        assert!(Member::of(&objs, WorkloadKind::Pod, &key).is_some());
        objs.apply(Change::Delete(Kind::Pod, key.clone()), &mut d);
        assert!(Member::of(&objs, WorkloadKind::Pod, &key).is_none());
    }
}
