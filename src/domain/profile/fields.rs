//! A Vault role body into a [`Profile`]. Vault clients send loosely typed
//! JSON (`"true"` for `true`, `"a.com,b.com"` for a list, `"8760h"` or
//! `3600` for a lifetime); each field is read the way Vault reads it, then
//! checked. Unknown fields are ignored with a warning, as Vault does; fields
//! trustmesh cannot honour are refused with a reason.

use serde_json::{Map, Value};

use super::{KeyType, MAX_PROFILE_LIST, Profile};
use crate::domain::text::quoted;

/// Longest lifetime a profile may name (10 years); the server's
/// `--max-cert-ttl` caps it further.
const MAX_PROFILE_TTL: u64 = 3650 * 86_400;
/// Longest backdating of notBefore.
const MAX_NOT_BEFORE: u64 = 86_400;

const KEY_USAGES: [&str; 5] =
    ["DigitalSignature", "KeyAgreement", "KeyEncipherment", "DataEncipherment", "ContentCommitment"];
const EXT_KEY_USAGES: [&str; 6] =
    ["ServerAuth", "ClientAuth", "CodeSigning", "EmailProtection", "TimeStamping", "OCSPSigning"];
const CN_VALIDATIONS: [&str; 3] = ["email", "hostname", "disabled"];

/// Fields Vault roles have that trustmesh accepts and does not act on
/// (they change nothing a client could observe here).
const ACCEPTED_AS_IS: [&str; 4] = ["signature_bits", "generate_lease", "use_pss", "allowed_domains_template"];

pub(super) fn parse(fields: &Map<String, Value>) -> Result<(Profile, Vec<String>), String> {
    let mut p = Profile::default();
    let mut warnings = Vec::new();
    let mut ignored = Vec::new();
    let mut key_bits: Option<u32> = None;
    for (name, value) in fields {
        let name = name.as_str();
        match name {
            "key_type" => p.key_type = key_type(value)?,
            "key_bits" => key_bits = Some(u32::try_from(integer(name, value)?).map_err(|_| too_big(name))?),
            "ttl" => p.ttl = lifetime(name, value)?,
            "max_ttl" => p.max_ttl = lifetime(name, value)?,
            "not_before_duration" => {
                p.not_before_duration = lifetime(name, value)?;
                if p.not_before_duration > MAX_NOT_BEFORE {
                    return Err(format!("not_before_duration is at most {MAX_NOT_BEFORE} s (one day)"));
                }
            }
            "allowed_domains" => p.allowed_domains = list(name, value)?,
            "allow_bare_domains" => p.allow_bare_domains = boolean(name, value)?,
            "allow_subdomains" => p.allow_subdomains = boolean(name, value)?,
            "allow_glob_domains" => p.allow_glob_domains = boolean(name, value)?,
            "allow_wildcard_certificates" => p.allow_wildcard_certificates = boolean(name, value)?,
            "allow_any_name" => p.allow_any_name = boolean(name, value)?,
            "allow_localhost" => p.allow_localhost = boolean(name, value)?,
            "enforce_hostnames" => p.enforce_hostnames = boolean(name, value)?,
            "allow_ip_sans" => p.allow_ip_sans = boolean(name, value)?,
            "allowed_ip_sans" => p.allowed_ip_sans = cidrs(list(name, value)?)?,
            "allowed_uri_sans" => p.allowed_uri_sans = uri_globs(list(name, value)?)?,
            "server_flag" => p.server_flag = boolean(name, value)?,
            "client_flag" => p.client_flag = boolean(name, value)?,
            "code_signing_flag" | "email_protection_flag" => {
                if boolean(name, value)? {
                    let eku = if name == "code_signing_flag" { "CodeSigning" } else { "EmailProtection" };
                    p.ext_key_usage.push(eku.to_string());
                }
            }
            "ext_key_usage" => p.ext_key_usage.extend(canonical(name, list(name, value)?, &EXT_KEY_USAGES)?),
            "key_usage" => p.key_usage = canonical(name, list(name, value)?, &KEY_USAGES)?,
            "require_cn" => p.require_cn = boolean(name, value)?,
            "cn_validations" => p.cn_validations = canonical(name, list(name, value)?, &CN_VALIDATIONS)?,
            "use_csr_common_name" => p.use_csr_common_name = boolean(name, value)?,
            "use_csr_sans" => p.use_csr_sans = boolean(name, value)?,
            "no_store" => p.no_store = boolean(name, value)?,
            "allowed_other_sans"
            | "allowed_serial_numbers"
            | "allowed_user_ids"
            | "ext_key_usage_oids"
            | "policy_identifiers" => {
                if !list(name, value)?.is_empty() {
                    return Err(format!("{name} is not supported by trustmesh"));
                }
            }
            "basic_constraints_valid_for_non_ca" | "allow_token_displayname" => {
                if boolean(name, value)? {
                    return Err(format!("{name} is not supported by trustmesh"));
                }
            }
            _ if ACCEPTED_AS_IS.contains(&name) => {}
            _ => ignored.push(quoted(name)),
        }
    }
    p.key_bits = key_size(p.key_type, key_bits)?;
    if p.max_ttl > 0 && p.ttl > p.max_ttl {
        return Err(format!("ttl ({} s) must not be longer than max_ttl ({} s)", p.ttl, p.max_ttl));
    }
    if p.cn_validations.len() > 1 && p.cn_validations.iter().any(|v| v == "disabled") {
        return Err("cn_validations: \"disabled\" cannot be combined with other validations".into());
    }
    p.ext_key_usage.sort();
    p.ext_key_usage.dedup();
    if !ignored.is_empty() {
        ignored.sort();
        warnings.push(format!("Endpoint ignored these unrecognized parameters: [{}]", ignored.join(" ")));
    }
    Ok((p, warnings))
}

