//! Node names: what `trustmesh agent --node-id` calls a node, what a join
//! token is minted for, what an entry is bound to (`entry create --node`),
//! and the last segment of the agent's node SVID
//! `spiffe://<td>/trustmesh/agent/<node>`.

use super::text::quoted;
use super::{DomainError, RESERVED_PATH, SpiffeId, TrustDomain};

/// Longest node name, in bytes.
pub const MAX_NODE_LEN: usize = 128;

/// The path of every node SVID, before the node name.
const AGENT_PATH: &str = "/agent/";

/// A valid node name: 1–128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let fail = |reason: &str| DomainError::Node { value: quoted(value), reason: reason.to_string() };
        if value.is_empty() {
            return Err(fail("is empty"));
        }
        if value.len() > MAX_NODE_LEN {
            return Err(fail("is longer than 128 bytes"));
        }
        if value == "." || value == ".." {
            return Err(fail("may not be . or .."));
        }
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(fail("may hold only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node SVID of this node: `spiffe://<td>/trustmesh/agent/<node>`.
    pub fn spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, DomainError> {
        SpiffeId::parse(&format!("{}{RESERVED_PATH}{AGENT_PATH}{}", td.id_string(), self.0))
    }

    /// The node of a node SVID's ID (`…/trustmesh/agent/<node>`) or of
    /// SPIRE's `--parent-id` spelling of it, in trust domain `td`.
    pub fn of_agent_id(id: &SpiffeId, td: &TrustDomain) -> Option<Self> {
        if !id.is_member_of(td) {
            return None;
        }
        let rest = id.path().strip_prefix(RESERVED_PATH)?.strip_prefix(AGENT_PATH)?;
        Self::parse(rest).ok()
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn a_node_name_is_a_plain_path_segment() {
        for good in ["node-a", "ip-10-0-0-1.ec2.internal", "N_1"] {
            assert!(NodeId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129), "a\n"] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_node_svid_id_round_trips() {
        let node = NodeId::parse("node-a").unwrap();
        let id = node.spiffe_id(&td()).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/trustmesh/agent/node-a");
        assert!(id.is_reserved());
        assert_eq!(NodeId::of_agent_id(&id, &td()), Some(node));
    }

    #[test]
    fn other_ids_name_no_node() {
        for other in [
            "spiffe://example.org/trustmesh/server",
            "spiffe://example.org/agent/node-a",
            "spiffe://example.org/trustmesh/agent/a/b",
            "spiffe://other.org/trustmesh/agent/node-a",
        ] {
            assert_eq!(NodeId::of_agent_id(&SpiffeId::parse(other).unwrap(), &td()), None, "{other}");
        }
    }
}
