#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::domain::{Principal, SpiffeId, TokenKind, TrustDomain};

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn ident(s: &str) -> Resource {
    Resource::Identity(id(s))
}

fn admin() -> Principal {
    Principal::Admin { name: "ops".into() }
}

fn node(n: &str) -> Principal {
    Principal::Node { id: n.into() }
}

fn bootstrap() -> Principal {
    Principal::Bootstrap { subject: "svc".into(), spiffe_ids: vec![id("spiffe://example.org/svc/api")] }
}

fn workload() -> Principal {
    Principal::Workload { selectors: vec!["unix:uid:1000".into()] }
}

/// The natural resource of each action.
fn resource_for(action: Action) -> Resource {
    match action {
        Action::SignCsr
        | Action::IssueCertificate
        | Action::ObtainSvid
        | Action::DenyIdentity
        | Action::AllowIdentity => ident("spiffe://example.org/node/node-a"),
        Action::RevokeCertificate => Resource::Certificate("0a1b".into()),
        Action::ReadStatus | Action::ReadBundle | Action::CreateIntermediary | Action::ImportCrl => Resource::Ca,
        Action::ReadCertificates | Action::ReadDenied | Action::ReadAudit => Resource::AuditLog,
        Action::MintToken => Resource::Token(TokenKind::Bootstrap),
        Action::ManageEntries => Resource::Entry("e1".into()),
        Action::UseDnsName => dns("api.example.org", "spiffe://example.org/node/node-a"),
        Action::UseProfile | Action::ManageProfiles | Action::ReadProfiles => {
            Resource::Profile(crate::domain::ProfileRef::new("pki", "web").unwrap())
        }
    }
}

#[test]
fn embedded_policies_load_with_their_ids() {
    let engine = PolicyEngine::embedded().unwrap();
    assert_eq!(
        engine.policy_ids(),
        [
            "admin-all",
            "agent-node-entries",
            "any-read-bundle",
            "bootstrap-minted-for",
            "foreign-trust-domain",
            "node-entitled",
            "node-own-identity",
            "workload-entitled"
        ]
    );
    fn shareable<T: Send + Sync>() {}
    shareable::<PolicyEngine>();
}

#[test]
fn admin_may_do_everything() {
    let engine = PolicyEngine::embedded().unwrap();
    for action in Action::ALL {
        let d = engine.decide(&admin(), action, &resource_for(action), &td());
        assert!(d.allowed, "{action}: {d}");
        assert!(d.errors.is_empty(), "{action}: {d}");
        let expected: &[&str] =
            if action == Action::ReadBundle { &["admin-all", "any-read-bundle"] } else { &["admin-all"] };
        assert_eq!(d.policy_ids, expected, "{action}");
    }
    // issuer code asks read_certificates / read_denied on the audit log and on the CA
    for resource in [Resource::AuditLog, Resource::Ca] {
        assert!(engine.decide(&admin(), Action::ReadDenied, &resource, &td()).allowed);
    }
}

