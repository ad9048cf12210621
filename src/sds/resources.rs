//! SDS secrets built from a caller's [`IdentitySet`] (SPEC §6), and the
//! [`Catalog`] a stream reads them through.
//!
//! Names, as SPIRE's agent serves them so existing Envoy configs work:
//!
//! | name | secret |
//! |---|---|
//! | a SPIFFE ID | that identity's `tls_certificate` (chain + key inline), if the caller holds it |
//! | `default` | the certificate of the caller's oldest entry, named `default` |
//! | `ROOTCA` | the own trust domain's validation context |
//! | `spiffe://<td>` | that trust domain's validation context |
//! | `ALL` | one validation context with every trust domain |
//!
//! Validation contexts use the SPIFFE certificate validator with the CRLs
//! appended to each trust domain's bundle PEM (the validator ignores the `crl`
//! field), or — for nodes whose metadata says
//! `disable_spiffe_cert_validation: true` — `trusted_ca` with every CRL (root
//! and intermediates) concatenated in `crl`.
//!
//! Each secret is encoded once ([`SecretCache`]) and the bytes are shared by
//! every stream that sends it; each name is looked up once per identity-set
//! version and validator ([`Catalogs`]), however many streams read it.

use crate::domain::text;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config::TrustDomain as SpiffeTrustDomain,
};
use envoy_types::pb::google::protobuf::Any;
use parking_lot::Mutex;
use prost::Message;
use zeroize::Zeroize;

use super::deny;
use super::memo::{Key, SecretCache};
use super::protocol::{Catalog, Encoded, Lookup, SECRET_TYPE};
use crate::cache::{IdentitySet, Svid};
use crate::domain::{SpiffeId, TrustDomain};
use crate::trust::TrustSnapshot;

/// The name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// How a node validates peer certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidatorMode {
    /// `envoy.tls.cert_validator.spiffe`, CRLs inside the bundle PEM (default).
    Spiffe,
    /// The default validator: `trusted_ca` + `crl`.
    TrustedCa,
}

/// The `tls_certificate` secret `name` holding `svid`'s chain and key.
pub fn tls_certificate(name: &str, svid: &Svid) -> Secret {
    let key = svid.key.to_pem();
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(svid.chain_pem())),
            private_key: Some(inline(key.as_str().to_string())),
            ..Default::default()
        })),
    }
}

/// The validation-context secret `name` for the trust domains in `trust`.
pub fn validation_context(name: &str, trust: &TrustSnapshot, mode: ValidatorMode) -> Secret {
    let context = match mode {
        ValidatorMode::Spiffe => {
            let domains = [SpiffeTrustDomain {
                name: trust.trust_domain.as_str().to_string(),
                trust_bundle: Some(inline(bundle_with_crls(trust))),
                workload_trust_domain: String::new(),
            }];
            spiffe_context(&domains)
        }
        ValidatorMode::TrustedCa => CertificateValidationContext {
            trusted_ca: Some(inline(trust.bundle_pem.clone())),
            crl: (!trust.crl_pem.is_empty()).then(|| inline(trust.crl_pem.clone())),
            ..Default::default()
        },
    };
    Secret { name: name.to_string(), r#type: Some(secret::Type::ValidationContext(context)) }
}

/// The bundle PEM followed by the CRL PEMs, as the SPIFFE validator reads them.
pub fn bundle_with_crls(trust: &TrustSnapshot) -> String {
    let mut pem = trust.bundle_pem.clone();
    if !trust.crl_pem.is_empty() {
        if !pem.is_empty() && !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&trust.crl_pem);
    }
    pem
}

fn spiffe_context(domains: &[SpiffeTrustDomain]) -> CertificateValidationContext {
    let config = SpiffeCertValidatorConfig { trust_domains: domains.to_vec(), trust_bundles: None };
    CertificateValidationContext {
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR.to_string(),
            typed_config: Some(Any { type_url: SPIFFE_VALIDATOR_TYPE.to_string(), value: config.encode_to_vec() }),
        }),
        ..Default::default()
    }
}

