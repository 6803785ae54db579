//! `meshctl inject|uninject` on manifests, through the real binary: files, directories,
//! stdin, multi-document YAML, Lists, JSON in and out, namespace annotations from the input,
//! idempotence, uninject, every error case (file, document number and line named; nothing on
//! stdout; exit code 1) and usage errors (exit code 2).

mod support;

use std::fs;

use serde_yaml_ng::Value;
use support::{meshctl, meshctl_env, names, yaml_docs};

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
      containers:
      - name: app
        image: app:1
        ports:
        - {name: http, containerPort: 8080}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  ports:
  - port: 80
";

fn pod_spec(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

#[test]
fn default_mode_annotates_a_multi_document_file_and_reports_each_object() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("app.yaml"),
        format!("# the app\n{DEPLOY}---\n{SERVICE}"),
    )
    .unwrap();
    let run = meshctl(dir.path(), &["inject", "app.yaml"], "");
    assert_eq!(run.code, Some(0), "{run:?}");
    let docs = yaml_docs(&run.stdout);
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0]["spec"]["template"]["metadata"]["annotations"]["mesh.dev/inject"].as_str(),
        Some("enabled")
    );
    // Only the annotation: no sidecar, and the service is untouched.
    assert_eq!(names(pod_spec(&docs[0]), "containers"), ["app"]);
    assert!(pod_spec(&docs[0]).get("initContainers").is_none());
    assert_eq!(docs[1], serde_yaml_ng::from_str::<Value>(SERVICE).unwrap());
    // Keys keep their order, the documents are separated by ---, comments are gone.
    assert!(run
        .stdout
        .starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"));
    assert!(run
        .stdout
        .contains("\n---\napiVersion: v1\nkind: Service\n"));
    assert!(!run.stdout.contains("# the app"));
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "deployment \"web\" injected (annotated; the webhook adds the proxy)",
            "service \"web\" skipped: not a workload",
            "meshctl inject: 2 objects: 1 injected, 0 unchanged, 1 skipped",
        ]
    );
}

#[test]
fn manual_writes_the_native_sidecar_and_fallback_on_request() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("d.yaml"), DEPLOY).unwrap();
    let run = meshctl(dir.path(), &["inject", "--manual", "d.yaml"], "");
    assert_eq!(run.code, Some(0), "{run:?}");
    let doc = &yaml_docs(&run.stdout)[0];
    assert_eq!(
        names(pod_spec(doc), "initContainers"),
        ["mesh-init", "mesh-proxy"]
    );
    assert_eq!(
        pod_spec(doc)["initContainers"][1]["restartPolicy"].as_str(),
        Some("Always")
    );
    assert_eq!(names(pod_spec(doc), "containers"), ["app"]);
    assert_eq!(
        run.stderr.lines().next(),
        Some("deployment \"web\" injected")
    );

    let run = meshctl(
        dir.path(),
        &[
            "inject",
            "--manual",
            "--native-sidecar=false",
            "--proxy-image=registry.example/mesh-proxy:9",
            "d.yaml",
        ],
        "",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let doc = &yaml_docs(&run.stdout)[0];
    assert_eq!(names(pod_spec(doc), "initContainers"), ["mesh-init"]);
    assert_eq!(names(pod_spec(doc), "containers"), ["mesh-proxy", "app"]);
    assert_eq!(
        pod_spec(doc)["containers"][0]["image"].as_str(),
        Some("registry.example/mesh-proxy:9")
    );

    // The settings also come from the environment.
    let run = meshctl_env(
        dir.path(),
        &["inject", "--manual", "d.yaml"],
        "",
        &[("MESH_INJECT_INIT_CONTAINER", "false")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let doc = &yaml_docs(&run.stdout)[0];
    assert_eq!(names(pod_spec(doc), "initContainers"), ["mesh-proxy"]);
}

#[test]
fn settings_flags_without_manual_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("d.yaml"), DEPLOY).unwrap();
    let run = meshctl(
        dir.path(),
        &["inject", "--native-sidecar=false", "d.yaml"],
        "",
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("--native-sidecar shapes the sidecar that --manual writes"),
        "{}",
        run.stderr
    );
}

