//! Envoy v3 bootstraps that take certificates and trust bundles from
//! trustmesh over SDS (`trustmesh envoy bootstrap`, SPEC §6). Pure: values in,
//! a JSON value out ([`render`]), YAML or JSON text ([`to_text`]).
//!
//! What every bootstrap gets (see `envoy-notes.md`):
//!
//! - an SDS cluster over HTTP/2 to the local socket (`pipe`) or the TLS port
//!   (bearer token as gRPC `initial_metadata`, server certificate checked
//!   against the CA file and the host name);
//! - reconnect back-off 0.1–0.5 s (`envoy_grpc.retry_policy`), node sent on the
//!   first message only, `initial_fetch_timeout: 0s` (wait for the SVID, the
//!   validation context and the deny list);
//! - listener (downstream) secrets over ADS; cluster (upstream) secrets over
//!   plain SDS (`api_config_source`): ADS in a static cluster's transport
//!   socket crashes Envoy 1.40;
//! - `enable_reuse_port: false` on listeners, admin on 127.0.0.1 port 0.
//!
//! Revocation (SPEC §5) reaches three kinds of traffic differently:
//!
//! - **new TLS handshakes**: the CRLs in the validation context (SDS) refuse a
//!   revoked certificate on every listener, HTTP or TCP;
//! - **requests on already-open HTTP connections**: every inbound HTTP
//!   listener has the deny-list filter [`DENY_FILTER`] first in its HCM chain,
//!   an HTTP RBAC filter whose config trustmesh pushes over ECDS on the same ADS
//!   stream (deny by URI SAN; revoked serials by the `Hash=` of
//!   `x-forwarded-client-cert`, which `SANITIZE_SET` makes trustworthy); the
//!   next request of a denied peer gets 403, no other connection is drained.
//!   HTTP connections also end after [`MAX_CONNECTION_SECS`];
//! - **already-open raw TCP connections** (`--tcp-listener`): nothing pushed
//!   over xDS can cut them without draining every connection of the listener,
//!   so the TCP proxy closes each after [`MAX_TCP_CONNECTION_SECS`]: a revoked
//!   peer's open TCP connection lives at most that long.

use crate::domain::text;
use serde_json::{Value, json};

use crate::domain::SpiffeId;

mod parse;

pub use parse::parse_server_url;

/// Name of the cluster that reaches trustmesh.
pub const SDS_CLUSTER: &str = "trustmesh_sds";
/// HTTP connections are closed after this long, so a peer re-handshakes (and
/// meets the current CRL) at least this often.
pub const MAX_CONNECTION_SECS: u32 = 3600;
/// Raw TCP connections (`--tcp-listener`) are closed after this long
/// (`max_downstream_connection_duration`): the bound on how long a revoked or
/// denied peer keeps an already-open TCP connection (new handshakes are
/// refused by the CRL at once).
pub const MAX_TCP_CONNECTION_SECS: u32 = 600;
/// Name of the deny-list HTTP filter in every inbound HTTP listener, and of
/// the ECDS resource (`TypedExtensionConfig`) trustmesh serves for it; its
/// only accepted config type is [`RBAC_TYPE`].
pub use super::deny::{DENY_FILTER, RBAC_TYPE};

/// Everything a bootstrap is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub node_id: String,
    pub cluster: String,
    pub server: SdsServer,
    /// DELTA_GRPC instead of GRPC.
    pub delta: bool,
    /// Secret name of the own certificate: `default` or a SPIFFE ID.
    pub certificate: String,
    /// Secret name of the validation context: `ROOTCA`, `ALL` or `spiffe://<td>`.
    pub validation: String,
    /// Node metadata `disable_spiffe_cert_validation: true` (`trusted_ca` + `crl`).
    pub disable_spiffe_cert_validation: bool,
    /// Address the inbound listeners bind.
    pub bind: String,
    pub listeners: Vec<Listener>,
    /// Inbound mTLS listeners that proxy raw TCP to the backend.
    pub tcp_listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
    /// Where inbound listeners forward (with the peer in `x-forwarded-client-cert`);
    /// `None`: they answer 200 themselves.
    pub backend: Option<(String, u16)>,
    /// `max_requests_per_connection: 1` on upstream clusters, so each request
    /// makes a new TLS handshake (rotation and revocation probes need it).
    pub new_connection_per_request: bool,
}

