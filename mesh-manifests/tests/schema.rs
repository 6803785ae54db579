//! Every rendered object, for the default values and each `--set` combination, validates
//! against the Kubernetes 1.32 OpenAPI schemas with `kubernetes-validate --strict` (unknown
//! fields fail as well as wrong types), as in mesh-inject/tests/schema.rs: one run over a
//! temporary directory with one object per file, the output naming the failing files.
//! Without the tool the tests print why they skip, unless `MESH_TEST_REQUIRE_PEERS` is set.
//! `validator_rejects_a_broken_deployment` proves the check can fail.

mod support;

use std::path::PathBuf;
use std::process::Command;

use mesh_manifests::render;
use serde_json::Value;
use support::{validator_or_skip, values_with, SETS};

/// The oldest Kubernetes version the mesh supports.
const KUBERNETES_VERSION: &str = "1.32.0";

/// Validates the objects; returns the files that failed (with the validator's lines) and
/// those it did not confirm.
fn validate(cmd: &[String], objects: &[(String, Value)]) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (i, (name, obj)) in objects.iter().enumerate() {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.path().join(format!("{i:03}-{safe}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(obj).unwrap()).unwrap();
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
    let mut bad = Vec::new();
    for (name, path) in &files {
        let p = path.to_string_lossy();
        let lines: Vec<&str> = output
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(&*p))
            .collect();
        let failed = lines
            .iter()
            .any(|l| l.starts_with("ERROR") || l.starts_with("WARN"));
        let passed = lines
            .iter()
            .any(|l| l.starts_with("INFO") && l.contains(" passed for resource "));
        if failed || !passed {
            bad.push(format!("{name}: {}", lines.join(" | ")));
        }
    }
    assert!(
        out.status.success() || !bad.is_empty(),
        "kubernetes-validate exited with {} without naming a failing file:\n{output}",
        out.status
    );
    (bad, output)
}

fn named(objects: Vec<Value>, prefix: &str) -> Vec<(String, Value)> {
    objects
        .into_iter()
        .map(|o| {
            let name = format!(
                "{prefix}-{}-{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            );
            (name, o)
        })
        .collect()
}

#[test]
fn every_rendered_object_validates() {
    let Some(cmd) = validator_or_skip("every_rendered_object_validates") else {
        return;
    };
    let mut all = Vec::new();
    for (name, set) in SETS {
        all.extend(named(render(&values_with(set)).unwrap(), name));
    }
    let count = all.len();
    let (bad, output) = validate(&cmd, &all);
    assert!(
        bad.is_empty(),
        "{} of {count} objects fail:\n{}\n\n{output}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn validator_rejects_a_broken_deployment() {
    let Some(cmd) = validator_or_skip("validator_rejects_a_broken_deployment") else {
        return;
    };
    let objects = render(&values_with("")).unwrap();
    let mut d = objects
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    d["spec"]["replicas"] = Value::String("two".into());
    d["spec"]["template"]["spec"]["containers"][0]["unknownField"] = Value::Bool(true);
    let (bad, output) = validate(&cmd, &[("broken".into(), d)]);
    assert_eq!(bad.len(), 1, "{output}");
}
