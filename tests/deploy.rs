//! The deployment files (`deploy/systemd/`, `compose/`) against the binary
//! they start: `systemd-analyze verify` accepts both units (and refuses a
//! broken one, so the check can fail), and every flag and `TRUSTMESH_*`
//! variable they name is one `trustmesh` documents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_trustmesh");
const UNITS: [&str; 2] = ["trustmesh.service", "trustmesh-agent.service"];

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `systemd-analyze verify` of `text` saved as `name`, with the binary it
/// starts being this build's. Fails the test when systemd-analyze is missing
/// (scripts/install-test-deps.sh installs it).
fn verify(name: &str, text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace("/usr/local/bin/trustmesh", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze is missing: run scripts/install-test-deps.sh (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    // Warnings about the host's own units are not ours.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
    (out.status.success() && ours.is_empty(), ours.join("\n"))
}

#[test]
fn both_units_verify_and_a_broken_one_does_not() {
    for unit in UNITS {
        let (ok, complaints) = verify(unit, &repo(&format!("deploy/systemd/{unit}")));
        assert!(ok, "systemd-analyze verify {unit}:\n{complaints}");
    }
    let broken = repo("deploy/systemd/trustmesh-agent.service").replace("ExecStart=/usr", "ExecStart=usr");
    let (ok, complaints) = verify("broken.service", &broken);
    assert!(!ok, "a relative ExecStart passed verification");
    assert!(complaints.contains("broken.service"), "{complaints}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The `--flags` and `TRUSTMESH_*` names in `text`, comments aside.
fn names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let text: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let word = |w: &str| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).to_string();
    let words: Vec<String> =
        text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '=').map(word).collect();
    let flags = words.iter().filter(|w| w.starts_with("--") && w.len() > 2).cloned().collect();
    let vars = words.iter().filter(|w| w.starts_with("TRUSTMESH_")).cloned().collect();
    (flags, vars)
}

#[test]
fn every_flag_and_variable_the_deployment_files_name_is_documented() {
    let serve = help(&["serve"]);
    let agent = help(&["agent"]);
    let mint = help(&["token", "mint"]);
    for (file, documented) in [
        ("deploy/systemd/trustmesh.service", vec![&serve]),
        ("deploy/systemd/server.env.example", vec![&serve]),
        ("deploy/systemd/trustmesh-agent.service", vec![&agent]),
        ("deploy/systemd/agent.env.example", vec![&agent]),
        ("compose/docker-compose.yml", vec![&serve, &agent, &mint]),
    ] {
        let (flags, vars) = names(&repo(file));
        assert!(!flags.is_empty() || !vars.is_empty(), "{file} names nothing");
        for name in flags.iter().chain(&vars) {
            assert!(
                documented.iter().any(|h| h.contains(&format!("{name} "))
                    || h.contains(&format!("{name}="))
                    || h.contains(&format!("{name}]"))),
                "{file} names {name}, which `trustmesh … --help` does not document"
            );
        }
    }
}
