//! The certificate authority: trust anchors (self-signed roots), issuers (intermediates that
//! the controller signs with) and workload leaves signed from PKCS#10 CSRs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{parse_cert, system_time_from_unix, Error, Identity};

/// Backdating of `not_before`, so that peers whose clock is slightly behind accept the
/// certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A trust anchor (self-signed root). The key is present only when we generated it or
/// it was given (needed to mint issuers).
#[derive(Clone)]
pub struct Anchor {
    cert: CertificateDer<'static>,
    key: Option<Arc<KeyPair>>,
    not_after: SystemTime,
    subject: String,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("subject", &self.subject)
            .field("sha256", &crate::hex(&self.sha256()))
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl Anchor {
    /// A fresh self-signed ECDSA P-256 root valid from now (less [`CLOCK_SKEW`]) for
    /// `lifetime`.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Anchor, Error> {
        let key = new_key()?;
        let mut params = ca_params(common_name, lifetime, None)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::new(format!("cannot self-sign the trust anchor: {e}")))?;
        let cert = cert.der().clone();
        Anchor::new(cert, Some(Arc::new(key)), "the generated trust anchor")
    }

    /// Reads an anchor from its PEM certificate and, optionally, its PKCS#8 PEM key. Checks
    /// that the certificate is a CA, is self-signed (signature verified) and that the key
    /// belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: Option<&str>) -> Result<Anchor, Error> {
        let certs = certs_from_pem(cert_pem, "the trust anchor PEM")?;
        let [cert] = <[CertificateDer<'static>; 1]>::try_from(certs).map_err(|certs| {
            Error::new(format!(
                "the trust anchor PEM holds {} certificates; give exactly one (use \
                 anchors_from_pem for a bundle)",
                certs.len()
            ))
        })?;
        let key = match key_pem {
            Some(pem) => Some(Arc::new(key_from_pem(pem, "the trust anchor key")?)),
            None => None,
        };
        Anchor::new(cert, key, "the trust anchor")
    }

    fn new(
        cert: CertificateDer<'static>,
        key: Option<Arc<KeyPair>>,
        what: &str,
    ) -> Result<Anchor, Error> {
        let parsed = parse_cert(&cert, what)?;
        let subject = parsed.subject().to_string();
        if !is_ca(&parsed) {
            return Err(Error::new(format!(
                "{what} ({subject}) is not a CA certificate (basic constraints CA:TRUE missing)"
            )));
        }
        if parsed.subject().as_raw() != parsed.issuer().as_raw() {
            return Err(Error::new(format!(
                "{what} ({subject}) is not self-signed: it was issued by {}; give the root of \
                 the chain",
                parsed.issuer()
            )));
        }
        parsed.verify_signature(None).map_err(|e| {
            Error::new(format!(
                "{what} ({subject}): its self-signature does not verify ({e})"
            ))
        })?;
        if let Some(key) = &key {
            check_key_matches(key, &parsed, what)?;
        }
        let not_after = system_time_from_unix(parsed.validity().not_after.timestamp());
        Ok(Anchor {
            cert,
            key,
            not_after,
            subject,
        })
    }

    /// The anchor's certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The anchor's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        cert_to_pem(&self.cert)
    }

    /// The anchor's private key (PKCS#8 PEM), if we hold it.
    pub fn key_pem(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.serialize_pem())
    }

    /// Whether we hold the anchor's private key.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// SHA-256 of the certificate's DER.
    pub fn sha256(&self) -> [u8; 32] {
        crate::sha256(&self.cert)
    }

    /// The end of the anchor's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The certificate's subject, for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// This anchor with `key` attached, after checking the key belongs to it.
    pub fn with_key_pem(mut self, key_pem: &str) -> Result<Anchor, Error> {
        let key = key_from_pem(key_pem, "the trust anchor key")?;
        let parsed = parse_cert(&self.cert, "the trust anchor")?;
        check_key_matches(&key, &parsed, "the trust anchor")?;
        self.key = Some(Arc::new(key));
        Ok(self)
    }
}

