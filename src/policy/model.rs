//! What Cedar is asked about: actions, resources, and how trustmesh's
//! principals and resources become Cedar entities (namespace `Trustmesh`).

use std::fmt;
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use super::PolicyError;
use crate::domain::text::quoted;
use crate::domain::{Principal, ProfileRef, SpiffeId, TokenKind};

/// Every action trustmesh authorizes. `Display`/`FromStr` use the Cedar
/// action id (`Trustmesh::Action::"sign_csr"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    SignCsr,
    IssueCertificate,
    ObtainSvid,
    RevokeCertificate,
    DenyIdentity,
    AllowIdentity,
    ReadStatus,
    ReadCertificates,
    ReadDenied,
    CreateIntermediary,
    ImportCrl,
    ReadBundle,
    MintToken,
    ReadAudit,
    ManageEntries,
    UseDnsName,
    /// Issue or sign a certificate under a profile.
    UseProfile,
    /// Write or delete a profile.
    ManageProfiles,
    /// Read or list profiles.
    ReadProfiles,
}

/// What an action is done to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `Trustmesh::Identity::"<spiffe id>"`.
    Identity(SpiffeId),
    /// The CA as a whole (status, bundle, intermediates).
    Ca,
    /// A certificate by serial.
    Certificate(String),
    /// A token kind to mint.
    Token(TokenKind),
    AuditLog,
    /// A registration entry by id.
    Entry(String),
    /// A DNS SAN requested in a certificate of the identity.
    DnsName {
        name: String,
        identity: SpiffeId,
    },
    /// An issuance profile (a role of a PKI mount).
    Profile(ProfileRef),
}

impl Action {
    pub const ALL: [Action; 19] = [
        Self::SignCsr,
        Self::IssueCertificate,
        Self::ObtainSvid,
        Self::RevokeCertificate,
        Self::DenyIdentity,
        Self::AllowIdentity,
        Self::ReadStatus,
        Self::ReadCertificates,
        Self::ReadDenied,
        Self::CreateIntermediary,
        Self::ImportCrl,
        Self::ReadBundle,
        Self::MintToken,
        Self::ReadAudit,
        Self::ManageEntries,
        Self::UseDnsName,
        Self::UseProfile,
        Self::ManageProfiles,
        Self::ReadProfiles,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignCsr => "sign_csr",
            Self::IssueCertificate => "issue_certificate",
            Self::ObtainSvid => "obtain_svid",
            Self::RevokeCertificate => "revoke_certificate",
            Self::DenyIdentity => "deny_identity",
            Self::AllowIdentity => "allow_identity",
            Self::ReadStatus => "read_status",
            Self::ReadCertificates => "read_certificates",
            Self::ReadDenied => "read_denied",
            Self::CreateIntermediary => "create_intermediary",
            Self::ImportCrl => "import_crl",
            Self::ReadBundle => "read_bundle",
            Self::MintToken => "mint_token",
            Self::ReadAudit => "read_audit",
            Self::ManageEntries => "manage_entries",
            Self::UseDnsName => "use_dns_name",
            Self::UseProfile => "use_profile",
            Self::ManageProfiles => "manage_profiles",
            Self::ReadProfiles => "read_profiles",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    /// The Cedar id (`sign_csr`); `sign-csr` and `Action::"sign_csr"` also work.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.trim().trim_start_matches("Trustmesh::").trim_start_matches("Action::");
        let bare = bare.trim_matches('"').replace('-', "_");
        Self::ALL.into_iter().find(|a| a.as_str() == bare).ok_or_else(|| PolicyError::UnknownAction(quoted(s)))
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(id) => write!(f, "Identity::{:?}", id.to_string()),
            Self::Ca => f.write_str("Ca"),
            Self::Certificate(serial) => write!(f, "Certificate::{serial:?}"),
            Self::Token(kind) => write!(f, "Token::{:?}", kind.as_str()),
            Self::AuditLog => f.write_str("AuditLog"),
            Self::Entry(id) => write!(f, "Entry::{id:?}"),
            Self::DnsName { name, identity } => write!(f, "DnsName::{:?}", format!("{name}@{identity}")),
            Self::Profile(profile) => write!(f, "Profile::{:?}", profile.to_string()),
        }
    }
}

