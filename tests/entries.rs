//! Registration entries end to end: the real CLI against a real server on
//! SQLite (PostgreSQL runs the store conformance suite), bad input, foreign
//! tokens and replays; and in-process, the published entry list and the
//! workload entitlement decision built on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use support::fixtures::selectors;
use support::server::{self, Server};
use trustmesh::attest::token_selectors;
use trustmesh::domain::{Principal, Selector, SpiffeId, SystemClock};
use trustmesh::issuer::{Caller, EntryRequest, Issuer};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn last_audit(s: &Server) -> Value {
    s.json(&["audit", "list"]).as_array().unwrap().last().cloned().expect("an audit record")
}

/// The last audit record is a refusal of `action` whose reason mentions `needle`.
fn assert_refused(s: &Server, action: &str, needle: &str) {
    let last = last_audit(s);
    assert!(last["outcome"] == "denied" || last["outcome"] == "error", "not a refusal: {last}");
    assert_eq!(last["action"], action, "{last}");
    let reason = last["reason"].as_str().unwrap().to_lowercase();
    assert!(reason.contains(&needle.to_lowercase()), "audit reason {reason:?} does not mention {needle:?}");
}

fn create(s: &Server, spiffe_id: &str, selectors: &[&str]) -> Value {
    let mut args = vec!["entry", "create", "--spiffe-id", spiffe_id];
    for sel in selectors {
        args.extend(["--selector", sel]);
    }
    s.json(&args)
}

#[test]
fn entries_are_created_listed_shown_deleted_and_survive_a_restart() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    #[rustfmt::skip]
    let full = s.json(&[
        "entry", "create", "--spiffe-id", "spiffe://example.org/web/frontend",
        "--selector", "unix:uid:1000", "--selector", "unix:path:/usr/bin/envoy", "--selector", "unix:uid:1000",
        "--dns-name", "web.example.org", "--ttl", "600", "--jwt-ttl", "2m", "--hint", "frontend proxy",
        "--federates-with", "partner.org",
    ]);
    let id = full["id"].as_str().unwrap().to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(full["selectors"], json!(["unix:uid:1000", "unix:path:/usr/bin/envoy"]), "deduplicated, sorted");
    assert_eq!(full["dns_names"], json!(["web.example.org"]));
    assert_eq!((full["ttl_seconds"].as_u64(), full["jwt_ttl_seconds"].as_u64()), (Some(600), Some(120)));
    assert_eq!(full["hint"], "frontend proxy");
    assert_eq!(full["federates_with"], json!(["partner.org"]));
    // Entries are ordered by creation second, then id: let a second pass.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let text = s.ok(&["entry", "create", "--spiffe-id", "spiffe://example.org/db", "--selector", "token:sub:node-a"]);
    assert!(text.starts_with("[ok] Entry created\n") && text.contains("token:sub:node-a"), "{text}");

    let list = s.json(&["entry", "list"]);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|e| e["spiffe_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["spiffe://example.org/web/frontend", "spiffe://example.org/db"], "oldest first");
    let table = s.ok(&["entry", "list"]);
    assert!(table.starts_with("ENTRY ID") && table.contains(&id), "{table}");
    assert_eq!(s.json(&["entry", "show", &id]), full);
    assert_eq!(s.json(&["entry", "show", &id.to_uppercase()]), full, "ids are case-insensitive");
    assert_eq!(s.json(&["entry", "show", "spiffe://example.org/web/frontend"]), full, "by its only SPIFFE ID");
    assert!(s.ok(&["entry", "show", &id]).contains("Hint:       frontend proxy"));

    // A second entry for the same SPIFFE ID makes the ID ambiguous.
    let second = create(&s, "spiffe://example.org/web/frontend", &["unix:uid:1001"]);
    let err = s.fails(&["entry", "show", "spiffe://example.org/web/frontend"]);
    assert!(err.contains("names 2 entries") && err.contains(&id), "{err}");
    assert!(s.fails(&["entry", "delete", "spiffe://example.org/web/frontend"]).contains("give an entry id"));
    s.stop();

    let s = Server::start(&data, &[]);
    let by_id = |v: Value| {
        let mut all = v.as_array().unwrap().clone();
        all.sort_by_key(|e| e["id"].as_str().unwrap().to_string());
        all
    };
    let mut before = list.as_array().unwrap().clone();
    before.push(second.clone());
    assert_eq!(by_id(s.json(&["entry", "list"])), by_id(Value::Array(before)), "every entry survives a restart");
    assert!(s.log().contains("Registration entries loaded"), "{}", s.log());
    let deleted = s.json(&["entry", "delete", &id]);
    assert_eq!(deleted, full);
    let audit = last_audit(&s);
    assert_eq!((audit["action"].as_str(), audit["outcome"].as_str()), (Some("delete_entry"), Some("ok")));
    assert_eq!(audit["target"], "spiffe://example.org/web/frontend");
    // Deleting twice (a replayed delete) finds nothing; so does show.
    assert!(s.fails(&["entry", "delete", &id]).contains("not found"));
    assert_refused(&s, "delete_entry", "not found");
    assert!(s.fails(&["entry", "show", &id]).contains("not found"));
    let text = s.ok(&["entry", "delete", "spiffe://example.org/web/frontend"]);
    assert!(text.contains(second["id"].as_str().unwrap()) && text.contains("deleted"), "{text}");
    let created: Vec<Value> =
        s.json(&["audit", "list", "--spiffe-id", "spiffe://example.org/db"]).as_array().unwrap().clone();
    assert!(created.iter().any(|a| a["action"] == "create_entry" && a["outcome"] == "ok"), "{created:?}");
}

