//! Envoy v3 bootstraps for the tests, built as JSON (which is YAML) so paths
//! and tokens are always quoted correctly.
//!
//! Topology: a client-side Envoy with a plain HTTP listener whose cluster
//! originates mTLS (`max_requests_per_connection: 1`, so each request is a new
//! handshake) to a server-side Envoy whose listener requires and validates a
//! client certificate, checks the client's SPIFFE ID, and forwards to the
//! upstream with `x-forwarded-client-cert` (`SANITIZE_SET`, `URI=`).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const SDS_CLUSTER: &str = "trustmesh_sds";
pub const SERVER_LISTENER: &str = "mtls_in";
pub const CLIENT_LISTENER: &str = "plain_out";

/// Where an Envoy gets its certificate and trust bundle.
#[derive(Clone, Debug)]
pub enum Tls {
    /// PEM files on disk (no control plane).
    Files { cert: PathBuf, key: PathBuf, ca: PathBuf },
    /// SDS: the certificate secret `cert` and the validation context `validation`
    /// (e.g. `spiffe://example.org`, `ROOTCA`, `ALL`) from `source`.
    Sds { cert: String, validation: String, source: Value },
}

/// How Envoy reaches trustmesh's SDS.
#[derive(Clone, Debug)]
pub enum SdsServer {
    /// The local socket (callers attested by peer credentials).
    Socket(PathBuf),
    /// The TLS port, the bearer token in gRPC metadata, the server's
    /// certificate checked against `ca_file`.
    Tls { addr: std::net::SocketAddr, token: String, ca_file: PathBuf },
}

/// The `ConfigSource` of SDS secrets: plain SDS (GRPC or DELTA_GRPC) through
/// `SDS_CLUSTER`, waiting forever for the first secret, fast reconnects.
pub fn sds_source(server: &SdsServer, delta: bool) -> Value {
    // `envoy_grpc.retry_policy` is the back-off of xDS streams
    // (`GrpcService.retry_policy` is for data-plane gRPC clients).
    let mut grpc = json!({"envoy_grpc": {
        "cluster_name": SDS_CLUSTER,
        "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"}},
    }});
    if let SdsServer::Tls { token, .. } = server {
        grpc["initial_metadata"] = json!([{"key": "authorization", "value": format!("Bearer {token}")}]);
    }
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": if delta { "DELTA_GRPC" } else { "GRPC" },
            "transport_api_version": "V3",
            "set_node_on_first_message_only": true,
            "grpc_services": [grpc],
        },
    })
}

/// The static cluster that reaches trustmesh over HTTP/2.
pub fn sds_cluster(server: &SdsServer) -> Value {
    let h2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    });
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
        SdsServer::Tls { addr, ca_file, .. } => json!({
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": h2,
            "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": socket_address(&addr.ip().to_string(), addr.port())}}
            ]}]},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "validation_context": {"trusted_ca": {"filename": ca_file}},
                    },
                },
            },
        }),
    }
}

pub fn socket_address(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn admin() -> Value {
    json!({"address": socket_address("127.0.0.1", 0)})
}

/// The `CommonTlsContext` for `tls`, accepting only a peer whose URI SAN is
/// `peer_id`.
pub fn common_tls(tls: &Tls, peer_id: &str) -> Value {
    let san = json!([{"san_type": "URI", "matcher": {"exact": peer_id}}]);
    match tls {
        Tls::Files { cert, key, ca } => json!({
            "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
            "validation_context": {"trusted_ca": {"filename": ca}, "match_typed_subject_alt_names": san},
        }),
        Tls::Sds { cert, validation, source } => json!({
            "tls_certificate_sds_secret_configs": [{"name": cert, "sds_config": source}],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": san},
                "validation_context_sds_secret_config": {"name": validation, "sds_config": source},
            },
        }),
    }
}

fn router() -> Value {
    json!([{"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
}

fn route_to(cluster: &str) -> Value {
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "5s"}}
    ]}]})
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": socket_address("127.0.0.1", port)}}
        ]}]},
    })
}

/// The server-side Envoy: listener `SERVER_LISTENER` on 127.0.0.1:0 requires
/// a client certificate with URI SAN `client_id`, forwards to 127.0.0.1:
/// `upstream_port` with the client's SPIFFE ID in `x-forwarded-client-cert`.
pub fn server_side(node_id: &str, tls: &Tls, client_id: &str, upstream_port: u16, sds: Option<&SdsServer>) -> String {
    let mut clusters = vec![static_cluster("upstream", upstream_port)];
    if let Some(s) = sds {
        clusters.push(sds_cluster(s));
    }
    let bootstrap = json!({
        "node": {"id": node_id, "cluster": "trustmesh-test"},
        "admin": admin(),
        "static_resources": {
            "listeners": [{
                "name": SERVER_LISTENER,
                "address": socket_address("127.0.0.1", 0),
                "enable_reuse_port": false,
                "filter_chains": [{
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": common_tls(tls, client_id),
                    }},
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "forward_client_cert_details": "SANITIZE_SET",
                        "set_current_client_cert_details": {"uri": true},
                        "route_config": route_to("upstream"),
                        "http_filters": router(),
                    }}],
                }],
            }],
            "clusters": clusters,
        },
    });
    serde_json::to_string_pretty(&bootstrap).unwrap()
}

/// The client-side Envoy: plain HTTP listener `CLIENT_LISTENER` on
/// 127.0.0.1:0 whose cluster `to_server` originates mTLS to
/// 127.0.0.1:`server_port`, accepting only a server with URI SAN `server_id`,
/// one request per upstream connection.
pub fn client_side(node_id: &str, tls: &Tls, server_id: &str, server_port: u16, sds: Option<&SdsServer>) -> String {
    let mut to_server = static_cluster("to_server", server_port);
    to_server["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    });
    to_server["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common_tls(tls, server_id),
    }});
    let mut clusters = vec![to_server];
    if let Some(s) = sds {
        clusters.push(sds_cluster(s));
    }
    let bootstrap = json!({
        "node": {"id": node_id, "cluster": "trustmesh-test"},
        "admin": admin(),
        "static_resources": {
            "listeners": [{
                "name": CLIENT_LISTENER,
                "address": socket_address("127.0.0.1", 0),
                "enable_reuse_port": false,
                "filter_chains": [{
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "egress",
                        "route_config": route_to("to_server"),
                        "http_filters": router(),
                    }}],
                }],
            }],
            "clusters": clusters,
        },
    });
    serde_json::to_string_pretty(&bootstrap).unwrap()
}

/// A path as a string for a bootstrap or a placeholder.
pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
