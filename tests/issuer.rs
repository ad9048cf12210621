//! The issuing service in-process with a manual clock: lifetimes, CRL
//! schedule and the offline ceremony, without sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use trustmesh::ca::Kek;
use trustmesh::domain::{ManualClock, RandomSerials, TrustDomain};
use trustmesh::issuer::{Caller, GenerateRequest, InitParams, Issuer, IssuerConfig};
use trustmesh::policy::PolicyEngine;
use trustmesh::store::Store;

const START: i64 = 1_800_000_000;

async fn issuer(dir: &std::path::Path, clock: &ManualClock) -> (Arc<Issuer>, Arc<dyn Store>) {
    support::issuer::start(dir, clock).await
}

fn serials_in(issuer: &Issuer) -> Vec<String> {
    let mut out = Vec::new();
    for crl in &issuer.snapshot().crls {
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).unwrap();
        for r in parsed.iter_revoked_certificates() {
            out.push(trustmesh::domain::Serial::from_bytes(r.raw_serial()).unwrap().to_string());
        }
    }
    out
}

use x509_parser::prelude::FromDer;

async fn generate(issuer: &Issuer, id: &str, ttl: u64) -> String {
    let issued = issuer
        .generate(
            &Caller::system(),
            &GenerateRequest { common_name: String::new(), spiffe_id: id.into(), dns_names: vec![], ttl_seconds: ttl },
        )
        .await
        .unwrap();
    issued.record.serial
}

#[tokio::test]
async fn an_expired_revoked_certificate_drops_out_of_the_next_crl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, _) = issuer(dir.path(), &clock).await;
    let short = generate(&issuer, "spiffe://example.org/svc/short", 120).await;
    let long = generate(&issuer, "spiffe://example.org/svc/long", 7200).await;
    issuer.revoke(&Caller::system(), &short, "keyCompromise").await.unwrap();
    issuer.revoke(&Caller::system(), &long, "superseded").await.unwrap();
    issuer.published().await;
    let listed = serials_in(&issuer);
    assert!(listed.contains(&short) && listed.contains(&long), "{listed:?}");

    clock.advance(600); // past the short certificate's notAfter, not the long one's
    issuer.publish().await.unwrap();
    let listed = serials_in(&issuer);
    assert!(!listed.contains(&short), "expired serial still listed");
    assert!(listed.contains(&long));
}

#[tokio::test]
async fn crls_are_resigned_before_next_update_and_never_lapse() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, _) = issuer(dir.path(), &clock).await;
    let first = issuer.snapshot();
    let this_update = first.crls[0].this_update.unix_timestamp();
    assert_eq!(this_update, START - 60, "thisUpdate backdated 60 s");
    // An idle server for 30 days, one maintenance pass an hour.
    for _ in 0..(30 * 24) {
        clock.advance(3600);
        issuer.maintain().await;
        let snap = issuer.snapshot();
        let now = START + (snap.built_at.unix_timestamp() - START).max(0);
        let next = snap.earliest_next_update().unwrap().unix_timestamp();
        let current = trustmesh::domain::Clock::now(&clock).unix_timestamp();
        assert!(next > current + 3 * 86_400, "a CRL is within 3 days of lapsing at {current} (built {now})");
    }
    assert!(issuer.snapshot().revision > first.revision + 5, "CRLs were re-signed along the way");
}

#[tokio::test]
async fn expired_records_are_purged_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, store) = issuer(dir.path(), &clock).await;
    generate(&issuer, "spiffe://example.org/svc/a", 120).await;
    generate(&issuer, "spiffe://example.org/svc/b", 86_400).await;
    assert_eq!(issuer.maintain().await.purged_certificates, 0);
    clock.advance(3600);
    assert_eq!(issuer.maintain().await.purged_certificates, 1);
    assert_eq!(store.certificates(&Default::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn restart_loads_the_same_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let root = {
        let (issuer, _) = issuer(dir.path(), &clock).await;
        issuer.snapshot().root().unwrap().fingerprint.clone()
    };
    let (again, _) = issuer(dir.path(), &clock).await;
    assert_eq!(again.snapshot().root().unwrap().fingerprint, root);
}

#[tokio::test]
async fn a_database_of_another_trust_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (_, store) = issuer(dir.path(), &clock).await;
    let (kek, _) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
    let cfg = IssuerConfig::new(TrustDomain::parse("other.org").unwrap());
    let err = Issuer::start(trustmesh::issuer::IssuerParts {
        cfg,
        store,
        kek,
        clock: Arc::new(clock),
        serials: Arc::new(RandomSerials::default()),
        policy: PolicyEngine::embedded().unwrap(),
        init: InitParams::default(),
        existing: trustmesh::issuer::Existing::Load,
    })
    .await
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("belongs to trust domain"), "{err}");
}