/// Parse one or more anchors from a PEM bundle (certificates only).
pub fn anchors_from_pem(pem: &str) -> Result<Vec<Anchor>, Error> {
    let certs = certs_from_pem(pem, "the trust anchor bundle")?;
    certs
        .into_iter()
        .enumerate()
        .map(|(i, cert)| Anchor::new(cert, None, &format!("certificate #{} of the bundle", i + 1)))
        .collect()
}

/// An issuer (intermediate CA) with its key: what the controller signs leaves with.
#[derive(Clone)]
pub struct Issuer {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<KeyPair>,
    not_after: SystemTime,
    subject: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("sha256", &crate::hex(&self.sha256()))
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

impl Issuer {
    /// A fresh ECDSA P-256 intermediate signed by `anchor` (which must hold its key), with
    /// path length 0 (it signs leaves only). Its validity ends at `now + lifetime` or at the
    /// anchor's end, whichever comes first.
    pub fn generate(
        anchor: &Anchor,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<Issuer, Error> {
        let anchor_key = anchor.key.as_ref().ok_or_else(|| {
            Error::new(format!(
                "cannot create an issuer: the private key of trust anchor '{}' is not loaded; \
                 give the anchor's key",
                anchor.subject
            ))
        })?;
        let key = new_key()?;
        let mut params = ca_params(common_name, lifetime, Some(anchor.not_after))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let signer = rcgen::Issuer::from_ca_cert_der(&anchor.cert, &**anchor_key)
            .map_err(|e| Error::new(format!("cannot read the trust anchor to sign with: {e}")))?;
        let cert = params
            .signed_by(&key, &signer)
            .map_err(|e| Error::new(format!("cannot sign the issuer certificate: {e}")))?;
        Issuer::new(vec![cert.der().clone()], Arc::new(key))
    }

    /// Reads an issuer. `cert_pem`: the issuer certificate, optionally followed by further
    /// intermediates up to (not including) the anchor; `key_pem`: the issuer's PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Issuer, Error> {
        let chain = certs_from_pem(cert_pem, "the issuer certificate PEM")?;
        let key = key_from_pem(key_pem, "the issuer key")?;
        Issuer::new(chain, Arc::new(key))
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: Arc<KeyPair>) -> Result<Issuer, Error> {
        let first = chain
            .first()
            .ok_or_else(|| Error::new("the issuer certificate PEM holds no certificate"))?;
        let parsed = parse_cert(first, "the issuer certificate")?;
        let subject = parsed.subject().to_string();
        if !is_ca(&parsed) {
            return Err(Error::new(format!(
                "the issuer certificate ({subject}) is not a CA certificate (basic constraints \
                 CA:TRUE missing); it cannot sign workload certificates"
            )));
        }
        check_key_matches(&key, &parsed, "the issuer certificate")?;
        for (i, der) in chain.iter().enumerate().skip(1) {
            parse_cert(
                der,
                &format!("intermediate #{i} after the issuer certificate"),
            )?;
        }
        let not_after = system_time_from_unix(parsed.validity().not_after.timestamp());
        Ok(Issuer {
            chain,
            key,
            not_after,
            subject,
        })
    }

    /// The issuer certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The issuer certificate first, then its intermediates up to (not including) the anchor.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain, PEM (issuer first).
    pub fn cert_pem(&self) -> String {
        self.chain.iter().map(cert_to_pem).collect()
    }

    /// The issuer's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the issuer certificate's DER.
    pub fn sha256(&self) -> [u8; 32] {
        crate::sha256(&self.chain[0])
    }

