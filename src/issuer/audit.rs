//! The audit trail's vocabulary: what a record says was done. Every policy
//! action is one (by its Cedar name); the entry operations, the spending
//! of a single-use token, the PKI API's refusals of malformed calls and the
//! steps of a CA rotation are the others.

use crate::policy::Action;

/// What an audit record (`AuditRecord::action`) says was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A call the policy decides on, by its Cedar action.
    Policy(Action),
    CreateEntry,
    ListEntries,
    ShowEntry,
    DeleteEntry,
    /// A single-use token spent by another call first.
    SpendToken,
    /// A call of the PKI API refused before it named an action: an unknown
    /// path or method, a body that is not JSON or is too large.
    PkiApi,
    /// CA rotation steps (authorized as `create_intermediary`).
    PrepareCa,
    ActivateCa,
    TaintCa,
    RevokeCa,
    /// Node agents (SPEC §12): a join token's attestation, a node SVID's
    /// renewal, the agent list, an eviction.
    AttestAgent,
    RenewAgent,
    ListAgents,
    EvictAgent,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy(action) => action.as_str(),
            Self::CreateEntry => "create_entry",
            Self::ListEntries => "list_entries",
            Self::ShowEntry => "show_entry",
            Self::DeleteEntry => "delete_entry",
            Self::SpendToken => "spend_token",
            Self::PkiApi => "pki_api",
            Self::PrepareCa => "prepare_ca",
            Self::ActivateCa => "activate_ca",
            Self::TaintCa => "taint_ca",
            Self::RevokeCa => "revoke_ca",
            Self::AttestAgent => "attest_agent",
            Self::RenewAgent => "renew_agent",
            Self::ListAgents => "list_agents",
            Self::EvictAgent => "evict_agent",
        }
    }
}

impl From<Action> for AuditAction {
    fn from(action: Action) -> Self {
        Self::Policy(action)
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audit_action_has_its_own_name() {
        let mut names: Vec<&str> = Action::ALL.map(|a| AuditAction::from(a).as_str()).to_vec();
        names.extend(
            [
                AuditAction::CreateEntry,
                AuditAction::ListEntries,
                AuditAction::ShowEntry,
                AuditAction::DeleteEntry,
                AuditAction::SpendToken,
                AuditAction::PkiApi,
                AuditAction::PrepareCa,
                AuditAction::ActivateCa,
                AuditAction::TaintCa,
                AuditAction::RevokeCa,
                AuditAction::AttestAgent,
                AuditAction::RenewAgent,
                AuditAction::ListAgents,
                AuditAction::EvictAgent,
            ]
            .map(AuditAction::as_str),
        );
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "two actions share a name: {names:?}");
        assert_eq!(AuditAction::from(Action::SignCsr).to_string(), "sign_csr");
    }
}
