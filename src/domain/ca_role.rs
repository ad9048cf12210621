//! What a certificate authority of the hierarchy is for.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    Root,
    /// Signs workload SVIDs.
    Services,
    /// Signs the server's own TLS certificate and node certificates.
    Transport,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Services => "services",
            Self::Transport => "transport",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "root" => Some(Self::Root),
            "services" => Some(Self::Services),
            "transport" => Some(Self::Transport),
            _ => None,
        }
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
