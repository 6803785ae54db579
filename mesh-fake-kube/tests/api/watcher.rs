//! kube-runtime's watcher and reflector against the fake server: list-then-watch and
//! streaming lists, resuming after `drop_watches` without a re-list, re-listing after
//! `compact` (410 Gone), and raw watch behaviour (bookmarks, timeouts, too-old versions).

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{reflector, WatchStreamExt};
use kube::{Resource, ResourceExt};
use mesh_fake_kube::FakeApiServer;
use tokio::sync::mpsc;

use crate::common::{eventually, setup, within, DEADLINE};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
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
        ..ConfigMap::default()
    }
}

/// What a watcher reported, reduced to comparable strings (`"apply a"`, `"init"`, ...).
fn describe(event: &Result<Event<ConfigMap>, watcher::Error>) -> String {
    match event {
        Ok(Event::Init) => "init".into(),
        Ok(Event::InitApply(o)) => format!("init-apply {}", o.name_any()),
        Ok(Event::InitDone) => "init-done".into(),
        Ok(Event::Apply(o)) => format!("apply {}", o.name_any()),
        Ok(Event::Delete(o)) => format!("delete {}", o.name_any()),
        Err(watcher::Error::WatchError(status)) => {
            format!("error {} {}", status.code, status.reason)
        }
        Err(e) => format!("error {e}"),
    }
}

/// Runs a watcher in a task; its events arrive described on the returned channel.
fn spawn_watcher(
    api: Api<ConfigMap>,
    config: watcher::Config,
) -> mpsc::UnboundedReceiver<(String, Option<String>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(event) = stream.next().await {
            let rv = match &event {
                Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => {
                    o.resource_version()
                }
                _ => None,
            };
            if tx.send((describe(&event), rv)).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(String, Option<String>)>,
) -> (String, Option<String>) {
    within("a watcher event", rx.recv())
        .await
        .expect("the watcher task ended")
}

async fn expect_events(
    rx: &mut mpsc::UnboundedReceiver<(String, Option<String>)>,
    expected: &[&str],
) {
    for want in expected {
        let (got, _) = next(rx).await;
        assert_eq!(&got, want);
    }
}

use kube::runtime::watcher::watcher;

/// `initial`: the events expected before the changes (kube's watcher sends no `Init` for a
/// streaming list).
async fn watcher_sees_init_then_changes(
    config: watcher::Config,
    initial: &[&str],
) -> FakeApiServer {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();

    let mut rx = spawn_watcher(api.clone(), config);
    expect_events(&mut rx, initial).await;
    eventually("the watch to be open", || server.open_watches() == 1).await;

    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    expect_events(&mut rx, &["apply c"]).await;
    let mut b = api.get("b").await.unwrap();
    b.data = Some([("k".to_string(), "v".to_string())].into());
    api.replace("b", &PostParams::default(), &b).await.unwrap();
    expect_events(&mut rx, &["apply b"]).await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    expect_events(&mut rx, &["delete a"]).await;
    server
}

const LISTED: &[&str] = &["init", "init-apply a", "init-apply b", "init-done"];

#[tokio::test]
async fn watcher_list_then_watch() {
    watcher_sees_init_then_changes(watcher::Config::default(), LISTED).await;
}

#[tokio::test]
async fn watcher_list_then_watch_paginated() {
    // Page size 1: three list requests with continue tokens before the watch.
    let server =
        watcher_sees_init_then_changes(watcher::Config::default().page_size(1), LISTED).await;
    let requests = server.requests();
    // Two objects, one per page: the first page has a continue token, the second not.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.contains("/configmaps?") && r.contains("limit=1"))
            .count(),
        2,
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("&continue=")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn watcher_streaming_list() {
    let server = watcher_sees_init_then_changes(
        watcher::Config::default().streaming_lists(),
        &["init-apply a", "init-apply b", "init-done"],
    )
    .await;
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("sendInitialEvents=true")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(
            |r| r.starts_with("GET /api/v1/namespaces/default/configmaps?")
                && !r.contains("watch=true")
        ),
        "a streaming list does not list: {requests:?}"
    );
}

#[tokio::test]
async fn watcher_any_semantic_without_bookmarks() {
    watcher_sees_init_then_changes(
        watcher::Config::default()
            .any_semantic()
            .disable_bookmarks(),
        LISTED,
    )
    .await;
}

#[tokio::test]
async fn reflector_store_converges() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    within("the store to be ready", reader.wait_until_ready())
        .await
        .unwrap();
    assert_eq!(reader.state().len(), 1);
    eventually("the watch to be open", || server.open_watches() == 1).await;

    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("the store to hold b and c", || {
        let mut names: Vec<String> = reader.state().iter().map(|o| o.name_any()).collect();
        names.sort();
        names == ["b", "c"]
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn dropped_watches_resume_from_last_resource_version_without_relisting() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default());
    expect_events(&mut rx, &["init", "init-apply a", "init-done"]).await;
    eventually("the watch to be open", || server.open_watches() == 1).await;
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    let (event, rv_b) = next(&mut rx).await;
    assert_eq!(event, "apply b");
    let rv_b = rv_b.unwrap();

    server.clear_requests();
    server.drop_watches();
    assert_eq!(server.open_watches(), 0);
    eventually("the watch to be reopened", || server.open_watches() == 1).await;
    api.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    expect_events(&mut rx, &["apply c"]).await;

    let requests = server.requests();
    let gets: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/default/configmaps"))
        .collect();
    assert!(!gets.is_empty(), "{requests:?}");
    assert!(
        gets.iter().all(|r| r.contains("watch=true")),
        "no re-list expected: {requests:?}"
    );
    // Nothing else was written between b and the drop, so b's (or a bookmark's, equal) version.
    assert!(
        gets.iter()
            .any(|r| r.contains(&format!("resourceVersion={rv_b}&"))
                || r.ends_with(&format!("resourceVersion={rv_b}"))),
        "expected a watch from {rv_b}: {requests:?}"
    );
}

#[tokio::test]
async fn compaction_forces_a_relist_that_converges() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    // Only `app=web` and no bookmarks, so writes to other objects do not advance the
    // watcher's resourceVersion: after compaction its version is too old. The watcher is
    // polled here (not in a task), so it cannot resume before the test is ready.
    let config = watcher::Config::default()
        .labels("app=web")
        .disable_bookmarks();
    let mut stream = watcher(api.clone(), config).boxed();
    let mut poll = async |wait: Duration| {
        tokio::time::timeout(wait, stream.next())
            .await
            .ok()
            .map(|e| describe(&e.expect("the watcher never ends")))
    };
    for want in ["init", "init-apply a", "init-done"] {
        assert_eq!(poll(DEADLINE).await.as_deref(), Some(want));
    }
    // Let the watcher open its watch (no event comes).
    assert_eq!(poll(Duration::from_millis(200)).await, None);
    eventually("the watch to be open", || server.open_watches() == 1).await;

    api.create(&PostParams::default(), &cm("other", &[("app", "db")]))
        .await
        .unwrap();
    server.compact();
    server.clear_requests();
    server.drop_watches();
    // Written after the watch ended: the watcher can only learn of it by re-listing.
    api.create(&PostParams::default(), &cm("b", &[("app", "web")]))
        .await
        .unwrap();

    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(poll(DEADLINE).await.unwrap_or_default());
    }
    assert_eq!(
        events,
        [
            "error 410 Expired",
            "init",
            "init-apply a",
            "init-apply b",
            "init-done"
        ]
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(
            |r| r.starts_with("GET /api/v1/namespaces/default/configmaps?")
                && !r.contains("watch=true")
        ),
        "expected a re-list: {requests:?}"
    );
    api.create(&PostParams::default(), &cm("c", &[("app", "web")]))
        .await
        .unwrap();
    assert_eq!(poll(DEADLINE).await.as_deref(), Some("apply c"));
}

