//! The deny list as an Envoy HTTP RBAC filter config, served over ECDS on
//! the same ADS stream as the secrets (SPEC §5.3): a CRL only stops new
//! handshakes, this stops the next request on a connection that is already
//! open, without draining anyone else's.
//!
//! Resource: type `envoy.config.core.v3.TypedExtensionConfig`, name
//! [`DENY_FILTER`]; an Envoy config names its HTTP RBAC filter so (first in
//! the chain, as `trustmesh envoy bootstrap` writes it) and gets the list.
//!
//! The RBAC uses the `matcher` form. The denied identities are one hash-map
//! lookup per request at any list size (envoy-notes; a `principals` list
//! would be a linear scan); the revoked certificates of identities not
//! denied are an `or_matcher` of header predicates, tried one by one — a
//! cost linear in their number, which short SVID lifetimes keep small
//! (each leaves the list at its notAfter plus the connection grace):
//!
//! 1. `envoy.matching.inputs.uri_san` in an `exact_match_map` of the denied
//!    SPIFFE IDs → DENY (an X.509-SVID has exactly one URI SAN, so the input,
//!    which joins all URI SANs with ",", is the ID itself);
//! 2. otherwise, revoked certificates of identities that are *not* denied
//!    (one revoked serial, or an identity allowed again whose old
//!    certificates must stay cut) by their SHA-256 in the
//!    `x-forwarded-client-cert` header that the HCM rewrites
//!    (`SANITIZE_SET`: a client cannot forge it) → DENY;
//! 3. otherwise ALLOW.
//!
//! An empty list is `rules: {action: DENY}` with no policies (an empty
//! match map is invalid). `rules_stat_prefix` is [`STAT_PREFIX`], so refusals
//! count in `http.<prefix>.rbac.trustmesh_deny_.denied` (Envoy adds the dot).

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::rbac::v3::{Action, Rbac as RbacRules, rbac::Action as RbacAction};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::matching::common_inputs::ssl::v3::UriSanInput;
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsExtension;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::{
    MatchType, PredicateList, SinglePredicate, single_predicate,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{FieldMatcher, Predicate};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::{MatchMap, TreeType};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherList, MatcherTree, MatcherType, OnMatch, on_match};
use envoy_types::pb::xds::r#type::matcher::v3::{Matcher, StringMatcher, string_matcher::MatchPattern};
use prost::Message;

use super::protocol::Encoded;
use crate::trust::DenyList;

/// The resource name, and the name of the HTTP filter that receives it.
pub const DENY_FILTER: &str = "trustmesh-deny-http";
/// The ECDS type URL.
pub const EXTENSION_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The type of the filter config inside it.
pub const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// `rules_stat_prefix` of the pushed RBAC.
pub const STAT_PREFIX: &str = "trustmesh_deny_";

const ACTION_TYPE: &str = "type.googleapis.com/envoy.config.rbac.v3.Action";
const URI_SAN_INPUT: &str = "type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput";
const HEADER_INPUT: &str = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const XFCC: &str = "x-forwarded-client-cert";

/// The RBAC filter config that refuses everything on `list`.
pub fn rbac(list: &DenyList) -> Rbac {
    if list.is_empty() {
        return Rbac {
            rules: Some(RbacRules { action: RbacAction::Deny as i32, ..Default::default() }),
            rules_stat_prefix: STAT_PREFIX.to_string(),
            ..Default::default()
        };
    }
    let by_hash = (!list.certificates.is_empty()).then(|| Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: vec![FieldMatcher { predicate: Some(any_hash(&list.certificates)), on_match: Some(deny()) }],
        })),
        on_no_match: Some(Box::new(allow())),
    });
    let matcher = if list.identities.is_empty() {
        by_hash.unwrap_or_default()
    } else {
        let map = list.identities.keys().map(|id| (id.clone(), deny())).collect();
        Matcher {
            matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
                input: Some(extension("envoy.matching.inputs.uri_san", URI_SAN_INPUT, &UriSanInput {})),
                tree_type: Some(TreeType::ExactMatchMap(MatchMap { map })),
            })),
            on_no_match: Some(Box::new(match by_hash {
                Some(next) => {
                    OnMatch { on_match: Some(on_match::OnMatch::Matcher(Box::new(next))), ..Default::default() }
                }
                None => allow(),
            })),
        }
    };
    Rbac { matcher: Some(matcher), rules_stat_prefix: STAT_PREFIX.to_string(), ..Default::default() }
}

/// The ECDS resource, encoded once.
pub fn encode(list: &DenyList) -> Encoded {
    let config = TypedExtensionConfig {
        name: DENY_FILTER.to_string(),
        typed_config: Some(Any { type_url: RBAC_TYPE.to_string(), value: rbac(list).encode_to_vec() }),
    };
    let any = Any { type_url: EXTENSION_CONFIG_TYPE.to_string(), value: config.encode_to_vec() };
    Encoded::new(DENY_FILTER, any.encode_to_vec().into())
}

/// `x-forwarded-client-cert` contains `Hash=<hex>` for one of `hashes`.
fn any_hash(hashes: &[String]) -> Predicate {
    let one = |hash: &String| Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(extension(
                "envoy.matching.inputs.request_headers",
                HEADER_INPUT,
                &HttpRequestHeaderMatchInput { header_name: XFCC.to_string() },
            )),
            matcher: Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Contains(format!("Hash={hash}"))),
                ignore_case: false,
            })),
        })),
    };
    match hashes {
        [single] => one(single),
        // An or_matcher needs at least two predicates.
        many => Predicate {
            match_type: Some(MatchType::OrMatcher(PredicateList { predicate: many.iter().map(one).collect() })),
        },
    }
}

