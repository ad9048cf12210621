//! The SDS/ADS server over a real gRPC connection (Unix socket in a temp
//! dir), driven by Rust tonic clients. Versions are controlled by publishing
//! identity sets into a fake identity source; "nothing was sent" is proven by
//! the next reply in order, never by sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::Code;

use support::fixtures::{fake_svid, fake_trust};
use support::sds::*;

fn nack_detail() -> Option<RpcStatus> {
    Some(RpcStatus { code: 13, message: "Failed to load certificate chain".into(), details: Vec::new() })
}

#[tokio::test]
async fn a_nack_is_logged_and_never_answered_with_a_resend() {
    let h = Harness::start().await;
    let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
    s.send(req(&[ALICE], "", "")).await;
    let first = s.recv().await;
    assert_eq!((first.version_info.as_str(), first.nonce.as_str(), names(&first)), ("1", "1", vec![ALICE.to_string()]));
    // NACK: previous version (none), the rejected nonce, the error.
    s.send(DiscoveryRequest { error_detail: nack_detail(), ..req(&[ALICE], "", &first.nonce) }).await;
    // Then a request that adds a name: its answer is the very next message, so
    // nothing was resent after the NACK.
    s.send(req(&[ALICE, "ROOTCA"], "", &first.nonce)).await;
    let second = s.recv().await;
    assert_eq!(second.nonce, "2");
    assert_eq!(names(&second), vec!["ROOTCA".to_string(), ALICE.to_string()]);
    s.send(req(&[ALICE, "ROOTCA"], &second.version_info, &second.nonce)).await;
    // A new state goes out.
    let a2 = fake_svid(ALICE, "a2");
    h.source.update(&caller("alice"), |set| set.svids[0] = a2.clone());
    let third = s.recv().await;
    assert_eq!((third.version_info.as_str(), third.nonce.as_str()), ("3", "3"));
    let alice = third.resources.iter().map(secret).find(|s| s.name == ALICE).unwrap();
    let secret::Type::TlsCertificate(cert) = alice.r#type.unwrap() else { panic!() };
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let chain = cert.certificate_chain.and_then(|d| d.specifier);
    assert_eq!(chain, Some(Specifier::InlineString(a2.chain_pem())));
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let h = Harness::start().await;
    let mut s = Sotw::ads(h.channel().await, "alice").await.unwrap();
    s.send(req(&[ALICE], "", "")).await;
    let first = s.recv().await;
    h.source.update(&caller("alice"), |set| set.svids[0] = fake_svid(ALICE, "a2"));
    let second = s.recv().await;
    assert_eq!(second.nonce, "2");
    // The ACK of the first response arrives late, asking for another name: ignored.
    s.send(req(&[ALICE, ALICE_ADMIN], &first.version_info, &first.nonce)).await;
    // The request answering the latest nonce is processed (and decides the names).
    s.send(req(&[ALICE, "ROOTCA"], &second.version_info, &second.nonce)).await;
    let third = s.recv().await;
    assert_eq!(third.nonce, "3");
    assert_eq!(names(&third), vec!["ROOTCA".to_string(), ALICE.to_string()], "the stale request was not applied");
}

#[tokio::test]
async fn delta_unsubscribe_stops_updates_for_that_name() {
    let h = Harness::start().await;
    let mut s = Delta::sds(h.channel().await, "alice").await.unwrap();
    s.send(DeltaDiscoveryRequest {
        node: Some(Node { id: "n1".into(), ..Default::default() }),
        ..delta(&[ALICE, "ROOTCA"], &[], "")
    })
    .await;
    let first = s.recv().await;
    assert_eq!(delta_names(&first), vec!["ROOTCA".to_string(), ALICE.to_string()]);
    // Unsubscribe ROOTCA; subscribing to spiffe://example.org in the same
    // request makes a reply that proves the request was processed.
    s.send(delta(&["spiffe://example.org"], &["ROOTCA"], &first.nonce)).await;
    let second = s.recv().await;
    assert_eq!(delta_names(&second), vec!["spiffe://example.org".to_string()]);
    h.publish_trust(fake_trust(2, "root-2"));
    let third = s.recv().await;
    assert_eq!(delta_names(&third), vec!["spiffe://example.org".to_string()], "no update for the unsubscribed ROOTCA");
    assert!(third.removed_resources.is_empty());
}

