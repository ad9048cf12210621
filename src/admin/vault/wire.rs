//! The PKI API's wire form: request bodies into issuer requests, answers
//! into Vault's JSON (`{"request_id", "data", "warnings", …}`) and errors
//! into `{"errors": [...]}` with Vault's status codes ([`status`], the one
//! mapping of issuer errors for this API).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::domain::profile::{field_bool, field_duration, field_list, field_string};
use crate::domain::text;
use crate::issuer::{IssuerError, ProfileIssued, ProfileRequest};
use crate::store::{CertRecord, CertStatus, StoreError};

/// How certificates come back (`format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Pem,
    /// The certificate field also holds the private key (issue) and the issuing CA.
    PemBundle,
    /// Base64 DER.
    Der,
}

/// Options of an `issue`/`sign` answer.
pub(super) struct Shape {
    pub format: Format,
    pub remove_roots: bool,
}

/// Fields `issue` and `sign` know; anything else is ignored with a warning.
const REQUEST_FIELDS: [&str; 10] = [
    "common_name",
    "alt_names",
    "ip_sans",
    "uri_sans",
    "ttl",
    "format",
    "private_key_format",
    "exclude_cn_from_sans",
    "remove_roots_from_chain",
    "csr",
];
/// Fields trustmesh refuses when they ask for something.
const UNSUPPORTED: [&str; 4] = ["other_sans", "user_ids", "serial_number", "not_after"];

/// An `issue` (no CSR) or `sign` body as a [`ProfileRequest`], with Vault's warnings.
pub(super) fn profile_request(
    mount: &str,
    role: &str,
    body: &Map<String, Value>,
    sign: bool,
) -> Result<(ProfileRequest, Shape, Vec<String>), String> {
    let text_of = |name: &str| body.get(name).map(|v| field_string(name, v)).transpose();
    let list_of = |name: &str| body.get(name).map(|v| field_list(name, v)).transpose();
    let flag = |name: &str| body.get(name).map(|v| field_bool(name, v)).transpose();
    for name in UNSUPPORTED {
        let asks = |v: &Value| match v {
            Value::Null => false,
            Value::String(s) => !s.trim().is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if body.get(name).is_some_and(asks) {
            return Err(format!("{name} is not supported by trustmesh"));
        }
    }
    let format = match text_of("format")?.as_deref() {
        None | Some("" | "pem") => Format::Pem,
        Some("pem_bundle") => Format::PemBundle,
        Some("der") => Format::Der,
        Some(other) => return Err(format!("unknown format {:?}: use pem, pem_bundle or der", text::quoted(other))),
    };
    match text_of("private_key_format")?.as_deref() {
        None | Some("" | "der" | "pkcs8") => {}
        Some(other) => return Err(format!("unknown private_key_format {:?}: use der or pkcs8", text::quoted(other))),
    }
    let csr = match (sign, text_of("csr")?) {
        (true, Some(csr)) if !csr.is_empty() => Some(csr.into_bytes()),
        (true, _) => return Err("the csr field is required".into()),
        (false, _) => None,
    };
    let request = ProfileRequest {
        mount: mount.to_string(),
        profile: role.to_string(),
        common_name: text_of("common_name")?.unwrap_or_default(),
        dns_names: list_of("alt_names")?.unwrap_or_default(),
        ip_sans: list_of("ip_sans")?.unwrap_or_default(),
        uri_sans: list_of("uri_sans")?.unwrap_or_default(),
        ttl_seconds: body.get("ttl").map(|v| field_duration("ttl", v)).transpose()?.unwrap_or(0),
        exclude_cn_from_sans: flag("exclude_cn_from_sans")?.unwrap_or(false),
        csr,
    };
    let shape = Shape { format, remove_roots: flag("remove_roots_from_chain")?.unwrap_or(false) };
    let mut ignored: Vec<String> = body
        .keys()
        .filter(|k| !REQUEST_FIELDS.contains(&k.as_str()) && !UNSUPPORTED.contains(&k.as_str()))
        .map(|k| text::quoted(k))
        .collect();
    let mut warnings = Vec::new();
    if !ignored.is_empty() {
        ignored.sort();
        warnings.push(format!("Endpoint ignored these unrecognized parameters: [{}]", ignored.join(" ")));
    }
    Ok((request, shape, warnings))
}

/// The `data` of an `issue` or `sign` answer.
pub(super) fn issued_data(issued: &ProfileIssued, shape: &Shape) -> Value {
    let encode = |pem: &str| if shape.format == Format::Der { pem_to_base64(pem) } else { pem.to_string() };
    let mut chain: Vec<&String> = issued.ca_chain.iter().collect();
    if shape.remove_roots && chain.len() > 1 {
        chain.pop();
    }
    let leaf = issued.issued.certificate.to_pem();
    let key = issued.private_key.as_ref().map(|k| k.to_pem());
    let certificate = match (shape.format, &key) {
        (Format::PemBundle, Some(k)) => format!("{}{leaf}{}", k.as_str(), issued.issuing_ca),
        (Format::PemBundle, None) => format!("{leaf}{}", issued.issuing_ca),
        _ => encode(&leaf),
    };
    let mut data = json!({
        "certificate": certificate,
        "issuing_ca": encode(&issued.issuing_ca),
        "ca_chain": chain.iter().map(|c| encode(c)).collect::<Vec<_>>(),
        "serial_number": vault_serial(&issued.issued.record.serial),
        "expiration": issued.issued.record.not_after,
    });
    if let (Some(k), Some(private)) = (&key, &issued.private_key) {
        data["private_key"] = json!(encode(k.as_str()));
        data["private_key_type"] = json!(private.type_name());
    }
    data
}

/// The `data` of `cert/:serial`.
pub(super) fn certificate_data(record: &CertRecord) -> Value {
    let revoked = (record.status == CertStatus::Revoked).then_some(record.revoked_at).flatten();
    json!({
        "certificate": crate::ca::cert_to_pem(&record.cert_der),
        "revocation_time": revoked.unwrap_or(0),
        "revocation_time_rfc3339": revoked.map(rfc3339).unwrap_or_default(),
        "issuer_id": record.issuer_id,
        "serial_number": vault_serial(&record.serial),
    })
}

/// The `data` of `revoke`.
pub(super) fn revoked_data(record: &CertRecord) -> Value {
    let at = record.revoked_at.unwrap_or(0);
    json!({ "revocation_time": at, "revocation_time_rfc3339": rfc3339(at), "state": "revoked" })
}

/// A serial as Vault writes it: lowercase hex octets joined by `:`.
pub(super) fn vault_serial(hex: &str) -> String {
    let padded = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex.to_string() };
    let octets: Vec<&str> = padded.as_bytes().chunks(2).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    octets.join(":")
}

fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// The base64 body of every PEM block, joined: DER in base64, as Vault's `format=der` gives it.
fn pem_to_base64(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect()
}

/// A 200 answer in Vault's envelope.
pub(super) fn ok(data: Value, warnings: Vec<String>) -> Response {
    let body = json!({
        "request_id": request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": null,
        "mount_type": "pki",
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Vault's answer to a write that returns nothing.
pub(super) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `{"errors": [message]}` (an empty list for a plain 404, as Vault gives it).
pub(super) fn error(status: StatusCode, message: Option<String>) -> Response {
    let errors: Vec<String> = message.into_iter().map(|m| text::shorten(&m, 2 * text::MAX_RECORDED)).collect();
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

/// PEM (or DER) with its content type.
pub(super) fn raw(content_type: &'static str, body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The one mapping from issuer errors to this API's status codes.
pub(super) fn status(err: &IssuerError) -> StatusCode {
    match err {
        IssuerError::Unauthenticated(_) | IssuerError::PermissionDenied(_) | IssuerError::Denied { .. } => {
            StatusCode::FORBIDDEN
        }
        IssuerError::InvalidArgument(_) | IssuerError::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        IssuerError::Ca(e) if e.is_bad_input() => StatusCode::BAD_REQUEST,
        IssuerError::Store(StoreError::Conflict { .. } | StoreError::Refused { .. }) => StatusCode::BAD_REQUEST,
        IssuerError::NotFound(_) | IssuerError::Store(StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
        IssuerError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal as Vault words it: `permission denied` first for 403s.
pub(super) fn refusal(err: &IssuerError) -> Response {
    let status = status(err);
    let message = match err {
        IssuerError::Unauthenticated(why) => format!("permission denied: {why}"),
        other => other.to_string(),
    };
    error(status, Some(message))
}

fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return String::new();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn request_bodies_read_as_vault_reads_them() {
        let (req, shape, warnings) = profile_request(
            "pki",
            "web",
            &body(json!({"common_name": "a.example.org", "alt_names": "b.example.org,c.example.org",
                "ip_sans": ["10.0.0.1"], "ttl": "1h", "format": "pem_bundle", "colour": 1})),
            false,
        )
        .unwrap();
        assert_eq!(req.dns_names, ["b.example.org", "c.example.org"]);
        assert_eq!((req.ttl_seconds, shape.format, req.csr), (3600, Format::PemBundle, None));
        assert_eq!(warnings, ["Endpoint ignored these unrecognized parameters: [colour]"]);
        for (fields, needle) in [
            (json!({"other_sans": "1.2.3.4;UTF8:x"}), "other_sans"),
            (json!({"format": "p12"}), "format"),
            (json!({"ttl": "soon"}), "ttl"),
            (json!({"alt_names": {"a": 1}}), "alt_names"),
            (json!({"exclude_cn_from_sans": "perhaps"}), "exclude_cn_from_sans"),
        ] {
            let err = profile_request("pki", "web", &body(fields.clone()), false).err().unwrap();
            assert!(err.contains(needle), "{fields}: {err}");
        }
        let err = profile_request("pki", "web", &body(json!({"common_name": "x"})), true).err().unwrap();
        assert!(err.contains("csr"), "{err}");
    }

    #[test]
    fn serials_and_der() {
        assert_eq!(vault_serial("1a2b3c"), "1a:2b:3c");
        assert_eq!(vault_serial("abc"), "0a:bc");
        let pem = "-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_to_base64(pem), "QUJDREVG");
        assert_eq!(status(&IssuerError::NotFound("x".into())), StatusCode::NOT_FOUND);
        assert_eq!(status(&IssuerError::Unauthenticated("x".into())), StatusCode::FORBIDDEN);
        let missing = IssuerError::Store(StoreError::NotFound { what: "CA x".into() });
        assert_eq!(status(&missing), StatusCode::NOT_FOUND);
        let refused = IssuerError::Store(StoreError::Refused { what: "CA x".into(), reason: "no".into() });
        assert_eq!(status(&refused), StatusCode::BAD_REQUEST);
    }
}
