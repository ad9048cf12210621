//! Setting up the CA hierarchy: creating it (generated, or around an
//! imported CA), sealing its keys, and loading them back with each CA linked
//! to its parents. Used at start-up and when a CA is added.

use std::collections::HashMap;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IssuerConfig, IssuerError, Signers, TokenKeys};
use crate::ca::{self, CaCertificate, IntermediateParams, Kek, KeyAlgorithm, PrivateKey, RootParams, Signer};
use crate::domain::{CaRole, CaState, SerialSource};
use crate::store::{CaRecord, SigningKeyRecord, Store};
use crate::token::{Es256Signer, VerifyingKey};

/// Purpose of a signing key that signs trustmesh's own tokens.
pub(crate) const PURPOSE_TOKEN: &str = "token";
/// Purpose of a signing key that signs JWT-SVIDs.
pub(crate) const PURPOSE_JWT_SVID: &str = "jwt-svid";
const SIGNING_KEY_LIFETIME: Duration = Duration::days(365);
/// The CA that signs certificates issued under a profile without a SPIFFE ID.
pub(super) const PROFILES_CA_NAME: &str = "trustmesh Profiles CA";
/// The intermediates a new hierarchy has below its root.
pub(super) const INTERMEDIATES: [(CaRole, &str); 3] = [
    (CaRole::Services, "trustmesh Services CA"),
    (CaRole::Transport, "trustmesh Transport CA"),
    (CaRole::Profiles, PROFILES_CA_NAME),
];

/// How to create the hierarchy: generated (`serve` on an empty store, or
/// `pki init` with flags) or imported from PEM (`pki init --import-cert/--import-key`).
#[derive(Debug, Clone)]
pub struct InitParams {
    pub root_common_name: String,
    pub algorithm: KeyAlgorithm,
    pub root_ttl_days: u32,
    pub intermediate_ttl_days: u32,
    /// (certificate chain PEM, private key PEM) of an existing CA.
    pub import: Option<(String, String)>,
}

impl Default for InitParams {
    fn default() -> Self {
        Self {
            root_common_name: "trustmesh Root CA".into(),
            algorithm: KeyAlgorithm::EcP384,
            root_ttl_days: 3650,
            intermediate_ttl_days: 730,
            import: None,
        }
    }
}

/// What start-up found or made.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub created: bool,
    pub root_fingerprint: String,
}

pub(super) async fn check_trust_domain(cfg: &IssuerConfig, store: &dyn Store) -> Result<(), IssuerError> {
    let stored = store.init_setting("trust_domain", cfg.trust_domain.as_str()).await?;
    if stored != cfg.trust_domain.as_str() {
        return Err(IssuerError::FailedPrecondition(format!(
            "the database belongs to trust domain {stored:?}, not {:?}",
            cfg.trust_domain.as_str()
        )));
    }
    Ok(())
}

pub(super) async fn has_root(store: &dyn Store) -> Result<bool, IssuerError> {
    Ok(store.cas().await?.iter().any(|c| c.role == CaRole::Root))
}

/// Builds every record of a new hierarchy (CAs and JWT keys), keys sealed.
pub(super) fn create_hierarchy(
    cfg: &IssuerConfig,
    params: &InitParams,
    kek: &Kek,
    serials: &dyn SerialSource,
    now: OffsetDateTime,
) -> Result<(Vec<CaRecord>, Vec<SigningKeyRecord>), IssuerError> {
    // The root's record, then one active intermediate per role below it.
    let below_root = |root: &Signer| -> Result<Vec<CaRecord>, IssuerError> {
        let mut records = vec![ca_record(root, CaRole::Root, CaState::Active, kek, now)?];
        for (role, name) in INTERMEDIATES {
            let below = IntermediateParams {
                common_name: name.to_string(),
                lifetime: Duration::days(i64::from(params.intermediate_ttl_days)),
                trust_domain: cfg.trust_domain.clone(),
            };
            let rng = ring::rand::SystemRandom::new();
            let signer = ca::create_intermediate(root, &below, serials.next_serial()?, now, &rng)?;
            records.push(ca_record(&signer, role, CaState::Active, kek, now)?);
        }
        Ok(records)
    };
    let mut cas = Vec::new();
    match &params.import {
        Some((cert_pem, key_pem)) => {
            let imported = ca::import_ca(cert_pem, key_pem)?.signer;
            if let Some(td) = imported.cert.trust_domain().filter(|td| *td != &cfg.trust_domain) {
                return Err(IssuerError::InvalidArgument(format!(
                    "the imported CA serves trust domain {td}, not {}",
                    cfg.trust_domain
                )));
            }
            if imported.cert.not_after <= now {
                return Err(IssuerError::InvalidArgument(format!(
                    "the imported CA {:?} expired at {}",
                    imported.cert.common_name, imported.cert.not_after
                )));
            }
            for parent in &imported.parents {
                cas.push(public_ca_record(parent, CaRole::Root, now));
            }
            if imported.cert.self_signed {
                cas.extend(below_root(&imported)?);
            } else {
                // An imported intermediate signs for both roles; the root stays offline.
                cas.push(ca_record(&imported, CaRole::Services, CaState::Active, kek, now)?);
            }
        }
        None => {
            let root = ca::create_root(
                &RootParams {
                    common_name: params.root_common_name.clone(),
                    algorithm: params.algorithm,
                    lifetime: Duration::days(i64::from(params.root_ttl_days)),
                    trust_domain: cfg.trust_domain.clone(),
                },
                serials.next_serial()?,
                now,
                &ring::rand::SystemRandom::new(),
            )?;
            cas.extend(below_root(&root)?);
        }
    }
    let keys = vec![signing_key_record(PURPOSE_TOKEN, kek, now)?, signing_key_record(PURPOSE_JWT_SVID, kek, now)?];
    Ok((cas, keys))
}

