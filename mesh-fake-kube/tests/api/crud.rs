//! Create, get, list, replace and delete through kube-rs, for a built-in kind (Service) and
//! a custom resource registered by creating its CRD; conflicts, generateName, finalizers and
//! namespaces.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServicePort, ServiceSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::ResourceExt;
use mesh_fake_kube::FakeApiServer;

use crate::common::{api_code, install_widget_crd, setup, widget, Widget};

fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), name.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[tokio::test]
async fn service_create_get_list_update_delete() {
    let (server, client) = setup().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");

    let created = api
        .create(&PostParams::default(), &service("web"))
        .await
        .unwrap();
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let spec = created.spec.clone().unwrap();
    assert!(spec
        .cluster_ip
        .as_deref()
        .is_some_and(|ip| ip.starts_with("10.")));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        api_code(api.create(&PostParams::default(), &service("web")).await),
        409
    );

    let got = api.get("web").await.unwrap();
    assert_eq!(got.resource_version(), created.resource_version());
    api.create(&PostParams::default(), &service("db"))
        .await
        .unwrap();
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, ["db", "web"]);
    let everywhere: Api<Service> = Api::all(client.clone());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(Api::<Service>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());

    let mut changed = got.clone();
    changed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    let replaced = api
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), got.resource_version());
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(
        replaced.spec.as_ref().unwrap().cluster_ip,
        spec.cluster_ip,
        "the cluster IP survives the update"
    );
    let stored = server
        .object("v1", "services", Some("default"), "web")
        .unwrap();
    assert_eq!(stored["spec"]["ports"][0]["port"], 8080);

    api.delete("web", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(api.get("web").await), 404);
    assert_eq!(
        api_code(api.delete("web", &DeleteParams::default()).await),
        404
    );
    assert!(server
        .object("v1", "services", Some("default"), "web")
        .is_none());
}

#[tokio::test]
async fn custom_resource_crud_after_creating_its_crd() {
    let (_server, client) = setup().await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        api_code(widgets.list(&ListParams::default()).await),
        404,
        "not served before its CRD"
    );

    let crd = install_widget_crd(&client).await;
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True"));

    let created = widgets
        .create(&PostParams::default(), &widget("w1", 1))
        .await
        .unwrap();
    assert_eq!(created.spec.size, 1);
    assert_eq!(created.status, None);
    widgets
        .create(&PostParams::default(), &widget("w2", 2))
        .await
        .unwrap();
    let list = widgets.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert_eq!(list.items[0].spec.size, 1);

    let mut w1 = widgets.get("w1").await.unwrap();
    w1.spec.color = Some("red".into());
    let replaced = widgets
        .replace("w1", &PostParams::default(), &w1)
        .await
        .unwrap();
    assert_eq!(replaced.spec.color.as_deref(), Some("red"));
    assert_eq!(replaced.metadata.generation, Some(2));

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_code(widgets.get("w1").await), 404);
    assert_eq!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn update_with_stale_resource_version_conflicts() {
    let (_server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let mut cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "1".to_string())].into()),
        ..ConfigMap::default()
    };
    let first = api.create(&PostParams::default(), &cm).await.unwrap();
    cm = first.clone();
    cm.data = Some([("k".to_string(), "2".to_string())].into());
    api.replace("c", &PostParams::default(), &cm).await.unwrap();

    let mut stale = first;
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    let err = api
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "2");
    let missing = ConfigMap {
        metadata: ObjectMeta {
            name: Some("nope".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    assert_eq!(
        api_code(api.replace("nope", &PostParams::default(), &missing).await),
        404
    );
}

#[tokio::test]
async fn generate_name_finalizers_and_namespaces() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let generated = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    generate_name: Some("gen-".into()),
                    finalizers: Some(vec!["example.com/hold".into()]),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .unwrap();
    let name = generated.name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // A finalizer keeps the object, marked for deletion, until it is removed.
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let held = api.get(&name).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let mut released = held.clone();
    released.metadata.finalizers = None;
    api.replace(&name, &PostParams::default(), &released)
        .await
        .unwrap();
    assert_eq!(api_code(api.get(&name).await), 404);

    // Objects need their namespace; deleting it deletes them.
    let team: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    assert_eq!(
        api_code(team.create(&PostParams::default(), &cm).await),
        404
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("team".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(ns.labels()["kubernetes.io/metadata.name"], "team");
    team.create(&PostParams::default(), &cm).await.unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert!(server
        .object("v1", "configmaps", Some("team"), "c")
        .is_none());
    assert_eq!(api_code(namespaces.get("team").await), 404);
}

#[tokio::test]
async fn kubeconfig_file_and_rust_side_access() {
    let server = FakeApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();

    server
        .upsert(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "seeded"},
            "data": {"a": "b"},
        }))
        .unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    assert_eq!(api.get("seeded").await.unwrap().data.unwrap()["a"], "b");
    assert_eq!(server.objects("v1", "configmaps", Some("default")).len(), 1);
    server
        .remove("v1", "configmaps", Some("default"), "seeded")
        .unwrap();
    assert_eq!(api_code(api.get("seeded").await), 404);
    assert!(server
        .requests()
        .iter()
        .any(|r| r == "GET /api/v1/namespaces/default/configmaps/seeded"));
}
