//! Status conditions written to the fake API server name fields as the CRDs spell them
//! (`spec.retry.maxBackoff`), never the proxy model's names (`backoff_max`), and list every
//! invalid field of an object in one message.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use mesh_controller::RunArgs;
use mesh_fake_kube::FakeApiServer;
use serde_json::{json, Value};

/// Model names that must never reach a status message.
const INTERNAL: &[&str] = &[
    "backoff_base",
    "backoff_max",
    "max_retries",
    "base_ejection",
    "max_ejection",
    "max_ejected_percent",
    "consecutive_failures",
    "request_headers",
    "grpc_codes",
];

async fn setup() -> (FakeApiServer, mesh_controller::Running) {
    let server = FakeApiServer::start();
    for ns in ["shop", "mesh-system"] {
        server
            .upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let api: Api<CustomResourceDefinition> = Api::all(server.client().await);
    for crd in mesh_crds::crds() {
        api.create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
    }
    server
        .upsert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}},
        }))
        .unwrap();
    let ctl = mesh_controller::start_with(RunArgs::for_tests(None), Some(server.client().await))
        .await
        .expect("controller starts");
    (server, ctl)
}

/// The first condition of `plural/name` in `shop` once it has one.
async fn condition(server: &FakeApiServer, api_version: &str, plural: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(obj) = server.object(api_version, plural, Some("shop"), name) {
            let c = match plural {
                "httproutes" => obj["status"]["parents"][0]["conditions"][0].clone(),
                _ => obj["status"]["conditions"][0].clone(),
            };
            if !c.is_null() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no status on {plural}/{name}: {:#}",
            server
                .object(api_version, plural, Some("shop"), name)
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_internal_names(message: &str) {
    for name in INTERNAL {
        assert!(!message.contains(name), "{name} in {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_policy_reports_every_error_with_the_crd_field_names() {
    let (server, ctl) = setup().await;
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "web"},
                "retry": {"backoff": "5s", "maxBackoff": "10ms"},
                "circuitBreaker": {"baseEjectionTime": "300s", "maxEjectionTime": "1s"},
            },
        }))
        .unwrap();
    let c = condition(&server, "mesh.dev/v1alpha1", "backendpolicies", "web").await;
    assert_eq!(c["type"], "Accepted", "{c:#}");
    assert_eq!(c["status"], "False", "{c:#}");
    assert_eq!(c["reason"], "Invalid", "{c:#}");
    let message = c["message"].as_str().unwrap();
    assert_eq!(
        message,
        "spec.retry.backoff: 5s is larger than spec.retry.maxBackoff 10ms; \
         spec.circuitBreaker.maxEjectionTime: 1s is shorter than \
         spec.circuitBreaker.baseEjectionTime 5m"
    );
    assert_no_internal_names(message);

    // Fixed: accepted.
    server
        .upsert(json!({
            "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "web"},
                "retry": {"backoff": "5ms", "maxBackoff": "10ms"},
                "circuitBreaker": {"baseEjectionTime": "1s", "maxEjectionTime": "300s"},
            },
        }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = condition(&server, "mesh.dev/v1alpha1", "backendpolicies", "web").await;
        if c["status"] == "True" {
            break;
        }
        assert!(Instant::now() < deadline, "never accepted: {c:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctl.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_header_filter_error_names_the_route_field() {
    let (server, ctl) = setup().await;
    server
        .upsert(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{
                    "filters": [{
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "x-env", "value": "a\u{7}b"}]},
                    }],
                    "backendRefs": [{"name": "web", "port": 80}],
                }],
            },
        }))
        .unwrap();
    let c = condition(&server, "gateway.networking.k8s.io/v1", "httproutes", "web").await;
    assert_eq!(c["status"], "False", "{c:#}");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.rules[0].filters[0].requestHeaderModifier.set[0].value: "),
        "{message}"
    );
    assert_no_internal_names(message);
    ctl.shutdown();
}