pub(super) fn ca_record(
    signer: &Signer,
    role: CaRole,
    state: CaState,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<CaRecord, IssuerError> {
    let mut record = public_ca_record(&signer.cert, role, now);
    record.state = state;
    record.sealed_key =
        Some(kek.seal(signer.key().pkcs8_der(), record.id.as_bytes(), &ring::rand::SystemRandom::new())?);
    Ok(record)
}

fn public_ca_record(cert: &CaCertificate, role: CaRole, now: OffsetDateTime) -> CaRecord {
    CaRecord {
        id: cert.fingerprint.clone(),
        role,
        common_name: cert.common_name.clone(),
        cert_der: cert.der.clone(),
        sealed_key: None,
        not_before: cert.not_before.unix_timestamp(),
        not_after: cert.not_after.unix_timestamp(),
        state: if role == CaRole::Root { CaState::Active } else { CaState::Old },
        state_changed_at: None,
        created_at: now.unix_timestamp(),
    }
}

fn signing_key_record(purpose: &str, kek: &Kek, now: OffsetDateTime) -> Result<SigningKeyRecord, IssuerError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new())?;
    let public = key.public_key_der();
    let kid = format!("{purpose}-{}", &ca::fingerprint(&public)[..16]);
    Ok(SigningKeyRecord {
        sealed_key: kek.seal(key.pkcs8_der(), kid.as_bytes(), &ring::rand::SystemRandom::new())?,
        kid,
        purpose: purpose.to_string(),
        public_key_der: public,
        created_at: now.unix_timestamp(),
        not_after: (now + SIGNING_KEY_LIFETIME).unix_timestamp(),
    })
}

/// Opens the sealed keys of the active CAs and links each to its parents.
pub(super) fn load_signers(cas: &[CaRecord], kek: &Kek) -> Result<Signers, IssuerError> {
    let certs: Vec<(&CaRecord, CaCertificate)> =
        cas.iter().map(|r| CaCertificate::from_der(&r.cert_der).map(|c| (r, c))).collect::<Result<_, _>>()?;
    let open = |record: &CaRecord, cert: &CaCertificate| -> Result<Option<Arc<Signer>>, IssuerError> {
        let Some(sealed) = &record.sealed_key else { return Ok(None) };
        let der = kek.open(sealed, record.id.as_bytes()).map_err(|e| {
            IssuerError::FailedPrecondition(format!(
                "cannot open the key of CA {} ({e}); is this the KEK the database was created with?",
                record.common_name
            ))
        })?;
        let key = PrivateKey::from_pkcs8_der(&der)?;
        let parents = parents_of(cert, &certs);
        Ok(Some(Arc::new(Signer::new(cert.clone(), key, parents)?)))
    };
    let mut services = None;
    let mut transport = None;
    let mut profiles = None;
    let mut root = None;
    let mut crl_signers = Vec::new();
    for (record, cert) in &certs {
        let Some(signer) = open(record, cert)? else { continue };
        if !record.state.trusted() {
            // Revoked: out of the bundles, so it signs no CRL either.
            continue;
        }
        crl_signers.push(signer.clone());
        if record.state != CaState::Active {
            continue;
        }
        match record.role {
            CaRole::Root => root = Some(signer),
            CaRole::Services => services = Some(signer),
            CaRole::Transport => transport = Some(signer),
            CaRole::Profiles => profiles = Some(signer),
        }
    }
    let services =
        services.ok_or_else(|| IssuerError::FailedPrecondition("no active Services CA with an online key".into()))?;
    let transport = transport.unwrap_or_else(|| services.clone());
    Ok(Signers { services, transport, profiles, root, crl_signers })
}

