//! What the admin commands print: views of the API's messages, serialised
//! as JSON for `--output json` or rendered as text.

use std::path::Path;

use serde::Serialize;

use super::output::{days_left, rfc3339};
use crate::proto::admin::v1 as pb;

#[derive(Serialize)]
pub(super) struct CaView {
    pub(super) role: String,
    pub(super) common_name: String,
    pub(super) fingerprint: String,
    pub(super) algorithm: String,
    pub(super) expires: String,
    pub(super) days_remaining: i64,
    pub(super) active: bool,
    pub(super) key_online: bool,
    /// prepared, active, old, tainted or revoked.
    pub(super) state: String,
    pub(super) live_certificates: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) parent: String,
}

impl From<&pb::CaInfo> for CaView {
    fn from(c: &pb::CaInfo) -> Self {
        Self {
            role: c.role.clone(),
            common_name: c.common_name.clone(),
            fingerprint: c.fingerprint.clone(),
            algorithm: c.algorithm.clone(),
            expires: rfc3339(c.not_after),
            days_remaining: days_left(c.not_after),
            active: c.active,
            key_online: c.key_online,
            state: c.state.clone(),
            live_certificates: c.live_certificates,
            parent: c.parent.clone(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct StatusView {
    pub(super) health: String,
    pub(super) trust_domain: String,
    pub(super) root: Option<CaView>,
    pub(super) intermediates: Vec<CaView>,
    pub(super) active_certificates: u64,
    pub(super) denied_identities: u64,
    pub(super) warnings: Vec<String>,
}

impl From<&pb::StatusResponse> for StatusView {
    fn from(s: &pb::StatusResponse) -> Self {
        Self {
            health: s.health.clone(),
            trust_domain: s.trust_domain.clone(),
            root: s.root.as_ref().map(CaView::from),
            intermediates: s.intermediates.iter().map(CaView::from).collect(),
            active_certificates: s.active_certificates,
            denied_identities: s.denied_identities,
            warnings: s.warnings.clone(),
        }
    }
}

pub(super) fn render_status(s: &StatusView) -> String {
    let mut out = format!("PKI Status: {}\nTrust Domain: {}\n", s.health, s.trust_domain);
    if let Some(r) = &s.root {
        out.push_str(&format!(
            "Root CA:\n  Fingerprint: {}\n  Common Name: {}\n  Algorithm:   {}\n  Expires:     {} ({} days remaining){}\n",
            r.fingerprint,
            r.common_name,
            r.algorithm,
            r.expires,
            r.days_remaining,
            if r.key_online { "" } else { "\n  Key:         offline" }
        ));
    }
    out.push_str(&format!("Intermediate CAs: {}\n", s.intermediates.len()));
    for i in &s.intermediates {
        out.push_str(&format!(
            "  - {} ({}) {} expires {} ({} days){}\n",
            i.common_name,
            i.fingerprint,
            i.role,
            i.expires.get(..10).unwrap_or(&i.expires),
            i.days_remaining,
            if i.active { " active" } else { "" }
        ));
    }
    out.push_str(&format!(
        "Active Certificates: {}\nDenied Identities:   {}\n",
        s.active_certificates, s.denied_identities
    ));
    for w in &s.warnings {
        out.push_str(&format!("Warning: {w}\n"));
    }
    out
}

#[derive(Serialize)]
pub(super) struct CertView {
    pub(super) serial: String,
    pub(super) spiffe_id: String,
    pub(super) fingerprint: String,
    pub(super) issuer: String,
    pub(super) not_before: String,
    pub(super) expires: String,
    pub(super) status: String,
    pub(super) revoked_at: Option<String>,
    pub(super) revocation_reason: Option<String>,
    /// The subject CN, for a certificate issued under a profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) common_name: Option<String>,
    /// `mount/name` of the profile it was issued under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) profile: Option<String>,
}

impl CertView {
    /// What a listing names the certificate by: its SPIFFE ID, else `CN=…`.
    pub(super) fn subject(&self) -> String {
        match (&self.spiffe_id, &self.common_name) {
            (id, _) if !id.is_empty() => id.clone(),
            (_, Some(cn)) => format!("CN={cn}"),
            _ => String::new(),
        }
    }
}

impl From<&pb::CertificateInfo> for CertView {
    fn from(c: &pb::CertificateInfo) -> Self {
        Self {
            serial: c.serial.clone(),
            spiffe_id: c.spiffe_id.clone(),
            fingerprint: c.fingerprint.clone(),
            issuer: c.issuer.clone(),
            not_before: rfc3339(c.not_before),
            expires: rfc3339(c.not_after),
            status: c.status.clone(),
            revoked_at: (c.revoked_at > 0).then(|| rfc3339(c.revoked_at)),
            revocation_reason: (!c.revocation_reason.is_empty()).then(|| c.revocation_reason.clone()),
            common_name: (!c.common_name.is_empty()).then(|| c.common_name.clone()),
            profile: (!c.profile.is_empty()).then(|| c.profile.clone()),
        }
    }
}

#[derive(Serialize)]
pub(super) struct IssuedView {
    #[serde(flatten)]
    pub(super) certificate: Option<CertView>,
    pub(super) cert_file: String,
    pub(super) key_file: Option<String>,
}

impl IssuedView {
    pub(super) fn new(c: Option<&pb::CertificateInfo>, cert: &Path, key: Option<&Path>) -> Self {
        Self {
            certificate: c.map(CertView::from),
            cert_file: cert.display().to_string(),
            key_file: key.map(|k| k.display().to_string()),
        }
    }

    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.certificate {
            let label = if c.spiffe_id.is_empty() { "Subject:    " } else { "SPIFFE ID:  " };
            out.push_str(&format!(
                "  Serial:      {}\n  Fingerprint: {}\n  {label} {}\n  Expires:     {}\n",
                c.serial,
                c.fingerprint,
                c.subject(),
                c.expires
            ));
            if let Some(profile) = &c.profile {
                out.push_str(&format!("  Profile:     {profile}\n"));
            }
        }
        out.push_str(&format!("  Cert:        {}\n", self.cert_file));
        if let Some(k) = &self.key_file {
            out.push_str(&format!("  Key:         {k}\n"));
        }
        out
    }
}

#[derive(Serialize)]
pub(super) struct DeniedView {
    pub(super) spiffe_id: String,
    pub(super) reason: String,
    pub(super) denied_at: String,
    pub(super) denied_by: String,
}
