//! What the agent protocol does with bad input (SPEC §11, §12): join tokens
//! replayed, expired, from another server, garbage, for another node or of
//! another kind; a data directory with loose modes or corrupt files; and,
//! speaking the protocol directly, CSRs for another node's entries, calls
//! without or with the wrong client certificate, an evicted node, oversized
//! messages. Each gets a clear error, and nothing else is affected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::agent::{Agent, agent_args, agent_paths, failed_agent};
use support::server::Server;

/// The command line of an agent of `tm` for `node` whose join token file
/// holds `token`.
fn with_token(tm: &Server, dir: &Path, node: &str, token: &str) -> Vec<String> {
    let (data, socket, file) = agent_paths(dir, node);
    std::fs::write(&file, token).unwrap();
    agent_args(&[format!("https://{}", tm.api)], &tm.bundle_path(), Some(&file), node, &data, &socket)
}

fn join_token(tm: &Server, node: &str, extra: &[&str]) -> String {
    let minted = tm.json(&[&["token", "mint", "join", node][..], extra].concat());
    minted["token"].as_str().unwrap().to_string()
}

/// Starts an agent that must stop at once with exit 64 and one `error:`
/// line containing `needle`.
fn refused(args: &[String], needle: &str) -> String {
    let (code, errors) = failed_agent(args);
    assert_eq!(code, Some(64), "{errors:?}");
    assert_eq!(errors.len(), 1, "one line: {errors:?}");
    assert!(errors[0].contains(needle), "{needle:?} not in {:?}", errors[0]);
    errors[0].clone()
}

#[test]
fn bad_join_tokens_are_refused_with_a_clear_error_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let tm = Server::start(&dir.path().join("data"), &[]);
    let other = Server::start(&dir.path().join("other"), &[]);
    let good = Agent::join(&tm, &[], "node-good", dir.path());
    // Expires in a second; refused once past the 30 s clock-skew leeway (checked last).
    let expired = join_token(&tm, "node-x", &["--expires-in", "1s"]);
    let expires = std::time::Instant::now() + Duration::from_secs(32);

    // Replayed: the token node-good used.
    let used = std::fs::read_to_string(dir.path().join("node-good.join")).unwrap();
    std::fs::create_dir_all(dir.path().join("r")).unwrap();
    let replay = with_token(&tm, &dir.path().join("r"), "node-good", &used);
    refused(&replay, "already used");
    // Signed by another trustmesh (a key this server does not know).
    let foreign = join_token(&other, "node-f", &[]);
    refused(&with_token(&tm, dir.path(), "node-f", &foreign), "refused the join token");
    // Garbage, and a file that holds nothing.
    refused(&with_token(&tm, dir.path(), "node-g", "not.a.token"), "refused the join token");
    refused(&with_token(&tm, dir.path(), "node-e", "  \n"), "is empty");
    // Minted for another node.
    let elsewhere = join_token(&tm, "node-y", &[]);
    refused(&with_token(&tm, dir.path(), "node-z", &elsewhere), "minted for node node-y, not node-z");
    // Another kind of token.
    let admin = tm.json(&["token", "mint", "admin", "ops"])["token"].as_str().unwrap().to_string();
    refused(&with_token(&tm, dir.path(), "node-k", &admin), "not a join token");
    // Expired.
    std::thread::sleep(expires.saturating_duration_since(std::time::Instant::now()));
    refused(&with_token(&tm, dir.path(), "node-x", &expired), "expired");
    // A join token is only for attestation: the admin API refuses it.
    let out = tm.cli_cmd().args(["--token", &elsewhere, "pki", "status"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a join token only attests a node"));

    // Every refusal was audited, and the good agent is served all along.
    let audit = tm.json(&["audit", "list"]);
    let refusals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "attest_agent" && r["outcome"] == "denied")
        .count();
    assert!(refusals >= 6, "{refusals} refused attestations audited:\n{audit}");
    assert_eq!(good.ready().0, 200);
    assert_eq!(tm.json(&["agent", "list"]).as_array().unwrap().len(), 1, "no other node was attested");
}

