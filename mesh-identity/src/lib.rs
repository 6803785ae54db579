//! The mesh's certificate authority and workload identity certificates.
//!
//! - [`ca`]: trust anchors (roots), issuers (intermediates) and signing workload leaves from
//!   PKCS#10 CSRs; used by the controller.
//! - [`leaf`]: the proxy's in-memory key, its CSR and the rustls `CertifiedKey` it presents.
//! - [`tls`]: rustls client and server configurations for proxy-to-proxy mutual TLS 1.3 that
//!   check SPIFFE identities against a swappable trust bundle.
//! - [`token`]: local-mode join tokens (random, stored hashed).
//! - [`files`]: the on-disk identity directory of local mode (`identity init`).
//!
//! Certificates are ECDSA P-256, made with `rcgen` and verified with `rustls-webpki`; no
//! OpenSSL. A workload identity is a SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) carried as
//! the only URI SAN of the leaf certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use mesh_core::Identity;
pub use rustls_pki_types::CertificateDer;

pub mod ca;
pub mod files;
pub mod leaf;
pub mod tls;
pub mod token;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// ALPN protocol our proxies offer/accept between themselves.
pub const MESH_ALPN: &[u8] = b"mesh.dev/transport.v1";

/// An error of this crate: the message names what is wrong and, where it helps, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    /// The message, as displayed.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// This error with `context` put in front (`context: message`).
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        Error {
            message: format!("{context}: {}", self.message),
        }
    }
}

/// The SPIFFE ID of a workload: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<Identity, Error> {
    for (what, value) in [
        ("namespace", namespace),
        ("service account", service_account),
    ] {
        if value.is_empty() || value.contains('/') {
            return Err(Error::new(format!(
                "{what} '{value}' cannot be part of a SPIFFE ID: it must be non-empty and \
                 contain no '/'"
            )));
        }
    }
    let s = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
    Identity::parse(&s).map_err(|e| Error::new(format!("invalid SPIFFE ID '{s}': {e}")))
}

/// SHA-256 of `der` (certificate fingerprints, as in `IdentityReport.leaf_issuer_sha256`).
pub fn sha256(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// Lower-case hex of `bytes` (for logs and status pages).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The ring crypto provider every config and signature check of this crate uses.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Seconds since the Unix epoch of an X.509 time, as a `SystemTime`.
pub(crate) fn system_time_from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses one certificate with x509-parser, naming `what` on failure.
pub(crate) fn parse_cert<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, Error> {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(Error::new(format!(
            "{what}: trailing bytes after the DER certificate"
        ))),
        Err(e) => Err(Error::new(format!(
            "{what} is not a valid X.509 certificate: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let id = spiffe_id(DEFAULT_TRUST_DOMAIN, "shop", "web").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert!(spiffe_id("Bad Domain", "shop", "web").is_err());
        assert!(spiffe_id("cluster.local", "", "web").is_err());
        assert!(spiffe_id("cluster.local", "a/b", "web").is_err());
        assert!(spiffe_id("cluster.local", "shop", "w b").is_err());
    }

    #[test]
    fn sha256_and_hex() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn shared_types_are_send_sync_clone() {
        assert_send_sync::<crate::ca::Anchor>();
        assert_send_sync::<crate::ca::Issuer>();
        assert_send_sync::<crate::ca::Leaf>();
        assert_send_sync::<crate::tls::Credentials>();
        assert_send_sync::<crate::Error>();
    }
}
