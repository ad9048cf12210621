//! SPIFFE IDs and trust domains, validated as the SPIFFE ID specification says.
//!
//! The parsing rules come from the `spiffe` crate; on top of them we refuse what
//! the crate would silently normalise (an uppercase scheme or trust domain), so
//! that the ID an operator typed is exactly the ID in a certificate.

use std::fmt;
use std::str::FromStr;

use super::DomainError;
use super::text::quoted;

/// Longest SPIFFE ID accepted (the SPIFFE spec recommends at most 2048 bytes).
pub const MAX_ID_LEN: usize = 2048;

/// The path under which trustmesh names its own components: the server
/// (`/trustmesh/server`) and node agents (`/trustmesh/agent/<node>`). Only
/// the Transport CA signs such identities, and never for a CSR, an entry or
/// a generated certificate: a certificate that chains to the bundle and
/// carries `spiffe://<td>/trustmesh/server` is the server.
pub const RESERVED_PATH: &str = "/trustmesh";

/// A valid SPIFFE ID, `spiffe://<trust-domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(spiffe::SpiffeId);

/// A valid, lowercase SPIFFE trust domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(spiffe::TrustDomain);

impl SpiffeId {
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let fail = |reason: &str| DomainError::SpiffeId { value: quoted(value), reason: reason.to_string() };
        if value.len() > MAX_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        let rest =
            value.strip_prefix("spiffe://").ok_or_else(|| fail("must start with \"spiffe://\" (lowercase scheme)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail("trust domain must be lowercase"));
        }
        let id = spiffe::SpiffeId::new(value).map_err(|e| fail(&e.to_string()))?;
        if id.path().is_empty() {
            return Err(fail("a workload ID needs a path after the trust domain"));
        }
        Ok(Self(id))
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.0.trust_domain().clone())
    }

    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// The last path segment (`node-a` of `spiffe://td/node/node-a`).
    pub fn last_segment(&self) -> &str {
        self.0.path().rsplit('/').next().unwrap_or_default()
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.0.is_member_of(&td.0)
    }

    /// `spiffe://<td>/trustmesh/server`: the identity of the trustmesh server
    /// of `td`, the only one its clients accept on the TLS port.
    pub fn server(td: &TrustDomain) -> Result<Self, DomainError> {
        Self::parse(&format!("{}{RESERVED_PATH}/server", td.id_string()))
    }

    /// Whether the path is under [`RESERVED_PATH`].
    pub fn is_reserved(&self) -> bool {
        let path = self.path();
        path == RESERVED_PATH || path.strip_prefix(RESERVED_PATH).is_some_and(|rest| rest.starts_with('/'))
    }
}

impl TrustDomain {
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let fail = |reason: &str| DomainError::TrustDomain { value: quoted(value), reason: reason.to_string() };
        if value.contains('/') || value.contains(':') {
            return Err(fail("give the bare name, e.g. example.org"));
        }
        if value.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail("must be lowercase"));
        }
        spiffe::TrustDomain::new(value).map(Self).map_err(|e| fail(&e.to_string()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// `spiffe://<name>`, the ID of the trust domain itself.
    pub fn id_string(&self) -> String {
        self.0.id_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl FromStr for SpiffeId {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_valid_ids() {
        for s in ["spiffe://example.org/svc/a", "spiffe://td-1.x_y/a/b.c/d-e_f"] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/node/node-a").unwrap();
        assert_eq!(id.last_segment(), "node-a");
        assert_eq!(id.trust_domain().as_str(), "example.org");
    }

    #[test]
    fn refuses_invalid_ids_with_reason() {
        let cases = [
            ("spiffe://Example.org/a", "lowercase"),
            ("SPIFFE://example.org/a", "spiffe://"),
            ("spiffe://example.org/a/../b", "dot segments"),
            ("spiffe://example.org/a//b", "empty segments"),
            ("spiffe://example.org/a/", "trailing slash"),
            ("spiffe://example.org", "path"),
            ("spiffe://example.org:8080/a", "trust domain"),
            ("spiffe://user@example.org/a", "trust domain"),
            ("spiffe://example.org/a?q=1", "path segment"),
            ("spiffe://example.org/a#f", "path segment"),
            ("https://example.org/a", "spiffe://"),
            ("", "spiffe://"),
        ];
        for (input, needle) in cases {
            let err = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(3000));
        assert!(SpiffeId::parse(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(TrustDomain::parse("example.org").unwrap().id_string(), "spiffe://example.org");
        assert!(TrustDomain::parse("Example.org").is_err());
        assert!(TrustDomain::parse("spiffe://example.org").is_err());
        assert!(TrustDomain::parse("").is_err());
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        assert!(id.is_member_of(&TrustDomain::parse("example.org").unwrap()));
        assert!(!id.is_reserved());
        assert!(!id.is_member_of(&TrustDomain::parse("other.org").unwrap()));
    }

    #[test]
    fn the_server_identity_and_its_siblings_are_reserved() {
        let td = TrustDomain::parse("example.org").unwrap();
        let server = SpiffeId::server(&td).unwrap();
        assert_eq!(server.to_string(), "spiffe://example.org/trustmesh/server");
        for reserved in [
            "spiffe://example.org/trustmesh/server",
            "spiffe://example.org/trustmesh/agent/n1",
            "spiffe://example.org/trustmesh",
        ] {
            assert!(SpiffeId::parse(reserved).unwrap().is_reserved(), "{reserved}");
        }
        for free in ["spiffe://example.org/trustmeshx/server", "spiffe://example.org/svc/trustmesh/server"] {
            assert!(!SpiffeId::parse(free).unwrap().is_reserved(), "{free}");
        }
    }
}