#[test]
fn a_data_directory_with_loose_modes_or_corrupt_files_stops_the_agent_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tm = Server::start(&dir.path().join("data"), &[]);
    let mut agent = Agent::join(&tm, &[], "node-a", dir.path());
    agent.stop();
    let data = agent.data_dir.clone();
    let args = with_token(&tm, dir.path(), "node-a", "unused");
    let chmod = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();

    chmod(&data, 0o755);
    refused(&args, "must be 0700");
    chmod(&data, 0o700);
    chmod(&data.join("node.key"), 0o644);
    refused(&args, "node.key has mode 644; it must be 0600");
    chmod(&data.join("node.key"), 0o600);

    for (file, needle) in [("node.key", "node.key is corrupt"), ("state.pb", "state.pb is corrupt"), ("node.pem", "node.pem is corrupt")] {
        let path = data.join(file);
        let kept = std::fs::read(&path).unwrap();
        std::fs::write(&path, b"\x00garbage\xff").unwrap();
        let line = refused(&args, needle);
        assert!(line.contains("remove it to start over"), "{line}");
        std::fs::write(&path, kept).unwrap();
    }
    // Put back, it starts again without a token.
    agent.restart();
    assert_eq!(agent.ready().0, 200);
}

mod protocol {
    //! The agent protocol spoken directly, as a misbehaving agent would.

    use std::time::Duration;

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tonic::Code;
    use tonic::transport::Channel;
    use trustmesh::ca::{self, KeyAlgorithm, PrivateKey};
    use trustmesh::domain::{NodeId, SpiffeId, TrustDomain};
    use trustmesh::net::client::{ClientIdentity, ServerTrust, channel};
    use trustmesh::proto::agent::v1 as pb;
    use trustmesh::proto::agent::v1::agent_client::AgentClient;

    use crate::support::my_uid;
    use crate::support::server::Server;

    const WEB: &str = "spiffe://example.org/protocol/web";
    const OTHER: &str = "spiffe://example.org/protocol/other-node";