fn deny() -> OnMatch {
    action("trustmesh-denied", RbacAction::Deny)
}

fn allow() -> OnMatch {
    action("allow", RbacAction::Allow)
}

fn action(name: &str, action: RbacAction) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Action(extension(
            name,
            ACTION_TYPE,
            &Action { name: name.to_string(), action: action as i32 },
        ))),
        ..Default::default()
    }
}

/// A matcher input or action (the `xds.core.v3` twin of Envoy's `TypedExtensionConfig`).
fn extension(name: &str, type_url: &str, config: &impl Message) -> XdsExtension {
    XdsExtension {
        name: name.to_string(),
        typed_config: Some(Any { type_url: type_url.to_string(), value: config.encode_to_vec() }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn list(identities: &[&str], certificates: &[&str]) -> DenyList {
        DenyList {
            revision: 1,
            identities: identities.iter().map(|s| (s.to_string(), "stolen".to_string())).collect(),
            certificates: certificates.iter().map(|s| s.to_string()).collect(),
            ..DenyList::default()
        }
    }

    fn action_of(on: &OnMatch) -> (String, i32) {
        let Some(on_match::OnMatch::Action(ext)) = &on.on_match else { panic!("not an action: {on:?}") };
        let any = ext.typed_config.as_ref().unwrap();
        assert_eq!(any.type_url, ACTION_TYPE);
        let a = Action::decode(any.value.as_slice()).unwrap();
        (a.name, a.action)
    }

    #[test]
    fn revoked_certificates_stay_listed_as_long_as_a_connection_made_with_them_lives() {
        let grace = crate::trust::CONNECTION_GRACE.whole_seconds();
        assert!(grace > i64::from(crate::sds::bootstrap::MAX_CONNECTION_SECS), "{grace}");
    }

    #[test]
    fn nothing_denied_is_a_deny_rule_without_policies() {
        let r = rbac(&DenyList::default());
        assert!(r.matcher.is_none());
        let rules = r.rules.unwrap();
        assert_eq!(rules.action, RbacAction::Deny as i32);
        assert!(rules.policies.is_empty());
        assert_eq!(r.rules_stat_prefix, STAT_PREFIX);
    }

    #[test]
    fn denied_identities_are_an_exact_match_map_on_the_uri_san() {
        let r = rbac(&list(&["spiffe://td/a", "spiffe://td/b"], &[]));
        assert!(r.rules.is_none());
        let m = r.matcher.unwrap();
        let Some(MatcherType::MatcherTree(tree)) = &m.matcher_type else { panic!("{m:?}") };
        let input = tree.input.as_ref().unwrap();
        assert_eq!(input.name, "envoy.matching.inputs.uri_san");
        assert_eq!(input.typed_config.as_ref().unwrap().type_url, URI_SAN_INPUT);
        let Some(TreeType::ExactMatchMap(map)) = &tree.tree_type else { panic!("{tree:?}") };
        assert_eq!(map.map.len(), 2);
        assert_eq!(action_of(&map.map["spiffe://td/a"]).1, RbacAction::Deny as i32);
        assert_eq!(action_of(m.on_no_match.as_ref().unwrap()).1, RbacAction::Allow as i32);
    }

    #[test]
    fn revoked_certificates_are_matched_on_the_xfcc_hash_after_the_identities() {
        let r = rbac(&list(&["spiffe://td/a"], &["aa11", "bb22"]));
        let m = r.matcher.unwrap();
        let Some(on_match::OnMatch::Matcher(next)) = &m.on_no_match.as_ref().unwrap().on_match else { panic!() };
        let Some(MatcherType::MatcherList(l)) = &next.matcher_type else { panic!("{next:?}") };
        let field = &l.matchers[0];
        assert_eq!(action_of(field.on_match.as_ref().unwrap()).1, RbacAction::Deny as i32);
        let Some(MatchType::OrMatcher(or)) = &field.predicate.as_ref().unwrap().match_type else { panic!() };
        let patterns: Vec<_> = or
            .predicate
            .iter()
            .map(|p| {
                let Some(MatchType::SinglePredicate(sp)) = &p.match_type else { panic!() };
                let header = HttpRequestHeaderMatchInput::decode(
                    sp.input.as_ref().unwrap().typed_config.as_ref().unwrap().value.as_slice(),
                )
                .unwrap();
                assert_eq!(header.header_name, XFCC);
                let Some(single_predicate::Matcher::ValueMatch(v)) = &sp.matcher else { panic!() };
                v.match_pattern.clone().unwrap()
            })
            .collect();
        assert_eq!(
            patterns,
            vec![MatchPattern::Contains("Hash=aa11".into()), MatchPattern::Contains("Hash=bb22".into())]
        );
        assert_eq!(action_of(next.on_no_match.as_ref().unwrap()).1, RbacAction::Allow as i32);

        // One hash alone is a single predicate (an or_matcher needs two), with no identity map.
        let r = rbac(&list(&[], &["aa11"]));
        let m = r.matcher.unwrap();
        let Some(MatcherType::MatcherList(l)) = &m.matcher_type else { panic!() };
        assert!(matches!(l.matchers[0].predicate.as_ref().unwrap().match_type, Some(MatchType::SinglePredicate(_))));
    }

    #[test]
    fn the_resource_is_a_typed_extension_config_named_for_the_filter() {
        let e = encode(&list(&["spiffe://td/a"], &[]));
        assert_eq!(e.name, DENY_FILTER);
        let any = Any::decode(e.any.as_ref()).unwrap();
        assert_eq!(any.type_url, EXTENSION_CONFIG_TYPE);
        let config = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(config.name, DENY_FILTER);
        assert_eq!(config.typed_config.unwrap().type_url, RBAC_TYPE);
    }
}
