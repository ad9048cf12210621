//! The node agent end to end (SPEC §12): the real `trustmesh agent` beside
//! the real server; workloads through its socket with py-spiffe and the
//! `spiffe` crate; Envoys behind two agents standing for two nodes, peering
//! over mTLS through rotations and a server outage; replicas on PostgreSQL.
//! Loopback and Unix sockets only; every process is stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::agent::Agent;
use support::envoy::bootstrap::{at_socket, client_bootstrap};
use support::envoy::http::{self, failures};
use support::envoy::{Envoy, envoy_alias};
use support::process::poll;
use support::replicas::workload_ids;
use support::revocation::{A_FRESH, A_ID, A_KEEP, CLIENT_ROUTE, SERVER_ID, SERVER_LISTENER, Scene, Sds};
use support::server::Server;
use support::{my_uid, py_spiffe};

const WEB: &str = "spiffe://example.org/agent-test/web";
const OWN: &str = "spiffe://example.org/agent-test/on-the-server";
const ELSEWHERE: &str = "spiffe://example.org/agent-test/elsewhere";

fn entry(tm: &Server, id: &str, node: Option<&str>) {
    let uid = format!("unix:uid:{}", my_uid());
    let mut args = vec!["entry", "create", "--spiffe-id", id, "--selector", &uid];
    if let Some(node) = node {
        args.extend(["--node", node]);
    }
    tm.ok(&args);
}

fn run(mut cmd: std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn workloads_get_their_nodes_svids_through_the_agent_socket_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let tm = Server::start(&dir.path().join("data"), &[]);
    entry(&tm, WEB, Some("node-a"));
    entry(&tm, OWN, None);
    entry(&tm, ELSEWHERE, Some("node-b"));
    let a = Agent::join(&tm, &[], "node-a", dir.path());
    let empty = Agent::join(&tm, &[], "node-c", dir.path());

    // py-spiffe, unmodified, through the agent's socket: X.509 and JWT.
    let out = run(py_spiffe(&a.socket, "fetch_x509.py", &[WEB]));
    assert!(out.contains("ok x509"), "{out}");
    let out = run(py_spiffe(&a.socket, "fetch_jwt.py", &[WEB, "billing"]));
    assert!(out.contains("ok jwt"), "{out}");

    // The `spiffe` crate: the node's entries on its agent's socket, the
    // server's own entries on the server's socket, and nothing across.
    assert_eq!(workload_ids(&a.socket).unwrap(), BTreeSet::from([WEB.to_string()]));
    assert_eq!(workload_ids(&Server::socket_path(&tm.data_dir)).unwrap(), BTreeSet::from([OWN.to_string()]));
    let none = workload_ids(&empty.socket).unwrap_err();
    assert!(none.contains("NoIdentityIssued") || none.contains("PermissionDenied"), "{none}");

    // JWT-SVIDs: signed by the server, validated by the agent against the pushed JWKS.
    support::replicas::block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", a.socket.display())).await.unwrap();
        let svid = client.fetch_jwt_svid(["billing"], None).await.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), WEB);
        let validated = client.validate_jwt_token("billing", svid.token()).await.unwrap();
        assert_eq!(validated.spiffe_id().to_string(), WEB);
        let other = client.validate_jwt_token("other-audience", svid.token()).await;
        assert!(other.is_err(), "a token for another audience validated");
    });

    // The SVID served by the agent was signed for a key made on the node:
    // the server recorded it as obtained by node-a, and `agent list` says so.
    let certs = tm.json(&["pki", "cert", "list", "--spiffe-id", WEB]);
    assert!(!certs.as_array().unwrap().is_empty(), "{certs}");
    let agents = tm.json(&["agent", "list"]);
    let row = agents.as_array().unwrap().iter().find(|r| r["node"] == "node-a").cloned().unwrap();
    assert_eq!(row["spiffe_id"], "spiffe://example.org/trustmesh/agent/node-a");
    assert_eq!(row["entries"], 1, "{row}");
    assert!(row["connected_replica"].is_string(), "{row}");
    assert_eq!(a.ready().0, 200);
    assert_eq!(support::server::http_get(a.http, "/health").0, 200);
    let metrics = a.metrics();
    for name in ["trustmesh_agent_last_sync_age_seconds", "trustmesh_agent_svid_min_remaining_seconds"] {
        assert!(metrics.contains(name), "{name} missing from the agent's /metrics:\n{metrics}");
    }
}

