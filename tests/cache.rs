//! The identity cache in-process, on its two inputs only: a fake minter over
//! a real in-memory CA (`support::minter`) with a trust state the test
//! changes by hand, and a hand-made entries channel; a manual clock and a
//! manual timer. Nothing sleeps; the only real-time bound is a hang guard
//! around each wait.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use support::minter::FakeCa;
use time::Duration;
use tokio::sync::watch;
use trustmesh::cache::{
    CacheError, CacheInputs, CacheOptions, IdentityCache, IdentitySet, IdentitySource, IdentityWatch, ManualTimer,
};
use trustmesh::domain::{Entry, ManualClock, SpiffeId};
use x509_parser::prelude::FromDer;

use support::fixtures::{entry, selectors};

const START: i64 = 1_800_000_000;
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(20);

struct Env {
    timer: ManualTimer,
    ca: Arc<FakeCa>,
    entries: watch::Sender<Arc<Vec<Entry>>>,
    cache: Arc<IdentityCache>,
}

async fn setup(entries: Vec<Entry>) -> Env {
    setup_with(entries, CacheOptions::default()).await
}

async fn setup_with(entries: Vec<Entry>, options: CacheOptions) -> Env {
    let clock = ManualClock::at(START);
    let ca = FakeCa::new(clock.clone());
    let timer = ManualTimer::new(clock.clone());
    let (entries, rx) = watch::channel(Arc::new(entries));
    let options = CacheOptions { timer: Some(Arc::new(timer.clone())), ..options };
    let inputs = CacheInputs { minter: ca.clone(), entries: rx, trust: ca.trust(), clock: Arc::new(clock) };
    let cache = IdentityCache::with_options(inputs, options);
    cache.spawn();
    Env { timer, ca, entries, cache }
}

fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/svc/{name}")).unwrap()
}

/// Certificates ever issued to `name`.
async fn minted(env: &Env, name: &str) -> usize {
    env.ca.minted(&id(name).to_string())
}

/// The first published set that satisfies `done`.
async fn until(w: &mut IdentityWatch, done: impl Fn(&IdentitySet) -> bool) -> Arc<IdentitySet> {
    let got = tokio::time::timeout(HANG_GUARD, w.updates.wait_for(|s| done(s))).await;
    got.expect("no matching identity set in time").unwrap().clone()
}

fn names(set: &IdentitySet) -> Vec<String> {
    set.svids.iter().map(|s| s.spiffe_id.to_string()).collect()
}

fn public_key_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn first_watch_mints_once_and_same_selectors_share_the_set() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1000"])]).await;
    let w1 = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let set = w1.current();
    assert_eq!(names(&set), [id("web").to_string()]);
    assert!(set.withheld.is_empty() && set.version > 0);
    assert!(Arc::ptr_eq(&set.trust, &env.ca.snapshot()));
    let svid = set.svid("default").unwrap();
    assert!(Arc::ptr_eq(svid, set.svid(&id("web").to_string()).unwrap()));
    assert_eq!(svid.chain_der.len(), 2, "leaf then intermediate");
    assert_eq!(public_key_of(&svid.chain_der[0]), svid.key.public_key_der(), "the key matches the leaf");

    let w2 = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    assert!(Arc::ptr_eq(&w1.current(), &w2.current()), "one set, one Arc");
    assert_eq!(minted(&env, "web").await, 1);
    assert_eq!((env.cache.selector_sets(), env.cache.warm_entries()), (1, 1));
    assert_eq!(env.ca.attempts(&id("web").to_string()), 1, "one mint asked of the minter");

    assert!(matches!(env.cache.watch(selectors(&["unix:uid:7"])).await, Err(CacheError::NoEntry)));
}

