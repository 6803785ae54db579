//! The connection `meshctl check` uses: a kube-rs client from the kubeconfig (as `kubectl`
//! finds it: `--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster; `--context`), with
//! short timeouts, and small helpers that turn every request into `Result<_, String>` with a
//! message fit for a check line.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use crate::cluster::ConfigError;

/// The longest any one request may take; a check never waits longer on the network.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client and where it points.
pub struct Cluster {
    pub client: kube::Client,
    pub url: String,
}

/// Builds the client; the error says what is wrong with the kubeconfig.
pub async fn connect(
    kubeconfig: Option<&PathBuf>,
    context: Option<&str>,
) -> Result<Cluster, String> {
    let kubeconfig = kubeconfig.map(PathBuf::as_path);
    let mut config = crate::cluster::load_config(kubeconfig, context)
        .await
        .map_err(|e| match e {
            ConfigError::File { path, error } => {
                format!("{path} is not a usable kubeconfig: {}", describe(&*error))
            }
            ConfigError::Context(error) => {
                format!("cannot use the kubeconfig: {}", describe(&*error))
            }
            ConfigError::Nothing(error) => {
                format!("no cluster to talk to: {}", describe(&*error))
            }
        })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // kube retries 429/503/504 with backoff by default; a check reports what it got at once
    // (an unreachable proxy answers 503 through the pod proxy), and --wait retries the run.
    config.default_retry = false;
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("cannot make a client for {url}: {}", describe(&e)))?;
    Ok(Cluster { client, url })
}

/// An error and its causes, `outer: inner: innermost`, without repeats.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A kube error as a check message: the API's own message for API errors.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!("{} ", status.reason)
            };
            format!("{reason}({}): {}", status.code, status.message)
        }
        // `ServiceError: client error (Connect)` says less than its causes
        // (`tcp connect error: Connection refused (os error 111)`).
        kube::Error::Service(e) => match e.source() {
            Some(cause) => describe(cause),
            None => e.to_string(),
        },
        other => describe(other),
    }
}

/// Whether `e` is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs a request with [`REQUEST_TIMEOUT`].
pub async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("{what}: no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// The object `name`, `None` when it does not exist; other errors as text.
pub async fn get_opt<K>(api: &Api<K>, what: &str, name: &str) -> Result<Option<K>, String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match timed(what, api.get(name)).await {
        Ok(obj) => Ok(Some(obj)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(format!("cannot read {what}: {}", api_error(&e))),
    }
}

/// Every object of `api` matching `params` (all pages).
pub async fn list<K>(api: &Api<K>, what: &str, params: &ListParams) -> Result<Vec<K>, String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.clone().limit(500);
    let mut items = Vec::new();
    loop {
        let page = timed(what, api.list(&params))
            .await
            .map_err(|e| format!("cannot list {what}: {}", api_error(&e)))?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}
