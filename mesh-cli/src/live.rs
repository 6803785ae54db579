//! `meshctl inject|uninject KIND/NAME... | --all`: workloads in a cluster. Each object is
//! read, transformed by `mesh_inject` with the live Namespace's annotations as defaults, and
//! written back with an RFC 6902 JSON patch that starts with a `test` of
//! `metadata.resourceVersion`: the patch touches only what injection changed, and a change
//! made by someone else in between makes it fail instead of being overwritten (meshctl then
//! reads the object again and retries). Nothing is written unless every object could be
//! transformed. `--dry-run` prints unified diffs of the YAML instead.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mesh_inject::{Context, Doc, Outcome, Report};
use serde_yaml_ng::{Mapping, Value};

use crate::cluster::{self, Cluster};
use crate::error::{self, Problem};
use crate::manifests::{string_map, transform};
use crate::summary::{self, Operation};
use crate::target::{self, LiveKind, Target};

/// Which objects to work on.
#[derive(Debug)]
pub enum Selection {
    Named(Vec<Target>),
    /// Every workload of the namespace (`--all`).
    All,
}

/// Everything a live run needs from the command line.
#[derive(Debug)]
pub struct LiveRun {
    pub op: Operation,
    pub selection: Selection,
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub dry_run: bool,
    pub settings: mesh_inject::Settings,
}

/// How many times an object is read again after someone else changed it under us.
const ATTEMPTS: usize = 5;

/// Runs against the cluster; returns the process exit code.
pub fn run(live: LiveRun) -> u8 {
    let Some(runtime) = crate::cluster::runtime() else {
        return 1;
    };
    runtime.block_on(run_async(live))
}

/// One object read from the cluster.
struct LiveObject {
    kind: &'static LiveKind,
    namespace: String,
    name: String,
    value: Doc,
}

impl LiveObject {
    fn subject(&self) -> String {
        subject(self.kind, &self.namespace, &self.name)
    }
}

fn subject(kind: &LiveKind, namespace: &str, name: &str) -> String {
    if kind.namespaced {
        format!(
            "{} \"{name}\" in namespace \"{namespace}\"",
            kind.kind.to_ascii_lowercase()
        )
    } else {
        format!("{} \"{name}\"", kind.kind.to_ascii_lowercase())
    }
}

async fn run_async(live: LiveRun) -> u8 {
    let (cluster, default_namespace) =
        match cluster::connect(live.kubeconfig.as_deref(), live.context.as_deref()).await {
            Ok(c) => c,
            Err(p) => {
                error::print_all(&[p]);
                return 1;
            }
        };
    let namespace = live.namespace.clone().unwrap_or(default_namespace);
    if !target::is_name(&namespace) {
        eprintln!(
            "error: -n/--namespace: '{namespace}' is not a namespace name (lowercase letters, digits and '-')"
        );
        return 1;
    }

    let mut problems = Vec::new();
    if let Selection::Named(targets) = &live.selection {
        for t in targets {
            if let Some(why) = target::immutable_reason(t.kind, live.op.verb(), &t.name) {
                problems.push(Problem::input(
                    &subject(t.kind, &namespace, &t.name),
                    format!("cannot be {}ed in place: {why}", live.op.verb()),
                ));
            }
        }
    }
    if !problems.is_empty() {
        error::print_all(&problems);
        eprintln!("meshctl {}: nothing was changed", live.op.verb());
        return 1;
    }

    let ns_annotations = match get(&cluster, &target::NAMESPACE, "", &namespace).await {
        Ok(ns) => string_map(ns.get("metadata").and_then(|m| m.get("annotations"))),
        Err(p) => {
            error::print_all(&[p]);
            return 1;
        }
    };
    let ctx = Context {
        settings: live.settings.clone(),
        namespaces: BTreeMap::from([(namespace.clone(), ns_annotations)]),
        default_namespace: namespace.clone(),
    };

    let objects = match &live.selection {
        Selection::Named(targets) => {
            let mut objects = Vec::new();
            for t in targets {
                match get(&cluster, t.kind, &namespace, &t.name).await {
                    Ok(value) => objects.push(LiveObject {
                        kind: t.kind,
                        namespace: namespace.clone(),
                        name: t.name.clone(),
                        value,
                    }),
                    Err(p) => problems.push(p),
                }
            }
            objects
        }
        Selection::All => {
            let mut objects = Vec::new();
            for kind in target::ALL {
                match list(&cluster, kind, &namespace).await {
                    Ok(items) => objects.extend(items),
                    Err(p) => problems.push(p),
                }
            }
            objects
        }
    };

    // First every object is transformed in memory: a broken one stops the run before
    // anything is written.
    let mut plans = Vec::new();
    for obj in objects {
        if let Some(why) = leave_alone(&obj, live.op) {
            plans.push((obj, Some(why)));
            continue;
        }
        let mut copy = obj.value.clone();
        match transform(&mut copy, live.op, &ctx) {
            Ok(_) => plans.push((obj, None)),
            Err(e) => problems.push(Problem::input(&obj.subject(), e.to_string())),
        }
    }
    if !problems.is_empty() {
        error::print_all(&problems);
        eprintln!(
            "meshctl {}: {} error(s); nothing was changed",
            live.op.verb(),
            problems.len()
        );
        return 1;
    }
    if plans.is_empty() {
        eprintln!(
            "meshctl {}: no workloads in namespace \"{namespace}\"",
            live.op.verb()
        );
    }

    let mut reports = Vec::new();
    for (obj, skip) in plans {
        if let Some(why) = skip {
            let report = Report {
                kind: obj.kind.kind.to_string(),
                name: obj.name.clone(),
                namespace: Some(obj.namespace.clone()),
                outcome: Outcome::Skipped(why),
                note: None,
            };
            eprintln!("{report}");
            reports.push(report);
            continue;
        }
        match apply(&cluster, obj, live.op, &ctx, live.dry_run).await {
            Ok(report) => {
                if live.dry_run && report.outcome.changed() {
                    eprintln!("{report} (dry run)");
                } else {
                    eprintln!("{report}");
                }
                reports.push(report);
            }
            Err(p) => problems.push(p),
        }
    }
    error::print_all(&problems);
    eprintln!("{}", summary::line(live.op, &reports, live.dry_run));
    if problems.is_empty() {
        0
    } else {
        1
    }
}