#[tokio::test]
async fn extra_selectors_get_more_entries_and_shared_entries_mint_once() {
    let env = setup(vec![
        entry(id("web"), 20, &["unix:uid:1000"]),
        entry(id("envoy"), 10, &["unix:uid:1000", "unix:path:/usr/bin/envoy"]),
    ])
    .await;
    let narrow = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let wide = env.cache.watch(selectors(&["unix:uid:1000", "unix:path:/usr/bin/envoy"])).await.unwrap();
    assert_eq!(names(&narrow.current()), [id("web").to_string()]);
    assert_eq!(names(&wide.current()), [id("envoy").to_string(), id("web").to_string()], "oldest entry first");
    assert!(Arc::ptr_eq(&narrow.current().svids[0], &wide.current().svids[1]), "one SVID for both sets");
    assert_eq!((minted(&env, "web").await, minted(&env, "envoy").await), (1, 1));
    assert_eq!((env.cache.selector_sets(), env.cache.warm_entries()), (2, 2));
}

#[tokio::test]
async fn rotation_comes_between_forty_and_sixty_percent_with_a_new_key() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1000"])]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let first = w.current();
    let old = first.svids[0].clone();
    env.timer.until_sleeping(1).await;
    let deadline = env.timer.deadlines()[0];
    // The lifetime runs from issuance, not from the notBefore the CA backdates for skew.
    let issued = time::OffsetDateTime::from_unix_timestamp(START).unwrap();
    let lifetime = old.not_after - issued;
    assert!(deadline >= issued + lifetime * 0.4 && deadline <= issued + lifetime * 0.6, "{deadline}");

    let wait = deadline - time::OffsetDateTime::from_unix_timestamp(START).unwrap();
    let wait_ceil = wait.whole_seconds() + i64::from(wait.subsec_nanoseconds() > 0);
    env.timer.advance(wait_ceil - 1);
    tokio::task::yield_now().await;
    assert!(!w.updates.has_changed().unwrap(), "rotated before its time");
    assert_eq!(minted(&env, "web").await, 1);

    env.timer.advance(1);
    let next = until(&mut w, |s| s.svids.first().is_some_and(|s| s.serial != old.serial)).await;
    let new = &next.svids[0];
    assert!(next.version > first.version);
    assert_ne!(new.key.public_key_der(), old.key.public_key_der(), "a fresh key at every rotation");
    assert!(new.not_after > old.not_after);
    assert_eq!(minted(&env, "web").await, 2);
}

#[tokio::test]
async fn an_entry_no_caller_holds_is_not_rotated() {
    let env = setup(vec![entry(id("gone"), 10, &["unix:uid:1"]), entry(id("kept"), 20, &["unix:uid:2"])]).await;
    let dropped = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
    let mut kept = env.cache.watch(selectors(&["unix:uid:2"])).await.unwrap();
    let kept_serial = kept.current().svids[0].serial.clone();
    env.timer.until_sleeping(2).await;
    drop(dropped);
    assert_eq!((env.cache.selector_sets(), env.cache.warm_entries()), (1, 1));

    // Past 60 % of every lifetime: the held entry rotates (proof the timers
    // fired and the tasks ran); the released one does not.
    env.timer.advance(Duration::hours(1).whole_seconds() * 6 / 10 + 60);
    until(&mut kept, |s| s.svids[0].serial != kept_serial).await;
    assert_eq!(minted(&env, "kept").await, 2);
    assert_eq!(minted(&env, "gone").await, 1);
}