#[test]
fn decision_table() {
    let engine = PolicyEngine::embedded().unwrap();
    let own = "spiffe://example.org/node/node-a";
    // (principal, action, resource, allowed, deciding policies)
    #[rustfmt::skip]
    let cases: Vec<(Principal, Action, Resource, bool, &[&str])> = vec![
        (node("node-a"), Action::SignCsr, ident(own), true, &["node-own-identity"]),
        (node("node-a"), Action::ObtainSvid, ident("spiffe://example.org/envoy/node-a"), true, &["node-own-identity"]),
        (node("node-a"), Action::SignCsr, ident("spiffe://example.org/node/node-b"), false, &[]),
        (node("node-a"), Action::SignCsr, ident("spiffe://example.org/node-a/x"), false, &[]),
        (node("node-a"), Action::IssueCertificate, ident(own), false, &[]),
        (node("node-a"), Action::DenyIdentity, ident(own), false, &[]),
        (node("node-a"), Action::RevokeCertificate, Resource::Certificate("01".into()), false, &[]),
        (node("node-a"), Action::MintToken, Resource::Token(TokenKind::Admin), false, &[]),
        (node("node-a"), Action::ReadAudit, Resource::AuditLog, false, &[]),
        (node("node-a"), Action::ReadBundle, Resource::Ca, true, &["any-read-bundle"]),
        (node("node-a"), Action::SignCsr, ident("spiffe://other.org/node/node-a"), false, &["foreign-trust-domain"]),
        (bootstrap(), Action::SignCsr, ident("spiffe://example.org/svc/api"), true, &["bootstrap-minted-for"]),
        (bootstrap(), Action::SignCsr, ident("spiffe://example.org/svc/db"), false, &[]),
        (bootstrap(), Action::ObtainSvid, ident("spiffe://example.org/svc/api"), false, &[]),
        (bootstrap(), Action::ManageEntries, Resource::Entry("e".into()), false, &[]),
        (workload(), Action::ObtainSvid, ident("spiffe://example.org/svc/api"), false, &[]),
        (workload(), Action::ReadBundle, Resource::Ca, true, &["any-read-bundle"]),
        (admin(), Action::IssueCertificate, ident("spiffe://other.org/svc/a"), false, &["foreign-trust-domain"]),
        (admin(), Action::SignCsr, ident("spiffe://other.org/svc/a"), false, &["foreign-trust-domain"]),
        (admin(), Action::UseDnsName, dns("localhost", "spiffe://example.org/svc/api"), true, &["admin-all"]),
        (node("node-a"), Action::UseDnsName, dns("localhost", own), false, &[]),
        (bootstrap(), Action::UseDnsName, dns("localhost", "spiffe://example.org/svc/api"), false, &[]),
        (workload(), Action::UseDnsName, dns("api.internal", "spiffe://example.org/svc/api"), false, &[]),
    ];
    for (principal, action, resource, allowed, ids) in cases {
        let d = engine.decide(&principal, action, &resource, &td());
        let what = format!("{} {action} {resource}: {d}", principal.describe());
        assert_eq!(d.allowed, allowed, "{what}");
        assert_eq!(d.policy_ids, ids, "{what}");
        assert!(d.errors.is_empty(), "{what}");
    }
    let foreign = Principal::Bootstrap { subject: "svc".into(), spiffe_ids: vec![id("spiffe://other.org/svc/api")] };
    let d = engine.decide(&foreign, Action::SignCsr, &ident("spiffe://other.org/svc/api"), &td());
    assert_eq!(d.to_string(), "DENY by foreign-trust-domain");
}

fn dns(name: &str, identity: &str) -> Resource {
    Resource::DnsName { name: name.into(), identity: id(identity) }
}

fn profile(mount: &str, name: &str) -> Resource {
    Resource::Profile(crate::domain::ProfileRef::new(mount, name).unwrap())
}

