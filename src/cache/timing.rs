//! Time and randomness of rotation, injected so tests move a manual clock
//! instead of sleeping (STYLE habit 5).
//!
//! "Now" always comes from the cache's [`Clock`]; a [`Timer`] only waits until
//! that clock reaches a deadline. [`TokioTimer`] waits on tokio timers and
//! re-reads the clock at least every five minutes (a suspended host or a
//! stepped wall clock is noticed); [`ManualTimer`] wakes its sleepers when a
//! test advances it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;

use crate::domain::{Clock, ManualClock};

/// Waits until the cache's clock reaches a deadline.
#[async_trait::async_trait]
pub trait Timer: Send + Sync + 'static {
    /// Returns once the clock reads `deadline` or later.
    async fn sleep_until(&self, deadline: OffsetDateTime);
}

/// Uniform randomness in `[0, 1]` for the rotation jitter.
pub trait Jitter: Send + Sync + 'static {
    fn unit(&self) -> f64;
}

/// The instant an SVID valid over `not_before..not_after` is replaced: at
/// 40 %–60 % of its lifetime (50 % ± 10 %), `unit` choosing where.
pub fn rotation_at(not_before: OffsetDateTime, not_after: OffsetDateTime, unit: f64) -> OffsetDateTime {
    let lifetime_ms = (not_after - not_before).whole_milliseconds().max(0);
    // `as` saturates and maps NaN to 0: any input lands in [400_000, 600_000].
    let ppm = 400_000 + (unit.clamp(0.0, 1.0) * 200_000.0) as i128;
    let offset_ms = i64::try_from(lifetime_ms * ppm / 1_000_000).unwrap_or(i64::MAX);
    not_before.checked_add(Duration::milliseconds(offset_ms)).unwrap_or(not_after)
}

/// Tokio timers against an injected clock.
#[derive(Clone)]
pub struct TokioTimer {
    clock: Arc<dyn Clock>,
}

/// Longest single tokio sleep before the clock is read again.
const MAX_NAP: std::time::Duration = std::time::Duration::from_secs(300);

impl TokioTimer {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }
}

#[async_trait::async_trait]
impl Timer for TokioTimer {
    async fn sleep_until(&self, deadline: OffsetDateTime) {
        loop {
            let left = deadline - self.clock.now();
            if !left.is_positive() {
                return;
            }
            tokio::time::sleep(left.unsigned_abs().min(MAX_NAP)).await;
        }
    }
}

/// Randomness from the system CSPRNG (ring).
#[derive(Debug)]
pub struct RingJitter(SystemRandom);

impl Default for RingJitter {
    fn default() -> Self {
        Self(SystemRandom::new())
    }
}

impl Jitter for RingJitter {
    fn unit(&self) -> f64 {
        let mut bytes = [0u8; 4];
        if self.0.fill(&mut bytes).is_err() {
            return 0.5;
        }
        f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX)
    }
}

/// Always the same value: tests pin rotation to 40 % (`0.0`) or 60 % (`1.0`).
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}

/// A [`Timer`] for tests: its sleepers wake when [`ManualTimer::advance`]
/// moves the clock past their deadline, and tests can see who sleeps until
/// when. Moving the [`ManualClock`] directly wakes nobody.
#[derive(Clone)]
pub struct ManualTimer {
    clock: ManualClock,
    state: Arc<watch::Sender<Sleepers>>,
}

#[derive(Default)]
struct Sleepers {
    next_id: u64,
    deadlines: BTreeMap<u64, OffsetDateTime>,
}

impl ManualTimer {
    pub fn new(clock: ManualClock) -> Self {
        Self { clock, state: Arc::new(watch::Sender::new(Sleepers::default())) }
    }

    /// Moves the clock forward and wakes every sleeper whose deadline passed.
    pub fn advance(&self, seconds: i64) {
        self.clock.advance(seconds);
        self.state.send_modify(|_| {});
    }

    /// The deadlines of the current sleepers, earliest first.
    pub fn deadlines(&self) -> Vec<OffsetDateTime> {
        let mut out: Vec<OffsetDateTime> = self.state.borrow().deadlines.values().copied().collect();
        out.sort();
        out
    }

    /// Waits until at least `n` tasks sleep on this timer.
    pub async fn until_sleeping(&self, n: usize) {
        self.until(|deadlines| deadlines.len() >= n).await;
    }

    /// Waits until the sleepers' deadlines (earliest first) satisfy `done`.
    pub async fn until(&self, mut done: impl FnMut(&[OffsetDateTime]) -> bool) {
        let mut rx = self.state.subscribe();
        let _ = rx
            .wait_for(|s| {
                let mut deadlines: Vec<OffsetDateTime> = s.deadlines.values().copied().collect();
                deadlines.sort();
                done(&deadlines)
            })
            .await;
    }
}

#[async_trait::async_trait]
impl Timer for ManualTimer {
    async fn sleep_until(&self, deadline: OffsetDateTime) {
        if self.clock.now() >= deadline {
            return;
        }
        let mut id = 0;
        self.state.send_modify(|s| {
            id = s.next_id;
            s.next_id += 1;
            s.deadlines.insert(id, deadline);
        });
        let _registered = Deregister { state: self.state.clone(), id };
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|_| self.clock.now() >= deadline).await;
    }
}

/// Removes a sleeper when its sleep ends or is cancelled (aborted task).
struct Deregister {
    state: Arc<watch::Sender<Sleepers>>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            s.deadlines.remove(&self.id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_lands_between_forty_and_sixty_percent() {
        let nb = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let na = nb + Duration::seconds(1000);
        assert_eq!(rotation_at(nb, na, 0.0), nb + Duration::seconds(400));
        assert_eq!(rotation_at(nb, na, 0.5), nb + Duration::seconds(500));
        assert_eq!(rotation_at(nb, na, 1.0), nb + Duration::seconds(600));
        assert_eq!(rotation_at(nb, na, f64::NAN), nb + Duration::seconds(400));
        assert_eq!(rotation_at(nb, na, 7.0), nb + Duration::seconds(600));
        let ring = RingJitter::default();
        let (mut low, mut high) = (false, false);
        for _ in 0..2000 {
            let u = ring.unit();
            assert!((0.0..=1.0).contains(&u), "{u}");
            let at = rotation_at(nb, na, u);
            assert!(at >= nb + Duration::seconds(400) && at <= nb + Duration::seconds(600));
            low |= u < 0.25;
            high |= u > 0.75;
        }
        assert!(low && high, "the jitter should spread over the whole window");
    }
}
