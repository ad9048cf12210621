//! `trustmesh agent list|evict`: the server's view of its node agents
//! (SPEC §12) through the admin API. (`trustmesh agent` with no command runs
//! an agent: `app::agent`.)

use clap::Subcommand;
use serde::Serialize;

use super::client::Context;
use super::output::rfc3339;
use crate::proto::admin::v1 as pb;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Every attested node: its SPIFFE ID, the replica its stream is on, when it was last seen, its node SVID's
    /// expiry and the entries bound to it.
    List,
    /// Revoke the node SVID of NODE and every SVID its agent obtained; its stream ends and it needs a new join token.
    Evict { node: String },
}

#[derive(Debug, Serialize)]
struct AgentView {
    node: String,
    spiffe_id: String,
    connected_replica: Option<String>,
    last_seen: Option<String>,
    svid_expires: String,
    entries: u64,
    svids: u64,
    evicted: bool,
}

pub async fn agents(ctx: Context, command: AgentCommand) -> i32 {
    match command {
        AgentCommand::List => {
            let list = call!(ctx, list_agents, pb::ListAgentsRequest {});
            let views: Vec<AgentView> = list
                .agents
                .iter()
                .map(|a| AgentView {
                    node: a.node.clone(),
                    spiffe_id: a.spiffe_id.clone(),
                    connected_replica: (!a.replica.is_empty()).then(|| a.replica.clone()),
                    last_seen: (a.last_seen > 0).then(|| rfc3339(a.last_seen)),
                    svid_expires: rfc3339(a.svid_not_after),
                    entries: a.entries,
                    svids: a.svids,
                    evicted: a.evicted,
                })
                .collect();
            ctx.output.print(&views, |all| {
                let mut out = format!(
                    "{:<24} {:<56} {:<18} {:<21} {:<21} {:>7} {:>6}\n",
                    "NODE", "SPIFFE ID", "REPLICA", "LAST SEEN", "SVID EXPIRES", "ENTRIES", "SVIDS"
                );
                for a in all {
                    let replica = match (a.evicted, &a.connected_replica) {
                        (true, _) => "evicted".to_string(),
                        (false, Some(r)) => r.clone(),
                        (false, None) => "-".to_string(),
                    };
                    out.push_str(&format!(
                        "{:<24} {:<56} {:<18} {:<21} {:<21} {:>7} {:>6}\n",
                        a.node,
                        a.spiffe_id,
                        replica,
                        a.last_seen.as_deref().unwrap_or("-"),
                        a.svid_expires,
                        a.entries,
                        a.svids
                    ));
                }
                out
            });
        }
        AgentCommand::Evict { node } => {
            let r = call!(ctx, evict_agent, pb::EvictAgentRequest { node: node.clone() });
            #[derive(Serialize)]
            struct Evicted {
                node: String,
                revoked: u64,
            }
            ctx.output.print(&Evicted { node, revoked: r.revoked }, |e| {
                format!("[ok] Node {} evicted: {} certificates revoked\n", e.node, e.revoked)
            });
        }
    }
    0
}
