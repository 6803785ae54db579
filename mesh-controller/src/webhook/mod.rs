//! The mutating admission webhook: an HTTPS listener that answers the API server's
//! AdmissionReviews for pod creations with the JSON patch that adds the mesh proxy, computed
//! by the same library as `meshctl inject --manual`, with the injection defaults of the
//! flags or of the watched ConfigMap. User documentation: `docs/controller.md` (Admission
//! webhook) and `docs/inject.md`.

pub mod args;
pub mod cert;
pub mod config;
pub mod review;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::args::RunArgs;
use crate::index::Index;
use crate::metrics::Metrics;

pub use args::WebhookArgs;
use cert::{CertSource, CertStore};
use config::InjectDefaults;
use review::Webhook;

/// Open connections at most: the API server keeps a few; each may buffer one body of up to
/// [`review::MAX_BODY`].
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A started webhook.
pub struct Started {
    /// The bound HTTPS address.
    pub addr: SocketAddr,
    /// Its serving certificate, for `/status`.
    pub status: WebhookStatus,
    pub tasks: Vec<JoinHandle<()>>,
}

/// What `/status` reports about the webhook.
#[derive(Clone)]
pub struct WebhookStatus {
    addr: SocketAddr,
    source: String,
    store: Arc<CertStore>,
    defaults: Arc<InjectDefaults>,
}

impl WebhookStatus {
    /// `{"addr", "certificateSource", "serving", "problem", "injection"}`: `serving` is
    /// false until a valid certificate was read; `problem` says why the source's latest
    /// content is not in use (missing, unreadable, key not matching); `injection` is
    /// [`InjectDefaults::status_json`] (which settings the next pods get, and why).
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "addr": self.addr.to_string(),
            "certificateSource": self.source,
            "serving": self.store.is_ready(),
            "problem": self.store.problem(),
            "injection": self.defaults.status_json(),
        })
    }
}

/// Binds the webhook's listener and starts it and its certificate source. `Ok(None)` when
/// it is off (`--webhook-addr off`, or local mode without certificate files).
pub async fn start(
    args: &RunArgs,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    client: Option<kube::Client>,
) -> anyhow::Result<Option<Started>> {
    let w = &args.webhook;
    let Some(addr) = w.webhook_addr.0 else {
        return Ok(None);
    };
    let flags = w.inject.settings(&args.trust_domain);
    if let Err(e) = flags.validate() {
        let each: Vec<String> =
            e.0.iter()
                .map(|e| {
                    format!(
                        "--inject-{} (MESH_CONTROLLER_INJECT_{}): '{}' is not valid; {}",
                        e.key,
                        e.key.to_ascii_uppercase().replace('-', "_"),
                        e.value,
                        e.hint
                    )
                })
                .collect();
        anyhow::bail!("{}", each.join("; "));
    }
    let config_maps = match (&w.inject.inject_config, &client) {
        (None, _) => None,
        (Some(cm), Some(client)) => Some(kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            client.clone(),
            &cm.namespace,
        )),
        (Some(cm), None) => anyhow::bail!(
            "--inject-config {cm} names a Kubernetes ConfigMap, and local mode has no Kubernetes API; unset it (MESH_CONTROLLER_INJECT_CONFIG) and use the --inject-* flags"
        ),
    };
    let source = match (&w.webhook_cert_file, &w.webhook_key_file, client) {
        (Some(cert), Some(key), _) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (_, _, Some(client)) => CertSource::Secret {
            api: kube::Api::namespaced(client, &w.webhook_secret.namespace),
            name: w.webhook_secret.clone(),
        },
        _ => {
            tracing::info!("admission webhook off: local mode has no Secret; give --webhook-cert-file and --webhook-key-file to serve it");
            return Ok(None);
        }
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on --webhook-addr {addr}: {e}; choose another address or set --webhook-addr off")
    })?;
    let bound = listener.local_addr()?;
    let store = Arc::new(CertStore::default());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(store.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let defaults = Arc::new(InjectDefaults::new(flags, w.inject.inject_config.clone()));
    let hook = Arc::new(Webhook {
        index,
        defaults: defaults.clone(),
        metrics,
    });
    let status = WebhookStatus {
        addr: bound,
        source: source.describe(),
        store: store.clone(),
        defaults: defaults.clone(),
    };
    let injection = w
        .inject
        .inject_config
        .as_ref()
        .map_or_else(|| "flags".to_string(), |c| format!("ConfigMap {c}"));
    tracing::info!(addr = %bound, certificate = %status.source, injection_defaults = %injection, "admission webhook listening");
    let mut tasks = vec![
        tokio::spawn(source.watch(store)),
        tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(cfg)), hook)),
    ];
    if let Some(api) = config_maps {
        tasks.push(tokio::spawn(defaults.watch(api)));
    }
    Ok(Some(Started {
        addr: bound,
        status,
        tasks,
    }))
}

async fn serve(listener: TcpListener, tls: TlsAcceptor, hook: Arc<Webhook>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut saturated = false;
    loop {
        let Ok((io, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Once per episode of saturation, not per refused connection.
            if !saturated {
                tracing::warn!(%peer, "webhook connections refused: {MAX_CONNECTIONS} connections are open");
                saturated = true;
            }
            continue;
        };
        saturated = false;
        let tls = tls.clone();
        let hook = hook.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                hook.clone().serve(req)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