#[tokio::test]
async fn a_wrong_kek_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (_, store) = issuer(dir.path(), &clock).await;
    let (other, _) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
    let cfg = IssuerConfig::new(TrustDomain::parse("example.org").unwrap());
    let err = Issuer::start(trustmesh::issuer::IssuerParts {
        cfg,
        store,
        kek: other,
        clock: Arc::new(clock),
        serials: Arc::new(RandomSerials::default()),
        policy: PolicyEngine::embedded().unwrap(),
        init: InitParams::default(),
        existing: trustmesh::issuer::Existing::Load,
    })
    .await
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("KEK"), "{err}");
}

#[tokio::test]
async fn a_new_intermediate_becomes_the_signer_and_the_old_stays_in_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, store) = issuer(dir.path(), &clock).await;
    let old = issuer.snapshot().services().unwrap().fingerprint.clone();
    let created = issuer
        .create_intermediary(&Caller::system(), trustmesh::store::CaRole::Services, "trustmesh Services CA v2", 730)
        .await
        .unwrap();
    let snap = issuer.snapshot();
    assert_eq!(snap.services().unwrap().fingerprint, created.id);
    assert!(
        snap.cas.iter().any(|c| c.fingerprint == old && c.state == trustmesh::domain::CaState::Old),
        "old intermediate stays in the bundle"
    );
    assert_eq!(snap.bundle_pem.matches("BEGIN CERTIFICATE").count(), 4);
    let serial = generate(&issuer, "spiffe://example.org/svc/after-rotation", 600).await;
    let cert = store.certificate(&serial).await.unwrap().unwrap();
    assert_eq!(cert.issuer_id, created.id, "new certificates come from the new intermediate");
}

#[tokio::test]
async fn the_status_warns_six_months_before_an_intermediate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, _) = issuer(dir.path(), &clock).await;
    let status = issuer.status(&Caller::system()).await.unwrap();
    assert!(status.healthy, "{:?}", status.warnings);
    clock.advance(560 * 86_400); // the intermediates live 730 days
    issuer.maintain().await;
    let status = issuer.status(&Caller::system()).await.unwrap();
    assert!(!status.healthy);
    assert!(status.warnings.iter().any(|w| w.contains("Services CA") && w.contains("rotate")), "{:?}", status.warnings);
}

#[tokio::test]
async fn the_deny_list_and_revoked_serials_are_in_the_first_snapshot_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let id = "spiffe://example.org/svc/stolen";
    let (serial, other) = {
        let (issuer, _) = issuer(dir.path(), &clock).await;
        let serial = generate(&issuer, id, 3600).await;
        let other = generate(&issuer, "spiffe://example.org/svc/other", 3600).await;
        issuer.deny(&Caller::system(), id, "key leaked").await.unwrap();
        issuer.revoke(&Caller::system(), &other, "keyCompromise").await.unwrap();
        (serial, other)
    };
    // A restarted control plane answers its first stream with the durable
    // state, never with an empty list that would un-revoke everyone.
    let (again, _) = issuer(dir.path(), &clock).await;
    let first = again.snapshot();
    assert_eq!(first.deny.identities.keys().collect::<Vec<_>>(), [id]);
    assert_eq!(first.deny.certificates.len(), 1, "the other revoked certificate is cut by its hash");
    let listed = serials_in(&again);
    assert!(listed.contains(&serial) && listed.contains(&other), "{listed:?}");
    assert!(again.is_revoked(&serial) && again.denial(id).is_some());

    // Allowed again: the identity leaves the list, its old certificate's
    // hash stays on it until expiry plus the connection grace, then goes.
    again.allow(&Caller::system(), id).await.unwrap();
    again.published().await;
    let allowed = again.snapshot();
    assert!(allowed.deny.identities.is_empty());
    assert_eq!(allowed.deny.certificates.len(), 2);
    assert!(serials_in(&again).contains(&serial), "the old serial stays revoked");
    clock.advance(3600 + trustmesh::trust::CONNECTION_GRACE.whole_seconds() + 60);
    again.maintain().await;
    assert!(again.snapshot().deny.certificates.is_empty());
    assert!(!again.is_revoked(&serial));
}

