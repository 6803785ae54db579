//! The injection corpus (`tests/corpus/`): realistic manifests run through `inject` (both
//! modes, native and fallback sidecar) and `uninject`. The outputs are insta snapshots
//! (`tests/snapshots/`, one per file and mode: they are the specification of what injection
//! writes); the reports of every file are asserted here, as are idempotence, the exact
//! round trip `uninject(inject(x)) == x` and the errors of the error cases.
//!
//! Namespace objects in a file are the namespace defaults of the workloads in the same file,
//! as `meshctl inject` treats them.
//!
//! Regenerate the snapshots with `INSTA_UPDATE=always cargo test -p mesh-inject --test corpus`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_inject::{
    inject, uninject, Context, Doc, Mode, Outcome, Report, Settings, INJECT_ANNOTATION,
    PROXY_CONTAINER,
};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every corpus file: its name and its documents.
fn corpus() -> Vec<(String, Vec<Doc>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            let docs = serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
                .filter(|d| !d.is_null())
                .collect();
            (name, docs)
        })
        .collect()
}

/// The settings of one snapshot mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Annotate,
    Manual,
    /// Manual with `native_sidecar: false` (the proxy as the first regular container).
    ManualFallback,
}

const RUNS: [Run; 3] = [Run::Annotate, Run::Manual, Run::ManualFallback];

impl Run {
    fn mode(self) -> Mode {
        match self {
            Run::Annotate => Mode::Annotate,
            Run::Manual | Run::ManualFallback => Mode::Manual,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Run::Annotate => "annotate",
            Run::Manual => "manual",
            Run::ManualFallback => "manual-fallback",
        }
    }

    fn settings(self) -> Settings {
        Settings {
            native_sidecar: self != Run::ManualFallback,
            ..Settings::default()
        }
    }
}