#[tokio::test]
async fn raw_watch_bookmarks_timeouts_and_expiry() {
    let server = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start();
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let rv = created.resource_version().unwrap();

    // From the current version with bookmarks: a bookmark right away, then periodic ones.
    let params = WatchParams::default().timeout(1);
    let events: Vec<WatchEvent<ConfigMap>> = within(
        "a watch with timeoutSeconds=1 to end",
        api.watch(&params, &rv).await.unwrap().try_collect(),
    )
    .await
    .unwrap();
    let bookmarks = events
        .iter()
        .filter(|e| matches!(e, WatchEvent::Bookmark(_)))
        .count();
    assert!(bookmarks >= 3, "{events:?}");
    assert!(events
        .iter()
        .all(|e| matches!(e, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv)));

    // From "0": a synthetic ADDED for the existing object.
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    match within("the initial ADDED", stream.next()).await {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.name_any(), "a"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    drop(stream);

    // From an older version: the changes since, replayed.
    api.create(&PostParams::default(), &cm("a2", &[]))
        .await
        .unwrap();
    let params = WatchParams::default().timeout(5).disable_bookmarks();
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    match within("the replayed ADDED", stream.next()).await {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.name_any(), "a2"),
        other => panic!("expected ADDED a2, got {other:?}"),
    }
    drop(stream);

    // From a compacted version: a 410 ERROR event, then the end of the stream.
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    server.compact();
    let events: Vec<WatchEvent<ConfigMap>> = within(
        "the expired watch to end",
        api.watch(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .try_collect(),
    )
    .await
    .unwrap();
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected one ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn metadata_watcher_gets_partial_objects() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    // `Api<PartialObjectMeta<K>>` makes metadata-only requests (`as=PartialObjectMetadata`).
    let meta_api: Api<PartialObjectMeta<ConfigMap>> =
        Api::default_namespaced(api.clone().into_client());
    let mut stream = watcher(meta_api, watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("init-done") {
        let event = within("a metadata watcher event", stream.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(match event {
            Event::Init => "init".to_string(),
            Event::InitApply(m) => {
                assert_eq!(m.labels()["app"], "web");
                format!("init-apply {}", m.name_any())
            }
            Event::InitDone => "init-done".to_string(),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(seen, ["init", "init-apply a", "init-done"]);
    let next_event = tokio::spawn(async move {
        match within("the metadata watcher's apply", stream.next()).await {
            Some(Ok(Event::Apply(m))) => m.name_any(),
            other => panic!("unexpected {other:?}"),
        }
    });
    eventually("the watch to be open", || server.open_watches() == 1).await;
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    assert_eq!(next_event.await.unwrap(), "b");
}

#[tokio::test]
async fn event_recorder_publishes() {
    use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "test-controller".into(),
            instance: None,
        },
    );
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };
    let reference = created.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events = server.objects("events.k8s.io/v1", "events", Some("default"));
    assert_eq!(
        events.len(),
        1,
        "the second publish updates the series: {events:?}"
    );
    assert_eq!(events[0]["reason"], "Tested");
    assert_eq!(events[0]["series"]["count"], 2);
}
