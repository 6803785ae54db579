//! Following one named Kubernetes object (the identity Secret, the webhook's
//! serving-certificate Secret, the injection ConfigMap): a kube-runtime watcher on its name,
//! reduced to what the callers act on: here it is, it does not exist, or the watch failed
//! (and is retried with backoff). [`error_chain`] renders a failure with its causes (the
//! TLS or connection reason under kube's "client error").

use std::fmt::Debug;

use futures_util::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::de::DeserializeOwned;

/// What happened to the watched object.
pub enum Named<K> {
    /// Its current content (at start, after a re-list, and on every change).
    Present(K),
    /// It does not exist: after the first list (`deleted: false`) or a deletion.
    Missing { deleted: bool },
    /// Listing or watching failed; the watcher retries with backoff.
    Failed(watcher::Error),
}

/// Watches the object `name` of `api` for ever, calling `on` for each [`Named`] event.
pub async fn watch_named<K>(api: Api<K>, name: &str, mut on: impl FnMut(Named<K>))
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Init) => seen = false,
            Ok(Event::InitApply(o)) | Ok(Event::Apply(o)) => {
                seen = true;
                on(Named::Present(o));
            }
            Ok(Event::InitDone) if !seen => on(Named::Missing { deleted: false }),
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => on(Named::Missing { deleted: true }),
            Err(e) => on(Named::Failed(e)),
        }
    }
}

/// An error and its sources on one line, skipping a source whose message the text already
/// holds (many errors print their source inside their own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text = format!("{text}: {msg}");
        }
        cur = s.source();
    }
    text
}