/// Parses the CLI form of a principal for `trustmesh policy check`:
/// `Admin::"ops"`, `Node::"node-a"`, `Bootstrap::"svc"` (its SPIFFE IDs are
/// given separately) or `Workload::"unix:uid:1000,unix:gid:0"`. The type may
/// carry the `Trustmesh::` prefix.
pub fn parse_principal(text: &str, bootstrap_spiffe_ids: &[SpiffeId]) -> Result<Principal, PolicyError> {
    let fail = |reason: &str| PolicyError::Principal { value: quoted(text), reason: reason.into() };
    let (ty, id) = split_uid(text)
        .ok_or_else(|| fail("expected Type::\"id\" with Type one of Admin, Node, Workload, Bootstrap"))?;
    if id.is_empty() {
        return Err(fail("the quoted id is empty"));
    }
    let principal = match ty {
        "Admin" => Principal::Admin { name: id.to_string() },
        "Node" => Principal::Node { id: id.to_string() },
        "Bootstrap" => Principal::Bootstrap { subject: id.to_string(), spiffe_ids: bootstrap_spiffe_ids.to_vec() },
        "Workload" => {
            let selectors: Vec<String> = id.split(',').map(|s| s.trim().to_string()).collect();
            if selectors.iter().any(|s| s.is_empty() || !s.contains(':')) {
                return Err(fail("workload selectors are comma-separated type:value pairs, e.g. unix:uid:1000"));
            }
            Principal::Workload { selectors }
        }
        _ => return Err(fail("the type must be Admin, Node, Workload or Bootstrap")),
    };
    if !bootstrap_spiffe_ids.is_empty() && !matches!(principal, Principal::Bootstrap { .. }) {
        return Err(fail("SPIFFE IDs can only be given for a Bootstrap principal"));
    }
    Ok(principal)
}

/// Parses the CLI form of a resource: a `spiffe://` ID (or
/// `Identity::"spiffe://…"`), `Ca`, `AuditLog`, `Certificate::"serial"`,
/// `Token::"node"`, `Entry::"id"`, `DnsName::"name@spiffe://…"` (a DNS
/// name for a certificate of that identity), or `Profile::"mount/name"`.
pub fn parse_resource(text: &str) -> Result<Resource, PolicyError> {
    let fail = |reason: String| PolicyError::Resource { value: quoted(text), reason };
    let text = text.trim();
    if text.starts_with("spiffe://") {
        return SpiffeId::parse(text).map(Resource::Identity).map_err(|e| fail(e.to_string()));
    }
    match text.trim_start_matches("Trustmesh::") {
        "Ca" => return Ok(Resource::Ca),
        "AuditLog" => return Ok(Resource::AuditLog),
        _ => {}
    }
    let (ty, id) = split_uid(text).ok_or_else(|| {
        fail("expected a spiffe:// ID, Ca, AuditLog, or Certificate::\"serial\", Token::\"kind\", Entry::\"id\"".into())
    })?;
    if id.is_empty() && ty != "Ca" && ty != "AuditLog" {
        return Err(fail("the quoted id is empty".into()));
    }
    match ty {
        "Identity" => SpiffeId::parse(id).map(Resource::Identity).map_err(|e| fail(e.to_string())),
        "Ca" => Ok(Resource::Ca),
        "AuditLog" => Ok(Resource::AuditLog),
        "Certificate" => Ok(Resource::Certificate(id.to_string())),
        "Token" => id.parse().map(Resource::Token).map_err(|e: crate::domain::DomainError| fail(e.to_string())),
        "Entry" => Ok(Resource::Entry(id.to_string())),
        "Profile" => {
            let (mount, name) =
                id.split_once('/').ok_or_else(|| fail("a Profile is \"mount/name\", e.g. \"pki/web\"".into()))?;
            ProfileRef::new(mount, name).map(Resource::Profile).map_err(fail)
        }
        "DnsName" => {
            let (name, identity) = id
                .split_once('@')
                .ok_or_else(|| fail("a DnsName is \"name@spiffe://…\" (the name and its identity)".into()))?;
            let identity = SpiffeId::parse(identity).map_err(|e| fail(e.to_string()))?;
            Ok(Resource::DnsName { name: name.to_string(), identity })
        }
        _ => Err(fail("the type must be Identity, Ca, Certificate, Token, AuditLog, Entry, DnsName or Profile".into())),
    }
}

