//! `meshctl install`, `upgrade`, `uninstall` and `version` through the real binary, against
//! mesh-fake-kube reached through a kubeconfig: printed YAML, server-side apply that is
//! idempotent (resourceVersions unchanged by a second run), waiting for readiness, upgrade
//! keeping the identity, uninstall leaving no object behind, and bad input that writes
//! nothing.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use support::{meshctl, yaml_docs, Run};

/// Every kind install writes: (apiVersion, plural, namespaced).
const KINDS: &[(&str, &str, bool)] = &[
    (
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        false,
    ),
    ("v1", "namespaces", false),
    ("v1", "serviceaccounts", true),
    ("rbac.authorization.k8s.io/v1", "clusterroles", false),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io/v1", "roles", true),
    ("rbac.authorization.k8s.io/v1", "rolebindings", true),
    ("v1", "configmaps", true),
    ("v1", "secrets", true),
    ("v1", "services", true),
    ("apps/v1", "deployments", true),
    ("policy/v1", "poddisruptionbudgets", true),
    (
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        false,
    ),
];

struct Cluster {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let server = FakeApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    fn meshctl(&self, args: &[&str]) -> Run {
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        let args = [args, &["--kubeconfig", kubeconfig]].concat();
        meshctl(self.dir.path(), &args, "")
    }

    /// `kind/namespace/name` -> resourceVersion of every object labeled as the mesh's.
    fn mesh_objects(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (api_version, plural, namespaced) in KINDS {
            let ns = namespaced.then_some("mesh-system");
            for obj in self.server.objects(api_version, plural, ns) {
                if obj.pointer("/metadata/labels/app.kubernetes.io~1part-of")
                    != Some(&json!("mesh"))
                {
                    continue;
                }
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string();
                out.insert(format!("{plural}/{}/{name}", ns.unwrap_or("")), rv);
            }
        }
        out
    }

    fn get(&self, api_version: &str, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.server.object(api_version, plural, ns, name)
    }

    fn writes(&self) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .collect()
    }
}

fn ok(run: &Run) {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

fn failed(run: &Run) {
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn install_prints_every_object_as_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let run = meshctl(dir.path(), &["install"], "");
    ok(&run);
    let docs = yaml_docs(&run.stdout);
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "CustomResourceDefinition/servers.mesh.dev",
        "CustomResourceDefinition/httproutes.gateway.networking.k8s.io",
        "Namespace/mesh-system",
        "Deployment/mesh-controller",
        "Secret/mesh-identity",
        "Secret/mesh-webhook-tls",
        "ConfigMap/mesh-config",
        "MutatingWebhookConfiguration/mesh-proxy-injector",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // CRDs come first, so that `kubectl apply -f -` can create everything in one pass.
    assert!(
        names[0].starts_with("CustomResourceDefinition/"),
        "{names:?}"
    );
    assert!(run.stderr.contains("generated"), "{}", run.stderr);

    let json = meshctl(
        dir.path(),
        &[
            "install",
            "-o",
            "json",
            "--set",
            "gatewayAPI.installCRDs=false",
        ],
        "",
    );
    ok(&json);
    let list: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert!(!list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["metadata"]["name"] == "httproutes.gateway.networking.k8s.io"));

    let values = meshctl(
        dir.path(),
        &["install", "-o", "values", "--set", "controller.replicas=3"],
        "",
    );
    ok(&values);
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&values.stdout).unwrap();
    assert_eq!(v["controller"]["replicas"].as_i64(), Some(3));
    assert!(v["certificates"]["trustAnchorsPEM"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn the_certificates_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let values = meshctl(dir.path(), &["install", "-o", "values"], "");
    ok(&values);
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&values.stdout).unwrap();
    let write = |name: &str, key: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, v["certificates"][key].as_str().unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let anchor = write("anchor.pem", "trustAnchorsPEM");
    let cert = write("issuer.crt", "issuerCrtPEM");
    let key = write("issuer.key", "issuerKeyPEM");
    let run = meshctl(
        dir.path(),
        &[
            "install",
            "--identity-trust-anchor-file",
            &anchor,
            "--identity-issuer-cert-file",
            &cert,
            "--identity-issuer-key-file",
            &key,
        ],
        "",
    );
    ok(&run);
    let docs = yaml_docs(&run.stdout);
    let secret = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "mesh-identity")
        .unwrap();
    let anchor_in_secret = secret_text(&serde_json::to_value(secret).unwrap(), "trust-anchors.pem");
    assert_eq!(
        anchor_in_secret.trim(),
        std::fs::read_to_string(&anchor).unwrap().trim()
    );
}

