//! The framer, tested as data: byte streams (cut every way) in, requests
//! and errors out.

use std::collections::VecDeque;

use prost::Message as _;
use prost::bytes::Bytes;

use super::*;
use crate::sds::wire::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status as RpcStatus;

const SOTW_NODE: u32 = 2;
const DELTA_NODE: u32 = 1;
const MAX: usize = 4 << 20;

/// An Envoy-sized node: the id first, then bulk (as Envoy writes it).
fn node(id: &str, bulk: usize) -> Bytes {
    let mut n = vec![0x0a, id.len() as u8];
    n.extend_from_slice(id.as_bytes());
    n.extend(std::iter::repeat_n(0x42, bulk));
    Bytes::from(n)
}

fn sotw(node: &Bytes, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: "v1".into(),
        node: node.clone(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
        response_nonce: nonce.into(),
        error_detail: None,
    }
}

/// One gRPC message: flag, length, payload.
fn framed(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![flag];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

fn stream_of(messages: &[Vec<u8>]) -> Vec<u8> {
    messages.iter().flat_map(|m| framed(0, m)).collect()
}

/// Everything the framer makes of `bytes` fed in `chunk`-sized pieces.
fn run(node_field: u32, bytes: &[u8], chunk: usize) -> (Vec<Message>, Result<(), FrameError>, bool) {
    let mut framer = Framer::new(node_field, MAX);
    let mut done = VecDeque::new();
    for piece in bytes.chunks(chunk.max(1)) {
        if let Err(e) = framer.push(piece, &mut done) {
            return (done.into(), Err(e), false);
        }
    }
    let boundary = framer.at_boundary();
    (done.into(), Ok(()), boundary)
}

#[test]
fn the_first_request_is_kept_whole_and_later_nodes_are_skipped_however_the_bytes_are_cut() {
    let big = node("envoy-1", 61_000);
    let requests = [sotw(&big, ""), sotw(&big, "1"), sotw(&Bytes::new(), "2"), sotw(&big, "3")];
    let bytes = stream_of(&requests.iter().map(|r| r.encode_to_vec()).collect::<Vec<_>>());
    for chunk in [1, 2, 3, 5, 7, 100, 4096, 16_384, 61_000, bytes.len()] {
        let (got, result, boundary) = run(SOTW_NODE, &bytes, chunk);
        assert_eq!(result, Ok(()), "chunk {chunk}");
        assert!(boundary, "chunk {chunk}");
        let seen: Vec<NodeSeen> = got.iter().map(|m| m.node).collect();
        assert_eq!(seen, [NodeSeen::First, NodeSeen::Same, NodeSeen::Absent, NodeSeen::Same], "chunk {chunk}");
        let decoded: Vec<DiscoveryRequest> =
            got.iter().map(|m| DiscoveryRequest::decode(m.bytes.clone()).unwrap()).collect();
        assert_eq!(decoded[0], requests[0], "the first node travels whole");
        for (d, r) in decoded[1..].iter().zip(&requests[1..]) {
            assert_eq!(*d, DiscoveryRequest { node: Bytes::new(), ..r.clone() }, "chunk {chunk}");
        }
        assert!(got[1].bytes.len() < 200, "a later request is its small fields only: {}", got[1].bytes.len());
    }
}

#[test]
fn the_delta_node_is_field_one() {
    let big = node("envoy-1", 5_000);
    let first = DeltaDiscoveryRequest { node: big.clone(), type_url: "t".into(), ..Default::default() };
    let ack = DeltaDiscoveryRequest { node: big.clone(), response_nonce: "1".into(), ..first.clone() };
    let bytes = stream_of(&[first.encode_to_vec(), ack.encode_to_vec()]);
    let (got, result, _) = run(DELTA_NODE, &bytes, 1000);
    assert_eq!(result, Ok(()));
    assert_eq!(DeltaDiscoveryRequest::decode(got[0].bytes.clone()).unwrap(), first);
    let later = DeltaDiscoveryRequest::decode(got[1].bytes.clone()).unwrap();
    assert_eq!(later, DeltaDiscoveryRequest { node: Bytes::new(), ..ack });
    assert_eq!(got[1].node, NodeSeen::Same);
}

/// A node with an id and a cluster first, then `bulk` (as Envoy writes it:
/// its maps in no fixed order).
fn node_of(id: &str, cluster: &str, bulk: &[u8]) -> Bytes {
    let mut n = Vec::new();
    for (key, text) in [(0x0a, id), (0x12, cluster)] {
        n.push(key);
        prost::encoding::encode_varint(text.len() as u64, &mut n);
        n.extend_from_slice(text.as_bytes());
    }
    n.extend_from_slice(bulk);
    Bytes::from(n)
}

/// What the framer says of `later`'s node after a first request with `first`'s.
fn seen_after(first: &Bytes, later: &[u8], chunk: usize) -> NodeSeen {
    // Written by hand: prost would leave an empty node out.
    let mut ack = sotw(&Bytes::new(), "1").encode_to_vec();
    ack.push(0x12);
    prost::encoding::encode_varint(later.len() as u64, &mut ack);
    ack.extend_from_slice(later);
    let bytes = stream_of(&[sotw(first, "").encode_to_vec(), ack]);
    let (got, result, _) = run(SOTW_NODE, &bytes, chunk);
    assert_eq!(result, Ok(()));
    got[1].node
}

#[test]
fn a_node_with_another_id_or_cluster_is_reported_and_reordered_maps_are_not() {
    let bulk = |b: u8| [0x1a, 0x04, b, b, b, b].repeat(200);
    let first = node_of("envoy-1", "mesh", &bulk(1));
    // (later node, what the framer says)
    let cases: Vec<(Bytes, NodeSeen)> = vec![
        (first.clone(), NodeSeen::Same),
        (node_of("envoy-1", "mesh", &bulk(2)), NodeSeen::Same), // the maps in another order
        (node_of("envoy-1", "mesh", &bulk(2)[..600]), NodeSeen::Same), // another length
        (node_of("envoy-2", "mesh", &bulk(1)), NodeSeen::Changed), // another id
        (node_of("envoy-1", "other", &bulk(1)), NodeSeen::Changed), // another cluster
        (node_of("envoy-1", "", &bulk(1)), NodeSeen::Changed),  // no cluster
        (Bytes::new(), NodeSeen::Changed),                      // present but empty
    ];
    for (later, expected) in cases {
        for chunk in [1, 7, 64, 100_000] {
            assert_eq!(
                seen_after(&first, &later, chunk),
                expected,
                "{:?}, chunk {chunk}",
                &later[..later.len().min(16)]
            );
        }
    }
    // No node in the first request: a later node with an id is a change, an empty one is not.
    assert_eq!(seen_after(&Bytes::new(), &first, 64), NodeSeen::Changed);
    assert_eq!(seen_after(&Bytes::new(), &[], 64), NodeSeen::Same);
    // An id longer than the head read is compared as far as the head goes.
    let long = |last: char| format!("{}{last}", "x".repeat(NODE_HEAD));
    let first = node_of(&long('a'), "mesh", &[]);
    assert_eq!(seen_after(&first, &node_of(&long('b'), "mesh", &[]), 64), NodeSeen::Same);
    assert_eq!(seen_after(&first, &node_of(&long('a')[1..], "mesh", &[]), 64), NodeSeen::Changed);
}

#[test]
fn a_nack_keeps_its_error_detail_and_unknown_fields_pass_verbatim() {
    let big = node("envoy-1", 2_000);
    let nack = DiscoveryRequest {
        error_detail: Some(RpcStatus { code: 13, message: "bad cert".into(), details: vec![] }),
        ..sotw(&big, "1")
    };
    let mut later = nack.encode_to_vec();
    // Unknown fields of every kept wire type: varint 99 = 300, fixed64, fixed32, bytes.
    let unknown = [
        vec![0x98, 0x06, 0xac, 0x02],
        vec![0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8],
        vec![0x9d, 0x06, 1, 2, 3, 4],
        vec![0x9a, 0x06, 0x03, b'a', b'b', b'c'],
    ]
    .concat();
    later.extend_from_slice(&unknown);
    let bytes = stream_of(&[sotw(&big, "").encode_to_vec(), later]);
    let (got, result, _) = run(SOTW_NODE, &bytes, 3);
    assert_eq!(result, Ok(()));
    assert!(got[1].bytes.ends_with(&unknown), "unknown fields are copied as they came");
    let decoded = DiscoveryRequest::decode(got[1].bytes.clone()).unwrap();
    assert_eq!(decoded.error_detail, nack.error_detail);
}

#[test]
fn bad_framing_and_malformed_fields_are_errors() {
    let ok = sotw(&node("n", 10), "").encode_to_vec();
    // (name, the body's bytes, the error)
    let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
        ("compressed flag", framed(1, &ok), FrameError::Compressed),
        ("over the limit", vec![0, 0x00, 0x40, 0x00, 0x01], FrameError::TooLarge { len: (4 << 20) + 1, max: MAX }),
        ("field number 0", framed(0, &[0x02, 0x00]), FrameError::Malformed("field number 0")),
        ("a group", framed(0, &[0x0b, 0x0c]), FrameError::Malformed("a group or an unknown wire type")),
        ("wire type 7", framed(0, &[0x0f]), FrameError::Malformed("a group or an unknown wire type")),
        (
            "an eleven-byte varint",
            framed(0, &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            FrameError::Malformed("a varint longer than ten bytes"),
        ),
        ("an eleven-byte key", framed(0, &[0xff; 11]), FrameError::Malformed("a varint longer than ten bytes")),
        (
            "a length past the message",
            framed(0, &[0x0a, 0x05, b'a']),
            FrameError::Malformed("a field runs past the end of its message"),
        ),
        (
            "a node length past the message",
            [framed(0, &ok), framed(0, &[0x12, 0x7f, 0])].concat(),
            FrameError::Malformed("a field runs past the end of its message"),
        ),
        (
            "a fixed64 past the message",
            framed(0, &[0x09, 1, 2]),
            FrameError::Malformed("a field runs past the end of its message"),
        ),
        (
            "a varint past the message",
            framed(0, &[0x08, 0x80]),
            FrameError::Malformed("a field runs past the end of its message"),
        ),
        (
            "a key cut by the message's end",
            framed(0, &[0x80]),
            FrameError::Malformed("a field runs past the end of its message"),
        ),
    ];
    for (name, bytes, expected) in cases {
        for chunk in [1, bytes.len()] {
            let (_, result, _) = run(SOTW_NODE, &bytes, chunk);
            assert_eq!(result, Err(expected.clone()), "{name}, chunk {chunk}");
        }
    }
}

#[test]
fn a_body_may_end_only_between_messages() {
    let bytes = stream_of(&[sotw(&node("n", 100), "").encode_to_vec()]);
    for cut in [1, 4, 5, 6, bytes.len() - 1] {
        let (got, result, boundary) = run(SOTW_NODE, &bytes[..cut], 7);
        assert_eq!((got.len(), result, boundary), (0, Ok(()), false), "cut at {cut}");
    }
    let (got, _, boundary) = run(SOTW_NODE, &bytes, 7);
    assert_eq!((got.len(), boundary), (1, true));
    // An empty message is a request (all defaults).
    let (got, result, boundary) = run(SOTW_NODE, &framed(0, &[]), 1);
    assert_eq!((got.len(), result, boundary), (1, Ok(()), true));
}

#[test]
fn a_later_request_never_buffers_its_node() {
    let big = node("envoy-1", 61_000);
    let mut framer = Framer::new(SOTW_NODE, MAX);
    let mut done = VecDeque::new();
    framer.push(&framed(0, &sotw(&big, "").encode_to_vec()), &mut done).unwrap();
    assert_eq!(framer.out.capacity(), 0, "nothing is held between requests");
    let ack = framed(0, &sotw(&big, "1").encode_to_vec());
    for piece in ack.chunks(16_384) {
        framer.push(piece, &mut done).unwrap();
        assert!(framer.out.capacity() <= SMALL, "{} bytes held for a node that is skipped", framer.out.capacity());
    }
    assert_eq!(done.len(), 2);
    assert_eq!(framer.out.capacity(), 0);
}

#[test]
fn frame_errors_are_the_status_codes_tonic_gives() {
    let code = |e: FrameError| Status::from(e).code();
    assert_eq!(code(FrameError::Compressed), tonic::Code::Internal);
    assert_eq!(code(FrameError::TooLarge { len: 5, max: 4 }), tonic::Code::OutOfRange);
    assert_eq!(code(FrameError::Truncated), tonic::Code::Internal);
    assert_eq!(code(FrameError::Malformed("x")), tonic::Code::InvalidArgument);
}
