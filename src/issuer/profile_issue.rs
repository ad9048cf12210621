//! Issuing under a profile (SPEC §15): what the PKI API's `issue/:role` and
//! `sign/:role`, `pki cert generate --profile` and `SignCsr` with a profile
//! do. The request is checked against the profile — its common name, DNS,
//! IP and URI SANs, its key (a CSR's, or the one the server will make), its
//! lifetime — and then goes through the one issuance path (`issue.rs`).
//!
//! Which CA signs: a certificate with a SPIFFE ID is an X.509-SVID of the
//! mesh, signed by the Services CA; one without (a tenant's client
//! certificate with a CN) is signed by the profiles CA, which no bundle or
//! CRL set of the mesh holds, so it never passes as an SVID there.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use time::Duration;

use super::auth::Caller;
use super::issue::{Issuance, SubjectKey};
use super::profiles::key_of;
use super::{AuditAction, Issued, Issuer, IssuerError, MAX_REQUEST_BYTES};
use crate::ca::{self, LeafKey, LeafUsage, Signer};
use crate::domain::profile::Lifetime;
use crate::domain::{KeyShape, MAX_ID_LEN, Profile, SpiffeId, text};
use crate::policy::{Action, Resource};

/// A certificate asked for under a profile (a Vault `issue` or `sign` body).
#[derive(Debug, Clone, Default)]
pub struct ProfileRequest {
    pub mount: String,
    pub profile: String,
    /// "" for none.
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_sans: Vec<String>,
    /// At most one: the SPIFFE ID.
    pub uri_sans: Vec<String>,
    /// 0: the profile's `ttl`.
    pub ttl_seconds: u64,
    /// Keep a host-name CN out of the DNS SANs.
    pub exclude_cn_from_sans: bool,
    /// `sign`: the caller's CSR (PEM or DER). `None`: `issue`, the server makes the key.
    pub csr: Option<Vec<u8>>,
}

/// A certificate issued under a profile, and what a Vault client gets with it.
#[derive(Debug)]
pub struct ProfileIssued {
    pub issued: Issued,
    /// The key the server made (`issue`); never logged.
    pub private_key: Option<LeafKey>,
    /// The issuing CA, PEM.
    pub issuing_ca: String,
    /// The issuing CA and its parents up to the root, PEM each.
    pub ca_chain: Vec<String>,
    /// Vault's warnings (a lifetime clamped to the profile's maximum).
    pub warnings: Vec<String>,
}

/// The request after the profile judged it.
struct Plan {
    common_name: Option<String>,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    spiffe_id: Option<SpiffeId>,
    key: PlannedKey,
    lifetime: Lifetime,
    usage: LeafUsage,
}

enum PlannedKey {
    Csr { spki: Vec<u8>, algorithm: String },
    Generate(KeyShape),
}

