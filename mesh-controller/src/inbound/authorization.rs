//! AuthorizationPolicy and EgressPolicy objects compiled into the model's rules, and the
//! policy defaults that annotations set on Namespaces, Pods and Workloads.
//!
//! Invalid objects never open access. Each policy is compiled on every change; the last
//! version that compiled stays in force while a newer one does not (its `Accepted` condition
//! is then `False`, naming the field). A policy that never compiled, but whose `targetRef`
//! names a port, puts a rule there that admits nobody: the port then allows only what other
//! valid rules allow (fail closed). An invalid annotation value counts as the strictest
//! setting (`deny`, `strict`) and is reported on `/status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use mesh_core::{
    Cidr, ClientMatch, DefaultPolicy, Egress, EgressMatch, Identity, InboundTls, PathMatch,
    Pattern, Rule,
};
use mesh_crds::{
    AuthorizationPolicy, AuthorizationRouteSpec, ClientsSpec, EgressAction, EgressDestination,
    EgressPolicy, PolicyMode,
};

use crate::objects::{Kind, ObjKey, Objects};
use crate::status::{Condition, ObjectStatus, StatusEntry};

/// Annotation with the default authorization policy of a Namespace, Pod or Workload.
pub const DEFAULT_POLICY_ANNOTATION: &str = "mesh.dev/default-policy";
/// Annotation with the default inbound mTLS mode of a Namespace, Pod or Workload.
pub const INBOUND_TLS_ANNOTATION: &str = "mesh.dev/inbound-tls";

/// What an AuthorizationPolicy protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthTarget {
    /// The Server of this name in the policy's namespace.
    Server(String),
    /// Every port of every workload in the policy's namespace.
    Namespace,
}

/// A policy as it applies: its target and its rules (in audit mode when the policy is).
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledAuthz {
    pub target: AuthTarget,
    pub rules: Vec<Rule>,
}

/// The target of a policy; errors name the field.
pub fn target_of(p: &AuthorizationPolicy) -> Result<AuthTarget, String> {
    let t = &p.spec.target_ref;
    let namespace = ObjKey::of(p).namespace;
    match (t.group.as_str(), t.kind.as_str()) {
        ("" | "mesh.dev", "Server") if !t.name.is_empty() => Ok(AuthTarget::Server(t.name.clone())),
        ("" | "core", "Namespace") if t.name == namespace => Ok(AuthTarget::Namespace),
        ("" | "core", "Namespace") => Err(format!(
            "spec.targetRef.name: '{}' is not the policy's namespace '{namespace}'; a policy protects its own namespace only",
            t.name
        )),
        ("" | "mesh.dev", "Server") => Err("spec.targetRef.name: a Server needs a name".into()),
        (g, k) => Err(format!(
            "spec.targetRef: kind '{k}' in group '{g}' is not supported; use kind Server (group mesh.dev) or Namespace"
        )),
    }
}

fn clients(
    c: &ClientsSpec,
    namespace: &str,
    trust_domain: &str,
) -> Result<Vec<ClientMatch>, String> {
    let mut out = Vec::new();
    for (i, id) in c.identities.iter().enumerate() {
        let field = format!("identities[{i}]");
        let ok = if let Some(prefix) = id.strip_suffix('*') {
            prefix.is_empty() || prefix.starts_with("spiffe://")
        } else {
            Identity::parse(id).is_ok()
        };
        if !ok {
            return Err(format!(
                "{field}: '{id}' is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<name>), a prefix of one ending in '*', or '*'"
            ));
        }
        out.push(ClientMatch::Identity(id.clone()));
    }
    for (i, sa) in c.service_accounts.iter().enumerate() {
        let ns = sa.namespace.as_deref().unwrap_or(namespace);
        let id = format!("spiffe://{trust_domain}/ns/{ns}/sa/{}", sa.name);
        Identity::parse(&id).map_err(|e| {
            format!(
                "serviceAccounts[{i}]: '{ns}/{}' gives no valid SPIFFE ID: {e}",
                sa.name
            )
        })?;
        out.push(ClientMatch::Identity(id));
    }
    for (i, ns) in c.namespaces.iter().enumerate() {
        if ns.is_empty() || ns.contains('/') || ns.contains('*') {
            return Err(format!("namespaces[{i}]: '{ns}' is not a namespace name"));
        }
        out.push(ClientMatch::Namespace(ns.clone()));
    }
    if c.authenticated {
        out.push(ClientMatch::Authenticated);
    }
    if c.unauthenticated {
        out.push(ClientMatch::Unauthenticated);
    }
    for (i, n) in c.networks.iter().enumerate() {
        let cidr = Cidr::parse(n).map_err(|e| format!("networks[{i}]: {e}"))?;
        out.push(ClientMatch::Network(cidr));
    }
    if out.is_empty() {
        return Err(
            "lists no client; set identities, serviceAccounts, namespaces, networks, authenticated or unauthenticated"
                .into(),
        );
    }
    Ok(out)
}

