//! Reading certificates for the checks: PEM to DER, validity windows, DNS SANs, "was this
//! signed by that CA" (the signature itself, independent of time, with x509-parser), whether
//! a private key belongs to a certificate, and chain verification of proxy leaves
//! (rustls-webpki).

use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Certificates that expire sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60 * 24 * 3600);

/// What the checks need of one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub der: CertificateDer<'static>,
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
}

/// Every certificate of a PEM text; an error when there is none or one is broken.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(format!("{what} is not a valid X.509 certificate: {e}")),
    }
}

fn time(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses one certificate.
pub fn info(der: &CertificateDer<'static>, what: &str) -> Result<CertInfo, String> {
    let cert = parse(der, what)?;
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        der: der.clone(),
        subject: cert.subject().to_string(),
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
        dns_names,
    })
}

/// Where `now` is in a certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Expired,
    /// Valid, but ends within [`EXPIRY_WARNING`]; how long is left.
    ExpiresSoon(Duration),
    /// Valid for longer than [`EXPIRY_WARNING`]; how long is left.
    Valid(Duration),
}

/// Where `now` is in `cert`'s validity.
pub fn validity(cert: &CertInfo, now: SystemTime) -> Validity {
    if now < cert.not_before {
        return Validity::NotYetValid;
    }
    match cert.not_after.duration_since(now) {
        Err(_) => Validity::Expired,
        Ok(left) if left < EXPIRY_WARNING => Validity::ExpiresSoon(left),
        Ok(left) => Validity::Valid(left),
    }
}

/// A sentence about `cert`'s validity: `'CN=x' expires 2026-01-01T00:00:00Z (in 30 days)`.
pub fn describe_validity(cert: &CertInfo, now: SystemTime) -> String {
    let name = &cert.subject;
    match validity(cert, now) {
        Validity::NotYetValid => format!(
            "'{name}' is not valid before {} (check the clock of the machine that made it)",
            rfc3339(cert.not_before)
        ),
        Validity::Expired => format!(
            "'{name}' expired {} ({} ago)",
            rfc3339(cert.not_after),
            days(now.duration_since(cert.not_after).unwrap_or_default())
        ),
        Validity::ExpiresSoon(left) | Validity::Valid(left) => format!(
            "'{name}' expires {} (in {})",
            rfc3339(cert.not_after),
            days(left)
        ),
    }
}

/// `2026-01-01T00:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `30 days`, `1 day`, or hours/minutes under a day.
pub fn days(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 86_400 => "1 day".to_string(),
        s if s >= 7200 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

/// Whether `cert` was signed by `ca`: `ca` is its issuer by name and its signature verifies
/// with `ca`'s key. Time is not considered (validity is checked on its own).
pub fn signed_by(cert: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> Result<bool, String> {
    let cert = parse(cert, "the certificate")?;
    let ca = parse(ca, "the CA certificate")?;
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Ok(false);
    }
    Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// Whether the PEM private key `key_pem` belongs to `cert`.
pub fn key_matches(cert: &CertificateDer<'_>, key_pem: &str) -> Result<bool, String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let Some(spki) = signing.public_key() else {
        return Err("the private key's public half cannot be derived".to_string());
    };
    let cert = parse(cert, "the certificate")?;
    Ok(spki.as_ref() == cert.public_key().raw)
}

/// Verifies a workload leaf and its intermediates against `anchors` at `now`, as a peer
/// proxy would (client authentication).
pub fn verify_leaf(
    chain: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), String> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| "the certificate chain is empty".to_string())?;
    let anchors = anchors
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).map(|t| t.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a trust anchor cannot be used: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the leaf certificate cannot be read: {e}"))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?;
    ee.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| webpki_reason(&e))
}

fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => {
            "it is not signed by a trust anchor in the identity Secret (unknown issuer)".into()
        }
        webpki::Error::CertExpired { .. } => "a certificate of the chain has expired".into(),
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate of the chain is not valid yet".into()
        }
        other => format!("the chain does not verify: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_counts() {
        assert_eq!(days(Duration::from_secs(30 * 86_400 + 5)), "30 days");
        assert_eq!(days(Duration::from_secs(86_400)), "1 day");
        assert_eq!(days(Duration::from_secs(3 * 3600)), "3 hours");
        assert_eq!(days(Duration::from_secs(600)), "10 minutes");
    }

    #[test]
    fn bad_pem() {
        assert!(certs_from_pem("hello", "x").unwrap_err().contains("no PEM"));
    }
}