/// How Envoy reaches trustmesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdsServer {
    /// The local socket (peer credentials attest the caller).
    Socket(String),
    /// The TLS port with a bearer token. The server is recognised by its
    /// identity (`spiffe://<td>/trustmesh/server`, `server_id`), not by `host`.
    Tls { host: String, port: u16, token: String, ca_file: String, server_id: String },
}

/// An inbound mTLS listener (HTTP, or raw TCP for `tcp_listeners`):
/// `NAME:PORT:SPIFFE_ID[,SPIFFE_ID…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub allowed: Vec<SpiffeId>,
}

/// An outbound route: a plain HTTP listener on 127.0.0.1:`port` whose cluster
/// originates mTLS to `host:target_port`, accepting only the `allowed` IDs:
/// `NAME:PORT:HOST:TARGET_PORT:SPIFFE_ID[,SPIFFE_ID…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub port: u16,
    pub host: String,
    pub target_port: u16,
    pub allowed: Vec<SpiffeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
    #[error(transparent)]
    Id(#[from] crate::domain::DomainError),
    #[error("duplicate name {0:?}: listener and upstream names must be unique")]
    Duplicate(String),
}

pub(crate) fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> BootstrapError {
    BootstrapError::Invalid { what, value: text::shorten(value, 200), reason: reason.into() }
}

