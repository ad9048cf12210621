//! Revocation end to end (SPEC §5), with real Envoy 1.40 processes under
//! continuous traffic: a server-side Envoy whose bootstrap comes from
//! `trustmesh envoy bootstrap` (deny-list filter over ECDS, CRLs over SDS)
//! and client-side Envoys of two identities, A and B, each with a pooled
//! keep-alive connection and with a new connection per request. Loopback and
//! Unix sockets only; every process is stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::envoy::http::{Outcome, failures, first_refusal};
use support::openssl::{normalize_serial, openssl_verify, pem_serial, presented_chain};
use support::process::poll;
use support::revocation::*;
use support::server::Server;

/// What SPEC §5 promises: a push reaches every proxy within a second.
const WITHIN: Duration = Duration::from_secs(1);

fn is_403(o: &Outcome) -> bool {
    o.result == Ok(403)
}

fn is_refused(o: &Outcome) -> bool {
    !o.is_ok()
}

#[test]
fn deny_cuts_new_handshakes_and_open_connections_within_a_second() {
    deny_cuts_within_a_second(Sds::Server);
}

/// The same promise for Envoys whose identities come from node agents
/// (SPEC §12): the denial travels server → agent stream → agent's SDS.
#[test]
fn deny_reaches_envoys_behind_node_agents_within_a_second() {
    deny_cuts_within_a_second(Sds::Agents);
}