#[tokio::test]
async fn a_delta_reconnect_with_initial_versions_receives_only_what_changed() {
    let h = Harness::start().await;
    let wanted = [ALICE, ALICE_ADMIN, "ROOTCA"];
    let mut s = Delta::ads(h.channel().await, "alice").await.unwrap();
    s.send(delta(&wanted, &[], "")).await;
    let first = s.recv().await;
    assert_eq!(first.resources.len(), 3);
    let versions: HashMap<String, String> =
        first.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    drop(s);

    h.source.update(&caller("alice"), |set| set.svids[1] = fake_svid(ALICE_ADMIN, "aa2"));
    let mut s = Delta::ads(h.channel().await, "alice").await.unwrap();
    s.send(DeltaDiscoveryRequest { initial_resource_versions: versions.clone(), ..delta(&wanted, &[], "") }).await;
    let resumed = s.recv().await;
    assert_eq!(delta_names(&resumed), vec![ALICE_ADMIN.to_string()]);
    assert_ne!(resumed.resources[0].version, versions[ALICE_ADMIN]);

    // Everything current: no reply; the next reply is for a new subscription.
    let mut versions = versions;
    versions.insert(ALICE_ADMIN.into(), resumed.resources[0].version.clone());
    let mut s = Delta::ads(h.channel().await, "alice").await.unwrap();
    s.send(DeltaDiscoveryRequest { initial_resource_versions: versions, ..delta(&wanted, &[], "") }).await;
    s.send(delta(&["spiffe://example.org"], &[], "")).await;
    assert_eq!(delta_names(&s.recv().await), vec!["spiffe://example.org".to_string()]);
}

#[tokio::test]
async fn an_unentitled_name_gets_a_clear_error_while_the_others_keep_working() {
    let h = Harness::start().await;
    let mut s = Sotw::ads(h.channel().await, "alice").await.unwrap();
    s.send(req(&[ALICE, BOB, "ROOTCA"], "", "")).await;
    let first = s.recv().await;
    assert_eq!(names(&first), vec!["ROOTCA".to_string(), ALICE.to_string()]);
    assert_eq!(first.resource_errors.len(), 1);
    let err = &first.resource_errors[0];
    assert_eq!(err.resource_name.as_ref().unwrap().name, BOB);
    let detail = err.error_detail.as_ref().unwrap();
    assert_eq!(detail.code, Code::NotFound as i32);
    assert_eq!(detail.message, format!("the caller is not entitled to {BOB}"));
    s.send(req(&[ALICE, BOB, "ROOTCA"], &first.version_info, &first.nonce)).await;
    h.publish_trust(fake_trust(2, "root-2"));
    // The new bundle goes out alone: the unchanged certificate is not resent.
    let second = s.recv().await;
    assert_eq!(names(&second), vec!["ROOTCA".to_string()]);

    let mut d = Delta::sds(h.channel().await, "bob").await.unwrap();
    d.send(delta(&[BOB, ALICE], &[], "")).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), vec![BOB.to_string()]);
    assert_eq!(r.resource_errors[0].resource_name.as_ref().unwrap().name, ALICE);
}

#[tokio::test]
async fn an_unknown_type_url_gets_a_per_request_error() {
    let h = Harness::start().await;
    let mut s = Sotw::ads(h.channel().await, "alice").await.unwrap();
    s.send(DiscoveryRequest { type_url: CLUSTER_TYPE.into(), ..req(&["c1"], "", "") }).await;
    let r = s.recv().await;
    assert_eq!(r.type_url, CLUSTER_TYPE);
    assert!(r.resources.is_empty());
    let message = &r.resource_errors[0].error_detail.as_ref().unwrap().message;
    assert!(
        message.contains("type URL type.googleapis.com/envoy.config.cluster.v3.Cluster is not served"),
        "{message}"
    );
    // The stream still serves secrets.
    s.send(req(&["ROOTCA"], "", "")).await;
    assert_eq!(names(&s.recv().await), vec!["ROOTCA".to_string()]);

    // An empty type URL on ADS is a protocol error.
    let mut s = Sotw::ads(h.channel().await, "alice").await.unwrap();
    s.send(DiscoveryRequest { type_url: String::new(), ..req(&["ROOTCA"], "", "") }).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("type_url is empty"));
}

