//! Attacks and failures a security product must survive, each reproduced
//! against the real binary: impersonating the API server, flooding the
//! listeners, oversized input, minting without bound, start-up on
//! inconsistent or corrupt state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod flood;
mod impersonation;
mod input;
mod startup;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
