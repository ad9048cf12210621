//! Oversized, malformed and replayed input: refused in a few bytes, recorded
//! bounded, never half-done; minting and logging that a caller can drive
//! stay bounded.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use trustmesh::proto::admin::v1 as pb;
use trustmesh::proto::admin::v1::admin_client::AdminClient;

use crate::support::openssl::make_csr;
use crate::support::server::Server;
use crate::support::socket;
use crate::support::{mode, my_uid};
use crate::tmp;

const TD_ID: &str = "spiffe://example.org/svc/api";

/// An admin gRPC client over TLS, with the admin token.
async fn admin(s: &Server) -> (AdminClient<Channel>, String) {
    let ca = fs::read(s.bundle_path()).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", s.api.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = fs::read_to_string(s.data_dir.join("admin.token")).unwrap().trim().to_string();
    (AdminClient::new(channel), token)
}

fn authorized<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn audit(s: &Server) -> Vec<Value> {
    s.json(&["audit", "list", "--limit", "100000"]).as_array().unwrap().clone()
}

#[test]
fn oversized_fields_are_refused_in_a_few_bytes_and_recorded_bounded() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let token = s.bootstrap_token("probe", &[TD_ID], &[]);
    let huge = "a".repeat(100_000);
    let huge_id = format!("spiffe://example.org/{huge}");
    let attempts: Vec<Vec<&str>> = vec![
        vec!["--token", &token, "pki", "cert", "revoke", &huge],
        vec!["--token", &token, "pki", "identity", "deny", &huge_id, "--reason", "x"],
        vec!["--token", &token, "pki", "ca", "create-intermediary", "--common-name", &huge],
        vec!["--token", &token, "token", "mint", "admin", &huge],
        vec!["pki", "identity", "deny", TD_ID, "--reason", &huge],
        vec!["pki", "cert", "revoke", &huge],
    ];
    for args in &attempts {
        let err = s.fails(args);
        assert!(err.len() < 2_500, "a refusal of {} bytes: {}…", err.len(), &err[..200]);
    }
    let log = audit(&s);
    let refusals = log.iter().filter(|r| r["outcome"] != "ok").count();
    assert!(refusals >= attempts.len(), "every refusal is audited: {log:?}");
    for record in &log {
        for field in ["target", "reason", "actor", "action"] {
            let len = record[field].as_str().unwrap().len();
            assert!(len <= 1_024 + 3, "{field} of {len} bytes recorded");
        }
    }
    assert!(!s.log().contains(&huge[..5_000]), "the server log does not echo the input");
    s.ok(&["pki", "status"]);
}

