//! One conformance suite for every `Store` backend.
//!
//! Each case is a plain `async fn(Arc<dyn Store>)`; `conformance!` runs every
//! case on SQLite (a file in a temp directory) as `sqlite::<case>` and on
//! PostgreSQL (a fresh database on a throwaway server) as `postgres::<case>`.
//! Backend-specific checks (reopening, schema refusal) follow the macro.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use CaState::{Active, Old, Prepared, Revoked, Tainted};
use trustmesh::store::{
    AgentRecord, AuditFilter, AuditRecord, CHANGE_RETENTION, CaRecord, CaRole, CaState, CertFilter, CertRecord,
    CertStatus, ChangeBatch, ChangeKind, ChangeRecord, DenyRecord, EntryRecord, ImportedCrlRecord, ProfileKey,
    ProfileRecord, RevokeOutcome, RevokedEntry, SigningKeyRecord, Store, StoreError,
};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::postgres_store().await).await;
                }
            )*
        }
    };
}

conformance!(
    ping_and_settings,
    init_setting_race,
    init_hierarchy_once,
    init_hierarchy_race,
    insert_ca_rotates_role,
    preparing_then_activating_a_ca_makes_the_previous_active_one_old,
    two_activations_racing_in_one_role_leave_exactly_one_active,
    a_step_the_rotation_forbids_is_refused_and_changes_nothing,
    an_unknown_ca_is_not_found_and_nothing_is_written,
    setting_the_state_a_ca_has_writes_only_the_audit_record,
    every_ca_state_change_appears_in_the_change_feed,
    live_certificate_counts_per_issuer_exclude_revoked_and_expired,
    each_replica_keeps_only_its_last_acknowledgement_report,
    signing_keys_roundtrip,
    record_issuance_and_conflict,
    certificate_filters,
    active_certificate_count,
    revoke_outcomes,
    deny_revokes_identity,
    issuance_of_a_denied_identity_stores_nothing,
    issuance_racing_a_denial_leaves_no_live_certificate,
    allow_lifts_denial,
    consume_token_id_once,
    purge_expired,
    audit_log,
    concurrent_issuance,
    concurrent_duplicate_fails_alone,
    entries_roundtrip_oldest_first,
    an_entry_keeps_its_node,
    an_attested_agent_renews_is_seen_and_is_evicted_once,
    certificates_are_listed_by_the_node_that_obtained_them,
    entry_conflicts,
    delete_entry_outcomes,
    concurrent_duplicate_entries,
    changes_record_revocations,
    changes_record_denials,
    changes_record_entries,
    changes_record_cas_and_keys,
    changes_since_pages_in_order,
    changes_purge_truncates,
    revoked_unexpired_all_fields,
    concurrent_changes_never_skipped,
    imported_crls_only_move_forward,
    profiles_roundtrip_replace_and_delete,
    certificates_of_a_profile_and_mount,
);

const NOW: i64 = 1_700_000_000;

async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = trustmesh::store::sqlite::SqliteStore::open(&dir.path().join("trustmesh.db")).await.unwrap();
    (Arc::new(store), dir)
}

async fn postgres_store() -> Arc<dyn Store> {
    let url = support::postgres::fresh_database().await;
    Arc::new(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap())
}

// ---- the cases -------------------------------------------------------------

async fn ping_and_settings(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    assert_eq!(s.init_setting("trust_domain", "example.org").await.unwrap(), "example.org");
    assert_eq!(s.init_setting("trust_domain", "other.org").await.unwrap(), "example.org");
    assert_eq!(s.init_setting("other", "value").await.unwrap(), "value", "keys are independent");
}

async fn init_setting_race(s: Arc<dyn Store>) {
    for round in 0..4 {
        let key = format!("key-{round}");
        let winners = join_all((0..8).map(|i| {
            let (s, key) = (s.clone(), key.clone());
            async move { s.init_setting(&key, &format!("value-{i}")).await.unwrap() }
        }))
        .await;
        let stored = s.init_setting(&key, "late").await.unwrap();
        assert!(winners.iter().all(|w| *w == stored), "{winners:?} vs stored {stored}");
    }
}

async fn init_hierarchy_once(s: Arc<dyn Store>) {
    let (cas, keys) = hierarchy("a");
    assert!(s.init_hierarchy(&cas, &keys).await.unwrap());
    assert_eq!(s.cas().await.unwrap(), cas);
    assert_eq!(s.signing_keys().await.unwrap(), keys);

    let (other_cas, other_keys) = hierarchy("b");
    assert!(!s.init_hierarchy(&other_cas, &other_keys).await.unwrap());
    assert_eq!(s.cas().await.unwrap(), cas, "a second init writes no CA");
    assert_eq!(s.signing_keys().await.unwrap(), keys, "a second init writes no key");
}

async fn init_hierarchy_race(s: Arc<dyn Store>) {
    let results = join_all(["a", "b", "c", "d", "e", "f", "g", "h"].map(|prefix| {
        let s = s.clone();
        async move { (prefix, s.init_hierarchy(&hierarchy(prefix).0, &hierarchy(prefix).1).await.unwrap()) }
    }))
    .await;
    let won: Vec<_> = results.iter().filter(|(_, won)| *won).map(|(p, _)| *p).collect();
    assert_eq!(won.len(), 1, "exactly one replica initializes: {results:?}");
    assert_eq!(s.cas().await.unwrap(), hierarchy(won[0]).0);
    assert_eq!(s.signing_keys().await.unwrap(), hierarchy(won[0]).1);
}

async fn insert_ca_rotates_role(s: Arc<dyn Store>) {
    seed(&s).await;
    s.insert_ca(&ca("svc-2", CaRole::Services, Active, NOW + 10)).await.unwrap();
    assert_eq!(active_ids(&s).await, ["a-root", "a-transport", "svc-2"]);
    let demoted = [("a-services", Old, Some(NOW + 10)), ("a-transport", Active, None), ("svc-2", Active, None)];
    assert_eq!(states(&s).await[1..], state_rows(&demoted), "the previous one is old since the insert");

    s.insert_ca(&ca("svc-3", CaRole::Services, Old, NOW + 20)).await.unwrap();
    s.insert_ca(&ca("svc-4", CaRole::Services, Prepared, NOW + 30)).await.unwrap();
    assert_eq!(active_ids(&s).await, ["a-root", "a-transport", "svc-2"], "only an active CA demotes another");
    let after = state_rows(&[("svc-2", Active, None), ("svc-3", Old, None), ("svc-4", Prepared, None)]);
    assert_eq!(states(&s).await[3..], after);

    let dup = s.insert_ca(&ca("svc-2", CaRole::Services, Active, NOW + 40)).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert_eq!(states(&s).await[3..], after, "a failed insert changes nothing");

    let ids: Vec<_> = s.cas().await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["a-root", "a-services", "a-transport", "svc-2", "svc-3", "svc-4"], "oldest first");
}

async fn preparing_then_activating_a_ca_makes_the_previous_active_one_old(s: Arc<dyn Store>) {
    seed(&s).await;
    s.insert_ca(&ca("svc-2", CaRole::Services, Prepared, NOW + 10)).await.unwrap();
    let before = states(&s).await;
    assert_eq!(
        before[1..],
        state_rows(&[("a-services", Active, None), ("a-transport", Active, None), ("svc-2", Prepared, None)])
    );
    assert_eq!(active_ids(&s).await, ["a-root", "a-services", "a-transport"], "a prepared CA signs nothing yet");

    let activated = s.set_ca_state("svc-2", Active, NOW + 20, &audit("activate_ca", "svc-2", NOW + 20)).await.unwrap();
    assert_eq!((activated.state, activated.state_changed_at), (Active, Some(NOW + 20)));
    let stored = s.cas().await.unwrap();
    assert_eq!(stored.iter().find(|c| c.id == "svc-2"), Some(&activated), "it returns the CA as stored");
    assert_eq!(
        states(&s).await,
        state_rows(&[
            ("a-root", Active, None),
            ("a-services", Old, Some(NOW + 20)),
            ("a-transport", Active, None),
            ("svc-2", Active, Some(NOW + 20)),
        ]),
        "the previous services CA is old, the other roles untouched"
    );
    let log = s.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(
        log.iter().map(|a| (a.action.as_str(), a.target.as_str())).collect::<Vec<_>>(),
        [("activate_ca", "svc-2")]
    );

    // Through the rest of the rotation: the old one tainted, then revoked.
    for (to, at) in [(Tainted, NOW + 30), (Revoked, NOW + 40)] {
        let moved = s.set_ca_state("a-services", to, at, &audit("ca_state", "a-services", at)).await.unwrap();
        assert_eq!((moved.state, moved.state_changed_at), (to, Some(at)));
    }
    assert_eq!(active_ids(&s).await, ["a-root", "a-transport", "svc-2"]);
}

async fn two_activations_racing_in_one_role_leave_exactly_one_active(s: Arc<dyn Store>) {
    seed(&s).await;
    for round in 0..4 {
        // One CA of a role is prepared at a time: a second is refused.
        let ids = [format!("svc-{round}-a"), format!("svc-{round}-b")];
        s.insert_ca(&ca(&ids[0], CaRole::Services, Prepared, NOW + 10 * round)).await.unwrap();
        let second = s.insert_ca(&ca(&ids[1], CaRole::Services, Prepared, NOW + 10 * round + 1)).await;
        assert!(matches!(second, Err(StoreError::Conflict { .. })), "a second prepared services CA: {second:?}");
        // The other one comes in as it was: old (a CA loaded from an older release).
        s.insert_ca(&ca(&ids[1], CaRole::Services, Old, NOW + 10 * round + 1)).await.unwrap();
        s.set_ca_state(&ids[1], Revoked, NOW + 10 * round + 2, &audit("revoke_ca", &ids[1], NOW)).await.unwrap();
        let ids = [ids[0].clone(), ids[0].clone()];
        let at = NOW + 100 + round;
        let results = join_all(ids.clone().map(|id| {
            let s = s.clone();
            async move { s.set_ca_state(&id, Active, at, &audit("activate_ca", &id, at)).await }
        }))
        .await;
        assert!(results.iter().all(Result::is_ok), "both activations are allowed, one after the other: {results:?}");
        let services: Vec<_> = s.cas().await.unwrap().into_iter().filter(|c| c.role == CaRole::Services).collect();
        let active: Vec<_> = services.iter().filter(|c| c.state == Active).map(|c| c.id.clone()).collect();
        assert_eq!(active.len(), 1, "round {round}: {services:?}");
        assert!(ids.contains(&active[0]), "the last activation wins: {active:?}");
        assert!(
            services.iter().all(|c| matches!(c.state, Active | Old | Revoked)),
            "every other one is old (or revoked): {services:?}"
        );
    }
    assert_eq!(active_ids(&s).await.len(), 3, "one active CA per role");
}