fn inline(text: String) -> DataSource {
    DataSource { watched_directory: None, specifier: Some(Specifier::InlineString(text)) }
}

/// Encodes a secret as `Any`, wiping the intermediate copies (they may hold a key).
pub fn encode(mut secret: Secret) -> Encoded {
    let mut any = Any { type_url: SECRET_TYPE.to_string(), value: secret.encode_to_vec() };
    // Written straight into the shared frame: no other copy of the whole `Any`.
    // (`encode` fails only on a full buffer, and a `Vec` grows.)
    let encoded = Encoded::build(secret.name.clone(), any.encoded_len(), |buf| {
        let _ = any.encode(buf);
    });
    any.value.zeroize();
    if let Some(secret::Type::TlsCertificate(cert)) = &mut secret.r#type
        && let Some(DataSource { specifier: Some(Specifier::InlineString(key)), .. }) = &mut cert.private_key
    {
        key.zeroize();
    }
    encoded
}

/// Every stream reading the same identity set with the same validator
/// shares one [`SecretCatalog`] (and so its lookups): at a change, the first
/// stream resolves each name and the other thousands reuse the answer.
pub struct Catalogs {
    cache: Arc<SecretCache>,
    live: Mutex<Live>,
}

struct Live {
    /// By the set's address: an entry that upgrades holds that very set,
    /// so an address reused by a later set can never match a dead entry.
    by_set: HashMap<(usize, ValidatorMode), Weak<SecretCatalog>>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 64;

impl Catalogs {
    pub fn new(cache: Arc<SecretCache>) -> Self {
        Self { cache, live: Mutex::new(Live { by_set: HashMap::new(), sweep_at: MIN_SWEEP }) }
    }

    /// The catalog of `set` read with `mode`, shared while anyone holds it.
    pub fn of(&self, set: Arc<IdentitySet>, mode: ValidatorMode) -> Arc<SecretCatalog> {
        let key = (Arc::as_ptr(&set) as usize, mode);
        let mut live = self.live.lock();
        if let Some(catalog) = live.by_set.get(&key).and_then(Weak::upgrade) {
            return catalog;
        }
        let catalog = Arc::new(SecretCatalog::new(set, mode, self.cache.clone()));
        live.by_set.insert(key, Arc::downgrade(&catalog));
        if live.by_set.len() >= live.sweep_at {
            live.by_set.retain(|_, w| w.strong_count() > 0);
            live.sweep_at = (live.by_set.len() * 2).max(MIN_SWEEP);
        }
        catalog
    }
}

/// What one caller's stream can see: its identity set, read with its node's
/// validator, through the shared encoding cache.
pub struct SecretCatalog {
    set: Arc<IdentitySet>,
    mode: ValidatorMode,
    cache: Arc<SecretCache>,
    /// Names already looked up (bounded: a client may ask for any names).
    answered: Mutex<Vec<(Served, String, Lookup)>>,
}

/// Most answers a catalog keeps; Envoys ask for a handful of names.
const ANSWERED: usize = 32;

/// The type URLs a catalog answers for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Served {
    Secret,
    Extension,
}

impl SecretCatalog {
    pub fn new(set: Arc<IdentitySet>, mode: ValidatorMode, cache: Arc<SecretCache>) -> Self {
        Self { set, mode, cache, answered: Mutex::new(Vec::new()) }
    }

    fn answer(&self, served: Served, name: &str) -> Lookup {
        if let Some((_, _, hit)) = self.answered.lock().iter().find(|(s, n, _)| *s == served && n == name) {
            return hit.clone();
        }
        let found = match served {
            Served::Secret => self.secret(name),
            Served::Extension => self.extension(name),
        };
        let mut answered = self.answered.lock();
        if answered.len() < ANSWERED && !answered.iter().any(|(s, n, _)| *s == served && n == name) {
            answered.push((served, name.to_string(), found.clone()));
        }
        found
    }

