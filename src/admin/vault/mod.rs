//! The OpenBao/Vault-compatible PKI API on the TLS port (SPEC §15):
//! `/v1/<mount>/…` for each configured mount, so a Vault client (hvac, the
//! `vault`/`bao` CLI, …) pointed at trustmesh keeps working.
//!
//! | path | methods | what |
//! |---|---|---|
//! | `issue/:role` | POST, PUT | a certificate and a key the server makes |
//! | `sign/:role` | POST, PUT | the caller's CSR signed |
//! | `revoke` | POST, PUT | `Issuer::revoke`, as everywhere else |
//! | `cert/:serial` | GET | one certificate (`cert/ca`, `cert/ca_chain`, `cert/crl` too) |
//! | `certs` | LIST | the mount's serials |
//! | `ca`, `ca/pem`, `ca_chain`, `crl`, `crl/pem` | GET | CA material, no token needed (public, as in Vault) |
//! | `roles` | LIST | the mount's profiles |
//! | `roles/:role` | GET, POST, PUT, DELETE | one profile |
//!
//! `LIST` is also `GET …?list=true`. Every other call carries a trustmesh
//! token in `X-Vault-Token` (or `Authorization: Bearer`), is decided by
//! Cedar in the issuer and audited there, refusals included: an unknown
//! path (404), a method the path does not take (405), a body that is not a
//! JSON object (400) or is larger than [`MAX_BODY`] (413).
//!
//! The mount's default issuer (`ca`, `crl`) is the profiles CA;
//! `ca_chain` holds every CA a certificate of the mount can chain to.

mod wire;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use serde_json::{Map, Value, json};

use crate::attest::{TlsPeer, vault_token};
use crate::issuer::{AuditAction, Caller, Credentials, Issuer};
use crate::policy::Action;

/// Largest request body read (a CSR is at most 64 KiB).
pub const MAX_BODY: usize = 256 * 1024;

/// How long `revoke` waits for the CRLs that list the serial.
const PUBLISHED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The `/v1/…` routes.
pub fn routes(issuer: Arc<Issuer>) -> Router {
    Router::new().route("/v1/{*path}", any(handle)).with_state(issuer)
}