/// Why an object is left alone, if it is: it is managed by another object (a ReplicaSet of
/// a Deployment, a Job of a CronJob), or its pod template cannot change (a Job).
fn leave_alone(obj: &LiveObject, op: Operation) -> Option<String> {
    let owners = obj
        .value
        .get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_sequence);
    if let Some(owner) = owners
        .into_iter()
        .flatten()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
    {
        let kind = owner.get("kind").and_then(Value::as_str).unwrap_or("owner");
        let name = owner.get("name").and_then(Value::as_str).unwrap_or("");
        return Some(format!(
            "managed by {} \"{name}\" (inject that instead)",
            kind.to_ascii_lowercase()
        ));
    }
    target::immutable_reason(obj.kind, op.verb(), &obj.name)
}

fn api_problem(subject: &str, cluster: &Cluster, e: kube::Error) -> Problem {
    match e {
        kube::Error::Api(status) if status.code == 404 => Problem::input(
            subject,
            "does not exist; check the name and -n/--namespace (and --context)",
        ),
        kube::Error::Api(status) => Problem::input(
            subject,
            format!(
                "the API server refused: {} ({} {}); check your permissions and the object",
                status.message, status.code, status.reason
            ),
        ),
        other => cluster.unreachable(subject, &other),
    }
}

fn parse_object(subject: &str, text: &str) -> Result<Doc, Problem> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_mapping() => Ok(v),
        Ok(_) => Err(Problem::input(
            subject,
            "the API server sent something other than an object",
        )),
        Err(e) => Err(Problem::input(
            subject,
            format!("the API server sent JSON meshctl cannot read: {e}"),
        )),
    }
}

async fn send(
    cluster: &Cluster,
    subject: &str,
    req: http::Request<Vec<u8>>,
) -> Result<String, Problem> {
    cluster
        .client
        .request_text(req)
        .await
        .map_err(|e| api_problem(subject, cluster, e))
}

fn build(
    subject: &str,
    req: http::request::Builder,
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>, Problem> {
    req.body(body)
        .map_err(|e| Problem::input(subject, format!("cannot build the request: {e}")))
}

async fn get(
    cluster: &Cluster,
    kind: &'static LiveKind,
    namespace: &str,
    name: &str,
) -> Result<Doc, Problem> {
    let subject = subject(kind, namespace, name);
    let url = format!("{}/{name}", kind.collection_path(namespace));
    let req = build(&subject, http::Request::get(url), Vec::new())?;
    let text = send(cluster, &subject, req).await?;
    parse_object(&subject, &text)
}

/// The objects of a kind in a namespace; nothing when the cluster does not serve the kind.
async fn list(
    cluster: &Cluster,
    kind: &'static LiveKind,
    namespace: &str,
) -> Result<Vec<LiveObject>, Problem> {
    let subject = format!("{} in namespace \"{namespace}\"", kind.plural);
    let req = build(
        &subject,
        http::Request::get(kind.collection_path(namespace)),
        Vec::new(),
    )?;
    let text = match cluster.client.request_text(req).await {
        Ok(text) => text,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Vec::new()),
        Err(e) => return Err(api_problem(&subject, cluster, e)),
    };
    let list = parse_object(&subject, &text)?;
    let items = list
        .get("items")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for item in items {
        let Value::Mapping(rest) = item else { continue };
        let name = rest
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Items of a list response carry no apiVersion and kind.
        let mut map = Mapping::new();
        map.insert("apiVersion".into(), kind.api_version.into());
        map.insert("kind".into(), kind.kind.into());
        for (k, v) in rest {
            if !map.contains_key(&k) {
                map.insert(k, v);
            }
        }
        out.push(LiveObject {
            kind,
            namespace: namespace.to_string(),
            name,
            value: Value::Mapping(map),
        });
    }
    Ok(out)
}

