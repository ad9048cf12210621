//! The state-of-the-world xDS stream as a pure state machine (SPEC §6).
//!
//! Rules, per type URL on the stream:
//!
//! - A request whose `response_nonce` is not the last nonce sent is stale and
//!   ignored: a newer request will follow.
//! - A request carrying the last nonce is an ACK, or a NACK when it has an
//!   `error_detail`. A NACK is logged and not answered: the same content is
//!   never resent; only a new state is.
//! - The first request of a type is always answered, and so is a request that
//!   adds names. Otherwise a reply goes out only when what the requested names
//!   resolve to changed (by content version, or by failure reason).
//! - A reply to a request carries every requested resource that exists;
//!   names that get no resource are left out and listed in
//!   `resource_errors`. A push after a state change carries only what
//!   changed: the xDS protocol asks for the complete state of the world only
//!   for Listener and Cluster; every other type (secrets, extension configs)
//!   is grouped as in the incremental variant, and the client keeps what a
//!   response leaves out. So a new CRL does not resend every unchanged
//!   certificate with its key. (A wildcard subscription whose set lost a
//!   name still gets the full state.)
//! - An empty `resource_names` is a wildcard on the first request of a type
//!   (legacy wildcard, also `*`); on a later request it unsubscribes from
//!   every name (what Envoy sends when its last watch of a type goes away).
//! - `version_info` is a per-type counter that only moves forward; the first
//!   reply continues after the numeric version a reconnecting client held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::protocol::{
    Catalog, Encoded, ErrorDetail, Held, Lookup, MAX_TYPES, Notice, ProtocolError, ResourceFailure, Step, check_names,
    check_type_url, covers, nonce_is, resolve, wildcard_names,
};

/// One state-of-the-world request, as the machine sees it (the node is not
/// part of it: the adapter reads it from the first request only).
#[derive(Debug, Clone, Default)]
pub struct SotwRequest {
    pub type_url: String,
    pub version_info: String,
    pub resource_names: Vec<String>,
    pub response_nonce: String,
    pub error_detail: Option<ErrorDetail>,
}

/// One response to send. Versions and nonces are numbers here and decimal
/// on the wire (`wire.rs` writes them without allocating).
#[derive(Debug, Clone)]
pub struct SotwReply {
    pub type_url: Arc<str>,
    pub version_info: u64,
    pub nonce: u64,
    pub resources: Vec<Arc<Encoded>>,
    pub failures: Vec<ResourceFailure>,
}

/// The protocol state of one state-of-the-world stream.
pub struct SotwStream {
    catalog: Arc<dyn Catalog>,
    types: BTreeMap<Arc<str>, TypeState>,
    nonces: u64,
}

struct TypeState {
    /// The map key again, shared by every reply of this type.
    type_url: Arc<str>,
    names: BTreeSet<String>,
    /// `*` requested, or an empty first request (legacy wildcard).
    wildcard: bool,
    held: BTreeMap<String, Held>,
    /// The nonce of the last reply of this type (0: none yet).
    last_nonce: u64,
    version: u64,
}

