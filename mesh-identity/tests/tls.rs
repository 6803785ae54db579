//! Mutual TLS between two `Credentials` over real loopback TCP sockets.

use std::sync::Arc;
use std::time::Duration;

use mesh_identity::ca::{Anchor, Issuer};
use mesh_identity::leaf::LeafKey;
use mesh_identity::tls::{self, Credentials};
use mesh_identity::{Identity, MESH_ALPN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

struct Ca {
    anchor: Anchor,
    issuer: Issuer,
}

fn ca(name: &str) -> Ca {
    let anchor = Anchor::generate(&format!("{name} anchor"), 24 * HOUR).unwrap();
    let issuer = Issuer::generate(&anchor, &format!("{name} issuer"), 12 * HOUR).unwrap();
    Ca { anchor, issuer }
}

fn certify(ca: &Ca, identity: &Identity, lifetime: Duration) -> Arc<rustls::sign::CertifiedKey> {
    let key = LeafKey::generate().unwrap();
    let leaf = ca
        .issuer
        .sign_csr(&key.csr_der(identity).unwrap(), identity, lifetime)
        .unwrap();
    key.certified(
        leaf.cert_der.to_vec(),
        leaf.chain.iter().map(|c| c.to_vec()).collect(),
        identity,
    )
    .unwrap()
}

fn creds(ca: &Ca, identity: &str) -> Credentials {
    let identity = id(identity);
    let c = Credentials::new(identity.clone());
    assert!(!c.is_ready());
    c.set_bundle(1, vec![ca.anchor.cert_der().clone()]).unwrap();
    c.set_certified(certify(ca, &identity, HOUR));
    assert!(c.is_ready());
    c
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Accepted {
    peer: Option<Identity>,
    alpn: Option<Vec<u8>>,
}

/// A server that accepts TLS connections, echoes one line, and reports each handshake.
async fn server(
    creds: Credentials,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<Accepted, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(creds.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let (_, conn) = tls.get_ref();
                        let _ = tx.send(Ok(Accepted {
                            peer: tls::peer_identity(conn),
                            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
                        }));
                        let mut buf = [0u8; 5];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects as `client` expecting `expected`, exchanges one message; returns the
/// server identity the client saw.
async fn connect(
    client: &Credentials,
    addr: std::net::SocketAddr,
    expected: &Identity,
) -> std::io::Result<Option<Identity>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(client.client_config(expected));
    let mut tls = connector.connect(tls::server_name(), tcp).await?;
    tls.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(MESH_ALPN));
    Ok(tls::peer_identity(conn))
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";

#[tokio::test]
async fn mutual_handshake_and_identities() {
    let ca = ca("one");
    let server_creds = creds(&ca, ORDERS);
    let client_creds = creds(&ca, WEB);
    let (addr, mut seen) = server(server_creds).await;

    let server_id = connect(&client_creds, addr, &id(ORDERS)).await.unwrap();
    assert_eq!(server_id, Some(id(ORDERS)));
    let accepted = seen.recv().await.unwrap().unwrap();
    assert_eq!(accepted.peer, Some(id(WEB)));
    assert_eq!(accepted.alpn.as_deref(), Some(MESH_ALPN));

    // The per-identity client config is cached.
    assert!(Arc::ptr_eq(
        &client_creds.client_config(&id(ORDERS)),
        &client_creds.client_config(&id(ORDERS))
    ));
}

#[tokio::test]
async fn client_without_certificate_is_accepted_without_identity() {
    let ca = ca("one");
    let (addr, mut seen) = server(creds(&ca, ORDERS)).await;
    let anonymous = Credentials::new(id(WEB));
    anonymous
        .set_bundle(1, vec![ca.anchor.cert_der().clone()])
        .unwrap();
    assert!(!anonymous.is_ready());
    let server_id = connect(&anonymous, addr, &id(ORDERS)).await.unwrap();
    assert_eq!(server_id, Some(id(ORDERS)));
    let accepted = seen.recv().await.unwrap().unwrap();
    assert_eq!(accepted.peer, None);
}

#[tokio::test]
async fn client_expecting_another_identity_fails_with_mismatch() {
    let ca = ca("one");
    let (addr, _seen) = server(creds(&ca, ORDERS)).await;
    let client = creds(&ca, WEB);
    let err = connect(
        &client,
        addr,
        &id("spiffe://cluster.local/ns/shop/sa/payments"),
    )
    .await
    .unwrap_err();
    assert!(tls::is_identity_mismatch(&err), "{err}");
    let details = tls::identity_mismatch(&err).unwrap();
    assert_eq!(details.found, ORDERS);
    assert!(err.to_string().contains(ORDERS), "{err}");
}

#[tokio::test]
async fn server_from_another_anchor_is_refused_by_client() {
    let one = ca("one");
    let two = ca("two");
    let (addr, _seen) = server(creds(&two, ORDERS)).await;
    let client = creds(&one, WEB);
    let err = connect(&client, addr, &id(ORDERS)).await.unwrap_err();
    assert!(!tls::is_identity_mismatch(&err), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn client_certificate_from_another_anchor_is_refused() {
    let one = ca("one");
    let two = ca("two");
    let (addr, mut seen) = server(creds(&one, ORDERS)).await;
    // The client trusts the server's anchor but holds a certificate from another one.
    let client = Credentials::new(id(WEB));
    client
        .set_bundle(1, vec![one.anchor.cert_der().clone()])
        .unwrap();
    client.set_certified(certify(&two, &id(WEB), HOUR));
    // In TLS 1.3 the client learns of the rejection on its first read at the latest.
    assert!(connect(&client, addr, &id(ORDERS)).await.is_err());
    let err = seen.recv().await.unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = ca("one");
    let (addr, mut seen) = server(creds(&ca, ORDERS)).await;
    let client = Credentials::new(id(WEB));
    client
        .set_bundle(1, vec![ca.anchor.cert_der().clone()])
        .unwrap();
    client.set_certified(certify(&ca, &id(WEB), Duration::from_secs(1)));
    // X.509 times have one-second precision: wait until the leaf is surely past not_after.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(connect(&client, addr, &id(ORDERS)).await.is_err());
    let err = seen.recv().await.unwrap().unwrap_err();
    assert!(err.contains("Expired"), "{err}");
}

#[tokio::test]
async fn expired_server_certificate_is_refused() {
    let ca = ca("one");
    let server_creds = Credentials::new(id(ORDERS));
    server_creds
        .set_bundle(1, vec![ca.anchor.cert_der().clone()])
        .unwrap();
    server_creds.set_certified(certify(&ca, &id(ORDERS), Duration::from_secs(1)));
    let (addr, _seen) = server(server_creds).await;
    let client = creds(&ca, WEB);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = connect(&client, addr, &id(ORDERS)).await.unwrap_err();
    assert!(err.to_string().contains("Expired"), "{err}");
    assert!(!tls::is_identity_mismatch(&err));
}

#[tokio::test]
async fn bundle_with_both_anchors_accepts_both() {
    let one = ca("one");
    let two = ca("two");
    let server_creds = creds(&one, ORDERS);
    let (addr, mut seen) = server(server_creds.clone()).await;
    let old_client = creds(&one, WEB);
    let new_client = creds(&two, "spiffe://cluster.local/ns/shop/sa/new");
    new_client
        .set_bundle(
            2,
            vec![one.anchor.cert_der().clone(), two.anchor.cert_der().clone()],
        )
        .unwrap();

    // Before the swap, the server refuses the client of the new anchor.
    assert!(connect(&new_client, addr, &id(ORDERS)).await.is_err());
    assert!(seen.recv().await.unwrap().is_err());

    let before = server_creds.server_config();
    server_creds
        .set_bundle(
            2,
            vec![one.anchor.cert_der().clone(), two.anchor.cert_der().clone()],
        )
        .unwrap();
    assert_eq!(server_creds.bundle_version(), 2);
    assert!(
        Arc::ptr_eq(&before, &server_creds.server_config()),
        "no rebuild"
    );

    connect(&new_client, addr, &id(ORDERS)).await.unwrap();
    assert_eq!(
        seen.recv().await.unwrap().unwrap().peer,
        Some(id("spiffe://cluster.local/ns/shop/sa/new"))
    );
    connect(&old_client, addr, &id(ORDERS)).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().unwrap().peer, Some(id(WEB)));

    // Dropping the old anchor refuses the old client again.
    server_creds
        .set_bundle(3, vec![two.anchor.cert_der().clone()])
        .unwrap();
    assert!(connect(&old_client, addr, &id(ORDERS)).await.is_err());
    assert!(seen.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn swapping_the_certificate_takes_effect_on_next_handshake() {
    let one = ca("one");
    let two = ca("two");
    let server_creds = creds(&one, ORDERS);
    let (addr, _seen) = server(server_creds.clone()).await;
    let client = creds(&one, WEB);
    connect(&client, addr, &id(ORDERS)).await.unwrap();

    // The server now presents a certificate from an anchor the client does not trust.
    server_creds.set_certified(certify(&two, &id(ORDERS), HOUR));
    assert!(connect(&client, addr, &id(ORDERS)).await.is_err());

    // And back to a fresh one from the trusted anchor; the client config is unchanged.
    let cfg = client.client_config(&id(ORDERS));
    server_creds.set_certified(certify(&one, &id(ORDERS), HOUR));
    connect(&client, addr, &id(ORDERS)).await.unwrap();
    assert!(Arc::ptr_eq(&cfg, &client.client_config(&id(ORDERS))));
}

#[tokio::test]
async fn bad_bundles_are_refused() {
    let ca = ca("one");
    let c = Credentials::new(id(WEB));
    assert!(c.set_bundle(1, vec![]).is_err());
    assert!(c
        .set_bundle(
            1,
            vec![rustls_pki_types::CertificateDer::from(vec![1, 2, 3])]
        )
        .is_err());
    assert_eq!(c.bundle_version(), 0);
    c.set_bundle(7, vec![ca.anchor.cert_der().clone()]).unwrap();
    assert_eq!(c.bundle_version(), 7);
}

#[test]
fn certified_checks_key_and_identity() {
    let ca = ca("one");
    let key = LeafKey::generate().unwrap();
    let other_key = LeafKey::generate().unwrap();
    let web = id(WEB);
    let leaf = ca
        .issuer
        .sign_csr(&key.csr_der(&web).unwrap(), &web, HOUR)
        .unwrap();
    let chain: Vec<Vec<u8>> = leaf.chain.iter().map(|c| c.to_vec()).collect();
    let err = other_key
        .certified(leaf.cert_der.to_vec(), chain.clone(), &web)
        .unwrap_err();
    assert!(err.to_string().contains("another key"), "{err}");
    let err = key
        .certified(leaf.cert_der.to_vec(), chain.clone(), &id(ORDERS))
        .unwrap_err();
    assert!(err.to_string().contains("not for"), "{err}");
    assert!(key.certified(vec![0; 10], chain.clone(), &web).is_err());
    let ck = key.certified(leaf.cert_der.to_vec(), chain, &web).unwrap();
    assert_eq!(ck.cert.len(), 2);
    ck.keys_match().unwrap();
}

/// A leaf signed by the trusted issuer but with a DNS SAN only (no SPIFFE ID).
fn certified_without_spiffe(ca: &Ca) -> Arc<rustls::sign::CertifiedKey> {
    let issuer_key = rcgen::KeyPair::from_pem(&ca.issuer.key_pem()).unwrap();
    let signer = rcgen::Issuer::from_ca_cert_der(ca.issuer.cert_der(), &issuer_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["orders.shop".to_string()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &signer).unwrap();
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone(), ca.issuer.cert_der().clone()],
        signing,
    ))
}

#[tokio::test]
async fn certificates_without_spiffe_id_are_refused() {
    let ca = ca("one");
    // As a client certificate: the server refuses the handshake.
    let (addr, mut seen) = server(creds(&ca, ORDERS)).await;
    let client = Credentials::new(id(WEB));
    client
        .set_bundle(1, vec![ca.anchor.cert_der().clone()])
        .unwrap();
    client.set_certified(certified_without_spiffe(&ca));
    assert!(connect(&client, addr, &id(ORDERS)).await.is_err());
    let err = seen.recv().await.unwrap().unwrap_err();
    assert!(err.contains("spiffe"), "{err}");

    // As a server certificate: the client reports an identity mismatch.
    let server_creds = Credentials::new(id(ORDERS));
    server_creds
        .set_bundle(1, vec![ca.anchor.cert_der().clone()])
        .unwrap();
    server_creds.set_certified(certified_without_spiffe(&ca));
    let (addr, _seen) = server(server_creds).await;
    let err = connect(&creds(&ca, WEB), addr, &id(ORDERS))
        .await
        .unwrap_err();
    assert!(tls::is_identity_mismatch(&err), "{err}");
}
