//! `trustmesh entry create|list|show|delete`: registration entries (SPEC §3)
//! through the admin API. Text by default, `--output json` for scripts; one
//! line on stderr and exit 1 on every failure. The server validates every
//! field (a missing --selector included), so the rules live in one place.

use clap::Subcommand;
use serde::Serialize;

use super::client::Context;
use super::fail;
use super::output::{parse_duration, rfc3339};
use crate::proto::admin::v1 as pb;

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Register a SPIFFE ID for the callers that present every --selector.
    Create {
        #[arg(long)]
        spiffe_id: String,
        /// unix:uid:N, unix:gid:N, unix:user:NAME, unix:group:NAME, unix:path:/exe, unix:sha256:HEX,
        /// token:sub:NAME or x509:spiffe-id:ID; repeat for several (a caller needs all of them).
        #[arg(long = "selector", value_name = "SELECTOR")]
        selectors: Vec<String>,
        /// A DNS SAN for the SVID; repeatable.
        #[arg(long = "dns-name", value_name = "NAME")]
        dns_names: Vec<String>,
        /// X.509-SVID lifetime in seconds (or 30m, 2h) [default: the server's SVID lifetime].
        #[arg(long, value_name = "SECS")]
        ttl: Option<String>,
        /// JWT-SVID lifetime in seconds [default: the server's JWT-SVID lifetime].
        #[arg(long, value_name = "SECS")]
        jwt_ttl: Option<String>,
        /// A free-text hint sent with the SVID (at most 256 bytes).
        #[arg(long)]
        hint: Option<String>,
        /// A foreign trust domain whose bundle the holder receives; repeatable.
        #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
        federates_with: Vec<String>,
        /// Served only by the agent of this node (`trustmesh agent --node-id`), not by the server's socket.
        #[arg(long, value_name = "NODE", conflicts_with = "parent_id")]
        node: Option<String>,
        /// SPIRE's spelling of --node: the agent's ID, spiffe://<td>/trustmesh/agent/<node>.
        #[arg(long, value_name = "SPIFFE_ID")]
        parent_id: Option<String>,
    },
    /// List every entry, oldest first.
    List,
    /// Show one entry: its id, or a SPIFFE ID that names exactly one entry.
    Show { id: String },
    /// Delete one entry: its id, or a SPIFFE ID that names exactly one entry.
    Delete { id: String },
}

pub async fn entry(ctx: Context, command: EntryCommand) -> i32 {
    match command {
        EntryCommand::Create {
            spiffe_id,
            selectors,
            dns_names,
            ttl,
            jwt_ttl,
            hint,
            federates_with,
            node,
            parent_id,
        } => {
            let (ttl_seconds, jwt_ttl_seconds) = match (seconds("--ttl", ttl), seconds("--jwt-ttl", jwt_ttl)) {
                (Ok(t), Ok(j)) => (t, j),
                (Err(e), _) | (_, Err(e)) => return fail(&e),
            };
            let request = pb::CreateEntryRequest {
                spiffe_id,
                selectors,
                dns_names,
                ttl_seconds,
                jwt_ttl_seconds,
                hint: hint.unwrap_or_default(),
                federates_with,
                node: node.or(parent_id).unwrap_or_default(),
            };
            let created = call!(ctx, create_entry, request);
            ctx.output.print(&EntryView::from(&created), |e| format!("[ok] Entry created\n{}", e.text()));
        }
        EntryCommand::List => {
            let list = call!(ctx, list_entries, pb::ListEntriesRequest {});
            let views: Vec<EntryView> = list.entries.iter().map(EntryView::from).collect();
            ctx.output.print(&views, |all| {
                let mut out = format!("{:<32} {:<50} {}\n", "ENTRY ID", "SPIFFE ID", "SELECTORS");
                for e in all {
                    out.push_str(&format!("{:<32} {:<50} {}\n", e.id, e.spiffe_id, e.selectors.join(",")));
                }
                out
            });
        }
        EntryCommand::Show { id } => {
            let shown = call!(ctx, show_entry, pb::ShowEntryRequest { id });
            ctx.output.print(&EntryView::from(&shown), EntryView::text);
        }
        EntryCommand::Delete { id } => {
            let deleted = call!(ctx, delete_entry, pb::DeleteEntryRequest { id });
            ctx.output
                .print(&EntryView::from(&deleted), |e| format!("[ok] Entry {} ({}) deleted\n", e.id, e.spiffe_id));
        }
    }
    0
}

