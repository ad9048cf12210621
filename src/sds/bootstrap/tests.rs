//! The bootstrap generator: the wiring Envoy 1.40 needs (envoy-notes.md),
//! per transport and protocol variant, and refusals of bad input.

use serde_json::Value;

use super::*;

fn base(server: SdsServer) -> Bootstrap {
    Bootstrap {
        node_id: "node-a".into(),
        cluster: "trustmesh".into(),
        server,
        delta: false,
        certificate: "spiffe://example.org/a".into(),
        validation: "spiffe://example.org".into(),
        disable_spiffe_cert_validation: false,
        bind: "127.0.0.1".into(),
        listeners: vec!["in:0:spiffe://example.org/b,spiffe://example.org/c".parse().unwrap()],
        tcp_listeners: vec![],
        upstreams: vec!["out:10080:backend.example:8443:spiffe://example.org/b".parse().unwrap()],
        backend: None,
        new_connection_per_request: false,
    }
}

fn socket() -> SdsServer {
    SdsServer::Socket("/tmp/trustmesh/public/api.sock".into())
}

fn listener(v: &Value) -> &Value {
    &v["static_resources"]["listeners"][0]
}

fn cluster<'a>(v: &'a Value, name: &str) -> &'a Value {
    let clusters = v["static_resources"]["clusters"].as_array().unwrap();
    clusters.iter().find(|c| c["name"] == name).unwrap()
}

fn tls_context(socket_owner: &Value) -> &Value {
    &socket_owner["transport_socket"]["typed_config"]["common_tls_context"]
}