/// The bootstrap as a JSON value.
pub fn render(b: &Bootstrap) -> Result<Value, BootstrapError> {
    validate(b)?;
    let mut node = json!({"id": b.node_id, "cluster": b.cluster});
    if b.disable_spiffe_cert_validation {
        node["metadata"] = json!({ super::wire::DISABLE_SPIFFE_VALIDATION: true });
    }
    let mut listeners: Vec<Value> = b.listeners.iter().map(|l| inbound(b, l)).collect();
    listeners.extend(b.tcp_listeners.iter().map(|l| inbound_tcp(b, l)));
    listeners.extend(b.upstreams.iter().map(outbound_listener));
    let mut clusters = vec![sds_cluster(&b.server)];
    clusters.extend(b.upstreams.iter().map(|u| outbound_cluster(b, u)));
    if let Some((host, port)) = &b.backend {
        clusters.push(cluster("backend", host, *port));
    }
    let mut config = json!({
        "node": node,
        "admin": {"address": address("127.0.0.1", 0)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    if !b.listeners.is_empty() || !b.tcp_listeners.is_empty() {
        let ads = json!({
            "api_type": api_type(b.delta),
            "transport_api_version": "V3",
            "set_node_on_first_message_only": true,
            "grpc_services": [grpc_service(&b.server)],
        });
        config["dynamic_resources"] = json!({"ads_config": ads});
    }
    Ok(config)
}

/// YAML (default) or JSON text, with `header` as leading comment lines (YAML only).
pub fn to_text(config: &Value, json: bool, header: &str) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(config).unwrap_or_default();
        s.push('\n');
        return s;
    }
    let mut out: String = header.lines().map(|l| format!("# {l}").trim_end().to_string() + "\n").collect();
    out.push_str(&super::yaml::to_yaml(config));
    out
}

fn validate(b: &Bootstrap) -> Result<(), BootstrapError> {
    if b.node_id.is_empty() || b.node_id.len() > 256 || b.node_id.chars().any(char::is_control) {
        return Err(invalid("node id", &b.node_id, "must be 1-256 printable characters"));
    }
    if b.listeners.is_empty() && b.tcp_listeners.is_empty() && b.upstreams.is_empty() {
        return Err(invalid("bootstrap", "", "give at least one --listener, --tcp-listener or --upstream"));
    }
    if let (Some(l), None) = (b.tcp_listeners.first(), &b.backend) {
        return Err(invalid("TCP listener", &l.name, "a --tcp-listener forwards to --backend HOST:PORT: give one"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let inbound = b.listeners.iter().chain(&b.tcp_listeners).map(|l| &l.name);
    for name in inbound.chain(b.upstreams.iter().map(|u| &u.name)) {
        if !seen.insert(name.as_str()) || name == SDS_CLUSTER || name == "backend" {
            return Err(BootstrapError::Duplicate(name.clone()));
        }
    }
    let cert_ok = b.certificate == "default" || SpiffeId::parse(&b.certificate).is_ok();
    if !cert_ok {
        return Err(invalid("certificate secret name", &b.certificate, "expected default or a SPIFFE ID"));
    }
    let v = &b.validation;
    let validation_ok = v == "ROOTCA"
        || v == "ALL"
        || crate::domain::TrustDomain::parse(v.strip_prefix("spiffe://").unwrap_or("/")).is_ok();
    if !validation_ok {
        return Err(invalid("validation secret name", v, "expected ROOTCA, ALL or spiffe://<trust-domain>"));
    }
    Ok(())
}

fn api_type(delta: bool) -> &'static str {
    if delta { "DELTA_GRPC" } else { "GRPC" }
}

fn address(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn grpc_service(server: &SdsServer) -> Value {
    let mut g = json!({"envoy_grpc": {
        "cluster_name": SDS_CLUSTER,
        "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"}},
    }});
    if let SdsServer::Tls { token, .. } = server {
        g["initial_metadata"] = json!([{"key": "authorization", "value": format!("Bearer {token}")}]);
    }
    g
}

/// `sds_config` for listener secrets: ADS.
fn ads_source() -> Value {
    json!({"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"})
}

/// `sds_config` for cluster secrets: plain SDS (ADS here crashes Envoy 1.40).
fn api_source(b: &Bootstrap) -> Value {
    json!({
        "api_config_source": {
            "api_type": api_type(b.delta),
            "transport_api_version": "V3",
            "set_node_on_first_message_only": true,
            "grpc_services": [grpc_service(&b.server)],
        },
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
    })
}

/// Certificate and validation context from SDS; only `allowed` URI SANs pass.
fn common_tls(b: &Bootstrap, allowed: &[SpiffeId], source: Value) -> Value {
    let sans: Vec<Value> =
        allowed.iter().map(|id| json!({"san_type": "URI", "matcher": {"exact": id.to_string()}})).collect();
    json!({
        "tls_certificate_sds_secret_configs": [{"name": b.certificate, "sds_config": source}],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": sans},
            "validation_context_sds_secret_config": {"name": b.validation, "sds_config": source},
        },
    })
}

fn hcm(stat_prefix: &str, routes: Value, inbound: bool) -> Value {
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
    let filters = if inbound { json!([deny_filter(), router]) } else { json!([router]) };
    let mut h = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"name": stat_prefix, "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}]},
        "http_filters": filters,
    });
    if inbound {
        h["common_http_protocol_options"] = json!({"max_connection_duration": format!("{MAX_CONNECTION_SECS}s")});
        // The peer's certificate as Envoy verified it, in a header no client
        // can forge (SANITIZE_SET replaces what came in): `By=…;Hash=<SHA-256
        // of the peer certificate's DER>;URI=<SPIFFE ID>`. The backend reads
        // the caller from it, and the deny list matches revoked serials on
        // `Hash=`.
        h["forward_client_cert_details"] = json!("SANITIZE_SET");
        h["set_current_client_cert_details"] = json!({"uri": true});
    }
    json!([{"name": "envoy.filters.network.http_connection_manager", "typed_config": h}])
}

/// The deny-list filter: an HTTP RBAC filter whose config trustmesh pushes
/// over ECDS (resource [`DENY_FILTER`], on the ADS stream that carries the
/// secrets). It comes first, so a denied peer never reaches another filter.
fn deny_filter() -> Value {
    json!({
        "name": DENY_FILTER,
        "config_discovery": {
            // `initial_fetch_timeout: 0s`: the listener waits for the deny list
            // as it waits for its SVID (same stream, same server), so an Envoy
            // never serves with a list it has not received. A finite timeout
            // would only matter when trustmesh serves the certificates but not
            // the deny list, and would then serve with the default below
            // silently; waiting fails closed and shows (`/ready` 503,
            // `extension_config_discovery.http_filter.trustmesh-deny-http.*`).
            // Envoy still goes on after a rejected (NACKed) first list, with
            // the default, and keeps the last accepted list while trustmesh is
            // unreachable.
            "config_source": ads_source(),
            // Deny nothing: used when trustmesh removes the resource or Envoy
            // rejects the first one; the CRLs still refuse revoked certificates
            // at the handshake. Never applied without warming.
            "default_config": {"@type": RBAC_TYPE, "rules": {"action": "DENY"}},
            "type_urls": [RBAC_TYPE],
        },
    })
}

