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
