//! What a node agent and the server need of certificates beyond issuance
//! (SPEC §12): the node SVID, signed by the Transport CA for the reserved
//! identity `spiffe://<td>/trustmesh/agent/<node>`; a CSR for a key the
//! agent keeps; and an issued leaf read back from its DER.

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::issue::{Leaf, issue_leaf};
use super::template::{spiffe_san, subject};
use super::{CaError, IssuedCertificate, PrivateKey, Signer, fingerprint};
use crate::domain::{NodeId, Serial, SpiffeId, TrustDomain};

/// Signs the node SVID of `node` (the X.509-SVID profile, no DNS names) for
/// the key `public_key_der`, whose possession a CSR proved.
pub fn issue_node_svid(
    transport: &Signer,
    node: &NodeId,
    trust_domain: &TrustDomain,
    public_key_der: &[u8],
    lifetime: Duration,
    serial: Serial,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, CaError> {
    let id = node.spiffe_id(trust_domain).map_err(|e| CaError::InvalidCertificate { reason: e.to_string() })?;
    issue_leaf(
        transport,
        &Leaf {
            spiffe_id: Some(&id),
            dns_names: &[],
            ips: &[],
            spki: public_key_der,
            lifetime,
            serial: &serial,
            common_name: None,
            usage: None,
        },
        now,
    )
}

/// A PKCS#10 request (DER) for `key` with `id` as its one URI SAN.
pub fn csr_der(key: &PrivateKey, id: &SpiffeId) -> Result<Vec<u8>, CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = subject(None)?;
    params.subject_alt_names = vec![spiffe_san(id)?];
    let request = params.serialize_request(&key.rcgen()).map_err(CaError::signing)?;
    Ok(request.der().to_vec())
}

impl IssuedCertificate {
    /// Reads an issued leaf back: serial, fingerprint, its one URI SAN (a
    /// SPIFFE ID, if it has one) and validity.
    pub fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let bad = |reason: String| CaError::InvalidCertificate { reason };
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(format!("not DER X.509: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes of trailing data", rest.len())));
        }
        let serial = Serial::from_bytes(cert.raw_serial()).map_err(|e| bad(e.to_string()))?;
        let mut uris = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                uris.extend(san.general_names.iter().filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                }));
            }
        }
        let spiffe_id = match uris.as_slice() {
            [] => None,
            [uri] => Some(SpiffeId::parse(uri).map_err(|e| bad(e.to_string()))?),
            more => return Err(bad(format!("{} URI SANs, expected at most one", more.len()))),
        };
        let time = |t: x509_parser::time::ASN1Time| OffsetDateTime::from_unix_timestamp(t.timestamp());
        Ok(Self {
            der: der.to_vec(),
            serial,
            fingerprint: fingerprint(der),
            spiffe_id,
            not_before: time(cert.validity().not_before).map_err(|e| bad(e.to_string()))?,
            not_after: time(cert.validity().not_after).map_err(|e| bad(e.to_string()))?,
        })
    }
}