    /// The end of the issuer certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The issuer certificate's subject, for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Index of the anchor this issuer chains to (verified with rustls-webpki), or an error.
    ///
    /// The check signs a throw-away leaf with the issuer's key and verifies it with webpki
    /// through the issuer's chain, so it proves the key, the chain and the validity at once.
    pub fn chains_to(&self, anchors: &[Anchor]) -> Result<usize, Error> {
        if anchors.is_empty() {
            return Err(Error::new(
                "the trust bundle is empty: give at least one trust anchor",
            ));
        }
        let probe_key = LeafProbe::new()?;
        let probe_id = Identity::parse("spiffe://probe.invalid/mesh-identity/chain-check")
            .map_err(|e| Error::new(format!("internal probe identity: {e}")))?;
        let leaf = self
            .sign_public_key(&probe_key.0, &probe_id, Duration::from_secs(300))
            .map_err(|e| Error::new(format!("the issuer cannot sign: {e}")))?;
        let mut reasons = Vec::new();
        for (i, anchor) in anchors.iter().enumerate() {
            match verify_chain(
                &leaf.cert_der,
                &leaf.chain,
                std::slice::from_ref(&anchor.cert),
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
            ) {
                Ok(()) => return Ok(i),
                Err(e) => reasons.push(format!("anchor #{} ({}): {e}", i + 1, anchor.subject)),
            }
        }
        Err(Error::new(format!(
            "issuer '{}' does not chain to any trust anchor ({}); sign the issuer with one of \
             the anchors or add its root to the bundle",
            self.subject,
            reasons.join("; ")
        )))
    }

    /// Signs a leaf for `identity` from a PKCS#10 CSR (DER). The CSR's signature must
    /// verify, its key must be ECDSA P-256, Ed25519 or RSA of 2048 bits or more, and its
    /// SANs must be exactly the URI `identity`. The leaf has the URI SAN `identity` only,
    /// is not a CA, has key usage digitalSignature and EKU serverAuth + clientAuth,
    /// `not_before = now - 60 s`, `not_after = min(now + lifetime, issuer's not_after)` and
    /// a random serial.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Leaf, SignError> {
        check_csr_key(csr_der)?;
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(|e| {
            SignError::BadCsr(match e {
                rcgen::Error::CouldNotParseCertificationRequest => {
                    "not a PKCS#10 certificate signing request in DER".to_string()
                }
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "its signature does not verify with its public key".to_string()
                }
                rcgen::Error::UnsupportedExtension => {
                    "it requests an extension other than subjectAltName, key usage, extended \
                     key usage or basic constraints"
                        .to_string()
                }
                other => other.to_string(),
            })
        })?;
        let found: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                other => format!("{other:?}"),
            })
            .collect();
        if found.len() != 1 || found[0] != identity.as_str() {
            return Err(SignError::WrongIdentity {
                asked: identity.to_string(),
                found,
            });
        }
        let alg = csr.public_key.algorithm();
        let consistent = alg == &PKCS_ECDSA_P256_SHA256
            || alg == &rcgen::PKCS_ED25519
            || alg == &rcgen::PKCS_RSA_SHA256
            || alg == &rcgen::PKCS_RSA_SHA384
            || alg == &rcgen::PKCS_RSA_SHA512;
        if !consistent {
            return Err(SignError::BadCsr(
                "its signature algorithm does not match its key: sign a P-256 CSR with \
                 ecdsa-with-SHA256, an Ed25519 CSR with Ed25519, an RSA CSR with PKCS#1 v1.5"
                    .to_string(),
            ));
        }
        self.sign_public_key(&csr.public_key, identity, lifetime)
    }

    fn sign_public_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Leaf, SignError> {
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - CLOCK_SKEW;
        let wanted = now + lifetime;
        let issuer_end = to_offset(self.not_after).map_err(|e| SignError::Sign(e.to_string()))?;
        let not_after = truncate_seconds(wanted.min(issuer_end));
        if not_after <= now {
            return Err(SignError::Sign(format!(
                "issuer '{}' has expired; load a new issuer",
                self.subject
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(identity.as_str())
            .map_err(|e| SignError::Sign(format!("identity is not IA5 text: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = truncate_seconds(not_before);
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let signer = rcgen::Issuer::from_ca_cert_der(&self.chain[0], &*self.key)
            .map_err(|e| SignError::Sign(format!("cannot read the issuer certificate: {e}")))?;
        let cert = params
            .signed_by(public_key, &signer)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(Leaf {
            cert_der: cert.der().clone(),
            chain: self.chain.clone(),
            not_after: system_time_from_unix(not_after.unix_timestamp()),
        })
    }
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// The issuer chain up to (not including) the trust anchor, issuer first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end of the leaf's validity.
    pub not_after: SystemTime,
}

/// Why a CSR was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The CSR cannot be read, its signature does not verify, or its key is not accepted.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// The CSR's SANs are not exactly the identity asked for.
    #[error(
        "the certificate signing request names {found:?}, not the identity asked for '{asked}'; \
         its only SAN must be the URI {asked}"
    )]
    WrongIdentity {
        /// The identity asked for (and proven).
        asked: String,
        /// The SANs the CSR names.
        found: Vec<String>,
    },
    /// Signing failed on the CA side (e.g. the issuer expired).
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// Verifies `leaf` with `intermediates` against `anchors` for `usage` at `now`.
pub(crate) fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchors = anchors
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        crate::provider().signature_verification_algorithms.all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )?;
    Ok(())
}

/// A throw-away key used to probe an issuer.
struct LeafProbe(KeyPair);

impl LeafProbe {
    fn new() -> Result<LeafProbe, Error> {
        Ok(LeafProbe(new_key()?))
    }
}

pub(crate) fn new_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::new(format!("cannot generate an ECDSA P-256 key: {e}")))
}

