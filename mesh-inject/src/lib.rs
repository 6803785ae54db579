//! Sidecar injection, shared by `meshctl inject` and the controller's admission webhook so
//! that both produce exactly the same pod.
//!
//! Objects are [`Doc`]s (`serde_yaml_ng::Value`): every field injection does not own is kept
//! as it was, in its order. [`inject`] adds the `mesh.dev/inject` annotation
//! ([`Mode::Annotate`]) or the whole sidecar ([`Mode::Manual`]); [`uninject`] removes
//! exactly what either adds; [`admit_pod`] is the webhook's decision and JSON patch.
//! User documentation: `docs/inject.md`.

pub mod admission;
pub mod annotations;
mod doc;
mod pod;
pub mod settings;
pub mod sidecar;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;

pub use admission::{admit_pod, Admission};
pub use settings::Settings;
#[cfg(feature = "clap")]
pub use settings::SettingsArgs;
pub use sidecar::{INIT_CONTAINER, PROXY_CONTAINER};
pub use webhook::{webhook_configuration, FailurePolicy, WebhookConfig, WEBHOOK_PATH};

/// A Kubernetes object as read from YAML or JSON.
pub type Doc = serde_yaml_ng::Value;

/// `mesh.dev/inject`: `enabled` or `disabled`.
pub const INJECT_ANNOTATION: &str = annotations::INJECT;

/// What [`inject`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Add `mesh.dev/inject: enabled` to the pod template (or Pod, or Namespace); the
    /// webhook adds the sidecar when the pods are created.
    Annotate,
    /// Write the whole sidecar into the object.
    Manual,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// The injection annotation was added.
    Annotated,
    /// Nothing to do: the object already has the sidecar or the annotation.
    AlreadyInjected,
    /// `uninject` removed the sidecar and/or the annotation.
    Uninjected,
    /// `uninject` found nothing to remove.
    NotInjected,
    /// Left unchanged, for this reason.
    Skipped(String),
}

impl Outcome {
    /// Whether the object was changed.
    pub fn changed(&self) -> bool {
        matches!(
            self,
            Outcome::Injected | Outcome::Annotated | Outcome::Uninjected
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Injected => f.write_str("injected"),
            Outcome::Annotated => f.write_str("injected (annotated; the webhook adds the proxy)"),
            Outcome::AlreadyInjected => f.write_str("unchanged: already injected"),
            Outcome::Uninjected => f.write_str("uninjected"),
            Outcome::NotInjected => f.write_str("unchanged: not injected"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// One object's outcome; displays as `deployment "web" injected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub outcome: Outcome,
    /// Something the user should know about the result.
    pub note: Option<String>,
}

/// Why a Job with a fallback (non-native) sidecar needs its app's help to finish.
pub const JOB_FALLBACK_NOTE: &str = "without a native sidecar the proxy keeps the Job's pod running: have the app call `curl -X POST http://127.0.0.1:4191/shutdown` when it is done, or use native sidecars (Kubernetes 1.29+)";

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} \"{}\" {}",
            self.kind.to_ascii_lowercase(),
            self.name,
            self.outcome
        )?;
        if let Some(note) = &self.note {
            write!(f, "; note: {note}")?;
        }
        Ok(())
    }
}

/// What is wrong with an object: the field path and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InjectError {
    /// Field path such as `spec.template.spec.containers[1].ports`.
    pub path: String,
    pub message: String,
}

impl InjectError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        Self {
            path: if path.is_empty() {
                "(object)".into()
            } else {
                path
            },
            message: message.into(),
        }
    }

    fn under(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.path = if self.path == "(object)" {
                prefix.trim_end_matches('.').to_string()
            } else {
                format!("{prefix}{}", self.path)
            };
        }
        self
    }
}

/// What the injector knows beyond the object.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub settings: Settings,
    /// Annotations of namespaces (name → annotations): defaults for the workloads in them.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The namespace of objects that name none (`default` when empty).
    pub default_namespace: String,
}

impl Context {
    fn namespace_of<'a>(&'a self, ns: Option<&'a str>) -> &'a str {
        match ns {
            Some(ns) if !ns.is_empty() => ns,
            _ if !self.default_namespace.is_empty() => &self.default_namespace,
            _ => "default",
        }
    }
}

/// Where the pod template of a kind is.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn is_list(kind: &str, obj: &serde_yaml_ng::Mapping) -> bool {
    kind.ends_with("List") && obj.get("items").is_some()
}

/// Injects one object in place (Lists item by item). On error the object is unchanged.
pub fn inject(obj: &mut Doc, ctx: &Context, mode: Mode) -> Result<Vec<Report>, InjectError> {
    let mut copy = obj.clone();
    let mut reports = Vec::new();
    walk(&mut copy, "", &mut reports, &mut |o, r| {
        inject_one(o, ctx, mode, r)
    })?;
    *obj = copy;
    Ok(reports)
}

