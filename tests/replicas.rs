//! Several `trustmesh serve` processes on one real PostgreSQL database
//! (SPEC §5 across replicas): each with its own data directory, ports and
//! local socket, all with the same KEK file. A change made through one
//! replica reaches the others through the store's change feed (LISTEN/NOTIFY
//! plus catch-up by revision), also after their database connection dropped.
//! Real Envoy 1.40 for the push; loopback and Unix sockets only; every
//! process is stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::envoy::bootstrap::{client_bootstrap, server_bootstrap};
use support::envoy::http::{Outcome, Probe, Upstream, failures, first_refusal};
use support::envoy::{Envoy, envoy_alias, envoy_bin};
use support::openssl::{crl_serials_of, normalize_serial, openssl, pem_blocks};
use support::postgres;
use support::process::poll;
use support::replicas::*;
use support::server::{Server, entry_for};

/// What SPEC §5 promises: a push reaches every proxy within a second.
const WITHIN: Duration = Duration::from_secs(1);

#[test]
fn replicas_create_the_ca_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = block_on(postgres::fresh_database());
    // Both start at the same moment on the empty database, and both create
    // the shared KEK file that does not exist yet: one key wins, both use it.
    let kek = dir.path().join("shared.kek");
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (data, url, kek, barrier) = (dir.path().join(name), url.clone(), kek.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                Server::try_start(&data, &replica_args(&url, &kek))
            })
        })
        .collect();
    // Join both before judging, so a started replica is always dropped (stopped).
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut replicas = Vec::new();
    let mut failed = Vec::new();
    for result in results {
        match result {
            Ok(server) => replicas.push(server),
            Err((log, why)) => failed.push(format!("{why}\n{log}")),
        }
    }
    assert!(failed.is_empty(), "a replica did not start:\n{}", failed.join("\n"));
    let (a, b) = (&replicas[0], &replicas[1]);
    assert_eq!(support::mode(&kek), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary KEK files left behind: {leftovers:?}");

    // Both serve the same CA bundle.
    let (code_a, bundle_a) = a.get("/pki/ca/bundle");
    let (code_b, bundle_b) = b.get("/pki/ca/bundle");
    assert_eq!((code_a, code_b), (200, 200));
    let (bundle_a, bundle_b) = (String::from_utf8(bundle_a).unwrap(), String::from_utf8(bundle_b).unwrap());
    assert!(!pem_blocks(&bundle_a, "CERTIFICATE").is_empty(), "{bundle_a}");
    assert_eq!(bundle_a, bundle_b, "the replicas serve different CA bundles");

    // The database holds one root (and one CA of each other role), and it is
    // the root both serve.
    let roles: BTreeMap<String, i64> = query(&url, "SELECT role, count(*) FROM cas GROUP BY role")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    let expected: BTreeMap<String, i64> = [("root", 1), ("services", 1), ("transport", 1), ("profiles", 1)]
        .into_iter()
        .map(|(role, n)| (role.to_string(), n))
        .collect();
    assert_eq!(roles, expected, "CAs in the database by role");
    let root: Vec<u8> = query(&url, "SELECT cert_der FROM cas WHERE role = 'root'")[0].get(0);
    let served: Vec<Vec<u8>> = pem::parse_many(&bundle_a).unwrap().iter().map(|p| p.contents().to_vec()).collect();
    assert!(served.contains(&root), "the database's root is not in the served bundle");

    // Exactly one of them created the hierarchy; the other loaded it.
    let created: Vec<bool> = replicas.iter().map(|r| r.log().contains("\"PKI initialized\"")).collect();
    let loaded: Vec<bool> = replicas.iter().map(|r| r.log().contains("\"PKI loaded\"")).collect();
    assert_eq!(
        created.iter().filter(|c| **c).count(),
        1,
        "replicas that created the PKI: {created:?}\n{}{}",
        log_tail("a", a),
        log_tail("b", b)
    );
    assert_eq!(created.iter().zip(&loaded).filter(|(c, l)| **c != **l).count(), 2, "{created:?} {loaded:?}");
    println!("replica {} created the PKI, the other loaded it", if created[0] { "a" } else { "b" });
}

// ---------------------------------------------------------------------------

