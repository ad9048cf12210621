//! Commands that run without a server: `pki init` works on the data
//! directory and database directly (so an offline root never touches a
//! network), `policy check` evaluates the Cedar policy locally.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use serde::Serialize;

use super::client::Context;
use super::fail;
use super::output::OutputFormat;
use crate::ca::KeyAlgorithm;
use crate::domain::{RandomSerials, SpiffeId, SystemClock, TrustDomain};
use crate::issuer::{Existing, InitParams, Issuer, IssuerConfig, IssuerParts};
use crate::policy::{self, Action};

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[arg(long, default_value = "trustmesh Root CA")]
    pub common_name: String,
    /// EC-P256 or EC-P384.
    #[arg(long, default_value = "EC-P384")]
    pub algorithm: String,
    #[arg(long, default_value_t = 3650)]
    pub ttl_days: u32,
    /// Lifetime of the Services and Transport CAs.
    #[arg(long, default_value_t = 730)]
    pub intermediate_ttl_days: u32,
    /// Import an existing CA certificate (PEM; an intermediate followed by its chain to the root).
    #[arg(long, requires = "import_key")]
    pub import_cert: Option<PathBuf>,
    /// The private key (PEM) of --import-cert.
    #[arg(long, requires = "import_cert")]
    pub import_key: Option<PathBuf>,
    #[arg(long, env = "TRUSTMESH_TRUST_DOMAIN", default_value = "example.org")]
    pub trust_domain: String,
    #[arg(long, env = "TRUSTMESH_DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long, env = "TRUSTMESH_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for a principal, action and resource, and the policies that decided it.
    Check {
        /// Admin::"name", Node::"node-id", Bootstrap::"subject" or Workload::"sel1,sel2".
        #[arg(long)]
        principal: String,
        /// sign_csr, obtain_svid, issue_certificate, revoke_certificate, deny_identity, …
        #[arg(long)]
        action: String,
        /// A SPIFFE ID, Ca, AuditLog, Certificate::"serial", Token::"kind", Entry::"id".
        #[arg(long)]
        resource: String,
        /// SPIFFE IDs a Bootstrap principal was minted for.
        #[arg(long = "spiffe-id")]
        spiffe_ids: Vec<String>,
        /// Ask as the server does for an SVID checked against the registration
        /// entries: `--entry-matched` (or `true`) when an entry the principal
        /// matches names the resource, `false` when none does.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        entry_matched: Option<bool>,
        #[arg(long, env = "TRUSTMESH_POLICY_DIR")]
        policy_dir: Option<PathBuf>,
        #[arg(long, env = "TRUSTMESH_TRUST_DOMAIN", default_value = "example.org")]
        trust_domain: String,
    },
}

pub async fn init(ctx: &Context, args: InitArgs) -> i32 {
    match run_init(ctx, args).await {
        Ok(report) => {
            ctx.output.print(&report, |r| {
                format!(
                    "[ok] PKI initialized\n  Trust Domain: {}\n  Root:         {}\n",
                    r.trust_domain, r.root_fingerprint
                )
            });
            0
        }
        Err(e) => fail(&e),
    }
}

#[derive(Serialize)]
struct InitView {
    trust_domain: String,
    root_fingerprint: String,
}

async fn run_init(ctx: &Context, args: InitArgs) -> Result<InitView, String> {
    let td = TrustDomain::parse(&args.trust_domain).map_err(|e| e.to_string())?;
    let algorithm: KeyAlgorithm = args.algorithm.parse().map_err(|e: crate::ca::CaError| e.to_string())?;
    if !(1..=36_500).contains(&args.ttl_days) || !(1..=3650).contains(&args.intermediate_ttl_days) {
        return Err("--ttl-days must be 1-36500 and --intermediate-ttl-days 1-3650".into());
    }
    let import = match (&args.import_cert, &args.import_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).map_err(|e| format!("cannot read {}: {e}", c.display()))?,
            std::fs::read_to_string(k).map_err(|e| format!("cannot read {}: {e}", k.display()))?,
        )),
        _ => None,
    };
    let _lock = crate::app::lock_data_dir(&ctx.data_dir).map_err(|e| format!("{e:#}"))?;
    let kek_path = args.kek_file.clone().unwrap_or_else(|| ctx.data_dir.join("kek"));
    let kek = if kek_path.exists() { crate::app::load_kek(&kek_path) } else { crate::app::create_kek(&kek_path) }
        .map_err(|e| format!("{e:#}"))?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", ctx.data_dir.join("trustmesh.db").display()));
    let store = crate::store::open(&url).await.map_err(|e| e.to_string())?;
    let params = InitParams {
        root_common_name: args.common_name.clone(),
        algorithm,
        root_ttl_days: args.ttl_days,
        intermediate_ttl_days: args.intermediate_ttl_days,
        import,
    };
    // The same constructor as `serve`'s, told to create and never take over.
    let started = Issuer::start(IssuerParts {
        cfg: IssuerConfig::new(td.clone()),
        store,
        kek,
        clock: Arc::new(SystemClock),
        serials: Arc::new(RandomSerials::default()),
        policy: crate::policy::PolicyEngine::embedded().map_err(|e| e.to_string())?,
        init: params,
        existing: Existing::Refuse,
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(InitView { trust_domain: td.to_string(), root_fingerprint: started.report.root_fingerprint })
}

pub fn policy(command: PolicyCommand, output: OutputFormat) -> i32 {
    let PolicyCommand::Check { principal, action, resource, spiffe_ids, entry_matched, policy_dir, trust_domain } =
        command;
    let result = (|| -> Result<(policy::Decision, String), String> {
        let td = TrustDomain::parse(&trust_domain).map_err(|e| e.to_string())?;
        let ids =
            spiffe_ids.iter().map(|s| SpiffeId::parse(s).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
        let engine = crate::app::load_policy(policy_dir.as_deref()).map_err(|e| format!("{e:#}"))?;
        let principal = policy::parse_principal(&principal, &ids).map_err(|e| e.to_string())?;
        let action: Action = action.parse().map_err(|e: policy::PolicyError| e.to_string())?;
        let resource = policy::parse_resource(&resource).map_err(|e| e.to_string())?;
        let ctx = policy::DecisionContext { entry_matched, ..Default::default() };
        let decision = engine.decide_with(&principal, action, &resource, &td, &ctx);
        Ok((decision, principal.describe()))
    })();
    match result {
        Ok((decision, who)) => {
            #[derive(Serialize)]
            struct View<'a> {
                decision: &'a str,
                principal: String,
                policy_ids: &'a [String],
                errors: &'a [String],
                #[serde(skip_serializing_if = "Option::is_none")]
                entry_matched: Option<bool>,
            }
            let view = View {
                decision: if decision.allowed { "ALLOW" } else { "DENY" },
                principal: who,
                policy_ids: &decision.policy_ids,
                errors: &decision.errors,
                entry_matched,
            };
            output.print(&view, |_| format!("{decision}\n"));
            0
        }
        Err(e) => fail(&e),
    }
}
