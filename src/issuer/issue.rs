//! Issuance: CSR signing and server-generated certificates share one path
//! (policy, deny list, profile, post-sign validation, durable record).

use std::time::Instant;

use time::Duration;

use super::auth::{Caller, audit};
use super::{AuditAction, Issuer, IssuerError, MAX_REQUEST_BYTES};
use crate::ca::{self, IssuedCertificate, KeyAlgorithm, PrivateKey, SvidRequest};
use crate::domain::{SpiffeId, text};
use crate::policy::{Action, Resource};
use crate::store::{CertRecord, CertStatus, DenyRecord};

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
    Csr { spki: Vec<u8>, algorithm: String },
    Generated(PrivateKey),
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
        let key = SubjectKey::Csr { spki: csr.public_key_der.clone(), algorithm: csr.key_algorithm.clone() };
        let issued = self.issue(caller, Action::SignCsr, &id, key, &csr.dns_names, None, req.ttl_seconds).await?;
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
        let issued = self
            .issue(
                caller,
                Action::IssueCertificate,
                &id,
                SubjectKey::Generated(key),
                &req.dns_names,
                cn,
                req.ttl_seconds,
            )
            .await?;
        self.metrics.sign_duration(started.elapsed().as_secs_f64());
        Ok(issued)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn issue(
        &self,
        caller: &Caller,
        action: Action,
        id: &SpiffeId,
        key: SubjectKey,
        dns_names: &[String],
        common_name: Option<&str>,
        ttl_seconds: u64,
    ) -> Result<Issued, IssuerError> {
        let target = id.to_string();
        let action_name = AuditAction::from(action);
        self.authorize(caller, action, &Resource::Identity(id.clone()), &target).await?;
        if let Err(e) = text::bounded_list("DNS names", dns_names, text::MAX_DNS_NAMES, 253) {
            return self.refuse(caller, action_name, &target, IssuerError::InvalidArgument(e)).await;
        }
        // A DNS SAN makes the certificate valid for that host name: each one
        // is the policy's to allow for this identity (admins by default only).
        for name in dns_names {
            let resource = Resource::DnsName { name: name.clone(), identity: id.clone() };
            self.authorize(caller, Action::UseDnsName, &resource, &target).await?;
        }
        // The deny list in memory answers at once; the store's insert below
        // checks it again atomically with any denial still in flight.
        if let Some(denial) = self.denial(&target) {
            return self.refuse_denied(caller, action_name, &target, denial).await;
        }
        let lifetime = self.lifetime(ttl_seconds);
        let (spki, algorithm, private_key) = match key {
            SubjectKey::Csr { spki, algorithm } => (spki, algorithm, None),
            SubjectKey::Generated(k) => (k.public_key_der(), k.algorithm().to_string(), Some(k)),
        };
        // Everything about the request is checked: a single-use token is spent now.
        self.spend(caller).await?;
        let signer = self.signers().services.clone();
        let now = self.now();
        let request = SvidRequest {
            spiffe_id: id,
            dns_names,
            public_key_der: &spki,
            lifetime,
            serial: self.serials.next_serial()?,
            common_name,
        };
        let certificate = self
            .audited(caller, action_name, &target, async {
                ca::issue_svid(&signer, &request, now).map_err(|e| match e {
                    ca::CaError::DnsName { .. } | ca::CaError::CommonName { .. } | ca::CaError::Lifetime { .. } => {
                        IssuerError::InvalidArgument(e.to_string())
                    }
                    other => IssuerError::Ca(other),
                })
            })
            .await?;
        let record = cert_record(&certificate, &signer.cert.fingerprint);
        let reason = format!("serial {} until {}", record.serial, record.not_after);
        let log = audit(caller, action_name, &target, "ok", &reason, now.unix_timestamp());
        if !self.store.record_issuance(&record, &log).await? {
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
            spiffe_id = %target,
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
    fn lifetime(&self, ttl_seconds: u64) -> Duration {
        let requested = if ttl_seconds == 0 {
            self.cfg.svid_ttl
        } else {
            Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX))
        };
        requested.min(self.cfg.max_cert_ttl)
    }
}

fn cert_record(cert: &IssuedCertificate, issuer_id: &str) -> CertRecord {
    CertRecord {
        serial: cert.serial.to_string(),
        spiffe_id: cert.spiffe_id.to_string(),
        issuer_id: issuer_id.to_string(),
        fingerprint: cert.fingerprint.clone(),
        not_before: cert.not_before.unix_timestamp(),
        not_after: cert.not_after.unix_timestamp(),
        status: CertStatus::Active,
        revoked_at: None,
        revocation_reason: None,
        cert_der: cert.der.clone(),
    }
}
