//! What a certificate authority of the hierarchy is for.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    Root,
    /// Signs workload SVIDs.
    Services,
    /// Signs the server's own TLS certificate and node certificates.
    Transport,
    /// Signs the certificates issued under a profile that carry no SPIFFE ID
    /// (a tenant's client certificate). Kept out of every bundle and CRL set
    /// the mesh validates with, so such a certificate never passes there.
    Profiles,
}

impl CaRole {
    pub const ALL: [CaRole; 4] = [Self::Root, Self::Services, Self::Transport, Self::Profiles];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Services => "services",
            Self::Transport => "transport",
            Self::Profiles => "profiles",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
