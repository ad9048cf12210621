//! Dialling a trustmesh server's TLS port: what the CLI (and a node agent)
//! use to reach the API. The server is recognised by its identity, not by the
//! name that was dialled: its certificate must chain to the trust bundle and
//! carry exactly one URI SAN, `spiffe://<td>/trustmesh/server`, for a trust
//! domain the bundle names. No CA signs that identity but the Transport CA
//! (`ca::issue_svid` refuses everything under `domain::RESERVED_PATH`), so a
//! workload SVID that happens to carry `DNS:localhost` is refused, and a
//! bearer token never reaches a process that merely holds one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::domain::SpiffeId;

/// How long dialling and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client trusts: the bundle's CAs, and the server identities of
/// the trust domains they name.
#[derive(Debug, Clone)]
pub struct ServerTrust {
    roots: Arc<RootCertStore>,
    /// `spiffe://<td>/trustmesh/server` of every trust domain the bundle names.
    expected: Vec<SpiffeId>,
}

/// A certificate and key the client presents (for certificate-bound tokens,
/// and a node agent's own SVID).
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerTrust {
    /// Every certificate of a PEM bundle (root first or not, intermediates
    /// too) is a trust anchor; the trust domains come from their
    /// `spiffe://<td>` URI SANs.
    pub fn from_bundle_pem(pem: &str) -> Result<Self, String> {
        let ders = crate::ca::certs_from_pem(pem).map_err(|e| format!("the CA bundle: {e}"))?;
        let mut roots = RootCertStore::empty();
        let mut expected = Vec::new();
        for der in ders {
            if let Some(td) = crate::ca::CaCertificate::from_der(&der).ok().and_then(|c| c.trust_domain().cloned()) {
                let id = SpiffeId::server(&td).map_err(|e| e.to_string())?;
                if !expected.contains(&id) {
                    expected.push(id);
                }
            }
            roots.add(CertificateDer::from(der)).map_err(|e| format!("the CA bundle: {e}"))?;
        }
        if expected.is_empty() {
            return Err("the CA bundle names no trust domain (no CA carries a spiffe:// URI SAN), \
                        so the trustmesh server cannot be recognised"
                .into());
        }
        Ok(Self { roots: Arc::new(roots), expected })
    }

    /// The server identities this trust accepts.
    pub fn expected(&self) -> &[SpiffeId] {
        &self.expected
    }
}