#[test]
fn directories_are_read_recursively_in_name_order_skipping_hidden_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("manifests");
    fs::create_dir_all(root.join("b-sub")).unwrap();
    fs::create_dir_all(root.join(".hidden")).unwrap();
    let named = |name: &str| DEPLOY.replace("name: web", &format!("name: {name}"));
    fs::write(root.join("c.yml"), named("c")).unwrap();
    fs::write(root.join("a.yaml"), named("a")).unwrap();
    fs::write(
        root.join("b-sub/b.json"),
        serde_json::to_string(&serde_yaml_ng::from_str::<Value>(&named("b")).unwrap()).unwrap(),
    )
    .unwrap();
    fs::write(root.join(".hidden/h.yaml"), named("hidden")).unwrap();
    fs::write(root.join(".dot.yaml"), named("dot")).unwrap();
    fs::write(root.join("notes.txt"), "not a manifest: [").unwrap();
    let run = meshctl(dir.path(), &["inject", "manifests"], "");
    assert_eq!(run.code, Some(0), "{run:?}");
    let got: Vec<_> = yaml_docs(&run.stdout)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["a", "b", "c"]);

    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("README"), "x").unwrap();
    let run = meshctl(dir.path(), &["inject", "empty"], "");
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("empty: is a directory without .yaml, .yml or .json files"),
        "{}",
        run.stderr
    );
}