/// The CA that signed each CA of `records` (child fingerprint → parent
/// fingerprint); roots, and CAs whose parent is not among them, have none.
pub(super) fn parents(records: &[CaRecord]) -> Result<HashMap<String, String>, ca::CaError> {
    let certs: Vec<(&CaRecord, CaCertificate)> =
        records.iter().map(|r| CaCertificate::from_der(&r.cert_der).map(|c| (r, c))).collect::<Result<_, _>>()?;
    Ok(certs
        .iter()
        .filter(|(_, c)| !c.self_signed)
        .filter_map(|(r, c)| parents_of(c, &certs).first().map(|p| (r.id.clone(), p.fingerprint.clone())))
        .collect())
}

/// The chain above `cert` (issuer first, root last), found by name and signature.
fn parents_of(cert: &CaCertificate, pool: &[(&CaRecord, CaCertificate)]) -> Vec<CaCertificate> {
    let mut chain = Vec::new();
    let mut current = cert.clone();
    while !current.self_signed && chain.len() < 8 {
        let Some(parent) = pool
            .iter()
            .map(|(_, c)| c)
            .find(|candidate| candidate.fingerprint != current.fingerprint && issued_by(&current, candidate))
        else {
            break;
        };
        chain.push(parent.clone());
        current = parent.clone();
    }
    chain
}

fn issued_by(child: &CaCertificate, parent: &CaCertificate) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (X509Certificate::from_der(&child.der), X509Certificate::from_der(&parent.der))
    else {
        return false;
    };
    c.issuer().as_raw() == p.subject().as_raw() && c.verify_signature(Some(p.public_key())).is_ok()
}

pub(super) async fn load_token_keys(store: &dyn Store, kek: &Kek, now: i64) -> Result<TokenKeys, IssuerError> {
    let records = store.signing_keys().await?;
    let mut verifying = Vec::new();
    let mut jwt_svid_keys = Vec::new();
    let mut newest: Option<&SigningKeyRecord> = None;
    let mut newest_jwt_svid: Option<&SigningKeyRecord> = None;
    for r in records.iter().filter(|r| r.not_after > now) {
        let key = VerifyingKey::from_spki_der(r.kid.clone(), &r.public_key_der)
            .map_err(|e| IssuerError::Internal(format!("stored key {}: {e}", r.kid)))?;
        if r.purpose == PURPOSE_TOKEN {
            verifying.push(key);
            if newest.is_none_or(|n| n.created_at <= r.created_at) {
                newest = Some(r);
            }
        } else if r.purpose == PURPOSE_JWT_SVID {
            jwt_svid_keys.push(key);
            if newest_jwt_svid.is_none_or(|n| n.created_at <= r.created_at) {
                newest_jwt_svid = Some(r);
            }
        }
    }
    let newest = newest
        .ok_or_else(|| IssuerError::FailedPrecondition("no unexpired token signing key in the database".into()))?;
    let der = kek.open(&newest.sealed_key, newest.kid.as_bytes())?;
    let signer = Es256Signer::from_pkcs8(newest.kid.clone(), &der)
        .map_err(|e| IssuerError::Internal(format!("token key {}: {e}", newest.kid)))?;
    let jwt_svid_signer = match newest_jwt_svid {
        Some(r) => {
            let der = kek.open(&r.sealed_key, r.kid.as_bytes())?;
            Some(
                Es256Signer::from_pkcs8(r.kid.clone(), &der)
                    .map_err(|e| IssuerError::Internal(format!("jwt-svid key {}: {e}", r.kid)))?,
            )
        }
        None => None,
    };
    Ok(TokenKeys { signer, verifying, accepted: Default::default(), jwt_svid_keys, jwt_svid_signer })
}

pub(super) fn log_created(cas: &[CaRecord], cfg: &IssuerConfig) {
    let root = cas.iter().find(|c| c.role == CaRole::Root);
    for ca in cas.iter().filter(|c| c.sealed_key.is_some()) {
        tracing::info!(
            ca_name = %ca.common_name,
            fingerprint = %ca.id,
            role = ca.role.as_str(),
            signed_by = %root.map(|r| r.id.as_str()).unwrap_or("(imported chain)"),
            not_after = ca.not_after,
            "CA initialized"
        );
    }
    tracing::info!(
        root = %root.map(|r| r.id.as_str()).unwrap_or_default(),
        intermediates = cas.iter().filter(|c| c.role != CaRole::Root).count(),
        trust_domain = %cfg.trust_domain,
        "PKI initialized"
    );
}
