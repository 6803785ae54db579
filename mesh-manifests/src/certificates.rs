//! Fills the six `certificates.*` values before rendering: keeps those already in the
//! values, reads the files given (`--identity-trust-anchor-file`, `--identity-issuer-*`),
//! and generates the rest.
//!
//! Generated material, all ECDSA P-256:
//!
//! - a trust anchor valid [`ANCHOR_LIFETIME`] (1 year), made with `mesh_identity`. Its
//!   private key is **not kept**: it is dropped once the issuer is signed, so no copy of the
//!   root key exists on the cluster or on disk. A new issuer then needs a new anchor (the
//!   controller's trust-anchor rotation); give your own anchor and issuer files to keep the
//!   root key yourself;
//! - an issuer signed by it, valid [`ISSUER_LIFETIME`] (11 months, so that it expires, and
//!   `meshctl check` warns, while the anchor is still valid for a rotation);
//! - the webhook's own CA and serving certificate, valid [`WEBHOOK_LIFETIME`] (1 year), with
//!   the DNS names `mesh-controller.<namespace>.svc` and
//!   `mesh-controller.<namespace>.svc.<clusterDomain>`; the CA's key is dropped too (a new
//!   serving certificate comes with a new CA, and the webhook's caBundle follows).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_identity::ca::{anchors_from_pem, Anchor, Issuer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::values::{Values, ValuesError};

/// Lifetime of a generated trust anchor.
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of a generated issuer (shorter than the anchor's).
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(335 * 24 * 3600);
/// Lifetime of the generated webhook CA and serving certificate.
pub const WEBHOOK_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

const ANCHORS: &str = "certificates.trustAnchorsPEM";
const ISSUER_CRT: &str = "certificates.issuerCrtPEM";
const ISSUER_KEY: &str = "certificates.issuerKeyPEM";
const WEBHOOK_CRT: &str = "certificates.webhookCrtPEM";
const WEBHOOK_KEY: &str = "certificates.webhookKeyPEM";
const WEBHOOK_CA: &str = "certificates.webhookCaPEM";

/// Certificate files given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM of the trust anchor(s); may also hold the anchor's private key, which is then
    /// used to sign a generated issuer (and not stored).
    pub trust_anchor: Option<PathBuf>,
    /// PEM of the issuer certificate (then its intermediates, if any).
    pub issuer_cert: Option<PathBuf>,
    /// PEM (PKCS#8) of the issuer's private key.
    pub issuer_key: Option<PathBuf>,
}

/// Certificates that cannot be used, naming the file or value and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{0}")]
    Incomplete(String),
    #[error("cannot generate {what}: {reason}")]
    Generate { what: String, reason: String },
    #[error(transparent)]
    Values(#[from] ValuesError),
}

/// Where a piece of PEM came from, for messages.
struct Pem {
    text: String,
    what: String,
}