fn ca_params(
    common_name: &str,
    lifetime: Duration,
    cap: Option<SystemTime>,
) -> Result<CertificateParams, Error> {
    let now = time::OffsetDateTime::now_utc();
    let mut not_after = now + lifetime;
    if let Some(cap) = cap {
        not_after = not_after.min(to_offset(cap)?);
    }
    if not_after <= now {
        return Err(Error::new(
            "the signing certificate has expired or the lifetime is zero; give a positive \
             lifetime and a valid anchor",
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = truncate_seconds(now - CLOCK_SKEW);
    params.not_after = truncate_seconds(not_after);
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never starting with a zero byte (DER INTEGER minimal encoding).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn truncate_seconds(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, Error> {
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| Error::new(format!("time out of range: {e}")))
}

fn is_ca(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn check_key_matches(
    key: &KeyPair,
    cert: &x509_parser::certificate::X509Certificate<'_>,
    what: &str,
) -> Result<(), Error> {
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(Error::new(format!(
            "the private key does not belong to {what} ({}): give the key the certificate \
             was made for",
            cert.subject()
        )));
    }
    Ok(())
}

/// Checks the CSR's public key: ECDSA P-256, Ed25519, or RSA with at least 2048 bits.
fn check_csr_key(csr_der: &[u8]) -> Result<(), SignError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|_| {
            SignError::BadCsr("not a PKCS#10 certificate signing request in DER".to_string())
        })?;
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) {
            return Ok(());
        }
        return Err(SignError::BadCsr(
            "its EC key is not on curve P-256; generate an ECDSA P-256 key".to_string(),
        ));
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(());
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
            _ => Err(SignError::BadCsr(
                "its RSA key is shorter than 2048 bits or unreadable; use ECDSA P-256".to_string(),
            )),
        };
    }
    Err(SignError::BadCsr(format!(
        "its key algorithm {alg} is not accepted; use ECDSA P-256"
    )))
}

pub(crate) fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::new(format!("{what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::new(format!(
            "{what} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)"
        )));
    }
    Ok(certs)
}

fn key_from_pem(pem: &str, what: &str) -> Result<KeyPair, Error> {
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        Error::new(format!(
            "{what} is not a PEM private key ({e}); expected -----BEGIN PRIVATE KEY----- \
             (PKCS#8)"
        ))
    })?;
    KeyPair::from_der_and_sign_algo(&key, &PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::new(format!("{what} is not an ECDSA P-256 private key: {e}")))
}

