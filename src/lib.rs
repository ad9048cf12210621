//! trustmesh: a SPIFFE certificate authority, Envoy SDS control plane and
//! Workload API server in one binary. See `docs/ARCHITECTURE.md` for the map.

// pure: no I/O crates (enforced by tests/tidy.rs)
pub mod ca;
pub mod domain;
pub mod policy;
pub mod token;
pub mod trust;

// state
pub mod cache;
pub mod store;

// loop
pub mod issuer;

// attestation of callers (reads /proc; used by the servers)
pub mod attest;

// the agent protocol's messages (both sides)
pub mod sync;

// servers
pub mod admin;
pub mod sds;
pub mod telemetry;
pub mod workload;

// transports: accept loops for the servers' routers
pub mod net;

// the node agent: a client of the server, serving the node's socket
pub mod agent;

// wiring and entry points
pub mod app;
pub mod cli;
pub mod config;
pub mod files;
pub mod proto;
