//! The delta machine, tested as data: each table is a sequence of inputs
//! with the replies and notices expected after each.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::sds::protocol::fake::{Fake, content};
use crate::sds::protocol::{Catalog, ErrorDetail, SECRET_TYPE};

enum In {
    Req(DeltaRequest),
    State(Arc<dyn Catalog>),
}

fn list(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn sub(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> In {
    In::Req(DeltaRequest {
        type_url: SECRET_TYPE.into(),
        subscribe: list(subscribe),
        unsubscribe: list(unsubscribe),
        response_nonce: nonce.into(),
        ..Default::default()
    })
}

fn ack(nonce: &str) -> In {
    sub(&[], &[], nonce)
}

fn nack(nonce: &str, message: &str) -> In {
    let In::Req(mut r) = ack(nonce) else { unreachable!() };
    r.error_detail = Some(ErrorDetail { code: 13, message: message.into() });
    In::Req(r)
}

/// A reconnect: subscribe with the versions the client already holds.
fn resume(subscribe: &[&str], versions: &[(&str, &str)]) -> In {
    let In::Req(mut r) = sub(subscribe, &[], "") else { unreachable!() };
    r.initial_resource_versions = versions.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    In::Req(r)
}

fn state(spec: &[&str]) -> In {
    In::State(Fake::of(spec))
}

/// The content version the fake catalog gives `name=content`.
fn version_of(spec: &str) -> String {
    let (name, content) = spec.split_once('=').unwrap();
    Encoded::new(name, prost::bytes::Bytes::from(content.as_bytes().to_vec())).version
}

/// `v<system version> n<nonce> [name=content …] -[removed …] ![failed …]`.
fn render(replies: &[DeltaReply]) -> String {
    replies
        .iter()
        .map(|r| {
            let res: Vec<String> = r.resources.iter().map(|e| content(e)).collect();
            let mut s = format!("v{} n{} [{}]", r.system_version_info, r.nonce, res.join(" "));
            if !r.removed.is_empty() {
                s.push_str(&format!(" -[{}]", r.removed.join(" ")));
            }
            if !r.failures.is_empty() {
                let f: Vec<&str> = r.failures.iter().map(|f| f.name.as_str()).collect();
                s.push_str(&format!(" ![{}]", f.join(" ")));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn notice(n: &Notice) -> String {
    match n {
        Notice::Ack { nonce, .. } => format!("ack n{nonce}"),
        Notice::Nack { nonce, detail, .. } => format!("nack n{nonce}: {}", detail.message),
        Notice::StaleNonce { nonce, .. } => format!("stale n{nonce}"),
        Notice::Unavailable { name, .. } => format!("unavailable {name}"),
        Notice::UnknownType { .. } => "unknown type".to_string(),
    }
}

fn run(initial: &[&str], steps: Vec<(In, &str, &[&str])>) {
    let mut m = DeltaStream::new(Fake::of(initial));
    for (i, (input, want, want_notices)) in steps.into_iter().enumerate() {
        let step = match input {
            In::Req(r) => m.on_request(r).unwrap(),
            In::State(c) => m.on_state(c),
        };
        assert_eq!(render(&step.replies), want, "replies of step {i}");
        let got: Vec<String> = step.notices.iter().map(notice).collect();
        assert_eq!(got, want_notices, "notices of step {i}");
    }
}

#[test]
fn sends_only_what_changed() {
    run(
        &["a=1", "b=1"],
        vec![
            (sub(&["a", "b"], &[], ""), "v1 n1 [a=1 b=1]", &[]),
            (ack("1"), "", &["ack n1"]),
            (state(&["a=1", "b=2"]), "v2 n2 [b=2]", &[]),
            (ack("2"), "", &["ack n2"]),
            (state(&["a=1", "b=2"]), "", &[]),
            // A new subscription is answered with that name alone.
            (sub(&["c"], &[], ""), "v3 n3 [] ![c]", &["unavailable c"]),
            (state(&["a=1", "b=2", "c=1"]), "v4 n4 [c=1]", &[]),
        ],
    );
}

#[test]
fn unsubscribe_stops_updates_for_that_name() {
    run(
        &["a=1", "b=1"],
        vec![
            (sub(&["a", "b"], &[], ""), "v1 n1 [a=1 b=1]", &[]),
            (sub(&[], &["b"], "1"), "", &["ack n1"]),
            (state(&["a=1", "b=2"]), "", &[]),
            (state(&["a=2", "b=3"]), "v2 n2 [a=2]", &[]),
            // Subscribing again sends the current version at once.
            (sub(&["b"], &[], "2"), "v3 n3 [b=3]", &["ack n2"]),
        ],
    );
}

#[test]
fn a_reconnect_with_initial_versions_receives_only_what_changed() {
    let a1 = version_of("a=1");
    let b1 = version_of("b=1");
    run(
        &["a=1", "b=2", "c=1"],
        vec![
            (resume(&["a", "b", "c"], &[("a", &a1), ("b", &b1)]), "v1 n1 [b=2 c=1]", &[]),
            (ack("1"), "", &["ack n1"]),
        ],
    );
    // Nothing changed at all: no reply.
    run(&["a=1"], vec![(resume(&["a"], &[("a", &a1)]), "", &[]), (state(&["a=2"]), "v1 n1 [a=2]", &[])]);
    // What the client held and may no longer have is removed.
    run(
        &["a!not entitled"],
        vec![(resume(&["a"], &[("a", &a1)]), "v1 n1 [] ![a] | v2 n2 [] -[a]", &["unavailable a"])],
    );
}

#[test]
fn a_nack_is_not_answered_with_the_same_content() {
    run(
        &["a=bad"],
        vec![
            (sub(&["a"], &[], ""), "v1 n1 [a=bad]", &[]),
            (nack("1", "KEY_VALUES_MISMATCH"), "", &["nack n1: KEY_VALUES_MISMATCH"]),
            (state(&["a=bad"]), "", &[]),
            (state(&["a=good"]), "v2 n2 [a=good]", &[]),
        ],
    );
}

#[test]
fn stale_nonces_are_logged_but_subscriptions_still_apply() {
    run(
        &["a=1", "b=1"],
        vec![
            (sub(&["a"], &[], ""), "v1 n1 [a=1]", &[]),
            (state(&["a=2", "b=1"]), "v2 n2 [a=2]", &[]),
            (sub(&["b"], &[], "1"), "v3 n3 [b=1]", &["stale n1"]),
            (ack("3"), "", &["ack n3"]),
        ],
    );
}

#[test]
fn a_removed_resource_goes_out_apart_from_updates() {
    run(
        &["a=1", "b=1"],
        vec![
            (sub(&["a", "b"], &[], ""), "v1 n1 [a=1 b=1]", &[]),
            (state(&["a=2", "b!entry deleted"]), "v2 n2 [a=2] ![b] | v3 n3 [] -[b]", &["unavailable b"]),
            (state(&["a=2", "b!entry deleted"]), "", &[]),
            (state(&["a=2", "b=2"]), "v4 n4 [b=2]", &[]),
        ],
    );
}

#[test]
fn wildcard_subscriptions() {
    run(
        &["a=1"],
        vec![
            // Legacy wildcard: a first request that subscribes to nothing.
            (sub(&[], &[], ""), "v1 n1 [a=1]", &[]),
            (state(&["a=1", "b=1"]), "v2 n2 [b=1]", &[]),
            (state(&["b=1"]), "v3 n3 [] -[a]", &[]),
            (sub(&[], &["*"], "3"), "", &["ack n3"]),
            (state(&["b=2"]), "", &[]),
        ],
    );
    run(&["a=1", "b=1"], vec![(sub(&["*"], &[], ""), "v1 n1 [a=1 b=1]", &[])]);
}

#[test]
fn limits_end_the_stream() {
    let mut m = DeltaStream::new(Fake::of(&[]));
    let names: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let e = m.on_request(DeltaRequest { type_url: SECRET_TYPE.into(), subscribe: names, ..Default::default() });
    assert!(e.unwrap_err().to_string().contains("resource_names_subscribe lists 10000"));
    // Many small requests cannot grow one subscription past the limit either.
    let mut m = DeltaStream::new(Fake::of(&[]));
    let mut result = Ok(Step::default());
    for chunk in 0..3 {
        let names: Vec<String> = (0..500).map(|i| format!("{chunk}-{i}")).collect();
        result = m.on_request(DeltaRequest { type_url: SECRET_TYPE.into(), subscribe: names, ..Default::default() });
    }
    assert!(result.unwrap_err().to_string().contains("subscriptions lists 1500"));
    let versions: BTreeMap<String, String> = (0..1001).map(|i| (i.to_string(), "v".into())).collect();
    let mut m = DeltaStream::new(Fake::of(&[]));
    let e = m.on_request(DeltaRequest {
        type_url: SECRET_TYPE.into(),
        initial_resource_versions: versions,
        ..Default::default()
    });
    assert!(e.unwrap_err().to_string().contains("initial_resource_versions"));
}