#[test]
fn stdin_and_files_mix_in_argument_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("svc.yaml"), SERVICE).unwrap();
    let run = meshctl(dir.path(), &["inject", "-", "svc.yaml"], DEPLOY);
    assert_eq!(run.code, Some(0), "{run:?}");
    let docs = yaml_docs(&run.stdout);
    assert_eq!(docs[0]["kind"].as_str(), Some("Deployment"));
    assert_eq!(docs[1]["kind"].as_str(), Some("Service"));
    let run = meshctl(dir.path(), &["inject", "-", "-"], DEPLOY);
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[test]
fn lists_are_injected_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let deploy: Value = serde_yaml_ng::from_str(DEPLOY).unwrap();
    let svc: Value = serde_yaml_ng::from_str(SERVICE).unwrap();
    let list = serde_yaml_ng::to_string(
        &serde_yaml_ng::from_str::<Value>(&format!(
            "apiVersion: v1\nkind: List\nitems: [{}, {}]\n",
            serde_json::to_string(&deploy).unwrap(),
            serde_json::to_string(&svc).unwrap()
        ))
        .unwrap(),
    )
    .unwrap();
    let run = meshctl(dir.path(), &["inject", "--manual", "-"], &list);
    assert_eq!(run.code, Some(0), "{run:?}");
    let doc = &yaml_docs(&run.stdout)[0];
    assert_eq!(doc["kind"].as_str(), Some("List"));
    assert_eq!(
        names(pod_spec(&doc["items"][0]), "initContainers"),
        ["mesh-init", "mesh-proxy"]
    );
    assert_eq!(doc["items"][1], svc);
    assert!(
        run.stderr
            .contains("deployment \"web\" injected\nservice \"web\" skipped: not a workload\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn json_in_json_out_keeps_key_order() {
    let dir = tempfile::tempdir().unwrap();
    // Two concatenated JSON objects, keys in a non-alphabetical order.
    let input = r#"{"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "web"},
 "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}
{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"}}"#;
    fs::write(dir.path().join("in.json"), input).unwrap();
    let run = meshctl(dir.path(), &["inject", "-o", "json", "in.json"], "");
    assert_eq!(run.code, Some(0), "{run:?}");
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0]["spec"]["template"]["metadata"]["annotations"]["mesh.dev/inject"],
        "enabled"
    );
    assert_eq!(
        docs[1],
        serde_json::json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"}})
    );
    assert!(
        run.stdout
            .starts_with("{\n  \"kind\": \"Deployment\",\n  \"apiVersion\": \"apps/v1\""),
        "{}",
        run.stdout
    );

    // JSON on stdin, YAML out (the default).
    let run = meshctl(dir.path(), &["inject", "-"], input);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .starts_with("kind: Deployment\napiVersion: apps/v1\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn namespace_objects_in_the_input_give_defaults_to_their_workloads() {
    let dir = tempfile::tempdir().unwrap();
    // The namespace comes after the workload, in another file; a workload without a
    // namespace is in -n.
    fs::write(
        dir.path().join("1-deploy.yaml"),
        DEPLOY.replace("  namespace: shop\n", ""),
    )
    .unwrap();
    fs::write(
        dir.path().join("2-ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    mesh.dev/native-sidecar: \"false\"\n",
    )
    .unwrap();
    let run = meshctl(
        dir.path(),
        &[
            "inject",
            "--manual",
            "-n",
            "shop",
            "1-deploy.yaml",
            "2-ns.yaml",
        ],
        "",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let docs = yaml_docs(&run.stdout);
    assert_eq!(
        names(pod_spec(&docs[0]), "containers"),
        ["mesh-proxy", "app"]
    );
    // In namespace "default" (no -n), the Namespace object does not apply.
    let run = meshctl(
        dir.path(),
        &["inject", "--manual", "1-deploy.yaml", "2-ns.yaml"],
        "",
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let docs = yaml_docs(&run.stdout);
    assert_eq!(names(pod_spec(&docs[0]), "containers"), ["app"]);
    // The namespace itself is annotated in the default mode.
    let run = meshctl(dir.path(), &["inject", "2-ns.yaml"], "");
    assert_eq!(
        yaml_docs(&run.stdout)[0]["metadata"]["annotations"]["mesh.dev/inject"].as_str(),
        Some("enabled")
    );
}

#[test]
fn inject_is_idempotent_and_uninject_restores_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!("{DEPLOY}---\n{SERVICE}");
    for mode in [&["inject"][..], &["inject", "--manual"][..]] {
        let once = meshctl(dir.path(), &[mode, &["-"]].concat(), &input);
        assert_eq!(once.code, Some(0), "{once:?}");
        let twice = meshctl(dir.path(), &[mode, &["-"]].concat(), &once.stdout);
        assert_eq!(twice.code, Some(0), "{twice:?}");
        assert_eq!(twice.stdout, once.stdout);
        assert!(
            twice
                .stderr
                .contains("deployment \"web\" unchanged: already injected"),
            "{}",
            twice.stderr
        );
        assert!(
            twice
                .stderr
                .contains("2 objects: 0 injected, 1 unchanged, 1 skipped"),
            "{}",
            twice.stderr
        );

        let back = meshctl(dir.path(), &["uninject", "-"], &once.stdout);
        assert_eq!(back.code, Some(0), "{back:?}");
        assert_eq!(yaml_docs(&back.stdout), yaml_docs(&input));
        assert!(
            back.stderr.contains("deployment \"web\" uninjected"),
            "{}",
            back.stderr
        );
        assert!(
            back.stderr
                .contains("meshctl uninject: 2 objects: 1 uninjected, 0 unchanged, 1 skipped"),
            "{}",
            back.stderr
        );

        let again = meshctl(dir.path(), &["uninject", "-"], &back.stdout);
        assert_eq!(again.stdout, back.stdout);
        assert!(
            again
                .stderr
                .contains("deployment \"web\" unchanged: not injected"),
            "{}",
            again.stderr
        );
    }
}

/// Asserts a failed run: exit code 1, nothing on stdout, and each expected piece on stderr.
fn assert_fails(run: &support::Run, expected: &[&str]) {
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.is_empty(),
        "stdout must be empty: {}",
        run.stdout
    );
    for e in expected {
        assert!(
            run.stderr.contains(e),
            "stderr lacks {e:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("nothing was written to stdout"),
        "{}",
        run.stderr
    );
}

#[test]
fn broken_inputs_name_file_document_and_line_and_print_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("ok.yaml"), DEPLOY).unwrap();
    // Not YAML, in the second document: the parser's line.
    fs::write(
        p.join("bad.yaml"),
        format!("{SERVICE}---\nkind: Deployment\nmetadata:\n  name: x\n   bad: indent\n"),
    )
    .unwrap();
    let run = meshctl(p, &["inject", "ok.yaml", "bad.yaml"], "");
    assert_fails(
        &run,
        &["error: bad.yaml: document 2 (line 13): is not valid YAML"],
    );

    // Not JSON.
    fs::write(
        p.join("bad.json"),
        "{\"kind\": \"Pod\",\n \"apiVersion\": }\n",
    )
    .unwrap();
    let run = meshctl(p, &["inject", "bad.json"], "");
    assert_fails(
        &run,
        &["error: bad.json: document 1 (line 2): is not valid JSON"],
    );

    // A missing file and an unreadable directory.
    let run = meshctl(p, &["inject", "ok.yaml", "missing.yaml"], "");
    assert_fails(
        &run,
        &["error: missing.yaml: does not exist; check the path"],
    );

    // Not objects, missing kind or apiVersion, on stdin; the document's first line.
    let stdin = format!("- a\n- b\n---\njust text\n---\n# c\nkind: Pod\nmetadata: {{name: p}}\n---\napiVersion: v1\nmetadata: {{name: q}}\n---\n{DEPLOY}");
    let run = meshctl(p, &["inject", "-"], &stdin);
    assert_fails(
        &run,
        &[
            "error: stdin: document 1 (line 1): is a list, not an object",
            "error: stdin: document 2 (line 4): is a string, not an object",
            "error: stdin: document 3 (line 7): apiVersion is missing",
            "error: stdin: document 4 (line 10): kind is missing",
            "4 error(s)",
        ],
    );

    // A broken pod template (the injector's error, with the field path).
    let broken = DEPLOY.replace("containerPort: 8080", "containerPort: http");
    fs::write(p.join("broken.yaml"), format!("{SERVICE}---\n{broken}")).unwrap();
    let run = meshctl(p, &["inject", "--manual", "broken.yaml"], "");
    assert_fails(&run, &["error: broken.yaml: document 2 (line 10): spec.template.spec.containers[0].ports[0].containerPort"]);
    let clash = DEPLOY.replace("containerPort: 8080", "containerPort: 4191");
    let run = meshctl(p, &["inject", "-"], &clash);
    assert_fails(
        &run,
        &[
            "error: stdin: document 1 (line 1): spec.template.spec.containers[0].ports: ",
            "4191",
        ],
    );
    // A List item without apiVersion.
    let run = meshctl(
        p,
        &["uninject", "-"],
        "apiVersion: v1\nkind: List\nitems:\n- kind: Pod\n",
    );
    assert_fails(
        &run,
        &["error: stdin: document 1 (line 1): items[0].apiVersion is missing"],
    );
}

#[cfg(unix)]
#[test]
fn an_unreadable_directory_or_entry_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A manifest that is a dangling link: the directory cannot be read as a whole.
    let links = dir.path().join("links");
    fs::create_dir(&links).unwrap();
    fs::write(links.join("a.yaml"), DEPLOY).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target.yaml", links.join("ghost.yaml")).unwrap();
    let run = meshctl(dir.path(), &["inject", "links"], "");
    assert_fails(&run, &["error: links/ghost.yaml: cannot be read: "]);

    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("d.yaml"), DEPLOY).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read_dir(&locked).is_ok() {
        // Running as root: permissions do not stop reading. Nothing to check here.
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    let run = meshctl(dir.path(), &["inject", "locked"], "");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_fails(&run, &["error: locked: "]);
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("d.yaml"), DEPLOY).unwrap();
    for args in [
        &["inject"][..],
        &["inject", "--dry-run", "d.yaml"],
        &["inject", "--context", "x", "d.yaml"],
        &["inject", "deploy/web", "d.yaml"],
        &["inject", "--all", "deploy/web"],
        &["inject", "-o", "xml", "d.yaml"],
        &["inject", "deploy/Web_1"],
        &["uninject", "--manual", "d.yaml"],
    ] {
        let run = meshctl(dir.path(), args, "");
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}");
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn help_explains_modes_sidecar_kinds_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let run = meshctl(dir.path(), &["inject", "--help"], "");
    assert_eq!(run.code, Some(0));
    for piece in [
        "--manual",
        "mesh.dev/inject: enabled",
        "admission",
        "native sidecar",
        "--native-sidecar=false",
        "postStart",
        "stdin",
        ".yaml, .yml or .json",
        "hidden",
        "comments are not kept",
        "-o json",
        "--dry-run",
        "--all",
        "resourceVersion",
        "--proxy-image",
    ] {
        assert!(
            run.stdout.contains(piece),
            "inject --help lacks {piece:?}:\n{}",
            run.stdout
        );
    }
    let run = meshctl(dir.path(), &["uninject", "--help"], "");
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains("Removes exactly what `meshctl inject`"));
    assert!(!run.stdout.contains("--proxy-image"));
    let run = meshctl(dir.path(), &["--help"], "");
    assert!(run.stdout.contains("inject") && run.stdout.contains("uninject"));
    for help in [&run.stdout] {
        for word in ["not supported yet", "later", "todo"] {
            assert!(!help.contains(word), "{word}: {help}");
        }
    }
}
