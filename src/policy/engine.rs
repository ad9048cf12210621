//! Loading, validating and evaluating the policy set.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use parking_lot::{Mutex, MutexGuard};

use super::model::{self, Action, Resource};
use super::{Decision, DecisionContext, PolicyError, chain};
use crate::domain::{Principal, ProfileRef, SpiffeId, TokenKind, TrustDomain};

const SCHEMA_FILE: &str = "schema.cedarschema";
const DEFAULT_FILE: &str = "default.cedar";
const EMBEDDED_SCHEMA: &str = include_str!("schema.cedarschema");
const EMBEDDED_POLICIES: &str = include_str!("default.cedar");

/// A validated policy set and its schema. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    /// The schema's action entities (with their groups), which every
    /// request's entities start from.
    actions: Entities,
    policies: PolicySet,
    authorizer: Authorizer,
    /// Decisions already made. A decision depends only on the request (the
    /// entities are built from the principal and the resource alone) and the
    /// policy set, which never changes after loading; evaluating one again
    /// costs tens of microseconds on every certificate signed.
    decisions: Mutex<HashMap<DecisionKey, Decision>>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    principal: Principal,
    action: Action,
    resource: Resource,
    trust_domain: TrustDomain,
    ctx: DecisionContext,
}

/// Decisions remembered at most; the memo starts over when it is full.
const MAX_DECISIONS: usize = 4_096;

impl PolicyEngine {
    /// The embedded schema and default policies, parsed and validated.
    pub fn embedded() -> Result<Self, PolicyError> {
        Self::from_sources(None, &[(DEFAULT_FILE.to_string(), EMBEDDED_POLICIES.to_string())])
    }

    /// The `--policy-dir` override: `policies` are `(file name, text)` of
    /// every `*.cedar` file; `schema` is the directory's `schema.cedarschema`
    /// if it has one, else the embedded schema is used. Every policy is
    /// validated against the schema (strict mode); errors name the file and
    /// the policy. A policy's id is its `@id("…")` annotation, or
    /// `<file>#<n>` when it has none; ids must be unique across files.
    pub fn from_sources(schema: Option<&str>, policies: &[(String, String)]) -> Result<Self, PolicyError> {
        let schema = parse_schema(schema.unwrap_or(EMBEDDED_SCHEMA))?;
        check_schema_fits(&schema)?;
        let mut set = PolicySet::new();
        let mut origin: HashMap<String, String> = HashMap::new();
        for (file, text) in policies {
            let parsed = PolicySet::from_str(text).map_err(|errs| PolicyError::Parse {
                file: file.clone(),
                reason: errs.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "),
            })?;
            if let Some(template) = parsed.templates().next() {
                let id = template.annotation("id").map_or_else(|| template.id().to_string(), str::to_string);
                return Err(PolicyError::Template { file: file.clone(), id });
            }
            for (n, policy) in parsed.policies().enumerate() {
                let id = match policy.annotation("id") {
                    Some(id) if !id.trim().is_empty() => id.to_string(),
                    _ => format!("{file}#{n}"),
                };
                if let Some(first) = origin.get(&id) {
                    let (first, second) = (first.clone(), file.clone());
                    return Err(PolicyError::DuplicateId { id, first, second });
                }
                set.add(policy.new_id(PolicyId::new(&id)))
                    .map_err(|e| PolicyError::Parse { file: file.clone(), reason: e.to_string() })?;
                origin.insert(id, file.clone());
            }
        }
        if set.is_empty() {
            return Err(PolicyError::NoPolicies);
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let problems = result
                .validation_errors()
                .map(|e| {
                    let id = e.policy_id().to_string();
                    let file = origin.get(&id).map_or("?", String::as_str);
                    format!("{file}: policy {id:?}: {}", chain(e))
                })
                .collect();
            return Err(PolicyError::Invalid { problems });
        }
        let actions = schema.action_entities().map_err(|e| PolicyError::SchemaMismatch(chain(&e)))?;
        Ok(Self { schema, actions, policies: set, authorizer: Authorizer::new(), decisions: Mutex::default() })
    }

