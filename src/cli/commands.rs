//! The commands that talk to a server.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use super::client::Context;
use super::output::{parse_duration, rfc3339};
use super::views::{CertView, DeniedView, IssuedView, StatusView, render_status};
use super::{fail, local};
use crate::files;
use crate::proto::admin::v1 as pb;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the CA hierarchy in the database (the production ceremony), or import one.
    Init(local::InitArgs),
    /// PKI health, the CA hierarchy and counts.
    Status,
    /// Certificate authorities.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// End-entity certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The deny list.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// CRLs signed elsewhere.
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// Issuance profiles: the roles of a PKI mount (key, lifetime, names, usages).
    Profile {
        #[command(subcommand)]
        command: super::profiles::ProfileCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Import the CRL of a CA whose key is offline (an imported root), signed
    /// where its key lives (e.g. `openssl ca -gencrl`); PEM or DER.
    Import {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create an intermediate CA that becomes the active signer of its role.
    CreateIntermediary {
        #[arg(long)]
        common_name: String,
        #[arg(long, default_value_t = 730)]
        ttl_days: u32,
        /// services (signs workload SVIDs) or transport (server and node certificates).
        #[arg(long, default_value = "services")]
        role: String,
    },
    /// Print the trust bundle (PEM): root and intermediates.
    Bundle,
    /// Create the next CA of a role, in every bundle but signing nothing yet
    /// (a root: with an intermediate per role below it).
    Prepare {
        /// root, services, transport or profiles.
        #[arg(long)]
        role: String,
        /// [default: the role's name and the time]
        #[arg(long, default_value = "")]
        common_name: String,
        /// [default: 3650 for a root, 730 for an intermediate]
        #[arg(long, default_value_t = 0)]
        ttl_days: u32,
    },
    /// Make a prepared CA sign; refused until every connected proxy has acknowledged it.
    Activate {
        /// The CA's fingerprint (`pki ca list`).
        id: String,
        /// Activate without waiting for acknowledgements.
        #[arg(long)]
        force: bool,
    },
    /// Re-issue every live SVID an old CA signed under the active one.
    Taint { id: String },
    /// Take a CA out of the bundles and list it in its parent's CRL; refused while live certificates chain to it.
    Revoke {
        id: String,
        /// Revoke even though live certificates chain to it.
        #[arg(long)]
        force: bool,
    },
    /// Every CA with its state and how many live certificates it signed.
    List,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Generate a key and a certificate for an identity, or under a profile.
    Generate {
        #[arg(long, default_value = "")]
        common_name: String,
        /// The SPIFFE ID (optional with --profile: a certificate without one, e.g. a tenant's client certificate).
        #[arg(long, required_unless_present = "profile", default_value = "")]
        spiffe_id: String,
        /// Issue under this profile: NAME (mount pki) or MOUNT/NAME; its key type, lifetime, names and usages apply.
        #[arg(long)]
        profile: Option<String>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Lifetime in hours (decimals allowed) [default: the server's SVID lifetime].
        #[arg(long)]
        ttl_hours: Option<f64>,
        #[arg(long)]
        output_cert: PathBuf,
        #[arg(long)]
        output_key: PathBuf,
    },
    /// Sign a PKCS#10 CSR (PEM or DER) whose URI SAN is the SPIFFE ID, or under a profile.
    SignCsr {
        #[arg(long)]
        csr: PathBuf,
        #[arg(long, required_unless_present = "profile", default_value = "")]
        spiffe_id: String,
        /// Sign under this profile: NAME (mount pki) or MOUNT/NAME.
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        ttl_hours: Option<f64>,
        /// Where to write the leaf followed by its intermediate.
        #[arg(long)]
        output_cert: PathBuf,
    },
    /// List issued certificates (unexpired by default).
    List {
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only certificates expiring within this duration (e.g. 2h).
        #[arg(long)]
        expiring_within: Option<String>,
        #[arg(long)]
        include_expired: bool,
    },
    /// Revoke one certificate by serial (hex, colons allowed).
    Revoke {
        serial: String,
        /// RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, …
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Deny an identity: nothing more is issued to it and its certificates are revoked.
    Deny {
        spiffe_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a denial (revoked certificates stay revoked).
    Allow { spiffe_id: String },
    /// List denied identities.
    ListDenied,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an ES256 token: admin, node, bootstrap, or join (single-use, for `trustmesh agent` on node SUBJECT).
    Mint {
        kind: String,
        subject: String,
        /// Lifetime, e.g. 1h, 7d [default: bootstrap 24 h (TRUSTMESH_BOOTSTRAP_TTL), join 10 min, others 24 h].
        #[arg(long)]
        expires_in: Option<String>,
        #[arg(long)]
        single_use: bool,
        /// SPIFFE IDs a bootstrap token may have signed.
        #[arg(long = "spiffe-id")]
        spiffe_ids: Vec<String>,
        /// Bind to a certificate: base64url SHA-256 of its DER (cnf x5t#S256).
        #[arg(long)]
        cert_fingerprint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first.
    List {
        /// Only records newer than this: a duration (1h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

pub async fn pki(ctx: Context, command: PkiCommand) -> i32 {
    match command {
        PkiCommand::Init(args) => local::init(&ctx, args).await,
        PkiCommand::Status => {
            let s = call!(ctx, status, pb::StatusRequest {});
            ctx.output.print(&StatusView::from(&s), render_status);
            0
        }
        PkiCommand::Ca { command } => super::cas::ca(ctx, command).await,
        PkiCommand::Cert { command } => cert(ctx, command).await,
        PkiCommand::Profile { command } => super::profiles::profile(ctx, command).await,
        PkiCommand::Identity { command } => identity(ctx, command).await,
        PkiCommand::Crl { command: CrlCommand::Import { file } } => {
            let crl = match read_bounded(&file, crate::ca::MAX_CRL_BYTES) {
                Ok(bytes) => bytes,
                Err(e) => return fail(&e),
            };
            let info = call!(ctx, import_crl, pb::ImportCrlRequest { crl });
            let view = CrlView {
                issuer_fingerprint: info.issuer_fingerprint,
                number: info.number,
                this_update: rfc3339(info.this_update),
                next_update: rfc3339(info.next_update),
            };
            ctx.output.print(&view, |v| {
                format!(
                    "[ok] CRL imported for CA {}: number {}, next update {}\n",
                    v.issuer_fingerprint, v.number, v.next_update
                )
            });
            0
        }
    }
}

/// An imported CRL as printed.
#[derive(Debug, Serialize)]
struct CrlView {
    issuer_fingerprint: String,
    number: u64,
    this_update: String,
    next_update: String,
}

/// A file's bytes, refusing one larger than `limit` before reading it.
fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let size = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size > limit as u64 {
        return Err(format!("{} is {size} bytes, more than the {limit} accepted", path.display()));
    }
    fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn cert(ctx: Context, command: CertCommand) -> i32 {
    match command {
        CertCommand::Generate { common_name, spiffe_id, profile, dns_names, ttl_hours, output_cert, output_key } => {
            let ttl_seconds = match hours(ttl_hours) {
                Ok(t) => t,
                Err(e) => return fail(&e),
            };
            if let Err(e) = writable(&[&output_key, &output_cert]) {
                return fail(&e);
            }
            let r = call!(
                ctx,
                generate_certificate,
                pb::GenerateCertificateRequest {
                    common_name,
                    spiffe_id,
                    dns_names,
                    ttl_seconds,
                    profile: profile.unwrap_or_default()
                }
            );
            if let Err(e) = files::write_private(&output_key, r.private_key_pem.as_bytes())
                .and_then(|()| files::write_public(&output_cert, r.certificate_pem.as_bytes()))
            {
                return fail(&e.to_string());
            }
            let view = IssuedView::new(r.certificate.as_ref(), &output_cert, Some(&output_key));
            ctx.output.print(&view, |v| format!("[ok] Certificate generated:\n{}", v.text()));
            0
        }
        CertCommand::SignCsr { csr, spiffe_id, profile, ttl_hours, output_cert } => {
            let ttl_seconds = match hours(ttl_hours) {
                Ok(t) => t,
                Err(e) => return fail(&e),
            };
            let csr = match fs::read(&csr) {
                Ok(b) => b,
                Err(e) => return fail(&format!("cannot read {}: {e}", csr.display())),
            };
            if let Err(e) = writable(&[&output_cert]) {
                return fail(&e);
            }
            let request = pb::SignCsrRequest { csr, spiffe_id, ttl_seconds, profile: profile.unwrap_or_default() };
            let r = call!(ctx, sign_csr, request);
            if let Err(e) = files::write_public(&output_cert, r.certificate_pem.as_bytes()) {
                return fail(&e.to_string());
            }
            let view = IssuedView::new(r.certificate.as_ref(), &output_cert, None);
            ctx.output.print(&view, |v| format!("[ok] CSR signed:\n{}", v.text()));
            0
        }
        CertCommand::List { spiffe_id, expiring_within, include_expired } => {
            let expiring_within_seconds = match expiring_within.as_deref().map(parse_duration).transpose() {
                Ok(v) => v.unwrap_or(0),
                Err(e) => return fail(&format!("--expiring-within: {e}")),
            };
            let r = call!(
                ctx,
                list_certificates,
                pb::ListCertificatesRequest {
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    expiring_within_seconds,
                    include_expired,
                    limit: 0,
                }
            );
            let views: Vec<CertView> = r.certificates.iter().map(CertView::from).collect();
            ctx.output.print(&views, |list| {
                let mut out = format!("{:<36} {:<60} {:<8} {}\n", "SERIAL", "SPIFFE ID", "STATUS", "EXPIRES");
                for c in list {
                    out.push_str(&format!("{:<36} {:<60} {:<8} {}\n", c.serial, c.subject(), c.status, c.expires));
                }
                out
            });
            0
        }
        CertCommand::Revoke { serial, reason } => {
            let r = call!(ctx, revoke_certificate, pb::RevokeCertificateRequest { serial, reason });
            let view = r.certificate.as_ref().map(CertView::from);
            ctx.output.print(&view, |c| match c {
                Some(c) if r.already_revoked => format!("[ok] {} was already revoked ({})\n", c.serial, c.spiffe_id),
                Some(c) => format!("[ok] Revoked {} ({})\n", c.serial, c.spiffe_id),
                None => "[ok] Revoked\n".into(),
            });
            0
        }
    }
}

async fn identity(ctx: Context, command: IdentityCommand) -> i32 {
    match command {
        IdentityCommand::Deny { spiffe_id, reason } => {
            let r = call!(ctx, deny_identity, pb::DenyIdentityRequest { spiffe_id: spiffe_id.clone(), reason });
            ctx.output.print(&r.revoked_serials, |s| {
                format!("[ok] {spiffe_id} denied; {} certificate(s) revoked\n", s.len())
            });
            0
        }
        IdentityCommand::Allow { spiffe_id } => {
            let r = call!(ctx, allow_identity, pb::AllowIdentityRequest { spiffe_id: spiffe_id.clone() });
            ctx.output.print(&r.was_denied, |w| {
                if *w {
                    format!("[ok] {spiffe_id} allowed again\n")
                } else {
                    format!("[ok] {spiffe_id} was not denied\n")
                }
            });
            0
        }
        IdentityCommand::ListDenied => {
            let r = call!(ctx, list_denied, pb::ListDeniedRequest {});
            let views: Vec<DeniedView> = r
                .identities
                .iter()
                .map(|d| DeniedView {
                    spiffe_id: d.spiffe_id.clone(),
                    reason: d.reason.clone(),
                    denied_at: rfc3339(d.denied_at),
                    denied_by: d.denied_by.clone(),
                })
                .collect();
            ctx.output.print(&views, |list| {
                let mut out = format!("{:<60} {:<32} {}\n", "SPIFFE ID", "Reason", "Denied At");
                for d in list {
                    out.push_str(&format!("{:<60} {:<32} {}\n", d.spiffe_id, d.reason, d.denied_at));
                }
                out
            });
            0
        }
    }
}

pub async fn token(ctx: Context, command: TokenCommand) -> i32 {
    let TokenCommand::Mint { kind, subject, expires_in, single_use, spiffe_ids, cert_fingerprint } = command;
    let expires_in_seconds = match expires_in.as_deref().map(parse_duration).transpose() {
        Ok(v) => v.unwrap_or(0).max(0) as u64,
        Err(e) => return fail(&format!("--expires-in: {e}")),
    };
    let r = call!(
        ctx,
        mint_token,
        pb::MintTokenRequest {
            kind,
            subject,
            expires_in_seconds,
            single_use,
            spiffe_ids,
            cert_fingerprint: cert_fingerprint.unwrap_or_default(),
        }
    );
    #[derive(Serialize)]
    struct Minted<'a> {
        token: &'a str,
        jti: &'a str,
        expires_at: String,
    }
    let view = Minted { token: &r.token, jti: &r.jti, expires_at: rfc3339(r.expires_at) };
    ctx.output.print(&view, |m| format!("{}\n", m.token));
    0
}

pub async fn audit(ctx: Context, command: AuditCommand) -> i32 {
    let AuditCommand::List { since, spiffe_id, limit } = command;
    let since = match since.as_deref().map(parse_since).transpose() {
        Ok(v) => v.unwrap_or(0),
        Err(e) => return fail(&format!("--since: {e}")),
    };
    // Page by page from the newest, until `limit` records or the oldest.
    let mut admin = match ctx.connect().await {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let mut records: Vec<pb::AuditEntry> = Vec::new();
    let mut before_id = 0;
    while records.len() < limit as usize {
        let want = limit - records.len() as u32;
        let request = admin.request(pb::ListAuditRequest {
            since,
            spiffe_id: spiffe_id.clone().unwrap_or_default(),
            limit: want,
            before_id,
        });
        let page = match admin.client.list_audit(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return fail(&super::client::status_line(&s)),
        };
        records.splice(0..0, page.entries);
        if page.next_before_id == 0 {
            break;
        }
        before_id = page.next_before_id;
    }
    let r = pb::ListAuditResponse { entries: records, next_before_id: 0 };
    #[derive(Serialize)]
    struct Entry<'a> {
        id: i64,
        at: String,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        outcome: &'a str,
        reason: &'a str,
    }
    let entries: Vec<Entry> = r
        .entries
        .iter()
        .map(|e| Entry {
            id: e.id,
            at: rfc3339(e.at),
            actor: &e.actor,
            action: &e.action,
            target: &e.target,
            outcome: &e.outcome,
            reason: &e.reason,
        })
        .collect();
    ctx.output.print(&entries, |list| {
        list.iter()
            .map(|e| format!("{} {:<8} {:<20} {:<22} {} {}\n", e.at, e.outcome, e.actor, e.action, e.target, e.reason))
            .collect()
    });
    0
}

fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    Ok(time::OffsetDateTime::now_utc().unix_timestamp() - parse_duration(text)?)
}

fn hours(h: Option<f64>) -> Result<u64, String> {
    match h {
        None => Ok(0),
        Some(h) if h.is_finite() && h > 0.0 && h <= 87_600.0 => Ok((h * 3600.0).round().max(1.0) as u64),
        Some(h) => Err(format!("--ttl-hours {h} must be more than 0 and at most 87600")),
    }
}

/// Where a command will write its result must take it before the server is
/// asked: a certificate issued and then not saved is lost.
fn writable(paths: &[&Path]) -> Result<(), String> {
    paths.iter().try_for_each(|p| files::check_writable(p).map_err(|e| e.to_string()))
}
