//! Helpers shared by the integration tests. Each test binary uses only some.
#![allow(dead_code)]

pub mod issuer;
pub mod postgres;
