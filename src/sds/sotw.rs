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
    check_type_url, resolve,
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

/// One response to send.
#[derive(Debug, Clone)]
pub struct SotwReply {
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    pub resources: Vec<Arc<Encoded>>,
    pub failures: Vec<ResourceFailure>,
}

/// The protocol state of one state-of-the-world stream.
pub struct SotwStream {
    catalog: Arc<dyn Catalog>,
    types: BTreeMap<String, TypeState>,
    nonces: u64,
}

#[derive(Default)]
struct TypeState {
    names: BTreeSet<String>,
    /// `*` requested, or an empty first request (legacy wildcard).
    wildcard: bool,
    held: BTreeMap<String, Held>,
    last_nonce: String,
    version: u64,
}

impl SotwStream {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog, types: BTreeMap::new(), nonces: 0 }
    }

    /// A request from the client.
    pub fn on_request(&mut self, req: SotwRequest) -> Result<Step<SotwReply>, ProtocolError> {
        check_type_url(&req.type_url)?;
        check_names("resource_names", &req.resource_names)?;
        let mut step = Step::default();
        let known = self.types.contains_key(&req.type_url);
        if !req.response_nonce.is_empty() {
            let last = self.types.get(&req.type_url).map(|t| t.last_nonce.as_str());
            if last != Some(req.response_nonce.as_str()) {
                step.notices.push(Notice::StaleNonce { type_url: req.type_url, nonce: req.response_nonce });
                return Ok(step);
            }
            step.notices.push(match req.error_detail {
                Some(detail) => Notice::Nack { type_url: req.type_url.clone(), nonce: req.response_nonce, detail },
                None => Notice::Ack {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce,
                    version: req.version_info.clone(),
                },
            });
        }
        if !known && self.types.len() >= MAX_TYPES {
            return Err(ProtocolError::TooManyTypes { limit: MAX_TYPES });
        }
        let first = !known;
        let t = self.types.entry(req.type_url.clone()).or_default();
        if first {
            // A reconnecting client holds the version of the previous stream:
            // keep counting from there so versions only move forward.
            t.version = req.version_info.parse::<u64>().unwrap_or(0);
        }
        // An empty list is a wildcard on the first request (or while one
        // already is); later it unsubscribes from everything.
        let empty = req.resource_names.is_empty();
        let wildcard = req.resource_names.iter().any(|n| n == "*") || (empty && (first || t.wildcard));
        let names: BTreeSet<String> = req.resource_names.into_iter().filter(|n| n != "*").collect();
        let added = names.difference(&t.names).next().is_some() || (wildcard && !t.wildcard);
        t.names = names;
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
        if let Some(reply) = diff(&*self.catalog, &req.type_url, t, true, &mut self.nonces, &mut step.notices) {
            step.replies.push(reply);
        }
        Ok(step)
    }

    /// The state changed: answer every type whose resources changed.
    pub fn on_state(&mut self, catalog: Arc<dyn Catalog>) -> Step<SotwReply> {
        self.catalog = catalog;
        let mut step = Step::default();
        for (type_url, t) in &mut self.types {
            if let Some(reply) = diff(&*self.catalog, type_url, t, false, &mut self.nonces, &mut step.notices) {
                step.replies.push(reply);
            }
        }
        step
    }
}

/// The reply for one type if it is due (`force`) or its resources changed.
fn diff(
    catalog: &dyn Catalog,
    type_url: &str,
    t: &mut TypeState,
    force: bool,
    nonces: &mut u64,
    notices: &mut Vec<Notice>,
) -> Option<SotwReply> {
    let desired = resolve(catalog, type_url, t.names.iter(), t.wildcard);
    let is_new = |name: &String, now: &Lookup| !t.held.get(name).is_some_and(|h| h.matches(now));
    // A name the client dropped is no change; a name that left a wildcard is.
    let left_wildcard = t.wildcard && t.held.keys().any(|k| !desired.contains_key(k));
    let changed = desired.iter().any(|(name, now)| is_new(name, now)) || left_wildcard;
    if !force && !changed {
        t.held.retain(|name, _| desired.contains_key(name));
        return None;
    }
    let full = force || left_wildcard;
    let mut resources = Vec::new();
    let mut failures = Vec::new();
    for (name, now) in &desired {
        if !full && !is_new(name, now) {
            continue; // unchanged: the client keeps it
        }
        match now {
            Lookup::Found(e) => resources.push(e.clone()),
            Lookup::Missing(reason) => {
                if !t.held.get(name).is_some_and(|h| h.matches(now)) {
                    notices.push(Notice::Unavailable {
                        type_url: type_url.to_string(),
                        name: name.clone(),
                        reason: reason.clone(),
                    });
                }
                failures.push(ResourceFailure { name: name.clone(), reason: reason.clone() });
            }
        }
    }
    t.held = desired.iter().map(|(n, l)| (n.clone(), Held::from_lookup(l))).collect();
    t.version = t.version.saturating_add(1);
    *nonces += 1;
    t.last_nonce = nonces.to_string();
    Some(SotwReply {
        type_url: type_url.to_string(),
        version_info: t.version.to_string(),
        nonce: t.last_nonce.clone(),
        resources,
        failures,
    })
}

#[cfg(test)]
mod tests;