/// What a path under a mount names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Issue(&'a str),
    Sign(&'a str),
    Revoke,
    Cert(&'a str),
    Certs,
    Ca,
    CaPem,
    CaChain,
    Crl,
    CrlPem,
    Roles,
    Role(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Read,
    List,
    Write,
    Delete,
}

impl<'a> Endpoint<'a> {
    fn parse(rest: &'a str) -> Option<Self> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let one = |prefix: &str| rest.strip_prefix(prefix).filter(|n| !n.is_empty() && !n.contains('/'));
        Some(match rest {
            "revoke" => Self::Revoke,
            "certs" => Self::Certs,
            "ca" | "cert/ca" => Self::Ca,
            "ca/pem" => Self::CaPem,
            "ca_chain" | "cert/ca_chain" => Self::CaChain,
            "crl" => Self::Crl,
            "crl/pem" | "cert/crl" => Self::CrlPem,
            "roles" => Self::Roles,
            _ => {
                if let Some(role) = one("issue/") {
                    Self::Issue(role)
                } else if let Some(role) = one("sign/") {
                    Self::Sign(role)
                } else if let Some(serial) = one("cert/") {
                    Self::Cert(serial)
                } else {
                    Self::Role(one("roles/")?)
                }
            }
        })
    }

    fn public(self) -> bool {
        matches!(self, Self::Ca | Self::CaPem | Self::CaChain | Self::Crl | Self::CrlPem)
    }

    fn allows(self, verb: Verb) -> bool {
        match self {
            Self::Issue(_) | Self::Sign(_) | Self::Revoke => verb == Verb::Write,
            Self::Certs | Self::Roles => verb == Verb::List,
            Self::Role(_) => verb != Verb::List,
            _ => verb == Verb::Read,
        }
    }

    /// What a refusal of this call is audited as.
    fn action(self, verb: Verb) -> AuditAction {
        AuditAction::Policy(match self {
            Self::Issue(_) => Action::IssueCertificate,
            Self::Sign(_) => Action::SignCsr,
            Self::Revoke => Action::RevokeCertificate,
            Self::Roles | Self::Role(_) if matches!(verb, Verb::Write | Verb::Delete) => Action::ManageProfiles,
            Self::Roles | Self::Role(_) => Action::ReadProfiles,
            _ => Action::ReadCertificates,
        })
    }
}

fn verb(method: &Method, query: Option<&str>) -> Option<Verb> {
    let listing = query.is_some_and(|q| q.split('&').any(|kv| kv == "list=true"));
    match method.as_str() {
        "GET" if listing => Some(Verb::List),
        "GET" => Some(Verb::Read),
        "LIST" => Some(Verb::List),
        "POST" | "PUT" => Some(Verb::Write),
        "DELETE" => Some(Verb::Delete),
        _ => None,
    }
}

async fn handle(State(issuer): State<Arc<Issuer>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Clients escape what they put in a path (hvac writes a serial's `:` as `%3A`).
    let path = percent_decoded(parts.uri.path().strip_prefix("/v1/").unwrap_or_default());
    let (mount, rest) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let known_mount = issuer.config().mounts.iter().any(|m| m == mount);
    let endpoint = if known_mount { Endpoint::parse(rest) } else { None };
    let verb = verb(&parts.method, parts.uri.query());
    if let (Some(e), Some(v)) = (endpoint, verb)
        && e.public()
        && e.allows(v)
    {
        return public(&issuer, e);
    }
    let action = match (endpoint, verb) {
        (Some(e), Some(v)) => e.action(v),
        _ => AuditAction::PkiApi,
    };
    let creds = Credentials {
        bearer: vault_token(&parts.headers),
        peer_cert_der: parts.extensions.get::<TlsPeer>().and_then(|p| p.certificate.clone()),
    };
    let caller = match issuer.authenticate(&creds, action).await {
        Ok(c) => c,
        Err(e) => return wire::refusal(&e),
    };
    let target = format!("/v1/{}", crate::domain::text::quoted(&path));
    let Some(endpoint) = endpoint else {
        let err = issuer.reject(&caller, AuditAction::PkiApi, &target, "unsupported path".into()).await;
        return wire::error(StatusCode::NOT_FOUND, Some(format!("1 error occurred: {}", err_text(&err))));
    };
    let Some(verb) = verb.filter(|v| endpoint.allows(*v)) else {
        let why = format!("unsupported operation: {} {target}", parts.method);
        let err = issuer.reject(&caller, AuditAction::PkiApi, &target, why).await;
        return wire::error(StatusCode::METHOD_NOT_ALLOWED, Some(err_text(&err)));
    };
    let fields = match verb {
        Verb::Write => match read_body(body).await {
            Ok(fields) => fields,
            Err((status, why)) => {
                let err = issuer.reject(&caller, AuditAction::PkiApi, &target, why).await;
                return wire::error(status, Some(err_text(&err)));
            }
        },
        _ => Map::new(),
    };
    let call = Call { issuer: &issuer, caller: &caller, mount };
    call.dispatch(endpoint, verb, &fields).await
}

/// `%XX` escapes decoded; an escape that is not one, or that does not
/// decode to UTF-8, is kept as it was (and names no endpoint).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

fn err_text(err: &crate::issuer::IssuerError) -> String {
    err.to_string()
}

/// The body as a JSON object (empty: `{}`).
async fn read_body(body: Body) -> Result<Map<String, Value>, (StatusCode, String)> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        (StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than the {MAX_BODY} bytes accepted"))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err((StatusCode::BAD_REQUEST, "failed to parse JSON input: the body is not a JSON object".into())),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("failed to parse JSON input: {e}"))),
    }
}

/// CA material anyone may read.
fn public(issuer: &Issuer, endpoint: Endpoint<'_>) -> Response {
    let snapshot = issuer.snapshot();
    let ca = issuer.pki_issuer_certificate();
    let chain_pem = format!("{}{}", snapshot.profiles.bundle_pem, snapshot.bundle_pem);
    match endpoint {
        Endpoint::Ca => wire::raw("application/pkix-cert", ca.der.clone()),
        Endpoint::CaPem => wire::raw("application/pem-certificate-chain", ca.to_pem().into_bytes()),
        Endpoint::CaChain => wire::raw("application/pem-certificate-chain", chain_pem.into_bytes()),
        Endpoint::Crl => match snapshot.crl_of(&ca.fingerprint) {
            Some(crl) => wire::raw("application/pkix-crl", crl.der.clone()),
            None => wire::error(StatusCode::NOT_FOUND, Some("no CRL is published for the issuer yet".into())),
        },
        _ => {
            let pem = format!("{}{}", snapshot.profiles.crl_pem, snapshot.crl_pem);
            wire::raw("application/x-pem-file", pem.into_bytes())
        }
    }
}

/// One authenticated call.
struct Call<'a> {
    issuer: &'a Issuer,
    caller: &'a Caller,
    mount: &'a str,
}

impl Call<'_> {
    async fn dispatch(&self, endpoint: Endpoint<'_>, verb: Verb, fields: &Map<String, Value>) -> Response {
        let result = match (endpoint, verb) {
            (Endpoint::Issue(role), _) => self.issue(role, fields, false).await,
            (Endpoint::Sign(role), _) => self.issue(role, fields, true).await,
            (Endpoint::Revoke, _) => self.revoke(fields).await,
            (Endpoint::Cert(serial), _) => self.certificate(&serial.replace([':', '-'], "")).await,
            (Endpoint::Certs, _) => self.certificates().await,
            (Endpoint::Roles, _) => self.roles().await,
            (Endpoint::Role(role), Verb::Read) => self.role(role).await,
            (Endpoint::Role(role), Verb::Delete) => self.delete_role(role).await,
            (Endpoint::Role(role), _) => self.write_role(role, fields).await,
            _ => Ok(wire::error(StatusCode::METHOD_NOT_ALLOWED, Some("unsupported operation".into()))),
        };
        result.unwrap_or_else(|e| wire::refusal(&e))
    }

    async fn issue(&self, role: &str, fields: &Map<String, Value>, sign: bool) -> Result<Response, Refused> {
        let action = AuditAction::Policy(if sign { Action::SignCsr } else { Action::IssueCertificate });
        let (request, shape, mut warnings) = match wire::profile_request(self.mount, role, fields, sign) {
            Ok(parsed) => parsed,
            Err(why) => return Err(self.issuer.reject(self.caller, action, role, why).await),
        };
        let issued = self.issuer.issue_with_profile(self.caller, &request).await?;
        warnings.extend(issued.warnings.iter().cloned());
        Ok(wire::ok(wire::issued_data(&issued, &shape), warnings))
    }

    async fn revoke(&self, fields: &Map<String, Value>) -> Result<Response, Refused> {
        const ACTION: AuditAction = AuditAction::Policy(Action::RevokeCertificate);
        let serial = match fields.get("serial_number").map(|v| crate::domain::profile::field_string("serial_number", v))
        {
            Some(Ok(s)) if !s.is_empty() => s.replace([':', '-'], ""),
            Some(Err(why)) => return Err(self.issuer.reject(self.caller, ACTION, "", why).await),
            _ => {
                let why = "the serial_number field is required (revoking by certificate is not supported)".to_string();
                return Err(self.issuer.reject(self.caller, ACTION, "", why).await);
            }
        };
        let (record, _already) = self.issuer.revoke(self.caller, &serial, "").await.map_err(|e| match e {
            // Vault answers an unknown serial with 400, not 404.
            crate::issuer::IssuerError::NotFound(why) => crate::issuer::IssuerError::InvalidArgument(why),
            other => other,
        })?;
        // As Vault's revoke rebuilds the CRL before it answers, the answer
        // waits until the CRLs that list the serial are published (the
        // revocation is durable already; a slow publication delays only this).
        let _ = tokio::time::timeout(PUBLISHED_WITHIN, self.issuer.published()).await;
        Ok(wire::ok(wire::revoked_data(&record), Vec::new()))
    }

    async fn certificate(&self, serial: &str) -> Result<Response, Refused> {
        Ok(match self.issuer.certificate(self.caller, serial).await? {
            Some(record) => wire::ok(wire::certificate_data(&record), Vec::new()),
            None => wire::error(StatusCode::NOT_FOUND, None),
        })
    }

    async fn certificates(&self) -> Result<Response, Refused> {
        let list = self.issuer.mount_certificates(self.caller, self.mount).await?;
        let keys: Vec<String> = list.iter().map(|c| wire::vault_serial(&c.serial)).collect();
        Ok(listing(keys))
    }

    async fn roles(&self) -> Result<Response, Refused> {
        Ok(listing(self.issuer.list_profiles(self.caller, self.mount).await?))
    }

    async fn role(&self, role: &str) -> Result<Response, Refused> {
        match self.issuer.read_profile(self.caller, self.mount, role).await {
            Ok(profile) => Ok(wire::ok(serde_json::to_value(&*profile).unwrap_or_default(), Vec::new())),
            Err(crate::issuer::IssuerError::NotFound(_)) => Ok(wire::error(StatusCode::NOT_FOUND, None)),
            Err(e) => Err(e),
        }
    }

    async fn write_role(&self, role: &str, fields: &Map<String, Value>) -> Result<Response, Refused> {
        let (profile, warnings) = self.issuer.put_profile(self.caller, self.mount, role, fields).await?;
        Ok(wire::ok(serde_json::to_value(&profile).unwrap_or_default(), warnings))
    }

    async fn delete_role(&self, role: &str) -> Result<Response, Refused> {
        self.issuer.delete_profile(self.caller, self.mount, role).await?;
        Ok(wire::no_content())
    }
}