/// `Type::"id"` (with an optional `Trustmesh::` prefix) → (`Type`, `id`).
fn split_uid(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let text = text.strip_prefix("Trustmesh::").unwrap_or(text);
    let (ty, quoted) = text.split_once("::")?;
    let id = quoted.strip_prefix('"')?.strip_suffix('"')?;
    (!id.contains('"') && !id.contains('\\')).then_some((ty, id))
}

/// The Cedar entity of a principal. The only place principals are mapped.
pub(super) fn principal_entity(principal: &Principal) -> Result<Entity, String> {
    match principal {
        Principal::Admin { name } => entity("Admin", name, [("name", string(name))]),
        Principal::Node { id } => entity("Node", id, [("node_id", string(id))]),
        Principal::Workload { selectors } => {
            let mut sorted = selectors.clone();
            sorted.sort();
            sorted.dedup();
            let set = RestrictedExpression::new_set(sorted.iter().map(|s| string(s)));
            entity("Workload", &sorted.join(","), [("selectors", set)])
        }
        Principal::Bootstrap { subject, spiffe_ids } => {
            let ids = RestrictedExpression::new_set(spiffe_ids.iter().map(|id| string(&id.to_string())));
            entity("Bootstrap", subject, [("subject", string(subject)), ("spiffe_ids", ids)])
        }
    }
}

/// The Cedar entity of a resource. The only place resources are mapped.
pub(super) fn resource_entity(resource: &Resource) -> Result<Entity, String> {
    match resource {
        Resource::Identity(id) => {
            let text = id.to_string();
            entity(
                "Identity",
                &text,
                [
                    ("spiffe_id", string(&text)),
                    ("trust_domain", string(id.trust_domain().as_str())),
                    ("path", string(id.path())),
                    ("last_segment", string(id.last_segment())),
                ],
            )
        }
        Resource::Ca => entity("Ca", "ca", []),
        Resource::Certificate(serial) => entity("Certificate", serial, [("serial", string(serial))]),
        Resource::Token(kind) => entity("Token", kind.as_str(), [("kind", string(kind.as_str()))]),
        Resource::AuditLog => entity("AuditLog", "audit", []),
        Resource::Entry(id) => entity("Entry", id, []),
        Resource::DnsName { name, identity } => entity(
            "DnsName",
            name,
            [
                ("name", string(name)),
                ("spiffe_id", string(&identity.to_string())),
                ("trust_domain", string(identity.trust_domain().as_str())),
                ("last_segment", string(identity.last_segment())),
            ],
        ),
        Resource::Profile(profile) => entity(
            "Profile",
            &profile.to_string(),
            [("mount", string(profile.mount())), ("name", string(profile.name()))],
        ),
    }
}

pub(super) fn action_uid(action: Action) -> Result<EntityUid, String> {
    uid("Action", action.as_str())
}

pub(super) fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let name = EntityTypeName::from_str(&format!("Trustmesh::{ty}"))
        .map_err(|e| format!("entity type Trustmesh::{ty}: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

fn entity<const N: usize>(ty: &str, id: &str, attrs: [(&str, RestrictedExpression); N]) -> Result<Entity, String> {
    let attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v));
    Entity::new_with_tags(uid(ty, id)?, attrs, [], []).map_err(|e| format!("entity Trustmesh::{ty}: {e}"))
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_string())
}
