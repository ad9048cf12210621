#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use serde_json::{Value, json};

use super::rules::glob;
use super::*;

fn profile(fields: Value) -> Profile {
    let Value::Object(map) = fields else { unreachable!() };
    Profile::from_fields(&map).unwrap().0
}

fn refused(fields: Value) -> String {
    let Value::Object(map) = fields else { unreachable!() };
    Profile::from_fields(&map).unwrap_err()
}

#[test]
fn an_empty_body_gives_vaults_defaults_and_a_profile_round_trips_as_json() {
    let p = profile(json!({}));
    assert_eq!(p, Profile::default());
    assert_eq!((p.key_type, p.key_bits, p.not_before_duration), (KeyType::Rsa, 2048, 30));
    assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
}

#[test]
fn loosely_typed_fields_are_read_as_vault_reads_them() {
    let p = profile(json!({
        "key_type": "EC", "key_bits": "384", "ttl": "1h", "max_ttl": 86400,
        "allowed_domains": "keystore.internal, example.org", "allow_subdomains": "true",
        "server_flag": false, "client_flag": "1", "key_usage": ["digital_signature"],
        "not_before_duration": "45s", "allowed_uri_sans": ["spiffe://example.org/tenant/*"],
        "cn_validations": "disabled", "ext_key_usage": "timestamping",
    }));
    assert_eq!((p.key_type, p.key_bits, p.ttl, p.max_ttl), (KeyType::Ec, 384, 3600, 86400));
    assert_eq!(p.allowed_domains, ["keystore.internal", "example.org"]);
    assert!(p.allow_subdomains && !p.server_flag && p.client_flag);
    assert_eq!(p.key_usage, ["DigitalSignature"]);
    assert_eq!(p.extended_key_usages(), ["ClientAuth", "TimeStamping"]);
    assert_eq!(p.not_before_duration, 45);
    let Value::Object(map) = json!({"ttl": "1h", "colour": "blue"}) else { unreachable!() };
    let (_, warnings) = Profile::from_fields(&map).unwrap();
    assert_eq!(warnings, ["Endpoint ignored these unrecognized parameters: [colour]"]);
}

#[test]
fn what_trustmesh_cannot_honour_is_refused_with_the_field_named() {
    for (fields, needle) in [
        (json!({"key_type": "dsa"}), "key_type"),
        (json!({"key_type": "rsa", "key_bits": 1024}), "2048, 3072 or 4096"),
        (json!({"key_type": "ec", "key_bits": 521}), "256 (P-256) or 384"),
        (json!({"ttl": "2h", "max_ttl": "1h"}), "max_ttl"),
        (json!({"ttl": "forever"}), "ttl"),
        (json!({"ttl": "100000d"}), "ten years"),
        (json!({"key_usage": ["CertSign"]}), "key_usage"),
        (json!({"ext_key_usage": ["Any"]}), "ext_key_usage"),
        (json!({"allowed_uri_sans": ["https://example.org/*"]}), "spiffe://"),
        (json!({"allowed_ip_sans": ["10.0.0.0/33"]}), "allowed_ip_sans"),
        (json!({"allowed_other_sans": ["1.2.3;utf8:x"]}), "not supported"),
        (json!({"allow_any_name": "maybe"}), "allow_any_name"),
        (json!({"allowed_domains": 7}), "allowed_domains"),
        (json!({"cn_validations": ["disabled", "email"]}), "disabled"),
        (json!({"not_before_duration": "2d"}), "one day"),
    ] {
        let err = refused(fields.clone());
        assert!(err.contains(needle), "{fields}: {err}");
    }
}

