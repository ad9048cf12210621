//! Helpers shared by the integration tests, one module per concern. Every
//! test binary that uses helpers declares `mod support;` (and no helper
//! module of its own, `tests/tidy.rs` checks) and uses only some of them.
//!
//! | module | what it is for |
//! |---|---|
//! | `server` | the real `trustmesh` binary: `serve` on ephemeral ports, the CLI against it |
//! | `agent` | the real `trustmesh agent` of a test server, attested with a join token |
//! | `openssl` | PEM text, normalized serials, and openssl as an independent verifier |
//! | `process` | stopping child processes, polling with a deadline |
//! | `envoy` | real Envoy processes, their bootstraps from the shipped generator, HTTP through them |
//! | `fixtures` | entries, selectors, SVIDs, trust snapshots, identity sets, a fake identity source |
//! | `issuer` | the issuing service in-process on SQLite |
//! | `minter` | a fake SVID minter over an in-memory CA, and a trust state set by hand (for the identity cache) |
//! | `postgres` | throwaway PostgreSQL servers (shared, or one a test can stop and start) |
//! | `replicas` | replicas of `trustmesh serve` on one PostgreSQL database |
//! | `revocation` | the revocation scene: trustmesh, a backend, a server-side Envoy and client-side Envoys |
//! | `sds` | the SDS server in-process with a fake identity source and attestor; xDS test clients |
//! | `socket` | gRPC over a Unix socket, a raw Workload API client |
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod envoy;
pub mod fixtures;
pub mod issuer;
pub mod minter;
pub mod openssl;
pub mod postgres;
pub mod process;
pub mod replicas;
pub mod revocation;
pub mod sds;
pub mod server;
pub mod socket;

use std::path::{Path, PathBuf};

/// The repository's `.venv` Python (with py-spiffe), which
/// `scripts/install-test-deps.sh` installs; a test that needs it fails
/// without it.
pub fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (installs py-spiffe into .venv)",
        python.display()
    );
    python
}

/// `tests/workload_py/<script> ARGS` (py-spiffe, unmodified) against the
/// Workload API on `socket`.
pub fn py_spiffe(socket: &Path, script: &str, args: &[&str]) -> std::process::Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workload_py").join(script);
    let mut cmd = std::process::Command::new(venv_python());
    cmd.arg(script).args(args).env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()));
    cmd
}

/// The uid this test runs as (0 in CI), for `unix:uid:` selectors.
pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The last `n` lines of `text`, for failure messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
