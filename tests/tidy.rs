//! Keeps the architecture true without review: the pure modules import no I/O
//! crates, the servers never import each other, generated code stays in
//! `src/proto`, and the tests share one support tree and the shipped Envoy
//! bootstrap generator.

use std::fs;
use std::path::{Path, PathBuf};

/// Modules that must stay free of I/O: time, randomness and keys come in as values.
const PURE: &[&str] = &["domain", "ca", "policy", "token", "trust"];
/// Crates (and std paths) a pure module must not name.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tonic",
    "hyper",
    "axum",
    "rusqlite",
    "tokio_postgres",
    "deadpool_postgres",
    "std::fs",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "std::os::unix::net",
    "std::process",
    "std::env",
    "opentelemetry",
    "tracing_subscriber",
    "crate::store",
    "crate::issuer",
    "crate::admin",
];
/// Modules that consume trust state and identities through narrow traits
/// and the published snapshot: none may import the issuer (`app` wires it in).
const ISSUER_FREE: &[&str] = &["cache", "sds", "workload", "attest", "trust", "sync", "agent"];
/// Server modules: none may import another.
const SERVERS: &[&str] = &["admin", "telemetry", "sds", "workload"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn module_files(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = rust_files(&src.join(module));
    let single = src.join(format!("{module}.rs"));
    if single.exists() {
        files.push(single);
    }
    files
}

/// Code lines only: comments are allowed to mention anything.
fn code(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn names(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().last();
        let after = text[i + name.len()..].chars().next();
        let boundary_before = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let boundary_after = after.is_none_or(|c| c == ':' || c == ';' || c == ' ' || c == '{' || c == ',' || c == ')');
        boundary_before && boundary_after
    })
}

#[test]
fn pure_modules_import_no_io() {
    let mut violations = Vec::new();
    for module in PURE {
        let files = module_files(module);
        assert!(!files.is_empty(), "pure module src/{module} not found");
        for f in files {
            let text = code(&f);
            for io in IO_CRATES {
                if names(&text, io) {
                    violations.push(format!("{} uses {io}", f.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "pure modules must not do I/O:\n{}", violations.join("\n"));
}

#[test]
fn servers_do_not_import_each_other() {
    let mut violations = Vec::new();
    for server in SERVERS {
        for f in module_files(server) {
            let text = code(&f);
            for other in SERVERS.iter().filter(|o| *o != server) {
                if names(&text, &format!("crate::{other}")) {
                    violations.push(format!("{} imports crate::{other}", f.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "servers must not import each other:\n{}", violations.join("\n"));
}

#[test]
fn caches_servers_and_attestation_never_import_the_issuer() {
    let mut violations = Vec::new();
    for module in ISSUER_FREE {
        let files = module_files(module);
        assert!(!files.is_empty(), "src/{module} not found");
        for f in files {
            if names(&code(&f), "crate::issuer") {
                violations.push(f.display().to_string());
            }
        }
    }
    assert!(violations.is_empty(), "these import crate::issuer (take a narrow trait instead): {violations:?}");
}

#[test]
fn generated_code_is_imported_only_by_servers_the_cli_and_the_agent() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // `sync` writes and reads the agent protocol's messages; `agent` speaks it.
    let allowed = ["admin", "agent", "cli", "proto", "sds", "sync", "workload"];
    let mut violations = Vec::new();
    for f in rust_files(&src) {
        let rel = f.strip_prefix(&src).unwrap_or(&f).to_string_lossy().to_string();
        let top = rel.split(['/', '.']).next().unwrap_or_default().to_string();
        if allowed.contains(&top.as_str()) || rel == "lib.rs" {
            continue;
        }
        if names(&code(&f), "crate::proto") {
            violations.push(rel);
        }
    }
    assert!(violations.is_empty(), "only servers, the CLI and the agent may import crate::proto: {violations:?}");
}

/// Helpers live in `tests/support/` (every test binary declares `mod
/// support;`, a multi-file binary also its own files), and every Envoy
/// bootstrap of the tests comes from `trustmesh envoy bootstrap`: only
/// `support/envoy/bootstrap.rs`, which adjusts generated ones, names a
/// bootstrap's fields.
#[test]
fn tests_share_one_support_tree_and_the_shipped_bootstrap_generator() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut violations = Vec::new();
    for e in fs::read_dir(&tests).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_dir() && !["support", "hardening", "workload_py", "vault_py"].contains(&name.as_str()) {
            violations.push(format!("tests/{name}/: helpers belong in tests/support/"));
        }
    }
    let bootstrap_field = ["\"static", "_resources\""].concat();
    for f in rust_files(&tests) {
        let rel = f.strip_prefix(&tests).unwrap_or(&f).to_string_lossy().to_string();
        if rel.starts_with("support/") {
            continue;
        }
        let text = code(&f);
        for module in text.lines().filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';')) {
            let own_file = f.ends_with("main.rs") && f.with_file_name(format!("{module}.rs")).exists();
            if module != "support" && !own_file {
                violations.push(format!("tests/{rel} declares mod {module}; helpers belong in tests/support/"));
            }
        }
        if text.contains(&bootstrap_field) {
            violations.push(format!("tests/{rel} writes an Envoy bootstrap: use support::envoy::bootstrap"));
        }
    }
    assert!(violations.is_empty(), "one test support tree:\n{}", violations.join("\n"));
}

/// Where a pure module may make randomness itself: the injected serial
/// source (as `SystemClock` is the injected clock), and the insides of the
/// ECDSA primitives, which draw their nonces from ring's generator (rcgen
/// asks a key to sign with no generator to hand it). Everywhere else
/// randomness comes in as a parameter.
const OWN_RANDOMNESS: &[&str] = &["domain/serial.rs", "ca/key.rs", "token/jws.rs"];

#[test]
fn pure_modules_take_randomness_as_a_parameter() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for module in PURE {
        for f in module_files(module) {
            let rel = f.strip_prefix(&src).unwrap_or(&f).to_string_lossy().to_string();
            let is_test = rel.contains("/tests/") || rel.ends_with("/tests.rs");
            if is_test || OWN_RANDOMNESS.contains(&rel.as_str()) {
                continue;
            }
            let code = code(&f);
            let code = code.split("#[cfg(test)]").next().unwrap_or_default();
            if code.contains("SystemRandom::new") {
                violations.push(rel);
            }
        }
    }
    assert!(violations.is_empty(), "these make their own randomness (take a `&dyn SecureRandom`): {violations:?}");
}

#[test]
fn the_checker_catches_a_violation() {
    assert!(names("use tokio::sync;", "tokio"));
    assert!(names("let x = std::fs::read(p);", "std::fs"));
    assert!(!names("use tokio_rustls::x;", "tokio"));
    assert!(!names("let tokio_like = 1;", "tokio"));
}