#[test]
fn envoys_on_two_nodes_peer_over_mtls_and_rotate_under_traffic_without_a_failed_request() {
    let scene = Scene::start_with(&[A_KEEP, A_FRESH], Sds::Agents, &["--svid-ttl", "20"]);
    let origin = Instant::now();
    let probes = [("a-keep", scene.probe("a-keep")), ("a-fresh", scene.probe("a-fresh"))];
    let first_server = scene.server.serials_of(SERVER_ID);
    let first_client = scene.client("a-fresh").serials_of(A_ID);
    assert_eq!((first_server.len(), first_client.len()), (1, 1), "{}", scene.diagnostics());
    // Two rotations of 20-second SVIDs (at 8-12 s each) under traffic.
    std::thread::sleep(Duration::from_secs(26));
    let outcomes: Vec<_> = probes.into_iter().map(|(l, p)| (l, p.stop())).collect();
    let diag = scene.diagnostics();
    for (label, o) in &outcomes {
        assert!(o.len() >= 500, "{label}: only {} requests\n{diag}", o.len());
        assert!(failures(o, origin).is_empty(), "{label} failed: {:?}\n{diag}", failures(o, origin));
    }
    assert_ne!(scene.server.serials_of(SERVER_ID), first_server, "the server Envoy kept its first SVID\n{diag}");
    assert_ne!(scene.client("a-fresh").serials_of(A_ID), first_client, "the client Envoy kept its first SVID\n{diag}");
    assert_eq!(scene.upstream_connections("a-keep"), 1, "the keep-alive connection was replaced\n{diag}");
    // Both rotations were signed for keys the agents made, recorded by node.
    for agent in &scene.agents {
        let renewed = agent.events("Certificate renewed");
        assert!(!renewed.is_empty(), "agent {} renewed nothing\n{diag}", agent.node);
    }
}

/// Seconds left on the certificate a failed renewal reported.
fn expires_in(event: &serde_json::Value) -> i64 {
    event["cert_expires_in_seconds"].as_i64().unwrap_or_else(|| panic!("no cert_expires_in_seconds: {event}"))
}

#[test]
fn agents_serve_through_a_server_outage_from_memory_and_from_disk_and_renew_once_it_is_back() {
    // 60-second SVIDs: renewal due at 24-36 s, ERROR below 15 s left.
    let mut scene = Scene::start_with(&[A_KEEP, A_FRESH], Sds::Agents, &["--svid-ttl", "60"]);
    let origin = Instant::now();
    let probes = [("a-keep", scene.probe("a-keep")), ("a-fresh", scene.probe("a-fresh"))];
    let before = scene.client("a-fresh").serials_of(A_ID);
    let wait = |what: &str, timeout: Duration, f: &mut dyn FnMut() -> bool| {
        assert!(poll(timeout, || f().then_some(())).is_some(), "{what} within {timeout:?}");
    };
    // An Envoy of A's node that will start only during the outage (its
    // bootstrap rendered now, by the same generator).
    let port = scene.server.listener_port(SERVER_LISTENER);
    let route = format!("{CLIENT_ROUTE}:0:127.0.0.1:{port}:{SERVER_ID}");
    let late = client_bootstrap(&scene.tm, "a-late", A_ID, &route, true, &[]);
    let late = at_socket(&late, &Server::socket_path(&scene.tm.data_dir), &scene.agents[1].socket);
    std::thread::sleep(Duration::from_secs(1));
    scene.tm.kill();
    let killed = Instant::now();

    // Past the renewal point: each failed renewal is logged, louder as the
    // certificates near their end, with the seconds they have left.
    let client_agent = 1;
    wait("a failed renewal at WARN", Duration::from_secs(45), &mut || {
        scene.agents[client_agent].events("Certificate renewal failed").iter().any(|e| e["level"] == "WARN")
    });
    // The client node's agent restarts during the outage: its Envoys and
    // workloads are served again from what it kept on disk.
    scene.agents[client_agent].restart();
    assert_eq!(
        scene.agents[client_agent].events("state loaded from the data directory").len(),
        1,
        "{}",
        scene.agents[client_agent].log_tail(20)
    );
    let t = Instant::now();
    let envoy = Envoy::start_with(&envoy_alias(scene.dir.path(), "client-a"), &late, &[]);
    let served = poll(Duration::from_secs(10), || {
        http::get(envoy.listener_addr(CLIENT_ROUTE), "/a-late").ok().filter(|r| r.status == 200)
    });
    assert!(
        served.is_some(),
        "a new Envoy behind the restarted agent was not served
{}",
        scene.diagnostics()
    );
    println!("a new Envoy behind the restarted agent served {:?} after it started, server down", t.elapsed());
    assert_eq!(envoy.serials_of(A_ID), before, "served the SVID the agent kept on disk");
    drop(envoy);
    wait("a failed renewal at ERROR", Duration::from_secs(40), &mut || {
        let agent = &scene.agents[0];
        agent.events("Certificate renewal failed").iter().any(|e| e["level"] == "ERROR")
    });
    let errors = scene.agents[0].events("Certificate renewal failed");
    let warn = errors.iter().find(|e| e["level"] == "WARN").expect("WARN before ERROR");
    let error = errors.iter().find(|e| e["level"] == "ERROR").unwrap();
    assert!(expires_in(warn) >= 15 && expires_in(error) < 15, "WARN {warn}\nERROR {error}");
    assert_eq!(
        scene.client("a-fresh").serials_of(A_ID),
        before,
        "no certificate was renewed while the server was down"
    );
    println!("server down for {:?}", killed.elapsed());

    // The server comes back (same data directory and ports): every agent
    // has renewed within 5 s, and the Envoys hold the new certificates.
    let (data, api) = (scene.tm.data_dir.clone(), scene.tm.api.to_string());
    scene.tm = Server::start(&data, &["--svid-ttl", "60", "--listen", &api]);
    let back = Instant::now();
    wait("A's Envoy has a renewed certificate", Duration::from_secs(5), &mut || {
        let now = scene.client("a-fresh").serials_of(A_ID);
        now.len() == 1 && now != before
    });
    println!("renewed {:?} after the server was back", back.elapsed());
    let failures_counted = support::server::metric(&scene.agents[0].metrics(), "trustmesh_cert_renewal_failure_total");
    assert!(failures_counted.is_some_and(|n| n >= 2.0), "renewal failures counted: {failures_counted:?}");
    std::thread::sleep(Duration::from_secs(2));
    let outcomes: Vec<_> = probes.into_iter().map(|(l, p)| (l, p.stop())).collect();
    let diag = scene.diagnostics();
    for (label, o) in &outcomes {
        assert!(o.len() >= 1000, "{label}: only {} requests\n{diag}", o.len());
        assert!(failures(o, origin).is_empty(), "{label} failed during the outage: {:?}\n{diag}", failures(o, origin));
    }
}

