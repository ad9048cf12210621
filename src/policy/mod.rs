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
//! | `foreign-trust-domain` | forbid: nobody gets `sign_csr` / `obtain_svid` / `issue_certificate` for an identity outside the server's trust domain |
//!
//! Deliberately absent: a `workload-entitled` policy. Which SPIFFE IDs a
//! workload may obtain follows from the registration entries whose selectors
//! it matches (SPIRE semantics, SPEC §3), which live in the store; the SDS and
//! Workload API servers match entries before asking here. A Cedar rule for
//! it needs the entries as entities and is left for later. Until then a
//! `Workload` principal is denied everything by default.
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

/// Keeps values named in errors short, whatever came in.
fn shorten(value: &str) -> String {
    const MAX: usize = 128;
    if value.len() <= MAX {
        return value.to_string();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests;
