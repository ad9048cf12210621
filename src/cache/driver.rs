//! One task per warm entry (its "driver"): mints the first SVID, replaces it
//! at 40–60 % of its lifetime, retries failures with backoff while the old
//! SVID stays in use until it expires, and parks while the identity is
//! denied. The task is aborted when the last set holding the entry goes.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tokio::task::AbortHandle;

use super::state::Inner;
use super::timing::rotation_at;
use super::{MintError, MintedSvid, Svid};
use crate::ca;
use crate::domain::Entry;

/// First retry delay after a failed issuance; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::seconds(1);
/// The longest retry delay unless [`super::CacheOptions::backoff_max`] says otherwise.
pub(super) const BACKOFF_MAX: Duration = Duration::seconds(30);
/// Shortest wait before a rotation (a lifetime cut short by an expiring CA
/// must not turn into a hot loop).
const MIN_ROTATION_WAIT: Duration = Duration::seconds(5);

pub(super) fn spawn(inner: Arc<Inner>, entry_id: String, generation: u64) -> AbortHandle {
    tokio::spawn(drive(inner, entry_id, generation)).abort_handle()
}

/// What the driver does after an attempt.
enum Next {
    /// Sleep until then, or until woken.
    Until(OffsetDateTime),
    /// Only a wake (denial lifted, entry changed) moves it on.
    Parked,
    /// Try again at once.
    Now,
    /// The slot is gone.
    Stop,
}

async fn drive(inner: Arc<Inner>, entry_id: String, generation: u64) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let (entry, wake, epoch, denied) = {
            let mut state = inner.state.lock();
            let epoch = state.deny_epoch;
            let Some(slot) = state.slot_mut(&entry_id, generation) else { return };
            if slot.holders == 0 {
                // Lingering, and now due (rotation point, revocation, entry
                // change): nobody holds it, so it goes instead of renewing.
                state.remove_slot(&entry_id);
                inner.record_sizes(&state);
                return;
            }
            (slot.entry.clone(), slot.wake.clone(), epoch, slot.denied)
        };
        if denied {
            // Known denied (the trust follower wakes this driver when it is lifted):
            // no refused issuance, and no audit record, at every rotation deadline.
            wake.notified().await;
            continue;
        }
        let budget = inner.state.lock().budgets.take(&entry_id, inner.clock.now());
        if let Err(available_at) = budget {
            inner.throttled(&entry, available_at);
            drop(entry);
            tokio::select! {
                () = inner.timer.sleep_until(available_at) => {}
                () = wake.notified() => {}
            }
            continue;
        }
        let next = match inner.minter.mint(&entry).await {
            Ok(minted) => match inner.accept(&entry, generation, minted, epoch) {
                Ok(next) => {
                    backoff = BACKOFF_MIN;
                    next
                }
                Err(err) => inner.failed(&entry, generation, &err, &mut backoff),
            },
            Err(MintError::Denied { reason, .. }) => inner.withhold_denied(&entry, generation, &reason, epoch),
            Err(err) => match inner.fallback(&entry, generation) {
                // Nothing served yet: what the minter kept (an agent's cache on disk).
                Some(kept) => inner
                    .accept(&entry, generation, kept, epoch)
                    .unwrap_or_else(|e| inner.failed(&entry, generation, &e, &mut backoff)),
                None => inner.failed(&entry, generation, &err, &mut backoff),
            },
        };
        // The slot has the entry: a driver waiting out its rotation holds no copy.
        drop(entry);
        match next {
            Next::Until(deadline) => {
                tokio::select! {
                    () = inner.timer.sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            Next::Parked => wake.notified().await,
            Next::Now => {}
            Next::Stop => return,
        }
    }
}

