//! Pure domain types: identities, serials, principals, issuance profiles and time.
//!
//! Everything here can only hold valid values ("parse, don't validate"); nothing
//! here performs I/O. Time and randomness are injected through [`Clock`] and
//! [`SerialSource`].

mod ca_role;
mod ca_state;
mod clock;
mod entry;
mod id;
mod node;
mod principal;
pub mod profile;
mod reason;
mod selector;
mod serial;
pub mod text;
pub mod throttle;

pub use ca_role::CaRole;
pub use ca_state::{CaState, CaStep};
pub use clock::{Clock, ManualClock, SystemClock, unix_seconds};
pub use entry::{Entry, MAX_SELECTORS, entitled};
pub use id::{MAX_ID_LEN, RESERVED_PATH, SpiffeId, TrustDomain};
pub use node::{MAX_NODE_LEN, NodeId};
pub use principal::{Principal, TokenKind};
pub use profile::{KeyShape, KeyType, Profile, ProfileRef};
pub use reason::RevocationReason;
pub use selector::{Selector, SelectorKind};
pub use serial::{RandomSerials, Serial, SerialSource};

/// Errors raised when text from outside does not parse into a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    #[error("invalid SPIFFE ID {value:?}: {reason}")]
    SpiffeId { value: String, reason: String },
    #[error("invalid trust domain {value:?}: {reason}")]
    TrustDomain { value: String, reason: String },
    #[error("invalid serial {value:?}: {reason}")]
    Serial { value: String, reason: &'static str },
    #[error("unknown token kind {0:?} (expected admin, node, bootstrap or join)")]
    TokenKind(String),
    #[error("invalid selector {value:?}: {reason}")]
    Selector { value: String, reason: String },
    #[error("invalid node name {value:?}: {reason}")]
    Node { value: String, reason: String },
    #[error("invalid entry: {reason}")]
    Entry { reason: String },
    #[error("the system random number generator failed")]
    Randomness,
    #[error("unknown revocation reason {value:?} (expected one of: {expected})")]
    RevocationReason { value: String, expected: String },
}
