//! The proxy's side of workload identity: an in-memory key, the CSR it sends to the
//! controller and the rustls `CertifiedKey` it presents once the leaf comes back.

use std::sync::Arc;
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{parse_cert, system_time_from_unix, Error, Identity};

/// A fresh P-256 key pair held in memory only.
pub struct LeafKey {
    key: KeyPair,
}

impl std::fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafKey(P-256, private key elided)")
    }
}

impl LeafKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<LeafKey, Error> {
        Ok(LeafKey {
            key: crate::ca::new_key()?,
        })
    }

    /// A PKCS#10 CSR (DER) signed with this key whose only SAN is the URI `identity`.
    pub fn csr_der(&self, identity: &Identity) -> Result<Vec<u8>, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(identity.as_str())
            .map_err(|e| Error::new(format!("identity '{identity}' is not IA5 text: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| Error::new(format!("cannot build the CSR for '{identity}': {e}")))?;
        Ok(csr.der().to_vec())
    }

    /// Builds the rustls CertifiedKey (leaf + chain, this key) after checking the leaf's
    /// public key is ours and its URI SAN is `identity`.
    pub fn certified(
        &self,
        leaf_der: Vec<u8>,
        chain_der: Vec<Vec<u8>>,
        identity: &Identity,
    ) -> Result<Arc<CertifiedKey>, Error> {
        use rcgen::PublicKeyData;
        let leaf = CertificateDer::from(leaf_der);
        {
            let parsed = parse_cert(&leaf, "the leaf certificate from the controller")?;
            if parsed.public_key().raw != self.key.subject_public_key_info().as_slice() {
                return Err(Error::new(
                    "the leaf certificate from the controller is for another key than the one \
                     this proxy generated; request a new certificate",
                ));
            }
            match identity_of(&leaf) {
                Some(found) if &found == identity => {}
                Some(found) => {
                    return Err(Error::new(format!(
                        "the leaf certificate from the controller is for '{found}', not for \
                         this proxy's identity '{identity}'"
                    )))
                }
                None => {
                    return Err(Error::new(format!(
                        "the leaf certificate from the controller has no spiffe:// URI SAN; \
                         expected '{identity}'"
                    )))
                }
            }
        }
        let mut certs = Vec::with_capacity(1 + chain_der.len());
        certs.push(leaf);
        for (i, der) in chain_der.into_iter().enumerate() {
            let der = CertificateDer::from(der);
            parse_cert(
                &der,
                &format!("intermediate #{} from the controller", i + 1),
            )?;
            certs.push(der);
        }
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing = crate::provider()
            .key_provider
            .load_private_key(pkcs8)
            .map_err(|e| Error::new(format!("rustls cannot load the leaf key: {e}")))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }
}

/// The SPIFFE ID in a certificate's URI SAN (first `spiffe://` URI), if any.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let parsed = parse_cert(cert, "certificate").ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Identity::parse(uri).ok()
        }
        _ => None,
    })
}

/// The end of a certificate's validity.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, Error> {
    let parsed = parse_cert(cert, "the certificate")?;
    Ok(system_time_from_unix(
        parsed.validity().not_after.timestamp(),
    ))
}

/// SHA-256 of the DER of the certificate that issued the leaf: `sha256(chain[0])`, where
/// `chain` is the leaf's issuer chain (without the leaf). `None` for an empty chain.
pub fn issuer_sha256(chain: &[CertificateDer<'_>]) -> Option<[u8; 32]> {
    chain.first().map(|c| crate::sha256(c))
}