/// A gRPC channel to the trustmesh server at `server` (`https://HOST:PORT`),
/// over TLS that accepts only the server's identity.
pub async fn channel(server: &str, trust: ServerTrust, identity: Option<ClientIdentity>) -> Result<Channel, String> {
    let (host, port) = split_url(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if let Some(id) = &identity {
        // The server verifies it against the same bundle; with TLS 1.3 its
        // refusal would only surface, racily, at the first call.
        check_client_identity(&trust, &provider, id)?;
    }
    let verifier = Arc::new(ServerIdentity { trust, provider: provider.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key).map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    // The name only goes into SNI: the certificate is checked by identity.
    let loopback = ServerName::IpAddress(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST).into());
    let sni = ServerName::try_from(host.clone()).unwrap_or(loopback);
    let address = format!("{host}:{port}");
    // tonic would add its own TLS for an https URI; the TLS here is ours.
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(&host, port)))
        .map_err(|e| format!("--server {server:?}: {e}"))?
        .timeout(CALL_TIMEOUT);
    let dial = tower::service_fn(move |_| {
        let (connector, sni, address) = (connector.clone(), sni.clone(), address.clone());
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
                .await
                .map_err(|_| DialError(format!("no answer from {address} within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| DialError(format!("cannot connect to {address}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(sni, tcp))
                .await
                .map_err(|_| DialError(format!("TLS handshake with {address} timed out")))?
                .map_err(|e| DialError(handshake_failure(&address, &e)))?;
            Ok::<_, DialError>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(dial)
        .await
        .map_err(|e| format!("cannot reach trustmesh at {server}: {}", chain(&e)))
}

/// The client certificate chains to the bundle (as the server will check).
fn check_client_identity(
    trust: &ServerTrust,
    provider: &Arc<CryptoProvider>,
    id: &ClientIdentity,
) -> Result<(), String> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let [leaf, intermediates @ ..] = id.chain.as_slice() else {
        return Err("the client certificate file holds no certificate".into());
    };
    verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).map_err(|e| {
        let why = match e {
            rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
            other => other.to_string(),
        };
        format!(
            "the client certificate is not signed by a CA of the server's bundle ({why}); the server would refuse it"
        )
    })?;
    Ok(())
}

/// `https://HOST[:PORT][/]` → (HOST, PORT); IPv6 hosts keep no brackets.
fn split_url(server: &str) -> Result<(String, u16), String> {
    let fail = |why: &str| format!("--server {:?}: {why}", crate::domain::text::quoted(server));
    let uri: http::Uri = server.parse().map_err(|e: http::uri::InvalidUri| fail(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(fail("must be an https:// URL (the API port speaks TLS)"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(fail("must be https://HOST:PORT with no path"));
    }
    let host = uri.host().ok_or_else(|| fail("has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// A handshake failure in words an operator can act on.
fn handshake_failure(address: &str, err: &std::io::Error) -> String {
    let what = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).map_or_else(|| err.to_string(), tls_cause);
    format!("TLS handshake with {address} failed: {what}")
}

/// Why a call failed, with the TLS cause when there is one somewhere in the
/// chain (with TLS 1.3 a refused client certificate surfaces at the first
/// call, not at the handshake).
pub fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        // An io::Error's source() skips the error it wraps.
        let io = e.downcast_ref::<std::io::Error>();
        if let Some(tls) = io.and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>()) {
            return tls_cause(tls);
        }
        // After the handshake the alert reaches us as text only.
        let text = e.to_string();
        if let Some(alert) = text.strip_prefix("received fatal alert: ") {
            return format!(
                "the server refused the connection ({alert}): is the client certificate signed by its bundle?"
            );
        }
        cur = e.source();
    }
    chain(err)
}

fn tls_cause(err: &rustls::Error) -> String {
    match err {
        // A CA of the same name but another key (another trustmesh) fails
        // on the signature rather than on the name.
        rustls::Error::InvalidCertificate(e @ (CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            format!(
                "the server's certificate is not signed by a CA of the bundle (unknown CA, {e:?}); \
                 pass the --ca-file of this server"
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.to_string(),
        rustls::Error::InvalidCertificate(e) => format!("the server's certificate is not valid: {e:?}"),
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the connection ({alert:?}): is the client certificate signed by its bundle?")
        }
        other => other.to_string(),
    }
}

/// An error and its sources, each said once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[derive(Debug)]
struct DialError(String);

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DialError {}

/// The server presented a certificate of another identity.
#[derive(Debug)]
struct NotTheServer {
    presented: String,
    expected: String,
}

impl fmt::Display for NotTheServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate names {}, not the trustmesh server ({}): refusing to send it a token",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for NotTheServer {}

#[derive(Debug)]
struct ServerIdentity {
    trust: ServerTrust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.trust.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_identity(end_entity, &self.trust.expected)
            .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Exactly one URI SAN, and it is one of `expected`.
fn check_identity(der: &[u8], expected: &[SpiffeId]) -> Result<(), NotTheServer> {
    let want = || expected.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ");
    let refuse = |presented: String| NotTheServer { presented, expected: want() };
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| refuse("an unreadable certificate".into()))?;
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            uris.extend(san.general_names.iter().filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            }));
        }
    }
    match uris.as_slice() {
        [one] if expected.iter().any(|id| id.to_string() == *one) => Ok(()),
        [one] => Err(refuse(crate::domain::text::quoted(one))),
        [] => Err(refuse("no URI SAN".into())),
        many => Err(refuse(format!("{} URI SANs", many.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_split_into_host_and_port() {
        assert_eq!(split_url("https://127.0.0.1:4020").unwrap(), ("127.0.0.1".into(), 4020));
        assert_eq!(split_url("https://localhost:4020/").unwrap(), ("localhost".into(), 4020));
        assert_eq!(split_url("https://[::1]:4020").unwrap(), ("::1".into(), 4020));
        assert_eq!(split_url("https://ca.example.org").unwrap(), ("ca.example.org".into(), 443));
        for bad in ["http://127.0.0.1:4020", "127.0.0.1:4020", "https://h:1/api", "not a url"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
        assert_eq!(authority("::1", 1), "[::1]:1");
    }
}