/// A Secret's key, from `data` (base64) or `stringData`.
fn secret_text(secret: &Value, key: &str) -> String {
    use base64::Engine;
    if let Some(s) = secret
        .pointer(&format!("/stringData/{key}"))
        .and_then(Value::as_str)
    {
        return s.to_string();
    }
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let cluster = Cluster::start();
    let dir = cluster.dir.path();

    let run = cluster.meshctl(&["install", "--apply", "--set", "controler.replicas=3"]);
    failed(&run);
    assert!(run.stderr.contains("controler.replicas"), "{}", run.stderr);
    assert!(
        run.stderr.contains("controller.replicas"),
        "names the nearest key: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty());

    std::fs::write(dir.join("values.yaml"), "controller: [unclosed\n").unwrap();
    let run = cluster.meshctl(&[
        "install",
        "--apply",
        "-f",
        dir.join("values.yaml").to_str().unwrap(),
    ]);
    failed(&run);
    assert!(run.stderr.contains("values.yaml"), "{}", run.stderr);

    let missing = dir.join("no-such-anchor.pem");
    let run = cluster.meshctl(&[
        "install",
        "--apply",
        "--identity-trust-anchor-file",
        missing.to_str().unwrap(),
    ]);
    failed(&run);
    assert!(run.stderr.contains("no-such-anchor.pem"), "{}", run.stderr);

    assert_eq!(
        cluster.writes(),
        Vec::<String>::new(),
        "nothing may be written"
    );

    // A kubeconfig that points nowhere.
    let nowhere = dir.join("nowhere");
    std::fs::write(
        &nowhere,
        cluster
            .server
            .kubeconfig_yaml()
            .replace(&cluster.server.url(), "http://127.0.0.1:1"),
    )
    .unwrap();
    let run = meshctl(
        dir,
        &[
            "install",
            "--apply",
            "--kubeconfig",
            nowhere.to_str().unwrap(),
        ],
        "",
    );
    failed(&run);
    assert!(
        run.stderr.contains("127.0.0.1:1"),
        "names the server: {}",
        run.stderr
    );
}

#[test]
fn install_apply_twice_changes_nothing_the_second_time() {
    let cluster = Cluster::start();
    let first = cluster.meshctl(&["install", "--apply", "--no-wait"]);
    ok(&first);
    assert!(
        first
            .stderr
            .contains("deployment \"mesh-controller\" in namespace \"mesh-system\" created"),
        "{}",
        first.stderr
    );
    let before = cluster.mesh_objects();
    assert!(before.len() >= 15, "{before:?}");
    let deploy = cluster
        .get(
            "apps/v1",
            "deployments",
            Some("mesh-system"),
            "mesh-controller",
        )
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);

    let second = cluster.meshctl(&["install", "--apply", "--no-wait"]);
    ok(&second);
    assert_eq!(
        cluster.mesh_objects(),
        before,
        "the second install changed objects:\n{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains(" created") && !second.stderr.contains(" configured"),
        "{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains("generated a trust anchor"),
        "the installed identity is kept: {}",
        second.stderr
    );

    // A changed value changes only what it renders.
    let third = cluster.meshctl(&[
        "install",
        "--apply",
        "--no-wait",
        "--set",
        "controller.replicas=3",
    ]);
    ok(&third);
    assert!(
        third
            .stderr
            .contains("deployment \"mesh-controller\" in namespace \"mesh-system\" configured"),
        "{}",
        third.stderr
    );
    let deploy = cluster
        .get(
            "apps/v1",
            "deployments",
            Some("mesh-system"),
            "mesh-controller",
        )
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 3);
}