fn read_pem(path: &Path, kind: &str) -> Result<Pem, CertError> {
    let text = std::fs::read_to_string(path).map_err(|e| CertError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let what = format!("{kind} file {}", path.display());
    if !text.contains("-----BEGIN ") {
        return Err(CertError::Invalid {
            what,
            reason: "not PEM (no -----BEGIN line); give the PEM-encoded file".into(),
        });
    }
    Ok(Pem { text, what })
}

fn from_value(values: &Values, path: &str) -> Option<Pem> {
    let text = values.str(path);
    (!text.trim().is_empty()).then(|| Pem {
        text: text.to_string(),
        what: format!("value {path}"),
    })
}

/// Fills the empty certificate values (see the module documentation) and returns a line
/// for each thing generated.
pub fn fill(values: &mut Values, given: &CertFiles) -> Result<Vec<String>, CertError> {
    let mut generated = Vec::new();
    fill_identity(values, given, &mut generated)?;
    fill_webhook(values, &mut generated)?;
    Ok(generated)
}

fn fill_identity(
    values: &mut Values,
    given: &CertFiles,
    generated: &mut Vec<String>,
) -> Result<(), CertError> {
    let file_or_value = |file: &Option<PathBuf>, kind: &str, path: &str| match file {
        Some(f) => read_pem(f, kind).map(Some),
        None => Ok(from_value(values, path)),
    };
    let anchor = file_or_value(&given.trust_anchor, "trust anchor", ANCHORS)?;
    let issuer_crt = file_or_value(&given.issuer_cert, "issuer certificate", ISSUER_CRT)?;
    let issuer_key = file_or_value(&given.issuer_key, "issuer key", ISSUER_KEY)?;

    let issuer = match (issuer_crt, issuer_key) {
        (Some(crt), Some(key)) => Some((crt, key)),
        (Some(crt), None) => {
            return Err(CertError::Incomplete(format!(
                "{} has no private key: give the issuer's key too \
                 (--identity-issuer-key-file or {ISSUER_KEY})",
                crt.what
            )))
        }
        (None, Some(key)) => {
            return Err(CertError::Incomplete(format!(
                "{} is given without its certificate: give the issuer certificate too \
                 (--identity-issuer-certificate-file or {ISSUER_CRT})",
                key.what
            )))
        }
        (None, None) => None,
    };

    match (anchor, issuer) {
        (Some(anchor), Some((crt, key))) => {
            let anchors = anchors_from_pem(&anchor.text).map_err(|e| CertError::Invalid {
                what: anchor.what.clone(),
                reason: e.to_string(),
            })?;
            let parsed =
                Issuer::from_pem(&crt.text, &key.text).map_err(|e| CertError::Invalid {
                    what: format!("{} with {}", crt.what, key.what),
                    reason: e.to_string(),
                })?;
            parsed.chains_to(&anchors).map_err(|e| CertError::Invalid {
                what: crt.what.clone(),
                reason: format!("not signed by the trust anchor of {}: {e}", anchor.what),
            })?;
            // Only the certificates go into the values: never the anchor's key.
            let bundle: String = anchors.iter().map(Anchor::cert_pem).collect();
            values.set_string(ANCHORS, &bundle)?;
            values.set_string(ISSUER_CRT, &crt.text)?;
            values.set_string(ISSUER_KEY, &key.text)?;
        }
        (Some(anchor), None) => {
            // An issuer can be made only with the anchor's key, in the same file.
            let with_key = anchor.text.contains("PRIVATE KEY-----");
            if !with_key {
                return Err(CertError::Incomplete(format!(
                    "{} is given without an issuer: give the issuer certificate and key \
                     (--identity-issuer-certificate-file, --identity-issuer-key-file), or \
                     put the anchor's private key in the anchor file so that an issuer can \
                     be generated",
                    anchor.what
                )));
            }
            let (cert_pem, key_pem) = split_cert_and_key(&anchor.text);
            let root =
                Anchor::from_pem(&cert_pem, Some(&key_pem)).map_err(|e| CertError::Invalid {
                    what: anchor.what.clone(),
                    reason: e.to_string(),
                })?;
            let issuer = new_issuer(&root, values)?;
            values.set_string(ANCHORS, &root.cert_pem())?;
            values.set_string(ISSUER_CRT, &issuer.cert_pem())?;
            values.set_string(ISSUER_KEY, &issuer.key_pem())?;
            generated.push(format!(
                "issuer, signed by the trust anchor of {} (valid {} days)",
                anchor.what,
                ISSUER_LIFETIME.as_secs() / 86400
            ));
        }
        (None, Some((crt, _))) => {
            return Err(CertError::Incomplete(format!(
                "{} is given without the trust anchor that signed it: give it too \
                 (--identity-trust-anchor-file or {ANCHORS})",
                crt.what
            )))
        }
        (None, None) => {
            let trust_domain = values.str("trustDomain").to_string();
            let root = Anchor::generate(
                &format!("mesh trust anchor {trust_domain}"),
                ANCHOR_LIFETIME,
            )
            .map_err(|e| CertError::Generate {
                what: "the trust anchor".into(),
                reason: e.to_string(),
            })?;
            let issuer = new_issuer(&root, values)?;
            values.set_string(ANCHORS, &root.cert_pem())?;
            values.set_string(ISSUER_CRT, &issuer.cert_pem())?;
            values.set_string(ISSUER_KEY, &issuer.key_pem())?;
            generated.push(format!(
                "trust anchor (valid {} days; its private key is not kept)",
                ANCHOR_LIFETIME.as_secs() / 86400
            ));
            generated.push(format!(
                "issuer (valid {} days)",
                ISSUER_LIFETIME.as_secs() / 86400
            ));
        }
    }
    Ok(())
}

fn new_issuer(root: &Anchor, values: &Values) -> Result<Issuer, CertError> {
    Issuer::generate(
        root,
        &format!("mesh issuer {}", values.str("trustDomain")),
        ISSUER_LIFETIME,
    )
    .map_err(|e| CertError::Generate {
        what: "the issuer".into(),
        reason: e.to_string(),
    })
}

/// The CERTIFICATE blocks and the PRIVATE KEY block of one PEM text.
fn split_cert_and_key(text: &str) -> (String, String) {
    let mut certs = String::new();
    let mut key = String::new();
    let mut current: Option<&mut String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = if line.contains("PRIVATE KEY") {
                Some(&mut key)
            } else {
                Some(&mut certs)
            };
        }
        if let Some(buf) = current.as_deref_mut() {
            buf.push_str(line);
            buf.push('\n');
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    (certs, key)
}

/// The DNS names the webhook's serving certificate must carry.
pub fn webhook_dns_names(namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        format!("mesh-controller.{namespace}.svc"),
        format!("mesh-controller.{namespace}.svc.{cluster_domain}"),
    ]
}

fn fill_webhook(values: &mut Values, generated: &mut Vec<String>) -> Result<(), CertError> {
    let present: Vec<&str> = [WEBHOOK_CRT, WEBHOOK_KEY, WEBHOOK_CA]
        .into_iter()
        .filter(|p| !values.str(p).trim().is_empty())
        .collect();
    match present.len() {
        3 => return Ok(()),
        0 => {}
        _ => {
            return Err(CertError::Incomplete(format!(
                "the webhook's certificate values are incomplete (given: {}): give all of \
                 {WEBHOOK_CRT}, {WEBHOOK_KEY} and {WEBHOOK_CA}, or none to have them \
                 generated",
                present.join(", ")
            )))
        }
    }
    let names = webhook_dns_names(values.str("namespace"), values.str("clusterDomain"));
    let (crt, key, ca) = generate_webhook(&names).map_err(|reason| CertError::Generate {
        what: "the webhook's certificates".into(),
        reason,
    })?;
    values.set_string(WEBHOOK_CRT, &crt)?;
    values.set_string(WEBHOOK_KEY, &key)?;
    values.set_string(WEBHOOK_CA, &ca)?;
    generated.push(format!(
        "webhook CA and serving certificate for {} (valid {} days)",
        names.join(", "),
        WEBHOOK_LIFETIME.as_secs() / 86400
    ));
    Ok(())
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - mesh_identity::ca::CLOCK_SKEW;
    params.not_after = now + lifetime;
}

/// A fresh CA and a serving certificate it signed: (cert PEM, key PEM, CA PEM).
fn generate_webhook(names: &[String]) -> Result<(String, String, String), String> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mesh webhook CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, WEBHOOK_LIFETIME);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| e.to_string())?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, WEBHOOK_LIFETIME);
    let cert = params.signed_by(&key, &ca).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem(), ca.pem()))
}
