//! The rendered objects: insta snapshots of the YAML for the default values and three
//! `--set` combinations (with the fixed test certificates, so snapshots are stable), and the
//! properties the install relies on, checked one by one.

mod support;

use mesh_manifests::{render, to_yaml, RenderError, Values};
use serde_json::{json, Value};
use support::{index, parse_stream, values_with, SETS};

/// The default values in full; the `--set` combinations without the CRD bodies (they do not
/// depend on values), named in a first line instead.
#[test]
fn snapshots() {
    for (name, set) in SETS {
        let objects = render(&values_with(set)).unwrap();
        let yaml = if set.is_empty() {
            to_yaml(&objects)
        } else {
            let (crds, rest): (Vec<Value>, Vec<Value>) = objects
                .into_iter()
                .partition(|o| o["kind"] == "CustomResourceDefinition");
            let names: Vec<&str> = crds
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap())
                .collect();
            format!(
                "# --set {set}\n# CRDs: {}\n{}",
                names.join(", "),
                to_yaml(&rest)
            )
        };
        insta::assert_snapshot!(*name, yaml);
    }
}

#[test]
fn yaml_reads_back_as_the_objects() {
    let objects = render(&values_with("")).unwrap();
    assert_eq!(parse_stream(&to_yaml(&objects)), objects);
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn objects_come_in_apply_order() {
    let k = kinds(&render(&values_with("")).unwrap());
    let order = [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    ];
    let ranks: Vec<usize> = k
        .iter()
        .map(|kind| order.iter().position(|o| o == kind).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{k:?}");
    assert_eq!(
        k.iter()
            .filter(|k| *k == "CustomResourceDefinition")
            .count(),
        7
    );
}

#[test]
fn every_object_is_labelled_and_namespaced_in_the_mesh_namespace() {
    let objects = render(&values_with("namespace=mesh")).unwrap();
    let cluster_scoped = [
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "mesh",
            "{name}"
        );
        let kind = o["kind"].as_str().unwrap();
        if cluster_scoped.contains(&kind) {
            assert!(o["metadata"].get("namespace").is_none(), "{kind} {name}");
        } else {
            assert_eq!(o["metadata"]["namespace"], "mesh", "{kind} {name}");
        }
    }
    let by = index(&objects);
    let hook = &by[&(
        "MutatingWebhookConfiguration".into(),
        String::new(),
        "mesh-proxy-injector".into(),
    )];
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["service"]["namespace"],
        "mesh"
    );
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn controller_deployment_is_hardened_and_configured() {
    let v = values_with("controller.logLevel=debug,trustDomain=example.org,clusterDomain=k.local");
    let objects = render(&v).unwrap();
    let d = find(&objects, "Deployment", "mesh-controller");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "controller");
    assert_eq!(
        c["image"],
        format!("mesh-controller:{}", mesh_manifests::VERSION)
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "run",
        "--source=kubernetes",
        "--trust-domain=example.org",
        "--cluster-domain=k.local",
        "--identity-secret=mesh-system/mesh-identity",
        "--webhook-secret=mesh-system/mesh-webhook-tls",
        "--lease-namespace=mesh-system",
        "--log=debug",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert_eq!(
        c["env"][0],
        json!({"name": "MESH_CONTROLLER_INJECT_CONFIG", "value": "mesh-system/mesh-config"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": "admin"})
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/live", "port": "admin"})
    );
    assert_eq!(
        c["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    let ports: Vec<(&str, u64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("grpc", 8086), ("admin", 9990), ("webhook", 9443)]);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(pod["serviceAccountName"], "mesh-controller");
}

#[test]
fn limits_follow_the_values() {
    let resources = |set: &str| {
        let objects = render(&values_with(set)).unwrap();
        find(&objects, "Deployment", "mesh-controller")["spec"]["template"]["spec"]["containers"][0]
            ["resources"]
            .clone()
    };
    assert!(resources("controller.resources.memoryLimit=")
        .get("limits")
        .is_none());
    assert_eq!(
        resources("controller.resources.cpuLimit=1")["limits"],
        json!({"cpu": "1", "memory": "256Mi"})
    );
}

#[test]
fn config_map_carries_the_injection_defaults_and_the_values() {
    let v = values_with(
        "proxy.image.tag=v9,proxy.nativeSidecar=false,namespace=m,proxy.resources.cpuLimit=500m",
    );
    let objects = render(&v).unwrap();
    let data = &find(&objects, "ConfigMap", "mesh-config")["data"];
    assert_eq!(data["version"], mesh_manifests::VERSION);
    assert_eq!(data["proxy-image"], "mesh-proxy:v9");
    assert_eq!(
        data["controller-addr"],
        "http://mesh-controller.m.svc.cluster.local:8086"
    );
    assert_eq!(data["native-sidecar"], "false");
    assert_eq!(data["init-container"], "true");
    assert_eq!(data["proxy-cpu-limit"], "500m");
    assert_eq!(data["proxy-memory-limit"], "");
    let recorded = data["values.yaml"].as_str().unwrap();
    assert!(
        !recorded.contains("BEGIN"),
        "certificates leaked into the ConfigMap"
    );
    // What upgrade reads back is what was installed, certificates aside.
    let (back, dropped) = Values::from_installed(recorded).unwrap();
    assert!(dropped.is_empty());
    assert_eq!(back.to_json(), {
        let mut t = v.to_json();
        t["certificates"] = Values::defaults().to_json()["certificates"].clone();
        t
    });
}

#[test]
fn secrets_and_ca_bundle_hold_the_certificates() {
    use base64::Engine as _;
    let v = values_with("");
    let objects = render(&v).unwrap();
    let b64 = |path: &str| {
        base64::engine::general_purpose::STANDARD.encode(v.get(path).unwrap().as_str().unwrap())
    };
    let id = find(&objects, "Secret", "mesh-identity");
    assert_eq!(id["type"], "Opaque");
    assert_eq!(
        id["data"]["trust-anchors.pem"],
        b64("certificates.trustAnchorsPEM")
    );
    assert_eq!(id["data"]["issuer.crt"], b64("certificates.issuerCrtPEM"));
    assert_eq!(id["data"]["issuer.key"], b64("certificates.issuerKeyPEM"));
    let tls = find(&objects, "Secret", "mesh-webhook-tls");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["data"]["tls.crt"], b64("certificates.webhookCrtPEM"));
    assert_eq!(tls["data"]["tls.key"], b64("certificates.webhookKeyPEM"));
    assert_eq!(tls["data"]["ca.crt"], b64("certificates.webhookCaPEM"));
    let hook = find(
        &objects,
        "MutatingWebhookConfiguration",
        "mesh-proxy-injector",
    );
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["caBundle"],
        b64("certificates.webhookCaPEM")
    );
}

#[test]
fn gateway_crds_are_switchable() {
    let names = |set: &str| -> Vec<String> {
        render(&values_with(set))
            .unwrap()
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = names("");
    assert!(all.contains(&"httproutes.gateway.networking.k8s.io".to_string()));
    assert!(all.contains(&"grpcroutes.gateway.networking.k8s.io".to_string()));
    let without = names("gatewayAPI.installCRDs=false");
    assert_eq!(without.len(), 5);
    assert!(
        without.iter().all(|n| n.ends_with(".mesh.dev")),
        "{without:?}"
    );
    let objects = render(&values_with("")).unwrap();
    let http = find(
        &objects,
        "CustomResourceDefinition",
        "httproutes.gateway.networking.k8s.io",
    );
    assert_eq!(
        http["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"],
        "v1.5.1"
    );
    assert_eq!(
        http["metadata"]["annotations"]["gateway.networking.k8s.io/channel"],
        "standard"
    );
}

#[test]
fn rbac_rules_are_commented_and_secrets_named() {
    let objects = render(&values_with("")).unwrap();
    let yaml = to_yaml(&objects);
    let rules: usize = objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| o["rules"].as_array().unwrap().len())
        .sum();
    // One comment block per rule: a "# ..." line right above each "- apiGroups:".
    let lines: Vec<&str> = yaml.lines().collect();
    let commented = lines
        .windows(2)
        .filter(|w| w[0].trim_start().starts_with("# ") && w[1].trim_start() == "- apiGroups:")
        .count();
    assert_eq!(commented, rules);
    let role = find(&objects, "Role", "mesh-controller");
    for rule in role["rules"].as_array().unwrap() {
        if rule["resources"] == json!(["secrets"]) || rule["resources"] == json!(["configmaps"]) {
            assert!(rule.get("resourceNames").is_some(), "{rule}");
        }
    }
    let cluster = find(&objects, "ClusterRole", "mesh-controller");
    assert!(
        !cluster.to_string().contains("secrets"),
        "cluster-wide access to Secrets"
    );
}

#[test]
fn missing_certificates_are_refused() {
    let e = render(&Values::defaults()).unwrap_err();
    assert!(matches!(e, RenderError::MissingCertificate { .. }), "{e}");
    assert!(e.to_string().contains("certificates."), "{e}");
    let mut v = values_with("");
    v.set_string("certificates.webhookCaPEM", "not a pem")
        .unwrap();
    let e = render(&v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "value certificates.webhookCaPEM: not PEM text (no -----BEGIN line); give the PEM \
         file's contents"
    );
}

/// The ConfigMap's injection keys are the ones the controller's webhook reads: every key
/// `mesh_inject` knows is rendered, and the webhook's parser takes the rendered values.
#[test]
fn the_config_map_is_what_the_webhook_reads() {
    for (name, set) in SETS {
        let objects = render(&values_with(set)).unwrap();
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "mesh-config")
            .unwrap();
        let data: std::collections::BTreeMap<String, String> =
            serde_json::from_value(cm["data"].clone()).unwrap();
        for key in mesh_inject::settings::keys::ALL {
            assert!(data.contains_key(*key), "{name}: {key} is not rendered");
        }
        let settings = mesh_inject::Settings::default()
            .with_config_map(&data)
            .unwrap_or_else(|e| panic!("{name}: the webhook refuses the rendered ConfigMap: {e}"));
        assert_eq!(
            settings.proxy_image,
            format!("mesh-proxy:{}", mesh_manifests::VERSION)
        );
        assert_eq!(
            settings.native_sidecar,
            !set.contains("proxy.nativeSidecar=false"),
            "{name}"
        );
    }
}