#[test]
fn listener_secrets_use_ads_and_cluster_secrets_plain_sds() {
    let v = render(&base(socket())).unwrap();
    let ads = &v["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "GRPC");
    assert_eq!(ads["set_node_on_first_message_only"], true);
    let retry = &ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"];
    assert_eq!((retry["base_interval"].as_str(), retry["max_interval"].as_str()), (Some("0.1s"), Some("0.5s")));

    let down = tls_context(&listener(&v)["filter_chains"][0]);
    let cert = &down["tls_certificate_sds_secret_configs"][0];
    assert_eq!(cert["name"], "spiffe://example.org/a");
    assert!(cert["sds_config"]["ads"].is_object());
    assert_eq!(cert["sds_config"]["initial_fetch_timeout"], "0s");
    let combined = &down["combined_validation_context"];
    assert_eq!(combined["validation_context_sds_secret_config"]["name"], "spiffe://example.org");
    let sans = combined["default_validation_context"]["match_typed_subject_alt_names"].as_array().unwrap();
    assert_eq!(sans.len(), 2);
    assert_eq!(sans[1]["matcher"]["exact"], "spiffe://example.org/c");
    let tls = &listener(&v)["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(tls["require_client_certificate"], true);
    assert_eq!(listener(&v)["enable_reuse_port"], false);

    let up = tls_context(cluster(&v, "out"));
    let source = &up["tls_certificate_sds_secret_configs"][0]["sds_config"];
    assert!(source.get("ads").is_none(), "ADS in a static cluster crashes Envoy 1.40");
    assert_eq!(source["api_config_source"]["api_type"], "GRPC");
    assert_eq!(source["api_config_source"]["set_node_on_first_message_only"], true);
    assert_eq!(source["initial_fetch_timeout"], "0s");
    assert_eq!(cluster(&v, "out")["type"], "LOGICAL_DNS");
    assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 0);
}

#[test]
fn the_sds_cluster_speaks_http2_to_the_socket_or_the_tls_port() {
    let v = render(&base(socket())).unwrap();
    let sds = cluster(&v, SDS_CLUSTER);
    let opts = &sds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
    let endpoint = &sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
    assert_eq!(endpoint["address"]["pipe"]["path"], "/tmp/trustmesh/public/api.sock");

    let server = SdsServer::Tls {
        host: "127.0.0.1".into(),
        port: 4020,
        token: "tok".into(),
        ca_file: "/ca.pem".into(),
        server_id: "spiffe://example.org/trustmesh/server".into(),
    };
    let v = render(&base(server)).unwrap();
    let sds = cluster(&v, SDS_CLUSTER);
    assert_eq!(sds["type"], "STATIC");
    let ctx = tls_context(sds);
    assert_eq!(ctx["alpn_protocols"][0], "h2");
    assert_eq!(ctx["validation_context"]["trusted_ca"]["filename"], "/ca.pem");
    // The server is recognised by its identity, never by the dialled name.
    let san = &ctx["validation_context"]["match_typed_subject_alt_names"][0];
    assert_eq!(san["san_type"], "URI");
    assert_eq!(san["matcher"]["exact"], "spiffe://example.org/trustmesh/server");
    let grpc = &v["dynamic_resources"]["ads_config"]["grpc_services"][0];
    assert_eq!(grpc["initial_metadata"][0]["key"], "authorization");
    assert_eq!(grpc["initial_metadata"][0]["value"], "Bearer tok");
    let up = tls_context(cluster(&v, "out"));
    let api = &up["tls_certificate_sds_secret_configs"][0]["sds_config"]["api_config_source"];
    assert_eq!(api["grpc_services"][0]["initial_metadata"][0]["value"], "Bearer tok");
}

#[test]
fn delta_metadata_backend_and_fresh_connections() {
    let mut b = base(socket());
    b.delta = true;
    b.disable_spiffe_cert_validation = true;
    b.backend = Some(("127.0.0.1".into(), 8080));
    b.new_connection_per_request = true;
    let v = render(&b).unwrap();
    assert_eq!(v["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
    let up = tls_context(cluster(&v, "out"));
    assert_eq!(
        up["tls_certificate_sds_secret_configs"][0]["sds_config"]["api_config_source"]["api_type"],
        "DELTA_GRPC"
    );
    assert_eq!(v["node"]["metadata"]["disable_spiffe_cert_validation"], true);
    let hcm = &listener(&v)["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
    assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"], "backend");
    assert_eq!(cluster(&v, "backend")["type"], "STATIC");
    let opts = &cluster(&v, "out")["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(opts["common_http_protocol_options"]["max_requests_per_connection"], 1);
}

fn hcm_of(listener: &Value) -> &Value {
    &listener["filter_chains"][0]["filters"][0]["typed_config"]
}

#[test]
fn inbound_http_listeners_get_the_deny_filter_first() {
    for backend in [None, Some(("127.0.0.1".to_string(), 8080))] {
        let mut b = base(socket());
        b.backend = backend;
        let v = render(&b).unwrap();
        let hcm = hcm_of(listener(&v));
        let filters = hcm["http_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0]["name"], DENY_FILTER);
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        let discovery = &filters[0]["config_discovery"];
        assert!(discovery["config_source"]["ads"].is_object(), "on the ADS stream of the secrets");
        assert_eq!(discovery["config_source"]["resource_api_version"], "V3");
        assert_eq!(discovery["config_source"]["initial_fetch_timeout"], "0s");
        assert_eq!(discovery["type_urls"], serde_json::json!([RBAC_TYPE]));
        assert_eq!(discovery["default_config"], serde_json::json!({"@type": RBAC_TYPE, "rules": {"action": "DENY"}}));
        assert!(discovery.get("apply_default_config_without_warming").is_none());
        // XFCC with the hash and the URI, whatever came from the client replaced.
        assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
        assert_eq!(hcm["set_current_client_cert_details"]["uri"], true);
        let max = &hcm["common_http_protocol_options"]["max_connection_duration"];
        assert_eq!(max.as_str(), Some(format!("{MAX_CONNECTION_SECS}s").as_str()));
    }
    // Outbound listeners are plain HTTP from the local app: no deny filter.
    let v = render(&base(socket())).unwrap();
    let out = &v["static_resources"]["listeners"][1];
    assert_eq!(out["name"], "out");
    let filters = hcm_of(out)["http_filters"].as_array().unwrap();
    assert_eq!(filters.len(), 1);
    assert!(hcm_of(out).get("forward_client_cert_details").is_none());
}

#[test]
fn tcp_listeners_proxy_to_the_backend_with_a_bounded_connection_life() {
    let mut b = base(socket());
    b.listeners.clear();
    b.upstreams.clear();
    b.tcp_listeners = vec!["raw:7000:spiffe://example.org/b".parse().unwrap()];
    assert!(render(&b).unwrap_err().to_string().contains("--backend"));
    b.backend = Some(("127.0.0.1".into(), 8080));
    let v = render(&b).unwrap();
    let l = listener(&v);
    assert_eq!(l["name"], "raw");
    assert_eq!(l["enable_reuse_port"], false);
    let chain = &l["filter_chains"][0];
    assert_eq!(chain["transport_socket"]["typed_config"]["require_client_certificate"], true);
    let sans = &tls_context(chain)["combined_validation_context"]["default_validation_context"];
    assert_eq!(sans["match_typed_subject_alt_names"][0]["matcher"]["exact"], "spiffe://example.org/b");
    let tcp = &chain["filters"][0];
    assert_eq!(tcp["name"], "envoy.filters.network.tcp_proxy");
    assert_eq!(tcp["typed_config"]["cluster"], "backend");
    let max = tcp["typed_config"]["max_downstream_connection_duration"].as_str();
    assert_eq!(max, Some(format!("{MAX_TCP_CONNECTION_SECS}s").as_str()));
    // Its secrets come over ADS, so the bootstrap has an ADS stream.
    assert_eq!(v["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    let mut dup = b.clone();
    dup.listeners = vec!["raw:0:spiffe://example.org/b".parse().unwrap()];
    assert_eq!(render(&dup).unwrap_err(), BootstrapError::Duplicate("raw".into()));
}

#[test]
fn only_upstreams_need_no_ads() {
    let mut b = base(socket());
    b.listeners.clear();
    let v = render(&b).unwrap();
    assert!(v.get("dynamic_resources").is_none());
}

#[test]
fn bad_input_is_refused_with_the_value_named() {
    let cases: [(&str, Result<Listener, BootstrapError>); 4] = [
        ("in:80", "in:80".parse()),
        ("bad name", "bad name:80:spiffe://example.org/a".parse()),
        ("99999", "in:99999:spiffe://example.org/a".parse()),
        ("spiffe://Example.org/a", "in:80:spiffe://Example.org/a".parse()),
    ];
    for (value, got) in cases {
        assert!(got.unwrap_err().to_string().contains(value), "{value}");
    }
    let e = "out:1:h:0:spiffe://example.org/a".parse::<Upstream>().unwrap_err();
    assert!(e.to_string().contains("must be 1-65535"), "{e}");
    assert!("out:1:[::1]:80:spiffe://example.org/a".parse::<Upstream>().is_err());
    assert_eq!(parse_server_url("https://localhost:4020/").unwrap(), ("localhost".into(), 4020));
    assert_eq!(parse_server_url("https://ca.example").unwrap(), ("ca.example".into(), 4020));
    assert!(parse_server_url("http://localhost:4020").unwrap_err().to_string().contains("https://"));
    assert!(parse_server_url("https://a/b").is_err());

    let mut b = base(socket());
    b.upstreams[0].name = "in".into();
    assert_eq!(render(&b).unwrap_err(), BootstrapError::Duplicate("in".into()));
    let mut b = base(socket());
    b.validation = "spiffe://example.org/not-a-td".into();
    assert!(render(&b).unwrap_err().to_string().contains("validation secret name"));
    let mut b = base(socket());
    b.node_id = String::new();
    assert!(render(&b).unwrap_err().to_string().contains("node id"));
}

#[test]
fn yaml_has_the_header_and_json_parses() {
    let v = render(&base(socket())).unwrap();
    let yaml = to_text(&v, false, "line one\nline two");
    assert!(yaml.starts_with("# line one\n# line two\n"));
    assert!(yaml.contains("initial_fetch_timeout: \"0s\""));
    let json = to_text(&v, true, "ignored");
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
}