#[test]
fn audit_list_pages_through_every_record_and_cuts_ones_recorded_before_the_bound() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    s.stop();
    {
        let db = rusqlite::Connection::open(data.join("trustmesh.db")).unwrap();
        let tx = db.unchecked_transaction().unwrap();
        let big = "r".repeat(200_000);
        for i in 0..1_300 {
            let reason = if i % 65 == 0 { big.as_str() } else { "small" };
            tx.execute(
                "INSERT INTO audit (at, actor, action, target, outcome, reason) VALUES (?1, 'old', 'probe', ?2, 'denied', ?3)",
                rusqlite::params![1_700_000_000 + i, format!("t{i}"), reason],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let s = Server::start(&data, &[]);
    let log = audit(&s);
    let probes: Vec<&Value> = log.iter().filter(|r| r["action"] == "probe").collect();
    assert_eq!(probes.len(), 1_300, "every record, over several pages");
    assert!(probes.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()), "oldest first");
    assert!(probes.iter().all(|r| r["reason"].as_str().unwrap().len() <= 1_024 + 3));
    let newest = s.json(&["audit", "list", "--limit", "3"]);
    assert_eq!(newest.as_array().unwrap().len(), 3);
}

/// A CSR with rcgen: the given DNS names and one URI SAN.
fn csr_with_dns(dns: Vec<String>, uri: &str) -> String {
    let mut params = rcgen::CertificateParams::new(dns).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
    let key = rcgen::KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn dns_names_are_bounded_in_csrs_and_requests() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let csr = dir.path().join("many.csr");
    // As many as fit in the 64 KiB a CSR may have.
    fs::write(&csr, csr_with_dns((0..3_000).map(|i| format!("n{i}.io")).collect(), TD_ID)).unwrap();
    let out = dir.path().join("many.pem");
    let err = s.fails(&[
        "pki",
        "cert",
        "sign-csr",
        "--csr",
        csr.to_str().unwrap(),
        "--spiffe-id",
        TD_ID,
        "--output-cert",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("3000 DNS names") && err.contains("at most 100"), "{err}");
    let mut args = vec!["pki", "cert", "generate", "--spiffe-id", TD_ID];
    let names: Vec<String> = (0..101).map(|i| format!("n{i}.example.org")).collect();
    for n in &names {
        args.extend(["--dns-name", n]);
    }
    let (cert, key) = (dir.path().join("g.pem"), dir.path().join("g.key"));
    args.extend(["--output-cert", cert.to_str().unwrap(), "--output-key", key.to_str().unwrap()]);
    let err = s.fails(&args);
    assert!(err.contains("101 DNS names"), "{err}");
}

#[test]
fn a_single_use_token_survives_a_refused_csr_and_is_spent_by_the_first_good_one() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let token = s.bootstrap_token("once", &[TD_ID], &["--single-use"]);
    let weak = make_csr(dir.path(), "weak", "rsa1024", &[TD_ID]);
    let good = make_csr(dir.path(), "good", "ec", &[TD_ID]);
    let out = dir.path().join("once.pem");
    let sign = |csr: &std::path::Path| {
        s.cli(&[
            "--token",
            &token,
            "pki",
            "cert",
            "sign-csr",
            "--csr",
            csr.to_str().unwrap(),
            "--spiffe-id",
            TD_ID,
            "--output-cert",
            out.to_str().unwrap(),
        ])
    };
    let refused = sign(&weak);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("RSA"));
    assert!(sign(&good).status.success(), "{}", String::from_utf8_lossy(&sign(&good).stderr));
    let replay = sign(&good);
    assert!(!replay.status.success() && String::from_utf8_lossy(&replay.stderr).contains("already used"));
}

#[test]
fn output_files_are_written_private_atomically_and_checked_before_issuing() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let key = dir.path().join("svc.key");
    fs::write(&key, b"old").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let cert = dir.path().join("svc.pem");
    let issue_into = |key: &std::path::Path| {
        s.cli(&[
            "pki",
            "cert",
            "generate",
            "--spiffe-id",
            TD_ID,
            "--output-cert",
            cert.to_str().unwrap(),
            "--output-key",
            key.to_str().unwrap(),
        ])
    };
    assert!(issue_into(&key).status.success());
    assert_eq!(mode(&key), 0o600, "a key written over a 0644 file is 0600");
    assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));

    let elsewhere = dir.path().join("elsewhere");
    fs::write(&elsewhere, b"keep").unwrap();
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = issue_into(&link);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert_eq!(fs::read(&elsewhere).unwrap(), b"keep");

    let id = "spiffe://example.org/svc/lost";
    let csr = make_csr(dir.path(), "lost", "ec", &[id]);
    let missing = dir.path().join("missing/dir/x.pem");
    let err = s.fails(&[
        "pki",
        "cert",
        "sign-csr",
        "--csr",
        csr.to_str().unwrap(),
        "--spiffe-id",
        id,
        "--output-cert",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("missing/dir"), "{err}");
    assert!(s.json(&["pki", "cert", "list", "--spiffe-id", id]).as_array().unwrap().is_empty(), "nothing issued");
}