impl Issuer {
    /// Issues (no CSR) or signs (with one) a certificate under a profile.
    pub async fn issue_with_profile(
        &self,
        caller: &Caller,
        req: &ProfileRequest,
    ) -> Result<ProfileIssued, IssuerError> {
        let action = if req.csr.is_some() { Action::SignCsr } else { Action::IssueCertificate };
        let audit_action = AuditAction::from(action);
        let started = Instant::now();
        let what = format!("{}/{}", text::quoted(&req.mount), text::quoted(&req.profile));
        self.bounded(caller, audit_action, &what, &[("common_name", &req.common_name, text::MAX_NAME)]).await?;
        let lists = [
            ("alt_names", &req.dns_names, text::MAX_DNS_NAMES, 253),
            ("ip_sans", &req.ip_sans, text::MAX_DNS_NAMES, 64),
            ("uri_sans", &req.uri_sans, text::MAX_LISTED_IDS, MAX_ID_LEN),
        ];
        for (field, values, max, item_max) in lists {
            if let Err(e) = text::bounded_list(field, values, max, item_max) {
                return self.refuse(caller, audit_action, &what, IssuerError::InvalidArgument(e)).await;
            }
        }
        if let Some(csr) = req.csr.as_ref().filter(|c| c.len() > MAX_REQUEST_BYTES) {
            let err =
                IssuerError::InvalidArgument(format!("csr of {} bytes is larger than the 1 MiB limit", csr.len()));
            return self.refuse(caller, audit_action, &what, err).await;
        }
        let r = self.profile_ref(caller, audit_action, &req.mount, &req.profile).await?;
        let target = r.to_string();
        // Who may use the profile is decided before anything of the request is read.
        self.authorize(caller, Action::UseProfile, &Resource::Profile(r.clone()), &target).await?;
        let key = key_of(&r);
        let Some(profile) = self.profiles.get(&key) else {
            let err = IssuerError::InvalidArgument(format!("unknown role: {}", r.name()));
            return self.refuse(caller, audit_action, &target, err).await;
        };
        let plan = self.audited(caller, audit_action, &target, async { self.plan(&profile, req) }).await?;
        let signer = self.audited(caller, audit_action, &target, async { self.signer_for(&plan) }).await?;
        let (subject_key, private_key) = match plan.key {
            PlannedKey::Csr { spki, algorithm } => (SubjectKey::Public { spki, algorithm }, None),
            PlannedKey::Generate(shape) => {
                let made = self.audited(caller, audit_action, &target, generate(shape)).await?;
                let public = SubjectKey::Public { spki: made.public_key_der().to_vec(), algorithm: shape.to_string() };
                (public, Some(made))
            }
        };
        let lifetime = Duration::seconds(i64::try_from(plan.lifetime.seconds).unwrap_or(i64::MAX));
        let issuance = Issuance {
            action,
            spiffe_id: plan.spiffe_id.as_ref(),
            key: subject_key,
            dns_names: &plan.dns_names,
            ips: &plan.ips,
            common_name: plan.common_name.as_deref(),
            lifetime,
            usage: Some(&plan.usage),
            signer: signer.clone(),
            profile: Some((&key, !profile.no_store)),
            node: None,
        };
        let issued = self.issue(caller, issuance).await?;
        self.metrics.sign_duration(started.elapsed().as_secs_f64());
        Ok(ProfileIssued {
            issued,
            private_key,
            issuing_ca: signer.cert.to_pem(),
            ca_chain: signer.chain().map(|c| c.to_pem()).collect(),
            warnings: plan.lifetime.warning.into_iter().collect(),
        })
    }

