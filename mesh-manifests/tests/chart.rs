//! The Helm chart: the checked-in `charts/mesh` is exactly what `chart_files()` generates
//! (`MESH_UPDATE_CHART=1` rewrites it), `helm lint` passes, and `helm template` renders the
//! same objects as `render()` for the same values, with the real helm binary.
//!
//! The one difference allowed: the ConfigMap's `values.yaml` key, which the chart writes
//! with `toYaml` (Go's key order and quoting); it is compared as parsed YAML.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mesh_manifests::chart::chart_files;
use mesh_manifests::render;
use serde_json::Value;
use support::{certificates_file, chart_dir, helm_or_skip, index, parse_stream, values_with, SETS};

#[test]
fn checked_in_chart_is_generated() {
    let files = chart_files().unwrap();
    let dir = chart_dir();
    if std::env::var_os("MESH_UPDATE_CHART").is_some() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        for (path, text) in &files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        eprintln!("wrote {} files to {}", files.len(), dir.display());
        return;
    }
    let mut on_disk = BTreeSet::new();
    collect(&dir, &dir, &mut on_disk);
    let generated: BTreeSet<_> = files.keys().cloned().collect();
    assert_eq!(
        on_disk,
        generated,
        "charts/mesh has other files than the generator makes; regenerate with: {}",
        mesh_manifests::chart::REGENERATE
    );
    for (path, text) in &files {
        let disk = std::fs::read_to_string(dir.join(path)).unwrap();
        assert!(
            &disk == text,
            "charts/mesh/{} differs from the generated one; regenerate with: {}",
            path.display(),
            mesh_manifests::chart::REGENERATE
        );
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeSet<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// The chart's values.yaml holds exactly the defaults of `Values`.
#[test]
fn chart_values_are_the_defaults() {
    let files = chart_files().unwrap();
    let text = &files[Path::new("values.yaml")];
    let parsed: Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(parsed, mesh_manifests::Values::defaults().to_json());
}

fn helm_template(helm: &str, set: &str) -> std::process::Output {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "mesh"])
        .arg(chart_dir())
        .arg("-f")
        .arg(certificates_file());
    if !set.is_empty() {
        cmd.args(["--set", set]);
    }
    cmd.output().unwrap()
}

#[test]
fn helm_lint_passes() {
    let Some(helm) = helm_or_skip("helm_lint_passes") else {
        return;
    };
    let out = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .arg("-f")
        .arg(certificates_file())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm lint failed:\n{text}");
    assert!(text.contains("0 chart(s) failed"), "{text}");
}

#[test]
fn helm_template_renders_the_same_objects() {
    let Some(helm) = helm_or_skip("helm_template_renders_the_same_objects") else {
        return;
    };
    for (name, set) in SETS {
        let out = helm_template(&helm, set);
        assert!(
            out.status.success(),
            "{name}: helm template failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let from_helm = index(&parse_stream(&String::from_utf8(out.stdout).unwrap()));
        let from_rust = index(&render(&values_with(set)).unwrap());
        let helm_keys: Vec<_> = from_helm.keys().collect();
        let rust_keys: Vec<_> = from_rust.keys().collect();
        assert_eq!(helm_keys, rust_keys, "{name}: the object sets differ");
        for (key, mut h) in from_helm {
            let mut r = from_rust[&key].clone();
            if key.0 == "ConfigMap" {
                let parse = |o: &mut Value| -> Value {
                    let text = o["data"]["values.yaml"].take();
                    serde_yaml_ng::from_str(text.as_str().unwrap()).unwrap()
                };
                assert_eq!(
                    parse(&mut h),
                    parse(&mut r),
                    "{name}: ConfigMap values.yaml"
                );
            }
            assert!(
                h == r,
                "{name}: {key:?} differs\nhelm:\n{}\nrender:\n{}",
                serde_yaml_ng::to_string(&h).unwrap(),
                serde_yaml_ng::to_string(&r).unwrap()
            );
        }
    }
}

/// The chart refuses what meshctl refuses: unknown keys, wrong types, missing certificates.
#[test]
fn helm_refuses_bad_values() {
    let Some(helm) = helm_or_skip("helm_refuses_bad_values") else {
        return;
    };
    for (set, expect) in [
        ("controler.replicas=3", "controler"),
        ("controller.replicas=many", "replicas"),
        ("webhook.failurePolicy=Maybe", "failurePolicy"),
        ("controller.resources.cpuRequest=lots", "cpuRequest"),
        (
            "certificates.issuerKeyPEM=",
            "certificates.issuerKeyPEM is required",
        ),
    ] {
        let out = helm_template(&helm, set);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(err.contains(expect), "--set {set}: {err}");
        // meshctl refuses the same.
        let mut v = values_with("");
        let refused = v.set(set).is_err() || mesh_manifests::render(&v).is_err();
        assert!(refused, "--set {set} is accepted by Values");
    }
}
