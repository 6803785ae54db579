//! rustls configuration for proxy-to-proxy mutual TLS 1.3 (ring provider).
//!
//! [`Credentials`] holds the trust bundle and the proxy's current certificate behind locks;
//! the configs it hands out read them at every handshake through a custom certificate
//! resolver and custom verifiers, so a new bundle or a renewed certificate takes effect on
//! the next handshake without rebuilding any config. Peers are identified by the SPIFFE ID
//! in their leaf's URI SAN; DNS names and SNI play no part. Sessions are never resumed, so
//! every handshake checks the peer's chain against the bundle in force at that moment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{Error, Identity, MESH_ALPN};

/// Most client configs kept (one per expected server identity); the cache is emptied
/// when it would grow beyond, which costs only a rebuild.
const CLIENT_CONFIG_CACHE: usize = 4096;

#[derive(Default)]
struct Bundle {
    version: u64,
    anchors: Arc<Vec<CertificateDer<'static>>>,
}

struct Inner {
    identity: Identity,
    bundle: RwLock<Bundle>,
    certified: RwLock<Option<Arc<CertifiedKey>>>,
    server: Mutex<Option<Arc<ServerConfig>>>,
    clients: Mutex<HashMap<Identity, Arc<ClientConfig>>>,
}

/// Shared, swappable state: the trust bundle and our current certificate. Cheap to
/// clone (Arc inside). Swapping takes effect for the next handshake, no config rebuild.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.inner.identity)
            .field("bundle_version", &self.bundle_version())
            .field("has_certificate", &self.certified().is_some())
            .finish()
    }
}

impl Credentials {
    /// Credentials for a proxy whose workload is `identity`, with no bundle and no
    /// certificate yet.
    pub fn new(identity: Identity) -> Credentials {
        Credentials {
            inner: Arc::new(Inner {
                identity,
                bundle: RwLock::new(Bundle::default()),
                certified: RwLock::new(None),
                server: Mutex::new(None),
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The identity this proxy presents.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Replaces the trust bundle (the anchors peers' chains must end at). Every anchor must
    /// be a certificate webpki accepts as a trust anchor; an empty bundle is refused.
    pub fn set_bundle(
        &self,
        version: u64,
        anchors: Vec<CertificateDer<'static>>,
    ) -> Result<(), Error> {
        if anchors.is_empty() {
            return Err(Error::new(
                "the trust bundle is empty: it must hold at least one trust anchor",
            ));
        }
        for (i, a) in anchors.iter().enumerate() {
            webpki::anchor_from_trusted_cert(a).map_err(|e| {
                Error::new(format!(
                    "trust bundle version {version}: anchor #{} is not a usable trust anchor \
                     ({e})",
                    i + 1
                ))
            })?;
        }
        let mut bundle = self.inner.bundle.write().unwrap_or_else(|p| p.into_inner());
        *bundle = Bundle {
            version,
            anchors: Arc::new(anchors),
        };
        Ok(())
    }

    /// The version of the current trust bundle (0: none yet).
    pub fn bundle_version(&self) -> u64 {
        self.inner
            .bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version
    }

    /// The current trust anchors (empty: none yet).
    pub fn anchors(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.inner
            .bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .anchors
            .clone()
    }

    /// Installs our certificate (after `Certify`); used from the next handshake on.
    pub fn set_certified(&self, key: Arc<CertifiedKey>) {
        *self
            .inner
            .certified
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    /// Our current certificate and key.
    pub fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.inner
            .certified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether both a trust bundle and a certificate are present.
    pub fn is_ready(&self) -> bool {
        self.bundle_version() != 0 && !self.anchors().is_empty() && self.certified().is_some()
    }

    /// Server config: presents our certificate; asks for a client certificate but does
    /// not require one (strict mode is enforced by the proxy after the handshake);
    /// verifies a presented client chain against the current bundle (expired, unknown
    /// anchor, no spiffe URI SAN -> handshake fails); ALPN [MESH_ALPN]. Built once.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut slot = self.inner.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cfg) = &*slot {
            return cfg.clone();
        }
        let verifier = Arc::new(MeshClientVerifier {
            creds: self.clone_weak_safe(),
        });
        let mut cfg = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver {
                creds: self.clone_weak_safe(),
            }));
        cfg.alpn_protocols = vec![MESH_ALPN.to_vec()];
        // No session resumption: a resumed session would skip the chain check, so a removed
        // anchor or a replaced certificate would not take effect on the next handshake.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        let cfg = Arc::new(cfg);
        *slot = Some(cfg.clone());
        cfg
    }

    /// Client config for connecting to a server that must prove `expected`: presents our
    /// certificate, verifies the server chain against the current bundle and that the
    /// leaf's URI SAN equals `expected` (else a handshake error for which
    /// [`is_identity_mismatch`] is true); SNI off; ALPN [MESH_ALPN]. Cached per identity.
    pub fn client_config(&self, expected: &Identity) -> Arc<ClientConfig> {
        let mut cache = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cfg) = cache.get(expected) {
            return cfg.clone();
        }
        let verifier = Arc::new(MeshServerVerifier {
            creds: self.clone_weak_safe(),
            expected: expected.clone(),
        });
        let mut cfg = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver {
                creds: self.clone_weak_safe(),
            }));
        cfg.enable_sni = false;
        cfg.alpn_protocols = vec![MESH_ALPN.to_vec()];
        // No session resumption (see `server_config`): every handshake verifies the chain
        // against the current bundle.
        cfg.resumption = rustls::client::Resumption::disabled();
        let cfg = Arc::new(cfg);
        if cache.len() >= CLIENT_CONFIG_CACHE {
            cache.clear();
        }
        cache.insert(expected.clone(), cfg.clone());
        cfg
    }

    /// A handle for the configs' verifiers and resolvers. They hold a weak reference so
    /// that the cached configs inside `Inner` do not keep `Inner` alive forever.
    fn clone_weak_safe(&self) -> WeakCreds {
        WeakCreds(Arc::downgrade(&self.inner))
    }
}

