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
    let refusals =
        audit.as_array().unwrap().iter().filter(|r| r["action"] == "attest_agent" && r["outcome"] == "denied").count();
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

    for (file, needle) in
        [("node.key", "node.key is corrupt"), ("state.pb", "state.pb is corrupt"), ("node.pem", "node.pem is corrupt")]
    {
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

    /// What a broken agent might send on `Sync` instead of a report: field 1
    /// (`acked_revision`, a varint) as a string.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotAReport {
        #[prost(string, tag = "1")]
        garbage: String,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_malformed_report_ends_that_agents_stream_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let tm = Server::start(&dir.path().join("data"), &[]);
        let mut svids = Vec::new();
        for node in ["node-a", "node-b"] {
            entry(&tm, &format!("spiffe://example.org/protocol/{node}"), node);
            let token = tm.json(&["token", "mint", "join", node])["token"].as_str().unwrap().to_string();
            let k = key();
            let request = pb::AttestRequest { node_id: node.into(), join_token: token, csr: csr(&k, &node_id(node)) };
            let svid = client(&tm, None).await.attest(request).await.unwrap().into_inner();
            svids.push((svid, k));
        }
        let mut good = client(&tm, Some(identity(&svids[1].0.chain_pem, &svids[1].1))).await;
        let (_keep, rx) = tokio::sync::mpsc::channel::<pb::SyncReport>(1);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut good_stream = good.sync(outbound).await.unwrap().into_inner();
        assert!(good_stream.message().await.unwrap().is_some());

        // The broken agent: a well-framed gRPC message that is not a report.
        let bad_trust = ServerTrust::from_bundle_pem(&std::fs::read_to_string(tm.bundle_path()).unwrap()).unwrap();
        let bad_channel =
            channel(&format!("https://{}", tm.api), bad_trust, Some(identity(&svids[0].0.chain_pem, &svids[0].1)))
                .await
                .unwrap();
        let mut grpc = tonic::client::Grpc::new(bad_channel);
        grpc.ready().await.unwrap();
        let (send, rx) = tokio::sync::mpsc::channel::<NotAReport>(1);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let codec = tonic_prost::ProstCodec::<NotAReport, pb::SyncState>::default();
        let path = http::uri::PathAndQuery::from_static("/trustmesh.agent.v1.Agent/Sync");
        let mut bad_stream = grpc.streaming(tonic::Request::new(outbound), path, codec).await.unwrap().into_inner();
        assert!(bad_stream.message().await.unwrap().is_some(), "its state came first");
        send.send(NotAReport { garbage: "x".repeat(100) }).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match bad_stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(drop),
                }
            }
        })
        .await
        .expect("the malformed report ended the stream");
        let err = ended.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("not a valid message"), "{err:?}");
        assert!(tm.log().contains("Agent stream ended"), "{}", tm.log_tail(20));

        // The other agent's stream goes on: a change still reaches it.
        entry(&tm, "spiffe://example.org/protocol/node-b-2", "node-b");
        let next = tokio::time::timeout(Duration::from_secs(5), good_stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.entries.len(), 2, "the good agent's stream delivered the change");
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
        let bad = pb::AttestRequest {
            node_id: "node-a".into(),
            join_token: token.clone(),
            csr: csr(&node_key, &node_id("node-b")),
        };
        let err = anonymous.attest(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("must name exactly spiffe://example.org/trustmesh/agent/node-a"), "{err:?}");
        let good = pb::AttestRequest {
            node_id: "node-a".into(),
            join_token: token.clone(),
            csr: csr(&node_key, &node_id("node-a")),
        };
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
        let many = pb::SignSvidsRequest {
            csrs: (0..257).map(|_| pb::SvidCsr { entry_id: web.clone(), csr: vec![] }).collect(),
        };
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
        assert_eq!(
            state.entries.iter().map(|e| e.spiffe_id.as_str()).collect::<Vec<_>>(),
            [WEB],
            "only its own entries"
        );
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