/// What the identity cache mints goes through the same path as every
/// issuance: audited as `obtain_svid`, by the server itself.
#[tokio::test]
async fn an_svid_minted_for_an_entry_is_audited_as_obtained_by_the_system() {
    use trustmesh::cache::SvidMinter;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let (issuer, store) = issuer(dir.path(), &clock).await;
    let entry = trustmesh::domain::Entry {
        id: "e1".into(),
        spiffe_id: trustmesh::domain::SpiffeId::parse("spiffe://example.org/svc/web").unwrap(),
        selectors: [trustmesh::domain::Selector::parse("unix:uid:1000").unwrap()].into(),
        dns_names: vec![],
        ttl_seconds: None,
        jwt_ttl_seconds: None,
        hint: None,
        federates_with: vec![],
        created_at: 1,
        node: None,
    };
    let minted = trustmesh::app::IssuerSide(issuer.clone()).mint(&entry).await.unwrap();
    assert_eq!(minted.chain_pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf, then the issuing CA");
    let audit = store.audit(&trustmesh::store::AuditFilter::default()).await.unwrap();
    let obtained: Vec<_> = audit.iter().filter(|a| a.action == "obtain_svid").collect();
    assert_eq!(obtained.len(), 1, "{audit:?}");
    assert_eq!((obtained[0].outcome.as_str(), obtained[0].target.as_str()), ("ok", "spiffe://example.org/svc/web"));
    assert!(obtained[0].actor.contains("system"), "{}", obtained[0].actor);
    assert_eq!(minted.certificate.serial.to_string(), store.certificates(&Default::default()).await.unwrap()[0].serial);
}

#[tokio::test]
async fn automatic_rotation_prepares_a_successor_at_half_life_and_activates_it_once_acknowledged() {
    use trustmesh::domain::{CaRole, CaState};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START);
    let mut cfg = trustmesh::issuer::IssuerConfig::new(trustmesh::domain::TrustDomain::parse("example.org").unwrap());
    cfg.ca_rotation_auto = true;
    // Intermediates of 200 days: half of their life is within the lifetime
    // of the token signing keys (365 days).
    let init = trustmesh::issuer::InitParams { intermediate_ttl_days: 200, ..Default::default() };
    let (issuer, _) = support::issuer::start_configured(dir.path(), Arc::new(clock.clone()), cfg, init).await;
    let of = |role: CaRole, state: CaState| {
        issuer
            .snapshot()
            .cas
            .iter()
            .filter(|c| c.role == role && c.state == state)
            .map(|c| c.fingerprint.clone())
            .collect::<Vec<_>>()
    };
    let first = of(CaRole::Services, CaState::Active);
    // Before half of its life nothing happens.
    clock.advance(90 * 86_400);
    issuer.maintain().await;
    assert!(of(CaRole::Services, CaState::Prepared).is_empty());
    assert_eq!(of(CaRole::Services, CaState::Active), first);
    // Past half of it a successor is prepared; it is in the bundle, not signing.
    clock.advance(15 * 86_400);
    issuer.maintain().await;
    let prepared = of(CaRole::Services, CaState::Prepared);
    assert_eq!(prepared.len(), 1, "{:?}", issuer.snapshot().cas);
    assert_eq!(of(CaRole::Services, CaState::Active), first);
    // A stream registered and behind holds the activation back.
    let acks = issuer.acknowledgements();
    let behind = acks.register("stalled-envoy", "sds");
    issuer.maintain().await;
    assert_eq!(of(CaRole::Services, CaState::Prepared), prepared);
    // Once it has acknowledged the current state, the next pass activates.
    behind.acked(issuer.snapshot().revision);
    issuer.maintain().await;
    assert_eq!(of(CaRole::Services, CaState::Active), prepared);
    assert_eq!(of(CaRole::Services, CaState::Old), first);
    // Every intermediate role rotated the same way; the root is left alone.
    for role in [CaRole::Transport, CaRole::Profiles] {
        assert_eq!(of(role, CaState::Old).len(), 1, "{role}: {:?}", issuer.snapshot().cas);
    }
    assert_eq!(of(CaRole::Root, CaState::Active).len(), 1);
    assert!(of(CaRole::Root, CaState::Prepared).is_empty());
}
