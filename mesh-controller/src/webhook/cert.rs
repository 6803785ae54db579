//! The webhook's serving certificate: read from a Kubernetes Secret or a pair of PEM files,
//! checked, and swapped in for the next TLS handshakes when it changes. A bad or missing
//! certificate keeps the last good one (or, before the first, fails handshakes) and is
//! logged with what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::args::SecretRef;
use crate::named::{error_chain, watch_named, Named};

/// How often certificate files are re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The current serving certificate, shared with the TLS acceptor.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
    /// The PEM pair in force, to notice changes.
    pem: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    /// Why the source's latest content is not in use.
    problem: std::sync::Mutex<Option<String>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl CertStore {
    /// Whether a certificate is being served.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Why the source's latest content is not in use, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the current problem; `true` when it differs from the last one.
    fn set_problem(&self, problem: Option<String>) -> bool {
        let mut cur = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *cur != problem;
        *cur = problem;
        changed
    }

    /// Installs a PEM pair; `Ok(true)` when it replaced a different one.
    pub fn install(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<bool, String> {
        {
            let cur = self.pem.lock().unwrap_or_else(|e| e.into_inner());
            if cur
                .as_ref()
                .is_some_and(|(c, k)| c == cert_pem && k == key_pem)
            {
                return Ok(false);
            }
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate is not PEM ({e})"))?;
        if certs.is_empty() {
            return Err("the certificate PEM holds no CERTIFICATE block".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("the key is not a PEM private key ({e})"))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(certs, key, &provider)
            .map_err(|e| format!("the key does not fit the certificate ({e})"))?;
        self.current.store(Some(Arc::new(certified)));
        *self.pem.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((cert_pem.to_vec(), key_pem.to_vec()));
        Ok(true)
    }
}

/// Where the certificate comes from.
pub enum CertSource {
    /// PEM files, polled every [`RELOAD_INTERVAL`] (a mounted Secret or ConfigMap changes
    /// by a symlink swap, which a poll always sees).
    Files { cert: PathBuf, key: PathBuf },
    /// A kubernetes.io/tls Secret, watched by name.
    Secret { api: Api<Secret>, name: SecretRef },
}

impl CertSource {
    /// What the logs and `/status` call it.
    pub fn describe(&self) -> String {
        match self {
            CertSource::Files { cert, key } => {
                format!("files {} and {}", cert.display(), key.display())
            }
            CertSource::Secret { name, .. } => format!("Secret {name}"),
        }
    }

    /// Follows the source for ever, installing each new certificate into `store`.
    pub async fn watch(self, store: Arc<CertStore>) {
        let what = self.describe();
        match self {
            CertSource::Files { cert, key } => watch_files(&cert, &key, &what, &store).await,
            CertSource::Secret { api, name } => watch_secret(&api, &name, &what, &store).await,
        }
    }
}

/// Installs a PEM pair and logs what happened (each problem once until it changes).
fn apply(store: &CertStore, what: &str, result: Result<(Vec<u8>, Vec<u8>), String>) {
    let result = result.and_then(|(c, k)| store.install(&c, &k));
    match result {
        Ok(true) => {
            tracing::info!(source = %what, "webhook serving certificate loaded");
            store.set_problem(None);
        }
        Ok(false) => {
            store.set_problem(None);
        }
        Err(e) => {
            if store.set_problem(Some(e.clone())) {
                if store.is_ready() {
                    tracing::warn!(source = %what, "webhook certificate not reloaded, the previous one stays in use: {e}");
                } else {
                    tracing::warn!(source = %what, "the webhook refuses TLS handshakes until it has a certificate: {e}");
                }
            }
        }
    }
}

async fn watch_files(cert: &Path, key: &Path, what: &str, store: &CertStore) {
    loop {
        let read = async {
            let c = tokio::fs::read(cert).await.map_err(|e| {
                format!(
                    "cannot read --webhook-cert-file {}: {e}; write the serving certificate chain (PEM) there",
                    cert.display()
                )
            })?;
            let k = tokio::fs::read(key).await.map_err(|e| {
                format!(
                    "cannot read --webhook-key-file {}: {e}; write the serving key (PEM) there",
                    key.display()
                )
            })?;
            Ok((c, k))
        };
        apply(store, what, read.await);
        tokio::time::sleep(RELOAD_INTERVAL).await;
    }
}

/// The certificate and key of a kubernetes.io/tls Secret.
fn secret_pems(secret: &Secret, name: &SecretRef) -> Result<(Vec<u8>, Vec<u8>), String> {
    let empty = Default::default();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let field = |k: &str| {
        data.get(k).map(|b| b.0.clone()).ok_or_else(|| {
            format!("Secret {name} has no key {k}; a kubernetes.io/tls Secret holds tls.crt and tls.key")
        })
    };
    Ok((field("tls.crt")?, field("tls.key")?))
}

async fn watch_secret(api: &Api<Secret>, name: &SecretRef, what: &str, store: &CertStore) {
    let missing = format!(
        "Secret {name} does not exist; create a kubernetes.io/tls Secret with tls.crt and tls.key, for the DNS name of the controller's Service (e.g. mesh-controller.{}.svc), or set --webhook-addr off (see docs/controller.md, Admission webhook)",
        name.namespace
    );
    watch_named(api.clone(), &name.name, |ev| match ev {
        Named::Present(s) => apply(store, what, secret_pems(&s, name)),
        Named::Missing { deleted: false } => apply(store, what, Err(missing.clone())),
        Named::Missing { deleted: true } => {
            apply(store, what, Err(format!("{missing} (it was deleted)")))
        }
        Named::Failed(e) => {
            tracing::warn!(source = %what, "watching the webhook's Secret: {}", error_chain(&e))
        }
    })
    .await;
}