#[test]
fn bad_entries_are_refused_audited_and_the_server_keeps_serving() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let id = "spiffe://example.org/web";
    let many: Vec<String> = (0..33).map(|i| format!("unix:uid:{i}")).collect();
    let mut too_many = vec!["entry", "create", "--spiffe-id", id];
    for sel in &many {
        too_many.extend(["--selector", sel]);
    }
    let (hint, dns) = ("h".repeat(257), format!("{}.example.org", "a.".repeat(125)));
    let (long_ref, tld_only) =
        (format!("spiffe://example.org/{}", "x".repeat(3000)), "spiffe://example.org".to_string());
    fn base<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--selector", "unix:uid:1"];
        args.extend_from_slice(extra);
        args
    }
    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["entry", "create", "--spiffe-id", id, "--selector", "k8s:ns:default"], "create_entry", "invalid selector"),
        (vec!["entry", "create", "--spiffe-id", id, "--selector", "unix:uid:-1"], "create_entry", "number"),
        (vec!["entry", "create", "--spiffe-id", id], "create_entry", "at least one --selector"),
        (too_many, "create_entry", "at most 32 selectors"),
        (vec!["entry", "create", "--spiffe-id", "spiffe://other.org/web", "--selector", "unix:uid:1"], "create_entry", "not in trust domain"),
        (vec!["entry", "create", "--spiffe-id", "spiffe://example.org/a/../b", "--selector", "unix:uid:1"], "create_entry", "invalid SPIFFE ID"),
        (vec!["entry", "create", "--spiffe-id", &tld_only, "--selector", "unix:uid:1"], "create_entry", "needs a path"),
        (base(&["--hint", hint.as_str()]), "create_entry", "hint"),
        (base(&["--dns-name", dns.as_str()]), "create_entry", "longer than 253"),
        (base(&["--dns-name", "Web.Example.org"]), "create_entry", "lowercase"),
        (base(&["--ttl", "30"]), "create_entry", "at least 60"),
        (base(&["--ttl", "1000d"]), "create_entry", "longest certificate lifetime"),
        (base(&["--federates-with", "example.org"]), "create_entry", "own trust domain"),
        (base(&["--federates-with", "Partner.org"]), "create_entry", "lowercase"),
        (vec!["entry", "show", "not-an-id"], "show_entry", "neither an entry id"),
        (vec!["entry", "delete", &long_ref], "delete_entry", "at most 2048 bytes"),
        (vec!["entry", "show", "spiffe://example.org/nothing"], "show_entry", "not found"),
    ];
    for (args, action, needle) in cases {
        let err = s.fails(&args);
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{args:?}: {err}");
        assert_refused(&s, action, needle);
    }
    // Client-side: a malformed --ttl never reaches the server.
    assert!(
        s.fails(&["entry", "create", "--spiffe-id", id, "--selector", "unix:uid:1", "--ttl", "soon"]).contains("--ttl")
    );
    assert!(s.json(&["entry", "list"]).as_array().unwrap().is_empty(), "nothing was written");
    assert_eq!(s.json(&["pki", "status"])["health"], "HEALTHY");
}

