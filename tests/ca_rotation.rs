//! CA rotation end to end (SPEC §14), with real Envoy 1.40 processes under
//! continuous traffic: a server-side Envoy and a client-side Envoy opening a
//! new mTLS connection per request (the revocation tests' scene), through
//! `pki ca prepare → activate → taint → revoke` of the Services CA and of
//! the root. Every refusal on the way is asserted too. Loopback and Unix
//! sockets only; every process is stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::envoy::http::failures;
use support::openssl::{mtls_get, normalize_serial, pem_blocks, pem_serial};
use support::process::poll;
use support::revocation::*;
use support::server::Server;

/// The CA of `role` in `state` on `tm` (`pki ca list`): its fingerprint.
fn ca_on(tm: &Server, role: &str, state: &str) -> Option<String> {
    let list = tm.json(&["pki", "ca", "list"]);
    list.as_array()?
        .iter()
        .find(|c| c["role"] == role && c["state"] == state)
        .and_then(|c| c["fingerprint"].as_str().map(str::to_string))
}

fn ca_in(scene: &Scene, role: &str, state: &str) -> Option<String> {
    ca_on(&scene.tm, role, state)
}

/// The issuer fingerprint of each certificate trustmesh issued to `id`, by normalized serial.
fn issuers_of(scene: &Scene, id: &str) -> Vec<(String, String)> {
    let list = scene.tm.json(&["pki", "cert", "list", "--spiffe-id", id]);
    list.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let serial = normalize_serial(c["serial"].as_str().unwrap_or_default());
            (serial, c["issuer"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Whether both Envoys present a certificate signed by `ca` and nothing else.
fn both_present_certificates_of(scene: &Scene, ca: &str) -> bool {
    let signed_by = |envoy: &support::envoy::Envoy, id: &str| {
        let issuers = issuers_of(scene, id);
        let serials = envoy.serials_of(id);
        !serials.is_empty()
            && serials.iter().all(|s| issuers.iter().any(|(serial, issuer)| serial == s && issuer == ca))
    };
    signed_by(&scene.server, SERVER_ID) && signed_by(scene.client("b-fresh"), B_ID)
}

/// `pki ca activate`, retried while the proxies have not acknowledged the
/// prepared CA yet (the refusal names them); the refusals seen.
fn activate_once_acknowledged(scene: &Scene, id: &str) -> Vec<String> {
    let mut refusals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = scene.tm.cli(&["pki", "ca", "activate", id]);
        if out.status.success() {
            return refusals;
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(why.contains("acknowledged"), "activate refused for another reason: {why}");
        assert!(Instant::now() < deadline, "still not acknowledged after 10 s: {why}\n{}", scene.diagnostics());
        refusals.push(why);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// prepare → activate → taint → revoke of the CA of `role`, under traffic
/// through a client Envoy that opens a new connection per request.
fn rotate_under_traffic(role: &str, sds: Sds) {
    let scene = Scene::start_with(&[B_FRESH], sds, &[]);
    let dir = scene.dir.path();
    let old = ca_in(&scene, "services", "active").unwrap();
    let old_root = ca_in(&scene, "root", "active").unwrap();
    let retiring = if role == "root" { old_root.clone() } else { old.clone() };
    // A certificate from the CA that will be revoked, made before the rotation.
    let (old_cert, old_key) = scene.tm.generate(dir, "before", B_ID, &[]);
    let server = scene.server.listener_addr(SERVER_LISTENER);
    assert!(mtls_get(server, &old_cert, &old_key, "/before").is_ok_and(|s| s.contains(" 200")));

    let in_bundle = || scene.tm.ok(&["pki", "ca", "bundle"]).matches("BEGIN CERTIFICATE").count();
    let before = in_bundle();
    let probe = scene.probe("b-fresh");
    assert!(probe.wait_for(Duration::from_secs(10), |o| o.iter().filter(|x| x.is_ok()).count() >= 10));
    let t0 = Instant::now();

    let prepared = scene.tm.json(&["pki", "ca", "prepare", "--role", role]);
    let prepared: Vec<Value> = prepared.as_array().cloned().unwrap();
    assert!(prepared.iter().all(|c| c["state"] == "prepared"), "{prepared:?}");
    let new_id = prepared[0]["fingerprint"].as_str().unwrap().to_string();
    let new_services = if role == "root" {
        prepared.iter().find(|c| c["role"] == "services").unwrap()["fingerprint"].as_str().unwrap().to_string()
    } else {
        new_id.clone()
    };
    // The prepared CAs are in the bundle (a root with its services and
    // transport CAs; profiles CAs are apart); nothing they signed exists yet.
    assert_eq!(in_bundle(), before + if role == "root" { 3 } else { 1 });
    let err = scene.tm.fails(&["pki", "ca", "taint", &new_id]);
    assert!(err.contains("prepared"), "{err}");

    activate_once_acknowledged(&scene, &new_id);
    assert_eq!(ca_in(&scene, "services", "active").as_deref(), Some(new_services.as_str()));
    assert_eq!(ca_in(&scene, "services", "old").as_deref(), Some(old.as_str()));
    // The active CA cannot be tainted or revoked.
    let err = scene.tm.fails(&["pki", "ca", "revoke", &new_id]);
    assert!(err.contains("active"), "{err}");

    scene.tm.ok(&["pki", "ca", "taint", &retiring]);
    let moved = poll(Duration::from_secs(10), || both_present_certificates_of(&scene, &new_services).then_some(()));
    assert!(moved.is_some(), "the Envoys still present certificates of the tainted CA\n{}", scene.diagnostics());

    // The certificate made before still chains to the old CA: revoke is refused, then forced.
    let err = scene.tm.fails(&["pki", "ca", "revoke", &retiring]);
    assert!(err.contains("unexpired certificates"), "{err}");
    let bundle_before = scene.tm.ok(&["pki", "ca", "bundle"]);
    scene.tm.ok(&["pki", "ca", "revoke", &retiring, "--force"]);
    assert_eq!(in_bundle(), before, "the revoked CAs left the bundle");
    let kept = pem_blocks(&scene.tm.ok(&["pki", "ca", "bundle"]), "CERTIFICATE");
    let gone: Vec<String> =
        pem_blocks(&bundle_before, "CERTIFICATE").into_iter().filter(|c| !kept.contains(c)).collect();
    assert_eq!(gone.len(), if role == "root" { 3 } else { 1 }, "{gone:?}");
    if role != "root" {
        // An intermediate's serial goes into its parent's (the root's) CRL;
        // a revoked root has no parent, and signs no CRL any more.
        let serial = normalize_serial(&pem_serial(dir, &gone[0]));
        let (listed, _) = crl_serials(&scene.tm, dir);
        assert!(listed.contains(&serial), "the revoked CA's serial {serial} is not in the CRLs {listed:?}");
    }
    let refused = poll(Duration::from_secs(5), || {
        mtls_get(server, &old_cert, &old_key, "/after").map_or(Some(()), |s| (!s.contains(" 200")).then_some(()))
    });
    assert!(refused.is_some(), "a certificate of the revoked CA is still accepted\n{}", scene.diagnostics());

    std::thread::sleep(Duration::from_millis(500));
    let outcomes = probe.stop();
    let failed = failures(&outcomes, t0);
    println!("{role} rotation: {} requests, {} failed", outcomes.len(), failed.len());
    assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}\n{}", scene.diagnostics());
    assert!(outcomes.len() >= 20, "too little traffic to tell: {}", outcomes.len());
}

#[test]
fn a_services_ca_rotates_under_traffic_without_a_failed_request() {
    rotate_under_traffic("services", Sds::Server);
}

#[test]
fn a_root_rotates_under_traffic_without_a_failed_request() {
    rotate_under_traffic("root", Sds::Server);
}

/// Envoys behind node agents: the agents report what their Envoys
/// acknowledged, and re-issue through the server after the taint.
#[test]
fn a_root_rotates_under_traffic_behind_node_agents_without_a_failed_request() {
    rotate_under_traffic("root", Sds::Agents);
}

#[test]
fn bad_steps_are_refused_with_a_clear_reason() {
    let scene = Scene::start(&[]);
    let active = ca_in(&scene, "services", "active").unwrap();
    let unknown = "ab".repeat(32);
    let (long, huge) = ("n".repeat(65), "a".repeat(100_000));
    // A bootstrap token may have an SVID signed, not run the CA.
    let token = scene.tm.bootstrap_token("rotation-probe", &["spiffe://example.org/probe"], &[]);
    for (args, word) in [
        (vec!["pki", "ca", "activate", unknown.as_str()], "no CA with id"),
        (vec!["pki", "ca", "activate", "not-hex"], "64 hex digits"),
        (vec!["pki", "ca", "revoke", active.as_str()], "active"),
        (vec!["pki", "ca", "taint", active.as_str()], "active"),
        (vec!["pki", "ca", "prepare", "--role", "admins"], "role is not root, services"),
        (vec!["pki", "ca", "prepare", "--role", "services", "--ttl-days", "3650"], "outlive its parent"),
        (vec!["pki", "ca", "prepare", "--role", "services", "--common-name", long.as_str()], "1 to 64 characters"),
        (vec!["pki", "ca", "activate", huge.as_str()], "64 hex digits"),
        (vec!["--token", token.as_str(), "pki", "ca", "prepare", "--role", "services"], "permission denied"),
        (vec!["--token", token.as_str(), "pki", "ca", "revoke", active.as_str()], "permission denied"),
    ] {
        let err = scene.tm.fails(&args);
        assert!(err.contains(word), "{args:?}: {err}");
    }
    // A prepared CA revoked (discarded) cannot be activated.
    let prepared = scene.tm.json(&["pki", "ca", "prepare", "--role", "transport"]);
    let id = prepared[0]["fingerprint"].as_str().unwrap().to_string();
    scene.tm.ok(&["pki", "ca", "revoke", &id]);
    let err = scene.tm.fails(&["pki", "ca", "activate", &id, "--force"]);
    assert!(err.contains("revoked"), "{err}");
    // Every refusal is in the audit log.
    let audit = scene.tm.json(&["audit", "list", "--limit", "100"]);
    let refused: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "error" && r["action"].as_str().is_some_and(|a| a.ends_with("_ca")))
        .collect();
    assert!(refused.len() >= 7, "{audit:#}");
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn activation_waits_for_an_envoy_that_has_not_acknowledged_the_new_ca() {
    activation_waits(Sds::Server, "b-fresh", "revocation-server");
}

/// Behind agents, activation waits for the agent whose Envoy has not
/// acknowledged, named by its node.
#[test]
fn activation_waits_for_an_agent_whose_envoy_has_not_acknowledged_the_new_ca() {
    activation_waits(Sds::Agents, CLIENT_NODE, SERVER_NODE);
}

/// Activation is refused naming `held` (the stopped Envoy, or its agent)
/// and not `acknowledged` (the server Envoy, or its agent).
fn activation_waits(sds: Sds, held: &str, acknowledged: &str) {
    let scene = Scene::start_with(&[B_FRESH], sds, &[]);
    let client = scene.client("b-fresh");
    assert!(scene.request("b-fresh").is_ok_and(|r| r.status == 200), "{}", scene.diagnostics());
    // The client Envoy is stopped: its SDS stream stays open and acknowledges nothing.
    signal(client.pid(), "STOP");
    let prepared = scene.tm.json(&["pki", "ca", "prepare", "--role", "services"]);
    let id = prepared[0]["fingerprint"].as_str().unwrap().to_string();
    // The server Envoy acknowledges within moments; the stopped one never does.
    let named = poll(Duration::from_secs(5), || {
        let err = scene.tm.fails(&["pki", "ca", "activate", &id]);
        (err.contains(held) && !err.contains(acknowledged)).then_some(err)
    });
    let held = named.is_some();
    signal(client.pid(), "CONT");
    assert!(held, "activate was not refused naming the stopped Envoy\n{}", scene.diagnostics());
    assert_eq!(
        ca_in(&scene, "services", "prepared").as_deref(),
        Some(id.as_str()),
        "a refused activation changed nothing"
    );
    // Once it runs again it acknowledges, and activation goes through.
    activate_once_acknowledged(&scene, &id);
    assert_eq!(ca_in(&scene, "services", "active").as_deref(), Some(id.as_str()));
    // The refusals are audited.
    let audit = scene.tm.json(&["audit", "list", "--limit", "100"]);
    let refused = audit.as_array().unwrap().iter().any(|r| r["action"] == "activate_ca" && r["outcome"] == "error");
    assert!(refused, "{audit:#}");
}

#[test]
fn py_spiffe_sees_the_new_ca_in_its_bundle_before_an_svid_it_signed() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let tm = Server::start(&dir.path().join("data"), &[]);
    let python = support::venv_python();
    let resolved = std::fs::canonicalize(&python).unwrap();
    support::server::entry_for(&tm, "spiffe://example.org/rotation/py", &resolved);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workload_py/stream_rotation.py");
    let socket = Server::socket_path(&tm.data_dir);
    let mut child = support::process::KillOnDrop(
        std::process::Command::new(&python)
            .arg(script)
            .arg("example.org")
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("py-spiffe: {e}"));
    // (bundle CAs, SVID issuers) of an update line.
    let parse = |line: &str| -> (Vec<String>, Vec<String>) {
        let mut parts = line.split(' ').skip(1);
        let cas = parts.next().unwrap_or_default().split(',').map(str::to_string).collect();
        (cas, parts.map(str::to_string).collect())
    };
    let first = next();
    assert!(first.starts_with("update "), "{first}");
    let old = ca_on(&tm, "services", "active").unwrap();
    assert_eq!(parse(&first).1, vec![old.clone()], "{first}");

    let prepared = tm.json(&["pki", "ca", "prepare", "--role", "services"]);
    let new = prepared[0]["fingerprint"].as_str().unwrap().to_string();
    // Before anything is signed by it, an update brings the new CA in the bundle.
    let line = next();
    let (cas, issuers) = parse(&line);
    assert!(cas.contains(&new) && cas.contains(&old), "{line}");
    assert_eq!(issuers, vec![old.clone()], "{line}");
    tm.ok(&["pki", "ca", "activate", &new]);
    tm.ok(&["pki", "ca", "taint", &old]);
    // Then the SVID signed by it, with the new CA still in the bundle.
    let mut seen = vec![line];
    loop {
        let line = next();
        if line == "ok" {
            break;
        }
        assert!(line.starts_with("update "), "py-spiffe: {line}\n{seen:?}");
        seen.push(line);
    }
    let last = parse(seen.last().unwrap());
    assert_eq!(last.1, vec![new.clone()], "{seen:?}");
    assert!(last.0.contains(&new), "{seen:?}");
}
