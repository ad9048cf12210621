//! Helpers shared by the integration tests. Each test binary uses only some.
#![allow(dead_code)]

pub mod issuer;
pub mod minter;
pub mod postgres;
pub mod socket;

/// The repository's `.venv` Python (with py-spiffe), which
/// `scripts/install-test-deps.sh` installs; a test that needs it fails
/// without it.
pub fn venv_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (installs py-spiffe into .venv)",
        python.display()
    );
    python
}
