//! Answering one AdmissionReview: the HTTP checks (path, method, content type, a hard body
//! limit), the decoding, and the pod's injection through `mesh_inject::admit_pod` with the
//! settings in force at that moment ([`InjectDefaults`]). Nothing here blocks a pod: what
//! cannot be injected is admitted unchanged, with a warning that names the problem.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use super::config::{InjectDefaults, FIRST_READ_WAIT};
use crate::index::Index;
use crate::metrics::{Metrics, OutcomeLabel};

/// The largest AdmissionReview read: the API server's own limit on a request body (3 MiB),
/// so that every pod the cluster accepts fits, and nothing larger is buffered.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long a client may take to send a request body (the API server gives a webhook at
/// most 30 s in all).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The injector behind the webhook's listener.
pub struct Webhook {
    pub index: Arc<Index>,
    /// The injection settings, replaced live when the ConfigMap changes.
    pub defaults: Arc<InjectDefaults>,
    pub metrics: Arc<Metrics>,
}

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut rsp = Response::new(Full::new(Bytes::from(body.into() + "\n")));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

impl Webhook {
    /// One HTTP request: counted and timed.
    pub async fn serve<B>(self: Arc<Self>, req: Request<B>) -> Result<Reply, Infallible>
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let start = Instant::now();
        let (outcome, rsp) = self.answer(req).await;
        self.metrics
            .webhook_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.metrics
            .webhook_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(rsp)
    }

    async fn answer<B>(&self, req: Request<B>) -> (&'static str, Reply)
    where
        B: http_body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.uri().path() != mesh_inject::WEBHOOK_PATH {
            return (
                "rejected",
                text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "not found; AdmissionReviews go to POST {}",
                        mesh_inject::WEBHOOK_PATH
                    ),
                ),
            );
        }
        if req.method() != Method::POST {
            return ("rejected", text(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return (
                "rejected",
                text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "an AdmissionReview is sent as Content-Type: application/json",
                ),
            );
        }
        let read = tokio::time::timeout(
            BODY_TIMEOUT,
            Limited::new(req.into_body(), MAX_BODY).collect(),
        );
        let Ok(body) = read.await else {
            return (
                "rejected",
                text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the AdmissionReview was not sent within {BODY_TIMEOUT:?}"),
                ),
            );
        };
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (
                    "rejected",
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the AdmissionReview is larger than {MAX_BODY} bytes"),
                    ),
                )
            }
            Err(e) => {
                return (
                    "rejected",
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    ),
                )
            }
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    "rejected",
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"),
                    ),
                )
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => {
                return (
                    "rejected",
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("the AdmissionReview has no usable request: {e}"),
                    ),
                )
            }
        };
        // Right after the controller starts, give the ConfigMap a moment to be read, so
        // that the first pods do not get the flags' settings by accident.
        self.defaults.wait_first_read(FIRST_READ_WAIT).await;
        let (outcome, response) = self.review(&request);
        let body = match encode(response) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot encode an AdmissionReview response: {e}");
                return (
                    "error",
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot encode the AdmissionReview response: {e}"),
                    ),
                );
            }
        };
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        (outcome, rsp)
    }

    /// The answer for one admission request, and its outcome label.
    pub fn review(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        let rsp = AdmissionResponse::from(req);
        if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
            let kind = if req.kind.group.is_empty() {
                req.kind.kind.clone()
            } else {
                format!("{}.{}", req.kind.kind, req.kind.group)
            };
            return (
                "error",
                warn(
                    rsp,
                    &format!("the injector only handles Pods, not a {kind}; limit the MutatingWebhookConfiguration's rules to pods (meshctl install writes it so)"),
                ),
            );
        }
        if req.operation != Operation::Create {
            return (
                "error",
                warn(
                    rsp,
                    &format!("the injector only handles pod CREATE, not {:?}; limit the MutatingWebhookConfiguration's operations to CREATE", req.operation),
                ),
            );
        }
        let Some(obj) = &req.object else {
            return (
                "error",
                warn(rsp, "the AdmissionRequest of a pod CREATE has no object"),
            );
        };
        let pod = match serde_json::to_value(obj) {
            Ok(p) => p,
            Err(e) => {
                return (
                    "error",
                    warn(
                        rsp,
                        &format!(
                            "the pod was admitted without the mesh proxy: cannot read it: {e}"
                        ),
                    ),
                )
            }
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| obj.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = obj
            .metadata
            .name
            .clone()
            .or_else(|| obj.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let ns_annotations = self.index.namespace_annotations(&namespace);
        let settings = self.defaults.current();
        match mesh_inject::admit_pod(&pod, &ns_annotations, &settings) {
            Ok(mesh_inject::Admission::Patch(patch)) => match rsp.clone().with_patch(patch) {
                Ok(r) => {
                    tracing::debug!(%namespace, pod = %name, "injected");
                    ("injected", r)
                }
                Err(e) => (
                    "error",
                    warn(
                        rsp,
                        &format!("the pod was admitted without the mesh proxy: cannot encode the patch: {e}"),
                    ),
                ),
            },
            Ok(mesh_inject::Admission::Skip(why)) => {
                tracing::debug!(%namespace, pod = %name, "not injected: {why}");
                ("skipped", rsp)
            }
            Err(e) => {
                tracing::warn!(%namespace, pod = %name, "pod admitted without the proxy: {e}");
                (
                    "error",
                    warn(
                        rsp,
                        &format!("the pod was admitted without the mesh proxy: {e}"),
                    ),
                )
            }
        }
    }
}

/// The AdmissionReview answer as JSON. kube-core writes the patch (`Vec<u8>`) as an array of
/// numbers, which the API server's decoder accepts; Kubernetes documents it as base64 (Go's
/// `[]byte`), four times smaller, so that is what is sent.
fn encode(response: AdmissionResponse) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(response.into_review())?;
    if let Some(patch) = v.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take())?;
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&v)
}

/// Admits unchanged, telling the client why (kubectl prints warnings).
fn warn(mut rsp: AdmissionResponse, problem: &str) -> AdmissionResponse {
    rsp.warnings = Some(vec![format!("mesh injector: {problem}")]);
    rsp
}