const SERVER_ID: &str = "spiffe://example.org/replicas/server";
const CLIENT_ID: &str = "spiffe://example.org/replicas/client";
/// The server Envoy's inbound listener and the client Envoy's outbound one.
const SERVER_LISTENER: &str = "mtls_in";
const CLIENT_ROUTE: &str = "to_server";

/// Two replicas, A and B, on a fresh database, each in its folder in `dir`:
/// the database's URL and both.
fn two_replicas(dir: &Path) -> (String, Server, Server) {
    let url = block_on(postgres::fresh_database());
    let kek = kek_file(dir);
    let a = replica(dir, "a", &url, &kek);
    let b = replica(dir, "b", &url, &kek);
    (url, a, b)
}

/// Both replicas, the backend and the Envoys, for failure messages.
fn diagnostics(a: &Server, b: &Server, envoys: &[(&str, &Envoy)]) -> String {
    let mut out = String::new();
    for (name, envoy) in envoys {
        out.push_str(&format!("{name} {}\n", envoy.diagnostics()));
    }
    out + &log_tail("a", a) + &log_tail("b", b)
}

#[test]
fn a_deny_through_replica_a_cuts_an_envoy_on_replica_b_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a, b) = two_replicas(dir.path());

    // The entries are created through A, after B started: B learns them only
    // from the feed.
    let server_bin = envoy_bin();
    let client_bin = envoy_alias(dir.path(), "replicas-client");
    let created = Instant::now();
    entry_for(&a, SERVER_ID, &server_bin);
    entry_for(&a, CLIENT_ID, &client_bin);

    // The Envoys' bootstraps come from `trustmesh envoy bootstrap` and point at B's socket only.
    let upstream = Upstream::start();
    let listener = format!("{SERVER_LISTENER}:0:{CLIENT_ID}");
    let text = server_bootstrap(&b, "replicas-server", SERVER_ID, &listener, upstream.port(), &[]);
    let server = Envoy::spawn(&server_bin, &text, &[]);
    server.wait_until("B serving the server's entry created through A", Duration::from_secs(10), |e| {
        !e.serials_of(SERVER_ID).is_empty()
    });
    println!("entry created through A → certificate from B in the server Envoy after {:?}", created.elapsed());
    server.wait_live(Duration::from_secs(30));
    server.wait_deny_list();
    let port = server.listener_port(SERVER_LISTENER);
    let route = format!("{CLIENT_ROUTE}:0:127.0.0.1:{port}:{SERVER_ID}");
    let text = client_bootstrap(&b, "replicas-client", CLIENT_ID, &route, true, &[]);
    let client = Envoy::spawn(&client_bin, &text, &[]);
    client.wait_until("B serving the client's entry created through A", Duration::from_secs(10), |e| {
        !e.serials_of(CLIENT_ID).is_empty()
    });
    client.wait_live(Duration::from_secs(30));
    let diag = || diagnostics(&a, &b, &[("server", &server), ("client", &client)]);
    // Every issued serial of both identities is one the shared database knows.
    let listed = a.json(&["pki", "cert", "list", "--spiffe-id", CLIENT_ID]);
    let listed: BTreeSet<String> =
        listed.as_array().unwrap().iter().map(|c| normalize_serial(c["serial"].as_str().unwrap())).collect();
    for serial in client.serials_of(CLIENT_ID) {
        assert!(listed.contains(&serial), "client serial {serial} not in {listed:?}");
    }

    // Continuous traffic, one new connection (handshake) per request.
    let origin = Instant::now();
    let probe = Probe::start(client.listener_addr(CLIENT_ROUTE), "/replicas", Duration::from_millis(20));
    let warm = probe.wait_for(Duration::from_secs(10), |o| o.iter().filter(|x| x.is_ok()).count() >= 10);
    assert!(warm, "not served before the denial: {:?}\n{}", failures(&probe.outcomes(), origin), diag());
    assert!(failures(&probe.outcomes(), origin).is_empty(), "{:?}", failures(&probe.outcomes(), origin));
    assert_eq!(server.verify_failures().0, 0, "{}", diag());

    let t0 = Instant::now();
    let out = a.ok(&["pki", "identity", "deny", CLIENT_ID, "--reason", "replicas test: denied through replica A"]);
    let t1 = Instant::now();
    assert!(out.contains("denied"), "{out}");
    // Wait longer than the promise, to measure how late it would be.
    probe.wait_for(Duration::from_secs(5), |o| o.iter().any(|x| x.started >= t0 && !x.is_ok()));
    std::thread::sleep(Duration::from_millis(1000));
    let outcomes = probe.stop();
    let diag = diag();

    let refused = first_refusal(&outcomes, t0, |o| !o.is_ok())
        .unwrap_or_else(|| panic!("the client was never refused: {:?}\n{diag}", failures(&outcomes, origin)));
    let latency = refused.finished.saturating_duration_since(t1);
    println!(
        "`identity deny` through A took {:?}; the client's new handshakes to the Envoy on B refused {latency:?} \
         after it returned",
        t1 - t0
    );
    assert!(latency <= WITHIN, "the client's new handshakes refused only {latency:?} after the deny returned\n{diag}");
    // Nothing was refused before the denial, nothing served after the refusal began.
    assert!(outcomes.iter().filter(|o| o.finished < t0).all(Outcome::is_ok), "{:?}", failures(&outcomes, origin));
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= refused.finished).collect();
    assert!(after.len() >= 20, "only {} requests after the refusal", after.len());
    assert!(after.iter().all(|o| !o.is_ok()), "served again after the refusal: {:?}\n{diag}", after);
    // Refused at the handshake by the CRL B pushed: verification errors, not SAN mismatches.
    let (verify_errors, san_errors) = server.verify_failures();
    assert!(verify_errors >= 1, "no ssl.fail_verify_error on the server Envoy\n{diag}");
    assert_eq!(san_errors, 0, "{diag}");
}

