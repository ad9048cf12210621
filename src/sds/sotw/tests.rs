//! The state-of-the-world machine, tested as data: each table is a sequence
//! of inputs (requests, state changes) with the replies and notices expected
//! after each.

use std::sync::Arc;

use super::*;
use crate::sds::protocol::fake::{Fake, content};
use crate::sds::protocol::{Catalog, ErrorDetail, SECRET_TYPE};

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

enum In {
    Req(SotwRequest),
    State(Arc<dyn Catalog>),
}

fn req(names: &[&str], nonce: &str, version: &str) -> In {
    In::Req(SotwRequest {
        type_url: SECRET_TYPE.into(),
        version_info: version.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        error_detail: None,
    })
}

fn nack(names: &[&str], nonce: &str, version: &str, message: &str) -> In {
    let In::Req(mut r) = req(names, nonce, version) else { unreachable!() };
    r.error_detail = Some(ErrorDetail { code: 13, message: message.into() });
    In::Req(r)
}

fn typed(type_url: &str, names: &[&str], nonce: &str) -> In {
    let In::Req(mut r) = req(names, nonce, "") else { unreachable!() };
    r.type_url = type_url.into();
    In::Req(r)
}

fn state(spec: &[&str]) -> In {
    In::State(Fake::of(spec))
}

