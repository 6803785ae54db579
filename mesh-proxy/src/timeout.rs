//! Request timeout as a tower layer: the whole request, retries included, must produce
//! response headers within the route's timeout, or the client gets a 504 from the proxy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::error::ProxyError;

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer(pub Option<Duration>);

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S, R> tower::Service<R> for Timeout<S>
where
    S: tower::Service<R, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            // A Sleep registers with the timer only when polled, so an unused one is free.
            sleep: tokio::time::sleep(self.timeout.unwrap_or(Duration::ZERO)),
            timeout: self.timeout,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timeout: Option<Duration>,
    }
}

impl<F, T> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.timeout {
            Some(d) => this.sleep.poll(cx).map(|_| Err(ProxyError::Timeout(*d))),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn slow_inner_times_out() {
        let slow = tower::service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, ProxyError>(())
        });
        let svc = TimeoutLayer(Some(Duration::from_millis(50))).layer(slow);
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(matches!(err, ProxyError::Timeout(d) if d == Duration::from_millis(50)));
        let fast = tower::service_fn(|_: ()| async { Ok::<_, ProxyError>(7) });
        let svc = TimeoutLayer(None).layer(fast);
        assert_eq!(svc.oneshot(()).await.unwrap(), 7);
    }
}