#[derive(Clone)]
struct WeakCreds(std::sync::Weak<Inner>);

impl WeakCreds {
    fn anchors(&self) -> Arc<Vec<CertificateDer<'static>>> {
        match self.0.upgrade() {
            Some(inner) => inner
                .bundle
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .anchors
                .clone(),
            None => Arc::new(Vec::new()),
        }
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.0.upgrade().and_then(|inner| {
            inner
                .certified
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// Presents our current certificate, as server and as client.
struct Resolver {
    creds: WeakCreds,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mesh_identity::tls::Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.creds.certified()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.creds.certified()
    }

    fn has_certs(&self) -> bool {
        self.creds.certified().is_some()
    }
}

/// The server presented a certificate for another identity than the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server is '{found}', not the expected '{expected}'")]
pub struct IdentityMismatch {
    /// The identity discovery said the server has.
    pub expected: String,
    /// The identity in the server's certificate (`<none>` if it has no SPIFFE ID).
    pub found: String,
}

fn verify_peer(
    creds: &WeakCreds,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<Identity, rustls::Error> {
    let anchors = creds.anchors();
    if anchors.is_empty() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
    }
    crate::ca::verify_chain(end_entity, intermediates, &anchors, now, usage)
        .map_err(webpki_error)?;
    crate::leaf::identity_of(end_entity).ok_or_else(|| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            Error::new("the peer certificate has no spiffe:// URI SAN"),
        ))))
    })
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertExpired { .. } => CertificateError::Expired,
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Verifies the server's chain against the bundle and its identity against `expected`.
struct MeshServerVerifier {
    creds: WeakCreds,
    expected: Identity,
}

impl std::fmt::Debug for MeshServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshServerVerifier(expects {})", self.expected)
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain_ok = verify_peer(
            &self.creds,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        );
        match chain_ok {
            Ok(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(found) => Err(mismatch(&self.expected, found.as_str())),
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(_)))
                if crate::leaf::identity_of(end_entity).is_none() =>
            {
                Err(mismatch(&self.expected, "<none>"))
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verify_schemes()
    }
}

/// Both verifiers: TLS 1.2 is never offered (TLS 1.3 only).
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Both verifiers: the handshake signature, with the ring provider's algorithms.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &crate::provider().signature_verification_algorithms,
    )
}

fn verify_schemes() -> Vec<SignatureScheme> {
    crate::provider()
        .signature_verification_algorithms
        .supported_schemes()
}

fn mismatch(expected: &Identity, found: &str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        IdentityMismatch {
            expected: expected.to_string(),
            found: found.to_string(),
        },
    ))))
}

/// Verifies a client's chain against the bundle and that it carries a SPIFFE ID.
struct MeshClientVerifier {
    creds: WeakCreds,
}

impl std::fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClientVerifier")
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &self.creds,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verify_schemes()
    }
}

/// The server name to pass to tokio-rustls' connect (a fixed IP; SNI is off and the
/// verifier checks the SPIFFE ID, not the name).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

/// Whether a tokio-rustls connect error is a server identity mismatch (the server's
/// certificate chains to the bundle but names another identity than expected, or none).
pub fn is_identity_mismatch(e: &std::io::Error) -> bool {
    identity_mismatch(e).is_some()
}

/// The details of a server identity mismatch in a tokio-rustls connect error.
pub fn identity_mismatch(e: &std::io::Error) -> Option<&IdentityMismatch> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityMismatch>()
        }
        _ => None,
    }
}

/// The client's identity from an accepted connection's peer certificates (None: no cert).
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    peer_identity_of(conn.peer_certificates()?)
}

/// The identity in the first (leaf) certificate of a peer chain.
pub fn peer_identity_of(certs: &[CertificateDer<'_>]) -> Option<Identity> {
    crate::leaf::identity_of(certs.first()?)
}
