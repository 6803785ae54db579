//! The hooks `meshctl check` relies on, through kube-rs: SelfSubjectAccessReviews answered
//! from `deny_access`, the reported server version, and the pod proxy subresource
//! forwarding to an address the test registered.

use std::io::{Read, Write};
use std::net::TcpListener;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;

use crate::common::{api_code, setup};

async fn allowed(client: &Client, verb: &str, group: &str, resource: &str) -> bool {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: Some("mesh-system".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    api.create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview created")
        .status
        .expect("a review has a status")
        .allowed
}

#[tokio::test]
async fn access_reviews_allow_unless_denied() {
    let (server, client) = setup().await;
    assert!(
        allowed(
            &client,
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions"
        )
        .await
    );
    server.deny_access(
        "create",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
    );
    assert!(
        !allowed(
            &client,
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions"
        )
        .await
    );
    assert!(
        allowed(
            &client,
            "get",
            "apiextensions.k8s.io",
            "customresourcedefinitions"
        )
        .await
    );
    server.deny_access("*", "", "secrets");
    assert!(!allowed(&client, "list", "", "secrets").await);
    server.allow_all_access();
    assert!(allowed(&client, "list", "", "secrets").await);
}

#[tokio::test]
async fn server_version_can_be_set() {
    let (server, client) = setup().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "32"));
    server.set_server_version(1, 28);
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "28"));
    assert_eq!(v.git_version, "v1.28.0-fake");
}

/// A client that does not retry 503s (kube retries them with backoff by default, which a
/// test of 503 answers would wait out).
async fn client_without_retries(server: &mesh_fake_kube::FakeApiServer) -> Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn pod_proxy_forwards_to_the_registered_address() {
    let (server, _) = setup().await;
    let client = client_without_retries(&server).await;
    let request = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    let path = "/api/v1/namespaces/default/pods/web-1:4191/proxy/identity";

    // No such pod: 404 from the API server.
    assert_eq!(api_code(client.request_text(request(path)).await), 404);

    server
        .upsert(json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web-1", "namespace": "default"},
                       "spec": {"containers": [{"name": "app", "image": "app:1"}]}}))
        .unwrap();
    // No route: 503.
    assert_eq!(api_code(client.request_text(request(path)).await), 503);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        let body = r#"{"identity": "spiffe://cluster.local/ns/default/sa/default"}"#;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    server.route_pod_port("default", "web-1", 4191, addr);
    let text = client
        .request_text(request(&format!("{path}?x=1")))
        .await
        .unwrap();
    assert_eq!(
        text,
        r#"{"identity": "spiffe://cluster.local/ns/default/sa/default"}"#
    );
    assert!(seen
        .join()
        .unwrap()
        .starts_with("GET /identity?x=1 HTTP/1.1\r\n"));

    // Another port of the same pod has no route.
    assert_eq!(
        api_code(
            client
                .request_text(request(
                    "/api/v1/namespaces/default/pods/web-1:9990/proxy/ready"
                ))
                .await
        ),
        503
    );
    server.unroute_pod_port("default", "web-1", 4191);
    assert_eq!(api_code(client.request_text(request(path)).await), 503);
}
