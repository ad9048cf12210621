//! Following the other replicas: every write another `trustmesh serve` makes
//! to the shared database (revocation, denial, allow, entry, CA, signing key,
//! profile)
//! arrives as a row of the store's change feed, and is applied here to this
//! replica's memory and published to its streams like a local change.
//!
//! The follower wakes on the store's change signal (PostgreSQL notifications;
//! the signal also moves after every reconnect, so a missed notification is
//! caught up by revision) and, as a safety net for a silently dead listening
//! connection, every [`SAFETY_POLL`] — a cheap `changes_since` query, never a
//! reload of whole tables. Only a replica that was away longer than the
//! feed's retention reloads everything.
//!
//! Applying is idempotent, so this replica's own changes, which come back
//! through the feed, change nothing the second time.

use std::sync::Weak;
use std::time::Duration as StdDuration;

use tokio::sync::watch;

use super::revocation::revoked_entry;
use super::trust_state::TrustChange;
use super::{Issuer, IssuerError};
use crate::store::{ChangeKind, ChangeRecord};

/// Most changes read per query.
const BATCH: u32 = 1_000;
/// How often the feed is read without a signal.
pub const SAFETY_POLL: StdDuration = StdDuration::from_secs(30);

/// Follows the feed from `cursor` (the revision the loaded state includes)
/// until the issuer is gone.
pub(super) async fn follow(issuer: Weak<Issuer>, mut signal: watch::Receiver<u64>, mut cursor: i64) {
    let mut retry: Option<StdDuration> = None;
    loop {
        // After a failed read, try again soon (the database may be back
        // before the listener's next reconnect); otherwise wait for a signal.
        let wait = retry.unwrap_or(SAFETY_POLL);
        tokio::select! {
            changed = signal.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        let Some(issuer) = issuer.upgrade() else { return };
        match issuer.catch_up(&mut cursor).await {
            Ok(()) => retry = None,
            Err(e) => {
                tracing::warn!(error = %e, revision = cursor, "reading the change feed failed; will retry");
                retry = Some(retry.map_or(RETRY_MIN, |r| (r * 2).min(RETRY_MAX)));
            }
        }
    }
}

/// Retry delays of a failed feed read.
const RETRY_MIN: StdDuration = StdDuration::from_millis(100);
const RETRY_MAX: StdDuration = StdDuration::from_secs(1);

impl Issuer {
    /// Applies every change after `cursor` and moves it forward.
    async fn catch_up(&self, cursor: &mut i64) -> Result<(), IssuerError> {
        loop {
            let batch = self.store.changes_since(*cursor, BATCH).await?;
            if batch.truncated {
                let newest = self.store.change_revision().await?;
                self.reload_all().await?;
                tracing::warn!(from = *cursor, to = newest, "the change feed was purged past this replica: reloaded");
                *cursor = newest;
                return Ok(());
            }
            let Some(last) = batch.changes.last().map(|c| c.revision) else { return Ok(()) };
            self.apply_changes(&batch.changes).await?;
            *cursor = last;
            if batch.changes.len() < BATCH as usize {
                return Ok(());
            }
        }
    }

    async fn apply_changes(&self, changes: &[ChangeRecord]) -> Result<(), IssuerError> {
        let mut entries = false;
        let mut keys = false;
        for change in changes {
            // The change row names what changed; its state is read now (a
            // later change may already have undone it) and applied exactly
            // as a change made here is.
            match change.kind {
                ChangeKind::Revoke => {
                    let cert = self.store.certificate(&change.subject).await?;
                    self.apply(TrustChange::Revoked(cert.and_then(revoked_entry).into_iter().collect()));
                }
                ChangeKind::Deny | ChangeKind::Allow => match self.store.denied(&change.subject).await? {
                    Some(denial) => {
                        let revoked = self.revoked_of(&change.subject).await?;
                        self.apply(TrustChange::Denied { denial, revoked });
                    }
                    None => self.apply(TrustChange::Allowed(change.subject.clone())),
                },
                ChangeKind::Entry => entries = true,
                ChangeKind::Ca | ChangeKind::SigningKey => keys = true,
                ChangeKind::Profile => self.reload_profile(&change.subject).await?,
            }
        }
        if entries {
            self.reload_entries().await?;
        }
        if keys {
            self.reload_keys().await?;
        }
        tracing::debug!(changes = changes.len(), "changes from the feed applied");
        Ok(())
    }

    /// Everything from the store again (start-up state for a replica that fell
    /// behind the feed's retention).
    async fn reload_all(&self) -> Result<(), IssuerError> {
        let fresh = super::revocation::Revocations::load(self.store.as_ref(), self.now()).await?;
        self.apply(TrustChange::Reloaded(fresh));
        self.reload_entries().await?;
        self.reload_keys().await?;
        Ok(())
    }
}
