//! `install` (MESH12xx): the mesh's CRDs exist and match this meshctl's (`mesh_crds::crds()`
//! and the `mesh.dev/version` annotation), the Gateway API CRDs it relies on exist, and the
//! controller runs: its Deployment, its pods running and ready, and a leader holding the
//! Lease.
//!
//! The Lease counts as held while `renewTime + leaseDurationSeconds` (15 s when unset) plus
//! [`LEASE_SKEW`] for clock differences is in the future, and its holder is one of the
//! controller's ready pods.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};

use super::cluster;
use super::report::Outcome;
use super::{codes, Ctx, CONTROLLER, CONTROLLER_SELECTOR, VERSION, VERSION_ANNOTATION};

/// Allowance for clock differences between the controller and this machine.
pub const LEASE_SKEW: Duration = Duration::from_secs(5);
/// Kubernetes' default lease duration, when the Lease names none.
const DEFAULT_LEASE_SECONDS: u64 = 15;

/// The Gateway API CRDs the mesh needs, and the version it reads.
const GATEWAY_CRDS: &[&str] = &[
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
];

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) -> Option<String> {
    crds(ctx, out).await;
    out.push(gateway_crds(ctx).await);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    match cluster::get_opt(&deployments, "the controller Deployment", CONTROLLER).await {
        Ok(Some(_)) => out.push(Outcome::ok(&codes::CONTROLLER_DEPLOYMENT, "")),
        Ok(None) => {
            out.push(Outcome::error(
                &codes::CONTROLLER_DEPLOYMENT,
                format!(
                    "Deployment {CONTROLLER} does not exist in namespace {}",
                    ctx.mesh_ns
                ),
                format!(
                    "install the mesh with meshctl install --apply (or pass the namespace it is \
                     in with --mesh-namespace; checked: {})",
                    ctx.mesh_ns
                ),
            ));
            return Some("there is no controller Deployment".into());
        }
        Err(e) => {
            out.push(Outcome::error(
                &codes::CONTROLLER_DEPLOYMENT,
                e,
                "check that your user may read deployments in the mesh namespace",
            ));
            return Some("the controller Deployment cannot be read".into());
        }
    }
    let ready = controller_pods(ctx, out).await;
    out.push(leader(ctx, &ready).await);
    None
}

/// MESH1201 and MESH1202.
async fn crds(ctx: &Ctx, out: &mut Vec<Outcome>) {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    for want in mesh_crds::crds() {
        let name = want.metadata.name.clone().unwrap_or_default();
        match cluster::get_opt(&api, &format!("CRD {name}"), &name).await {
            Ok(None) => missing.push(name),
            Ok(Some(live)) => {
                if let Some(why) = crd_difference(&want, &live) {
                    outdated.push(format!("{name}: {why}"));
                }
            }
            Err(e) => {
                let hint = "check that your user may read customresourcedefinitions";
                out.push(Outcome::error(&codes::CRDS_EXIST, e.clone(), hint));
                out.push(Outcome::error(&codes::CRDS_CURRENT, e, hint));
                return;
            }
        }
    }
    if missing.is_empty() {
        out.push(Outcome::ok(&codes::CRDS_EXIST, ""));
    } else {
        out.push(Outcome::error(
            &codes::CRDS_EXIST,
            format!("missing: {}", missing.join(", ")),
            "install the CRDs with meshctl install --apply (or meshctl install | kubectl apply -f -)",
        ));
    }
    let present = mesh_crds::crds().len() - missing.len();
    if present == 0 {
        // Nothing to compare; MESH1201 already says what to do.
    } else if outdated.is_empty() {
        let which = if missing.is_empty() {
            String::new()
        } else {
            format!("the {present} present")
        };
        out.push(Outcome::ok(&codes::CRDS_CURRENT, which));
    } else {
        out.push(Outcome::error(
            &codes::CRDS_CURRENT,
            format!("not this meshctl's ({VERSION}):\n{}", outdated.join("\n")),
            "run meshctl upgrade --apply to bring the CRDs to this version (or use the meshctl \
             of the installed version)",
        ));
    }
}

/// Why `live` is not the CRD `want` of this version, if it is not.
fn crd_difference(
    want: &CustomResourceDefinition,
    live: &CustomResourceDefinition,
) -> Option<String> {
    let version = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VERSION_ANNOTATION));
    match version {
        None => return Some(format!("it has no {VERSION_ANNOTATION} annotation")),
        Some(v) if v != VERSION => return Some(format!("it is from version {v}")),
        Some(_) => {}
    }
    let names = |crd: &CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions.iter().map(|v| v.name.clone()).collect()
    };
    if names(want) != names(live) {
        return Some(format!(
            "it serves versions {:?}, this meshctl's has {:?}",
            names(live),
            names(want)
        ));
    }
    for (w, l) in want.spec.versions.iter().zip(&live.spec.versions) {
        if w.served != l.served || w.storage != l.storage {
            return Some(format!("version {} is served/stored differently", w.name));
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            serde_json::to_value(&v.schema).unwrap_or_default()
        };
        if schema(w) != schema(l) {
            return Some(format!(
                "the schema of version {} differs from this meshctl's",
                w.name
            ));
        }
    }
    None
}