/// Plays the cluster's controllers for the mesh Deployment: once it exists, reports it
/// available and gives its Service a ready endpoint.
fn make_ready_when_applied(server: &FakeApiServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(mut d) = server.object(
            "apps/v1",
            "deployments",
            Some("mesh-system"),
            "mesh-controller",
        ) {
            let replicas = d["spec"]["replicas"].clone();
            d["status"] = json!({
                "observedGeneration": d["metadata"]["generation"],
                "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
            });
            server.upsert(d).unwrap();
            server
                .upsert(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "mesh-controller-abc", "namespace": "mesh-system",
                                 "labels": {"kubernetes.io/service-name": "mesh-controller"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true}}],
                    "ports": [{"name": "webhook", "port": 9443, "protocol": "TCP"}],
                }))
                .unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn install_apply_waits_until_the_mesh_is_ready() {
    let cluster = Cluster::start();
    let run = cluster.meshctl(&["install", "--apply", "--wait-timeout", "2s"]);
    failed(&run);
    assert!(
        run.stderr
            .contains("waiting for the controller to be available"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("meshctl check"),
        "points to check: {}",
        run.stderr
    );

    std::thread::scope(|s| {
        s.spawn(|| make_ready_when_applied(&cluster.server));
        let run = cluster.meshctl(&["install", "--apply", "--wait-timeout", "30s"]);
        ok(&run);
        for step in [
            "ready: the CRDs to be established",
            "ready: the controller to be available",
            "ready: the webhook to have a ready endpoint",
        ] {
            assert!(run.stderr.contains(step), "{step}: {}", run.stderr);
        }
    });
}

#[test]
fn upgrade_rerenders_from_the_installed_values_and_keeps_the_identity() {
    let cluster = Cluster::start();
    let run = cluster.meshctl(&["upgrade", "--apply", "--no-wait"]);
    failed(&run);
    assert!(run.stderr.contains("meshctl install"), "{}", run.stderr);

    ok(&cluster.meshctl(&[
        "install",
        "--apply",
        "--no-wait",
        "--set",
        "controller.replicas=3",
    ]));
    let identity = |c: &Cluster| {
        let s = c
            .get("v1", "secrets", Some("mesh-system"), "mesh-identity")
            .unwrap();
        (
            secret_text(&s, "trust-anchors.pem"),
            secret_text(&s, "issuer.key"),
        )
    };
    let before = identity(&cluster);

    let run = cluster.meshctl(&[
        "upgrade",
        "--apply",
        "--no-wait",
        "--set",
        "proxy.logLevel=debug",
    ]);
    ok(&run);
    assert_eq!(
        identity(&cluster),
        before,
        "upgrade must keep the trust anchor and issuer"
    );
    let deploy = cluster
        .get(
            "apps/v1",
            "deployments",
            Some("mesh-system"),
            "mesh-controller",
        )
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 3, "the installed value is kept");
    let cm = cluster
        .get("v1", "configmaps", Some("mesh-system"), "mesh-config")
        .unwrap();
    assert_eq!(cm["data"]["proxy-log-level"], "debug");

    let reset = cluster.meshctl(&["upgrade", "--apply", "--no-wait", "--reset-values"]);
    ok(&reset);
    let deploy = cluster
        .get(
            "apps/v1",
            "deployments",
            Some("mesh-system"),
            "mesh-controller",
        )
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);

    let printed = cluster.meshctl(&["upgrade"]);
    ok(&printed);
    assert!(yaml_docs(&printed.stdout).len() >= 15);
}