fn route(r: &AuthorizationRouteSpec) -> Result<mesh_core::RouteMatch, String> {
    let path = match &r.path {
        None => None,
        Some(p) => Some(match (&p.exact, &p.prefix, &p.regex) {
            (Some(e), None, None) => PathMatch::Exact(e.clone()),
            (None, Some(pre), None) => PathMatch::Prefix(pre.clone()),
            (None, None, Some(re)) => {
                PathMatch::Regex(Pattern::new(re).map_err(|e| format!("path.regex: {}", e.reason))?)
            }
            _ => return Err("path: needs exactly one of exact, prefix or regex".into()),
        }),
    };
    if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path {
        if !p.starts_with('/') {
            return Err(format!("path: '{p}' must start with '/'"));
        }
    }
    if let Some(m) = &r.method {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "method: '{m}' is not an upper-case HTTP method such as GET"
            ));
        }
    }
    let mut headers = Vec::new();
    for (i, h) in r.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(format!(
                "headers[{i}].name: '{}' is not a header name",
                h.name
            ));
        }
        let value = match (&h.exact, &h.regex) {
            (Some(e), None) => mesh_core::route::ValueMatch::Exact(e.clone()),
            (None, Some(re)) => mesh_core::route::ValueMatch::Regex(
                Pattern::new(re).map_err(|e| format!("headers[{i}].regex: {}", e.reason))?,
            ),
            _ => return Err(format!("headers[{i}]: needs exactly one of exact or regex")),
        };
        headers.push(mesh_core::HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value,
        });
    }
    Ok(mesh_core::RouteMatch {
        path,
        method: r.method.clone(),
        headers,
        query_params: Vec::new(),
    })
}

/// Compiles a policy; an error names the field (`spec.rules[0].clients.networks[1]: ...`).
pub fn compile_authorization(
    p: &AuthorizationPolicy,
    trust_domain: &str,
) -> Result<CompiledAuthz, String> {
    let target = target_of(p)?;
    let key = ObjKey::of(p);
    let audit = p.spec.mode == PolicyMode::Audit;
    let mut rules = Vec::with_capacity(p.spec.rules.len());
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in p.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let short = r.name.clone().unwrap_or_else(|| format!("rule-{i}"));
        if short.is_empty() || short.contains('/') {
            return Err(format!(
                "{field}.name: '{short}' must be non-empty, without '/'"
            ));
        }
        if !names.insert(short.clone()) {
            return Err(format!("{field}.name: '{short}' is used by another rule"));
        }
        let clients = clients(&r.clients, &key.namespace, trust_domain).map_err(|e| {
            format!("{field}.clients.{e}").replace(".clients.lists", ".clients: lists")
        })?;
        let routes = r
            .routes
            .iter()
            .enumerate()
            .map(|(j, m)| route(m).map_err(|e| format!("{field}.routes[{j}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule {
            name: format!("{}/{}/{short}", key.namespace, key.name).into(),
            clients,
            routes,
            audit,
        });
    }
    if rules.is_empty() {
        return Err(
            "spec.rules: a policy needs at least one rule (to close a port to everyone, set the default policy `deny`)"
                .into(),
        );
    }
    Ok(CompiledAuthz { target, rules })
}

