//! Attestation: turning how a caller connected into the selectors it holds
//! (SPEC §3). Transports put the raw peer facts into request extensions
//! ([`UnixPeer`], [`TlsPeer`]); the servers ask this module what they prove.
//!
//! * Local socket: [`unix_selectors`] (or an [`Attestor`] with its own `/proc`
//!   and account files) reads `/proc/<pid>` and the account files:
//!   `unix:uid`, `unix:gid`, `unix:user`, `unix:group`, `unix:path`,
//!   `unix:sha256`. PID reuse is guarded: the process start time is read
//!   before and after the attributes, and the process's effective uid must be
//!   the connection's; a process that changed or vanished proves nothing.
//! * TLS port: [`token_selectors`] (`token:sub:NAME`) for a bearer token and
//!   [`x509_selectors`] (`x509:spiffe-id:ID`) for a client certificate.
//!
//! Blocking: `/proc` reads and the (cached) executable hash run on the
//! calling thread; async servers call from `spawn_blocking`.

mod caller;
mod hash;
mod unix;

use std::collections::BTreeSet;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::domain::{Selector, SelectorKind, SpiffeId};

pub use caller::{Attestation, BearerVerifier, CallerAttestor, LocalAttestor, bearer, vault_token};
pub use unix::{Attestor, unix_selectors};

/// Kernel peer credentials of a local-socket connection (`SO_PEERCRED`),
/// taken when the connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// The client certificate (leaf DER) of a TLS connection, if one was presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPeer {
    pub certificate: Option<Vec<u8>>,
}

/// Why a caller could not be attested. The caller then gets no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("the connection carries no process id (SO_PEERCRED gave none)")]
    NoPid,
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("process {pid} changed while it was attested (start time {before}, then {after}): pid reuse")]
    PidReused { pid: i32, before: u64, after: u64 },
    #[error("process {pid} runs as uid {found}, not as the connection's uid {expected}")]
    UidMismatch { pid: i32, expected: u32, found: u32 },
    #[error("cannot parse {path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("invalid client certificate: {0}")]
    Certificate(String),
}

/// Largest client certificate looked at.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// `token:sub:NAME` of a verified bearer token's subject. A subject that is
/// no valid selector value (empty, over 256 characters, control characters)
/// yields no selector, so it matches no entry.
pub fn token_selectors(sub: &str) -> BTreeSet<Selector> {
    Selector::new(SelectorKind::TokenSub, sub).into_iter().collect()
}

/// `x509:spiffe-id:ID` of a client certificate (DER) with exactly one URI SAN
/// that is a valid SPIFFE ID. The caller has verified the certificate chain.
pub fn x509_selectors(cert_der: &[u8]) -> Result<BTreeSet<Selector>, AttestError> {
    let fail = |reason: String| AttestError::Certificate(reason);
    if cert_der.len() > MAX_CERT_BYTES {
        return Err(fail(format!("{} bytes is more than the {MAX_CERT_BYTES}-byte limit", cert_der.len())));
    }
    let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|e| fail(format!("not DER X.509: {e}")))?;
    if !rest.is_empty() {
        return Err(fail(format!("{} bytes of trailing data after the certificate", rest.len())));
    }
    let san = cert.subject_alternative_name().map_err(|e| fail(format!("bad subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(fail(format!("expected exactly one URI SAN, found {}", uris.len())));
    };
    let id = SpiffeId::parse(uri).map_err(|e| fail(e.to_string()))?;
    let selector = Selector::new(SelectorKind::X509SpiffeId, &id.to_string()).map_err(|e| fail(e.to_string()))?;
    Ok(BTreeSet::from([selector]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};

    use super::*;

    fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(Ia5String::try_from(u).unwrap())
    }

    #[test]
    fn token_subjects() {
        let got: Vec<String> = token_selectors("node-a").iter().map(ToString::to_string).collect();
        assert_eq!(got, ["token:sub:node-a"]);
        assert!(token_selectors("").is_empty());
        assert!(token_selectors(&"x".repeat(257)).is_empty());
        assert!(token_selectors("a\nb").is_empty());
    }

    #[test]
    fn client_certificate_with_one_spiffe_id() {
        let der = cert(vec![uri("spiffe://example.org/web"), SanType::DnsName("web".try_into().unwrap())]);
        let got: Vec<String> = x509_selectors(&der).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(got, ["x509:spiffe-id:spiffe://example.org/web"]);
    }

    #[test]
    fn bad_client_certificates() {
        let two = cert(vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")]);
        let mut trailing = cert(vec![uri("spiffe://example.org/a")]);
        trailing.push(0);
        for (der, needle) in [
            (cert(vec![]), "found 0"),
            (two, "found 2"),
            (cert(vec![uri("https://example.org/a")]), "spiffe://"),
            (cert(vec![uri("spiffe://example.org/a/../b")]), "invalid SPIFFE ID"),
            (b"garbage".to_vec(), "not DER"),
            (trailing, "trailing"),
            (vec![0x30; MAX_CERT_BYTES + 1], "limit"),
        ] {
            let err = x509_selectors(&der).unwrap_err().to_string();
            assert!(err.starts_with("invalid client certificate") && err.contains(needle), "{needle}: {err}");
        }
    }
}