async fn a_step_the_rotation_forbids_is_refused_and_changes_nothing(s: Arc<dyn Store>) {
    seed(&s).await;
    s.insert_ca(&ca("svc-p", CaRole::Services, Prepared, NOW + 10)).await.unwrap();
    s.insert_ca(&ca("svc-old", CaRole::Services, Old, NOW + 11)).await.unwrap();
    s.insert_ca(&ca("svc-r", CaRole::Transport, Prepared, NOW + 12)).await.unwrap();
    s.set_ca_state("svc-r", Revoked, NOW + 13, &audit("revoke_ca", "svc-r", NOW + 13)).await.unwrap();
    let (cas, revision, audited) = (s.cas().await.unwrap(), s.change_revision().await.unwrap(), audit_len(&s).await);

    // (CA, the state asked for)
    for (id, to) in [
        ("svc-r", Active),
        ("svc-old", Active),
        ("svc-p", Tainted),
        ("a-services", Tainted),
        ("a-services", Revoked),
        ("a-services", Old),
        ("svc-p", Old),
        ("svc-old", Prepared),
        ("svc-r", Tainted),
    ] {
        let from = cas.iter().find(|c| c.id == id).unwrap().state;
        let why = from.move_to(to).expect_err("the domain forbids it");
        let refused = s.set_ca_state(id, to, NOW + 20, &audit("ca_state", id, NOW + 20)).await;
        match &refused {
            Err(e @ StoreError::Refused { what, reason }) => {
                assert!(what.contains(id) && reason == why, "{id} {from} -> {to}: {e}");
                assert!(e.to_string().contains(why), "{e}");
            }
            other => panic!("{id} {from} -> {to}: expected Refused, got {other:?}"),
        }
    }
    assert_eq!(s.cas().await.unwrap(), cas, "no CA changed");
    assert_eq!(s.change_revision().await.unwrap(), revision, "no change appended");
    assert_eq!(audit_len(&s).await, audited, "a refusal is the caller's to audit");
}

async fn an_unknown_ca_is_not_found_and_nothing_is_written(s: Arc<dyn Store>) {
    seed(&s).await;
    let (cas, revision) = (s.cas().await.unwrap(), s.change_revision().await.unwrap());
    for to in [Active, Revoked, Prepared] {
        let missing = s.set_ca_state("no-such-ca", to, NOW, &audit("ca_state", "no-such-ca", NOW)).await;
        assert!(matches!(&missing, Err(StoreError::NotFound { what }) if what.contains("no-such-ca")), "{missing:?}");
    }
    assert_eq!(s.cas().await.unwrap(), cas);
    assert_eq!(s.change_revision().await.unwrap(), revision);
    assert_eq!(audit_len(&s).await, 0);
}

async fn setting_the_state_a_ca_has_writes_only_the_audit_record(s: Arc<dyn Store>) {
    seed(&s).await;
    s.insert_ca(&ca("svc-old", CaRole::Services, Old, NOW + 10)).await.unwrap();
    s.insert_ca(&ca("svc-p", CaRole::Services, Prepared, NOW + 11)).await.unwrap();
    s.set_ca_state("svc-old", Revoked, NOW + 12, &audit("revoke_ca", "svc-old", NOW + 12)).await.unwrap();
    let (cas, revision) = (s.cas().await.unwrap(), s.change_revision().await.unwrap());
    let stored = |id: &str| cas.iter().find(|c| c.id == id).unwrap().clone();

    for (id, to) in [("a-services", Active), ("svc-old", Revoked), ("svc-p", Prepared), ("a-root", Active)] {
        let again = s.set_ca_state(id, to, NOW + 50, &audit("ca_state", id, NOW + 50)).await.unwrap();
        assert_eq!(again, stored(id), "{id} is returned unchanged, state_changed_at included");
    }
    assert_eq!(s.cas().await.unwrap(), cas);
    assert_eq!(s.change_revision().await.unwrap(), revision, "no change record");
    let log = s.audit(&AuditFilter { since: Some(NOW + 50), ..Default::default() }).await.unwrap();
    assert_eq!(log.len(), 4, "each repeat is audited: {log:?}");
}

async fn every_ca_state_change_appears_in_the_change_feed(s: Arc<dyn Store>) {
    seed(&s).await;
    let base = s.change_revision().await.unwrap();
    s.insert_ca(&ca("svc-2", CaRole::Services, Prepared, NOW + 10)).await.unwrap();
    let steps = [("svc-2", Active, NOW + 20), ("a-services", Tainted, NOW + 30), ("a-services", Revoked, NOW + 40)];
    for (id, to, at) in steps {
        s.set_ca_state(id, to, at, &audit("ca_state", id, at)).await.unwrap();
    }
    let ca_change = |id: &str, at: i64| change(ChangeKind::Ca, id, at);
    assert_eq!(
        changes_after(&s, base).await,
        [
            ca_change("svc-2", NOW + 10),
            ca_change("a-services", NOW + 20),
            ca_change("svc-2", NOW + 20),
            ca_change("a-services", NOW + 30),
            ca_change("a-services", NOW + 40),
        ],
        "one change per CA whose state changed, at the change"
    );
}

async fn each_replica_keeps_only_its_last_acknowledgement_report(s: Arc<dyn Store>) {
    s.report_acknowledgements("a", r#"{"ca1":["envoy-1"]}"#, NOW).await.unwrap();
    s.report_acknowledgements("b", "{}", NOW + 1).await.unwrap();
    s.report_acknowledgements("a", "{}", NOW + 2).await.unwrap();
    let all = s.acknowledgement_reports(NOW).await.unwrap();
    assert_eq!(all, vec![("a".to_string(), "{}".to_string(), NOW + 2), ("b".to_string(), "{}".to_string(), NOW + 1)]);
    // Reports older than asked for are left out (replicas gone quiet).
    let recent = s.acknowledgement_reports(NOW + 2).await.unwrap();
    assert_eq!(recent, vec![("a".to_string(), "{}".to_string(), NOW + 2)]);
}

async fn live_certificate_counts_per_issuer_exclude_revoked_and_expired(s: Arc<dyn Store>) {
    seed(&s).await;
    assert_eq!(s.live_certificates_by_issuer(NOW).await.unwrap(), []);
    let (x, y) = ("spiffe://example.org/x", "spiffe://example.org/y");
    for c in [
        cert("s1", x, "a-services", NOW - 60, NOW + 600),
        cert("s2", y, "a-services", NOW - 60, NOW + 1),
        cert("s3", x, "a-services", NOW - 60, NOW + 600),
        cert("s4", y, "a-services", NOW - 600, NOW),
        cert("s5", y, "a-services", NOW - 600, NOW - 1),
        cert("t1", x, "a-transport", NOW - 60, NOW + 600),
        cert("t2", y, "a-transport", NOW - 60, NOW + 600),
    ] {
        s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW - 60)).await.unwrap();
    }
    s.revoke("s3", "superseded", NOW, &audit("revoke", "s3", NOW)).await.unwrap();
    s.revoke("t1", "keyCompromise", NOW, &audit("revoke", "t1", NOW)).await.unwrap();
    s.revoke("t2", "keyCompromise", NOW, &audit("revoke", "t2", NOW)).await.unwrap();
    let counts = |pairs: &[(&str, u64)]| pairs.iter().map(|(id, n)| (id.to_string(), *n)).collect::<Vec<_>>();
    assert_eq!(
        s.live_certificates_by_issuer(NOW).await.unwrap(),
        counts(&[("a-services", 2)]),
        "s3 revoked, s4 and s5 expired (not_after <= now); a-transport has none left"
    );
    assert_eq!(
        s.live_certificates_by_issuer(NOW - 1).await.unwrap(),
        counts(&[("a-services", 3)]),
        "s4 is live a second earlier"
    );
    assert_eq!(s.live_certificates_by_issuer(NOW + 1).await.unwrap(), counts(&[("a-services", 1)]));
}

async fn signing_keys_roundtrip(s: Arc<dyn Store>) {
    let (k1, k2) = (key("k1", "jwt-svid", NOW + 5), key("k2", "token", NOW + 1));
    s.insert_signing_key(&k1).await.unwrap();
    s.insert_signing_key(&k2).await.unwrap();
    assert_eq!(s.signing_keys().await.unwrap(), [k2, k1.clone()], "oldest first");
    let dup = s.insert_signing_key(&k1).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
}

async fn record_issuance_and_conflict(s: Arc<dyn Store>) {
    seed(&s).await;
    let c = cert("0a", "spiffe://example.org/web/1", "a-services", NOW - 30, NOW + 3600);
    s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await.unwrap();
    assert_eq!(s.certificate("0a").await.unwrap(), Some(c.clone()));
    assert_eq!(s.certificate("0b").await.unwrap(), None);

    let mut again = cert("0a", "spiffe://example.org/web/2", "a-services", NOW, NOW + 60);
    again.fingerprint = "other".into();
    let dup = s.record_issuance(&again, &audit("issue", &again.spiffe_id, NOW)).await;
    assert!(matches!(&dup, Err(StoreError::Conflict { what }) if what.contains("0a")), "{dup:?}");
    assert_eq!(s.certificate("0a").await.unwrap(), Some(c));
    let log = s.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(log.len(), 1, "the failed issuance wrote no audit record: {log:?}");
}

async fn certificate_filters(s: Arc<dyn Store>) {
    seed(&s).await;
    let (a, b) = ("spiffe://example.org/a", "spiffe://example.org/b");
    for c in [
        cert("a1", a, "a-services", NOW - 300, NOW + 100),
        cert("a2", a, "a-services", NOW - 200, NOW + 1000),
        cert("a3", a, "a-services", NOW - 100, NOW - 10),
        cert("a4", a, "a-services", NOW - 400, NOW),
        cert("b1", b, "a-transport", NOW - 50, NOW + 500),
    ] {
        s.record_issuance(&c, &audit("issue", a, NOW)).await.unwrap();
    }
    let list = |f: CertFilter| {
        let s = s.clone();
        async move { s.certificates(&f).await.unwrap().into_iter().map(|c| c.serial).collect::<Vec<_>>() }
    };
    assert_eq!(list(CertFilter::default()).await, ["b1", "a3", "a2", "a1", "a4"], "newest not_before first");
    let by_id = CertFilter { spiffe_id: Some(a.into()), ..Default::default() };
    assert_eq!(list(by_id).await, ["a3", "a2", "a1", "a4"]);
    let unexpired = CertFilter { unexpired_at: Some(NOW), ..Default::default() };
    assert_eq!(list(unexpired).await, ["b1", "a2", "a1"], "not_after <= now excluded");
    let expiring = CertFilter { expiring_before: Some(NOW + 500), unexpired_at: Some(NOW), ..Default::default() };
    assert_eq!(list(expiring).await, ["b1", "a1"], "not_after in (now, before]");
    let limited = CertFilter { limit: Some(2), ..Default::default() };
    assert_eq!(list(limited).await, ["b1", "a3"]);
    let all = CertFilter { spiffe_id: Some(a.into()), unexpired_at: Some(NOW), limit: Some(1), ..Default::default() };
    assert_eq!(list(all).await, ["a2"]);
}