/// Bytes in, bytes out: a gRPC codec that sends whatever it is given.
#[derive(Default, Clone)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[test]
fn bad_input_is_invalid_argument_not_internal() {
    let dir = tmp();
    std::fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut client, token) = admin(&s).await;
        let garbage = client.import_crl(authorized(&token, pb::ImportCrlRequest { crl: b"not a crl".to_vec() })).await;
        assert_eq!(garbage.unwrap_err().code(), Code::InvalidArgument);
        let many = pb::MintTokenRequest {
            kind: "bootstrap".into(),
            subject: "s".into(),
            spiffe_ids: (0..101).map(|i| format!("spiffe://example.org/s/{i}")).collect(),
            ..Default::default()
        };
        let status = client.mint_token(authorized(&token, many)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // A body that is no protobuf at all, on the admin API and the Workload API.
        let path = http::uri::PathAndQuery::from_static("/trustmesh.admin.v1.Admin/Status");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", s.api.port()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(fs::read(s.bundle_path()).unwrap()))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let status = grpc.unary(authorized(&token, vec![0xff, 0xff, 0xff]), path, RawCodec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        let mut local = tonic::client::Grpc::new(socket::channel(&Server::socket_path(&s.data_dir)).await);
        local.ready().await.unwrap();
        let mut request = tonic::Request::new(vec![0x0a, 0xff, 0xff]);
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTSVID");
        let status = local.unary(request, path, RawCodec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    });
}

#[test]
fn streams_opened_and_dropped_in_a_loop_mint_one_certificate() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let id = "spiffe://example.org/svc/looped";
    s.ok(&["entry", "create", "--spiffe-id", id, "--selector", &format!("unix:uid:{}", my_uid())]);
    let socket_path = Server::socket_path(&s.data_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for _ in 0..200 {
            let mut client = socket::workload_client(&socket_path, true).await;
            let mut stream =
                client.fetch_x509svid(trustmesh::proto::spiffe::X509svidRequest {}).await.unwrap().into_inner();
            let first = stream.message().await.unwrap().unwrap();
            assert_eq!(first.svids[0].spiffe_id, id);
        }
    });
    let issued = s.json(&["pki", "cert", "list", "--spiffe-id", id]);
    assert_eq!(issued.as_array().unwrap().len(), 1, "{issued}");
}

#[test]
fn a_client_that_nacks_in_a_loop_costs_a_log_line_per_interval() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    s.ok(&["entry", "create", "--spiffe-id", TD_ID, "--selector", &format!("unix:uid:{}", my_uid())]);
    let secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let request = |names: &[&str], version: &str, nonce: &str, nack: bool| DiscoveryRequest {
        type_url: secret.into(),
        version_info: version.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        node: Some(Node { id: "nacker".into(), cluster: "test".into(), ..Default::default() }),
        error_detail: nack.then(|| RpcStatus { code: 13, message: "rejected on purpose".into(), details: vec![] }),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = socket::channel(&Server::socket_path(&s.data_dir)).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut client = SecretDiscoveryServiceClient::new(channel);
        tx.send(request(&["default"], "", "", false)).await.unwrap();
        let mut replies =
            client.stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let first = replies.next().await.unwrap().unwrap();
        for _ in 0..500 {
            tx.send(request(&["default"], "", &first.nonce, true)).await.unwrap();
        }
        // A change of names after the NACKs: its reply means all were read.
        tx.send(request(&["default", "ROOTCA"], &first.version_info, &first.nonce, false)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.unwrap().unwrap().unwrap();
        assert!(!next.resources.is_empty());
    });
    // The log reaches this process through a pipe: wait for the first line.
    let logged = |s: &Server| s.log().lines().filter(|l| l.contains("xds nack")).count();
    crate::support::process::poll(Duration::from_secs(5), || (logged(&s) > 0).then_some(()));
    let nacks = logged(&s);
    assert!((1..=3).contains(&nacks), "{nacks} log lines for 500 NACKs");
    assert!(s.log().contains("\"warnings_held_back\"") || nacks == 1);
}