    /// Decides whether `principal` may do `action` on `resource`, in the
    /// server's own `trust_domain` (Cedar context `{ trust_domain }`).
    /// The same as [`Self::decide_with`] and an empty [`DecisionContext`].
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        trust_domain: &TrustDomain,
    ) -> Decision {
        self.decide_with(principal, action, resource, trust_domain, &DecisionContext::default())
    }

    /// Decides with extra request context (`entry_matched` for svid requests
    /// checked against the registration entries).
    ///
    /// Default deny: nothing permits → refused with empty `policy_ids`. A
    /// request that cannot be built (the schema does not allow this resource
    /// type for the action, …) is refused with the reason in `errors`.
    pub fn decide_with(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        trust_domain: &TrustDomain,
        ctx: &DecisionContext,
    ) -> Decision {
        let key = DecisionKey {
            principal: principal.clone(),
            action,
            resource: resource.clone(),
            trust_domain: trust_domain.clone(),
            ctx: *ctx,
        };
        if let Some(known) = self.memo().get(&key) {
            return known.clone();
        }
        let decision = self.evaluate(&key);
        let mut memo = self.memo();
        if memo.len() >= MAX_DECISIONS {
            memo.clear();
        }
        memo.insert(key, decision.clone());
        decision
    }

    fn memo(&self) -> MutexGuard<'_, HashMap<DecisionKey, Decision>> {
        self.decisions.lock()
    }

    fn evaluate(&self, key: &DecisionKey) -> Decision {
        let (request, entities) = match self.request(key) {
            Ok(built) => built,
            Err(reason) => {
                return Decision { allowed: false, policy_ids: Vec::new(), errors: vec![reason] };
            }
        };
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
        let mut policy_ids: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        policy_ids.sort();
        let mut errors: Vec<String> = response.diagnostics().errors().map(|e| chain(e)).collect();
        errors.sort();
        Decision { allowed: response.decision() == cedar_policy::Decision::Allow, policy_ids, errors }
    }

    /// The ids of every policy in force, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.policies.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    fn request(&self, key: &DecisionKey) -> Result<(Request, Entities), String> {
        let DecisionKey { principal, action, resource, trust_domain, ctx } = key;
        let action = *action;
        let p = model::principal_entity(principal)?;
        let r = model::resource_entity(resource)?;
        let (p_uid, r_uid) = (p.uid(), r.uid());
        // The principal and resource entities are checked against the schema
        // once, at load (`check_schema_fits`), not on every request.
        let entities = self
            .actions
            .clone()
            .add_entities([p, r], None)
            .map_err(|e| format!("entities do not fit the schema: {}", chain(&e)))?;
        let context = context(trust_domain, ctx)?;
        let request = Request::new(p_uid, model::action_uid(action)?, r_uid, context, Some(&self.schema))
            .map_err(|e| format!("request {action} on {resource} does not fit the schema: {}", chain(&e)))?;
        Ok((request, entities))
    }
}

fn parse_schema(text: &str) -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(text)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema { file: SCHEMA_FILE.into(), reason: chain(&e) })
}

fn context(trust_domain: &TrustDomain, ctx: &DecisionContext) -> Result<Context, String> {
    let td = RestrictedExpression::new_string(trust_domain.as_str().to_string());
    let mut pairs = vec![("trust_domain".to_string(), td)];
    if let Some(matched) = ctx.entry_matched {
        pairs.push(("entry_matched".to_string(), RestrictedExpression::new_bool(matched)));
    }
    if let Some(node_entry) = ctx.node_entry {
        pairs.push(("node_entry".to_string(), RestrictedExpression::new_bool(node_entry)));
    }
    Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
}