async fn profiles_roundtrip_replace_and_delete(s: Arc<dyn Store>) {
    let (web, tenant) = (profile("pki", "web", r#"{"ttl":60}"#, NOW), profile("pki_client", "tenant", "{}", NOW + 1));
    let other = profile("pki", "api", "{}", NOW + 2);
    for p in [&web, &tenant, &other] {
        s.put_profile(p, &audit("manage_profiles", &format!("{}/{}", p.key.mount, p.key.name), p.created_at))
            .await
            .unwrap();
    }
    let names = |list: Vec<ProfileRecord>| list.into_iter().map(|p| format!("{}/{}", p.key.mount, p.key.name));
    assert_eq!(names(s.profiles().await.unwrap()).collect::<Vec<_>>(), ["pki/api", "pki/web", "pki_client/tenant"]);
    assert_eq!(s.profile(&web.key).await.unwrap(), Some(web.clone()));
    assert_eq!(s.profile(&profile_key("pki", "nope")).await.unwrap(), None);
    assert_eq!(s.profile(&profile_key("pki_client", "web")).await.unwrap(), None, "profiles live in their mount");

    let replaced = ProfileRecord { spec: r#"{"ttl":120}"#.into(), created_at: NOW + 50, updated_at: NOW + 50, ..web };
    s.put_profile(&replaced, &audit("manage_profiles", "pki/web", NOW + 50)).await.unwrap();
    let stored = s.profile(&replaced.key).await.unwrap().unwrap();
    assert_eq!((stored.spec.as_str(), stored.created_at, stored.updated_at), (r#"{"ttl":120}"#, NOW, NOW + 50));

    assert!(s.delete_profile(&replaced.key, &audit("manage_profiles", "pki/web", NOW + 60)).await.unwrap());
    assert!(!s.delete_profile(&replaced.key, &audit("manage_profiles", "pki/web", NOW + 61)).await.unwrap());
    assert_eq!(s.profile(&replaced.key).await.unwrap(), None);
    assert_eq!(s.audit(&AuditFilter::default()).await.unwrap().len(), 6, "every write audited, the no-op delete too");
    let changes = changes_after(&s, 0).await;
    let profile_changes: Vec<_> = changes.iter().filter(|c| c.0 == ChangeKind::Profile).map(|c| c.1.as_str()).collect();
    assert_eq!(profile_changes, ["pki/web", "pki_client/tenant", "pki/api", "pki/web", "pki/web"]);
}

async fn certificates_of_a_profile_and_mount(s: Arc<dyn Store>) {
    seed(&s).await;
    s.insert_ca(&ca("a-profiles", CaRole::Profiles, Active, NOW + 3)).await.unwrap();
    assert!(s.cas().await.unwrap().iter().any(|c| c.role == CaRole::Profiles && c.state == Active));
    let mut tenant = cert("c1", "", "a-profiles", NOW, NOW + 600);
    tenant.profile = Some(profile_key("pki_client", "tenant"));
    tenant.common_name = Some("tenant-acme".into());
    let mut svid = cert("c2", "spiffe://example.org/web", "a-services", NOW + 1, NOW + 600);
    svid.profile = Some(profile_key("pki", "web"));
    let plain = cert("c3", "spiffe://example.org/db", "a-services", NOW + 2, NOW + 600);
    for c in [&tenant, &svid, &plain] {
        s.record_issuance(c, &audit("issue", &c.serial, NOW)).await.unwrap();
    }
    assert_eq!(s.certificate("c1").await.unwrap(), Some(tenant.clone()));
    let of = |mount: &str| {
        let (s, mount) = (s.clone(), mount.to_string());
        async move {
            let filter = CertFilter { mount: Some(mount), ..Default::default() };
            s.certificates(&filter).await.unwrap().into_iter().map(|c| c.serial).collect::<Vec<_>>()
        }
    };
    assert_eq!(of("pki_client").await, ["c1"]);
    assert_eq!(of("pki").await, ["c2"]);
    assert!(of("other").await.is_empty());
    let revoked = s.revoke("c1", "superseded", NOW + 5, &audit("revoke", "c1", NOW + 5)).await.unwrap();
    assert_eq!(revoked.certificate.unwrap().common_name.as_deref(), Some("tenant-acme"));
}

async fn active_certificate_count(s: Arc<dyn Store>) {
    seed(&s).await;
    assert_eq!(s.active_certificate_count(NOW).await.unwrap(), 0);
    for (serial, not_after) in [("01", NOW + 10), ("02", NOW + 20), ("03", NOW), ("04", NOW - 5)] {
        let c = cert(serial, "spiffe://example.org/x", "a-services", NOW - 60, not_after);
        s.record_issuance(&c, &audit("issue", serial, NOW)).await.unwrap();
    }
    assert_eq!(s.active_certificate_count(NOW).await.unwrap(), 2);
    s.revoke("02", "superseded", NOW, &audit("revoke", "02", NOW)).await.unwrap();
    assert_eq!(s.active_certificate_count(NOW).await.unwrap(), 1);
    assert_eq!(s.active_certificate_count(NOW - 100).await.unwrap(), 3);
}

async fn revoke_outcomes(s: Arc<dyn Store>) {
    seed(&s).await;
    let id = "spiffe://example.org/r";
    for c in [
        cert("c1", id, "a-services", NOW - 60, NOW + 600),
        cert("c2", id, "a-services", NOW - 60, NOW + 600),
        cert("c3", id, "a-services", NOW - 600, NOW - 1),
        cert("c4", id, "a-transport", NOW - 60, NOW + 600),
    ] {
        s.record_issuance(&c, &audit("issue", id, NOW - 60)).await.unwrap();
    }
    let revoke = |serial: &'static str, reason: &'static str, at: i64| {
        let s = s.clone();
        async move { s.revoke(serial, reason, at, &audit("revoke", serial, at)).await.unwrap() }
    };
    let first = revoke("c1", "keyCompromise", NOW).await;
    assert_eq!(first.outcome, RevokeOutcome::Revoked);
    let c1 = s.certificate("c1").await.unwrap().unwrap();
    assert_eq!(first.certificate.as_ref(), Some(&c1), "the row after the change comes back from the revocation");
    assert_eq!(
        (c1.status, c1.revoked_at, c1.revocation_reason.as_deref()),
        (CertStatus::Revoked, Some(NOW), Some("keyCompromise"))
    );
    let again = revoke("c1", "superseded", NOW + 5).await;
    assert_eq!((again.outcome, again.certificate.as_ref()), (RevokeOutcome::AlreadyRevoked, Some(&c1)));
    assert_eq!(s.certificate("c1").await.unwrap(), Some(c1), "a second revocation changes nothing");
    assert_eq!(revoke("nope", "superseded", NOW).await.outcome, RevokeOutcome::NotFound);
    assert_eq!(revoke("c3", "superseded", NOW + 1).await.outcome, RevokeOutcome::Revoked);
    assert_eq!(revoke("c4", "superseded", NOW + 2).await.outcome, RevokeOutcome::Revoked);

    let entry = |serial: &str, issuer: &str, at: i64, reason: &str| RevokedEntry {
        serial: serial.into(),
        revoked_at: at,
        reason: Some(reason.into()),
        not_after: NOW + 600,
        issuer_id: issuer.into(),
        spiffe_id: id.into(),
        fingerprint: format!("fp-{serial}"),
    };
    let c1 = entry("c1", "a-services", NOW, "keyCompromise");
    let c4 = entry("c4", "a-transport", NOW + 2, "superseded");
    assert_eq!(s.revoked_unexpired_all(NOW).await.unwrap(), [c1, c4]);
    assert_eq!(s.revoked_unexpired_all(NOW + 600).await.unwrap(), Vec::<RevokedEntry>::new());
    let audited = s.audit(&AuditFilter::default()).await.unwrap();
    let revokes: Vec<_> = audited.iter().filter(|a| a.action == "revoke").map(|a| a.target.as_str()).collect();
    assert_eq!(revokes, ["c1", "c3", "c4"], "only revocations that changed something are audited");
}

async fn deny_revokes_identity(s: Arc<dyn Store>) {
    seed(&s).await;
    let (x, y) = ("spiffe://example.org/x", "spiffe://example.org/y");
    for c in [
        cert("x1", x, "a-services", NOW - 60, NOW + 600),
        cert("x2", x, "a-transport", NOW - 30, NOW + 600),
        cert("x3", x, "a-services", NOW - 900, NOW - 1),
        cert("x4", x, "a-services", NOW - 90, NOW + 600),
        cert("y1", y, "a-services", NOW - 60, NOW + 600),
    ] {
        s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW - 60)).await.unwrap();
    }
    s.revoke("x4", "superseded", NOW - 5, &audit("revoke", "x4", NOW - 5)).await.unwrap();

    let entry = deny_record(x, "compromised host", NOW);
    let revoked = s.deny(&entry, NOW, &audit("deny", x, NOW)).await.unwrap();
    let as_crl_entries: Vec<(&str, &str, &str, i64, Option<&str>)> = revoked
        .iter()
        .map(|r| {
            (r.issuer_id.as_str(), r.fingerprint.as_str(), r.spiffe_id.as_str(), r.revoked_at, r.reason.as_deref())
        })
        .collect();
    let reason = Some("cessationOfOperation");
    assert_eq!(
        as_crl_entries,
        [("a-services", "fp-x1", x, NOW, reason), ("a-transport", "fp-x2", x, NOW, reason)],
        "a denial returns what it revoked, as CRL entries"
    );
    assert_eq!(serials(revoked), ["x1", "x2"]);
    let status = |serial: &'static str| {
        let s = s.clone();
        async move {
            let c = s.certificate(serial).await.unwrap().unwrap();
            (c.status, c.revoked_at, c.revocation_reason)
        }
    };
    let cessation = (CertStatus::Revoked, Some(NOW), Some("cessationOfOperation".to_string()));
    assert_eq!(status("x1").await, cessation);
    assert_eq!(status("x2").await, cessation);
    assert_eq!(status("x3").await, (CertStatus::Active, None, None), "expired certificates are left alone");
    assert_eq!(status("x4").await, (CertStatus::Revoked, Some(NOW - 5), Some("superseded".into())));
    assert_eq!(status("y1").await.0, CertStatus::Active);
    assert_eq!(s.denied(x).await.unwrap(), Some(entry.clone()));
    assert_eq!(s.denied(y).await.unwrap(), None);

    let again = deny_record(x, "keyCompromise", NOW + 60);
    assert_eq!(serials(s.deny(&again, NOW + 60, &audit("deny", x, NOW + 60)).await.unwrap()), Vec::<String>::new());
    let updated = DenyRecord { reason: "keyCompromise".into(), ..entry.clone() };
    assert_eq!(s.denied(x).await.unwrap(), Some(updated.clone()), "a second deny updates the reason");

    let y_entry = deny_record(y, "keyCompromise", NOW + 100);
    assert_eq!(serials(s.deny(&y_entry, NOW + 100, &audit("deny", y, NOW + 100)).await.unwrap()), ["y1"]);
    let y1 = s.certificate("y1").await.unwrap().unwrap();
    assert_eq!(y1.revocation_reason.as_deref(), Some("keyCompromise"), "an RFC 5280 reason given is used");
    assert_eq!(s.deny_list().await.unwrap(), [updated, y_entry], "oldest first");
    let denies = s.audit(&AuditFilter { target: Some(x.into()), ..Default::default() }).await.unwrap();
    assert_eq!(denies.iter().filter(|a| a.action == "deny").count(), 2);
}

async fn allow_lifts_denial(s: Arc<dyn Store>) {
    seed(&s).await;
    let x = "spiffe://example.org/x";
    let c = cert("x1", x, "a-services", NOW - 60, NOW + 600);
    s.record_issuance(&c, &audit("issue", x, NOW)).await.unwrap();
    assert_eq!(serials(s.deny(&deny_record(x, "gone", NOW), NOW, &audit("deny", x, NOW)).await.unwrap()), ["x1"]);
    assert!(s.allow(x, &audit("allow", x, NOW + 1)).await.unwrap());
    assert_eq!(s.denied(x).await.unwrap(), None);
    assert_eq!(s.deny_list().await.unwrap(), Vec::<DenyRecord>::new());
    assert!(!s.allow(x, &audit("allow", x, NOW + 2)).await.unwrap());
    assert_eq!(s.certificate("x1").await.unwrap().unwrap().status, CertStatus::Revoked, "revoked stays revoked");
    let log = s.audit(&AuditFilter { target: Some(x.into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = log.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["issue", "deny", "allow", "allow"]);
}

/// The serials of what a denial revoked.
fn serials(revoked: Vec<RevokedEntry>) -> Vec<String> {
    revoked.into_iter().map(|r| r.serial).collect()
}

async fn consume_token_id_once(s: Arc<dyn Store>) {
    assert!(!s.token_id_used("jti-1").await.unwrap());
    assert!(s.consume_token_id("jti-1", NOW + 60).await.unwrap());
    assert!(s.token_id_used("jti-1").await.unwrap());
    assert!(!s.consume_token_id("jti-1", NOW + 60).await.unwrap(), "a replay");
    assert!(s.consume_token_id("jti-2", NOW + 60).await.unwrap());
    let results = join_all((0..16).map(|_| {
        let s = s.clone();
        async move { s.consume_token_id("jti-race", NOW + 60).await.unwrap() }
    }))
    .await;
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "exactly one concurrent use wins");
}

async fn purge_expired(s: Arc<dyn Store>) {
    seed(&s).await;
    let id = "spiffe://example.org/p";
    for (serial, not_after) in [("old", NOW - 7200), ("edge", NOW - 3600), ("grace", NOW - 100), ("live", NOW + 100)] {
        s.record_issuance(&cert(serial, id, "a-services", NOW - 9000, not_after), &audit("issue", id, NOW))
            .await
            .unwrap();
    }
    for (jti, expires_at) in [("expired", NOW - 1), ("edge", NOW), ("live", NOW + 1)] {
        assert!(s.consume_token_id(jti, expires_at).await.unwrap());
    }
    assert_eq!(s.purge_expired(NOW, 3600).await.unwrap(), 2);
    let left: BTreeSet<_> =
        s.certificates(&CertFilter::default()).await.unwrap().into_iter().map(|c| c.serial).collect();
    assert_eq!(left, BTreeSet::from(["grace".to_string(), "live".to_string()]));
    assert!(s.consume_token_id("expired", NOW + 60).await.unwrap(), "purged ids are forgotten");
    assert!(s.consume_token_id("edge", NOW + 60).await.unwrap(), "expires_at <= now is purged");
    assert!(!s.consume_token_id("live", NOW + 60).await.unwrap(), "unexpired ids are kept");
    assert_eq!(s.purge_expired(NOW, 3600).await.unwrap(), 0);
}

async fn audit_log(s: Arc<dyn Store>) {
    for i in 0..10 {
        let target = if i % 2 == 0 { "even" } else { "odd" };
        let record = AuditRecord { id: 999, reason: format!("r{i}"), ..audit(&format!("a{i}"), target, NOW + i) };
        s.append_audit(&record).await.unwrap();
    }
    let all = s.audit(&AuditFilter::default()).await.unwrap();
    let actions = |records: &[AuditRecord]| records.iter().map(|r| r.action.clone()).collect::<Vec<_>>();
    assert_eq!(actions(&all), (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>(), "oldest first");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids are assigned by the store, increasing");
    let first = &all[0];
    assert_eq!((first.at, first.actor.as_str(), first.target.as_str()), (NOW, "admin", "even"));
    assert_eq!((first.outcome.as_str(), first.reason.as_str()), ("ok", "r0"));

    let query = |f: AuditFilter| {
        let s = s.clone();
        async move { actions(&s.audit(&f).await.unwrap()) }
    };
    assert_eq!(query(AuditFilter { since: Some(NOW + 7), ..Default::default() }).await, ["a7", "a8", "a9"]);
    assert_eq!(
        query(AuditFilter { target: Some("odd".into()), ..Default::default() }).await,
        ["a1", "a3", "a5", "a7", "a9"]
    );
    assert_eq!(
        query(AuditFilter { limit: Some(3), ..Default::default() }).await,
        ["a7", "a8", "a9"],
        "the newest ones"
    );
    let combined = AuditFilter { since: Some(NOW + 2), target: Some("even".into()), limit: Some(2), before_id: None };
    assert_eq!(query(combined).await, ["a6", "a8"]);
    // Paging from the newest: each page continues below the oldest id of the last.
    let mut pages = Vec::new();
    let mut before_id = None;
    loop {
        let page = s.audit(&AuditFilter { limit: Some(4), before_id, ..Default::default() }).await.unwrap();
        let Some(oldest) = page.first() else { break };
        before_id = Some(oldest.id);
        pages.push(actions(&page));
    }
    assert_eq!(pages, [vec!["a6", "a7", "a8", "a9"], vec!["a2", "a3", "a4", "a5"], vec!["a0", "a1"]]);
}

async fn concurrent_issuance(s: Arc<dyn Store>) {
    seed(&s).await;
    join_all((0..32).map(|i| {
        let s = s.clone();
        async move {
            let c = cert(&format!("{i:02x}"), &format!("spiffe://example.org/w/{i}"), "a-services", NOW, NOW + 3600);
            s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await.unwrap();
        }
    }))
    .await;
    assert_eq!(s.certificates(&CertFilter::default()).await.unwrap().len(), 32);
    assert_eq!(s.active_certificate_count(NOW).await.unwrap(), 32);
    assert_eq!(s.audit(&AuditFilter::default()).await.unwrap().len(), 32);
}

/// The deny list is checked inside the issuance's own transaction: a denied
/// identity's certificate is refused with nothing stored, not even its audit
/// record, while other records of the same group commit go through.
async fn issuance_of_a_denied_identity_stores_nothing(s: Arc<dyn Store>) {
    seed(&s).await;
    let (x, y) = ("spiffe://example.org/x", "spiffe://example.org/y");
    s.deny(&deny_record(x, "stolen", NOW), NOW, &audit("deny", x, NOW)).await.unwrap();
    let audits_before = s.audit(&AuditFilter::default()).await.unwrap().len();
    let results = join_all((0..8).map(|i| {
        let s = s.clone();
        async move {
            let id = if i % 2 == 0 { x } else { y };
            let c = cert(&format!("d{i}"), id, "a-services", NOW, NOW + 3600);
            s.record_issuance(&c, &audit("issue", id, NOW)).await.unwrap()
        }
    }))
    .await;
    assert_eq!(results, [false, true, false, true, false, true, false, true]);
    let stored: Vec<String> =
        s.certificates(&CertFilter::default()).await.unwrap().into_iter().map(|c| c.serial).collect();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|serial| ["d1", "d3", "d5", "d7"].contains(&serial.as_str())), "{stored:?}");
    assert_eq!(s.audit(&AuditFilter::default()).await.unwrap().len(), audits_before + 4);
    s.allow(x, &audit("allow", x, NOW)).await.unwrap();
    let c = cert("d8", x, "a-services", NOW, NOW + 3600);
    assert!(s.record_issuance(&c, &audit("issue", x, NOW)).await.unwrap(), "allowed again");
}

/// Issuances of one identity racing its denial: whatever the interleaving,
/// each certificate is either refused or revoked by the denial. None stays
/// active (with a check-then-insert, one could slip in after the revocation).
async fn issuance_racing_a_denial_leaves_no_live_certificate(s: Arc<dyn Store>) {
    seed(&s).await;
    let x = "spiffe://example.org/raced";
    let issuing = join_all((0..60).map(|i| {
        let s = s.clone();
        async move {
            let c = cert(&format!("r{i:02}"), x, "a-services", NOW, NOW + 3600);
            s.record_issuance(&c, &audit("issue", x, NOW)).await.unwrap()
        }
    }));
    let denying = {
        let s = s.clone();
        async move {
            tokio::task::yield_now().await;
            s.deny(&deny_record(x, "stolen", NOW), NOW, &audit("deny", x, NOW)).await.unwrap()
        }
    };
    let (stored, revoked) = tokio::join!(issuing, denying);
    let certs = s.certificates(&CertFilter { spiffe_id: Some(x.into()), ..Default::default() }).await.unwrap();
    assert_eq!(certs.len(), stored.iter().filter(|ok| **ok).count());
    assert!(certs.iter().all(|c| c.status == CertStatus::Revoked), "a live certificate of a denied identity");
    assert_eq!(revoked.len(), certs.len(), "every stored one was revoked by the denial");
}

/// Records submitted together (one SQLite group commit) succeed or fail one by
/// one: a duplicate serial among them fails alone, with its audit record.
async fn concurrent_duplicate_fails_alone(s: Arc<dyn Store>) {
    seed(&s).await;
    let results = join_all((0..40).map(|i| {
        let s = s.clone();
        async move {
            // Tasks 0 and 20 both use serial "dup".
            let serial = if i % 20 == 0 { "dup".to_string() } else { format!("s{i:02}") };
            let c = cert(&serial, &format!("spiffe://example.org/w/{i}"), "a-services", NOW, NOW + 3600);
            s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await
        }
    }))
    .await;
    let conflicts = results.iter().filter(|r| matches!(r, Err(StoreError::Conflict { .. }))).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((ok, conflicts), (39, 1), "{results:?}");
    assert_eq!(s.certificates(&CertFilter::default()).await.unwrap().len(), 39);
    assert_eq!(
        s.audit(&AuditFilter::default()).await.unwrap().len(),
        39,
        "the loser's audit record is rolled back with it"
    );
}

async fn entries_roundtrip_oldest_first(s: Arc<dyn Store>) {
    assert!(s.entries().await.unwrap().is_empty());
    let mut full = entry("e2", "spiffe://example.org/web", &["unix:uid:1000", "unix:path:/usr/bin/envoy"], NOW);
    full.dns_names = vec!["web.example.org".into(), "*.web.example.org".into()];
    full.ttl_seconds = Some(600);
    full.jwt_ttl_seconds = Some(120);
    full.hint = Some("internal \"web\" ✓".into());
    full.federates_with = vec!["other.org".into()];
    let older = entry("e9", "spiffe://example.org/db", &["unix:uid:5"], NOW - 10);
    let same_time = entry("e1", "spiffe://example.org/web", &["unix:uid:1001"], NOW);
    for e in [&full, &older, &same_time] {
        s.insert_entry(e, &audit("create_entry", &e.spiffe_id, NOW)).await.unwrap();
    }
    let stored = s.entries().await.unwrap();
    let ids: Vec<_> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e9", "e1", "e2"], "oldest first, then by id");
    let mut expected = full.clone();
    expected.selectors.sort();
    assert_eq!(stored[2], expected, "every field survives; selectors come back sorted");
    assert_eq!(stored[0], older, "absent optional fields stay absent");
    let web = AuditFilter { target: Some("spiffe://example.org/web".into()), ..Default::default() };
    assert_eq!(s.audit(&web).await.unwrap().len(), 2, "each insert wrote its audit record");
}

async fn an_entry_keeps_its_node(s: Arc<dyn Store>) {
    let mut bound = entry("n1", "spiffe://example.org/web", &["unix:uid:1000"], NOW);
    bound.node = Some("node-a".into());
    let unbound = entry("n2", "spiffe://example.org/db", &["unix:uid:1000"], NOW + 1);
    for e in [&bound, &unbound] {
        s.insert_entry(e, &audit("create_entry", &e.spiffe_id, NOW)).await.unwrap();
    }
    assert_eq!(s.entries().await.unwrap(), [bound, unbound]);
}

fn agent_record(node: &str, serial: &str, not_after: i64, at: i64) -> AgentRecord {
    AgentRecord {
        node: node.into(),
        spiffe_id: format!("spiffe://example.org/trustmesh/agent/{node}"),
        serial: serial.into(),
        not_after,
        attested_at: at,
        replica: None,
        last_seen: None,
        svids: 0,
        evicted_at: None,
    }
}

async fn an_attested_agent_renews_is_seen_and_is_evicted_once(s: Arc<dyn Store>) {
    assert!(s.agents().await.unwrap().is_empty());
    let first = agent_record("node-a", "01", NOW + 100, NOW);
    assert!(s.put_agent(&first, true, &audit("attest_agent", &first.spiffe_id, NOW)).await.unwrap());
    let renewed = agent_record("node-a", "02", NOW + 200, NOW + 50);
    assert!(s.put_agent(&renewed, false, &audit("renew_agent", &first.spiffe_id, NOW + 50)).await.unwrap());
    s.agent_seen("node-a", Some("replica-1".into()), NOW + 60, 7).await.unwrap();
    let seen = s.agent("node-a").await.unwrap().unwrap();
    assert_eq!(
        (seen.serial.as_str(), seen.not_after, seen.attested_at),
        ("02", NOW + 200, NOW),
        "a renewal keeps the attestation time"
    );
    assert_eq!((seen.replica.as_deref(), seen.last_seen, seen.svids), (Some("replica-1"), Some(NOW + 60), 7));

    assert!(s.evict_agent("node-a", NOW + 70, &audit("evict_agent", &first.spiffe_id, NOW + 70)).await.unwrap());
    assert!(
        !s.evict_agent("node-a", NOW + 71, &audit("evict_agent", &first.spiffe_id, NOW + 71)).await.unwrap(),
        "once"
    );
    assert!(!s.evict_agent("node-z", NOW + 71, &audit("evict_agent", "node-z", NOW + 71)).await.unwrap(), "unknown");
    let evicted = s.agent("node-a").await.unwrap().unwrap();
    assert_eq!((evicted.evicted_at, evicted.replica), (Some(NOW + 70), None));
    // An evicted node's renewal changes nothing; a new attestation lifts the eviction.
    let late = agent_record("node-a", "03", NOW + 300, NOW + 80);
    assert!(!s.put_agent(&late, false, &audit("renew_agent", &late.spiffe_id, NOW + 80)).await.unwrap());
    assert_eq!(s.agent("node-a").await.unwrap().unwrap().serial, "02");
    let again = agent_record("node-a", "04", NOW + 400, NOW + 90);
    assert!(s.put_agent(&again, true, &audit("attest_agent", &again.spiffe_id, NOW + 90)).await.unwrap());
    let back = s.agent("node-a").await.unwrap().unwrap();
    assert_eq!((back.serial.as_str(), back.evicted_at, back.attested_at), ("04", None, NOW + 90));
    let actions: Vec<String> = s.audit(&AuditFilter::default()).await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(
        actions,
        ["attest_agent", "renew_agent", "evict_agent", "renew_agent", "attest_agent"],
        "refused evictions write none"
    );
}

async fn certificates_are_listed_by_the_node_that_obtained_them(s: Arc<dyn Store>) {
    seed(&s).await;
    let mut a = cert("0a", "spiffe://example.org/web", "a-services", NOW, NOW + 100);
    a.node = Some("node-a".into());
    let mut b = cert("0b", "spiffe://example.org/web", "a-services", NOW, NOW + 100);
    b.node = Some("node-b".into());
    let own = cert("0c", "spiffe://example.org/web", "a-services", NOW, NOW + 100);
    for c in [&a, &b, &own] {
        assert!(s.record_issuance(c, &audit("obtain_svid", &c.spiffe_id, NOW)).await.unwrap());
    }
    let of_a = s.certificates(&CertFilter { node: Some("node-a".into()), ..Default::default() }).await.unwrap();
    assert_eq!(of_a, [a]);
}

async fn entry_conflicts(s: Arc<dyn Store>) {
    let first = entry("a1", "spiffe://example.org/web", &["unix:gid:1000", "unix:uid:1000"], NOW);
    s.insert_entry(&first, &audit("create_entry", &first.spiffe_id, NOW)).await.unwrap();
    // the same SPIFFE ID and selector set, in another order and with a duplicate
    let again = entry("a2", "spiffe://example.org/web", &["unix:gid:1000", "unix:uid:1000", "unix:gid:1000"], NOW);
    let dup = s.insert_entry(&again, &audit("create_entry", &again.spiffe_id, NOW)).await;
    assert!(matches!(&dup, Err(StoreError::Conflict { what }) if what.contains("spiffe://example.org/web")), "{dup:?}");
    let same_id = entry("a1", "spiffe://example.org/other", &["unix:uid:1"], NOW);
    let dup = s.insert_entry(&same_id, &audit("create_entry", &same_id.spiffe_id, NOW)).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert_eq!(s.entries().await.unwrap(), std::slice::from_ref(&first), "failed inserts change nothing");
    assert_eq!(s.audit(&AuditFilter::default()).await.unwrap().len(), 1, "and write no audit record");

    // a subset, a superset or another identity with the same selectors are distinct entries
    for (id, spiffe_id, sels) in [
        ("b1", "spiffe://example.org/web", &["unix:uid:1000"][..]),
        ("b2", "spiffe://example.org/web", &["unix:uid:1000", "unix:gid:1000", "unix:user:web"][..]),
        ("b3", "spiffe://example.org/api", &["unix:uid:1000", "unix:gid:1000"][..]),
    ] {
        s.insert_entry(&entry(id, spiffe_id, sels, NOW), &audit("create_entry", spiffe_id, NOW)).await.unwrap();
    }
    assert_eq!(s.entries().await.unwrap().len(), 4);
}

async fn delete_entry_outcomes(s: Arc<dyn Store>) {
    let e = entry("d1", "spiffe://example.org/web", &["unix:uid:1000"], NOW);
    s.insert_entry(&e, &audit("create_entry", &e.spiffe_id, NOW)).await.unwrap();
    assert!(s.delete_entry("d1", &audit("delete_entry", &e.spiffe_id, NOW + 1)).await.unwrap());
    assert!(s.entries().await.unwrap().is_empty());
    assert!(!s.delete_entry("d1", &audit("delete_entry", &e.spiffe_id, NOW + 2)).await.unwrap());
    assert!(!s.delete_entry("never", &audit("delete_entry", "", NOW + 3)).await.unwrap());
    let actions: Vec<_> = s.audit(&AuditFilter::default()).await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(actions, ["create_entry", "delete_entry"], "only a real deletion is audited as one");
    // the same identity and selectors may be registered again once deleted
    let back = entry("d2", "spiffe://example.org/web", &["unix:uid:1000"], NOW + 4);
    s.insert_entry(&back, &audit("create_entry", &back.spiffe_id, NOW + 4)).await.unwrap();
    assert_eq!(s.entries().await.unwrap(), [back]);
}

async fn concurrent_duplicate_entries(s: Arc<dyn Store>) {
    let results = join_all((0..8).map(|i| {
        let s = s.clone();
        async move {
            let e = entry(&format!("c{i}"), "spiffe://example.org/race", &["token:sub:node-a"], NOW + i);
            s.insert_entry(&e, &audit("create_entry", &e.spiffe_id, NOW)).await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results.iter().filter(|r| matches!(r, Err(StoreError::Conflict { .. }))).count();
    assert_eq!((ok, conflicts), (1, 7), "{results:?}");
    assert_eq!(s.entries().await.unwrap().len(), 1);
    assert_eq!(s.audit(&AuditFilter::default()).await.unwrap().len(), 1);
    let won = s.entries().await.unwrap().remove(0);
    assert_eq!(changes_after(&s, 0).await, [change(ChangeKind::Entry, &won.id, NOW)], "only the winner's change");
}

async fn changes_record_revocations(s: Arc<dyn Store>) {
    seed(&s).await;
    let base = s.change_revision().await.unwrap();
    let id = "spiffe://example.org/r";
    for serial in ["c1", "c2"] {
        let c = cert(serial, id, "a-services", NOW - 60, NOW + 600);
        s.record_issuance(&c, &audit("issue", id, NOW - 60)).await.unwrap();
    }
    assert_eq!(changes_after(&s, base).await, [], "issuance is no change other replicas apply");
    let revoke = |serial: &'static str, at: i64| {
        let s = s.clone();
        async move { s.revoke(serial, "keyCompromise", at, &audit("revoke", serial, at)).await.unwrap() }
    };
    assert_eq!(revoke("c1", NOW).await.outcome, RevokeOutcome::Revoked);
    assert_eq!(revoke("c1", NOW + 5).await.outcome, RevokeOutcome::AlreadyRevoked);
    assert_eq!(revoke("nope", NOW + 6).await.outcome, RevokeOutcome::NotFound);
    assert_eq!(revoke("c2", NOW + 7).await.outcome, RevokeOutcome::Revoked);
    assert_eq!(
        changes_after(&s, base).await,
        [change(ChangeKind::Revoke, "c1", NOW), change(ChangeKind::Revoke, "c2", NOW + 7)],
        "one change per revocation that changed something, at the revocation time"
    );
}

async fn changes_record_denials(s: Arc<dyn Store>) {
    seed(&s).await;
    let (x, y) = ("spiffe://example.org/x", "spiffe://example.org/y");
    let c = cert("x1", x, "a-services", NOW - 60, NOW + 600);
    s.record_issuance(&c, &audit("issue", x, NOW - 60)).await.unwrap();
    let base = s.change_revision().await.unwrap();
    assert_eq!(serials(s.deny(&deny_record(x, "gone", NOW), NOW, &audit("deny", x, NOW)).await.unwrap()), ["x1"]);
    let again = deny_record(x, "keyCompromise", NOW + 60);
    assert_eq!(serials(s.deny(&again, NOW + 60, &audit("deny", x, NOW + 60)).await.unwrap()), Vec::<String>::new());
    assert!(s.allow(x, &audit("allow", x, NOW + 70)).await.unwrap());
    assert!(!s.allow(x, &audit("allow", x, NOW + 80)).await.unwrap());
    assert!(!s.allow(y, &audit("allow", y, NOW + 90)).await.unwrap());
    assert_eq!(
        changes_after(&s, base).await,
        [
            change(ChangeKind::Deny, x, NOW),
            change(ChangeKind::Deny, x, NOW + 60),
            change(ChangeKind::Allow, x, NOW + 70)
        ],
        "every deny (the revocations it made are part of it), only allows that lifted a denial"
    );
}

async fn changes_record_entries(s: Arc<dyn Store>) {
    assert_eq!(s.change_revision().await.unwrap(), 0, "an empty feed");
    let web = "spiffe://example.org/web";
    let e1 = entry("e1", web, &["unix:uid:1000"], NOW - 100);
    s.insert_entry(&e1, &audit("create_entry", web, NOW)).await.unwrap();
    let dup = entry("e9", web, &["unix:uid:1000"], NOW);
    assert!(s.insert_entry(&dup, &audit("create_entry", web, NOW)).await.is_err());
    let e2 = entry("e2", web, &["unix:uid:1001"], NOW + 1);
    s.insert_entry(&e2, &audit("create_entry", web, NOW + 1)).await.unwrap();
    assert!(s.delete_entry("e1", &audit("delete_entry", web, NOW + 2)).await.unwrap());
    assert!(!s.delete_entry("e1", &audit("delete_entry", web, NOW + 3)).await.unwrap());
    assert!(!s.delete_entry("never", &audit("delete_entry", "", NOW + 4)).await.unwrap());
    assert_eq!(
        changes_after(&s, 0).await,
        [
            change(ChangeKind::Entry, "e1", NOW),
            change(ChangeKind::Entry, "e2", NOW + 1),
            change(ChangeKind::Entry, "e1", NOW + 2)
        ],
        "inserts and real deletions, at the audit record's time"
    );
}

async fn imported_crls_only_move_forward(s: Arc<dyn Store>) {
    assert!(s.init_hierarchy(&hierarchy("a").0, &hierarchy("a").1).await.unwrap());
    let start = s.change_revision().await.unwrap();
    let crl = |number: i64, byte: u8| ImportedCrlRecord {
        issuer_id: "a-root".into(),
        crl_der: vec![byte; 16],
        number,
        this_update: NOW,
        next_update: NOW + 86_400,
        imported_at: NOW + number,
    };
    assert!(s.import_crl(&crl(5, 1), &audit("import_crl", "a-root", NOW)).await.unwrap());
    assert_eq!(s.imported_crls().await.unwrap(), vec![crl(5, 1)]);
    // The same number again, or an older one: refused, the stored one stays.
    assert!(!s.import_crl(&crl(5, 2), &audit("import_crl", "a-root", NOW)).await.unwrap());
    assert!(!s.import_crl(&crl(4, 3), &audit("import_crl", "a-root", NOW)).await.unwrap());
    assert_eq!(s.imported_crls().await.unwrap(), vec![crl(5, 1)]);
    assert!(s.import_crl(&crl(6, 4), &audit("import_crl", "a-root", NOW)).await.unwrap());
    assert_eq!(s.imported_crls().await.unwrap(), vec![crl(6, 4)]);
    // Every attempt is audited; only the stored ones are changes.
    let audited = s.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(audited.iter().filter(|a| a.action == "import_crl").count(), 4);
    let changes = changes_after(&s, start).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().all(|c| c.0 == ChangeKind::Ca && c.1 == "a-root"));
    // Only a CA of this database can have one.
    let stranger = ImportedCrlRecord { issuer_id: "nobody".into(), ..crl(9, 5) };
    assert!(s.import_crl(&stranger, &audit("import_crl", "nobody", NOW)).await.is_err());
}

async fn changes_record_cas_and_keys(s: Arc<dyn Store>) {
    assert!(s.init_hierarchy(&hierarchy("a").0, &hierarchy("a").1).await.unwrap());
    assert_eq!(
        changes_after(&s, 0).await,
        [
            change(ChangeKind::Ca, "a-root", NOW),
            change(ChangeKind::Ca, "a-services", NOW + 1),
            change(ChangeKind::Ca, "a-transport", NOW + 2),
            change(ChangeKind::SigningKey, "a-token", NOW),
            change(ChangeKind::SigningKey, "a-jwt", NOW + 1),
        ],
        "one change per CA and per key, at their creation"
    );
    let base = s.change_revision().await.unwrap();
    assert!(!s.init_hierarchy(&hierarchy("b").0, &hierarchy("b").1).await.unwrap());
    s.insert_ca(&ca("svc-2", CaRole::Services, Active, NOW + 10)).await.unwrap();
    assert!(s.insert_ca(&ca("svc-2", CaRole::Services, Active, NOW + 11)).await.is_err());
    s.insert_signing_key(&key("k1", "jwt-svid", NOW + 5)).await.unwrap();
    assert!(s.insert_signing_key(&key("k1", "jwt-svid", NOW + 6)).await.is_err());
    assert_eq!(
        changes_after(&s, base).await,
        [
            change(ChangeKind::Ca, "a-services", NOW + 10),
            change(ChangeKind::Ca, "svc-2", NOW + 10),
            change(ChangeKind::SigningKey, "k1", NOW + 5)
        ],
        "one change per CA the insert changed; a refused init or a conflict appends nothing"
    );
}

async fn changes_since_pages_in_order(s: Arc<dyn Store>) {
    assert_eq!(s.changes_since(0, 10).await.unwrap(), ChangeBatch::default());
    for i in 0..10 {
        let e = entry(&format!("e{i}"), "spiffe://example.org/p", &[&format!("unix:uid:{i}")], NOW);
        s.insert_entry(&e, &audit("create_entry", &e.spiffe_id, NOW + i)).await.unwrap();
    }
    let all = s.changes_since(0, 100).await.unwrap();
    assert!(!all.truncated);
    let all = all.changes;
    let subjects: Vec<_> = all.iter().map(|c| c.subject.clone()).collect();
    assert_eq!(subjects, (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>(), "oldest first");
    assert!(all.windows(2).all(|w| w[0].revision < w[1].revision), "{all:?}");
    assert!(all[0].revision > 0);
    assert_eq!(s.change_revision().await.unwrap(), all[9].revision);

    let (mut after, mut paged, mut pages) = (0, Vec::new(), 0);
    loop {
        let batch = s.changes_since(after, 3).await.unwrap();
        assert!(!batch.truncated && batch.changes.len() <= 3);
        let Some(last) = batch.changes.last() else { break };
        after = last.revision;
        paged.extend(batch.changes);
        pages += 1;
    }
    assert_eq!((paged, pages), (all.clone(), 4), "3 + 3 + 3 + 1");
    assert_eq!(s.changes_since(all[4].revision, 2).await.unwrap().changes, all[5..7]);
    assert_eq!(s.changes_since(0, 0).await.unwrap(), ChangeBatch::default());
    assert_eq!(s.changes_since(all[9].revision, 10).await.unwrap(), ChangeBatch::default());
}

async fn changes_purge_truncates(s: Arc<dyn Store>) {
    const DAY: i64 = 86_400;
    assert_eq!(CHANGE_RETENTION, 7 * DAY);
    for (id, at) in [("old1", NOW - 9 * DAY), ("old2", NOW - 8 * DAY), ("edge", NOW - 7 * DAY), ("new1", NOW - DAY)] {
        let e = entry(id, "spiffe://example.org/p", &[&format!("unix:user:{id}")], at);
        s.insert_entry(&e, &audit("create_entry", &e.spiffe_id, at)).await.unwrap();
    }
    let rev: Vec<i64> = s.changes_since(0, 10).await.unwrap().changes.iter().map(|c| c.revision).collect();
    assert_eq!(rev.len(), 4);
    s.purge_expired(NOW, 0).await.unwrap();

    let new1 = vec![change(ChangeKind::Entry, "new1", NOW - DAY)];
    let since = |after: i64| {
        let s = s.clone();
        async move {
            let batch = s.changes_since(after, 10).await.unwrap();
            (batch.truncated, batch.changes.into_iter().map(|c| (c.kind, c.subject, c.at)).collect::<Vec<_>>())
        }
    };
    assert_eq!(since(0).await, (true, new1.clone()), "changes at or before now - retention are purged");
    assert_eq!(since(rev[1]).await, (true, new1.clone()), "a reader behind the purge must reload");
    assert_eq!(since(rev[2]).await, (false, new1.clone()), "a reader past the purge missed nothing");
    assert_eq!(s.change_revision().await.unwrap(), rev[3]);

    s.purge_expired(NOW + 7 * DAY, 0).await.unwrap();
    assert_eq!(since(rev[3]).await, (false, vec![]), "everything purged, nothing missed");
    assert_eq!(since(rev[2]).await, (true, vec![]));
    assert_eq!(s.change_revision().await.unwrap(), rev[3], "the revision survives the purge of its record");

    // A new change after a full purge: a fresh revision (never reused). Then
    // an old-dated change purged before a newer-dated one: the mark never
    // goes back.
    let p = entry("p", "spiffe://example.org/q", &["unix:uid:1"], NOW);
    s.insert_entry(&p, &audit("create_entry", &p.spiffe_id, NOW + 7 * DAY)).await.unwrap();
    let q = entry("q", "spiffe://example.org/q", &["unix:uid:2"], NOW);
    s.insert_entry(&q, &audit("create_entry", &q.spiffe_id, NOW - 30 * DAY)).await.unwrap();
    let all = s.changes_since(rev[3], 10).await.unwrap().changes;
    assert_eq!(all.len(), 2, "{all:?}");
    let (rp, rq) = (all[0].revision, all[1].revision);
    s.purge_expired(NOW + 7 * DAY, 0).await.unwrap();
    assert_eq!(since(rq).await, (false, vec![]));
    assert!(since(rp).await.0, "rows below the highest purged revision may be gone");
    s.purge_expired(NOW + 14 * DAY, 0).await.unwrap();
    assert_eq!(since(rq).await, (false, vec![]), "purging an older revision later keeps the mark");
    assert_eq!(s.change_revision().await.unwrap(), rq);
}

async fn revoked_unexpired_all_fields(s: Arc<dyn Store>) {
    seed(&s).await;
    let (x, y) = ("spiffe://example.org/x", "spiffe://example.org/y");
    for c in [
        cert("c1", x, "a-transport", NOW - 60, NOW + 600),
        cert("c2", y, "a-services", NOW - 60, NOW + 700),
        cert("c3", x, "a-services", NOW - 60, NOW + 800),
        cert("c4", x, "a-services", NOW - 900, NOW),
        cert("c5", y, "a-services", NOW - 60, NOW + 600),
    ] {
        s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW - 60)).await.unwrap();
    }
    for (serial, at, reason) in
        [("c1", NOW, "superseded"), ("c3", NOW + 1, "keyCompromise"), ("c2", NOW + 2, "unspecified")]
    {
        let outcome = s.revoke(serial, reason, at, &audit("revoke", serial, at)).await.unwrap().outcome;
        assert_eq!(outcome, RevokeOutcome::Revoked);
    }
    let outcome = s.revoke("c4", "superseded", NOW, &audit("revoke", "c4", NOW)).await.unwrap().outcome;
    assert_eq!(outcome, RevokeOutcome::Revoked);
    let entry = |serial: &str, issuer: &str, spiffe_id: &str, at: i64, reason: &str, not_after: i64| RevokedEntry {
        serial: serial.into(),
        revoked_at: at,
        reason: Some(reason.into()),
        not_after,
        issuer_id: issuer.into(),
        spiffe_id: spiffe_id.into(),
        fingerprint: format!("fp-{serial}"),
    };
    let expected = [
        entry("c3", "a-services", x, NOW + 1, "keyCompromise", NOW + 800),
        entry("c2", "a-services", y, NOW + 2, "unspecified", NOW + 700),
        entry("c1", "a-transport", x, NOW, "superseded", NOW + 600),
    ];
    assert_eq!(s.revoked_unexpired_all(NOW).await.unwrap(), expected, "by issuer, then revocation time; c4 expired");
    assert_eq!(s.revoked_unexpired_all(NOW + 700).await.unwrap(), expected[..1]);
}

async fn concurrent_changes_never_skipped(s: Arc<dyn Store>) {
    writers_never_outrun_a_reader([s.clone(), s.clone()], s, 100).await;
}

/// 2×`n` concurrent writes (revocations through one store, denials through
/// the other) while a reader follows `changes_since` with small pages: the
/// reader, which never looks back, collects every change exactly once.
async fn writers_never_outrun_a_reader(writers: [Arc<dyn Store>; 2], reader: Arc<dyn Store>, n: usize) {
    seed(&writers[0]).await;
    join_all((0..n).flat_map(|i| [("r", "a-services"), ("d", "a-transport")].map(|p| (i, p))).map(
        |(i, (prefix, issuer))| {
            let s = writers[0].clone();
            async move {
                let c = cert(
                    &format!("{prefix}{i:03}"),
                    &format!("spiffe://example.org/{prefix}/{i}"),
                    issuer,
                    NOW,
                    NOW + 3600,
                );
                s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await.unwrap();
            }
        },
    ))
    .await;
    let base = reader.change_revision().await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let (reader, done) = (reader.clone(), done.clone());
        tokio::spawn(async move {
            let (mut after, mut seen) = (base, Vec::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = reader.changes_since(after, 4).await.unwrap();
                assert!(!batch.truncated);
                if batch.changes.is_empty() && finished {
                    return seen;
                }
                for c in batch.changes {
                    assert!(c.revision > after, "{c:?} after {after}");
                    after = c.revision;
                    seen.push(c);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let [revoker, denier] = writers;
    let revokes = (0..n).map(|i| {
        let s = revoker.clone();
        async move {
            let serial = format!("r{i:03}");
            assert_eq!(
                s.revoke(&serial, "superseded", NOW, &audit("revoke", &serial, NOW)).await.unwrap().outcome,
                RevokeOutcome::Revoked
            );
        }
    });
    let denies = (0..n).map(|i| {
        let s = denier.clone();
        async move {
            let id = format!("spiffe://example.org/d/{i}");
            assert_eq!(s.deny(&deny_record(&id, "gone", NOW), NOW, &audit("deny", &id, NOW)).await.unwrap().len(), 1);
        }
    });
    let writes: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        revokes.map(|f| Box::pin(f) as _).chain(denies.map(|f| Box::pin(f) as _)).collect();
    join_all(writes).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.unwrap();
    let all = reader.changes_since(base, 1000).await.unwrap().changes;
    assert_eq!(all.len(), 2 * n);
    assert_eq!(seen, all, "the follower saw every change, in revision order");
}

// ---- backend-specific ------------------------------------------------------

#[tokio::test]
async fn sqlite_has_no_change_signal() {
    let (store, _dir) = sqlite_store().await;
    assert!(store.change_signal().is_none(), "one process per data directory: nobody else writes");
}

#[tokio::test]
async fn sqlite_version_2_database_gains_the_change_feed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BEFORE_V7).unwrap();
    conn.execute_batch(SQLITE_CAS_BEFORE_V6).unwrap();
    conn.execute_batch(
        "DROP TABLE profiles; DROP TABLE imported_crls; DROP TABLE changes; UPDATE schema_version SET version = 2",
    )
    .unwrap();
    drop(conn);
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    seed(&store).await;
    assert_eq!(changes_after(&store, 0).await.len(), 5);
}

/// A database written before profiles (schema 4, data in every table that
/// references the CAs) migrates without losing a row or a reference, and
/// then takes the `profiles` CA role, profiles and certificates with a mount.
#[tokio::test]
async fn sqlite_version_4_database_gains_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
        seed(&store).await;
        let c = cert("0a", "spiffe://example.org/web", "a-services", NOW, NOW + 60);
        store.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await.unwrap();
        store.revoke("0a", "keyCompromise", NOW, &audit("revoke", "0a", NOW)).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BEFORE_V7).unwrap();
    conn.execute_batch(SQLITE_CAS_BEFORE_V6).unwrap();
    conn.execute_batch("DROP TABLE profiles; DROP INDEX certificates_mount; UPDATE schema_version SET version = 4")
        .unwrap();
    drop(conn);
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    let kept = store.certificate("0a").await.unwrap().unwrap();
    assert_eq!((kept.status, kept.revoked_at, kept.profile), (CertStatus::Revoked, Some(NOW), None));
    assert_eq!(store.cas().await.unwrap().len(), 3);
    store.insert_ca(&ca("a-profiles", CaRole::Profiles, Active, NOW + 3)).await.unwrap();
    store.put_profile(&profile("pki", "web", "{}", NOW), &audit("manage_profiles", "pki/web", NOW)).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let dangling: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
    assert_eq!(dangling, 0);
    let tables: String = conn
        .query_row("SELECT group_concat(name) FROM sqlite_master WHERE name LIKE '%_v4'", [], |r| r.get(0))
        .unwrap_or_default();
    assert_eq!(tables, "", "the renamed tables are gone");
}

/// Takes a database (either dialect) back to schema 6: no agents, no nodes.
const BEFORE_V7: &str = "DROP TABLE agents; DROP INDEX certificates_node; \
     ALTER TABLE certificates DROP COLUMN node; ALTER TABLE entries DROP COLUMN node;";

/// A schema 6 database keeps its entries and certificates, which belong to
/// no node, and gains the agents table.
#[tokio::test]
async fn sqlite_version_6_database_gains_agents_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let web = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], NOW);
    {
        let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
        seed(&store).await;
        let c = cert("0a", "spiffe://example.org/web", "a-services", NOW, NOW + 60);
        store.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW)).await.unwrap();
        store.insert_entry(&web, &audit("create_entry", &web.spiffe_id, NOW)).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BEFORE_V7).unwrap();
    conn.execute_batch("UPDATE schema_version SET version = 6").unwrap();
    drop(conn);
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    assert_eq!(store.entries().await.unwrap(), [web]);
    assert_eq!(store.certificate("0a").await.unwrap().unwrap().node, None);
    let agent = agent_record("node-a", "0b", NOW + 60, NOW);
    assert!(store.put_agent(&agent, true, &audit("attest_agent", &agent.spiffe_id, NOW)).await.unwrap());
    assert_eq!(store.agents().await.unwrap().len(), 1);
}