    /// Checks the request against the profile and settles every name, the
    /// key, the lifetime and the usage of the certificate.
    fn plan(&self, profile: &Profile, req: &ProfileRequest) -> Result<Plan, IssuerError> {
        let bad = IssuerError::InvalidArgument;
        let csr = match &req.csr {
            Some(bytes) => Some(ca::parse_csr_request(bytes).map_err(|e| bad(e.to_string()))?),
            None => None,
        };
        if let Some(c) = &csr {
            profile.accepts_key(c.key).map_err(bad)?;
        }
        let common_name = match (req.common_name.trim(), &csr) {
            ("", Some(c)) if profile.use_csr_common_name => c.common_name.clone(),
            ("", _) => None,
            (cn, _) => Some(cn.to_string()),
        };
        match &common_name {
            Some(cn) => profile.allows_common_name(cn).map_err(bad)?,
            None if profile.require_cn => {
                return Err(bad("the common_name field is required, or must be provided in a CSR with \
                     \"use_csr_common_name\" set to true, unless \"require_cn\" is set to false"
                    .into()));
            }
            None => {}
        }
        let mut dns_names = req.dns_names.clone();
        let mut ip_texts = req.ip_sans.clone();
        let mut uris = req.uri_sans.clone();
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(c) = csr.as_ref().filter(|_| profile.use_csr_sans) {
            dns_names.extend(c.dns_names.iter().cloned());
            uris.extend(c.uris.iter().cloned());
            ips.extend(c.ips.iter().copied());
        }
        // As Vault does: a CN that is a host name is also a DNS SAN.
        if let Some(cn) = common_name.as_ref().filter(|cn| !req.exclude_cn_from_sans && ca::check_dns_name(cn).is_ok())
        {
            dns_names.insert(0, cn.clone());
        }
        dedup(&mut dns_names);
        for name in &dns_names {
            profile.allows_dns_name(name).map_err(bad)?;
            ca::check_dns_name(name).map_err(|e| bad(e.to_string()))?;
        }
        for value in ip_texts.drain(..) {
            let ip = value
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| bad(format!("the value {:?} is not a valid IP address", text::quoted(&value))))?;
            ips.push(ip);
        }
        for ip in &ips {
            profile.allows_ip(*ip).map_err(bad)?;
        }
        dedup(&mut uris);
        let spiffe_id = match uris.as_slice() {
            [] => None,
            [uri] => {
                profile.allows_uri(uri).map_err(bad)?;
                let id = SpiffeId::parse(uri)?;
                if !id.is_member_of(&self.cfg.trust_domain) {
                    return Err(bad(format!("{id} is not in trust domain {}", self.cfg.trust_domain)));
                }
                Some(id)
            }
            more => {
                return Err(bad(format!(
                    "{} URI SANs requested; a certificate carries at most one, its SPIFFE ID",
                    more.len()
                )));
            }
        };
        let lifetime = profile.lifetime(
            req.ttl_seconds,
            self.cfg.svid_ttl.whole_seconds().unsigned_abs(),
            self.cfg.max_cert_ttl.whole_seconds().unsigned_abs(),
        );
        let key_usages: Vec<&str> = profile.key_usage.iter().map(String::as_str).collect();
        let backdate = Duration::seconds(i64::try_from(profile.not_before_duration).unwrap_or(0));
        let usage = LeafUsage::from_names(&key_usages, &profile.extended_key_usages(), backdate)?;
        let key = match csr {
            Some(c) => PlannedKey::Csr { spki: c.public_key_der, algorithm: c.key_algorithm },
            None => PlannedKey::Generate(profile.generated_key().map_err(bad)?),
        };
        Ok(Plan { common_name, dns_names, ips, spiffe_id, key, lifetime, usage })
    }

    /// The default issuer of the PKI API's mounts (what `ca`, `ca/pem` and
    /// `crl` answer with): the profiles CA, or the Services CA where there is none.
    pub fn pki_issuer_certificate(&self) -> ca::CaCertificate {
        let signers = self.signers();
        signers.profiles.as_ref().unwrap_or(&signers.services).cert.clone()
    }

    /// The Services CA for a certificate with a SPIFFE ID, the profiles CA otherwise.
    fn signer_for(&self, plan: &Plan) -> Result<Arc<Signer>, IssuerError> {
        let signers = self.signers();
        if plan.spiffe_id.is_some() {
            return Ok(signers.services.clone());
        }
        signers.profiles.clone().ok_or_else(|| {
            IssuerError::FailedPrecondition(
                "there is no profiles CA to sign a certificate without a SPIFFE ID: it is created at start when \
                 the root key is online (with an imported intermediate, request a SPIFFE ID in uri_sans)"
                    .into(),
            )
        })
    }
}

/// A key of `shape`; RSA (up to seconds of CPU) off the async workers.
async fn generate(shape: KeyShape) -> Result<LeafKey, IssuerError> {
    let make = move || LeafKey::generate(shape, &ring::rand::SystemRandom::new()).map_err(IssuerError::from);
    match shape {
        KeyShape::Rsa(_) => tokio::task::spawn_blocking(make)
            .await
            .map_err(|e| IssuerError::Internal(format!("key generation stopped: {e}")))?,
        _ => make(),
    }
}

/// Keeps the first of each repeated value.
fn dedup(values: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    values.retain(|v| seen.insert(v.clone()));
}