impl SotwStream {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog, types: BTreeMap::new(), nonces: 0 }
    }

    /// A request from the client.
    pub fn on_request(&mut self, mut req: SotwRequest) -> Result<Step<SotwReply>, ProtocolError> {
        check_type_url(&req.type_url)?;
        check_names("resource_names", &req.resource_names)?;
        let mut step = Step::default();
        let known = self.types.get(req.type_url.as_str());
        if !req.response_nonce.is_empty() {
            if !known.is_some_and(|t| nonce_is(&req.response_nonce, t.last_nonce)) {
                step.notices.push(Notice::StaleNonce { type_url: req.type_url, nonce: req.response_nonce });
                return Ok(step);
            }
            step.notices.push(match req.error_detail {
                Some(detail) => Notice::Nack { type_url: req.type_url.clone(), nonce: req.response_nonce, detail },
                // The type is known, so its version is not read again below.
                None => Notice::Ack {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce,
                    version: std::mem::take(&mut req.version_info),
                },
            });
        }
        let first = known.is_none();
        if first && self.types.len() >= MAX_TYPES {
            return Err(ProtocolError::TooManyTypes { limit: MAX_TYPES });
        }
        if first {
            let key: Arc<str> = Arc::from(req.type_url.as_str());
            let mut t = TypeState::new(key.clone());
            // A reconnecting client holds the version of the previous stream:
            // keep counting from there so versions only move forward.
            t.version = req.version_info.parse::<u64>().unwrap_or(0);
            self.types.insert(key, t);
        }
        let Some(t) = self.types.get_mut(req.type_url.as_str()) else { return Ok(step) };
        // An empty list is a wildcard on the first request (or while one
        // already is); later it unsubscribes from everything.
        let empty = req.resource_names.is_empty();
        let wildcard = req.resource_names.iter().any(|n| n == "*") || (empty && (first || t.wildcard));
        let added = if !first && repeats(&req.resource_names, &t.names) {
            // An ACK naming what it named before (every ACK, from Envoy): the
            // set stays as it is, not rebuilt.
            wildcard && !t.wildcard
        } else {
            let names: BTreeSet<String> = req.resource_names.into_iter().filter(|n| n != "*").collect();
            let added = names.difference(&t.names).next().is_some() || (wildcard && !t.wildcard);
            t.names = names;
            added
        };
        t.wildcard = wildcard;
        if first && !self.catalog.serves(&req.type_url) {
            step.notices.push(Notice::UnknownType { type_url: req.type_url.clone() });
        }
        if !first && !added {
            // An ACK, a NACK or dropped names: the catalog has not changed
            // since the last diff, so nothing is due. Keep per-ACK work small.
            let TypeState { names, wildcard, held, .. } = t;
            held.retain(|name, _| *wildcard || names.contains(name));
            return Ok(step);
        }
        if let Some(reply) = diff(&*self.catalog, t, true, &mut self.nonces, &mut step.notices) {
            step.replies.push(reply);
        }
        Ok(step)
    }

    /// The state changed: answer every type whose resources changed.
    pub fn on_state(&mut self, catalog: Arc<dyn Catalog>) -> Step<SotwReply> {
        self.catalog = catalog;
        let mut step = Step::default();
        for t in self.types.values_mut() {
            if let Some(reply) = diff(&*self.catalog, t, false, &mut self.nonces, &mut step.notices) {
                step.replies.push(reply);
            }
        }
        step
    }
}

impl TypeState {
    fn new(type_url: Arc<str>) -> Self {
        Self { type_url, names: BTreeSet::new(), wildcard: false, held: BTreeMap::new(), last_nonce: 0, version: 0 }
    }
}

/// Whether `requested` is exactly the set `names` (few names only: the
/// check is quadratic, and a longer list is simply taken as new).
fn repeats(requested: &[String], names: &BTreeSet<String>) -> bool {
    const FEW: usize = 16;
    requested.len() == names.len() && requested.len() <= FEW && names.iter().all(|n| requested.contains(n))
}

/// The reply for one type if it is due (`force`) or its resources changed.
/// Runs on every stream at every change, so what did not change costs a
/// lookup and a version comparison, and nothing is copied.
fn diff(
    catalog: &dyn Catalog,
    t: &mut TypeState,
    force: bool,
    nonces: &mut u64,
    notices: &mut Vec<Notice>,
) -> Option<SotwReply> {
    let wild = t.wildcard.then(|| wildcard_names(catalog, &t.type_url));
    let desired = resolve(catalog, &t.type_url, t.names.iter(), wild.as_deref());
    let held = &mut t.held;
    let is_new =
        |held: &BTreeMap<String, Held>, name: &str, now: &Lookup| !held.get(name).is_some_and(|h| h.matches(now));
    // A name the client dropped is no change; a name that left a wildcard is.
    let left_wildcard = t.wildcard && held.keys().any(|k| !covers(&desired, k));
    let changed = left_wildcard || desired.iter().any(|(name, now)| is_new(held, name, now));
    if !force && !changed {
        held.retain(|name, _| covers(&desired, name));
        return None;
    }
    let full = force || left_wildcard;
    let mut resources = Vec::new();
    let mut failures = Vec::new();
    for (name, now) in &desired {
        let new = is_new(held, name, now);
        if !full && !new {
            continue; // unchanged: the client keeps it
        }
        match now {
            Lookup::Found(e) => resources.push(e.clone()),
            Lookup::Missing(reason) => {
                if new {
                    notices.push(Notice::Unavailable {
                        type_url: t.type_url.to_string(),
                        name: name.to_string(),
                        reason: reason.clone(),
                    });
                }
                failures.push(ResourceFailure { name: name.to_string(), reason: reason.clone() });
            }
        }
    }
    // The client now holds exactly what the names resolve to.
    held.retain(|name, _| covers(&desired, name));
    for (name, now) in &desired {
        match held.get_mut(*name) {
            Some(h) => *h = Held::from_lookup(now),
            None => {
                held.insert(name.to_string(), Held::from_lookup(now));
            }
        }
    }
    drop(desired);
    t.version = t.version.saturating_add(1);
    *nonces = nonces.saturating_add(1);
    t.last_nonce = *nonces;
    Some(SotwReply { type_url: t.type_url.clone(), version_info: t.version, nonce: *nonces, resources, failures })
}

#[cfg(test)]
mod tests;