#[test]
fn uninstall_removes_everything_install_created() {
    let cluster = Cluster::start();
    ok(&cluster.meshctl(&["install", "--apply", "--no-wait"]));
    // What the controller adds at run time: its Lease.
    cluster
        .server
        .upsert(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "mesh-controller", "namespace": "mesh-system"},
                       "spec": {"holderIdentity": "mesh-controller-abc"}}),
        )
        .unwrap();

    let printed = cluster.meshctl(&["uninstall"]);
    ok(&printed);
    assert!(
        !printed.stdout.contains("CustomResourceDefinition"),
        "{}",
        printed.stdout
    );
    assert!(printed.stdout.contains("MutatingWebhookConfiguration"));

    let run = cluster.meshctl(&["uninstall", "--apply"]);
    ok(&run);
    let left = cluster.mesh_objects();
    assert!(
        left.keys()
            .all(|k| k.starts_with("customresourcedefinitions/")),
        "{left:?}"
    );
    assert!(!left.is_empty(), "CRDs stay without --crds");
    assert!(cluster
        .get(
            "coordination.k8s.io/v1",
            "leases",
            Some("mesh-system"),
            "mesh-controller"
        )
        .is_none());
    assert!(run.stderr.contains("--crds"), "{}", run.stderr);

    let run = cluster.meshctl(&["uninstall", "--apply", "--crds"]);
    ok(&run);
    assert_eq!(cluster.mesh_objects(), BTreeMap::new());

    let again = cluster.meshctl(&["uninstall", "--apply", "--crds"]);
    ok(&again);
    assert!(
        again.stderr.contains("nothing to delete"),
        "{}",
        again.stderr
    );
}

#[test]
fn version_reports_the_client_and_the_control_plane() {
    let cluster = Cluster::start();
    let version = env!("CARGO_PKG_VERSION");
    let run = cluster.meshctl(&["version"]);
    ok(&run);
    assert!(
        run.stdout.contains(&format!("client: {version}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("control plane: unavailable"),
        "{}",
        run.stdout
    );

    ok(&cluster.meshctl(&["install", "--apply", "--no-wait"]));
    let run = cluster.meshctl(&["version", "-o", "json"]);
    ok(&run);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["client"], version);
    assert_eq!(v["controlPlane"], version);

    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let run = meshctl(dir.path(), &["completion", shell], "");
        ok(&run);
        assert!(
            run.stdout.contains("install") && run.stdout.contains("uninject"),
            "{shell}"
        );
    }
}