/// Turns the `cas` table of a SQLite database back into its shape before
/// schema 6 (an `active` flag, no state), for the tests of older databases.
const SQLITE_CAS_BEFORE_V6: &str = "DROP TABLE stream_acks; \
     DROP INDEX cas_one_active_per_role; DROP INDEX cas_one_prepared_per_role; \
     ALTER TABLE cas ADD COLUMN active BOOLEAN NOT NULL DEFAULT FALSE; UPDATE cas SET active = (state = 'active'); \
     ALTER TABLE cas DROP COLUMN state; ALTER TABLE cas DROP COLUMN state_changed_at; \
     CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE active;";

/// Schema 5 had an `active` flag where schema 6 has a state: a database
/// written before CA rotation — an active and an inactive services CA, with
/// certificates from both — keeps every row and reference, its active CAs
/// become `active` and the other `old`, and rotation works on it.
#[tokio::test]
async fn sqlite_version_5_database_maps_active_cas_to_active_and_the_others_to_old() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
        fill_before_rotation(&store).await;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BEFORE_V7).unwrap();
    conn.execute_batch(SQLITE_CAS_BEFORE_V6).unwrap();
    conn.execute_batch("UPDATE schema_version SET version = 5").unwrap();
    drop(conn);
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    rotation_after_the_migration(&store).await;
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let dangling: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
    assert_eq!(dangling, 0);
    for (sql, what) in [
        ("UPDATE cas SET state = 'active' WHERE id = 'svc-old'", "a second active services CA"),
        ("UPDATE cas SET state = 'retired' WHERE id = 'svc-old'", "an unknown state"),
        ("UPDATE cas SET state = NULL WHERE id = 'svc-old'", "no state"),
    ] {
        assert!(conn.execute(sql, []).is_err(), "the schema refuses {what}");
    }
}

