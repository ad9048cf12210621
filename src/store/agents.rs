//! The statements of the `agents` table (schema version 7), shared by both
//! backends, and the row decoder: one row per attested node.

use super::rows::Row;
use super::statements::{Param, Stmt, stmt};
use super::{AgentRecord, StoreResult};

/// A node's new node SVID (attestation or renewal): the row is created or
/// its SVID replaced; an attestation also clears an eviction.
pub(super) fn put_agent(a: &AgentRecord) -> Stmt {
    let sql = "INSERT INTO agents (node, spiffe_id, serial, not_after, attested_at, evicted_at) \
               VALUES ($1, $2, $3, $4, $5, NULL) \
               ON CONFLICT (node) DO UPDATE SET spiffe_id = excluded.spiffe_id, serial = excluded.serial, \
               not_after = excluded.not_after, attested_at = excluded.attested_at, evicted_at = NULL";
    stmt!(sql, &a.node, &a.spiffe_id, &a.serial, a.not_after, a.attested_at)
}

/// A renewal: the SVID only, unless the node was evicted meanwhile.
pub(super) fn renew_agent(a: &AgentRecord) -> Stmt {
    let sql = "UPDATE agents SET serial = $2, not_after = $3 WHERE node = $1 AND evicted_at IS NULL";
    stmt!(sql, &a.node, &a.serial, a.not_after)
}

/// Where the node's stream is (`None`: no replica) and what it serves.
pub(super) fn agent_seen(node: &str, replica: &Option<String>, at: i64, svids: i64) -> Stmt {
    let sql = "UPDATE agents SET replica = $2, last_seen = $3, svids = $4 WHERE node = $1";
    stmt!(sql, node, replica, at, svids)
}

/// Changes one row when the node was attested and not yet evicted.
pub(super) fn evict_agent(node: &str, at: i64) -> Stmt {
    stmt!("UPDATE agents SET evicted_at = $2, replica = NULL WHERE node = $1 AND evicted_at IS NULL", node, at)
}

pub(super) fn select_agents() -> Stmt {
    stmt!("SELECT * FROM agents ORDER BY node")
}

pub(super) fn select_agent(node: &str) -> Stmt {
    stmt!("SELECT * FROM agents WHERE node = $1", node)
}

pub(super) fn agent_from_row(r: &dyn Row) -> StoreResult<AgentRecord> {
    Ok(AgentRecord {
        node: r.text("node")?,
        spiffe_id: r.text("spiffe_id")?,
        serial: r.text("serial")?,
        not_after: r.int("not_after")?,
        attested_at: r.int("attested_at")?,
        replica: r.opt_text("replica")?,
        last_seen: r.opt_int("last_seen")?,
        svids: r.int("svids")?,
        evicted_at: r.opt_int("evicted_at")?,
    })
}