/// Opening and dropping streams in a loop once minted a certificate each
/// time (and filled the CRL when the identity was denied): a caller that
/// comes back within the SVID's lifetime gets the same one.
#[tokio::test]
async fn a_caller_that_comes_back_before_the_rotation_point_gets_the_same_svid() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1"])]).await;
    let first = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap().current().svids[0].clone();
    for _ in 0..200 {
        let again = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
        assert!(Arc::ptr_eq(&again.current().svids[0], &first), "the same SVID, not a new mint");
    }
    assert_eq!(minted(&env, "web").await, 1);
    assert_eq!((env.cache.warm_entries(), env.cache.lingering_entries()), (0, 1));

    // Past its rotation point nobody held it: it is dropped, not renewed,
    // and the next caller gets a fresh one.
    env.timer.until_sleeping(1).await;
    env.timer.advance(Duration::hours(1).whole_seconds() * 6 / 10 + 60);
    tokio::time::timeout(HANG_GUARD, async {
        while env.cache.lingering_entries() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lingering SVID is dropped at its rotation point");
    assert_eq!(minted(&env, "web").await, 1);
    let later = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
    assert_ne!(later.current().svids[0].serial, first.serial);
    assert_eq!(minted(&env, "web").await, 2);
}

/// However an entry is made to mint again (here: its SVID revoked over and
/// over), it gets a burst of mints and then one per refill interval.
#[tokio::test]
async fn mints_of_one_entry_are_rate_limited() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1"])]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
    for _ in 1..trustmesh::cache::MINT_BURST {
        let serial = w.current().svids[0].serial.clone();
        env.ca.revoke(&serial);
        until(&mut w, |s| s.svids.first().is_some_and(|v| v.serial != serial)).await;
    }
    assert_eq!(minted(&env, "web").await, trustmesh::cache::MINT_BURST as usize);
    // The budget is spent: the next revocation is replaced only once the
    // clock has earned another mint.
    let serial = w.current().svids[0].serial.clone();
    env.ca.revoke(&serial);
    let refill = trustmesh::cache::MINT_REFILL.whole_seconds();
    let now = time::OffsetDateTime::from_unix_timestamp(START).unwrap();
    env.timer.until(|deadlines| deadlines.iter().any(|d| *d <= now + Duration::seconds(refill))).await;
    assert_eq!(minted(&env, "web").await, trustmesh::cache::MINT_BURST as usize);
    env.timer.advance(refill);
    until(&mut w, |s| s.svids.first().is_some_and(|v| v.serial != serial)).await;
    assert_eq!(minted(&env, "web").await, trustmesh::cache::MINT_BURST as usize + 1);
}

#[tokio::test]
async fn entry_changes_add_and_withdraw_svids() {
    let web = entry(id("web"), 10, &["unix:uid:1000"]);
    let api = entry(id("api"), 20, &["unix:uid:1000"]);
    let env = setup(vec![web.clone(), api.clone()]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let before = w.current();
    assert_eq!(before.svids.len(), 2);

    env.entries.send_replace(Arc::new(vec![web.clone()]));
    let after = until(&mut w, |s| s.version > before.version).await;
    assert_eq!(names(&after), [id("web").to_string()], "the deleted entry is withdrawn in the next version");
    assert!(Arc::ptr_eq(&after.svids[0], &before.svids[0]));
    assert_eq!(env.cache.warm_entries(), 1);

    let db = entry(id("db"), 30, &["unix:uid:1000"]);
    env.entries.send_replace(Arc::new(vec![web, db]));
    let added = until(&mut w, |s| s.svids.len() == 2).await;
    assert_eq!(names(&added), [id("web").to_string(), id("db").to_string()]);
    assert_eq!(minted(&env, "db").await, 1);
}

#[tokio::test]
async fn a_denied_identity_is_withheld_at_once_and_returns_when_allowed() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1000"]), entry(id("api"), 20, &["unix:uid:1000"])]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let before = w.current();
    let old_web = before.svids[0].serial.clone();

    env.ca.deny(&id("web").to_string(), "key leaked");
    let denied = until(&mut w, |s| !s.withheld.is_empty()).await;
    assert_eq!(names(&denied), [id("api").to_string()]);
    assert_eq!(denied.withheld[0].0, id("web"));
    assert!(denied.withheld[0].1.contains("key leaked"), "{}", denied.withheld[0].1);
    assert!(Arc::ptr_eq(&denied.trust, &env.ca.snapshot()), "the same version carries the new CRLs");
    assert!(denied.trust.revision > before.trust.revision);

    // Past every rotation deadline: the other entry rotates, the denied one
    // stays parked (no refused issuance at each deadline).
    let api_serial = denied.svids[0].serial.clone();
    let web_attempts = env.ca.attempts(&id("web").to_string());
    env.timer.advance(Duration::hours(1).whole_seconds() * 6 / 10 + 60);
    until(&mut w, |s| s.svids.first().is_some_and(|s| s.serial != api_serial)).await;
    assert_eq!(env.ca.attempts(&id("web").to_string()), web_attempts, "no refused mint at each deadline");

    env.ca.allow(&id("web").to_string());
    let allowed = until(&mut w, |s| s.svids.len() == 2).await;
    assert!(allowed.withheld.is_empty());
    assert_ne!(allowed.svids[0].serial, old_web, "a fresh certificate after the denial is lifted");
    assert_eq!(minted(&env, "web").await, 2);

    // Denied before anyone asked: the caller gets the denial, nothing is minted.
    let fresh = setup(vec![entry(id("web"), 10, &["unix:uid:1000"])]).await;
    fresh.ca.deny(&id("web").to_string(), "retired");
    let w = fresh.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    assert!(w.current().svids.is_empty());
    assert!(w.current().withheld[0].1.contains("retired"));
    assert_eq!(minted(&fresh, "web").await, 0);
}

