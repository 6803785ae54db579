//! A Gateway API HTTPRoute (gateway-api 0.22 types) round trip, with status.

use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteSpec, HttpRouteStatus, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use crate::common::setup;

#[tokio::test]
async fn httproute_round_trip_with_status() {
    let (server, client) = setup().await;
    let api: Api<HttpRoute> = Api::default_namespaced(client);
    let route = HttpRoute {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: HttpRouteSpec {
            hostnames: Some(vec!["web.example.com".into()]),
            parent_refs: Some(vec![HttpRouteParentRefs {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "web".into(),
                ..HttpRouteParentRefs::default()
            }]),
            ..HttpRouteSpec::default()
        },
        status: None,
    };
    let created = api.create(&PostParams::default(), &route).await.unwrap();
    assert_eq!(created.spec, route.spec);

    let status = HttpRouteStatus {
        parents: vec![HttpRouteStatusParents {
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            controller_name: "example.com/mesh".into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "web".into(),
                ..HttpRouteStatusParentsParentRef::default()
            },
        }],
    };
    let patched = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.as_ref(), Some(&status));
    assert_eq!(patched.spec, route.spec);

    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].status.as_ref(), Some(&status));
    assert_eq!(listed.items[0].name_any(), "web");
    let raw = server
        .object(
            "gateway.networking.k8s.io/v1",
            "httproutes",
            Some("default"),
            "web",
        )
        .unwrap();
    assert_eq!(raw["kind"], "HTTPRoute");
    assert_eq!(
        raw["status"]["parents"][0]["controllerName"],
        "example.com/mesh"
    );
}