#[tokio::test]
async fn postgres_version_5_database_maps_active_cas_to_active_and_the_others_to_old() {
    let url = support::postgres::fresh_database().await;
    {
        let store: Arc<dyn Store> = Arc::new(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap());
        fill_before_rotation(&store).await;
    }
    let admin = admin_client(&url).await;
    admin
        .batch_execute(
            &format!("{BEFORE_V7} DROP TABLE stream_acks; DROP INDEX cas_one_active_per_role; DROP INDEX cas_one_prepared_per_role; \
             ALTER TABLE cas ADD COLUMN active BOOLEAN; \
             UPDATE cas SET active = (state = 'active'); \
             ALTER TABLE cas ALTER COLUMN active SET NOT NULL, DROP COLUMN state, DROP COLUMN state_changed_at; \
             CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE active; \
             UPDATE schema_version SET version = 5"),
        )
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap());
    rotation_after_the_migration(&store).await;
    for (sql, what) in [
        ("UPDATE cas SET state = 'active' WHERE id = 'svc-old'", "a second active services CA"),
        ("UPDATE cas SET state = 'retired' WHERE id = 'svc-old'", "an unknown state"),
        ("UPDATE cas SET state = NULL WHERE id = 'svc-old'", "no state"),
    ] {
        assert!(admin.batch_execute(sql).await.is_err(), "the schema refuses {what}");
    }
}

