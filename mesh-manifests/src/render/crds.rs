//! The CRDs: the mesh's own five (`mesh_crds::crds()`, full OpenAPI schemas) and the Gateway
//! API HTTPRoute and GRPCRoute CRDs the controller reads, generated from the `gateway-api`
//! crate's types (Gateway API v1.5.1, standard channel).

use kube::CustomResourceExt;
use serde_json::Value;

use super::{part_of, RenderError};
use crate::VERSION;

/// The Gateway API release the `gateway-api` crate's types come from.
pub const GATEWAY_API_BUNDLE_VERSION: &str = "v1.5.1";

fn to_value(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<Value, RenderError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    serde_json::to_value(crd).map_err(|e| RenderError::Invalid {
        key: format!("CRD {name}"),
        reason: format!("cannot be written as JSON: {e}"),
    })
}

/// Helm's annotation that keeps an object on `helm uninstall`: deleting a CRD deletes every
/// object of its kind, so neither Helm nor `meshctl uninstall` (without its flag) does it.
const HELM_KEEP: (&str, &str) = ("helm.sh/resource-policy", "keep");

fn label(obj: &mut Value, annotations: &[(&str, &str)]) {
    let meta = &mut obj["metadata"];
    meta["labels"] = part_of();
    let mut notes = serde_json::Map::new();
    notes.insert(
        HELM_KEEP.0.to_string(),
        Value::String(HELM_KEEP.1.to_string()),
    );
    for (k, v) in annotations {
        notes.insert((*k).to_string(), Value::String((*v).to_string()));
    }
    meta["annotations"] = Value::Object(notes);
}

/// The mesh's CRDs.
pub(crate) fn mesh_crds() -> Result<Vec<Value>, RenderError> {
    mesh_crds::crds()
        .iter()
        .map(|crd| {
            let mut v = to_value(crd)?;
            label(&mut v, &[("mesh.dev/version", VERSION)]);
            Ok(v)
        })
        .collect()
}

/// HTTPRoute and GRPCRoute.
pub(crate) fn gateway_crds() -> Result<Vec<Value>, RenderError> {
    [
        gateway_api::httproutes::HttpRoute::crd(),
        gateway_api::grpcroutes::GrpcRoute::crd(),
    ]
    .iter()
    .map(|crd| {
        let mut v = to_value(crd)?;
        label(
            &mut v,
            &[
                (
                    "gateway.networking.k8s.io/bundle-version",
                    GATEWAY_API_BUNDLE_VERSION,
                ),
                ("gateway.networking.k8s.io/channel", "standard"),
                ("mesh.dev/version", VERSION),
            ],
        );
        Ok(v)
    })
    .collect()
}
