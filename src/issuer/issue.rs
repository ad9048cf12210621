//! Issuance: CSR signing, server-generated certificates, SVIDs for entries
//! and certificates under a profile (`profile_issue.rs`) share one path
//! (policy, deny list, certificate profile, post-sign validation, durable
//! record).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use time::Duration;

use super::auth::{Caller, audit};
use super::{AuditAction, Issuer, IssuerError, MAX_REQUEST_BYTES};
use crate::ca::{self, IssuedCertificate, KeyAlgorithm, LeafRequest, LeafUsage, PrivateKey, Signer, SvidRequest};
use crate::domain::{NodeId, SpiffeId, text};
use crate::policy::{Action, Resource};
use crate::store::{CertRecord, CertStatus, DenyRecord, ProfileKey};

/// `SignCsr`: the caller keeps its key.
#[derive(Debug, Clone)]
pub struct SignRequest {
    pub csr: Vec<u8>,
    /// Must equal the CSR's URI SAN.
    pub spiffe_id: String,
    /// 0 = the default SVID lifetime.
    pub ttl_seconds: u64,
}

/// `GenerateCertificate`: the server makes the key.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub common_name: String,
    pub spiffe_id: String,
    pub dns_names: Vec<String>,
    pub ttl_seconds: u64,
}

/// A certificate just issued, with the chain to present after it.
#[derive(Debug)]
pub struct Issued {
    pub certificate: IssuedCertificate,
    pub record: CertRecord,
    /// Leaf followed by its issuing intermediate.
    pub chain_pem: String,
    /// Only for server-generated keys.
    pub private_key: Option<PrivateKey>,
}

/// What the subject key of a new certificate is.
pub(super) enum SubjectKey {
    /// Proven by a CSR, or generated and kept by the caller of [`Issuer::issue`].
    Public { spki: Vec<u8>, algorithm: String },
    /// An X.509-SVID's EC key, generated here and returned in [`Issued`].
    Generated(PrivateKey),
}

/// One certificate for [`Issuer::issue`], whatever asked for it.
pub(super) struct Issuance<'a> {
    /// `sign_csr`, `issue_certificate` or `obtain_svid`: what is audited, and
    /// what Cedar is asked about the identity.
    pub action: Action,
    pub spiffe_id: Option<&'a SpiffeId>,
    pub key: SubjectKey,
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
    pub common_name: Option<&'a str>,
    pub lifetime: Duration,
    /// `None`: the X.509-SVID profile.
    pub usage: Option<&'a LeafUsage>,
    pub signer: Arc<Signer>,
    /// The profile it is issued under, and whether to keep its record.
    pub profile: Option<(&'a ProfileKey, bool)>,
    /// The node whose agent asked for it: an entry of that node, already
    /// authorized (identity and DNS names) by [`Issuer::sign_for_agent`].
    pub node: Option<&'a NodeId>,
}

impl<'a> Issuance<'a> {
    /// An X.509-SVID from the Services CA.
    pub(super) fn svid(
        issuer: &Issuer,
        action: Action,
        id: &'a SpiffeId,
        key: SubjectKey,
        dns_names: &'a [String],
        common_name: Option<&'a str>,
        lifetime: Duration,
    ) -> Self {
        Self {
            action,
            spiffe_id: Some(id),
            key,
            dns_names,
            ips: &[],
            common_name,
            lifetime,
            usage: None,
            signer: issuer.signers().services.clone(),
            profile: None,
            node: None,
        }
    }

    /// What the audit record and the log name: the SPIFFE ID, else the CN,
    /// else the profile.
    fn target(&self) -> String {
        match (self.spiffe_id, self.common_name, self.profile) {
            (Some(id), _, _) => id.to_string(),
            (None, Some(cn), _) => text::shorten(cn, text::MAX_NAME),
            (None, None, Some((key, _))) => format!("{}/{}", key.mount, key.name),
            (None, None, None) => String::new(),
        }
    }
}