#[test]
fn the_same_entry_twice_is_a_conflict() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    create(&s, "spiffe://example.org/web", &["unix:uid:1000", "unix:gid:1000"]);
    let args = ["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--selector", "unix:gid:1000"];
    let err = s.fails(&[&args[..], &["--selector", "unix:uid:1000", "--hint", "again"]].concat());
    assert!(err.contains("already exists") && err.contains("spiffe://example.org/web"), "{err}");
    assert_refused(&s, "create_entry", "already exists");
    assert_eq!(s.json(&["entry", "list"]).as_array().unwrap().len(), 1, "not a duplicate");
    // a different selector set is a different entry
    create(&s, "spiffe://example.org/web", &["unix:gid:1000"]);
    assert_eq!(s.json(&["entry", "list"]).as_array().unwrap().len(), 2);
}

#[test]
fn only_authorized_tokens_manage_entries() {
    let dir = tmp();
    let s = Server::start(&dir.path().join("data"), &[]);
    let entry = create(&s, "spiffe://example.org/web/node-a", &["token:sub:node-a"]);
    let entry_id = entry["id"].as_str().unwrap();
    let node = s.ok(&["token", "mint", "node", "node-a"]).trim().to_string();
    let as_node = |args: &[&str]| {
        let out = s.cli_cmd().args(["--token", &node]).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded with a node token");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    for (args, action) in [
        (
            vec!["entry", "create", "--spiffe-id", "spiffe://example.org/x/node-a", "--selector", "unix:uid:1"],
            "create_entry",
        ),
        (vec!["entry", "list"], "list_entries"),
        (vec!["entry", "show", entry_id], "show_entry"),
        (vec!["entry", "delete", entry_id], "delete_entry"),
        (vec!["entry", "delete", "spiffe://example.org/none"], "delete_entry"),
    ] {
        let err = as_node(&args);
        assert!(err.starts_with("error: permission denied"), "{args:?}: {err}");
        assert_refused(&s, action, "permission denied");
        assert_eq!(last_audit(&s)["actor"], "Node::\"node-a\"");
    }
    assert!(s.log().contains("Permission denied for action"));
    // garbage token: unauthenticated, audited as anonymous
    let out = s.cli_cmd().args(["--token", "not.a.jwt", "entry", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    assert_eq!(last_audit(&s)["actor"], "anonymous");
    // a single-use admin token works once; its replay is refused
    let once = s.ok(&["token", "mint", "admin", "ops", "--single-use"]).trim().to_string();
    let run = || s.cli_cmd().args(["--token", &once, "entry", "list"]).output().unwrap();
    assert!(run().status.success());
    let replay = run();
    assert!(!replay.status.success() && String::from_utf8_lossy(&replay.stderr).contains("already used"));
    assert_eq!(s.json(&["entry", "list"]).as_array().unwrap().len(), 1, "nothing changed");
}

#[test]
fn policy_check_explains_workload_entitlement() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(server::BIN)
            .args(["--output", "json", "policy", "check"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("{} {}", v["decision"].as_str().unwrap(), v["policy_ids"])
    };
    let workload = ["--principal", "Workload::\"unix:uid:1000\"", "--action", "obtain_svid"];
    let web = ["--resource", "spiffe://example.org/web"];
    assert_eq!(run(&[&workload[..], &web, &["--entry-matched"]].concat()), "ALLOW [\"workload-entitled\"]");
    assert_eq!(run(&[&workload[..], &web, &["--entry-matched", "false"]].concat()), "DENY []");
    assert_eq!(run(&[&workload[..], &web].concat()), "DENY []");
    let foreign = ["--resource", "spiffe://other.org/web", "--entry-matched"];
    assert_eq!(run(&[&workload[..], &foreign].concat()), "DENY [\"foreign-trust-domain\"]");
    let node = ["--principal", "Node::\"node-a\"", "--action", "obtain_svid", "--resource", "spiffe://example.org/db"];
    assert_eq!(run(&[&node[..], &["--entry-matched"]].concat()), "ALLOW [\"node-entitled\"]");
    let text = std::process::Command::new(server::BIN)
        .args(["policy", "check", "--entry-matched"])
        .args(workload)
        .args(web)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&text.stdout), "ALLOW by workload-entitled\n");
}

