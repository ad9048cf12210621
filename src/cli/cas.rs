//! `trustmesh pki ca …`: the bundle, and CA rotation (SPEC §14) —
//! `prepare|activate|taint|revoke|list`, and `create-intermediary` (prepare
//! and activate in one) — through the admin API. The server checks every
//! step; this prints what changed.

use super::client::Context;
use super::commands::CaCommand;
use super::views::CaView;
use crate::proto::admin::v1 as pb;

pub(super) async fn ca(ctx: Context, command: CaCommand) -> i32 {
    let (list, verb) = match command {
        CaCommand::Bundle => {
            let b = call!(ctx, bundle, pb::BundleRequest {});
            print!("{}", b.pem);
            return 0;
        }
        CaCommand::CreateIntermediary { common_name, ttl_days, role } => {
            let ca = call!(ctx, create_intermediary, pb::CreateIntermediaryRequest { common_name, ttl_days, role });
            ctx.output.print(&CaView::from(&ca), |c| {
                format!(
                    "[ok] Intermediate CA created and active for {}:\n  {} ({}) expires {}\n",
                    c.role, c.common_name, c.fingerprint, c.expires
                )
            });
            return 0;
        }
        CaCommand::Prepare { role, common_name, ttl_days } => {
            (call!(ctx, prepare_ca, pb::PrepareCaRequest { role, common_name, ttl_days }), "prepared")
        }
        CaCommand::Activate { id, force } => (call!(ctx, activate_ca, pb::CaStepRequest { id, force }), "activated"),
        CaCommand::Taint { id } => (call!(ctx, taint_ca, pb::CaStepRequest { id, force: false }), "tainted"),
        CaCommand::Revoke { id, force } => (call!(ctx, revoke_ca, pb::CaStepRequest { id, force }), "revoked"),
        CaCommand::List => (call!(ctx, list_cas, pb::ListCasRequest {}), ""),
    };
    let views: Vec<CaView> = list.cas.iter().map(CaView::from).collect();
    ctx.output.print(&views, |cas| render(cas, verb));
    0
}

/// One line per CA, under a title line naming the step.
fn render(cas: &[CaView], verb: &str) -> String {
    let mut out = if verb.is_empty() { String::new() } else { format!("[ok] CA {verb}:\n") };
    for c in cas {
        out.push_str(&format!(
            "  {:<9} {:<8} {} ({}) {} certificates live, expires {}\n",
            c.role, c.state, c.common_name, c.fingerprint, c.live_certificates, c.expires
        ));
    }
    out
}
