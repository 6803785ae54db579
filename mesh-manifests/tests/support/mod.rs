//! Shared by the integration tests: values with the fixed test certificates, the `--set`
//! combinations every comparison covers, and finding the peer tools (helm,
//! kubernetes-validate) with the skip-or-fail rule of `MESH_TEST_REQUIRE_PEERS`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_manifests::Values;
use serde_json::Value;

/// The `--set` combinations of the snapshots and the Helm comparison, with a short name.
pub const SETS: &[(&str, &str)] = &[
    ("default", ""),
    ("replicas", "controller.replicas=3"),
    ("no-gateway-crds", "gatewayAPI.installCRDs=false"),
    (
        "fallback-sidecar-fail",
        "proxy.nativeSidecar=false,webhook.failurePolicy=Fail",
    ),
];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The values file holding the six fixed test certificates.
pub fn certificates_file() -> PathBuf {
    fixtures().join("certificates.yaml")
}

/// The checked-in chart.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh")
}

/// Defaults, then the fixed test certificates, then `set` (if not empty).
pub fn values_with(set: &str) -> Values {
    let mut v = Values::defaults();
    let file = certificates_file();
    v.merge_yaml(
        &std::fs::read_to_string(&file).unwrap(),
        &file.display().to_string(),
    )
    .unwrap();
    if !set.is_empty() {
        v.set(set).unwrap();
    }
    v
}

/// Objects by (kind, namespace, name).
pub fn index(objects: &[Value]) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for o in objects {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let key = (
            s(&o["kind"]),
            s(&o["metadata"]["namespace"]),
            s(&o["metadata"]["name"]),
        );
        assert!(
            out.insert(key.clone(), o.clone()).is_none(),
            "duplicate {key:?}"
        );
    }
    out
}

/// Every document of a YAML stream, as JSON (empty documents skipped).
pub fn parse_stream(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .map(|d| serde_json::to_value(d).unwrap())
        .collect()
}

/// `None` after printing why `test` skips; a failure when `MESH_TEST_REQUIRE_PEERS` is set.
pub fn skip(test: &str, why: &str) -> Option<Vec<String>> {
    if std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_some() {
        panic!("{test}: {why}; MESH_TEST_REQUIRE_PEERS is set, so this fails instead of skipping");
    }
    eprintln!("skipping {test}: {why}");
    None
}

fn runs(cmd: &[String], arg: &str) -> bool {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The helm binary: `MESH_HELM`, else `helm` on PATH.
pub fn helm_or_skip(test: &str) -> Option<String> {
    let helm = std::env::var("MESH_HELM").unwrap_or_else(|_| "helm".into());
    if runs(std::slice::from_ref(&helm), "version") {
        return Some(helm);
    }
    skip(
        test,
        &format!("helm ({helm}) is not installed; scripts/test.sh installs it, or set MESH_HELM"),
    );
    None
}

/// How to run kubernetes-validate.
pub fn validator_or_skip(test: &str) -> Option<Vec<String>> {
    let candidates = [
        vec!["kubernetes-validate".to_string()],
        vec![
            "python3".to_string(),
            "-m".to_string(),
            "kubernetes_validate".to_string(),
        ],
    ];
    match candidates.into_iter().find(|c| runs(c, "--version")) {
        Some(c) => Some(c),
        None => skip(
            test,
            "kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)",
        ),
    }
}