fn inbound(b: &Bootstrap, l: &Listener) -> Value {
    let routes = match &b.backend {
        Some(_) => json!([{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "15s"}}]),
        None => json!([{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": format!("trustmesh listener {}\n", l.name)}},
            "response_headers_to_add": [{"header": {"key": "x-peer-spiffe-id", "value": "%DOWNSTREAM_PEER_URI_SAN%"}}],
        }]),
    };
    mtls_listener(b, l, hcm(&l.name, routes, true))
}

/// A raw TCP mTLS listener to the backend. Its connections are cut after
/// [`MAX_TCP_CONNECTION_SECS`]: the deny list cannot reach inside them.
fn inbound_tcp(b: &Bootstrap, l: &Listener) -> Value {
    let filters = json!([{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": l.name,
        "cluster": "backend",
        "max_downstream_connection_duration": format!("{MAX_TCP_CONNECTION_SECS}s"),
    }}]);
    mtls_listener(b, l, filters)
}

/// An inbound listener on `b.bind` whose one filter chain requires a client
/// certificate ([`downstream_tls`]) in front of `filters`.
fn mtls_listener(b: &Bootstrap, l: &Listener, filters: Value) -> Value {
    json!({
        "name": l.name,
        "address": address(&b.bind, l.port),
        "enable_reuse_port": false,
        "filter_chains": [{
            "transport_socket": downstream_tls(b, l),
            "filters": filters,
        }],
    })
}

/// TLS with the SVID, requiring a client certificate with an allowed ID.
fn downstream_tls(b: &Bootstrap, l: &Listener) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": common_tls(b, &l.allowed, ads_source()),
    }})
}

fn outbound_listener(u: &Upstream) -> Value {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": u.name, "timeout": "15s"}}]);
    json!({
        "name": u.name,
        "address": address("127.0.0.1", u.port),
        "enable_reuse_port": false,
        "filter_chains": [{"filters": hcm(&u.name, routes, false)}],
    })
}

fn outbound_cluster(b: &Bootstrap, u: &Upstream) -> Value {
    let mut c = cluster(&u.name, &u.host, u.target_port);
    c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common_tls(b, &u.allowed, api_source(b)),
    }});
    if b.new_connection_per_request {
        c["typed_extension_protocol_options"] = http_options(json!({
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }));
    }
    c
}

fn http_options(options: Value) -> Value {
    let mut o = json!({"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"});
    if let (Some(target), Value::Object(fields)) = (o.as_object_mut(), options) {
        target.extend(fields);
    }
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o})
}

/// A cluster of one endpoint: STATIC for an IP address, LOGICAL_DNS for a name.
fn cluster(name: &str, host: &str, port: u16) -> Value {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "name": name,
        "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address(host, port)}}
        ]}]},
    })
}

fn sds_cluster(server: &SdsServer) -> Value {
    let h2 = http_options(json!({"explicit_http_config": {"http2_protocol_options": {}}}));
    match server {
        SdsServer::Socket(path) => json!({
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": h2,
            "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": path}}}}
            ]}]},
        }),
        SdsServer::Tls { host, port, ca_file, server_id, .. } => {
            let is_ip = host.parse::<std::net::IpAddr>().is_ok();
            // Only the Transport CA signs the server's identity: a workload
            // certificate that carries the dialled DNS name is refused.
            let mut tls = json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": ca_file},
                        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": server_id}}],
                    },
                },
            });
            if !is_ip {
                tls["sni"] = json!(host);
            }
            let mut c = cluster(SDS_CLUSTER, host, *port);
            c["typed_extension_protocol_options"] = h2;
            c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": tls});
            c
        }
    }
}

#[cfg(test)]
mod tests;
