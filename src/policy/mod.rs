//! Cedar authorization (SPEC §7): the one place where decisions are made.
//!
//! Authorization is data: the schema (`schema.cedarschema`) and the default
//! policies (`default.cedar`) are files in this folder, embedded in the
//! binary, parsed and validated at start ([`PolicyEngine::embedded`]), or
//! replaced by an operator's `--policy-dir` ([`PolicyEngine::from_sources`]).
//! Every policy carries an `@id("…")` annotation; that id is what the server
//! logs on a refusal and what `trustmesh policy check` prints.
//!
//! Default policies (`default.cedar`):
//!
//! | id | effect |
//! |---|---|
//! | `admin-all` | an `Admin` may do every action on every resource |
//! | `node-own-identity` | a `Node` may `sign_csr` / `obtain_svid` for an identity of the own trust domain whose last path segment is its node id |
//! | `bootstrap-minted-for` | a `Bootstrap` token may `sign_csr` only for the SPIFFE IDs it was minted for |
//! | `any-read-bundle` | every authenticated caller may `read_bundle` (the bundle is public on the HTTP listener anyway) |
//! | `workload-entitled` | a `Workload` may `obtain_svid` an `Identity` when the context says `entry_matched` |
//! | `node-entitled` | a `Node` may `obtain_svid` an `Identity` when the context says `entry_matched` |
//! | `foreign-trust-domain` | forbid: nobody gets `sign_csr` / `obtain_svid` / `issue_certificate` for an identity outside the server's trust domain |
//!
//! Workload entitlement follows the registration entries (SPIRE semantics,
//! SPEC §3), which live in the store, not in Cedar: the issuer matches the
//! caller's selectors against the entries (`issuer::Issuer::decide_svid`) and
//! puts the outcome in the request context as `entry_matched`
//! ([`DecisionContext`], [`PolicyEngine::decide_with`]). A `Workload`'s
//! selectors are its attested ones; a `Node`'s are `token:sub:<node id>`, so an
//! entry with `--selector token:sub:node-a` entitles the node token of
//! `node-a`. Policies can still restrict it (e.g. a `forbid` on a path), and
//! `foreign-trust-domain` still applies. Requests without entry matching
//! (admin calls, CSR signing) carry no `entry_matched`, so both policies
//! guard with `context has entry_matched`.
//!
//! Boundary: pure. No I/O; the caller reads `--policy-dir` and hands over
//! the texts. Default deny: a request no policy permits is refused, and a
//! request that cannot even be put to Cedar (e.g. a resource type the schema
//! does not allow for the action) is refused with the reason in
//! [`Decision::errors`].

mod engine;
mod model;

use std::fmt;

pub use engine::PolicyEngine;
pub use model::{Action, Resource, parse_principal, parse_resource};

/// The outcome of [`PolicyEngine::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The `@id`s of the deciding policies, sorted: the permits that allowed,
    /// or the forbids that refused. Empty on a default deny.
    pub policy_ids: Vec<String>,
    /// Policies that failed to evaluate (they are skipped), or why the
    /// request could not be evaluated at all.
    pub errors: Vec<String>,
}

impl fmt::Display for Decision {
    /// `ALLOW by admin-all`, `DENY by foreign-trust-domain`,
    /// `DENY (no policy permits)`, with `; errors: …` when there were any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "ALLOW" } else { "DENY" })?;
        if self.policy_ids.is_empty() {
            f.write_str(" (no policy permits)")?;
        } else {
            write!(f, " by {}", self.policy_ids.join(", "))?;
        }
        if !self.errors.is_empty() {
            write!(f, "; errors: {}", self.errors.join("; "))?;
        }
        Ok(())
    }
}

/// Request context beyond the server's trust domain. `Default` is what
/// [`PolicyEngine::decide`] uses: nothing extra.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DecisionContext {
    /// `Some(true)` when a registration entry the caller matches names the
    /// requested identity, `Some(false)` when the entries were checked and none
    /// does, `None` when entries play no part in the request.
    pub entry_matched: Option<bool>,
    /// `Some(true)` when the caller is a node agent and an entry bound to its
    /// node names the requested identity (SPEC §12).
    pub node_entry: Option<bool>,
}

/// Everything that can be wrong with policies, schemas and the CLI forms of
/// principals, actions and resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy schema {file}: {reason}")]
    Schema { file: String, reason: String },
    #[error("the policy schema does not fit trustmesh's requests: {0}")]
    SchemaMismatch(String),
    #[error("{file}: cannot parse policies: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: policy {id:?} is a template (it has ?principal or ?resource slots); templates are not supported")]
    Template { file: String, id: String },
    #[error("policy id {id:?} is used twice: in {first} and in {second}")]
    DuplicateId { id: String, first: String, second: String },
    #[error("policies do not validate against the schema: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
    #[error("no policies given: an empty policy set denies everything")]
    NoPolicies,
    #[error("unknown action {0:?} (expected one of: {list})", list = Action::ALL.map(Action::as_str).join(", "))]
    UnknownAction(String),
    #[error("invalid principal {value:?}: {reason}")]
    Principal { value: String, reason: String },
    #[error("invalid resource {value:?}: {reason}")]
    Resource { value: String, reason: String },
}

/// An error with its causes (Cedar keeps the detail in `source()`).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