impl Inner {
    /// Hands a freshly minted SVID to the sets holding its entry, unless the
    /// identity was denied meanwhile. Returns when to rotate it.
    fn accept(&self, entry: &Entry, generation: u64, minted: MintedSvid, epoch: u64) -> Result<Next, MintError> {
        let MintedSvid { certificate: cert, key, chain_pem } = minted;
        let chain_der = ca::certs_from_pem(&chain_pem).map_err(|e| MintError::Failed(e.to_string()))?;
        let issuer = chain_der.get(1).map(|der| ca::fingerprint(der)).unwrap_or_default();
        let svid = Arc::new(Svid {
            entry_id: entry.id.clone(),
            spiffe_id: entry.spiffe_id.clone(),
            hint: entry.hint.clone(),
            chain_der,
            key,
            serial: cert.serial.to_string(),
            issuer,
            not_before: cert.not_before,
            not_after: cert.not_after,
            jwt_ttl: entry.jwt_ttl_seconds.map(|s| Duration::seconds(i64::from(s))),
        });
        let mut state = self.state.lock();
        let Some(slot) = state.slot_mut(&entry.id, generation) else { return Ok(Next::Stop) };
        if slot.entry != *entry {
            return Ok(Next::Now); // the entry changed while minting: mint for the new one
        }
        if state.deny_epoch != epoch
            && let Some(reason) = state.trust.deny.denial(&entry.spiffe_id.to_string()).map(str::to_string)
        {
            // A trust snapshot that denies the identity arrived while this SVID was minted.
            drop(state);
            return Ok(self.withhold_denied(entry, generation, &reason, epoch));
        }
        let Some(slot) = state.slot_mut(&entry.id, generation) else { return Ok(Next::Stop) };
        let old = slot.svid.replace(svid.clone());
        slot.withheld = None;
        slot.denied = false;
        slot.settled.send_if_modified(|s| !std::mem::replace(s, true));
        state.publish_holding(&entry.id);
        drop(state);
        self.renewed(entry, old.as_deref(), &svid);
        // The lifetime runs from issuance (now), not from the notBefore
        // the CA backdates by 30 s for clock skew: a 20 s SVID is
        // replaced after 8-12 s, not after 5 s.
        let start = self.clock.now().clamp(svid.not_before, svid.not_after);
        let at = rotation_at(start, svid.not_after, self.jitter.unit());
        Ok(Next::Until(at.max(self.clock.now() + MIN_ROTATION_WAIT)))
    }

    /// What the minter kept for an entry that has no SVID yet.
    fn fallback(&self, entry: &Entry, generation: u64) -> Option<MintedSvid> {
        let empty = self.state.lock().slot_mut(&entry.id, generation).is_some_and(|s| s.svid.is_none());
        if empty { self.minter.kept(entry) } else { None }
    }

    /// The entry spent its mint budget: counted, and logged at most once per
    /// interval for the whole cache.
    fn throttled(&self, entry: &Entry, available_at: OffsetDateTime) {
        self.metrics.throttled();
        if let Some(held_back) = self.throttle_log.lock().admit(std::time::Instant::now()) {
            tracing::warn!(
                spiffe_id = %entry.spiffe_id,
                entry_id = %entry.id,
                next_mint_in_ms = (available_at - self.clock.now()).whole_milliseconds(),
                throttled_since_last_report = held_back,
                "SVID mints of this entry are rate-limited"
            );
        }
    }

    fn renewed(&self, entry: &Entry, old: Option<&Svid>, new: &Svid) {
        let Some(old) = old else { return };
        self.metrics.rotated();
        tracing::info!(
            spiffe_id = %entry.spiffe_id,
            entry_id = %entry.id,
            old_serial = %old.serial,
            serial = %new.serial,
            not_after = %new.not_after,
            "Certificate renewed"
        );
    }

    /// The identity is denied: its SVID goes at once and the driver parks
    /// until the denial is lifted — unless a deny-list check ran meanwhile,
    /// which may have seen the lift already: then it tries again.
    fn withhold_denied(&self, entry: &Entry, generation: u64, reason: &str, epoch: u64) -> Next {
        let mut state = self.state.lock();
        let current_epoch = state.deny_epoch;
        let Some(slot) = state.slot_mut(&entry.id, generation) else { return Next::Stop };
        let was_serving = slot.svid.take().is_some();
        slot.withheld = Some(format!("identity {} is denied: {reason}", entry.spiffe_id));
        slot.denied = true;
        slot.settled.send_if_modified(|s| !std::mem::replace(s, true));
        if slot.holders == 0 {
            state.remove_slot(&entry.id);
            return Next::Stop;
        }
        state.publish_holding(&entry.id);
        if was_serving {
            tracing::warn!(spiffe_id = %entry.spiffe_id, entry_id = %entry.id, reason, "SVID withdrawn: identity denied");
        }
        if current_epoch == epoch { Next::Parked } else { Next::Now }
    }