#[tokio::test]
async fn a_revoked_svid_is_replaced_at_once_and_the_new_crl_comes_with_it() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1000"]), entry(id("api"), 20, &["unix:uid:1000"])]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let before = w.current();
    let (web, api) = (before.svids[0].serial.clone(), before.svids[1].serial.clone());

    // No timer moves: only the revocation can make the cache mint again.
    env.ca.revoke(&web);
    let after = until(&mut w, |s| s.svids.len() == 2 && s.svids[0].serial != web).await;
    assert_eq!(after.svids[1].serial, api, "the other identity keeps its certificate");
    assert!(after.trust.deny.is_revoked(&web) && !after.trust.deny.is_revoked(&after.svids[0].serial));
    assert_eq!(minted(&env, "web").await, 2);
    assert!(Arc::ptr_eq(&after.trust, &env.ca.snapshot()), "the new CRLs come in the same version");
    // Not denied: the old certificate is cut on open connections by its hash only.
    assert!(after.trust.deny.identities.is_empty());
    assert_eq!(after.trust.deny.certificates.len(), 1);
}

#[tokio::test]
async fn svids_of_a_tainted_ca_are_reissued_one_per_interval_and_no_more() {
    let names3 = ["a", "b", "c"];
    let entries = names3.iter().enumerate().map(|(i, n)| entry(id(n), 10 + i as i64, &["unix:uid:1"])).collect();
    let env = setup_with(entries, CacheOptions { reissue_rate: 1, ..CacheOptions::default() }).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
    assert_eq!(w.current().svids.len(), 3);
    assert!(w.current().svids.iter().all(|s| s.issuer == env.ca.services_fingerprint()));
    let counts = |env: &Env| names3.map(|n| env.ca.minted(&id(n).to_string()));
    // Old (no longer active but not tainted): nothing happens.
    env.ca.set_services_state(trustmesh::domain::CaState::Old);
    let trust = env.ca.snapshot();
    until(&mut w, |s| Arc::ptr_eq(&s.trust, &trust)).await;
    assert_eq!(counts(&env), [1, 1, 1]);

    // Tainted: the first at once, then one per second of the timer.
    env.ca.set_services_state(trustmesh::domain::CaState::Tainted);
    until(&mut w, |_| minted_total(&env, &names3) == 4).await;
    for (k, expected) in [(1, 5), (2, 6)] {
        // The pacer sleeps until the next second: nothing more before it.
        env.timer.until(|d| d.iter().any(|t| t.unix_timestamp() == START + k)).await;
        assert_eq!(minted_total(&env, &names3), expected - 1);
        env.timer.advance(1);
        until(&mut w, |_| minted_total(&env, &names3) == expected).await;
    }
    assert_eq!(counts(&env), [2, 2, 2], "each SVID re-issued once");
}

fn minted_total(env: &Env, names: &[&str]) -> usize {
    names.iter().map(|n| env.ca.minted(&id(n).to_string())).sum()
}

