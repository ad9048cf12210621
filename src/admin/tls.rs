//! TLS of the API port: the server certificate from the Transport CA, renewed
//! at half its lifetime and whenever the active Transport CA changes (CA
//! rotation), without a restart; client certificates optional (verified
//! against the trust bundle of the moment when presented, for `cnf` binding).

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio_rustls::TlsAcceptor;

use crate::issuer::Issuer;

pub struct ServerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    clients: Arc<BundleVerifier>,
}

/// The certificate served, and what decides when it is replaced.
#[derive(Debug, Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    /// Fingerprint of the Transport CA that signed it.
    issuer: String,
}

#[derive(Debug)]
struct CertResolver {
    current: RwLock<Served>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

/// Client certificates checked against the bundle as it is now: a verifier
/// over the bundle's CAs, replaced when the bundle changes.
#[derive(Debug)]
struct BundleVerifier {
    current: RwLock<(String, Arc<dyn ClientCertVerifier>)>,
}

impl BundleVerifier {
    fn build(bundle_pem: &str) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in crate::ca::certs_from_pem(bundle_pem)? {
            roots.add(CertificateDer::from(der))?;
        }
        Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).allow_unauthenticated().build()?)
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().1.clone()
    }
}

impl ClientCertVerifier for BundleVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the bundle changes, and clients send what they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

impl ServerTls {
    pub fn new(issuer: &Issuer) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(CertResolver { current: RwLock::new(served(issuer, &provider)?) });
        let bundle = issuer.snapshot().bundle_pem.clone();
        let clients =
            Arc::new(BundleVerifier { current: RwLock::new((bundle.clone(), BundleVerifier::build(&bundle)?)) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients.clone())
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), resolver, clients })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Replaces the certificate once half of its lifetime has passed, or
    /// when the Transport CA that signed it no longer signs; takes the
    /// bundle as it is now for client certificates. Whether the certificate
    /// was replaced.
    pub fn renew_if_due(&self, issuer: &Issuer) -> anyhow::Result<bool> {
        let bundle = issuer.snapshot().bundle_pem.clone();
        if self.clients.current.read().0 != bundle {
            let verifier = BundleVerifier::build(&bundle)?;
            *self.clients.current.write() = (bundle, verifier);
        }
        let Served { not_before, not_after, issuer: signed_by, .. } = self.resolver.current.read().clone();
        let half_life = issuer.now() >= not_before + (not_after - not_before) / 2;
        if !half_life && signed_by == issuer.server_certificate_issuer() {
            return Ok(false);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        *self.resolver.current.write() = served(issuer, &provider)?;
        tracing::info!(rotated = !half_life, "server TLS certificate renewed");
        Ok(true)
    }
}

fn served(issuer: &Issuer, provider: &rustls::crypto::CryptoProvider) -> anyhow::Result<Served> {
    let now = issuer.now();
    let signed_by = issuer.server_certificate_issuer();
    let (chain_pem, key, not_after) = issuer.server_certificate()?;
    let chain = crate::ca::certs_from_pem(&chain_pem)?.into_iter().map(CertificateDer::from).collect::<Vec<_>>();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signing_key = provider.key_provider.load_private_key(key_der)?;
    Ok(Served { key: Arc::new(CertifiedKey::new(chain, signing_key)), not_before: now, not_after, issuer: signed_by })
}
