//! The records the [`Store`] reads and writes, in their stored form, and the
//! filters and outcomes of its calls. Re-exported by `store`, which is the
//! only path callers name (`crate::store::CertRecord`).
//!
//! Plain data: no I/O and no SQL. Instants are Unix seconds (`i64`);
//! identities, serials and fingerprints are their canonical text; private
//! keys are held only sealed under the KEK. `rows.rs` decodes each record
//! from a row, `statements.rs` binds it to its statements.

#[cfg(doc)]
use super::Store;
use crate::domain::{CaRole, CaState};

/// A CA certificate and its private key, sealed under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// SHA-256 fingerprint of the certificate DER, lowercase hex. Primary key.
    pub id: String,
    pub role: CaRole,
    pub common_name: String,
    pub cert_der: Vec<u8>,
    /// `None` when the key is kept offline (an imported root).
    pub sealed_key: Option<Vec<u8>>,
    pub not_before: i64,
    pub not_after: i64,
    /// Where it is in its rotation; only an `Active` CA signs, and a role has
    /// at most one.
    pub state: CaState,
    /// When its state last changed (`None`: not since it was created).
    pub state_changed_at: Option<i64>,
    pub created_at: i64,
}

/// A JWT signing key (token signing or JWT-SVID signing), sealed under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// `token` or `jwt-svid`.
    pub purpose: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    pub sealed_key: Vec<u8>,
    pub created_at: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Active,
    Revoked,
}

/// An issued end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex serial. Primary key.
    pub serial: String,
    pub spiffe_id: String,
    /// `CaRecord::id` of the issuer.
    pub issuer_id: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertStatus,
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason name (`keyCompromise`, …) when revoked.
    pub revocation_reason: Option<String>,
    pub cert_der: Vec<u8>,
    /// The mount and profile it was issued under (`None`: issued without one).
    pub profile: Option<ProfileKey>,
    /// The subject CN, when it has one.
    pub common_name: Option<String>,
    /// The node whose agent obtained it (its node SVID, or an SVID for an
    /// entry of the node): what `agent evict` revokes.
    pub node: Option<String>,
}

/// A profile's mount and name as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileKey {
    pub mount: String,
    pub name: String,
}

/// An issuance profile (a Vault PKI role) as stored: its fields as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRecord {
    pub key: ProfileKey,
    /// `domain::Profile` as JSON.
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A CRL signed elsewhere for a CA whose key is offline (an imported root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedCrlRecord {
    /// `CaRecord::id` of the CA that signed it.
    pub issuer_id: String,
    pub crl_der: Vec<u8>,
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub imported_at: i64,
}

/// A revoked, still unexpired certificate: one CRL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub revoked_at: i64,
    pub reason: Option<String>,
    pub not_after: i64,
    /// `CaRecord::id` of the issuer.
    pub issuer_id: String,
    pub spiffe_id: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
}

/// What a [`ChangeRecord`] says changed; its `subject` names the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A certificate was revoked ([`Store::revoke`]); subject: the serial.
    /// `at`: the revocation time.
    Revoke,
    /// An identity was denied, or its deny reason changed ([`Store::deny`]),
    /// and its unexpired certificates were revoked; subject: the SPIFFE ID.
    /// `at`: the `now` of the call.
    Deny,
    /// A denial was lifted ([`Store::allow`]); subject: the SPIFFE ID. `at`:
    /// the audit record's.
    Allow,
    /// A registration entry was created or deleted; subject: the entry id.
    /// `at`: the audit record's.
    Entry,
    /// A CA was added by [`Store::insert_ca`] or [`Store::init_hierarchy`]
    /// (`at`: the CA's `created_at`), changed state by
    /// [`Store::set_ca_state`] (`at`: the call's), or got an imported CRL
    /// ([`Store::import_crl`], `at`: the audit record's). One record per CA
    /// whose row changed — the previous active CA of a role made `Old` by an
    /// activation has its own, at the activation's `at` (an inserted CA's
    /// `created_at`); subject: the CA id.
    Ca,
    /// A signing key was added by [`Store::insert_signing_key`] or
    /// [`Store::init_hierarchy`]; subject: the kid. `at`: the key's `created_at`.
    SigningKey,
    /// A profile was written or deleted ([`Store::put_profile`],
    /// [`Store::delete_profile`]); subject: `mount/name`. `at`: the audit record's.
    Profile,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Deny => "deny",
            Self::Allow => "allow",
            Self::Entry => "entry",
            Self::Ca => "ca",
            Self::SigningKey => "signing_key",
            Self::Profile => "profile",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke" => Some(Self::Revoke),
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            "entry" => Some(Self::Entry),
            "ca" => Some(Self::Ca),
            "signing_key" => Some(Self::SigningKey),
            "profile" => Some(Self::Profile),
            _ => None,
        }
    }
}