/// An EgressPolicy as it applies.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledEgress {
    pub selector: BTreeMap<String, String>,
    pub egress: Egress,
}

fn destinations(list: &[EgressDestination], field: &str) -> Result<Vec<EgressMatch>, String> {
    list.iter()
        .enumerate()
        .map(|(i, d)| match (&d.host, &d.network) {
            (Some(h), None) => Ok(EgressMatch::Host(h.to_ascii_lowercase())),
            (None, Some(n)) => Cidr::parse(n)
                .map(EgressMatch::Network)
                .map_err(|e| format!("spec.{field}[{i}].network: {e}")),
            _ => Err(format!(
                "spec.{field}[{i}]: needs exactly one of host or network"
            )),
        })
        .collect()
}

/// Compiles an EgressPolicy; an error names the field.
pub fn compile_egress(p: &EgressPolicy) -> Result<CompiledEgress, String> {
    let key = ObjKey::of(p);
    let egress = Egress {
        name: key.to_string().into(),
        default_allow: p.spec.default_action == EgressAction::Allow,
        allow: destinations(&p.spec.allow, "allow")?,
        deny: destinations(&p.spec.deny, "deny")?,
        audit: p.spec.mode == PolicyMode::Audit,
    };
    egress.validate().map_err(|e| format!("spec.{e}"))?;
    Ok(CompiledEgress {
        selector: p.spec.workload_selector.clone(),
        egress,
    })
}

/// Policy defaults an object's annotations set; an invalid value is the strictest setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    pub policy: Option<DefaultPolicy>,
    pub tls: Option<InboundTls>,
    /// What was wrong with the annotations, for `/status`.
    pub problems: Vec<String>,
}

impl Defaults {
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Self {
        let mut d = Defaults::default();
        if let Some(v) = a.get(DEFAULT_POLICY_ANNOTATION) {
            d.policy = Some(v.trim().parse().unwrap_or_else(|e| {
                d.problems.push(format!(
                    "annotation {DEFAULT_POLICY_ANNOTATION}: {e}; deny is used until it is fixed"
                ));
                DefaultPolicy::Deny
            }));
        }
        if let Some(v) = a.get(INBOUND_TLS_ANNOTATION) {
            d.tls = Some(v.trim().parse().unwrap_or_else(|e| {
                d.problems.push(format!(
                    "annotation {INBOUND_TLS_ANNOTATION}: {e}; strict is used until it is fixed"
                ));
                InboundTls::Strict
            }));
        }
        d
    }
}

/// One policy object's state: what is in force and its condition.
#[derive(Clone, Debug, PartialEq)]
struct Entry<T> {
    /// The version that applies (the last valid one, or the fail-closed stand-in).
    in_force: Option<T>,
    /// Whether `in_force` came from a valid version.
    valid_once: bool,
    condition: Condition,
}

/// Remembers, per policy object, the last valid version, and computes conditions.
#[derive(Default)]
pub struct PolicyMemory {
    authz: BTreeMap<ObjKey, Entry<CompiledAuthz>>,
    egress: BTreeMap<ObjKey, Entry<CompiledEgress>>,
}

/// The fail-closed stand-in for a policy that never compiled: a rule that admits nobody.
fn closed(p: &AuthorizationPolicy, target: AuthTarget) -> CompiledAuthz {
    let key = ObjKey::of(p);
    CompiledAuthz {
        target,
        rules: vec![Rule {
            name: format!("{}/{}/invalid", key.namespace, key.name).into(),
            clients: Vec::new(),
            routes: Vec::new(),
            audit: p.spec.mode == PolicyMode::Audit,
        }],
    }
}