type Refused = crate::issuer::IssuerError;

/// `{"keys": [...]}`, or Vault's empty 404.
fn listing(keys: Vec<String>) -> Response {
    if keys.is_empty() {
        return wire::error(StatusCode::NOT_FOUND, None);
    }
    wire::ok(json!({ "keys": keys }), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        assert_eq!(Endpoint::parse("issue/web"), Some(Endpoint::Issue("web")));
        assert_eq!(Endpoint::parse("roles/"), Some(Endpoint::Roles));
        assert_eq!(Endpoint::parse("cert/1a:2b"), Some(Endpoint::Cert("1a:2b")));
        assert_eq!(Endpoint::parse("cert/ca_chain"), Some(Endpoint::CaChain));
        for unknown in ["", "issue/", "issue/a/b", "config/urls", "roles/a/b", "tidy"] {
            assert_eq!(Endpoint::parse(unknown), None, "{unknown}");
        }
        let list = Method::from_bytes(b"LIST").unwrap_or(Method::GET);
        assert_eq!(verb(&list, None), Some(Verb::List));
        assert_eq!(verb(&Method::GET, Some("list=true")), Some(Verb::List));
        assert_eq!(verb(&Method::PATCH, None), None);
        assert!(Endpoint::Issue("web").allows(Verb::Write) && !Endpoint::Issue("web").allows(Verb::Read));
        assert!(Endpoint::Role("web").allows(Verb::Delete) && !Endpoint::Role("web").allows(Verb::List));
        assert!(Endpoint::Certs.allows(Verb::List) && !Endpoint::Certs.allows(Verb::Read));
        assert_eq!(percent_decoded("pki/cert/1a%3A2b%3a3c"), "pki/cert/1a:2b:3c");
        assert_eq!(percent_decoded("pki/%zz/%4"), "pki/%zz/%4");
    }
}