#[tokio::test]
async fn trust_changes_reach_every_live_set_and_versions_only_move_forward() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1"]), entry(id("api"), 20, &["unix:uid:2"])]).await;
    let mut a = env.cache.watch(selectors(&["unix:uid:1"])).await.unwrap();
    let mut b = env.cache.watch(selectors(&["unix:uid:2"])).await.unwrap();
    let (a0, b0) = (a.current(), b.current());

    let trust = env.ca.publish();
    let a1 = until(&mut a, |s| Arc::ptr_eq(&s.trust, &trust)).await;
    let b1 = until(&mut b, |s| Arc::ptr_eq(&s.trust, &trust)).await;
    assert!(a1.version > a0.version && b1.version > b0.version);
    assert!(Arc::ptr_eq(&a1.svids[0], &a0.svids[0]), "a bundle change keeps the SVID");

    let mut versions = vec![a0.version, a1.version];
    env.ca.publish();
    versions.push(until(&mut a, |s| s.version > a1.version).await.version);
    env.ca.deny(&id("web").to_string(), "test");
    versions.push(until(&mut a, |s| s.svids.is_empty()).await.version);
    drop((a, b));
    let again = env.cache.watch(selectors(&["unix:uid:2"])).await.unwrap();
    versions.push(again.current().version);
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
}

#[tokio::test]
async fn a_failing_renewal_keeps_the_old_svid_until_it_expires_and_backs_off() {
    let good = entry(id("web"), 10, &["unix:uid:1000"]);
    let env = setup(vec![good.clone()]).await;
    let mut w = env.cache.watch(selectors(&["unix:uid:1000"])).await.unwrap();
    let first = w.current();
    let old = first.svids[0].clone();

    // The entry changes to one the CA refuses: the driver re-mints at once, fails, and backs off.
    let bad = Entry { dns_names: vec!["not a dns name".into()], ..good.clone() };
    env.entries.send_replace(Arc::new(vec![bad]));
    let start = time::OffsetDateTime::from_unix_timestamp(START).unwrap();
    let mut elapsed = 0;
    for backoff in [1, 2, 4, 8, 16, 30, 30] {
        env.timer.until(|d| d == [start + Duration::seconds(elapsed + backoff)]).await;
        assert!(Arc::ptr_eq(&w.current().svids[0], &old), "the old SVID is served while renewal fails");
        env.timer.advance(backoff);
        elapsed += backoff;
    }
    assert_eq!(w.current().version, first.version, "a failure that changes nothing publishes nothing");

    // Past its notAfter the old SVID goes.
    env.timer.advance((old.not_after - start).whole_seconds());
    let expired = until(&mut w, |s| s.svids.is_empty()).await;
    assert_eq!(expired.withheld[0].0, id("web"));
    assert!(expired.withheld[0].1.contains("expired"), "{}", expired.withheld[0].1);

    // Fixed: a fresh SVID at once.
    env.entries.send_replace(Arc::new(vec![good]));
    let back = until(&mut w, |s| s.svids.len() == 1).await;
    assert!(back.withheld.is_empty() && back.svids[0].serial != old.serial);
    assert_eq!(minted(&env, "web").await, 2);

    // A caller whose only entry cannot be issued is told so.
    let broken = Entry { dns_names: vec!["not a dns name".into()], ..entry(id("api"), 20, &["unix:uid:5"]) };
    env.entries.send_replace(Arc::new(vec![broken]));
    let err = env.cache.watch(selectors(&["unix:uid:5"])).await.err().unwrap();
    assert!(matches!(err, CacheError::Unavailable(ref m) if m.contains("issuance failed")), "{err}");
    assert_eq!(env.cache.selector_sets(), 1, "the failed caller's set is released");
}

#[tokio::test]
async fn a_thousand_watchers_of_one_selector_set_cost_one_mint() {
    let env = setup(vec![entry(id("web"), 10, &["unix:uid:1000"])]).await;
    let watches = futures::future::join_all((0..1000).map(|_| env.cache.watch(selectors(&["unix:uid:1000"])))).await;
    let watches: Vec<IdentityWatch> = watches.into_iter().map(Result::unwrap).collect();
    let first = watches[0].current();
    assert!(watches.iter().all(|w| Arc::ptr_eq(&w.current(), &first)));
    assert_eq!(minted(&env, "web").await, 1);
    assert_eq!((env.cache.selector_sets(), env.cache.warm_entries()), (1, 1));
    drop(watches);
    assert_eq!((env.cache.selector_sets(), env.cache.warm_entries()), (0, 0));
}
