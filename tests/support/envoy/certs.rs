//! The certificates an Envoy holds, as its admin `/certs` lists them: the
//! leaf certificates of its TLS contexts and the CAs of its validation
//! contexts, serials normalized as `support::openssl` does.

use serde_json::Value;

use super::Envoy;
use crate::support::openssl::normalize_serial;

impl Envoy {
    /// `/certs` as JSON.
    pub fn certs(&self) -> Value {
        let r = self.admin_get("/certs");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/certs is not JSON ({e}): {}", r.body))
    }

    /// The leaf certificates Envoy has loaded: (serial, URI SANs), one per TLS
    /// context that has a certificate.
    pub fn leaf_certs(&self) -> Vec<CertInfo> {
        let mut out = Vec::new();
        for ctx in self.certs()["certificates"].as_array().cloned().unwrap_or_default() {
            for c in ctx["cert_chain"].as_array().cloned().unwrap_or_default() {
                out.push(CertInfo::from_json(&c));
            }
        }
        out
    }

    /// The serials of loaded leaf certificates whose URI SAN is `spiffe_id`.
    pub fn serials_of(&self, spiffe_id: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.leaf_certs().into_iter().filter(|c| c.uris.iter().any(|u| u == spiffe_id)).map(|c| c.serial).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The CA certificates loaded in validation contexts: serials.
    pub fn ca_serials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ctx in self.certs()["certificates"].as_array().cloned().unwrap_or_default() {
            for c in ctx["ca_cert"].as_array().cloned().unwrap_or_default() {
                out.push(CertInfo::from_json(&c).serial);
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A certificate as `/certs` lists it.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub serial: String,
    pub uris: Vec<String>,
    pub path: String,
    pub expiration: String,
}

impl CertInfo {
    fn from_json(c: &Value) -> CertInfo {
        let uris = c["subject_alt_names"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["uri"].as_str().map(str::to_string))
            .collect();
        CertInfo {
            serial: normalize_serial(c["serial_number"].as_str().unwrap_or_default()),
            uris,
            path: c["path"].as_str().unwrap_or_default().to_string(),
            expiration: c["expiration_time"].as_str().unwrap_or_default().to_string(),
        }
    }
}
