//! `trustmesh pki profile create|list|show|delete`: issuance profiles (the
//! roles of a PKI mount, SPEC §15) through the admin API. The flags name the
//! Vault role fields a seed 003 template needs; `--set FIELD=VALUE` reaches
//! every other field. The server reads and checks every field (the same
//! code as `/v1/<mount>/roles/:name`), so the rules live in one place.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::client::Context;
use super::fail;
use crate::proto::admin::v1 as pb;

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create a profile, or replace the one of that name (fields not given take their defaults).
    Create(Box<CreateArgs>),
    /// List the profiles of a mount.
    List {
        #[arg(long, default_value = "pki")]
        mount: String,
    },
    /// Show every field of a profile.
    Show {
        name: String,
        #[arg(long, default_value = "pki")]
        mount: String,
    },
    /// Delete a profile (certificates issued under it stay valid).
    Delete {
        name: String,
        #[arg(long, default_value = "pki")]
        mount: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    /// The PKI mount the profile belongs to.
    #[arg(long, default_value = "pki")]
    mount: String,
    /// rsa, ec, ed25519, or any (CSRs only).
    #[arg(long)]
    key_type: Option<String>,
    /// rsa: 2048, 3072, 4096; ec: 256, 384.
    #[arg(long)]
    key_bits: Option<u32>,
    /// Lifetime when a request names none (e.g. 720h).
    #[arg(long)]
    ttl: Option<String>,
    /// Longest lifetime; longer requests are clamped to it.
    #[arg(long)]
    max_ttl: Option<String>,
    /// A domain the common name and DNS SANs may be under (see the allow flags); repeatable.
    #[arg(long = "allowed-domain", value_name = "DOMAIN")]
    allowed_domains: Vec<String>,
    #[arg(long)]
    allow_subdomains: bool,
    #[arg(long)]
    allow_bare_domains: bool,
    /// Treat the allowed domains as globs (`tenant-*`).
    #[arg(long)]
    allow_glob_domains: bool,
    #[arg(long)]
    allow_any_name: bool,
    /// A SPIFFE ID glob a certificate's URI SAN may match (spiffe://example.org/tenant/*); repeatable.
    #[arg(long = "allowed-uri-san", value_name = "GLOB")]
    allowed_uri_sans: Vec<String>,
    /// A CIDR the IP SANs must fall in; repeatable (none: any).
    #[arg(long = "allowed-ip-san", value_name = "CIDR")]
    allowed_ip_sans: Vec<String>,
    /// Refuse IP SANs.
    #[arg(long)]
    no_ip_sans: bool,
    /// Extended key usage clientAuth only (no serverAuth).
    #[arg(long, conflicts_with = "server_only")]
    client_only: bool,
    /// Extended key usage serverAuth only (no clientAuth).
    #[arg(long)]
    server_only: bool,
    /// Key usages (DigitalSignature, KeyAgreement, KeyEncipherment, …); repeatable.
    #[arg(long = "key-usage", value_name = "USAGE")]
    key_usages: Vec<String>,
    /// Further extended key usages (CodeSigning, TimeStamping, …); repeatable.
    #[arg(long = "ext-key-usage", value_name = "USAGE")]
    ext_key_usages: Vec<String>,
    /// Certificates need no common name.
    #[arg(long)]
    no_require_cn: bool,
    /// How a common name must look: hostname, email, or disabled (anything); repeatable.
    #[arg(long = "cn-validation", value_name = "RULE")]
    cn_validations: Vec<String>,
    /// Keep no record of certificates without a SPIFFE ID (they cannot be listed or revoked then).
    #[arg(long)]
    no_store: bool,
    /// How far notBefore is backdated (e.g. 30s).
    #[arg(long)]
    not_before: Option<String>,
    /// Any other Vault role field, as FIELD=VALUE; repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    set: Vec<String>,
}

