//! Inbound policy: what a proxy should expect on one port of its workload.
//!
//! A proxy names its workload in the form `ns:<namespace>/pod:<name>` (Kubernetes) or
//! `ns:<namespace>/workload:<name>` (a Workload object). The Servers in that namespace whose
//! selector matches the workload's labels and whose port matches (by number, or by the name of
//! a container or Workload port) decide the protocol; with several, the first by name wins.
//! Without one the proxy detects the protocol.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mesh_crds::{Server, ServerProtocol};

use crate::objects::{ObjKey, Objects};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Pod,
    Workload,
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
                port,
            }),
            _ => Err(format!(
                "workload '{workload}' is not of the form ns:<namespace>/pod:<name> or ns:<namespace>/workload:<name>"
            )),
        }
    }
}

/// What the proxy is told about a port.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InboundState {
    /// `namespace/name` of the Server that applies, empty when none does.
    pub server: String,
    pub protocol: ServerProtocol,
}

/// The labels and named ports of one Pod or Workload.
#[derive(Debug, Default, PartialEq)]
pub struct Member {
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
}

impl Member {
    /// The current Pod or Workload, if it exists.
    pub fn of(objs: &Objects, kind: WorkloadKind, key: &ObjKey) -> Option<Self> {
        match kind {
            WorkloadKind::Pod => objs.pods.get(key).map(|p| Member {
                labels: p.labels.clone(),
                ports: p.ports.clone(),
            }),
            WorkloadKind::Workload => objs.workloads.get(key).map(|w| Member {
                labels: w.labels().clone(),
                ports: w
                    .spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.port))
                    .collect(),
            }),
        }
    }
}

/// The inbound-relevant objects of one namespace, updated in place: the Servers when one
/// changes, one member when its Pod or Workload changes.
#[derive(Debug, Default)]
pub struct NamespaceInbound {
    servers: Vec<Arc<Server>>,
    members: HashMap<(WorkloadKind, String), Member>,
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

    pub fn set_servers(&mut self, servers: Vec<Arc<Server>>) {
        self.servers = servers;
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

    pub fn state(&self, key: &InboundKey) -> InboundState {
        let empty = Member::default();
        let member = self
            .members
            .get(&(key.kind, key.name.clone()))
            .unwrap_or(&empty);
        for s in &self.servers {
            let selected = s
                .spec
                .selector
                .iter()
                .all(|(k, v)| member.labels.get(k) == Some(v));
            let port_matches = match &s.spec.port {
                IntOrString::Int(n) => i64::from(*n) == i64::from(key.port),
                IntOrString::String(name) => member.ports.get(name) == Some(&key.port),
            };
            if selected && port_matches {
                return InboundState {
                    server: format!("{}/{}", key.namespace, s.name_any()),
                    protocol: s.spec.protocol,
                };
            }
        }
        InboundState::default()
    }
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
    }
}
