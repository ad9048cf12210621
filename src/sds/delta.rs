//! The delta (incremental) xDS stream as a pure state machine (SPEC §6).
//!
//! Rules, per type URL on the stream:
//!
//! - Subscriptions accumulate: `resource_names_subscribe` adds names (`*` is
//!   the wildcard), `resource_names_unsubscribe` removes them. They are
//!   applied from every request, whatever its nonce: a client never repeats
//!   them.
//! - The first request of a type may carry `initial_resource_versions` (a
//!   reconnecting client): names whose version is still current are not sent.
//!   A first request with no subscription at all is the legacy wildcard.
//! - Subscribing to a name again asks for it again: it is resent.
//! - `response_nonce` is logged as an ACK (or NACK with its `error_detail`)
//!   when it is the last nonce sent, as stale otherwise. A NACK is never
//!   answered with the same content.
//! - A reply carries only what changed. A name that has no resource is listed
//!   in `resource_errors` once per reason; one the client held that stopped
//!   existing is sent in `removed_resources`, in a reply of its own so that a
//!   rejected removal cannot take good updates down with it.
//! - Resource versions are content versions ([`Encoded::version`]);
//!   `system_version_info` is a per-type counter that only moves forward.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::protocol::{
    Catalog, Encoded, ErrorDetail, Held, Lookup, MAX_NAMES, MAX_TYPES, Notice, ProtocolError, ResourceFailure, Step,
    check_name, check_names, check_type_url, nonce_is, resolve, wildcard_names,
};

/// One delta request, as the machine sees it.
#[derive(Debug, Clone, Default)]
pub struct DeltaRequest {
    pub type_url: String,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
    pub response_nonce: String,
    pub error_detail: Option<ErrorDetail>,
}

/// One response to send. Versions and nonces are numbers here and decimal
/// on the wire (`wire.rs` writes them without allocating).
#[derive(Debug, Clone)]
pub struct DeltaReply {
    pub type_url: Arc<str>,
    pub system_version_info: u64,
    pub nonce: u64,
    pub resources: Vec<Arc<Encoded>>,
    pub removed: Vec<String>,
    pub failures: Vec<ResourceFailure>,
}

/// The protocol state of one delta stream.
pub struct DeltaStream {
    catalog: Arc<dyn Catalog>,
    types: BTreeMap<Arc<str>, TypeState>,
    nonces: u64,
}

struct TypeState {
    /// The map key again, shared by every reply of this type.
    type_url: Arc<str>,
    explicit: BTreeSet<String>,
    wildcard: bool,
    held: BTreeMap<String, Held>,
    /// The nonce of the last reply of this type (0: none yet).
    last_nonce: u64,
    version: u64,
}

impl DeltaStream {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog, types: BTreeMap::new(), nonces: 0 }
    }

    /// A request from the client.
    pub fn on_request(&mut self, mut req: DeltaRequest) -> Result<Step<DeltaReply>, ProtocolError> {
        check_type_url(&req.type_url)?;
        check_names("resource_names_subscribe", &req.subscribe)?;
        check_names("resource_names_unsubscribe", &req.unsubscribe)?;
        if req.initial_resource_versions.len() > MAX_NAMES {
            return Err(ProtocolError::TooManyNames {
                field: "initial_resource_versions",
                count: req.initial_resource_versions.len(),
                limit: MAX_NAMES,
            });
        }
        req.initial_resource_versions.keys().try_for_each(|n| check_name(n))?;
        let first = !self.types.contains_key(req.type_url.as_str());
        let ack_only = !first && req.subscribe.is_empty() && req.unsubscribe.is_empty();
        if first && self.types.len() >= MAX_TYPES {
            return Err(ProtocolError::TooManyTypes { limit: MAX_TYPES });
        }
        let mut step = Step::default();
        if first {
            let key: Arc<str> = Arc::from(req.type_url.as_str());
            self.types.insert(key.clone(), TypeState::new(key));
        }
        let Some(t) = self.types.get_mut(req.type_url.as_str()) else { return Ok(step) };
        if !req.response_nonce.is_empty() {
            // A bare ACK needs its type URL only for the notice: move it.
            let type_url = if ack_only { std::mem::take(&mut req.type_url) } else { req.type_url.clone() };
            let nonce = req.response_nonce;
            step.notices.push(match req.error_detail {
                _ if !nonce_is(&nonce, t.last_nonce) => Notice::StaleNonce { type_url, nonce },
                Some(detail) => Notice::Nack { type_url, nonce, detail },
                None => Notice::Ack { type_url, nonce, version: String::new() },
            });
        }
        if ack_only {
            // Nothing to diff: the catalog has not changed since the last one.
            return Ok(step);
        }
        if first {
            t.wildcard = req.subscribe.is_empty();
            for (name, version) in &req.initial_resource_versions {
                t.held.insert(name.clone(), Held::Version(version.clone()));
            }
        }
        for name in req.subscribe {
            if name == "*" {
                t.wildcard = true;
                continue;
            }
            if !(first && req.initial_resource_versions.contains_key(&name)) {
                t.held.remove(&name);
            }
            t.explicit.insert(name);
        }
        for name in &req.unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.explicit.remove(name);
            }
        }
        if t.explicit.len() > MAX_NAMES {
            return Err(ProtocolError::TooManyNames {
                field: "subscriptions",
                count: t.explicit.len(),
                limit: MAX_NAMES,
            });
        }
        if first && !self.catalog.serves(&req.type_url) {
            step.notices.push(Notice::UnknownType { type_url: req.type_url.clone() });
        }
        let dropped: BTreeSet<String> = req.unsubscribe.into_iter().collect();
        diff(&*self.catalog, t, &dropped, &mut self.nonces, &mut step);
        Ok(step)
    }

    /// The state changed: send what changed, per type.
    pub fn on_state(&mut self, catalog: Arc<dyn Catalog>) -> Step<DeltaReply> {
        self.catalog = catalog;
        let mut step = Step::default();
        let unsubscribed = BTreeSet::new();
        for t in self.types.values_mut() {
            diff(&*self.catalog, t, &unsubscribed, &mut self.nonces, &mut step);
        }
        step
    }
}