fn annotations_of(meta: &Value) -> BTreeMap<String, String> {
    meta.get("annotations")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The context `meshctl inject` would build for a file: its Namespaces' annotations.
fn context(docs: &[Doc], settings: Settings) -> Context {
    let namespaces = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Namespace"))
        .filter_map(|d| {
            let name = d["metadata"]["name"].as_str()?.to_string();
            Some((name, annotations_of(&d["metadata"])))
        })
        .collect();
    Context {
        settings,
        namespaces,
        ..Context::default()
    }
}

/// Injects every document of a file; the first error stops (as meshctl does).
fn inject_file(docs: &[Doc], run: Run) -> Outputs {
    let ctx = context(docs, run.settings());
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for d in docs {
        let mut d = d.clone();
        reports.extend(inject(&mut d, &ctx, run.mode())?);
        out.push(d);
    }
    Ok((out, reports))
}

fn uninject_file(docs: &[Doc]) -> Outputs {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for d in docs {
        let mut d = d.clone();
        reports.extend(uninject(&mut d)?);
        out.push(d);
    }
    Ok((out, reports))
}

fn to_yaml(docs: &[Doc]) -> String {
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn snapshot_text(result: &Outputs) -> String {
    match result {
        Ok((docs, _)) => to_yaml(docs),
        Err(e) => format!("error: {e}\n"),
    }
}

fn snapshot(name: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(corpus_dir().join(name));
    settings.bind(|| insta::assert_snapshot!(name.to_string(), text));
}

#[test]
fn corpus_is_large_enough_and_every_file_says_what_it_covers() {
    let files = corpus();
    assert!(files.len() >= 28, "only {} corpus files", files.len());
    for (name, docs) in &files {
        assert!(!docs.is_empty(), "{name} has no document");
        let text = std::fs::read_to_string(corpus_dir().join(name)).unwrap();
        if name.ends_with(".json") {
            // JSON has no comments: the file is strict JSON (the test of JSON input), and
            // its purpose is stated in EXPECTED below.
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{name} is not strict JSON: {e}"));
        } else {
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("# ") && first.len() > 20,
                "{name}: the first line must be a `# comment` saying what the file covers"
            );
        }
        assert!(
            EXPECTED.iter().any(|(f, _)| f == name),
            "{name} has no entry in EXPECTED"
        );
    }
    for (f, _) in EXPECTED {
        assert!(
            files.iter().any(|(name, _)| name == f),
            "EXPECTED names {f}, which is not in the corpus"
        );
    }
}

#[test]
fn snapshots_of_every_file_and_mode() {
    for (name, docs) in corpus() {
        for run in RUNS {
            snapshot(
                &format!("{name}@{}", run.suffix()),
                &snapshot_text(&inject_file(&docs, run)),
            );
        }
        snapshot(
            &format!("{name}@uninject"),
            &snapshot_text(&uninject_file(&docs)),
        );
    }
}

/// What one run of a file must give: the report lines, or an error (path, and words its
/// message must contain).
#[derive(Debug)]
enum Want {
    Lines(&'static [&'static str]),
    Error(&'static str, &'static [&'static str]),
}
use Want::{Error, Lines};

struct Expect {
    annotate: Want,
    manual: Want,
    /// `None`: the same as `manual`.
    fallback: Option<Want>,
    uninject: Want,
}

const ANNOTATED: &str = "injected (annotated; the webhook adds the proxy)";

macro_rules! lines {
    ($($l:expr),* $(,)?) => { Lines(&[$($l),*]) };
}

/// Per file. Workloads are written `kind "name"` and then the outcome.
const EXPECTED: &[(&str, Expect)] = &[
    (
        "cronjob.yaml",
        Expect {
            annotate: lines!(concat!("cronjob \"nightly-report\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("cronjob \"nightly-report\" injected"),
            fallback: Some(lines!(concat!("cronjob \"nightly-report\" injected", "; note: without a native sidecar the proxy keeps the Job's pod running: have the app call `curl -X POST http://127.0.0.1:4191/shutdown` when it is done, or use native sidecars (Kubernetes 1.29+)"))),
            uninject: lines!("cronjob \"nightly-report\" unchanged: not injected"),
        },
    ),
    (
        "daemonset.yaml",
        Expect {
            annotate: lines!(concat!("daemonset \"log-collector\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("daemonset \"log-collector\" injected"),
            fallback: None,
            uninject: lines!("daemonset \"log-collector\" unchanged: not injected"),
        },
    ),
    (
        "deployment-already-injected.yaml",
        Expect {
            annotate: lines!(
                "deployment \"details\" unchanged: already injected",
                "service \"details\" skipped: not a workload",
            ),
            manual: lines!(
                "deployment \"details\" unchanged: already injected",
                "service \"details\" skipped: not a workload",
            ),
            fallback: None,
            uninject: lines!(
                "deployment \"details\" uninjected",
                "service \"details\" skipped: not a workload",
            ),
        },
    ),
    (
        "deployment-existing-annotations.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"frontend\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"frontend\" injected"),
            fallback: None,
            uninject: lines!("deployment \"frontend\" unchanged: not injected"),
        },
    ),
    (
        "deployment-host-network.yaml",
        Expect {
            annotate: lines!(concat!(
                "deployment \"node-exporter-gateway\" skipped: hostNetwork: true: the pod shares ",
                "the node's network, whose traffic the proxy must not capture"
            )),
            manual: lines!(concat!(
                "deployment \"node-exporter-gateway\" skipped: hostNetwork: true: the pod shares ",
                "the node's network, whose traffic the proxy must not capture"
            )),
            fallback: None,
            uninject: lines!("deployment \"node-exporter-gateway\" unchanged: not injected"),
        },
    ),
    (
        "deployment-image-override.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"canary\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"canary\" injected"),
            fallback: None,
            uninject: lines!("deployment \"canary\" unchanged: not injected"),
        },
    ),
    (
        "deployment-init-container-disabled.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"payments\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"payments\" injected"),
            fallback: None,
            uninject: lines!("deployment \"payments\" unchanged: not injected"),
        },
    ),
    (
        "deployment-init-containers.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"orders\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"orders\" injected"),
            fallback: None,
            uninject: lines!("deployment \"orders\" unchanged: not injected"),
        },
    ),
    (
        "deployment-inject-disabled.yaml",
        Expect {
            annotate: lines!(concat!(
                "deployment \"batch-importer\" skipped: annotated mesh.dev/inject: disabled ",
                "(remove the annotation to inject it)"
            )),
            manual: lines!(concat!(
                "deployment \"batch-importer\" skipped: annotated mesh.dev/inject: disabled ",
                "(remove the annotation to inject it)"
            )),
            fallback: None,
            uninject: lines!("deployment \"batch-importer\" unchanged: not injected"),
        },
    ),
    (
        "deployment-log-level.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"recommendations\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"recommendations\" injected"),
            fallback: None,
            uninject: lines!("deployment \"recommendations\" unchanged: not injected"),
        },
    ),
    (
        "deployment-multi-container.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"checkout\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"checkout\" injected"),
            fallback: None,
            uninject: lines!("deployment \"checkout\" unchanged: not injected"),
        },
    ),
    (
        "deployment-named-ports.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"catalog\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"catalog\" injected"),
            fallback: None,
            uninject: lines!("deployment \"catalog\" unchanged: not injected"),
        },
    ),
    (
        "deployment-native-sidecar-false.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"legacy\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"legacy\" injected"),
            fallback: None,
            uninject: lines!("deployment \"legacy\" unchanged: not injected"),
        },
    ),
    (
        // YAML 1.1 octal modes (0400) are integers to kubectl; injection must keep them so.
        "deployment-octal-file-modes.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"tls-terminator\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"tls-terminator\" injected"),
            fallback: None,
            uninject: lines!("deployment \"tls-terminator\" unchanged: not injected"),
        },
    ),
    (
        "deployment-opaque-ports.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"pgbouncer\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"pgbouncer\" injected"),
            fallback: None,
            uninject: lines!("deployment \"pgbouncer\" unchanged: not injected"),
        },
    ),
    (
        "deployment-probes.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"inventory\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"inventory\" injected"),
            fallback: None,
            uninject: lines!("deployment \"inventory\" unchanged: not injected"),
        },
    ),
    (
        "deployment-proxy-resources.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"gateway\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"gateway\" injected"),
            fallback: None,
            uninject: lines!("deployment \"gateway\" unchanged: not injected"),
        },
    ),
    (
        "deployment-resources.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"search\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"search\" injected"),
            fallback: None,
            uninject: lines!("deployment \"search\" unchanged: not injected"),
        },
    ),
    (
        "deployment-skip-ports.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"billing\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"billing\" injected"),
            fallback: None,
            uninject: lines!("deployment \"billing\" unchanged: not injected"),
        },
    ),
    (
        "deployment-template-inject-enabled.yaml",
        Expect {
            annotate: lines!("deployment \"reviews-v3\" unchanged: already injected"),
            manual: lines!("deployment \"reviews-v3\" injected"),
            fallback: None,
            // uninject removes the `enabled` annotation, whoever wrote it.
            uninject: lines!("deployment \"reviews-v3\" uninjected"),
        },
    ),
    (
        "deployment-volumes.yaml",
        Expect {
            annotate: lines!(concat!("deployment \"auth\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"auth\" injected"),
            fallback: None,
            uninject: lines!("deployment \"auth\" unchanged: not injected"),
        },
    ),
    (
        // Strict JSON input (a Deployment with a probe on a named port).
        "deployment.json",
        Expect {
            annotate: lines!(concat!("deployment \"shipping\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("deployment \"shipping\" injected"),
            fallback: None,
            uninject: lines!("deployment \"shipping\" unchanged: not injected"),
        },
    ),
    (
        "error-bad-annotation.yaml",
        Expect {
            annotate: Error(
                "spec.template.metadata.annotations",
                &["mesh.dev/proxy-memory-limit", "'512MB'", "64Mi"],
            ),
            manual: Error(
                "spec.template.metadata.annotations",
                &["mesh.dev/proxy-memory-limit", "'512MB'", "64Mi"],
            ),
            fallback: None,
            uninject: lines!("deployment \"hungry\" unchanged: not injected"),
        },
    ),
    (
        "error-bad-inject-value.yaml",
        Expect {
            // The annotation is on the Deployment, not on its pod template.
            annotate: Error(
                "metadata.annotations",
                &["mesh.dev/inject", "'true'", "enabled or disabled"],
            ),
            manual: Error(
                "metadata.annotations",
                &["mesh.dev/inject", "'true'", "enabled or disabled"],
            ),
            fallback: None,
            uninject: lines!("deployment \"eager\" unchanged: not injected"),
        },
    ),
    (
        "error-broken-template.yaml",
        Expect {
            annotate: Error(
                "spec.template.spec.containers[1].ports[0].containerPort",
                &["not a valid PodSpec"],
            ),
            manual: Error(
                "spec.template.spec.containers[1].ports[0].containerPort",
                &["not a valid PodSpec"],
            ),
            fallback: None,
            uninject: lines!("deployment \"broken\" unchanged: not injected"),
        },
    ),
    (
        "error-proxy-port-conflict.yaml",
        Expect {
            annotate: Error("spec.containers[0].ports", &["'app'", "4191", "move the app"]),
            manual: Error("spec.containers[0].ports", &["'app'", "4191", "move the app"]),
            fallback: None,
            uninject: lines!("pod \"clash\" unchanged: not injected"),
        },
    ),
    (
        "job.yaml",
        Expect {
            annotate: lines!(concat!("job \"reindex\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("job \"reindex\" injected"),
            fallback: Some(lines!(concat!("job \"reindex\" injected", "; note: without a native sidecar the proxy keeps the Job's pod running: have the app call `curl -X POST http://127.0.0.1:4191/shutdown` when it is done, or use native sidecars (Kubernetes 1.29+)"))),
            uninject: lines!("job \"reindex\" unchanged: not injected"),
        },
    ),
    (
        "list-of-workloads.yaml",
        Expect {
            annotate: lines!(
                concat!("deployment \"cart\" ", "injected (annotated; the webhook adds the proxy)"),
                "service \"cart\" skipped: not a workload",
                "configmap \"cart-config\" skipped: not a workload",
            ),
            manual: lines!(
                "deployment \"cart\" injected",
                "service \"cart\" skipped: not a workload",
                "configmap \"cart-config\" skipped: not a workload",
            ),
            fallback: None,
            uninject: lines!(
                "deployment \"cart\" unchanged: not injected",
                "service \"cart\" skipped: not a workload",
                "configmap \"cart-config\" skipped: not a workload",
            ),
        },
    ),
    (
        "multi-document.yaml",
        Expect {
            annotate: lines!(
                "serviceaccount \"reviews\" skipped: not a workload",
                "configmap \"reviews\" skipped: not a workload",
                concat!("deployment \"reviews-v2\" ", "injected (annotated; the webhook adds the proxy)"),
                "service \"reviews\" skipped: not a workload",
                "poddisruptionbudget \"reviews\" skipped: not a workload",
            ),
            manual: lines!(
                "serviceaccount \"reviews\" skipped: not a workload",
                "configmap \"reviews\" skipped: not a workload",
                "deployment \"reviews-v2\" injected",
                "service \"reviews\" skipped: not a workload",
                "poddisruptionbudget \"reviews\" skipped: not a workload",
            ),
            fallback: None,
            uninject: lines!(
                "serviceaccount \"reviews\" skipped: not a workload",
                "configmap \"reviews\" skipped: not a workload",
                "deployment \"reviews-v2\" unchanged: not injected",
                "service \"reviews\" skipped: not a workload",
                "poddisruptionbudget \"reviews\" skipped: not a workload",
            ),
        },
    ),
    (
        "namespace-plain.yaml",
        Expect {
            annotate: lines!(concat!("namespace \"inventory\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!(concat!(
                "namespace \"inventory\" skipped: a namespace is not a workload (without --manual, ",
                "inject annotates it for the webhook)"
            )),
            fallback: None,
            uninject: lines!("namespace \"inventory\" unchanged: not injected"),
        },
    ),
    (
        "namespace-with-workload.yaml",
        Expect {
            annotate: lines!(
                "namespace \"payments\" unchanged: already injected",
                concat!("deployment \"fraud-check\" ", "injected (annotated; the webhook adds the proxy)"),
            ),
            manual: lines!(
                concat!(
                    "namespace \"payments\" skipped: a namespace is not a workload (without --manual, ",
                    "inject annotates it for the webhook)"
                ),
                "deployment \"fraud-check\" injected",
            ),
            fallback: None,
            uninject: lines!(
                "namespace \"payments\" uninjected",
                "deployment \"fraud-check\" unchanged: not injected",
            ),
        },
    ),
    (
        "non-workloads.yaml",
        Expect {
            annotate: lines!(
                "service \"frontend\" skipped: not a workload",
                "configmap \"frontend-config\" skipped: not a workload",
                "secret \"frontend-tls\" skipped: not a workload",
                "ingress \"frontend\" skipped: not a workload",
            ),
            manual: lines!(
                "service \"frontend\" skipped: not a workload",
                "configmap \"frontend-config\" skipped: not a workload",
                "secret \"frontend-tls\" skipped: not a workload",
                "ingress \"frontend\" skipped: not a workload",
            ),
            fallback: None,
            uninject: lines!(
                "service \"frontend\" skipped: not a workload",
                "configmap \"frontend-config\" skipped: not a workload",
                "secret \"frontend-tls\" skipped: not a workload",
                "ingress \"frontend\" skipped: not a workload",
            ),
        },
    ),
    (
        "pod-bare.yaml",
        Expect {
            annotate: lines!(concat!("pod \"debug-shell\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("pod \"debug-shell\" injected"),
            fallback: None,
            uninject: lines!("pod \"debug-shell\" unchanged: not injected"),
        },
    ),
    (
        "pod-generate-name.yaml",
        Expect {
            annotate: lines!(concat!("pod \"loadtest-*\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("pod \"loadtest-*\" injected"),
            fallback: None,
            uninject: lines!("pod \"loadtest-*\" unchanged: not injected"),
        },
    ),
    (
        "pod-security-context.yaml",
        Expect {
            annotate: lines!(concat!("pod \"hardened\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("pod \"hardened\" injected"),
            fallback: None,
            uninject: lines!("pod \"hardened\" unchanged: not injected"),
        },
    ),
    (
        "replicaset.yaml",
        Expect {
            annotate: lines!(concat!("replicaset \"web-7d9f8b6c5\" ", "injected (annotated; the webhook adds the proxy)")),
            manual: lines!("replicaset \"web-7d9f8b6c5\" injected"),
            fallback: None,
            uninject: lines!("replicaset \"web-7d9f8b6c5\" unchanged: not injected"),
        },
    ),
    (
        "statefulset-volume-claims.yaml",
        Expect {
            annotate: lines!(
                "service \"ledger\" skipped: not a workload",
                concat!("statefulset \"ledger\" ", "injected (annotated; the webhook adds the proxy)"),
            ),
            manual: lines!(
                "service \"ledger\" skipped: not a workload",
                "statefulset \"ledger\" injected",
            ),
            fallback: None,
            uninject: lines!(
                "service \"ledger\" skipped: not a workload",
                "statefulset \"ledger\" unchanged: not injected",
            ),
        },
    ),
];

type Outputs = Result<(Vec<Doc>, Vec<Report>), mesh_inject::InjectError>;

/// Compares one run with what it should give; the difference, if any.
fn check(name: &str, what: &str, want: &Want, got: Outputs) -> Option<String> {
    match (want, got) {
        (Lines(lines), Ok((_, reports))) => {
            let got: Vec<String> = reports.iter().map(Report::to_string).collect();
            (got != *lines).then(|| format!("{name} ({what}): reports {got:#?}, wanted {lines:#?}"))
        }
        (Error(path, words), Err(e)) => {
            if e.path != *path {
                return Some(format!(
                    "{name} ({what}): error at {}, wanted at {path}: {e}",
                    e.path
                ));
            }
            words
                .iter()
                .find(|w| !e.message.contains(**w))
                .map(|w| format!("{name} ({what}): '{w}' is not in the message: {e}"))
        }
        (want, got) => Some(format!("{name} ({what}): wanted {want:?}, got {got:?}")),
    }
}

#[test]
fn reports_of_every_file() {
    let files: BTreeMap<String, Vec<Doc>> = corpus().into_iter().collect();
    let mut wrong = Vec::new();
    for (name, expect) in EXPECTED {
        let docs = &files[*name];
        let fallback = expect.fallback.as_ref().unwrap_or(&expect.manual);
        wrong.extend(
            [
                check(
                    name,
                    "annotate",
                    &expect.annotate,
                    inject_file(docs, Run::Annotate),
                ),
                check(
                    name,
                    "manual",
                    &expect.manual,
                    inject_file(docs, Run::Manual),
                ),
                check(
                    name,
                    "manual-fallback",
                    fallback,
                    inject_file(docs, Run::ManualFallback),
                ),
                check(name, "uninject", &expect.uninject, uninject_file(docs)),
            ]
            .into_iter()
            .flatten(),
        );
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The Annotated outcome displays as the text the table spells out.
    assert_eq!(Outcome::Annotated.to_string(), ANNOTATED);
}

/// Whether a document (or any List item) already has the sidecar.
fn has_sidecar(d: &Doc) -> bool {
    serde_yaml_ng::to_string(d)
        .unwrap()
        .contains(&format!("name: {PROXY_CONTAINER}\n"))
}

/// `x` without the `mesh.dev/inject: enabled` annotations uninject removes (the object's own,
/// its pod template's and its List items'), dropping annotations/metadata left empty.
fn without_enabled(d: &Doc) -> Doc {
    fn strip(meta: &mut Value) -> bool {
        let Some(m) = meta.as_mapping_mut() else {
            return false;
        };
        let Some(Value::Mapping(a)) = m.get_mut("annotations") else {
            return false;
        };
        if a.get(INJECT_ANNOTATION).and_then(Value::as_str) != Some("enabled") {
            return false;
        }
        a.shift_remove(INJECT_ANNOTATION);
        if a.is_empty() {
            m.shift_remove("annotations");
        }
        true
    }
    fn walk(d: &mut Value) {
        if let Some(Value::Sequence(items)) = d.get_mut("items") {
            items.iter_mut().for_each(walk);
            return;
        }
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        let template: &[&str] = match kind.as_str() {
            "Pod" | "Namespace" => &[],
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        };
        let mut t = &mut *d;
        for k in template {
            match t.get_mut(*k) {
                Some(next) => t = next,
                None => return,
            }
        }
        if let Value::Mapping(tm) = t {
            if let Some(meta) = tm.get_mut("metadata") {
                if strip(meta) && meta.as_mapping().is_some_and(|m| m.is_empty()) {
                    tm.shift_remove("metadata");
                }
            }
        }
    }
    let mut d = d.clone();
    walk(&mut d);
    d
}

#[test]
fn idempotence_and_round_trips() {
    let mut round_trips = 0;
    let mut enabled_cases = 0;
    for (name, docs) in corpus() {
        for run in RUNS {
            let ctx = context(&docs, run.settings());
            for (i, x) in docs.iter().enumerate() {
                let what = format!("{name} document {i} ({})", run.suffix());
                let mut once = x.clone();
                if let Err(e) = inject(&mut once, &ctx, run.mode()) {
                    assert_eq!(&once, x, "{what}: the error {e} changed the object");
                    continue;
                }
                let mut twice = once.clone();
                let again = inject(&mut twice, &ctx, run.mode()).unwrap();
                assert_eq!(twice, once, "{what}: injecting twice differs from once");
                assert!(
                    again.iter().all(|r| !r.outcome.changed()),
                    "{what}: the second injection reported a change: {again:?}"
                );

                let mut back = once.clone();
                uninject(&mut back).unwrap();
                if has_sidecar(x) {
                    // An already-injected input (written with the default settings): injecting
                    // what uninject leaves gives it back.
                    if run == Run::Manual {
                        let mut again = back.clone();
                        inject(&mut again, &ctx, Mode::Manual).unwrap();
                        assert_eq!(
                            to_yaml(&[again]),
                            to_yaml(std::slice::from_ref(x)),
                            "{what}: inject(uninject(x)) is not x"
                        );
                    }
                    continue;
                }
                // YAML 1.1 octal modes come back as the integers kubectl reads.
                let mut x_read = x.clone();
                mesh_inject::normalize(&mut x_read);
                let expected = without_enabled(&x_read);
                if expected != x_read {
                    enabled_cases += 1;
                }
                round_trips += 1;
                assert_eq!(
                    to_yaml(std::slice::from_ref(&back)),
                    to_yaml(std::slice::from_ref(&expected)),
                    "{what}: uninject(inject(x)) is not x (less a mesh.dev/inject: enabled)"
                );
                assert_eq!(back, expected, "{what}: same text, different values");
                // Uninject is idempotent too.
                let mut back2 = back.clone();
                let r = uninject(&mut back2).unwrap();
                assert_eq!(back2, back, "{what}: uninject twice differs from once");
                assert!(r.iter().all(|r| !r.outcome.changed()), "{what}: {r:?}");
            }
        }
    }
    assert!(round_trips > 80, "only {round_trips} round trips checked");
    // The Namespace and the pod template that carry `enabled` (each in three runs).
    assert_eq!(
        enabled_cases, 6,
        "documents that carry mesh.dev/inject: enabled"
    );
}
