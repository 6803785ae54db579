//! Writing rendered objects to a cluster with server-side apply (field manager `meshctl`),
//! reporting each as created, configured or unchanged, and waiting until the mesh is ready:
//! CRDs established, the controller Deployment available, the webhook Service with a ready
//! endpoint.

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::error::Problem;
use crate::kinds::{self, Kind};
use crate::progress::Progress;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "meshctl";

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        }
    }
}

/// Maps a kube error on `subject` to a problem that says what to do.
pub fn api_problem(subject: &str, cluster: &Cluster, e: kube::Error) -> Problem {
    match e {
        kube::Error::Api(status) if status.code == 403 => Problem::input(
            subject,
            format!(
                "forbidden: {}; installing the mesh needs cluster-admin rights (meshctl check --pre tells which are missing)",
                status.message
            ),
        ),
        kube::Error::Api(status) => Problem::input(
            subject,
            format!(
                "the API server refused: {} ({} {})",
                status.message, status.code, status.reason
            ),
        ),
        other => cluster.unreachable(subject, &other),
    }
}

/// Reads one object, `None` when it does not exist.
pub async fn get(
    cluster: &Cluster,
    kind: &Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, Problem> {
    let api = kind.api(&cluster.client, namespace);
    match api.get_opt(name).await {
        Ok(obj) => Ok(obj.and_then(|o| serde_json::to_value(o).ok())),
        Err(e) => Err(api_problem(&kind.subject(namespace, name), cluster, e)),
    }
}

fn resource_version(obj: &Value) -> Option<&str> {
    obj.get("metadata")?.get("resourceVersion")?.as_str()
}

/// Applies the objects in order; prints a line per object on stderr. Stops at the first
/// refusal: what was applied before stays (server-side apply is idempotent, so running the
/// command again after fixing the cause finishes the job).
pub async fn apply_all(cluster: &Cluster, objects: &[Value]) -> Result<(), Problem> {
    for obj in objects {
        let (name, namespace) = kinds::name_of(obj);
        let Some(kind) = Kind::of(obj) else {
            return Err(Problem::input(
                name,
                "is of a kind meshctl does not know how to apply (a bug: please report it)",
            ));
        };
        let subject = kind.subject(namespace, name);
        let before = get(cluster, kind, namespace, name).await?;
        let api = kind.api(&cluster.client, namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let after = api
            .patch(name, &params, &Patch::Apply(obj))
            .await
            .map_err(|e| api_problem(&subject, cluster, e))?;
        let after_rv = after.metadata.resource_version.clone();
        let change = match before.as_ref().map(resource_version) {
            None => Change::Created,
            Some(rv) if rv == after_rv.as_deref() => Change::Unchanged,
            Some(_) => Change::Configured,
        };
        eprintln!("{subject} {}", change.as_str());
    }
    Ok(())
}

/// Deletes one object (foreground: its dependents first); `false` when it was not there.
pub async fn delete(
    cluster: &Cluster,
    kind: &Kind,
    namespace: &str,
    name: &str,
) -> Result<bool, Problem> {
    let api = kind.api(&cluster.client, namespace);
    match api.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(api_problem(&kind.subject(namespace, name), cluster, e)),
    }
}

/// Names of the objects of `kind` labeled as the mesh's (in `namespace` if namespaced);
/// empty when the cluster does not serve the kind.
pub async fn labeled(
    cluster: &Cluster,
    kind: &Kind,
    namespace: &str,
) -> Result<Vec<String>, Problem> {
    let api = kind.api(&cluster.client, namespace);
    let lp = ListParams::default().labels(&format!("{}={}", kinds::PART_OF.0, kinds::PART_OF.1));
    match api.list(&lp).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(api_problem(
            &format!(
                "{} labeled {}={}",
                kind.plural,
                kinds::PART_OF.0,
                kinds::PART_OF.1
            ),
            cluster,
            e,
        )),
    }
}

/// Waits, step by step, until the installed mesh is ready, for at most `timeout` in all.
pub async fn wait_ready(
    cluster: &Cluster,
    objects: &[Value],
    namespace: &str,
    timeout: Duration,
) -> Result<(), Problem> {
    let deadline = Instant::now() + timeout;
    let progress = Progress::stderr();
    let crds: Vec<String> = objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .map(|o| kinds::name_of(o).0.to_string())
        .collect();
    let steps = [
        "the CRDs to be established",
        "the controller to be available",
        "the webhook to have a ready endpoint",
    ];
    for (i, name) in steps.into_iter().enumerate() {
        let step = progress.step(name);
        loop {
            let missing = match i {
                0 => crds_established(cluster, &crds).await?,
                1 => {
                    deployment_available(cluster, namespace, mesh_manifests::render::CONTROLLER)
                        .await?
                }
                _ => {
                    service_endpoint_ready(cluster, namespace, mesh_manifests::render::CONTROLLER)
                        .await?
                }
            };
            match missing {
                None => {
                    step.done();
                    break;
                }
                Some(missing) if Instant::now() >= deadline => {
                    step.failed(&missing);
                    return Err(Problem::input(
                        "install",
                        format!(
                            "the mesh was applied but is not ready after {}: {missing}; run `meshctl check` for the cause",
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
                Some(missing) => {
                    step.detail(&missing);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    Ok(())
}

async fn crds_established(cluster: &Cluster, names: &[String]) -> Result<Option<String>, Problem> {
    let kind = Kind::of(&serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"
    }))
    .ok_or_else(|| Problem::input("install", "the CRD kind is missing from meshctl's table"))?;
    for name in names {
        let Some(crd) = get(cluster, kind, "", name).await? else {
            return Ok(Some(format!("{name} does not exist")));
        };
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        if !established {
            return Ok(Some(format!("{name} is not established yet")));
        }
    }
    Ok(None)
}

async fn deployment_available(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, Problem> {
    let kind = Kind::of(&serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment"}))
        .ok_or_else(|| {
            Problem::input(
                "install",
                "the Deployment kind is missing from meshctl's table",
            )
        })?;
    let Some(d) = get(cluster, kind, namespace, name).await? else {
        return Ok(Some(format!("deployment {name} does not exist")));
    };
    let int = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    let updated = int("/status/updatedReplicas");
    let available = int("/status/availableReplicas");
    if observed < generation {
        return Ok(Some("the new spec is not rolled out yet".into()));
    }
    if updated < want || available < want {
        return Ok(Some(format!(
            "{available} of {want} replicas available ({updated} updated)"
        )));
    }
    Ok(None)
}

async fn service_endpoint_ready(
    cluster: &Cluster,
    namespace: &str,
    service: &str,
) -> Result<Option<String>, Problem> {
    let api: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(cluster.client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = api.list(&lp).await.map_err(|e| {
        api_problem(
            &format!("endpointslices of service \"{service}\" in namespace \"{namespace}\""),
            cluster,
            e,
        )
    })?;
    let ready = slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false));
    if ready {
        Ok(None)
    } else {
        Ok(Some(format!("service {service} has no ready endpoint")))
    }
}