/// Removes what [`inject`] added, in either mode. On error the object is unchanged.
pub fn uninject(obj: &mut Doc) -> Result<Vec<Report>, InjectError> {
    let mut copy = obj.clone();
    let mut reports = Vec::new();
    walk(&mut copy, "", &mut reports, &mut uninject_one)?;
    *obj = copy;
    Ok(reports)
}

/// Reads what YAML 1.2 parsers take differently from kubectl (YAML 1.1) the way kubectl
/// does: octal file modes (`defaultMode: 0400`) under a pod template's volumes become the
/// integers they mean. [`inject`] and [`uninject`] do this to every workload they see.
pub fn normalize(obj: &mut Doc) {
    let Some(map) = obj.as_mapping_mut() else {
        return;
    };
    let kind = map
        .get("kind")
        .and_then(Doc::as_str)
        .unwrap_or_default()
        .to_string();
    if is_list(&kind, map) {
        if let Some(Doc::Sequence(items)) = map.get_mut("items") {
            items.iter_mut().for_each(normalize);
        }
    } else if let Some(path) = template_path(&kind) {
        if let Ok((template, _)) = doc::descend(map, path) {
            doc::octal_file_modes(template);
        }
    }
}

type Step<'a> = dyn FnMut(&mut serde_yaml_ng::Mapping, &mut Report) -> Result<(), InjectError> + 'a;

fn walk(
    obj: &mut Doc,
    path: &str,
    reports: &mut Vec<Report>,
    step: &mut Step<'_>,
) -> Result<(), InjectError> {
    let Some(map) = obj.as_mapping_mut() else {
        return Err(InjectError::new(
            path,
            "is not an object; a Kubernetes manifest is a mapping with apiVersion, kind and metadata",
        ));
    };
    let kind = match map.get("kind") {
        Some(Doc::String(k)) if !k.is_empty() => k.clone(),
        Some(_) => {
            return Err(InjectError::new(
                format!("{path}kind"),
                "is not a string; write the object's kind, e.g. Deployment",
            ))
        }
        None => {
            return Err(InjectError::new(
                format!("{path}kind"),
                "is missing; every Kubernetes object names its kind, e.g. kind: Deployment",
            ))
        }
    };
    if is_list(&kind, map) {
        let Some(Doc::Sequence(items)) = map.get_mut("items") else {
            return Err(InjectError::new(
                format!("{path}items"),
                "is not a list; a List holds its objects under items",
            ));
        };
        for (i, item) in items.iter_mut().enumerate() {
            walk(item, &format!("{path}items[{i}]."), reports, step)?;
        }
        return Ok(());
    }
    let (name, namespace) = doc::name_and_namespace(map);
    let mut report = Report {
        kind,
        name,
        namespace,
        outcome: Outcome::NotInjected,
        note: None,
    };
    step(map, &mut report).map_err(|e| e.under(path))?;
    reports.push(report);
    Ok(())
}

fn inject_one(
    map: &mut serde_yaml_ng::Mapping,
    ctx: &Context,
    mode: Mode,
    report: &mut Report,
) -> Result<(), InjectError> {
    let ns = ctx.namespace_of(report.namespace.as_deref()).to_string();
    let empty = BTreeMap::new();
    let ns_annotations = ctx.namespaces.get(&ns).unwrap_or(&empty);
    report.outcome = if report.kind == "Namespace" {
        match mode {
            Mode::Annotate => pod::annotate_namespace(map)?,
            Mode::Manual => Outcome::Skipped(
                "a namespace is not a workload (without --manual, inject annotates it for the webhook)".into(),
            ),
        }
    } else if let Some(path) = template_path(&report.kind) {
        let workload_annotations = if path.is_empty() {
            BTreeMap::new()
        } else {
            doc::annotations(map.get("metadata"), "metadata")?
        };
        let (template, at) = doc::descend(map, path)?;
        doc::octal_file_modes(template);
        let mut layers = Vec::new();
        if !path.is_empty() {
            layers.push((&workload_annotations, "metadata.annotations".to_string()));
        }
        layers.push((
            ns_annotations,
            format!("namespace {ns}: metadata.annotations"),
        ));
        match mode {
            Mode::Annotate => pod::annotate(template, &at, &layers, &ctx.settings)?,
            Mode::Manual => {
                let (outcome, native) =
                    pod::inject_template(template, &at, &layers, &ctx.settings)?;
                if native == Some(false) && matches!(report.kind.as_str(), "Job" | "CronJob") {
                    report.note = Some(JOB_FALLBACK_NOTE.into());
                }
                outcome
            }
        }
    } else {
        Outcome::Skipped("not a workload".into())
    };
    Ok(())
}

