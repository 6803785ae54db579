//! The proxy's workload identity: a private key made in memory at start (never written
//! anywhere), a certificate from the controller's `Identity.Certify` in exchange for a CSR
//! and the proof of identity read from a file (a projected service-account token on
//! Kubernetes, a join token in local mode), renewed at 70% of its lifetime, and the trust
//! bundle from `Identity.Watch`.
//!
//! Renewal replaces the certificate used by the next handshakes; open connections keep
//! theirs. A failed renewal is retried with jittered exponential backoff (100 ms to 10 s)
//! while the current certificate stays in use, until it expires. The watch stream tells the
//! proxy when the controller signs with another issuer (trust-anchor rotation): the proxy
//! then renews at once, after a random delay of at most the jitter the controller names.
//! On the same stream the proxy reports the bundle it holds and the issuer of its leaf.
//! The admin endpoint `GET /identity` shows the certificate in use ([`status`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::identity::ProxyIdentityStatus;
use mesh_core::Identity;
use mesh_identity::leaf::LeafKey;
use mesh_identity::tls::Credentials;
use mesh_proto::v1 as pb;
use mesh_proto::v1::identity_client::IdentityClient;
use rand::Rng;
use rustls_pki_types::CertificateDer;
use tokio::sync::{watch, Notify};
use tonic::transport::Channel;

use crate::metrics::Metrics;

/// What the proxy needs to obtain its certificate.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    pub identity: Identity,
    /// File holding the proof of identity (re-read before every request).
    pub token_file: PathBuf,
    /// `MESH_PROXY_WORKLOAD`, sent along (local mode names the join token's workload).
    pub workload: String,
}

/// The running identity: credentials the TLS code reads, and what /ready asks.
#[derive(Clone)]
pub struct ProxyIdentity {
    pub creds: Credentials,
}

impl ProxyIdentity {
    /// Whether the trust bundle and the first certificate arrived.
    pub fn ready(&self) -> bool {
        self.creds.is_ready()
    }
}

/// Generates the key and starts the certificate and bundle tasks.
pub fn start(
    channel: Channel,
    settings: IdentitySettings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ProxyIdentity> {
    let key = LeafKey::generate()
        .map_err(|e| anyhow::anyhow!("cannot generate the proxy's private key: {e}"))?;
    let creds = Credentials::new(settings.identity.clone());
    let renew_now = Arc::new(Notify::new());
    let (report_tx, report_rx) = watch::channel(pb::IdentityReport {
        identity: settings.identity.to_string(),
        workload: settings.workload.clone(),
        ..Default::default()
    });
    tokio::spawn(certify_loop(
        IdentityClient::new(channel.clone()),
        settings.clone(),
        key,
        creds.clone(),
        renew_now.clone(),
        report_tx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch_loop(
        IdentityClient::new(channel),
        creds.clone(),
        renew_now,
        report_tx,
        report_rx,
        metrics,
    ));
    Ok(ProxyIdentity { creds })
}

/// Certify, then sleep until 70% of the lifetime (or an early-renewal signal), forever.
async fn certify_loop(
    mut client: IdentityClient<Channel>,
    settings: IdentitySettings,
    key: LeafKey,
    creds: Credentials,
    renew_now: Arc<Notify>,
    reports: watch::Sender<pb::IdentityReport>,
    metrics: Arc<Metrics>,
) {
    let csr = match key.csr_der(&settings.identity) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make a certificate signing request; mTLS is off");
            return;
        }
    };
    let mut failures: u32 = 0;
    loop {
        let wait = match certify_once(&mut client, &settings, &key, &csr, &creds).await {
            Ok((not_after, issuer)) => {
                failures = 0;
                metrics.identity_renewals.get_or_create(&ok_label()).inc();
                metrics.identity_expiry.set(unix(not_after));
                reports.send_modify(|r| r.leaf_issuer_sha256 = issuer.to_vec());
                let lifetime = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(
                    identity = %settings.identity,
                    valid_for = %humantime::format_duration(Duration::from_secs(lifetime.as_secs())),
                    "certificate obtained"
                );
                lifetime.mul_f64(0.7)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics
                    .identity_renewals
                    .get_or_create(&failed_label())
                    .inc();
                let delay = backoff(failures);
                // A controller that is starting answers UNAVAILABLE for a moment: only
                // failures that persist are warnings.
                if failures == 3 || failures.is_multiple_of(10) {
                    tracing::warn!(identity = %settings.identity, error = %e, retry_in = ?delay, "cannot obtain a certificate");
                } else {
                    tracing::debug!(identity = %settings.identity, error = %e, retry_in = ?delay, "cannot obtain a certificate");
                }
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = renew_now.notified() => {}
        }
    }
}

fn ok_label() -> crate::metrics::ResultLabels {
    crate::metrics::ResultLabels { result: "ok" }
}

fn failed_label() -> crate::metrics::ResultLabels {
    crate::metrics::ResultLabels { result: "failed" }
}

/// 100 ms doubling to 10 s, with up to 50% random jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(7))
        .min(Duration::from_secs(10));
    let jitter = rand::rng().random_range(0.0..0.5);
    base.mul_f64(1.0 + jitter)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn certify_once(
    client: &mut IdentityClient<Channel>,
    settings: &IdentitySettings,
    key: &LeafKey,
    csr: &[u8],
    creds: &Credentials,
) -> anyhow::Result<(SystemTime, [u8; 32])> {
    let token = tokio::fs::read_to_string(&settings.token_file)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the identity token {} (MESH_PROXY_IDENTITY_TOKEN_FILE): {e}",
                settings.token_file.display()
            )
        })?;
    let req = pb::CertifyRequest {
        identity: settings.identity.to_string(),
        token: token.trim().to_string(),
        csr_der: csr.to_vec(),
        workload: settings.workload.clone(),
    };
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(10));
    let rsp = client
        .certify(req)
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let chain: Vec<CertificateDer<'static>> = rsp
        .intermediates_der
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let issuer = mesh_identity::leaf::issuer_sha256(&chain)
        .ok_or_else(|| anyhow::anyhow!("the controller sent a certificate without its issuer"))?;
    let leaf = CertificateDer::from(rsp.leaf_der.clone());
    let not_after = mesh_identity::leaf::not_after(&leaf)
        .map_err(|e| anyhow::anyhow!("the controller sent an unreadable certificate: {e}"))?;
    let certified = key
        .certified(rsp.leaf_der, rsp.intermediates_der, &settings.identity)
        .map_err(|e| anyhow::anyhow!("the controller sent an unusable certificate: {e}"))?;
    creds.set_certified(certified);
    Ok((not_after, issuer))
}