/// Profiles are the admins' alone by default; a policy names who may use
/// which one, and the CLI form of the resource reads back.
#[test]
fn a_policy_can_give_one_service_one_profile() {
    let default = PolicyEngine::embedded().unwrap();
    for action in [Action::UseProfile, Action::ManageProfiles, Action::ReadProfiles] {
        assert!(default.decide(&admin(), action, &profile("pki", "web"), &td()).allowed);
        for who in [node("cmk-api"), bootstrap(), workload()] {
            assert!(!default.decide(&who, action, &profile("pki", "web"), &td()).allowed, "{action}");
        }
    }
    let allow = r#"
        @id("cmk-tenant-certs")
        permit (principal == Trustmesh::Node::"cmk-api", action == Trustmesh::Action::"use_profile",
                resource == Trustmesh::Profile::"pki_client_certs/tenant-client");
    "#;
    let engine = PolicyEngine::from_sources(None, &[("cmk.cedar".into(), allow.into())]).unwrap();
    let tenant = profile("pki_client_certs", "tenant-client");
    let d = engine.decide(&node("cmk-api"), Action::UseProfile, &tenant, &td());
    assert!(d.allowed && d.policy_ids == ["cmk-tenant-certs"], "{d}");
    for (who, action, resource) in [
        (node("cmk-api"), Action::UseProfile, profile("pki_client_certs", "admin-client")),
        (node("cmk-api"), Action::UseProfile, profile("pki", "tenant-client")),
        (node("cmk-api"), Action::ManageProfiles, tenant.clone()),
        (node("other"), Action::UseProfile, tenant.clone()),
    ] {
        assert!(!engine.decide(&who, action, &resource, &td()).allowed, "{action} {resource}");
    }
    assert_eq!(crate::policy::parse_resource(r#"Profile::"pki_client_certs/tenant-client""#).unwrap(), tenant);
    for bad in [r#"Profile::"tenant-client""#, r#"Profile::"pki/a/b""#] {
        assert!(crate::policy::parse_resource(bad).is_err(), "{bad}");
    }
}

/// DNS SANs are refused to nodes and bootstrap tokens by default; an
/// operator's policy can allow them per identity and name.
#[test]
fn a_policy_can_allow_dns_names_for_a_nodes_own_identities() {
    let allow = r#"
        @id("node-dns")
        permit (principal is Trustmesh::Node, action == Trustmesh::Action::"use_dns_name", resource is Trustmesh::DnsName)
        when { resource.last_segment == principal.node_id && resource.name like "*.svc.internal" };
    "#;
    let engine = PolicyEngine::from_sources(None, &[("dns.cedar".into(), allow.into())]).unwrap();
    let own = "spiffe://example.org/web/node-a";
    let d = engine.decide(&node("node-a"), Action::UseDnsName, &dns("web.svc.internal", own), &td());
    assert!(d.allowed, "{d}");
    assert_eq!(d.policy_ids, ["node-dns"]);
    for (name, identity) in [("localhost", own), ("web.svc.internal", "spiffe://example.org/web/node-b")] {
        let d = engine.decide(&node("node-a"), Action::UseDnsName, &dns(name, identity), &td());
        assert!(!d.allowed, "{name} for {identity}: {d}");
    }
    assert_eq!(
        crate::policy::parse_resource(r#"DnsName::"web.svc.internal@spiffe://example.org/web/node-a""#).unwrap(),
        dns("web.svc.internal", own)
    );
    assert!(crate::policy::parse_resource(r#"DnsName::"web.svc.internal""#).is_err());
}

#[test]
fn entitlement_follows_entry_matched() {
    let engine = PolicyEngine::embedded().unwrap();
    let api = "spiffe://example.org/svc/api";
    let (yes, no, absent) = (
        DecisionContext { entry_matched: Some(true), ..Default::default() },
        DecisionContext { entry_matched: Some(false), ..Default::default() },
        DecisionContext::default(),
    );
    #[rustfmt::skip]
    let cases: Vec<(Principal, Action, &str, DecisionContext, &str)> = vec![
        (workload(), Action::ObtainSvid, api, yes, "ALLOW by workload-entitled"),
        (workload(), Action::ObtainSvid, api, no, "DENY (no policy permits)"),
        (workload(), Action::ObtainSvid, api, absent, "DENY (no policy permits)"),
        (workload(), Action::SignCsr, api, yes, "DENY (no policy permits)"),
        (workload(), Action::IssueCertificate, api, yes, "DENY (no policy permits)"),
        (workload(), Action::ObtainSvid, "spiffe://other.org/svc/api", yes, "DENY by foreign-trust-domain"),
        (node("node-a"), Action::ObtainSvid, api, yes, "ALLOW by node-entitled"),
        (node("node-a"), Action::ObtainSvid, api, no, "DENY (no policy permits)"),
        (node("node-a"), Action::SignCsr, api, yes, "DENY (no policy permits)"),
        (node("node-a"), Action::ObtainSvid, "spiffe://example.org/x/node-a", yes, "ALLOW by node-entitled, node-own-identity"),
        (node("node-a"), Action::ObtainSvid, "spiffe://example.org/x/node-a", no, "ALLOW by node-own-identity"),
        (bootstrap(), Action::ObtainSvid, api, yes, "DENY (no policy permits)"),
        (admin(), Action::ObtainSvid, api, no, "ALLOW by admin-all"),
    ];
    for (principal, action, id, ctx, expected) in cases {
        let d = engine.decide_with(&principal, action, &ident(id), &td(), &ctx);
        assert_eq!(d.to_string(), expected, "{} {action} {id} {ctx:?}", principal.describe());
    }
    // decide is decide_with an empty context
    let d = engine.decide(&workload(), Action::ObtainSvid, &ident(api), &td());
    assert_eq!(d, engine.decide_with(&workload(), Action::ObtainSvid, &ident(api), &td(), &absent));
    // other actions accept the context too
    let d = engine.decide_with(&admin(), Action::ReadStatus, &Resource::Ca, &td(), &yes);
    assert_eq!(d.to_string(), "ALLOW by admin-all");
}

#[test]
fn request_outside_the_schema_is_denied_with_a_reason() {
    let engine = PolicyEngine::embedded().unwrap();
    let d = engine.decide(&admin(), Action::SignCsr, &Resource::Ca, &td());
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert!(d.errors[0].contains("sign_csr on Ca"), "{d}");
    assert!(d.to_string().starts_with("DENY (no policy permits); errors: "), "{d}");
}

#[test]
fn decision_display() {
    let allow = Decision { allowed: true, policy_ids: vec!["admin-all".into()], errors: vec![] };
    assert_eq!(allow.to_string(), "ALLOW by admin-all");
    let deny = Decision { allowed: false, policy_ids: vec![], errors: vec![] };
    assert_eq!(deny.to_string(), "DENY (no policy permits)");
    let engine = PolicyEngine::embedded().unwrap();
    let d = engine.decide(&node("node-a"), Action::ReadStatus, &Resource::Ca, &td());
    assert_eq!(d.to_string(), "DENY (no policy permits)");
}

const CUSTOM: &str = r#"
@id("nodes-read-status")
permit (principal is Trustmesh::Node, action == Trustmesh::Action::"read_status", resource);
"#;

#[test]
fn policy_dir_override_changes_decisions() {
    let files = vec![("ops.cedar".to_string(), CUSTOM.to_string())];
    let engine = PolicyEngine::from_sources(None, &files).unwrap();
    assert_eq!(engine.policy_ids(), ["nodes-read-status"]);
    let d = engine.decide(&node("n"), Action::ReadStatus, &Resource::Ca, &td());
    assert_eq!(d.to_string(), "ALLOW by nodes-read-status");
    // the defaults are replaced, not merged
    assert!(!engine.decide(&admin(), Action::ReadStatus, &Resource::Ca, &td()).allowed);

    // several files, ids unique across them; a policy without @id is named by file
    let files = vec![
        ("a.cedar".to_string(), include_str!("default.cedar").to_string()),
        (
            "b.cedar".to_string(),
            format!("{CUSTOM}\npermit (principal is Trustmesh::Workload, action, resource is Trustmesh::Ca);"),
        ),
    ];
    let engine = PolicyEngine::from_sources(Some(include_str!("schema.cedarschema")), &files).unwrap();
    assert!(engine.policy_ids().contains(&"b.cedar#1".to_string()));
    let d = engine.decide(&workload(), Action::ReadStatus, &Resource::Ca, &td());
    assert_eq!(d.policy_ids, ["b.cedar#1"]);

    let dup = vec![("a.cedar".into(), CUSTOM.into()), ("b.cedar".into(), CUSTOM.into())];
    let err = PolicyEngine::from_sources(None, &dup).unwrap_err().to_string();
    assert!(err.contains("\"nodes-read-status\"") && err.contains("a.cedar") && err.contains("b.cedar"), "{err}");
}

#[test]
fn bad_policies_name_the_file() {
    let bad_syntax = vec![("broken.cedar".to_string(), "permit (principal, action, resource".to_string())];
    let err = PolicyEngine::from_sources(None, &bad_syntax).unwrap_err();
    assert!(matches!(err, PolicyError::Parse { .. }));
    assert!(err.to_string().starts_with("broken.cedar: cannot parse policies"), "{err}");

    let invalid = r#"@id("typo")
permit (principal is Trustmesh::Node, action == Trustmesh::Action::"sign_csr", resource is Trustmesh::Identity)
when { resource.last_segmnt == principal.node_id };"#;
    let files = vec![("typo.cedar".to_string(), invalid.to_string())];
    let err = PolicyEngine::from_sources(None, &files).unwrap_err().to_string();
    assert!(err.contains("typo.cedar: policy \"typo\""), "{err}");
    assert!(err.contains("last_segmnt"), "{err}");

    let unknown_action = r#"@id("x") permit (principal, action == Trustmesh::Action::"fly", resource);"#;
    let files = vec![("x.cedar".to_string(), unknown_action.to_string())];
    let err = PolicyEngine::from_sources(None, &files).unwrap_err().to_string();
    assert!(err.contains("x.cedar: policy \"x\""), "{err}");

    let template = r#"@id("t") permit (principal == ?principal, action, resource);"#;
    let files = vec![("t.cedar".to_string(), template.to_string())];
    let err = PolicyEngine::from_sources(None, &files).unwrap_err().to_string();
    assert!(err.contains("t.cedar") && err.contains("template"), "{err}");

    let err = PolicyEngine::from_sources(None, &[]).unwrap_err();
    assert_eq!(err, PolicyError::NoPolicies);
}

#[test]
fn bad_schemas_are_refused() {
    let files = vec![("ops.cedar".to_string(), CUSTOM.to_string())];
    let err = PolicyEngine::from_sources(Some("namespace Trustmesh { entity"), &files).unwrap_err();
    assert!(err.to_string().starts_with("policy schema schema.cedarschema:"), "{err}");
    let thin = include_str!("schema.cedarschema").replace("entity Node = { node_id: String };", "entity Node;");
    let err = PolicyEngine::from_sources(Some(&thin), &files).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains("node_id"), "{err}");
    let no_context = include_str!("schema.cedarschema").replace(", entry_matched?: Bool", "");
    assert_ne!(no_context, include_str!("schema.cedarschema"));
    let err = PolicyEngine::from_sources(Some(&no_context), &files).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains("entry_matched"), "{err}");
    let fewer = include_str!("schema.cedarschema").replace("action mint_token", "action mint_something");
    let err = PolicyEngine::from_sources(Some(&fewer), &files).unwrap_err().to_string();
    assert!(err.contains("mint_token"), "{err}");
}

#[test]
fn parse_cli_forms() {
    let ids = [id("spiffe://example.org/svc/api")];
    assert_eq!(parse_principal(r#"Admin::"ops""#, &[]).unwrap(), admin());
    assert_eq!(parse_principal(r#"Trustmesh::Node::"node-a""#, &[]).unwrap(), node("node-a"));
    assert_eq!(parse_principal(r#"Bootstrap::"svc""#, &ids).unwrap(), bootstrap());
    assert_eq!(
        parse_principal(r#"Workload::"unix:uid:1000,unix:gid:0""#, &[]).unwrap(),
        Principal::Workload { selectors: vec!["unix:uid:1000".into(), "unix:gid:0".into()] }
    );
    for bad in [r#"Root::"x""#, "Admin", r#"Admin::"""#, r#"Admin::ops"#, r#"Workload::"uid""#] {
        let err = parse_principal(bad, &[]).unwrap_err().to_string();
        assert!(err.starts_with("invalid principal"), "{bad}: {err}");
    }
    assert!(parse_principal(r#"Admin::"ops""#, &ids).is_err());

    assert_eq!(parse_resource("spiffe://example.org/a/b").unwrap(), ident("spiffe://example.org/a/b"));
    assert_eq!(parse_resource(r#"Identity::"spiffe://example.org/a""#).unwrap(), ident("spiffe://example.org/a"));
    assert_eq!(parse_resource("Ca").unwrap(), Resource::Ca);
    assert_eq!(parse_resource("AuditLog").unwrap(), Resource::AuditLog);
    assert_eq!(parse_resource(r#"Certificate::"0a1b""#).unwrap(), Resource::Certificate("0a1b".into()));
    assert_eq!(parse_resource(r#"Token::"node""#).unwrap(), Resource::Token(TokenKind::Node));
    assert_eq!(parse_resource(r#"Entry::"e1""#).unwrap(), Resource::Entry("e1".into()));
    for bad in ["spiffe://Example.org/a", r#"Token::"root""#, "Bucket", r#"Entry::"""#] {
        let err = parse_resource(bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid resource"), "{bad}: {err}");
    }

    for action in Action::ALL {
        assert_eq!(action.to_string().parse::<Action>().unwrap(), action);
    }
    assert_eq!("sign-csr".parse::<Action>().unwrap(), Action::SignCsr);
    assert_eq!(r#"Action::"read_audit""#.parse::<Action>().unwrap(), Action::ReadAudit);
    let err = "fly".parse::<Action>().unwrap_err().to_string();
    assert!(err.contains("\"fly\"") && err.contains("sign_csr"), "{err}");
}
