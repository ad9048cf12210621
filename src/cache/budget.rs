//! How often one entry may be minted: a token bucket per entry. Rotation,
//! the replacement of a revoked SVID and an entry change are all mints; a
//! rotation every few seconds (the shortest SVID lifetimes) stays well within
//! the budget, while a caller that makes an entry be minted in a loop is held
//! to [`REFILL`] per mint once the burst is spent. The budgets outlive the
//! cache's slots, so dropping and reopening streams does not reset them.

use std::collections::HashMap;

use time::{Duration, OffsetDateTime};

/// Mints an entry may make back to back.
pub const BURST: u32 = 10;
/// One more mint becomes available this often.
pub const REFILL: Duration = Duration::seconds(2);
/// Budgets kept at most; full ones (that say nothing) are forgotten first.
const MAX_TRACKED: usize = 65_536;

/// The mint budgets of every entry.
#[derive(Debug, Default)]
pub(super) struct MintBudgets {
    by_entry: HashMap<String, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Mints available at `at`.
    tokens: u32,
    at: OffsetDateTime,
}

impl MintBudgets {
    /// Takes one mint for `entry_id` at `now`, or says when the next one is
    /// available.
    pub(super) fn take(&mut self, entry_id: &str, now: OffsetDateTime) -> Result<(), OffsetDateTime> {
        if self.by_entry.len() >= MAX_TRACKED && !self.by_entry.contains_key(entry_id) {
            self.by_entry.retain(|_, b| b.refilled(now).tokens < BURST);
        }
        let bucket = self.by_entry.entry(entry_id.to_string()).or_insert(Bucket { tokens: BURST, at: now });
        *bucket = bucket.refilled(now);
        if bucket.tokens == 0 {
            return Err(bucket.at + REFILL);
        }
        bucket.tokens -= 1;
        Ok(())
    }
}

impl Bucket {
    /// The bucket with the tokens earned since `at` added (at most [`BURST`]).
    fn refilled(self, now: OffsetDateTime) -> Self {
        if now <= self.at {
            return self;
        }
        let earned = ((now - self.at).whole_milliseconds() / REFILL.whole_milliseconds()).clamp(0, i128::from(BURST));
        let earned = u32::try_from(earned).unwrap_or(BURST);
        if earned == 0 {
            return self;
        }
        let tokens = (self.tokens + earned).min(BURST);
        // Time not yet turned into a token stays: `at` moves by whole refills.
        let at = if tokens == BURST { now } else { self.at + REFILL * earned };
        Self { tokens, at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(T0).unwrap() + Duration::milliseconds(ms)
    }

    #[test]
    fn a_burst_is_allowed_then_one_mint_per_refill() {
        let mut b = MintBudgets::default();
        for _ in 0..BURST {
            assert_eq!(b.take("e", at(0)), Ok(()));
        }
        assert_eq!(b.take("e", at(0)), Err(at(2_000)));
        assert_eq!(b.take("e", at(1_999)), Err(at(2_000)));
        assert_eq!(b.take("e", at(2_000)), Ok(()));
        assert_eq!(b.take("e", at(3_000)), Err(at(4_000)), "the half refill is kept, not lost");
        assert_eq!(b.take("other", at(3_000)), Ok(()), "each entry has its own budget");
        // A long pause refills the whole burst, no more.
        for _ in 0..BURST {
            assert_eq!(b.take("e", at(3_600_000)), Ok(()));
        }
        assert!(b.take("e", at(3_600_000)).is_err());
    }

    #[test]
    fn rotations_of_the_shortest_svids_stay_within_the_budget() {
        // A 10 s SVID rotates every 4-6 s: never throttled.
        let mut b = MintBudgets::default();
        for i in 0..1_000 {
            assert_eq!(b.take("e", at(i * 4_000)), Ok(()), "rotation {i}");
        }
    }
}
