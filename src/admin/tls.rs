//! TLS of the API port: the server certificate from the Transport CA, renewed
//! at half its lifetime without a restart; client certificates optional
//! (verified against the trust bundle when presented, for `cnf` binding).

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::issuer::Issuer;

pub struct ServerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
}

#[derive(Debug)]
struct CertResolver {
    current: RwLock<(Arc<CertifiedKey>, time::OffsetDateTime, time::OffsetDateTime)>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

impl ServerTls {
    pub fn new(issuer: &Issuer) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, not_before, not_after) = certified_key(issuer, &provider)?;
        let resolver = Arc::new(CertResolver { current: RwLock::new((key, not_before, not_after)) });
        let mut roots = rustls::RootCertStore::empty();
        for der in crate::ca::certs_from_pem(&issuer.snapshot().bundle_pem)? {
            roots.add(CertificateDer::from(der))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), resolver })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Replaces the certificate once half of its lifetime has passed.
    pub fn renew_if_due(&self, issuer: &Issuer) -> anyhow::Result<bool> {
        let (_, not_before, not_after) = self.resolver.current.read().clone();
        if issuer.now() < not_before + (not_after - not_before) / 2 {
            return Ok(false);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        *self.resolver.current.write() = certified_key(issuer, &provider)?;
        tracing::info!("server TLS certificate renewed");
        Ok(true)
    }
}

fn certified_key(
    issuer: &Issuer,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<(Arc<CertifiedKey>, time::OffsetDateTime, time::OffsetDateTime)> {
    let now = issuer.now();
    let (chain_pem, key, not_after) = issuer.server_certificate()?;
    let chain = crate::ca::certs_from_pem(&chain_pem)?.into_iter().map(CertificateDer::from).collect::<Vec<_>>();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signing_key = provider.key_provider.load_private_key(key_der)?;
    Ok((Arc::new(CertifiedKey::new(chain, signing_key)), now, not_after))
}
