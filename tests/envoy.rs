//! End-to-end with real Envoy 1.40 processes (from `.venv`, installed by
//! `scripts/install-test-deps.sh`; or `$TRUSTMESH_ENVOY`): two Envoys that get
//! their certificates and trust bundle from trustmesh over SDS serve mTLS
//! between them, across rotations and a trustmesh restart. Every bootstrap
//! comes from the shipped generator (`trustmesh envoy bootstrap`). Loopback
//! and Unix sockets only; every process is stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::envoy::bootstrap::{
    bootstrap_json, bootstrap_with_token, client_bootstrap, node_on_every_request, server_bootstrap, with_files,
};
use support::envoy::http::{self, Upstream};
use support::envoy::{DENY_LIST_RELOADS, ENVOY_VERSION, Envoy, envoy_alias, envoy_bin, sum_stats, validate};
use support::openssl::{normalize_serial, openssl_self_signed, pem_blocks, pem_file_serial};
use support::process::poll;
use support::server::{self, Server, entry_for};

const SERVER_ID: &str = "spiffe://example.org/test/envoy-server";
const CLIENT_ID: &str = "spiffe://example.org/test/envoy-client";
/// The server-side Envoy's inbound mTLS listener.
const SERVER_LISTENER: &str = "mtls_in";
/// The client-side Envoy's outbound route: a plain HTTP listener and the
/// cluster that originates mTLS to the server-side Envoy.
const CLIENT_ROUTE: &str = "to_server";

/// The `URI=` element of an `x-forwarded-client-cert` value as the upstream
/// echoed it (`xfcc=By=…;Hash=…;URI=spiffe://…`).
fn xfcc_uri(body: &str) -> Option<String> {
    let v = body.trim().strip_prefix("xfcc=")?;
    v.split(';').find_map(|kv| kv.strip_prefix("URI=")).map(|s| s.trim_matches('"').to_string())
}

/// One request through the client-side Envoy; asserts 200 and returns the
/// client SPIFFE ID the upstream saw.
fn request_ok(client: &Envoy, server: &Envoy) -> String {
    let addr = client.listener_addr(CLIENT_ROUTE);
    let r = http::get(addr, "/hello")
        .unwrap_or_else(|e| panic!("{e}\nclient {}\nserver {}", client.diagnostics(), server.diagnostics()));
    assert_eq!(r.status, 200, "body {:?}\nclient {}\nserver {}", r.body, client.diagnostics(), server.diagnostics());
    xfcc_uri(&r.body).unwrap_or_else(|| panic!("no URI in the forwarded client certificate: {:?}", r.body))
}