/// Keeps the bundle current, renews early when the issuer changes, and reports.
async fn watch_loop(
    mut client: IdentityClient<Channel>,
    creds: Credentials,
    renew_now: Arc<Notify>,
    reports: watch::Sender<pb::IdentityReport>,
    report_rx: watch::Receiver<pb::IdentityReport>,
    metrics: Arc<Metrics>,
) {
    let mut failures: u32 = 0;
    loop {
        let outgoing = tokio_stream::wrappers::WatchStream::new(report_rx.clone());
        match client.watch(outgoing).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            failures = 0;
                            apply(&update, &creds, &renew_now, &reports, &metrics);
                        }
                        Ok(None) => break,
                        Err(s) => {
                            tracing::debug!("identity watch ended: {}", s.message());
                            break;
                        }
                    }
                }
            }
            Err(s) => tracing::debug!("identity watch unavailable: {}", s.message()),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

fn apply(
    update: &pb::IdentityUpdate,
    creds: &Credentials,
    renew_now: &Arc<Notify>,
    reports: &watch::Sender<pb::IdentityReport>,
    metrics: &Metrics,
) {
    if let Some(bundle) = &update.bundle {
        if bundle.version != creds.bundle_version() {
            let anchors = bundle
                .anchors_der
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            match creds.set_bundle(bundle.version, anchors) {
                Ok(()) => {
                    tracing::info!(
                        version = bundle.version,
                        anchors = bundle.anchors_der.len(),
                        "trust bundle updated"
                    );
                    metrics.identity_bundle_updates.inc();
                    reports.send_modify(|r| r.bundle_version = bundle.version);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rejected a trust bundle from the controller; keeping the current one")
                }
            }
        }
    }
    let ours = reports.borrow().leaf_issuer_sha256.clone();
    if !update.issuer_sha256.is_empty() && !ours.is_empty() && ours != update.issuer_sha256 {
        let jitter = u64::from(update.renew_jitter_ms);
        let delay = if jitter == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::rng().random_range(0..=jitter))
        };
        tracing::info!(after = ?delay, "the controller signs with a new issuer; renewing the certificate");
        let renew = renew_now.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            renew.notify_one();
        });
    }
}

/// What the admin endpoint `GET /identity` shows: the certificate in use now. `Err` says
/// why there is none (the text of the 404).
pub fn status(creds: &Credentials) -> Result<ProxyIdentityStatus, String> {
    let Some(certified) = creds.certified() else {
        return Err(format!(
            "no identity: the controller has not issued a certificate for {} yet (see the proxy's log and mesh_proxy_identity_certificate_requests_total)",
            creds.identity()
        ));
    };
    let Some(leaf) = certified.cert.first() else {
        return Err("no identity: the certificate in use has an empty chain".into());
    };
    let not_after = mesh_identity::leaf::not_after(leaf)
        .map_err(|e| format!("no identity: the certificate in use cannot be read: {e}"))?;
    let identity =
        mesh_identity::leaf::identity_of(leaf).unwrap_or_else(|| creds.identity().clone());
    Ok(ProxyIdentityStatus {
        identity: identity.to_string(),
        not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        certificate_chain_pem: certified
            .cert
            .iter()
            .map(mesh_identity::ca::cert_to_pem)
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(1) >= Duration::from_millis(100));
        assert!(backoff(1) <= Duration::from_millis(150));
        assert!(backoff(4) >= Duration::from_millis(800));
        assert!(backoff(100) <= Duration::from_secs(15));
    }
}