mod garbage {
    //! A server that sends garbage (a forged CRL, another trust domain, an
    //! entry that does not parse, a bundle that is not one, a message over
    //! the size limit): the agent
    //! refuses each state whole and keeps serving what it had.

    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use parking_lot::Mutex;
    use ring::rand::SystemRandom;
    use time::OffsetDateTime;
    use tonic::{Request, Response, Status, Streaming};
    use trustmesh::agent::{Agent, AgentParts};
    use trustmesh::ca::{self, KeyAlgorithm, RootParams, Signer, SvidRequest};
    use trustmesh::cache::IdentitySource;
    use trustmesh::domain::{NodeId, RandomSerials, Selector, SerialSource, SpiffeId, SystemClock, TrustDomain};
    use trustmesh::proto::agent::v1 as pb;
    use trustmesh::trust::TrustSnapshot;

    const WEB: &str = "spiffe://example.org/garbage/web";

    /// The one good state, then one bad state per stream, in this order.
    struct Fake {
        ca: Arc<Signer>,
        good: pb::SyncState,
        bad: Vec<pb::SyncState>,
        streams: Arc<AtomicUsize>,
        signed: Arc<Mutex<Vec<String>>>,
    }

    fn serial() -> trustmesh::domain::Serial {
        RandomSerials::default().next_serial().unwrap()
    }

