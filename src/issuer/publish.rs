//! Building a [`TrustSnapshot`]: a pure function of what is in memory — the
//! CA half (views and bundle, rebuilt only when a CA changes or expires), the
//! keys that sign CRLs, the revocation state, the imported CRLs and the
//! JWKS. No store, no clock: `now` comes in, the snapshot goes out.

use std::collections::HashMap;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use super::revocation::RevocationView;
use crate::ca::{self, CaCertificate, CaError, Crl, CrlEntry, Signer};
use crate::domain::{CaRole, RevocationReason};
use crate::store::CaRecord;
use crate::trust::{CaView, ProfilesTrust, TrustSnapshot};

/// The CA half of a snapshot: every unexpired CA, root first, then the
/// intermediates oldest first, and the PEM bundles of those not revoked: the
/// mesh's, and the profiles CAs' apart. A revoked CA stays in `cas` (its
/// state says so) and is listed in its parent's CRL.
#[derive(Debug, Clone, Default)]
pub(super) struct CaPart {
    pub cas: Vec<CaView>,
    pub bundle_pem: String,
    pub profiles_pem: String,
    /// The CRL entries of revoked CAs, by the fingerprint of their parent.
    pub revoked_children: HashMap<String, Vec<CrlEntry>>,
    /// The earliest notAfter of the CAs in it: from then on it is stale.
    pub valid_until: i64,
}

impl CaPart {
    /// The part of `records` unexpired at `now` (Unix seconds).
    pub fn build(records: &[CaRecord], now: i64) -> Result<Self, CaError> {
        let parents = super::hierarchy::parents(records)?;
        let mut live: Vec<&CaRecord> = records.iter().filter(|r| r.not_after > now).collect();
        live.sort_by_key(|r| (r.role != CaRole::Root, r.created_at));
        let mut part = Self { valid_until: i64::MAX, ..Self::default() };
        for r in live {
            let cert = CaCertificate::from_der(&r.cert_der)?;
            if !r.state.trusted() {
                if let Some(parent) = parents.get(&r.id) {
                    let at = r.state_changed_at.unwrap_or(now);
                    part.revoked_children.entry(parent.clone()).or_default().push(CrlEntry {
                        serial: cert.serial.clone(),
                        revoked_at: OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                        reason: Some(RevocationReason::CessationOfOperation),
                    });
                }
            } else if r.role == CaRole::Profiles {
                part.profiles_pem.push_str(&cert.to_pem());
            } else {
                part.bundle_pem.push_str(&cert.to_pem());
            }
            part.valid_until = part.valid_until.min(r.not_after);
            part.cas.push(CaView {
                role: r.role,
                common_name: r.common_name.clone(),
                fingerprint: r.id.clone(),
                algorithm: cert.algorithm.clone(),
                not_before: r.not_before,
                not_after: r.not_after,
                state: r.state,
                key_online: r.sealed_key.is_some(),
            });
        }
        Ok(part)
    }

    fn holds(&self, fingerprint: &str) -> bool {
        self.cas.iter().any(|c| c.fingerprint == fingerprint)
    }

    fn is_profiles(&self, fingerprint: &str) -> bool {
        self.cas.iter().any(|c| c.fingerprint == fingerprint && c.role == CaRole::Profiles)
    }
}

/// Everything one publication is made of.
pub(super) struct Inputs {
    pub ca: Arc<CaPart>,
    /// Every CA whose key is online.
    pub signers: Vec<Arc<Signer>>,
    /// CRLs signed elsewhere for CAs whose key is offline.
    pub imported: Vec<Crl>,
    pub revocations: RevocationView,
    pub previous: Arc<TrustSnapshot>,
    pub jwks: serde_json::Value,
    pub crl_validity: Duration,
    pub now: OffsetDateTime,
}

/// A snapshot, and how many revoked serials its CRLs list.
pub(super) struct Built {
    pub snapshot: TrustSnapshot,
    pub revoked: usize,
}

/// One CRL per unexpired CA whose key is online (its unexpired revoked
/// serials; the profiles CAs' kept apart), the imported CRLs of CAs still in
/// the bundle, the deny list, and the CA half, as the next snapshot after
/// `previous`.
pub(super) fn build(inputs: Inputs) -> Result<Built, CaError> {
    let Inputs { ca, signers, imported, revocations, previous, jwks, crl_validity, now } = inputs;
    let deny = if previous.generation == revocations.generation {
        previous.deny.clone()
    } else {
        revocations.deny_list(now, &previous.deny)
    };
    let number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut revoked = 0;
    let (mut crls, mut profile_crls) = (Vec::new(), Vec::new());
    for signer in signers.iter().filter(|s| s.cert.not_after > now) {
        let mut entries = revocations.crl_entries(&signer.cert.fingerprint, now);
        entries.extend(ca.revoked_children.get(&signer.cert.fingerprint).into_iter().flatten().cloned());
        revoked += entries.len();
        let crl = ca::build_crl(signer, &entries, number, now, crl_validity)?;
        if ca.is_profiles(&signer.cert.fingerprint) { profile_crls.push(crl) } else { crls.push(crl) }
    }
    crls.extend(imported.into_iter().filter(|c| ca.holds(&c.issuer_fingerprint)));
    let crl_pem = crls.iter().map(Crl::to_pem).collect();
    let profiles = ProfilesTrust {
        bundle_pem: ca.profiles_pem.clone(),
        crl_pem: profile_crls.iter().map(Crl::to_pem).collect(),
        crls: profile_crls,
    };
    let snapshot = TrustSnapshot {
        revision: previous.revision + 1,
        trust_domain: previous.trust_domain.clone(),
        cas: ca.cas.clone(),
        bundle_pem: ca.bundle_pem.clone(),
        crls,
        crl_pem,
        profiles,
        jwks,
        deny,
        generation: revocations.generation,
        built_at: now,
        published_at: std::time::Instant::now(),
    };
    Ok(Built { snapshot, revoked })
}
