//! How often a repeated event is reported: the first occurrence at once, then
//! at most one report per interval carrying how many were held back. A flood
//! of NACKs or shed connections costs one log line per interval, not one per
//! event. Time comes in as a value.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Self { interval, last: None, held_back: 0 }
    }

    /// One more event at `now`: `Some(n)` when it is to be reported, with the
    /// `n` events held back since the last report; `None` to hold it back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_reported_then_one_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.admit(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(t.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(t.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(25)), Some(1));
    }
}