/// MESH1203.
async fn gateway_crds(ctx: &Ctx) -> Outcome {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let mut problems = Vec::new();
    for name in GATEWAY_CRDS {
        match cluster::get_opt(&api, &format!("CRD {name}"), name).await {
            Ok(None) => problems.push(format!("{name} is missing")),
            Ok(Some(crd)) => {
                if !crd.spec.versions.iter().any(|v| v.name == "v1" && v.served) {
                    problems.push(format!("{name} does not serve v1"));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Outcome::ok(&codes::GATEWAY_CRDS, "")
    } else {
        Outcome::error(
            &codes::GATEWAY_CRDS,
            problems.join("; "),
            "install them with meshctl install --apply (gatewayAPI.installCRDs=true, the \
             default), or apply the Gateway API v1.5.1 standard-channel CRDs",
        )
    }
}

/// MESH1205; returns the names of the ready controller pods.
async fn controller_pods(ctx: &Ctx, out: &mut Vec<Outcome>) -> BTreeSet<String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    let pods = match cluster::list(
        &api,
        "the controller pods",
        &ListParams::default().labels(CONTROLLER_SELECTOR),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            out.push(Outcome::error(
                &codes::CONTROLLER_READY,
                e,
                "check that your user may list pods in the mesh namespace",
            ));
            return BTreeSet::new();
        }
    };
    let hint = format!(
        "find out why with kubectl -n {ns} describe pods -l {CONTROLLER_SELECTOR} and kubectl -n {ns} \
         logs deploy/{CONTROLLER}",
        ns = ctx.mesh_ns
    );
    if pods.is_empty() {
        out.push(Outcome::error(
            &codes::CONTROLLER_READY,
            format!(
                "no pods with label {CONTROLLER_SELECTOR} in namespace {}",
                ctx.mesh_ns
            ),
            format!(
                "the Deployment has no pods: {hint}; kubectl -n {} describe deploy/{CONTROLLER} \
                 shows why none were created",
                ctx.mesh_ns
            ),
        ));
        return BTreeSet::new();
    }
    let mut ready = BTreeSet::new();
    let mut not_ready = Vec::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match pod_not_ready(pod) {
            None => {
                ready.insert(name);
            }
            Some(why) => not_ready.push(format!("{name}: {why}")),
        }
    }
    let total = pods.len();
    if not_ready.is_empty() {
        out.push(Outcome::ok(
            &codes::CONTROLLER_READY,
            format!("{total} of {total} ready"),
        ));
    } else if ready.is_empty() {
        out.push(Outcome::error(
            &codes::CONTROLLER_READY,
            format!("no controller pod is ready:\n{}", not_ready.join("\n")),
            hint,
        ));
    } else {
        out.push(Outcome::warning(
            &codes::CONTROLLER_READY,
            format!(
                "{} of {total} controller pods ready:\n{}",
                ready.len(),
                not_ready.join("\n")
            ),
            hint,
        ));
    }
    ready
}

/// Why a pod is not running and ready, if it is not.
pub fn pod_not_ready(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("terminating".into());
    }
    let Some(status) = &pod.status else {
        return Some("no status yet".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    if phase != "Running" {
        return Some(format!("phase {phase}"));
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(match (&c.reason, &c.message) {
            (_, Some(m)) if !m.is_empty() => format!("not ready: {m}"),
            (Some(r), _) => format!("not ready ({r})"),
            _ => "not ready".into(),
        }),
        None => Some("not ready (no Ready condition)".into()),
    }
}

/// MESH1206.
async fn leader(ctx: &Ctx, ready: &BTreeSet<String>) -> Outcome {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    let hint = format!(
        "the controller elects a leader through Lease {ns}/{CONTROLLER}: see kubectl -n {ns} logs \
         deploy/{CONTROLLER} (it needs get, create and patch on leases in {ns})",
        ns = ctx.mesh_ns
    );
    let lease = match cluster::get_opt(&api, "the leader Lease", CONTROLLER).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Outcome::error(
                &codes::LEADER,
                format!(
                "Lease {CONTROLLER} does not exist in namespace {}: no replica has become leader",
                ctx.mesh_ns
            ),
                hint,
            )
        }
        Err(e) => return Outcome::error(&codes::LEADER, e, hint),
    };
    let spec = lease.spec.unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Outcome::error(&codes::LEADER, "the Lease has no holder", hint);
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_LEASE_SECONDS);
    let Some(renewed) = spec.renew_time.map(|t| t.0.as_second()) else {
        return Outcome::error(
            &codes::LEADER,
            format!("the Lease names {holder} but was never renewed"),
            hint,
        );
    };
    let renewed = SystemTime::UNIX_EPOCH + Duration::from_secs(renewed.max(0).unsigned_abs());
    let valid_until = renewed + Duration::from_secs(duration) + LEASE_SKEW;
    if valid_until < ctx.now {
        let ago = ctx.now.duration_since(renewed).unwrap_or_default();
        return Outcome::error(
            &codes::LEADER,
            format!(
                "the Lease of {holder} expired: last renewed {}s ago, for {duration}s",
                ago.as_secs()
            ),
            hint,
        );
    }
    if !ready.contains(&holder) {
        return Outcome::error(
            &codes::LEADER,
            format!(
                "the Lease is held by {holder}, which is not a ready controller pod (ready: {})",
                if ready.is_empty() {
                    "none".to_string()
                } else {
                    ready.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
            hint,
        );
    }
    Outcome::ok(&codes::LEADER, holder)
}
