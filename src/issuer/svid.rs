//! X.509-SVIDs for registration entries, with server-generated keys: what the
//! identity cache hands out over SDS and the Workload API (SPEC §4).
//!
//! This goes through the same path as every other issuance (`issue.rs`):
//! policy, deny list, profile, post-sign validation, the durable record with
//! its audit record (action `obtain_svid`), metrics and the "Certificate
//! issued" log. The actor is the server itself ([`Caller::system`]): the
//! entitlement was decided by the caller's selectors matching the entry.

use tracing::Instrument;

use super::auth::Caller;
use super::issue::{Issuance, SubjectKey};
use super::{Issuer, IssuerError};
use crate::ca::{IssuedCertificate, KeyAlgorithm, PrivateKey};
use crate::domain::Entry;
use crate::policy::Action;

impl Issuer {
    /// Issues an X.509-SVID for `entry` with a fresh P-256 key: the entry's
    /// SPIFFE ID and DNS names, for the entry's `ttl_seconds` or the
    /// configured SVID lifetime (capped like every request). Refused with
    /// [`IssuerError::Denied`] when the identity is on the deny list.
    ///
    /// Returns the certificate, its key and the chain PEM (leaf, then the
    /// issuing intermediate). The key is never logged.
    pub async fn issue_for_entry(&self, entry: &Entry) -> Result<(IssuedCertificate, PrivateKey, String), IssuerError> {
        let span = tracing::info_span!("obtain_svid", entry_id = %entry.id);
        async {
            let key = PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new())?;
            let lifetime = self.lifetime(entry.ttl_seconds.map_or(0, u64::from));
            let key = SubjectKey::Generated(key);
            let issuance =
                Issuance::svid(self, Action::ObtainSvid, &entry.spiffe_id, key, &entry.dns_names, None, lifetime);
            let issued = self.issue(&Caller::system(), issuance).await?;
            let key = issued.private_key.ok_or_else(|| {
                IssuerError::Internal(format!("no generated key for serial {}", issued.record.serial))
            })?;
            Ok((issued.certificate, key, issued.chain_pem))
        }
        .instrument(span)
        .await
    }
}