fn deny_cuts_within_a_second(sds: Sds) {
    let scene = Scene::start_with(&[A_KEEP, A_FRESH, B_KEEP, B_FRESH], sds, &[]);
    let origin = Instant::now();
    let labels = ["a-keep", "a-fresh", "b-keep", "b-fresh"];
    let probes: Vec<_> = labels.iter().map(|l| (*l, scene.probe(l))).collect();
    // Everyone is served before the denial.
    for (label, probe) in &probes {
        let warm = probe.wait_for(Duration::from_secs(10), |o| o.iter().filter(|x| x.is_ok()).count() >= 10);
        let outcomes = probe.outcomes();
        assert!(
            warm,
            "{label}: not served before the denial: {:?}\n{}",
            failures(&outcomes, origin),
            scene.diagnostics()
        );
        assert!(failures(&outcomes, origin).is_empty(), "{label}: {:?}", failures(&outcomes, origin));
    }
    assert_eq!(scene.server.verify_failures(), (0, 0), "{}", scene.diagnostics());
    assert_eq!(scene.server.counter(DENIED_COUNTER), 0);
    // The keep-alive clients each hold exactly one connection to the server Envoy.
    for label in ["a-keep", "b-keep"] {
        assert_eq!(scene.upstream_connections(label), 1, "{label}\n{}", scene.diagnostics());
    }
    assert!(scene.upstream_connections("a-fresh") >= 10);

    let t0 = Instant::now();
    let out = scene.tm.ok(&["pki", "identity", "deny", A_ID, "--reason", "revocation test: key compromised"]);
    let t1 = Instant::now();
    assert!(out.contains("denied"), "{out}");

    // Wait (longer than the promise, to measure how late it would be) for
    // A's new handshakes to fail and A's open connection to answer 403.
    let (a_keep, a_fresh) = (&probes[0].1, &probes[1].1);
    a_fresh.wait_for(Duration::from_secs(5), |o| o.iter().any(|x| x.started >= t0 && is_refused(x)));
    a_keep.wait_for(Duration::from_secs(5), |o| o.iter().any(|x| x.started >= t0 && is_403(x)));
    let a_at_refusal = scene.backend_requests_from(A_ID);
    // Traffic goes on for a while with A refused.
    std::thread::sleep(Duration::from_millis(1500));
    let outcomes: Vec<(&str, Vec<Outcome>)> = probes.into_iter().map(|(l, p)| (l, p.stop())).collect();
    let diag = scene.diagnostics();

    // (a) A's new handshakes are refused within a second of the command returning.
    let fresh = &outcomes[1].1;
    let refused = first_refusal(fresh, t0, is_refused)
        .unwrap_or_else(|| panic!("a-fresh was never refused: {:?}\n{diag}", failures(fresh, origin)));
    let handshake_latency = refused.finished.saturating_duration_since(t1);
    // Resolution: the probes send a request every 20 ms.
    println!("`identity deny` took {:?}; A's new handshakes refused {handshake_latency:?} after it returned", t1 - t0);
    // (b) The next request on A's already-open connection gets 403 within a second.
    let keep = &outcomes[0].1;
    let forbidden = first_refusal(keep, t0, is_403)
        .unwrap_or_else(|| panic!("a-keep never got 403: {:?}\n{diag}", failures(keep, origin)));
    let open_latency = forbidden.finished.saturating_duration_since(t1);
    println!("A's already-open connection answered 403 {open_latency:?} after `identity deny` returned");
    assert!(handshake_latency <= WITHIN, "A's new handshakes refused only after {handshake_latency:?}\n{diag}");
    assert!(open_latency <= WITHIN, "A's open connection answered 403 only after {open_latency:?}\n{diag}");
    // Nothing of A was refused before the denial, and nothing of A was served
    // after the refusal began (no flapping).
    for (label, o, first) in [("a-fresh", fresh, &refused), ("a-keep", keep, &forbidden)] {
        assert!(o.iter().filter(|x| x.finished < t0).all(Outcome::is_ok), "{label}: {:?}", failures(o, origin));
        let after: Vec<&Outcome> = o.iter().filter(|x| x.started >= first.finished).collect();
        assert!(after.len() >= 20, "{label}: only {} requests after the refusal", after.len());
        assert!(after.iter().all(|x| is_refused(x)), "{label}: served again after the refusal\n{diag}");
    }
    // The open connection is refused by the deny list (403 from the RBAC
    // filter), on the same connection: the client opened no other.
    let keep_after: Vec<&Outcome> = keep.iter().filter(|x| x.started >= forbidden.finished).collect();
    assert!(keep_after.iter().all(|x| is_403(x)), "a-keep: not 403 after the first 403: {:?}", failures(keep, origin));
    assert!(forbidden.body.contains("RBAC: access denied"), "403 body {:?}", forbidden.body);
    assert_eq!(scene.upstream_connections("a-keep"), 1, "a-keep reconnected\n{diag}");
    // (A new connection of A whose handshake beat the CRL may meet the deny
    // list instead: its 403 counts too.)
    let forbidden_count = keep.iter().chain(fresh).filter(|x| is_403(x)).count() as u64;
    assert_eq!(scene.server.counter(DENIED_COUNTER), forbidden_count, "every 403 is a deny-list denial\n{diag}");
    // New handshakes are refused by the CRL: verification errors, not SAN mismatches.
    let (verify_errors, san_errors) = scene.server.verify_failures();
    assert!(verify_errors >= 1, "no ssl.fail_verify_error on the server Envoy\n{diag}");
    assert_eq!(san_errors, 0, "{diag}");
    // Nothing of A reached the backend after the refusal.
    assert_eq!(scene.backend_requests_from(A_ID), a_at_refusal, "A reached the backend after the refusal");
    // (c) B's open and new connections saw no failure at all.
    for (label, o) in &outcomes[2..] {
        assert!(o.len() >= 50, "{label}: only {} requests", o.len());
        assert!(failures(o, origin).is_empty(), "{label} failed: {:?}\n{diag}", failures(o, origin));
        assert!(o.iter().any(|x| x.started > t1 + WITHIN), "{label}: no traffic after the denial");
    }
    assert_eq!(scene.upstream_connections("b-keep"), 1, "B's open connection was replaced\n{diag}");
}

#[test]
fn allow_gives_a_fresh_certificate_and_the_old_serial_stays_revoked() {
    allow_gives_a_fresh_certificate(Sds::Server);
}

#[test]
fn allow_gives_a_fresh_certificate_behind_node_agents() {
    allow_gives_a_fresh_certificate(Sds::Agents);
}