    fn leaf(ca: &Signer, csr: &[u8]) -> Result<String, Status> {
        let td = TrustDomain::parse("example.org").unwrap();
        let parsed = ca::parse_csr(csr, &td).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let lifetime = time::Duration::hours(1);
        let now = OffsetDateTime::now_utc();
        let cert = match NodeId::of_agent_id(&parsed.spiffe_id, &td) {
            Some(node) => ca::issue_node_svid(ca, &node, &td, &parsed.public_key_der, lifetime, serial(), now),
            None => {
                let request = SvidRequest {
                    spiffe_id: &parsed.spiffe_id,
                    dns_names: &[],
                    public_key_der: &parsed.public_key_der,
                    lifetime,
                    serial: serial(),
                    common_name: None,
                };
                ca::issue_svid(ca, &request, now)
            }
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(format!("{}{}", cert.to_pem(), ca.cert.to_pem()))
    }

    type States = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SyncState, Status>> + Send>>;

    #[tonic::async_trait]
    impl pb::agent_server::Agent for Fake {
        async fn attest(&self, request: Request<pb::AttestRequest>) -> Result<Response<pb::NodeSvid>, Status> {
            let chain_pem = leaf(&self.ca, &request.into_inner().csr)?;
            Ok(Response::new(pb::NodeSvid { chain_pem, bundle_pem: self.ca.cert.to_pem() }))
        }

        async fn renew_node_svid(
            &self,
            request: Request<pb::RenewNodeSvidRequest>,
        ) -> Result<Response<pb::NodeSvid>, Status> {
            let chain_pem = leaf(&self.ca, &request.into_inner().csr)?;
            Ok(Response::new(pb::NodeSvid { chain_pem, bundle_pem: self.ca.cert.to_pem() }))
        }

        async fn sign_svids(
            &self,
            request: Request<pb::SignSvidsRequest>,
        ) -> Result<Response<pb::SignSvidsResponse>, Status> {
            let mut svids = Vec::new();
            for c in request.into_inner().csrs {
                let chain_pem = leaf(&self.ca, &c.csr)?;
                self.signed.lock().push(c.entry_id.clone());
                svids.push(pb::SignedSvid { entry_id: c.entry_id, chain_pem, error: String::new(), denied: false });
            }
            Ok(Response::new(pb::SignSvidsResponse { svids }))
        }

        async fn mint_jwt_svid(
            &self,
            _: Request<pb::MintJwtSvidRequest>,
        ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type SyncStream = States;

        async fn sync(&self, _: Request<Streaming<pb::SyncReport>>) -> Result<Response<States>, Status> {
            let n = self.streams.fetch_add(1, Ordering::SeqCst);
            let mut states = Vec::new();
            if n == 0 {
                states.push(Ok(self.good.clone()));
            }
            states.extend(self.bad.get(n).cloned().map(Ok));
            // Then the stream stays open, sending nothing more.
            let stream = futures::stream::iter(states).chain(futures::stream::pending());
            Ok(Response::new(Box::pin(stream)))
        }
    }

    use futures::StreamExt as _;

    fn good_state(ca: &Signer) -> pb::SyncState {
        let td = TrustDomain::parse("example.org").unwrap();
        let crl = ca::build_crl(ca, &[], 1, OffsetDateTime::now_utc(), time::Duration::days(7)).unwrap();
        let mut snapshot = TrustSnapshot::empty(&td);
        snapshot.revision = 7;
        snapshot.bundle_pem = ca.cert.to_pem();
        snapshot.crls = vec![crl];
        let entry = pb::Entry {
            id: "0a".into(),
            spiffe_id: WEB.into(),
            selectors: vec![format!("unix:uid:{}", crate::support::my_uid())],
            created_at: 1,
            ..Default::default()
        };
        pb::SyncState { entries: vec![entry], trust: Some(trustmesh::sync::trust_to_wire(&snapshot)) }
    }

    /// What a broken or hostile server could send.
    fn bad_states(good: &pb::SyncState, other_ca: &Signer) -> Vec<pb::SyncState> {
        let with_trust = |f: &dyn Fn(&mut pb::Trust)| {
            let mut s = good.clone();
            f(s.trust.as_mut().unwrap());
            s
        };
        let forged = ca::build_crl(other_ca, &[], 2, OffsetDateTime::now_utc(), time::Duration::days(7)).unwrap();
        let mut bad_entry = good.clone();
        bad_entry.entries[0].selectors = vec!["nonsense".into()];
        vec![
            with_trust(&|t| t.crls = vec![forged.der.clone()]),
            with_trust(&|t| t.trust_domain = "other.org".into()),
            with_trust(&|t| t.bundle_pem = "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n".into()),
            with_trust(&|t| t.jwks_json = "[1, 2".into()),
            with_trust(&|t| t.revoked_serials = (0..3_000_000).map(|i| format!("{i:x}")).collect()),
            // Over the agent's 64 MiB message limit: refused before it is decoded.
            with_trust(&|t| t.jwks_json = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(65 << 20))),
            pb::SyncState { entries: good.entries.clone(), trust: None },
            bad_entry,
        ]
    }

    fn root(td: &str) -> Signer {
        let params = RootParams {
            common_name: "garbage test root".into(),
            algorithm: KeyAlgorithm::EcP256,
            lifetime: time::Duration::days(1),
            trust_domain: TrustDomain::parse(td).unwrap(),
        };
        ca::create_root(&params, serial(), OffsetDateTime::now_utc(), &SystemRandom::new()).unwrap()
    }

    /// The fake server's TLS: a server certificate for
    /// spiffe://example.org/trustmesh/server from its root.
    fn acceptor(ca: &Signer) -> tokio_rustls::TlsAcceptor {
        let td = TrustDomain::parse("example.org").unwrap();
        let id = SpiffeId::server(&td).unwrap();
        let names = vec!["127.0.0.1".to_string()];
        let (cert, key) = ca::issue_server_certificate(
            ca,
            &id,
            &names,
            time::Duration::hours(1),
            serial(),
            OffsetDateTime::now_utc(),
            &SystemRandom::new(),
        )
        .unwrap();
        let chain = vec![cert.der.clone().into(), ca.cert.der.clone().into()];
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn states_that_fail_their_checks_change_nothing_the_agent_serves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(root("example.org"));
        let good = good_state(&ca);
        let bad = bad_states(&good, &root("example.org"));
        let count = bad.len();
        let streams = Arc::new(AtomicUsize::new(0));
        let signed = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake { ca: ca.clone(), good, bad, streams: streams.clone(), signed: signed.clone() };
        let router = tonic::service::Routes::new(pb::agent_server::AgentServer::new(fake)).prepare().into_axum_router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let limits = trustmesh::net::Limits::from_fd_limit(4096, Duration::from_secs(10), Duration::from_secs(300));
        let gate = trustmesh::net::Gate::new(trustmesh::net::Listener::Tls, limits.tls);
        let server = tokio::spawn(trustmesh::net::serve_tls(listener, acceptor(&ca), router, gate, stopped));

        let token = dir.path().join("join");
        std::fs::write(&token, "any").unwrap();
        let data_dir = dir.path().join("agent");
        std::fs::create_dir(&data_dir).unwrap();
        let (kek, _) = ca::Kek::generate(&SystemRandom::new()).unwrap();
        let agent = Agent::start(AgentParts {
            servers: vec![format!("https://{addr}")],
            node: NodeId::parse("node-a").unwrap(),
            data_dir: data_dir.clone(),
            trust_bundle: Some(ca.cert.to_pem()),
            join_token_file: Some(token),
            kek,
            clock: Arc::new(SystemClock),
        })
        .await
        .unwrap();
        let tasks: Vec<_> = agent.tasks.into_iter().map(tokio::spawn).collect();

        // Every bad state was sent (each on a stream of its own, after a refusal).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while streams.load(Ordering::SeqCst) < count + 1 {
            assert!(tokio::time::Instant::now() < deadline, "only {} streams", streams.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What the agent holds is the good state, as first applied.
        let trust = agent.trust.borrow().clone();
        assert_eq!(trust.revision, 1, "one state applied, none after it");
        assert_eq!(trust.bundle_pem, ca.cert.to_pem());
        assert_eq!(trust.crls.len(), 1);
        assert_eq!(trust.trust_domain.as_str(), "example.org");
        // And it serves its SVID from it.
        let uid = format!("unix:uid:{}", crate::support::my_uid());
        let selectors: BTreeSet<Selector> = [Selector::parse(&uid).unwrap()].into();
        let watch = agent.cache.watch(selectors).await.unwrap();
        let set = watch.current();
        assert_eq!(set.svids.len(), 1, "{:?}", set.withheld);
        assert_eq!(set.svids[0].spiffe_id.to_string(), WEB);
        assert_eq!(*signed.lock(), ["0a"], "its key's CSR was signed by the server");

        stop.send(true).unwrap();
        for t in tasks {
            t.abort();
        }
        let _ = server.await;
    }
}

#[test]
fn entries_are_bound_to_a_node_by_name_or_by_spires_parent_id_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tm = Server::start(&dir.path().join("data"), &[]);
    let create = |extra: &[&str]| {
        let base = ["entry", "create", "--spiffe-id", "spiffe://example.org/bound", "--selector", "unix:uid:4242"];
        tm.cli(&[&base[..], extra].concat())
    };
    let ok = |extra: &[&str]| {
        let out = create(extra);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let fails = |extra: &[&str], needle: &str| {
        let out = create(extra);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(needle), "{extra:?}: {needle:?} not in {err:?}");
    };
    assert!(ok(&["--node", "node-a"]).contains("Node:       node-a"));
    let by_parent = ok(&["--parent-id", "spiffe://example.org/trustmesh/agent/node-b", "--selector", "unix:gid:1"]);
    assert!(by_parent.contains("Node:       node-b"), "{by_parent}");
    fails(&["--node", "a/b"], "invalid node name");
    fails(&["--node", &"n".repeat(129)], "longer than 128 bytes");
    fails(&["--parent-id", "spiffe://example.org/web"], "is not a node agent of this trust domain");
    fails(&["--parent-id", "spiffe://other.org/trustmesh/agent/x"], "is not a node agent of this trust domain");
    fails(&["--parent-id", "not a spiffe id"], "invalid node name");
    fails(&["--node", "a", "--parent-id", "spiffe://example.org/trustmesh/agent/a"], "cannot be used with");
    let listed = tm.json(&["entry", "list"]);
    let mut nodes: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|e| e["node"].as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"], "only the good ones were created");
}