    fn key() -> PrivateKey {
        PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new()).unwrap()
    }

    fn csr(key: &PrivateKey, id: &str) -> Vec<u8> {
        ca::csr_der(key, &SpiffeId::parse(id).unwrap()).unwrap()
    }

    fn node_id(node: &str) -> String {
        NodeId::parse(node).unwrap().spiffe_id(&TrustDomain::parse("example.org").unwrap()).unwrap().to_string()
    }

    async fn client(tm: &Server, identity: Option<ClientIdentity>) -> AgentClient<Channel> {
        let trust = ServerTrust::from_bundle_pem(&std::fs::read_to_string(tm.bundle_path()).unwrap()).unwrap();
        AgentClient::new(channel(&format!("https://{}", tm.api), trust, identity).await.unwrap())
    }

    fn identity(chain_pem: &str, key: &PrivateKey) -> ClientIdentity {
        ClientIdentity {
            chain: ca::certs_from_pem(chain_pem).unwrap().into_iter().map(CertificateDer::from).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
        }
    }

    fn entry(tm: &Server, id: &str, node: &str) -> String {
        let uid = format!("unix:uid:{}", my_uid());
        let created = tm.json(&["entry", "create", "--spiffe-id", id, "--selector", &uid, "--node", node]);
        created["id"].as_str().unwrap().to_string()
    }

    fn sign(entry_id: &str, csr: Vec<u8>) -> pb::SignSvidsRequest {
        pb::SignSvidsRequest { csrs: vec![pb::SvidCsr { entry_id: entry_id.into(), csr }] }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_nodes_entries_foreign_certificates_and_an_evicted_node_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tm = Server::start(&dir.path().join("data"), &[]);
        let web = entry(&tm, WEB, "node-a");
        let other = entry(&tm, OTHER, "node-b");
        let token = tm.json(&["token", "mint", "join", "node-a"])["token"].as_str().unwrap().to_string();

        // Attest: a CSR for another node's identity is refused, and does not spend the token.
        let mut anonymous = client(&tm, None).await;
        let node_key = key();
        let bad = pb::AttestRequest { node_id: "node-a".into(), join_token: token.clone(), csr: csr(&node_key, &node_id("node-b")) };
        let err = anonymous.attest(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("must name exactly spiffe://example.org/trustmesh/agent/node-a"), "{err:?}");
        let good = pb::AttestRequest { node_id: "node-a".into(), join_token: token.clone(), csr: csr(&node_key, &node_id("node-a")) };
        let svid = anonymous.attest(good.clone()).await.unwrap().into_inner();
        let replay = anonymous.attest(good).await.unwrap_err();
        assert_eq!(replay.code(), Code::Unauthenticated, "{replay:?}");
        assert!(replay.message().contains("already used"), "{replay:?}");

        // Without a client certificate, and with a workload SVID instead of a node SVID.
        let err = anonymous.sign_svids(sign(&web, csr(&key(), WEB))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("no client certificate"), "{err:?}");
        let (cert, cert_key) = tm.generate(dir.path(), "workload", "spiffe://example.org/protocol/workload", &[]);
        let workload_key = PrivateKey::from_pem(&std::fs::read_to_string(cert_key).unwrap()).unwrap();
        let workload = identity(&std::fs::read_to_string(cert).unwrap(), &workload_key);
        let err = client(&tm, Some(workload)).await.sign_svids(sign(&web, csr(&key(), WEB))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("is not a node SVID"), "{err:?}");

        let mut agent = client(&tm, Some(identity(&svid.chain_pem, &node_key))).await;
        // Its own entry: signed, for the key in the CSR.
        let own_key = key();
        let signed = agent.sign_svids(sign(&web, csr(&own_key, WEB))).await.unwrap().into_inner().svids;
        assert!(signed[0].error.is_empty(), "{:?}", signed[0]);
        let leaf = ca::certs_from_pem(&signed[0].chain_pem).unwrap().remove(0);
        let parsed = ca::IssuedCertificate::from_der(&leaf).unwrap();
        assert_eq!(parsed.spiffe_id.unwrap().to_string(), WEB);
        // Another node's entry, a CSR for another identity than the entry's,
        // an unknown entry and a CSR that is not one: each refused, alone.
        let batch = pb::SignSvidsRequest {
            csrs: vec![
                pb::SvidCsr { entry_id: other.clone(), csr: csr(&key(), OTHER) },
                pb::SvidCsr { entry_id: web.clone(), csr: csr(&key(), OTHER) },
                pb::SvidCsr { entry_id: "0123".into(), csr: csr(&key(), WEB) },
                pb::SvidCsr { entry_id: web.clone(), csr: b"not a csr".to_vec() },
                pb::SvidCsr { entry_id: web.clone(), csr: csr(&key(), WEB) },
            ],
        };
        let answers = agent.sign_svids(batch).await.unwrap().into_inner().svids;
        let errors: Vec<&str> = answers.iter().map(|a| a.error.as_str()).collect();
        assert!(errors[0].contains(&format!("no entry {other} is bound to node node-a")), "{errors:?}");
        assert!(errors[1].contains("the CSR names spiffe://example.org/protocol/other-node"), "{errors:?}");
        assert!(errors[2].contains("no entry 0123 is bound to node node-a"), "{errors:?}");
        assert!(errors[3].contains("csr"), "{errors:?}");
        assert!(errors[4].is_empty() && !answers[4].chain_pem.is_empty(), "the good CSR beside them: {errors:?}");
        assert!(answers[..4].iter().all(|a| a.chain_pem.is_empty()));
        // Too many CSRs in one call; a message over the limit.
        let many = pb::SignSvidsRequest { csrs: (0..257).map(|_| pb::SvidCsr { entry_id: web.clone(), csr: vec![] }).collect() };
        assert_eq!(agent.sign_svids(many).await.unwrap_err().code(), Code::InvalidArgument);
        let huge = sign(&web, vec![0u8; 5 * 1024 * 1024]);
        let err = agent.sign_svids(huge).await.unwrap_err();
        assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{err:?}");
        // A JWT-SVID for another node's identity.
        let jwt = pb::MintJwtSvidRequest { spiffe_id: OTHER.into(), audience: vec!["x".into()], ttl_seconds: 0 };
        let err = agent.mint_jwt_svid(jwt).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let jwt = pb::MintJwtSvidRequest { spiffe_id: WEB.into(), audience: vec!["x".into()], ttl_seconds: 0 };
        assert!(!agent.mint_jwt_svid(jwt).await.unwrap().into_inner().token.is_empty());

        // Evicted: the open stream ends, every later call is refused, and what it obtained is revoked.
        let (reports, rx) = tokio::sync::mpsc::channel::<pb::SyncReport>(1);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut stream = agent.sync(outbound).await.unwrap().into_inner();
        let state = stream.message().await.unwrap().unwrap();
        assert_eq!(state.entries.iter().map(|e| e.spiffe_id.as_str()).collect::<Vec<_>>(), [WEB], "only its own entries");
        let out = tm.ok(&["agent", "evict", "node-a"]);
        assert!(out.contains("evicted: 3 certificates revoked"), "{out}");
        let ended = tokio::time::timeout(Duration::from_secs(2), stream.message()).await.expect("the stream ended");
        let err = ended.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        drop(reports);
        let err = agent.sign_svids(sign(&web, csr(&key(), WEB))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("revoked"), "{err:?}");
        let listed = tm.json(&["pki", "cert", "list", "--spiffe-id", WEB]);
        assert!(listed.as_array().unwrap().iter().all(|c| c["status"] == "revoked"), "{listed}");
        let again = tm.fails(&["agent", "evict", "node-a"]);
        assert!(again.contains("no attested node node-a (or it is evicted already)"), "{again}");
    }
}
