//! Patches through kube-rs: JSON merge, strategic merge, RFC 6902 JSON patch, server-side
//! apply (create, update, `fieldManager` required), and the status subresource split.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{api_code, install_widget_crd, setup, widget, Widget, WidgetStatus};

#[tokio::test]
async fn merge_strategic_and_json_patches() {
    let (_server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &cm).await.unwrap();

    let pp = PatchParams::default();
    let merged = api
        .patch(
            "c",
            &pp,
            &Patch::Merge(json!({"data": {"a": "10", "b": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        [("a".to_string(), "10".to_string())].into()
    );

    let strategic = api
        .patch(
            "c",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.metadata.labels.unwrap()["x"], "y");

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/data/c", "value": "3"},
        {"op": "remove", "path": "/data/a"},
    ]))
    .unwrap();
    let patched = api.patch("c", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(
        patched.data.unwrap(),
        [("c".to_string(), "3".to_string())].into()
    );

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/c", "value": "nope"}]))
            .unwrap();
    assert_eq!(
        api_code(api.patch("c", &pp, &Patch::Json::<()>(failing)).await),
        422
    );
    assert_eq!(
        api_code(api.patch("missing", &pp, &Patch::Merge(json!({}))).await),
        404
    );
    // A patch that names a stale resourceVersion conflicts.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "data": {"z": "z"}});
    assert_eq!(
        api_code(api.patch("c", &pp, &Patch::Merge(stale)).await),
        409
    );
}

#[tokio::test]
async fn server_side_apply_creates_and_updates() {
    let (_server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let apply = |data: serde_json::Value| {
        Patch::Apply(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "applied"},
            "data": data,
        }))
    };
    let pp = PatchParams::apply("test").force();
    let created = api
        .patch("applied", &pp, &apply(json!({"a": "1"})))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let updated = api
        .patch("applied", &pp, &apply(json!({"b": "2"})))
        .await
        .unwrap();
    // No field ownership tracking: applied fields merge over the live object.
    assert_eq!(updated.data.unwrap().len(), 2);

    // Like the real server: apply needs a field manager (422), and apiVersion and kind.
    assert_eq!(
        api_code(
            api.patch("applied", &PatchParams::default(), &apply(json!({})))
                .await
        ),
        422
    );
    let no_kind = Patch::Apply(json!({"metadata": {"name": "applied"}, "data": {}}));
    assert_eq!(api_code(api.patch("applied", &pp, &no_kind).await), 400);
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() {
    let (server, client) = setup().await;
    install_widget_crd(&client).await;
    let api: Api<Widget> = Api::namespaced(client, "default");
    let mut with_status = widget("w", 1);
    with_status.status = Some(WidgetStatus { ready: true });
    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(created.status, None, "status is dropped on create");

    // patch_status changes only .status (the spec in the patch is ignored) and not generation.
    let patched = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 99}, "status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status, Some(WidgetStatus { ready: true }));
    assert_eq!(patched.spec.size, 1);
    assert_eq!(patched.metadata.generation, Some(1));

    // A spec update ignores .status and bumps generation.
    let mut w = api.get("w").await.unwrap();
    w.spec.size = 2;
    w.status = Some(WidgetStatus { ready: false });
    let replaced = api.replace("w", &PostParams::default(), &w).await.unwrap();
    assert_eq!(replaced.spec.size, 2);
    assert_eq!(replaced.status, Some(WidgetStatus { ready: true }));
    assert_eq!(replaced.metadata.generation, Some(2));

    // Server-side apply on /status, and replace_status.
    let applied = api
        .patch_status(
            "w",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "w"},
                "status": {"ready": false},
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.status, Some(WidgetStatus { ready: false }));
    let mut current = api.get_status("w").await.unwrap();
    current.status = Some(WidgetStatus { ready: true });
    current.spec.size = 50;
    let replaced = api
        .replace_status("w", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(replaced.status, Some(WidgetStatus { ready: true }));
    assert_eq!(replaced.spec.size, 2);
    let stored = server
        .object("example.com/v1", "widgets", Some("default"), "w")
        .unwrap();
    assert_eq!(stored["spec"]["size"], 2);
    assert_eq!(stored["status"]["ready"], true);

    // Status of a kind without the subresource is 404.
    let cms: Api<ConfigMap> = Api::default_namespaced(api.into_client());
    assert_eq!(api_code(cms.get_status("nope").await), 404);
}