/// Hierarchy "a" (every CA active) and an inactive services CA `svc-old`,
/// each with a live and a revoked certificate.
async fn fill_before_rotation(s: &Arc<dyn Store>) {
    seed(s).await;
    s.insert_ca(&ca("svc-old", CaRole::Services, Old, NOW - 10)).await.unwrap();
    for (serial, issuer) in [("a1", "a-services"), ("a2", "a-services"), ("o1", "svc-old"), ("o2", "svc-old")] {
        let c = cert(serial, &format!("spiffe://example.org/{serial}"), issuer, NOW - 60, NOW + 600);
        s.record_issuance(&c, &audit("issue", &c.spiffe_id, NOW - 60)).await.unwrap();
    }
    for serial in ["a2", "o2"] {
        s.revoke(serial, "superseded", NOW, &audit("revoke", serial, NOW)).await.unwrap();
    }
}

/// What [`fill_before_rotation`] wrote, migrated to schema 6, then rotated.
async fn rotation_after_the_migration(s: &Arc<dyn Store>) {
    assert_eq!(
        states(s).await,
        state_rows(&[
            ("svc-old", Old, None),
            ("a-root", Active, None),
            ("a-services", Active, None),
            ("a-transport", Active, None),
        ]),
        "active stays active, inactive becomes old"
    );
    let live = s.live_certificates_by_issuer(NOW).await.unwrap();
    assert_eq!(live, [("a-services".to_string(), 1), ("svc-old".to_string(), 1)], "every certificate kept");
    s.insert_ca(&ca("svc-new", CaRole::Services, Prepared, NOW + 10)).await.unwrap();
    s.set_ca_state("svc-new", Active, NOW + 20, &audit("activate_ca", "svc-new", NOW + 20)).await.unwrap();
    s.set_ca_state("svc-old", Tainted, NOW + 30, &audit("taint_ca", "svc-old", NOW + 30)).await.unwrap();
    assert_eq!(
        states(s).await,
        state_rows(&[
            ("svc-old", Tainted, Some(NOW + 30)),
            ("a-root", Active, None),
            ("a-services", Old, Some(NOW + 20)),
            ("a-transport", Active, None),
            ("svc-new", Active, Some(NOW + 20)),
        ])
    );
}