impl TypeState {
    fn new(type_url: Arc<str>) -> Self {
        Self { type_url, explicit: BTreeSet::new(), wildcard: false, held: BTreeMap::new(), last_nonce: 0, version: 0 }
    }
}

/// Appends the replies one type needs: updates and failures, then removals.
/// Runs on every stream at every change, so what did not change costs a
/// lookup and a version comparison, and nothing is copied.
fn diff(
    catalog: &dyn Catalog,
    t: &mut TypeState,
    unsubscribed: &BTreeSet<String>,
    nonces: &mut u64,
    step: &mut Step<DeltaReply>,
) {
    let wild = t.wildcard.then(|| wildcard_names(catalog, &t.type_url));
    let desired = resolve(catalog, &t.type_url, t.explicit.iter(), wild.as_deref());
    let held = &mut t.held;
    let mut resources = Vec::new();
    let mut failures = Vec::new();
    let mut removed = Vec::new();
    for (name, now) in &desired {
        let before = held.get_mut(*name);
        if before.as_ref().is_some_and(|h| h.matches(now)) {
            continue;
        }
        match now {
            Lookup::Found(e) => resources.push(e.clone()),
            Lookup::Missing(reason) => {
                if before.as_ref().is_some_and(|h| h.is_resource()) {
                    removed.push(name.to_string());
                }
                step.notices.push(Notice::Unavailable {
                    type_url: t.type_url.to_string(),
                    name: name.to_string(),
                    reason: reason.clone(),
                });
                failures.push(ResourceFailure { name: name.to_string(), reason: reason.clone() });
            }
        }
        match before {
            Some(h) => *h = Held::from_lookup(now),
            None => {
                held.insert(name.to_string(), Held::from_lookup(now));
            }
        }
    }
    // Every desired name is held now; held names no longer covered:
    // unsubscribed ones are simply forgotten; ones that left the wildcard
    // set no longer exist for this client.
    if held.len() > desired.len() {
        let gone: Vec<String> = held.keys().filter(|n| !super::protocol::covers(&desired, n)).cloned().collect();
        for name in gone {
            if let Some(h) = held.remove(&name)
                && h.is_resource()
                && t.wildcard
                && !unsubscribed.contains(&name)
            {
                removed.push(name);
            }
        }
    }
    drop(desired);
    if !resources.is_empty() || !failures.is_empty() {
        step.replies.push(reply(t, nonces, resources, Vec::new(), failures));
    }
    if !removed.is_empty() {
        step.replies.push(reply(t, nonces, Vec::new(), removed, Vec::new()));
    }
}

fn reply(
    t: &mut TypeState,
    nonces: &mut u64,
    resources: Vec<Arc<Encoded>>,
    removed: Vec<String>,
    failures: Vec<ResourceFailure>,
) -> DeltaReply {
    t.version = t.version.saturating_add(1);
    *nonces = nonces.saturating_add(1);
    t.last_nonce = *nonces;
    DeltaReply {
        type_url: t.type_url.clone(),
        system_version_info: t.version,
        nonce: *nonces,
        resources,
        removed,
        failures,
    }
}

#[cfg(test)]
mod tests;