fn allow_gives_a_fresh_certificate(sds: Sds) {
    let scene = Scene::start_with(&[A_KEEP, A_FRESH], sds, &[]);
    let old = scene.client("a-fresh").serials_of(A_ID);
    assert_eq!(old.len(), 1, "{}", scene.diagnostics());
    let old = old[0].clone();
    // The keep-alive client opens its connection with the current certificate.
    for label in ["a-keep", "a-fresh"] {
        let r = scene.request(label).unwrap();
        assert_eq!(r.status, 200, "{label}: {}\n{}", r.body, scene.diagnostics());
    }
    assert_eq!(scene.upstream_connections("a-keep"), 1);

    scene.tm.ok(&["pki", "identity", "deny", A_ID, "--reason", "revocation test"]);
    let refused = poll(Duration::from_secs(3), || scene.request("a-fresh").ok().filter(|r| r.status != 200));
    assert!(refused.is_some(), "a-fresh still served after the denial\n{}", scene.diagnostics());
    let forbidden = poll(Duration::from_secs(3), || scene.request("a-keep").ok().filter(|r| r.status == 403));
    assert!(forbidden.is_some(), "a-keep's open connection not refused after the denial\n{}", scene.diagnostics());

    let t = Instant::now();
    let out = scene.tm.ok(&["pki", "identity", "allow", A_ID]);
    assert!(out.contains("allowed again"), "{out}");
    // A's Envoys get a new certificate (a new serial in /certs) ...
    let new = poll(Duration::from_secs(10), || {
        let s = scene.client("a-fresh").serials_of(A_ID);
        (s.len() == 1 && s[0] != old).then(|| s[0].clone())
    })
    .unwrap_or_else(|| panic!("no new certificate for A after `identity allow`\n{}", scene.diagnostics()));
    println!("`identity allow` → new serial in Envoy's /certs after {:?}", t.elapsed());
    // ... and its new connections are served again, with the new certificate.
    let served = poll(Duration::from_secs(3), || scene.request("a-fresh").ok().filter(|r| r.status == 200))
        .unwrap_or_else(|| panic!("a-fresh not served after `identity allow`\n{}", scene.diagnostics()));
    assert!(served.body.contains(&format!("URI={A_ID}")), "{}", served.body);
    // The already-open connection was made with the old certificate, whose
    // serial stays revoked: still 403 (by the certificate hash), while the
    // identity itself is no longer denied.
    poll(Duration::from_secs(3), || {
        (scene.client("a-keep").serials_of(A_ID) == std::slice::from_ref(&new)).then_some(())
    })
    .unwrap_or_else(|| panic!("a-keep did not get the new certificate\n{}", scene.diagnostics()));
    assert_eq!(scene.upstream_connections("a-keep"), 1, "a-keep's connection was replaced");
    let r = scene.request("a-keep").unwrap();
    assert_eq!(
        r.status,
        403,
        "the old certificate's open connection is served again: {}\n{}",
        r.body,
        scene.diagnostics()
    );
    // The CRL still lists the old serial, not the new one; trustmesh's list agrees.
    let (crl, _) = crl_serials(&scene.tm, scene.dir.path());
    assert!(crl.contains(&old), "old serial {old} not in the CRL {crl:?}");
    assert!(!crl.contains(&new), "new serial {new} is in the CRL");
    let issued = scene.issued(A_ID);
    let status = |s: &str| issued.iter().find(|(n, _, _)| n == s).map(|(_, _, st)| st.clone());
    assert_eq!(status(&old).as_deref(), Some("revoked"), "{issued:?}");
    assert_eq!(status(&new).as_deref(), Some("active"), "{issued:?}");
}