/// Two replicas on one database.
async fn postgres_pair() -> (String, Arc<dyn Store>, Arc<dyn Store>) {
    let url = support::postgres::fresh_database().await;
    let connect = || async { Arc::new(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap()) };
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (connect().await, connect().await);
    (url, a, b)
}

/// A plain client on `url`, for looking behind the store's back.
async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The backend pids of this database's change listeners.
async fn listener_pids(client: &tokio_postgres::Client) -> BTreeSet<i32> {
    let sql = "SELECT pid FROM pg_stat_activity WHERE application_name = 'trustmesh-changes' \
               AND datname = current_database() AND pid <> pg_backend_pid()";
    client.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, i32>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_signal_wakes_other_replica() {
    let (_url, a, b) = postgres_pair().await;
    let mut signal = b.change_signal().expect("PostgreSQL replicas signal each other");
    signal.borrow_and_update();
    let base = b.change_revision().await.unwrap();
    let x = "spiffe://example.org/x";
    a.deny(&deny_record(x, "gone", NOW), NOW, &audit("deny", x, NOW)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), signal.changed()).await.expect("a wake-up within 1 s").unwrap();
    assert_eq!(changes_after(&b, base).await, [change(ChangeKind::Deny, x, NOW)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_reconnects_without_losing_changes() {
    let (url, a, b) = postgres_pair().await;
    let admin = admin_client(&url).await;
    let mut signal = b.change_signal().unwrap();
    let seen = *signal.borrow_and_update();
    let last = b.change_revision().await.unwrap();
    let old = listener_pids(&admin).await;
    assert_eq!(old.len(), 2, "one listener per store: {old:?}");

    let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'trustmesh-changes' \
               AND datname = current_database() AND pid <> pg_backend_pid()";
    admin.execute(sql, &[]).await.unwrap();
    // Write once both listeners are gone, before they are back (0.1 s).
    let gone = async {
        while !listener_pids(&admin).await.is_disjoint(&old) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("terminated listeners exit");
    let x = "spiffe://example.org/x";
    a.deny(&deny_record(x, "gone", NOW), NOW, &audit("deny", x, NOW)).await.unwrap();

    let bumped = tokio::time::timeout(Duration::from_secs(10), signal.wait_for(|n| *n > seen)).await;
    bumped.expect("the counter moves after the reconnect").unwrap();
    let back = async {
        loop {
            let now = listener_pids(&admin).await;
            if now.len() == 2 && now.is_disjoint(&old) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), back).await.expect("both listeners reconnect");
    assert_eq!(changes_after(&b, last).await, [change(ChangeKind::Deny, x, NOW)], "nothing lost");

    // The new connection listens.
    let y = "spiffe://example.org/y";
    a.deny(&deny_record(y, "gone", NOW + 1), NOW + 1, &audit("deny", y, NOW + 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), signal.changed()).await.expect("a wake-up within 1 s").unwrap();
    assert_eq!(changes_after(&b, last).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_replicas_never_skipped() {
    let (url, a, b) = postgres_pair().await;
    let reader: Arc<dyn Store> = Arc::new(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap());
    // Widen the gap between taking a revision and committing it (up to 20 ms),
    // so writers committing out of revision order would be caught: without
    // the change lock this fails every time.
    let slow = "CREATE FUNCTION slow_change() RETURNS trigger LANGUAGE plpgsql AS \
                $$ BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NULL; END $$; \
                CREATE TRIGGER slow_change AFTER INSERT ON changes FOR EACH ROW EXECUTE FUNCTION slow_change();";
    admin_client(&url).await.batch_execute(slow).await.unwrap();
    writers_never_outrun_a_reader([a, b], reader, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_ends_with_the_store() {
    let (url, a, b) = postgres_pair().await;
    let admin = admin_client(&url).await;
    assert_eq!(listener_pids(&admin).await.len(), 2);
    drop((a, b));
    let gone = async {
        while !listener_pids(&admin).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("dropping the store closes its listener");
}

#[tokio::test]
async fn sqlite_durable_across_reopen_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = trustmesh::store::open(&url).await.unwrap();
    seed(&store).await;
    let c = cert("01", "spiffe://example.org/d", "a-services", NOW, NOW + 60);
    store.record_issuance(&c, &audit("issue", "01", NOW)).await.unwrap();
    store.init_setting("trust_domain", "example.org").await.unwrap();
    drop(store);

    let mode = std::fs::metadata(dir.path().join("t.db")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let store = trustmesh::store::open(&url).await.unwrap();
    assert_eq!(store.certificate("01").await.unwrap(), Some(c));
    assert_eq!(store.cas().await.unwrap(), hierarchy("a").0);
    assert_eq!(store.init_setting("trust_domain", "other.org").await.unwrap(), "example.org");
}

#[tokio::test]
async fn sqlite_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    rusqlite::Connection::open(&path).unwrap().execute("UPDATE schema_version SET version = 999", []).unwrap();
    let err = trustmesh::store::sqlite::SqliteStore::open(&path).await.err();
    assert!(matches!(err, Some(StoreError::SchemaTooNew { found: 999, .. })), "{err:?}");
}

#[tokio::test]
async fn sqlite_in_memory_and_bad_urls() {
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open_in_memory().unwrap());
    ping_and_settings(store).await;
    for url in ["mysql://db", "sqlite://"] {
        let err = trustmesh::store::open(url).await.err();
        assert!(matches!(err, Some(StoreError::Url { .. })), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn sqlite_version_1_database_gains_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(BEFORE_V7).unwrap();
    conn.execute_batch(SQLITE_CAS_BEFORE_V6).unwrap();
    conn.execute_batch(
        "DROP TABLE profiles; DROP TABLE imported_crls; DROP TABLE entries; DROP TABLE changes; \
         UPDATE schema_version SET version = 1",
    )
    .unwrap();
    drop(conn);
    let store: Arc<dyn Store> = Arc::new(trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap());
    let e = entry("m1", "spiffe://example.org/web", &["unix:uid:1000"], NOW);
    store.insert_entry(&e, &audit("create_entry", &e.spiffe_id, NOW)).await.unwrap();
    drop(store);
    let store = trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.entries().await.unwrap(), [e], "entries survive a reopen");
}

#[tokio::test]
async fn sqlite_corrupt_entry_lists_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap();
    let e = entry("x1", "spiffe://example.org/web", &["unix:uid:1000"], NOW);
    store.insert_entry(&e, &audit("create_entry", &e.spiffe_id, NOW)).await.unwrap();
    drop(store);
    rusqlite::Connection::open(&path).unwrap().execute("UPDATE entries SET dns_names = 'nope'", []).unwrap();
    let store = trustmesh::store::sqlite::SqliteStore::open(&path).await.unwrap();
    let err = store.entries().await.err();
    assert!(matches!(&err, Some(StoreError::Corrupt(m)) if m.contains("x1") && m.contains("dns_names")), "{err:?}");
}

#[tokio::test]
async fn postgres_durable_across_reconnect() {
    let url = support::postgres::fresh_database().await;
    let store = trustmesh::store::open(&url).await.unwrap();
    seed(&store).await;
    drop(store);
    let store = trustmesh::store::open(&url).await.unwrap();
    assert_eq!(store.cas().await.unwrap(), hierarchy("a").0);
}

#[tokio::test]
async fn postgres_refuses_newer_schema() {
    let url = support::postgres::fresh_database().await;
    drop(trustmesh::store::postgres::PostgresStore::connect(&url).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("UPDATE schema_version SET version = 999").await.unwrap();
    let err = trustmesh::store::postgres::PostgresStore::connect(&url).await.err();
    assert!(matches!(err, Some(StoreError::SchemaTooNew { found: 999, .. })), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrate_together() {
    let url = support::postgres::fresh_database().await;
    let stores = join_all((0..4).map(|_| {
        let url = url.clone();
        async move { trustmesh::store::postgres::PostgresStore::connect(&url).await }
    }))
    .await;
    assert!(
        stores.iter().all(Result::is_ok),
        "{:?}",
        stores.iter().filter_map(|s| s.as_ref().err()).collect::<Vec<_>>()
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client.query("SELECT version FROM schema_version", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn postgres_test_server_has_no_tcp_listener() {
    let url = support::postgres::fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client.query_one("SHOW listen_addresses", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "");
}

#[tokio::test]
async fn postgres_unreachable_hides_password() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().display();
    for url in [
        format!("postgres://someone:hunter2@/db?host={host}"),
        format!("postgres://someone@/db?password=hunter2&host={host}"),
        "postgres://someone:hunter2@/db?password=hunter2&port=nope".to_string(),
    ] {
        let err = trustmesh::store::open(&url).await.err();
        let message = match &err {
            Some(StoreError::Unavailable(message)) => message.clone(),
            Some(e @ StoreError::Url { .. }) => e.to_string(),
            other => panic!("expected Unavailable or Url, got {other:?}"),
        };
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("someone"), "names the user: {message}");
    }
}

// ---- fixtures --------------------------------------------------------------

/// The changes after `after` as (kind, subject, at), checking their order.
async fn changes_after(s: &Arc<dyn Store>, after: i64) -> Vec<(ChangeKind, String, i64)> {
    let batch = s.changes_since(after, 10_000).await.unwrap();
    assert!(!batch.truncated);
    let revisions: Vec<_> = batch.changes.iter().map(|c: &ChangeRecord| c.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]) && revisions.iter().all(|r| *r > after), "{revisions:?}");
    batch.changes.into_iter().map(|c| (c.kind, c.subject, c.at)).collect()
}

fn change(kind: ChangeKind, subject: &str, at: i64) -> (ChangeKind, String, i64) {
    (kind, subject.to_string(), at)
}

/// Runs the futures concurrently, each on its own task, and returns their outputs in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// A root (key kept offline), a services and a transport CA, and two keys, ids prefixed.
fn hierarchy(prefix: &str) -> (Vec<CaRecord>, Vec<SigningKeyRecord>) {
    let mut root = ca(&format!("{prefix}-root"), CaRole::Root, Active, NOW);
    root.sealed_key = None;
    let cas = vec![
        root,
        ca(&format!("{prefix}-services"), CaRole::Services, Active, NOW + 1),
        ca(&format!("{prefix}-transport"), CaRole::Transport, Active, NOW + 2),
    ];
    (cas, vec![key(&format!("{prefix}-token"), "token", NOW), key(&format!("{prefix}-jwt"), "jwt-svid", NOW + 1)])
}

/// Initializes hierarchy "a": issuers `a-services` and `a-transport`.
async fn seed(s: &Arc<dyn Store>) {
    let (cas, keys) = hierarchy("a");
    assert!(s.init_hierarchy(&cas, &keys).await.unwrap());
}

async fn audit_len(s: &Arc<dyn Store>) -> usize {
    s.audit(&AuditFilter::default()).await.unwrap().len()
}

/// Every CA as (id, state, state_changed_at), oldest first.
async fn states(s: &Arc<dyn Store>) -> Vec<(String, CaState, Option<i64>)> {
    s.cas().await.unwrap().into_iter().map(|c| (c.id, c.state, c.state_changed_at)).collect()
}

fn state_rows(rows: &[(&str, CaState, Option<i64>)]) -> Vec<(String, CaState, Option<i64>)> {
    rows.iter().map(|(id, state, at)| (id.to_string(), *state, *at)).collect()
}

async fn active_ids(s: &Arc<dyn Store>) -> Vec<String> {
    s.cas()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.state == Active)
        .map(|c| c.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn ca(id: &str, role: CaRole, state: CaState, created_at: i64) -> CaRecord {
    CaRecord {
        id: id.into(),
        role,
        common_name: format!("trustmesh {} CA", role.as_str()),
        cert_der: format!("der of {id}").into_bytes(),
        sealed_key: Some(vec![0, 1, 2, 255]),
        not_before: created_at - 60,
        not_after: created_at + 86_400,
        state,
        state_changed_at: None,
        created_at,
    }
}

fn key(kid: &str, purpose: &str, created_at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        purpose: purpose.into(),
        public_key_der: vec![48, 89, 0, 7],
        sealed_key: vec![9, 8, 7],
        created_at,
        not_after: created_at + 3600,
    }
}

fn cert(serial: &str, spiffe_id: &str, issuer: &str, not_before: i64, not_after: i64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        spiffe_id: spiffe_id.into(),
        issuer_id: issuer.into(),
        fingerprint: format!("fp-{serial}"),
        not_before,
        not_after,
        status: CertStatus::Active,
        revoked_at: None,
        revocation_reason: None,
        cert_der: vec![0x30, 0x82, 0, 0xff],
        profile: None,
        common_name: None,
        node: None,
    }
}

fn profile_key(mount: &str, name: &str) -> ProfileKey {
    ProfileKey { mount: mount.into(), name: name.into() }
}

fn profile(mount: &str, name: &str, spec: &str, at: i64) -> ProfileRecord {
    ProfileRecord { key: profile_key(mount, name), spec: spec.into(), created_at: at, updated_at: at }
}

fn audit(action: &str, target: &str, at: i64) -> AuditRecord {
    AuditRecord {
        id: 0,
        at,
        actor: "admin".into(),
        action: action.into(),
        target: target.into(),
        outcome: "ok".into(),
        reason: String::new(),
    }
}

fn entry(id: &str, spiffe_id: &str, selectors: &[&str], created_at: i64) -> EntryRecord {
    EntryRecord {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        dns_names: vec![],
        ttl_seconds: None,
        jwt_ttl_seconds: None,
        hint: None,
        federates_with: vec![],
        created_at,
        node: None,
    }
}

fn deny_record(spiffe_id: &str, reason: &str, at: i64) -> DenyRecord {
    DenyRecord { spiffe_id: spiffe_id.into(), reason: reason.into(), denied_at: at, denied_by: "admin".into() }
}