// ---------------------------------------------------------------------------

const R1_ID: &str = "spiffe://example.org/replicas/revoked-1";
const R2_ID: &str = "spiffe://example.org/replicas/revoked-2";
const Y_ID: &str = "spiffe://example.org/replicas/y";
const Z_ID: &str = "spiffe://example.org/replicas/z";
const W_ID: &str = "spiffe://example.org/replicas/w";
const V_ID: &str = "spiffe://example.org/replicas/v";

/// `identity deny` through `server`: the serials it revoked (normalized).
fn deny(server: &Server, id: &str) -> BTreeSet<String> {
    let revoked = server.json(&["pki", "identity", "deny", id, "--reason", "replicas test"]);
    revoked.as_array().unwrap().iter().map(|s| normalize_serial(s.as_str().unwrap())).collect()
}

/// The deny list as `identity list-denied` prints it through `server`: (ID, reason).
fn list_denied(server: &Server) -> BTreeSet<(String, String)> {
    let list = server.json(&["pki", "identity", "list-denied"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| (d["spiffe_id"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// Waits until B has applied every change: its CRLs list `revoked`, its
/// Workload API gives this test exactly `ids`. Returns how long it took.
fn converges(b: &Server, dir: &Path, revoked: &BTreeSet<String>, ids: &[&str], timeout: Duration) -> Duration {
    let socket = Server::socket_path(&b.data_dir);
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    let mut last = (BTreeSet::new(), Err(String::new()));
    let done = poll(timeout, || {
        last = (b.crl_serials(dir), workload_ids(&socket));
        (last.0.is_superset(revoked) && last.1.as_ref().is_ok_and(|got| *got == want)).then_some(())
    });
    assert!(
        done.is_some(),
        "B did not catch up within {timeout:?}: CRLs lack {:?}; Workload API gave {:?}, expected {want:?}\n{}",
        revoked.difference(&last.0).collect::<Vec<_>>(),
        last.1,
        log_tail("b", b)
    );
    start.elapsed()
}

#[test]
fn no_change_is_lost_when_a_replicas_database_connection_drops() {
    // A server of this test's own: it is stopped and started again below.
    let pg = postgres::Server::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(dir.path());
    let a = replica(dir.path(), "a", &url, &kek);
    let a_listener = poll(Duration::from_secs(5), || Some(listener_pids(&url)).filter(|p| p.len() == 1)).unwrap();
    let mut b = replica(dir.path(), "b", &url, &kek);
    let b_listener: BTreeSet<i32> = listener_pids(&url).difference(&a_listener).copied().collect();
    assert_eq!(b_listener.len(), 1, "B's change listener among {:?}", listener_pids(&url));

    // This test process is the workload: entries for its uid and executable.
    let exe = std::env::current_exe().unwrap();
    entry_for(&a, Y_ID, &exe);
    entry_for(&a, Z_ID, &exe);
    let mut revoked: BTreeSet<String> = deny(&a, Z_ID);
    let r1 = issue(&a, dir.path(), R1_ID, &[]);
    let r2 = issue(&a, dir.path(), R2_ID, &[]);
    // B follows: it serves Y and withholds the denied Z.
    converges(&b, dir.path(), &revoked, &[Y_ID], Duration::from_secs(5));

    // 1. B's listening connection is terminated; the changes follow at once.
    let sql = format!("SELECT pg_terminate_backend({})", b_listener.iter().next().unwrap());
    query(&url, &sql);
    // The changes start once the connection is gone (B reconnects after 0.1 s).
    let gone = poll(Duration::from_secs(5), || Some(()).filter(|_| listener_pids(&url).is_disjoint(&b_listener)));
    assert!(gone.is_some(), "B's terminated listener did not exit");
    let changed = Instant::now();
    a.ok(&["pki", "cert", "revoke", &r1, "--reason", "keyCompromise"]);
    revoked.insert(normalize_serial(&r1));
    revoked.extend(deny(&a, Y_ID));
    a.ok(&["pki", "identity", "allow", Z_ID]);
    entry_for(&a, W_ID, &exe);
    println!("4 changes through A {:?} after B's listener was terminated", changed.elapsed());
    let took = converges(&b, dir.path(), &revoked, &[Z_ID, W_ID], Duration::from_secs(5));
    println!("B caught up {took:?} after the last change (listener terminated)");
    // B listens again, on a new connection.
    let back = poll(Duration::from_secs(10), || {
        let now = listener_pids(&url);
        (now.len() == 2 && now.is_disjoint(&b_listener)).then_some(now)
    });
    assert!(back.is_some(), "B's change listener did not reconnect: {:?}", listener_pids(&url));
    assert_eq!(b.log().matches("change listener reconnected").count(), 1, "{}", log_tail("b", &b));
    // The CLI pointed at B agrees with A.
    let denied = list_denied(&b);
    assert_eq!(denied, list_denied(&a));
    assert_eq!(denied.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), [Y_ID]);
    let entries = b.json(&["entry", "list"]);
    assert!(entries.as_array().unwrap().iter().any(|e| e["spiffe_id"] == W_ID), "{entries}");

    // 2. The whole PostgreSQL server stops for 3 s (every connection of both
    // replicas closes) and starts again; the changes follow at once.
    pg.stop();
    std::thread::sleep(Duration::from_secs(3));
    pg.restart();
    let changed = Instant::now();
    a.ok(&["pki", "cert", "revoke", &r2, "--reason", "superseded"]);
    revoked.insert(normalize_serial(&r2));
    revoked.extend(deny(&a, Z_ID));
    a.ok(&["pki", "identity", "allow", Y_ID]);
    entry_for(&a, V_ID, &exe);
    println!("4 changes through A {:?} after PostgreSQL restarted", changed.elapsed());
    let took = converges(&b, dir.path(), &revoked, &[Y_ID, W_ID, V_ID], Duration::from_secs(10));
    println!("B caught up {took:?} after the last change (PostgreSQL restarted)");
    let denied = list_denied(&b);
    assert_eq!(denied, list_denied(&a));
    assert_eq!(denied.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), [Z_ID]);
    let entries = b.json(&["entry", "list"]);
    assert!(entries.as_array().unwrap().iter().any(|e| e["spiffe_id"] == V_ID), "{entries}");
    // Both listeners are back.
    let back = poll(Duration::from_secs(10), || Some(()).filter(|_| listener_pids(&url).len() == 2));
    assert!(back.is_some(), "change listeners after the restart: {:?}", listener_pids(&url));
    assert_eq!(b.log().matches("change listener reconnected").count(), 2, "{}", log_tail("b", &b));
    // The replicas stop before the server does.
    b.stop();
    drop(a);
    drop(pg);
}

// ---------------------------------------------------------------------------

/// `openssl crl -verify` of one PEM CRL against `bundle`: (success, output).
fn verify_crl(dir: &Path, crl: &str, bundle: &Path) -> (bool, String) {
    let f = dir.join("verify.crl.pem");
    std::fs::write(&f, crl).unwrap();
    let out = openssl(&["crl", "-in", f.to_str().unwrap(), "-CAfile", bundle.to_str().unwrap(), "-noout", "-verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("verify OK"), text)
}

/// The certificates the database says are revoked and unexpired at `now` (normalized serials).
fn revoked_unexpired_in_db(url: &str, now: i64) -> BTreeSet<String> {
    let sql = format!("SELECT serial FROM certificates WHERE status = 'revoked' AND not_after > {now}");
    query(url, &sql).iter().map(|r| normalize_serial(&r.get::<_, String>(0))).collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Every CRL `server` publishes verifies with openssl against its bundle,
/// and together they list exactly the database's unexpired revoked serials.
fn check_crls(name: &str, server: &Server, url: &str, dir: &Path) -> BTreeSet<String> {
    let (code, bundle) = server.get("/pki/ca/bundle");
    assert_eq!(code, 200);
    let bundle_file = dir.join(format!("{name}-bundle.pem"));
    std::fs::write(&bundle_file, bundle).unwrap();
    let crls = server.crls();
    let mut listed = BTreeSet::new();
    for (i, crl) in crls.iter().enumerate() {
        let (ok, text) = verify_crl(dir, crl, &bundle_file);
        assert!(ok, "replica {name}: CRL {i} does not verify with openssl: {text}\n{crl}");
        listed.extend(crl_serials_of(dir, crl));
    }
    let expected = revoked_unexpired_in_db(url, unix_now());
    assert_eq!(listed, expected, "replica {name}: CRL serials vs the database's unexpired revoked certificates");
    listed
}

#[test]
fn every_published_crl_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (url, a, b) = two_replicas(dir.path());
    let id = |n: &str| format!("spiffe://example.org/replicas/crl-{n}");
    // A certificate that expires 4 s after issuance, and long-lived ones.
    let short = issue(&a, dir.path(), &id("short"), &["--ttl-hours", "0.001"]);
    let short_pem = std::fs::read(dir.path().join("crl-short.pem")).unwrap();
    let (_, short_cert) = x509_parser::pem::parse_x509_pem(&short_pem).unwrap();
    let short_not_after = short_cert.parse_x509().unwrap().validity().not_after.timestamp();
    let long: Vec<String> = (1..=4).map(|n| issue(&a, dir.path(), &id(&n.to_string()), &[])).collect();

    // Revocations through both replicas; the CRLs of B (and A) list them.
    a.ok(&["pki", "cert", "revoke", &short, "--reason", "keyCompromise"]);
    a.ok(&["pki", "cert", "revoke", &long[0]]);
    b.ok(&["pki", "cert", "revoke", &long[1], "--reason", "superseded"]);
    let first: BTreeSet<String> = [&short, &long[0], &long[1]].iter().map(|s| normalize_serial(s)).collect();
    for (name, server) in [("b", &b), ("a", &a)] {
        let seen = poll(Duration::from_secs(2), || Some(server.crl_serials(dir.path())).filter(|s| *s == first));
        assert!(seen.is_some(), "replica {name}: CRLs {:?}, expected {first:?}", server.crl_serials(dir.path()));
        check_crls(name, server, &url, dir.path());
    }
    assert!(unix_now() < short_not_after, "the short certificate expired before the first check");

    // Once the short certificate has expired, the next CRLs leave it out.
    while unix_now() <= short_not_after {
        std::thread::sleep(Duration::from_millis(200));
    }
    a.ok(&["pki", "cert", "revoke", &long[2]]);
    let denied = deny(&b, &id("4"));
    assert_eq!(denied, BTreeSet::from([normalize_serial(&long[3])]));
    let second: BTreeSet<String> = long.iter().map(|s| normalize_serial(s)).collect();
    for (name, server) in [("b", &b), ("a", &a)] {
        let seen = poll(Duration::from_secs(2), || Some(server.crl_serials(dir.path())).filter(|s| *s == second));
        assert!(
            seen.is_some(),
            "replica {name}: CRLs {:?}, expected {second:?} (the expired {short} left out)\n{}",
            server.crl_serials(dir.path()),
            log_tail(name, server)
        );
        let listed = check_crls(name, server, &url, dir.path());
        assert!(!listed.contains(&normalize_serial(&short)), "replica {name} still lists the expired {short}");
    }
}

/// A profile written through one replica is in force on the other within a
/// second (the change feed), and so is its deletion.
#[test]
fn a_profile_written_through_one_replica_issues_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, a, b) = two_replicas(dir.path());
    a.ok(&support::fixtures::TENANT_PROFILE);
    let generate = |server: &Server| {
        server.try_generate(dir.path(), "t", &["--profile", "tenant", "--common-name", "tenant-acme"])
    };
    let started = Instant::now();
    poll(Duration::from_secs(10), || generate(&b).ok())
        .unwrap_or_else(|| panic!("replica b never learned the profile\n{}", diagnostics(&a, &b, &[])));
    assert!(started.elapsed() < WITHIN + Duration::from_millis(500), "{:?}", started.elapsed());
    a.ok(&["pki", "profile", "delete", "tenant"]);
    poll(Duration::from_secs(10), || generate(&b).err())
        .unwrap_or_else(|| panic!("replica b kept the deleted profile\n{}", diagnostics(&a, &b, &[])));
}

/// The states of every CA as one replica lists them (fingerprint → state).
fn ca_states(server: &Server) -> BTreeMap<String, String> {
    let list = server.json(&["pki", "ca", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["fingerprint"].as_str().unwrap().to_string(), c["state"].as_str().unwrap().to_string()))
        .collect()
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_ca_prepared_on_one_replica_is_activated_on_the_other_once_every_replicas_envoys_have_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, a, b) = two_replicas(dir.path());
    // An Envoy on replica A, held back: its SDS stream stays open and acknowledges nothing.
    let server_bin = envoy_bin();
    entry_for(&a, SERVER_ID, &server_bin);
    let upstream = Upstream::start();
    let listener = format!("{SERVER_LISTENER}:0:{CLIENT_ID}");
    let text = server_bootstrap(&a, "replica-a-envoy", SERVER_ID, &listener, upstream.port(), &[]);
    let envoy = Envoy::spawn(&server_bin, &text, &[]);
    envoy.wait_live(Duration::from_secs(30));
    signal(envoy.pid(), "STOP");

    let prepared = a.json(&["pki", "ca", "prepare", "--role", "services"]);
    let id = prepared[0]["fingerprint"].as_str().unwrap().to_string();
    // Activation through B is refused while A's Envoy has not acknowledged the CA, naming it.
    let refused = poll(Duration::from_secs(5), || {
        let err = b.fails(&["pki", "ca", "activate", &id]);
        err.contains("replica-a-envoy").then_some(err)
    });
    signal(envoy.pid(), "CONT");
    let refused = refused.unwrap_or_else(|| panic!("B activated past A's stopped Envoy\n{}", diagnostics(&a, &b, &[])));
    assert!(refused.contains("on replica"), "{refused}");
    assert_eq!(ca_states(&b).get(&id).map(String::as_str), Some("prepared"));
    // Once it runs again it acknowledges; activation through B goes through.
    let activated =
        poll(Duration::from_secs(10), || b.cli(&["pki", "ca", "activate", &id]).status.success().then_some(()));
    assert!(activated.is_some(), "activation still refused\n{}", diagnostics(&a, &b, &[("envoy", &envoy)]));
    let same = poll(Duration::from_secs(5), || {
        let (sa, sb) = (ca_states(&a), ca_states(&b));
        (sa == sb && sa.get(&id).map(String::as_str) == Some("active")).then_some(sa)
    });
    let states = same.unwrap_or_else(|| panic!("the replicas disagree\n{}", diagnostics(&a, &b, &[])));
    assert_eq!(states.values().filter(|s| *s == "old").count(), 1, "{states:?}");
    // Both sign with the new CA now.
    for (name, server) in [("a", &a), ("b", &b)] {
        let spiffe_id = format!("spiffe://example.org/rotated/{name}");
        let serial = issue(server, dir.path(), &spiffe_id, &[]);
        let listed = server.json(&["pki", "cert", "list", "--spiffe-id", &spiffe_id]);
        assert_eq!(
            listed[0]["issuer"].as_str().unwrap_or_default(),
            id,
            "replica {name} signed {serial} with another CA"
        );
    }
}