#[test]
fn envoy_harness_runs_a_static_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let pair = |name: &str, id: &str| server.generate(dir.path(), name, id, &[]);
    let (server_cert, server_key) = pair("server", SERVER_ID);
    let (client_cert, client_key) = pair("client", CLIENT_ID);
    let ca = server.bundle_path();

    // The generator's bootstraps, with certificates from files and no
    // control plane.
    let upstream = Upstream::start();
    let listener = format!("{SERVER_LISTENER}:0:{CLIENT_ID}");
    let backend = format!("127.0.0.1:{}", upstream.port());
    let server_args = ["--bind", "127.0.0.1", "--listener", &listener, "--backend", &backend];
    let generated = bootstrap_json(&server, "static-server", SERVER_ID, &server_args);
    let envoy_server = Envoy::start(&with_files(&generated, &server_cert, &server_key, &ca));
    let server_port = envoy_server.listener_port(SERVER_LISTENER);
    assert_ne!(server_port, 0);

    let route = format!("{CLIENT_ROUTE}:0:127.0.0.1:{server_port}:{SERVER_ID}");
    let client_args = ["--upstream", &route, "--new-connection-per-request"];
    let static_client = |node: &str, id: &str, cert: &Path, key: &Path| {
        let generated = bootstrap_json(&server, node, id, &client_args);
        Envoy::start(&with_files(&generated, cert, key, &ca))
    };
    let envoy_client = static_client("static-client", CLIENT_ID, &client_cert, &client_key);

    // Requests through both Envoys reach the upstream with the client's ID.
    for _ in 0..3 {
        assert_eq!(request_ok(&envoy_client, &envoy_server), CLIENT_ID);
    }
    assert_eq!(upstream.requests(), 3);

    // /certs shows exactly the certificates on disk.
    assert_eq!(envoy_server.serials_of(SERVER_ID), vec![pem_file_serial(&server_cert)]);
    assert_eq!(envoy_client.serials_of(CLIENT_ID), vec![pem_file_serial(&client_cert)]);
    assert!(!envoy_server.ca_serials().is_empty());

    // /stats: one handshake per request (max_requests_per_connection: 1).
    let handshakes = envoy_server.sum("listener.127.0.0.1_", ".ssl.handshake");
    assert_eq!(handshakes, 3, "{}", envoy_server.diagnostics());
    assert_eq!(envoy_client.counter("cluster.to_server.upstream_cx_total"), 3);

    // A client the server does not accept (its certificate has another SAN)
    // is refused at the handshake: the client-side Envoy answers 503.
    let other_id = "spiffe://example.org/test/someone-else";
    let (other_cert, other_key) = pair("other", other_id);
    let envoy_other = static_client("static-other", other_id, &other_cert, &other_key);
    let r = http::get(envoy_other.listener_addr(CLIENT_ROUTE), "/").unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    envoy_server.wait_until("a SAN verification failure", Duration::from_secs(5), |e| {
        e.sum("listener.127.0.0.1_", ".ssl.fail_verify_san") >= 1
    });
    assert_eq!(upstream.requests(), 3);

    // The SDS bootstraps the other tests use are valid Envoy configuration.
    for delta in [false, true] {
        let opts = MeshOptions { server_delta: delta, client_delta: delta, ..Default::default() };
        for text in [
            Mesh::server_bootstrap(&server, &opts, 9),
            Mesh::client_bootstrap(&server, &opts, 9),
            bad_callers_bootstrap(&server, "v", CLIENT_ID, None),
            bad_callers_bootstrap(&server, "v", CLIENT_ID, Some("t.o.k")),
        ] {
            if let Err(e) = validate(&text) {
                panic!("invalid bootstrap (delta {delta}): {e}\n{text}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// SDS: both Envoys get their certificate and trust bundle from trustmesh.

/// Envoy's stat-name form of a secret name (`spiffe://example.org/x` →
/// `spiffe_example.org/x`, as Envoy's stats sanitizer does).
fn stat_name(secret: &str) -> String {
    secret.replace("://", "_").replace(":/", "_").replace(':', "_")
}

/// An SDS counter of secret `secret` (`sds.<secret>.<stat>`).
fn sds_stat(envoy: &Envoy, secret: &str, stat: &str) -> u64 {
    envoy.counter(&format!("sds.{}.{stat}", stat_name(secret)))
}

/// The `version_text` of the secret Envoy holds.
fn sds_version(envoy: &Envoy, secret: &str) -> String {
    let key = format!("sds.{}.version_text", stat_name(secret));
    envoy.stats().get(&key).cloned().unwrap_or_default()
}

#[derive(Clone, Copy)]
struct MeshOptions {
    svid_ttl_secs: Option<u32>,
    server_delta: bool,
    client_delta: bool,
    /// The validation context secret each side asks for.
    validation: &'static str,
    /// Envoy's default: the node on every xDS request, ACKs included (the
    /// generated bootstraps send it on the first request only).
    node_on_every_request: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            svid_ttl_secs: None,
            server_delta: false,
            client_delta: false,
            validation: "spiffe://example.org",
            node_on_every_request: false,
        }
    }
}

/// trustmesh + an upstream + a server-side Envoy (the `.venv` binary) + a
/// client-side Envoy (a hard link at another path: another identity), both on
/// trustmesh's local socket. Fields drop in order: Envoys first.
struct Mesh {
    client: Envoy,
    server: Envoy,
    upstream: Upstream,
    tm: Server,
    opts: MeshOptions,
    dir: tempfile::TempDir,
}

impl Mesh {
    fn start(opts: MeshOptions) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ttl = opts.svid_ttl_secs.map(|t| t.to_string());
        let mut extra = vec![];
        if let Some(t) = &ttl {
            extra.extend(["--svid-ttl", t.as_str()]);
        }
        let tm = Server::start(&data, &extra);
        let server_bin = envoy_bin();
        let client_bin = envoy_alias(dir.path(), "client-envoy");
        entry_for(&tm, SERVER_ID, &server_bin);
        entry_for(&tm, CLIENT_ID, &client_bin);
        let upstream = Upstream::start();
        let server = Envoy::start_with(&server_bin, &Self::server_bootstrap(&tm, &opts, upstream.port()), &[]);
        let server_port = server.listener_port(SERVER_LISTENER);
        let client = Envoy::start_with(&client_bin, &Self::client_bootstrap(&tm, &opts, server_port), &[]);
        Mesh { client, server, upstream, tm, opts, dir }
    }

    /// The server side: listener `mtls_in` accepting the client, in front of
    /// the upstream, secrets over ADS.
    fn server_bootstrap(tm: &Server, opts: &MeshOptions, upstream_port: u16) -> String {
        let listener = format!("{SERVER_LISTENER}:0:{CLIENT_ID}");
        let delta: &[&str] = if opts.server_delta { &["--delta"] } else { &[] };
        let args = [&["--validation", opts.validation], delta].concat();
        let yaml = server_bootstrap(tm, "envoy-server", SERVER_ID, &listener, upstream_port, &args);
        if opts.node_on_every_request { node_on_every_request(&yaml) } else { yaml }
    }

    /// The client side: route `to_server` to the server-side Envoy, one
    /// request per connection, secrets over SDS.
    fn client_bootstrap(tm: &Server, opts: &MeshOptions, server_port: u16) -> String {
        let route = format!("{CLIENT_ROUTE}:0:127.0.0.1:{server_port}:{SERVER_ID}");
        let delta: &[&str] = if opts.client_delta { &["--delta"] } else { &[] };
        let args = [&["--validation", opts.validation], delta].concat();
        let yaml = client_bootstrap(tm, "envoy-client", CLIENT_ID, &route, true, &args);
        if opts.node_on_every_request { node_on_every_request(&yaml) } else { yaml }
    }

    fn request_ok(&self) -> String {
        request_ok(&self.client, &self.server)
    }

    fn traffic(&self) -> http::Traffic {
        http::Traffic::start(self.client.listener_addr(CLIENT_ROUTE), "/traffic", Duration::from_millis(50))
    }

    /// Everything that helps to understand a failure.
    fn diagnostics(&self) -> String {
        format!(
            "client {}\nserver {}\n--- trustmesh log tail ---\n{}",
            self.client.diagnostics(),
            self.server.diagnostics(),
            self.tm.log_tail(60)
        )
    }

    /// The serials trustmesh lists as issued to `spiffe_id`.
    fn issued_serials(&self, spiffe_id: &str) -> Vec<String> {
        let list = self.tm.json(&["pki", "cert", "list", "--include-expired", "--spiffe-id", spiffe_id]);
        let items = list.as_array().cloned().unwrap_or_default();
        items.iter().filter_map(|c| c["serial"].as_str()).map(normalize_serial).collect()
    }
}

/// Adds the serials Envoy holds for `id` that `seen` lacks, with when they
/// were first seen. During a rotation Envoy may briefly list the old context
/// too.
fn note_serial(envoy: &Envoy, id: &str, seen: &mut Vec<(std::time::Instant, String)>) {
    for s in envoy.serials_of(id) {
        if !seen.iter().any(|(_, x)| *x == s) {
            seen.push((std::time::Instant::now(), s));
        }
    }
}

/// The time between consecutive new serials.
fn intervals(seen: &[(std::time::Instant, String)]) -> Vec<Duration> {
    seen.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[test]
fn two_envoys_get_everything_from_trustmesh() {
    let mesh = Mesh::start(MeshOptions::default());
    // A request through both Envoys: the upstream sees the client's SPIFFE ID
    // as the server-side Envoy verified it.
    for _ in 0..3 {
        assert_eq!(mesh.request_ok(), CLIENT_ID);
    }
    // Each Envoy holds exactly one certificate for its own identity, issued by
    // trustmesh, and none of the other's.
    let server_serials = mesh.server.serials_of(SERVER_ID);
    let client_serials = mesh.client.serials_of(CLIENT_ID);
    assert_eq!(server_serials.len(), 1, "{}", mesh.diagnostics());
    assert_eq!(client_serials.len(), 1, "{}", mesh.diagnostics());
    assert!(mesh.server.serials_of(CLIENT_ID).is_empty());
    assert!(mesh.client.serials_of(SERVER_ID).is_empty());
    assert!(mesh.issued_serials(SERVER_ID).contains(&server_serials[0]), "{}", mesh.diagnostics());
    assert!(mesh.issued_serials(CLIENT_ID).contains(&client_serials[0]), "{}", mesh.diagnostics());
    // The validation contexts hold trustmesh's root.
    let bundle = std::fs::read_to_string(mesh.tm.bundle_path()).unwrap();
    let root = pem_blocks(&bundle, "CERTIFICATE")[0].clone();
    let root_file = mesh.dir.path().join("root.pem");
    std::fs::write(&root_file, root).unwrap();
    let root_serial = pem_file_serial(&root_file);
    assert!(mesh.server.ca_serials().contains(&root_serial), "{}", mesh.diagnostics());
    assert!(mesh.client.ca_serials().contains(&root_serial), "{}", mesh.diagnostics());
    // SDS stats: every secret arrived and none was rejected.
    for (envoy, cert) in [(&mesh.server, SERVER_ID), (&mesh.client, CLIENT_ID)] {
        for secret in [cert, mesh.opts.validation] {
            assert!(sds_stat(envoy, secret, "update_success") >= 1, "{secret}: {}", envoy.diagnostics());
            assert_eq!(sds_stat(envoy, secret, "update_rejected"), 0, "{secret}: {}", envoy.diagnostics());
        }
    }
    assert_eq!(mesh.server.sum("listener.127.0.0.1_", ".ssl.fail_verify_error"), 0);
}

#[test]
fn rotation_under_traffic_has_zero_failures() {
    // 20 s SVIDs rotate at ~10 s (50 % ± 10 %); the client side on delta SDS,
    // the server side on state-of-the-world SDS; both at Envoy's default of
    // sending their whole node with every request and ACK.
    let mesh = Mesh::start(MeshOptions {
        svid_ttl_secs: Some(20),
        client_delta: true,
        validation: "ROOTCA",
        node_on_every_request: true,
        ..Default::default()
    });
    assert_eq!(mesh.request_ok(), CLIENT_ID);
    let traffic = mesh.traffic();
    let (mut client_seen, mut server_seen) = (Vec::new(), Vec::new());
    let start = std::time::Instant::now();
    // Until both have rotated twice after their first certificate (~2.5 TTL/2).
    while client_seen.len() < 3 || server_seen.len() < 3 {
        note_serial(&mesh.client, CLIENT_ID, &mut client_seen);
        note_serial(&mesh.server, SERVER_ID, &mut server_seen);
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "no second rotation within 45 s: client serials {client_seen:?}, server serials {server_seen:?}\n{}",
            mesh.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Half a rotation more of traffic on the newest certificates.
    std::thread::sleep(Duration::from_secs(3));
    let report = traffic.stop();
    assert!(
        report.failures.is_empty(),
        "{} failed requests: {:?}\n{}",
        report.failures.len(),
        report.failures,
        mesh.diagnostics()
    );
    assert!(report.ok > 200, "only {} requests went through", report.ok);
    // Every rotated certificate was issued by trustmesh and presented on the wire.
    let issued = mesh.issued_serials(CLIENT_ID);
    for (_, s) in &client_seen {
        assert!(issued.contains(s), "serial {s} not issued by trustmesh");
    }
    // SPEC §4: replaced at 50 % ± 10 % of the lifetime (20 s): every 8-12 s,
    // with 1 s of slack for polling and delivery.
    for (side, seen) in [("client", &client_seen), ("server", &server_seen)] {
        for gap in intervals(seen) {
            assert!(
                gap >= Duration::from_secs(7) && gap <= Duration::from_secs(13),
                "{side}: SVIDs with a 20 s TTL replaced after {gap:?} (expected 8-12 s: 50 % ± 10 %); \
                 all intervals {:?}; /certs: {}",
                intervals(seen),
                if side == "client" { mesh.client.certs() } else { mesh.server.certs() }
            );
        }
    }
    let hashes: std::collections::BTreeSet<String> = mesh
        .upstream
        .seen
        .lock()
        .iter()
        .filter_map(|s| s.xfcc.clone())
        .filter_map(|x| x.split(';').find_map(|kv| kv.strip_prefix("Hash=")).map(str::to_string))
        .collect();
    assert!(hashes.len() >= 3, "the upstream saw {} distinct client certificates", hashes.len());
    for secret in [CLIENT_ID, SERVER_ID, "ROOTCA"] {
        let envoy = if secret == SERVER_ID { &mesh.server } else { &mesh.client };
        assert_eq!(sds_stat(envoy, secret, "update_rejected"), 0, "{secret}: {}", envoy.diagnostics());
    }
    assert!(sds_stat(&mesh.client, CLIENT_ID, "update_success") >= 3);
    // Envoy's node came with every ACK and was never taken for another one.
    let log = mesh.tm.log();
    assert!(!log.contains("xds request with another node"), "{}", mesh.tm.log_tail(40));
    assert!(log.matches("\"xds stream opened\"").count() >= 2, "{}", mesh.tm.log_tail(40));
}

#[test]
fn envoys_survive_a_trustmesh_restart() {
    let mut mesh = Mesh::start(MeshOptions { svid_ttl_secs: Some(20), server_delta: true, ..Default::default() });
    assert_eq!(mesh.request_ok(), CLIENT_ID);
    let traffic = mesh.traffic();
    std::thread::sleep(Duration::from_secs(1));

    // Outage: traffic keeps flowing on the certificates Envoy holds. What
    // they hold once the old process is gone came from it.
    mesh.tm.stop();
    let before_client = mesh.client.serials_of(CLIENT_ID);
    let before_server = mesh.server.serials_of(SERVER_ID);
    let before_versions = (sds_version(&mesh.client, CLIENT_ID),);
    let before_success =
        (sds_stat(&mesh.client, CLIENT_ID, "update_success"), sds_stat(&mesh.server, SERVER_ID, "update_success"));
    let before_cx = (
        mesh.client.counter("cluster.trustmesh_sds.upstream_cx_total"),
        mesh.server.counter("cluster.trustmesh_sds.upstream_cx_total"),
    );
    let ok_at_stop = traffic.ok_count();
    std::thread::sleep(Duration::from_secs(3));
    assert!(traffic.ok_count() >= ok_at_stop + 20, "traffic stalled while trustmesh was down\n{}", mesh.diagnostics());
    assert_eq!(traffic.failure_count(), 0, "failures during the outage: {:?}", traffic.failures.lock());

    // Same data directory and socket: the Envoys reconnect by themselves.
    let data = mesh.tm.data_dir.clone();
    mesh.tm = Server::start(&data, &["--svid-ttl", "20"]);
    for (envoy, before) in [(&mesh.client, before_cx.0), (&mesh.server, before_cx.1)] {
        envoy.wait_until("a new connection to trustmesh", Duration::from_secs(10), |e| {
            e.counter("cluster.trustmesh_sds.upstream_cx_total") > before
                && e.counter("cluster.trustmesh_sds.upstream_cx_active") >= 1
        });
    }
    // ... and receive certificates from the restarted server (the old process
    // is gone, so any serial they did not hold before came from it): at the
    // latest the next rotation, ~10 s after the last one.
    mesh.client.wait_until("a client certificate from the restarted trustmesh", Duration::from_secs(25), |e| {
        let s = e.serials_of(CLIENT_ID);
        !s.is_empty() && s != before_client
    });
    mesh.server.wait_until("a server certificate from the restarted trustmesh", Duration::from_secs(25), |e| {
        let s = e.serials_of(SERVER_ID);
        !s.is_empty() && s != before_server
    });
    // ... and the next rotation after that, from the restarted server.
    let (client_now, server_now) = (mesh.client.serials_of(CLIENT_ID), mesh.server.serials_of(SERVER_ID));
    mesh.client.wait_until("the next client rotation after the restart", Duration::from_secs(20), |e| {
        let s = e.serials_of(CLIENT_ID);
        !s.is_empty() && s != client_now && s != before_client
    });
    mesh.server.wait_until("the next server rotation after the restart", Duration::from_secs(20), |e| {
        let s = e.serials_of(SERVER_ID);
        !s.is_empty() && s != server_now && s != before_server
    });
    assert!(sds_stat(&mesh.client, CLIENT_ID, "update_success") > before_success.0);
    assert!(sds_stat(&mesh.server, SERVER_ID, "update_success") > before_success.1);
    // SotW versions move forward across the restart (delta's
    // system_version_info is informational only, so not checked).
    assert_ne!(sds_version(&mesh.client, CLIENT_ID), before_versions.0, "{}", mesh.diagnostics());
    std::thread::sleep(Duration::from_secs(1));
    let report = traffic.stop();
    assert!(report.failures.is_empty(), "failed requests: {:?}\n{}", report.failures, mesh.diagnostics());
    assert_eq!(mesh.request_ok(), CLIENT_ID);
    let new_serial = mesh.client.serials_of(CLIENT_ID);
    assert!(mesh.issued_serials(CLIENT_ID).contains(&new_serial[0]));
}

/// The lines of `log` that report an SDS stream closed by the server, with
/// its gRPC status (Envoy logs an error status at warning level, others at
/// debug for the `config` component). Envoy logs the grpc-message
/// percent-encoded, as it travels; decoded here.
fn stream_errors(log: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains("gRPC config stream") && l.contains("closed")).map(percent_decode).collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Waits until trustmesh closed an SDS stream of `envoy` with gRPC status
/// `code` and a message containing `needle` (as Envoy logs it).
fn assert_stream_closed(what: &str, envoy: &Envoy, code: u32, needle: &str, tm: &Server) {
    let expected = format!(": {code}, ");
    let found = |e: &Envoy| stream_errors(&e.log()).iter().any(|l| l.contains(&expected) && l.contains(needle));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !found(envoy) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: expected gRPC status {code} with {needle:?}; Envoy logged {:#?}\n--- trustmesh log ---\n{}",
            stream_errors(&envoy.log()),
            tm.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `envoy` never got secret `cert` and is not LIVE.
fn assert_not_served(what: &str, envoy: &Envoy, cert: &str) {
    assert!(envoy.serials_of(cert).is_empty(), "{what}: got a certificate for {cert}");
    assert_eq!(sds_stat(envoy, cert, "update_success"), 0, "{what}: {}", envoy.diagnostics());
    let ready = envoy.admin_get("/ready");
    assert_ne!(ready.status, 200, "{what}: LIVE without its certificate");
}

/// Waits for a JSON line of trustmesh's log with `message` whose other
/// fields include every (key, value-substring) of `fields`; returns it.
fn wait_for_log(tm: &Server, message: &str, fields: &[(&str, &str)]) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        for line in tm.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["message"] == message
                && fields.iter().all(|(k, want)| v[*k].as_str().is_some_and(|got| got.contains(want)))
            {
                return v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {message:?} log line with {fields:?}\n--- trustmesh log ---\n{}",
            tm.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client-side Envoy of `bad_sds_callers_get_clear_errors` that asks for
/// the certificate `cert`, over the local socket or, with `token`, over the
/// TLS port. Its route's port is never dialled: no request is sent.
fn bad_callers_bootstrap(tm: &Server, node_id: &str, cert: &str, token: Option<&str>) -> String {
    let route = format!("{CLIENT_ROUTE}:0:127.0.0.1:9:{SERVER_ID}");
    let args = ["--validation", "spiffe://example.org", "--upstream", &route, "--new-connection-per-request"];
    match token {
        Some(token) => bootstrap_with_token(tm, node_id, cert, token, &args),
        None => support::envoy::bootstrap::bootstrap(tm, node_id, cert, &args),
    }
}

#[test]
fn bad_sds_callers_get_clear_errors() {
    const NODE_A_ID: &str = "spiffe://example.org/envoy/node-a";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tm = Server::start(&data, &[]);
    tm.ok(&["entry", "create", "--spiffe-id", NODE_A_ID, "--selector", "token:sub:node-a"]);
    tm.ok(&["entry", "create", "--spiffe-id", "spiffe://example.org/envoy/node-b", "--selector", "token:sub:node-b"]);
    entry_for(&tm, CLIENT_ID, &envoy_bin());
    let token = |node: &str| tm.ok(&["token", "mint", "node", node]).trim().to_string();
    let bootstrap = |node_id: &str, cert: &str, token: Option<&str>| bad_callers_bootstrap(&tm, node_id, cert, token);
    let debug = ["--component-log-level", "config:debug"];

    // Controls: node-a's own token over the TLS port, and the entry's binary
    // over the local socket, get their certificates.
    let good_tls = Envoy::start_with(&envoy_bin(), &bootstrap("node-a", NODE_A_ID, Some(&token("node-a"))), &debug);
    assert_eq!(good_tls.serials_of(NODE_A_ID).len(), 1, "{}", good_tls.diagnostics());
    let good_local = Envoy::start_with(&envoy_bin(), &bootstrap("local", CLIENT_ID, None), &debug);
    assert_eq!(good_local.serials_of(CLIENT_ID).len(), 1, "{}", good_local.diagnostics());

    // A token for another node, asking for node-a's certificate.
    let other_node = Envoy::spawn(&envoy_bin(), &bootstrap("node-a", NODE_A_ID, Some(&token("node-b"))), &debug);
    // A token trustmesh never minted.
    let forged =
        Envoy::spawn(&envoy_bin(), &bootstrap("node-a", NODE_A_ID, Some("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")), &debug);
    // A local caller that no entry matches (another executable path).
    let stranger_bin = envoy_alias(dir.path(), "stranger");
    let stranger = Envoy::spawn(&stranger_bin, &bootstrap("stranger", CLIENT_ID, None), &debug);

    // A name the caller may not have: trustmesh answers without it (listing
    // it in the response's `resource_errors`, which Envoy 1.40 neither logs
    // nor counts) and logs a warning that names the node, the resource and
    // why. Envoy waits for it (initial_fetch_timeout 0s): never LIVE.
    wait_for_log(
        &tm,
        "requested resource unavailable",
        &[("node_id", "node-a"), ("resource", NODE_A_ID), ("reason", "not entitled")],
    );
    assert_not_served("token of another node", &other_node, NODE_A_ID);
    // A local caller nothing matches: PERMISSION_DENIED on the stream.
    assert_stream_closed("caller without an entry", &stranger, 7, "no registration entry", &tm);
    assert_not_served("caller without an entry", &stranger, CLIENT_ID);
    // A token trustmesh cannot verify: UNAUTHENTICATED on the stream.
    assert_stream_closed("forged token", &forged, 16, "", &tm);
    assert_not_served("forged token", &forged, NODE_A_ID);
    wait_for_log(&tm, "authentication failed", &[("action", "obtain_svid")]);

    // The refused callers did not disturb anyone else, and trustmesh serves on.
    assert_eq!(good_tls.serials_of(NODE_A_ID).len(), 1);
    assert_eq!(good_local.serials_of(CLIENT_ID).len(), 1);
    assert_eq!(sds_stat(&good_tls, NODE_A_ID, "update_rejected"), 0);
    let status = tm.json(&["pki", "status"]);
    assert_eq!(status["health"], "HEALTHY", "{status}");
}

// ---------------------------------------------------------------------------
// Bootstraps: the generator's output and the examples in envoy/.

const TLS_SERVER_ID: &str = "spiffe://example.org/tls/tls-server";
const TLS_CLIENT_ID: &str = "spiffe://example.org/tls/tls-client";

/// One way of generating a pair of bootstraps.
struct Variant {
    name: &'static str,
    delta: bool,
    /// The TLS port with a node token instead of the local socket.
    tls: bool,
    /// `--spiffe-id` (SPIRE-style secret names) instead of `default`/`ROOTCA`.
    named: bool,
}

/// `trustmesh envoy bootstrap` with `args` plus the variant's flags.
fn generate(tm: &Server, v: &Variant, node_id: &str, spiffe_id: &str, sds: &[String], args: &[String]) -> String {
    let mut all: Vec<String> =
        ["envoy", "bootstrap", "--node-id", node_id, "--bind", "127.0.0.1"].map(String::from).to_vec();
    all.extend_from_slice(sds);
    if v.delta {
        all.push("--delta".into());
    }
    if v.named {
        all.extend(["--spiffe-id".to_string(), spiffe_id.to_string()]);
    }
    all.extend_from_slice(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    eprintln!("[{}] trustmesh {}", v.name, refs.join(" "));
    tm.ok(&refs)
}

#[test]
fn every_example_and_generated_bootstrap_reaches_live_and_serves_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tm = Server::start(&data, &[]);
    let socket = Server::socket_path(&data);
    let upstream = Upstream::start();

    // Local socket: the Envoy binary's path tells the two sides apart.
    let server_bin = envoy_bin();
    let client_bin = envoy_alias(dir.path(), "client-envoy");
    entry_for(&tm, SERVER_ID, &server_bin);
    entry_for(&tm, CLIENT_ID, &client_bin);
    // TLS port: node tokens; the IDs' last segment is the token's subject.
    let token_file = |node: &str| {
        let token = tm.ok(&["token", "mint", "node", node]).trim().to_string();
        let f = dir.path().join(format!("{node}.token"));
        std::fs::write(&f, token).unwrap();
        f
    };
    tm.ok(&["entry", "create", "--spiffe-id", TLS_SERVER_ID, "--selector", "token:sub:tls-server"]);
    tm.ok(&["entry", "create", "--spiffe-id", TLS_CLIENT_ID, "--selector", "token:sub:tls-client"]);
    let (server_token, client_token) = (token_file("tls-server"), token_file("tls-client"));

    let variants = [
        Variant { name: "local socket, SotW, default + ROOTCA", delta: false, tls: false, named: false },
        Variant { name: "local socket, delta, SPIFFE ID names", delta: true, tls: false, named: true },
        Variant { name: "TLS port + token, SotW, SPIFFE ID names", delta: false, tls: true, named: true },
        Variant { name: "TLS port + token, delta, default + ROOTCA", delta: true, tls: true, named: false },
    ];
    for v in &variants {
        let (server_id, client_id, server_node, client_node) = if v.tls {
            (TLS_SERVER_ID, TLS_CLIENT_ID, "tls-server", "tls-client")
        } else {
            (SERVER_ID, CLIENT_ID, "envoy-server", "envoy-client")
        };
        let sds = |token: &Path| -> Vec<String> {
            if v.tls {
                vec!["--token-file".into(), token.display().to_string()]
            } else {
                vec!["--socket".into(), socket.display().to_string()]
            }
        };
        let server_text = generate(
            &tm,
            v,
            server_node,
            server_id,
            &sds(&server_token),
            &[
                "--listener".into(),
                format!("mtls_in:0:{client_id}"),
                "--backend".into(),
                format!("127.0.0.1:{}", upstream.port()),
            ],
        );
        let server = Envoy::start_with(&server_bin, &server_text, &[]);
        assert!(has_deny_list(&server), "[{}] LIVE without the deny list\n{}", v.name, server.diagnostics());
        let port = server.listener_port("mtls_in");
        let client_text = generate(
            &tm,
            v,
            client_node,
            client_id,
            &sds(&client_token),
            &[
                "--upstream".into(),
                format!("plain_out:0:127.0.0.1:{port}:{server_id}"),
                "--new-connection-per-request".into(),
            ],
        );
        let client = Envoy::start_with(if v.tls { &server_bin } else { &client_bin }, &client_text, &[]);
        let r = http::get(client.listener_addr("plain_out"), "/generated")
            .unwrap_or_else(|e| panic!("[{}] {e}\n{}\n{}", v.name, client.diagnostics(), server.diagnostics()));
        assert_eq!(r.status, 200, "[{}] {}\n{}\n{}", v.name, r.body, client.diagnostics(), server.diagnostics());
        assert_eq!(xfcc_uri(&r.body).as_deref(), Some(client_id), "[{}] {}", v.name, r.body);
        assert_eq!(server.serials_of(server_id).len(), 1, "[{}]", v.name);
        assert_eq!(client.serials_of(client_id).len(), 1, "[{}]", v.name);
        eprintln!("[{}] ok", v.name);
    }

    run_examples(&tm, dir.path());
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The backend port of the examples that have one (`--backend 127.0.0.1:18080`).
const EXAMPLE_BACKEND_PORT: &str = "18080";

/// Whether Envoy has applied a deny list received over ECDS (LIVE means it
/// arrived: the listener warms on it; the reload is counted once the worker
/// applied it, so wait a moment for the counter).
fn has_deny_list(envoy: &Envoy) -> bool {
    let applied = || (envoy.counter(DENY_LIST_RELOADS) >= 1).then_some(());
    poll(Duration::from_secs(5), applied).is_some()
}

/// Every `envoy/*.yaml` with its placeholders substituted as
/// `envoy/README.md` says, run by a real Envoy: LIVE (with the deny list
/// received over ECDS), and a request through its outbound listener reaches
/// its own mTLS listener, which sees the example's SPIFFE ID; through
/// `tcp_out` (if present) it reaches the backend through the raw TCP listener.
fn run_examples(tm: &Server, dir: &Path) {
    const EXAMPLE_ID: &str = "spiffe://example.org/envoy/example";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected the example bootstraps in {}: {files:?}", root.display());

    let socket = Server::socket_path(&tm.data_dir);
    let example_bin = envoy_alias(dir, "example-envoy");
    entry_for(tm, EXAMPLE_ID, &example_bin);
    tm.ok(&["entry", "create", "--spiffe-id", EXAMPLE_ID, "--selector", "token:sub:example-tls"]);
    let token = tm.ok(&["token", "mint", "node", "example-tls"]).trim().to_string();
    let backend = Upstream::start();

    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let original = std::fs::read_to_string(file).unwrap();
        let mut text = original
            .replace("/tmp/trustmesh/public/api.sock", socket.to_str().unwrap())
            .replace("/tmp/trustmesh/ca-bundle.pem", tm.bundle_path().to_str().unwrap())
            .replace("REPLACE_WITH_TOKEN", &token)
            .replace("port_value: 4020", &format!("port_value: {}", tm.api.port()))
            .replace(&format!("port_value: {EXAMPLE_BACKEND_PORT}"), &format!("port_value: {}", backend.port()));
        // The examples' fixed listener ports, each to a free one.
        let fixed: std::collections::BTreeSet<&str> = original
            .lines()
            .filter_map(|l| l.trim().strip_prefix("port_value: "))
            .filter(|p| !["0", "4020", EXAMPLE_BACKEND_PORT].contains(p))
            .collect();
        for port in fixed {
            text = text.replace(&format!("port_value: {port}"), &format!("port_value: {}", free_port()));
        }
        eprintln!("[{name}] starting");
        let envoy = Envoy::start_with(&example_bin, &text, &[]);
        assert!(has_deny_list(&envoy), "[{name}] LIVE without the deny list\n{}", envoy.diagnostics());
        let r = http::get(envoy.listener_addr("plain_out"), "/example")
            .unwrap_or_else(|e| panic!("[{name}] {e}\n{}", envoy.diagnostics()));
        assert_eq!(r.status, 200, "[{name}] {}\n{}", r.body, envoy.diagnostics());
        if text.contains("\"backend\"") {
            assert_eq!(xfcc_uri(&r.body).as_deref(), Some(EXAMPLE_ID), "[{name}] {}", r.body);
        } else {
            assert_eq!(r.header("x-peer-spiffe-id"), Some(EXAMPLE_ID), "[{name}] {:?}", r.headers);
        }
        if envoy.listener_names().iter().any(|l| l == "tcp_out") {
            let r = http::get(envoy.listener_addr("tcp_out"), "/example-tcp")
                .unwrap_or_else(|e| panic!("[{name}] tcp: {e}\n{}", envoy.diagnostics()));
            // Through the TCP proxy: no HTTP connection manager added a header.
            assert_eq!((r.status, r.body.trim()), (200, "xfcc="), "[{name}] tcp\n{}", envoy.diagnostics());
            let stats = envoy.stats();
            assert!(sum_stats(&stats, "tcp.tcp_in.", "downstream_cx_total") >= 1, "[{name}]");
        }
        assert_eq!(envoy.serials_of(EXAMPLE_ID).len(), 1, "[{name}] {}", envoy.diagnostics());
        eprintln!("[{name}] ok");
    }
}

/// `trustmesh envoy bootstrap` run locally (it needs no server).
fn bootstrap_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(server::BIN)
        .args(["--data-dir", "/nonexistent", "envoy", "bootstrap"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "envoy bootstrap {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_example_and_generated_bootstrap_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    // A CA file for the TLS-port variants (Envoy reads it while validating).
    let ca = dir.path().join("ca.pem");
    let key = dir.path().join("ca.key");
    openssl_self_signed(&ca, &key, "/CN=validate", "1", &[]);
    let token = dir.path().join("node.token");
    std::fs::write(&token, "t.o.k").unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).unwrap().replace("/tmp/trustmesh/ca-bundle.pem", ca.to_str().unwrap());
        if let Err(e) = validate(&text) {
            panic!("{} is not valid for Envoy {}: {e}", path.display(), ENVOY_VERSION);
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples in {}", root.display());

    let id = "spiffe://example.org/v/a";
    let (ca_s, token_s) = (ca.to_str().unwrap(), token.to_str().unwrap());
    let servers: [&[&str]; 2] = [
        &["--socket", "/tmp/trustmesh-validate/api.sock"],
        &["--server", "https://127.0.0.1:4020", "--ca-file", ca_s, "--token-file", token_s],
    ];
    let shapes: [&[&str]; 3] = [
        // HTTP answering itself, and an outbound route.
        &["--listener", "in:0:spiffe://example.org/v/b", "--upstream", "out:0:127.0.0.1:9:spiffe://example.org/v/b"],
        // HTTP and raw TCP in front of a backend.
        &[
            "--backend",
            "127.0.0.1:9",
            "--listener",
            "in:0:spiffe://example.org/v/b",
            "--tcp-listener",
            "raw:0:spiffe://example.org/v/b,spiffe://example.org/v/c",
        ],
        // Only outbound, fresh connections.
        &["--upstream", "out:0:localhost:9:spiffe://example.org/v/b", "--new-connection-per-request"],
    ];
    for server in servers {
        for delta in [false, true] {
            for shape in shapes {
                let mut args = vec!["--node-id", "validate", "--bind", "127.0.0.1", "--spiffe-id", id];
                args.extend_from_slice(server);
                if delta {
                    args.push("--delta");
                }
                args.extend_from_slice(shape);
                let text = bootstrap_cli(&args);
                if let Err(e) = validate(&text) {
                    panic!("bootstrap {args:?} is not valid: {e}\n{text}");
                }
            }
        }
    }
}