// ---- in-process: the published list and entitlement ------------------------

/// A real issuer on temp SQLite, on the system clock.
async fn issuer(dir: &std::path::Path) -> Arc<Issuer> {
    support::issuer::start_on(dir, Arc::new(SystemClock)).await.0
}

#[tokio::test]
async fn the_entry_list_is_published_and_decides_entitlement() {
    let dir = tmp();
    let issuer = issuer(dir.path()).await;
    let mut watch = issuer.entries_watch();
    assert!(watch.borrow_and_update().is_empty());
    let request = |id: &str, selectors: &[&str]| EntryRequest {
        spiffe_id: id.into(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let web =
        issuer.create_entry(&Caller::system(), request("spiffe://example.org/web", &["unix:uid:1000"])).await.unwrap();
    let db = issuer
        .create_entry(&Caller::system(), request("spiffe://example.org/db", &["token:sub:node-a"]))
        .await
        .unwrap();
    assert!(watch.has_changed().unwrap());
    let published: BTreeSet<String> = watch.borrow_and_update().iter().map(|e| e.id.clone()).collect();
    assert_eq!(published, BTreeSet::from([web.id.clone(), db.id.clone()]));

    let workload = Principal::Workload { selectors: vec!["unix:uid:1000".into(), "unix:gid:5".into()] };
    let caller = selectors(&["unix:uid:1000", "unix:gid:5"]);
    let decide = |p: &Principal, s: &BTreeSet<Selector>, id: &str| {
        issuer.decide_svid(p, s, &SpiffeId::parse(id).unwrap()).to_string()
    };
    assert_eq!(decide(&workload, &caller, "spiffe://example.org/web"), "ALLOW by workload-entitled");
    assert_eq!(decide(&workload, &caller, "spiffe://example.org/db"), "DENY (no policy permits)");
    assert_eq!(
        decide(&workload, &selectors(&["unix:uid:1001"]), "spiffe://example.org/web"),
        "DENY (no policy permits)"
    );
    let node = Principal::Node { id: "node-a".into() };
    assert_eq!(decide(&node, &token_selectors("node-a"), "spiffe://example.org/db"), "ALLOW by node-entitled");
    assert_eq!(decide(&node, &token_selectors("node-b"), "spiffe://example.org/db"), "DENY (no policy permits)");

    issuer.delete_entry(&Caller::system(), &web.id).await.unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update().clone(), vec![db.clone()]);
    assert_eq!(decide(&workload, &caller, "spiffe://example.org/web"), "DENY (no policy permits)", "at once");
    drop(issuer);

    let again = self::issuer(dir.path()).await;
    assert_eq!(*again.entries(), vec![db], "loaded from the store at start");
}