fn key_type(value: &Value) -> Result<KeyType, String> {
    match string("key_type", value)?.to_ascii_lowercase().as_str() {
        "rsa" => Ok(KeyType::Rsa),
        "ec" => Ok(KeyType::Ec),
        "ed25519" => Ok(KeyType::Ed25519),
        "any" => Ok(KeyType::Any),
        other => Err(format!("key_type {:?} is not rsa, ec, ed25519 or any", quoted(other))),
    }
}

/// The key size, Vault's default for the type when not given (or 0).
fn key_size(kind: KeyType, bits: Option<u32>) -> Result<u32, String> {
    let bits = bits.unwrap_or(0);
    match (kind, bits) {
        (KeyType::Rsa, 0) => Ok(2048),
        (KeyType::Rsa, 2048 | 3072 | 4096) => Ok(bits),
        (KeyType::Rsa, _) => Err(format!("key_bits {bits} for rsa: use 2048, 3072 or 4096")),
        (KeyType::Ec, 0) => Ok(256),
        (KeyType::Ec, 256 | 384) => Ok(bits),
        (KeyType::Ec, _) => Err(format!("key_bits {bits} for ec: use 256 (P-256) or 384 (P-384)")),
        (KeyType::Ed25519 | KeyType::Any, _) => Ok(0),
    }
}

/// A boolean as Vault reads one: `true`, `"true"`, `"1"`, `1`, ….
pub fn boolean(name: &str, value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => Ok(true),
            "false" | "0" | "f" | "" => Ok(false),
            _ => Err(format!("{name}: {:?} is not a boolean", quoted(s))),
        },
        Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => Ok(n.as_u64() == Some(1)),
        _ => Err(format!("{name}: expected a boolean")),
    }
}

/// A string (a number is taken as its text), trimmed.
pub fn string(name: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{name}: expected a string")),
    }
}

fn integer(name: &str, value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("{name}: expected a non-negative whole number")),
        Value::String(s) => s.trim().parse().map_err(|_| format!("{name}: {:?} is not a whole number", quoted(s))),
        _ => Err(format!("{name}: expected a whole number")),
    }
}

fn too_big(name: &str) -> String {
    format!("{name}: the number is too large")
}

/// A list: a JSON array of strings, or one comma-separated string.
pub fn list(name: &str, value: &Value) -> Result<Vec<String>, String> {
    let items: Vec<String> = match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                let s = string(name, v)?;
                if !s.is_empty() {
                    out.push(s);
                }
            }
            out
        }
        _ => return Err(format!("{name}: expected a list of strings")),
    };
    if items.len() > MAX_PROFILE_LIST {
        return Err(format!("{name}: {} entries, at most {MAX_PROFILE_LIST}", items.len()));
    }
    if let Some(long) = items.iter().find(|s| s.len() > 2048) {
        return Err(format!("{name}: an entry of {} bytes is too long", long.len()));
    }
    Ok(items)
}

/// A lifetime in whole seconds: a number (seconds) or a duration such as
/// `8760h`, `30m`, `1h30m`, `45s`, `7d`.
pub fn lifetime(name: &str, value: &Value) -> Result<u64, String> {
    let seconds = match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("{name}: expected a non-negative duration"))?,
        Value::String(s) => parse_duration(s).map_err(|e| format!("{name}: {e}"))?,
        Value::Null => 0,
        _ => return Err(format!("{name}: expected a duration such as \"1h\" or a number of seconds")),
    };
    if seconds > MAX_PROFILE_TTL {
        return Err(format!("{name}: {seconds} s is longer than ten years"));
    }
    Ok(seconds)
}

/// A duration as Vault writes it: whole seconds (`3600`), or numbers with the
/// units `s`, `m`, `h`, `d` (`1h30m`). Empty is 0.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("{:?} is not a duration (e.g. 3600, \"90s\", \"1h30m\", \"8760h\")", quoted(text));
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Each value as spelled in `known` (matched without regard to case or `_`).
fn canonical(name: &str, values: Vec<String>, known: &[&str]) -> Result<Vec<String>, String> {
    let norm = |s: &str| s.replace('_', "").to_ascii_lowercase();
    let mut out = Vec::new();
    for v in values {
        let found = known
            .iter()
            .find(|k| norm(k) == norm(&v))
            .ok_or_else(|| format!("{name}: {:?} is not supported (use {})", quoted(&v), known.join(", ")))?;
        if !out.iter().any(|o: &String| o == found) {
            out.push((*found).to_string());
        }
    }
    Ok(out)
}

fn cidrs(values: Vec<String>) -> Result<Vec<String>, String> {
    for v in &values {
        super::rules::parse_cidr(v).map_err(|e| format!("allowed_ip_sans: {e}"))?;
    }
    Ok(values)
}

fn uri_globs(values: Vec<String>) -> Result<Vec<String>, String> {
    for v in &values {
        if !v.starts_with("spiffe://") {
            return Err(format!(
                "allowed_uri_sans: {:?} is not a SPIFFE ID pattern; trustmesh certifies spiffe:// URIs only",
                quoted(v)
            ));
        }
    }
    Ok(values)
}
