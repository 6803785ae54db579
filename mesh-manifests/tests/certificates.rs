//! `certificates::fill`: the generated chain verifies (the issuer chains to the anchor; the
//! webhook's certificate has the Service's DNS names and is signed by the webhook CA), the
//! anchor's key is not kept, given material is kept or read, and bad files give errors
//! naming the file.

use std::path::PathBuf;

use mesh_identity::ca::{anchors_from_pem, Anchor, Issuer};
use mesh_manifests::certificates::{webhook_dns_names, ISSUER_LIFETIME};
use mesh_manifests::{fill, CertError, CertFiles, Values};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn pem(v: &Values, key: &str) -> String {
    v.get(&format!("certificates.{key}"))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn generated(set: &str) -> (Values, Vec<String>) {
    let mut v = Values::defaults();
    if !set.is_empty() {
        v.set(set).unwrap();
    }
    let made = fill(&mut v, &CertFiles::default()).unwrap();
    (v, made)
}

#[test]
fn generated_identity_chains_and_drops_the_anchor_key() {
    let (v, made) = generated("trustDomain=example.org");
    assert_eq!(made.len(), 3, "{made:?}");
    assert!(made[0].contains("private key is not kept"), "{made:?}");
    let anchors = anchors_from_pem(&pem(&v, "trustAnchorsPEM")).unwrap();
    assert_eq!(anchors.len(), 1);
    assert!(!anchors[0].has_key());
    assert!(!pem(&v, "trustAnchorsPEM").contains("PRIVATE KEY"));
    let issuer = Issuer::from_pem(&pem(&v, "issuerCrtPEM"), &pem(&v, "issuerKeyPEM")).unwrap();
    assert_eq!(issuer.chains_to(&anchors).unwrap(), 0);
    assert!(
        issuer.subject().contains("example.org"),
        "{}",
        issuer.subject()
    );
    assert!(
        issuer.not_after() < anchors[0].not_after(),
        "the issuer outlives the anchor"
    );
    let left = issuer
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > ISSUER_LIFETIME - std::time::Duration::from_secs(3600));
}

fn der(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn generated_webhook_certificate_has_the_service_names_and_the_ca() {
    let (v, _) = generated("namespace=mesh,clusterDomain=k.local");
    let ca = der(&pem(&v, "webhookCaPEM"));
    let leaf = der(&pem(&v, "webhookCrtPEM"));
    let anchor = webpki::anchor_from_trusted_cert(&ca[0]).unwrap();
    let cert = webpki::EndEntityCert::try_from(&leaf[0]).unwrap();
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .unwrap();
    for name in webhook_dns_names("mesh", "k.local") {
        let sn = ServerName::try_from(name.as_str()).unwrap();
        cert.verify_is_valid_for_subject_name(&sn).unwrap();
    }
    assert_eq!(
        webhook_dns_names("mesh", "k.local"),
        [
            "mesh-controller.mesh.svc",
            "mesh-controller.mesh.svc.k.local"
        ]
    );
    let wrong = ServerName::try_from("mesh-controller.mesh-system.svc").unwrap();
    assert!(cert.verify_is_valid_for_subject_name(&wrong).is_err());
    // The key belongs to the certificate: rustls accepts the pair.
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem(&v, "webhookKeyPEM").as_bytes())
        .unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(leaf, signing);
    certified.keys_match().unwrap();
}