/// A certificate as one PEM `CERTIFICATE` block (64-column base64).
pub fn cert_to_pem(cert: &CertificateDer<'_>) -> String {
    const LINE: usize = 64;
    let b64 = base64_std(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(LINE) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_std(data: &[u8]) -> String {
    crate::token::base64_encode(
        data,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaf::{identity_of, LeafKey};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    fn ca() -> (Anchor, Issuer) {
        let anchor = Anchor::generate("test anchor", 10 * DAY).unwrap();
        let issuer = Issuer::generate(&anchor, "test issuer", 5 * DAY).unwrap();
        (anchor, issuer)
    }

    #[test]
    fn signed_leaf_chains_to_anchor_with_identity() {
        let (anchor, issuer) = ca();
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let key = LeafKey::generate().unwrap();
        let leaf = issuer
            .sign_csr(&key.csr_der(&web).unwrap(), &web, DAY)
            .unwrap();
        verify_chain(
            &leaf.cert_der,
            &leaf.chain,
            std::slice::from_ref(anchor.cert_der()),
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
        )
        .unwrap();
        verify_chain(
            &leaf.cert_der,
            &leaf.chain,
            std::slice::from_ref(anchor.cert_der()),
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
        assert_eq!(identity_of(&leaf.cert_der), Some(web.clone()));
        assert_eq!(leaf.chain, issuer.chain());
        assert_eq!(
            crate::leaf::issuer_sha256(&leaf.chain),
            Some(issuer.sha256())
        );
        assert_eq!(
            crate::leaf::not_after(&leaf.cert_der).unwrap(),
            leaf.not_after
        );
        let left = leaf
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!(
            (DAY.as_secs() - 5..=DAY.as_secs()).contains(&left),
            "{left}"
        );

        let parsed = crate::parse_cert(&leaf.cert_der, "leaf").unwrap();
        assert!(!is_ca(&parsed));
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1);
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(parsed
            .key_usage()
            .unwrap()
            .unwrap()
            .value
            .digital_signature());
        // Backdated for clock skew.
        let nb = parsed.validity().not_before.timestamp();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 62..=now - 58).contains(&nb), "{nb} vs {now}");

        // A leaf cannot outlive its issuer.
        let long = issuer
            .sign_csr(&key.csr_der(&web).unwrap(), &web, 100 * DAY)
            .unwrap();
        assert_eq!(long.not_after, issuer.not_after());
        // Serials differ.
        let other = issuer
            .sign_csr(&key.csr_der(&web).unwrap(), &web, DAY)
            .unwrap();
        let p2 = crate::parse_cert(&other.cert_der, "leaf").unwrap();
        assert_ne!(parsed.raw_serial(), p2.raw_serial());
    }

    #[test]
    fn csr_for_another_identity_is_refused() {
        let (_, issuer) = ca();
        let key = LeafKey::generate().unwrap();
        let csr = key
            .csr_der(&id("spiffe://cluster.local/ns/shop/sa/admin"))
            .unwrap();
        let err = issuer
            .sign_csr(&csr, &id("spiffe://cluster.local/ns/shop/sa/web"), DAY)
            .unwrap_err();
        assert_eq!(
            err,
            SignError::WrongIdentity {
                asked: "spiffe://cluster.local/ns/shop/sa/web".into(),
                found: vec!["spiffe://cluster.local/ns/shop/sa/admin".into()],
            }
        );
        assert!(err.to_string().contains("sa/admin"), "{err}");
    }

    #[test]
    fn csr_with_extra_sans_is_refused() {
        let (_, issuer) = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(web.try_into().unwrap()));
        let csr = params.serialize_request(&key).unwrap();
        let err = issuer.sign_csr(csr.der(), &id(web), DAY).unwrap_err();
        assert!(
            matches!(&err, SignError::WrongIdentity { found, .. } if found.len() == 2),
            "{err:?}"
        );
        // And a CSR with no SAN at all.
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let err = issuer.sign_csr(csr.der(), &id(web), DAY).unwrap_err();
        assert!(
            matches!(&err, SignError::WrongIdentity { found, .. } if found.is_empty()),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_csr_is_bad_csr() {
        let (_, issuer) = ca();
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        for bytes in [
            &b""[..],
            b"\x00",
            b"garbage bytes that are no CSR",
            b"\x30\x82\xff\xff\x30",
            &[0x30u8; 300][..],
        ] {
            let err = issuer.sign_csr(bytes, &web, DAY).unwrap_err();
            assert!(matches!(err, SignError::BadCsr(_)), "{err:?}");
        }
        // Truncations of a valid CSR never panic and never sign.
        let csr = LeafKey::generate().unwrap().csr_der(&web).unwrap();
        for len in 0..csr.len() {
            assert!(
                issuer.sign_csr(&csr[..len], &web, DAY).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn csr_with_broken_signature_is_bad_csr() {
        let (_, issuer) = ca();
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let mut csr = LeafKey::generate().unwrap().csr_der(&web).unwrap();
        // The signature BIT STRING is the last element: flip a byte inside it.
        let n = csr.len();
        csr[n - 5] ^= 0x55;
        let err = issuer.sign_csr(&csr, &web, DAY).unwrap_err();
        assert_eq!(
            err,
            SignError::BadCsr("its signature does not verify with its public key".into())
        );
    }

    #[test]
    fn csr_with_p384_key_is_refused() {
        let (_, issuer) = ca();
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(web.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap();
        let err = issuer.sign_csr(csr.der(), &id(web), DAY).unwrap_err();
        assert!(
            matches!(&err, SignError::BadCsr(m) if m.contains("P-256")),
            "{err:?}"
        );
    }

    #[test]
    fn anchor_and_issuer_pem_round_trip() {
        let (anchor, issuer) = ca();
        let a2 = Anchor::from_pem(&anchor.cert_pem(), anchor.key_pem().as_deref()).unwrap();
        assert_eq!(a2.sha256(), anchor.sha256());
        assert!(a2.has_key());
        let a3 = Anchor::from_pem(&anchor.cert_pem(), None).unwrap();
        assert!(!a3.has_key());
        assert!(Issuer::generate(&a3, "x", DAY)
            .unwrap_err()
            .to_string()
            .contains("private key"));
        let i2 = Issuer::from_pem(&issuer.cert_pem(), &issuer.key_pem()).unwrap();
        assert_eq!(i2.sha256(), issuer.sha256());
        assert_eq!(i2.chains_to(std::slice::from_ref(&anchor)).unwrap(), 0);
        let bundle = format!(
            "{}{}",
            Anchor::generate("other", DAY).unwrap().cert_pem(),
            anchor.cert_pem()
        );
        let anchors = anchors_from_pem(&bundle).unwrap();
        assert_eq!(anchors.len(), 2);
        assert_eq!(i2.chains_to(&anchors).unwrap(), 1);
        assert!(i2.chains_to(&anchors[..1]).is_err());
        assert!(i2.chains_to(&[]).is_err());
        let diff = i2.not_after().duration_since(SystemTime::now()).unwrap();
        assert!(diff <= 5 * DAY && diff > 5 * DAY - Duration::from_secs(5));
        assert!(anchor.not_after() > i2.not_after());
    }

    #[test]
    fn issuer_is_capped_by_anchor() {
        let anchor = Anchor::generate("short", DAY).unwrap();
        let issuer = Issuer::generate(&anchor, "long", 10 * DAY).unwrap();
        assert_eq!(issuer.not_after(), anchor.not_after());
    }

    #[test]
    fn anchor_checks() {
        let (anchor, issuer) = ca();
        // The issuer is a CA but not self-signed.
        let err = Anchor::from_pem(&issuer.cert_pem(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not self-signed"), "{err}");
        // A key of another certificate.
        let other = Anchor::generate("other", DAY).unwrap();
        let err = Anchor::from_pem(&anchor.cert_pem(), other.key_pem().as_deref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
        // A leaf is not a CA.
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let key = LeafKey::generate().unwrap();
        let leaf = issuer
            .sign_csr(&key.csr_der(&web).unwrap(), &web, DAY)
            .unwrap();
        let err = Anchor::from_pem(&cert_to_pem(&leaf.cert_der), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a CA"), "{err}");
        let err = Issuer::from_pem(&cert_to_pem(&leaf.cert_der), &issuer.key_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a CA"), "{err}");
        // Garbage.
        assert!(anchors_from_pem("hello")
            .unwrap_err()
            .to_string()
            .contains("no certificate"));
        assert!(Issuer::from_pem(&issuer.cert_pem(), "nope").is_err());
        assert!(
            Anchor::from_pem(&format!("{}{}", anchor.cert_pem(), other.cert_pem()), None).is_err()
        );
    }
}
