//! Label and field selectors on list and watch.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::ResourceExt;
use serde_json::json;

use crate::common::{api_code, setup, within};

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

async fn next(stream: &mut BoxStream<'_, kube::Result<WatchEvent<Pod>>>) -> String {
    match within("a watch event", stream.next()).await {
        Some(Ok(WatchEvent::Added(p))) => format!("ADDED {}", p.name_any()),
        Some(Ok(WatchEvent::Modified(p))) => format!("MODIFIED {}", p.name_any()),
        Some(Ok(WatchEvent::Deleted(p))) => format!("DELETED {}", p.name_any()),
        other => panic!("unexpected {other:?}"),
    }
}

async fn names(api: &Api<Pod>, params: &ListParams) -> Vec<String> {
    api.list(params)
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

#[tokio::test]
async fn label_and_field_selectors_on_list() {
    let (_server, client) = setup().await;
    let api: Api<Pod> = Api::default_namespaced(client);
    for p in [
        pod("web-1", &[("app", "web"), ("env", "prod")]),
        pod("web-2", &[("app", "web"), ("env", "dev")]),
        pod("db-1", &[("app", "db"), ("env", "prod"), ("tier", "data")]),
    ] {
        api.create(&PostParams::default(), &p).await.unwrap();
    }
    let labels = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(&api, &labels("app=web")).await, ["web-1", "web-2"]);
    assert_eq!(names(&api, &labels("app==web,env=prod")).await, ["web-1"]);
    assert_eq!(names(&api, &labels("app!=web")).await, ["db-1"]);
    assert_eq!(
        names(&api, &labels("env in (dev, staging)")).await,
        ["web-2"]
    );
    assert_eq!(
        names(&api, &labels("env notin (dev)")).await,
        ["db-1", "web-1"]
    );
    assert_eq!(names(&api, &labels("tier")).await, ["db-1"]);
    assert_eq!(names(&api, &labels("!tier")).await, ["web-1", "web-2"]);
    assert!(names(&api, &labels("app=nope")).await.is_empty());
    assert_eq!(api_code(api.list(&labels("app in web")).await), 400);

    let fields = |s: &str| ListParams::default().fields(s);
    assert_eq!(names(&api, &fields("metadata.name=web-2")).await, ["web-2"]);
    assert_eq!(
        names(
            &api,
            &fields("metadata.name!=web-2,metadata.namespace=default")
        )
        .await,
        ["db-1", "web-1"]
    );
    assert_eq!(names(&api, &fields("status.phase=Pending")).await.len(), 3);
    assert_eq!(api_code(api.list(&fields("spec.nope=x")).await), 400);
}

#[tokio::test]
async fn label_selector_on_watch_reports_objects_entering_and_leaving() {
    let (_server, client) = setup().await;
    let api: Api<Pod> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &pod("a", &[("app", "web")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &pod("b", &[("app", "db")]))
        .await
        .unwrap();

    let params = WatchParams::default().labels("app=web").disable_bookmarks();
    let mut stream = api.watch(&params, "0").await.unwrap().boxed();
    assert_eq!(next(&mut stream).await, "ADDED a");

    let relabel = |app: &'static str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    let pp = PatchParams::default();
    api.create(&PostParams::default(), &pod("c", &[("app", "db")]))
        .await
        .unwrap();
    api.patch("b", &pp, &relabel("web")).await.unwrap();
    assert_eq!(next(&mut stream).await, "ADDED b", "b starts matching");
    api.patch(
        "b",
        &pp,
        &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut stream).await, "MODIFIED b");
    api.patch("a", &pp, &relabel("db")).await.unwrap();
    assert_eq!(next(&mut stream).await, "DELETED a", "a stops matching");
    api.delete("c", &Default::default()).await.unwrap();
    api.delete("b", &Default::default()).await.unwrap();
    assert_eq!(next(&mut stream).await, "DELETED b");
}