/// The deny list (ECDS) an Envoy holds, as its admin's config dump shows it.
fn ecds_dump(envoy: &Envoy) -> String {
    envoy.admin_get("/config_dump?resource=ecds_filters").body
}

#[test]
fn an_agent_resumes_on_another_replica_and_a_deny_through_it_reaches_its_envoy() {
    use support::envoy::bootstrap::server_bootstrap;
    use support::envoy::envoy_bin;
    use support::envoy::http::Upstream;
    use support::replicas::{block_on, kek_file, replica};
    use support::server::entry_on;

    let dir = tempfile::tempdir().unwrap();
    let url = block_on(support::postgres::fresh_database());
    let kek = kek_file(dir.path());
    let mut a = replica(dir.path(), "a", &url, &kek);
    let b = replica(dir.path(), "b", &url, &kek);
    entry_on(&a, SERVER_ID, &envoy_bin(), Some("node-a"));
    let agent = Agent::join(&a, &[&b], "node-a", dir.path());
    let upstream = Upstream::start();
    let listener = format!("{SERVER_LISTENER}:0:{A_ID}");
    let text = server_bootstrap(&a, "replica-server", SERVER_ID, &listener, upstream.port(), &[]);
    let envoy = Envoy::start(&at_socket(&text, &Server::socket_path(&a.data_dir), &agent.socket));
    envoy.wait_deny_list();
    assert_eq!(agent.events("Agent synced")[0]["server"], format!("https://{}", a.api));
    let on_a = a.json(&["agent", "list"])[0]["connected_replica"].clone();
    assert!(on_a.is_string(), "{on_a}");

    // The replica the agent is connected to dies: it resumes on the other
    // within 5 s, with the node SVID it has (no new attestation).
    a.kill();
    let killed = Instant::now();
    let on_b = format!("https://{}", b.api);
    let resumed = poll(Duration::from_secs(5), || {
        agent.events("Agent synced").iter().any(|e| e["server"] == on_b.as_str()).then(Instant::now)
    });
    let resumed = resumed.unwrap_or_else(|| panic!("not resumed on replica b within 5 s\n{}", agent.log_tail(30)));
    println!("resumed on replica b {:?} after replica a was killed", resumed - killed);
    assert!(agent.events("Node SVID received").len() == 1, "attested again\n{}", agent.log_tail(30));
    let on_b = poll(Duration::from_secs(2), || {
        let replica = b.json(&["agent", "list"])[0]["connected_replica"].clone();
        (replica.is_string() && replica != on_a).then_some(replica)
    });
    assert!(on_b.is_some(), "`agent list` does not name replica b as the agent's");

    // A denial through the surviving replica reaches the Envoy behind the agent.
    assert!(!ecds_dump(&envoy).contains(A_ID), "denied before the denial");
    let t = Instant::now();
    b.ok(&["pki", "identity", "deny", A_ID, "--reason", "replica failover test"]);
    let returned = t.elapsed();
    let reached = poll(Duration::from_secs(5), || ecds_dump(&envoy).contains(A_ID).then(Instant::now));
    let reached = reached.unwrap_or_else(|| panic!("the denial never reached the Envoy\n{}", agent.log_tail(30)));
    let latency = reached.saturating_duration_since(t + returned);
    println!("deny through replica b returned in {returned:?}, in the Envoy's deny list {latency:?} later");
    assert!(latency <= Duration::from_secs(1), "the denial took {latency:?} to reach the Envoy");
}