impl Issuer {
    pub async fn sign_csr(&self, caller: &Caller, req: &SignRequest) -> Result<Issued, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::SignCsr);
        let started = Instant::now();
        let target = text::shorten(&req.spiffe_id, 256);
        if req.csr.len() > MAX_REQUEST_BYTES {
            let err =
                IssuerError::InvalidArgument(format!("csr of {} bytes is larger than the 1 MiB limit", req.csr.len()));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        // Who may have this identity signed is decided before the CSR is
        // read; the CSR is checked before a single-use token is spent.
        let id = self.parse_id_audited(caller, ACTION, &req.spiffe_id).await?;
        self.authorize(caller, Action::SignCsr, &Resource::Identity(id.clone()), &target).await?;
        let csr = self
            .audited(caller, ACTION, &target, async {
                ca::parse_csr(&req.csr, &self.cfg.trust_domain).map_err(|e| {
                    tracing::warn!(spiffe_id = %target, error = %e, "CSR validation failed");
                    IssuerError::InvalidArgument(e.to_string())
                })
            })
            .await?;
        if csr.spiffe_id != id {
            let err =
                IssuerError::InvalidArgument(format!("the CSR asks for {} but the request names {id}", csr.spiffe_id));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let key = SubjectKey::Public { spki: csr.public_key_der.clone(), algorithm: csr.key_algorithm.clone() };
        let lifetime = self.lifetime(req.ttl_seconds);
        let issuance = Issuance::svid(self, Action::SignCsr, &id, key, &csr.dns_names, None, lifetime);
        let issued = self.issue(caller, issuance).await?;
        self.metrics.sign_duration(started.elapsed().as_secs_f64());
        Ok(issued)
    }

    pub async fn generate(&self, caller: &Caller, req: &GenerateRequest) -> Result<Issued, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::IssueCertificate);
        let id = self.parse_id_audited(caller, ACTION, &req.spiffe_id).await?;
        if req.common_name.len() > 64 {
            let err = IssuerError::InvalidArgument("common name longer than 64 characters".into());
            return self.refuse(caller, ACTION, &id.to_string(), err).await;
        }
        let started = Instant::now();
        let key = PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new())?;
        let cn = (!req.common_name.is_empty()).then_some(req.common_name.as_str());
        let lifetime = self.lifetime(req.ttl_seconds);
        let key = SubjectKey::Generated(key);
        let issuance = Issuance::svid(self, Action::IssueCertificate, &id, key, &req.dns_names, cn, lifetime);
        let issued = self.issue(caller, issuance).await?;
        self.metrics.sign_duration(started.elapsed().as_secs_f64());
        Ok(issued)
    }

    /// The one issuance path: authorization of the identity, the deny list,
    /// signing and its post-sign check, the durable record with its audit
    /// record, metrics and the "Certificate issued" log. Everything about the
    /// request's names and key is checked before: a single-use token is spent
    /// here, right before the signature.
    pub(super) async fn issue(&self, caller: &Caller, i: Issuance<'_>) -> Result<Issued, IssuerError> {
        let target = i.target();
        let action_name = AuditAction::from(i.action);
        if let (Some(id), None) = (i.spiffe_id, i.node) {
            self.authorize(caller, i.action, &Resource::Identity(id.clone()), &target).await?;
        }
        if let Err(e) = text::bounded_list("DNS names", i.dns_names, text::MAX_DNS_NAMES, 253) {
            return self.refuse(caller, action_name, &target, IssuerError::InvalidArgument(e)).await;
        }
        // A DNS SAN makes the certificate valid for that host name: each one
        // is the policy's to allow for this identity (admins by default
        // only), unless a profile, which names its own domains, allowed it.
        if let (Some(id), None, None) = (i.spiffe_id, &i.profile, i.node) {
            for name in i.dns_names {
                let resource = Resource::DnsName { name: name.clone(), identity: id.clone() };
                self.authorize(caller, Action::UseDnsName, &resource, &target).await?;
            }
        }
        // The deny list in memory answers at once; the store's insert below
        // checks it again atomically with any denial still in flight.
        if i.spiffe_id.is_some()
            && let Some(denial) = self.denial(&target)
        {
            return self.refuse_denied(caller, action_name, &target, denial).await;
        }
        let (spki, algorithm, private_key) = match i.key {
            SubjectKey::Public { spki, algorithm } => (spki, algorithm, None),
            SubjectKey::Generated(k) => (k.public_key_der(), k.algorithm().to_string(), Some(k)),
        };
        // Everything about the request is checked: a single-use token is spent now.
        self.spend(caller).await?;
        let now = self.now();
        let serial = self.serials.next_serial()?;
        let signer = i.signer;
        let certificate = self
            .audited(caller, action_name, &target, async {
                let signed = match i.usage {
                    None => {
                        let id = i.spiffe_id.ok_or_else(|| IssuerError::Internal("an SVID without an ID".into()))?;
                        let request = SvidRequest {
                            spiffe_id: id,
                            dns_names: i.dns_names,
                            public_key_der: &spki,
                            lifetime: i.lifetime,
                            serial,
                            common_name: i.common_name,
                        };
                        ca::issue_svid(&signer, &request, now)
                    }
                    Some(usage) => {
                        let request = LeafRequest {
                            spiffe_id: i.spiffe_id,
                            common_name: i.common_name,
                            dns_names: i.dns_names,
                            ips: i.ips,
                            public_key_der: &spki,
                            lifetime: i.lifetime,
                            serial,
                            usage,
                        };
                        ca::issue_leaf_certificate(&signer, &request, now)
                    }
                };
                signed.map_err(|e| match e {
                    ca::CaError::DnsName { .. } | ca::CaError::CommonName { .. } | ca::CaError::Lifetime { .. } => {
                        IssuerError::InvalidArgument(e.to_string())
                    }
                    other => IssuerError::Ca(other),
                })
            })
            .await?;
        let profile = i.profile.map(|(key, _)| key.clone());
        let store = i.profile.is_none_or(|(_, store)| store) || i.spiffe_id.is_some();
        let mut record = cert_record(&certificate, &signer.cert.fingerprint, profile, i.common_name);
        record.node = i.node.map(ToString::to_string);
        let reason = format!("serial {} until {}", record.serial, record.not_after);
        let log = audit(caller, action_name, &target, "ok", &reason, now.unix_timestamp());
        if !store {
            // no_store: the audit record is what stays of it, durably.
            self.store.append_audit(&log).await?;
        } else if !self.store.record_issuance(&record, &log).await? {
            let denial = self.store.denied(&target).await?.unwrap_or_else(|| DenyRecord {
                spiffe_id: target.clone(),
                reason: "denied while the certificate was being issued".into(),
                denied_at: now.unix_timestamp(),
                denied_by: String::new(),
            });
            return self.refuse_denied(caller, action_name, &target, denial).await;
        }
        self.metrics.issued(&signer.cert.common_name, &algorithm);
        tracing::info!(
            fingerprint = %certificate.fingerprint,
            serial = %record.serial,
            spiffe_id = %record.spiffe_id,
            subject = %target,
            ttl_seconds = (certificate.not_after - certificate.not_before).whole_seconds(),
            issuer = %signer.cert.common_name,
            algorithm = %algorithm,
            actor = %caller.actor(),
            "Certificate issued"
        );
        let chain_pem = format!("{}{}", certificate.to_pem(), signer.cert.to_pem());
        Ok(Issued { certificate, record, chain_pem, private_key })
    }

    async fn refuse_denied<T>(
        &self,
        caller: &Caller,
        action_name: AuditAction,
        target: &str,
        denial: DenyRecord,
    ) -> Result<T, IssuerError> {
        tracing::warn!(
            spiffe_id = %target,
            reason = %denial.reason,
            denied_at = denial.denied_at,
            "CSR signing denied — identity is on the deny list"
        );
        let err = IssuerError::Denied { spiffe_id: target.to_string(), reason: denial.reason };
        self.refuse(caller, action_name, target, err).await
    }

    /// The requested lifetime, or the default; capped by the configured maximum.
    pub(super) fn lifetime(&self, ttl_seconds: u64) -> Duration {
        let requested = if ttl_seconds == 0 {
            self.cfg.svid_ttl
        } else {
            Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX))
        };
        requested.min(self.cfg.max_cert_ttl)
    }
}

pub(super) fn cert_record(
    cert: &IssuedCertificate,
    issuer_id: &str,
    profile: Option<ProfileKey>,
    common_name: Option<&str>,
) -> CertRecord {
    CertRecord {
        serial: cert.serial.to_string(),
        spiffe_id: cert.spiffe_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        issuer_id: issuer_id.to_string(),
        fingerprint: cert.fingerprint.clone(),
        not_before: cert.not_before.unix_timestamp(),
        not_after: cert.not_after.unix_timestamp(),
        status: CertStatus::Active,
        revoked_at: None,
        revocation_reason: None,
        cert_der: cert.der.clone(),
        profile,
        common_name: common_name.map(str::to_string),
        node: None,
    }
}