#[test]
fn revoking_the_servers_serial_replaces_it() {
    let scene = Scene::start(&[B_FRESH]);
    let dir = scene.dir.path();
    let addr = scene.server.listener_addr(SERVER_LISTENER);
    let (cert, key) = scene.tm.generate(dir, "b-direct", B_ID, &[]);
    // The certificate the server Envoy presents on the wire is the one its /certs shows.
    let old_chain = presented_chain(addr, &cert, &key);
    let old = pem_serial(dir, &old_chain[0]);
    assert_eq!(scene.server.serials_of(SERVER_ID), std::slice::from_ref(&old), "{}", scene.diagnostics());
    let listed = scene.issued(SERVER_ID);
    let (_, listed_serial, _) =
        listed.iter().find(|(n, _, _)| *n == old).cloned().unwrap_or_else(|| {
            panic!("the server Envoy's serial {old} is not among the issued certificates {listed:?}")
        });

    let probe = scene.probe("b-fresh");
    assert!(probe.wait_for(Duration::from_secs(10), |o| o.iter().filter(|x| x.is_ok()).count() >= 10));
    let t0 = Instant::now();
    scene.tm.ok(&["pki", "cert", "revoke", &listed_serial, "--reason", "keyCompromise"]);
    let t1 = Instant::now();
    // The identity cache replaces a revoked SVID at once.
    let new = poll(Duration::from_secs(5), || {
        let s = scene.server.serials_of(SERVER_ID);
        (s.len() == 1 && s[0] != old).then(|| s[0].clone())
    })
    .unwrap_or_else(|| panic!("the server Envoy kept its revoked certificate\n{}", scene.diagnostics()));
    let replaced = t1.elapsed();
    // New handshakes succeed with the new certificate.
    let served_again = probe.wait_for(Duration::from_secs(3), |o| {
        o.iter().any(|x| x.started >= t1 + Duration::from_millis(100) && x.is_ok())
    });
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = probe.stop();
    let diag = scene.diagnostics();
    let refused = failures(&outcomes, t0);
    println!(
        "`pki cert revoke` of the server's serial (took {:?}) → new server certificate in /certs after {replaced:?}; \
         {} of {} client requests failed meanwhile",
        t1 - t0,
        refused.len(),
        outcomes.len()
    );
    assert!(replaced <= Duration::from_secs(2), "server certificate replaced only after {replaced:?}\n{diag}");
    assert!(served_again, "no request served after the replacement: {refused:?}\n{diag}");
    let settled = t1 + Duration::from_secs(2);
    let late: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= settled && !o.is_ok()).collect();
    assert!(late.is_empty(), "requests still failing 2 s after the revocation: {refused:?}\n{diag}");

    // On the wire: the new serial; the CRL lists the old one.
    let new_chain = presented_chain(addr, &cert, &key);
    assert_eq!(pem_serial(dir, &new_chain[0]), new);
    let (crl, crl_pem) = crl_serials(&scene.tm, dir);
    assert!(crl.contains(&old), "revoked serial {old} not in the CRL {crl:?}");
    assert!(!crl.contains(&new));
    // openssl, independently: the old certificate is revoked, the new one verifies.
    let bundle = scene.tm.bundle_path();
    let (ok, text) = openssl_verify(dir, "old", &old_chain, &bundle, &crl_pem);
    assert!(!ok && text.contains("certificate revoked"), "old server certificate: {text}");
    let (ok, text) = openssl_verify(dir, "new", &new_chain, &bundle, &crl_pem);
    assert!(ok, "new server certificate: {text}");
    let listed = scene.issued(SERVER_ID);
    assert!(listed.iter().any(|(n, _, st)| *n == old && st == "revoked"), "{listed:?}");
}

#[test]
fn a_denial_survives_kill_9() {
    const X_ID: &str = "spiffe://example.org/revocation/killed";
    const REASON: &str = "revocation test: denied just before kill -9";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut tm = Server::start(&data, &[]);
    tm.generate(dir.path(), "x1", X_ID, &[]);
    tm.generate(dir.path(), "x2", X_ID, &[]);
    let issued: Vec<String> = tm
        .json(&["pki", "cert", "list", "--spiffe-id", X_ID])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| normalize_serial(c["serial"].as_str().unwrap()))
        .collect();
    assert_eq!(issued.len(), 2);

    let revoked = tm.json(&["pki", "identity", "deny", X_ID, "--reason", REASON]);
    tm.kill();
    let mut revoked: Vec<String> =
        revoked.as_array().unwrap().iter().map(|s| normalize_serial(s.as_str().unwrap())).collect();
    revoked.sort();
    let mut expected = issued.clone();
    expected.sort();
    assert_eq!(revoked, expected, "deny revokes every unexpired certificate of the identity");

    let tm = Server::start(&data, &[]);
    let denied = tm.json(&["pki", "identity", "list-denied"]);
    let entry = denied.as_array().unwrap().iter().find(|d| d["spiffe_id"] == X_ID).cloned();
    let entry = entry.unwrap_or_else(|| panic!("the denial did not survive kill -9: {denied}"));
    assert_eq!(entry["reason"], REASON);
    let (crl, _) = crl_serials(&tm, dir.path());
    for s in &issued {
        assert!(crl.contains(s), "serial {s} of the denied identity not in the CRL after kill -9: {crl:?}");
    }
    let listed = tm.json(&["pki", "cert", "list", "--include-expired", "--spiffe-id", X_ID]);
    for c in listed.as_array().unwrap() {
        assert_eq!(c["status"], "revoked", "{c}");
    }
    // And it is still enforced: nothing is issued to the identity.
    let out = tm.cli(&[
        "pki",
        "cert",
        "generate",
        "--spiffe-id",
        X_ID,
        "--output-cert",
        dir.path().join("x3.pem").to_str().unwrap(),
        "--output-key",
        dir.path().join("x3.key").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a certificate was issued to a denied identity after the restart");
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"), "{}", String::from_utf8_lossy(&out.stderr));
}