/// `v<version> n<nonce> [name=content …] ![failed …]`, replies joined by " | ".
fn render(replies: &[SotwReply]) -> String {
    replies
        .iter()
        .map(|r| {
            let res: Vec<String> = r.resources.iter().map(|e| content(e)).collect();
            let mut s = format!("v{} n{} [{}]", r.version_info, r.nonce, res.join(" "));
            if !r.failures.is_empty() {
                let f: Vec<&str> = r.failures.iter().map(|f| f.name.as_str()).collect();
                s.push_str(&format!(" ![{}]", f.join(" ")));
            }
            if &*r.type_url != SECRET_TYPE {
                s.push_str(&format!(" ({})", r.type_url.rsplit('.').next().unwrap_or_default()));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn notice(n: &Notice) -> String {
    match n {
        Notice::Ack { nonce, version, .. } => format!("ack n{nonce} v{version}"),
        Notice::Nack { nonce, detail, .. } => format!("nack n{nonce}: {}", detail.message),
        Notice::StaleNonce { nonce, .. } => format!("stale n{nonce}"),
        Notice::Unavailable { name, .. } => format!("unavailable {name}"),
        Notice::UnknownType { type_url } => format!("unknown {}", type_url.rsplit('.').next().unwrap_or_default()),
    }
}

/// Runs `steps` from the catalog `initial`; each step: input, replies, notices.
fn run(initial: &[&str], steps: Vec<(In, &str, &[&str])>) {
    let mut m = SotwStream::new(Fake::of(initial));
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
fn answers_first_request_then_only_changes() {
    run(
        &["a=1", "b=2"],
        vec![
            (req(&["a", "b"], "", ""), "v1 n1 [a=1 b=2]", &[]),
            (req(&["a", "b"], "1", "1"), "", &["ack n1 v1"]),
            (state(&["a=1", "b=2"]), "", &[]),
            // A push carries what changed; the client keeps the rest.
            (state(&["a=1", "b=3"]), "v2 n2 [b=3]", &[]),
            (req(&["a", "b"], "2", "2"), "", &["ack n2 v2"]),
        ],
    );
}

#[test]
fn a_nack_is_logged_and_not_answered_with_the_same_content() {
    run(
        &["a=bad"],
        vec![
            (req(&["a"], "", ""), "v1 n1 [a=bad]", &[]),
            (
                nack(&["a"], "1", "", "Failed to load certificate chain"),
                "",
                &["nack n1: Failed to load certificate chain"],
            ),
            // The same content again (a new catalog): still nothing to send.
            (state(&["a=bad"]), "", &[]),
            (
                nack(&["a"], "1", "", "Failed to load certificate chain"),
                "",
                &["nack n1: Failed to load certificate chain"],
            ),
            // Only a new state goes out.
            (state(&["a=good"]), "v2 n2 [a=good]", &[]),
            (req(&["a"], "2", "2"), "", &["ack n2 v2"]),
        ],
    );
}

#[test]
fn stale_nonces_are_ignored() {
    run(
        &["a=1", "b=1"],
        vec![
            (req(&["a"], "", ""), "v1 n1 [a=1]", &[]),
            (state(&["a=2", "b=1"]), "v2 n2 [a=2]", &[]),
            // The ACK of n1 arrives after n2 went out, already asking for b:
            // stale, ignored; the request that answers n2 follows.
            (req(&["a", "b"], "1", "1"), "", &["stale n1"]),
            (req(&["a", "b"], "2", "2"), "v3 n3 [a=2 b=1]", &["ack n2 v2"]),
            (req(&["a", "b"], "99", "3"), "", &["stale n99"]),
        ],
    );
}

#[test]
fn new_names_are_always_answered_and_an_unavailable_name_does_not_block_others() {
    run(
        &["a=1", "c!not entitled"],
        vec![
            (req(&["a"], "", ""), "v1 n1 [a=1]", &[]),
            (req(&["a", "c"], "1", "1"), "v2 n2 [a=1] ![c]", &["ack n1 v1", "unavailable c"]),
            (req(&["a", "c"], "2", "2"), "", &["ack n2 v2"]),
            // a changes: the push carries a alone (c's failure is unchanged, logged once).
            (state(&["a=2", "c!not entitled"]), "v3 n3 [a=2]", &[]),
            // c becomes available: c alone.
            (state(&["a=2", "c=1"]), "v4 n4 [c=1]", &[]),
        ],
    );
}

#[test]
fn dropped_names_are_no_change() {
    run(
        &["a=1", "b=1"],
        vec![
            (req(&["a", "b"], "", ""), "v1 n1 [a=1 b=1]", &[]),
            (req(&["a"], "1", "1"), "", &["ack n1 v1"]),
            (state(&["a=1", "b=2"]), "", &[]),
            (state(&["a=2", "b=2"]), "v2 n2 [a=2]", &[]),
            // Asking for b again is answered at once.
            (req(&["a", "b"], "2", "2"), "v3 n3 [a=2 b=2]", &["ack n2 v2"]),
        ],
    );
}

#[test]
fn an_empty_list_later_unsubscribes_from_everything() {
    run(
        &["a=1"],
        vec![
            (req(&["a"], "", ""), "v1 n1 [a=1]", &[]),
            (req(&[], "1", "1"), "", &["ack n1 v1"]),
            (state(&["a=2"]), "", &[]),
            (req(&["*"], "1", "1"), "v2 n2 [a=2]", &["ack n1 v1"]),
        ],
    );
}

#[test]
fn versions_continue_after_a_reconnecting_clients_version() {
    run(&["a=1"], vec![(req(&["a"], "", "41"), "v42 n1 [a=1]", &[]), (state(&["a=2"]), "v43 n2 [a=2]", &[])]);
    // A non-numeric version from another server starts at 1.
    run(&["a=1"], vec![(req(&["a"], "", "abc"), "v1 n1 [a=1]", &[])]);
}

#[test]
fn unknown_type_urls_get_a_per_request_error_and_secrets_keep_working() {
    run(
        &["a=1"],
        vec![
            (req(&["a"], "", ""), "v1 n1 [a=1]", &[]),
            (typed(CLUSTER, &["x"], ""), "v1 n2 [] ![x] (Cluster)", &["unknown Cluster", "unavailable x"]),
            (typed(CLUSTER, &["x"], "2"), "", &["ack n2 v"]),
            (typed(CLUSTER, &["*"], ""), "v2 n3 [] ![*] (Cluster)", &["unavailable *"]),
            (state(&["a=2"]), "v2 n4 [a=2]", &[]),
        ],
    );
}

#[test]
fn wildcard_follows_the_catalog() {
    run(
        &["a=1", "b=1", "x!withheld"],
        vec![
            (req(&[], "", ""), "v1 n1 [a=1 b=1]", &[]),
            (req(&[], "1", "1"), "", &["ack n1 v1"]),
            // A name joins: it alone. A name leaves: the whole set (nothing else says it left).
            (state(&["a=1", "b=1", "c=1"]), "v2 n2 [c=1]", &[]),
            (state(&["a=1", "c=1"]), "v3 n3 [a=1 c=1]", &[]),
            (state(&["a=1", "c=1"]), "", &[]),
        ],
    );
}

#[test]
fn bad_requests_end_the_stream_with_a_named_limit() {
    let mut m = SotwStream::new(Fake::of(&[]));
    let In::Req(mut r) = req(&["a"], "", "") else { unreachable!() };
    r.type_url.clear();
    assert_eq!(m.on_request(r).unwrap_err(), ProtocolError::EmptyTypeUrl);

    let names: Vec<String> = (0..10_000).map(|i| format!("spiffe://example.org/w/{i}")).collect();
    let r = SotwRequest { type_url: SECRET_TYPE.into(), resource_names: names, ..Default::default() };
    let e = m.on_request(r).unwrap_err();
    assert!(e.to_string().contains("more than the limit of 1000"), "{e}");

    for i in 0..MAX_TYPES {
        m.on_request(SotwRequest { type_url: format!("t/{i}"), ..Default::default() }).unwrap();
    }
    let e = m.on_request(SotwRequest { type_url: "t/last".into(), ..Default::default() }).unwrap_err();
    assert_eq!(e, ProtocolError::TooManyTypes { limit: MAX_TYPES });
}
