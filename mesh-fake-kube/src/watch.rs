//! Watches: which events a watch sends (namespace and selector filtering, including the
//! ADDED and DELETED a label change implies), and the task that streams them as
//! newline-delimited JSON, with bookmarks, `initial-events-end`, timeouts and 410 errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;

use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{output, Shared};
use crate::store::{meta_str, present, Change, ChangeKind, WatchStart};

/// Which objects a list, watch or delete-collection sees.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    /// Only objects in this namespace (from the URL).
    pub(crate) namespace: Option<String>,
    /// Only the object with this name (from a legacy `/watch/.../{name}` URL).
    pub(crate) name: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Filter {
    /// Whether the object is selected.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if meta_str(object, "namespace").as_deref() != Some(ns.as_str()) {
                return false;
            }
        }
        if let Some(name) = &self.name {
            if meta_str(object, "name").as_deref() != Some(name.as_str()) {
                return false;
            }
        }
        self.labels.matches_object(object) && self.fields.matches(object)
    }

    /// The event type this watch reports for a change, if any: an object that starts
    /// matching is ADDED, one that stops matching is DELETED, as on a real server.
    pub(crate) fn event_type(&self, change: &Change) -> Option<&'static str> {
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        match change.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => (now || before).then_some("DELETED"),
            ChangeKind::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

/// The response body of a watch: frames produced by a [`Watch`] task.
pub(crate) type WatchBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// One open watch request.
pub(crate) struct Watch {
    pub(crate) shared: Arc<Shared>,
    /// The kind at the version the client asked for.
    pub(crate) rt: ResourceType,
    pub(crate) filter: Filter,
    /// Send `PartialObjectMetadata` instead of whole objects.
    pub(crate) metadata_only: bool,
    /// `allowWatchBookmarks=true`.
    pub(crate) bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial events with an `initial-events-end` bookmark.
    pub(crate) initial_events_end: bool,
    /// `timeoutSeconds`.
    pub(crate) timeout: Duration,
    pub(crate) start: WatchStart,
}

impl Watch {
    /// Starts streaming on the current runtime; returns the response body.
    pub(crate) fn spawn(self, shutdown: watch::Receiver<bool>) -> WatchBody {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.run(tx, shutdown));
        StreamBody::new(ReceiverStream::new(rx))
    }

    async fn run(
        self,
        tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Watch {
            shared,
            rt,
            filter,
            metadata_only,
            bookmarks,
            initial_events_end,
            timeout,
            start,
        } = self;
        let mut live = start.live;
        let send = |line: Value| {
            let tx = tx.clone();
            async move {
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_ok()
            }
        };
        let event = |change: &Change| {
            filter.event_type(change).map(|ty| {
                json!({"type": ty, "object": output(present(&rt, &change.object), metadata_only)})
            })
        };
        let bookmark = |rv: u64, end: bool| {
            let mut obj = output(
                json!({
                    "apiVersion": rt.api_version(),
                    "kind": rt.kind,
                    "metadata": {"resourceVersion": rv.to_string()},
                }),
                metadata_only,
            );
            if end {
                obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": obj})
        };

        match start.initial {
            Err(e) => {
                // A real server answers 200 and then sends the 410 as an ERROR event.
                send(json!({"type": "ERROR", "object": e.to_status()})).await;
                return;
            }
            Ok(initial) => {
                for change in &initial {
                    if let Some(line) = event(change) {
                        if !send(line).await {
                            return;
                        }
                    }
                }
            }
        }
        if (initial_events_end || bookmarks) && !send(bookmark(start.rv, initial_events_end)).await
        {
            return;
        }

        let deadline = Instant::now() + timeout;
        let period = shared.bookmark_interval;
        let mut ticker = interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = sleep_until(deadline) => return,
                () = tx.closed() => return,
                change = live.recv() => {
                    // `None`: the store dropped this watch (`drop_watches`).
                    let Some(change) = change else { return };
                    if let Some(line) = event(&change) {
                        if !send(line).await {
                            return;
                        }
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    // Under the store lock every change up to the current resourceVersion is
                    // already queued for this watch: send those, then a bookmark at it.
                    let (rv, pending) = {
                        let store = shared.lock();
                        let rv = store.resource_version();
                        let mut pending = Vec::new();
                        while let Ok(c) = live.try_recv() {
                            pending.push(c);
                        }
                        (rv, pending)
                    };
                    for change in &pending {
                        if let Some(line) = event(change) {
                            if !send(line).await {
                                return;
                            }
                        }
                    }
                    if !send(bookmark(rv, false)).await {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResKey;

    fn change(kind: ChangeKind, object: Value, previous: Option<Value>) -> Change {
        Change {
            rv: 1,
            key: ResKey {
                group: String::new(),
                plural: "pods".into(),
            },
            kind,
            object,
            previous,
        }
    }

    fn pod(ns: &str, app: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": ns, "labels": {"app": app}}})
    }

    #[test]
    fn selector_transitions() {
        let f = Filter {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Filter::default()
        };
        let web = pod("a", "web");
        let db = pod("a", "db");
        assert_eq!(
            f.event_type(&change(ChangeKind::Added, web.clone(), None)),
            Some("ADDED")
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Added, db.clone(), None)),
            None
        );
        assert_eq!(
            f.event_type(&change(
                ChangeKind::Modified,
                web.clone(),
                Some(web.clone())
            )),
            Some("MODIFIED")
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Modified, web.clone(), Some(db.clone()))),
            Some("ADDED")
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Modified, db.clone(), Some(web.clone()))),
            Some("DELETED")
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Modified, db.clone(), Some(db.clone()))),
            None
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Deleted, web.clone(), Some(web.clone()))),
            Some("DELETED")
        );
        assert_eq!(
            f.event_type(&change(ChangeKind::Deleted, db.clone(), Some(db))),
            None
        );
    }

    #[test]
    fn namespace_filter() {
        let f = Filter {
            namespace: Some("a".into()),
            ..Filter::default()
        };
        assert!(f.matches(&pod("a", "web")));
        assert!(!f.matches(&pod("b", "web")));
    }
}
