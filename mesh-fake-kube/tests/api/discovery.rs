//! kube-rs discovery (legacy and aggregated) against the fake server, before and after a CRD
//! is created.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::GroupVersionKind;
use kube::discovery::{self, verbs, Discovery, Scope};
use kube::Resource;

use crate::common::{install_widget_crd, setup};

fn finds(discovery: &Discovery, group: &str, version: &str, kind: &str) -> bool {
    discovery
        .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
        .is_some()
}

#[tokio::test]
async fn discovery_finds_builtin_gateway_and_crd_kinds() {
    let (_server, client) = setup().await;
    let d = Discovery::new(client.clone()).run().await.unwrap();
    assert!(finds(&d, "", "v1", "Service"));
    assert!(finds(&d, "discovery.k8s.io", "v1", "EndpointSlice"));
    assert!(finds(&d, "gateway.networking.k8s.io", "v1", "HTTPRoute"));
    assert!(finds(&d, "gateway.networking.k8s.io", "v1", "GRPCRoute"));
    assert!(finds(&d, "coordination.k8s.io", "v1", "Lease"));
    assert!(finds(&d, "apps", "v1", "Deployment"));
    assert!(finds(
        &d,
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration"
    ));
    assert!(!finds(&d, "example.com", "v1", "Widget"));

    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        ))
        .unwrap();
    assert_eq!(ar.plural, "httproutes");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation(verbs::WATCH));
    assert!(caps
        .subresources
        .iter()
        .any(|(sub, _)| sub.plural == "status"));
    let (_, ns_caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .unwrap();
    assert_eq!(ns_caps.scope, Scope::Cluster);

    install_widget_crd(&client).await;
    let d = Discovery::new(client.clone()).run().await.unwrap();
    assert!(finds(&d, "example.com", "v1", "Widget"));
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    for (g, v, k) in [
        ("", "v1", "Service"),
        ("discovery.k8s.io", "v1", "EndpointSlice"),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        ("example.com", "v1", "Widget"),
    ] {
        assert!(
            finds(&aggregated, g, v, k),
            "aggregated discovery misses {k}"
        );
    }

    let (ar, _) = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
    )
    .await
    .unwrap();
    assert_eq!(ar.plural, "widgets");
    let svc = GroupVersionKind::gvk("", "v1", &Service::kind(&()));
    assert_eq!(
        discovery::pinned_kind(&client, &svc)
            .await
            .unwrap()
            .0
            .plural,
        "services"
    );
    let eps = GroupVersionKind::gvk("discovery.k8s.io", "v1", &EndpointSlice::kind(&()));
    assert!(discovery::pinned_kind(&client, &eps).await.is_ok());
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
}
