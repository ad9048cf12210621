//! What a request must meet under a profile: its names (common name, DNS,
//! IP and URI SANs), its key, and its lifetime. The checks and their
//! messages follow Vault's (`common name … not allowed by this role`), so a
//! Vault client's error handling sees what it expects.

use std::fmt;
use std::net::IpAddr;

use super::{KeyType, Profile};
use crate::domain::text::quoted;

/// A subject key as a profile judges it. Displayed as the CLI and metrics
/// name key types: `EC-P256`, `RSA-2048`, `Ed25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// An EC key on P-256 (256) or P-384 (384).
    Ec(u32),
    /// An RSA key of this many bits.
    Rsa(u32),
    Ed25519,
}

impl fmt::Display for KeyShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ec(bits) => write!(f, "EC-P{bits}"),
            Self::Rsa(bits) => write!(f, "RSA-{bits}"),
            Self::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// The lifetime a request gets, and the warning Vault gives when it clamped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetime {
    pub seconds: u64,
    pub warning: Option<String>,
}

impl Profile {
    /// The key `issue` generates.
    pub fn generated_key(&self) -> Result<KeyShape, String> {
        match self.key_type {
            KeyType::Rsa => Ok(KeyShape::Rsa(self.key_bits)),
            KeyType::Ec => Ok(KeyShape::Ec(self.key_bits)),
            KeyType::Ed25519 => Ok(KeyShape::Ed25519),
            KeyType::Any => Err(
                "role key type \"any\" is only for signing CSRs; issue needs a role with key type rsa, ec or ed25519"
                    .into(),
            ),
        }
    }

    /// Whether a CSR's key fits: the role's type, RSA at least its size, EC its curve.
    pub fn accepts_key(&self, key: KeyShape) -> Result<(), String> {
        let want = match self.key_type {
            KeyType::Any => return Ok(()),
            KeyType::Ed25519 => "an Ed25519 key".to_string(),
            KeyType::Rsa => format!("an RSA key of at least {} bits", self.key_bits),
            KeyType::Ec => format!("an EC P-{} key", self.key_bits),
        };
        match (self.key_type, key) {
            (KeyType::Rsa, KeyShape::Rsa(bits)) if bits >= self.key_bits => Ok(()),
            (KeyType::Ec, KeyShape::Ec(bits)) if bits == self.key_bits => Ok(()),
            (KeyType::Ed25519, KeyShape::Ed25519) => Ok(()),
            _ => Err(format!("the CSR's key is {key}; this role requires {want}")),
        }
    }

    /// `requested` seconds (0: the role's `ttl`, else `default_ttl`), at most
    /// the role's `max_ttl` and `server_max`; longer is clamped with Vault's warning.
    pub fn lifetime(&self, requested: u64, default_ttl: u64, server_max: u64) -> Lifetime {
        let max = if self.max_ttl == 0 { server_max } else { self.max_ttl.min(server_max) };
        let wanted = match (requested, self.ttl) {
            (0, 0) => default_ttl,
            (0, ttl) => ttl,
            (r, _) => r,
        };
        if wanted <= max {
            return Lifetime { seconds: wanted, warning: None };
        }
        Lifetime {
            seconds: max,
            warning: Some(format!(
                "TTL \"{wanted}s\" is longer than permitted maxTTL \"{max}s\", so maxTTL is being used"
            )),
        }
    }

    /// A DNS SAN, or a common name checked as a host name.
    pub fn allows_dns_name(&self, name: &str) -> Result<(), String> {
        let refused = || Err(format!("subject alternate name {} not allowed by this role", quoted(name)));
        let wildcard = name.starts_with("*.");
        if wildcard && !self.allow_wildcard_certificates {
            return refused();
        }
        let host = name.strip_prefix("*.").unwrap_or(name);
        if self.enforce_hostnames && !is_hostname(host) {
            return refused();
        }
        if self.allow_any_name {
            return Ok(());
        }
        if self.allow_localhost && (host == "localhost" || host == "localhost.localdomain") && !wildcard {
            return Ok(());
        }
        for domain in &self.allowed_domains {
            if self.allow_bare_domains && name.eq_ignore_ascii_case(domain) {
                return Ok(());
            }
            let suffix = format!(".{}", domain.trim_start_matches("*."));
            if self.allow_subdomains && name.len() > suffix.len() && name.to_ascii_lowercase().ends_with(&suffix) {
                return Ok(());
            }
            if self.allow_glob_domains && domain.contains('*') && glob(domain, name) {
                return Ok(());
            }
        }
        refused()
    }

    /// A common name: anything when `cn_validations` is `disabled`, else a
    /// host name (or an email address whose domain is) the role allows.
    pub fn allows_common_name(&self, cn: &str) -> Result<(), String> {
        let validates = |v: &str| self.cn_validations.iter().any(|x| x == v);
        if validates("disabled") {
            return Ok(());
        }
        let as_host = validates("hostname") && self.allows_dns_name(cn).is_ok();
        let as_email = validates("email")
            && cn
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && self.allows_dns_name(domain).is_ok());
        if as_host || as_email { Ok(()) } else { Err(format!("common name {} not allowed by this role", quoted(cn))) }
    }

    /// An IP SAN: when `allow_ip_sans`, inside one of `allowed_ip_sans` (any when none).
    pub fn allows_ip(&self, ip: IpAddr) -> Result<(), String> {
        if !self.allow_ip_sans {
            return Err(format!("IP Subject Alternative Names are not allowed in this role, but was provided {ip}"));
        }
        if self.allowed_ip_sans.is_empty() {
            return Ok(());
        }
        let inside = self.allowed_ip_sans.iter().filter_map(|c| parse_cidr(c).ok()).any(|net| net.contains(ip));
        if inside { Ok(()) } else { Err(format!("IP Subject Alternative Name {ip} not allowed by this role")) }
    }

    /// A URI SAN: it must match one of `allowed_uri_sans` (globs over SPIFFE IDs).
    pub fn allows_uri(&self, uri: &str) -> Result<(), String> {
        if self.allowed_uri_sans.is_empty() {
            return Err("URI Subject Alternative Names are not allowed in this role".into());
        }
        if self.allowed_uri_sans.iter().any(|pattern| glob(pattern, uri)) {
            Ok(())
        } else {
            Err(format!("URI Subject Alternative Name {} not allowed by this role", quoted(uri)))
        }
    }

    /// The extended key usages of its certificates, in the order Vault writes them.
    pub fn extended_key_usages(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if self.server_flag {
            out.push("ServerAuth");
        }
        if self.client_flag {
            out.push("ClientAuth");
        }
        for extra in &self.ext_key_usage {
            if !out.contains(&extra.as_str()) {
                out.push(extra);
            }
        }
        out
    }
}

/// Letters, digits and `-` in labels of 1 to 63 characters not starting or
/// ending with `-`, at most 253 characters in all.
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `*` matches any run of characters (dots included), as Vault's globs do.
pub(crate) fn glob(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, vi));
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// An IP network: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if width != addr_width {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == addr & mask
    }
}

pub(crate) fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let bad = || format!("{:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)", quoted(text));
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(bad());
    }
    Ok(Cidr { network, prefix })
}
