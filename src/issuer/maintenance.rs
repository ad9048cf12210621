//! Scheduled upkeep: purge expired records, re-sign CRLs well before their
//! nextUpdate, refresh gauges. One pass is a plain function of the clock so
//! tests drive it with a manual clock.

use std::sync::Weak;
use std::time::Duration as StdDuration;

use super::Issuer;
use crate::domain::{CaRole, CaState};

/// How often [`Issuer::run_maintenance`] wakes up.
pub const MAINTENANCE_INTERVAL: StdDuration = StdDuration::from_secs(60);

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub purged_certificates: u64,
    pub crls_resigned: bool,
}

impl Issuer {
    /// One pass. CRLs are re-signed when less than half of their validity is
    /// left, so a published CRL never lapses while the server runs.
    pub async fn maintain(&self) -> MaintenanceReport {
        let mut report = MaintenanceReport::default();
        let now = self.now();
        match self.store.purge_expired(now.unix_timestamp(), 0).await {
            Ok(0) => {}
            Ok(n) => {
                report.purged_certificates = n;
                self.metrics.purged(n);
                tracing::info!(count = n, "Expired certificates purged");
            }
            Err(e) => tracing::warn!(error = %e, "purging expired certificates failed"),
        }
        let pruned = self.prune_revocations(now);
        let snapshot = self.snapshot();
        // Only the CRLs signed here can be re-signed (imported ones are the
        // operator's: `crl_next_update` and its alert cover them).
        let signers = self.signers();
        let own_next_update = snapshot
            .crls
            .iter()
            .filter(|c| signers.crl_signers.iter().any(|s| s.cert.fingerprint == c.issuer_fingerprint))
            .map(|c| c.next_update)
            .min();
        let due = match own_next_update {
            Some(next) => next - now < self.cfg.crl_validity / 2,
            None => true,
        } || pruned > 0;
        // A CA that expired since the last build must leave the bundle too.
        let ca_expired = snapshot.cas.iter().any(|c| c.not_after <= now.unix_timestamp());
        if due || ca_expired {
            match self.publish().await {
                Ok(_) => report.crls_resigned = true,
                Err(e) => tracing::error!(error = %e, "re-signing CRLs failed; will retry"),
            }
        }
        self.warn_expiring_cas(now);
        if self.cfg.ca_rotation_auto {
            self.rotate_automatically().await;
        }
        self.metrics.refresh_counts(self).await;
        report
    }

    /// Seed 002 §4.1: an intermediate less than six months from expiry is
    /// logged at WARN, at most once a day.
    fn warn_expiring_cas(&self, now: time::OffsetDateTime) {
        let mut last = self.trust.expiry_warned.lock();
        if last.is_some_and(|t| now - t < time::Duration::days(1)) {
            return;
        }
        let mut warned = false;
        for ca in self.snapshot().cas.iter().filter(|c| c.state == CaState::Active && c.role != CaRole::Root) {
            let left = ca.not_after - now.unix_timestamp();
            if left < 180 * 86_400 {
                warned = true;
                tracing::warn!(
                    ca_name = %ca.common_name,
                    fingerprint = %ca.fingerprint,
                    days_remaining = left / 86_400,
                    "CA certificate approaching expiry: run `trustmesh pki ca create-intermediary`"
                );
            }
        }
        if warned {
            *last = Some(now);
        }
    }
}

/// Runs [`Issuer::maintain`] on the real timer until the issuer is gone.
pub(super) async fn run(issuer: Weak<Issuer>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(issuer) = issuer.upgrade() else { return };
        issuer.maintain().await;
    }
}
