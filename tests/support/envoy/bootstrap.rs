//! Bootstraps of the tests' Envoys, rendered by the shipped generator:
//! `trustmesh envoy bootstrap` (`trustmesh::sds::bootstrap`, which also made
//! `envoy/*.yaml`), so the Envoy tests fail when the generator breaks.
//!
//! [`with_files`] makes the one bootstrap the generator has no flags for: an
//! Envoy with certificates from files and no control plane (the control the
//! SDS tests are compared with), from a generated one by a small, checked
//! adjustment of its JSON.

use std::path::Path;

use serde_json::{Value, json};
use trustmesh::sds::bootstrap::{DENY_FILTER, SDS_CLUSTER};

use crate::support::server::Server;

/// `trustmesh envoy bootstrap` (YAML) through `tm` for `node_id` with
/// identity `spiffe_id`, SDS over `tm`'s local socket, plus `args`.
pub fn bootstrap(tm: &Server, node_id: &str, spiffe_id: &str, args: &[&str]) -> String {
    let socket = Server::socket_path(&tm.data_dir).display().to_string();
    render(tm, false, node_id, spiffe_id, &["--socket", &socket], args)
}

/// [`bootstrap`] over `tm`'s TLS port with `token` instead of the local
/// socket (the server recognised as `spiffe://<td>/trustmesh/server` of the
/// trust domain of `spiffe_id`, against `tm`'s CA bundle).
pub fn bootstrap_with_token(tm: &Server, node_id: &str, spiffe_id: &str, token: &str, args: &[&str]) -> String {
    // The generator copies the token into the bootstrap: the file can go.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), token).unwrap();
    render(tm, false, node_id, spiffe_id, &["--token-file", file.path().to_str().unwrap()], args)
}

/// [`bootstrap`] of a server-side Envoy: the mTLS listener `listener`
/// (`NAME:PORT:PEER_IDS`) on 127.0.0.1 in front of the backend on loopback
/// port `backend_port`, plus `args`.
pub fn server_bootstrap(
    tm: &Server,
    node_id: &str,
    spiffe_id: &str,
    listener: &str,
    backend_port: u16,
    args: &[&str],
) -> String {
    let backend = format!("127.0.0.1:{backend_port}");
    let shape = ["--bind", "127.0.0.1", "--listener", listener, "--backend", &backend];
    bootstrap(tm, node_id, spiffe_id, &[&shape[..], args].concat())
}

/// [`bootstrap`] of a client-side Envoy: the outbound route `upstream`
/// (`NAME:PORT:HOST:PORT:SERVER_ID`, a listener and a cluster of that name),
/// a new connection per request if `fresh` (else one pooled keep-alive
/// connection), plus `args`.
pub fn client_bootstrap(
    tm: &Server,
    node_id: &str,
    spiffe_id: &str,
    upstream: &str,
    fresh: bool,
    args: &[&str],
) -> String {
    let fresh: &[&str] = if fresh { &["--new-connection-per-request"] } else { &[] };
    bootstrap(tm, node_id, spiffe_id, &[&["--upstream", upstream], fresh, args].concat())
}

/// A generated bootstrap (YAML) at Envoy's default of sending its whole node
/// on every xDS request (as bootstraps written for other control planes do):
/// every `set_node_on_first_message_only` the generator wrote becomes false.
pub fn node_on_every_request(yaml: &str) -> String {
    const FIRST_ONLY: &str = "set_node_on_first_message_only: true";
    assert!(yaml.contains(FIRST_ONLY), "the generator no longer writes {FIRST_ONLY}");
    yaml.replace(FIRST_ONLY, "set_node_on_first_message_only: false")
}

/// A generated bootstrap that reaches `to` (a node agent's socket) instead
/// of the server's own socket `from`: the socket path, and nothing else.
pub fn at_socket(yaml: &str, from: &Path, to: &Path) -> String {
    let from = from.display().to_string();
    assert!(yaml.contains(&from), "the generated bootstrap does not name {from}");
    yaml.replace(&from, &to.display().to_string())
}