#[test]
fn durations() {
    for (text, secs) in [("", 0), ("3600", 3600), ("90s", 90), ("1h30m", 5400), ("8760h", 31_536_000), ("7d", 604_800)]
    {
        assert_eq!(parse_duration(text).unwrap(), secs, "{text}");
    }
    for bad in ["1y", "h", "10 m", "-5", "1.5h", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn names_follow_the_domain_rules() {
    let p = profile(json!({"allowed_domains": ["keystore.internal"], "allow_subdomains": true}));
    p.allows_dns_name("tenant-1.keystore.internal").unwrap();
    p.allows_dns_name("*.keystore.internal").unwrap();
    assert!(p.allows_dns_name("keystore.internal").is_err(), "bare domain needs allow_bare_domains");
    assert!(p.allows_dns_name("evil-keystore.internal").is_err());
    assert!(p.allows_dns_name("x.keystore.internal.evil.org").is_err());
    assert!(p.allows_dns_name("bad_name.keystore.internal").is_err(), "enforce_hostnames");
    p.allows_dns_name("localhost").unwrap();
    let glob_role = profile(json!({"allowed_domains": ["tenant-*"], "allow_glob_domains": true}));
    glob_role.allows_common_name("tenant-acme-corp-12345").unwrap();
    let err = glob_role.allows_common_name("acme-corp-12345").unwrap_err();
    assert_eq!(err, "common name acme-corp-12345 not allowed by this role");
    let free = profile(json!({"cn_validations": ["disabled"]}));
    free.allows_common_name("Acme Corp, tenant 12345").unwrap();
    let email = profile(json!({"allowed_domains": ["example.org"], "allow_bare_domains": true}));
    email.allows_common_name("ops@example.org").unwrap();
    assert!(email.allows_common_name("ops@example.com").is_err());
    let any = profile(json!({"allow_any_name": true, "allow_wildcard_certificates": false}));
    any.allows_dns_name("anything.example").unwrap();
    assert!(any.allows_dns_name("*.example").is_err());
}

#[test]
fn ip_and_uri_sans() {
    let p = profile(json!({"allowed_ip_sans": "10.0.0.0/8, ::1", "allowed_uri_sans": "spiffe://example.org/t/*"}));
    p.allows_ip("10.1.2.3".parse::<IpAddr>().unwrap()).unwrap();
    p.allows_ip("::1".parse::<IpAddr>().unwrap()).unwrap();
    assert!(p.allows_ip("192.168.0.1".parse::<IpAddr>().unwrap()).is_err());
    assert!(p.allows_ip("::2".parse::<IpAddr>().unwrap()).is_err());
    let none = profile(json!({"allow_ip_sans": false}));
    assert!(none.allows_ip("10.0.0.1".parse::<IpAddr>().unwrap()).unwrap_err().contains("not allowed"));
    p.allows_uri("spiffe://example.org/t/acme").unwrap();
    assert!(p.allows_uri("spiffe://example.org/u/acme").is_err());
    assert!(none.allows_uri("spiffe://example.org/t/acme").is_err());
    assert!(glob("a*b*c", "aXXbYYc") && glob("*", "") && !glob("a*c", "ab") && glob("spiffe://x/*", "spiffe://x/a/b"));
}

#[test]
fn keys_and_lifetimes() {
    let ec = profile(json!({"key_type": "ec"}));
    assert_eq!(ec.generated_key().unwrap(), KeyShape::Ec(256));
    ec.accepts_key(KeyShape::Ec(256)).unwrap();
    assert!(ec.accepts_key(KeyShape::Ec(384)).is_err());
    assert!(ec.accepts_key(KeyShape::Rsa(4096)).unwrap_err().contains("EC P-256"));
    let rsa = profile(json!({"key_type": "rsa", "key_bits": 3072}));
    rsa.accepts_key(KeyShape::Rsa(4096)).unwrap();
    assert!(rsa.accepts_key(KeyShape::Rsa(2048)).is_err());
    let any = profile(json!({"key_type": "any"}));
    any.accepts_key(KeyShape::Ed25519).unwrap();
    assert!(any.generated_key().is_err());

    let p = profile(json!({"ttl": "1h", "max_ttl": "2h"}));
    assert_eq!(p.lifetime(0, 600, 86_400), Lifetime { seconds: 3600, warning: None });
    assert_eq!(p.lifetime(1800, 600, 86_400).seconds, 1800);
    let clamped = p.lifetime(10_000, 600, 86_400);
    assert_eq!(clamped.seconds, 7200);
    assert!(clamped.warning.unwrap().contains("maxTTL is being used"));
    assert_eq!(profile(json!({})).lifetime(0, 600, 86_400).seconds, 600, "no ttl: the server's");
    assert_eq!(profile(json!({})).lifetime(999_999, 600, 86_400).seconds, 86_400, "the server's maximum");
}

#[test]
fn profile_references() {
    let r = ProfileRef::new("pki_client_certs", "tenant-client").unwrap();
    assert_eq!(r.to_string(), "pki_client_certs/tenant-client");
    for (mount, name) in [("", "a"), ("pki", ""), ("p/k", "a"), ("pki", ".hidden"), ("pki", &"n".repeat(129))] {
        assert!(ProfileRef::new(mount, name).is_err(), "{mount}/{name}");
    }
}