#[test]
fn gateway_api_crds_are_replaced_only_when_older() {
    let cluster = Cluster::start();
    let crds = "customresourcedefinitions";
    let api = "apiextensions.k8s.io/v1";
    let http = "httproutes.gateway.networking.k8s.io";
    let grpc = "grpcroutes.gateway.networking.k8s.io";
    let bundle = |c: &Cluster, name: &str| {
        c.get(api, crds, None, name).unwrap()["metadata"]["annotations"]
            ["gateway.networking.k8s.io/bundle-version"]
            .clone()
    };
    // The fake server starts with Gateway API v1.3.0 CRDs; make HTTPRoute's newer than ours.
    let mut newer = cluster.get(api, crds, None, http).unwrap();
    newer["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] = json!("v1.9.0");
    cluster.server.upsert(newer).unwrap();
    assert_eq!(bundle(&cluster, grpc), "v1.3.0");

    let run = cluster.meshctl(&["install", "--apply", "--no-wait"]);
    ok(&run);
    assert!(
        run.stderr.contains(&format!(
            "customresourcedefinition \"{http}\" kept: Gateway API v1.9.0 is installed"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        bundle(&cluster, http),
        "v1.9.0",
        "a newer Gateway API is left alone"
    );
    assert_eq!(bundle(&cluster, grpc), "v1.5.1", "an older one is replaced");

    // Switched off, neither is touched.
    let cluster = Cluster::start();
    let run = cluster.meshctl(&[
        "install",
        "--apply",
        "--no-wait",
        "--set",
        "gatewayAPI.installCRDs=false",
    ]);
    ok(&run);
    assert_eq!(bundle(&cluster, http), "v1.3.0");
    assert_eq!(bundle(&cluster, grpc), "v1.3.0");
}

/// The helm binary: `MESH_HELM`, else `helm` on PATH (scripts/test.sh provides one).
fn helm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_HELM") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    })
}

/// `kind/namespace/name` -> object, with the ConfigMap's `values.yaml` parsed (the chart
/// writes it with Go's ordering and quoting).
fn object_set(stream: &str) -> BTreeMap<String, serde_yaml_ng::Value> {
    let mut out = BTreeMap::new();
    for mut d in yaml_docs(stream) {
        if d.is_null() {
            continue;
        }
        if let Some(text) = d["data"]["values.yaml"].as_str().map(str::to_string) {
            d["data"]["values.yaml"] = serde_yaml_ng::from_str(&text).unwrap();
        }
        let key = format!(
            "{}/{}/{}",
            d["kind"].as_str().unwrap(),
            d["metadata"]["namespace"].as_str().unwrap_or(""),
            d["metadata"]["name"].as_str().unwrap()
        );
        out.insert(key, d);
    }
    out
}

#[test]
fn the_values_output_gives_helm_the_same_objects() {
    let Some(helm) = helm() else {
        assert!(
            std::env::var_os("MESH_TEST_REQUIRE_PEERS").is_none(),
            "helm is required (MESH_TEST_REQUIRE_PEERS is set): install it or set MESH_HELM"
        );
        eprintln!("skipped: no helm (set MESH_HELM or put helm on PATH)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let values = meshctl(
        dir.path(),
        &[
            "install",
            "-o",
            "values",
            "--set",
            "controller.replicas=3",
            "--set",
            "proxy.nativeSidecar=false",
        ],
        "",
    );
    ok(&values);
    let file = dir.path().join("mesh-values.yaml");
    std::fs::write(&file, &values.stdout).unwrap();
    let ours = meshctl(dir.path(), &["install", "-f", file.to_str().unwrap()], "");
    ok(&ours);
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/mesh");
    let out = std::process::Command::new(helm)
        .args(["template", "mesh", chart, "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = object_set(&String::from_utf8(out.stdout).unwrap());
    let ours = object_set(&ours.stdout);
    assert_eq!(
        theirs.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>()
    );
    for (k, v) in &ours {
        assert_eq!(&theirs[k], v, "{k} differs between helm and meshctl");
    }
    assert_eq!(
        ours["Deployment/mesh-system/mesh-controller"]["spec"]["replicas"].as_i64(),
        Some(3)
    );
}

/// The commands the docs show: every `meshctl SUBCOMMAND ... --flag` names a flag the
/// subcommand has, and every `--set KEY=VALUE` is a value install accepts.
#[test]
fn the_documented_commands_and_values_exist() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = tempfile::tempdir().unwrap();
    let mut sets = Vec::new();
    let mut checked = 0;
    for doc in [
        "README.md",
        "docs/install.md",
        "docs/checks.md",
        "charts/README.md",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        for line in text.lines() {
            let Some(at) = line.find("meshctl ") else {
                continue;
            };
            let words: Vec<&str> = line[at + 8..]
                .split(|c: char| c.is_whitespace() || c == '`' || c == '|' || c == ';')
                .filter(|w| !w.is_empty())
                .collect();
            let Some(sub) = words.first() else { continue };
            if ![
                "install",
                "upgrade",
                "uninstall",
                "check",
                "version",
                "completion",
            ]
            .contains(sub)
            {
                continue;
            }
            let help = meshctl(dir.path(), &[sub, "--help"], "");
            ok(&help);
            for (i, w) in words.iter().enumerate().skip(1) {
                if w.starts_with("meshctl") || w.starts_with('#') || *w == "kubectl" || *w == "helm"
                {
                    break;
                }
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = flag
                        .split(['=', '/'])
                        .next()
                        .unwrap()
                        .trim_end_matches([',', ')', '.']);
                    assert!(
                        help.stdout.contains(&format!("--{flag}")),
                        "{doc}: `meshctl {sub}` has no --{flag}: {line}"
                    );
                    checked += 1;
                    if flag == "set" {
                        if let Some(kv) = words.get(i + 1).filter(|kv| kv.contains('=')) {
                            sets.push(kv.to_string());
                        }
                    }
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} flags found in the docs");
    let mut args = vec!["install", "-o", "values"];
    for kv in &sets {
        args.extend(["--set", kv.as_str()]);
    }
    let run = meshctl(dir.path(), &args, "");
    ok(&run);
}
