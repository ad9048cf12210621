//! Who is calling: the principals that authorization policy speaks of.

use super::text;
use std::fmt;
use std::str::FromStr;

use super::{DomainError, SpiffeId};

/// The kinds of token trustmesh mints (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Admin,
    Node,
    Bootstrap,
    /// Single-use, for one node's first contact (`trustmesh agent`): it
    /// authenticates nothing but `Attest`.
    Join,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Node => "node",
            Self::Bootstrap => "bootstrap",
            Self::Join => "join",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Ok(Self::Admin),
            "node" => Ok(Self::Node),
            "bootstrap" => Ok(Self::Bootstrap),
            "join" => Ok(Self::Join),
            _ => Err(DomainError::TokenKind(text::shorten(s, 32))),
        }
    }
}

/// An authenticated caller, as Cedar sees it (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// An operator holding an admin token.
    Admin { name: String },
    /// A node agent or proxy holding a node token; its node id is the token subject.
    Node { id: String },
    /// A workload attested by selectors (`unix:uid:1000`, …).
    Workload { selectors: Vec<String> },
    /// A bootstrap token, allowed only the SPIFFE IDs it was minted for.
    Bootstrap { subject: String, spiffe_ids: Vec<SpiffeId> },
}

impl Principal {
    /// A short, log-safe description (`Admin::"ops"`), never token material.
    pub fn describe(&self) -> String {
        match self {
            Self::Admin { name } => format!("Admin::{name:?}"),
            Self::Node { id } => format!("Node::{id:?}"),
            Self::Workload { selectors } => format!("Workload::{:?}", selectors.join(",")),
            Self::Bootstrap { subject, .. } => format!("Bootstrap::{subject:?}"),
        }
    }
}
