//! Schema validation of what injection writes: every corpus input, every object `inject`
//! produces from it (annotate, manual, manual with the fallback sidecar, manual without
//! mesh-init) and the webhook configuration, checked against the Kubernetes 1.32 OpenAPI
//! schemas by `kubernetes-validate` (PyPI, schemas shipped offline) with `--strict`, so an
//! unknown field fails as well as a wrong type.
//!
//! The validator runs once over a temporary directory holding one object per file; its
//! output names the failing files. Without the tool the tests print why they skip, unless
//! `MESH_TEST_REQUIRE_PEERS` is set (scripts/test.sh), where they fail.
//! `validator_rejects_unknown_fields_and_wrong_types` proves the check can fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_inject::{
    inject, uninject, webhook_configuration, Context, Doc, FailurePolicy, Mode, Settings,
    WebhookConfig,
};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The oldest Kubernetes version the mesh supports (k8s-openapi is built for it too).
const KUBERNETES_VERSION: &str = "1.32.0";

/// How to run `kubernetes-validate`: its script, else the module through python3.
fn validator() -> Option<Vec<String>> {
    let candidates = [
        vec!["kubernetes-validate".to_string()],
        vec![
            "python3".to_string(),
            "-m".to_string(),
            "kubernetes_validate".to_string(),
        ],
    ];
    candidates.into_iter().find(|c| {
        Command::new(&c[0])
            .args(&c[1..])
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The validator, or `None` after printing why the test skips (a failure when peers are
/// required).
fn validator_or_skip(test: &str) -> Option<Vec<String>> {
    let found = validator();
    if found.is_none() {
        let why =
            "kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)";
        if std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_some() {
            panic!(
                "{test}: {why}; MESH_TEST_REQUIRE_PEERS is set, so this fails instead of skipping"
            );
        }
        eprintln!("skipping {test}: {why}");
    }
    found
}

/// What the validator said about each file.
#[derive(Debug, Default)]
struct Verdict {
    /// Files with an ERROR or WARN line (a missing schema is a WARN), with the lines.
    failed: Vec<(String, Vec<String>)>,
    /// Files without a "passed" line.
    unconfirmed: Vec<String>,
    output: String,
}

/// Writes each `(name, object)` to its own file in a temporary directory and validates them
/// all in one run.
fn validate(cmd: &[String], objects: &[(String, Doc)]) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (i, (name, obj)) in objects.iter().enumerate() {
        // JSON (which the validator reads as YAML): what is checked is the object's values,
        // not how a YAML emitter quotes them.
        let file = format!("{i:03}-{}.json", sanitize(name));
        let path = dir.path().join(&file);
        let json: serde_json::Value = serde_yaml_ng::from_value(for_validator(obj)).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        files.push((name.clone(), path));
    }
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["-k", KUBERNETES_VERSION, "--strict"])
        .args(files.iter().map(|(_, p)| p))
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdict = Verdict {
        output: output.clone(),
        ..Verdict::default()
    };
    let lines_of = |path: &Path| -> Vec<&str> {
        let p = path.to_string_lossy();
        output
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(&*p))
            .collect()
    };
    for (name, path) in &files {
        let lines = lines_of(path);
        let bad: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
            .map(|l| l.to_string())
            .collect();
        if !bad.is_empty() {
            verdict.failed.push((name.clone(), bad));
        } else if !lines
            .iter()
            .any(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
        {
            verdict.unconfirmed.push(name.clone());
        }
    }
    // A non-zero exit must be explained by a failing file.
    assert!(
        out.status.success() || !verdict.failed.is_empty(),
        "kubernetes-validate exited with {} without naming a failing file:\n{output}",
        out.status
    );
    verdict
}

/// kubernetes-validate cannot report on an object without `metadata.name` (it crashes with
/// "could not be validated: 'name'"), and the schemas do not require one: an object named by
/// `generateName` is validated under a name made from it.
fn for_validator(obj: &Doc) -> Doc {
    let mut obj = obj.clone();
    if let Some(Value::Mapping(meta)) = obj.get_mut("metadata") {
        if meta.get("name").is_none() {
            if let Some(g) = meta.get("generateName").and_then(Value::as_str) {
                let name = format!("{g}0");
                meta.insert("name".into(), name.into());
            }
        }
    }
    obj
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every corpus file and its documents (the same reading as tests/corpus.rs).
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
                .map(|d| Value::deserialize(d).unwrap())
                .filter(|d| !d.is_null())
                .collect();
            (name, docs)
        })
        .collect()
}