/// `--ttl`: seconds, or a duration like 30m; 0 when not given.
fn seconds(flag: &str, value: Option<String>) -> Result<u64, String> {
    match value.as_deref().map(parse_duration).transpose() {
        Ok(Some(0)) => Err(format!("{flag} must be more than 0")),
        Ok(v) => Ok(v.map_or(0, |s| u64::try_from(s).unwrap_or(0))),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

#[derive(Debug, Serialize)]
struct EntryView {
    id: String,
    spiffe_id: String,
    selectors: Vec<String>,
    dns_names: Vec<String>,
    ttl_seconds: Option<u64>,
    jwt_ttl_seconds: Option<u64>,
    hint: Option<String>,
    federates_with: Vec<String>,
    node: Option<String>,
    created_at: String,
}

impl From<&pb::Entry> for EntryView {
    fn from(e: &pb::Entry) -> Self {
        Self {
            id: e.id.clone(),
            spiffe_id: e.spiffe_id.clone(),
            selectors: e.selectors.clone(),
            dns_names: e.dns_names.clone(),
            ttl_seconds: (e.ttl_seconds > 0).then_some(e.ttl_seconds),
            jwt_ttl_seconds: (e.jwt_ttl_seconds > 0).then_some(e.jwt_ttl_seconds),
            hint: (!e.hint.is_empty()).then(|| e.hint.clone()),
            federates_with: e.federates_with.clone(),
            node: (!e.node.is_empty()).then(|| e.node.clone()),
            created_at: rfc3339(e.created_at),
        }
    }
}

impl EntryView {
    fn text(&self) -> String {
        let mut out = format!("  Entry ID:   {}\n  SPIFFE ID:  {}\n", self.id, self.spiffe_id);
        for (i, s) in self.selectors.iter().enumerate() {
            out.push_str(&format!("  {:<11} {s}\n", if i == 0 { "Selectors:" } else { "" }));
        }
        let optional = [
            ("DNS Names:", (!self.dns_names.is_empty()).then(|| self.dns_names.join(", "))),
            ("TTL:", self.ttl_seconds.map(|t| format!("{t}s"))),
            ("JWT TTL:", self.jwt_ttl_seconds.map(|t| format!("{t}s"))),
            ("Hint:", self.hint.clone()),
            ("Federates:", (!self.federates_with.is_empty()).then(|| self.federates_with.join(", "))),
            ("Node:", self.node.clone()),
        ];
        for (label, value) in optional {
            if let Some(v) = value {
                out.push_str(&format!("  {label:<11} {v}\n"));
            }
        }
        out.push_str(&format!("  Created:    {}\n", self.created_at));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ttl_flags() {
        assert_eq!(seconds("--ttl", None).unwrap(), 0);
        assert_eq!(seconds("--ttl", Some("600".into())).unwrap(), 600);
        assert_eq!(seconds("--ttl", Some("2h".into())).unwrap(), 7200);
        assert!(seconds("--ttl", Some("0".into())).unwrap_err().contains("--ttl"));
        assert!(seconds("--jwt-ttl", Some("soon".into())).unwrap_err().starts_with("--jwt-ttl: "));
    }

    #[test]
    fn text_lists_every_given_field() {
        let e = pb::Entry {
            id: "ab".repeat(16),
            spiffe_id: "spiffe://example.org/web".into(),
            selectors: vec!["unix:gid:1".into(), "unix:uid:1".into()],
            dns_names: vec!["web.example.org".into()],
            ttl_seconds: 600,
            jwt_ttl_seconds: 0,
            hint: "front".into(),
            federates_with: vec![],
            created_at: 0,
            node: "node-a".into(),
        };
        let text = EntryView::from(&e).text();
        for needle in [
            "Selectors:  unix:gid:1",
            "             unix:uid:1",
            "web.example.org",
            "600s",
            "front",
            "Node:       node-a",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(!text.contains("JWT TTL") && !text.contains("Federates"), "{text}");
    }
}