/// `trustmesh envoy bootstrap` as JSON, for [`with_files`].
pub fn bootstrap_json(tm: &Server, node_id: &str, spiffe_id: &str, args: &[&str]) -> String {
    let socket = Server::socket_path(&tm.data_dir).display().to_string();
    render(tm, true, node_id, spiffe_id, &["--socket", &socket], args)
}

/// A generated bootstrap (JSON) with certificates from files and no control
/// plane. The adjustment, and nothing else:
///
/// - every TLS context presents `cert`/`key` instead of the SDS certificate
///   secret and validates peers against `ca` (Envoy's default validator)
///   instead of the SDS validation context, keeping the generated list of
///   accepted URI SANs;
/// - the deny-list filter (its config comes over ECDS) leaves the HTTP filter
///   chains;
/// - the SDS cluster and the ADS config go.
///
/// Panics if the generator's output no longer has the shape this expects.
pub fn with_files(generated: &str, cert: &Path, key: &Path, ca: &Path) -> String {
    let mut config: Value = serde_json::from_str(generated).unwrap();
    let Value::Object(top) = &mut config else { panic!("a bootstrap is a JSON object: {generated}") };
    top.remove("dynamic_resources");
    let clusters = config["static_resources"]["clusters"].as_array_mut().unwrap();
    let before = clusters.len();
    clusters.retain(|c| c["name"] != SDS_CLUSTER);
    assert_eq!(clusters.len() + 1, before, "no cluster {SDS_CLUSTER} in the generated bootstrap: {generated}");
    let files = json!({
        "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
        "validation_context": {"trusted_ca": {"filename": ca}},
    });
    let contexts = use_files(&mut config, &files);
    assert!(contexts > 0, "no TLS context in the generated bootstrap: {generated}");
    serde_json::to_string_pretty(&config).unwrap()
}

/// Rewrites every `common_tls_context` below `v` to `files` (keeping its
/// accepted SANs) and drops the deny-list filter from every HTTP filter
/// chain; returns how many TLS contexts it rewrote.
fn use_files(v: &mut Value, files: &Value) -> usize {
    let mut rewritten = 0;
    match v {
        Value::Object(map) => {
            if let Some(ctx) = map.get_mut("common_tls_context") {
                assert!(ctx.get("tls_certificate_sds_secret_configs").is_some(), "not an SDS TLS context: {ctx}");
                let validation = &mut ctx["combined_validation_context"]["default_validation_context"];
                let sans = validation["match_typed_subject_alt_names"].take();
                assert!(sans.is_array(), "no accepted SANs in the TLS context: {ctx}");
                *ctx = files.clone();
                ctx["validation_context"]["match_typed_subject_alt_names"] = sans;
                rewritten += 1;
            }
            if let Some(Value::Array(filters)) = map.get_mut("http_filters") {
                filters.retain(|f| f["name"] != DENY_FILTER);
            }
            rewritten += map.values_mut().map(|child| use_files(child, files)).sum::<usize>();
        }
        Value::Array(items) => rewritten += items.iter_mut().map(|item| use_files(item, files)).sum::<usize>(),
        _ => {}
    }
    rewritten
}

/// `trustmesh envoy bootstrap` through `tm` for `node_id` with identity
/// `spiffe_id`, reaching trustmesh as `sds` says, plus `args` (YAML, or JSON
/// if `json`).
fn render(tm: &Server, json: bool, node_id: &str, spiffe_id: &str, sds: &[&str], args: &[&str]) -> String {
    let output: &[&str] = if json { &["--output", "json"] } else { &[] };
    let identity = ["envoy", "bootstrap", "--node-id", node_id, "--spiffe-id", spiffe_id];
    tm.ok(&[output, &identity[..], sds, args].concat())
}
