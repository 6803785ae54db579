//! Retries as a tower layer.
//!
//! A request is retried only when it is safe to send again (an idempotent method, or a route
//! marked retryable) and its body could be kept for replay (see [`ReplayBody`]); only on the
//! route's conditions (5xx, gateway errors, connect failures, gRPC codes); after an
//! exponential, jittered backoff; and only while the destination's retry budget allows it.
//! The budget lets retries add at most a ratio of original requests (plus a small floor per
//! second), so a failing service sees bounded extra load instead of an amplified outage.

use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use mesh_core::{RetryOn, RetryPolicy};
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;
use tower::ServiceExt;

use crate::body::{ProxyBody, ReplayBody};
use crate::budget::RetryBudget;
use crate::destination::Profile;
use crate::error::ProxyError;
use crate::forward::ResponseFuture;
use crate::metrics::{Metrics, RouteLabels};

/// The policy of requests whose route sets none: no retries here. (Requests that could not
/// be sent because no connection could be made are still tried on other endpoints, by
/// [`crate::forward::Forward`], which needs no copy of the request for that.)
pub static NO_RETRIES: LazyLock<RetryPolicy> = LazyLock::new(|| RetryPolicy {
    max_retries: 0,
    on: vec![RetryOn::ConnectFailure],
    ..RetryPolicy::default()
});

/// Whether a request may be retried at all, before looking at its body.
pub fn is_safe(method: &Method, route_retryable: bool) -> bool {
    route_retryable
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// Which retry policy applies, without copying it per request.
#[derive(Clone)]
pub enum PolicyRef {
    /// [`NO_RETRIES`].
    Default,
    /// The policy of route `.1` of the profile.
    Route(Arc<Profile>, usize),
}

impl PolicyRef {
    pub fn get(&self) -> &RetryPolicy {
        match self {
            PolicyRef::Route(p, i) => p
                .profile
                .routes
                .get(*i)
                .and_then(|r| r.retry.as_ref())
                .unwrap_or(&NO_RETRIES),
            PolicyRef::Default => &NO_RETRIES,
        }
    }
}

/// Per-request retry settings, built by the router.
#[derive(Clone)]
pub struct RetryLayer {
    pub policy: PolicyRef,
    /// Whether this request may be sent twice at all ([`is_safe`]).
    pub safe: bool,
    pub budget: Arc<RetryBudget>,
    pub metrics: Arc<Metrics>,
    pub labels: RouteLabels,
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            cfg: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    cfg: RetryLayer,
}

/// What is kept of a request to build the next attempt.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: TemplateBody,
}

enum TemplateBody {
    Full(Option<Bytes>),
    Replay(ReplayBody),
}

impl Template {
    /// The next attempt, or `None` when the body could not be kept.
    fn next(&self) -> Option<Request<ProxyBody>> {
        let body = match &self.body {
            TemplateBody::Full(b) => ProxyBody::Full(b.clone()),
            TemplateBody::Replay(r) => ProxyBody::Replay(r.replay()?),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Whether this outcome calls for another attempt under `policy`.
fn should_retry(policy: &RetryPolicy, result: &Result<Response<ProxyBody>, ProxyError>) -> bool {
    match result {
        Ok(rsp) => policy.retries_response(rsp.status().as_u16(), grpc_status(rsp.headers())),
        Err(e) if e.is_connect() => {
            policy.retries_connect_failure() || policy.retries_response(502, None)
        }
        Err(ProxyError::Upstream { .. }) => policy.retries_response(502, None),
        Err(_) => false,
    }
}

impl<S> tower::Service<Request<ProxyBody>> for Retry<S>
where
    S: tower::Service<
            Request<ProxyBody>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
            Future = ResponseFuture,
        > + Clone
        + Send
        + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    /// Requests that cannot be retried go straight through, without another boxed future.
    type Future = Either<ResponseFuture, ResponseFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let cfg = self.cfg.clone();
        cfg.budget.deposit();
        // Keep what a second attempt needs, when one is possible at all.
        let template = if cfg.safe && cfg.policy.get().max_retries > 0 {
            let body = match req.body() {
                ProxyBody::Full(b) => Some(TemplateBody::Full(b.clone())),
                ProxyBody::Replay(r) => r.replay().map(TemplateBody::Replay),
                ProxyBody::Incoming(_) | ProxyBody::Grpc(_) => None,
            };
            body.map(|body| Template {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
                body,
            })
        } else {
            None
        };
        let first = self.inner.call(req);
        let Some(template) = template else {
            return Either::Left(first);
        };
        let inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            let mut result = first.await;
            let mut backoff = None;
            let mut retries = 0;
            let policy = cfg.policy.get();
            while retries < policy.max_retries && should_retry(policy, &result) {
                let Some(next) = template.next() else { break };
                if !cfg.budget.withdraw() {
                    cfg.metrics
                        .budget_exhausted
                        .get_or_create(&cfg.labels)
                        .inc();
                    break;
                }
                cfg.metrics.retries.get_or_create(&cfg.labels).inc();
                retries += 1;
                let b = backoff.get_or_insert_with(|| make_backoff(policy));
                if let Some(b) = b.as_mut() {
                    b.next_backoff().await;
                }
                drop(result);
                result = inner.clone().oneshot(next).await;
            }
            result
        }))
    }
}

fn make_backoff(
    policy: &RetryPolicy,
) -> Option<<ExponentialBackoffMaker<HasherRng> as MakeBackoff>::Backoff> {
    ExponentialBackoffMaker::new(
        policy.backoff_base,
        policy.backoff_max,
        1.0,
        HasherRng::default(),
    )
    .ok()
    .map(|mut m| m.make_backoff())
}