/// The file's Namespaces' annotations as the namespace defaults, as meshctl does.
fn context(docs: &[Doc], settings: Settings) -> Context {
    let namespaces = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Namespace"))
        .filter_map(|d| {
            let name = d["metadata"]["name"].as_str()?.to_string();
            let annotations = d["metadata"]["annotations"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            Some((k.as_str()?.to_string(), v.as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some((name, annotations))
        })
        .collect();
    Context {
        settings,
        namespaces,
        ..Context::default()
    }
}

/// A List's items, each on its own (the validator has no schema for `v1/List`).
fn flatten(name: &str, d: &Doc, out: &mut Vec<(String, Doc)>) {
    let kind = d["kind"].as_str().unwrap_or_default();
    match d.get("items") {
        Some(Value::Sequence(items)) if kind.ends_with("List") => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{name}.items[{i}]"), item, out);
            }
        }
        _ => out.push((name.to_string(), d.clone())),
    }
}

/// Every object to validate, named `file@mode#document`; and the runs injection refused.
fn objects() -> (Vec<(String, Doc)>, Vec<String>) {
    let runs: [(&str, Mode, Settings); 4] = [
        ("annotate", Mode::Annotate, Settings::default()),
        ("manual", Mode::Manual, Settings::default()),
        (
            "manual-fallback",
            Mode::Manual,
            Settings {
                native_sidecar: false,
                ..Settings::default()
            },
        ),
        (
            "manual-no-init",
            Mode::Manual,
            Settings {
                init_container: false,
                ..Settings::default()
            },
        ),
    ];
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (file, docs) in corpus() {
        // The error cases' inputs are broken on purpose (or injection refuses them).
        let error_case = file.starts_with("error-");
        for (i, d) in docs.iter().enumerate() {
            if !error_case {
                // As kubectl reads it (YAML 1.1 octal file modes are integers).
                let mut read = d.clone();
                mesh_inject::normalize(&mut read);
                flatten(&format!("{file}@input#{i}"), &read, &mut out);
                let mut u = d.clone();
                uninject(&mut u).unwrap();
                flatten(&format!("{file}@uninject#{i}"), &u, &mut out);
            }
            for (mode_name, mode, settings) in &runs {
                let ctx = context(&docs, settings.clone());
                let mut d = d.clone();
                match inject(&mut d, &ctx, *mode) {
                    Ok(_) => flatten(&format!("{file}@{mode_name}#{i}"), &d, &mut out),
                    Err(e) => refused.push(format!("{file}@{mode_name}#{i}: {e}")),
                }
            }
        }
    }
    (out, refused)
}

fn report(v: &Verdict) -> String {
    let mut s = String::new();
    for (name, lines) in &v.failed {
        s.push_str(&format!("{name}:\n  {}\n", lines.join("\n  ")));
    }
    for name in &v.unconfirmed {
        s.push_str(&format!("{name}: no \"passed\" line from the validator\n"));
    }
    s
}

#[test]
fn every_injected_object_is_valid_kubernetes() {
    let Some(cmd) = validator_or_skip("every_injected_object_is_valid_kubernetes") else {
        return;
    };
    let (objects, refused) = objects();
    for r in &refused {
        // Asserted (or expected) by tests/corpus.rs; here only what injection wrote counts.
        eprintln!("not validated, injection refused it: {r}");
    }
    let injected = objects
        .iter()
        .filter(|(n, _)| n.contains("@manual"))
        .count();
    assert!(injected >= 3 * 28, "only {injected} injected objects");
    let v = validate(&cmd, &objects);
    assert!(
        v.failed.is_empty() && v.unconfirmed.is_empty(),
        "{} of {} objects are not valid Kubernetes {KUBERNETES_VERSION} (strict):\n{}",
        v.failed.len() + v.unconfirmed.len(),
        objects.len(),
        report(&v)
    );
}

#[test]
fn webhook_configuration_is_valid_kubernetes() {
    let Some(cmd) = validator_or_skip("webhook_configuration_is_valid_kubernetes") else {
        return;
    };
    let objects = vec![
        (
            "webhook-default".to_string(),
            webhook_configuration(&WebhookConfig::default()),
        ),
        (
            "webhook-fail-with-ca".to_string(),
            webhook_configuration(&WebhookConfig {
                name: "mesh-injector".into(),
                namespace: "mesh".into(),
                service: "controller".into(),
                port: 8443,
                ca_bundle_pem: Some(
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                ),
                failure_policy: FailurePolicy::Fail,
                timeout_seconds: 10,
                ..WebhookConfig::default()
            }),
        ),
    ];
    let v = validate(&cmd, &objects);
    assert!(
        v.failed.is_empty() && v.unconfirmed.is_empty(),
        "the webhook configuration is not valid:\n{}",
        report(&v)
    );
}

/// The test of the tests: the same run must reject an injected Deployment with an unknown
/// field, one with a wrong type and an object of an unknown kind, and pass a valid one.
#[test]
fn validator_rejects_unknown_fields_and_wrong_types() {
    let Some(cmd) = validator_or_skip("validator_rejects_unknown_fields_and_wrong_types") else {
        return;
    };
    let files = corpus();
    let (_, docs) = files
        .iter()
        .find(|(f, _)| f == "deployment-probes.yaml")
        .unwrap();
    let mut good = docs[0].clone();
    inject(&mut good, &Context::default(), Mode::Manual).unwrap();

    let mut bogus_field = good.clone();
    bogus_field["spec"]["template"]["spec"]["initContainers"][1]
        .as_mapping_mut()
        .unwrap()
        .insert("restartPolicyy".into(), "Always".into());
    let mut wrong_type = good.clone();
    wrong_type["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]
        ["serviceAccountToken"]["expirationSeconds"] = "ten minutes".into();
    let mut unknown_kind = good.clone();
    unknown_kind["kind"] = "Deploymnet".into();

    let v = validate(
        &cmd,
        &[
            ("good".into(), good),
            ("bogus-field".into(), bogus_field),
            ("wrong-type".into(), wrong_type),
            ("unknown-kind".into(), unknown_kind),
        ],
    );
    let failed: Vec<&str> = v.failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        failed,
        ["bogus-field", "wrong-type", "unknown-kind"],
        "{}",
        v.output
    );
    assert!(v.unconfirmed.is_empty(), "{}", v.output);
    let lines = |n: usize| v.failed[n].1.join("\n");
    assert!(
        lines(0).contains("'restartPolicyy' was unexpected"),
        "{}",
        lines(0)
    );
    assert!(lines(1).contains("expirationSeconds"), "{}", lines(1));
    assert!(lines(2).contains("Deploymnet"), "{}", lines(2));
}