    /// An issuance failed: keep serving the old SVID until it expires, retry
    /// with backoff (1 s doubling to 30 s, never later than the expiry).
    fn failed(&self, entry: &Entry, generation: u64, err: &MintError, backoff: &mut Duration) -> Next {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let Some(slot) = state.slot_mut(&entry.id, generation) else { return Next::Stop };
        let mut retry_at = now + *backoff;
        self.metrics.renewal_failed();
        match &slot.svid {
            Some(old) if old.not_after > now => {
                retry_at = retry_at.min(old.not_after);
                let left = old.not_after - now;
                let retry_in = (retry_at - now).whole_seconds();
                let (id, serial) = (&entry.spiffe_id, &old.serial);
                match renewal_urgency(left, issued_lifetime(old.not_before, old.not_after)) {
                    Urgency::Warn => tracing::warn!(
                        spiffe_id = %id, entry_id = %entry.id, serial = %serial, error = %err,
                        cert_expires_in_seconds = left.whole_seconds(), retry_in_seconds = retry_in,
                        "Certificate renewal failed"
                    ),
                    Urgency::Error => tracing::error!(
                        spiffe_id = %id, entry_id = %entry.id, serial = %serial, error = %err,
                        cert_expires_in_seconds = left.whole_seconds(), retry_in_seconds = retry_in,
                        "Certificate renewal failed; less than 25% of its lifetime left"
                    ),
                    Urgency::Critical => tracing::error!(
                        severity = "CRITICAL",
                        spiffe_id = %id, entry_id = %entry.id, serial = %serial, error = %err,
                        cert_expires_in_seconds = left.whole_seconds(), retry_in_seconds = retry_in,
                        "Certificate renewal failed; it expires in less than 5 minutes"
                    ),
                }
                slot.withheld = Some(format!("renewal failed: {err}"));
            }
            expired => {
                let reason = if expired.is_some() { "svid expired; renewal failed" } else { "issuance failed" };
                tracing::warn!(
                    spiffe_id = %entry.spiffe_id,
                    entry_id = %entry.id,
                    error = %err,
                    retry_in_seconds = (retry_at - now).whole_seconds(),
                    "Certificate renewal failed"
                );
                slot.svid = None;
                slot.withheld = Some(format!("{reason}: {err}"));
            }
        }
        slot.settled.send_if_modified(|s| !std::mem::replace(s, true));
        state.publish_holding(&entry.id);
        *backoff = (*backoff * 2i32).min(self.backoff_max);
        Next::Until(retry_at)
    }
}

/// How loudly a failed renewal is reported (seed 002 §1.2): WARN, ERROR
/// below 25 % of the certificate's lifetime, CRITICAL below 5 minutes — for
/// a certificate of less than an hour, below a twelfth of its lifetime (the
/// same share as 5 minutes of an hour), so a 2-minute SVID is not critical
/// from its first failed renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Warn,
    Error,
    Critical,
}

/// What an SVID was issued for: its validity without the backdated notBefore.
pub fn issued_lifetime(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    let validity = not_after - not_before;
    if validity > ca::LEAF_BACKDATE * 2 { validity - ca::LEAF_BACKDATE } else { validity }
}

/// The urgency of a failed renewal with `left` of `lifetime` to go.
pub fn renewal_urgency(left: Duration, lifetime: Duration) -> Urgency {
    if left < Duration::minutes(5).min(lifetime / 12) {
        Urgency::Critical
    } else if left * 4 < lifetime {
        Urgency::Error
    } else {
        Urgency::Warn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_is_reported_louder_as_the_certificate_nears_its_end() {
        let hour = Duration::hours(1);
        for (left, lifetime, urgency) in [
            (Duration::minutes(30), hour, Urgency::Warn),
            (Duration::minutes(15), hour, Urgency::Warn),
            (Duration::minutes(14), hour, Urgency::Error),
            (Duration::minutes(5), hour, Urgency::Error),
            (Duration::seconds(299), hour, Urgency::Critical),
            (Duration::minutes(10), Duration::days(1), Urgency::Error),
            (Duration::seconds(299), Duration::days(1), Urgency::Critical),
            (Duration::seconds(60), Duration::seconds(120), Urgency::Warn),
            (Duration::seconds(29), Duration::seconds(120), Urgency::Error),
            (Duration::seconds(9), Duration::seconds(120), Urgency::Critical),
        ] {
            assert_eq!(renewal_urgency(left, lifetime), urgency, "{left} left of {lifetime}");
        }
    }
}