/// One row of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Assigned by the store: increasing, committed in this order (with gaps).
    pub revision: i64,
    pub kind: ChangeKind,
    pub subject: String,
    pub at: i64,
}

/// An answer of [`Store::changes_since`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeBatch {
    pub changes: Vec<ChangeRecord>,
    /// Rows after `after` were purged: the reader must reload everything.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyRecord {
    pub spiffe_id: String,
    pub reason: String,
    pub denied_at: i64,
    pub denied_by: String,
}

/// One audit log line: who did what to what, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the store; ignored on append.
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    /// SPIFFE ID, serial or other object acted on ("" when none).
    pub target: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    pub reason: String,
}

/// A registration entry as stored (the domain `Entry` in text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub id: String,
    pub spiffe_id: String,
    /// Sorted selector texts (`unix:uid:1000`, …).
    pub selectors: Vec<String>,
    pub dns_names: Vec<String>,
    pub ttl_seconds: Option<i64>,
    pub jwt_ttl_seconds: Option<i64>,
    pub hint: Option<String>,
    pub federates_with: Vec<String>,
    pub created_at: i64,
    /// The node whose agent serves it.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CertFilter {
    pub spiffe_id: Option<String>,
    /// Only certificates with `not_after` in `(now, before]`.
    pub expiring_before: Option<i64>,
    /// Exclude certificates with `not_after <= now`.
    pub unexpired_at: Option<i64>,
    /// Only certificates issued under a profile of this mount.
    pub mount: Option<String>,
    /// Only certificates a node's agent obtained.
    pub node: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    /// Matches `target`.
    pub target: Option<String>,
    /// Only records older than this id (paging from the newest).
    pub before_id: Option<i64>,
    /// The newest `limit` matching records (oldest first in the result).
    pub limit: Option<u32>,
}

/// What a revocation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

/// A revocation's outcome and the certificate as it is after it (none when
/// no certificate has the serial): everything the caller needs, from the
/// one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub outcome: RevokeOutcome,
    pub certificate: Option<CertRecord>,
}
#[cfg(test)]
mod tests {
    use super::ChangeKind;

    #[test]
    fn change_kinds_roundtrip() {
        use ChangeKind::*;
        for kind in [Revoke, Deny, Allow, Entry, Ca, SigningKey, Profile] {
            assert_eq!(ChangeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ChangeKind::parse("signing-key"), None);
    }
}

/// An attested node (`agents`, SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub node: String,
    /// `spiffe://<td>/trustmesh/agent/<node>`.
    pub spiffe_id: String,
    /// Of its current node SVID.
    pub serial: String,
    pub not_after: i64,
    /// When it last presented a join token.
    pub attested_at: i64,
    /// The replica its stream is on (`None`: not connected).
    pub replica: Option<String>,
    pub last_seen: Option<i64>,
    /// SVIDs it served when last heard from.
    pub svids: i64,
    pub evicted_at: Option<i64>,
}