impl CreateArgs {
    /// The role body the server reads: only the fields given.
    fn fields(&self) -> Result<Map<String, Value>, String> {
        let mut f = Map::new();
        let mut put = |k: &str, v: Value| {
            f.insert(k.to_string(), v);
        };
        if let Some(v) = &self.key_type {
            put("key_type", json!(v));
        }
        if let Some(v) = self.key_bits {
            put("key_bits", json!(v));
        }
        for (k, v) in [("ttl", &self.ttl), ("max_ttl", &self.max_ttl), ("not_before_duration", &self.not_before)] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        for (k, v) in [
            ("allowed_domains", &self.allowed_domains),
            ("allowed_uri_sans", &self.allowed_uri_sans),
            ("allowed_ip_sans", &self.allowed_ip_sans),
            ("key_usage", &self.key_usages),
            ("ext_key_usage", &self.ext_key_usages),
            ("cn_validations", &self.cn_validations),
        ] {
            if !v.is_empty() {
                put(k, json!(v));
            }
        }
        for (k, on) in [
            ("allow_subdomains", self.allow_subdomains),
            ("allow_bare_domains", self.allow_bare_domains),
            ("allow_glob_domains", self.allow_glob_domains),
            ("allow_any_name", self.allow_any_name),
            ("no_store", self.no_store),
        ] {
            if on {
                put(k, json!(true));
            }
        }
        let negated = [
            ("allow_ip_sans", self.no_ip_sans),
            ("server_flag", self.client_only),
            ("client_flag", self.server_only),
            ("require_cn", self.no_require_cn),
        ];
        for (k, off) in negated {
            if off {
                put(k, json!(false));
            }
        }
        for pair in &self.set {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("--set {pair:?}: expected FIELD=VALUE"))?;
            put(k.trim(), json!(v));
        }
        Ok(f)
    }
}

pub async fn profile(ctx: Context, command: ProfileCommand) -> i32 {
    match command {
        ProfileCommand::Create(args) => {
            let fields = match args.fields() {
                Ok(f) => f,
                Err(e) => return fail(&e),
            };
            let request = pb::PutProfileRequest {
                mount: args.mount,
                name: args.name,
                fields_json: Value::Object(fields).to_string(),
            };
            let r = call!(ctx, put_profile, request);
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            print_profile(&ctx, &r, "written");
        }
        ProfileCommand::List { mount } => {
            let r = call!(ctx, list_profiles, pb::ListProfilesRequest { mount });
            ctx.output.print(&r.names, |names| names.iter().map(|n| format!("{n}\n")).collect());
        }
        ProfileCommand::Show { name, mount } => {
            let r = call!(ctx, show_profile, pb::ShowProfileRequest { mount, name });
            print_profile(&ctx, &r, "");
        }
        ProfileCommand::Delete { name, mount } => {
            let r = call!(ctx, delete_profile, pb::DeleteProfileRequest { mount: mount.clone(), name: name.clone() });
            ctx.output.print(&r.deleted, |deleted| {
                if *deleted {
                    format!("[ok] Profile {mount}/{name} deleted\n")
                } else {
                    format!("[ok] Profile {mount}/{name} was not there\n")
                }
            });
        }
    }
    0
}

/// The profile's fields (JSON), under a title line in text.
fn print_profile(ctx: &Context, r: &pb::ProfileResponse, verb: &str) {
    let fields: Value = serde_json::from_str(&r.profile_json).unwrap_or(Value::Null);
    let title = if verb.is_empty() {
        format!("Profile {}/{}:\n", r.mount, r.name)
    } else {
        format!("[ok] Profile {}/{} {verb}:\n", r.mount, r.name)
    };
    ctx.output.print(&fields, |f| {
        let mut out = title;
        if let Value::Object(map) = f {
            for (k, v) in map {
                out.push_str(&format!("  {k:<28} {v}\n"));
            }
        }
        out
    });
}