fn resource_version(value: &Doc) -> Option<String> {
    value
        .get("metadata")?
        .get("resourceVersion")?
        .as_str()
        .map(str::to_string)
}

/// The JSON patch from `before` to `after`, guarded by a test of the resourceVersion.
fn guarded_patch(subject: &str, before: &Doc, after: &Doc) -> Result<(Vec<u8>, String), Problem> {
    let to_json = |v: &Doc| {
        serde_json::to_value(v)
            .map_err(|e| Problem::input(subject, format!("cannot be written as JSON: {e}")))
    };
    let rv = resource_version(before).ok_or_else(|| {
        Problem::input(
            subject,
            "the API server sent it without metadata.resourceVersion",
        )
    })?;
    let diff = json_patch::diff(&to_json(before)?, &to_json(after)?);
    let mut ops = vec![serde_json::json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": rv,
    })];
    match serde_json::to_value(&diff) {
        Ok(serde_json::Value::Array(more)) => ops.extend(more),
        Ok(_) | Err(_) => {
            return Err(Problem::input(
                subject,
                "cannot express the change as a JSON patch",
            ))
        }
    }
    let body = serde_json::to_vec(&ops)
        .map_err(|e| Problem::input(subject, format!("cannot write the JSON patch: {e}")))?;
    Ok((body, rv))
}

/// Transforms and writes one object (or, dry, prints its diff); on a conflicting change,
/// reads it again and starts over.
async fn apply(
    cluster: &Cluster,
    obj: LiveObject,
    op: Operation,
    ctx: &Context,
    dry_run: bool,
) -> Result<Report, Problem> {
    let subject = obj.subject();
    let mut before = obj.value;
    for attempt in 1..=ATTEMPTS {
        let mut after = before.clone();
        let reports =
            transform(&mut after, op, ctx).map_err(|e| Problem::input(&subject, e.to_string()))?;
        let Some(report) = reports.into_iter().next() else {
            return Err(Problem::input(
                &subject,
                "the injector reported nothing for it",
            ));
        };
        if !report.outcome.changed() {
            return Ok(report);
        }
        if dry_run {
            print!(
                "{}",
                yaml_diff(&subject, obj.kind, &obj.name, op, &before, &after)?
            );
            return Ok(report);
        }
        let (body, rv) = guarded_patch(&subject, &before, &after)?;
        let url = format!(
            "{}/{}?fieldManager=meshctl",
            obj.kind.collection_path(&obj.namespace),
            obj.name
        );
        let req = build(
            &subject,
            http::Request::patch(url)
                .header(http::header::CONTENT_TYPE, "application/json-patch+json"),
            body,
        )?;
        match cluster.client.request_text(req).await {
            Ok(_) => return Ok(report),
            Err(kube::Error::Api(status))
                if matches!(status.code, 409 | 422 | 500) && attempt < ATTEMPTS =>
            {
                // Was it changed meanwhile? Then start over from the new version.
                let now = get(cluster, obj.kind, &obj.namespace, &obj.name).await?;
                if resource_version(&now).as_deref() == Some(rv.as_str()) {
                    return Err(api_problem(&subject, cluster, kube::Error::Api(status)));
                }
                before = now;
            }
            Err(e) => return Err(api_problem(&subject, cluster, e)),
        }
    }
    Err(Problem::input(
        &subject,
        format!("kept changing while meshctl wrote it ({ATTEMPTS} attempts); run meshctl again"),
    ))
}

/// A unified diff of the object's YAML before and after.
fn yaml_diff(
    subject: &str,
    kind: &LiveKind,
    name: &str,
    op: Operation,
    before: &Doc,
    after: &Doc,
) -> Result<String, Problem> {
    let yaml = |v: &Doc| {
        serde_yaml_ng::to_string(v)
            .map_err(|e| Problem::input(subject, format!("cannot be written as YAML: {e}")))
    };
    let (a, b) = (yaml(before)?, yaml(after)?);
    let label = format!("{}/{name}", kind.kind.to_ascii_lowercase());
    let done = match op {
        Operation::Inject(_) => "injected",
        Operation::Uninject => "uninjected",
    };
    Ok(similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{label} (live)"), &format!("{label} ({done})"))
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_tests_the_resource_version_first_and_fails_on_a_newer_object() {
        let before: Doc = serde_yaml_ng::from_str(
            "kind: Deployment\nmetadata: {name: web, resourceVersion: '7'}\nspec: {replicas: 1}\n",
        )
        .unwrap();
        let mut after = before.clone();
        after["spec"]["replicas"] = 2.into();
        let (body, rv) = guarded_patch("web", &before, &after).unwrap();
        assert_eq!(rv, "7");
        let patch: json_patch::Patch = serde_json::from_slice(&body).unwrap();
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            ops[0],
            serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        let mut same = serde_json::to_value(&before).unwrap();
        json_patch::patch(&mut same, &patch).unwrap();
        assert_eq!(same, serde_json::to_value(&after).unwrap());
        let mut newer = serde_json::to_value(&before).unwrap();
        newer["metadata"]["resourceVersion"] = "8".into();
        assert!(json_patch::patch(&mut newer, &patch).is_err());
    }
}