#[tokio::test]
async fn ten_thousand_names_are_invalid_argument() {
    let h = Harness::start().await;
    let many: Vec<String> = (0..10_000).map(|i| format!("spiffe://example.org/w/{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
    s.send(req(&refs, "", "")).await;
    let status = s.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "resource_names lists 10000 resource names, more than the limit of 1000");
    let mut d = Delta::ads(h.channel().await, "alice").await.unwrap();
    d.send(delta(&refs, &[], "")).await;
    assert_eq!(d.status().await.code(), Code::InvalidArgument);
    // Larger than 4 MiB: refused by the transport before decoding.
    let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
    s.send(req(&[&"x".repeat(5 * 1024 * 1024)], "", "")).await;
    let status = s.status().await;
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
}

#[tokio::test]
async fn node_metadata_selects_the_validator_and_garbage_is_ignored() {
    let h = Harness::start().await;
    let cases = [
        (Kind::BoolValue(true), true),
        (Kind::StringValue("true".into()), true),
        (Kind::StringValue("banana".into()), false),
        (Kind::NumberValue(1.0), false),
        (Kind::BoolValue(false), false),
    ];
    for (value, trusted_ca) in cases {
        let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
        let n = node("n1", "disable_spiffe_cert_validation", value.clone());
        s.send(DiscoveryRequest { node: Some(n), ..req(&["ROOTCA"], "", "") }).await;
        let r = s.recv().await;
        let secret::Type::ValidationContext(ctx) = secret(&r.resources[0]).r#type.unwrap() else { panic!() };
        assert_eq!(ctx.trusted_ca.is_some(), trusted_ca, "{value:?}");
        assert_eq!(ctx.crl.is_some(), trusted_ca, "{value:?}: the CRLs travel in crl");
        assert_eq!(ctx.custom_validator_config.is_some(), !trusted_ca, "{value:?}");
    }
}

/// A raw client, so requests can carry node bytes no Envoy type would encode.
async fn raw_stream(
    h: &Harness,
) -> (
    tokio::sync::mpsc::Sender<trustmesh::sds::wire::DiscoveryRequest>,
    tonic::Streaming<trustmesh::sds::wire::DiscoveryResponse>,
) {
    let mut grpc = tonic::client::Grpc::new(h.channel().await);
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let codec = tonic_prost::ProstCodec::<
        trustmesh::sds::wire::DiscoveryRequest,
        trustmesh::sds::wire::DiscoveryResponse,
    >::default();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets");
    let request = with_caller("alice", tokio_stream::wrappers::ReceiverStream::new(rx));
    let responses = grpc.streaming(request, path, codec).await.unwrap().into_inner();
    (tx, responses)
}

fn raw(names: &[&str], nonce: &str, node: &[u8]) -> trustmesh::sds::wire::DiscoveryRequest {
    trustmesh::sds::wire::DiscoveryRequest {
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        type_url: trustmesh::sds::SECRET_TYPE.into(),
        response_nonce: nonce.into(),
        node: node.to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_garbage_node_is_a_clear_error_on_the_first_request_and_never_parsed_after() {
    let h = Harness::start().await;
    let (tx, mut rx) = raw_stream(&h).await;
    tx.send(raw(&["ROOTCA"], "", &[0xff, 0xff, 0xff, 0xff])).await.unwrap();
    let status = rx.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("the node in the first request is not a valid envoy.config.core.v3.Node"),
        "{status:?}"
    );

    // A good first node; later requests carry garbage (and Envoy-sized) nodes: never decoded.
    let (tx, mut rx) = raw_stream(&h).await;
    let good = Node { id: "n1".into(), ..Default::default() }.encode_to_vec();
    tx.send(raw(&["ROOTCA"], "", &good)).await.unwrap();
    let first = rx.message().await.unwrap().unwrap();
    let mut garbage = vec![0xff; 61 * 1024];
    garbage[0] = 0x0a;
    tx.send(raw(&["ROOTCA"], &first.nonce, &garbage)).await.unwrap();
    h.publish_trust(fake_trust(2, "root-2"));
    let second = rx.message().await.unwrap().unwrap();
    assert_eq!(second.nonce, "2");
}

#[tokio::test]
async fn envoys_default_node_on_every_request_is_skipped_and_a_changed_node_changes_nothing() {
    let h = Harness::start().await;
    let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
    // Envoy's default: its whole node, Envoy-sized, on every request, ACKs and NACKs included.
    let envoy_sized = |n: Node| Node { user_agent_name: "e".repeat(61_000), ..n };
    let first_node = envoy_sized(node("n1", "unrelated", Kind::BoolValue(true)));
    let with_node = |n: &Node, r: DiscoveryRequest| DiscoveryRequest { node: Some(n.clone()), ..r };
    s.send(with_node(&first_node, req(&["ROOTCA"], "", ""))).await;
    let r1 = s.recv().await;
    let spiffe_validator = |r: &DiscoveryResponse| {
        let rootca = r.resources.iter().map(secret).find(|s| s.name == "ROOTCA").unwrap();
        let secret::Type::ValidationContext(ctx) = rootca.r#type.unwrap() else { panic!() };
        ctx.custom_validator_config.is_some()
    };
    assert!(spiffe_validator(&r1));
    // A NACK with the node: its error detail is read, nothing is resent.
    s.send(with_node(&first_node, DiscoveryRequest { error_detail: nack_detail(), ..req(&["ROOTCA"], "", &r1.nonce) }))
        .await;
    // A node that changed mid-stream (it asks for the other validator): the
    // request is served, the stream keeps its first node's choice.
    let other_node = envoy_sized(node("n2", "disable_spiffe_cert_validation", Kind::BoolValue(true)));
    s.send(with_node(&other_node, req(&["ROOTCA", ALICE], "", &r1.nonce))).await;
    let r2 = s.recv().await;
    assert_eq!(r2.nonce, "2", "the NACK was not answered with a resend");
    assert!(names(&r2).contains(&ALICE.to_string()));
    s.send(with_node(&other_node, req(&["ROOTCA", ALICE], &r2.version_info, &r2.nonce))).await;
    h.publish_trust(fake_trust(2, "root-2"));
    let r3 = s.recv().await;
    assert_eq!(r3.nonce, "3");
    assert!(spiffe_validator(&r3), "the validator of the first node stays");
}

/// Waits until `f` holds (the server reads requests without answering ACKs).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn each_stream_reports_the_trust_revision_its_client_acknowledged() {
    let h = Harness::start().await;
    let behind = |revision| h.acks.behind(revision).into_iter().map(|b| b.node_id).collect::<Vec<_>>();
    let n1 = node("n1", "unrelated", Kind::BoolValue(true));
    let mut s = Sotw::sds(h.channel().await, "alice").await.unwrap();
    s.send(DiscoveryRequest { node: Some(n1.clone()), ..req(&["ROOTCA"], "", "") }).await;
    let r1 = s.recv().await;
    assert_eq!(behind(1), ["n1"], "the first response is in flight");
    s.send(req(&["ROOTCA"], &r1.version_info, &r1.nonce)).await;
    eventually("revision 1 acknowledged", || behind(1).is_empty()).await;

    // A new bundle, NACKed: the client kept the old one.
    h.publish_trust(fake_trust(2, "root-2"));
    let r2 = s.recv().await;
    s.send(DiscoveryRequest { error_detail: nack_detail(), ..req(&["ROOTCA"], &r1.version_info, &r2.nonce) }).await;
    // An unrelated identity change pushes nothing to this stream, and settles nothing.
    h.source.update(&caller("alice"), |set| set.svids[0] = fake_svid(ALICE, "a2"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(behind(2), ["n1"], "a NACKed bundle is not held");

    // The next bundle is ACKed: held.
    h.publish_trust(fake_trust(3, "root-3"));
    let r3 = s.recv().await;
    s.send(req(&["ROOTCA"], &r3.version_info, &r3.nonce)).await;
    eventually("revision 3 acknowledged", || behind(3).is_empty()).await;

    // A stream that asks for nothing the bundle changes holds every revision.
    let mut other = Sotw::sds(h.channel().await, "alice").await.unwrap();
    other.send(DiscoveryRequest { node: Some(node("n2", "x", Kind::BoolValue(true))), ..req(&[ALICE], "", "") }).await;
    let o1 = other.recv().await;
    other.send(req(&[ALICE], &o1.version_info, &o1.nonce)).await;
    h.publish_trust(fake_trust(4, "root-4"));
    let r4 = s.recv().await;
    eventually("the other stream holds 4 without a push", || behind(4) == ["n1"]).await;
    s.send(req(&["ROOTCA"], &r4.version_info, &r4.nonce)).await;
    eventually("both hold 4", || behind(4).is_empty()).await;
    // Streams that close leave.
    drop((s, other));
    eventually("closed streams leave", || h.acks.is_empty()).await;
}

#[tokio::test]
async fn a_caller_without_an_entry_is_permission_denied() {
    let h = Harness::start().await;
    let status = Sotw::sds(h.channel().await, "mallory").await.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no registration entry matches the caller's selectors");
    assert_eq!(Sotw::ads(h.channel().await, "mallory").await.err().unwrap().code(), Code::PermissionDenied);
    assert_eq!(Delta::sds(h.channel().await, "mallory").await.err().unwrap().code(), Code::PermissionDenied);
    assert_eq!(Delta::ads(h.channel().await, "mallory").await.err().unwrap().code(), Code::PermissionDenied);
    let mut client = SecretDiscoveryServiceClient::new(h.channel().await);
    let status = client.fetch_secrets(with_caller("mallory", req(&["default"], "", ""))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // No credentials at all: the attestor's answer.
    assert_eq!(Sotw::sds(h.channel().await, "").await.err().unwrap().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn fetch_secrets_answers_once_with_the_set_version() {
    let h = Harness::start().await;
    h.source.update(&caller("alice"), |_| {});
    let mut client = SecretDiscoveryServiceClient::new(h.channel().await);
    let r = client.fetch_secrets(with_caller("alice", req(&["default", "ROOTCA"], "", ""))).await.unwrap().into_inner();
    assert_eq!(r.version_info, "2");
    assert_eq!(names(&r), vec!["ROOTCA".to_string(), "default".to_string()]);
    let status = client.fetch_secrets(with_caller("alice", req(&[BOB], "", ""))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("not entitled"), "{status:?}");
}

#[tokio::test]
async fn one_bundle_change_reaches_100_streams_with_identical_bytes() {
    let h = Harness::start().await;
    let channel = h.channel().await;
    let mut streams = Vec::new();
    for i in 0..100 {
        let caller = if i % 2 == 0 { "alice" } else { "bob" };
        let mut s = Sotw::ads(channel.clone(), caller).await.unwrap();
        s.send(req(&["ROOTCA"], "", "")).await;
        let first = s.recv().await;
        s.send(req(&["ROOTCA"], &first.version_info, &first.nonce)).await;
        streams.push((s, first.resources[0].value.clone()));
    }
    h.publish_trust(fake_trust(2, "root-2"));
    let mut pushed = Vec::new();
    for (s, before) in &mut streams {
        let r = s.recv().await;
        assert_eq!(r.resources.len(), 1);
        assert_ne!(&r.resources[0].value, before);
        pushed.push(r.resources[0].value.clone());
    }
    assert!(pushed.windows(2).all(|w| w[0] == w[1]), "every stream got the same bytes");
    // The SPIFFE validator's bundle, with the CRL appended.
    assert!(pushed[0].windows(10).any(|w| w == b"CRL-root-2"));
}

/// The deny list as ECDS on the same ADS stream as the secrets: the filter
/// config arrives with the secrets, a new deny list is pushed as a new
/// version, an unchanged one is not pushed again, and an unknown extension
/// name gets a clear per-name error.
#[tokio::test]
async fn the_deny_list_filter_config_travels_on_the_ads_stream_with_the_secrets() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use std::sync::Arc;
    use trustmesh::sds::SECRET_TYPE;
    use trustmesh::sds::deny::{DENY_FILTER, EXTENSION_CONFIG_TYPE, RBAC_TYPE};
    use trustmesh::trust::{DenyList, TrustSnapshot};

    fn rbac(r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse) -> Rbac {
        assert_eq!(r.type_url, EXTENSION_CONFIG_TYPE);
        assert_eq!(r.resources.len(), 1);
        let config = TypedExtensionConfig::decode(r.resources[0].value.as_slice()).unwrap();
        assert_eq!(config.name, DENY_FILTER);
        let typed = config.typed_config.unwrap();
        assert_eq!(typed.type_url, RBAC_TYPE);
        Rbac::decode(typed.value.as_slice()).unwrap()
    }
    fn with_deny(base: &Arc<TrustSnapshot>, revision: u64, ids: &[&str]) -> Arc<TrustSnapshot> {
        let mut t = (**base).clone();
        t.revision += 1;
        t.deny = Arc::new(DenyList {
            revision,
            identities: ids.iter().map(|s| (s.to_string(), "denied".to_string())).collect(),
            ..DenyList::default()
        });
        Arc::new(t)
    }

    let h = Harness::start().await;
    let mut s = Sotw::ads(h.channel().await, "alice").await.unwrap();
    s.send(req(&[ALICE], "", "")).await;
    let secrets = s.recv().await;
    s.send(req(&[ALICE], &secrets.version_info, &secrets.nonce)).await;
    let ecds = |names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
        type_url: EXTENSION_CONFIG_TYPE.into(),
        ..req(names, version, nonce)
    };
    s.send(ecds(&[DENY_FILTER], "", "")).await;
    let first = s.recv().await;
    let empty = rbac(&first);
    assert!(empty.matcher.is_none() && empty.rules.unwrap().policies.is_empty(), "nothing denied yet");
    s.send(ecds(&[DENY_FILTER], &first.version_info, &first.nonce)).await;

    // A denial: the filter config is pushed with the ID in its match map.
    let base = h.source.current(&caller("alice")).trust.clone();
    h.publish_trust(with_deny(&base, 1, &[BOB]));
    let pushed = s.recv().await;
    assert_eq!(pushed.type_url, EXTENSION_CONFIG_TYPE, "only the filter config changed");
    assert!(format!("{:?}", rbac(&pushed).matcher).contains(BOB));
    s.send(ecds(&[DENY_FILTER], &pushed.version_info, &pushed.nonce)).await;

    // A new trust snapshot with the same deny list pushes the secrets' side only.
    let t = with_deny(&h.source.current(&caller("alice")).trust, 1, &[BOB]);
    let mut bundle = (*t).clone();
    bundle.bundle_pem.push_str("-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n");
    h.publish_trust(Arc::new(bundle));
    s.send(req(&[ALICE, "ROOTCA"], &secrets.version_info, &secrets.nonce)).await;
    let next = s.recv().await;
    assert_eq!(next.type_url, SECRET_TYPE, "an unchanged deny list is not sent again");

    // An unknown extension config name is refused by name.
    let mut other = Sotw::ads(h.channel().await, "alice").await.unwrap();
    other.send(ecds(&["some-other-filter"], "", "")).await;
    let refused = other.recv().await;
    assert!(refused.resources.is_empty());
    let message = &refused.resource_errors[0].error_detail.as_ref().unwrap().message;
    assert!(message.contains("unknown extension config \"some-other-filter\""), "{message}");
    assert!(message.contains(DENY_FILTER), "{message}");
}
