//! Selectors: what a caller proved about itself, and what a registration
//! entry requires (SPEC §3). Text form `<type>:<value>`, e.g. `unix:uid:1000`.

use super::text;
use std::fmt;
use std::str::FromStr;

use super::{DomainError, SpiffeId};

/// The kinds of selector trustmesh produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKind {
    /// `unix:uid:N` — kernel peer credentials of a local-socket caller.
    UnixUid,
    /// `unix:gid:N`
    UnixGid,
    /// `unix:user:NAME` — the user name of the uid.
    UnixUser,
    /// `unix:group:NAME` — the group name of the gid.
    UnixGroup,
    /// `unix:path:/abs/exe` — the caller's executable.
    UnixPath,
    /// `unix:sha256:HEX` — SHA-256 of the caller's executable.
    UnixSha256,
    /// `token:sub:NAME` — the subject of a bearer token on the TLS port.
    TokenSub,
    /// `x509:spiffe-id:ID` — the SPIFFE ID of a client certificate on the TLS port.
    X509SpiffeId,
}

impl SelectorKind {
    pub const ALL: [SelectorKind; 8] = [
        Self::UnixUid,
        Self::UnixGid,
        Self::UnixUser,
        Self::UnixGroup,
        Self::UnixPath,
        Self::UnixSha256,
        Self::TokenSub,
        Self::X509SpiffeId,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::UnixUid => "unix:uid:",
            Self::UnixGid => "unix:gid:",
            Self::UnixUser => "unix:user:",
            Self::UnixGroup => "unix:group:",
            Self::UnixPath => "unix:path:",
            Self::UnixSha256 => "unix:sha256:",
            Self::TokenSub => "token:sub:",
            Self::X509SpiffeId => "x509:spiffe-id:",
        }
    }
}

/// A valid selector. Ordered and hashable so selector sets are canonical.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: SelectorKind,
    value: String,
}

impl Selector {
    pub fn new(kind: SelectorKind, value: &str) -> Result<Self, DomainError> {
        validate(kind, value).map_err(|reason| DomainError::Selector {
            value: format!("{}{}", kind.prefix(), text::shorten(value, 96)),
            reason,
        })?;
        Ok(Self { kind, value: value.to_string() })
    }

    pub fn parse(text: &str) -> Result<Self, DomainError> {
        for kind in SelectorKind::ALL {
            if let Some(value) = text.strip_prefix(kind.prefix()) {
                return Self::new(kind, value);
            }
        }
        Err(DomainError::Selector {
            value: text::shorten(text, 96),
            reason: "unknown type: expected unix:uid:, unix:gid:, unix:user:, unix:group:, unix:path:, \
                     unix:sha256:, token:sub: or x509:spiffe-id:"
                .into(),
        })
    }

    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

fn validate(kind: SelectorKind, v: &str) -> Result<(), String> {
    let printable = |max: usize| {
        if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
            Err(format!("value must be 1-{max} printable characters"))
        } else {
            Ok(())
        }
    };
    match kind {
        SelectorKind::UnixUid | SelectorKind::UnixGid => {
            v.parse::<u32>().map(drop).map_err(|_| "value must be a number (0-4294967295)".to_string())
        }
        SelectorKind::UnixUser | SelectorKind::UnixGroup => {
            printable(64)?;
            if v.contains(':') || v.contains(char::is_whitespace) {
                return Err("names contain no ':' or whitespace".into());
            }
            Ok(())
        }
        SelectorKind::UnixPath => {
            printable(4096)?;
            if !v.starts_with('/') {
                return Err("path must be absolute".into());
            }
            Ok(())
        }
        SelectorKind::UnixSha256 => {
            if v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                Ok(())
            } else {
                Err("value must be 64 lowercase hex digits".into())
            }
        }
        SelectorKind::TokenSub => printable(256),
        SelectorKind::X509SpiffeId => SpiffeId::parse(v).map(drop).map_err(|e| e.to_string()),
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.value)
    }
}

impl FromStr for Selector {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for s in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:user:envoy",
            "unix:group:proxy",
            "unix:path:/usr/bin/envoy",
            &format!("unix:sha256:{}", "ab".repeat(32)),
            "token:sub:node-a",
            "x509:spiffe-id:spiffe://example.org/node/a",
        ] {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_selectors() {
        for (s, needle) in [
            ("unix:uid:-1", "number"),
            ("unix:uid:abc", "number"),
            ("unix:path:relative/exe", "absolute"),
            ("unix:sha256:ABCD", "hex"),
            ("unix:user:", "printable"),
            ("k8s:ns:default", "unknown type"),
            ("x509:spiffe-id:spiffe://Bad/x", "lowercase"),
        ] {
            let err = Selector::parse(s).unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }
}