#[test]
fn certificates_in_the_values_are_kept() {
    let (mut v, _) = generated("");
    let before = v.to_json();
    let made = fill(&mut v, &CertFiles::default()).unwrap();
    assert!(made.is_empty(), "{made:?}");
    assert_eq!(v.to_json(), before);
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// An anchor (with its key) and an issuer it signed.
fn chain(cn: &str) -> (Anchor, Issuer) {
    let a = Anchor::generate(cn, std::time::Duration::from_secs(86400 * 30)).unwrap();
    let i = Issuer::generate(
        &a,
        &format!("{cn} issuer"),
        std::time::Duration::from_secs(86400),
    )
    .unwrap();
    (a, i)
}

#[test]
fn given_files_are_read_and_checked() {
    let dir = Dir::new();
    let (a, i) = chain("given");
    let files = CertFiles {
        trust_anchor: Some(dir.write("ca.crt", &a.cert_pem())),
        issuer_cert: Some(dir.write("issuer.crt", &i.cert_pem())),
        issuer_key: Some(dir.write("issuer.key", &i.key_pem())),
    };
    let mut v = Values::defaults();
    let made = fill(&mut v, &files).unwrap();
    assert_eq!(
        made.len(),
        1,
        "only the webhook's certificates are generated: {made:?}"
    );
    assert_eq!(pem(&v, "trustAnchorsPEM"), a.cert_pem());
    assert_eq!(pem(&v, "issuerCrtPEM"), i.cert_pem());
    assert_eq!(pem(&v, "issuerKeyPEM"), i.key_pem());
}

#[test]
fn an_anchor_file_with_its_key_gets_a_generated_issuer() {
    let dir = Dir::new();
    let (a, _) = chain("own root");
    let both = format!("{}{}", a.cert_pem(), a.key_pem().unwrap());
    let files = CertFiles {
        trust_anchor: Some(dir.write("ca.pem", &both)),
        ..CertFiles::default()
    };
    let mut v = Values::defaults();
    let made = fill(&mut v, &files).unwrap();
    assert!(
        made[0].starts_with("issuer, signed by the trust anchor of trust anchor file"),
        "{made:?}"
    );
    assert!(
        !pem(&v, "trustAnchorsPEM").contains("PRIVATE KEY"),
        "the anchor key was stored"
    );
    let anchors = anchors_from_pem(&pem(&v, "trustAnchorsPEM")).unwrap();
    let issuer = Issuer::from_pem(&pem(&v, "issuerCrtPEM"), &pem(&v, "issuerKeyPEM")).unwrap();
    issuer.chains_to(&anchors).unwrap();
}

fn fill_err(files: CertFiles) -> CertError {
    fill(&mut Values::defaults(), &files).unwrap_err()
}

#[test]
fn bad_files_name_the_file() {
    let dir = Dir::new();
    let (a, i) = chain("one");
    let (_, other) = chain("two");
    let ca = dir.write("ca.crt", &a.cert_pem());
    let crt = dir.write("issuer.crt", &i.cert_pem());
    let key = dir.write("issuer.key", &i.key_pem());
    let other_crt = dir.write("other.crt", &other.cert_pem());
    let other_key = dir.write("other.key", &other.key_pem());
    let junk = dir.write("junk.pem", "hello\n");
    let missing = dir.0.path().join("missing.crt");

    let e = fill_err(CertFiles {
        trust_anchor: Some(missing.clone()),
        ..CertFiles::default()
    });
    assert!(matches!(e, CertError::Read { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );

    let e = fill_err(CertFiles {
        trust_anchor: Some(junk.clone()),
        issuer_cert: Some(crt.clone()),
        issuer_key: Some(key.clone()),
    });
    assert_eq!(
        e.to_string(),
        format!(
            "trust anchor file {}: not PEM (no -----BEGIN line); give the PEM-encoded file",
            junk.display()
        )
    );

    let e = fill_err(CertFiles {
        trust_anchor: Some(ca.clone()),
        issuer_cert: Some(other_crt.clone()),
        issuer_key: Some(other_key),
    });
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "issuer certificate file {}: not signed by the trust anchor of trust anchor file {}",
            other_crt.display(),
            ca.display()
        )),
        "{text}"
    );

    let e = fill_err(CertFiles {
        trust_anchor: Some(ca.clone()),
        issuer_cert: Some(crt.clone()),
        issuer_key: None,
    });
    assert!(
        e.to_string().starts_with(&format!(
            "issuer certificate file {} has no private key",
            crt.display()
        )),
        "{e}"
    );

    let e = fill_err(CertFiles {
        trust_anchor: Some(ca.clone()),
        issuer_cert: Some(crt.clone()),
        issuer_key: Some(ca.clone()),
    });
    assert!(
        e.to_string()
            .contains(&format!("issuer key file {}", ca.display())),
        "{e}"
    );

    let e = fill_err(CertFiles {
        trust_anchor: None,
        issuer_cert: Some(crt),
        issuer_key: Some(key),
    });
    assert!(
        e.to_string()
            .contains("without the trust anchor that signed it"),
        "{e}"
    );

    let e = fill_err(CertFiles {
        trust_anchor: Some(ca.clone()),
        ..CertFiles::default()
    });
    assert!(
        e.to_string().starts_with(&format!(
            "trust anchor file {} is given without an issuer",
            ca.display()
        )),
        "{e}"
    );
}

#[test]
fn incomplete_webhook_values_are_refused() {
    let mut v = Values::defaults();
    v.set_string(
        "certificates.webhookCrtPEM",
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    let e = fill(&mut v, &CertFiles::default()).unwrap_err();
    assert!(
        e.to_string().contains("given: certificates.webhookCrtPEM"),
        "{e}"
    );
}