/// Fails fast when an operator's schema cannot describe trustmesh's
/// requests: every action must exist and every entity trustmesh builds must
/// conform (types and attributes).
fn check_schema_fits(schema: &Schema) -> Result<(), PolicyError> {
    let mismatch = PolicyError::SchemaMismatch;
    let actions: Vec<_> = schema.actions().cloned().collect();
    for action in Action::ALL {
        let uid = model::action_uid(action).map_err(mismatch)?;
        if !actions.contains(&uid) {
            return Err(mismatch(format!("action {uid} is not declared")));
        }
    }
    let id = SpiffeId::parse("spiffe://example.org/probe/p").map_err(|e| mismatch(e.to_string()))?;
    let principals = [
        Principal::Admin { name: "probe".into() },
        Principal::Node { id: "probe".into() },
        Principal::Workload { selectors: vec!["unix:uid:0".into()] },
        Principal::Bootstrap { subject: "probe".into(), spiffe_ids: vec![id.clone()] },
    ];
    let resources = [
        Resource::DnsName { name: "probe.example.org".into(), identity: id.clone() },
        Resource::Identity(id),
        Resource::Ca,
        Resource::Certificate("01".into()),
        Resource::Token(TokenKind::Node),
        Resource::AuditLog,
        Resource::Entry("probe".into()),
        Resource::Profile(ProfileRef::new("pki", "probe").map_err(mismatch)?),
    ];
    let mut probe = Vec::new();
    for p in &principals {
        probe.push(model::principal_entity(p).map_err(mismatch)?);
    }
    for r in &resources {
        probe.push(model::resource_entity(r).map_err(mismatch)?);
    }
    Entities::from_entities(probe, Some(schema)).map_err(|e| mismatch(chain(&e)))?;
    let workload = model::principal_entity(&principals[2]).map_err(mismatch)?.uid();
    let identity = model::resource_entity(&resources[1]).map_err(mismatch)?.uid();
    let td = TrustDomain::parse("example.org").map_err(|e| mismatch(e.to_string()))?;
    let full =
        context(&td, &DecisionContext { entry_matched: Some(true), node_entry: Some(true) }).map_err(mismatch)?;
    let obtain = model::action_uid(Action::ObtainSvid).map_err(mismatch)?;
    Request::new(workload, obtain, identity, full, Some(schema)).map_err(|e| {
        mismatch(format!(
            "the context of obtain_svid must declare entry_matched?: Bool and node_entry?: Bool: {}",
            chain(&e)
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod memo_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    /// The memo answers exactly what evaluating again answers, allow and
    /// deny alike, and never holds more than its bound.
    #[test]
    fn remembered_decisions_equal_fresh_ones_and_the_memo_is_bounded() {
        let engine = PolicyEngine::embedded().unwrap();
        let admin = Principal::Admin { name: "ops".into() };
        let node = Principal::Node { id: "node-1".into() };
        let id = Resource::Identity(SpiffeId::parse("spiffe://example.org/web").unwrap());
        for (principal, action) in [(&admin, Action::SignCsr), (&node, Action::SignCsr), (&node, Action::DenyIdentity)]
        {
            let first = engine.decide(principal, action, &id, &td());
            let again = engine.decide(principal, action, &id, &td());
            let fresh = engine.evaluate(&DecisionKey {
                principal: principal.clone(),
                action,
                resource: id.clone(),
                trust_domain: td(),
                ctx: DecisionContext::default(),
            });
            assert_eq!(first, fresh);
            assert_eq!(again, fresh);
        }
        assert!(engine.decide(&admin, Action::SignCsr, &id, &td()).allowed);
        assert!(!engine.decide(&node, Action::DenyIdentity, &id, &td()).allowed);
        for i in 0..MAX_DECISIONS + 10 {
            engine.decide(&admin, Action::RevokeCertificate, &Resource::Certificate(format!("{i:x}")), &td());
            assert!(engine.memo().len() <= MAX_DECISIONS);
        }
    }
}
