//! `meshctl inject|uninject` on live workloads, through the real binary against
//! mesh-fake-kube (a real HTTP API server reached through a kubeconfig): each object in the
//! server changes exactly as `mesh_inject` says, `--dry-run` changes nothing, `--all` covers
//! the namespace's workloads and leaves managed ones and Jobs alone, and errors write nothing.

mod support;

use std::path::PathBuf;

use mesh_fake_kube::{FakeApiServer, ResourceType};
use mesh_inject::{Context, Mode};
use serde_json::{json, Value};
use support::{meshctl, meshctl_env, Run};

struct Cluster {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let server = FakeApiServer::start();
        server.register(ResourceType::new("batch", "v1", "CronJob", "cronjobs"));
        server.register(ResourceType::new("batch", "v1", "Job", "jobs"));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    /// `meshctl ARGS --kubeconfig KUBECONFIG`.
    fn meshctl(&self, args: &[&str]) -> Run {
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        let args = [args, &["--kubeconfig", kubeconfig]].concat();
        meshctl(self.dir.path(), &args, "")
    }

    fn get(&self, api_version: &str, plural: &str, name: &str) -> Value {
        self.server
            .object(api_version, plural, Some("shop"), name)
            .unwrap_or_else(|| panic!("{plural}/{name} is gone"))
    }

    fn deployment(&self, name: &str) -> Value {
        self.get("apps/v1", "deployments", name)
    }
}

fn namespace(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "shop", "annotations": annotations}})
}

fn template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"containers": [{"name": "app", "image": "app:1",
                                    "ports": [{"name": "http", "containerPort": 8080}]}]}})
}