/// One kind's pass of [`PolicyMemory::refresh`]: forgets the objects of `namespace` that are
/// gone, compiles the others (`compile` gives the compiled policy and the Accepted message);
/// an invalid one keeps its last valid version, or, never valid, gets `closed`'s stand-in
/// (with the sentence that says what it does). True when anything changed.
fn refresh_kind<O, C>(
    memory: &mut BTreeMap<ObjKey, Entry<C>>,
    objects: &BTreeMap<ObjKey, Arc<O>>,
    namespace: &str,
    compile: impl Fn(&O) -> Result<(C, String), String>,
    closed: impl Fn(&O) -> (Option<C>, &'static str),
) -> bool
where
    O: kube::Resource,
    C: Clone + PartialEq,
{
    let start = ObjKey::new(namespace, "");
    let present: Vec<ObjKey> = objects
        .range(start..)
        .take_while(|(k, _)| k.namespace == namespace)
        .map(|(k, _)| k.clone())
        .collect();
    let before = memory.len();
    memory.retain(|k, _| k.namespace != namespace || present.contains(k));
    let mut changed = before != memory.len();
    for k in &present {
        let Some(p) = objects.get(k) else {
            continue;
        };
        let p: &O = p;
        let generation = p.meta().generation;
        let old = memory.get(k);
        let entry = match compile(p) {
            Ok((c, message)) => Entry {
                in_force: Some(c),
                valid_once: true,
                condition: Condition::ok("Accepted", "Accepted", &message, generation),
            },
            Err(e) => match old.filter(|o| o.valid_once) {
                Some(o) => Entry {
                    in_force: o.in_force.clone(),
                    valid_once: true,
                    condition: Condition::fail(
                        "Accepted",
                        "Invalid",
                        &format!("{e}; the last valid version stays in force"),
                        generation,
                    ),
                },
                None => {
                    let (in_force, what) = closed(p);
                    let what = if in_force.is_some() { what } else { "" };
                    Entry {
                        in_force,
                        valid_once: false,
                        condition: Condition::fail(
                            "Accepted",
                            "Invalid",
                            &format!("{e}{what}"),
                            generation,
                        ),
                    }
                }
            },
        };
        if old != Some(&entry) {
            memory.insert(k.clone(), entry);
            changed = true;
        }
    }
    changed
}

impl PolicyMemory {
    /// Recompiles the policies of `namespace`; true when anything in force or any condition
    /// changed.
    pub fn refresh(&mut self, objs: &Objects, namespace: &str, trust_domain: &str) -> bool {
        let authz = refresh_kind(
            &mut self.authz,
            &objs.authorizations,
            namespace,
            |p| {
                let c = compile_authorization(p, trust_domain)?;
                let message = match &c.target {
                    AuthTarget::Server(s)
                        if !objs
                            .servers
                            .contains_key(&ObjKey::new(namespace, s.clone())) =>
                    {
                        format!("accepted; Server {namespace}/{s} does not exist, the policy applies once it does")
                    }
                    _ => "accepted".to_string(),
                };
                Ok((c, message))
            },
            |p| match target_of(p) {
                Ok(t) => (
                    Some(closed(p, t)),
                    "; until it is fixed its target allows only what other valid policies allow",
                ),
                Err(_) => (None, ""),
            },
        );
        let egress = refresh_kind(
            &mut self.egress,
            &objs.egresses,
            namespace,
            |p| Ok((compile_egress(p)?, "accepted".to_string())),
            // Fail closed: the selected workloads reach nothing outside the mesh.
            |p| {
                (
                    Some(CompiledEgress {
                        selector: p.spec.workload_selector.clone(),
                        egress: Egress {
                            name: ObjKey::of(p).to_string().into(),
                            default_allow: false,
                            allow: Vec::new(),
                            deny: Vec::new(),
                            audit: p.spec.mode == PolicyMode::Audit,
                        },
                    }),
                    "; until it is fixed the workloads it selects reach no destination outside the mesh",
                )
            },
        );
        authz || egress
    }

    /// The policies in force in a namespace, by name.
    pub fn authz_of(&self, namespace: &str) -> Vec<Arc<CompiledAuthz>> {
        let start = ObjKey::new(namespace, "");
        self.authz
            .range(start..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter_map(|(_, e)| e.in_force.clone().map(Arc::new))
            .collect()
    }

    /// The egress policies in force in a namespace, by name.
    pub fn egress_of(&self, namespace: &str) -> Vec<CompiledEgress> {
        let start = ObjKey::new(namespace, "");
        self.egress
            .range(start..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter_map(|(_, e)| e.in_force.clone())
            .collect()
    }

    /// Conditions of every policy object.
    pub fn statuses(&self, objs: &Objects) -> Vec<((Kind, ObjKey), ObjectStatus)> {
        let status = |kind: Kind, k: &ObjKey, name: String, c: &Condition| {
            (
                (kind, k.clone()),
                ObjectStatus {
                    kind: kind.as_str().into(),
                    namespace: k.namespace.clone(),
                    name,
                    entries: vec![StatusEntry {
                        parent_ref: None,
                        conditions: vec![c.clone()],
                    }],
                },
            )
        };
        let mut out = Vec::new();
        for (k, e) in &self.authz {
            let name = objs
                .authorizations
                .get(k)
                .map(|p| p.name_any())
                .unwrap_or_else(|| k.name.clone());
            out.push(status(Kind::AuthorizationPolicy, k, name, &e.condition));
        }
        for (k, e) in &self.egress {
            out.push(status(Kind::EgressPolicy, k, k.name.clone(), &e.condition));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> AuthorizationPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn compiles_the_shop_example_and_names_bad_fields() {
        let p = policy(
            r#"
apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  targetRef: {kind: Server, name: orders-http}
  rules:
  - name: create-orders
    clients: {serviceAccounts: [{name: web}]}
    routes: [{path: {exact: /api/orders}, method: POST}]
  - name: health
    clients: {authenticated: true}
    routes: [{path: {exact: /health}, method: GET}]
"#,
        );
        let c = compile_authorization(&p, "cluster.local").unwrap();
        assert_eq!(c.target, AuthTarget::Server("orders-http".into()));
        assert_eq!(&*c.rules[0].name, "shop/orders-api/create-orders");
        assert_eq!(
            c.rules[0].clients,
            vec![ClientMatch::Identity(
                "spiffe://cluster.local/ns/shop/sa/web".into()
            )]
        );
        assert_eq!(c.rules[1].clients, vec![ClientMatch::Authenticated]);

        let mut bad = p.clone();
        bad.spec.rules[1].clients.networks = vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()];
        let e = compile_authorization(&bad, "cluster.local").unwrap_err();
        assert!(e.starts_with("spec.rules[1].clients.networks[1]: "), "{e}");

        let mut bad = p.clone();
        bad.spec.rules[0].clients = ClientsSpec::default();
        let e = compile_authorization(&bad, "cluster.local").unwrap_err();
        assert!(
            e.starts_with("spec.rules[0].clients: lists no client"),
            "{e}"
        );

        let mut bad = p.clone();
        bad.spec.rules[0].routes[0].method = Some("post".into());
        let e = compile_authorization(&bad, "cluster.local").unwrap_err();
        assert!(e.starts_with("spec.rules[0].routes[0].method: "), "{e}");

        let mut bad = p.clone();
        bad.spec.target_ref.kind = "Service".into();
        let e = compile_authorization(&bad, "cluster.local").unwrap_err();
        assert!(e.starts_with("spec.targetRef: "), "{e}");
        assert!(target_of(&bad).is_err());

        let mut ns = p;
        ns.spec.target_ref = mesh_crds::PolicyTargetRef {
            group: String::new(),
            kind: "Namespace".into(),
            name: "other".into(),
        };
        assert!(target_of(&ns).unwrap_err().contains("own namespace"));
    }

    #[test]
    fn annotations_fail_closed() {
        let d = Defaults::from_annotations(
            &[
                (
                    DEFAULT_POLICY_ANNOTATION.to_string(),
                    "deny-all".to_string(),
                ),
                (INBOUND_TLS_ANNOTATION.to_string(), "permissive".to_string()),
            ]
            .into(),
        );
        assert_eq!(d.policy, Some(DefaultPolicy::Deny));
        assert_eq!(d.tls, Some(InboundTls::Permissive));
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0].contains("deny-all"), "{:?}", d.problems);
    }
}
