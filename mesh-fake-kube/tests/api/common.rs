//! Shared helpers: a small custom resource type, its CRD, and waiting with a deadline.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResource, CustomResourceExt};
use mesh_fake_kube::FakeApiServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long any single wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A namespaced custom resource with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    pub size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// Status of a [`Widget`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WidgetStatus {
    pub ready: bool,
}

/// A started server and a client for it.
pub async fn setup() -> (FakeApiServer, Client) {
    let server = FakeApiServer::start();
    let client = server.client().await;
    (server, client)
}

/// Creates the `widgets.example.com` CRD through the API (which makes the server serve it).
pub async fn install_widget_crd(client: &Client) -> CustomResourceDefinition {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .expect("create the Widget CRD")
}

/// A widget in `default`.
pub fn widget(name: &str, size: u32) -> Widget {
    let mut w = Widget::new(name, WidgetSpec { size, color: None });
    w.metadata.namespace = Some("default".into());
    w
}

/// `fut`, or a panic naming `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `check` every 20 ms until it is true, or panics naming `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The status code of a kube API error (panics on success or other errors).
pub fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}