fn workload(api_version: &str, kind: &str, name: &str) -> Value {
    let spec = if kind == "CronJob" {
        json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template(name)}}})
    } else {
        json!({"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template(name)})
    };
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

/// What `mesh_inject` makes of the live object, with the namespace's annotations.
fn expected(
    live: &Value,
    ns: &str,
    ns_annotations: &[(&str, &str)],
    mode: Mode,
    settings: mesh_inject::Settings,
) -> Value {
    let mut doc: serde_yaml_ng::Value = serde_json::from_value(live.clone()).unwrap();
    let ctx = Context {
        settings,
        namespaces: [(
            ns.to_string(),
            ns_annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )]
        .into(),
        default_namespace: ns.into(),
    };
    mesh_inject::inject(&mut doc, &ctx, mode).unwrap();
    serde_json::to_value(&doc).unwrap()
}

/// The object without the fields the server sets on every write.
fn content(v: &Value) -> Value {
    let mut v = v.clone();
    let meta = v["metadata"].as_object_mut().unwrap();
    for k in ["resourceVersion", "generation", "managedFields"] {
        meta.remove(k);
    }
    v
}

fn resource_version(v: &Value) -> &str {
    v["metadata"]["resourceVersion"].as_str().unwrap()
}

#[test]
fn inject_and_uninject_a_named_deployment() {
    let c = Cluster::start();
    c.server.upsert(namespace(json!({}))).unwrap();
    c.server
        .upsert(workload("apps/v1", "Deployment", "web"))
        .unwrap();
    let original = c.deployment("web");

    // The default mode: the template gets the annotation, nothing else changes.
    let run = c.meshctl(&["inject", "deploy/web", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            "deployment \"web\" injected (annotated; the webhook adds the proxy)",
            "meshctl inject: 1 object: 1 injected, 0 unchanged, 0 skipped",
        ]
    );
    let annotated = c.deployment("web");
    assert_eq!(
        content(&annotated),
        content(&expected(
            &original,
            "shop",
            &[],
            Mode::Annotate,
            Default::default()
        ))
    );
    assert_eq!(
        annotated["spec"]["template"]["metadata"]["annotations"]["mesh.dev/inject"],
        "enabled"
    );

    // Again: nothing to do, nothing written.
    let run = c.meshctl(&["inject", "deployment.apps/web", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run
        .stderr
        .contains("deployment \"web\" unchanged: already injected"));
    assert_eq!(
        resource_version(&c.deployment("web")),
        resource_version(&annotated)
    );

    // Uninject restores the original.
    let run = c.meshctl(&["uninject", "deploy/web", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains("deployment \"web\" uninjected"),
        "{}",
        run.stderr
    );
    assert_eq!(content(&c.deployment("web")), content(&original));

    // A namespace is annotated for the webhook, and uninjected again.
    let run = c.meshctl(&["inject", "ns/shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .contains("namespace \"shop\" injected (annotated"),
        "{}",
        run.stderr
    );
    let ns = c.server.object("v1", "namespaces", None, "shop").unwrap();
    assert_eq!(ns["metadata"]["annotations"]["mesh.dev/inject"], "enabled");
    let run = c.meshctl(&["uninject", "ns/shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let ns = c.server.object("v1", "namespaces", None, "shop").unwrap();
    assert!(
        ns["metadata"]["annotations"]
            .get("mesh.dev/inject")
            .is_none(),
        "{ns}"
    );

    // Every write was a JSON patch (with its resourceVersion test).
    let patches: Vec<_> = c
        .server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect();
    assert_eq!(patches.len(), 4, "{patches:?}");
    assert!(patches[0].starts_with("PATCH /apis/apps/v1/namespaces/shop/deployments/web"));
}

#[test]
fn manual_uses_the_live_namespace_annotations_and_the_context_namespace() {
    let c = Cluster::start();
    // The kubeconfig's context namespace is "default"; the workload lives there too.
    c.server
        .upsert(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default",
            "annotations": {"mesh.dev/native-sidecar": "false"}}}),
        )
        .unwrap();
    let mut web = workload("apps/v1", "Deployment", "web");
    web["metadata"]["namespace"] = json!("default");
    c.server.upsert(web).unwrap();
    let original = c
        .server
        .object("apps/v1", "deployments", Some("default"), "web")
        .unwrap();
    let kubeconfig = c.kubeconfig.to_str().unwrap();
    let run = meshctl_env(
        c.dir.path(),
        &[
            "inject",
            "--manual",
            "deploy/web",
            "--context",
            "fake-kube",
            "--proxy-log-level",
            "debug",
        ],
        "",
        &[("KUBECONFIG", kubeconfig)],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let live = c
        .server
        .object("apps/v1", "deployments", Some("default"), "web")
        .unwrap();
    let settings = mesh_inject::Settings {
        proxy_log_level: "debug".into(),
        ..Default::default()
    };
    let want = expected(
        &original,
        "default",
        &[("mesh.dev/native-sidecar", "false")],
        Mode::Manual,
        settings,
    );
    assert_eq!(content(&live), content(&want));
    let containers: Vec<_> = live["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        containers,
        ["mesh-proxy", "app"],
        "the fallback, from the namespace"
    );
}

#[test]
fn dry_run_prints_a_diff_and_changes_nothing() {
    let c = Cluster::start();
    c.server.upsert(namespace(json!({}))).unwrap();
    c.server
        .upsert(workload("apps/v1", "StatefulSet", "db"))
        .unwrap();
    let before = c.get("apps/v1", "statefulsets", "db");
    let requests_before = c.server.request_count();
    let run = c.meshctl(&["inject", "--manual", "--dry-run", "sts/db", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .starts_with("--- statefulset/db (live)\n+++ statefulset/db (injected)\n@@ "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\n+      - name: mesh-proxy\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\n+      - name: mesh-init\n"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with('-') && !l.starts_with("---")),
        "only additions: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("statefulset \"db\" injected (dry run)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("(dry run: nothing was written)"),
        "{}",
        run.stderr
    );
    assert_eq!(c.get("apps/v1", "statefulsets", "db"), before);
    let methods: Vec<_> = c.server.requests()[requests_before..]
        .iter()
        .map(|r| r.split(' ').next().unwrap().to_string())
        .collect();
    assert!(methods.iter().all(|m| m == "GET"), "{methods:?}");

    // Uninject --dry-run of an object without the proxy: no diff.
    let run = c.meshctl(&["uninject", "--dry-run", "sts/db", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(run
        .stderr
        .contains("statefulset \"db\" unchanged: not injected"));
}

#[test]
fn all_covers_the_namespace_and_leaves_managed_objects_and_jobs_alone() {
    let c = Cluster::start();
    c.server
        .upsert(namespace(json!({"mesh.dev/proxy-log-level": "debug"})))
        .unwrap();
    for (api, kind, name) in [
        ("apps/v1", "Deployment", "web"),
        ("apps/v1", "StatefulSet", "db"),
        ("apps/v1", "DaemonSet", "agent"),
        ("apps/v1", "ReplicaSet", "standalone"),
        ("apps/v1", "ReplicaSet", "web-abc"),
        ("batch/v1", "CronJob", "nightly"),
    ] {
        let mut obj = workload(api, kind, name);
        if name == "web-abc" {
            obj["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "web", "uid": "u1", "controller": true}]);
        }
        c.server.upsert(obj).unwrap();
    }
    let mut job = workload("batch/v1", "Job", "once");
    job["spec"].as_object_mut().unwrap().remove("replicas");
    c.server.upsert(job).unwrap();
    // Not a workload, and a workload in another namespace: not touched.
    c.server
        .upsert(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
    let mut other = workload("apps/v1", "Deployment", "elsewhere");
    other["metadata"]["namespace"] = json!("default");
    c.server.upsert(other).unwrap();
    let objects = |c: &Cluster| {
        [
            ("apps/v1", "deployments", "web"),
            ("apps/v1", "statefulsets", "db"),
            ("apps/v1", "daemonsets", "agent"),
            ("apps/v1", "replicasets", "standalone"),
            ("apps/v1", "replicasets", "web-abc"),
            ("batch/v1", "cronjobs", "nightly"),
            ("batch/v1", "jobs", "once"),
        ]
        .map(|(a, p, n)| c.get(a, p, n))
    };
    let before = objects(&c);
    let other_before = c
        .server
        .object("apps/v1", "deployments", Some("default"), "elsewhere");

    let run = c.meshctl(&["inject", "--manual", "--all", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "deployment \"web\" injected",
            "statefulset \"db\" injected",
            "daemonset \"agent\" injected",
            "replicaset \"standalone\" injected",
            "replicaset \"web-abc\" skipped: managed by deployment \"web\" (inject that instead)",
            "cronjob \"nightly\" injected",
            "job \"once\" skipped: the pod template of an existing Job cannot be changed; inject the CronJob that creates it, or re-create the Job from YAML: kubectl get job once -o yaml | meshctl inject --manual - | kubectl replace --force -f -",
            "meshctl inject: 7 objects: 5 injected, 0 unchanged, 2 skipped",
        ]
    );
    let after = objects(&c);
    for i in [0, 1, 2, 3, 5] {
        let want = expected(
            &before[i],
            "shop",
            &[("mesh.dev/proxy-log-level", "debug")],
            Mode::Manual,
            Default::default(),
        );
        assert_eq!(
            content(&after[i]),
            content(&want),
            "{}",
            before[i]["metadata"]["name"]
        );
    }
    assert_eq!(after[4], before[4], "the managed ReplicaSet is left alone");
    assert_eq!(after[6], before[6], "the Job is left alone");
    assert_eq!(
        c.server
            .object("apps/v1", "deployments", Some("default"), "elsewhere"),
        other_before
    );
    let env = after[0]["spec"]["template"]["spec"]["initContainers"][1]["env"].to_string();
    assert!(
        env.contains(r#"{"name":"MESH_PROXY_LOG","value":"debug"}"#),
        "{env}"
    );

    // Once more: nothing changes. Then uninject --all restores everything.
    let run = c.meshctl(&["inject", "--manual", "--all", "-n", "shop"]);
    assert!(
        run.stderr
            .contains("7 objects: 0 injected, 5 unchanged, 2 skipped"),
        "{}",
        run.stderr
    );
    assert_eq!(objects(&c), after);
    let run = c.meshctl(&["uninject", "--all", "-n", "shop"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .contains("meshctl uninject: 7 objects: 5 uninjected, 0 unchanged, 2 skipped"),
        "{}",
        run.stderr
    );
    for (now, was) in objects(&c).iter().zip(&before) {
        assert_eq!(content(now), content(was));
    }
}

#[test]
fn a_broken_workload_stops_all_before_anything_is_written() {
    let c = Cluster::start();
    c.server.upsert(namespace(json!({}))).unwrap();
    c.server
        .upsert(workload("apps/v1", "Deployment", "a-good"))
        .unwrap();
    let mut bad = workload("apps/v1", "Deployment", "b-bad");
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(4143);
    c.server.upsert(bad).unwrap();
    let good = c.deployment("a-good");
    let run = c.meshctl(&["inject", "--manual", "--all", "-n", "shop"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("error: deployment \"b-bad\" in namespace \"shop\": spec.template.spec.containers[0].ports: "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(c.deployment("a-good"), good);
    assert!(c.server.requests().iter().all(|r| !r.starts_with("PATCH")));
}

#[test]
fn errors_name_the_object_and_what_to_do() {
    let c = Cluster::start();
    c.server.upsert(namespace(json!({}))).unwrap();
    c.server
        .upsert(workload("apps/v1", "Deployment", "web"))
        .unwrap();

    let run = c.meshctl(&["inject", "deploy/missing", "-n", "shop"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("error: deployment \"missing\" in namespace \"shop\": does not exist; check the name and -n/--namespace"), "{}", run.stderr);

    let run = c.meshctl(&["inject", "deploy/web", "-n", "nowhere"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("error: namespace \"nowhere\": does not exist"),
        "{}",
        run.stderr
    );

    // Pods (and Jobs) cannot be changed in place: refused before anything is read.
    let run = c.meshctl(&["inject", "pod/web-1", "deploy/web", "-n", "shop"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("error: pod \"web-1\" in namespace \"shop\": cannot be injected in place: the containers of an existing Pod cannot be changed; inject its workload instead"), "{}", run.stderr);
    let run = c.meshctl(&["uninject", "job/once", "-n", "shop"]);
    assert!(
        run.stderr.contains("cannot be uninjected in place"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("meshctl uninject - | kubectl replace"),
        "{}",
        run.stderr
    );
    assert!(c.server.requests().iter().all(|r| !r.starts_with("PATCH")));
    assert!(c.deployment("web")["spec"]["template"]["metadata"]
        .get("annotations")
        .is_none());

    // No cluster behind the kubeconfig.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = c.dir.path().join("gone");
    std::fs::write(
        &gone,
        c.server
            .kubeconfig_yaml()
            .replace(&c.server.url(), &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let run = meshctl(
        c.dir.path(),
        &[
            "inject",
            "deploy/web",
            "--kubeconfig",
            gone.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("cannot reach the Kubernetes API server at http://127.0.0.1:"),
        "{}",
        run.stderr
    );

    // A kubeconfig that is not one, and an unknown context.
    let junk = c.dir.path().join("junk");
    std::fs::write(&junk, "just: [text").unwrap();
    let run = meshctl(
        c.dir.path(),
        &[
            "inject",
            "deploy/web",
            "--kubeconfig",
            junk.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("is not a usable kubeconfig"),
        "{}",
        run.stderr
    );
    let run = c.meshctl(&["inject", "deploy/web", "--context", "nope"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}
