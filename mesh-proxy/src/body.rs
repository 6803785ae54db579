//! The one body type that flows through the proxy: the peer's streaming body, a replayable
//! body for retries, or a small body the proxy made itself. An enum (not a boxed trait
//! object) so that wrapping a request costs no allocation.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::forward::EndpointReport;
use crate::metrics::{Class, Metrics, RequestLabels};

/// Error of a proxied body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Incoming(Incoming),
    Replay(ReplayBody),
    Full(Option<Bytes>),
    /// A gRPC response whose status comes in trailers: counted when the stream ends.
    Grpc(Box<GrpcBody>),
}

/// A gRPC response body whose `grpc-status` comes in its trailers. When the status arrives
/// the request is recorded in the metrics (a stream that ends or is dropped without one
/// counts as a failure) and, with circuit breaking on, reported to its endpoint's breaker
/// (a stream that fails counts as a failure there; one the client drops counts as nothing).
pub struct GrpcBody {
    inner: Incoming,
    metrics: Option<(Arc<Metrics>, RequestLabels)>,
    report: Option<EndpointReport>,
}

/// How a gRPC response stream ended.
enum End<'a> {
    Trailers(&'a HeaderMap),
    /// Without trailers, or with an error.
    Broken,
    Dropped,
}

impl GrpcBody {
    pub fn new(inner: Incoming, metrics: Arc<Metrics>, labels: RequestLabels) -> Self {
        Self {
            inner,
            metrics: Some((metrics, labels)),
            report: None,
        }
    }

    /// A body whose status is reported to the circuit breaker of the endpoint it came from.
    pub fn for_endpoint(inner: Incoming, report: EndpointReport) -> Self {
        Self {
            inner,
            metrics: None,
            report: Some(report),
        }
    }

    /// Also records the request in the metrics when the status arrives.
    pub fn count_in(&mut self, metrics: Arc<Metrics>, labels: RequestLabels) {
        self.metrics = Some((metrics, labels));
    }

    fn finish(&mut self, end: End<'_>) {
        let status = match end {
            End::Trailers(t) => t.get("grpc-status"),
            End::Broken | End::Dropped => None,
        };
        if let Some((metrics, mut labels)) = self.metrics.take() {
            let ok = status.is_some_and(|v| v.as_bytes() == b"0");
            labels.classification = if ok { Class::Success } else { Class::Failure };
            metrics.requests.get_or_create(&labels).inc();
        }
        if let Some(report) = self.report.take() {
            match (status, end) {
                (Some(s), _) => report.grpc_status(s.as_bytes()),
                (None, End::Broken) => report.failure(),
                (None, _) => {}
            }
        }
    }
}

impl Drop for GrpcBody {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn text(s: impl Into<Bytes>) -> Self {
        let b: Bytes = s.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }
}

impl From<Incoming> for ProxyBody {
    fn from(b: Incoming) -> Self {
        ProxyBody::Incoming(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Replay(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Grpc(g) => {
                let polled = Pin::new(&mut g.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(t) = frame.trailers_ref() {
                            g.finish(End::Trailers(t));
                        }
                    }
                    Poll::Ready(_) => g.finish(End::Broken),
                    Poll::Pending => {}
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Replay(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Grpc(g) => g.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Replay(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Grpc(g) => g.inner.size_hint(),
        }
    }
}

/// A request body that can be read more than once, for retries.
///
/// All readers share one source body and one buffer of the frames read so far: a reader
/// first replays buffered frames, then pulls from the source (appending what it reads). Once
/// more than `limit` bytes have gone through, buffering stops and [`ReplayBody::can_replay`]
/// turns false, so a large upload is streamed once and never retried.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// How many data frames of the sequence this reader has returned.
    next: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

struct Shared {
    source: Option<Incoming>,
    /// Every data frame read from the source, while they fit in `limit`.
    frames: Vec<Bytes>,
    /// Data frames read from the source so far (also after overflow).
    total: usize,
    buffered_bytes: usize,
    trailers: Option<HeaderMap>,
    source_done: bool,
    overflowed: bool,
    limit: usize,
}

impl ReplayBody {
    pub fn new(source: Incoming, limit: usize) -> Self {
        let size_hint = source.size_hint();
        let done = source.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: (!done).then_some(source),
                frames: Vec::new(),
                total: 0,
                buffered_bytes: 0,
                trailers: None,
                source_done: done,
                overflowed: false,
                limit,
            })),
            next: 0,
            trailers_sent: false,
            size_hint,
        }
    }

    /// A new reader of the same body, for another attempt; `None` when the body was too
    /// large to keep.
    pub fn replay(&self) -> Option<Self> {
        self.can_replay().then(|| Self {
            shared: self.shared.clone(),
            next: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }

    pub fn can_replay(&self) -> bool {
        self.shared.lock().map(|s| !s.overflowed).unwrap_or(false)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        // The lock is held only for this poll, never across an await.
        let Ok(mut guard) = this.shared.lock() else {
            return Poll::Ready(Some(Err("replay body state poisoned".into())));
        };
        let s = &mut *guard;
        if this.next < s.total {
            if s.overflowed {
                return Poll::Ready(Some(Err("request body too large to replay".into())));
            }
            let frame = s.frames[this.next].clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if s.source_done {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                s.source_done = true;
                s.source = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let data = data.copy_to_bytes(data.remaining());
                    s.total += 1;
                    this.next = s.total;
                    if !s.overflowed {
                        s.buffered_bytes += data.len();
                        if s.buffered_bytes > s.limit {
                            s.overflowed = true;
                            s.frames = Vec::new();
                        } else {
                            s.frames.push(data.clone());
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    s.source_done = true;
                    s.source = None;
                    this.trailers_sent = true;
                    s.trailers = frame.into_trailers().ok();
                    Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .lock()
            .map(|s| {
                s.source_done
                    && s.total <= self.next
                    && (self.trailers_sent || s.trailers.is_none())
            })
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}