    fn secret(&self, name: &str) -> Lookup {
        match name {
            "default" => match self.set.svids.first() {
                Some(svid) => self.certificate(name, svid),
                None => Lookup::Missing(match self.set.withheld.first() {
                    Some((id, reason)) => format!("the caller holds no SVID ({id} is withheld: {reason})"),
                    None => "the caller holds no SVID".to_string(),
                }),
            },
            "ROOTCA" | "ALL" => self.validation(name),
            _ if name.starts_with("spiffe://") => self.spiffe_name(name),
            _ => Lookup::Missing(format!(
                "unknown resource name {:?}: expected a SPIFFE ID, spiffe://<trust-domain>, default, ROOTCA or ALL",
                text::quoted(name)
            )),
        }
    }

    fn certificate(&self, name: &str, svid: &Svid) -> Lookup {
        let key = Key::Certificate { serial: svid.serial.clone(), name: name.to_string() };
        Lookup::Found(self.cache.get_or_encode(key, || encode(tls_certificate(name, svid))))
    }

    fn validation(&self, name: &str) -> Lookup {
        let trust = &self.set.trust;
        if trust.bundle_pem.is_empty() {
            return Lookup::Missing(format!("the trust bundle of {} is not published yet", trust.trust_domain));
        }
        let key = Key::Validation {
            revision: trust.revision,
            built_at: trust.built_at.unix_timestamp_nanos(),
            name: name.to_string(),
            mode: self.mode,
        };
        Lookup::Found(self.cache.get_or_encode(key, || encode(validation_context(name, trust, self.mode))))
    }

    fn spiffe_name(&self, name: &str) -> Lookup {
        let own = &self.set.trust.trust_domain;
        if let Ok(td) = TrustDomain::parse(&name["spiffe://".len()..]) {
            if td == *own {
                return self.validation(name);
            }
            return Lookup::Missing(format!("trust domain {td} is not known here (trustmesh serves {own})"));
        }
        let id = match SpiffeId::parse(name) {
            Ok(id) => id,
            Err(e) => return Lookup::Missing(format!("{e}")),
        };
        // A caller holds a handful of SVIDs: a scan, no per-change index.
        if let Some(svid) = self.set.svids.iter().find(|s| s.spiffe_id == id) {
            return self.certificate(name, svid);
        }
        if let Some((_, reason)) = self.set.withheld.iter().find(|(w, _)| *w == id) {
            return Lookup::Missing(format!("{id} is withheld: {reason}"));
        }
        Lookup::Missing(format!("the caller is not entitled to {id}"))
    }
}

impl SecretCatalog {
    fn extension(&self, name: &str) -> Lookup {
        if name != deny::DENY_FILTER {
            return Lookup::Missing(format!(
                "unknown extension config {:?}: trustmesh serves {}",
                text::quoted(name),
                deny::DENY_FILTER
            ));
        }
        let list = &self.set.trust.deny;
        let key = Key::DenyFilter { revision: list.revision };
        Lookup::Found(self.cache.get_or_encode(key, || deny::encode(list)))
    }
}

impl Catalog for SecretCatalog {
    fn serves(&self, type_url: &str) -> bool {
        type_url == SECRET_TYPE || type_url == deny::EXTENSION_CONFIG_TYPE
    }

    fn lookup(&self, type_url: &str, name: &str) -> Lookup {
        if type_url == SECRET_TYPE {
            return self.answer(Served::Secret, name);
        }
        if type_url == deny::EXTENSION_CONFIG_TYPE {
            return self.answer(Served::Extension, name);
        }
        Lookup::Missing(format!(
            "type URL {type_url} is not served (trustmesh serves {SECRET_TYPE} and {})",
            deny::EXTENSION_CONFIG_TYPE
        ))
    }

    fn wildcard(&self, type_url: &str) -> Vec<String> {
        if type_url == deny::EXTENSION_CONFIG_TYPE {
            return vec![deny::DENY_FILTER.to_string()];
        }
        if type_url != SECRET_TYPE {
            return Vec::new();
        }
        let mut names: Vec<String> = self.set.svids.iter().map(|s| s.spiffe_id.to_string()).collect();
        if !self.set.trust.bundle_pem.is_empty() {
            names.push(self.set.trust.trust_domain.id_string());
        }
        names
    }
}

#[cfg(test)]
mod tests;
