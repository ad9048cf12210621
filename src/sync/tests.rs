use super::*;

fn snapshot(revision: u64, denied: &[&str]) -> TrustSnapshot {
    let td = TrustDomain::parse("example.org").unwrap();
    let mut t = TrustSnapshot::empty(&td);
    t.revision = revision;
    let identities = denied.iter().map(|d| (d.to_string(), "why".to_string())).collect();
    t.deny = Arc::new(DenyList { revision: revision * 10, identities, ..DenyList::default() });
    t
}

#[test]
fn states_are_numbered_by_the_agent_whatever_the_server_numbered_them() {
    let mut r = Revisions::default();
    // (server revision, denied, expected local revision, expected local deny revision)
    let steps: [(u64, &[&str], u64, u64); 5] = [
        (40, &[], 1, 1),
        (41, &[], 2, 1), // nothing new for proxies: same deny revision
        (42, &["spiffe://example.org/x"], 3, 2),
        (7, &["spiffe://example.org/x"], 4, 2), // another replica, lower numbers: still forward
        (8, &[], 5, 3),
    ];
    for (server, denied, local, deny) in steps {
        let t = r.renumber(snapshot(server, denied));
        assert_eq!((t.revision, t.deny.revision), (local, deny), "server revision {server}");
    }
    assert_eq!(r.server_revision(5), 8);
    assert_eq!(r.server_revision(3), 42);
    assert_eq!(r.server_revision(0), 0, "before any state");
}

#[test]
fn after_a_new_server_stream_older_acknowledgements_report_nothing() {
    let mut r = Revisions::default();
    r.renumber(snapshot(40, &[]));
    r.forget_server();
    assert_eq!(r.server_revision(1), 0);
    let t = r.renumber(snapshot(3, &[]));
    assert_eq!(r.server_revision(t.revision), 3);
}

#[test]
fn a_state_of_another_trust_domain_or_without_a_bundle_is_refused() {
    let td = TrustDomain::parse("example.org").unwrap();
    let mut wire = trust_to_wire(&snapshot(1, &[]));
    assert!(trust_from_wire(&wire, &td).unwrap_err().0.contains("bundle"));
    wire.trust_domain = "other.org".into();
    assert!(trust_from_wire(&wire, &td).unwrap_err().0.contains("trust domain \"other.org\", expected example.org"));
}

#[test]
fn entries_that_do_not_parse_or_repeat_are_refused() {
    let node = NodeId::parse("node-a").unwrap();
    let good = pb::Entry {
        id: "0a".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        selectors: vec!["unix:uid:1".into()],
        ..Default::default()
    };
    let parsed = entries_from_wire(std::slice::from_ref(&good), &node).unwrap();
    assert_eq!(parsed[0].node.as_ref(), Some(&node), "bound to the agent's node");
    for (bad, needle) in [
        (vec![good.clone(), good.clone()], "repeated id"),
        (vec![pb::Entry { spiffe_id: "http://x".into(), ..good.clone() }], "invalid SPIFFE ID"),
        (vec![pb::Entry { selectors: vec![], ..good.clone() }], "at least one --selector"),
        (vec![pb::Entry { dns_names: vec!["not a name".into()], ..good.clone() }], "entry 0a"),
        (vec![pb::Entry { id: String::new(), ..good.clone() }], "missing"),
    ] {
        let err = entries_from_wire(&bad, &node).unwrap_err().0;
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}