fn uninject_one(map: &mut serde_yaml_ng::Mapping, report: &mut Report) -> Result<(), InjectError> {
    report.outcome = if report.kind == "Namespace" {
        pod::unannotate_namespace(map)?
    } else if let Some(path) = template_path(&report.kind) {
        let (template, at) = doc::descend(map, path)?;
        doc::octal_file_modes(template);
        pod::uninject_template(template, &at)?
    } else {
        Outcome::Skipped("not a workload".into())
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Doc {
        serde_yaml_ng::from_str(s).unwrap()
    }

    const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  template:
    metadata:
      labels: {app: web}
    spec:
      initContainers:
      - name: migrate
        image: migrate:1
      containers:
      - name: app
        image: app:1
        ports:
        - {name: http, containerPort: 8080}
";

    fn names(d: &Doc, key: &str) -> Vec<String> {
        d["spec"]["template"]["spec"][key]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn manual_puts_init_then_native_sidecar_first_and_round_trips() {
        let orig = parse(DEPLOY);
        let mut d = orig.clone();
        let r = inject(&mut d, &Context::default(), Mode::Manual).unwrap();
        assert_eq!(r[0].to_string(), "deployment \"web\" injected");
        assert_eq!(
            names(&d, "initContainers"),
            ["mesh-init", "mesh-proxy", "migrate"]
        );
        assert_eq!(names(&d, "containers"), ["app"]);
        assert_eq!(
            d["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"].as_str(),
            Some("Always")
        );
        let once = d.clone();
        let again = inject(&mut d, &Context::default(), Mode::Manual).unwrap();
        assert_eq!(again[0].outcome, Outcome::AlreadyInjected);
        assert_eq!(d, once);
        let r = uninject(&mut d).unwrap();
        assert_eq!(r[0].outcome, Outcome::Uninjected);
        assert_eq!(
            serde_yaml_ng::to_string(&d).unwrap(),
            serde_yaml_ng::to_string(&orig).unwrap()
        );
    }

    #[test]
    fn fallback_is_the_first_container_and_cni_leaves_out_init() {
        let mut d = parse(DEPLOY);
        let ctx = Context {
            settings: Settings {
                native_sidecar: false,
                init_container: false,
                ..Settings::default()
            },
            ..Context::default()
        };
        inject(&mut d, &ctx, Mode::Manual).unwrap();
        assert_eq!(names(&d, "initContainers"), ["migrate"]);
        assert_eq!(names(&d, "containers"), ["mesh-proxy", "app"]);
        let proxy = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            proxy["lifecycle"]["postStart"]["exec"]["command"][1].as_str(),
            Some("await-ready")
        );
        assert!(proxy.get("restartPolicy").is_none());
        assert_eq!(names(&d, "volumes"), ["mesh-identity-token"]);
    }

    #[test]
    fn annotate_marks_the_template_and_lists_are_walked() {
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Service, metadata: {{name: web}}}}\n",
            serde_json::to_string(&parse(DEPLOY)).unwrap()
        );
        let mut d = parse(&list);
        let r = inject(&mut d, &Context::default(), Mode::Annotate).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].outcome, Outcome::Annotated);
        assert_eq!(r[1].to_string(), "service \"web\" skipped: not a workload");
        let tmpl = &d["items"][0]["spec"]["template"]["metadata"];
        assert_eq!(
            tmpl["annotations"]["mesh.dev/inject"].as_str(),
            Some("enabled")
        );
        uninject(&mut d).unwrap();
        assert_eq!(d, parse(&list));
    }

    #[test]
    fn namespace_annotations_are_defaults_and_the_workload_can_opt_out() {
        let mut d = parse(DEPLOY);
        let ctx = Context {
            namespaces: BTreeMap::from([(
                "shop".to_string(),
                BTreeMap::from([
                    ("mesh.dev/native-sidecar".to_string(), "false".to_string()),
                    ("mesh.dev/inject".to_string(), "disabled".to_string()),
                ]),
            )]),
            ..Context::default()
        };
        inject(&mut d, &ctx, Mode::Manual).unwrap();
        assert_eq!(names(&d, "containers"), ["mesh-proxy", "app"]);
        let mut d = parse(&DEPLOY.replace(
            "      labels: {app: web}",
            "      labels: {app: web}\n      annotations: {mesh.dev/inject: disabled}",
        ));
        let r = inject(&mut d, &ctx, Mode::Manual).unwrap();
        assert!(matches!(r[0].outcome, Outcome::Skipped(_)), "{}", r[0]);
    }

    #[test]
    fn errors_name_the_field_and_leave_the_object_alone() {
        for (yaml, path) in [
            ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "spec.template"),
            (
                "kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: a, ports: [{containerPort: http}]}]}}}\n",
                "spec.template.spec.containers[0].ports[0].containerPort",
            ),
            (
                "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, ports: [{containerPort: 4191}]}]}\n",
                "spec.containers[0].ports",
            ),
            ("apiVersion: v1\nmetadata: {name: x}\n", "kind"),
            ("kind: List\nitems: [{kind: Pod, spec: {containers: 3}}]\n", "items[0].spec.containers"),
        ] {
            let mut d = parse(yaml);
            let before = d.clone();
            let e = inject(&mut d, &Context::default(), Mode::Manual).unwrap_err();
            assert_eq!(e.path, path, "{e}");
            assert_eq!(d, before);
        }
        let mut scalar = parse("just text");
        assert_eq!(
            inject(&mut scalar, &Context::default(), Mode::Manual)
                .unwrap_err()
                .path,
            "(object)"
        );
    }
}
